"""``coopy allow BOX NAME…``: widen a running box's allowlist (``--net allow``)."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy allow review pypi.org files.pythonhosted.org
  coopy allow review '*.githubusercontent.com' 10.1.0.0/16

The box's proxy reads the list again on its next request; nothing restarts.  Names
that resolve to loopback or link-local addresses stay refused; private addresses
need their IP or CIDR listed.  `coopy logs --net BOX` shows what was denied.
"""


def parser() -> Parser:
    """The argument parser of ``coopy allow``."""
    p = Parser("coopy allow", "Add names to a running box's network allowlist.", EPILOG)
    p.add_argument("box", help="the box's name (`coopy ls`)")
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="a domain, *.suffix, IP or CIDR")
    return p


def run(args: argparse.Namespace) -> int:
    """Append the names to the box's allow file."""
    from coopy.errors import BoxStateError, ConfigError
    from coopy.lifecycle import find
    from coopy.proxy import entry_error, write_allow_file

    for name in args.names:
        why = entry_error(name)
        if why:
            raise ConfigError(f"coopy allow: {name!r}: {why}",
                              hint="give a domain (pypi.org), *.suffix, an IP or a CIDR")
    box_dir, record = find(args.box)
    if record.network != "allow":
        raise BoxStateError(f"box {args.box} has the {record.network!r} network, not 'allow'",
                            hint="only --net allow boxes have an allowlist")
    path = box_dir / "allow"
    try:
        current = path.read_text().split()
    except FileNotFoundError:
        current = []
    added = [n for n in args.names if n not in current]
    write_allow_file(str(path), current + added)
    print(f"{args.box}: allowed {', '.join(added) if added else 'nothing new'}")
    return 0
