"""``coopy doctor --security``: a real box tries each attack; each must fail.

The attacks are small Python snippets run by the box's own python3; each prints
``blocked`` or what it got.  The host side sets traps first: a canary variable in the
environment coopy is started with, an abstract unix socket listening on the host, a
host fd left open, and the caller's home to look for.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from typing import NamedTuple


class Attack(NamedTuple):
    """An attack and the Python that tries it (it must raise, or return a falsy value)."""

    name: str
    code: str


# {marker}, {pid}, {sock} and {canary} are filled in by the host side.  A snippet that
# runs to its end means the attack worked; ``must`` raises when what it needs is absent.
ATTACKS = (
    Attack("read /etc/shadow", "open('/etc/shadow').read()"),
    Attack("read the caller's home", "open({marker!r}).read()"),
    Attack("write outside the workspace", "open('/usr/coopy-pwned', 'w')"),
    Attack("remount / read-write", "must(sc(165, 0, b'/', 0, 0x20, 0))"),
    Attack("unmask /proc/keys", "must(sc(166, b'/proc/keys', 2))"),
    Attack("signal a host process", "os.kill({pid}, 0)"),
    Attack("unshare a user namespace", "must(sc(272, 0x10000000))"),
    Attack("keyctl", "must(sc(250, 0, -3, 0) >= 0)"),  # KEYCTL_GET_KEYRING_ID, session
    Attack("bpf", "must(sc(321, 0, 0, 0))"),
    Attack("io_uring", "p = ctypes.create_string_buffer(120); "
           "os.close(sc(425, 1, ctypes.addressof(p)))"),
    Attack("TIOCSTI into a terminal",
           "import fcntl, termios; fcntl.ioctl(0, termios.TIOCSTI, b'x')"),
    Attack("reach a host abstract socket",
           "s = socket.socket(socket.AF_UNIX); s.connect({sock!r})"),
    Attack("mknod a disk", "os.mknod('/tmp/sda', 0o60600, os.makedev(8, 0))"),
    Attack("load a kernel module", "must(sc(313, 0, 0, 0))"),
    Attack("set the clock", "must(sc(227, 0, 0))"),
    Attack("x32 syscall bypass", "must(sc(0x40000000 | 272, 0x10000000))"),
    Attack("inherit a host fd",
           "must(any('coopy-trap' in link(fd) for fd in os.listdir('/proc/self/fd')))"),
    Attack("read the caller's environment", "must({canary!r} in os.environ)"),
)

_PRELUDE = """\
import ctypes, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def sc(nr, *args):
    conv = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    r = libc.syscall(nr, *conv)
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r
def must(ok):
    if not ok:
        raise OSError(0, "refused")
def link(fd):
    try:
        return os.readlink('/proc/self/fd/' + fd)
    except OSError:
        return ''
"""


def build_script(marker: str, pid: int, sock: str, canary: str) -> str:
    """The Python program the box runs: one JSON line per attack."""
    lines = [_PRELUDE]
    for attack in ATTACKS:
        code = attack.code.format(marker=marker, pid=pid, sock=sock, canary=canary)
        lines.append(
            "try:\n"
            f"    {code}\n"
            f"    print(json.dumps([{attack.name!r}, 'ALLOWED']))\n"
            "except Exception as e:\n"
            f"    print(json.dumps([{attack.name!r}, 'blocked: ' + str(e)[:60]]))\n"
        )
    return "".join(lines)


def run_attacks(coopy_argv: list[str]) -> list[tuple[str, str]]:
    """Run every attack in one box; (name, outcome) pairs, outcome ``blocked: …``."""
    canary = f"COOPY_CANARY_{os.getpid()}"
    sock_name = f"\0coopy-selftest-{os.getpid()}"
    marker = os.path.join(os.path.expanduser("~"), f".coopy-selftest-{os.getpid()}")
    with open(marker, "w") as f:
        f.write("a secret in the caller's home\n")
    try:
        return _run(coopy_argv, marker, canary, sock_name)
    finally:
        os.unlink(marker)


def _run(coopy_argv: list[str], marker: str, canary: str, sock_name: str
         ) -> list[tuple[str, str]]:
    from coopy.paths import ensure_private_dir, state_dir

    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(sock_name)
        listener.listen(1)
        base = ensure_private_dir(state_dir())
        with tempfile.TemporaryDirectory(dir=base, prefix="selftest-") as ws:
            script = os.path.join(ws, "attacks.py")
            with open(script, "w") as f:
                f.write(build_script(marker, os.getpid(), sock_name, canary))
            trap_path = os.path.join(ws, "coopy-trap")
            with open(trap_path, "w") as f:
                f.write("a host file a careless caller leaves open\n")
            trap = os.open(trap_path, os.O_RDONLY)
            os.set_inheritable(trap, True)
            try:
                res = subprocess.run(
                    [*coopy_argv, "run", "-T", "-w", ws, "--", "python3", script],
                    capture_output=True, text=True, timeout=60, close_fds=False,
                    env={**os.environ, canary: "host secret"}, stdin=subprocess.DEVNULL,
                )
            finally:
                os.close(trap)
    if res.returncode != 0:
        from coopy.errors import CoopyError

        raise CoopyError(f"the self-test box failed ({res.returncode}): "
                         f"{res.stderr.strip()[-300:]}")
    return [tuple(json.loads(line)) for line in res.stdout.splitlines() if line.startswith("[")]


def coopy_command() -> list[str]:
    """How to start this same coopy again."""
    return [sys.executable, "-m", "coopy"]
