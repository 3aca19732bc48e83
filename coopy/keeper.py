"""The keeper: one small detached process per persistent box, no central daemon.

The keeper process (started by :func:`coopy.lifecycle.launch_keeper`) is the parent of
the box's processes, so a keeper killed with SIGKILL takes its box with it (PDEATHSIG).
It is two processes: this module, the box's parent, which waits for the box and keeps its
record; and its child coopy-keeper (native/keeper/), which holds the PTY masters, a
scrollback ring and the log of each, and serves the clients on the box's 0600 unix socket
(:mod:`coopy.proto`).  The relay is C because every 4 KiB a PTY gives passes through it:
in Python its per-chunk work held the relay to about half of a raw PTY (docs/design.md).
When the box's command exits, this side tells the child the status (the child tells the
clients, having read what the terminals still held), records it and removes the socket.
The box's directory (its upper layer) stays until ``coopy rm``.

The contract with the child (argv, fds, the link's messages) is written at the top of
native/keeper/keeper.h.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path

from coopy.spawn import Started
from coopy.state import BoxRecord, write_record

END_WAIT_S = 10.0  # how long the child may take to tell the clients and exit


def relay_path() -> str:
    """The native half of the keeper."""
    return str(Path(__file__).parent / "libexec" / "coopy-keeper")


def relay_argv(started: Started, listener: socket.socket, link: socket.socket,
               record: BoxRecord, box_dir: Path, scrollback: int, log_max: int,
               auto_restart: bool, restart_delay: float) -> list[str]:
    """coopy-keeper's command line (its contract: native/keeper/keeper.h)."""
    assert started.master is not None
    control = started.control.fileno() if started.control is not None else -1
    return [relay_path(), str(listener.fileno()), str(control), str(link.fileno()),
            str(started.master), str(started.init_pidfd), str(scrollback), str(log_max),
            "1" if auto_restart else "0", str(round(restart_delay * 1000)), str(box_dir),
            record.name, "--", *record.command]


def serve(started: Started, listener: socket.socket, record: BoxRecord, box_dir: Path,
          scrollback: int, log_max: int, auto_restart: bool = False,
          restart_delay: float = 1.0) -> int:
    """Serve the box until it ends; returns its status (and records it)."""
    assert started.master is not None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    argv = relay_argv(started, listener, theirs, record, box_dir, scrollback, log_max,
                      auto_restart, restart_delay)
    passed = [listener.fileno(), theirs.fileno(), started.master, started.init_pidfd]
    if started.control is not None:
        passed.append(started.control.fileno())
    relay = _spawn(argv, passed)
    # The child holds them now; the init pidfd stays for Started.wait.
    theirs.close()
    listener.close()
    os.close(started.master)
    if started.control is not None:
        started.control.close()
    box = os.pidfd_open(started.pid)  # readable when the box has ended
    relay_fd = os.pidfd_open(relay)
    watched: list[int | socket.socket] = [box, ours, relay_fd]
    try:
        while True:
            ready = select.select(watched, [], [])[0]
            if ours in ready:
                record, alive = _from_relay(ours, record, box_dir)
                if not alive:
                    watched.remove(ours)  # the relay is gone: its pidfd says so too
            if box in ready:
                break
            if relay_fd in ready:
                # The relay died (a bug, or killed): nobody can reach the box any more.
                print("keeper: coopy-keeper ended before the box; ending the box",
                      file=sys.stderr, flush=True)
                started.signal(signal.SIGKILL)
                select.select([box], [], [], END_WAIT_S)
                break
        status = started.wait()
        with contextlib.suppress(OSError):
            ours.send(f"end\0{status}\0".encode())
        if not select.select([relay_fd], [], [], END_WAIT_S)[0]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(relay, signal.SIGKILL)
        alive = True
        while alive and select.select([ours], [], [], 0)[0]:  # a last record change
            record, alive = _from_relay(ours, record, box_dir)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(relay, 0)
    finally:
        os.close(box)
        os.close(relay_fd)
        ours.close()
    write_record(box_dir, record._replace(state="exited", exit_status=status,
                                          ended=time.time()))
    return status


def _spawn(argv: list[str], fds: list[int]) -> int:
    """Start coopy-keeper with these fds inherited (at the same numbers)."""
    for fd in fds:
        os.set_inheritable(fd, True)
    try:
        return os.posix_spawn(argv[0], argv, dict(os.environ))
    finally:
        for fd in fds:
            os.set_inheritable(fd, False)


def _from_relay(link: socket.socket, record: BoxRecord,
                box_dir: Path) -> tuple[BoxRecord, bool]:
    """A message from coopy-keeper: the agent's new command (`coopy restart`).  The
    record as it is now, and False once the link is closed."""
    try:
        msg = link.recv(65536)
    except OSError:
        msg = b""
    fields = msg.rstrip(b"\0").split(b"\0")
    if fields[0] == b"command":
        record = record._replace(command=tuple(f.decode(errors="surrogateescape")
                                               for f in fields[1:]))
        write_record(box_dir, record)
    return record, bool(msg)
