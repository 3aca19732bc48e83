"""``coopy doctor``: host checks, each with the command that fixes it."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy doctor            a table of checks; exit 1 when boxes cannot start
  coopy doctor --json     the same, for scripts
  coopy doctor --security a box tries each attack (read a host secret, unshare, mount,
                          keyctl, TIOCSTI, a host socket…); exit 1 if any succeeds

Nothing is changed on the host; the last check starts a real box (`coopy run -- true`).
"""


def parser() -> Parser:
    """The argument parser of ``coopy doctor``."""
    p = Parser("coopy doctor", "Check what this host can do for coopy, and how to fix it.",
               EPILOG)
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--no-box", action="store_true", help="skip starting a test box")
    p.add_argument("--security", action="store_true",
                   help="run a box that tries each attack in coopy's list; all must fail")
    return p


def run(args: argparse.Namespace) -> int:
    """Print the checks; 1 when one of them fails."""
    import json

    if args.security:
        return _security(args.json)
    from coopy.doctor import run_checks
    from coopy.facts import probe_host
    from coopy.paths import state_dir

    checks = run_checks(probe_host(), str(state_dir()), box=not args.no_box)
    if args.json:
        print(json.dumps([c._asdict() for c in checks], indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
            if c.fix and c.status != "ok":
                print(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    return 1 if any(c.status == "fail" for c in checks) else 0


def _security(as_json: bool) -> int:
    from coopy.selftest import coopy_command, run_attacks

    results = run_attacks(coopy_command())
    allowed = [name for name, outcome in results if not outcome.startswith("blocked")]
    if as_json:
        import json

        print(json.dumps([{"attack": n, "outcome": o} for n, o in results], indent=2))
    else:
        width = max(len(n) for n, _ in results)
        for name, outcome in results:
            print(f"{name:<{width}}  {outcome}")
        print(f"{len(results) - len(allowed)} of {len(results)} attacks blocked")
    return 1 if allowed else 0
