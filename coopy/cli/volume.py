"""``coopy volume ls|rm``: named volumes (``mounts = ["cache:/root/.cache"]``)."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy volume ls [--json]
  coopy volume rm pip-cache

A bare name as a mount source (`-v cache:/root/.cache`, `mounts = ["cache:~/.cache"]`)
is a named volume: a directory of coopy's, created on first use and kept across boxes.
"""


def parser() -> Parser:
    """The argument parser of ``coopy volume``."""
    p = Parser("coopy volume", "List or remove named volumes.", EPILOG)
    p.add_argument("action", choices=("ls", "rm"))
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--json", action="store_true", help="ls: print JSON")
    return p


def run(args: argparse.Namespace) -> int:
    """List or remove volumes."""
    import json

    from coopy.image.disk import disk_usage, remove_volume

    if args.action == "rm":
        from coopy.facts import probe_host

        facts = probe_host()
        for name in args.names:
            remove_volume(name, facts)
            print(f"removed {name}")
        return 0
    rows = [{"name": u.name, "bytes": u.bytes, "in_use": u.in_use}
            for u in disk_usage() if u.kind == "volume"]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no volumes")
    else:
        for r in rows:
            print(f"{r['name']:<30} {int(str(r['bytes'])) / 1e6:>8.1f} MB  "
                  f"{'in use' if r['in_use'] else ''}")
    return 0
