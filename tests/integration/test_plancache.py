"""The plan cache: `coopy run` started by the native front end without Python.

The first run of an invocation goes through Python and writes a plan; the same
invocation again is started from it (native/front/).  These tests run each case twice
and assert that the second run came from the plan and that the box it made is the same
box, seen from inside by the probe; then that every change that matters (a coop.toml
created or edited, a mount source gone) sends the run back through Python.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.conftest import BoxUser

HIT = "starting the box from the plan"
DEBUG = {"COOPY_DEBUG_FRONTEND": "1"}  # not part of the key


def twice(user: BoxUser, *args: str, cwd: Path, new: bool = True, **kw: Any,
          ) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """Run twice; the second from the plan (the first too unless ``new``)."""
    first = user.coopy(*args, cwd=cwd, env=DEBUG, **kw)
    assert (HIT not in first.stderr) == new, first.stderr
    second = user.coopy(*args, cwd=cwd, env=DEBUG, **kw)
    assert HIT in second.stderr, f"not started from the plan: {second.stderr}"
    return first, second


@contextlib.contextmanager
def started(user: BoxUser, args: list[str], cwd: Path, env: dict[str, str],
            stdout: int = subprocess.DEVNULL) -> Iterator[subprocess.Popen[str]]:
    """`coopy ARGS` running in the background; killed on the way out if still there."""
    proc = subprocess.Popen(user.argv(args), cwd=cwd, env=user.env(env),
                            stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                            text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _probe_view(user: BoxUser, ws: Path, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    (ws / "probe.py").write_text(Path(__file__).parent.parent.joinpath(
        "probe", "probe.py").read_text())
    os.chown(ws / "probe.py", user.uid, user.pw.pw_gid)
    import json

    first, second = twice(user, "run", *args, "--", "python3", str(ws / "probe.py"), cwd=ws)
    assert first.returncode == second.returncode == 0, (first.stderr, second.stderr)
    return json.loads(first.stdout), json.loads(second.stdout)


def _comparable(view: dict[str, Any]) -> dict[str, Any]:
    """What must be equal between two boxes of one invocation (not pids, not run ids)."""
    text = re.sub(r"/run/[0-9a-f]{12}", "/run/ID", repr(view["mounts"]))
    keep = {k: v for k, v in view.items() if k not in ("mounts", "pid", "ppid", "pids")}
    return keep | {"mounts": text}


@pytest.mark.parametrize("args", [
    [],
    ["--net", "host", "--hostname", "other"],
    ["-v", "{src}:/data:ro", "-e", "FOO=bar", "--shm-size", "32m"],
    ["--user", "agent"],
], ids=["default-none", "host-net", "volume-env", "named-user"])
def test_replayed_box_is_the_same_box(box_user: BoxUser, args: list[str]) -> None:
    ws = box_user.workspace()
    src = box_user.workspace()
    (src / "file").write_text("data\n")
    args = [a.format(src=src) for a in args]
    if "--net" not in args:
        args = ["--net", "none", *args]
    if "--user" in args and box_user.name == "root":
        # A named user in a box of root needs a second id map for the workspace: such
        # runs are not replayed, and each goes through Python.
        for _ in range(2):
            res = box_user.coopy("run", *args, "--", "id", "-un", cwd=ws, env=DEBUG)
            assert res.returncode == 0 and res.stdout == "agent\n"
            assert HIT not in res.stderr
        return
    python, native = _probe_view(box_user, ws, *args)
    assert _comparable(native) == _comparable(python)
    assert native["pid"] == python["pid"]  # the same process tree shape inside


def test_exit_status_signals_and_stdin(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    for cmd, want in (("exit 7", 7), ("kill -9 $$", 137)):
        first, second = twice(box_user, "run", "--net", "none", "--", "sh", "-c", cmd, cwd=ws,
                              new=cmd == "exit 7")
        assert first.returncode == second.returncode == want
    first, second = twice(box_user, "run", "--net", "none", "--", "no-such-command", cwd=ws,
                          new=False)
    assert first.returncode == second.returncode == 127
    assert "no-such-command" in second.stderr
    first, second = twice(box_user, "run", "--net", "none", "--", "tr", "a-z", "A-Z", cwd=ws,
                          input="piped in\n", new=False)
    assert first.stdout == second.stdout == "PIPED IN\n"


def test_one_plan_serves_every_command(box_user: BoxUser) -> None:
    """The command after `--` is not part of the key: same options, any command."""
    ws = box_user.workspace()
    first = box_user.coopy("run", "--net", "none", "--", "echo", "one", cwd=ws, env=DEBUG)
    second = box_user.coopy("run", "--net", "none", "--", "sh", "-c", "echo two; exit 4",
                            cwd=ws, env=DEBUG)
    assert (first.stdout, first.returncode) == ("one\n", 0) and HIT not in first.stderr
    assert (second.stdout, second.returncode) == ("two\n", 4) and HIT in second.stderr
    # Other options are another plan.
    third = box_user.coopy("run", "--net", "none", "-e", "X=1", "--", "true", cwd=ws,
                           env=DEBUG)
    assert third.returncode == 0 and HIT not in third.stderr


def test_sigterm_reaches_the_command(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    args = ["run", "--net", "none", "--", "sh", "-c", "trap 'echo got-term; exit 3' TERM; "
            "echo ready; while :; do sleep 0.1; done"]
    for _ in range(2):  # the first run writes the plan, the second is started from it
        with started(box_user, args, ws, DEBUG, stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=20)
        assert "got-term" in out
        assert proc.returncode == 3
    assert HIT in err


def test_terminal_through_the_plan(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    args = ["run", "--net", "none", "--", "sh", "-c", "tty; stty size; read x; echo got-$x"]
    shell = pexpect.spawn("/bin/sh", cwd=str(ws), env=box_user.env({"PS1": "$ ", **DEBUG}),
                          dimensions=(31, 97), timeout=20, encoding="utf-8")
    try:
        for word in ("first", "second"):  # the second run is started from the plan
            shell.sendline(" ".join(box_user.argv(args)))
            if word == "second":
                shell.expect(HIT)
            shell.expect(r"/dev/pts/\d+\r\n")
            shell.expect("31 97\r\n")
            shell.sendline(word)
            shell.expect(f"got-{word}")
            shell.expect(r"\$ ")
        # The caller's terminal is back in its own mode (canonical, echo).
        shell.sendline("stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e echo | tr '\\n' ' '; "
                       "echo")
        shell.expect("icanon echo")
        shell.sendline("exit")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)


def test_a_new_or_changed_coop_toml_is_seen(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    args = ("run", "--net", "none", "--", "sh", "-c", "echo v=$FOO")
    first, second = twice(box_user, *args, cwd=ws)
    assert second.stdout == "v=\n"
    toml = ws / "coop.toml"
    toml.write_text('[env]\nFOO = "one"\n')
    os.chown(toml, box_user.uid, box_user.pw.pw_gid)
    third = box_user.coopy(*args, cwd=ws, env=DEBUG)
    assert HIT not in third.stderr and third.stdout == "v=one\n"
    toml.write_text('[env]\nFOO = "two"\n')
    fourth = box_user.coopy(*args, cwd=ws, env=DEBUG)
    assert HIT not in fourth.stderr and fourth.stdout == "v=two\n"
    fifth = box_user.coopy(*args, cwd=ws, env=DEBUG)
    assert HIT in fifth.stderr and fifth.stdout == "v=two\n"


def test_a_gone_mount_source_is_a_miss(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    src = box_user.workspace()
    args = ("run", "--net", "none", "-v", f"{src}:/data", "--", "true")
    twice(box_user, *args, cwd=ws)
    src.rmdir()  # the plan saw it: not used, and Python says what is wrong
    res = box_user.coopy(*args, cwd=ws, env=DEBUG)
    assert res.returncode == 125 and HIT not in res.stderr
    assert f"{src} does not exist" in res.stderr


def test_failure_before_the_command_falls_back_to_python(box_user: BoxUser) -> None:
    """A failure the plan could not foresee (here: the shared skeleton layer removed
    behind its back) drops the plan and runs the same invocation through Python."""
    ws = box_user.workspace()
    args = ("run", "--net", "none", "--", "sh", "-c", "echo fine")
    runs = box_user.home / ".local/state/coopy/run"
    twice(box_user, *args, cwd=ws)
    for skel in runs.glob("skel-*"):
        shutil.rmtree(skel)
    res = box_user.coopy(*args, cwd=ws, env={**DEBUG, "COOPY_PLAN_STRICT": "0"})
    assert res.returncode == 0 and res.stdout == "fine\n", res.stderr
    assert HIT in res.stderr and "starting the box failed" in res.stderr
    # That run went through Python, which wrote the plan again; the suite's strict mode
    # turns the same failure into an error, so no other test passes by the fallback.
    for skel in runs.glob("skel-*"):
        shutil.rmtree(skel)
    res = box_user.coopy(*args, cwd=ws, env=DEBUG)
    assert res.returncode == 125 and res.stdout == ""
    assert "could not be started from its plan" in res.stderr
    res = box_user.coopy(*args, cwd=ws, env=DEBUG)  # the plan went with the failure
    assert res.returncode == 0 and HIT not in res.stderr


def test_plans_are_private_and_bounded(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    twice(box_user, "run", "--net", "none", "--", "true", cwd=ws)
    plans = box_user.home / ".local/state/coopy/plans"
    assert plans.stat().st_mode & 0o777 == 0o700
    for entry in plans.iterdir():
        assert entry.stat().st_uid == box_user.uid
        assert entry.stat().st_mode & 0o077 == 0
    # A plan another user could write is not used.
    newest = max(plans.iterdir(), key=lambda e: e.stat().st_mtime_ns)
    os.chmod(newest, 0o622)
    res = box_user.coopy("run", "--net", "none", "--", "true", cwd=ws, env=DEBUG)
    assert res.returncode == 0 and HIT not in res.stderr
    time.sleep(0)


def test_private_network_from_the_plan(box_user: BoxUser) -> None:
    """The default network: the front end starts the NAT helper and blocks the same
    prefixes (the host's own addresses read again at each start)."""
    ws = box_user.workspace()
    show = ("ip -o route show type unreachable | cut -d' ' -f2 | sort; "
            "ip -o -4 addr show | grep -v ' lo ' | wc -l; ip route show default | wc -l")
    first, second = twice(box_user, "run", "--", "sh", "-c", show, cwd=ws)
    assert first.returncode == second.returncode == 0, second.stderr
    assert first.stdout == second.stdout
    lines = second.stdout.split()
    assert "169.254.0.0/16" in lines
    assert lines[-2:] == ["1", "1"]  # an address and a default route: the helper's work


def test_killed_front_end_leaves_nothing(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    args = ["run", "--", "sleep", "60"]
    box_user.coopy("run", "--", "true", cwd=ws, env=DEBUG)  # writes the plan
    for _ in range(2):  # both started from it
        with started(box_user, args, ws, DEBUG) as proc:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # the box's command is running
                out = subprocess.run(["pgrep", "-f", "-x", "sleep 60"], capture_output=True,
                                     text=True).stdout
                if out.strip():
                    break
                time.sleep(0.05)
            helpers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                     text=True).stdout.split()
            assert helpers, "no children: the box did not start"
            proc.kill()
            proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                os.path.exists(f"/proc/{pid}") for pid in helpers):
            time.sleep(0.05)
        assert not any(os.path.exists(f"/proc/{pid}") for pid in helpers)
    assert proc.stderr is not None
    assert HIT in proc.stderr.read()
    # The killed runs' directories (their locks now free) go with the next run.
    res = box_user.coopy("run", "--net", "none", "--", "true", cwd=ws,
                         env={"COOPY_NO_PLAN_CACHE": "1"})
    assert res.returncode == 0, res.stderr


def test_a_signal_during_set_up_leaves_nothing(box_user: BoxUser) -> None:
    """SIGTERM at any moment of a start from a plan: the box gets it once it runs, or
    the front end dies before making anything; never a half-made box left behind."""
    ws = box_user.workspace()
    box_user.coopy("run", "--", "true", cwd=ws)  # writes the plan
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.04):
        with started(box_user, ["run", "--", "sleep", "30"], ws, {}) as proc:
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode in (143, -signal.SIGTERM), (delay, proc.returncode, err)
    # Directories of runs that died before their box existed go with the next run.
    res = box_user.coopy("run", "--", "true", cwd=ws)
    assert res.returncode == 0, res.stderr
