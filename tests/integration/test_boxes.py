"""Persistent boxes: a keeper per box, attach and detach, ls, logs, kill, rm."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

from tests.conftest import BoxUser

TIMEOUT = 20


def spawn(user: BoxUser, args: list[str], ws: Path) -> pexpect.spawn:
    """coopy on a real PTY, as a person at a terminal runs it."""
    argv = user.argv(args)
    return pexpect.spawn(argv[0], argv[1:], cwd=str(ws), env=user.env(), timeout=TIMEOUT,
                         encoding="utf-8")


def ls(user: BoxUser) -> dict[str, dict[str, object]]:
    res = user.coopy("ls", "--json")
    assert res.returncode == 0, res.stderr
    return {b["name"]: b for b in json.loads(res.stdout)}


def wait_state(user: BoxUser, box: str, state: str) -> dict[str, object]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        info = ls(user).get(box)
        if info and info["state"] == state:
            return info
        time.sleep(0.05)
    pytest.fail(f"box {box} never reached {state}: {ls(user).get(box)}")


def test_detached_box_runs_logs_and_is_killed(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    res = box_user.coopy("-d", "-n", name, "--", "sh", "-c", "echo agent-started; exec sleep 1000",
                         cwd=ws)
    assert res.returncode == 0, res.stderr
    assert f"box {name} is running" in res.stdout
    info = wait_state(box_user, name, "running")
    assert info["workspace"] == str(ws) and info["network"] == "private"
    assert isinstance(info["pid"], int)
    deadline = time.monotonic() + TIMEOUT
    while "agent-started" not in box_user.coopy("logs", name).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # a second `coopy` in the same workspace finds the running box instead of a new one
    again = box_user.coopy("-d", "-n", name, cwd=ws)
    assert again.returncode == 0 and len([b for b in ls(box_user) if b == name]) == 1
    refused = box_user.coopy("rm", name)
    assert refused.returncode == 125 and f"coopy kill {name}" in refused.stderr
    killed = box_user.coopy("kill", name)
    assert killed.returncode == 0, killed.stderr
    assert ls(box_user)[name]["state"] == "exited"
    assert "agent-started" in box_user.coopy("logs", name).stdout  # readable after exit
    assert box_user.coopy("rm", name).returncode == 0
    assert name not in ls(box_user)
    assert not (box_user.home / ".local/state/coopy/boxes" / name).exists()


def test_attach_detach_reattach_with_scrollback(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    first = spawn(box_user, ["-n", name, "--", "sh"], ws)
    try:
        first.expect("# ")
        first.sendline("echo marker-$((6*7))")
        first.expect("marker-42")
        first.send("\x1d")  # Ctrl+]
        first.expect(r"\[detached from " + name)
        first.expect(pexpect.EOF)
    finally:
        first.close(force=True)
    assert first.exitstatus == 0
    assert ls(box_user)[name]["state"] == "running"
    second = spawn(box_user, ["attach", name], ws)
    try:
        second.expect("marker-42")  # the scrollback, replayed
        second.sendline("exit 3")
        second.expect(pexpect.EOF)
    finally:
        second.close(force=True)
    assert second.exitstatus == 3
    info = wait_state(box_user, name, "exited")
    assert info["exit_status"] == 3


def test_two_clients_see_the_same_box(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    assert box_user.coopy("-d", "-n", name, "--", "sh", cwd=ws).returncode == 0
    clients = []
    try:
        for _ in range(2):
            c = spawn(box_user, ["attach", name], ws)
            clients.append(c)
        time.sleep(0.3)
        assert ls(box_user)[name]["clients"] == 2
        clients[0].sendline("echo from-first-$((1+1))")
        for c in clients:
            c.expect("from-first-2")
        clients[1].sendline("echo from-second-$((2+2))")
        for c in clients:
            c.expect("from-second-4")
    finally:
        for c in clients:
            c.close(force=True)
    assert box_user.coopy("kill", name).returncode == 0


def test_keeper_killed_takes_its_box_and_is_reported(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    assert box_user.coopy("-d", "-n", name, "--", "sleep", "1000", cwd=ws).returncode == 0
    keeper = ls(box_user)[name]["pid"]
    assert isinstance(keeper, int)
    os.kill(keeper, signal.SIGKILL)  # the test's own child-of-nobody: a real SIGKILL
    info = wait_state(box_user, name, "exited")
    assert info["exit_status"] is None
    # a new box of the same name starts cleanly (the stale socket is not in the way)
    assert box_user.coopy("-d", "-n", name, "--", "sleep", "1000", cwd=ws).returncode == 0
    assert ls(box_user)[name]["state"] == "running"
    assert box_user.coopy("kill", "-f", name).returncode == 0


def test_errors_name_the_state(box_user: BoxUser) -> None:
    res = box_user.coopy("attach", "no-such-box")
    assert res.returncode == 125 and "no box named 'no-such-box'" in res.stderr
    assert "coopy ls" in res.stderr


def test_exec_runs_beside_the_agent_with_pipes_and_status(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    assert box_user.coopy("-d", "-n", name, "--", "sleep", "1000", cwd=ws).returncode == 0
    res = box_user.coopy("exec", name, "--", "sh", "-c",
                         "cat; echo out; echo err >&2; grep -c sleep /proc/[0-9]*/comm "
                         "| grep -v ':0' | wc -l; grep Seccomp: /proc/self/status; exit 4",
                         input="from stdin\n")
    assert res.returncode == 4, res.stderr
    assert res.stdout.split("\n")[:3] == ["from stdin", "out", "1"]  # sees the agent
    assert "Seccomp:\t2" in res.stdout
    assert res.stderr == "err\n"
    missing = box_user.coopy("exec", name, "--", "no-such-cmd")
    assert missing.returncode == 127
    assert "cannot run 'no-such-cmd' in the box: not found" in missing.stderr
    assert box_user.coopy("kill", "-f", name).returncode == 0
    gone = box_user.coopy("exec", name, "--", "true")
    assert gone.returncode == 125 and "is exited, not running" in gone.stderr


def test_shells_beside_the_agent(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    assert box_user.coopy("-d", "-n", name, "--", "sleep", "1000", cwd=ws).returncode == 0
    c = spawn(box_user, ["shell", name, "-c", "tty; pwd; exit 6"], ws)
    try:
        c.expect(r"/dev/pts/\d+")
        c.expect(str(ws))
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)
    assert c.exitstatus == 6
    # an interactive shell: detach, it stays listed, reattach sees what it printed
    c = spawn(box_user, ["shell", name], ws)
    try:
        c.expect("# ")
        c.sendline("echo shell-$((3*3)) $0")
        c.expect("shell-9")
        c.send("\x1d")
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)
    listed = json.loads(box_user.coopy("shell", "ls", name, "--json").stdout)
    assert len(listed) == 1 and "bash -l" in listed[0]["command"][-1]
    c = spawn(box_user, ["shell", name], ws)
    try:
        c.expect("shell-9")  # the shell's own scrollback
        c.sendline("exit 2")
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)
    assert c.exitstatus == 2
    assert json.loads(box_user.coopy("shell", "ls", name, "--json").stdout) == []
    assert ls(box_user)[name]["state"] == "running"  # the agent is untouched
    assert box_user.coopy("kill", name).returncode == 0


def test_restart_keeps_the_box_and_its_clients(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    (ws / "coop.toml").write_text('[sandbox]\nagent = "sh -c \\"echo run-$$; exec sleep 1000\\""\n')
    assert box_user.coopy("-d", "-n", name, cwd=ws).returncode == 0
    deadline = time.monotonic() + TIMEOUT
    while "run-" not in box_user.coopy("logs", name).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    shell = box_user.coopy("exec", name, "--", "sh", "-c", "echo kept > /root/marker")
    assert shell.returncode == 0
    res = box_user.coopy("restart", name, cwd=ws)
    assert res.returncode == 0, res.stderr
    while box_user.coopy("logs", name).stdout.count("run-") < 2:
        assert time.monotonic() < deadline, box_user.coopy("logs", name).stdout
        time.sleep(0.05)
    assert ls(box_user)[name]["state"] == "running"
    # the upper layer stayed: what the box wrote outside the workspace is still there
    assert box_user.coopy("exec", name, "--", "cat", "/root/marker").stdout == "kept\n"
    assert box_user.coopy("kill", name).returncode == 0
    assert ls(box_user)[name]["state"] == "exited"


def test_auto_restart_stops_a_crash_loop(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    (ws / "coop.toml").write_text(
        '[sandbox]\nagent = "sh -c \\"echo crash; exit 3\\""\n\n'
        "[session]\nauto_restart = true\nrestart_delay_ms = 50\n")
    assert box_user.coopy("-d", "-n", name, cwd=ws).returncode == 0
    info = wait_state(box_user, name, "exited")
    assert info["exit_status"] == 3
    log = box_user.coopy("logs", name).stdout
    assert log.count("crash") == 3
    assert "exited 3 times within 5 s" in log and "not restarting" in log


def test_shell_attach_and_logs_by_id(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    assert box_user.coopy("-d", "-n", name, "--", "sleep", "1000", cwd=ws).returncode == 0
    c = spawn(box_user, ["shell", name, "--new"], ws)
    try:
        c.expect("# ")
        c.sendline("echo by-id-$((5*5))")
        c.expect("by-id-25")
        c.send("\x1d")
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)
    (shell,) = json.loads(box_user.coopy("shell", "ls", name, "--json").stdout)
    assert "by-id-25" in box_user.coopy("shell", "logs", str(shell["id"]), name).stdout
    assert "by-id-25" in box_user.coopy("logs", "--shell", str(shell["id"]), name).stdout
    missing = box_user.coopy("logs", "--shell", "99", name)
    assert missing.returncode == 125 and "has no shell 99" in missing.stderr
    c = spawn(box_user, ["shell", "attach", str(shell["id"]), name], ws)
    try:
        c.expect("by-id-25")
        c.sendline("exit 5")
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)
    assert c.exitstatus == 5
    assert box_user.coopy("kill", name).returncode == 0


def test_init_writes_a_loadable_commented_config(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    res = box_user.coopy("init", cwd=ws)
    assert res.returncode == 0, res.stderr
    text = (ws / "coop.toml").read_text()
    assert "[sandbox]" in text and "# image" in text
    again = box_user.coopy("init", cwd=ws)
    assert again.returncode == 125 and "--force" in again.stderr
    run = box_user.coopy("run", "--", "true", cwd=ws)  # the written file loads
    assert run.returncode == 0, run.stderr


def test_through_tmux_as_a_person_would(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    session = f"coopy-{name}"
    tmux = ["tmux", "-L", session]
    cmd = " ".join(f"'{a}'" for a in box_user.argv(["-n", name, "--", "sh"]))
    env = box_user.env()
    env_args = [f"{k}={v}" for k, v in env.items()]
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "100", "-y", "30",
                    "env", *env_args, "sh", "-c", f"cd {ws} && {cmd}; echo coopy-exit-$?; "
                    "sleep 30"], check=True, env=env)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", session],
                              capture_output=True, text=True).stdout

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while text not in screen():
            assert time.monotonic() < deadline, screen()
            time.sleep(0.05)

    try:
        wait_for("#")  # the box's prompt (capture-pane drops trailing blanks)
        subprocess.run([*tmux, "send-keys", "-t", session, "stty size; echo typed-$((4*4))",
                        "Enter"], check=True)
        wait_for("typed-16")
        assert "30 100" in screen() or "29 100" in screen()  # tmux's status line takes one
        subprocess.run([*tmux, "send-keys", "-t", session, "C-]"], check=True)
        wait_for(f"[detached from {name}")
        wait_for("coopy-exit-0")
        assert ls(box_user)[name]["state"] == "running"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert box_user.coopy("kill", name).returncode == 0


def test_logs_follow_and_rotation(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    (ws / "coop.toml").write_text('[session]\nlog_max = "64k"\n')
    script = ("i=0; while [ $i -lt 3000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxx; "
              "i=$((i+1)); done; echo all-done; exec sleep 1000")
    assert box_user.coopy("-d", "-n", name, "--", "sh", "-c", script, cwd=ws).returncode == 0
    follow = subprocess.Popen(box_user.argv(["logs", "-f", name]), env=box_user.env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        seen = ""
        assert follow.stdout is not None
        while "all-done" not in seen:
            assert time.monotonic() < deadline
            seen += follow.stdout.readline()
    finally:
        follow.kill()
        follow.wait()
    box = box_user.home / ".local/state/coopy/boxes" / name
    assert (box / "log").stat().st_size <= 64 * 1024
    assert (box / "log.1").exists()
    assert box_user.coopy("kill", name).returncode == 0


def test_terminal_restored_after_detach_and_after_the_box_ends(box_user: BoxUser,
                                                               name: str) -> None:
    ws = box_user.workspace()
    shell = pexpect.spawn("/bin/sh", cwd=str(ws), env=box_user.env({"PS1": "$ "}),
                          timeout=TIMEOUT, encoding="utf-8")
    try:
        shell.expect(r"\$ ")
        shell.sendline("stty -g > before")
        shell.expect(r"\$ ")
        argv = " ".join(f"'{a}'" for a in box_user.argv(["-n", name, "--", "sh"]))
        shell.sendline(argv)
        shell.expect("# ")
        shell.send("\x1d")
        shell.expect(r"\$ ")
        argv = " ".join(f"'{a}'" for a in box_user.argv(["attach", name]))
        shell.sendline(f"{argv}; echo status=$?")
        shell.expect("# ")
        shell.sendline("exit 4")
        shell.expect("status=4")
        shell.expect(r"\$ ")
        shell.sendline("stty -g > after; cmp before after && echo same-termios")
        shell.expect("same-termios")
    finally:
        shell.close(force=True)


def test_old_protocol_is_refused_with_the_fix(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    assert box_user.coopy("-d", "-n", name, "--", "sleep", "1000", cwd=ws).returncode == 0
    sock_path = ls(box_user)[name]
    record = json.loads((box_user.home / ".local/state/coopy/boxes" / name / "box.json")
                        .read_text())
    del sock_path
    import socket as sk

    from coopy import proto

    with sk.socket(sk.AF_UNIX) as s:
        s.connect(record["socket"])
        s.sendall(proto.encode_json(proto.T.HELLO, {"version": 0, "verb": "attach"}))
        (frame,) = proto.Decoder().feed(s.recv(4096))
    assert frame.type == proto.T.ERROR
    assert b"restart the box" in frame.payload
    assert box_user.coopy("kill", name).returncode == 0


def test_box_survives_its_clients_terminal_dying(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    c = spawn(box_user, ["-n", name, "--", "sh"], ws)
    c.expect("# ")
    c.close(force=True)  # the terminal goes away: SIGHUP, then SIGKILL
    time.sleep(0.3)
    assert ls(box_user)[name]["state"] == "running"
    assert box_user.coopy("exec", name, "--", "true").returncode == 0
    assert box_user.coopy("kill", name).returncode == 0


def test_restart_reports_what_needs_a_new_box(box_user: BoxUser, name: str) -> None:
    ws, data = box_user.workspace(), box_user.workspace()
    assert box_user.coopy("-d", "-n", name, "--", "sleep", "1000", cwd=ws).returncode == 0
    (ws / "data").mkdir()
    (ws / "coop.toml").write_text('[sandbox]\nmounts = ["./data:/data"]\n')
    res = box_user.coopy("restart", name, cwd=ws)
    assert res.returncode == 0, res.stderr
    assert "changed the box's mounts" in res.stderr and f"coopy rm -f {name}" in res.stderr
    del data
    assert box_user.coopy("kill", name).returncode == 0


def test_kill_sends_sigterm_to_every_process_of_the_box(box_user: BoxUser, name: str) -> None:
    ws = box_user.workspace()
    assert box_user.coopy("-d", "-n", name, "--", "sleep", "1000", cwd=ws).returncode == 0
    script = ws / "trap.sh"
    script.write_text("trap 'echo got-term > term-seen; exit 0' TERM\necho ready\n"
                      "while :; do sleep 0.05; done\n")
    proc = subprocess.Popen(box_user.argv(["exec", name, "--", "sh", str(script)]),
                            cwd=ws, env=box_user.env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert box_user.coopy("kill", name).returncode == 0
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (ws / "term-seen").read_text() == "got-term\n"


def test_scrollback_is_the_newest_bytes_up_to_its_size(box_user: BoxUser, name: str) -> None:
    import socket as sk

    from coopy import proto

    ws = box_user.workspace()
    (ws / "coop.toml").write_text('[session]\nscrollback = "8k"\n')
    assert box_user.coopy("-d", "-n", name, "--", "sh", "-c",
                          "seq 1 5000; exec sleep 1000", cwd=ws).returncode == 0
    deadline = time.monotonic() + TIMEOUT
    while "5000" not in box_user.coopy("logs", name).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    record = json.loads((box_user.home / ".local/state/coopy/boxes" / name / "box.json")
                        .read_text())
    got = b""
    with sk.socket(sk.AF_UNIX) as s:
        s.connect(record["socket"])
        s.sendall(proto.hello("attach", rows=24, cols=80))
        s.settimeout(0.5)
        decoder = proto.Decoder()
        with contextlib.suppress(TimeoutError):
            while data := s.recv(65536):
                got += b"".join(f.payload for f in decoder.feed(data) if f.type == proto.T.DATA)
    assert len(got) == 8192 and got.endswith(b"4999\r\n5000\r\n")
    # the log has all of it
    assert box_user.coopy("logs", name).stdout.startswith("1\n2\n3\n")
    assert box_user.coopy("kill", name).returncode == 0


def test_after_a_detach_nothing_of_the_box_reaches_the_terminal(box_user: BoxUser,
                                                                name: str) -> None:
    # The keeper writes the box's output to the client's terminal itself; a detach must
    # leave that terminal alone (and not non-blocking) before the shell gets it back.
    ws = box_user.workspace()
    assert box_user.coopy("-d", "-n", name, "--", "sh", "-c",
                          "while :; do echo tick; sleep 0.005; done", cwd=ws).returncode == 0
    shell = pexpect.spawn("/bin/sh", cwd=str(ws), env=box_user.env({"PS1": "$ "}),
                          timeout=TIMEOUT, encoding="utf-8")
    try:
        shell.expect(r"\$ ")
        argv = " ".join(f"'{a}'" for a in box_user.argv(["attach", name]))
        flags = ("/usr/bin/python3 -c 'import fcntl, os; "
                 "print(\"nonblock\", fcntl.fcntl(1, fcntl.F_GETFL) & os.O_NONBLOCK)'")
        shell.sendline(f"{argv}; sleep 0.5; echo after-$((6*7)); {flags}")
        for _ in range(20):
            shell.expect("tick")
        shell.send("\x1d")
        shell.expect(r"\[detached from \S+: `coopy attach \S+` to come back\]")
        shell.expect("after-42")
        assert "tick" not in shell.before
        shell.expect("nonblock 0")
    finally:
        shell.close(force=True)
    assert box_user.coopy("kill", name).returncode == 0


SCAN_TTYS = r"""
import os, stat
box_pts = os.stat("/dev/pts/ptmx").st_dev
leaks = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    for fd in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) and 136 <= os.major(st.st_rdev) <= 143 \
                and st.st_dev != box_pts:
            leaks.append(f"{pid}:{fd}")
print("terminals-from-outside", len(leaks), *leaks)
"""


def test_the_clients_terminal_never_enters_the_box(box_user: BoxUser, name: str) -> None:
    # The keeper holds the attached client's terminal to write output to it; no process
    # of the box may hold a terminal other than those of the box's own devpts.
    ws = box_user.workspace()
    (ws / "scan.py").write_text(SCAN_TTYS)
    c = spawn(box_user, ["-n", name, "--", "sh"], ws)
    try:
        c.expect("# ")
        c.sendline("python3 scan.py")
        c.expect(r"terminals-from-outside (\d+)")
        assert c.match.group(1) == "0", c.buffer
        c.sendline("exit 0")
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)
