"""What a box changed: ``coopy diff``, and ``coopy apply``/``discard`` of a cow workspace.

A box's writes outside its workspace land in its upper layer (``<box>/upper``); with
``[workspace] mode = "cow"`` its writes to the workspace land in a second overlay's upper
(``<box>/ws/upper``) and the host's files stay as they were until ``coopy apply`` copies
the changes over them (or ``coopy discard`` drops them).  Reading an upper layer is how
both are computed: a regular file, symlink or new directory there is a change, a 0:0
character device is a whiteout (a removal), and a directory marked opaque
(``user.overlay.opaque`` in a user namespace, ``trusted.overlay.opaque`` otherwise)
replaces the one below it whole.  An upper layer is only read while its box runs;
apply and discard need the box stopped (overlayfs(5): changing an upper layer under a
mounted overlay is undefined).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from coopy.errors import BoxStateError, CoopyError

OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque")


class Change(NamedTuple):
    """One path a box changed: A added, M modified, D deleted, R replaced (a directory
    whose old content is gone), ? unreadable here (another box user's, rootless)."""

    kind: str
    path: str  # relative to the layer's top; directories end with "/"


def _opaque(path: str) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) in (b"y", b"y\0"):
                return True
        except OSError:
            continue  # ENODATA, or trusted.* not readable without CAP_SYS_ADMIN
    return False


def upper_changes(upper: Path, lower: Path | None = None) -> Iterator[Change]:
    """The changes an upper layer holds, parents before children.

    ``lower`` (the cow workspace) tells added from modified; without it every file is
    ``A`` and directories are listed only when opaque.
    """
    def walk(rel: str) -> Iterator[Change]:
        try:
            entries = sorted(os.scandir(os.path.join(upper, rel)), key=lambda e: e.name)
        except PermissionError:
            yield Change("?", rel + "/")
            return
        for entry in entries:
            path = os.path.join(rel, entry.name) if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            below = lower is not None and os.path.lexists(lower / path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                yield Change("D", path)
            elif stat.S_ISDIR(st.st_mode):
                if _opaque(entry.path):
                    yield Change("R" if below else "A", path + "/")
                elif lower is not None and not (below and os.path.isdir(lower / path)):
                    yield Change("A", path + "/")
                yield from walk(path)
            else:
                yield Change("M" if below else "A", path)

    yield from walk("")


def _safe_target(workspace: Path, rel: str) -> Path:
    """``workspace/rel`` after checking that no directory on the way is a symlink (the
    host's files are the user's, but a copy must never be redirected out of them)."""
    parts = rel.rstrip("/").split("/")
    cur = workspace
    for part in parts[:-1]:
        cur = cur / part
        if cur.is_symlink():
            raise CoopyError(f"not applying {rel}: {cur} is a symlink in the workspace")
    return cur / parts[-1]


def _remove(path: Path) -> None:
    from coopy.state import remove_tree

    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    elif os.path.lexists(path):
        path.unlink()


def _copy(src: str, dst: Path) -> None:
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        _remove(dst)
        os.symlink(os.readlink(src), dst)
        return
    tmp = dst.with_name(f".{dst.name}.coopy-apply")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
    os.chmod(tmp, stat.S_IMODE(st.st_mode) & 0o7777 & ~0o6000)  # never setuid/setgid
    if dst.is_dir() and not dst.is_symlink():
        _remove(dst)
    os.replace(tmp, dst)


def apply_changes(upper: Path, workspace: Path) -> tuple[list[Change], list[str]]:
    """Copy a cow workspace's changes onto the host's workspace; (applied, problems).

    New files belong to the caller (who runs this), like files a box writes directly.
    """
    done: list[Change] = []
    problems: list[str] = []
    for change in upper_changes(upper, workspace):
        rel = change.path.rstrip("/")
        try:
            dst = _safe_target(workspace, rel)
            src = os.path.join(upper, rel)
            if change.kind == "?":
                raise CoopyError(f"cannot read {src} (written by another user of the box)")
            if change.kind == "D":
                _remove(dst)
            elif change.path.endswith("/"):
                if change.kind == "R" or (os.path.lexists(dst) and not dst.is_dir()):
                    _remove(dst)
                dst.mkdir(mode=stat.S_IMODE(os.lstat(src).st_mode), exist_ok=True)
            else:
                _copy(src, dst)
            done.append(change)
        except (OSError, CoopyError) as exc:
            problems.append(exc.message if isinstance(exc, CoopyError) else
                            f"{change.path}: {exc.strerror or exc}")
    return done, problems


def cow_dir(box_dir: Path) -> Path:
    """Where a cow box keeps its workspace's overlay (upper/ and work/)."""
    return box_dir / "ws"


def stopped_box(name: str, verb: str) -> tuple[Path, str]:
    """(box dir, workspace) of a cow box that is not running; errors say what to do."""
    from coopy.lifecycle import find

    box_dir, record = find(name)
    if record.state == "running":
        raise BoxStateError(f"box {name!r} is running: its workspace overlay is in use",
                            hint=f"`coopy kill {name}` first, then `coopy {verb} {name}`")
    if not (cow_dir(box_dir) / "upper").is_dir():
        raise BoxStateError(f"box {name!r} has no copy-on-write workspace",
                            hint='set [workspace] mode = "cow" in coop.toml before creating it')
    return box_dir, record.workspace


def discard(box_dir: Path) -> None:
    """Drop a cow box's workspace changes (the next start begins from the host's files)."""
    from coopy.lifecycle import _remover
    from coopy.state import remove_tree

    remove_tree(cow_dir(box_dir), _remover())
