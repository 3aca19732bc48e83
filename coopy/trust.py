"""Trust in a project's coop.toml: what it may grant only once the user approved it.

A coop.toml that came with a repository is code from whoever wrote the repository (or
from the agent, which can edit it).  Settings that keep the box inside its workspace
apply as they are; settings that widen it (DESIGN.md, "Trust") apply only after the user
approved the file's exact content with ``coopy trust``, recorded by hash as direnv does:

| key | widens because |
|---|---|
| ``[sandbox] mounts``, ``[[mount]]`` with a source outside the workspace | host files |
| ``[network] mode`` host or allow, ``allow`` | the host's network, names out |
| ``[network] ports`` bound to a non-loopback IP | the box served to the LAN |
| ``[env]`` values ``"$VAR"``, ``[agent] pass_env`` | the host's variables (secrets) |
| ``[security]`` seccomp = false, nested_userns = true | the box's own defences |
| ``[workspace] git = "rw"`` | hooks that run on the host |
| ``[conda] root``, ``[storage] root``, ``[conda] env`` | host directories |
| ``[sandbox] agent`` naming a preset | the user's login for that agent |
| ``[workspace] worktree_dir`` outside the workspace | a host directory, read-write |
| ``[sandbox] image`` ``oci:``/``dir:PATH``, a recipe of the project | host files; mmdebstrap |

A changed file needs approval again.  A file owned by neither the user nor root is not
read at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from coopy.config import Config
from coopy.paths import ensure_private_dir, state_dir


class Grant(NamedTuple):
    """One thing a project file asks for beyond its workspace."""

    key: str  # dotted, as in Config.origin
    line: int | None
    what: str


def project_grants(config: Config, project: Path, workspace: Path) -> list[Grant]:
    """What ``project`` (a coop.toml) asks for that widens the box (pure over the config)."""
    mine = {k: line for k, (f, line) in config.origin.items() if f == str(project)}
    grants: list[Grant] = []
    ws = str(workspace.resolve())
    for key, line in sorted(mine.items(), key=lambda kv: (kv[1] or 0, kv[0])):
        if key.startswith("sandbox.mounts["):
            index = int(key[len("sandbox.mounts[") : -1])
            m = config.sandbox.mounts[index]
            if m.source is None:
                continue  # a named volume: coopy's own directory
            src = os.path.realpath(m.source)
            if src == ws or src.startswith(ws + "/"):
                continue
            grants.append(Grant(key, line, f"mount {m.source} → {m.target}"
                                + (" (ro)" if m.readonly else " (rw)")))
        elif key == "network.mode" and config.network.mode in ("host", "allow"):
            grants.append(Grant(key, line, f"network mode {config.network.mode!r}"))
        elif key == "network.allow" and config.network.allow:
            grants.append(Grant(key, line, f"network allow {', '.join(config.network.allow)}"))
        elif key == "network.ports" and _public_ports(config.network.ports):
            grants.append(Grant(key, line, "publish ports on host addresses other than "
                                f"loopback: {', '.join(_public_ports(config.network.ports))}"))
        elif key.startswith("env.") and config.env.get(key[4:], "").startswith("$"):
            grants.append(Grant(key, line, f"env {key[4:]} from the host's "
                                f"{config.env[key[4:]]}"))
        elif key == "agent.pass_env" and config.agent.pass_env:
            names = ", ".join(config.agent.pass_env)
            grants.append(Grant(key, line, f"pass host variables {names}"))
        elif key == "security.seccomp" and not config.security.seccomp:
            grants.append(Grant(key, line, "turn the seccomp filter off"))
        elif key == "security.nested_userns" and config.security.nested_userns:
            grants.append(Grant(key, line, "allow nested user namespaces and mounts"))
        elif key == "workspace.git" and config.workspace.git == "rw":
            grants.append(Grant(key, line, "make .git/hooks and .git/config writable"))
        elif key == "sandbox.agent" and _is_preset(config.sandbox.agent):
            grants.append(Grant(key, line, f"agent preset {config.sandbox.agent}: your "
                                "login for it (its config directories, read-write)"))
        elif key == "workspace.worktree_dir" and config.workspace.worktree_dir is not None:
            wt = os.path.realpath(config.workspace.worktree_dir)
            if not (wt == ws or wt.startswith(ws + "/")):
                grants.append(Grant(key, line, f"git worktrees in {wt} (read-write)"))
        elif key == "conda.env" and config.conda.env:
            grants.append(Grant(key, line, f"conda env {config.conda.env} (your conda "
                                "installation, read-only)"))
        elif key == "sandbox.image" and (why := _local_image(config.sandbox.image, workspace)):
            grants.append(Grant(key, line, f"image {config.sandbox.image} ({why})"))
        elif key in ("conda.root", "storage.root"):
            root = getattr(config, key.split(".")[0]).root
            grants.append(Grant(key, line, f"{key.replace('.', ' ')} {root}"))
    return grants


def _local_image(image: str, workspace: Path) -> str | None:
    """Why an image reference reaches beyond the workspace, or None.

    ``oci:``/``dir:`` name files of this machine (``dir:/home/you`` would copy your home
    into the box); a recipe of the project's own runs mmdebstrap with the packages and
    mirror it names (as root: their maintainer scripts as root).  coopy's own recipes
    and registry references need nothing.
    """
    kind, _, rest = image.partition(":")
    if kind in ("oci", "dir"):
        return "files of this machine, copied into the box's image"
    if kind == "recipe":
        from coopy.image.recipe import builtin_recipe

        if builtin_recipe(rest) is None or (workspace / "rootfs" / f"{rest}.toml").exists():
            return "a root filesystem built by mmdebstrap from the project's recipe"
    return None


def _public_ports(specs: tuple[str, ...]) -> list[str]:
    """Port specs whose host side binds an address other than loopback."""
    out = []
    for spec in specs:
        body = spec.partition("/")[0]
        ip = body[1:].partition("]")[0] if body.startswith("[") else (
            body.split(":")[0] if body.count(":") == 2 else "127.0.0.1")
        if not (ip.startswith("127.") or ip == "::1"):
            out.append(spec)
    return out


def without_grants(config: Config, grants: list[Grant]) -> Config:
    """The config with what ``grants`` name set back to what the other layers say."""
    from coopy.config import AgentConfig, NetworkConfig, SecurityConfig

    keys = {g.key for g in grants}
    mounts = tuple(m for i, m in enumerate(config.sandbox.mounts)
                   if f"sandbox.mounts[{i}]" not in keys)
    env = {k: v for k, v in config.env.items() if f"env.{k}" not in keys}
    network = config.network
    if keys & {"network.mode", "network.allow"}:
        network = NetworkConfig()
    if "network.ports" in keys:
        network = network._replace(ports=())
    security = config.security
    if keys & {"security.seccomp", "security.nested_userns"}:
        security = SecurityConfig()
    sandbox = config.sandbox._replace(mounts=mounts)
    if "sandbox.image" in keys:  # the image your own config.toml names, else host
        from coopy.config import load_config

        sandbox = sandbox._replace(image=load_config(config.workspace.root, None).sandbox.image)
    if "sandbox.agent" in keys:
        sandbox = sandbox._replace(agent=None)
    workspace = config.workspace
    if "workspace.git" in keys:
        workspace = workspace._replace(git="default")
    if "workspace.worktree_dir" in keys:
        workspace = workspace._replace(worktree_dir=None)
    agent = AgentConfig() if "agent.pass_env" in keys else config.agent
    conda = config.conda._replace(root=None) if "conda.root" in keys else config.conda
    if "conda.env" in keys:
        conda = conda._replace(env=None)
    storage = config.storage._replace(root=None) if "storage.root" in keys else config.storage
    origin = {k: v for k, v in config.origin.items() if k not in keys}
    return config._replace(
        sandbox=sandbox, env=env, network=network,
        security=security, workspace=workspace, agent=agent, conda=conda, storage=storage,
        origin=origin,
    )


def _is_preset(agent: str | None) -> bool:
    from coopy.agents import preset_of

    return preset_of(agent) is not None


def _record_path(project: Path) -> Path:
    import hashlib

    key = hashlib.sha256(os.fsencode(os.path.realpath(project))).hexdigest()[:32]
    return state_dir() / "trust" / f"{key}.json"


def content_hash(project: Path) -> str:
    """sha256 of the file's bytes as they are now."""
    import hashlib

    return hashlib.sha256(project.read_bytes()).hexdigest()


def is_trusted(project: Path) -> bool:
    """Whether the user approved exactly this content of ``project``."""
    try:
        record = json.loads(_record_path(project).read_text())
    except (OSError, ValueError):
        return False
    return bool(record.get("sha256") == content_hash(project))


def record_trust(project: Path) -> str:
    """Approve the file as it is now; returns its hash."""
    digest = content_hash(project)
    path = _record_path(project)
    ensure_private_dir(path.parent)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"path": os.path.realpath(project), "sha256": digest}) + "\n")
    os.replace(tmp, path)
    return digest


def revoke_trust(project: Path) -> bool:
    """Forget an approval; whether there was one."""
    try:
        _record_path(project).unlink()
        return True
    except FileNotFoundError:
        return False


def owned_acceptably(project: Path) -> bool:
    """A project file counts only if the user or root owns it (not another user)."""
    try:
        return project.stat().st_uid in (os.getuid(), 0)
    except OSError:
        return False
