"""``coopy diff [BOX]``: what a box changed outside its workspace, or in a cow workspace."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy diff               what this workspace's box wrote outside the workspace
  coopy diff review --workspace   what box review changed in its copy-on-write workspace
  coopy diff --json

A added, M modified, D deleted, R a directory replaced whole, ? unreadable here.
Outside the workspace a box's writes stay in its upper layer (`coopy rm` drops them);
with [workspace] mode = "cow" its workspace writes wait for `coopy apply` or
`coopy discard`.
"""


def parser() -> Parser:
    """The argument parser of ``coopy diff``."""
    p = Parser("coopy diff", "List what a box changed.", EPILOG)
    p.add_argument("box", nargs="?", help="the box's name (default: this workspace's)")
    p.add_argument("--workspace", action="store_true",
                   help="the changes to its copy-on-write workspace ([workspace] mode = cow)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args: argparse.Namespace) -> int:
    """Print the changes."""
    import json
    from pathlib import Path

    from coopy.changes import cow_dir, upper_changes
    from coopy.cli.attach import default_box
    from coopy.errors import BoxStateError
    from coopy.lifecycle import find

    name = default_box(args.box)
    box_dir, record = find(name)
    if args.workspace:
        upper, lower, top = cow_dir(box_dir) / "upper", Path(record.workspace), ""
        if not upper.is_dir():
            raise BoxStateError(f"box {name!r} has no copy-on-write workspace",
                                hint="leave out --workspace for what it wrote elsewhere")
    else:
        upper, lower, top = box_dir / "upper", None, "/"
    changes = [c._replace(path=top + c.path) for c in upper_changes(upper, lower)]
    if args.json:
        print(json.dumps([{"kind": c.kind, "path": c.path} for c in changes], indent=2))
    else:
        for c in changes:
            print(f"{c.kind} {c.path}")
    return 0
