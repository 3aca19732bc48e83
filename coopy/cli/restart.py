"""``coopy restart [BOX]``: restart the agent with the re-read config; the box stays."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy restart            this workspace's box: its agent again, from coop.toml

The agent (PTY 0) gets SIGTERM (SIGKILL after 10 s) and starts again with the agent
command coop.toml names now; shells, attached terminals and the upper layer stay.  A
changed image, mounts or network need a new box: `coopy rm -f` then `coopy`.
"""


def parser() -> Parser:
    """The argument parser of ``coopy restart``."""
    p = Parser("coopy restart", "Restart a box's agent with the re-read config.", EPILOG)
    p.add_argument("box", nargs="?", help="the box's name (default: this workspace's)")
    return p


def run(args: argparse.Namespace) -> int:
    """Restart the agent."""
    import os
    import sys
    from pathlib import Path

    from coopy.cli._args import Parser
    from coopy.cli.attach import default_box
    from coopy.cli.run import add_box_options, build_request
    from coopy.lifecycle import find, mount_specs, restart

    name = default_box(args.box)
    _, record = find(name)
    # The config as `coopy` would read it in the box's workspace, now.
    p = Parser("coopy", "", "")
    add_box_options(p)
    here = os.getcwd()
    os.chdir(record.workspace)
    try:
        request, config = build_request(p.parse_args([]), [])
    finally:
        os.chdir(here)
    # a preset (from coop.toml, else the one the box was made with) expands again
    agent = config.sandbox.agent or record.agent or None
    command = list(record.command)
    if agent:
        from coopy.agents import apply_agent

        request = apply_agent(request, agent, [], config.sandbox.args)
        command = list(request.command)
    made = record.mounts
    if record.worktree:  # the repository's .git, mounted for the worktree
        from coopy.worktree import common_git_dir

        git_dir = str(common_git_dir(Path(record.worktree)))
        made = tuple(m for m in made if not m.startswith((f"{git_dir}:", f"{git_dir}/")))
    changed = [what for what, now, then in (
        ("image", request.image, record.image), ("network", request.net, record.network),
        ("mounts", mount_specs(request), made)) if now != then]
    if changed:
        sys.stderr.write(f"coopy: warning: coop.toml changed the box's {', '.join(changed)}: "
                         f"that needs a new box (`coopy rm -f {name}` then `coopy`); "
                         "restarting the agent only\n")
    restart(name, command)
    print(f"restarting the agent of {name}: {' '.join(command)}")
    return 0
