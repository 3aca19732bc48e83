"""``coopy apply [BOX]``: copy a cow box's workspace changes onto the host's files."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy diff --workspace   review first
  coopy apply              then write them into this workspace (the box must be stopped)

The changes are then dropped from the box, whose next start sees the workspace as it
now is.  New files belong to you.  `coopy discard` drops the changes instead.
"""


def parser() -> Parser:
    """The argument parser of ``coopy apply``."""
    p = Parser("coopy apply", "Apply a box's copy-on-write workspace changes.", EPILOG)
    p.add_argument("box", nargs="?", help="the box's name (default: this workspace's)")
    return p


def run(args: argparse.Namespace) -> int:
    """Apply, report, then drop the applied overlay."""
    import sys
    from pathlib import Path

    from coopy.changes import apply_changes, cow_dir, discard, stopped_box
    from coopy.cli.attach import default_box

    name = default_box(args.box)
    box_dir, workspace = stopped_box(name, "apply")
    done, problems = apply_changes(cow_dir(box_dir) / "upper", Path(workspace))
    for c in done:
        print(f"{c.kind} {c.path}")
    if problems:
        for p in problems:
            sys.stderr.write(f"coopy: not applied: {p}\n")
        sys.stderr.write(f"hint: the box keeps its changes; `coopy discard {name}` drops "
                         "them\n")
        return 1
    discard(box_dir)
    print(f"applied {len(done)} changes of box {name} to {workspace}")
    return 0
