"""The client side of a keeper: attach a terminal to a box, detach with a key.

Attaching replays the box's scrollback, then goes live: the terminal in raw mode,
keystrokes to the box, output to the screen, the window size sent on attach and on
SIGWINCH.  The detach key (Ctrl+] by default) leaves the box running; the terminal is
restored on every way out.  When the box's command exits, the client exits with its
status.

Lean on purpose: `coopy shell -c` pays for every import here (see coopy/boxfind.py), so
the socket is `_socket`'s (the socket module imports enum and selectors), and the
terminal code (coopy/term.py, itself lean) is imported only when stdin is a terminal.
"""

from __future__ import annotations

import os
import select
import struct
import time
from _socket import AF_UNIX, SCM_RIGHTS, SOCK_STREAM, SOL_SOCKET, socket

from coopy import proto
from coopy.boxfind import proc_start_time
from coopy.errors import BoxStateError, CoopyError
from coopy.proto import T

TYPE_CHECKING = False
if TYPE_CHECKING:
    from coopy.boxfind import Running
    from coopy.state import BoxRecord

DETACH_KEY = 0x1D  # Ctrl+]
_RECV = 1 << 20  # the keeper sends up to 256 KiB of output per frame
_IOV_MAX = 1024  # buffers per writev(2) (Linux's UIO_MAXIOV)
DETACH_WAIT_S = 2.0  # after DETACH, how long the keeper may take to let go of the terminal


def parse_detach_key(spec: str) -> int:
    """``ctrl-]`` / ``ctrl-a`` → the byte it sends."""
    spec = spec.strip().lower()
    if spec.startswith("ctrl-") and len(spec) == 6:
        return ord(spec[5].upper()) & 0x1F if spec[5] != "]" else 0x1D
    raise CoopyError(f"detach key {spec!r}: expected ctrl-<key>, e.g. ctrl-]")


def connect(record: BoxRecord | Running) -> socket:
    """A connection to the box's keeper; errors say what state the box is in."""
    if not record.can_attach():
        raise BoxStateError(f"box {record.name!r} is {record.state}, not running",
                            hint=f"`coopy` in {record.workspace} starts it again")
    sock = socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.connect(record.socket)
    except OSError as exc:
        sock.close()
        raise BoxStateError(f"cannot reach box {record.name!r}: {exc.strerror}",
                            hint="`coopy ls` shows whether it still runs") from exc
    return sock


def attach(record: BoxRecord | Running, detach_key: int = DETACH_KEY, *,
           verb: str = "attach", **hello: object) -> int:
    """Attach this terminal to a PTY of the box (the agent's, or a shell with
    ``verb="shell"``); its exit status, or 0 after a detach."""
    sock = connect(record)
    try:
        if not os.isatty(0):  # a pipe or a file: no raw mode, no window size
            sock.sendall(proto.hello(verb, rows=0, cols=0, **hello))
            return _loop(sock, -1, detach_key, record)
        from coopy.term import raw_mode, winch_pipe

        rows, cols = _size()
        if os.isatty(1):
            # The keeper writes the box's output to this terminal itself (a file
            # description of its own), one hop fewer than DATA frames through us.
            sock.sendmsg([proto.hello(verb, rows=rows, cols=cols, direct=True, **hello)],
                         [(SOL_SOCKET, SCM_RIGHTS, struct.pack("i", 1))])
        else:
            sock.sendall(proto.hello(verb, rows=rows, cols=cols, **hello))
        with raw_mode(0), winch_pipe() as sig_fd:
            return _loop(sock, sig_fd, detach_key, record)
    finally:
        sock.close()


def exec_in(record: BoxRecord | Running, command: list[str]) -> int:
    """Run COMMAND in the box without a PTY: pipes both ways, its exit status back.

    The box gets pipes, never this process's own fds (a terminal among them would let
    it reach the caller's terminal); their data is copied here.
    """
    sock = connect(record)
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]
    theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
    ours = {pipes[0][1]: None, pipes[1][0]: 1, pipes[2][0]: 2}
    try:
        sock.sendmsg([proto.hello("exec", command=command)],
                     [(SOL_SOCKET, SCM_RIGHTS, struct.pack(f"{len(theirs)}i", *theirs))])
        for fd in theirs:
            os.close(fd)
        theirs = []
        return _exec_loop(sock, pipes[0][1], ours, record.name)
    finally:
        for fd in theirs + [fd for fd in ours if fd >= 0]:
            try:
                os.close(fd)
            except OSError:
                pass  # closed on the way (stdin's pipe at EOF)
        sock.close()


def _exec_loop(sock: socket, stdin_w: int, ours: dict[int, int | None],
               name: str) -> int:
    decoder = proto.Decoder()
    reading = {fd for fd, dst in ours.items() if dst is not None}
    stdin_open = True
    status: int | None = None
    while status is None or reading:
        watch = [sock.fileno(), *reading] + ([0] if stdin_open else [])
        ready, _, _ = select.select(watch, [], [])
        if stdin_open and 0 in ready:
            data = os.read(0, 65536)
            if data:
                try:
                    _write_all(stdin_w, data)
                except BrokenPipeError:
                    data = b""
            if not data:
                stdin_open = False
                os.close(stdin_w)
                ours[stdin_w] = None
                del ours[stdin_w]
        for fd in list(reading):
            if fd in ready:
                data = os.read(fd, 65536)
                if data:
                    _write_all(ours[fd] or 1, data)
                else:
                    reading.discard(fd)
        if sock.fileno() in ready and status is None:
            data = sock.recv(65536)
            if not data:
                raise BoxStateError(f"box {name!r}: its keeper went away")
            for frame in decoder.feed(data):
                if frame.type == T.EXIT:
                    status = proto.unpack_int(frame)
                elif frame.type == T.ERROR:
                    os.write(2, f"coopy: {frame.payload.decode()}\n".encode())
    return status


def _size() -> tuple[int, int]:
    from coopy.term import get_winsize

    size = get_winsize(0)
    if size is None:
        return 0, 0
    rows, cols, _, _ = struct.unpack("HHHH", size)
    return rows, cols


def _loop(sock: socket, sig_fd: int, detach_key: int, record: BoxRecord | Running) -> int:
    decoder = proto.Decoder()
    stdin_open = True
    told = False  # the keeper sent an ERROR (then an EOF is no stall detach)
    name = record.name
    while True:
        watch = [sock.fileno()] + ([sig_fd] if sig_fd >= 0 else []) + ([0] if stdin_open else [])
        ready, _, _ = select.select(watch, [], [])
        if sig_fd in ready:
            os.read(sig_fd, 64)
            sock.sendall(proto.resize(*_size()))
        if 0 in ready:
            data = os.read(0, 65536)
            if not data:
                stdin_open = False  # input ended (a pipe): keep showing output
            elif detach_key in data:
                before = data[: data.index(detach_key)]
                if before:
                    sock.sendall(proto.encode(T.DATA, before))
                sock.sendall(proto.encode(T.DETACH))
                _wait_closed(sock)
                os.write(1, f"\r\n[detached from {name}: `coopy attach {name}` to come "
                            "back]\r\n".encode())
                return 0
            else:
                sock.sendall(proto.encode(T.DATA, data))
        if sock.fileno() in ready:
            data = sock.recv(_RECV)
            if not data and not told and proc_start_time(record.keeper_pid) == record.keeper_start:
                raise BoxStateError(f"box {name!r}: its keeper detached this client, which "
                                    "had taken no output for a while the box waited on it",
                                    hint=f"`coopy attach {name}` to come back")
            if not data:
                raise BoxStateError(f"box {name!r}: its keeper went away",
                                    hint="`coopy ls` shows what happened")
            output: list[memoryview] = []  # the DATA of this read, written with one writev
            for frame in decoder.stream(data):
                if isinstance(frame, memoryview):
                    output.append(frame)
                    continue
                _write_all(1, *output)
                output = []
                if frame.type == T.EXIT:
                    return proto.unpack_int(frame)
                if frame.type == T.ERROR:
                    # said, then the keeper sends EXIT (or closes: the error above)
                    told = True
                    os.write(2, f"\r\ncoopy: {frame.payload.decode()}\r\n".encode())
            _write_all(1, *output)


def _wait_closed(sock: socket, timeout: float = DETACH_WAIT_S) -> None:
    """Until the keeper has closed the connection after a DETACH: it closes its copy of
    this terminal first, so nothing of the box reaches the terminal after we return."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and select.select([sock], [], [], left)[0]:
        try:
            if not sock.recv(_RECV):
                return
        except OSError:
            return


def _write_all(fd: int, *chunks: bytes | memoryview) -> None:
    """Write every chunk, in order, with as few writev(2) calls as the fd allows."""
    views = [memoryview(c) for c in chunks if c]
    while views:
        n = os.writev(fd, views[:_IOV_MAX])
        while views and n >= len(views[0]):
            n -= len(views.pop(0))
        if n:
            views[0] = views[0][n:]
