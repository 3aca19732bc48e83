"""``coopy init``: write a commented coop.toml in the current directory."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy init               ./coop.toml with every key, commented, and its default
  coopy init --force       overwrite an existing one

Uncomment what you need.  Keys that widen the box beyond the workspace take effect
only after `coopy trust`.
"""


def parser() -> Parser:
    """The argument parser of ``coopy init``."""
    p = Parser("coopy init", "Write a commented coop.toml here.", EPILOG)
    p.add_argument("--force", action="store_true", help="overwrite an existing coop.toml")
    return p


def run(args: argparse.Namespace) -> int:
    """Write the file."""
    import os
    from pathlib import Path

    from coopy.errors import ConfigError

    target = Path.cwd() / "coop.toml"
    if target.exists() and not args.force:
        raise ConfigError(f"{target} already exists", hint="give --force to overwrite it")
    example = Path(__file__).resolve().parent.parent / "coop.toml.example"
    text = example.read_text()
    tmp = target.with_name(f".coop.toml.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, target)
    print(f"wrote {target}: every key is commented; uncomment what you need")
    return 0
