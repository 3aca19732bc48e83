"""Limits through cgroup v2, as root and in a cgroup delegated to the test user.

These tests change the machine (tests/cgroups.py: unmount the unused v1 ``pids`` and
``cpu`` hierarchies, delegate a cgroup to the test user), so they run only where that is
wanted: in CI (``CI=true``) or with ``COOPY_TEST_CGROUPS=1``, as root.  Elsewhere they
skip and say why; the rlimit fallback is tested everywhere (test_attacks.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import cgroups
from tests.conftest import BoxUser, ensure_test_user

TIMEOUT = 20


@dataclass
class Host:
    mount: Path
    delegated_procs: Path  # the test user's processes start in this cgroup


@pytest.fixture(scope="module")
def cgroup_host() -> Iterator[Host]:
    """A cgroup2 tree with pids and cpu, and a cgroup delegated to the test user."""
    if os.environ.get("CI") != "true" and os.environ.get("COOPY_TEST_CGROUPS") != "1":
        pytest.skip("changes the host's cgroups (unmounts unused v1 hierarchies, delegates "
                    "a cgroup): set COOPY_TEST_CGROUPS=1 (CI=true does) to run")
    if os.getuid() != 0:
        pytest.skip("preparing the host's cgroups needs root")
    problems = cgroups.free_v1()
    mount = cgroups.unified_mount()
    if problems or mount is None:
        message = f"no cgroup v2 tree with pids and cpu here: {'; '.join(problems)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (.ci/run frees them)")
        pytest.skip(message)
    pw = ensure_test_user()
    procs = cgroups.delegate(pw.pw_uid, pw.pw_gid)
    yield Host(mount, procs)
    cgroups.undelegate(pw.pw_uid)


@dataclass
class InCgroup(BoxUser):
    """The test user's coopy started in its delegated cgroup (as systemd starts a user's
    programs); root's as it is."""

    procs: str = ""

    def argv(self, args: list[str]) -> list[str]:  # type: ignore[override]
        inner = super().argv(args)
        if not self.procs:
            return inner
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', self.procs, *inner]


@pytest.fixture
def user(box_user: BoxUser, cgroup_host: Host) -> InCgroup:
    procs = str(cgroup_host.delegated_procs) if box_user.uid != 0 else ""
    return InCgroup(box_user.name, box_user.pw, box_user.made, procs=procs)


def parent(user: InCgroup, host: Host) -> Path:
    """Where coopy makes this user's box cgroups (coopy/cgroup.py)."""
    if user.uid == 0:
        return host.mount / "coopy"
    return Path(user.procs).parent.parent / "coopy"


def new_box_cgroup(user: InCgroup, host: Host, before: set[str]) -> Path:
    """The box cgroup that appears beside ``before`` (waits for it)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        new = listing(user, host) - before
        if new:
            assert len(new) == 1, new
            path = parent(user, host) / new.pop()
            if (path / "box" / "cgroup.procs").read_text().strip():
                return path
        time.sleep(0.02)
    pytest.fail("the box's cgroup never appeared")


def listing(user: InCgroup, host: Host) -> set[str]:
    """The box cgroups (directories; the rest are the cgroup's files)."""
    try:
        return {e.name for e in os.scandir(parent(user, host)) if e.is_dir()}
    except FileNotFoundError:
        return set()


def test_fork_bomb_stops_at_pids_max_and_the_host_stays_usable(
        user: InCgroup, cgroup_host: Host) -> None:
    ws = user.workspace()
    env = user.user_config("[limits]\npids = 64\n")
    (ws / "bomb.py").write_text(
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    while True:\n"
        "        try:\n            os.fork()\n"
        "        except OSError:\n            time.sleep(0.01)\n"
        "time.sleep(4)\nprint('survived')\n")
    before = listing(user, cgroup_host)
    proc = subprocess.Popen(user.argv(["run", "--", "python3", str(ws / "bomb.py")]), cwd=ws,
                            env=user.env(env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        box = new_box_cgroup(user, cgroup_host, before)
        assert (box / "pids.max").read_text().strip() == "64"
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            hits = int((box / "pids.events").read_text().split()[1])
            if hits:
                break
            time.sleep(0.05)
        assert hits > 0, "the fork bomb never reached pids.max"
        assert int((box / "pids.current").read_text()) <= 64
        # the host, and another box, still start processes at once
        t0 = time.monotonic()
        subprocess.run(["true"], check=True)
        other = user.coopy("run", "--", "true", cwd=user.workspace(), timeout=30)
        assert other.returncode == 0, other.stderr
        assert time.monotonic() - t0 < 15
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.strip() == "survived"
    assert not box.exists(), "the box's cgroup outlived it"


def test_without_cgroups_the_pid_rlimit_holds(user: InCgroup, cgroup_host: Host) -> None:
    """COOPY_CGROUPS=0 on a host that has them: the RLIMIT_NPROC fallback, as root too."""
    ws = user.workspace()
    env = {**user.user_config("[limits]\npids = 40\n"), "COOPY_CGROUPS": "0"}
    (ws / "bomb.py").write_text(
        "import os, time\nn, err = 0, 'none'\n"
        "while n < 200:\n"
        "    try:\n"
        "        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n"
        "    except OSError as e:\n        err = e.strerror\n        break\n"
        "    n += 1\n"
        "os.kill(-1, 9)  # every process of the box but init and this one\n"
        "print(n, err)\n")
    before = listing(user, cgroup_host)
    res = user.coopy("run", "--", "python3", str(ws / "bomb.py"), cwd=ws, env=env)
    assert res.returncode == 0, res.stderr
    count, err = res.stdout.split(maxsplit=1)
    assert 30 <= int(count) <= 38 and err.strip() == "Resource temporarily unavailable"
    assert listing(user, cgroup_host) == before  # no cgroup was made


def test_cpus_throttle_a_busy_loop(user: InCgroup, cgroup_host: Host) -> None:
    ws = user.workspace()
    env = user.user_config("[limits]\ncpus = 0.5\n")
    code = ("import time\nwall, cpu = time.monotonic(), time.process_time()\n"
            "while time.monotonic() - wall < 2:\n    pass\n"
            "print(open('/proc/self/cgroup').read().splitlines()[-1], "
            "(time.process_time() - cpu) / (time.monotonic() - wall))\n")
    res = user.coopy("run", "--", "python3", "-c", code, cwd=ws, env=env)
    assert res.returncode == 0, res.stderr
    assert "cpus" not in res.stderr  # no "not applied" warning
    inside, ratio = res.stdout.split()
    assert inside == "0::/"  # its own cgroup namespace: the limits are out of its sight
    assert 0.2 < float(ratio) < 0.65, f"a busy loop got {float(ratio):.2f} of a CPU"


@pytest.fixture
def name(user: InCgroup) -> Iterator[str]:
    box = f"t{uuid.uuid4().hex[:8]}"
    yield box
    user.coopy("rm", "-f", box)


def _ls(user: InCgroup, box: str) -> dict[str, object]:
    res = user.coopy("ls", "--json")
    assert res.returncode == 0, res.stderr
    info: dict[str, object] = {b["name"]: b for b in json.loads(res.stdout)}[box]
    return info


def _keeper(user: InCgroup, box: str) -> int:
    pid = _ls(user, box)["pid"]
    assert isinstance(pid, int)
    return pid


def _state(user: InCgroup, box: str) -> object:
    return _ls(user, box)["state"]


def test_persistent_box_cgroup_holds_its_limits_until_kill(
        user: InCgroup, cgroup_host: Host, name: str) -> None:
    ws = user.workspace()
    env = user.user_config("[limits]\ncpus = 0.5\npids = 100\n")
    before = listing(user, cgroup_host)
    res = user.coopy("-d", "-n", name, "--", "sleep", "1000", cwd=ws, env=env)
    assert res.returncode == 0, res.stderr
    box = new_box_cgroup(user, cgroup_host, before)
    assert box.name.endswith(f"-{name}")
    assert (box / "cpu.max").read_text().split() == ["50000", "100000"]
    assert (box / "pids.max").read_text().strip() == "100"
    members = (box / "box" / "cgroup.procs").read_text().split()
    comms = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in members}
    assert {"coopy-init", "sleep"} <= comms
    # a shell started later is in the box's cgroup too
    res = user.coopy("exec", name, "--", "cat", "/proc/self/cgroup")
    assert res.returncode == 0 and res.stdout.splitlines()[-1] == "0::/", res.stderr
    assert user.coopy("kill", name).returncode == 0
    assert not box.exists()


def test_each_limit_falls_back_alone(user: InCgroup, cgroup_host: Host, name: str) -> None:
    """pids in the cgroup and, where cgroup2 has no memory controller (here: v1 holds it),
    memory as RLIMIT_DATA in the same box; nofile is always RLIMIT_NOFILE."""
    ws = user.workspace()
    env = user.user_config('[limits]\npids = 200\nmemory = "64m"\nnofile = 1000\n')
    before = listing(user, cgroup_host)
    assert user.coopy("-d", "-n", name, "--", "sleep", "1000", cwd=ws, env=env).returncode == 0
    box = new_box_cgroup(user, cgroup_host, before)
    sleep = next(pid for pid in (box / "box" / "cgroup.procs").read_text().split()
                 if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep")
    limits = {line[:26].strip(): line[26:].split()[0]
              for line in Path(f"/proc/{sleep}/limits").read_text().splitlines()[1:]}
    assert (box / "pids.max").read_text().strip() == "200"
    assert limits["Max processes"] != "200"  # the cgroup counts them, not RLIMIT_NPROC
    if (box / "memory.max").exists():
        assert (box / "memory.max").read_text().strip() == str(64 << 20)
        assert (box / "memory.swap.max").read_text().strip() == "0"
        assert limits["Max data size"] == "unlimited"
    else:
        assert limits["Max data size"] == str(64 << 20)
    assert limits["Max open files"] == "1000"
    assert user.coopy("kill", name).returncode == 0
    assert not box.exists()


def test_killed_keeper_cgroup_goes_with_rm(user: InCgroup, cgroup_host: Host,
                                           name: str) -> None:
    ws = user.workspace()
    before = listing(user, cgroup_host)
    assert user.coopy("-d", "-n", name, "--", "sleep", "1000", cwd=ws).returncode == 0
    box = new_box_cgroup(user, cgroup_host, before)
    os.kill(_keeper(user, name), signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT
    while _state(user, name) != "exited" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert box.exists()  # nobody was left to remove it
    assert user.coopy("rm", name).returncode == 0
    assert not box.exists()


def test_killed_run_cgroup_is_swept_by_the_next_run(user: InCgroup, cgroup_host: Host) -> None:
    ws = user.workspace()
    before = listing(user, cgroup_host)
    proc = subprocess.Popen(user.argv(["run", "--", "sleep", "1000"]), cwd=ws,
                            env=user.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        box = new_box_cgroup(user, cgroup_host, before)
        os.kill(proc.pid, signal.SIGKILL)  # sh exec'd setpriv exec'd coopy: same pid
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + TIMEOUT
    while (box / "box" / "cgroup.procs").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not (box / "box" / "cgroup.procs").read_text(), "box processes survived"
    res = user.coopy("run", "--", "true", cwd=ws)
    assert res.returncode == 0, res.stderr
    assert not box.exists()


def test_doctor_names_the_cgroup_tree(user: InCgroup, cgroup_host: Host) -> None:
    res = user.coopy("doctor", "--json", "--no-box", cwd=user.workspace())
    assert res.returncode == 0, res.stderr
    check = {c["name"]: c for c in json.loads(res.stdout)}["cgroups"]
    who = "as root" if user.uid == 0 else "delegated to you"
    assert f"box cgroups under {parent(user, cgroup_host)} ({who})" in check["detail"]
    assert "pids: pids.max" in check["detail"] and "cpus: cpu.max" in check["detail"]


CHILD_IN_CGROUP = """
import os, sys, threading
from coopy.cgroup import fork_into, join
stop = threading.Event()
workers = [threading.Thread(target=stop.wait) for _ in range(int(sys.argv[2]))]
for t in workers:
    t.start()
r, w = os.pipe()
pid, procs = fork_into(sys.argv[1])
if pid == 0:
    if procs >= 0:
        join(procs, sys.argv[1])
    os.write(w, f"{procs >= 0} {open('/proc/self/cgroup').read().splitlines()[-1]}".encode())
    os._exit(0)
os.close(w)
print(os.read(r, 4096).decode())
os.waitpid(pid, 0)
stop.set()
"""


@pytest.mark.parametrize("threads", [0, 1])
def test_a_child_starts_in_the_cgroup_by_clone3_or_by_joining(cgroup_host: Host,
                                                               threads: int) -> None:
    """spawn.py's step 0 both ways: clone3(CLONE_INTO_CGROUP) from a single-threaded
    process, else a fork whose child first writes itself into cgroup.procs."""
    path = cgroup_host.mount / "coopy" / f"test-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        res = subprocess.run([sys.executable, "-c", CHILD_IN_CGROUP, str(path), str(threads)],
                             capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        path.rmdir()
    assert res.returncode == 0, res.stderr
    joined, where = res.stdout.split()
    assert joined == str(bool(threads))  # clone3 needs no join
    assert where == f"0::/{path.relative_to(cgroup_host.mount)}"


def test_a_run_from_the_plan_cache_gets_its_cgroup_too(user: InCgroup, cgroup_host: Host) -> None:
    """The native front end replays the box's cgroup (plancache.py: cgroup, cglimit)."""
    ws = user.workspace()
    env = {**user.user_config("[limits]\npids = 77\ncpus = 0.5\n"), "COOPY_DEBUG_FRONTEND": "1"}
    first = user.coopy("run", "--", "true", cwd=ws, env=env)
    assert first.returncode == 0, first.stderr
    before = listing(user, cgroup_host)
    err = ws / "stderr"
    with open(err, "w") as f:
        proc = subprocess.Popen(user.argv(["run", "--", "sleep", "3"]), cwd=ws,
                                env=user.env(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=f)
    try:
        box = new_box_cgroup(user, cgroup_host, before)
        assert (box / "pids.max").read_text().strip() == "77"
        assert (box / "cpu.max").read_text().split() == ["50000", "100000"]
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "starting the box from the plan" in err.read_text(), err.read_text()
    assert not box.exists()
