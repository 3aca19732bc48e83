"""``coopy kill [BOX]``: stop a box: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy kill               this workspace's box
  coopy kill review -f     SIGKILL at once
  coopy kill --all

Every process of the box ends; its upper layer stays (`coopy rm` removes it).
"""


def parser() -> Parser:
    """The argument parser of ``coopy kill``."""
    p = Parser("coopy kill", "Stop a running box.", EPILOG)
    p.add_argument("box", nargs="?", help="the box's name (default: this workspace's)")
    p.add_argument("-f", "--force", action="store_true", help="SIGKILL without a grace period")
    p.add_argument("--all", action="store_true", help="every running box")
    return p


def run(args: argparse.Namespace) -> int:
    """Kill the box(es)."""
    from coopy.cli.attach import default_box
    from coopy.lifecycle import kill, list_boxes

    if args.all:
        names = [r.name for r, _, _ in list_boxes() if r.state == "running"]
    else:
        names = [default_box(args.box)]
    for name in names:
        record = kill(name, force=args.force)
        print(f"killed {name} (status {record.exit_status})")
    return 0
