"""The mount plan: a pure function from a box request and host facts to a tuple of ops.

Nothing here touches the system; ``coopy run --dry-run`` prints what this returns, and
unit tests compare it with tables.  The order follows the kernel's rules (docs/design.md,
"Setup order"): the root overlay first, host directories and /etc on it, a fresh /proc
while the old root (with a fully visible /proc) is still attached, then /sys, /dev, the
tmpfs dirs, the workspace and volumes, and the pivot last.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import NamedTuple

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
)

# Device nodes every box gets, bound from the host's devtmpfs (a user namespace cannot
# mknod, and fresh mounts in it are implicitly nodev).  No /dev/console: the box gets
# coopy's PTYs, never the caller's terminal.
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")

DEV_LINKS = (
    ("/dev/ptmx", "pts/ptmx"),
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
)

# /proc entries that leak host information or offer kernel attack surface: masked as
# podman does (test/system/400-unprivileged-access.bats).
PROC_MASKED = (
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/fs/selinux",
    "/sys/dev/block",
)

# /proc entries made read-only as bubblewrap and podman do.  /proc/self/task/*/comm stays
# writable (cuInit on driver 570+ writes its thread names).
PROC_READONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")

COW_LOWER = "/run/coopy/workspace"  # the workspace as it is on the host, in cow boxes of root
DEFAULT_SHM = 64 << 20  # like Docker; [sandbox] shm raises it (CUDA/NCCL want more)


class Volume(NamedTuple):
    """A host directory or file (or a named volume's directory) shown in the box."""

    source: str
    target: str
    readonly: bool
    directory: bool = True


class BoxSpec(NamedTuple):
    """Everything the plan needs to know about one box, already validated."""

    name: str
    hostname: str
    box_dir: str  # host: the box's state directory (upper, work, layers)
    skel: str  # host: the root skeleton layer
    etc: str  # host: the generated /etc layer
    workspace: str  # host path of the workspace
    workspace_target: str  # where it appears inside
    volumes: tuple[Volume, ...] = ()
    net: str = "none"
    shm_size: int = DEFAULT_SHM
    tmp_size: int | None = None
    tty_gid: int | None = 5  # None when gid 5 is not mapped (single-id boxes)
    idmap_binds: bool = False  # boxes of root: the workspace and volumes are id-mapped
    # (workspace-relative path, is a directory) bound read-only over itself (.git/hooks)
    readonly: tuple[tuple[str, bool], ...] = ()
    extra: tuple[Op, ...] = ()
    image_layers: tuple[str, ...] = ()  # host: a pulled image's layers, top first
    # [workspace] mode = "cow": the workspace is an overlay whose upper (and work) dir
    # is this host directory's upper/ (work/); None: the workspace is bound read-write
    workspace_cow: str | None = None


def plan_host_image(spec: BoxSpec, facts: HostFacts) -> tuple[Op, ...]:
    """The root filesystem of the ``host`` image: overlay over the skeleton, host dirs ro."""
    ops: list[Op] = [
        Overlay("/", (spec.skel,), upper=f"{spec.box_dir}/upper", work=f"{spec.box_dir}/work"),
    ]
    for name, link in sorted(facts.layout.items()):
        if link is None:
            ops.append(Bind(f"/{name}", f"/{name}", readonly=True, nodev=True))
    # /etc: the generated layer over the host's, with no upper: read-only.
    host_etc = f"{spec.box_dir}/etc-host" if facts.etc_submounts else "/etc"
    ops.append(Overlay("/etc", (spec.etc, host_etc)))
    return tuple(ops)


def plan_image_root(spec: BoxSpec) -> tuple[Op, ...]:
    """The root filesystem on a pulled image: the box's own layer over the image's."""
    lowers = (spec.etc, *spec.image_layers)
    return (Overlay("/", lowers, upper=f"{spec.box_dir}/upper", work=f"{spec.box_dir}/work"),)


def plan_system_mounts(spec: BoxSpec) -> tuple[Op, ...]:
    """/proc, /sys, /dev, /tmp, /run: the same for every image."""
    ops: list[Op] = [Proc("/proc")]
    ops += [ReadOnly(p) for p in PROC_READONLY]
    # A fresh sysfs shows the box's own network devices, but the kernel allows it only
    # to the owner of the network namespace; with the host's network, bind the host's.
    if spec.net == "host":
        ops.append(Bind("/sys", "/sys", readonly=True))
    else:
        ops.append(Sysfs("/sys"))
    ops.append(Tmpfs("/dev", mode=0o755, nodev=False))
    ops += [DevNode(n) for n in DEV_NODES]
    ops += [MaskPath(p) for p in PROC_MASKED]  # after /dev: files are masked by /dev/null
    ops.append(Devpts("/dev/pts", gid=spec.tty_gid))
    ops += [Symlink(path, to) for path, to in DEV_LINKS]
    ops.append(Tmpfs("/dev/shm", mode=0o1777, size=spec.shm_size, noexec=False))
    ops.append(Mqueue("/dev/mqueue"))
    ops.append(Tmpfs("/tmp", mode=0o1777, size=spec.tmp_size))
    ops.append(Tmpfs("/run", mode=0o755))
    return tuple(ops)


def plan_user_mounts(spec: BoxSpec) -> tuple[Op, ...]:
    """The workspace (read-write at its path) and the volumes, in the order given.

    Later mounts may land inside earlier ones (a volume inside the workspace), never the
    reverse, so the workspace goes first.
    """
    ops: list[Op] = [Mkdir(spec.workspace_target)]
    if spec.workspace_cow:
        lower = spec.workspace
        if spec.idmap_binds:
            # Boxes of root: the host's files must be box root's, or overlay cannot copy
            # them up (EOVERFLOW): the lower is an id-mapped, read-only bind, reached
            # through the new root (attached on <box>/root until the pivot).
            ops.append(Bind(spec.workspace, COW_LOWER, readonly=True, idmap=True))
            lower = f"{spec.box_dir}/root{COW_LOWER}"
        ops.append(Overlay(spec.workspace_target, (lower,),
                           upper=f"{spec.workspace_cow}/upper",
                           work=f"{spec.workspace_cow}/work"))
    else:
        ops.append(Bind(spec.workspace, spec.workspace_target, idmap=spec.idmap_binds))
    for rel, is_dir in spec.readonly:  # each over itself, read-only all the way down
        ops.append(Bind(f"{spec.workspace}/{rel}", f"{spec.workspace_target}/{rel}",
                        readonly=True, directory=is_dir, idmap=spec.idmap_binds))
    for vol in spec.volumes:
        if vol.directory:
            ops.append(Mkdir(vol.target))
        ops.append(
            Bind(
                vol.source,
                vol.target,
                readonly=vol.readonly,
                directory=vol.directory,
                idmap=spec.idmap_binds,
            )
        )
    return tuple(ops)


def build_plan(spec: BoxSpec, facts: HostFacts) -> tuple[Op, ...]:
    """The whole plan of a box (on the host image, or on a pulled one)."""
    root = plan_image_root(spec) if spec.image_layers else plan_host_image(spec, facts)
    return (
        root
        + plan_system_mounts(spec)
        + plan_user_mounts(spec)
        + spec.extra
        + (PivotRoot(),)
    )


def normalize_target(path: str) -> str:
    """A box path with no ``.``/``..``/empty parts; raises ValueError on a relative one."""
    p = PurePosixPath(path)
    if not p.is_absolute():
        raise ValueError(f"{path!r} is not an absolute path")
    parts = [x for x in p.parts[1:] if x not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{path!r} contains '..'")
    return "/" + "/".join(parts)
