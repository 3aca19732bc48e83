"""The operations a mount plan is made of: immutable records (NamedTuple), one per kind of step.

A plan (see :mod:`coopy.plan`) is a tuple of these; :mod:`coopy.mount` applies it.  Box
paths (``target``) are absolute paths *inside* the new root and are always resolved
inside it (openat2 RESOLVE_IN_ROOT), never on the host.  Host paths (``source``) name
directories or files of the host; they are turned into detached mount trees before the
plan is applied (see :mod:`coopy.mount`), so a path is looked up once, by the right
credentials.
"""

from __future__ import annotations

from typing import NamedTuple


class Overlay(NamedTuple):
    """OverlayFS at ``target`` (``/`` for the root) over host ``lowers`` (top first).

    ``upper`` and ``work`` are host directories under one parent; without them the
    overlay is read-only.  Rootless and in a user namespace it is mounted with
    ``userxattr`` (opaque dirs and whiteouts as ``user.overlay.*``; without it, removing
    and re-creating an image directory fails with EIO, as it does in coop).
    """

    target: str
    lowers: tuple[str, ...]
    upper: str | None = None
    work: str | None = None


class Bind(NamedTuple):
    """Bind the host path ``source`` at ``target``: recursive, nosuid, nodev by default.

    ``idmap`` asks for an id-mapped mount (kernel 5.12+) so that files the box writes
    belong to the caller on the host when box root is a subordinate id (boxes of root).
    """

    source: str
    target: str
    readonly: bool = False
    directory: bool = True
    idmap: bool = False
    nodev: bool = True
    noexec: bool = False


class Tmpfs(NamedTuple):
    """A fresh tmpfs at ``target``."""

    target: str
    mode: int = 0o755
    size: int | None = None
    nodev: bool = True
    noexec: bool = False
    readonly: bool = False


class Proc(NamedTuple):
    """A fresh procfs for the box's pid namespace at ``target``.

    Mounted before the pivot: the kernel refuses a proc mount in a user namespace unless a
    fully visible proc already exists in the mount namespace (``mount_too_revealing``).
    """

    target: str = "/proc"


class Sysfs(NamedTuple):
    """A fresh, read-only sysfs (only allowed when the box owns its network namespace)."""

    target: str = "/sys"


class Devpts(NamedTuple):
    """A new devpts instance: the box's PTYs are its own (``gid`` = tty group if mapped)."""

    target: str = "/dev/pts"
    gid: int | None = None


class Mqueue(NamedTuple):
    """POSIX message queues of the box's IPC namespace."""

    target: str = "/dev/mqueue"


class DevNode(NamedTuple):
    """Bind the host device node /dev/``name`` (a userns cannot mknod; never nodev)."""

    name: str


class Mkdir(NamedTuple):
    """Create a directory (and missing parents) inside the new root."""

    target: str
    mode: int = 0o755


class Symlink(NamedTuple):
    """Create ``target`` as a symlink to ``to`` (the link text is not resolved)."""

    target: str
    to: str


class MaskPath(NamedTuple):
    """Hide ``target``: /dev/null over a file, an empty read-only tmpfs over a directory."""

    target: str


class ReadOnly(NamedTuple):
    """Make an existing path (and what is mounted under it) read-only."""

    target: str


class PivotRoot(NamedTuple):
    """Make the new root ``/``, then detach the old one entirely."""


Op = (
    Overlay | Bind | Tmpfs | Proc | Sysfs | Devpts | Mqueue | DevNode | Mkdir | Symlink
    | MaskPath | ReadOnly | PivotRoot
)


def describe(op: Op) -> str:
    """One line for ``--dry-run`` and for error messages: ``bind /src → /dst (ro)``."""
    match op:
        case Overlay(target, lowers, upper, _):
            mode = "rw" if upper else "ro"
            return f"overlay {target} ({mode}; lower {':'.join(lowers)}; upper {upper or '-'})"
        case Bind(source, target, readonly, _, idmap):
            flags = ["ro" if readonly else "rw"] + (["idmap"] if idmap else [])
            return f"bind {source} → {target} ({', '.join(flags)})"
        case Tmpfs(target, mode, size):
            return f"tmpfs {target} (mode {mode:o}{f', size {size}' if size else ''})"
        case Proc(target):
            return f"proc {target}"
        case Sysfs(target):
            return f"sysfs {target} (ro)"
        case Devpts(target):
            return f"devpts {target} (new instance)"
        case Mqueue(target):
            return f"mqueue {target}"
        case DevNode(name):
            return f"device /dev/{name}"
        case Mkdir(target, mode):
            return f"mkdir {target} ({mode:o})"
        case Symlink(target, to):
            return f"symlink {target} → {to}"
        case MaskPath(target):
            return f"mask {target}"
        case ReadOnly(target):
            return f"read-only {target}"
        case PivotRoot():
            return "pivot_root, detach the old root"
    raise AssertionError(op)
