"""Where coopy keeps things on the host (DESIGN.md, "Places").

* state (box records, upper layers, logs): ``$XDG_STATE_HOME/coopy``
  (default ``~/.local/state/coopy``);
* images and layers: ``$XDG_DATA_HOME/coopy`` (default ``~/.local/share/coopy``);
* sockets: ``$XDG_RUNTIME_DIR/coopy``, else a 0700 ``/tmp/coopy-<uid>`` whose owner is
  checked.

``COOPY_HOME`` moves state and data together (``$COOPY_HOME/state``, ``$COOPY_HOME/data``),
for homes on NFS/Lustre where overlay upper dirs and user xattrs don't work.
Every directory coopy creates is 0700 and must be owned by the caller: a directory that
another user could have prepared is refused, never used.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from coopy.errors import HostError

PROJECT_FILE = "coop.toml"


def _home() -> Path:
    return Path(os.environ.get("HOME") or os.path.expanduser("~"))


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return _home() / default


def state_dir() -> Path:
    """Box records, upper layers and logs."""
    from coopy.boxfind import state_root  # the same rule, for clients that avoid pathlib

    return Path(state_root())


def data_dir() -> Path:
    """Images and layers."""
    root = os.environ.get("COOPY_HOME")
    if root:
        return Path(root) / "data"
    return _xdg("XDG_DATA_HOME", ".local/share") / "coopy"


def runtime_dir() -> Path:
    """Keeper sockets and locks that must not outlive a reboot."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "coopy"
    return Path(f"/tmp/coopy-{os.getuid()}")


def ensure_private_dir(path: Path, mode: int = 0o700) -> Path:
    """Create ``path`` (0700, parents as needed) and check that the caller owns it.

    A directory owned by someone else, or writable by others, could have been prepared by
    another user to redirect coopy's writes: it is refused with the fix.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as exc:
        raise HostError(
            f"cannot create {path}: {exc.strerror}",
            hint="set COOPY_HOME to a directory you can write",
        ) from exc
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise HostError(
            f"{path} is not a directory owned by you (uid {os.getuid()})",
            hint="remove it or set COOPY_HOME elsewhere; coopy will not use a directory "
            "another user controls",
        )
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)  # ours: box records and layers are nobody else's business
    return path


def find_workspace(start: Path) -> tuple[Path, Path | None]:
    """Return (workspace directory, its coop.toml) for ``start``, walking up like git.

    The workspace is the nearest directory at or above ``start`` (real path) holding
    a coop.toml; without one it is ``start`` itself and the file is None.
    """
    here = start.resolve()
    for directory in (here, *here.parents):
        candidate = directory / PROJECT_FILE
        # os.path.isfile, not Path.is_file: an unreadable parent (EACCES) is a miss.
        if os.path.isfile(candidate):
            return directory, candidate
    return here, None
