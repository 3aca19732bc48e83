"""The workspace as agents use it: read-only history, push blocked, data mounts, owners."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BoxUser


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def repo_with_remote(user: BoxUser, coop_toml: str = "") -> tuple[Path, Path]:
    """A repository with one commit and a local bare remote the user may write (the
    tests mount it into the box at its own path)."""
    ws, remote = user.workspace(), user.workspace()
    git("init", "-q", "--bare", str(remote / "r.git"))
    git("init", "-q", "-b", "main", str(ws))
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty",
        "-m", "first", cwd=ws)
    git("remote", "add", "origin", str(remote / "r.git"), cwd=ws)
    if coop_toml:
        (ws / "coop.toml").write_text(coop_toml)
    for d in (ws, remote):
        subprocess.run(["chown", "-R", f"{user.uid}:{user.pw.pw_gid}", str(d)], check=True)
    return ws, remote / "r.git"


PUSH = ("git -c user.name=b -c user.email=b@e commit -q --allow-empty -m in-box "
        "2>/dev/null && echo committed; git push -q origin HEAD:refs/heads/from-box; "
        "echo push=$?")


def test_git_ro_blocks_push_before_the_remote_and_commit(box_user: BoxUser) -> None:
    ws, remote = repo_with_remote(box_user, '[workspace]\ngit = "ro"\n')
    res = box_user.coopy("run", "-v", f"{remote}:{remote}", "--", "sh", "-c",
                         f"git status --short && echo status-ok; {PUSH}; "
                         "git push -q /nonexistent/x HEAD; git push -q "
                         "https://example.invalid/x HEAD; echo done", cwd=ws)
    assert res.stdout.split() == ["??", "coop.toml", "status-ok", "push=128", "done"], (
        res.stdout + res.stderr)
    assert res.stderr.count("coopy: git push is blocked in this box") == 3, res.stderr
    assert git("for-each-ref", cwd=remote) == ""  # the remote received nothing
    assert git("log", "--format=%s", cwd=ws).split() == ["first"]


def test_git_ro_covers_a_remote_with_its_own_pushurl(box_user: BoxUser) -> None:
    ws, remote = repo_with_remote(box_user, '[workspace]\ngit = "ro"\n')
    git("config", "remote.origin.pushurl", f"file://{remote}", cwd=ws)
    res = box_user.coopy("run", "-v", f"{remote}:{remote}", "--", "sh", "-c",
                         "git push -q origin HEAD:main; echo $?;"
                         " git fetch -q origin 2>&1 | grep -c Read-only", cwd=ws)
    assert res.stdout.split() == ["128", "1"], res.stdout + res.stderr
    assert "git push is blocked" in res.stderr
    assert git("for-each-ref", cwd=remote) == ""


def test_without_git_ro_the_same_push_arrives(box_user: BoxUser) -> None:
    """The control: the remote and the box can push; only git = "ro" stops it."""
    ws, remote = repo_with_remote(box_user)
    res = box_user.coopy("run", "-v", f"{remote}:{remote}", "--", "sh", "-c", PUSH, cwd=ws)
    assert res.stdout.split() == ["committed", "push=0"], res.stdout + res.stderr
    assert "refs/heads/from-box" in git("for-each-ref", cwd=remote)


@pytest.mark.parametrize("user", [None, "agent"])
def test_files_the_box_creates_belong_to_the_caller(box_user: BoxUser, user: str | None) -> None:
    """In the workspace and in mounted directories (an agent's config), as box root and
    as a named user (keep-id: the named user is the caller on the host)."""
    ws, vol = box_user.workspace(), box_user.workspace()
    home = "/root" if user is None else f"/home/{user}"
    res = box_user.coopy(*(["run"] + (["--user", user] if user else [])),
                         "-v", f"{vol}:{home}/.claude", "--", "sh", "-c",
                         f"mkdir -p d/e && echo x > d/e/f && touch {home}/.claude/cred "
                         f"&& mkdir {home}/.claude/sub && id -u", cwd=ws)
    assert res.returncode == 0, res.stderr
    assert (int(res.stdout) == 0) == (user is None)
    for path in (ws / "d", ws / "d/e/f", vol / "cred", vol / "sub"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (box_user.uid, box_user.pw.pw_gid), path


def test_mount_tables_mount_strings_and_shm_from_config(box_user: BoxUser) -> None:
    ws, weights, data = box_user.workspace(), box_user.workspace(), box_user.workspace()
    (weights / "model.bin").write_text("weights\n")
    (data / "train.csv").write_text("a,b\n")
    os.mkdir(ws / "inside")
    (ws / "inside/note").write_text("in the workspace\n")
    # a project file: mounts from inside the workspace apply without `coopy trust`
    (ws / "coop.toml").write_text('[sandbox]\nshm = "96m"\n\n[[mount]]\n'
                                  'source = "./inside"\ntarget = "/notes"\nro = true\n')
    env = box_user.user_config(
        f'[sandbox]\nmounts = ["{data}:/data:ro"]\n\n'
        f'[[mount]]\nsource = "{weights}"\ntarget = "/models/llm"\nro = true\n')
    res = box_user.coopy(
        "run", "--", "sh", "-c",
        "cat /models/llm/model.bin /data/train.csv /notes/note; "
        "for d in /models/llm /data /notes; do touch $d/x 2>/dev/null || echo ro; done; "
        "df -k /dev/shm | tail -1", cwd=ws, env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:6] == ["weights", "a,b", "in the workspace", "ro", "ro", "ro"]
    assert lines[6].split()[1] == str(96 * 1024)
    assert "asks for more" not in res.stderr


def fake_conda(user: BoxUser) -> Path:
    """A conda installation as far as activation goes: conda.sh, envs/torch."""
    root = user.workspace()
    for d in ("conda-meta", "bin", "condabin", "etc/profile.d", "envs/torch/conda-meta",
              "envs/torch/bin"):
        (root / d).mkdir(parents=True)
    (root / "etc/profile.d/conda.sh").write_text(
        'conda() { if [ "$1" = activate ]; then export CONDA_PREFIX="$2" '
        'CONDA_DEFAULT_ENV="${2##*/}" PATH="$2/bin:$PATH" FAKE_ACTIVATED=yes; fi; }\n')
    (root / "envs/torch/bin/python").write_text("#!/bin/sh\necho torch-python\n")
    (root / "envs/torch/bin/python").chmod(0o755)
    return root


def test_conda_env_at_its_own_path_activated(box_user: BoxUser) -> None:
    root, ws = fake_conda(box_user), box_user.workspace()
    env = box_user.user_config(f'[conda]\nroot = "{root}"\nenv = "torch"\n')
    res = box_user.coopy("run", "--", "sh", "-c",
                         f"python; echo $CONDA_DEFAULT_ENV $CONDA_PREFIX; touch {root}/x "
                         "2>/dev/null || echo ro", cwd=ws, env=env)
    assert res.stdout.split() == ["torch-python", "torch", f"{root}/envs/torch", "ro"], (
        res.stdout + res.stderr)
    # login shells: /etc/profile resets PATH, the profile.d script activates again
    res = box_user.coopy("run", "--", "sh", "-lc", "python; echo $FAKE_ACTIVATED",
                         cwd=ws, env=env)
    assert res.stdout.split() == ["torch-python", "yes"], res.stdout + res.stderr
    bad = box_user.user_config(f'[conda]\nroot = "{root}"\nenv = "tf"\n')
    res = box_user.coopy("run", "--", "true", cwd=ws, env=bad)
    assert res.returncode == 125
    assert "no such environment" in res.stderr and "base, torch" in res.stderr


def test_host_venv_at_its_own_path(box_user: BoxUser) -> None:
    outside, ws = box_user.workspace(), box_user.workspace()
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(outside / "venv")],
                   check=True)
    env = box_user.user_config(f'[conda]\nenv = "{outside}/venv"\n')
    script = ('python -c "import sys; print(sys.prefix)"; echo $VIRTUAL_ENV; '
              f"touch {outside}/venv/x 2>/dev/null || echo ro")
    for shell in ("-c", "-lc"):
        res = box_user.coopy("run", "--", "sh", shell, script, cwd=ws, env=env)
        assert res.stdout.split() == [f"{outside}/venv"] * 2 + ["ro"], res.stdout + res.stderr
