"""Every way ``coopy run`` can be refused: the exact message, exit 125, and no residue.

Host conditions (no newuidmap, no subordinate ids, user namespaces off, an upper dir
that cannot hold overlay's xattrs) are made real for one command only, inside a mount
namespace the test creates (``unshare --mount`` as root, then ``setpriv`` to the test
user): the host itself is never changed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import COOPY, BoxUser


def in_mount_ns(user: BoxUser, setup: str, args: list[str], cwd: Path,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``coopy ARGS`` as ``user`` after ``setup`` (shell, as root) in a private mount ns."""
    if os.getuid() != 0:
        pytest.skip("needs root to prepare a mount namespace")
    coopy = " ".join(f"'{a}'" for a in user.argv(args))
    script = f"set -e; mount --make-rprivate /; {setup}; exec {coopy}"
    return subprocess.run(
        ["unshare", "--mount", "--", "sh", "-c", script], capture_output=True, text=True,
        cwd=cwd, env=user.env(env), timeout=60, stdin=subprocess.DEVNULL,
    )


def assert_refused(res: subprocess.CompletedProcess[str], message: str, hint: str) -> None:
    assert res.returncode == 125, (res.returncode, res.stderr)
    lines = res.stderr.splitlines()
    assert lines[0].startswith("coopy: ") and message in lines[0], res.stderr
    assert any(line.startswith("hint: ") and hint in line for line in lines), res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.rootless
def test_missing_newuidmap(rootless_user: BoxUser) -> None:
    # Root writes its maps itself; newuidmap is what an ordinary user needs.
    box_user = rootless_user
    ws = box_user.workspace()
    res = in_mount_ns(
        box_user,
        "mount --bind /dev/null /usr/bin/newuidmap; mount --bind /dev/null /usr/bin/newgidmap",
        ["run", "--", "true"], ws,
    )
    assert_refused(res, "newuidmap/newgidmap not found", "apt install uidmap")


def test_no_subordinate_ids(box_user: BoxUser, tmp_path: Path) -> None:
    ws = box_user.workspace()
    empty = tmp_path / "empty"
    empty.write_text("")
    os.chmod(tmp_path, 0o755)
    os.chmod(empty, 0o644)
    setup = f"mount --bind {empty} /etc/subuid; mount --bind {empty} /etc/subgid"
    home = ws / "home"
    home.mkdir()
    os.chown(home, box_user.uid, box_user.pw.pw_gid)
    args = ["run", "--", "cat", "/proc/self/uid_map"]
    res = in_mount_ns(box_user, setup, args, ws, env={"COOPY_HOME": str(home)})
    if box_user.name == "root":
        assert_refused(res, "root has no subordinate id range", "usermod --add-subuids")
        return
    # Rootless: a single-id box, and the warning is said once.
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", str(box_user.uid), "1"]
    assert "has no subordinate ids" in res.stderr and "hint: sudo usermod" in res.stderr
    again = in_mount_ns(box_user, setup, args, ws, env={"COOPY_HOME": str(home)})
    assert again.returncode == 0 and "subordinate" not in again.stderr


def test_user_namespaces_disabled(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    # A user namespace of the test's own whose limit is 0: the kernel refuses any new
    # one inside it, as on a host with user.max_user_namespaces = 0.
    script = "echo 0 > /proc/sys/user/max_user_namespaces && exec " + " ".join(
        [COOPY, "run", "--", "true"])
    res = subprocess.run(
        box_user.argv([])[:-1] + ["unshare", "--user", "--map-root-user", "sh", "-c", script]
        if box_user.uid != os.getuid() else
        ["unshare", "--user", "--map-root-user", "sh", "-c", script],
        capture_output=True, text=True, cwd=ws, env=box_user.env(), timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert_refused(res, "user namespaces are disabled (user.max_user_namespaces = 0)",
                   "sysctl -w user.max_user_namespaces")


def test_state_dir_on_overlayfs_is_refused(box_user: BoxUser) -> None:
    # As inside a Docker container, whose root is overlayfs: overlay cannot use an
    # overlayfs directory as its upper layer.
    ws = box_user.workspace()
    for sub in ("l", "u", "w", "m"):
        (ws / sub).mkdir()
    setup = (f"mount -t overlay overlay -o lowerdir={ws}/l,upperdir={ws}/u,workdir={ws}/w "
             f"{ws}/m; chown {box_user.uid} {ws}/m")
    res = in_mount_ns(box_user, setup, ["run", "--", "true"], ws,
                      env={"COOPY_HOME": str(ws / "m" / "home")})
    assert_refused(res, "", "set COOPY_HOME to a directory on one")


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (["-v", "nocolon"], '-v: "nocolon": expected', "~/data:/data:ro"),
        (["-v", "/etc:relative"], 'the target "relative" must start with /', "~/data:/data:ro"),
        (["-v", "/no/such/dir:/x"], "mount source /no/such/dir does not exist", "create it"),
        (["-v", "/etc:/x:rx"], 'unknown option "rx"', "~/data:/data:ro"),
        (["--image", "Ubuntu"], "invalid repository name 'library/Ubuntu'", "names are lower case"),
        (["--net", "bogus"], "argument --net: invalid choice", "coopy run --help"),
        (["-e", "1BAD=x"], "-e 1BAD=x: not a variable name", "KEY=VALUE"),
    ],
)
def test_bad_arguments(box_user: BoxUser, args: list[str], message: str, hint: str) -> None:
    res = box_user.coopy("run", *args, "--", "true", cwd=box_user.workspace())
    assert res.returncode == 125, res.stderr
    assert message in res.stderr.splitlines()[0], res.stderr
    assert hint in res.stderr
    assert "Traceback" not in res.stderr


def test_no_command(box_user: BoxUser) -> None:
    res = box_user.coopy("run", cwd=box_user.workspace())
    assert_refused(res, "no command given", "coopy run [OPTIONS] -- COMMAND")


def test_bad_config_points_at_the_line(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    (ws / "coop.toml").write_text('[sandbox]\nimage = "host"\nimgae = "x"\n')
    res = box_user.coopy("run", "--", "true", cwd=ws)
    assert res.returncode == 125
    assert "coop.toml:3:" in res.stderr and 'did you mean "image"' in res.stderr, res.stderr


def test_unknown_verb_suggests(box_user: BoxUser) -> None:
    res = box_user.coopy("rnu")
    assert_refused(res, "unknown verb 'rnu'", "coopy run")


def test_debug_shows_the_trace(box_user: BoxUser) -> None:
    res = box_user.coopy("--debug", "run", "-v", "/no/such:/x", "--", "true",
                         cwd=box_user.workspace())
    assert res.returncode == 125
    assert "Traceback" in res.stderr


def _descendants(pid: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def test_killing_coopy_kills_the_box_and_the_next_run_cleans_up(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    before = box_user.state_runs()
    proc = subprocess.Popen(box_user.argv(["run", "--", "sleep", "1000"]), cwd=ws,
                            env=box_user.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        box: set[int] = set()
        while time.monotonic() < deadline:
            box = _descendants(proc.pid)
            comms = set()
            for pid in box:
                with contextlib.suppress(OSError):
                    comms.add(Path(f"/proc/{pid}/comm").read_text().strip())
            if "sleep" in comms:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the box never started")
        os.kill(proc.pid, signal.SIGKILL)  # setpriv exec'd coopy: same pid
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in box):
            time.sleep(0.02)
        assert not [p for p in box if Path(f"/proc/{p}").exists()], "box processes survived"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(box_user.state_runs()) == len(before) + 1  # left by the killed run
    res = box_user.coopy("run", "--", "true", cwd=ws)
    assert res.returncode == 0, res.stderr
    assert box_user.state_runs() == before  # swept by the next run


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden"])
def test_bad_box_names(box_user: BoxUser, name: str) -> None:
    """A box name is one path component: `-n ../x` must not reach outside the boxes dir."""
    ws = box_user.workspace()
    res = box_user.coopy("-d", "-n", name, "--", "true", cwd=ws)
    assert res.returncode == 125, res.stderr
    assert "is not a box name" in res.stderr and "hint: " in res.stderr
    for verb in (["logs"], ["kill"], ["attach"]):
        res = box_user.coopy(*verb, name, cwd=ws)
        assert res.returncode == 125 and "is not a box name" in res.stderr, res.stderr
    assert not (box_user.home / ".local/state/coopy/escape").exists()
