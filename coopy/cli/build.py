"""``coopy build``: run the project's ``setup`` steps on its image, each cached as a layer."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser
from coopy.cli.run import add_box_options

EPILOG = """\
examples:
  coopy build                 the image of the nearest coop.toml, with its setup steps
  coopy build --no-cache      run every step again
  coopy build --image debian:12 -w ~/proj

coop.toml:
  [sandbox]
  image = "debian:12"
  setup = ["apt-get update", "apt-get install -y --no-install-recommends git python3"]

Each step runs as `/bin/sh -c STEP` in a box on the image and the steps before it
(network as the box's, output live), and is kept as a layer keyed by its parent and
its command: changing step 3 runs steps 3… again.  A failed or interrupted step keeps
nothing; the next build resumes there.  `coopy` and `coopy run` build what is missing.
"""


def parser() -> Parser:
    """The argument parser of ``coopy build``."""
    p = Parser("coopy build", "Build the project's image: its setup steps, cached.", EPILOG)
    add_box_options(p)
    p.add_argument("--no-cache", action="store_true", help="run every step again")
    return p


def run(args: argparse.Namespace) -> int:
    """Pull the image if needed, run the steps that are not cached."""
    from coopy.box import box_ids, run_prepared
    from coopy.cli.run import build_request
    from coopy.errors import ConfigError
    from coopy.facts import probe_host
    from coopy.image.boxroot import ensure_image
    from coopy.image.build import ensure_built

    args.tty, args.dry_run = False, False
    request, _ = build_request(args, ["true"])
    if request.image == "host":
        raise ConfigError("nothing to build: the image is `host`",
                          hint='set [sandbox] image (e.g. "debian:12") and setup in coop.toml')
    facts = probe_host()
    _, idmap, _ = box_ids(facts, request.user, request.userns)
    record = ensure_image(request.image, facts=facts, idmap=idmap, platform=request.platform,
                          insecure=request.insecure, workspace=request.workspace)
    layers = ensure_built(request, record, idmap, facts, run_prepared, no_cache=args.no_cache)
    print(f"{record.name}: {len(record.layers)} layers + {len(layers)} setup steps, ready")
    return 0
