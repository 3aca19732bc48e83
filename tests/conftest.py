"""Fixtures shared by every test: the coopy under test, the users it runs as, residue checks.

* ``coopy`` under test is the one installed in the test venv (``tests/run.sh`` installs
  the checkout there with ``pip install``), found next to the interpreter running pytest,
  so the tests exercise what users get, native helpers included.
* Behavioural tests take the ``box_user`` fixture, parametrized over ``root`` and
  ``rootless``.  The rootless user (``coopytest`` or ``$COOPY_TEST_USER``) is created with
  subordinate ids when the suite runs as root and it is missing.
* An autouse fixture fails any test that leaves mounts, processes, fds or box
  directories behind (STYLE.md rule 23).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
PROBE = HERE / "probe" / "probe.py"
TEST_USER = os.environ.get("COOPY_TEST_USER", "coopytest")
# Workspaces live here, not under pytest's tmp_path: /tmp/pytest-of-root is 0700 and the
# rootless user must be able to reach its own workspaces.
WORK_BASE = Path(os.environ.get("COOPY_TEST_WORK", "/var/tmp/coopy-test-work"))
COMMAND_TIMEOUT = 60


def _coopy_bin() -> str:
    candidate = Path(sys.executable).parent / "coopy"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("coopy")
    if not found:
        raise RuntimeError("coopy is not installed next to this python nor on PATH")
    return found


COOPY = _coopy_bin()


def ensure_test_user() -> pwd.struct_passwd:
    """The unprivileged test user, created (with subordinate ids) when missing."""
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pass
    if os.getuid() != 0:
        pytest.skip(f"test user {TEST_USER} is missing and only root can create it")
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", TEST_USER], check=True)
    user = pwd.getpwnam(TEST_USER)
    for f in ("/etc/subuid", "/etc/subgid"):
        text = Path(f).read_text() if Path(f).exists() else ""
        if not any(line.split(":")[0] == TEST_USER for line in text.splitlines()):
            subprocess.run(
                ["usermod", "--add-subuids" if f.endswith("uid") else "--add-subgids",
                 "200000-265535", TEST_USER],
                check=True,
            )
    return user


@dataclass
class BoxUser:
    """Runs coopy as one host user; ``name`` is ``root`` or ``rootless``."""

    name: str
    pw: pwd.struct_passwd
    made: list[Path] = field(default_factory=list)

    @property
    def uid(self) -> int:
        return self.pw.pw_uid

    @property
    def home(self) -> Path:
        return Path(self.pw.pw_dir)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            "HOME": self.pw.pw_dir,
            "USER": self.pw.pw_name,
            "LOGNAME": self.pw.pw_name,
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "TERM": "xterm",
            # A run started from a plan that fails says so instead of quietly going
            # through Python again: no test passes by that fallback (native/front/).
            "COOPY_PLAN_STRICT": "1",
        }
        env.update(extra or {})
        return env

    def argv(self, args: Sequence[str]) -> list[str]:
        """The full command line running ``coopy ARGS`` as this user."""
        cmd = [COOPY, *args]
        if self.uid == os.getuid():
            return cmd
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.pw.pw_gid}",
                "--init-groups", "--", *cmd]

    def coopy(
        self,
        *args: str,
        input: str | bytes | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run coopy with pipes (no terminal); text output."""
        data = input.decode() if isinstance(input, bytes) else input
        return subprocess.run(
            self.argv(args), input=data, capture_output=True, text=True,
            cwd=cwd, env=self.env(env), timeout=timeout,
            stdin=subprocess.DEVNULL if input is None else None,
        )

    def workspace(self) -> Path:
        """A fresh directory owned by this user (removed by the residue fixture)."""
        WORK_BASE.mkdir(mode=0o755, exist_ok=True)
        os.chmod(WORK_BASE, 0o755)
        path = WORK_BASE / f"{self.name}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        os.chown(path, self.uid, self.pw.pw_gid)
        self.made.append(path)
        return path

    def probe(self, *args: str, extra: Sequence[str] = (), cwd: Path | None = None,
              **kw: Any) -> dict[str, Any]:
        """Run the probe in a box (``coopy run ARGS -- python3 probe``) and parse it."""
        ws = cwd or self.workspace()
        shutil.copy(PROBE, ws / ".probe.py")
        os.chown(ws / ".probe.py", self.uid, self.pw.pw_gid)
        res = self.coopy("run", *args, "--", "python3", str(ws / ".probe.py"), *extra,
                         cwd=ws, **kw)
        assert res.returncode == 0, f"probe failed ({res.returncode}): {res.stderr}"
        return json.loads(res.stdout)

    def user_config(self, text: str) -> dict[str, str]:
        """A config.toml of this user's own (not a project's) holding ``text``; returns
        the environment that points coopy at it."""
        xdg = self.workspace()
        (xdg / "coopy").mkdir()
        (xdg / "coopy" / "config.toml").write_text(text)
        for path in (xdg / "coopy", xdg / "coopy" / "config.toml"):
            os.chown(path, self.uid, self.pw.pw_gid)
        return {"XDG_CONFIG_HOME": str(xdg)}

    def state_runs(self) -> list[str]:
        run_dir = self.home / ".local/state/coopy/run"
        try:
            return sorted(e for e in os.listdir(run_dir) if not e.startswith("skel-"))
        except FileNotFoundError:
            return []


@pytest.fixture(scope="session")
def rootless_pw() -> pwd.struct_passwd:
    return ensure_test_user()


def _users() -> list[Any]:
    return [
        pytest.param("root", marks=pytest.mark.root),
        pytest.param("rootless", marks=pytest.mark.rootless),
    ]


@pytest.fixture(params=_users())
def box_user(request: pytest.FixtureRequest) -> Iterator[BoxUser]:
    """coopy as root and as the unprivileged test user: every behavioural test runs twice."""
    if request.param == "root":
        if os.getuid() != 0:
            pytest.skip("not running as root (CI runs the suite as root)")
        user = BoxUser("root", pwd.getpwuid(0))
    else:
        pw = request.getfixturevalue("rootless_pw") if os.getuid() == 0 else pwd.getpwuid(
            os.getuid())
        user = BoxUser("rootless", pw)
    yield user
    for path in user.made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def rootless_user() -> Iterator[BoxUser]:
    """Only the unprivileged user: for what does not exist for root (newuidmap)."""
    pw = ensure_test_user() if os.getuid() == 0 else pwd.getpwuid(os.getuid())
    user = BoxUser("rootless", pw)
    yield user
    for path in user.made:
        shutil.rmtree(path, ignore_errors=True)


# ---- residue -----------------------------------------------------------------------------


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [" ".join(line.split()[3:5]) for line in f]


def _children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out.add(int(pid))
    return out


def _user_procs(uid: int) -> set[int]:
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    out.add(int(pid))
            except OSError:
                continue
    return out


def _box_inits() -> set[int]:
    """PID 1 of every box on the machine (their comm is coopy-init)."""
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "coopy-init":
                    out.add(int(pid))
            except OSError:
                continue
    return out


def _box_cgroups() -> set[str]:
    """Every box cgroup on the machine: the children of cgroups named ``coopy``
    (coopy/cgroup.py; those parents stay, like the state directory)."""
    out = set()
    for mount in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.exists(f"{mount}/cgroup.controllers"):
            for dirpath, dirs, _ in os.walk(mount):
                if os.path.basename(dirpath) == "coopy":
                    out.update(f"{dirpath}/{d}" for d in dirs)
            break
    return out


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _run_dirs() -> dict[str, list[str]]:
    out = {}
    for pw in pwd.getpwall():
        d = Path(pw.pw_dir) / ".local/state/coopy/run"
        try:
            # skel-* are shared skeleton layers, a cache kept on purpose
            out[pw.pw_name] = sorted(e for e in os.listdir(d) if not e.startswith("skel-"))
        except OSError:
            continue
    return out


def _wait_for(check: Any, timeout: float = 5.0) -> Any:
    """Poll ``check`` until it returns a falsy value or time runs out (processes exiting
    after SIGKILL are reaped asynchronously by the kernel)."""
    deadline = time.monotonic() + timeout
    result = check()
    while result and time.monotonic() < deadline:
        time.sleep(0.02)
        result = check()
    return result


@pytest.fixture(autouse=True)
def no_residue(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves mounts, processes, fds, box directories or cgroups behind."""
    if "unit" in request.node.path.parts:
        yield
        return
    mounts, fds, runs, inits = _mounts(), _fds(), _run_dirs(), _box_inits()
    cgroups = _box_cgroups()
    test_uid = None
    with contextlib.suppress(KeyError):
        test_uid = pwd.getpwnam(TEST_USER).pw_uid
    yield
    problems = []
    left = _wait_for(lambda: _children())
    if left:
        problems.append(f"child processes left: {sorted(left)}")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if test_uid is not None and os.getuid() == 0:
        procs = _wait_for(lambda: _user_procs(test_uid))
        if procs:
            problems.append(f"processes of {TEST_USER} left: {sorted(procs)}")
    boxes = _wait_for(lambda: _box_inits() - inits)
    if boxes:
        problems.append(f"boxes still running (their init pids): {sorted(boxes)}")
    new_mounts = set(_mounts()) - set(mounts)
    if new_mounts:
        problems.append(f"mounts left: {sorted(new_mounts)}")
    new_fds = _wait_for(lambda: _fds() - fds)
    if new_fds:
        problems.append(f"fds left open in the test process: {sorted(new_fds)}")
    left_cgroups = _wait_for(lambda: _box_cgroups() - cgroups)
    if left_cgroups:
        problems.append(f"box cgroups left: {sorted(left_cgroups)}")
    new_runs = {u: sorted(set(v) - set(runs.get(u, []))) for u, v in _run_dirs().items()}
    new_runs = {u: v for u, v in new_runs.items() if v}
    if new_runs:
        problems.append(f"box directories left: {new_runs}")
    if problems:
        pytest.fail("residue: " + "; ".join(problems))
