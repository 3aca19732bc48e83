"""Hardened extraction of one image layer into its own directory, as an overlay lower layer.

The rules (NOTES.md, "Layer extraction rules"), each one a refusal of a known attack:

1. Names are normalised: split on ``/``, empty and ``.`` parts dropped (so ``/etc/x`` is
   ``etc/x``, inside the layer); a ``..`` part refuses the whole layer.
2. Parent directories are resolved inside the layer like a chroot would
   (``openat2(RESOLVE_IN_ROOT)``): a symlink is followed, but an absolute target restarts
   at the layer's root and ``..`` stops there.  Missing parents are created.
3. Nothing is written through the final component: what is there is removed first
   (a directory over a directory is kept); files are created ``O_EXCL|O_NOFOLLOW``.
4. Symlinks are created with their target untouched (it is only read inside the box).
5. A hard link's target is resolved by the same rule and must exist in this layer.
6. Device nodes are made only where the kernel lets us (real root); rootless they are
   skipped and counted.  FIFOs are made.
7. Modes keep ``mode & 0o7777`` (and file capabilities and ``user.*`` xattrs from PAX
   headers, never ``user.overlay.*``); owners are the tar's numeric ids, which land on the right
   host ids because extraction runs inside the box's user namespace.  An id the map does
   not have (a box without subordinate ids) stays the box's root, and then the
   set-user/group-id bits are dropped: they would name an id the box does not have.
8. Directory modes and times are applied after the whole layer (a read-only directory
   would block its own children).

Whiteouts become the overlay's own form: ``DIR/.wh.NAME`` a 0:0 character device
``DIR/NAME`` (anyone may create one since Linux 5.8), ``DIR/.wh..wh..opq`` the
``<ns>.overlay.opaque=y`` xattr on DIR (``user.`` for overlays mounted with userxattr,
``trusted.`` for real root).  A whiteout applies to lower layers only: content of the
same name in this layer wins, in either order.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
from typing import IO, NamedTuple

from coopy import syscalls as sc
from coopy.errors import ImageError
from coopy.syscalls import Resolve

_IN_ROOT = Resolve.RESOLVE_IN_ROOT | Resolve.RESOLVE_NO_MAGICLINKS
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class LayerError(ImageError):
    """A layer that breaks an extraction rule (a path escape, a missing link target)."""


class Stats(NamedTuple):
    """What an extraction did."""

    entries: int
    bytes: int
    skipped_devices: int


def normalize(name: str) -> list[str]:
    """Rule 1: the name's parts inside the layer; raises LayerError on ``..``."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"layer entry {name!r} climbs out with '..': the layer is refused")
    return parts


class Extractor:
    """Extracts tar members into the directory ``root_fd`` following the rules above."""

    def __init__(self, root_fd: int, *, xattr_prefix: str = "user.overlay.") -> None:
        self.root = root_fd
        self.xattr_prefix = xattr_prefix
        self.dirs: dict[tuple[str, ...], tarfile.TarInfo] = {}
        self.entries = self.bytes = self.skipped = 0
        self._parents: dict[tuple[str, ...], int] = {}

    # -- parents (rule 2)

    def _parent(self, parts: list[str]) -> int:
        """An O_PATH fd of the directory holding ``parts[-1]``, made when missing."""
        key = tuple(parts[:-1])
        fd = self._parents.get(key)
        if fd is not None:
            return fd
        fd = self._open_dir(key)
        self._parents[key] = fd
        return fd

    def _open_dir(self, key: tuple[str, ...], hops: int = 0) -> int:
        flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
        if not key:
            return sc.openat2(self.root, ".", flags, _IN_ROOT)
        try:
            return sc.openat2(self.root, "/".join(key), flags, _IN_ROOT)
        except FileNotFoundError:
            pass
        if hops > 40:  # as the kernel's own limit on symlinks in one lookup
            raise LayerError(f"layer path {'/'.join(key)!r}: too many levels of symlinks")
        parent = self._open_dir(key[:-1], hops)
        try:
            st = _lstat(key[-1], parent)
            if st is not None and stat.S_ISLNK(st.st_mode):
                # A symlink of this layer to a directory that does not exist yet: make
                # the directory where the link leads, resolved inside the root.
                target = os.readlink(key[-1], dir_fd=parent)
                return self._open_dir(_join_in_root(key[:-1], target), hops + 1)
            if st is None:
                os.mkdir(key[-1], 0o755, dir_fd=parent)
            try:
                return sc.openat2(parent, key[-1], flags | os.O_NOFOLLOW, _IN_ROOT)
            except OSError as exc:
                raise LayerError(f"layer path {'/'.join(key)!r} is not a directory "
                                 f"({exc.strerror})") from None
        finally:
            os.close(parent)

    def _forget_parents(self) -> None:
        for fd in self._parents.values():
            os.close(fd)
        self._parents.clear()

    def close(self) -> None:
        """Release the cached directory fds."""
        self._forget_parents()

    # -- entries

    def add(self, member: tarfile.TarInfo, data: IO[bytes] | None) -> None:
        """Extract one member (``data`` is its content for a regular file)."""
        parts = normalize(member.name)
        self.entries += 1
        if not parts:  # "./": the layer's root directory itself
            if member.isdir():
                self.dirs[()] = member
            return
        base = parts[-1]
        if base.startswith(WHITEOUT):
            self._whiteout(parts)
            return
        parent = self._parent(parts)
        existing = _lstat(base, parent)
        if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
            self._remove(parent, base, existing)
            if stat.S_ISDIR(existing.st_mode) or stat.S_ISLNK(existing.st_mode):
                # cached paths may have led through what was removed
                self._forget_parents()
                parent = self._parent(parts)
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(base, 0o700, dir_fd=parent)
            self._own(parent, base, member)
            self.dirs[tuple(parts)] = member
        elif member.isreg():
            self._file(parent, base, member, data)
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=parent)
            self._own(parent, base, member)
            self._forget_parents()  # a symlink may now stand where a cached path led
        elif member.islnk():
            self._hardlink(parent, base, member)
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=parent)
            self._own(parent, base, member)
            self._mode(parent, base, member)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            try:
                os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                         dir_fd=parent)
            except PermissionError:
                self.skipped += 1  # rule 6: no device nodes without real root
                return
            self._own(parent, base, member)
            self._mode(parent, base, member)
        # other types (GNU long-name headers are consumed by tarfile): nothing to make

    def _file(self, parent: int, base: str, member: tarfile.TarInfo,
              data: IO[bytes] | None) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent)
        try:
            if data is not None:
                with os.fdopen(os.dup(fd), "wb", closefd=True) as out:
                    shutil.copyfileobj(data, out, 1 << 20)
            self.bytes += member.size
            owned = self._chown(lambda: os.fchown(fd, member.uid, member.gid))
            os.fchmod(fd, _mode(member, owned))
            _xattrs(fd, member)
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)

    def _hardlink(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        tparts = normalize(member.linkname)
        if not tparts:
            raise LayerError(f"hard link {member.name!r} points at the layer's root")
        tparent = self._parent(tparts)
        st = _lstat(tparts[-1], tparent)
        if st is None:
            raise LayerError(f"hard link {member.name!r} → {member.linkname!r}: the target "
                             "is not in this layer (a link out of the tree is refused)")
        if stat.S_ISDIR(st.st_mode):
            raise LayerError(f"hard link {member.name!r} → {member.linkname!r} is a directory")
        os.link(tparts[-1], base, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)

    def _whiteout(self, parts: list[str]) -> None:
        base = parts[-1]
        if base == OPAQUE:
            fd = self._dir_fd(tuple(parts[:-1]), create=True)
            try:
                os.setxattr(fd, self.xattr_prefix + "opaque", b"y")
            finally:
                os.close(fd)
            return
        name = base[len(WHITEOUT):]
        if not name or name.startswith(WHITEOUT) or name in (".", ".."):
            return  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): nothing to hide
        parent = self._parent(parts[:-1] + [name])
        if _lstat(name, parent) is None:  # content of this layer wins over its whiteout
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)

    def _dir_fd(self, key: tuple[str, ...], create: bool = False) -> int:
        """A real (not O_PATH) fd of the directory ``key``, resolved in the root."""
        if create:
            os.close(self._open_dir(key))
        return sc.openat2(self.root, "/".join(key) or ".",
                          os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW, _IN_ROOT)

    def _remove(self, parent: int, base: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            _rmtree_at(parent, base)
        else:
            os.unlink(base, dir_fd=parent)

    def _own(self, parent: int, base: str, member: tarfile.TarInfo) -> bool:
        return self._chown(lambda: os.chown(base, member.uid, member.gid, dir_fd=parent,
                                            follow_symlinks=False))

    @staticmethod
    def _chown(do: object) -> bool:
        try:
            do()  # type: ignore[operator]
            return True
        except OSError as exc:
            # EINVAL: the id is not in this user namespace's map; EPERM: not ours to give
            if exc.errno in (errno.EINVAL, errno.EPERM):
                return False
            raise

    def _mode(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        os.chmod(base, _mode(member, True), dir_fd=parent, follow_symlinks=True)

    def finish(self) -> None:
        """Rule 8: directory modes and times, deepest first."""
        self._forget_parents()
        for key in sorted(self.dirs, key=len, reverse=True):
            member = self.dirs[key]
            try:
                fd = self._dir_fd(key)
            except OSError:
                continue  # replaced by a later entry of this layer: nothing to set
            try:
                owned = True
                if not key:
                    owned = self._chown(lambda fd=fd, m=member: os.fchown(fd, m.uid, m.gid))
                os.fchmod(fd, _mode(member, owned))
                os.utime(fd, (member.mtime, member.mtime))
            finally:
                os.close(fd)


# xattrs restored from PAX headers: file capabilities (ping, …; in a user namespace the
# kernel records them for that namespace's root, so they count only inside the box) and
# user.* ones, except the overlay's own (a layer must not forge opaque markers).
_XATTR_PREFIX = "SCHILY.xattr."


def _xattrs(fd: int, member: tarfile.TarInfo) -> None:
    for key, value in member.pax_headers.items():
        if not key.startswith(_XATTR_PREFIX):
            continue
        name = key[len(_XATTR_PREFIX):]
        if name != "security.capability" and (not name.startswith("user.")
                                              or name.startswith("user.overlay.")):
            continue
        try:
            os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))
        except OSError:
            pass  # the filesystem or the namespace refuses it: the file works without


def _mode(member: tarfile.TarInfo, owned: bool) -> int:
    mode = member.mode & 0o7777
    return mode if owned else mode & ~(stat.S_ISUID | stat.S_ISGID)


def _join_in_root(base: tuple[str, ...], target: str) -> tuple[str, ...]:
    """Where the symlink ``target`` found in directory ``base`` leads, as a chroot sees it."""
    parts = [] if target.startswith("/") else list(base)
    for part in target.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return tuple(parts)


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _rmtree_at(parent: int, name: str) -> None:
    """Remove the directory ``name`` under ``parent`` without following any symlink."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=parent)
    try:
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                _rmtree_at(fd, entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def extract_tar(stream: IO[bytes], root_fd: int, *, xattr_prefix: str = "user.overlay.") \
        -> Stats:
    """Extract the (uncompressed) tar ``stream`` into the directory ``root_fd``."""
    ex = Extractor(root_fd, xattr_prefix=xattr_prefix)
    try:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    data = tar.extractfile(member) if member.isreg() else None
                    try:
                        ex.add(member, data)
                    except OSError as exc:
                        raise LayerError(f"layer entry {member.name!r}: "
                                         f"{exc.strerror or exc}") from exc
        except tarfile.TarError as exc:
            raise LayerError(f"the layer is not a valid tar archive: {exc}") from None
        ex.finish()
    finally:
        ex.close()
    return Stats(ex.entries, ex.bytes, ex.skipped)


# media type suffix → the program that decompresses it (stdin → stdout)
DECOMPRESSORS = {"gzip": ("pigz", "gzip"), "zstd": ("zstd",)}


def compression_of(media_type: str) -> str | None:
    """``gzip``, ``zstd`` or None (plain tar) from a layer's media type."""
    if media_type.endswith(("+gzip", ".tar.gzip")) or media_type.endswith("tar.gz"):
        return "gzip"
    if media_type.endswith("+zstd"):
        return "zstd"
    if media_type.endswith(("tar", ".tar")) or media_type == "":
        return None
    raise ImageError(f"unsupported layer media type {media_type!r}",
                     hint="coopy unpacks tar layers, plain, gzip or zstd")


def sniff_compression(head: bytes) -> str | None:
    """Compression from the first bytes (for sources without media types)."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return None


class _Hashing:
    """A read-only stream that hashes what is read through it (the tar's diff_id)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        return data

    def drain(self) -> str:
        """Read to the end (tar's end padding); the digest of everything."""
        while self.read(1 << 20):
            pass
        return "sha256:" + self.sha.hexdigest()


def _check_diff_id(got: str, diff_id: str | None) -> None:
    if diff_id is not None and got != diff_id:
        raise LayerError(f"the uncompressed layer's sha256 is {got[:19]}…, but the image "
                         f"config's rootfs.diff_ids says {diff_id[:19]}…: the image is "
                         "damaged or was altered, so the layer is refused",
                         hint="pull it again from a source you trust; if it fails again, "
                         "the image itself is broken")


def extract_blob(blob_fd: int, compression: str | None, root_fd: int, *,
                 xattr_prefix: str = "user.overlay.", diff_id: str | None = None) -> Stats:
    """Extract a layer blob (the open file ``blob_fd``) into ``root_fd``.

    Compressed layers are piped through ``pigz``/``gzip -dc`` or ``zstd -dc``: the
    decompressor then runs on another core while Python unpacks (docs/design.md, "Images").
    The uncompressed tar is hashed on the way: when ``diff_id`` is given (the image
    config's ``rootfs.diff_ids`` entry) and differs, LayerError; the caller then drops
    the half-written directory.
    """
    os.lseek(blob_fd, 0, os.SEEK_SET)
    if compression is None:
        with os.fdopen(os.dup(blob_fd), "rb") as f:
            stream = _Hashing(f)
            stats = extract_tar(stream, root_fd, xattr_prefix=xattr_prefix)  # type: ignore[arg-type]
            _check_diff_id(stream.drain(), diff_id)
            return stats
    program = next((p for p in DECOMPRESSORS[compression] if shutil.which(p)), None)
    if program is None:
        raise ImageError(f"a {compression} layer needs the {DECOMPRESSORS[compression][-1]} "
                         "program, which is not installed",
                         hint=f"sudo apt install {DECOMPRESSORS[compression][-1]}")
    proc = subprocess.Popen([program, "-dc"], stdin=blob_fd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    stream = _Hashing(proc.stdout)
    try:
        stats = extract_tar(stream, root_fd, xattr_prefix=xattr_prefix)  # type: ignore[arg-type]
        got = stream.drain()
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        status = proc.wait()
    if status != 0:
        raise LayerError(f"{program} failed ({status}): {err}")
    _check_diff_id(got, diff_id)
    return stats
