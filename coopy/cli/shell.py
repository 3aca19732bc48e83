"""``coopy shell``: shells beside the agent, in the same box, limits and filter."""

from __future__ import annotations

from types import SimpleNamespace

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy shell              attach to this workspace's box's shell (start one if none)
  coopy shell --new        always a new one
  coopy shell -c 'make test'       run a command on a new PTY; exit with its status
  coopy shell ls [BOX]     the box's shells
  coopy shell attach ID [BOX]
  coopy shell logs ID [BOX]        what shell ID printed
  coopy shell kill ID [BOX]

Shells are login shells in the workspace, started by the box's init: same namespaces,
ids, limits, capabilities and seccomp filter as the agent.  Ctrl+] detaches.
"""


def parser() -> Parser:
    """The argument parser of ``coopy shell``."""
    from coopy.cli._args import Parser

    p = Parser("coopy shell", "A shell in a running box, beside its agent.", EPILOG)
    p.add_argument("args", nargs="*", metavar="[BOX] | ls [BOX] | attach|logs|kill ID [BOX]")
    p.add_argument("--new", action="store_true", help="start a new shell")
    p.add_argument("-c", dest="command", metavar="CMD", help="run CMD in a new shell")
    p.add_argument("--detach-keys", default="ctrl-]", metavar="KEY")
    p.add_argument("--json", action="store_true", help="with ls: print JSON")
    return p


def quick_parse(argv: list[str]) -> SimpleNamespace | None:
    """``[BOX] [-c CMD] [--new] [--detach-keys KEY]`` without argparse (it and what it
    imports cost ~10 ms of `coopy shell -c`'s start); None for anything else (``ls``,
    ``--help``, a mistake…), which argparse then parses and reports."""
    found = SimpleNamespace(args=[], new=False, command=None, detach_keys="ctrl-]",
                            json=False)
    words = iter(argv)
    for word in words:
        if word in ("-c", "--detach-keys"):
            value = next(words, None)
            if value is None or value.startswith("-"):
                return None
            if word == "-c":
                found.command = value
            else:
                found.detach_keys = value
        elif word == "--new":
            found.new = True
        elif word.startswith("-") or found.args:
            return None
        else:
            found.args.append(word)
    return found if not found.args or found.args[0] not in SUBVERBS else None


SUBVERBS = ("ls", "attach", "logs", "kill")


def run(args: argparse.Namespace | SimpleNamespace) -> int:
    """Attach, start, list or kill shells."""
    from coopy.client import attach, parse_detach_key

    words = list(args.args)
    # the image's bash as a login shell where it has one, else sh
    login = ["sh", "-c", "command -v bash >/dev/null && exec bash -l || exec sh -l"]
    command = ["sh", "-lc", args.command] if args.command else None
    if len(words) == 1 and words[0] not in SUBVERBS:
        from coopy.boxfind import running

        box = running(words[0])  # the fast look; None: the full one below says why
        if box is not None:
            return attach(box, parse_detach_key(args.detach_keys), verb="shell",
                          new=bool(args.new or command), command=command, shell=login)
    return _run(args, words, login, command)


def _run(args: argparse.Namespace | SimpleNamespace, words: list[str], login: list[str],
         command: list[str] | None) -> int:
    import json
    import signal

    from coopy.cli.attach import default_box
    from coopy.client import attach, parse_detach_key
    from coopy.errors import ConfigError
    from coopy.lifecycle import ask, find

    if words and words[0] in ("attach", "logs"):
        if len(words) < 2 or not words[1].isdigit():
            raise ConfigError(f"coopy shell {words[0]}: which shell?",
                              hint=f"coopy shell {words[0]} ID [BOX] (`coopy shell ls`)")
        box_dir, record = find(default_box(words[2] if len(words) > 2 else None))
        if words[0] == "logs":
            import sys

            from coopy.cli.logs import log_files

            for name in log_files(int(words[1]))[0]:  # the rotated part (if any), the current
                if (box_dir / name).exists():
                    sys.stdout.buffer.write((box_dir / name).read_bytes())
            return 0
        return attach(record, parse_detach_key(args.detach_keys), pty=int(words[1]))
    if words and words[0] == "ls":
        _, record = find(default_box(words[1] if len(words) > 1 else None))
        shells = ask(record, "info").get("shells", []) if record.state == "running" else []
        if args.json:
            print(json.dumps(shells, indent=2))
        else:
            for sh in shells if isinstance(shells, list) else []:
                print(f"{sh['id']:>3}  {' '.join(sh['command'])}  ({sh['clients']} attached)")
        return 0
    if words and words[0] == "kill":
        if len(words) < 2 or not words[1].isdigit():
            raise ConfigError("coopy shell kill: which shell?", hint="coopy shell kill ID [BOX]")
        _, record = find(default_box(words[2] if len(words) > 2 else None))
        ask(record, "signal", id=int(words[1]), signal=signal.SIGHUP)
        return 0
    _, record = find(default_box(words[0] if words else None))
    return attach(record, parse_detach_key(args.detach_keys), verb="shell",
                  new=bool(args.new or command), command=command, shell=login)
