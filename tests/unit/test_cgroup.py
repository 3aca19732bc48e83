"""The pure parts of coopy/cgroup.py: limit files, names, the delegation walk, doctor's text.

The walk runs on a directory tree standing in for a cgroup2 mount (ownership is all it
reads); the real kernel is tested in tests/integration/test_cgroups.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coopy.cgroup import (
    Limits,
    Tree,
    box_name,
    delegated_base,
    describe,
    limit_files,
    needed,
    own_cgroup,
)

ALL = frozenset({"pids", "memory", "cpu"})


@pytest.mark.parametrize(("limits", "controllers", "files"), [
    (Limits(pids=4096), ALL, [("pids.max", "4096")]),
    (Limits(pids=4096, memory=1 << 30), ALL,
     [("pids.max", "4096"), ("memory.max", "1073741824"), ("memory.swap.max", "0")]),
    (Limits(cpus=0.5), ALL, [("cpu.max", "50000 100000")]),
    (Limits(cpus=4), ALL, [("cpu.max", "400000 100000")]),
    (Limits(cpus=0.001), ALL, [("cpu.max", "1000 100000")]),  # the kernel's minimum
    (Limits(pids=10, memory=1 << 20, cpus=1), frozenset({"pids"}), [("pids.max", "10")]),
    (Limits(), ALL, []),
])
def test_limit_files(limits: Limits, controllers: frozenset[str],
                     files: list[tuple[str, str]]) -> None:
    assert limit_files(limits, controllers) == files


def test_needed_controllers() -> None:
    assert needed(Limits(pids=1)) == ("pids",)
    assert needed(Limits(pids=1, memory=2, cpus=0.5)) == ("pids", "memory", "cpu")
    assert needed(Limits()) == ()


def test_own_cgroup() -> None:
    assert own_cgroup("9:name=systemd:/\n1:cpu:/\n0::/user.slice/a.scope\n") == \
        "/user.slice/a.scope"
    assert own_cgroup("0::/\n") == "/"
    assert own_cgroup("4:memory:/x\n") is None


def test_box_names_are_per_state_dir() -> None:
    run, prefix = box_name(Path("/home/u/.local/state/coopy/run/0a1b2c"))
    assert run.startswith("run-") and run.endswith("-0a1b2c") and run.startswith(prefix)
    box, _ = box_name(Path("/home/u/.local/state/coopy/boxes/web"))
    assert box.startswith("box-") and box.endswith("-web")
    other, _ = box_name(Path("/elsewhere/state/run/0a1b2c"))
    assert other != run


def test_delegated_base_is_the_topmost_owned(tmp_path: Path) -> None:
    uid = os.getuid()
    mount = tmp_path
    leaf = mount / "user.slice" / "user@1000.service" / "app.slice" / "term.scope"
    leaf.mkdir(parents=True)
    for d in (mount, *[mount / p for p in ("user.slice", "user.slice/user@1000.service",
                                           "user.slice/user@1000.service/app.slice")],
              leaf):
        (d / "cgroup.procs").write_text("")
    own = "/user.slice/user@1000.service/app.slice/term.scope"
    # everything owned by us here: the walk stops below the mount itself
    assert delegated_base(str(mount), own, uid) == str(mount / "user.slice")
    assert delegated_base(str(mount), own, uid + 1) is None  # owned by someone else
    assert delegated_base(str(mount), "/", uid) is None


def test_doctor_text_says_what_applies() -> None:
    full = Tree("unified", "/sys/fs/cgroup", "/sys/fs/cgroup/user.slice/user@1000.service",
                ALL)
    status, detail, fix = describe(full, 1000)
    assert status == "ok" and fix is None
    assert "delegated to you" in detail and "pids: pids.max" in detail
    assert "memory: memory.max" in detail and "cpus: cpu.max" in detail

    hybrid = Tree("hybrid", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified",
                  frozenset({"pids", "cpu"}), "no memory controller")
    status, detail, fix = describe(hybrid, 0)
    assert status == "warn" and "as root" in detail
    assert "memory: RLIMIT_DATA per process" in detail
    assert fix is not None and "systemd.unified_cgroup_hierarchy=1" in fix

    none = Tree("unified", "/sys/fs/cgroup", why_not="your cgroup /user.slice/s.scope is "
                "not delegated to you")
    status, detail, fix = describe(none, 1000)
    assert status == "warn" and "not delegated" in detail
    assert "pids: RLIMIT_NPROC in the box" in detail and "cpus: not applied" in detail
    assert fix is not None and "systemd-run --user --scope" in fix
