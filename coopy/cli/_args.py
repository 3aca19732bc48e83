"""argparse, with coopy's error style: usage errors exit 125 with a hint, not 2."""

from __future__ import annotations

import argparse
from typing import NoReturn

from coopy.errors import ConfigError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ConfigErrors (``coopy: …`` + ``hint: …``)."""

    def __init__(self, prog: str, description: str, epilog: str) -> None:
        super().__init__(
            prog=prog,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message, hint=f"see `{self.prog} --help`")
