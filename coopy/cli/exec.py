"""``coopy exec BOX -- CMD``: a command in a running box, no PTY, exit status back."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser, command_of

EPILOG = """\
examples:
  coopy exec myproj -- git status
  echo data | coopy exec myproj -- wc -c

Pipes both ways; the exit status is the command's (127 not found, 126 cannot execute).
"""


def parser() -> Parser:
    """The argument parser of ``coopy exec``."""
    p = Parser("coopy exec", "Run a command in a running box, without a terminal.", EPILOG)
    p.add_argument("box", help="the box's name")
    p.add_command()
    return p


def run(args: argparse.Namespace) -> int:
    """Run it; return its status."""
    from coopy.client import exec_in
    from coopy.errors import ConfigError
    from coopy.lifecycle import find

    command = command_of(args)
    if not command:
        raise ConfigError("no command given", hint="coopy exec BOX -- COMMAND [ARGS…]")
    _, record = find(args.box)
    return exec_in(record, command)
