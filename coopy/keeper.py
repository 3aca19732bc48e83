"""The keeper: one small detached process per persistent box, no central daemon.

The keeper process (started by :func:`coopy.lifecycle.launch_keeper`) is the parent of
the box's processes, so a keeper killed with SIGKILL takes its box with it (PDEATHSIG).
This module is what it runs: it holds the PTY masters, a scrollback ring and
the log, and serves clients on a 0600 unix socket in the per-user runtime directory
(see :mod:`coopy.proto`).  Single-threaded: one selectors loop.  When the box's command
exits it records the status, tells attached clients, removes its socket and exits.
The box's directory (its upper layer) stays until ``coopy rm``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import itertools
import os
import select
import selectors
import signal
import socket
import struct
import sys
import termios
import time
from collections.abc import Mapping
from pathlib import Path

from coopy import proto
from coopy.proto import T
from coopy.spawn import Started
from coopy.state import BoxRecord, write_record

# Back-pressure, like a terminal that cannot keep up: while a client has more than
# HIGH_WATER bytes queued, the keeper stops reading its PTY's master, so the box's writes
# block in the kernel (nothing is dropped: scrollback and log get every byte); reading
# resumes when every client of that PTY is under LOW_WATER.  A client that takes nothing
# for STALL_S while the box waits on it is detached, so one stuck terminal cannot freeze
# the box.  Each read(2) of a PTY master returns at most 4 KiB (n_tty's buffer): the
# keeper reads until EAGAIN or READ_BATCH and sends what it got as one frame.
HIGH_WATER = 1 << 20
LOW_WATER = 256 << 10
READ_BATCH = 256 << 10  # ≤ proto.MAX_PAYLOAD
STALL_S = 10.0
STALL_ENV = "COOPY_CLIENT_STALL_S"  # tests shorten it; clamped to STALL_RANGE
STALL_RANGE = (0.1, 600.0)
_SEND_MAX = 64  # buffers per sendmsg(2) (IOV_MAX is 1024)


def stall_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """How long a client may take nothing while the box waits on it (``$COOPY_CLIENT_STALL_S``,
    clamped; the default when unset or not a number)."""
    try:
        value = float(environ.get(STALL_ENV, STALL_S))
    except ValueError:
        return STALL_S
    lo, hi = STALL_RANGE
    return min(max(value, lo), hi) if value == value else STALL_S  # NaN: the default


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = proto.Decoder()
        # What it has not taken yet: whole buffers, the first one possibly sent in part
        # (``sent`` bytes of it); queued without copying, sent with one sendmsg(2).
        self.out: collections.deque[bytes] = collections.deque()
        self.sent = 0
        self.queued = 0  # bytes in out, less sent
        self.since = 0.0  # monotonic time of its last progress (or of its queue starting)
        self.pty: int | None = None  # the PTY it is attached to
        self.exec_id: int | None = None  # the `coopy exec` process it waits for
        self.greeted = False
        self.fds: list[int] = []  # received with HELLO exec: the process's stdio
        self.command: list[str] = []  # what it asked to start (shell, exec)
        self.rows = 0
        self.cols = 0
        self.writing = False  # registered for EVENT_WRITE too


class _Pty:
    """One terminal of the box: 0 is the agent's, shells get 1, 2, …"""

    def __init__(self, ident: int, master: int, kind: str, command: list[str],
                 log_path: Path) -> None:
        self.id = ident
        self.master = master
        self.kind = kind
        self.command = command
        # A deque of chunks, trimmed by whole chunks: trimming a 256 KiB bytearray on
        # every read would move it all each time (measured: the relay's main cost).
        self.chunks: collections.deque[bytes] = collections.deque()
        self.held = 0
        self.to_master = bytearray()
        self.status: int | None = None  # set when its process exited
        self.drained = False  # its master reported EOF/EIO
        self.paused = False  # a client of it is over HIGH_WATER: its master is not read
        self.events = 0  # what its master is registered for (0: not registered)
        self.log_path = log_path
        self.log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                              0o600)
        self.log_size = os.fstat(self.log_fd).st_size

    def keep(self, data: bytes, limit: int) -> None:
        """Add output to the scrollback, dropping the oldest chunks beyond ``limit``."""
        self.chunks.append(data)
        self.held += len(data)
        while self.held - len(self.chunks[0]) >= limit:
            self.held -= len(self.chunks.popleft())

    @property
    def scrollback(self) -> bytes:
        """The recent output, oldest first."""
        return b"".join(self.chunks)


class Keeper:
    """Serves one box until its command exits."""

    def __init__(self, started: Started, listener: socket.socket, record: BoxRecord,
                 box_dir: Path, scrollback: int, log_max: int, auto_restart: bool = False,
                 restart_delay: float = 1.0) -> None:
        assert started.master is not None
        self.started = started
        self.auto_restart = auto_restart
        self.restart_delay = restart_delay
        self.exits: list[float] = []  # recent agent exits, for the crash-loop stop
        self.restart_with: list[str] | None = None  # set by `coopy restart`
        self.restart_at: float | None = None  # when to start the agent again
        self.kill_at: float | None = None  # when a restart's SIGTERM turns into SIGKILL
        self.stopping = False  # the box is being killed: its agent is not restarted
        self.listener = listener
        self.record = record
        self.box_dir = box_dir
        self.scrollback_max = scrollback
        self.log_max = max(log_max, 4096)  # [session] log_max may say 0
        self.ptys = {0: _Pty(0, started.master, "agent", list(record.command),
                             box_dir / "log")}
        self.clients: dict[int, _Client] = {}
        self.pending: dict[int, _Client] = {}  # started processes awaiting init's answer
        self.next_id = 1
        self.sel = selectors.DefaultSelector()
        self.stall = stall_timeout()
        self.buffer = memoryview(bytearray(READ_BATCH))  # PTY reads land here

    # ---- the loop ------------------------------------------------------------------

    def run(self) -> int:
        """Serve until the box ends; returns its status."""
        agent = self.ptys[0]
        os.set_blocking(agent.master, False)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, ("accept", 0))
        self._watch(agent)
        box = os.pidfd_open(self.started.pid)  # readable when the box has ended
        self.sel.register(box, selectors.EVENT_READ, ("box", 0))
        if self.started.control is not None:
            self.sel.register(self.started.control, selectors.EVENT_READ, ("control", 0))
        ended = False
        while not ended:
            for key, events in self.sel.select(self._timeout()):
                kind, ident = key.data
                if kind == "box":
                    ended = True
                elif kind == "accept":
                    self._accept()
                elif kind == "control":
                    self._from_init()
                elif kind == "pty":
                    pty = self.ptys.get(ident)
                    if pty is None:
                        continue
                    if events & selectors.EVENT_READ:
                        self._from_master(pty)
                    if events & selectors.EVENT_WRITE:
                        self._flush_master(pty)
                else:
                    client = self.clients.get(key.fd)
                    if client is not None:
                        self._serve(client, events)
            self._timers()
        for pty in list(self.ptys.values()):  # what the box printed last
            while not pty.drained:
                self._from_master(pty)
                if not pty.drained and not select.select([pty.master], [], [], 0)[0]:
                    break
        os.close(box)
        status = self.started.wait()
        self.record = self.record._replace(state="exited", exit_status=status,
                                           ended=time.time())
        write_record(self.box_dir, self.record)
        for client in list(self.clients.values()):
            if client.greeted:
                self._send(client, proto.encode_int(T.EXIT, status))
                self._flush_client(client, final=True)
            self._drop(client)
        return status

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        client = _Client(sock)
        self.clients[sock.fileno()] = client
        self.sel.register(sock, selectors.EVENT_READ, ("client", 0))

    def _from_master(self, pty: _Pty) -> None:
        """Read what the PTY has (up to READ_BATCH, into one buffer): scrollback, log,
        one DATA frame to each of its clients."""
        view, size, eof = self.buffer, 0, False
        while size < READ_BATCH:
            try:
                n = os.readv(pty.master, [view[size:]])
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: the PTY's last slave is closed
                    raise
                n = 0
            if not n:
                eof = True
                break
            size += n
        if size:
            data = bytes(view[:size])
            pty.keep(data, self.scrollback_max)
            self._log(pty, data)
            header = proto.header(T.DATA, size)
            behind = False
            for client in self.clients.values():
                if client.pty == pty.id:
                    self._send(client, header, data)
                    behind = behind or client.queued >= HIGH_WATER
            if behind:
                self._pace(pty)
        if eof:
            pty.drained = True
            self._watch(pty)
            if pty.id != 0:
                self._maybe_finish(pty)

    def _maybe_finish(self, pty: _Pty) -> None:
        """A shell whose process exited and whose output is drained: tell, forget."""
        if pty.status is None or not pty.drained:
            return
        for client in list(self.clients.values()):
            if client.pty == pty.id:
                self._send(client, proto.encode_int(T.EXIT, pty.status))
                self._flush_client(client, final=True)
                self._drop(client)
        os.close(pty.master)
        os.close(pty.log_fd)
        del self.ptys[pty.id]

    def _log(self, pty: _Pty, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                if pty.log_size >= self.log_max:
                    # Rotate: one previous log is kept, so a chatty agent cannot fill the
                    # disk.  A read is up to 256 KiB, so it may be split across the two.
                    os.replace(pty.log_path, pty.log_path.with_suffix(".1"))
                    os.close(pty.log_fd)
                    pty.log_fd = os.open(pty.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND
                                         | os.O_CLOEXEC, 0o600)
                    pty.log_size = 0
                n = os.write(pty.log_fd, view[:self.log_max - pty.log_size])
                pty.log_size += n
                view = view[n:]
        except OSError:
            pass  # a full disk must not take the box down; the terminal still works

    # ---- coopy-init's answers --------------------------------------------------------

    def _from_init(self) -> None:
        assert self.started.control is not None
        try:
            msg, fds, _, _ = socket.recv_fds(self.started.control, 4096, 1)
        except OSError:
            msg, fds = b"", []
        if not msg:
            self.sel.unregister(self.started.control)
            return
        fields = msg.rstrip(b"\0").split(b"\0")
        kind, ident = fields[0], int(fields[1])
        client = self.pending.pop(ident, None)
        if kind == b"P" and ident == 0 and fds:  # the restarted agent's new terminal
            agent = self.ptys[0]
            while not agent.drained and select.select([agent.master], [], [], 0)[0]:
                self._from_master(agent)  # the old agent's last words first
            self._watch(agent, 0)
            os.close(agent.master)
            agent.master, agent.drained, agent.status = fds[0], False, None
            os.set_blocking(agent.master, False)
            self._watch(agent)
        elif kind == b"P":
            if fds:  # a shell: its PTY master
                pty = _Pty(ident, fds[0], "shell", [], self.box_dir / f"shell-{ident}.log")
                os.set_blocking(pty.master, False)
                self.ptys[ident] = pty
                self._watch(pty)
                if client is not None:
                    pty.command = client.command
                    client.pty = ident
                    self._resize(pty, client.rows, client.cols)
            elif client is not None:
                client.exec_id = ident
        elif kind == b"E" and client is not None:
            stage, err = fields[2].decode(), int(fields[3])
            code = 127 if stage == "exec" and err in (errno.ENOENT, errno.ENOTDIR) else 126
            what = "not found" if code == 127 else os.strerror(err)
            self._send(client, proto.encode(T.ERROR, f"cannot run {client.command[0]!r} "
                                            f"in the box: {what}".encode()))
            self._send(client, proto.encode_int(T.EXIT, code))
        elif kind == b"X" and ident == 0:
            self._agent_exited(int(fields[2]))
        elif kind == b"X":
            status = int(fields[2])
            done = self.ptys.get(ident)
            if done is not None:
                done.status = status
                self._maybe_finish(done)
            for c in list(self.clients.values()):
                if c.exec_id == ident:
                    self._send(c, proto.encode_int(T.EXIT, status))
                    self._flush_client(c, final=True)
                    self._drop(c)

    # ---- the agent's restarts ----------------------------------------------------------

    CRASH_LOOP = (3, 5.0)  # this many exits within this many seconds: stop restarting

    def _agent_exited(self, status: int) -> None:
        now = time.monotonic()
        self.kill_at = None
        if self.restart_with is not None and not self.stopping:
            self._start_agent(self.restart_with)
            self.restart_with = None
            return
        if self.auto_restart and not self.stopping:
            count, window = self.CRASH_LOOP
            self.exits = [t for t in self.exits if now - t < window] + [now]
            if len(self.exits) < count:
                self._note(f"the agent exited with status {status}; restarting it in "
                           f"{self.restart_delay:g} s")
                self.restart_at = now + self.restart_delay
                return
            self._note(f"the agent exited {count} times within {window:g} s (last status "
                       f"{status}): not restarting it")
        # Being killed, the other processes got SIGTERM too: let them finish (init ends
        # the box when none is left; `coopy kill` sends SIGKILL after its grace period).
        self._ask_init(["W" if self.stopping else "Q", str(status)])

    def _start_agent(self, command: list[str]) -> None:
        self.record = self.record._replace(command=tuple(command))
        write_record(self.box_dir, self.record)
        self.ptys[0].command = command
        self._ask_init(["S", "0", "1", *command])

    def _note(self, text: str) -> None:
        """A line from coopy in the agent's terminal (and its scrollback and log)."""
        data = f"\r\n[coopy: {text}]\r\n".encode()
        agent = self.ptys[0]
        agent.keep(data, self.scrollback_max)
        self._log(agent, data)
        for client in list(self.clients.values()):
            if client.pty == 0:
                self._send(client, proto.encode(T.DATA, data))

    def _timeout(self) -> float | None:
        times = [t for t in (self.restart_at, self.kill_at) if t is not None]
        times += [c.since + self.stall for c in self.clients.values() if c.queued >= HIGH_WATER]
        return max(0.0, min(times) - time.monotonic()) if times else None

    def _timers(self) -> None:
        now = time.monotonic()
        for client in list(self.clients.values()):
            if client.queued >= HIGH_WATER and now - client.since >= self.stall:
                # It has taken nothing for that long while its PTY waited on it (a frozen
                # terminal, a suspended ssh): the box goes on without it.
                print(f"keeper: a client of PTY {client.pty} took nothing for "
                      f"{self.stall:g} s while the box waited on it: detached it",
                      file=sys.stderr, flush=True)
                self._drop(client)
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self._start_agent(list(self.record.command))
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            self._ask_init(["K", "0", str(signal.SIGKILL)])

    def _ask_init(self, fields: list[str], fds: list[int] | None = None) -> bool:
        if self.started.control is None:
            return False
        msg = b"\0".join(f.encode() for f in fields) + b"\0"
        try:
            if fds:
                socket.send_fds(self.started.control, [msg], fds)
            else:
                self.started.control.send(msg)
        except OSError:
            return False
        return True

    # ---- clients -------------------------------------------------------------------

    def _serve(self, client: _Client, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._flush_client(client)
        if not events & selectors.EVENT_READ:
            return
        try:
            data, fds, _, _ = socket.recv_fds(client.sock, 65536, 3)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        client.fds += fds
        if not data:
            self._drop(client)
            return
        try:
            frames = client.decoder.feed(data)
        except proto.ProtocolError as exc:
            self._send(client, proto.encode(T.ERROR, str(exc).encode()))
            self._flush_client(client, final=True)
            self._drop(client)
            return
        for frame in frames:
            if client.sock.fileno() < 0:
                break
            self._handle(client, frame)

    def _handle(self, client: _Client, frame: proto.Frame) -> None:
        if not client.greeted:
            self._hello(client, frame.json() if frame.type == T.HELLO else {})
            return
        pty = self.ptys.get(client.pty) if client.pty is not None else None
        match frame.type:
            case T.DATA if pty is not None:
                pty.to_master += frame.payload
                self._flush_master(pty)
            case T.RESIZE if pty is not None:
                self._resize(pty, *proto.unpack_resize(frame.payload))
            case T.DETACH:
                self._drop(client)
            case T.KILL:
                sig = proto.unpack_int(frame)
                target = client.pty if client.pty else client.exec_id
                if target:
                    self._ask_init(["K", str(target), str(sig)])
                else:
                    # `coopy kill`: every process of the box gets it, not only the agent
                    # (init: kill(-1)); SIGKILL goes to init itself, which ends them all.
                    self.stopping = True
                    if sig == signal.SIGKILL or not self._ask_init(["K", "-1", str(sig)]):
                        self.started.signal(sig)
                self._send(client, proto.encode(T.OK))
            case T.DATA | T.RESIZE:
                pass  # not attached (yet): an exec client's or a shell still starting
            case _:
                self._send(client, proto.encode(T.ERROR, f"unexpected {proto.name(frame.type)}"
                                                .encode()))

    def _hello(self, client: _Client, hello: dict[str, object]) -> None:
        if hello.get("version") != proto.VERSION:
            self._send(client, proto.encode(
                T.ERROR, f"this box's keeper speaks protocol {proto.VERSION}; "
                "restart the box with this coopy".encode()))
            self._flush_client(client, final=True)
            self._drop(client)
            return
        client.greeted = True
        verb = hello.get("verb")
        rows, cols = int(str(hello.get("rows", 0))), int(str(hello.get("cols", 0)))
        if verb == "attach":
            target = int(str(hello.get("pty", 0)))
            pty = self.ptys.get(target)
            if pty is None:
                self._send(client, proto.encode(T.ERROR, f"no shell {target} in this box"
                                                .encode()))
                return
            client.pty = target
            self._resize(pty, rows, cols)
            self._replay(client, pty)
        elif verb == "info":
            self._send(client, proto.encode_json(T.INFO, self.info()))
        elif verb in ("shell", "exec"):
            raw = hello.get("command")
            command = [str(x) for x in raw] if isinstance(raw, list) else []
            if verb == "shell" and not hello.get("new") and not command:
                live = [p for p in self.ptys.values() if p.kind == "shell" and p.status is None]
                if live:
                    client.pty = live[0].id
                    self._resize(live[0], rows, cols)
                    self._replay(client, live[0])
                    return
            if not command:
                shell = hello.get("shell")
                command = [str(x) for x in shell] if isinstance(shell, list) else ["sh", "-l"]
            ident = self.next_id
            self.next_id += 1
            client.command = command
            client.rows, client.cols = rows, cols
            tty = "1" if verb == "shell" else "0"
            if verb == "exec" and len(client.fds) != 3:
                self._send(client, proto.encode(T.ERROR, b"exec needs its 3 stdio fds"))
                return
            self.pending[ident] = client
            ok = self._ask_init(["S", str(ident), tty, *command],
                                client.fds if verb == "exec" else None)
            for fd in client.fds:
                os.close(fd)
            client.fds = []
            if not ok:
                self.pending.pop(ident, None)
                self._send(client, proto.encode(T.ERROR, b"this box cannot start processes"))
        elif verb == "restart":
            raw = hello.get("command")
            command = [str(x) for x in raw] if isinstance(raw, list) and raw else list(
                self.record.command)
            self.restart_with = command
            self._ask_init(["K", "0", str(signal.SIGTERM)])
            self.kill_at = time.monotonic() + 10.0
            self._send(client, proto.encode(T.OK))
        elif verb == "signal":
            self._ask_init(["K", str(hello.get("id")), str(hello.get("signal", 15))])
            self._send(client, proto.encode(T.OK))

    def info(self) -> dict[str, object]:
        """What ``coopy ls`` and ``coopy shell ls`` show of a running box."""
        shells = [{"id": p.id, "command": p.command,
                   "clients": sum(1 for c in self.clients.values() if c.pty == p.id)}
                  for p in self.ptys.values() if p.kind == "shell" and p.status is None]
        return {"name": self.record.name, "state": "running",
                "clients": sum(1 for c in self.clients.values() if c.pty == 0),
                "shells": shells, "pid": os.getpid()}

    def _resize(self, pty: _Pty, rows: int, cols: int) -> None:
        if rows and cols:
            with contextlib.suppress(OSError):
                fcntl.ioctl(pty.master, termios.TIOCSWINSZ,
                            struct.pack("HHHH", rows, cols, 0, 0))

    def _replay(self, client: _Client, pty: _Pty) -> None:
        """The PTY's scrollback to a client that just attached (each chunk ≤ READ_BATCH:
        within a frame's limit)."""
        for chunk in list(pty.chunks):
            self._send(client, proto.header(T.DATA, len(chunk)), chunk)
        self._pace(pty)

    def _flush_master(self, pty: _Pty) -> None:
        while pty.to_master:
            try:
                n = os.write(pty.master, pty.to_master)
            except BlockingIOError:
                break
            except OSError:
                pty.to_master.clear()
                break
            del pty.to_master[:n]
        self._watch(pty)

    def _watch(self, pty: _Pty, events: int | None = None) -> None:
        """Register its master for what is wanted now: output unless drained or paused,
        writability while input waits."""
        if events is None:
            events = 0 if pty.drained else (
                (0 if pty.paused else selectors.EVENT_READ)
                | (selectors.EVENT_WRITE if pty.to_master else 0))
        if events == pty.events:
            return
        if not pty.events:
            self.sel.register(pty.master, events, ("pty", pty.id))
        elif not events:
            self.sel.unregister(pty.master)
        else:
            self.sel.modify(pty.master, events, ("pty", pty.id))
        pty.events = events

    def _pace(self, pty: _Pty) -> None:
        """Stop reading a PTY while a client of it is over HIGH_WATER; read it again when
        all are under LOW_WATER."""
        most = max((c.queued for c in self.clients.values() if c.pty == pty.id), default=0)
        paused = most >= HIGH_WATER or (pty.paused and most >= LOW_WATER)
        if paused != pty.paused:
            pty.paused = paused
            self._watch(pty)

    def _send(self, client: _Client, *parts: bytes) -> None:
        """Queue a frame (its parts are not copied) and send what the socket takes."""
        if client.sock.fileno() < 0:
            return
        if not client.out:
            client.since = time.monotonic()
        for part in parts:
            if part:
                client.out.append(part)
                client.queued += len(part)
        self._flush_client(client)

    def _flush_client(self, client: _Client, final: bool = False) -> None:
        if client.sock.fileno() < 0:
            return
        if final:
            client.sock.setblocking(True)
            client.sock.settimeout(2)
        out = client.out
        while out:
            bufs: list[bytes | memoryview] = list(itertools.islice(out, _SEND_MAX))
            if client.sent:
                bufs[0] = memoryview(bufs[0])[client.sent:]
            try:
                n = client.sock.sendmsg(bufs)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # gone (or, final, not taking it for 2 s): forget its queue
                out.clear()
                client.sent = client.queued = 0
                break
            client.since = time.monotonic()
            client.queued -= n
            n += client.sent
            while out and n >= len(out[0]):
                n -= len(out.popleft())
            client.sent = n
        writing = bool(out)
        if writing != client.writing and not final and client.sock.fileno() in self.sel.get_map():
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self.sel.modify(client.sock, want, ("client", 0))
            client.writing = writing
        if client.pty is not None and client.queued < LOW_WATER:
            pty = self.ptys.get(client.pty)
            if pty is not None and pty.paused:
                self._pace(pty)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if fd < 0:
            return
        if fd in self.sel.get_map():
            self.sel.unregister(client.sock)
        self.clients.pop(fd, None)
        for f in client.fds:
            os.close(f)
        client.fds = []
        client.sock.close()
        client.out.clear()
        client.sent = client.queued = 0
        pty = self.ptys.get(client.pty) if client.pty is not None else None
        if pty is not None and pty.paused:
            self._pace(pty)
