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
import time
from pathlib import Path
from typing import NamedTuple

from coopy.boxfind import proc_start_time
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


# ---- persistent boxes ---------------------------------------------------------------


class BoxRecord(NamedTuple):
    """What ``coopy ls`` knows of a box without asking anyone: ``<box>/box.json``.

    States: ``creating`` → ``running`` → ``exited``; a record that says running whose
    keeper is gone (killed, or the machine rebooted) is *stale*: reported as such and
    turned into ``exited`` by the next command that looks.
    """

    name: str
    workspace: str
    command: tuple[str, ...]
    image: str = "host"
    network: str = "none"
    state: str = "creating"
    created: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    keeper_pid: int = 0
    keeper_start: int = 0
    socket: str = ""
    exit_status: int | None = None
    mounts: tuple[str, ...] = ()  # "SRC:DST[:ro]" as the box was made (restart compares)
    agent: str = ""  # the agent preset's name, "" for a command line
    worktree: str = ""  # the git worktree the box works in (`coopy -n NAME --worktree`)
    gpus: tuple[str, ...] = ()  # host indices of its GPUs
    ports: tuple[str, ...] = ()  # published: "127.0.0.1:8080->80/tcp"

    def can_attach(self) -> bool:
        """Only a running box has a terminal to attach to."""
        return self.state == "running"


def boxes_dir() -> Path:
    """Where persistent boxes live: one directory per box, plus shared skeletons."""
    ensure_private_dir(state_dir())
    # 0711 for the same reason as run/: box root of a box of root must pass through.
    return ensure_private_dir(state_dir() / "boxes", mode=0o711)


def write_record(box_dir: Path, record: BoxRecord) -> None:
    """Write ``box.json`` atomically (tmp + rename)."""
    import json

    tmp = box_dir / f".box.json.{os.getpid()}"
    data = record._asdict()
    data["command"] = list(record.command)
    data["mounts"] = list(record.mounts)
    data["gpus"] = list(record.gpus)
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, box_dir / "box.json")


def read_record(box_dir: Path) -> BoxRecord | None:
    """The record of a box directory, or None when it has none (or a broken one)."""
    import json

    try:
        data = json.loads((box_dir / "box.json").read_text())
        data["command"] = tuple(data.get("command", ()))
        data["mounts"] = tuple(data.get("mounts", ()))
        data["gpus"] = tuple(data.get("gpus", ()))
        return BoxRecord(**{k: v for k, v in data.items() if k in BoxRecord._fields})
    except (OSError, ValueError, TypeError):
        return None


def keeper_alive(record: BoxRecord) -> bool:
    """Whether the record's keeper is still the process it was (never a bare pid)."""
    return record.keeper_pid > 0 and proc_start_time(record.keeper_pid) == record.keeper_start


def refresh(box_dir: Path, record: BoxRecord) -> BoxRecord:
    """Turn a stale ``running`` record (its keeper is gone) into ``exited``, and clean up."""
    if record.state in ("running", "creating") and not keeper_alive(record):
        if record.state == "creating" and time.time() - record.created < 60:
            return record  # being created right now by another coopy
        record = record._replace(state="exited", exit_status=None, ended=time.time())
        write_record(box_dir, record)
        if record.socket:
            try:
                os.unlink(record.socket)
            except FileNotFoundError:
                pass  # already gone
    return record


def lock_box(box_dir: Path, *, wait: bool = True) -> int | None:
    """flock the box directory (creation and removal); None when busy and not waiting."""
    fd = os.open(box_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
