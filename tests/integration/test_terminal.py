"""``coopy run`` on a terminal: a PTY of the box's own, raw relay, window size, signals.

Driven through real PTYs with pexpect, as a person at a terminal would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pexpect
import pytest

from tests.conftest import BoxUser

TIMEOUT = 20


SPAWNED: list[pexpect.spawn] = []


@pytest.fixture(autouse=True)
def _close_spawned() -> Iterator[None]:
    """Whatever a test asserted, its PTY children are gone before the residue check."""
    yield
    while SPAWNED:
        child = SPAWNED.pop()
        if child.isalive():
            child.close(force=True)


def spawn(user: BoxUser, args: list[str], cwd: str, rows: int = 24,
          cols: int = 80) -> pexpect.spawn:
    argv = user.argv(args)
    child = pexpect.spawn(argv[0], argv[1:], cwd=cwd, env=user.env(), dimensions=(rows, cols),
                          timeout=TIMEOUT, encoding="utf-8", codec_errors="replace")
    SPAWNED.append(child)
    return child


def spawn_shell(user: BoxUser, cwd: str) -> pexpect.spawn:
    shell = pexpect.spawn("/bin/sh", cwd=cwd, env=user.env({"PS1": "$ "}), timeout=TIMEOUT,
                          encoding="utf-8")
    SPAWNED.append(shell)
    return shell


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, f"killed by signal {child.signalstatus}"
    return int(child.exitstatus)


def test_box_gets_its_own_pty(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    child = spawn(box_user, ["run", "--", "sh", "-c",
                             "tty; stty size; test -t 0 && test -t 1 && echo all-tty; exit 4"],
                  str(ws), rows=33, cols=101)
    child.expect(r"/dev/pts/(\d+)\r\n")
    child.expect("33 101")
    child.expect("all-tty")
    assert finish(child) == 4
    assert "\x00" not in (child.before or "")


def test_resize_and_ctrl_c_reach_the_box(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    child = spawn(box_user, ["run", "--", "sh"], str(ws), rows=30, cols=90)
    child.expect("# ")
    child.sendline("stty size")
    child.expect("30 90")
    child.setwinsize(40, 120)
    deadline = time.monotonic() + 10
    while True:  # SIGWINCH is asynchronous: ask until the new size shows
        child.sendline("stty size")
        if child.expect(["40 120", "30 90"]) == 0:
            break
        assert time.monotonic() < deadline, "the new window size never reached the box"
        time.sleep(0.05)
    child.sendline("sleep 1000")
    time.sleep(0.3)
    child.sendintr()  # ^C goes through the PTY to the box's foreground job
    child.expect("# ")
    child.sendline("echo sleep-ended-$?")
    child.expect("sleep-ended-130")
    child.sendline("exit 9")
    assert finish(child) == 9


def test_terminal_is_restored_after_the_box(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    shell = spawn_shell(box_user, str(ws))
    shell.expect(r"\$ ")
    shell.sendline("stty -g > before")
    shell.expect(r"\$ ")
    argv = " ".join(f"'{a}'" for a in box_user.argv(["run", "--", "sh", "-c", "exit 3"]))
    shell.sendline(f"{argv}; echo status=$?")
    shell.expect("status=3")
    shell.expect(r"\$ ")
    shell.sendline("stty -g > after; cmp before after && echo same-termios")
    shell.expect("same-termios")
    shell.sendline("exit")
    shell.expect(pexpect.EOF)
    shell.close()


def test_tiocsti_cannot_reach_the_callers_terminal(box_user: BoxUser) -> None:
    """A box that pushes input into its terminal pushes it into its own PTY only."""
    ws = box_user.workspace()
    shell = spawn_shell(box_user, str(ws))
    shell.expect(r"\$ ")
    script = ws / "inject.py"
    script.write_text(
        "import fcntl, termios\n"
        "for fd in (0, 1, 2):\n"
        "    try:\n"
        "        for c in b'touch PWNED\\n':\n"
        "            fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))\n"
        "    except OSError:\n"
        "        pass\n"
    )
    for mode in ([], ["-T"]):  # with the box's PTY, and with plain pipes
        argv = " ".join(f"'{a}'" for a in box_user.argv(["run", *mode, "--", "python3",
                                                         str(script)]))
        shell.sendline(f"{argv}; echo done-$?")
        shell.expect("done-0")
        shell.expect(r"\$ ")
    shell.sendline("sleep 0.3; ls PWNED 2>/dev/null || echo not-injected")
    shell.expect("not-injected")
    shell.sendline("exit")
    shell.expect(pexpect.EOF)
    shell.close()
    assert not (ws / "PWNED").exists()


@pytest.mark.parametrize("stdin_tty", [False])
def test_pipes_when_stdin_is_not_a_terminal(box_user: BoxUser, stdin_tty: bool) -> None:
    ws = box_user.workspace()
    res = box_user.coopy("run", "--", "sh", "-c", "test -t 0 || echo stdin-not-tty; "
                         "test -t 1 || echo stdout-not-tty", cwd=ws, input="")
    assert res.stdout.split() == ["stdin-not-tty", "stdout-not-tty"]
