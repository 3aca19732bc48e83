"""Box directories in the per-user state dir, and removing them without leaving residue.

An ephemeral box (``coopy run``) lives in ``<state>/run/<id>/`` and holds an flock on
``<id>/lock`` for its whole life.  A directory whose lock nobody holds belongs to a run
that was killed (SIGKILL, power loss): the next ``coopy run`` removes it, so nothing
accumulates even when cleanup could not run.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from coopy.paths import ensure_private_dir, state_dir


class RunDir:
    """The directory of one ephemeral box, locked while the box lives."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self.lock_fd = lock_fd

    @classmethod
    def create(cls) -> RunDir:
        """Make a fresh locked run directory (and sweep those of dead runs)."""
        ensure_private_dir(state_dir())
        # 0711: box root of a box of root (a subordinate id) must pass through to the
        # shared skeleton next to its box directory; nothing here can be listed.
        base = ensure_private_dir(state_dir() / "run", mode=0o711)
        sweep_stale(base)
        while True:
            path = base / os.urandom(6).hex()
            try:
                path.mkdir(mode=0o700)
                break
            except FileExistsError:
                continue
        fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return cls(path, fd)

    def release(self) -> None:
        """Keep the directory (a persistent box's), drop the lock."""
        os.close(self.lock_fd)

    def remove(self, remover: object = None) -> None:
        """Delete the directory (the caller passes a userns-aware remover if needed)."""
        try:
            remove_tree(self.path, remover)
        finally:
            os.close(self.lock_fd)


def sweep_stale(base: Path) -> None:
    """Remove run directories whose owner process is gone (their lock is free)."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        try:
            fd = os.open(os.path.join(entry.path, "lock"), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # being created right now, or not ours to judge
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # alive
        try:
            remove_tree(Path(entry.path), None)
        except OSError:
            pass  # files of subordinate ids: removed by `coopy system prune` (userns)
        finally:
            os.close(fd)


def remove_tree(path: Path, remover: object = None) -> None:
    """Remove a directory tree; copes with overlay's mode-000 work dir.

    Files owned by subordinate ids (created by box users other than root, rootless)
    cannot be removed by the caller; ``remover`` (a callable taking the path) removes
    them from inside a user namespace with the box's map.
    """
    try:
        _rmtree(str(path))
    except FileNotFoundError:
        return
    except OSError:
        if remover is None:
            raise
        remover(path)  # type: ignore[operator]


def _rmtree(path: str) -> None:
    # Not shutil.rmtree: importing shutil costs ~2 ms (bz2, lzma) of every box's start.
    try:
        entries = list(os.scandir(path))
    except PermissionError:
        os.chmod(path, stat.S_IRWXU)  # overlay leaves work/work mode 000
        entries = list(os.scandir(path))
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _rmtree(entry.path)
        else:
            os.unlink(entry.path)
    os.rmdir(path)
