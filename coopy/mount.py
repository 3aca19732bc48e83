"""The mount interpreter: applies a plan (a tuple of :mod:`coopy.ops`) in a new mount namespace.

Nothing else in coopy calls mount(2).  Rules it keeps (docs/design.md, "Mounts"):

* Every target is resolved inside the new root with openat2(RESOLVE_IN_ROOT |
  RESOLVE_NO_MAGICLINKS): a symlink in an image, an upper layer or a volume can never
  redirect a mount or a mkdir to the host (the runc CVE-2021-30465 / NVIDIA
  CVE-2025-23267 class).  The mount then goes onto that fd (``/proc/self/fd/N``, or
  move_mount with MOVE_MOUNT_T_EMPTY_PATH), not onto a path that could change meanwhile.
* Bind sources are detached trees (open_tree(OPEN_TREE_CLONE)); flags are set on the
  tree with mount_setattr(AT_RECURSIVE) *before* it is attached, so a read-only bind is
  read-only all the way down and never briefly writable.
* Boxes of root get their host-side sources (state layers, workspace, volumes) as trees
  cloned by the parent, which runs with root's credentials (box root, a subordinate id,
  cannot even look inside /root); other sources are looked up here by path.
"""

from __future__ import annotations

import errno
import os
import stat

from coopy import syscalls as sc
from coopy.errors import STATE_FS_HINT, SetupError
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
from coopy.syscalls import MountAttr as MA
from coopy.syscalls import MountFlag as MS
from coopy.syscalls import Resolve

_IN_ROOT = Resolve.RESOLVE_IN_ROOT | Resolve.RESOLVE_NO_MAGICLINKS
_CLONE = sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC
_MOVE = sc.MOVE_MOUNT_F_EMPTY_PATH | sc.MOVE_MOUNT_T_EMPTY_PATH


class Trees:
    """Where the interpreter finds its host-side sources.

    ``trees`` are detached trees cloned (and id-mapped) by the parent for boxes of root,
    keyed by host path; any other bind source is cloned here by path.  Overlay layers
    under ``box_dir`` are named relative to the working directory, which the parent set
    to ``box_dir`` before forking: unshare(CLONE_NEWNS) moves cwd to the new namespace's
    copy of that mount, so box root (a subordinate id for boxes of root) reaches its
    layers without searching /root.  Layers must be in the box's own mount namespace;
    overlay refuses clones made in a namespace box root has no rights over.
    """

    def __init__(self, box_dir: str = "", trees: dict[str, int] | None = None) -> None:
        self.box_dir = box_dir
        self.trees = trees if trees is not None else {}
        self.attached = 0

    def tree(self, source: str, *, recursive: bool = True) -> int:
        """A detached tree of ``source`` to attach once (the caller closes it).

        A parent's tree is handed over as it is: the kernel refuses to clone a tree made
        in another mount namespace (may_copy_tree), but lets it be attached.
        """
        fd = self.trees.pop(source, None)
        if fd is not None:
            return fd
        flags = _CLONE | (sc.AT_RECURSIVE if recursive else 0)
        return sc.open_tree(sc.AT_FDCWD, source, flags)

    def layer(self, path: str) -> str:
        """The path overlay should be given for a layer: relative when next to the box.

        An image layer the parent cloned (boxes of root: box root cannot search root's
        home) is attached on ``lower/<n>`` in the box directory first: overlay takes
        lower layers only from its own mount namespace (clone_private_mount).
        """
        fd = self.trees.pop(path, None)
        if fd is not None:
            mp = os.open(f"lower/{self.attached}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sc.move_mount(fd, "", mp, "", _MOVE)
            finally:
                os.close(mp)
                os.close(fd)
            self.attached += 1
            return f"lower/{self.attached - 1}"
        if self.box_dir and path.startswith(os.path.dirname(self.box_dir) + "/"):
            return os.path.relpath(path, self.box_dir)
        return path


def clone_sources(ops: tuple[Op, ...], userns_fd: int | None,
                  box_dir: str = "") -> dict[str, int]:
    """Run by the parent with root's host credentials: clone the id-mapped binds of ``ops``.

    Each gets the box's user namespace attached with MOUNT_ATTR_IDMAP, so files that
    are root's on disk are box root's in the box, and the box's new files are root's.
    A pulled image's layers (lower layers not next to ``box_dir``) are cloned as they
    are: their files already belong to the box's ids (see :meth:`Trees.layer`).
    """
    trees: dict[str, int] = {}
    near = os.path.dirname(box_dir) + "/"
    for op in ops:
        match op:
            case Overlay("/", lowers, _, _) if box_dir:
                for path in lowers:
                    if not path.startswith(near) and path not in trees:
                        trees[path] = sc.open_tree(sc.AT_FDCWD, path, _CLONE)
            case Bind(source, _, _, directory, idmap) if idmap and source not in trees:
                flags = _CLONE | (sc.AT_RECURSIVE if directory else 0)
                fd = sc.open_tree(sc.AT_FDCWD, source, flags)
                if userns_fd is not None:
                    try:
                        sc.mount_setattr(
                            fd, "", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE, MA.MOUNT_ATTR_IDMAP,
                            userns_fd=userns_fd,
                        )
                    except OSError as exc:
                        os.close(fd)
                        raise SetupError(
                            f"{describe(op)}: cannot map its owners to the box's ids "
                            f"(id-mapped mount): {exc.strerror}",
                            hint="this filesystem does not support id-mapped mounts (Linux "
                            "5.12+, ext4/xfs/btrfs/tmpfs); run as an ordinary user, or "
                            "give --userns=host to let box root be host root",
                        ) from exc
                trees[source] = fd
    return trees


class Applier:
    """Applies ops one by one; ``root`` is the new root's mount fd once it exists."""

    def __init__(self, trees: Trees, userxattr: bool, attach_at: str) -> None:
        self.trees = trees
        self.userxattr = userxattr
        self.attach_at = attach_at
        self.root = -1
        self._fds: list[int] = []

    # ---- resolution inside the new root -------------------------------------------

    def _open(self, path: str, flags: int = os.O_PATH) -> int:
        fd = sc.openat2(self.root, path.lstrip("/") or ".", flags, _IN_ROOT)
        self._fds.append(fd)
        return fd

    def _parent(self, path: str) -> tuple[int, str]:
        parent, name = os.path.split(path.rstrip("/"))
        self._mkdirs(parent or "/")
        return self._open(parent or "/", os.O_PATH | os.O_DIRECTORY), name

    def _mkdirs(self, path: str, mode: int = 0o755) -> None:
        done = ""
        for part in [p for p in path.split("/") if p]:
            cur = f"{done}/{part}"
            try:
                fd = sc.openat2(self.root, cur.lstrip("/"), os.O_PATH | os.O_DIRECTORY, _IN_ROOT)
                os.close(fd)
            except FileNotFoundError:
                parent = self._open(done or "/", os.O_PATH | os.O_DIRECTORY)
                try:
                    os.mkdir(part, mode, dir_fd=parent)
                except FileExistsError:  # a dangling symlink: refuse rather than follow
                    raise SetupError(
                        f"cannot create {cur} in the box: a symlink points out of the box"
                    ) from None
            done = cur

    def _target(self, path: str, *, directory: bool = True) -> int:
        if directory:
            self._mkdirs(path)
            return self._open(path, os.O_PATH | os.O_DIRECTORY)
        try:
            return self._open(path)
        except FileNotFoundError:
            parent, name = self._parent(path)
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                             0o644, dir_fd=parent))
            return self._open(path)

    @staticmethod
    def _at(fd: int) -> str:
        return f"/proc/self/fd/{fd}"

    def _attach(self, tree: int, target_fd: int) -> None:
        try:
            sc.move_mount(tree, "", target_fd, "", _MOVE)
        finally:
            os.close(tree)

    # ---- the ops ----------------------------------------------------------------------

    def apply(self, op: Op) -> None:
        """Apply one op; errors name the op (``bind /x → /y (ro): move_mount: EPERM``)."""
        try:
            self._apply(op)
        except SetupError:
            raise
        except OSError as exc:
            raise SetupError(f"{describe(op)}: {exc.strerror or exc}", op=op) from exc
        finally:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()

    def _apply(self, op: Op) -> None:
        match op:
            case Overlay("/", lowers, upper, work):
                try:
                    self.root = self._overlay(lowers, upper, work)
                except OSError as exc:
                    raise SetupError(
                        f"{describe(op)}: {exc.strerror or exc}", hint=STATE_FS_HINT, op=op
                    ) from exc
                mp = os.open(self.attach_at, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    sc.move_mount(self.root, "", mp, "", _MOVE)
                finally:
                    os.close(mp)
                if os.fstatvfs(self.root).f_flag & os.ST_RDONLY and upper is not None:
                    raise SetupError(
                        "the root overlay came up read-only: its upper directory is not "
                        "usable (no user xattrs or no write access)",
                        hint=STATE_FS_HINT,
                    )
            case Overlay(target, lowers, upper, work):
                self._attach(self._overlay(lowers, upper, work), self._target(target))
            case Bind(source, target, readonly, directory, _, nodev, noexec):
                tree = self.trees.tree(source)
                attrs = MA.MOUNT_ATTR_NOSUID
                attrs |= MA.MOUNT_ATTR_RDONLY if readonly else 0
                attrs |= MA.MOUNT_ATTR_NODEV if nodev else 0
                attrs |= MA.MOUNT_ATTR_NOEXEC if noexec else 0
                # Flags the host locked on the source (ro, nodev, …) cannot be cleared,
                # only added to: attr_set never clears anything.
                sc.mount_setattr(tree, "", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE, attrs)
                self._attach(tree, self._target(target, directory=directory))
            case Tmpfs(target, mode, size, nodev, noexec, readonly):
                data = f"mode={mode:o}" + (f",size={size}" if size else "")
                flags = MS.MS_NOSUID | (MS.MS_NODEV if nodev else 0)
                flags |= (MS.MS_NOEXEC if noexec else 0) | (MS.MS_RDONLY if readonly else 0)
                sc.mount("tmpfs", self._at(self._target(target)), "tmpfs", flags, data)
            case Proc(target):
                sc.mount("proc", self._at(self._target(target)), "proc",
                         MS.MS_NOSUID | MS.MS_NODEV | MS.MS_NOEXEC)
            case Sysfs(target):
                sc.mount("sysfs", self._at(self._target(target)), "sysfs",
                         MS.MS_RDONLY | MS.MS_NOSUID | MS.MS_NODEV | MS.MS_NOEXEC)
            case Devpts(target, gid):
                data = "newinstance,ptmxmode=0666,mode=0620" + (f",gid={gid}" if gid else "")
                sc.mount("devpts", self._at(self._target(target)), "devpts",
                         MS.MS_NOSUID | MS.MS_NOEXEC, data)
            case Mqueue(target):
                sc.mount("mqueue", self._at(self._target(target)), "mqueue",
                         MS.MS_NOSUID | MS.MS_NODEV | MS.MS_NOEXEC)
            case DevNode(name):
                tree = sc.open_tree(sc.AT_FDCWD, f"/dev/{name}", _CLONE)
                sc.mount_setattr(tree, "", sc.AT_EMPTY_PATH, MA.MOUNT_ATTR_NOSUID
                                 | MA.MOUNT_ATTR_NOEXEC)
                self._attach(tree, self._target(f"/dev/{name}", directory=False))
            case Mkdir(target, mode):
                self._mkdirs(target, mode)
            case Symlink(target, to):
                parent, name = self._parent(target)
                os.symlink(to, name, dir_fd=parent)
            case MaskPath(target):
                self._mask(target)
            case ReadOnly(target):
                try:
                    fd = self._open(target)
                except FileNotFoundError:
                    return  # nothing to protect (e.g. no /proc/bus on this kernel)
                tree = sc.open_tree(fd, "", _CLONE | sc.AT_EMPTY_PATH | sc.AT_RECURSIVE)
                sc.mount_setattr(tree, "", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE,
                                 MA.MOUNT_ATTR_RDONLY | MA.MOUNT_ATTR_NOSUID
                                 | MA.MOUNT_ATTR_NODEV | MA.MOUNT_ATTR_NOEXEC)
                self._attach(tree, fd)
            case PivotRoot():
                self._pivot()

    def _overlay(self, lowers: tuple[str, ...], upper: str | None, work: str | None) -> int:
        paths = [self.trees.layer(p) for p in lowers]
        rest: list[tuple[str, str | None]] = []
        if upper is not None and work is not None:
            rest += [("upperdir", self.trees.layer(upper)), ("workdir", self.trees.layer(work))]
        if self.userxattr:
            rest.append(("userxattr", None))
        attr = MA.MOUNT_ATTR_NOSUID
        if upper is None:  # a layer view (/etc of the host image): read-only, no devices
            attr |= MA.MOUNT_ATTR_NODEV | MA.MOUNT_ATTR_RDONLY
        if len(paths) > 2:
            # An image's layers: one "lowerdir+" each (6.7+), past fsconfig's 256-byte
            # limit on one string; older kernels get the joined form.
            try:
                return sc.fsmount_new("overlay", [("lowerdir+", p) for p in paths] + rest, attr)
            except OSError as exc:
                if exc.errno != errno.EINVAL or "lowerdir+" not in str(exc):
                    raise
        return sc.fsmount_new("overlay", [("lowerdir", ":".join(paths)), *rest], attr)

    def _mask(self, target: str) -> None:
        try:
            fd = self._open(target)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            sc.mount("tmpfs", self._at(fd), "tmpfs", MS.MS_RDONLY | MS.MS_NOSUID | MS.MS_NODEV
                     | MS.MS_NOEXEC, "size=0,mode=000")
            return
        null = self._open("/dev/null")
        tree = sc.open_tree(null, "", _CLONE | sc.AT_EMPTY_PATH)
        sc.mount_setattr(tree, "", sc.AT_EMPTY_PATH, MA.MOUNT_ATTR_RDONLY | MA.MOUNT_ATTR_NOSUID
                         | MA.MOUNT_ATTR_NOEXEC)
        self._attach(tree, fd)

    def _pivot(self) -> None:
        # pivot_root(".", ".") stacks the old root on the new one; detaching "." then
        # removes it entirely (pivot_root(2), "NOTES").  The old root is made private
        # first so the unmount does not propagate to the host (mount_namespaces(7)).
        os.fchdir(self.root)
        sc.pivot_root(".", ".")
        sc.mount(None, ".", None, MS.MS_REC | MS.MS_PRIVATE)
        sc.umount2(".", sc.MNT_DETACH)
        os.chdir("/")


def apply_plan(ops: tuple[Op, ...], trees: Trees, *, userxattr: bool, attach_at: str) -> None:
    """Apply a whole plan in the calling process's (new, private) mount namespace.

    ``attach_at`` is a directory the new root is attached on before the pivot; the old
    root and everything under it are detached at the end.
    """
    # Propagation must not reach the host: MS_SLAVE (as bubblewrap) keeps host mount
    # events flowing in but never out; pivot_root refuses a shared new root (EINVAL).
    sc.mount(None, "/", None, MS.MS_REC | MS.MS_SLAVE)
    applier = Applier(trees, userxattr, attach_at)
    for op in ops:
        applier.apply(op)
    if applier.root >= 0:
        os.close(applier.root)
