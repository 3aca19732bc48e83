"""Unit tests of coopy.plan and coopy.ops: the mount plan is data, compared with tables."""

from __future__ import annotations

import pytest

from coopy.facts import HostFacts
from coopy.ops import (
    Bind,
    DevNode,
    Devpts,
    MaskPath,
    Mkdir,
    Mqueue,
    Op,
    Overlay,
    PivotRoot,
    Proc,
    ReadOnly,
    Symlink,
    Sysfs,
    Tmpfs,
    describe,
)
from coopy.plan import (
    DEV_NODES,
    PROC_MASKED,
    BoxSpec,
    Volume,
    build_plan,
    normalize_target,
)
from tests.unit.hostfacts import host_facts

MERGED_USR: dict[str, str | None] = {
    "usr": None,
    "bin": "usr/bin",
    "sbin": "usr/sbin",
    "lib": "usr/lib",
    "lib64": "usr/lib64",
    "opt": None,
}
SPLIT_USR: dict[str, str | None] = {
    "usr": None,
    "bin": None,
    "sbin": None,
    "lib": None,
    "lib64": None,
}
# Sources of the host-directory binds (the rest are the workspace and volumes).
HOST_BIND_SOURCES = {"/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt", "/sys"}


def facts(
    layout: dict[str, str | None], uid: int = 1000, etc_submounts: bool = False
) -> HostFacts:
    return host_facts(uid, etc_submounts=etc_submounts, layout=layout)


def spec(**kw: object) -> BoxSpec:
    base: dict[str, object] = {
        "name": "proj",
        "hostname": "proj",
        "box_dir": "/state/run/1",
        "skel": "/state/run/1/skel",
        "etc": "/state/run/1/etc",
        "workspace": "/home/alice/proj",
        "workspace_target": "/home/alice/proj",
        "volumes": (
            Volume("/data", "/data", readonly=True),
            Volume("/home/alice/.gitconfig", "/root/.gitconfig", readonly=False,
                   directory=False),
            Volume("/cache", "/home/alice/proj/cache", readonly=False),
        ),
    }
    base.update(kw)
    return BoxSpec(**base)  # type: ignore[arg-type]


def index(plan: tuple[Op, ...], pred: object) -> list[int]:
    return [i for i, op in enumerate(plan) if pred(op)]  # type: ignore[operator]


PLANS = {
    "merged-none": (spec(), facts(MERGED_USR)),
    "split-host": (spec(net="host"), facts(SPLIT_USR)),
    "merged-host-idmap": (spec(net="host", idmap_binds=True), facts(MERGED_USR, uid=0)),
    "empty-layout-no-volumes": (spec(volumes=()), facts({})),
}


@pytest.fixture(params=sorted(PLANS))
def plan(request: pytest.FixtureRequest) -> tuple[Op, ...]:
    s, f = PLANS[request.param]
    return build_plan(s, f)


# --- order rules, for every plan -------------------------------------------------------


def test_root_overlay_first_pivot_last(plan: tuple[Op, ...]) -> None:
    first = plan[0]
    assert isinstance(first, Overlay) and first.target == "/"
    assert first.lowers == ("/state/run/1/skel",)
    assert first.upper == "/state/run/1/upper" and first.work == "/state/run/1/work"
    assert plan[-1] == PivotRoot()
    assert plan.count(PivotRoot()) == 1
    assert len(index(plan, lambda op: isinstance(op, Overlay) and op.target == "/")) == 1


def test_proc_before_proc_masks(plan: tuple[Op, ...]) -> None:
    (proc,) = index(plan, lambda op: isinstance(op, Proc))
    under_proc = index(
        plan,
        lambda op: isinstance(op, MaskPath | ReadOnly) and op.target.startswith("/proc/"),
    )
    assert under_proc and min(under_proc) > proc


def test_sys_before_sys_masks(plan: tuple[Op, ...]) -> None:
    (sys_op,) = index(plan, lambda op: getattr(op, "target", None) == "/sys")
    masks = index(plan, lambda op: isinstance(op, MaskPath) and op.target.startswith("/sys/"))
    assert masks and min(masks) > sys_op


def test_dev_before_masks(plan: tuple[Op, ...]) -> None:
    # A masked file gets /dev/null bound over it, so /dev and its null must exist first.
    (dev,) = index(plan, lambda op: isinstance(op, Tmpfs) and op.target == "/dev")
    (null,) = index(plan, lambda op: op == DevNode("null"))
    masks = index(plan, lambda op: isinstance(op, MaskPath))
    assert dev < null < min(masks)
    assert [op.target for op in plan if isinstance(op, MaskPath)] == list(PROC_MASKED)


def test_dev_contents_after_dev_tmpfs(plan: tuple[Op, ...]) -> None:
    (dev,) = index(plan, lambda op: isinstance(op, Tmpfs) and op.target == "/dev")
    assert not plan[dev].nodev  # type: ignore[union-attr]
    nodes = index(plan, lambda op: isinstance(op, DevNode))
    assert [plan[i].name for i in nodes] == list(DEV_NODES)  # type: ignore[union-attr]
    under = index(
        plan,
        lambda op: (isinstance(op, Devpts | Mqueue | Symlink | Tmpfs)
                    and op.target.startswith("/dev/")),
    )
    assert len(under) >= 8 and min(under + nodes) > dev


def test_etc_overlay_read_only(plan: tuple[Op, ...]) -> None:
    (etc,) = [op for op in plan if isinstance(op, Overlay) and op.target == "/etc"]
    assert etc.lowers == ("/state/run/1/etc", "/etc")
    assert etc.upper is None and etc.work is None


def test_workspace_before_volumes(plan: tuple[Op, ...]) -> None:
    binds = [op for op in plan if isinstance(op, Bind) and op.source not in HOST_BIND_SOURCES]
    assert binds[0].source == "/home/alice/proj"
    assert binds[0].target == "/home/alice/proj"
    assert not binds[0].readonly
    # The workspace and volumes come after every system mount, before the pivot.
    ws = plan.index(binds[0])
    assert ws > max(index(plan, lambda op: isinstance(op, Tmpfs | MaskPath | Devpts)))
    assert plan[ws - 1] == Mkdir("/home/alice/proj")



# --- per-host and per-spec tables ------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "bound"),
    [
        pytest.param(MERGED_USR, ["/opt", "/usr"], id="merged-usr"),
        pytest.param(SPLIT_USR, ["/bin", "/lib", "/lib64", "/sbin", "/usr"], id="split-usr"),
        pytest.param({}, [], id="empty"),
    ],
)
def test_host_dirs_bound_read_only(layout: dict[str, str | None], bound: list[str]) -> None:
    plan = build_plan(spec(volumes=()), facts(layout))
    binds = [op for op in plan if isinstance(op, Bind) and op.source == op.target
             and op.source in HOST_BIND_SOURCES - {"/sys"}]
    assert [b.target for b in binds] == bound
    assert all(b.readonly and b.nodev and not b.idmap for b in binds)
    # Host directories come between the root overlay and /etc.
    etc = index(plan, lambda op: isinstance(op, Overlay) and op.target == "/etc")[0]
    assert all(0 < plan.index(b) < etc for b in binds)
    # Merged-/usr symlinks are the skeleton's business: never a mount, never an op here.
    links = {f"/{n}" for n, t in layout.items() if t is not None}
    assert not [op for op in plan if getattr(op, "target", None) in links]


@pytest.mark.parametrize(
    ("etc_submounts", "host_etc"),
    [(False, "/etc"), (True, "/state/run/1/etc-host")],
    ids=["etc", "etc-copy"],
)
def test_etc_lower_by_submounts(etc_submounts: bool, host_etc: str) -> None:
    # Overlay refuses a lower with locked submounts in a user namespace: use the copy.
    plan = build_plan(spec(), facts(MERGED_USR, etc_submounts=etc_submounts))
    (etc,) = [op for op in plan if isinstance(op, Overlay) and op.target == "/etc"]
    assert etc == Overlay("/etc", ("/state/run/1/etc", host_etc))


@pytest.mark.parametrize(
    ("net", "expected", "absent"),
    [
        ("none", Sysfs("/sys"), Bind),
        ("host", Bind("/sys", "/sys", readonly=True), Sysfs),
    ],
)
def test_sys_by_network(net: str, expected: Op, absent: type) -> None:
    plan = build_plan(spec(net=net), facts(MERGED_USR))
    assert expected in plan
    assert not [op for op in plan if isinstance(op, absent) and op.target == "/sys"]


@pytest.mark.parametrize("idmap", [False, True])
def test_idmap_binds_propagate(idmap: bool) -> None:
    plan = build_plan(spec(idmap_binds=idmap), facts(MERGED_USR, uid=0))
    user = [op for op in plan if isinstance(op, Bind)
            and op.source not in HOST_BIND_SOURCES]
    assert len(user) == 4  # workspace + three volumes
    assert all(b.idmap is idmap for b in user)
    host = [op for op in plan if isinstance(op, Bind) and op.source in HOST_BIND_SOURCES]
    assert host and not any(b.idmap for b in host)


def test_volumes_in_order_with_flags() -> None:
    plan = build_plan(spec(), facts({}))
    user = [op for op in plan if isinstance(op, Bind | Mkdir)]
    assert user == [
        Mkdir("/home/alice/proj"),
        Bind("/home/alice/proj", "/home/alice/proj"),
        Mkdir("/data"),
        Bind("/data", "/data", readonly=True),
        # A file volume: no directory is made for it.
        Bind("/home/alice/.gitconfig", "/root/.gitconfig", readonly=False, directory=False),
        Mkdir("/home/alice/proj/cache"),
        Bind("/cache", "/home/alice/proj/cache", readonly=False),
    ]


def test_no_mkdir_for_file_volume() -> None:
    plan = build_plan(spec(), facts({}))
    assert Mkdir("/root/.gitconfig") not in plan


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("tty_gid", 5, Devpts("/dev/pts", gid=5)),
        ("tty_gid", None, Devpts("/dev/pts", gid=None)),
        ("shm_size", 1 << 30, Tmpfs("/dev/shm", mode=0o1777, size=1 << 30)),
        ("tmp_size", 1 << 20, Tmpfs("/tmp", mode=0o1777, size=1 << 20)),
        ("tmp_size", None, Tmpfs("/tmp", mode=0o1777, size=None)),
    ],
)
def test_spec_fields_reach_ops(field: str, value: object, expected: Op) -> None:
    assert expected in build_plan(spec(**{field: value}), facts({}))


def test_extra_ops_before_pivot() -> None:
    extra = (Bind("/dev/nvidia0", "/dev/nvidia0", directory=False, nodev=False),)
    plan = build_plan(spec(extra=extra), facts({}))
    assert plan[-2:] == (*extra, PivotRoot())


def test_plan_is_pure() -> None:
    s, f = PLANS["merged-none"]
    assert build_plan(s, f) == build_plan(s, f)
    assert all(isinstance(op, tuple) and hasattr(op, "_fields") for op in build_plan(s, f))


# --- normalize_target ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a/b", "/a/b"),
        ("/", "/"),
        ("//a/./b", "/a/b"),
        ("/a//b/", "/a/b"),
        ("/./", "/"),
        ("/a/.../b", "/a/.../b"),
        ("/a/..b", "/a/..b"),
    ],
)
def test_normalize_target(path: str, expected: str) -> None:
    assert normalize_target(path) == expected


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("a/b", "not an absolute path"),
        ("", "not an absolute path"),
        ("./a", "not an absolute path"),
        ("/a/../b", r"contains '\.\.'"),
        ("/..", r"contains '\.\.'"),
        ("/a/b/..", r"contains '\.\.'"),
    ],
)
def test_normalize_target_rejects(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_target(path)


# --- describe --------------------------------------------------------------------------

DESCRIBED: list[tuple[Op, str]] = [
    (Overlay("/", ("/l1", "/l2"), "/u", "/w"), "overlay / (rw; lower /l1:/l2; upper /u)"),
    (Overlay("/etc", ("/e", "/etc")), "overlay /etc (ro; lower /e:/etc; upper -)"),
    (Bind("/src", "/dst", readonly=True), "bind /src → /dst (ro)"),
    (Bind("/src", "/dst", idmap=True), "bind /src → /dst (rw, idmap)"),
    (Tmpfs("/tmp", mode=0o1777, size=1024), "tmpfs /tmp (mode 1777, size 1024)"),
    (Tmpfs("/run"), "tmpfs /run (mode 755)"),
    (Proc(), "proc /proc"),
    (Sysfs(), "sysfs /sys (ro)"),
    (Devpts(gid=5), "devpts /dev/pts (new instance)"),
    (Mqueue(), "mqueue /dev/mqueue"),
    (DevNode("null"), "device /dev/null"),
    (Mkdir("/a", 0o700), "mkdir /a (700)"),
    (Symlink("/dev/fd", "/proc/self/fd"), "symlink /dev/fd → /proc/self/fd"),
    (MaskPath("/proc/kcore"), "mask /proc/kcore"),
    (ReadOnly("/proc/sys"), "read-only /proc/sys"),
    (PivotRoot(), "pivot_root, detach the old root"),
]


@pytest.mark.parametrize(("op", "text"), DESCRIBED, ids=lambda x: type(x).__name__)
def test_describe(op: Op, text: str) -> None:
    assert describe(op) == text


def test_describe_covers_every_op_type() -> None:
    assert {type(op) for op, _ in DESCRIBED} == set(Op.__args__)  # type: ignore[attr-defined]


def test_describe_whole_plan_one_line_each() -> None:
    s, f = PLANS["merged-host-idmap"]
    for op in build_plan(s, f):
        line = describe(op)
        assert line and "\n" not in line
