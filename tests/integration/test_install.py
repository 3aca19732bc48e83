"""The README's first command, as a new user would run it: install, then a real box."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BoxUser

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_install_then_run(box_user: BoxUser) -> None:
    home = box_user.workspace()  # a fresh, empty home owned by the user
    src = home / "src"
    # A copy the user can read (the checkout may be under /root), as a fresh clone.
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).exists():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run(["chown", "-R", f"{box_user.uid}:{box_user.pw.pw_gid}", str(home)],
                   check=True)
    env = box_user.env({"HOME": str(home)})
    cmd = box_user.argv([])[:-1] + ["sh", "-c",
                                    "./install.sh --user && ~/.local/bin/coopy run -- "
                                    "cat /etc/os-release"]
    if box_user.uid == os.getuid():
        cmd = ["sh", "-c", "./install.sh --user && ~/.local/bin/coopy run -- cat /etc/os-release"]
    res = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=600,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout == Path("/etc/os-release").read_text()
    assert (home / ".local/bin/coopy").is_symlink()
