"""Agent presets: the expansions (table tests), finding programs and what they need."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coopy.agents import (
    BY_NAME,
    PRESETS,
    apply_agent,
    expand,
    install_dirs,
    interpreter,
    pass_env,
    preset_of,
    program_closure,
    resolve,
)
from coopy.config import load_config
from coopy.errors import ConfigError
from coopy.request import BOX_PATH, RunRequest
from coopy.trust import project_grants, without_grants

HOME = Path("/home/alice")

# What each preset must expand to: the flags that turn its approvals and inner sandbox
# off (checked against each CLI's --help), its config directories, its variables.
EXPECTED = {
    "claude": (("--dangerously-skip-permissions",), (".claude",),
               {"CLAUDE_CONFIG_DIR": "/root/.claude", "DISABLE_AUTOUPDATER": "1"}),
    "codex": (("--dangerously-bypass-approvals-and-sandbox",), (".codex",), {}),
    "gemini": (("--yolo",), (".gemini",), {"GEMINI_SANDBOX": "false", "NO_BROWSER": "true"}),
    "opencode": (("--auto",),
                 (".config/opencode", ".local/share/opencode", ".local/state/opencode"),
                 {"OPENCODE_DISABLE_AUTOUPDATE": "1"}),
    "aider": (("--yes-always", "--no-check-update"), (".aider",), {}),
}


def test_every_preset_is_in_the_table() -> None:
    assert sorted(BY_NAME) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_expansion(name: str) -> None:
    flags, config, env = EXPECTED[name]
    program = Path(f"/opt/agents/bin/{name}")
    box = expand(BY_NAME[name], ["EXTRA", "--x"], program=program, host_home=HOME,
                 box_home="/root", program_mounts=[Path("/opt/agents")],
                 path_dirs=[Path("/opt/agents/bin")], box_path=BOX_PATH,
                 exists=lambda p: p.name == ".gitconfig")
    assert box.command == (str(program), *flags, "EXTRA", "--x")
    rw = [(m.source, m.target) for m in box.mounts if not m.readonly]
    assert rw == [(f"{HOME}/{d}", f"/root/{d}") for d in config]
    ro = [(m.source, m.target, m.why) for m in box.mounts if m.readonly]
    assert ro == [("/opt/agents", "/opt/agents", "program"),
                  (f"{HOME}/.gitconfig", "/root/.gitconfig", "git identity")]
    assert box.env == {**env, "PATH": f"/opt/agents/bin:{BOX_PATH}"}
    assert box.make_dirs == tuple(f"{HOME}/{d}" for d in config)
    # API keys are never put in the box by the preset itself
    assert not set(BY_NAME[name].api_keys) & set(box.env)


def test_named_user_gets_the_dirs_in_its_home_and_no_gitconfig_when_absent() -> None:
    box = expand(BY_NAME["claude"], [], program=None, host_home=HOME,
                 box_home="/home/agent", exists=lambda p: False)
    assert box.command == ("claude", "--dangerously-skip-permissions")
    assert [m.target for m in box.mounts] == ["/home/agent/.claude"]
    assert box.env["CLAUDE_CONFIG_DIR"] == "/home/agent/.claude"
    assert box.seeds == ((f"{HOME}/.claude.json", f"{HOME}/.claude/.claude.json"),)
    assert box.program is None


def test_aider_settings_file_is_read_only() -> None:
    box = expand(BY_NAME["aider"], [], program=None, host_home=HOME, box_home="/root",
                 exists=lambda p: True)
    assert (f"{HOME}/.aider.conf.yml", "/root/.aider.conf.yml", True, "settings") in box.mounts


def test_oauth_ports_are_declared_for_networking() -> None:
    assert BY_NAME["codex"].oauth_ports == (1455,)
    assert BY_NAME["aider"].oauth_ports == (8484,)
    for p in PRESETS:
        assert p.login, p.name


@pytest.mark.parametrize(
    ("agent", "preset"),
    [("claude", "claude"), (" codex ", "codex"), ("claude --model x", None),
     ("python3 agent.py", None), (None, None), ("", None)],
)
def test_preset_or_command(agent: str | None, preset: str | None) -> None:
    found = preset_of(agent)
    assert (found.name if found else None) == preset


@pytest.mark.parametrize(
    ("program", "dirs"),
    [
        ("/opt/npm/bin/claude", ["/opt/npm"]),  # npm's global prefix: bin + lib
        ("/srv/venvs/aider/bin/aider", ["/srv/venvs/aider"]),  # a venv: pyvenv.cfg too
        ("/home/alice/.local/share/claude/versions/2.1.0", [
            "/home/alice/.local/share/claude/versions"]),  # claude's native install
        ("/home/alice/.opencode/bin/opencode", ["/home/alice/.opencode"]),
        ("/home/alice/claude", ["/home/alice/claude"]),  # never the whole home
        ("/var/tmp/codex", ["/var/tmp/codex"]),
    ],
)
def test_install_dirs(program: str, dirs: list[str]) -> None:
    assert [str(d) for d in install_dirs(Path(program), HOME)] == dirs


def test_install_dirs_of_home_and_dot_local_take_only_bin_and_lib(tmp_path: Path) -> None:
    (tmp_path / ".local/bin").mkdir(parents=True)
    (tmp_path / ".local/lib").mkdir()
    got = install_dirs(tmp_path / ".local/bin/aider", tmp_path)
    assert got == (tmp_path / ".local/bin", tmp_path / ".local/lib")  # not ~/.local/share


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"#!/usr/bin/env node\n", "node"),
        (b"#!/usr/bin/env -S node --no-warnings\n", "node"),
        (b"#! /usr/bin/env NODE_OPTIONS=x node\n", "node"),
        (b"#!/srv/venv/bin/python3\nimport x\n", "/srv/venv/bin/python3"),
        (b"\x7fELF\x02\x01\x01", None),
        (b"#!\n", None),
    ],
)
def test_interpreter(tmp_path: Path, head: bytes, expected: str | None) -> None:
    (tmp_path / "prog").write_bytes(head)
    assert interpreter(tmp_path / "prog") == expected


def _npm_tree(root: Path) -> tuple[Path, Path]:
    """An npm prefix whose bin/codex links to a node script, and a node elsewhere."""
    pkg = root / "npm/lib/node_modules/@openai/codex/bin"
    pkg.mkdir(parents=True)
    (pkg / "codex.js").write_text("#!/usr/bin/env node\n")
    (root / "npm/bin").mkdir()
    os.symlink("../lib/node_modules/@openai/codex/bin/codex.js", root / "npm/bin/codex")
    node = root / "nvm/versions/node/v20/bin"
    node.mkdir(parents=True)
    (node / "node").write_bytes(b"\x7fELF")
    for f in (pkg / "codex.js", node / "node"):
        f.chmod(0o755)
    return root / "npm/bin/codex", node


def test_closure_mounts_the_prefix_and_node(tmp_path: Path) -> None:
    program, node_bin = _npm_tree(tmp_path)
    dirs = [node_bin, program.parent]
    mounts, path_dirs = program_closure(program, dirs, HOME, ["/usr"])
    assert mounts == [tmp_path / "npm", tmp_path / "nvm/versions/node/v20"]
    assert path_dirs == [tmp_path / "npm/bin", node_bin]


def test_closure_skips_what_the_image_shows(tmp_path: Path) -> None:
    program, node_bin = _npm_tree(tmp_path)
    mounts, path_dirs = program_closure(program, [node_bin], HOME, [str(tmp_path)])
    assert (mounts, path_dirs) == ([], [tmp_path / "npm/bin", node_bin])


def test_resolve_finds_the_program_on_path_and_in_the_home(tmp_path: Path) -> None:
    program, node_bin = _npm_tree(tmp_path)
    env = {"PATH": f"{node_bin}:{program.parent}"}
    box = resolve("codex", ["exec", "hi"], environ=env, host_home=HOME, box_home="/root")
    assert box.command == (str(program), "--dangerously-bypass-approvals-and-sandbox",
                           "exec", "hi")
    assert box.env["PATH"].startswith(f"{program.parent}:{node_bin}:")
    home = tmp_path / "home"
    (home / ".local/bin").mkdir(parents=True)
    (home / ".local/bin/aider").write_text("#!/usr/bin/python3\n")
    (home / ".local/bin/aider").chmod(0o755)
    box = resolve("aider", [], environ={"PATH": "/nonexistent"}, host_home=home,
                  box_home="/root")
    assert box.program == str(home / ".local/bin/aider")
    assert [m.source for m in box.mounts if m.why == "program"] == [str(home / ".local/bin")]


def test_missing_program_is_refused_with_the_install_command(tmp_path: Path) -> None:
    req = RunRequest(command=[], workspace=tmp_path)
    with pytest.raises(ConfigError) as err:
        apply_agent(req, "gemini", [], environ={"PATH": "/nonexistent"}, host_home=tmp_path)
    assert "`gemini` is not installed" in err.value.message
    assert err.value.hint and "@google/gemini-cli" in err.value.hint


def test_a_command_line_is_a_plain_command(tmp_path: Path) -> None:
    req = RunRequest(command=[], workspace=tmp_path)
    out = apply_agent(req, "python3 -m agent --fast", ["extra"], ("--from-config",))
    assert out.command == ["python3", "-m", "agent", "--fast", "--from-config", "extra"]
    assert out.agent is None and out.mounts == ()


def test_apply_agent_prepares_the_host_and_keeps_user_mounts_last(tmp_path: Path) -> None:
    program, node_bin = _npm_tree(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".claude.json").write_text('{"oauthAccount": 1}')
    (program.parent / "claude").symlink_to("codex")
    from coopy.request import MountRequest

    mine = MountRequest(None, "claude-vol", "/root/.claude", False)
    req = RunRequest(command=[], workspace=tmp_path, mounts=(mine,), env={"X": "1"})
    out = apply_agent(req, "claude", ["-p", "hi"], environ={"PATH": f"{node_bin}:"
                      f"{program.parent}"}, host_home=home)
    assert out.agent == "claude"
    assert out.command[1:] == ["--dangerously-skip-permissions", "-p", "hi"]
    assert out.mounts[-1] == mine  # the user's volume replaces the host's ~/.claude
    assert out.env["X"] == "1" and out.env["CLAUDE_CONFIG_DIR"] == "/root/.claude"
    assert (home / ".claude").stat().st_mode & 0o777 == 0o700
    # the rename-rewritten ~/.claude.json is seeded into the mounted directory once
    assert (home / ".claude/.claude.json").read_text() == '{"oauthAccount": 1}'
    (home / ".claude.json").write_text("changed")
    apply_agent(req, "claude", [], environ={"PATH": str(program.parent)}, host_home=home)
    assert (home / ".claude/.claude.json").read_text() == '{"oauthAccount": 1}'


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["OPENAI_API_KEY"], {"OPENAI_API_KEY": "sk-1"}),
        (["ANTHROPIC_*"], {"ANTHROPIC_API_KEY": "a", "ANTHROPIC_BASE_URL": "u"}),
        (["MISSING"], {}),
        ([], {}),
    ],
)
def test_pass_env(patterns: list[str], expected: dict[str, str]) -> None:
    host = {"OPENAI_API_KEY": "sk-1", "ANTHROPIC_API_KEY": "a", "ANTHROPIC_BASE_URL": "u",
            "HOME": "/root"}
    assert pass_env(patterns, host) == expected


def test_a_project_preset_needs_trust_and_a_command_line_does_not(tmp_path: Path) -> None:
    project = tmp_path / "coop.toml"
    project.write_text('[sandbox]\nagent = "claude"\n')
    config = load_config(tmp_path, project, user_file=None)
    grants = project_grants(config, project, tmp_path)
    assert [(g.key, g.line) for g in grants] == [("sandbox.agent", 2)]
    assert without_grants(config, grants).sandbox.agent is None
    project.write_text('[sandbox]\nagent = "python3 agent.py"\n')
    config = load_config(tmp_path, project, user_file=None)
    assert project_grants(config, project, tmp_path) == []
