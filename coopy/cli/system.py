"""``coopy system df|prune``: what coopy's images, layers, boxes and volumes take on disk."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy system df              per image, layer, box (its upper) and volume
  coopy system df --json
  coopy system prune           layers no image names, partial downloads, leftovers
  coopy system prune --all     also every image no persistent box was made with

Prune never removes what a box uses: the layers a box (running or kept) stacks, the
image of a persistent box, a volume a box mounts.
"""


def parser() -> Parser:
    """The argument parser of ``coopy system``."""
    p = Parser("coopy system", "Disk use of images, layers, boxes and volumes; clean-up.",
               EPILOG)
    p.add_argument("action", choices=("df", "prune"))
    p.add_argument("--json", action="store_true", help="df: print JSON")
    p.add_argument("--all", action="store_true", help="prune: also unused images")
    return p


def run(args: argparse.Namespace) -> int:
    """Print disk use, or prune."""
    import json

    from coopy.image.disk import disk_usage, prune

    if args.action == "prune":
        from coopy.facts import probe_host

        removed = prune(probe_host(), everything=args.all)
        for line in removed:
            print(f"removed {line}")
        print(f"{len(removed)} removed")
        return 0
    rows = disk_usage()
    if args.json:
        print(json.dumps([r._asdict() for r in rows], indent=2))
        return 0
    print(f"{'KIND':<7} {'NAME':<56} {'SIZE':>10}  IN USE")
    totals: dict[str, int] = {}
    for r in rows:
        print(f"{r.kind:<7} {r.name:<56} {r.bytes / 1e6:>7.1f} MB  {'yes' if r.in_use else '-'}")
        if r.kind != "image":  # an image's bytes are its layers' (counted there)
            totals[r.kind] = totals.get(r.kind, 0) + r.bytes
    print("total: " + ", ".join(f"{k}s {v / 1e6:.1f} MB" for k, v in totals.items()))
    return 0
