"""``coopy exec BOX -- CMD``: a command in a running box, no PTY, exit status back."""

from __future__ import annotations

from types import SimpleNamespace

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy exec myproj -- git status
  echo data | coopy exec myproj -- wc -c

Pipes both ways; the exit status is the command's (127 not found, 126 cannot execute).
"""


def parser() -> Parser:
    """The argument parser of ``coopy exec``."""
    from coopy.cli._args import Parser

    p = Parser("coopy exec", "Run a command in a running box, without a terminal.", EPILOG)
    p.add_argument("box", help="the box's name")
    p.add_command()
    return p


def quick_parse(argv: list[str]) -> SimpleNamespace | None:
    """``BOX -- CMD…`` without argparse (start-up, as for `coopy shell -c`); None for
    anything else, which argparse parses and reports."""
    if len(argv) >= 3 and not argv[0].startswith("-") and argv[1] == "--":
        return SimpleNamespace(box=argv[0], command=argv[2:])  # as argparse gives it
    return None


def run(args: argparse.Namespace | SimpleNamespace) -> int:
    """Run it; return its status."""
    from coopy.boxfind import running
    from coopy.client import exec_in

    command = list(args.command)
    command = command[1:] if command and command[0] == "--" else command  # as command_of
    if command:
        box = running(args.box)  # the fast look; None: the full one below says why
        if box is not None:
            return exec_in(box, command)
    from coopy.errors import ConfigError
    from coopy.lifecycle import find

    if not command:
        raise ConfigError("no command given", hint="coopy exec BOX -- COMMAND [ARGS…]")
    _, record = find(args.box)
    return exec_in(record, command)
