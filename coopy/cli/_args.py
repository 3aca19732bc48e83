"""argparse, with coopy's error style: usage errors exit 125 with a hint, not 2."""

from __future__ import annotations

import argparse
import os
from typing import NoReturn

from coopy.errors import ConfigError


def command_of(args: argparse.Namespace) -> list[str]:
    """The command given after ``--`` (argparse keeps the ``--`` in a REMAINDER)."""
    command = list(args.command)
    return command[1:] if command and command[0] == "--" else command


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, told the width: otherwise every add_argument imports shutil
    (bz2, lzma…: ~2 ms of every start) just to ask for the terminal's size."""

    def __init__(self, prog: str) -> None:
        try:
            columns = os.get_terminal_size(1).columns
        except OSError:
            columns = 80
        super().__init__(prog, width=max(columns - 2, 40))


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ConfigErrors (``coopy: …`` + ``hint: …``)."""

    def __init__(self, prog: str, description: str, epilog: str) -> None:
        super().__init__(
            prog=prog,
            description=description,
            epilog=epilog,
            formatter_class=_Formatter,
        )

    def add_command(self) -> None:
        """The trailing ``-- COMMAND [ARG...]`` of run, exec and ``coopy``."""
        self.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message, hint=f"see `{self.prog} --help`")
