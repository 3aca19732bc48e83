"""The keeper: one small detached process per persistent box, no central daemon.

It starts the box (it is the parent of the box's processes, so a keeper killed with
SIGKILL takes its box with it: PDEATHSIG), holds the PTY master, a scrollback ring and
the log, and serves clients on a 0600 unix socket in the per-user runtime directory
(see :mod:`coopy.proto`).  Single-threaded: one selectors loop.  When the box's command
exits it records the status, tells attached clients, removes its socket and exits.
The box's directory (its upper layer) stays until ``coopy rm``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import signal
import socket
import struct
import termios
import time
from pathlib import Path

from coopy import proto
from coopy.proto import T
from coopy.spawn import Launch, Started, start
from coopy.state import BoxRecord, write_record

CLIENT_BUFFER_MAX = 8 << 20  # a client this far behind is dropped, not the box stalled


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = proto.Decoder()
        self.out = bytearray()
        self.attached = False
        self.greeted = False


class Keeper:
    """Serves one box until its command exits."""

    def __init__(self, started: Started, listener: socket.socket, record: BoxRecord,
                 box_dir: Path, scrollback: int, log_max: int) -> None:
        assert started.master is not None
        self.started = started
        self.master = started.master
        self.listener = listener
        self.record = record
        self.box_dir = box_dir
        self.scrollback = bytearray()
        self.scrollback_max = scrollback
        self.log_path = box_dir / "log"
        self.log_max = log_max
        self.log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND
                              | os.O_CLOEXEC, 0o600)
        self.clients: dict[int, _Client] = {}
        self.to_master = bytearray()
        self.sel = selectors.DefaultSelector()

    # ---- the loop ------------------------------------------------------------------

    def run(self) -> int:
        """Serve until the box ends; returns its status."""
        os.set_blocking(self.master, False)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.sel.register(self.master, selectors.EVENT_READ, "master")
        box_open = True
        while box_open:
            for key, events in self.sel.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "master":
                    if events & selectors.EVENT_READ and not self._from_master():
                        box_open = False
                    if events & selectors.EVENT_WRITE:
                        self._flush_master()
                else:
                    client = self.clients.get(key.fd)
                    if client is not None:
                        self._serve(client, events)
        status = self.started.wait()
        self.record = self.record._replace(state="exited", exit_status=status,
                                           ended=time.time())
        write_record(self.box_dir, self.record)
        for client in list(self.clients.values()):
            if client.attached or client.greeted:
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
        self.sel.register(sock, selectors.EVENT_READ, "client")

    def _from_master(self) -> bool:
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the box's last PTY slave is closed
                raise
            data = b""
        if not data:
            self.sel.unregister(self.master)
            return False
        self.scrollback += data
        if len(self.scrollback) > self.scrollback_max:
            del self.scrollback[: len(self.scrollback) - self.scrollback_max]
        self._log(data)
        frame = proto.encode(T.DATA, data)
        for client in list(self.clients.values()):
            if client.attached:
                self._send(client, frame)
        return True

    def _log(self, data: bytes) -> None:
        try:
            if os.fstat(self.log_fd).st_size + len(data) > self.log_max:
                # Rotate: one previous log is kept, so a chatty agent cannot fill the disk.
                os.replace(self.log_path, self.log_path.with_suffix(".1"))
                os.close(self.log_fd)
                self.log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND
                                      | os.O_CLOEXEC, 0o600)
            os.write(self.log_fd, data)
        except OSError:
            pass  # a full disk must not take the box down; the terminal still works

    # ---- clients -------------------------------------------------------------------

    def _serve(self, client: _Client, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._flush_client(client)
        if not events & selectors.EVENT_READ:
            return
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
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
            self._handle(client, frame)

    def _handle(self, client: _Client, frame: proto.Frame) -> None:
        if not client.greeted:
            hello = frame.json() if frame.type == T.HELLO else {}
            if hello.get("version") != proto.VERSION:
                self._send(client, proto.encode(
                    T.ERROR, f"this box's keeper speaks protocol {proto.VERSION}; "
                    "restart the box with this coopy".encode()))
                self._flush_client(client, final=True)
                self._drop(client)
                return
            client.greeted = True
            verb = hello.get("verb")
            if verb == "attach":
                client.attached = True
                self._resize(int(hello.get("rows", 0)), int(hello.get("cols", 0)))
                if self.scrollback:
                    self._send(client, proto.encode(T.DATA, bytes(self.scrollback)))
            elif verb == "info":
                self._send(client, proto.encode_json(T.INFO, self.info()))
            return
        match frame.type:
            case T.DATA if client.attached:
                self.to_master += frame.payload
                self._flush_master()
            case T.RESIZE:
                self._resize(*proto.unpack_resize(frame.payload))
            case T.DETACH:
                self._drop(client)
            case T.KILL:
                self.started.signal(proto.unpack_int(frame))
                self._send(client, proto.encode(T.OK))
            case _:
                self._send(client, proto.encode(T.ERROR, f"unexpected {frame.type.name}"
                                                .encode()))

    def info(self) -> dict[str, object]:
        """What ``coopy ls`` shows of a running box."""
        return {"name": self.record.name, "state": "running",
                "clients": sum(1 for c in self.clients.values() if c.attached),
                "pid": os.getpid()}

    def _resize(self, rows: int, cols: int) -> None:
        if rows and cols:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.master, termios.TIOCSWINSZ,
                            struct.pack("HHHH", rows, cols, 0, 0))

    def _flush_master(self) -> None:
        while self.to_master:
            try:
                n = os.write(self.master, self.to_master)
            except BlockingIOError:
                break
            except OSError:
                self.to_master.clear()
                break
            del self.to_master[:n]
        if self.master in self.sel.get_map():
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.to_master else 0)
            self.sel.modify(self.master, want, "master")

    def _send(self, client: _Client, frame: bytes) -> None:
        client.out += frame
        if len(client.out) > CLIENT_BUFFER_MAX:
            self._drop(client)
            return
        self._flush_client(client)

    def _flush_client(self, client: _Client, final: bool = False) -> None:
        if final:
            client.sock.setblocking(True)
            client.sock.settimeout(2)
        while client.out:
            try:
                n = client.sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                client.out.clear()
                break
            del client.out[:n]
        if client.sock.fileno() in self.sel.get_map() and not final:
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
            self.sel.modify(client.sock, want, "client")

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if fd in self.sel.get_map():
            self.sel.unregister(client.sock)
        self.clients.pop(fd, None)
        client.sock.close()


def launch_keeper(launch: Launch, record: BoxRecord, box_dir: Path, sock_path: Path,
                  scrollback: int, log_max: int) -> int:
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
            _keeper_main(launch, record, box_dir, sock_path, scrollback, log_max, wr)
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
                 scrollback: int, log_max: int, ready_fd: int) -> None:
    # Nothing of the caller's terminal: stdio to /dev/null, errors to keeper.log.
    null = os.open("/dev/null", os.O_RDWR)
    log = os.open(box_dir / "keeper.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    # Nothing else of the caller's either (its creation lock, its terminal's fds).
    os.closerange(3, ready_fd)
    os.closerange(ready_fd + 1, 65536)
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
    started = start(launch._replace(tty=True))
    from coopy.state import proc_start_time

    record = record._replace(state="running", keeper_pid=os.getpid(),
                             keeper_start=proc_start_time(os.getpid()),
                             started=time.time(), socket=str(sock_path))
    write_record(box_dir, record)
    os.write(ready_fd, f"ok {os.getpid()}\n".encode())
    os.close(ready_fd)
    try:
        Keeper(started, listener, record, box_dir, scrollback, log_max).run()
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
