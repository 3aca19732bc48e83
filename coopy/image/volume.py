"""Named volumes, seeded from the image on first use (as Docker does).

A named volume (``mounts = ["cache:/root/.cache"]``, ``-v cache:/root/.cache``) is a
directory under ``<state>/volumes/``.  When a box on a pulled image creates it, the
image's directory at the target (its layers merged as overlayfs would: whiteouts and
opaque directories hide what is below, the topmost entry of a name wins) is copied in,
owners, modes, times and hard links kept, so ``/root/.cache`` or ``/usr/share/app`` start
out as the image has them.  A volume that exists is never written to here; an image
without a directory at the target (or the ``host`` image) gives an empty one.

Owners, so that the box sees what the image had:

* **rootless with subordinate ids**: the layers' files belong to the box's subordinate
  ids; the copy runs as root of a user namespace with the box's map (the caller could
  neither read nor chown them), keeping the box ids.
* **boxes of root**: volumes are bound id-mapped (on-disk id k is what the bind's map
  makes of k), so each host owner is turned back into the on-disk id that the bind shows
  as the same box id (for ``--user`` the bind's map is the workspace's swap map).
* **rootless without subordinate ids, ``--userns=host``**: the files' ids as they are.

The copy goes to ``.tmp-<name>-<pid>`` and is renamed into place under a lock on the
volumes directory, so two boxes starting at once agree on one volume and an
interrupted copy leaves only a temporary directory (removed by the next creation).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from coopy.errors import HostError
from coopy.facts import HostFacts
from coopy.idmap import IdMap, IdRange

Owner = Callable[[int, int], tuple[int, int]]
_OPAQUE = ("user.overlay.opaque", "trusted.overlay.opaque")


def create_volumes(volumes: Sequence[tuple[Path, str]], layers: Sequence[str], *,
                   facts: HostFacts, idmap: IdMap | None, box_ids: tuple[int, int]) -> None:
    """Create the missing volumes of ``volumes`` ((directory, box target) pairs), each
    seeded from ``layers`` (the box's image layers, top first; empty for ``host``).

    ``box_ids`` is the box user's (uid, gid): for boxes of root it picks the bind's map.
    """
    from coopy.paths import ensure_private_dir

    for path, target in volumes:
        if os.path.lexists(path):
            continue
        parent = ensure_private_dir(path.parent)
        lock = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.lexists(path):
                _create(path, image_dir(layers, target), facts, idmap, box_ids)
        finally:
            os.close(lock)


def _create(path: Path, sources: list[str], facts: HostFacts, idmap: IdMap | None,
            box_ids: tuple[int, int]) -> None:
    if not sources:
        # Root's on disk, also for boxes of root: their binds are id-mapped (on-disk root
        # is box root), so a chown to box root's host id would make it nobody's inside.
        path.mkdir(mode=0o755)
        return
    from coopy.image.store import remove_owned_tree

    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        error = merge_as_box(sources, tmp, idmap, facts, _owner_map(facts, idmap, box_ids))
        if error:
            raise HostError(f"seeding volume {path.name} from the image: {error}",
                            hint="free some disk space, or create the volume empty with "
                            "a box on the host image")
        os.rename(tmp, path)
    finally:
        if os.path.lexists(tmp):
            remove_owned_tree(tmp, idmap, facts)


def merge_as_box(sources: Sequence[str], tmp: Path, idmap: IdMap | None, facts: HostFacts,
                 owner: Owner) -> str | None:
    """:func:`copy_merged` of ``sources`` (layers of the box's map) to the new ``tmp``;
    rootless with subordinate ids as root of a user namespace with that map (the files
    belong to those ids).  Returns what went wrong, or None."""
    from coopy.image.store import _in_userns, remove_owned_tree

    if os.path.lexists(tmp):  # left by an interrupted copy
        remove_owned_tree(tmp, idmap, facts)
    rootless_sub = idmap is not None and facts.uid != 0 and idmap.subordinate

    def copy() -> list[tuple[int, str]]:
        try:
            copy_merged(sources, str(tmp), owner)
        except OSError as exc:
            return [(0, f"{exc.filename or ''}: {exc.strerror or exc}")]
        return []

    errors = _in_userns(idmap if rootless_sub else None, facts, copy)
    return errors[0][1] if errors else None


def _owner_map(facts: HostFacts, idmap: IdMap | None, box_ids: tuple[int, int]) -> Owner:
    """How a layer file's owner becomes the copy's (see the module doc)."""
    if idmap is None or facts.uid != 0:
        return lambda uid, gid: (uid, gid)
    from coopy.idmap import build_workspace_idmap

    bind = idmap if box_ids[0] == 0 else build_workspace_idmap(idmap, *box_ids)
    return lambda uid, gid: (_inside(bind.uids, uid), _inside(bind.gids, gid))


def _inside(ranges: tuple[IdRange, ...], host_id: int) -> int:
    """The id that ``ranges`` map to ``host_id`` (0 when none does)."""
    for r in ranges:
        if r.outside <= host_id < r.outside + r.length:
            return r.inside + host_id - r.outside
    return 0


# ---- the image's merged view, read from its layers ----------------------------------------


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: str) -> bool:
    for name in _OPAQUE:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue  # no such xattr (or trusted.* unreadable without real root)
    return False


def _below(sources: Sequence[str], name: str) -> tuple[str, list[str] | str | None]:
    """What ``name`` is in the directory merged from ``sources`` (top first).

    ("dir", its sources), ("symlink", the link's path), ("other", None) for another
    kind, ("none", None) when absent or whited out.
    """
    found: list[str] = []
    for src in sources:
        path = os.path.join(src, name)
        st = _lstat(path)
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode):
            found.append(path)
            if _opaque(path):
                break
            continue
        if found:  # a lower non-directory ends the directory (overlayfs stops there)
            break
        if _whiteout(st):
            return "none", None
        return ("symlink", path) if stat.S_ISLNK(st.st_mode) else ("other", None)
    return ("dir", found) if found else ("none", None)


def image_dir(layers: Sequence[str], target: str) -> list[str]:
    """The layer directories (top first) that make the image's directory ``target``, or
    [] when the image has none there.  Symlinks on the way are followed inside the
    image (an absolute one restarts at its root), as the box's mount target is."""
    todo = [p for p in target.split("/") if p not in ("", ".")]
    done: list[str] = []
    sources: list[str] = list(layers)
    hops = 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            done = done[:-1]
            sources = image_dir(layers, "/".join(done)) if done else list(layers)
            continue
        kind, found = _below(sources, name)
        if kind == "dir" and isinstance(found, list):
            sources, done = found, [*done, name]
        elif kind == "symlink" and isinstance(found, str) and hops < 40:
            hops += 1
            link = os.readlink(found)
            todo = [p for p in link.split("/") if p not in ("", ".")] + todo
            if link.startswith("/"):
                sources, done = list(layers), []
        else:
            return []
    return sources if done else []


def copy_merged(sources: Sequence[str], dest: str, owner: Owner) -> None:
    """Copy the directory merged from ``sources`` (top first) to the new ``dest``."""
    top = os.lstat(sources[0])
    os.mkdir(dest, 0o700)
    _copy_dir(sources, dest, owner, {})
    _attrs(dest, top, owner)


def _copy_dir(sources: Sequence[str], dest: str, owner: Owner,
              links: dict[tuple[int, int], str]) -> None:
    seen: dict[str, tuple[int, os.stat_result]] = {}
    for level, src in enumerate(sources):
        for entry in os.scandir(src):
            if entry.name not in seen:
                seen[entry.name] = (level, entry.stat(follow_symlinks=False))
    for name, (level, st) in sorted(seen.items()):
        src, out = os.path.join(sources[level], name), os.path.join(dest, name)
        mode = st.st_mode
        if _whiteout(st):
            continue
        if stat.S_ISDIR(mode):
            kind, below = _below(sources[level:], name)
            assert kind == "dir" and isinstance(below, list)
            os.mkdir(out, 0o700)
            _copy_dir(below, out, owner, links)
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                os.link(links[key], out, follow_symlinks=False)
                continue
            _copy_file(src, out)
            if st.st_nlink > 1:
                links[key] = out
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), out)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(out, 0o600)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            try:
                os.mknod(out, (mode & ~0o7777) | 0o600, st.st_rdev)
            except PermissionError:
                continue  # device nodes only where the kernel lets us (real root)
        else:
            continue  # a socket: nothing to copy
        _attrs(out, st, owner)


def _copy_file(src: str, out: str) -> None:
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fout = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o600)
        try:
            while True:
                try:
                    n = os.copy_file_range(fin, fout, 1 << 30)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                                         errno.EOPNOTSUPP):
                        raise
                    n = os.sendfile(fout, fin, None, 1 << 30)
                if n == 0:
                    break
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def _attrs(path: str, st: os.stat_result, owner: Owner) -> None:
    """Owner first, then the mode (chown clears set-id bits), then the times."""
    mode = stat.S_IMODE(st.st_mode)
    try:
        os.chown(path, *owner(st.st_uid, st.st_gid), follow_symlinks=False)
    except OSError as exc:
        # EINVAL: an id this namespace does not map; EPERM: not ours to give (rootless
        # without subordinate ids): the copy stays the caller's, which is box root, and
        # loses its set-id bits (they would name an id it does not have).
        if exc.errno not in (errno.EINVAL, errno.EPERM):
            raise
        mode &= ~(stat.S_ISUID | stat.S_ISGID)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, mode)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
