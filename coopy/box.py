"""A box request from the user, resolved into a launch; and ``coopy run``'s whole life.

Phases (STYLE.md rule 2): parse config → probe host facts → build plan (pure) → resolve
paths → apply.  Everything that can be refused (a bad ``-v``, a missing source, a
user without subordinate ids…) is refused before anything is created; once the box
directory exists, every way out removes it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from coopy.errors import STATE_FS_HINT, ConfigError, CoopyError, HostError
from coopy.facts import HostFacts
from coopy.idmap import IdMap, build_workspace_idmap
from coopy.prepared import Prepared
from coopy.request import (
    BOX_PATH,
    ENV_PASSTHROUGH,
    ENV_PASSTHROUGH_PREFIXES,
    GIT_GUARDED,
    RunRequest,
    plan_ids,
)

if TYPE_CHECKING:  # imported where used, at run time: start-up cost
    from coopy.gpubox import BoxGpus
    from coopy.plan import BoxSpec
    from coopy.rootfs import BoxUser
    from coopy.spawn import Launch
    from coopy.state import RunDir

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def box_hostname(workspace: Path) -> str:
    """A valid hostname from the workspace's name (``My Project`` → ``my-project``)."""
    # runs of other characters become one "-" (no `re`: its import is start-up time)
    mapped = "".join(c if c in _NAME_CHARS else " " for c in workspace.name)
    name = "-".join(mapped.split()).lower()[:63].strip("-")
    return name or "box"


def build_env(
    host_env: Mapping[str, str], extra: Mapping[str, str], *, home: str, user: str,
    hostname: str,
) -> dict[str, str]:
    """The box's environment: the allowlist, then coopy's own, then ``-e``/``[env]``."""
    env = {k: v for k, v in host_env.items()
           if k in ENV_PASSTHROUGH or k.startswith(ENV_PASSTHROUGH_PREFIXES)}
    env.setdefault("TERM", "xterm-256color" if sys.stdin.isatty() else "dumb")
    env.update(
        PATH=BOX_PATH, HOME=home, USER=user, LOGNAME=user, HOSTNAME=hostname,
        container="coopy", IS_SANDBOX="1",
    )
    env.update(extra)
    return env


def box_ids(facts: HostFacts, name: str | None, userns: str) -> tuple[BoxUser, IdMap | None, str]:
    """The box's user, its id map, and the host's /etc/passwd they were read from."""
    from coopy.rootfs import box_user

    try:
        host_passwd = Path("/etc/passwd").read_text(errors="replace")
    except OSError:
        host_passwd = ""
    user = box_user(facts, name, host_passwd)
    return user, plan_ids(facts, user.uid, user.gid, userns), host_passwd


def check_userns_allowed(facts: HostFacts) -> None:
    """Refuse early, with the sysctl to change, when user namespaces are off."""
    if facts.max_user_namespaces == 0:
        raise HostError(
            "user namespaces are disabled (user.max_user_namespaces = 0)",
            hint="sudo sysctl -w user.max_user_namespaces=15000",
        )
    if facts.uid != 0 and facts.unprivileged_userns_clone == 0:
        raise HostError(
            "unprivileged user namespaces are disabled "
            "(kernel.unprivileged_userns_clone = 0)",
            hint="sudo sysctl -w kernel.unprivileged_userns_clone=1",
        )


def single_id_warning(facts: HostFacts, idmap: IdMap) -> str | None:
    """The one-time warning for a box without subordinate ids, or None."""
    if facts.uid == 0 or idmap.subordinate:
        return None
    return (
        f"coopy: warning: {facts.user} has no subordinate ids in /etc/subuid and "
        "/etc/subgid, so the box has a single user (root = you); package managers "
        "in pulled images will fail\n"
        f"hint: sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "
        f"{facts.user}\n"
    )


def warn_once(key: str, text: str) -> None:
    """Print ``text`` to stderr the first time ``key`` is seen for this user."""
    from coopy.paths import ensure_private_dir, state_dir

    try:
        marker = ensure_private_dir(state_dir()) / f"warned-{key}"
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        os.close(fd)
    except (FileExistsError, CoopyError):
        return
    except OSError:
        pass  # cannot record it: say it anyway
    sys.stderr.write(text)


# Paths of a git repository that run code on the host: an agent that writes a hook, or
# core.fsmonitor / core.pager into .git/config, gets it run by the user's next git command.
def git_readonly(workspace: Path, mode: str) -> tuple[tuple[str, bool], ...]:
    """(workspace-relative path, is a directory) to bind read-only for ``[workspace] git``."""
    if mode == "rw" or not (workspace / ".git").is_dir():
        return ()
    paths = (".git",) if mode == "ro" else GIT_GUARDED
    return tuple((p, (workspace / p).is_dir()) for p in paths if (workspace / p).exists())


def init_path() -> str:
    """The installed coopy-init (built into the package by ``pip install``/``make``)."""
    return str(Path(__file__).parent / "libexec" / "coopy-init")


def _resolve_mounts(
    req: RunRequest, volumes_dir: Path
) -> tuple[list[tuple[str, str, bool, bool]], list[tuple[Path, str]]]:
    """(source, target, readonly, is_dir) per mount; named volumes (and targets) to create."""
    out: list[tuple[str, str, bool, bool]] = []
    create: list[tuple[Path, str]] = []
    for m in req.mounts:
        if m.volume is not None:
            path = volumes_dir / m.volume
            create.append((path, m.target))
            out.append((str(path), m.target, m.readonly, True))
            continue
        assert m.source is not None
        try:
            real = m.source.resolve(strict=True)
        except (FileNotFoundError, RuntimeError):
            raise ConfigError(
                f"mount source {m.source} does not exist",
                hint=f"create it, or fix the mount {m.source}:{m.target}",
            ) from None
        except PermissionError:
            raise ConfigError(f"mount source {m.source} is not accessible to you") from None
        out.append((str(real), m.target, m.readonly, real.is_dir()))
    return out, create


def run(req: RunRequest) -> int:
    """``coopy run``: an ephemeral box, the command in the foreground, its status back."""
    from coopy.state import RunDir

    return _with_box(req, RunDir.create, lambda p: _run_box(p, replayable=True))


def run_prepared(req: RunRequest, after: Callable[[Prepared, int], None]) -> int:
    """Like :func:`run`, calling ``after(prepared, status)`` before the box dir goes."""
    from coopy.state import RunDir

    def body(p: Prepared) -> int:
        status = _run_box(p)
        after(p, status)
        return status

    return _with_box(req, RunDir.create, body)


def _with_box(
    req: RunRequest, make_dir: Callable[[], RunDir], body: Callable[[Prepared], int],
    keep: bool = False,
) -> int:
    """Validate, prepare the box directory, call ``body``; remove the dir unless ``keep``."""
    from coopy.facts import probe_host
    from coopy.net import network_for
    from coopy.paths import state_dir
    from coopy.plan import BoxSpec, Volume, build_plan, normalize_target
    from coopy.rootfs import create_host_layers

    if not req.command:
        raise ConfigError("no command given", hint="coopy run [OPTIONS] -- COMMAND [ARGS…]")
    facts = probe_host()
    if req.userns != "host":
        check_userns_allowed(facts)
    user, idmap, host_passwd = box_ids(facts, req.user, req.userns)
    if idmap is not None and idmap.subordinate and facts.uid != 0 and (
        facts.newuidmap is None or facts.newgidmap is None
    ):
        raise HostError(
            "newuidmap/newgidmap not found: they map your subordinate ids into the box",
            hint="install them (Debian/Ubuntu: sudo apt install uidmap), or remove your "
            "/etc/subuid entry to run boxes with a single user",
        )
    if idmap is not None and user.uid != 0 and idmap.to_host_uid(user.uid) is None:
        raise HostError(f"user {user.name} (uid {user.uid}) does not exist in this box's id map")
    image_layers: tuple[str, ...] = ()
    if req.image != "host":
        from coopy.image.boxroot import ensure_image, image_env, layer_paths
        from coopy.image.flatten import fit_layers

        record = ensure_image(req.image, facts=facts, idmap=idmap, platform=req.platform,
                              insecure=req.insecure, workspace=req.workspace)
        image_layers = layer_paths(record, idmap)
        if req.setup:
            from coopy.image.build import ensure_built

            image_layers = ensure_built(req, record, idmap, facts, run_prepared,
                                        quiet=True) + image_layers
        image_layers = fit_layers(record, image_layers, idmap, facts)  # overlay's limit
        req = req._replace(env={**image_env(record), **req.env})

    workspace = req.workspace.resolve()
    if not workspace.is_dir():
        raise ConfigError(
            f"workspace {req.workspace} is not a directory",
            hint="give -w an existing directory",
        )
    try:
        ws_target = normalize_target(req.workspace_target or str(workspace))
    except ValueError as exc:
        raise ConfigError(f"[workspace] path: {exc}") from None
    mounts, create_vols = _resolve_mounts(req, state_dir() / "volumes")
    network, resolv = network_for(req.net, req.net_backend, req.ports)
    hostname = req.hostname or box_hostname(workspace)
    root_box = facts.uid == 0 and idmap is not None
    # Boxes of root: box root is the first id of root's one subordinate range.
    owner = (idmap.uids[0].outside, idmap.gids[0].outside) if root_box and idmap else None
    gpus = _gpus(req, facts, keep, root_box, image_layers)
    if gpus is not None:
        req = req._replace(env={**gpus.env, **req.env})

    def spec_for(box_dir: str, skel: str) -> BoxSpec:
        return BoxSpec(
            name=hostname,
            hostname=hostname,
            box_dir=box_dir,
            skel=skel,
            etc=f"{box_dir}/image-etc" if image_layers else f"{box_dir}/etc",
            workspace=str(workspace),
            workspace_target=ws_target,
            volumes=tuple(Volume(s, t, ro, d) for s, t, ro, d in mounts),
            net=req.net,
            shm_size=req.shm_size or (gpus.shm if gpus else 64 << 20),
            tmp_size=req.tmp_size,
            tty_gid=5 if idmap is None or idmap.maps_gid(5) else None,
            idmap_binds=root_box,
            readonly=git_readonly(workspace, req.git),
            image_layers=image_layers,
            workspace_cow=f"{box_dir}/ws" if req.workspace_mode == "cow" else None,
            extra=gpus.ops if gpus else (),
        )

    if req.dry_run:
        from coopy.ops import describe

        run_dir = state_dir() / "run"
        for op in build_plan(spec_for(f"{run_dir}/<id>", f"{run_dir}/skel-<shape>"), facts):
            print(describe(op))
        return 0

    if not all(path.is_dir() for path, _ in create_vols):  # seeded from the image
        from coopy.image.volume import create_volumes

        create_volumes(create_vols, image_layers, facts=facts, idmap=idmap,
                       box_ids=(user.uid, user.gid))
    warning = single_id_warning(facts, idmap) if idmap is not None else None
    if warning:
        warn_once("single-id", warning)
    try:
        rundir = make_dir()
    except BaseException:
        _release(gpus)
        raise
    remover = None
    if idmap is not None and facts.uid != 0 and idmap.subordinate:
        remover = _userns_remover(idmap, facts)
    try:
        cow = ("ws", "ws/upper", "ws/work") if req.workspace_mode == "cow" else ()
        for sub in ("upper", "work", "root", *cow):
            (rundir.path / sub).mkdir(mode=0o755, exist_ok=True)
            if owner is not None:
                os.chown(rundir.path / sub, *owner)
        if owner is not None:
            os.chmod(rundir.path, 0o711)  # box root (a subordinate id) needs to pass
        from coopy.state import remove_tree

        remove_tree(rundir.path / "etc")  # regenerated each start: hostname, users
        try:
            if image_layers:
                skel = _image_layers(rundir.path, image_layers, facts, user, hostname,
                                     resolv, owner, host_passwd)
            else:
                skel, _ = create_host_layers(
                    rundir.path, facts, hostname=hostname, net=req.net, user=user,
                    owner=owner, host_passwd=host_passwd,
                    resolv=resolv,
                )
        except OSError as exc:
            raise HostError(
                f"cannot prepare the box's layers in {rundir.path}: {exc.strerror}",
                hint=STATE_FS_HINT,
            ) from exc
        etc_dir = rundir.path / ("image-etc/etc" if image_layers else "etc")
        for rel, text in req.etc_files:
            _write_etc(etc_dir, rel, text, owner)
        if req.git == "ro" and (workspace / ".git").exists():
            from coopy.gitguard import write_push_block

            write_push_block(etc_dir, workspace, owner)
        spec = spec_for(str(rundir.path), str(skel))
        if network is not None:
            network = network._replace(log_path=str(rundir.path / "net.log"))
            if network.backend == "proxy":
                from coopy.proxy import write_allow_file

                network = network._replace(allow_path=str(rundir.path / "allow"))
                write_allow_file(network.allow_path, req.allow)
        prepared = Prepared(req, facts, spec, build_plan(spec, facts), idmap, user,
                            rundir.path, network, gpus)
        return body(prepared)
    finally:
        _release(gpus)  # a keeper holds its own copies of the locks
        if keep:
            rundir.release()  # the keeper removes the box's cgroup
        else:
            from coopy.cgroup import remove_for

            remove_for(rundir.path)
            rundir.remove(remover)


def _image_layers(box_dir: Path, layers: tuple[str, ...], facts: HostFacts, user: BoxUser,
                  hostname: str, resolv: str, owner: tuple[int, int] | None,
                  host_passwd: str) -> Path:
    """The box's own layer on a pulled image, and (boxes of root) the mount points the
    image's layers are attached on in the box's namespace (coopy/mount.py, Trees)."""
    from coopy.image.boxroot import write_box_layer
    from coopy.rootfs import box_user
    from coopy.state import remove_tree

    remove_tree(box_dir / "image-etc")  # regenerated each start: hostname, users
    users = [box_user(facts, None, host_passwd)]
    if user.name != "root":
        users.append(user)
    write_box_layer(box_dir / "image-etc", layers, users=users, hostname=hostname, resolv=resolv,
                    owner=owner)
    # What `coopy system prune` must keep while this box exists.
    (box_dir / "image-layers").write_text("\n".join(layers) + "\n")
    if owner is not None:
        for i in range(len(layers)):
            (box_dir / "lower" / str(i)).mkdir(mode=0o711, parents=True, exist_ok=True)
    return box_dir / "image-etc"


def _write_etc(etc: Path, rel: str, text: str, owner: tuple[int, int] | None) -> None:
    """A file of the box's generated /etc layer (read-only in the box)."""
    path = etc / rel
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, 0o644)
    if owner is not None:
        for p in (path.parent, path):
            os.chown(p, *owner)


def _gpus(req: RunRequest, facts: HostFacts, persistent: bool, root_box: bool,
          image_layers: tuple[str, ...] = ()) -> BoxGpus | None:
    """The box's GPUs (coopy/gpubox.py), locked when exclusive; None without any."""
    if req.gpus == "none":
        return None
    root = os.environ.get("COOPY_GPU_ROOT") or "/"  # coopy.gpu.ENV_ROOT
    if req.gpus is None and not any(os.path.exists(os.path.join(root, "dev", node))
                                    for node in ("nvidiactl", "dxg", "kfd")):
        return None  # the default on a host without GPUs: three stats, no import
    from coopy.gpubox import prepare_gpus
    from coopy.paths import state_dir

    what = f"box {req.hostname}" if persistent else f"`coopy run` pid {os.getpid()}"
    return prepare_gpus(req.gpus, os.environ, cache_dir=state_dir() / "gpu", idmap=root_box,
                        exclusive=req.gpu_exclusive, holder=f"{what} of {facts.user}",
                        dry_run=req.dry_run, image_layers=image_layers)


def _release(gpus: BoxGpus | None) -> None:
    for fd in gpus.locks if gpus else ():
        os.close(fd)


def _userns_remover(idmap: IdMap, facts: HostFacts) -> object:
    import shutil

    from coopy.userns import run_in_userns

    def remove(path: Path) -> None:
        run_in_userns(idmap, lambda: shutil.rmtree(path), facts.newuidmap, facts.newgidmap)

    return remove


def _run_box(p: Prepared, replayable: bool = False) -> int:
    """Start the prepared box, relay its terminal or pipes, return its status.

    ``replayable``: a `coopy run` the native front end may start again from a plan
    (coopy/plancache.py), not a build step.
    """
    from coopy.spawn import start
    from coopy.term import Relay, get_winsize, raw_mode, set_winsize

    req = p.req
    use_tty = req.tty if req.tty is not None else os.isatty(0)
    # Pipes stand in for any of stdout/stderr that is a terminal (see coopy.term).
    relayed: list[tuple[int, int]] = []
    box_stdio = [0, 1, 2]
    if not use_tty:
        for fd in (1, 2):
            if os.isatty(fd):
                rd, wr = os.pipe2(os.O_CLOEXEC)
                relayed.append((rd, fd))
                box_stdio[fd] = wr
        if os.isatty(0):
            box_stdio[0] = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    launch = build_launch(p, use_tty, (box_stdio[0], box_stdio[1], box_stdio[2]))
    if replayable:
        from coopy import plancache

        plancache.save(p, launch)
    try:
        started = start(launch)
    finally:
        for fd in set(box_stdio) - {0, 1, 2}:
            os.close(fd)
    pidfd = os.pidfd_open(started.pid)
    try:
        if started.master is not None:
            master = started.master
            set_winsize(master, get_winsize(0))
            with raw_mode(0):
                Relay([(0, master), (master, 1)], box_sources={master},
                      on_signal=started.signal, master=master, winsize_from=0).run(pidfd)
            os.close(master)
        else:
            Relay(relayed, box_sources={rd for rd, _ in relayed},
                  on_signal=started.signal).run(pidfd)
    finally:
        for rd, _ in relayed:
            os.close(rd)
        os.close(pidfd)
    return started.wait()


def build_launch(p: Prepared, tty: bool, stdio: tuple[int, int, int]) -> Launch:
    """The spawn request for a prepared box (warnings for what will not apply)."""
    from coopy import caps, seccomp
    from coopy.spawn import Launch

    req, facts, spec, idmap, user = p.req, p.facts, p.spec, p.idmap, p.user
    if not req.seccomp:
        sys.stderr.write("coopy: warning: the seccomp filter is off ([security] seccomp)\n")
    from coopy.cgroup import Limits, setup_box

    cgroup = setup_box(p.box_dir, Limits(req.pids, req.memory, req.cpus))
    applied = cgroup.applied if cgroup else frozenset()
    if req.cpus is not None and "cpus" not in applied:
        sys.stderr.write("coopy: warning: [limits] cpus needs a cgroup v2 tree with the cpu "
                         "controller, which this host does not give: not applied "
                         "(`coopy doctor`)\n")
    env = build_env(os.environ, req.env, home=user.home, user=user.name,
                    hostname=spec.hostname)
    if req.net == "allow":
        from coopy.net import proxy_env

        env.update(proxy_env())
    root_box = facts.uid == 0 and idmap is not None
    ws_idmap = None
    if root_box and idmap is not None and user.uid != 0:
        ws_idmap = build_workspace_idmap(idmap, user.uid, user.gid)
    bpf = None
    if req.seccomp and seccomp.supported():
        bpf = seccomp.build_filter(nested_userns=req.nested_userns)
    return Launch(
        plan=p.ops,
        argv=list(req.command),
        env=env,
        cwd=spec.workspace_target,
        hostname=spec.hostname,
        init_path=init_path(),
        idmap=idmap,
        workspace_idmap=ws_idmap,
        clone_in_parent=root_box,
        userxattr=idmap is not None,
        box_dir=str(p.box_dir),
        net=req.net,
        box_uid=user.uid,
        box_gid=user.gid,
        tty=tty,
        stdio=stdio,
        newuidmap=facts.newuidmap,
        newgidmap=facts.newgidmap,
        seccomp=bpf,
        caps=caps.keep_mask(),
        nproc=None if "pids" in applied else req.pids,  # else per process, rlimits
        nofile=req.nofile,
        memory=None if "memory" in applied else req.memory,
        cgroup=cgroup.procs_dir if cgroup else None,
        network=p.network,
    )
