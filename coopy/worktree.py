"""Parallel agents on one repository: a git worktree per box (``coopy -n NAME --worktree``).

Each box gets its own working tree of the project, on its own branch ``coopy/NAME``,
made with ``git worktree add`` under ``<state>/worktrees/<project>-<hash>/NAME`` (or
``[workspace] worktree_dir/NAME``), so several agents edit one repository without
touching each other's files.  A worktree's ``.git`` is a file naming
``<repo>/.git/worktrees/NAME``; git in the box needs that directory, the objects and the
refs, so the main repository's ``.git`` is mounted at its own path — read-write with
``hooks`` and ``config`` read-only (as for any workspace), or all read-only with
``git = "ro"``.  The main repository's working files stay out of the box.
"""

from __future__ import annotations

import os
import subprocess
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from coopy.errors import ConfigError, CoopyError

if TYPE_CHECKING:
    from coopy.request import RunRequest


def common_git_dir(workspace: Path) -> Path | None:
    """The repository's shared ``.git`` of a worktree checkout (``.git`` a file), or None."""
    dot_git = workspace / ".git"
    try:
        text = dot_git.read_text()
    except (IsADirectoryError, FileNotFoundError, NotADirectoryError):
        return None
    if not text.startswith("gitdir:"):
        return None
    gitdir = (workspace / text[len("gitdir:"):].strip()).resolve()
    try:
        common = (gitdir / "commondir").read_text().strip()
    except OSError:
        return gitdir
    return (gitdir / common).resolve()


def worktree_path(main: Path, name: str, worktree_dir: Path | None, state: Path) -> Path:
    """Where box ``name``'s worktree of the repository at ``main`` lives."""
    if worktree_dir is not None:
        return worktree_dir / name
    key = f"{main.name}-{zlib.crc32(str(main).encode()):08x}"
    return state / "worktrees" / key / name


def _git(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except FileNotFoundError:
        raise CoopyError("--worktree needs git on this host",
                         hint="install git (Debian/Ubuntu: sudo apt install git)") from None


def create_worktree(main: Path, name: str, path: Path) -> Path:
    """``git worktree add`` (branch ``coopy/NAME`` from HEAD) unless it already exists."""
    if (path / ".git").is_file():
        return path
    if not (main / ".git").is_dir():
        raise ConfigError(f"--worktree: {main} is not the top of a git repository",
                          hint="run it in a repository's top directory, or leave --worktree "
                          "out")
    branch = f"coopy/{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    has_branch = _git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}",
                      cwd=main).returncode == 0
    args = [str(path), branch] if has_branch else ["-b", branch, str(path)]
    res = _git("worktree", "add", "--quiet", *args, cwd=main)
    if res.returncode != 0:
        raise CoopyError(f"git worktree add {path} failed: {res.stderr.strip()}",
                         hint="`git worktree list` shows the existing ones; `git worktree "
                         "prune` forgets removed ones")
    return path


def apply_worktree(req: RunRequest, name: str, worktree_dir: Path | None,
                   keep_target: bool) -> RunRequest:
    """``req`` working in box ``name``'s own worktree, with the repository's .git mounted.

    ``keep_target``: the user set ``[workspace] path``; otherwise the worktree appears
    at its own path.
    """
    import re

    from coopy.paths import state_dir
    from coopy.request import GIT_GUARDED, MountRequest

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise ConfigError(f"--worktree: {name!r} cannot name a branch and a directory",
                          hint="use letters, digits, '-', '_' and '.' (e.g. -n fix-tests)")
    main = req.workspace.resolve()
    path = create_worktree(main, name, worktree_path(main, name, worktree_dir, state_dir()))
    git_dir = main / ".git"
    mounts = [MountRequest(git_dir, None, str(git_dir), req.git == "ro")]
    if req.git == "default":
        for rel in GIT_GUARDED:  # the repository's hooks and config, as for a workspace
            guarded = main / rel
            if guarded.exists():
                mounts.append(MountRequest(guarded, None, str(guarded), True))
    return req._replace(
        workspace=path,
        workspace_target=req.workspace_target if keep_target else str(path),
        mounts=(*mounts, *req.mounts),
        worktree=str(path),
    )
