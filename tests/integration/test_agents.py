"""Agent presets with the real agents, installed from their registries as a user would.

The npm CLIs (Claude Code, Codex, Gemini CLI, OpenCode) go into an npm prefix and aider
into a virtual environment made with the system python, both cached under /var/tmp
(keyed by the pinned versions) so that reruns take seconds; the first run downloads
~300 MB (npm ~30 s, aider ~80 s here).  Each test gives coopy a fresh HOME, so the
agents' config directories are created there, not in the tester's home.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BoxUser

NPM_AGENTS = {  # preset -> (npm package, version printed by --version)
    "claude": ("@anthropic-ai/claude-code@2.1.197", "2.1.197 (Claude Code)"),
    "codex": ("@openai/codex@0.169.0", "codex-cli 0.169.0"),
    "gemini": ("@google/gemini-cli@0.61.0", "0.61.0"),
    "opencode": ("opencode-ai@1.18.33", "1.18.33"),
}
AIDER = ("aider-chat==0.86.2", "aider 0.86.2")
FLAGS = {
    "claude": "--dangerously-skip-permissions",
    "codex": "--dangerously-bypass-approvals-and-sandbox",
    "gemini": "--yolo",
    "opencode": "--auto",
}
CONFIG = {
    "claude": [".claude"], "codex": [".codex"], "gemini": [".gemini"],
    "opencode": [".config/opencode", ".local/share/opencode", ".local/state/opencode"],
}
CACHE = Path(os.environ.get("COOPY_TEST_AGENTS", "/var/tmp/coopy-agent-clis"))
INSTALL_TIMEOUT = 600
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def _cached(kind: str, spec: str, install: list[str], dest: Path) -> Path:
    """Install once per pinned spec into CACHE (a lock against concurrent suites)."""
    key = hashlib.sha256(spec.encode()).hexdigest()[:12]
    base = CACHE / f"{kind}-{key}"
    CACHE.mkdir(mode=0o755, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / "done").exists():
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir(mode=0o755)
            cmd = [a.replace("{dest}", str(base / dest)) for a in install]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                                 env={**os.environ, "HOME": str(base)})
            assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}"
            (base / "done").write_text(spec + "\n")
        subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    return base / dest


@pytest.fixture(scope="session")
def npm_bin() -> Path:
    """bin/ of an npm prefix holding the four npm agents."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed (.ci/run installs nodejs and npm)")
    specs = [pkg for pkg, _ in NPM_AGENTS.values()]
    prefix = _cached("npm", " ".join(specs), [
        "npm", "install", "-g", "--prefix", "{dest}", "--no-audit", "--no-fund",
        "--loglevel=error", *specs], Path("npm"))
    return prefix / "bin"


@pytest.fixture(scope="session")
def aider_bin() -> Path:
    """bin/ of a virtual environment (system python) holding aider."""
    venv = _cached("aider", AIDER[0], [
        "sh", "-c", f"/usr/bin/python3 -m venv {{dest}} && {{dest}}/bin/pip install -q "
        f"--disable-pip-version-check '{AIDER[0]}'"], Path("venv"))
    return venv / "bin"


def node_major() -> int:
    out = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
    return int(out.strip().lstrip("v").split(".")[0] or 0)


def needs_node(agent: str) -> None:
    """Gemini CLI 0.61 needs node 20 (Debian 12 has 18): skip it there, saying why."""
    if agent == "gemini" and node_major() < 20:
        pytest.skip(f"gemini-cli needs node >= 20; this host has {node_major()}")


class AgentHome:
    """A fresh HOME for coopy (and so for the agents' config directories)."""

    def __init__(self, user: BoxUser, bin_dir: Path) -> None:
        self.user, self.home = user, user.workspace()
        self.env = {"HOME": str(self.home), "PATH": f"{bin_dir}:{SYSTEM_PATH}"}
        self.write(".gitconfig", "[user]\n\tname = Host Person\n\temail = host@example.org\n")

    def write(self, rel: str, text: str) -> Path:
        path = self.home / rel
        path.write_text(text)
        os.chown(path, self.user.uid, self.user.pw.pw_gid)
        return path

    def coopy(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.user.coopy(*args, cwd=cwd or self.home, env=self.env, timeout=120)


@pytest.mark.parametrize("agent", sorted(NPM_AGENTS))
def test_npm_agent_runs_in_a_box(box_user: BoxUser, npm_bin: Path, agent: str) -> None:
    needs_node(agent)
    h = AgentHome(box_user, npm_bin)
    res = h.coopy("run", "-T", "--agent", agent, "--", "--version", cwd=box_user.workspace())
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == NPM_AGENTS[agent][1]
    for d in CONFIG[agent]:  # created on the host for the agent's login to persist
        st = (h.home / d).stat()
        assert st.st_uid == box_user.uid and st.st_mode & 0o777 == 0o700


def test_aider_from_pypi_runs_in_a_box(box_user: BoxUser, aider_bin: Path) -> None:
    h = AgentHome(box_user, aider_bin)
    h.write(".aider.conf.yml", "dark-mode: true\n")
    res = h.coopy("run", "-T", "--agent", "aider", "--", "--version", cwd=box_user.workspace())
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == AIDER[1]
    plan = h.coopy("run", "--dry-run", "--agent", "aider", cwd=box_user.workspace())
    assert f"bind {aider_bin.parent} → {aider_bin.parent} (ro" in plan.stdout  # the venv
    assert f"bind {h.home}/.aider.conf.yml → " in plan.stdout


@pytest.fixture
def box_name(box_user: BoxUser) -> Iterator[list[tuple[AgentHome, str]]]:
    made: list[tuple[AgentHome, str]] = []
    yield made
    for h, name in made:
        h.coopy("rm", "-f", name)


@pytest.mark.parametrize("agent", sorted(NPM_AGENTS))
def test_agent_box_is_hands_off_and_logged_in(
    box_user: BoxUser, npm_bin: Path, agent: str, box_name: list[tuple[AgentHome, str]]
) -> None:
    """The real agent starts in a persistent box (its first-run screen waits for a
    person); beside it, the box shows its flags, its config dirs and the git identity."""
    needs_node(agent)
    h = AgentHome(box_user, npm_bin)
    if agent == "claude":  # rewritten by rename on the host: seeded as a copy
        h.write(".claude.json", '{"numStartups": 7}')
    ws = box_user.workspace()
    name = f"a{uuid.uuid4().hex[:8]}"
    box_name.append((h, name))
    # --net none: offline, the agents wait on their first screen instead of exiting
    # when they cannot reach their service (tests reach nothing outside the machine)
    res = h.coopy("-d", "-n", name, "--net", "none", "--agent", agent, cwd=ws)
    assert res.returncode == 0, res.stderr
    home = "/root"
    script = (
        "sleep 2; for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done; "
        "echo ===; cat /proc/self/mountinfo; echo ===; git config user.name; "
        f"git config --global user.name Box 2>/dev/null || echo gitconfig-ro; "
        f"for d in {' '.join(CONFIG[agent])}; do touch {home}/$d/from-box; done; "
        "echo ===; env"
    )
    out = h.coopy("exec", name, "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    procs, mountinfo, git, env = out.stdout.split("===\n")
    started = [p for p in procs.splitlines() if FLAGS[agent] in p.split()]
    assert started, procs
    mounts = {line.split()[4]: line.split()[5] for line in mountinfo.splitlines()}
    for d in CONFIG[agent]:
        assert mounts[f"{home}/{d}"].startswith("rw"), d
        st = (h.home / d / "from-box").stat()  # the box's writes land in the host's dir
        assert (st.st_uid, st.st_gid) == (box_user.uid, box_user.pw.pw_gid)
    assert mounts[f"{home}/.gitconfig"].startswith("ro")
    assert mounts[str(npm_bin.parent)].startswith("ro")
    assert git.split() == ["Host", "Person", "gitconfig-ro"]
    box_env = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
    assert box_env["PATH"].startswith(f"{npm_bin}:")
    if agent == "claude":
        assert box_env["CLAUDE_CONFIG_DIR"] == "/root/.claude"
        seeded = h.home / ".claude/.claude.json"
        assert json.loads(seeded.read_text())["numStartups"] >= 7
        assert h.home.joinpath(".claude.json").read_text() == '{"numStartups": 7}'
    listed = {b["name"]: b for b in json.loads(h.coopy("ls", "--json").stdout)}
    assert listed[name]["agent"] == agent
    if agent == "opencode":  # a restart expands the preset again, same mounts
        res = h.coopy("restart", name, cwd=ws)
        assert res.returncode == 0 and "mounts" not in res.stderr, res.stderr  # (--net)
        assert f"{npm_bin}/opencode --auto" in res.stdout
    assert h.coopy("kill", "-f", name).returncode == 0


def test_login_callback_port_is_published(
    box_user: BoxUser, npm_bin: Path, box_name: list[tuple[AgentHome, str]]
) -> None:
    """codex login waits on 1455: the preset publishes it from the host's loopback."""
    h = AgentHome(box_user, npm_bin)
    name = f"p{uuid.uuid4().hex[:8]}"
    box_name.append((h, name))
    res = h.coopy("-d", "-n", name, "--net", "private", "--agent", "codex", "--",
                  "--version", cwd=box_user.workspace())
    assert res.returncode == 0, res.stderr
    listed = {b["name"]: b for b in json.loads(h.coopy("ls", "--json").stdout)}
    assert "127.0.0.1:1455->1455/tcp" in listed[name]["ports"]


def test_api_keys_pass_only_when_listed(box_user: BoxUser, npm_bin: Path) -> None:
    h = AgentHome(box_user, npm_bin)
    ws = box_user.workspace()
    env = {**h.env, "OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "a-test"}
    show = ["run", "-T", "--", "sh", "-c", "echo ${OPENAI_API_KEY-unset} "
            "${ANTHROPIC_API_KEY-unset}"]
    res = box_user.coopy(*show, cwd=ws, env=env)
    assert res.stdout.split() == ["unset", "unset"], res.stderr
    env |= box_user.user_config('[agent]\npass_env = ["OPENAI_*"]\n')
    res = box_user.coopy(*show, cwd=ws, env=env)
    assert res.stdout.split() == ["sk-test", "unset"], res.stderr


def test_missing_agent_says_how_to_install_it(box_user: BoxUser) -> None:
    h = AgentHome(box_user, Path("/nonexistent"))
    start = time.monotonic()
    res = h.coopy("run", "--agent", "codex", cwd=box_user.workspace())
    assert res.returncode == 125
    assert "`codex` is not installed on this host" in res.stderr
    assert "npm install -g @openai/codex" in res.stderr
    assert time.monotonic() - start < 10


def test_agents_lists_the_presets(box_user: BoxUser, npm_bin: Path) -> None:
    h = AgentHome(box_user, npm_bin)
    res = h.coopy("agents", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert sorted(rows) == ["aider", "claude", "codex", "gemini", "opencode"]
    for agent, flag in FLAGS.items():
        assert rows[agent]["command"] == [str(npm_bin / agent), flag]
        assert rows[agent]["program"] == str(npm_bin / agent)
    assert rows["codex"]["oauth_ports"] == [1455]
    text = h.coopy("agents").stdout
    assert f"claude: {npm_bin}/claude --dangerously-skip-permissions" in text
    assert not (h.home / ".claude").exists()  # listing creates nothing


def test_agent_as_a_named_user_keeps_the_callers_files(
    box_user: BoxUser, npm_bin: Path, box_name: list[tuple[AgentHome, str]]
) -> None:
    """--user agent: the config dirs are in /home/agent, the agent's (keep-id), and its
    files there and in the workspace are the caller's on the host."""
    h = AgentHome(box_user, npm_bin)
    ws = box_user.workspace()
    name = f"u{uuid.uuid4().hex[:8]}"
    box_name.append((h, name))
    res = h.coopy("-d", "-n", name, "--net", "none", "--user", "agent", "--agent", "claude",
                  cwd=ws)
    assert res.returncode == 0, res.stderr
    out = h.coopy("exec", name, "--", "sh", "-c", "id -un; echo $CLAUDE_CONFIG_DIR; "
                  "touch ~/.claude/by-agent && echo x > by-agent")
    assert out.stdout.split() == ["agent", "/home/agent/.claude"], out.stderr
    for path in (h.home / ".claude/by-agent", ws / "by-agent"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (box_user.uid, box_user.pw.pw_gid), path
    assert h.coopy("kill", "-f", name).returncode == 0
