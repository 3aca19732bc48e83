"""The command line: maps each verb to its module and imports only the chosen one.

Start-up time is a feature (``coopy --help`` ≤ 30 ms): nothing but this file and the
verb's own module is imported before the verb runs.  Each verb lives in
``coopy/cli/<verb>.py`` with its argparse definition and a ``run(args)`` that calls the
library; errors become ``coopy: <what failed>: <why>`` plus ``hint: <what to do>``.
"""

from __future__ import annotations

import os
import sys

# verb -> (module, one line for `coopy --help`)
VERBS = {
    "up": ("coopy.cli.up", "(the default) create the project's box, attach to its agent"),
    "attach": ("coopy.cli.attach", "attach to a running box's agent; Ctrl+] detaches"),
    "shell": ("coopy.cli.shell", "a shell in a running box, beside its agent"),
    "exec": ("coopy.cli.exec", "run a command in a running box, no terminal"),
    "ls": ("coopy.cli.ls", "list your boxes"),
    "logs": ("coopy.cli.logs", "print a box's terminal log"),
    "allow": ("coopy.cli.allow", "let a running allow-mode box reach one more name"),
    "restart": ("coopy.cli.restart", "restart a box's agent with the re-read config"),
    "kill": ("coopy.cli.kill", "stop a box (SIGTERM, grace, SIGKILL)"),
    "rm": ("coopy.cli.rm", "remove a box and its upper layer"),
    "diff": ("coopy.cli.diff", "list what a box changed (--workspace: in a cow workspace)"),
    "apply": ("coopy.cli.apply", "write a cow box's workspace changes to the host"),
    "discard": ("coopy.cli.discard", "drop a cow box's workspace changes"),
    "run": ("coopy.cli.run", "run a command in a new, ephemeral box"),
    "build": ("coopy.cli.build", "run the image's setup steps, each cached as a layer"),
    "pull": ("coopy.cli.pull", "fetch an image from a registry (verified, layers shared)"),
    "images": ("coopy.cli.images", "list the images in coopy's store"),
    "system": ("coopy.cli.system", "disk use (df) and clean-up (prune) of images and boxes"),
    "volume": ("coopy.cli.volume", "list or remove named volumes"),
    "agents": ("coopy.cli.agents", "list the agent presets (claude, codex, …) for this host"),
    "init": ("coopy.cli.init", "write a commented coop.toml here"),
    "trust": ("coopy.cli.trust", "approve the nearest coop.toml and what it grants"),
    "doctor": ("coopy.cli.doctor", "check this host and say how to fix what is missing"),
    "gpu": ("coopy.cli.gpu", "show what a box would get of this host's GPUs"),
}

USAGE = """\
usage: coopy [--debug] [--version] [VERB] [OPTIONS] ...

coopy runs AI coding agents (or any command) in a box: root inside, its own
filesystem, hostname, processes and network, the project mounted read-write,
and nothing else of the host in reach.  No Docker, no root, no daemon.

verbs:
{verbs}

examples:
  coopy                                  this project's box, created if needed; Ctrl+]
                                         detaches, `coopy attach` comes back
  coopy run -- cat /etc/os-release       a command in a box on the host's programs
  coopy run -v ~/data:/data:ro -- ls /data
  coopy run --image debian:12 -- cat /etc/debian_version     a pulled image
  coopy doctor                           what works on this host, and fixes

`coopy VERB --help` tells more about each verb.
"""


def _usage() -> str:
    width = max(len(v) for v in VERBS)
    return USAGE.format(verbs="\n".join(f"  {v:<{width}}  {d}" for v, (_, d) in VERBS.items()))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``coopy`` command; returns the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while args and args[0] in ("--debug", "--version", "-h", "--help"):
        opt = args.pop(0)
        if opt == "--debug":
            debug = True
        elif opt == "--version":
            from coopy import __version__

            print(f"coopy {__version__}")
            return 0
        else:
            sys.stdout.write(_usage())
            return 0
    # No verb (or options first): `coopy` is "up", the project's box.
    verb = args.pop(0) if args and not args[0].startswith("-") else "up"
    if verb not in VERBS:
        import difflib

        close = difflib.get_close_matches(verb, VERBS, n=1)
        hint = f"did you mean `coopy {close[0]}`?" if close else "see `coopy --help`"
        return _fail(f"unknown verb {verb!r}", hint)
    if verb == "run" and "COOPY_PLAN_KEY" in os.environ:  # set by the native front end
        from coopy import plancache

        plancache.begin()
    import importlib

    module = importlib.import_module(VERBS[verb][0])
    from coopy.errors import CoopyError

    try:
        # A verb may parse its common forms without argparse (start-up: `coopy shell -c`)
        quick = getattr(module, "quick_parse", None)
        parsed = (quick(args) if quick else None) or module.parser().parse_args(args)
        return int(module.run(parsed))
    except CoopyError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        return _fail(exc.message, exc.hint, exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        if debug:
            raise
        return _fail(str(exc), "run again with --debug for the full trace")


def _fail(message: str, hint: str | None, code: int = 125) -> int:
    sys.stderr.write(f"coopy: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    return code


if os.environ.get("COOPY_PROFILE_IMPORTS"):  # pragma: no cover - a developer's aid
    sys.stderr.write(f"coopy: modules at start: {len(sys.modules)}\n")
