"""``coopy logs [BOX]``: what the box's agent printed, also after it exited."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy logs               this workspace's box
  coopy logs -n 50 review  its last 50 lines
  coopy logs -f            follow while the box runs
  coopy logs --shell 2     what shell 2 printed (`coopy shell ls` lists them)
  coopy logs --net review  what its network proxy allowed and denied
"""


def parser() -> Parser:
    """The argument parser of ``coopy logs``."""
    p = Parser("coopy logs", "Print a box's terminal log.", EPILOG)
    p.add_argument("box", nargs="?", help="the box's name (default: this workspace's)")
    p.add_argument("-n", "--lines", type=int, default=None, help="only the last N lines")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing while it runs")
    p.add_argument("--strip", action="store_true", help="remove ANSI escape sequences")
    p.add_argument("--shell", type=int, metavar="ID",
                   help="a shell's log instead of the agent's (its ID from `coopy shell ls`)")
    p.add_argument("--net", action="store_true",
                   help="the network's log instead: the allow proxy's ALLOW/DENY lines, "
                   "or the NAT helper's messages")
    return p


def run(args: argparse.Namespace) -> int:
    """Print the log."""
    import re
    import sys
    import time

    from coopy.cli.attach import default_box
    from coopy.errors import ConfigError
    from coopy.lifecycle import find
    from coopy.state import keeper_alive

    if args.shell is not None and args.net:
        raise ConfigError("coopy logs: --shell and --net are two different logs",
                          hint="give one of them")
    box_dir, record = find(default_box(args.box))
    parts, current = log_files(args.shell, args.net)
    if args.shell is not None and not any((box_dir / name).exists() for name in parts):
        raise ConfigError(f"box {record.name!r} has no shell {args.shell}",
                          hint=f"`coopy shell ls {record.name}` lists its shells")
    ansi = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")

    def out(data: bytes) -> None:
        sys.stdout.buffer.write(ansi.sub(b"", data) if args.strip else data)
        sys.stdout.buffer.flush()

    data = b""
    for name in parts:
        try:
            data += (box_dir / name).read_bytes()
        except FileNotFoundError:
            continue
    if args.lines is not None:
        data = b"".join(data.splitlines(keepends=True)[-args.lines:]) if args.lines else b""
    out(data)
    if not args.follow:
        return 0
    path = box_dir / current
    pos = path.stat().st_size if path.exists() else 0
    while keeper_alive(record):
        time.sleep(0.1)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        if size < pos:
            pos = 0  # rotated
        if size > pos:
            with open(path, "rb") as f:
                f.seek(pos)
                chunk = f.read(size - pos)
            pos = size
            out(chunk)
    return 0


def log_files(shell: int | None = None, net: bool = False) -> tuple[tuple[str, ...], str]:
    """A box's log, as file names in its directory: the parts in order (the rotated one
    first), and the one being written (coopy-keeper: log → log.1, shell-N.log → shell-N.1)."""
    if net:
        return ("net.log",), "net.log"
    if shell is not None:
        return (f"shell-{shell}.1", f"shell-{shell}.log"), f"shell-{shell}.log"
    return ("log.1", "log"), "log"
