"""The argparse-free parts of the client path (`coopy shell -c`, `coopy exec`): they must
read what argparse reads, hand everything else to it, and import nothing heavy."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from coopy.boxfind import valid_name
from coopy.cli import exec as exec_verb
from coopy.cli import shell


@pytest.mark.parametrize("argv", [
    ["box", "-c", "make test"], ["-c", "true", "box"], ["box"], [], ["--new"],
    ["box", "--new", "--detach-keys", "ctrl-a"], ["-c", "echo hi"],
])
def test_shell_quick_parse_agrees_with_argparse(argv: list[str]) -> None:
    quick = shell.quick_parse(argv)
    assert quick is not None
    assert vars(quick) == vars(shell.parser().parse_args(argv))


@pytest.mark.parametrize("argv", [
    ["ls"], ["ls", "box"], ["attach", "1"], ["kill", "2", "box"], ["--help"], ["-c"],
    ["-c", "-x"], ["a", "b"], ["--json", "ls"], ["--detach-keys=ctrl-a"], ["-x"],
])
def test_shell_quick_parse_leaves_the_rest_to_argparse(argv: list[str]) -> None:
    assert shell.quick_parse(argv) is None


def test_exec_quick_parse() -> None:
    quick = exec_verb.quick_parse(["box", "--", "ls", "-l"])
    assert quick is not None and quick.box == "box" and quick.command == ["ls", "-l"]
    assert vars(quick) == vars(exec_verb.parser().parse_args(["box", "--", "ls", "-l"]))
    for argv in (["box"], ["box", "--"], ["-h"], ["box", "ls"]):
        assert exec_verb.quick_parse(argv) is None


@pytest.mark.parametrize("name", ["a", "web-1", "A.b_c", "x" * 63, "", "-x", ".x", "_x",
                                  "x" * 64, "a/b", "..", "é", "a b", "a\n"])
def test_box_names_as_before(name: str) -> None:
    assert valid_name(name) == bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", name))


def test_the_client_path_imports_nothing_heavy() -> None:
    code = ("import sys; import coopy.cli.shell, coopy.cli.exec, coopy.client, coopy.boxfind, "
            "coopy.term; "
            "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-S", "-c", code], capture_output=True,
                                text=True, check=True).stdout.split())
    heavy = {"argparse", "json", "re", "enum", "typing", "socket", "pathlib", "signal",
             "contextlib", "collections"}
    assert not loaded & heavy


def test_raw_mode_and_the_winch_pipe_on_a_real_pty() -> None:
    import os
    import signal
    import termios

    from coopy.term import raw_mode, winch_pipe

    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        with raw_mode(slave):
            assert not termios.tcgetattr(slave)[3] & termios.ECHO
        assert termios.tcgetattr(slave) == before
        with raw_mode(master + 1000):  # not a terminal (not even open): nothing to do
            pass
        with winch_pipe() as fd:
            os.kill(os.getpid(), signal.SIGWINCH)
            assert os.read(fd, 64) == bytes([signal.SIGWINCH])
        assert signal.getsignal(signal.SIGWINCH) == signal.SIG_DFL
    finally:
        os.close(master)
        os.close(slave)
