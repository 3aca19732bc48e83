"""``coopy pull REF``: fetch an image from its registry and unpack it for your boxes."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy pull debian:12                   docker.io/library/debian:12
  coopy pull ghcr.io/org/img@sha256:…    pinned by digest (verified)
  coopy pull --platform linux/arm64 alpine
  coopy pull --insecure registry.lan:5000/team/img     plain HTTP, not on loopback

Credentials come from ~/.docker/config.json (`docker login` writes it).  Registries on
localhost/127.0.0.1 are spoken to over plain HTTP when they have no TLS, as Docker does.
"""


def parser() -> Parser:
    """The argument parser of ``coopy pull``."""
    p = Parser("coopy pull", "Pull an image into coopy's store (layers shared, verified).",
               EPILOG)
    add_image_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    p.add_argument("ref", metavar="REF", help="[REGISTRY/]NAME[:TAG][@sha256:DIGEST]")
    return p


def add_image_options(p: Parser) -> None:
    """--platform and --insecure, shared by the verbs that pull."""
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="which image of a multi-platform index (default: this host's)")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="allow plain HTTP to a registry that is not on this machine")


def image_settings(args: argparse.Namespace) -> tuple[str | None, bool]:
    """(platform, insecure) from the flags, else from ``[image]`` in the config."""
    from pathlib import Path

    from coopy.config import find_workspace, load_config

    workspace, project = find_workspace(Path.cwd())
    config = load_config(workspace, project, cli={})
    platform = args.platform or config.image.platform
    insecure = bool(args.insecure) if args.insecure is not None else config.image.insecure
    return platform, insecure


def run(args: argparse.Namespace) -> int:
    """Pull, then print the image's name and digest."""
    from coopy.facts import probe_host
    from coopy.image.store import default_idmap, pull

    platform, insecure = image_settings(args)
    facts = probe_host()
    record = pull(args.ref, facts=facts, idmap=default_idmap(facts), platform=platform,
                  insecure=insecure, quiet=args.quiet)
    print(f"{record.name} {record.digest}")
    return 0
