"""The plan cache: what lets the native front end start a box without Python.

``coopy`` is a small C program (native/front/).  For ``coopy run`` it hashes the
invocation (its arguments, working directory, environment, uid, boot and its own build)
and looks for ``<state>/plans/<key>``.  On a miss it runs this CLI with the key in
``COOPY_PLAN_KEY``; this module then watches the run being resolved and, just before the
box starts, writes everything the front end needs to start the same box again: the id
map, the mount plan, the box directory's prepared content, the environment, coopy-init's
arguments, the seccomp program — and the signature (lstat/stat) of every host file and
directory the resolution looked at, so that any change to any of them (a coop.toml
created or edited, /etc/passwd, the trust store, an image re-pulled…) makes the plan
stale.  The record format is documented at the top of native/front/front.h.

What was looked at is observed, not listed by hand: an audit hook sees every file
opened and every directory listed, and ``os.stat``/``lstat``/``access``/``readlink`` are
wrapped while the run is being resolved (``os.path.exists``, ``Path.resolve``,
``shutil.which`` all go through them).  A directory that was only stat'ed is compared by
identity (device, inode, mode, owner); one that was listed, and every file, by content
signature too (size, mtime, ctime).

Only runs that replay exactly are written: a user namespace of coopy's own, a network
without the allow proxy, published ports or DNS forwarding (the front end starts the
NAT helper itself), no GPUs, no agent preset, and nothing printed while resolving (a
warning must keep being shown).  Anything else, and any
failure of the front end before the command starts, goes through Python as before.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from coopy.net import NetSetup
    from coopy.prepared import Prepared
    from coopy.spawn import Launch

MAGIC = "coopy-plan 1"
KEEP = 64  # plans kept per user; the oldest go first
_ENV_KEY = "COOPY_PLAN_KEY"


class _Recorder:
    def __init__(self, key: str) -> None:
        self.key = key
        self.on = True
        self.printed = False
        self.refused: str | None = None
        self.seen: dict[str, bool] = {}  # path -> listed (its entries matter)
        self.skip: tuple[str, ...] = ()


_rec: _Recorder | None = None


def begin() -> None:
    """Start recording if the front end asked for a plan (``COOPY_PLAN_KEY``)."""
    global _rec
    key = os.environ.pop(_ENV_KEY, "")
    if not key or len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
        return
    import coopy

    rec = _rec = _Recorder(key)
    rec.skip = tuple(
        p.rstrip("/") + "/"
        for p in {sys.prefix, sys.exec_prefix, os.path.dirname(os.__file__),
                  os.path.dirname(os.path.dirname(coopy.__file__)), "/proc", "/sys",
                  "/dev/pts"}
    )
    sys.addaudithook(_audit)
    for name in ("stat", "lstat", "access", "readlink"):
        setattr(os, name, _watch(getattr(os, name)))
    sys.stdout = _Watched(sys.stdout)
    sys.stderr = _Watched(sys.stderr)


def refuse(reason: str) -> None:
    """This run is not to be replayed (e.g. an agent preset)."""
    if _rec is not None:
        _rec.refused = reason


def _note(path: Any, listed: bool = False) -> None:
    rec = _rec
    if rec is None or not rec.on or isinstance(path, int):
        return
    try:
        text = os.fsdecode(path)
    except TypeError:
        return
    text = os.path.abspath(text)
    if text == "/dev/null" or (text + "/").startswith(rec.skip):
        return
    rec.seen[text] = rec.seen.get(text, False) or listed


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and args:
        _note(args[0])
    elif event in ("os.listdir", "os.scandir") and args:
        _note(args[0] if args[0] is not None else ".", listed=True)


def _watch(func: Callable[..., Any]) -> Callable[..., Any]:
    def watched(path: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("dir_fd") is None:
            _note(path)
        return func(path, *args, **kwargs)

    watched.__wrapped__ = func  # type: ignore[attr-defined]
    return watched


class _Watched:
    """A stream that remembers whether anything was written to it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if _rec is not None and _rec.on and text:
            _rec.printed = True
        return int(self._stream.write(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def signature(path: str, *, listed: bool = False) -> tuple[str, str]:
    """(lstat, stat) signatures of ``path`` as native/front/plan.c computes them."""
    lsig, st = _sig(path, os.lstat, listed)
    if st is not None and stat.S_ISLNK(st.st_mode):
        return lsig, _sig(path, os.stat, listed)[0]
    return lsig, lsig


def _sig(path: str, func: Callable[..., os.stat_result], listed: bool,
         ) -> tuple[str, os.stat_result | None]:
    func = getattr(func, "__wrapped__", func)
    try:
        st = func(path)
    except (FileNotFoundError, NotADirectoryError):
        return "-", None
    except OSError as exc:
        return f"E{exc.errno}", None
    if stat.S_ISDIR(st.st_mode) and not listed:
        return f"d:{st.st_dev}:{st.st_ino}:{st.st_mode:o}:{st.st_uid}:{st.st_gid}", st
    return (f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:"
            f"{st.st_mode:o}:{st.st_uid}:{st.st_gid}"), st


def save(p: Prepared, launch: Launch) -> None:
    """Write the plan of this run, if the front end asked for one and it can be replayed."""
    rec = _rec
    if rec is None or not rec.on:
        return
    rec.on = False
    why = _unreplayable(p, launch, rec)
    if why is not None:
        if os.environ.get("COOPY_DEBUG_FRONTEND"):
            sys.__stderr__.write(f"coopy: no plan written: {why}\n")  # type: ignore[union-attr]
        return
    try:
        data = _encode(p, launch, rec)
    except (OSError, ValueError):
        return  # an odd file in the box dir: this run is simply not cached
    _write(data, rec.key)


def _unreplayable(p: Prepared, launch: Launch, rec: _Recorder) -> str | None:
    if rec.refused:
        return rec.refused
    if rec.printed:
        return "something was printed while resolving (a warning is kept)"
    if launch.idmap is None:
        return "--userns=host"
    net = launch.network
    if net is not None and (net.backend == "proxy" or net.ports or net.dns_forward):
        return "the allow proxy, published ports or DNS forwarding"
    if launch.workspace_idmap is not None or launch.control:
        return "a workspace id map or a control channel"
    if p.gpus is not None:
        return "GPUs"
    raw = sys.argv[1:]
    if "--" in raw[1:] and list(launch.argv) != raw[raw.index("--", 1) + 1:]:
        return "the command run is not the one after `--`"
    return None


def _encode(p: Prepared, launch: Launch, rec: _Recorder) -> bytes:
    from coopy.spawn import build_init_argv

    out = bytearray()

    def put(*items: object) -> None:
        for item in items:
            text = os.fsencode(item) if isinstance(item, str) else str(item).encode()
            if b"\0" in text:
                raise ValueError("NUL in a plan field")
            out.extend(text + b"\0")

    def blob(data: bytes) -> None:
        out.extend(b"%d\0" % len(data) + data + b"\0")

    put(MAGIC)
    box = str(p.box_dir)
    for path, listed in sorted(rec.seen.items()):
        base = os.path.dirname(box)
        if path == base or path.startswith(base + "/"):
            continue  # the run dirs, the skeleton: made here, checked by using them
        put("vl" if listed else "v", path, *signature(path, listed=listed))
    put("base", os.path.dirname(box), "box", box)
    _template(box, put, blob)
    idmap = launch.idmap
    assert idmap is not None
    for r in idmap.uids:
        put("uid", r.inside, r.outside, r.length)
    for r in idmap.gids:
        put("gid", r.inside, r.outside, r.length)
    helper = os.getuid() != 0 and idmap.subordinate
    put("maps", "helper" if helper else "direct")
    if helper:
        put("newuidmap", launch.newuidmap or "", "newgidmap", launch.newgidmap or "")
    put("rootbox", int(launch.clone_in_parent), "userxattr", int(launch.userxattr))
    put("net", launch.net, "hostname", launch.hostname, "cwd", launch.cwd)
    put("attach", launch.attach_at, "init", launch.init_path)
    plain = launch._replace(tty=False)
    for arg in build_init_argv(plain)[:-len(launch.argv) - 1]:  # up to "--"
        put("initarg", arg)
    if launch.seccomp:
        put("seccomp")
        blob(launch.seccomp)
    put("tty", {None: "auto", True: "1", False: "0"}[p.req.tty])
    default_term = "TERM" not in os.environ and "TERM" not in p.req.env
    for key, value in launch.env.items():
        if not (key == "TERM" and default_term):
            put("env", f"{key}={value}")
    if default_term:
        put("termdefault")
    for arg in launch.argv:
        put("arg", arg)
    put("cmdargv")  # checked in _unreplayable: the front end takes it from after `--`
    if launch.network is not None:
        _network(launch.network, put)
    if launch.cgroup:
        from coopy.cgroup import Limits, plan_record

        parent, prefix, files = plan_record(launch.cgroup, p.box_dir,
                                            Limits(p.req.pids, p.req.memory, p.req.cpus))
        put("cgroup", parent, prefix)
        for name, value in files:
            put("cglimit", name, value)
    _ops(launch, put)
    put("end")
    return bytes(out)


def _network(setup: NetSetup, put: Callable[..., None]) -> None:
    """The NAT helper's command line with marks the front end fills in, the fixed
    unreachable prefixes (it adds the host's own addresses at run time), the log."""
    from coopy.net import BLOCKED, helper_argv

    pid, ready, exit_fd = 999999991, 999999992, 999999993  # no real pid or fd is this
    for arg in helper_argv(setup, pid, ready, exit_fd, None):
        put("helper", arg.replace(str(pid), "@PID@").replace(str(ready), "@READY@")
            .replace(str(exit_fd), "@EXIT@"))
    for prefix in BLOCKED:
        put("blocked", prefix)
    put("netlog", setup.log_path)


def _template(box: str, put: Callable[..., None], blob: Callable[[bytes], None]) -> None:
    """The box directory as prepared (its lock excepted), parents first."""
    def walk(rel: str) -> None:
        path = os.path.join(box, rel) if rel != "." else box
        st = os.lstat(path)
        mode, ids = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
        if stat.S_ISDIR(st.st_mode):
            put("d", rel, mode, *ids)
            for name in sorted(os.listdir(path)):
                if rel != "." or name != "lock":
                    walk(name if rel == "." else f"{rel}/{name}")
        elif stat.S_ISLNK(st.st_mode):
            put("l", rel, os.readlink(path), *ids)
        elif stat.S_ISCHR(st.st_mode):
            put("c", rel, mode, *ids, st.st_rdev)
        elif stat.S_ISREG(st.st_mode) and rel.endswith("etc/machine-id"):
            put("m", rel, mode, *ids)
        elif stat.S_ISREG(st.st_mode):
            put("f", rel, mode, *ids)
            with open(path, "rb") as f:
                blob(f.read())
        else:
            raise ValueError(f"{path}: not a file, directory, link or whiteout")

    walk(".")


def _ops(launch: Launch, put: Callable[..., None]) -> None:
    from coopy.ops import (
        Bind,
        DevNode,
        Devpts,
        MaskPath,
        Mkdir,
        Mqueue,
        Overlay,
        PivotRoot,
        Proc,
        ReadOnly,
        Symlink,
        Sysfs,
        Tmpfs,
    )

    for op in launch.plan:
        match op:
            case Overlay(target, lowers, upper, work):
                put("overlay", target, len(lowers), *lowers, upper or "", work or "")
            case Bind(source, target, readonly, directory, idmap, nodev, noexec):
                flags = (readonly * 1 | directory * 2 | idmap * 4 | nodev * 8
                         | noexec * 16)
                put("bind", source, target, flags)
            case Tmpfs(target, mode, size, nodev, noexec, readonly):
                put("tmpfs", target, mode, size or 0, readonly * 1 | nodev * 8 | noexec * 16)
            case Proc(target):
                put("proc", target)
            case Sysfs(target):
                put("sysfs", target)
            case Devpts(target, gid):
                put("devpts", target, gid if gid is not None else -1)
            case Mqueue(target):
                put("mqueue", target)
            case DevNode(name):
                put("devnode", name)
            case Mkdir(target, mode):
                put("mkdir", target, mode)
            case Symlink(target, to):
                put("symlink", target, to)
            case MaskPath(target):
                put("mask", target)
            case ReadOnly(target):
                put("readonly", target)
            case PivotRoot():
                put("pivot")


def _write(data: bytes, key: str) -> None:
    from coopy.paths import ensure_private_dir, state_dir

    try:
        plans = ensure_private_dir(state_dir() / "plans")
        tmp = plans / f".{key}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, plans / key)
        entries = sorted(plans.iterdir(), key=lambda e: e.stat().st_mtime_ns)
        for old in entries[:-KEEP]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # no plan: the next run goes through Python again
