"""``coopy images``: the images in coopy's store."""

from __future__ import annotations

import argparse
import time

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy images
  coopy images --json      name, digest, platform, layers, size, created
  coopy images rm debian:12     forget a name (`coopy system prune` frees its layers)
"""


def parser() -> Parser:
    """The argument parser of ``coopy images``."""
    p = Parser("coopy images", "List the images in coopy's store.", EPILOG)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("action", nargs="?", choices=("ls", "rm"), default="ls")
    p.add_argument("names", nargs="*", metavar="REF")
    return p


def run(args: argparse.Namespace) -> int:
    """List (or forget) images."""
    import json
    from pathlib import Path

    from coopy.errors import ImageError
    from coopy.image.ref import parse_reference
    from coopy.image.store import Store

    store = Store()
    if args.action == "rm":
        for name in args.names:
            full = name  # as listed: local sources (oci:, dir:, recipe:), built chains
            if name.startswith("dir:"):
                full = f"dir:{Path(name[4:]).expanduser().resolve()}"
            elif store.get(name) is None and not name.startswith(("oci:", "recipe:")):
                full = str(parse_reference(name))
            if not store.remove(full):
                raise ImageError(f"no image {full} in the store", hint="see `coopy images`")
            print(f"removed {full}")
        return 0
    rows = [{"name": r.name, "digest": r.digest, "platform": r.platform,
             "layers": len(r.layers), "size": r.size, "created": r.created,
             "source": r.source} for r in store.records()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no images (`coopy pull REF` fetches one)")
        return 0
    print(f"{'NAME':<40} {'DIGEST':<19} {'PLATFORM':<12} {'LAYERS':>6} {'SIZE':>10}  PULLED")
    now = time.time()
    for r in rows:
        age = int(now - float(str(r["created"])))
        when = f"{age // 86400}d ago" if age >= 86400 else f"{age // 3600}h ago" \
            if age >= 3600 else f"{age // 60}m ago"
        size = f"{int(str(r['size'])) / 1e6:.1f} MB"
        print(f"{r['name']:<40} {str(r['digest'])[7:19]:<19} {r['platform']:<12} "
              f"{r['layers']:>6} {size:>10}  {when}")
    return 0
