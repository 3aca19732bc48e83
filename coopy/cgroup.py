"""Box limits through a cgroup v2 tree: where coopy may make cgroups, and each box's own.

Where (:func:`probe_tree`):

* as root, ``<cgroup2 mount>/coopy``; on a v1/v2 hybrid the cgroup2 mount is
  ``/sys/fs/cgroup/unified`` and has only the controllers no v1 hierarchy holds;
* as an ordinary user, the topmost cgroup above (or at) the caller's own, from
  ``/proc/self/cgroup``, that is delegated to the caller: owned by them, its
  ``cgroup.procs`` writable (systemd's ``user@UID.service``, ``Delegate=yes``).  It must
  hold no processes itself: the kernel lets only a cgroup without processes hand its
  controllers down (cgroup-v2.rst, "No Internal Process Constraint").  coopy's boxes go
  under ``<that cgroup>/coopy``, never beside the caller's processes.

Each box (:func:`create_box`)::

    <tree>/coopy/<kind>-<hash>-<id>       pids.max, memory.max, memory.swap.max, cpu.max
                               └── box    the box's processes (A joins it, see spawn.py)

The limits sit one level above the cgroup the box's processes are in, which becomes the
root of the box's cgroup namespace: from inside, the cgroup that holds the limits is out of
sight, so not even a box whose root owns these files (rootless: the box's root is the
caller) can raise them.  The box's cgroup is created before any of its processes exists and
joined by the box's first process before it does anything else, and removed when the box
ends (by ``coopy run``, by the keeper, or by the next box start after a SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import time
import zlib
from pathlib import Path
from typing import NamedTuple

CONTROLLERS = ("pids", "memory", "cpu")  # the ones coopy's limits use
CPU_PERIOD = 100_000  # µs; cpu.max's default period
_CPU_MIN_QUOTA = 1_000  # µs; the kernel refuses a smaller quota
PARENT = "coopy"
LEAF = "box"
ENV_OFF = "COOPY_CGROUPS"  # "0": no cgroups, rlimits only (to compare, or to debug)
_OPTIONAL = ("memory.swap.max",)  # absent without swap accounting (swapaccount=0)
_OFF_HINT = f"`coopy doctor` checks cgroups; {ENV_OFF}=0 runs boxes without them"


class Tree(NamedTuple):
    """What this host gives coopy: the cgroup2 layout, and a tree to make box cgroups in."""

    layout: str  # "unified", "hybrid" (v1 and v2 mounted side by side) or "none"
    mount: str | None = None  # the cgroup2 mount
    base: str | None = None  # the delegated (or, as root, the root) cgroup: a directory
    controllers: frozenset[str] = frozenset()  # of CONTROLLERS, those base can hand down
    why_not: str = ""  # why there is no base, or why it lacks controllers

    @property
    def parent(self) -> str:
        """Where box cgroups go."""
        assert self.base is not None
        return f"{self.base}/{PARENT}"


class Limits(NamedTuple):
    """A box's limits; None is no limit."""

    pids: int | None = None
    memory: int | None = None  # bytes
    cpus: float | None = None


class BoxCgroup(NamedTuple):
    """A box's cgroup: ``path`` holds the limits, ``procs_dir`` the processes."""

    path: str
    applied: frozenset[str]  # the Limits fields it enforces

    @property
    def procs_dir(self) -> str:
        """The cgroup the box's first process joins (Launch.cgroup)."""
        return f"{self.path}/{LEAF}"


def find_mount(root: str = "/sys/fs/cgroup") -> tuple[str, str | None]:
    """(layout, the cgroup2 mount): two stats on the usual layouts, mountinfo otherwise."""
    if os.path.exists(f"{root}/cgroup.controllers"):
        return "unified", root
    if os.path.exists(f"{root}/unified/cgroup.controllers"):
        return "hybrid", f"{root}/unified"
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return "none", None
    for line in lines:
        fields = line.split(" - ")
        if len(fields) == 2 and fields[1].split()[0] == "cgroup2":
            mount = fields[0].split()[4]
            v1 = any(" - cgroup " in other for other in lines)
            return ("hybrid" if v1 else "unified"), mount
    return "none", None


def own_cgroup(text: str) -> str | None:
    """The cgroup v2 path in ``/proc/self/cgroup``'s text (the ``0::/…`` line)."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def probe_tree(uid: int | None = None) -> Tree:
    """Where this caller may make box cgroups, and with which controllers (reads only)."""
    if os.environ.get(ENV_OFF) == "0":
        return Tree("none", why_not=f"{ENV_OFF}=0 turns them off")
    layout, mount = find_mount()
    if mount is None:
        return Tree(layout, why_not="no cgroup2 file system is mounted")
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        if not os.access(mount, os.W_OK):
            return Tree(layout, mount, why_not=f"{mount} is read-only here")
        base = mount
    else:
        try:
            with open("/proc/self/cgroup") as f:
                own = own_cgroup(f.read())
        except OSError:
            own = None
        if own is None:
            return Tree(layout, mount, why_not="this process is in no cgroup v2")
        found = delegated_base(mount, own, uid)
        if found is None:
            return Tree(layout, mount, why_not=f"your cgroup {own} is not delegated to you")
        base = found
        if _has_processes(base):
            return Tree(layout, mount, why_not=f"your delegated cgroup {base} holds "
                        "processes, so it cannot hand controllers down (the kernel's no "
                        "internal processes rule)")
    available = _read_words(f"{base}/cgroup.controllers")
    controllers = frozenset(c for c in CONTROLLERS if c in available)
    missing = [c for c in CONTROLLERS if c not in controllers]
    why = ""
    if missing:
        held = ", a v1 hierarchy holds it" if layout == "hybrid" else ""
        why = f"{base} has no {' or '.join(missing)} controller{held}"
    return Tree(layout, mount, base, controllers, why)


def delegated_base(mount: str, own: str, uid: int) -> str | None:
    """The topmost cgroup from ``own`` upwards that ``uid`` owns and may move processes
    into (systemd chowns a delegated unit's directory, cgroup.procs, cgroup.threads and
    cgroup.subtree_control); None if even ``own`` is not delegated."""
    parts = [p for p in own.split("/") if p]
    found = None
    while parts:
        path = "/".join([mount, *parts])
        try:
            owned = os.stat(path).st_uid == uid and os.stat(f"{path}/cgroup.procs").st_uid == uid
        except OSError:
            owned = False
        if not owned:
            break
        found = path
        parts.pop()
    return found


def _read_words(path: str) -> set[str]:
    try:
        with open(path) as f:
            return set(f.read().split())
    except OSError:
        return set()


def _has_processes(path: str) -> bool:
    try:
        with open(f"{path}/cgroup.procs") as f:
            return bool(f.read(1))
    except OSError:
        return True  # cannot tell: not a cgroup coopy can use


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def needed(limits: Limits) -> tuple[str, ...]:
    """The controllers ``limits`` use."""
    return tuple(c for c, v in (("pids", limits.pids), ("memory", limits.memory),
                                ("cpu", limits.cpus)) if v is not None)


def limit_files(limits: Limits, controllers: frozenset[str]) -> list[tuple[str, str]]:
    """(file, value) to write into a box's cgroup for the limits its controllers cover."""
    out = []
    if limits.pids is not None and "pids" in controllers:
        out.append(("pids.max", str(limits.pids)))
    if limits.memory is not None and "memory" in controllers:
        # No swap beyond it: a box told 16g stops at 16g instead of filling the swap.
        out += [("memory.max", str(limits.memory)), ("memory.swap.max", "0")]
    if limits.cpus is not None and "cpu" in controllers:
        quota = max(_CPU_MIN_QUOTA, round(limits.cpus * CPU_PERIOD))
        out.append(("cpu.max", f"{quota} {CPU_PERIOD}"))
    return out


def enable(path: str, controllers: tuple[str, ...]) -> frozenset[str]:
    """Turn ``controllers`` on in ``path``'s subtree_control, one at a time (a write of
    several fails whole if one fails); return those on afterwards."""
    on = _read_words(f"{path}/cgroup.subtree_control")
    for name in controllers:
        if name not in on:
            with contextlib.suppress(OSError):  # EBUSY, ENOENT: the caller falls back
                _write(f"{path}/cgroup.subtree_control", f"+{name}")
    return frozenset(_read_words(f"{path}/cgroup.subtree_control")) & set(controllers)


def box_name(box_dir: Path) -> tuple[str, str]:
    """(the box's cgroup name, the prefix its siblings of the same state dir share)."""
    kind = "run" if box_dir.parent.name == "run" else "box"
    prefix = f"{kind}-{zlib.crc32(str(box_dir.parent).encode()):08x}-"
    return prefix + box_dir.name, prefix


def create_box(tree: Tree, box_dir: Path, limits: Limits) -> BoxCgroup | None:
    """Make the box's cgroup with its limits (None when no controller it needs is here).

    Raises OSError (the caller falls back to rlimits and says so).
    """
    wanted = tuple(c for c in needed(limits) if c in tree.controllers)
    if tree.base is None or not wanted:
        return None
    os.makedirs(tree.parent, exist_ok=True)
    have = enable(tree.base, wanted)
    have = enable(tree.parent, tuple(have))
    if not have:
        return None
    name, prefix = box_name(box_dir)
    sweep(tree.parent, prefix, box_dir.parent)
    path = f"{tree.parent}/{name}"
    try:
        os.mkdir(path)
    except FileExistsError:
        remove_box(path)  # left by a killed keeper; EBUSY if that box still runs
        os.mkdir(path)
    try:
        for file, value in limit_files(limits, have):
            if file in _OPTIONAL and not os.path.exists(f"{path}/{file}"):
                continue
            _write(f"{path}/{file}", value)
        os.mkdir(f"{path}/{LEAF}")
    except BaseException:
        remove_box(path)
        raise
    applied = {"pids": "pids", "memory": "memory", "cpu": "cpus"}
    return BoxCgroup(path, frozenset(applied[c] for c in have))


def setup_box(box_dir: Path, limits: Limits) -> BoxCgroup | None:
    """The box's cgroup with its limits, or None (rlimits apply): no tree here, none of
    the controllers, or it could not be made (then a warning says why)."""
    tree = probe_tree()
    try:
        return create_box(tree, box_dir, limits)
    except OSError as exc:
        import sys

        sys.stderr.write(f"coopy: warning: cannot make the box's cgroup under "
                         f"{tree.parent}: {exc.strerror}; per-process rlimits apply "
                         "(`coopy doctor`)\n")
        return None


def end_box(procs_dir: str | None) -> None:
    """Remove the cgroup of a box that has ended (Launch.cgroup); a cgroup that cannot go
    yet is left to the next box's sweep."""
    if procs_dir:
        with contextlib.suppress(OSError):
            remove_box(os.path.dirname(procs_dir))


def plan_record(procs_dir: str, box_dir: Path, limits: Limits,
                ) -> tuple[str, str, list[tuple[str, str]]]:
    """What the native front end needs to make a box's cgroup as :func:`create_box` made
    this one (native/front/cgroup.c, ``cgroup`` and ``cglimit`` records): the parent, the name
    prefix (the run id follows), the limit files."""
    path = os.path.dirname(procs_dir)
    on = frozenset(c for c in CONTROLLERS if os.path.exists(f"{path}/{c}.max"))
    files = [(f, v) for f, v in limit_files(limits, on)
             if f not in _OPTIONAL or os.path.exists(f"{path}/{f}")]
    return os.path.dirname(path), box_name(box_dir)[1], files


def fork_into(path: str) -> tuple[int, int]:
    """Fork a child that starts in the cgroup ``path`` (Launch.cgroup).

    Returns ``os.fork()``'s pid and, in the child, -1 or an fd of cgroup.procs that it must
    still :func:`join` itself into, first thing: where clone3(CLONE_INTO_CGROUP) is refused
    (an outer sandbox's seccomp filter says ENOSYS) or the caller has threads, a plain fork.
    """
    from coopy.syscalls import fork_into_cgroup

    if len(os.listdir("/proc/self/task")) == 1:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                return fork_into_cgroup(fd), -1
            finally:
                os.close(fd)  # in both processes
        except OSError:
            pass  # the slower way below says why, if it fails too
    try:
        procs = os.open(f"{path}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        from coopy.errors import HostError

        raise HostError(f"cannot open the box's cgroup {path}: {exc.strerror}",
                        hint=_OFF_HINT) from exc
    pid = os.fork()
    if pid != 0:
        os.close(procs)
        return pid, -1
    return 0, procs


def join(procs_fd: int, path: str | None) -> None:
    """Move the calling process into the cgroup whose cgroup.procs ``procs_fd`` is.

    "0" names the writer itself; the kernel checks the permissions of whoever opened the
    file (Linux 5.16+), so the fd is opened before the fork and written in the child.  The
    writer waits for an RCU grace period (cgroup_threadgroup_rwsem): :func:`fork_into`
    avoids this where it can.
    """
    from coopy.errors import HostError

    try:
        os.write(procs_fd, b"0")
    except OSError as exc:
        raise HostError(f"cannot join the box's cgroup {path}: {exc.strerror}",
                        hint=_OFF_HINT) from exc
    finally:
        os.close(procs_fd)


def remove_box(path: str, timeout: float = 2.0) -> None:
    """Remove a box's cgroup once its processes are gone (EBUSY while any is exiting)."""
    deadline = time.monotonic() + timeout
    for target in (f"{path}/{LEAF}", path):
        while True:
            try:
                os.rmdir(target)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                import errno

                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def sweep(parent: str, prefix: str, dirs: Path) -> None:
    """Remove the cgroups of boxes of this state dir whose box directory is gone (a
    ``coopy run`` killed with SIGKILL: its run directory is swept first, see state.py)."""
    try:
        entries = [e.name for e in os.scandir(parent) if e.name.startswith(prefix)]
    except OSError:
        return
    for name in entries:
        if not (dirs / name[len(prefix):]).exists():
            with contextlib.suppress(OSError):  # still populated, or removed meanwhile
                remove_box(f"{parent}/{name}", timeout=0)


def remove_for(box_dir: Path) -> None:
    """Remove the cgroup of the box of ``box_dir``, if it has one: after ``coopy run``, or
    one a killed keeper left (``coopy rm``).  Waits a little for processes still exiting
    (a box that failed to start: its PID 1 dies of PDEATHSIG after A was reaped)."""
    tree = probe_tree()
    if tree.base is None:
        return
    name, _ = box_name(box_dir)
    with contextlib.suppress(OSError):  # still busy: the next box start sweeps it
        remove_box(f"{tree.parent}/{name}")


def describe(tree: Tree, uid: int) -> tuple[str, str, str | None]:
    """(status, what applies, how to get more) for ``coopy doctor``."""
    layout = {"unified": "cgroup v2", "hybrid": "v1/v2 hybrid",
              "none": "no cgroup v2"}[tree.layout]
    if tree.base is not None and tree.controllers:
        who = "as root" if uid == 0 else "delegated to you"
        where = f"{layout}, box cgroups under {tree.parent} ({who}) with " \
            f"{' '.join(c for c in CONTROLLERS if c in tree.controllers)}"
    else:
        where = f"{layout}, no cgroups for boxes"
    if tree.why_not:
        where += f" ({tree.why_not})"
    on = tree.controllers
    applies = (f"pids: {'pids.max' if 'pids' in on else 'RLIMIT_NPROC in the box'}, "
               f"memory: {'memory.max' if 'memory' in on else 'RLIMIT_DATA per process'}, "
               f"cpus: {'cpu.max' if 'cpu' in on else 'not applied'}, nofile: RLIMIT_NOFILE")
    status = "ok" if len(on) == len(CONTROLLERS) else "warn"
    return status, f"{where}; {applies}", None if status == "ok" else _fix(tree, uid)


def _fix(tree: Tree, uid: int) -> str:
    if tree.layout == "none":
        return "boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2)"
    steps = []
    if tree.layout == "hybrid":
        steps.append("boot with systemd.unified_cgroup_hierarchy=1 so every controller is "
                     "in cgroup v2" + (" (or, as root, unmount the v1 hierarchies that hold "
                                       "no cgroups: see /proc/cgroups)" if uid == 0 else ""))
    if tree.base is None and uid != 0:
        steps.append("start coopy in your systemd user instance, whose cgroup is delegated "
                     "to you (user@.service has Delegate=yes by default since systemd "
                     "244): systemd-run --user --scope coopy ...")
    elif tree.layout == "unified":
        steps.append("delegate the missing controllers: sudo systemctl edit user@.service, "
                     "then [Service] Delegate=pids memory cpu")
    return "; then ".join(steps)
