"""User namespaces with a full id map: writing the maps, and short-lived namespaces.

``write_maps`` serves every box (spawn.py step 2); ``make_userns`` gives boxes of root a
namespace for id-mapped mounts; ``run_in_userns`` lets an ordinary user remove or unpack
files owned by its subordinate ids, as root of a namespace with the box's map.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from coopy import syscalls as sc
from coopy.errors import HostError
from coopy.idmap import IdMap, IdRange
from coopy.syscalls import CloneFlag as CL


def write_maps(pid: int, idmap: IdMap, newuidmap: str | None, newgidmap: str | None) -> None:
    """Write /proc/PID/{uid,gid}_map: directly when allowed, else through newuidmap.

    Root may write any map.  An ordinary user may write a map of its own id only, and
    only after setgroups is denied (user_namespaces(7)); every other map goes through the
    setuid newuidmap/newgidmap, which check /etc/subuid and /etc/subgid.
    """
    if os.getuid() == 0 or not idmap.subordinate:
        try:
            if os.getuid() != 0:
                _write_proc(pid, "setgroups", "deny")
            _write_proc(pid, "uid_map", "".join(r.line() + "\n" for r in idmap.uids))
            _write_proc(pid, "gid_map", "".join(r.line() + "\n" for r in idmap.gids))
        except OSError as exc:
            raise HostError(
                f"cannot write the box's id map: {exc.strerror}",
                hint="run `coopy doctor` to check user namespace support",
            ) from exc
        return
    if newuidmap is None or newgidmap is None:
        raise HostError(
            "newuidmap/newgidmap not found: they are needed to map your subordinate ids",
            hint="install them (Debian/Ubuntu: sudo apt install uidmap)",
        )
    jobs = [
        (newuidmap, _spawn_map(newuidmap, pid, idmap.uids)),
        (newgidmap, _spawn_map(newgidmap, pid, idmap.gids)),
    ]
    for tool, (child, err_fd) in jobs:
        message = read_all(err_fd).decode(errors="replace").strip()
        os.close(err_fd)
        _, status = os.waitpid(child, 0)
        if status != 0:
            raise HostError(
                f"{os.path.basename(tool)} failed: {message or f'status {status}'}",
                hint="check your entries in /etc/subuid and /etc/subgid and that "
                f"{tool} is setuid root (`coopy doctor` checks both)",
            )


def _spawn_map(tool: str, pid: int, ranges: tuple[IdRange, ...]) -> tuple[int, int]:
    args = [tool, str(pid)]
    for r in ranges:
        args += [str(r.inside), str(r.outside), str(r.length)]
    rd, wr = os.pipe2(os.O_CLOEXEC)
    try:
        child = os.posix_spawn(
            tool, args, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
            file_actions=[(os.POSIX_SPAWN_DUP2, wr, 2), (os.POSIX_SPAWN_DUP2, wr, 1)],
        )
    finally:
        os.close(wr)
    return child, rd


def _write_proc(pid: int, name: str, text: str) -> None:
    fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _mapped_child(idmap: IdMap, newuidmap: str | None, newgidmap: str | None,
                  in_child: Callable[[], None], in_parent: Callable[[int], None]) -> int:
    """Fork a child into a new user namespace with ``idmap``; return its exit status.

    The parent writes the maps, then runs ``in_parent(pid)`` (the namespace exists and
    is mapped), then lets the child go on to ``in_child()``.
    """
    rd, wr = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(wr)
            sc.unshare(CL.CLONE_NEWUSER)
            os.read(rd, 1)  # the maps are written
            in_child()
            code = 0
        finally:
            os._exit(code)
    os.close(rd)
    try:
        # The child may not have unshared yet: wait until its user ns differs from ours.
        ours = os.stat("/proc/self/ns/user").st_ino
        for _ in range(100000):
            if os.stat(f"/proc/{pid}/ns/user").st_ino != ours:
                break
            os.sched_yield()
        write_maps(pid, idmap, newuidmap, newgidmap)
        in_parent(pid)
    finally:
        os.write(wr, b"x")
        os.close(wr)
        _, status = os.waitpid(pid, 0)
    return status


def make_userns(idmap: IdMap) -> int:
    """A user namespace with ``idmap`` and no process in it, for id-mapped mounts (root)."""
    fds: list[int] = []
    _mapped_child(idmap, None, None, lambda: None,
                  lambda pid: fds.append(os.open(f"/proc/{pid}/ns/user",
                                                 os.O_RDONLY | os.O_CLOEXEC)))
    return fds[0]


def run_in_userns(idmap: IdMap, fn: Callable[[], None], newuidmap: str | None,
                  newgidmap: str | None) -> None:
    """Run ``fn`` as root of a fresh user namespace with ``idmap`` (in a child).

    Used to remove files a rootless box left owned by subordinate ids: the caller cannot
    delete them on the host, box root (with the same map) can.
    """

    def as_root() -> None:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        fn()

    status = _mapped_child(idmap, newuidmap, newgidmap, as_root, lambda pid: None)
    if status != 0:
        raise OSError(f"removing files from inside a user namespace failed ({status})")


def read_all(fd: int) -> bytes:
    """Everything readable from ``fd`` until EOF."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
