"""Starting a box: the fork, the namespaces, the id-map handshake, the plan, exec of init.

Process tree (docs/design.md, "Processes")::

    coopy (P, host) ── A (userns, waits) ── B = PID 1: applies the plan, execs coopy-init
                                                    └── the command

Why a forked Python child and not a C helper does the namespace work: the plan is
applied by Python (one interpreter, ``coopy.mount``), and a child forked from the
single-threaded CLI is single-threaded, which unshare(CLONE_NEWUSER) requires.  Doing it
in the fork saves a second interpreter start (~6 ms) on every box.  The C helper,
coopy-init, is what stays in the box: PID 1.

Protocol between P and its children, numbered as in the code below:

0. With a cgroup (Launch.cgroup, made by coopy/cgroup.py), A is born in it (clone3
   CLONE_INTO_CGROUP), or, where that is refused, A's first act is to write itself into
   its cgroup.procs: every process of the box starts there.
1. P forks A.  A: PDEATHSIG, unshare(CLONE_NEWUSER), sends ``U``.
2. P writes A's uid/gid maps (newuidmap/newgidmap, or directly when it may), clones
   the host-side sources for boxes of root (id-mapped through A's user namespace), and
   sends ``M`` with those fds.
3. A: becomes root of its namespace, unshares mount/UTS/IPC/PID/cgroup(/net), forks B
   and sends ``B<pid>``; then waits for B and exits with its status.
4. B (PID 1): applies the plan, opens the box's PTY (sends ``T`` with its master),
   execs coopy-init from a sealed memfd.  With a private network, P starts the NAT
   helper as soon as it has B's pid (4a), in parallel with the plan, and B waits for
   ``N`` (the helper is ready) before the exec (4b).  The error pipe is CLOEXEC: EOF means exec
   happened; any failure before is written to it as JSON and B exits 125.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from coopy import syscalls as sc
from coopy.errors import CoopyError, HostError, SetupError
from coopy.idmap import IdMap
from coopy.mount import Trees, apply_plan, clone_sources
from coopy.ops import Op
from coopy.syscalls import CloneFlag as CL
from coopy.userns import make_userns, read_all, write_maps

if TYPE_CHECKING:
    from coopy.net import Helper, NetSetup

INIT_NAME = "coopy-init"
_TIOCSPTLCK = 0x40045431  # not in Python's termios module
_TIOCGPTPEER = 0x5441
_MAX_FDS = 200  # SCM_RIGHTS carries at most 253 fds per message


class Launch(NamedTuple):
    """Everything needed to start one box, resolved and validated."""

    plan: tuple[Op, ...]
    argv: Sequence[str]
    env: dict[str, str]
    cwd: str
    hostname: str
    init_path: str
    idmap: IdMap | None  # None: no user namespace (--userns=host, root only)
    workspace_idmap: IdMap | None = None  # boxes of root running --user: a swap map
    clone_in_parent: bool = False  # boxes of root: P clones host-side sources
    userxattr: bool = True
    box_dir: str = ""  # the box's state dir; P makes it the children's cwd
    attach_at: str = "root"  # relative to box_dir: where the new root is attached
    net: str = "none"
    box_uid: int = 0
    box_gid: int = 0
    tty: bool = False
    stdio: tuple[int, int, int] = (0, 1, 2)
    newuidmap: str | None = None
    newgidmap: str | None = None
    seccomp: bytes | None = None  # the BPF program coopy-init installs (coopy/seccomp.py)
    caps: int | None = None  # capabilities kept in the bounding set (coopy/caps.py)
    nproc: int | None = None  # RLIMIT_NPROC, set inside the box's user namespace
    nofile: int | None = None
    memory: int | None = None  # RLIMIT_DATA per process (when no cgroup holds memory)
    cgroup: str | None = None  # made by coopy/cgroup.py: the cgroup A is born in (step 0)
    control: bool = False  # keep a channel to coopy-init for shells and exec (keeper)
    network: NetSetup | None = None  # private network: the NAT helper P starts (coopy.net)


class Started:
    """A running box: A's pid (the one to wait for), B's pidfd, the PTY master if any."""

    def __init__(self, pid: int, init_pidfd: int, master: int | None,
                 control: socket.socket | None = None, helper: Helper | None = None) -> None:
        self.pid = pid
        self.init_pidfd = init_pidfd
        self.master = master
        self.control = control  # SOCK_SEQPACKET to coopy-init (Launch.control)
        self.helper = helper  # the private network's NAT helper, stopped with the box

    def wait(self) -> int:
        """Wait for the box to end; its command's status as a shell reports it."""
        _, status = os.waitpid(self.pid, 0)
        os.close(self.init_pidfd)
        if self.helper is not None:
            self.helper.stop()
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the box's init, which forwards it to the command."""
        try:
            sc.pidfd_send_signal(self.init_pidfd, sig)
        except ProcessLookupError:
            pass  # already gone: the wait will tell


def start(launch: Launch) -> Started:
    """Start a box; return once its command has been exec'd (or raise why not)."""
    init_fd = _sealed_copy(launch.init_path)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
    pid = procs = -1
    try:
        os.chdir(launch.box_dir)  # inherited by A and B; see Trees
        if launch.cgroup:
            from coopy.cgroup import fork_into, join

            pid, procs = fork_into(launch.cgroup)  # 0
        else:
            pid = os.fork()
    finally:
        if pid != 0:
            os.fchdir(cwd)
            os.close(cwd)
    if pid == 0:  # ------------------------------------------------------------- A
        try:
            if procs >= 0:
                join(procs, launch.cgroup)  # 0
            ours.close()
            os.close(err_r)
            _child_a(launch, theirs, err_w, init_fd)  # exec's coopy-init -W on success
        except BaseException as exc:  # noqa: BLE001 - reported, then the child exits
            _report(err_w, exc)
        finally:
            os._exit(125)
    # ------------------------------------------------------------------------------- P
    theirs.close()
    os.close(err_w)
    os.close(init_fd)
    init_pidfd = -1
    master: int | None = None
    helper: Helper | None = None
    try:
        msg, _ = _recv(ours)
        if launch.idmap is not None and msg == b"U":
            payload, fds = _parent_maps(launch, pid)
            try:
                if fds:
                    socket.send_fds(ours, [b"M" + payload], fds)
                else:
                    ours.send(b"M")
            finally:
                for fd in fds:
                    os.close(fd)
            msg, _ = _recv(ours)
        if msg.startswith(b"B"):
            init_pidfd = os.pidfd_open(int(msg[1:]))
            if launch.network is not None and launch.network.backend == "proxy":
                from coopy.net import start_proxy

                msg, fds = _recv(ours)  # "L": the proxy's socket in the box's netns
                if msg == b"L" and fds:
                    try:
                        helper = start_proxy(launch.network, fds[0])
                    finally:
                        os.close(fds[0])
            elif launch.network is not None:  # 4a: in parallel with B's plan
                from coopy.net import start_helper

                helper = start_helper(launch.network, int(msg[1:]))
            msg, fds = _recv(ours)
            if msg == b"T" and fds:
                master = fds[0]
            if launch.network is not None and msg in (b"T", b"-"):
                if helper is None:
                    raise SetupError("the box's network proxy could not be started")
                helper.wait_ready()
                ours.send(b"N")  # 4b
        error = read_all(err_r)
        if error:
            raise _decode(error)
        if init_pidfd < 0:
            raise SetupError("the box's setup process ended without a word")
    except BaseException:
        if helper is not None:
            helper.stop()
        if master is not None:
            os.close(master)
        if init_pidfd >= 0:
            os.close(init_pidfd)
        if launch.control:
            ours.close()
        _reap(pid)
        raise
    finally:
        os.close(err_r)
        if not launch.control:
            ours.close()
    return Started(pid, init_pidfd, master, ours if launch.control else None, helper)


# ---- P's side ----------------------------------------------------------------------------


def _parent_maps(launch: Launch, pid: int) -> tuple[bytes, list[int]]:
    """Step 2: write A's maps; for boxes of root, clone and id-map the sources."""
    assert launch.idmap is not None
    write_maps(pid, launch.idmap, launch.newuidmap, launch.newgidmap)
    if not launch.clone_in_parent:
        return b"", []
    userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    helper = None
    try:
        if launch.workspace_idmap is not None:
            helper = make_userns(launch.workspace_idmap)
            userns_for_binds = helper
        else:
            userns_for_binds = userns
        trees = clone_sources(launch.plan, userns_for_binds, launch.box_dir)
    finally:
        os.close(userns)
        if helper is not None:
            os.close(helper)
    # The message names the fds that come with it, in order.
    keys, fds = list(trees), list(trees.values())
    if len(fds) > _MAX_FDS:
        for fd in fds:
            os.close(fd)
        raise SetupError(f"too many host sources to pass into the box ({len(fds)})")
    return "\0".join(keys).encode(), fds  # paths hold no NUL


# ---- A and B -----------------------------------------------------------------------------


def _child_a(launch: Launch, sock: socket.socket, err_w: int, init_fd: int) -> None:
    parent = os.getppid()
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(125)
    trees = Trees(launch.box_dir)
    if launch.idmap is not None:
        try:
            sc.unshare(CL.CLONE_NEWUSER)  # 1
        except OSError as exc:
            raise HostError(
                f"cannot create a user namespace: {exc.strerror}",
                hint="user namespaces are off or restricted on this host; "
                "`coopy doctor` names the sysctl or AppArmor setting to change",
            ) from exc
        sock.send(b"U")
        msg, fds = _recv(sock)  # 2
        if not msg.startswith(b"M"):
            os._exit(125)
        if fds:
            keys = msg[1:].decode().split("\0")
            trees = Trees(launch.box_dir, dict(zip(keys, fds, strict=True)))
        if launch.idmap.to_host_uid(0) is not None:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            # A change of credentials clears the parent-death signal (prctl(2)): set it
            # again, and make sure the parent did not die in between.
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(125)
            # The same change made A (and B, forked from it) undumpable, so /proc/B/ns
            # would be closed to the network helper (pasta drops CAP_SYS_PTRACE before
            # joining).  B is dumpable anyway once it execs coopy-init.
            sc.prctl(sc.PR_SET_DUMPABLE, 1)
    flags = CL.CLONE_NEWNS | CL.CLONE_NEWUTS | CL.CLONE_NEWIPC | CL.CLONE_NEWPID
    flags |= CL.CLONE_NEWCGROUP
    if launch.net != "host":
        flags |= CL.CLONE_NEWNET
    sc.unshare(flags)  # 3
    # B and A share the socket to P: B may speak only after A has said ``B<pid>`` (B's
    # first message, the allow proxy's ``L``, could otherwise overtake it).
    gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # ------------------------------------------------------------- B
        try:
            os.close(gate_w)
            os.read(gate_r, 1)
            os.close(gate_r)
            _child_b(launch, sock, trees, init_fd)
        except BaseException as exc:  # noqa: BLE001 - reported, then PID 1 exits
            _report(err_w, exc)
        finally:
            os._exit(125)
    os.close(gate_r)
    sock.send(b"B%d" % pid)
    os.write(gate_w, b"x")
    os.close(gate_w)
    sock.close()
    os.close(err_w)
    for fd in trees.trees.values():
        os.close(fd)
    # A only waits; B's status is the box's.  Signals from the terminal go to P.  It
    # becomes coopy-init in wait mode so that no Python interpreter (~13 MB) stays
    # around for the box's life; PDEATHSIG and the ignored SIGINT survive the exec.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.execve(init_fd, ["coopy-wait", "-W"], {})


def _child_b(launch: Launch, sock: socket.socket, trees: Trees, init_fd: int) -> None:
    parent = os.getppid()
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(125)
    sc.sethostname(launch.hostname)
    if launch.net != "host":
        from coopy.net import block_routes, bring_up_loopback

        bring_up_loopback()
        if launch.network is not None:
            block_routes(launch.network.blocked)
            if launch.network.backend == "proxy":
                from coopy.net import proxy_listener

                listener = proxy_listener()
                socket.send_fds(sock, [b"L"], [listener.fileno()])
                listener.close()
    apply_plan(launch.plan, trees, userxattr=launch.userxattr, attach_at=launch.attach_at)
    try:
        os.chdir(launch.cwd)
    except OSError as exc:
        raise SetupError(f"cannot enter {launch.cwd} in the box: {exc.strerror}") from exc
    if launch.tty:
        master, slave = _open_pty()
        socket.send_fds(sock, [b"T"], [master])  # 4
        os.close(master)
        stdio = (slave, slave, slave)
    else:
        sock.send(b"-")
        stdio = launch.stdio
    if launch.network is not None and sock.recv(1) != b"N":
        os._exit(125)  # the network helper failed: P reports why
    for target, fd in enumerate(stdio):
        os.dup2(fd, target, inheritable=True)
    filter_fd = None
    if launch.seccomp:
        # A pipe holds the program (a few KiB, well under the pipe buffer); init reads
        # it before closing every inherited fd.
        filter_fd, wr = os.pipe()
        os.write(wr, launch.seccomp)
        os.close(wr)
        os.set_inheritable(filter_fd, True)
    control_fd = None
    if launch.control:
        control_fd = sock.fileno()
        os.set_inheritable(control_fd, True)
    os.execve(init_fd, build_init_argv(launch, filter_fd, control_fd), launch.env)


def build_init_argv(launch: Launch, filter_fd: int | None = None,
                    control_fd: int | None = None) -> list[str]:
    """coopy-init's command line (its contract is at the top of native/coopy-init.c)."""
    argv = [INIT_NAME]
    if control_fd is not None:
        argv += ["-k", str(control_fd)]
    if launch.caps is not None:
        argv += ["-c", f"{launch.caps:x}"]
    if filter_fd is not None:
        argv += ["-s", str(filter_fd)]
    if launch.nproc is not None:
        argv += ["-p", str(launch.nproc)]
    if launch.nofile is not None:
        argv += ["-f", str(launch.nofile)]
    if launch.memory is not None:
        argv += ["-m", str(launch.memory)]
    if launch.box_uid != 0 or launch.box_gid != 0:
        argv += ["-u", str(launch.box_uid), "-g", str(launch.box_gid)]
    if launch.tty:
        argv.append("-t")
    return argv + ["--", *launch.argv]


def _open_pty() -> tuple[int, int]:
    """A PTY of the box's own devpts instance, so `tty` inside names /dev/pts/N."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))  # unlockpt(3)
    # TIOCGPTPEER (4.13+) opens the slave through the master: no path lookup to race.
    slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    return master, slave


def _sealed_copy(path: str) -> int:
    """coopy-init copied into a sealed memfd: the box can never write to the host's file.

    PID 1's executable is reachable from the box as /proc/1/exe; runc's CVE-2019-5736 was
    a container overwriting the host binary through it.  A sealed memfd has no file
    behind it.
    """
    try:
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise HostError(
            f"cannot open coopy's box init {path}: {exc.strerror}",
            hint="reinstall coopy (`pip install` builds its native helpers; a C compiler "
            "is needed)",
        ) from exc
    fd = os.memfd_create(INIT_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        size = os.fstat(src).st_size
        while size > 0:
            n = os.sendfile(fd, src, None, size)
            if n == 0:
                break
            size -= n
        fcntl.fcntl(
            fd, fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE,
        )
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.close(src)
    return fd


# ---- framing helpers ---------------------------------------------------------------------


def _recv(sock: socket.socket) -> tuple[bytes, list[int]]:
    msg, fds, _, _ = socket.recv_fds(sock, 65536, _MAX_FDS)
    return msg, fds


def _report(err_w: int, exc: BaseException) -> None:
    """Write a child's failure to the error pipe as JSON (read by P, see _decode)."""
    if isinstance(exc, CoopyError):
        data = {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
    elif isinstance(exc, OSError):
        data = {"type": "SetupError", "message": str(exc), "hint": None}
    elif isinstance(exc, SystemExit):
        return
    else:
        data = {"type": "SetupError", "message": f"{type(exc).__name__}: {exc}", "hint": None}
    import json

    try:
        os.write(err_w, json.dumps(data).encode())
    except OSError:
        pass  # the parent is gone; nobody to tell


def _decode(raw: bytes) -> CoopyError:
    import json

    try:
        data = json.loads(raw)
    except ValueError:
        return SetupError(raw.decode(errors="replace"))
    cls = {"HostError": HostError}.get(data.get("type"), SetupError)
    return cls(data.get("message", "?"), data.get("hint"))


def _reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
