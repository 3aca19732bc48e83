"""Give this machine a cgroup v2 tree the way a real host does, for the cgroup tests.

The CI machine (and the development VM) is a v1/v2 hybrid without systemd: every
controller is bound to a v1 hierarchy and the cgroup2 mount (/sys/fs/cgroup/unified) has
none, so coopy could only fall back to rlimits.  As root this module

* frees the v1 ``pids`` and ``cpu`` hierarchies, if they hold no cgroup but their root
  (all processes then sit in that root, nothing is lost): unmounting such a hierarchy
  destroys it and the kernel hands its controllers to cgroup2 (never ``memory``: the VM
  runner keeps its own cgroups there);
* delegates a cgroup to the test user as systemd does for ``user@UID.service``
  (``Delegate=yes``): the directory and its cgroup.procs, cgroup.threads and
  cgroup.subtree_control chowned to the user, the user's processes in a leaf below it
  (``init.scope``), so that coopy finds it from ``/proc/self/cgroup`` like on a desktop.

``python3 -m tests.cgroups free-v1`` is the machine step .ci/run takes (stdlib only).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

FREE = ("pids", "cpu")
DELEGATED = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")
LEAF = "init.scope"


def unified_mount() -> Path | None:
    """The cgroup2 mount (hybrid or unified layout)."""
    for path in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (path / "cgroup.controllers").exists():
            return path
    return None


def controllers(path: Path) -> set[str]:
    return set((path / "cgroup.controllers").read_text().split())


def v1_mounts() -> dict[str, Path]:
    """controller → the mount point of the v1 hierarchy that holds it."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if len(fields) >= 3 and fields[0] == "cgroup":
                for opt in fields[2].split(","):
                    out[opt] = Path(left.split()[4])
    return out


def free_v1(names: tuple[str, ...] = FREE) -> list[str]:
    """Unmount the v1 hierarchies holding ``names`` when unused; what could not be freed."""
    mount = unified_mount()
    if mount is None:
        return ["no cgroup2 mount"]
    problems = []
    for name in names:
        if name in controllers(mount):
            continue
        v1 = v1_mounts().get(name)
        if v1 is None:
            problems.append(f"{name}: neither in cgroup2 nor in a v1 hierarchy")
            continue
        children = [e.name for e in os.scandir(v1) if e.is_dir()]
        if children:
            problems.append(f"{name}: the v1 hierarchy at {v1} has cgroups {children[:3]}")
            continue
        subprocess.run(["umount", str(v1)], check=True)
        deadline = time.monotonic() + 5  # the hierarchy is destroyed asynchronously
        while name not in controllers(mount) and time.monotonic() < deadline:
            time.sleep(0.02)
        if name not in controllers(mount):
            problems.append(f"{name}: unmounted {v1}, yet cgroup2 did not get it")
    return problems


def enable(path: Path, names: tuple[str, ...] = FREE) -> None:
    """Hand ``names`` down from ``path`` (as the host's init would for its slices)."""
    on = set((path / "cgroup.subtree_control").read_text().split())
    for name in names:
        if name not in on:
            (path / "cgroup.subtree_control").write_text(f"+{name}")


def delegate(uid: int, gid: int) -> Path:
    """A cgroup delegated to ``uid``; returns the leaf's cgroup.procs to start its processes
    in."""
    mount = unified_mount()
    assert mount is not None
    enable(mount)
    base = mount / f"coopy-test-user@{uid}.service"
    leaf = base / LEAF
    leaf.mkdir(parents=True, exist_ok=True)
    for d in (base, leaf):
        os.chown(d, uid, gid)
        for name in DELEGATED:
            os.chown(d / name, uid, gid)
    return leaf / "cgroup.procs"


def undelegate(uid: int) -> None:
    """Remove the delegated tree (cgroups are directories only; deepest first)."""
    mount = unified_mount()
    assert mount is not None
    base = mount / f"coopy-test-user@{uid}.service"
    if not base.exists():
        return
    for dirpath, _, _ in sorted(os.walk(base), key=lambda w: -len(w[0])):
        os.rmdir(dirpath)


def main(argv: list[str]) -> int:
    if argv[1:] != ["free-v1"]:
        print("usage: python3 -m tests.cgroups free-v1", file=sys.stderr)
        return 2
    problems = free_v1()
    for problem in problems:
        print(f"tests.cgroups: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
