"""``coopy discard [BOX]``: drop a cow box's workspace changes."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy discard            this workspace's box (it must be stopped)
"""


def parser() -> Parser:
    """The argument parser of ``coopy discard``."""
    p = Parser("coopy discard", "Drop a box's copy-on-write workspace changes.", EPILOG)
    p.add_argument("box", nargs="?", help="the box's name (default: this workspace's)")
    return p


def run(args: argparse.Namespace) -> int:
    """Discard."""
    from coopy.changes import discard, stopped_box
    from coopy.cli.attach import default_box

    name = default_box(args.box)
    box_dir, _ = stopped_box(name, "discard")
    discard(box_dir)
    print(f"discarded the workspace changes of box {name}")
    return 0
