"""``coopy run``: a command in an ephemeral box, exit status passed through."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from coopy.cli._args import Parser, command_of

if TYPE_CHECKING:
    from coopy.config import Config
    from coopy.net import PortMap
    from coopy.request import RunRequest

EPILOG = """\
examples:
  coopy run -- cat /etc/os-release
  echo hi | coopy run -- cat
  coopy run -w ~/proj -v ~/datasets:/data:ro -e HF_HOME=/data/hf -- python3 train.py
  coopy run --user agent -- id          a named non-root user (files still yours)
  coopy run --dry-run -- true           print the mount plan, start nothing
  coopy run --agent codex -- exec "fix the tests"   an agent preset, hands-off
  coopy run --gpus 0,2 -- nvidia-smi    two of the host's GPUs (default: all of them)

The workspace (-w, default: the directory of the nearest coop.toml, else the current
directory) is mounted read-write at its own path and is the working directory.  The
box gets a PTY of its own when stdin is a terminal, plain pipes otherwise.

exit status: the command's own; 125 when coopy fails, 126 when the command cannot be
executed, 127 when it is not found, 128+N when signal N killed it.
"""


def parser() -> Parser:
    """The argument parser of ``coopy run``."""
    p = Parser(
        "coopy run",
        "Create an ephemeral box, run COMMAND in it in the foreground, remove the box.",
        EPILOG,
    )
    add_box_options(p)
    p.add_argument("-t", "--tty", action="store_true", default=None,
                   help="give the box a PTY even when stdin is not a terminal")
    p.add_argument("-T", "--no-tty", dest="tty", action="store_false",
                   help="plain pipes even when stdin is a terminal")
    p.add_argument("--dry-run", action="store_true", help="print the mount plan and exit")
    p.add_command()
    return p


def add_box_options(p: Parser) -> None:
    """The options every verb that creates a box shares."""
    p.add_argument("-w", "--workspace", metavar="DIR", type=Path,
                   help="the project directory, mounted read-write at its own path")
    p.add_argument("-v", "--volume", metavar="SRC:DST[:ro]", action="append", default=[],
                   help="mount a host path (~/…, /…, ./…) or a named volume; repeatable")
    p.add_argument("-e", "--env", metavar="KEY[=VALUE]", action="append", default=[],
                   help="set a variable in the box (KEY alone: take it from here)")
    p.add_argument("--image", metavar="REF", help="the image (default: host)")
    p.add_argument("--hostname", help="the box's hostname (default: the workspace's name)")
    p.add_argument("--user", metavar="NAME",
                   help="run as a named non-root user (default: root of the box)")
    p.add_argument("--net", choices=("private", "none", "host", "allow"),
                   help="private: own network with outbound NAT through pasta or "
                   "slirp4netns (default); none: loopback only; host: the host's network; "
                   "allow: only the names given with --allow, through a proxy")
    p.add_argument("--allow", metavar="NAME", action="append", default=[],
                   help="with --net allow: a domain, *.suffix, IP or CIDR to admit; "
                   "repeatable, adds to [network] allow")
    p.add_argument("-p", "--publish", metavar="[IP:]HOST:BOX[/udp]", action="append",
                   default=[], help="publish a box port on the host (private network; "
                   "the host side binds 127.0.0.1 unless IP is given); repeatable")
    p.add_argument("--userns", choices=("auto", "host"), default="auto",
                   help="host (root only): no user namespace, box root is host root")
    p.add_argument("--shm-size", metavar="SIZE",
                   help="size of /dev/shm (default 64m; with GPUs half of the RAM)")
    p.add_argument("--gpus", metavar="all|none|0,2|GPU-UUID",
                   help="NVIDIA GPUs passed in (default [gpu] devices: all there are)")
    p.add_argument("--agent", metavar="NAME",
                   help="an agent preset (claude, codex, gemini, opencode, aider: "
                   "`coopy agents`) or a command line; -- ARGS are added to it")


def run(args: argparse.Namespace) -> int:
    """Build the request from the config layers and the flags, then run the box."""
    from coopy.box import run as run_box

    command = command_of(args)
    request, config = build_request(args, command)
    if args.agent:
        from coopy import plancache
        from coopy.agents import apply_agent

        plancache.refuse("an agent preset")

        request = apply_agent(request, args.agent, command, config.sandbox.args)
    return run_box(request)


def build_request(args: argparse.Namespace, command: list[str]) -> tuple[RunRequest, Config]:
    """The request (and the config it came from) for the options in ``args``."""
    from coopy.config import expand_env, find_workspace, load_config, parse_mount_spec, parse_size
    from coopy.errors import ConfigError
    from coopy.request import MountRequest, RunRequest

    cwd = Path.cwd()
    # -w names the workspace itself; its coop.toml, if any, is the one in it or above.
    workspace, project = find_workspace(args.workspace.expanduser() if args.workspace else cwd)
    if args.workspace is not None:
        workspace = args.workspace.expanduser().resolve()
    home = Path(os.path.expanduser("~"))
    cli: dict[str, object] = {}
    if args.image:
        cli["sandbox.image"] = args.image
    if args.user:
        cli["sandbox.user"] = args.user
    if args.net:
        cli["network.mode"] = args.net
    if project is not None:
        from coopy.trust import is_trusted, owned_acceptably, project_grants, without_grants
    if project is not None and not owned_acceptably(project):
        sys.stderr.write(f"coopy: warning: ignoring {project}: it belongs to another user\n")
        project = None
    config = load_config(workspace, project, cli=cli)
    if project is not None:
        grants = project_grants(config, project, workspace)
        if grants and not is_trusted(project):
            config = without_grants(config, grants)
            sys.stderr.write(f"coopy: warning: {project} asks for more than its workspace; "
                             "not applied until you approve it:\n")
            for g in grants:
                sys.stderr.write(f"  line {g.line}: {g.what}\n")
            sys.stderr.write("hint: review the file, then run `coopy trust`\n")

    # `~/…` targets (coop's files use them) mean the box user's home.
    box_home = PurePosixPath("/root" if config.sandbox.user in (None, "root")
                             else f"/home/{config.sandbox.user}")
    mounts = [
        MountRequest(m.source, m.volume, str(m.target_for(box_home)), m.readonly)
        for m in config.sandbox.mounts
    ]
    for spec in args.volume:
        m = parse_mount_spec(spec, base=cwd, home=home, where="-v")
        mounts.append(MountRequest(m.source, m.volume, str(m.target_for(box_home)),
                                   m.readonly))

    env, missing = expand_env(config.env, os.environ)
    if config.agent.pass_env:
        from coopy.agents import pass_env

        env = pass_env(config.agent.pass_env, os.environ) | env
    for name in missing:
        sys.stderr.write(f"coopy: warning: [env] takes ${name} from this environment, "
                         "where it is not set: left unset in the box\n")
    for item in args.env:
        key, sep, value = item.partition("=")
        if not key or not (key[0].isalpha() or key[0] == "_"):
            raise ConfigError(f"-e {item}: not a variable name", hint="use -e KEY=VALUE")
        if sep:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    net = config.network.mode
    ports = _ports(config, [str(p) for p in getattr(args, "publish", [])], net)
    try:
        shm = parse_size(args.shm_size) if args.shm_size else None
    except ValueError as exc:
        raise ConfigError(f"--shm-size: {exc}") from None
    if shm is None:
        shm = config.sandbox.shm
    gpus: str | tuple[int | str, ...] | None = None  # default: all there are, if any
    if args.gpus:
        from coopy.gpu import parse_gpus

        gpus = parse_gpus(args.gpus)
    elif config.gpu.devices != "all":  # "all" in a file: all there are, none is no error
        gpus = config.gpu.devices
    request = RunRequest(
        command=command,
        workspace=workspace,
        workspace_target=str(config.workspace.path),
        image=config.sandbox.image,
        mounts=tuple(mounts),
        env=env,
        hostname=args.hostname,
        user=config.sandbox.user,
        net=net,
        ports=ports,
        allow=tuple(config.network.allow) + tuple(getattr(args, "allow", None) or ()),
        net_backend=config.network.backend,
        userns=args.userns,
        shm_size=shm,
        tty=getattr(args, "tty", None),
        dry_run=getattr(args, "dry_run", False),
        git=config.workspace.git,
        workspace_mode=config.workspace.mode,
        seccomp=config.security.seccomp,
        nested_userns=config.security.nested_userns,
        pids=config.limits.pids,
        nofile=config.limits.nofile,
        memory=config.limits.memory,
        cpus=config.limits.cpus,
        setup=_setup_steps(config),
        platform=config.image.platform,
        insecure=config.image.insecure,
        gpus=gpus,
        gpu_exclusive=config.gpu.exclusive,
    )
    if config.conda.env:
        from coopy.conda import apply_conda

        request = apply_conda(request, config.conda.env, config.conda.root)
    return request, config


def _setup_steps(config: Config) -> tuple[str, ...]:
    """``[sandbox] setup``, which only a pulled image can take (``host`` is read-only)."""
    if config.sandbox.setup and config.sandbox.image == "host":
        sys.stderr.write("coopy: warning: [sandbox] setup runs on a pulled image only, not on "
                         "`host`: ignored\n")
        return ()
    return tuple(config.sandbox.setup)


def _ports(config: Config, flags: list[str], net: str) -> tuple[PortMap, ...]:
    """-p and [network] ports, then the OAuth callback ports that are free on the host."""
    from coopy.net import oauth_forwards, parse_port

    ports = [parse_port(s, f"[network] ports {s!r}") for s in config.network.ports]
    ports += [parse_port(s) for s in flags]
    return oauth_forwards(tuple(ports), config.network.oauth_ports, net)
