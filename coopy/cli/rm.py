"""``coopy rm [BOX]``: remove a box: its upper layer, log and record."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy rm                 this workspace's box (it must not be running)
  coopy rm -f review       kill it first if it runs
"""


def parser() -> Parser:
    """The argument parser of ``coopy rm``."""
    p = Parser("coopy rm", "Remove a box and what it wrote outside the workspace.", EPILOG)
    p.add_argument("box", nargs="?", help="the box's name (default: this workspace's)")
    p.add_argument("-f", "--force", action="store_true", help="kill it first if it runs")
    return p


def run(args: argparse.Namespace) -> int:
    """Remove the box."""
    from coopy.cli.attach import default_box
    from coopy.lifecycle import remove

    name = default_box(args.box)
    remove(name, force=args.force)
    print(f"removed {name}")
    return 0
