"""The caller's terminal and the box's: raw mode, window size, and the relay between them.

The box never gets the caller's terminal: with a TTY on stdin it gets a PTY of its own
(opened in its own devpts, see :mod:`coopy.spawn`) and this module copies bytes both
ways; without one, stdin is passed as it is (a pipe or a file) and any of stdout/stderr
that is a terminal is relayed through a pipe.  So no ioctl from the box (TIOCSTI,
TIOCLINUX, TIOCSWINSZ…) can reach the caller's terminal, whatever the seccomp filter.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import termios
import tty

# No contextlib, collections.abc or signal module: `coopy shell` at a terminal imports
# this, and they cost ~8 ms of its start (signal wraps every constant in an enum).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
    from types import TracebackType
else:
    import _signal as signal  # the C module under `signal`: the same calls, plain ints

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
_CHUNK = 65536


def get_winsize(fd: int) -> bytes | None:
    """The window size of terminal ``fd`` as a packed struct winsize, or None."""
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


def set_winsize(fd: int, size: bytes | None) -> None:
    """Apply a packed winsize to the PTY master ``fd`` (the box gets SIGWINCH)."""
    if size is not None and struct.unpack("HHHH", size)[:2] != (0, 0):
        try:
            fcntl.ioctl(fd, termios.TIOCSWINSZ, size)
        except OSError:
            pass  # the box is gone; the relay ends on its own


class raw_mode:  # lower case: used as a function, `with raw_mode(fd):`
    """Put terminal ``fd`` in raw mode; restore it exactly on every way out."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[int | list[bytes | int]] | None = None

    def __enter__(self) -> None:
        try:
            saved = termios.tcgetattr(self.fd)
        except termios.error:
            return  # not a terminal
        try:
            tty.setraw(self.fd, termios.TCSANOW)
        except BaseException:
            termios.tcsetattr(self.fd, termios.TCSAFLUSH, saved)
            raise
        self.saved = saved

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSAFLUSH, self.saved)


class signal_pipe:  # lower case: used as a function, `with signal_pipe(sigs) as fd:`
    """A non-blocking fd that yields one byte per signal received (the self-pipe trick)."""

    def __init__(self, signals: tuple[int, ...]) -> None:
        self.signals = signals

    def __enter__(self) -> int:
        self.rd, self.wr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.old = {s: signal.signal(s, lambda *_: None) for s in self.signals}
        self.old_fd = signal.set_wakeup_fd(self.wr, warn_on_full_buffer=False)
        return self.rd

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        signal.set_wakeup_fd(self.old_fd)
        for s, h in self.old.items():
            signal.signal(s, h)
        os.close(self.rd)
        os.close(self.wr)


def winch_pipe() -> signal_pipe:
    """:class:`signal_pipe` for SIGWINCH (a client's window size changed)."""
    return signal_pipe((signal.SIGWINCH,))


class Relay:
    """Copies bytes between fds until the box's side closes, forwarding signals.

    ``pairs`` are (source, destination) fds; a PTY master appears in two pairs (in and
    out).  Writes are buffered and non-blocking, so a box that does not read its input
    never stalls its output.  ``box_sources`` are the sources whose EOF ends the relay.
    """

    def __init__(
        self,
        pairs: list[tuple[int, int]],
        *,
        box_sources: set[int],
        on_signal: Callable[[int], None],
        master: int | None = None,
        winsize_from: int | None = None,
    ) -> None:
        self.routes = dict(pairs)
        self.box_sources = box_sources
        self.on_signal = on_signal
        self.master = master
        self.winsize_from = winsize_from
        self.pending: dict[int, bytearray] = {dst: bytearray() for _, dst in pairs}
        self.open_src = {src for src, _ in pairs}

    def run(self, done_fd: int | None = None) -> None:
        """Relay until every box source is at EOF and, if given, ``done_fd`` is readable."""
        signals = FORWARDED + ((signal.SIGWINCH,) if self.master is not None else ())
        # O_NONBLOCK is a property of the open file description, which the caller's
        # shell shares: it is restored on the way out, whatever happens.
        blocking = {dst: os.get_blocking(dst) for dst in self.pending}
        try:
            for dst in self.pending:
                os.set_blocking(dst, False)
            self._loop(signals, done_fd)
            for dst in self.pending:
                self._drain(dst)
        finally:
            for dst, was in blocking.items():
                try:
                    os.set_blocking(dst, was)
                except OSError:
                    pass  # closed under us: nothing to restore

    def _loop(self, signals: tuple[int, ...], done_fd: int | None) -> None:
        with signal_pipe(signals) as sig_fd:
            done = done_fd is None
            while not done or self.box_sources & self.open_src:
                poll = select.poll()
                events: dict[int, int] = {sig_fd: select.POLLIN}
                if not done and done_fd is not None:
                    events[done_fd] = select.POLLIN
                for src in self.open_src:
                    if not self.pending[self.routes[src]]:  # back-pressure
                        events[src] = events.get(src, 0) | select.POLLIN
                for dst, buf in self.pending.items():
                    if buf:
                        events[dst] = events.get(dst, 0) | select.POLLOUT
                for fd, ev in events.items():
                    poll.register(fd, ev)
                for fd, ev in poll.poll():
                    if fd == sig_fd:
                        self._signals(sig_fd)
                        continue
                    if fd == done_fd and not done:
                        done = True
                        continue
                    if ev & select.POLLOUT or (ev & (select.POLLERR | select.POLLHUP)
                                               and fd in self.pending and fd not in self.open_src):
                        self._flush(fd)
                    if fd in self.open_src and ev & (select.POLLIN | select.POLLHUP
                                                     | select.POLLERR):
                        self._read(fd)

    def _signals(self, sig_fd: int) -> None:
        try:
            data = os.read(sig_fd, 64)
        except BlockingIOError:
            return
        for sig in data:
            if sig == signal.SIGWINCH and self.master is not None:
                if self.winsize_from is not None:
                    set_winsize(self.master, get_winsize(self.winsize_from))
            else:
                self.on_signal(sig)

    def _read(self, src: int) -> None:
        try:
            data = os.read(src, _CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the PTY's last slave closed
                raise
            data = b""
        if not data:
            self.open_src.discard(src)
            return
        self.pending[self.routes[src]] += data
        self._flush(self.routes[src])

    def _flush(self, dst: int) -> None:
        buf = self.pending[dst]
        while buf:
            try:
                n = os.write(dst, buf)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.EPIPE):
                    raise
                buf.clear()  # the reader is gone: drop what it will never read
                return
            del buf[:n]

    def _drain(self, dst: int) -> None:
        buf = self.pending[dst]
        if not buf:
            return
        try:
            os.set_blocking(dst, True)
            while buf:
                del buf[: os.write(dst, buf)]
        except OSError:
            buf.clear()
