"""Agent presets: ``[sandbox] agent = "claude"`` expands to a whole box for that agent.

A preset says how to start an AI coding agent in full-auto mode inside a box: its
program (found on the host and mounted with what it needs to run, node included), the
flags that turn its own approval prompts and inner sandbox off (the box is the
boundary), the directories where it keeps its login and settings (mounted read-write
from the host's home into the box user's home, created when missing, so a login made
in a box is there the next time), the variables it sets, the API-key variables it reads
(passed only when ``[env]`` or ``[agent] pass_env`` names them) and the ports its
``login`` command listens on for an OAuth callback (published from the host's loopback,
like ``[network] oauth_ports``, when the box has the private network and they are free).

The flags were checked against each CLI's ``--help``: claude 2.1, codex 0.169, gemini
0.61, opencode 1.18, aider 0.86.

Files an agent rewrites by rename cannot be bind-mounted one by one (``rename(2)`` over
a mount point fails with EBUSY), so only directories are mounted read-write.  Claude
Code keeps ``~/.claude.json`` next to, not inside, ``~/.claude``: the preset sets
``CLAUDE_CONFIG_DIR=~/.claude``, which makes Claude Code use
``~/.claude/.claude.json``, and seeds that file once with a copy of the host's
``~/.claude.json`` (the host's file itself is never written).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from coopy.errors import ConfigError

if TYPE_CHECKING:
    from coopy.request import RunRequest

# Host directories the `host` image shows at their own path: programs under them need
# no mount of their own.
VISIBLE_HOST = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")

# Where agents' installers put their programs, after the caller's PATH (home-relative).
SEARCH_DIRS = (
    ".local/bin", ".npm-global/bin", ".bun/bin", ".opencode/bin", ".claude/local",
    ".yarn/bin", ".volta/bin",
)

# Read-only in every agent box: the host user's git identity.  Not ~/.config/git
# (it may hold credentials), not ~/.ssh.
GIT_IDENTITY = (".gitconfig",)


class Preset(NamedTuple):
    """One agent: how to find it, start it hands-off, and keep it logged in."""

    name: str
    program: str
    install: str  # how to install it, for the "not found" hint
    auto_args: tuple[str, ...]  # approval prompts and inner sandbox off
    config: tuple[str, ...]  # home-relative directories mounted read-write
    env: tuple[tuple[str, str], ...] = ()  # set in the box; "~/" is the box's home
    api_keys: tuple[str, ...] = ()  # host variables it reads (only via pass_env/[env])
    files: tuple[str, ...] = ()  # home-relative files mounted read-only when present
    seed: tuple[tuple[str, str], ...] = ()  # (host file, copy in a config dir), once
    oauth_ports: tuple[int, ...] = ()  # where `login` waits for the browser's callback
    login: str = ""


PRESETS: tuple[Preset, ...] = (
    Preset(
        "claude", "claude", "npm install -g @anthropic-ai/claude-code",
        auto_args=("--dangerously-skip-permissions",),
        config=(".claude",),
        # Its global config by rename, so inside the mounted directory (see above);
        # the npm or native install is read-only in the box: no self-update.
        env=(("CLAUDE_CONFIG_DIR", "~/.claude"), ("DISABLE_AUTOUPDATER", "1")),
        api_keys=("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN",
                  "ANTHROPIC_BASE_URL"),
        seed=((".claude.json", ".claude/.claude.json"),),
        login="`/login` in claude prints a URL: open it anywhere and paste the code "
        "back (no callback port); or `claude setup-token` on the host and pass "
        "CLAUDE_CODE_OAUTH_TOKEN with [agent] pass_env",
    ),
    Preset(
        "codex", "codex", "npm install -g @openai/codex",
        auto_args=("--dangerously-bypass-approvals-and-sandbox",),
        config=(".codex",),
        api_keys=("OPENAI_API_KEY", "OPENAI_BASE_URL"),
        oauth_ports=(1455,),
        login="`codex login` (its callback port 1455 is published from the host's "
        "loopback in the private network), or `codex login --device-auth` (device code: "
        "open the URL anywhere, enter the code), or "
        "`printenv OPENAI_API_KEY | codex login --with-api-key`",
    ),
    Preset(
        "gemini", "gemini", "npm install -g @google/gemini-cli",
        auto_args=("--yolo",),
        config=(".gemini",),
        # NO_BROWSER: "Login with Google" prints a URL and asks for the code instead of
        # waiting on a random localhost port the host cannot reach.
        env=(("GEMINI_SANDBOX", "false"), ("NO_BROWSER", "true")),
        api_keys=("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_CLOUD_PROJECT",
                  "GOOGLE_GENAI_USE_VERTEXAI"),
        login="choose \"Login with Google\": it prints a URL, open it anywhere and paste "
        "the authorization code back; or pass GEMINI_API_KEY",
    ),
    Preset(
        "opencode", "opencode", "npm install -g opencode-ai",
        auto_args=("--auto",),
        config=(".config/opencode", ".local/share/opencode", ".local/state/opencode"),
        env=(("OPENCODE_DISABLE_AUTOUPDATE", "1"),),
        api_keys=("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY",
                  "GEMINI_API_KEY"),
        login="`opencode auth login`: API keys, or a provider's OAuth that prints a URL "
        "and takes the code back",
    ),
    Preset(
        "aider", "aider", "python3 -m pip install aider-install && aider-install",
        auto_args=("--yes-always", "--no-check-update"),
        config=(".aider",),
        files=(".aider.conf.yml",),
        api_keys=("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENROUTER_API_KEY",
                  "GEMINI_API_KEY", "DEEPSEEK_API_KEY"),
        oauth_ports=(8484,),
        login="API keys through [agent] pass_env; the OpenRouter login's callback port "
        "8484 is published like codex's",
    ),
)

BY_NAME: Mapping[str, Preset] = {p.name: p for p in PRESETS}


def preset_of(agent: str | None) -> Preset | None:
    """The preset an ``agent`` string names, or None for a command line (or unset)."""
    return BY_NAME.get(agent.strip()) if agent else None


class AgentMount(NamedTuple):
    """A host path shown in the box."""

    source: str
    target: str
    readonly: bool
    why: str  # "config", "program", "git identity", … for `coopy agents`


class AgentBox(NamedTuple):
    """What a preset adds to a box: the command, mounts, variables; host preparation."""

    preset: Preset
    command: tuple[str, ...]
    mounts: tuple[AgentMount, ...]
    env: Mapping[str, str]
    make_dirs: tuple[str, ...]  # host config directories to create (0700) when missing
    seeds: tuple[tuple[str, str], ...]  # (host file, host copy) to copy when missing
    program: str | None  # the host path found, None when not installed
    path: tuple[str, ...] = ()  # directories the box's PATH must start with


# ---- finding the program and what it needs ----------------------------------------


def search_path(environ: Mapping[str, str], home: Path) -> list[Path]:
    """Where programs are looked for: the caller's PATH, the npm prefix, install dirs."""
    dirs = [Path(d) for d in environ.get("PATH", "").split(":") if d.startswith("/")]
    prefix = environ.get("NPM_CONFIG_PREFIX") or environ.get("npm_config_prefix")
    if prefix:
        dirs.append(Path(prefix) / "bin")
    dirs += [home / d for d in SEARCH_DIRS]
    dirs.append(Path("/usr/local/bin"))
    return dirs


def find_program(name: str, dirs: Iterable[Path]) -> Path | None:
    """The first executable ``name`` in ``dirs`` (not resolved: its bin dir matters)."""
    for d in dirs:
        candidate = d / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def install_dirs(program: Path, home: Path) -> tuple[Path, ...]:
    """The directories that make up a program's installation, to mount read-only.

    ``PREFIX/bin/x`` is installed in PREFIX (npm's global prefix holds ``bin`` and
    ``lib/node_modules``; a virtual environment ``bin``, ``lib`` and ``pyvenv.cfg``),
    except that of the home or ``~/.local`` only ``bin`` and ``lib`` are taken (not
    ``~/.local/share``, where keyrings live).  Any other file: its directory (Claude
    Code's native install, ``~/.local/share/claude/versions/X``), except a directory
    shared with everything else (the home, ``/``, ``/tmp``): then the file alone.
    """
    parent = program.parent
    if parent in (home, home.parent, Path("/"), Path("/tmp"), Path("/var/tmp")):
        return (program,)
    if parent.name != "bin":
        return (parent,)
    prefix = parent.parent
    if prefix in (home, home / ".local", Path("/")):
        return tuple(d for d in (parent, prefix / "lib") if d.is_dir())
    return (prefix,)


def interpreter(program: Path) -> str | None:
    """The interpreter a ``#!`` script names (``node`` for ``#!/usr/bin/env node``)."""
    try:
        with open(program, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) != "env":
        return words[0]
    # env [-S] [-i] [NAME=VALUE…] PROGRAM …
    rest = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    return rest[0] if rest else None


def program_closure(
    program: Path, dirs: list[Path], home: Path, covered: Iterable[str]
) -> tuple[list[Path], list[Path]]:
    """(directories to mount read-only, directories to put on the box's PATH).

    Follows the program's symlinks and its ``#!`` interpreter (``env node`` is looked
    up in ``dirs``, like a shell would), three programs deep; what is under ``covered``
    (the image's own directories, the workspace) needs no mount.
    """
    mounts: list[Path] = []
    path_dirs: list[Path] = []
    seen = list(covered)
    todo = [program]
    for _ in range(3):
        if not todo:
            break
        found = todo.pop(0)
        if not _under(str(found.parent), VISIBLE_HOST):
            path_dirs.append(found.parent)
        for p in (found, Path(os.path.realpath(found))):
            if not _under(str(p), seen):
                for d in install_dirs(p, home):
                    mounts.append(d)
                    seen.append(str(d))
        interp = interpreter(Path(os.path.realpath(found)))
        if interp is None:
            continue
        nxt = Path(interp) if interp.startswith("/") else find_program(interp, dirs)
        if nxt is not None:
            todo.append(nxt)
    return mounts, path_dirs


# ---- the expansion (pure given the program found) -----------------------------------


def _box_path(value: str, box_home: str) -> str:
    return box_home + value[1:] if value.startswith("~/") else value


def expand(
    preset: Preset,
    extra_args: Iterable[str],
    *,
    program: Path | None,
    host_home: Path,
    box_home: str,
    program_mounts: Iterable[Path] = (),
    path_dirs: Iterable[Path] = (),
    box_path: str = "",
    exists: Callable[[Path], bool] = os.path.exists,
) -> AgentBox:
    """What ``preset`` adds to a box whose user's home is ``box_home``.

    ``program`` is where the host has it (None: not found; the command then uses the
    bare name, which ``coopy agents`` shows and a box refuses).  ``exists`` decides
    which optional files (git identity, ``files``) are there (tests pass a function).
    """
    argv0 = str(program) if program is not None else preset.program
    command = (argv0, *preset.auto_args, *extra_args)
    mounts = [AgentMount(str(host_home / d), f"{box_home}/{d}", False, "config")
              for d in preset.config]
    mounts += [AgentMount(str(d), str(d), True, "program") for d in program_mounts]
    for rel in (*preset.files, *GIT_IDENTITY):
        if exists(host_home / rel):
            why = "git identity" if rel in GIT_IDENTITY else "settings"
            mounts.append(AgentMount(str(host_home / rel), f"{box_home}/{rel}", True, why))
    env = {k: _box_path(v, box_home) for k, v in preset.env}
    extra_path = [str(d) for d in path_dirs]
    if extra_path and box_path:
        env["PATH"] = ":".join(dict.fromkeys([*extra_path, box_path]))
    seeds = tuple((str(host_home / src), str(host_home / dst)) for src, dst in preset.seed)
    return AgentBox(
        preset=preset, command=command, mounts=tuple(mounts), env=env,
        make_dirs=tuple(str(host_home / d) for d in preset.config), seeds=seeds,
        program=str(program) if program is not None else None, path=tuple(extra_path),
    )


def resolve(
    name: str, extra_args: Iterable[str], *, environ: Mapping[str, str], host_home: Path,
    box_home: str, workspace: Path | None = None,
) -> AgentBox:
    """Find ``name``'s program on this host and expand its preset (not found: None)."""
    from coopy.request import BOX_PATH

    preset = BY_NAME[name]
    dirs = search_path(environ, host_home)
    program = find_program(preset.program, dirs)
    mounts: list[Path] = []
    path_dirs: list[Path] = []
    if program is not None:
        covered = [*VISIBLE_HOST, *([str(workspace)] if workspace else [])]
        mounts, path_dirs = program_closure(program, dirs, host_home, covered)
    return expand(preset, extra_args, program=program, host_home=host_home,
                  box_home=box_home, program_mounts=mounts, path_dirs=path_dirs,
                  box_path=BOX_PATH)


def require_program(box: AgentBox, environ: Mapping[str, str], host_home: Path) -> None:
    """Refuse, with where it was looked for and how to install it, a missing program."""
    if box.program is not None:
        return
    where = ", ".join(dict.fromkeys(str(d) for d in search_path(environ, host_home)))
    raise ConfigError(
        f"agent {box.preset.name!r}: `{box.preset.program}` is not installed on this host "
        f"(looked in {where})",
        hint=f"install it ({box.preset.install}), or set [sandbox] agent to a command line",
    )


def prepare_host(box: AgentBox) -> None:
    """Create the agent's config directories (0700) and seed copies, when missing."""
    for d in box.make_dirs:
        os.makedirs(d, mode=0o700, exist_ok=True)
    for src, dst in box.seeds:
        if os.path.exists(dst) or not os.path.isfile(src):
            continue
        with open(src, "rb") as f:
            data = f.read()
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)


def pass_env(patterns: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The host variables ``[agent] pass_env`` names (``NAME``, or ``PREFIX*``)."""
    out: dict[str, str] = {}
    for pattern in patterns:
        if pattern.endswith("*"):
            out.update((k, v) for k, v in environ.items() if k.startswith(pattern[:-1]))
        elif pattern in environ:
            out[pattern] = environ[pattern]
    return out


def box_home_of(user: str | None) -> str:
    """The box user's home as coopy's `host` image makes it."""
    return "/root" if user in (None, "root") else f"/home/{user}"


def apply_agent(
    req: RunRequest, agent: str, extra_args: Iterable[str], config_args: Iterable[str] = (),
    *, environ: Mapping[str, str] = os.environ, host_home: Path | None = None,
) -> RunRequest:
    """``req`` running ``agent``: a preset's whole box, or a plain command line.

    The preset's mounts come before the user's (so ``-v vol:~/.claude`` can replace the
    host's directory with a named volume) and its variables before ``[env]``/``-e``.
    """
    import shlex

    from coopy.request import MountRequest

    preset = preset_of(agent)
    if preset is None:
        return req._replace(command=[*shlex.split(agent), *config_args, *extra_args])
    home = host_home or Path(os.path.expanduser("~"))
    box = resolve(preset.name, [*config_args, *extra_args], environ=environ,
                  host_home=home, box_home=box_home_of(req.user),
                  workspace=req.workspace.resolve())
    require_program(box, environ, home)
    # also for --dry-run: the plan it prints mounts these, and their sources must exist
    prepare_host(box)
    mounts = tuple(MountRequest(Path(m.source), None, m.target, m.readonly)
                   for m in box.mounts)
    env = {**box.env, **req.env}
    if box.path and "PATH" in req.env:  # e.g. a conda env's: both, the program's first
        env["PATH"] = ":".join(dict.fromkeys([*box.path, *req.env["PATH"].split(":")]))
    ports = req.ports
    if preset.oauth_ports:  # its login's callback, published like [network] oauth_ports
        from coopy.net import oauth_forwards

        ports = oauth_forwards(req.ports, preset.oauth_ports, req.net)
    return req._replace(command=list(box.command), mounts=mounts + tuple(req.mounts),
                        env=env, agent=preset.name, ports=ports)
