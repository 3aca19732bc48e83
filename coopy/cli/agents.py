"""``coopy agents``: the agent presets, expanded for this host."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy agents                 each preset: its command line, what it mounts, its keys
  coopy agents --json          the same as JSON
  coopy --agent claude         start this project's box with Claude Code
  coopy run --agent codex -- exec "make the tests pass"

A preset starts the agent with its own approval prompts and inner sandbox off (the box
is the boundary), mounts its login and settings directories from your home (created
when missing), your ~/.gitconfig read-only, and its program with what it needs (node).
API keys pass only when coop.toml lists them ([agent] pass_env or [env]).
"""


def parser() -> Parser:
    """The argument parser of ``coopy agents``."""
    p = Parser("coopy agents", "List the agent presets, expanded for this host.", EPILOG)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--user", metavar="NAME", help="expand for a named box user")
    return p


def run(args: argparse.Namespace) -> int:
    """Print each preset as this host would run it."""
    import json
    import os
    import shlex
    from pathlib import Path

    from coopy.agents import PRESETS, box_home_of, resolve

    home = Path(os.path.expanduser("~"))
    boxes = [resolve(p.name, [], environ=os.environ, host_home=home,
                     box_home=box_home_of(args.user)) for p in PRESETS]
    if args.json:
        print(json.dumps([{
            "name": b.preset.name,
            "command": list(b.command),
            "program": b.program,
            "install": b.preset.install,
            "mounts": [{"source": m.source, "target": m.target, "ro": m.readonly,
                        "why": m.why} for m in b.mounts],
            "env": dict(b.env),
            "api_keys": list(b.preset.api_keys),
            "oauth_ports": list(b.preset.oauth_ports),
            "login": b.preset.login,
        } for b in boxes], indent=2))
        return 0
    for b in boxes:
        p = b.preset
        print(f"{p.name}: {shlex.join(b.command)}")
        print(f"  program  {b.program or f'not installed ({p.install})'}")
        for m in b.mounts:
            print(f"  mount    {m.source} → {m.target} ({'ro' if m.readonly else 'rw'}, "
                  f"{m.why})")
        for k, v in b.env.items():
            if k != "PATH":
                print(f"  env      {k}={v}")
        print(f"  keys     {', '.join(p.api_keys)} (passed only when [agent] pass_env or "
              "[env] names them)")
        if p.oauth_ports:
            print(f"  ports    {', '.join(map(str, p.oauth_ports))} (its login's OAuth "
                  "callback)")
        print(f"  login    {p.login}")
    return 0
