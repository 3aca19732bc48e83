"""Finding a running box's keeper fast: what `coopy shell -c`, `exec` and `attach` need
before they reach a keeper, without pathlib, json, re, typing or socket.

Those imports cost ~30 ms of a client's start on this kind of machine (measured with
`python -X importtime` and whole-process timings), more than the rest of `coopy shell -c
true`.  :func:`running` reads a box's record with plain strings and the C JSON scanner;
whenever anything is not the plain case (no record, not running, a keeper gone, a
directory not ours) it answers None and the caller takes the full path
(:func:`coopy.lifecycle.find`), which gives the errors and cleans stale records.
"""

from __future__ import annotations

import os
import stat

from coopy import proto

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def valid_name(name: str) -> bool:
    """A box name is one path component of letters, digits, ``.``, ``_`` and ``-``
    (at most 63, starting with a letter or digit): it names a directory, a socket and a
    hostname."""
    return (0 < len(name) <= 63 and name[0] not in "._-" and NAME_CHARS.issuperset(name))


def state_root() -> str:
    """coopy's state directory (:func:`coopy.paths.state_dir`) as a string."""
    root = os.environ.get("COOPY_HOME")
    if root:
        return os.path.join(root, "state")
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "coopy")
    home = os.environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".local/state", "coopy")


def proc_start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (to tell a reused pid apart)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return -1


class Running:
    """What a client needs of a running box's record (the fields of
    :class:`coopy.state.BoxRecord` it reads)."""

    state = "running"

    def __init__(self, name: str, workspace: str, socket: str, keeper_pid: int,
                 keeper_start: int) -> None:
        self.name = name
        self.workspace = workspace
        self.socket = socket
        self.keeper_pid = keeper_pid
        self.keeper_start = keeper_start

    def can_attach(self) -> bool:
        """A running box has a terminal to attach to."""
        return True


def running(name: str) -> Running | None:
    """Box ``name``'s record when it says running and its keeper is alive; else None.

    The state directory, ``boxes/`` and the box's directory must be directories owned by
    the caller, as :func:`coopy.paths.ensure_private_dir` demands: a record in a place
    another user controls could point a client at any socket.
    """
    if not valid_name(name):
        return None
    uid = os.getuid()
    path = state_root()
    for part in ("", "boxes", name):
        path = os.path.join(path, part) if part else path
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            return None
    try:
        with open(os.path.join(path, "box.json"), "rb") as f:
            record = proto.loads(f.read().decode())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("state") != "running":
        return None
    fields = (record.get("workspace"), record.get("socket"), record.get("keeper_pid"),
              record.get("keeper_start"))
    workspace, sock, pid, start = fields
    if not (isinstance(workspace, str) and isinstance(sock, str) and isinstance(pid, int)
            and isinstance(start, int)) or pid <= 0 or proc_start_time(pid) != start:
        return None
    return Running(name, workspace, sock, pid, start)
