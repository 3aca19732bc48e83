"""Reading an overlay upper layer (coopy diff) and applying a cow workspace's changes."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from coopy.changes import Change, apply_changes, upper_changes
from coopy.worktree import common_git_dir, worktree_path


def _upper(tmp_path: Path) -> tuple[Path, Path]:
    upper, lower = tmp_path / "upper", tmp_path / "ws"
    for d in (upper, lower, lower / "old", lower / "keep"):
        d.mkdir()
    (lower / "f").write_text("orig")
    (lower / "gone").write_text("x")
    (lower / "old/stale").write_text("x")
    (lower / "keep/k").write_text("x")
    (upper / "f").write_text("changed")
    (upper / "new").write_text("n")
    os.mknod(upper / "gone", stat.S_IFCHR, os.makedev(0, 0))  # a whiteout
    (upper / "old").mkdir()
    (upper / "old/fresh").write_text("y")
    os.setxattr(upper / "old", "user.overlay.opaque", b"y")
    (upper / "keep").mkdir()  # copied up, unchanged itself
    (upper / "keep/k2").write_text("z")
    os.symlink("f", upper / "link")
    return upper, lower


def test_upper_changes(tmp_path: Path) -> None:
    try:
        upper, lower = _upper(tmp_path)
    except OSError as exc:  # user xattrs on this tmp filesystem
        pytest.skip(f"cannot build an upper layer here: {exc}")
    assert list(upper_changes(upper, lower)) == [
        Change("M", "f"), Change("D", "gone"), Change("A", "keep/k2"),
        Change("A", "link"), Change("A", "new"), Change("R", "old/"),
        Change("A", "old/fresh"),
    ]
    # without a lower (a box's root upper layer), files are A and plain dirs unlisted
    assert [c.kind for c in upper_changes(upper)] == ["A", "D", "A", "A", "A", "A", "A"]


def test_apply_changes(tmp_path: Path) -> None:
    try:
        upper, lower = _upper(tmp_path)
    except OSError as exc:
        pytest.skip(f"cannot build an upper layer here: {exc}")
    os.chmod(upper / "new", 0o4755)
    done, problems = apply_changes(upper, lower)
    assert problems == [] and len(done) == 7
    assert (lower / "f").read_text() == "changed"
    assert not (lower / "gone").exists()
    assert sorted(os.listdir(lower / "old")) == ["fresh"]  # replaced whole
    assert sorted(os.listdir(lower / "keep")) == ["k", "k2"]
    assert os.readlink(lower / "link") == "f"
    assert stat.S_IMODE((lower / "new").stat().st_mode) == 0o755  # no setuid bit


def test_apply_never_writes_through_a_symlinked_directory(tmp_path: Path) -> None:
    upper, lower, outside = tmp_path / "upper", tmp_path / "ws", tmp_path / "outside"
    for d in (upper / "sub", lower, outside):
        d.mkdir(parents=True)
    (upper / "sub/planted").write_text("x")
    os.symlink(outside, lower / "sub")
    done, problems = apply_changes(upper, lower)
    assert not (outside / "planted").exists()
    assert problems and "is a symlink in the workspace" in problems[0]


def test_worktree_paths_and_common_git_dir(tmp_path: Path) -> None:
    main = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(main)], check=True)
    subprocess.run(["git", "-C", str(main), "-c", "user.name=a", "-c", "user.email=b",
                    "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    wt = worktree_path(main, "fix", None, tmp_path / "state")
    assert wt.parent.parent == tmp_path / "state/worktrees" and wt.name == "fix"
    assert worktree_path(main, "fix", tmp_path / "trees", tmp_path) == tmp_path / "trees/fix"
    subprocess.run(["git", "-C", str(main), "worktree", "add", "-q", str(wt)], check=True)
    assert common_git_dir(wt) == main / ".git"
    assert common_git_dir(main) is None


@pytest.mark.parametrize("name", ["../x", "a/b", "-x", "a..b", ""])
def test_worktree_names_are_checked(tmp_path: Path, name: str) -> None:
    from coopy.errors import ConfigError
    from coopy.request import RunRequest
    from coopy.worktree import apply_worktree

    with pytest.raises(ConfigError, match="cannot name a branch"):
        apply_worktree(RunRequest(command=[], workspace=tmp_path), name, None, False)
