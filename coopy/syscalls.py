"""The only ctypes module: thin wrappers over the syscalls coopy needs and Python lacks.

Python 3.11 has no ``os.unshare``/``os.setns`` and none of the new mount API, so each call
here is one wrapper over glibc (or ``syscall(2)`` where glibc has no wrapper) that raises
``OSError(errno, "mount(src → dst, flags)")``: the message names the call and its
arguments, so an error read by a user says what the kernel refused.

Flags are ``enum.IntFlag`` so they print as names (``MS_BIND|MS_REC``), not numbers.
"""

from __future__ import annotations

import ctypes
import enum
import os

_libc = ctypes.CDLL(None, use_errno=True)

# x86-64 and aarch64 share these generic numbers for the syscalls added after 4.x.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_PIDFD_SEND_SIGNAL = 424
_SYS_OPENAT2 = 437
_SYS_MOUNT_SETATTR = 442
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432


class CloneFlag(enum.IntFlag):
    """Namespace flags of clone(2)/unshare(2)."""

    CLONE_NEWNS = 0x00020000
    CLONE_NEWCGROUP = 0x02000000
    CLONE_NEWUTS = 0x04000000
    CLONE_NEWIPC = 0x08000000
    CLONE_NEWUSER = 0x10000000
    CLONE_NEWPID = 0x20000000
    CLONE_NEWNET = 0x40000000


class MountFlag(enum.IntFlag):
    """Flags of mount(2)."""

    MS_RDONLY = 0x1
    MS_NOSUID = 0x2
    MS_NODEV = 0x4
    MS_NOEXEC = 0x8
    MS_REMOUNT = 0x20
    MS_NOATIME = 0x400
    MS_NODIRATIME = 0x800
    MS_BIND = 0x1000
    MS_MOVE = 0x2000
    MS_REC = 0x4000
    MS_SILENT = 0x8000
    MS_PRIVATE = 0x40000
    MS_SLAVE = 0x80000
    MS_RELATIME = 0x200000
    MS_STRICTATIME = 0x1000000


class MountAttr(enum.IntFlag):
    """``attr_set``/``attr_clr`` bits of mount_setattr(2)."""

    MOUNT_ATTR_RDONLY = 0x1
    MOUNT_ATTR_NOSUID = 0x2
    MOUNT_ATTR_NODEV = 0x4
    MOUNT_ATTR_NOEXEC = 0x8
    MOUNT_ATTR_IDMAP = 0x100000


class Resolve(enum.IntFlag):
    """``resolve`` bits of openat2(2)."""

    RESOLVE_NO_XDEV = 0x01
    RESOLVE_NO_MAGICLINKS = 0x02
    RESOLVE_NO_SYMLINKS = 0x04
    RESOLVE_BENEATH = 0x08
    RESOLVE_IN_ROOT = 0x10


MNT_DETACH = 0x2
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4


class _MountAttrStruct(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _declare(name: str, restype: type, *argtypes: type) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    fn = getattr(_libc, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


_c_str = ctypes.c_char_p
_unshare = _declare("unshare", ctypes.c_int, ctypes.c_int)
_setns = _declare("setns", ctypes.c_int, ctypes.c_int, ctypes.c_int)
_mount = _declare(
    "mount", ctypes.c_int, _c_str, _c_str, _c_str, ctypes.c_ulong, ctypes.c_void_p
)
_umount2 = _declare("umount2", ctypes.c_int, _c_str, ctypes.c_int)
_sethostname = _declare("sethostname", ctypes.c_int, _c_str, ctypes.c_size_t)
_prctl = _declare(
    "prctl", ctypes.c_int, ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
    ctypes.c_ulong,
)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _b(path: str | bytes | None) -> bytes | None:
    if path is None:
        return None
    return os.fsencode(path)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def unshare(flags: CloneFlag) -> None:
    """unshare(2): move the calling process into new namespaces."""
    _check(_unshare(int(flags)), f"unshare({CloneFlag(flags)!r})")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace (or, with a pidfd, the namespaces) behind ``fd``."""
    _check(_setns(fd, nstype), f"setns({fd}, {nstype:#x})")


def mount(
    source: str | None,
    target: str,
    fstype: str | None,
    flags: MountFlag | int = 0,
    data: str | None = None,
) -> None:
    """mount(2)."""
    what = f"mount({source} → {target}, {fstype or '-'}, {MountFlag(flags)!r}"
    what += f", {data})" if data else ")"
    _check(_mount(_b(source), _b(target), _b(fstype), int(flags), _b(data)), what)


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_umount2(_b(target), flags), f"umount2({target}, {flags:#x})")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2) (glibc has no wrapper)."""
    nr = _SYS_PIVOT_ROOT[os.uname().machine]
    _check(_syscall(nr, _b(new_root), _b(put_old)), f"pivot_root({new_root}, {put_old})")


def sethostname(name: str) -> None:
    """sethostname(2) in the calling process's UTS namespace."""
    raw = name.encode()
    _check(_sethostname(raw, len(raw)), f"sethostname({name})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2)."""
    return _check(_prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def open_tree(dirfd: int, path: str, flags: int) -> int:
    """open_tree(2): with OPEN_TREE_CLONE, a detached copy of the mount at ``path``."""
    return _check(
        _syscall(_SYS_OPEN_TREE, ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags)),
        f"open_tree({path}, {flags:#x})",
    )


def move_mount(from_dirfd: int, from_path: str, to_dirfd: int, to_path: str, flags: int) -> None:
    """move_mount(2): attach a detached tree (``from_dirfd`` with an empty path) somewhere."""
    _check(
        _syscall(
            _SYS_MOVE_MOUNT, ctypes.c_int(from_dirfd), _b(from_path), ctypes.c_int(to_dirfd),
            _b(to_path), ctypes.c_uint(flags),
        ),
        f"move_mount({from_dirfd}:{from_path} → {to_dirfd}:{to_path})",
    )


def mount_setattr(
    dirfd: int,
    path: str,
    flags: int,
    attr_set: MountAttr | int = 0,
    attr_clr: MountAttr | int = 0,
    propagation: int = 0,
    userns_fd: int = 0,
) -> None:
    """mount_setattr(2) (5.12+): change a mount's flags, recursively with AT_RECURSIVE.

    Unlike MS_REMOUNT|MS_BIND it is atomic over a whole tree, and it can attach an
    id mapping (MOUNT_ATTR_IDMAP) to a detached tree made by open_tree(OPEN_TREE_CLONE).
    """
    attr = _MountAttrStruct(int(attr_set), int(attr_clr), propagation, userns_fd)
    _check(
        _syscall(
            _SYS_MOUNT_SETATTR, ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags),
            ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        f"mount_setattr({path or dirfd}, set={MountAttr(attr_set)!r}, "
        f"clr={MountAttr(attr_clr)!r})",
    )


def openat2(dirfd: int, path: str, flags: int, resolve: Resolve | int, mode: int = 0) -> int:
    """openat2(2) (5.6+): open ``path`` with RESOLVE_* rules, e.g. RESOLVE_IN_ROOT."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, int(resolve))
    return _check(
        _syscall(
            _SYS_OPENAT2, ctypes.c_int(dirfd), _b(path), ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        ),
        f"openat2({path}, {Resolve(resolve)!r})",
    )


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    """pidfd_send_signal(2): signal the process behind a pidfd, immune to pid reuse."""
    _check(
        _syscall(_SYS_PIDFD_SEND_SIGNAL, ctypes.c_int(pidfd), ctypes.c_int(sig), None,
                 ctypes.c_uint(0)),
        f"pidfd_send_signal({pidfd}, {sig})",
    )


def _fs_log(fsfd: int) -> str:
    """Drain the kernel's message log of a filesystem context (``overlayfs: …`` lines)."""
    lines = []
    while True:
        try:
            msg = os.read(fsfd, 512)
        except OSError:
            break
        if not msg:
            break
        lines.append(msg.decode(errors="replace").partition(" ")[2] or msg.decode())
    return "; ".join(lines)


def fsmount_new(fstype: str, options: dict[str, str | None] | list[tuple[str, str | None]],
                attr: MountAttr | int = 0) -> int:
    """fsopen + fsconfig + fsmount (5.2+): a new, detached mount of ``fstype``.

    Returns an O_CLOEXEC fd that refers to the root of the new mount, usable as a
    dirfd for openat2 and as the source of move_mount.  The kernel's own reason for a
    refusal (e.g. ``overlayfs: failed to set xattr on upper``) is added to the error.
    """
    fsfd = _check(
        _syscall(_SYS_FSOPEN, _b(fstype), ctypes.c_uint(FSOPEN_CLOEXEC)), f"fsopen({fstype})"
    )
    try:
        pairs = list(options.items()) if isinstance(options, dict) else options
        for key, value in pairs:
            if value is None:
                res = _syscall(_SYS_FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(FSCONFIG_SET_FLAG),
                               _b(key), None, ctypes.c_int(0))
            else:
                res = _syscall(_SYS_FSCONFIG, ctypes.c_int(fsfd),
                               ctypes.c_uint(FSCONFIG_SET_STRING), _b(key), _b(value),
                               ctypes.c_int(0))
            if res < 0:
                err = ctypes.get_errno()
                log = _fs_log(fsfd)
                raise OSError(err, f"fsconfig({fstype}, {key}={value}): {os.strerror(err)}"
                              + (f" ({log})" if log else ""))
        res = _syscall(_SYS_FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(FSCONFIG_CMD_CREATE),
                       None, None, ctypes.c_int(0))
        if res < 0:
            err = ctypes.get_errno()
            log = _fs_log(fsfd)
            raise OSError(err, f"fsconfig({fstype}, create): {os.strerror(err)}"
                          + (f" ({log})" if log else ""))
        return _check(
            _syscall(_SYS_FSMOUNT, ctypes.c_int(fsfd), ctypes.c_uint(FSMOUNT_CLOEXEC),
                     ctypes.c_uint(int(attr))),
            f"fsmount({fstype})",
        )
    finally:
        os.close(fsfd)


# ---- clone3 into a cgroup ---------------------------------------------------------------

_SYS_CLONE3 = 435
CLONE_INTO_CGROUP = 0x200000000  # Linux 5.7
_SIGCHLD = 17


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


# Through a PyDLL the GIL stays held across the call, as os.fork holds it across fork().
_clone3 = ctypes.PyDLL(None, use_errno=True).syscall
_clone3.restype = ctypes.c_long


def fork_into_cgroup(cgroup_fd: int) -> int:
    """``os.fork()`` whose child starts in the cgroup directory ``cgroup_fd``.

    clone3(CLONE_INTO_CGROUP) places the child at birth, where moving it through
    cgroup.procs would cost the writer an RCU grace period (cgroup_threadgroup_rwsem: 5-25 ms
    measured here).  Python's own fork hooks run around it (PyOS_BeforeFork/AfterFork_*,
    as os.fork runs them).  Only for a single-threaded caller: glibc's fork would also take
    its malloc and stdio locks for other threads, and set the child's cached thread id
    (stale in this child; nothing it runs before its exec reads it).
    """
    args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=_SIGCHLD, cgroup=cgroup_fd)
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = _clone3(ctypes.c_long(_SYS_CLONE3), ctypes.byref(args),
                  ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone3(CLONE_INTO_CGROUP): {os.strerror(err)}")
    return int(pid)
