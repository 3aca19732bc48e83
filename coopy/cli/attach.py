"""``coopy attach [BOX]``: the agent's terminal of a running box."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy attach             this workspace's box
  coopy attach review      a box by name

Replays the box's recent output, then goes live.  Ctrl+] detaches (the box keeps
running); several terminals may attach to one box at once.
"""


def parser() -> Parser:
    """The argument parser of ``coopy attach``."""
    p = Parser("coopy attach", "Attach this terminal to a running box's agent.", EPILOG)
    p.add_argument("box", nargs="?", help="the box's name (default: this workspace's)")
    p.add_argument("--detach-keys", default="ctrl-]", metavar="KEY",
                   help="the key that detaches (default ctrl-])")
    return p


def default_box(name: str | None) -> str:
    """The named box, or the current workspace's."""
    if name:
        return name
    from pathlib import Path

    from coopy.lifecycle import box_name
    from coopy.paths import find_workspace

    workspace, _ = find_workspace(Path.cwd())
    return box_name(workspace)


def run(args: argparse.Namespace) -> int:
    """Attach; exit with the box's status when its agent exits."""
    from coopy.client import attach, parse_detach_key
    from coopy.lifecycle import find

    _, record = find(default_box(args.box))
    return attach(record, parse_detach_key(args.detach_keys))
