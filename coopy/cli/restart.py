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
    import shlex
    import sys
    from pathlib import Path

    from coopy.cli.attach import default_box
    from coopy.config import find_workspace, load_config
    from coopy.lifecycle import find, restart

    name = default_box(args.box)
    _, record = find(name)
    workspace, project = find_workspace(Path(record.workspace))
    config = load_config(workspace, project)
    agent = config.sandbox.agent
    command = (shlex.split(agent) + list(config.sandbox.args)) if agent else list(
        record.command)
    if config.network.mode not in (record.network, "private"):
        sys.stderr.write(f"coopy: warning: coop.toml now asks for network {config.network.mode!r}"
                         f"; box {name} keeps {record.network!r} until `coopy rm -f {name}` "
                         "and a new box\n")
    restart(name, command)
    print(f"restarting the agent of {name}: {' '.join(command)}")
    return 0
