"""Parallel agents on one repository: worktree boxes, diff, cow workspaces (apply/discard)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BoxUser

TIMEOUT = 20


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture
def names(box_user: BoxUser) -> Iterator[list[tuple[str, dict[str, str]]]]:
    """Boxes to remove after the test, whatever happened: (name, env)."""
    made: list[tuple[str, dict[str, str]]] = []
    yield made
    for name, env in made:
        box_user.coopy("rm", "-f", name, env=env)


def wait_log(user: BoxUser, name: str, text: str, env: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT
    while text not in user.coopy("logs", name, env=env).stdout:
        assert time.monotonic() < deadline, user.coopy("logs", name, env=env).stdout
        time.sleep(0.05)


def test_worktree_boxes_work_side_by_side(
    box_user: BoxUser, names: list[tuple[str, dict[str, str]]]
) -> None:
    repo, trees = box_user.workspace(), box_user.workspace()
    git("init", "-q", "-b", "main", str(repo), cwd=repo)
    (repo / "shared.txt").write_text("base\n")
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "base", cwd=repo)
    subprocess.run(["chown", "-R", f"{box_user.uid}:{box_user.pw.pw_gid}", str(repo)],
                   check=True)
    env = box_user.user_config(f'[workspace]\nworktree_dir = "{trees}"\n')
    a, b = f"a{uuid.uuid4().hex[:6]}", f"b{uuid.uuid4().hex[:6]}"
    for n in (a, b):
        names.append((n, env))
        res = box_user.coopy("-d", "-n", n, "--worktree", "--", "sleep", "1000",
                             cwd=repo, env=env)
        assert res.returncode == 0, res.stderr
    work = ("pwd; echo from-a > shared.txt; echo new > a.txt; git add -A; "
            "git -c user.name=a -c user.email=a@e commit -qm by-a && echo committed; "
            f"echo x > {repo}/.git/hooks/post-checkout 2>/dev/null || echo hooks-ro; "
            f"ls {repo}")
    res = box_user.coopy("exec", a, "--", "sh", "-c", work, env=env)
    assert res.returncode == 0, res.stderr
    pwd, *rest = res.stdout.split()
    assert pwd == str(trees / a)
    assert rest == ["committed", "hooks-ro"]  # the main checkout's files are not there
    res = box_user.coopy("exec", b, "--", "sh", "-c",
                         "cat shared.txt; ls; git status --short; git branch --show-current",
                         env=env)
    assert res.stdout.split() == ["base", "shared.txt", f"coopy/{b}"], res.stderr
    # on the host: a's commit is on its branch, the main checkout untouched
    assert git("log", "--format=%s", f"coopy/{a}", cwd=repo).split() == ["by-a", "base"]
    assert (repo / "shared.txt").read_text() == "base\n"
    assert not (repo / ".git/hooks/post-checkout").exists()
    st = (trees / a / "a.txt").stat()
    assert (st.st_uid, st.st_gid) == (box_user.uid, box_user.pw.pw_gid)
    listed = {r["name"]: r for r in json.loads(box_user.coopy("ls", "--json", env=env).stdout)}
    assert listed[a]["worktree"] == str(trees / a)
    res = box_user.coopy("restart", a, env=env)
    assert res.returncode == 0 and "warning" not in res.stderr, res.stderr
    for n in (a, b):
        assert box_user.coopy("kill", "-f", n, env=env).returncode == 0


def test_cow_workspace_diff_apply_and_discard(
    box_user: BoxUser, names: list[tuple[str, dict[str, str]]]
) -> None:
    ws = box_user.workspace()
    (ws / "f").write_text("orig\n")
    (ws / "gone").write_text("to delete\n")
    (ws / "coop.toml").write_text('[workspace]\nmode = "cow"\n')
    for p in ws.iterdir():
        subprocess.run(["chown", f"{box_user.uid}:{box_user.pw.pw_gid}", str(p)], check=True)
    name = f"c{uuid.uuid4().hex[:6]}"
    names.append((name, {}))
    agent = ("echo new > f; echo added > a; rm gone; mkdir d; echo y > d/y; "
             "touch /root/outside; echo agent-done; exec sleep 1000")
    assert box_user.coopy("-d", "-n", name, "--", "sh", "-c", agent, cwd=ws).returncode == 0
    wait_log(box_user, name, "agent-done")
    assert (ws / "f").read_text() == "orig\n" and (ws / "gone").exists()  # host untouched
    res = box_user.coopy("diff", name, "--workspace", "--json")
    assert res.returncode == 0, res.stderr
    assert [(c["kind"], c["path"]) for c in json.loads(res.stdout)] == [
        ("A", "a"), ("A", "d/"), ("A", "d/y"), ("M", "f"), ("D", "gone")]
    assert "A /root/outside" in box_user.coopy("diff", name).stdout.splitlines()
    refused = box_user.coopy("apply", name)
    assert refused.returncode == 125 and f"coopy kill {name}" in refused.stderr
    assert box_user.coopy("kill", "-f", name).returncode == 0
    res = box_user.coopy("apply", name)
    assert res.returncode == 0, res.stderr
    assert (ws / "f").read_text() == "new\n" and (ws / "d/y").read_text() == "y\n"
    assert not (ws / "gone").exists()
    for p in (ws / "a", ws / "d", ws / "d/y"):
        assert p.stat().st_uid == box_user.uid, p
    assert box_user.coopy("diff", name, "--workspace").stdout == ""
    # a second round, discarded: the host keeps what it has
    agent = "echo again > f; echo agent-done; exec sleep 1000"
    assert box_user.coopy("-d", "-n", name, "--", "sh", "-c", agent, cwd=ws).returncode == 0
    wait_log(box_user, name, "agent-done")
    assert box_user.coopy("diff", name, "--workspace").stdout == "M f\n"
    assert box_user.coopy("kill", "-f", name).returncode == 0
    assert box_user.coopy("discard", name).returncode == 0
    assert (ws / "f").read_text() == "new\n"
    assert box_user.coopy("diff", name, "--workspace").stdout == ""


def test_worktree_box_with_read_only_history(
    box_user: BoxUser, names: list[tuple[str, dict[str, str]]]
) -> None:
    repo, trees, remote = box_user.workspace(), box_user.workspace(), box_user.workspace()
    git("init", "-q", "--bare", str(remote / "r.git"), cwd=remote)
    git("init", "-q", "-b", "main", str(repo), cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m",
        "base", cwd=repo)
    git("remote", "add", "origin", str(remote / "r.git"), cwd=repo)
    for d in (repo, remote):
        subprocess.run(["chown", "-R", f"{box_user.uid}:{box_user.pw.pw_gid}", str(d)],
                       check=True)
    env = box_user.user_config(f'[workspace]\nworktree_dir = "{trees}"\ngit = "ro"\n')
    name = f"r{uuid.uuid4().hex[:6]}"
    names.append((name, env))
    res = box_user.coopy("-d", "-n", name, "--worktree", "-v", f"{remote}:{remote}", "--",
                         "sleep", "1000", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    res = box_user.coopy("exec", name, "--", "sh", "-c",
                         "git status --short && echo status-ok; git -c user.name=b -c "
                         "user.email=b@e commit -q --allow-empty -m x 2>/dev/null || "
                         "echo commit-refused; git push -q origin HEAD:main; echo push=$?",
                         env=env)
    assert res.stdout.split() == ["status-ok", "commit-refused", "push=128"], (
        res.stdout + res.stderr)
    assert "git push is blocked" in res.stderr
    assert git("for-each-ref", cwd=remote / "r.git") == ""
    assert box_user.coopy("kill", "-f", name, env=env).returncode == 0
