"""Persistent boxes: create (starting a keeper process), list, kill, remove; names.

A box lives in ``<state>/boxes/<name>/`` (its record ``box.json``, upper layer, log)
and, while it runs, has a keeper listening on ``<runtime>/<name>.sock``.  There is no
daemon: ``ls`` reads the records and checks each keeper by pid *and* start time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from coopy import proto
from coopy.errors import BoxStateError, CoopyError
from coopy.paths import ensure_private_dir, runtime_dir
from coopy.proto import T
from coopy.state import (
    BoxRecord,
    RunDir,
    boxes_dir,
    keeper_alive,
    lock_box,
    read_record,
    refresh,
    remove_tree,
    write_record,
)

if TYPE_CHECKING:  # the box machinery is imported only by the verbs that create one
    from coopy.prepared import Prepared
    from coopy.request import RunRequest
    from coopy.spawn import Launch

SCROLLBACK = 256 << 10
LOG_MAX = 10 << 20
KILL_GRACE = 10.0


def box_name(workspace: Path) -> str:
    """The default name of a workspace's box: its directory's name, unique per user.

    When another workspace already has that name, a short hash of this one's real path
    is appended, so two projects called ``app`` get ``app`` and ``app-3f2a1c``.
    """
    from coopy.box import box_hostname

    real = str(workspace.resolve())
    base = box_hostname(workspace)
    record = read_record(boxes_dir() / base)
    if record is None or record.workspace == real:
        return base
    return f"{base}-{zlib.crc32(real.encode()):08x}"[: len(base) + 7]


def check_name(name: str) -> str:
    """A box name is one path component of letters, digits, ``.``, ``_`` and ``-``: it
    names a directory, a socket and a hostname (``-n ../x`` would reach outside)."""
    from coopy.boxfind import valid_name

    if not valid_name(name):
        raise BoxStateError(f"{name!r} is not a box name",
                            hint="use letters, digits, '.', '_' and '-' (at most 63, "
                            "starting with a letter or digit)")
    return name


def socket_path(name: str) -> Path:
    """Where the keeper of box ``name`` listens."""
    return ensure_private_dir(runtime_dir()) / f"{name}.sock"


def find(name: str) -> tuple[Path, BoxRecord]:
    """The directory and (refreshed) record of box ``name``; errors name the fix."""
    box_dir = boxes_dir() / check_name(name)
    record = read_record(box_dir)
    if record is None:
        raise BoxStateError(f"no box named {name!r}", hint="`coopy ls` lists your boxes")
    return box_dir, refresh(box_dir, record)


def create(req: RunRequest, name: str, *, scrollback: int = SCROLLBACK,
           log_max: int = LOG_MAX, auto_restart: bool = False,
           restart_delay: float = 1.0) -> BoxRecord:
    """Start box ``name`` detached, unless it already runs; return its record.

    The box directory's lock makes two ``coopy`` started at once in one workspace end
    with one box: the second waits, then finds it running.
    """
    from coopy.box import _with_box, build_launch

    box_dir = boxes_dir() / check_name(name)
    box_dir.mkdir(mode=0o700, exist_ok=True)
    lock = lock_box(box_dir)
    assert lock is not None
    record = read_record(box_dir)
    if record is not None:
        record = refresh(box_dir, record)
        if record.state == "running":
            os.close(lock)
            return record
        if record.workspace != str(req.workspace.resolve()):
            os.close(lock)
            raise BoxStateError(f"box {name!r} belongs to {record.workspace}",
                                hint="give another name with -n")
    record = BoxRecord(name=name, workspace=str(req.workspace.resolve()),
                       command=tuple(req.command), image=req.image, network=req.net,
                       state="creating", created=time.time(), mounts=mount_specs(req),
                       agent=req.agent or "", worktree=req.worktree or "",
                       ports=tuple(str(port) for port in req.ports))
    write_record(box_dir, record)
    sock = socket_path(name)

    def start_keeper(p: Prepared) -> int:
        launch = build_launch(p, True, (0, 1, 2))
        gpus = tuple(str(g.index) for g in p.gpus.gpus) if p.gpus else ()
        return launch_keeper(launch, record._replace(gpus=gpus), box_dir, sock, scrollback,
                             log_max, auto_restart, restart_delay,
                             keep_fds=p.gpus.locks if p.gpus else ())

    try:
        _with_box(req, lambda: RunDir(box_dir, lock), start_keeper, keep=True)
    except BaseException:
        from coopy.cgroup import remove_for

        remove_for(box_dir)  # made for a keeper that failed to start the box
        write_record(box_dir, record._replace(state="exited", ended=time.time()))
        raise
    created = read_record(box_dir)
    assert created is not None
    return created


def mount_specs(req: RunRequest) -> tuple[str, ...]:
    """The box's mounts as ``SRC:DST[:ro]`` strings (what a restart must not change)."""
    return tuple(f"{m.source or m.volume}:{m.target}{':ro' if m.readonly else ''}"
                 for m in req.mounts)


def restart(name: str, command: list[str]) -> BoxRecord:
    """Restart the box's agent (PTY 0) with ``command``; shells, clients, upper stay."""
    _, record = find(name)
    if record.state != "running":
        raise BoxStateError(f"box {name!r} is {record.state}, not running",
                            hint="`coopy` in its workspace starts it again")
    if not ask(record, "restart", command=command):
        raise CoopyError(f"box {name!r} did not answer", hint="`coopy ls` shows its state")
    return record


def list_boxes() -> list[tuple[BoxRecord, int | None, int | None]]:
    """Every box of this user with its attached clients and shells (None: not running)."""
    out = []
    base = boxes_dir()
    for entry in sorted(os.listdir(base)):
        box_dir = base / entry
        record = read_record(box_dir)
        if record is None:
            continue
        record = refresh(box_dir, record)
        clients = shells = None
        if record.state == "running":
            info = ask(record, "info")
            count = info.get("clients", 0) if info else 0
            clients = count if isinstance(count, int) else 0
            listed = info.get("shells", []) if info else []
            shells = len(listed) if isinstance(listed, list) else 0
        out.append((record, clients, shells))
    return out


def ask(record: BoxRecord, verb: str, kill: int | None = None,
        **extra: object) -> dict[str, object]:
    """One request to a keeper (``info``, or a signal for ``kill``); {} when it is gone."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(record.socket)
            s.sendall(proto.hello(verb, **extra))
            if kill is not None:
                s.sendall(proto.encode_int(T.KILL, kill))
            decoder = proto.Decoder()
            while True:
                data = s.recv(65536)
                if not data:
                    return {}
                for frame in decoder.feed(data):
                    if frame.type == T.INFO:
                        result: dict[str, object] = frame.json()
                        return result
                    if frame.type == T.OK:
                        return {"ok": True}
                    if frame.type == T.ERROR:
                        raise CoopyError(f"box {record.name}: {frame.payload.decode()}",
                                         hint=f"restart the box: coopy kill {record.name}")
    except (OSError, proto.ProtocolError):
        return {}


def kill(name: str, *, force: bool = False, grace: float = KILL_GRACE) -> BoxRecord:
    """SIGTERM to the whole box, a grace period, then SIGKILL; every process gone."""
    box_dir, record = find(name)
    if record.state != "running":
        raise BoxStateError(f"box {name!r} is {record.state}, not running",
                            hint=f"`coopy rm {name}` removes it")
    if not force:
        ask(record, "kill", signal.SIGTERM)
        if _wait_keeper(record, grace):
            return find(name)[1]
    ask(record, "kill", signal.SIGKILL)
    if not _wait_keeper(record, 10.0):
        raise CoopyError(f"box {name!r} did not stop", hint="its keeper is stuck; see "
                         f"{box_dir / 'keeper.log'}")
    return find(name)[1]


def _wait_keeper(record: BoxRecord, timeout: float) -> bool:
    try:
        pidfd = os.pidfd_open(record.keeper_pid)
    except ProcessLookupError:
        return True
    try:
        if not keeper_alive(record):  # the pid was reused between read and open
            return True
        import select

        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def remove(name: str, *, force: bool = False) -> None:
    """Remove a box's directory (its upper layer, log and record)."""
    box_dir, record = find(name)
    if record.state == "running":
        if not force:
            raise BoxStateError(f"box {name!r} is running",
                                hint=f"`coopy kill {name}` first, or `coopy rm -f {name}`")
        kill(name, force=True)
    lock = lock_box(box_dir, wait=False)
    if lock is None:
        raise BoxStateError(f"box {name!r} is being created or removed right now")
    try:
        from coopy.cgroup import remove_for

        remove_for(box_dir)  # left if its keeper was killed with SIGKILL
        remove_tree(box_dir, _remover())
    finally:
        os.close(lock)


def _remover() -> object:
    """Removes files of subordinate ids (rootless) from inside a user namespace."""
    from coopy.box import _userns_remover
    from coopy.facts import probe_host
    from coopy.request import plan_ids

    facts = probe_host()
    if facts.uid == 0 or facts.subuid is None:
        return None
    idmap = plan_ids(facts, 0, 0, "auto")
    return _userns_remover(idmap, facts) if idmap is not None else None


# ---- the keeper's process ------------------------------------------------------------


def launch_keeper(launch: Launch, record: BoxRecord, box_dir: Path, sock_path: Path,
                  scrollback: int, log_max: int, auto_restart: bool = False,
                  restart_delay: float = 1.0, keep_fds: tuple[int, ...] = ()) -> int:
    """Start a detached keeper for ``launch``; return its pid once the box runs.

    Double fork: the keeper is reparented to init (or the nearest subreaper) and lives in
    a session of its own, detached from the caller's terminal.  The caller learns of
    success or failure through a pipe: ``ok <pid>`` or the error as the keeper saw it.
    """
    from coopy.errors import CoopyError, SetupError

    rd, wr = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # ------------------------------------------------- intermediate
        code = 0
        try:
            os.close(rd)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            _keeper_main(launch, record, box_dir, sock_path, scrollback, log_max, wr,
                         auto_restart, restart_delay, keep_fds)
        except BaseException as exc:  # noqa: BLE001 - told to the caller, then exit
            message = exc.message if isinstance(exc, CoopyError) else str(exc)
            with contextlib.suppress(OSError):
                os.write(wr, f"error {message}\n".encode())
            code = 125
        finally:
            os._exit(code)
    os.close(wr)
    os.waitpid(pid, 0)
    # One line; not "until EOF": the box's processes, forked by the keeper before it
    # answers, hold copies of the pipe for as long as the box runs.
    chunks = []
    while (chunk := os.read(rd, 4096)) and not chunk.endswith(b"\n"):
        chunks.append(chunk)
    chunks.append(chunk)
    os.close(rd)
    reply = b"".join(chunks).decode(errors="replace").strip()
    if reply.startswith("ok "):
        return int(reply[3:])
    raise SetupError(reply[6:] if reply.startswith("error ") else
                     "the keeper died while starting the box",
                     hint=f"see {box_dir / 'keeper.log'}")


def _keeper_main(launch: Launch, record: BoxRecord, box_dir: Path, sock_path: Path,
                 scrollback: int, log_max: int, ready_fd: int, auto_restart: bool,
                 restart_delay: float, keep_fds: tuple[int, ...] = ()) -> None:
    # Nothing of the caller's terminal: stdio to /dev/null, errors to keeper.log.
    null = os.open("/dev/null", os.O_RDWR)
    log = os.open(box_dir / "keeper.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    # Nothing else of the caller's either (its creation lock, its terminal's fds), but
    # the box's GPU locks (coopy/gpubox.py): the keeper holds them for the box's life.
    low = 3
    for fd in sorted({ready_fd, *keep_fds}):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()  # a stale socket of this box (its keeper was killed)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(sock_path))
    finally:
        os.umask(old)
    listener.listen(16)
    from coopy.boxfind import proc_start_time
    from coopy.keeper import serve
    from coopy.spawn import start

    started = start(launch._replace(tty=True, control=True))
    record = record._replace(state="running", keeper_pid=os.getpid(),
                             keeper_start=proc_start_time(os.getpid()),
                             started=time.time(), socket=str(sock_path))
    write_record(box_dir, record)
    os.write(ready_fd, f"ok {os.getpid()}\n".encode())
    os.close(ready_fd)
    try:
        serve(started, listener, record, box_dir, scrollback, log_max, auto_restart,
              restart_delay)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        from coopy.cgroup import end_box

        end_box(launch.cgroup)  # the box's processes are gone: `coopy kill` waits for this
