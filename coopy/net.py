"""Box networking: the modes, the user-mode NAT helper, published ports, DNS.

Modes (docs/design.md, "Networking"):

* ``none``: own network namespace, ``lo`` up (one ioctl, ~0.2 ms), nothing else.
* ``private`` (the default): own namespace; outbound traffic through pasta or
  slirp4netns, a user-mode NAT running on the host side as the caller.  Both are probed;
  neither silently widens to ``host``.  The helper is started by the process that starts
  the box as soon as the box's namespaces exist, in parallel with the mount plan, and
  the box's command is exec'd only once it is ready.  It dies with the box: its parent
  (``coopy run`` or the box's keeper) stops it when the box ends and the kernel stops it
  (PDEATHSIG) if the parent is killed.
* ``host``: the host's network namespace (explicit opt-in).

What a ``private`` box cannot reach: the host's loopback (pasta ``--no-map-gw`` and no
namespace-to-host port forwarding; slirp4netns ``--disable-host-loopback``), and the
link-local range (169.254.0.0/16: the cloud metadata service hands out credentials)
plus the IPv6 metadata address, made unreachable by routes added in the box's namespace
before its command runs (box root has no CAP_NET_ADMIN to remove them).

pyroute2 is not used: two netlink messages do not justify a ~90 ms import.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import signal
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from coopy.errors import ConfigError, HostError
from coopy.facts import read_text

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

MODES = ("private", "none", "host", "allow")
BACKENDS = ("auto", "pasta", "slirp4netns")
# Made unreachable inside private boxes (see the module's docstring).
BLOCKED = ("169.254.0.0/16", "fd00:ec2::254/128")
SLIRP_DNS = "10.0.2.3"
READY_TIMEOUT = 10.0
OPT_OUTS = "`--net none` (no network) or `--net host` (the host's network, no isolation)"


def bring_up_loopback() -> None:
    """Set IFF_UP on ``lo`` in the calling process's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


# ---- published ports ----------------------------------------------------------------------


class PortMap(NamedTuple):
    """``-p [IP:]HOSTPORT:BOXPORT[/tcp|udp]``: the host side listens, the box serves."""

    host_ip: str
    host_port: int
    box_port: int
    proto: str = "tcp"

    def __str__(self) -> str:
        ip = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{ip}:{self.host_port}->{self.box_port}/{self.proto}"


def parse_port(spec: str, where: str = "-p") -> PortMap:
    """Parse one port spec; the host side binds to 127.0.0.1 unless an IP is given."""
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    hint = 'use HOSTPORT:BOXPORT, IP:HOSTPORT:BOXPORT or PORT, optionally with /udp'
    if proto not in ("tcp", "udp"):
        raise ConfigError(f"{where} {spec}: protocol {proto!r} is not tcp or udp", hint=hint)
    ip = "127.0.0.1"
    if body.startswith("["):  # [::1]:8080:80
        ip, _, body = body[1:].partition("]")
        body = body.removeprefix(":")
    elif body.count(":") == 2:
        ip, body = body.split(":", 1)
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ConfigError(f"{where} {spec}: {ip!r} is not an IP address", hint=hint) from None
    parts = body.split(":")
    if len(parts) == 1:
        parts = parts * 2
    try:
        host_port, box_port = (int(x) for x in parts)
    except ValueError:
        raise ConfigError(f"{where} {spec}: ports are numbers", hint=hint) from None
    for port in (host_port, box_port):
        if not 1 <= port <= 65535:
            raise ConfigError(f"{where} {spec}: port {port} is not in 1-65535", hint=hint)
    return PortMap(ip, host_port, box_port, proto)


def port_free(port: PortMap) -> bool:
    """Whether the host side of ``port`` can be bound now (a check for a clear message;
    the helper's own bind is what counts)."""
    family = socket.AF_INET6 if ":" in port.host_ip else socket.AF_INET
    kind = socket.SOCK_STREAM if port.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((port.host_ip, port.host_port))
        except OSError:
            return False
    return True


def oauth_forwards(ports: tuple[PortMap, ...], numbers: Iterable[int],
                   net: str) -> tuple[PortMap, ...]:
    """``ports`` plus the OAuth callback ``numbers`` (``[network] oauth_ports``, an agent
    preset's) that are free on the host's loopback; the private network only."""
    import sys

    out = list(ports)
    if net != "private":
        return ports
    taken = {(p.host_ip, p.host_port, p.proto) for p in ports}
    for number in numbers:
        port = PortMap("127.0.0.1", number, number)
        if (port.host_ip, number, "tcp") in taken:
            continue
        taken.add((port.host_ip, number, "tcp"))
        if port_free(port):
            out.append(port)
        else:
            sys.stderr.write(f"coopy: note: OAuth callback port {number} is in use on "
                             "the host (another box?): not forwarded to this one\n")
    return tuple(out)


# ---- DNS ----------------------------------------------------------------------------------


def _nameservers(text: str) -> tuple[list[str], list[str]]:
    servers, other = [], []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append(words[1])
        elif words and words[0] in ("search", "domain", "options"):
            other.append(line.strip())
    return servers, other


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def host_resolvers(resolv: str, resolved: str | None) -> tuple[list[str], list[str]]:
    """The host's real resolvers and its search/options lines.

    systemd-resolved's stub (127.0.0.53, unreachable from a box) is followed to the
    upstream servers it lists in /run/systemd/resolve/resolv.conf.
    """
    servers, other = _nameservers(resolv)
    if resolved and any(s in ("127.0.0.53", "127.0.0.54") for s in servers):
        upstream, _ = _nameservers(resolved)
        if upstream:
            servers = upstream
    return servers, other


def usable_resolvers(resolv: str, resolved: str | None) -> list[str]:
    """The host's resolvers a box can reach through NAT (not on the host's loopback)."""
    return [s for s in host_resolvers(resolv, resolved)[0] if not _is_loopback(s)]


def resolv_conf(mode: str, resolv: str | None, resolved: str | None,
                forwarder: str | None) -> str:
    """The box's /etc/resolv.conf for ``mode``."""
    if mode == "host" and resolv:
        return resolv
    if mode == "allow":
        return ("# coopy: no DNS in this box (--net allow): HTTP_PROXY/HTTPS_PROXY name the\n"
                "# proxy, which resolves the allowed names on the host\n")
    if mode != "private" or resolv is None:
        return f"# coopy: this box has no direct network (--net {mode})\n"
    usable = usable_resolvers(resolv, resolved)
    other = host_resolvers(resolv, resolved)[1]
    if not usable and forwarder:
        usable = [forwarder]  # the NAT helper forwards it to the host's own resolver
    lines = ["# coopy: the host's resolvers, reached through the box's NAT"]
    lines += [f"nameserver {s}" for s in usable[:3]] + other
    return "\n".join(lines) + "\n"


def default_gateway(route_text: str) -> str | None:
    """The IPv4 default gateway in /proc/net/route's format."""
    for line in route_text.splitlines()[1:]:
        f = line.split()
        if len(f) >= 3 and f[1] == "00000000" and f[2] != "00000000":
            return socket.inet_ntoa(struct.pack("<I", int(f[2], 16)))
    return None


# ---- the NAT helper -----------------------------------------------------------------------


class NetSetup(NamedTuple):
    """How a ``private`` box gets its network, resolved before the box starts."""

    backend: str  # "pasta" or "slirp4netns"
    path: str
    ports: tuple[PortMap, ...] = ()
    dns_forward: str | None = None  # pasta: the box's resolver address it forwards
    log_path: str = "/dev/null"  # the helper's stderr
    blocked: tuple[str, ...] = BLOCKED  # prefixes made unreachable inside the box
    allow_path: str = ""  # mode allow: the allowlist file the proxy reads (coopy.proxy)


def find_backend(preference: str, path: str | None = None, udp: bool = False
                 ) -> tuple[str, str]:
    """(name, path) of the NAT helper to use; HostError with the fix if none.

    ``auto`` prefers slirp4netns, measured here against Debian 12's pasta (2023-03):
    it starts ~20 ms sooner, its bulk TCP is steady (~200-290 MB/s where that pasta
    swings between 20 and 1000 MB/s and now and then resets a flow).  pasta when UDP
    ports are published (slirp4netns cannot) or slirp4netns is missing.
    """
    import shutil

    names: tuple[str, ...] = (preference,)
    if preference == "auto":
        names = ("pasta", "slirp4netns") if udp else ("slirp4netns", "pasta")
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return name, found
    wanted = " or ".join(sorted(names))
    raise HostError(
        f"private networking needs {wanted}, which is not installed",
        hint=f"install it (Debian/Ubuntu: sudo apt install {'passt' if 'pasta' in names else ''}"
        f"{' ' if len(names) > 1 else ''}{'slirp4netns' if 'slirp4netns' in names else ''})"
        f", or choose {OPT_OUTS}",
    )


def check_tun(device: str = "/dev/net/tun") -> None:
    """The helper opens /dev/net/tun as the caller: fail early, with the fix, if it can't."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        mode = ""
        with contextlib.suppress(OSError):
            mode = f" (mode {os.stat(device).st_mode & 0o777:04o})"
        raise HostError(
            f"private networking needs {device}, which you cannot open{mode}: "
            f"{exc.strerror}",
            hint="stock distributions make it 0666; ask your administrator to run "
            f"`sudo chmod 0666 {device}` (and a udev rule to keep it), or choose "
            f"{OPT_OUTS}; `coopy doctor` explains",
        ) from exc
    os.close(fd)


def plan_network(mode: str, backend: str, ports: Sequence[PortMap], log_path: str,
                 dns_forward: str | None) -> NetSetup | None:
    """Probe for a helper and the device it needs; None for modes without one."""
    if mode == "allow" and not ports:
        return NetSetup("proxy", "", (), None, log_path, ())
    if mode != "private":
        if ports:
            raise ConfigError(
                f"ports are published in the private network mode only (this box: {mode})",
                hint="drop -p/[network] ports or use --net private")
        return None
    name, path = find_backend(backend, udp=any(p.proto == "udp" for p in ports))
    if os.getuid() != 0:
        check_tun()
    for port in ports:
        if port.proto != "udp":
            continue
        if name == "slirp4netns":
            raise HostError(
                f"cannot publish {port}: slirp4netns drops the replies of published UDP "
                "ports while the host's loopback is closed to the box",
                hint="install pasta (Debian/Ubuntu: sudo apt install passt) and use "
                "[network] backend = \"auto\" or \"pasta\"")
        if port.host_port != port.box_port:
            raise ConfigError(
                f"cannot publish {port}: UDP ports keep their number (pasta loses the "
                "replies of renumbered UDP flows)",
                hint=f"use -p {port.box_port}/udp and the same port on both sides")
    seen: set[tuple[str, int, str]] = set()
    for port in ports:
        key = (port.host_ip, port.host_port, port.proto)
        if key in seen:
            raise ConfigError(f"port {port.host_ip}:{port.host_port}/{port.proto} is "
                              "published twice")
        seen.add(key)
        if not port_free(port):
            raise HostError(
                f"cannot publish {port}: {port.host_ip}:{port.host_port}/{port.proto} is "
                "already in use on the host",
                hint="pick another host port (-p OTHER:BOXPORT) or stop what listens there "
                "(`ss -ltnup` names it)")
    blocked = BLOCKED + tuple(host_addresses(read_text("/proc/net/fib_trie") or "",
                                             read_text("/proc/net/if_inet6") or ""))
    return NetSetup(name, path, tuple(ports), dns_forward if name == "pasta" else None,
                    log_path, blocked)


def host_addresses(fib_trie: str, if_inet6: str) -> list[str]:
    """The host's own non-loopback addresses as /32 and /128 prefixes.

    Services bound to 0.0.0.0 answer on them: through slirp4netns a box would reach
    them as "the host" (pasta gives the box the host's address, which then is local).
    """
    out: list[str] = []
    last = None
    for line in fib_trie.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "|--":
            last = words[1]
        elif (last and words[:3] == ["/32", "host", "LOCAL"]
              and not last.startswith("127.") and f"{last}/32" not in out):
            out.append(f"{last}/32")
    for line in if_inet6.splitlines():
        words = line.split()
        if len(words) >= 4 and words[3] == "00":  # global scope
            addr = ipaddress.ip_address(bytes.fromhex(words[0]))
            out.append(f"{addr}/128")
    return out


def network_for(mode: str, backend: str, ports: Sequence[PortMap]
                ) -> tuple[NetSetup | None, str]:
    """What the box's network mode needs (refused before anything is made) and the
    box's resolv.conf, the host's resolver files read once."""
    resolv = read_text("/etc/resolv.conf")
    resolved = read_text("/run/systemd/resolve/resolv.conf")
    forward = None
    if mode == "private" and not usable_resolvers(resolv or "", resolved):
        # Only loopback resolvers (a local dnsmasq…): pasta forwards DNS sent to the
        # gateway to them.  Not otherwise: it rewrites the source of every DNS reply.
        forward = default_gateway(read_text("/proc/net/route") or "")
    setup = plan_network(mode, backend, ports, "/dev/null", forward)
    forwarder = None
    if setup is not None:
        forwarder = setup.dns_forward if setup.backend == "pasta" else SLIRP_DNS
    return setup, resolv_conf(mode, resolv, resolved, forwarder)


def helper_argv(setup: NetSetup, pid: int, ready_fd: int, exit_fd: int, api: str | None
                ) -> list[str]:
    """The helper's command line to serve the box whose PID 1 is ``pid``."""
    if setup.backend == "pasta":
        argv = [setup.path, "-f", "-q", "--config-net", "--no-map-gw",
                "-T", "none", "-U", "none", "-P", f"/proc/self/fd/{ready_fd}"]
        if os.getuid() == 0:
            # Root's boxes live in a user namespace root owns: pasta's default of
            # switching to nobody would leave it unable to join it.
            argv += ["--runas", "0:0"]
        for proto, flag in (("tcp", "-t"), ("udp", "-u")):
            chosen = [p for p in setup.ports if p.proto == proto]
            if not chosen:
                argv += [flag, "none"]
            for p in chosen:  # one option each: a port that cannot be bound fails
                argv += [flag, f"{p.host_ip}/{p.host_port}:{p.box_port}"]
        if setup.dns_forward:
            argv += ["--dns-forward", setup.dns_forward]
        return [*argv, str(pid)]
    argv = [setup.path, "--configure", "--mtu=65520", "--disable-host-loopback",
            f"--ready-fd={ready_fd}", f"--exit-fd={exit_fd}",
            f"--userns-path=/proc/{pid}/ns/user"]
    if api:
        argv.append(f"--api-socket={api}")
    return [*argv, str(pid), "eth0"]


class Helper:
    """A running NAT helper serving one box: started with :func:`start_helper`."""

    def __init__(self, setup: NetSetup, pid: int, ready_r: int, exit_w: int,
                 api: str | None) -> None:
        self.setup, self.pid, self.ready_r, self.exit_w, self.api = (
            setup, pid, ready_r, exit_w, api)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until the box's interface is configured; HostError with the helper's
        own words if it fails."""
        import select

        # pasta writes its pid (-P), slirp4netns "1" (--ready-fd); EOF: it died.
        if self.ready_r < 0:
            return  # the proxy: its listening socket exists before the box's command
        if not select.select([self.ready_r], [], [], timeout)[0]:
            raise self._failed(f"did not get ready in {timeout:.0f} s")
        data = os.read(self.ready_r, 64)
        os.close(self.ready_r)
        self.ready_r = -1
        if not data:
            raise self._failed("ended during its setup")
        if self.setup.backend == "slirp4netns":
            for port in self.setup.ports:
                self._slirp_forward(port)

    def _slirp_forward(self, port: PortMap) -> None:
        import json

        assert self.api is not None
        request = {"execute": "add_hostfwd", "arguments": {
            "proto": port.proto, "host_addr": port.host_ip, "host_port": port.host_port,
            "guest_port": port.box_port}}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(READY_TIMEOUT)
            s.connect(self.api)
            s.sendall(json.dumps(request).encode())
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        answer = json.loads(reply or b"{}")
        if "error" in answer or "return" not in answer:
            why = answer.get("error", {}).get("desc", reply.decode(errors="replace"))
            raise HostError(f"slirp4netns could not publish {port}: {why}",
                            hint="pick another host port (-p OTHER:BOXPORT)")

    def _failed(self, what: str) -> HostError:
        self.stop()
        words = ""
        with contextlib.suppress(OSError):
            with open(self.setup.log_path, errors="replace") as f:
                lines = [ln.strip() for ln in f.read().splitlines()[-20:]]
            words = "; ".join(ln for ln in lines if ln and "syslog" not in ln)
        return HostError(
            f"the box's network helper ({self.setup.backend}) {what}"
            + (f": {words}" if words else ""),
            hint=f"`coopy doctor` checks networking; or choose {OPT_OUTS}",
        )

    def stop(self) -> None:
        """Stop the helper (the box has ended) and reap it."""
        for fd in (self.ready_r, self.exit_w):
            if fd >= 0:
                os.close(fd)
        self.ready_r = self.exit_w = -1
        if self.pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = -1
        if self.api:
            with contextlib.suppress(OSError):
                os.unlink(self.api)


def start_helper(setup: NetSetup, box_pid: int) -> Helper:
    """Start the NAT helper for the box whose PID 1 is ``box_pid`` (not waiting for it)."""
    from coopy import syscalls as sc

    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
    api = None
    if setup.backend == "slirp4netns" and setup.ports:
        api = os.path.join(os.path.dirname(setup.log_path) or ".", "slirp.sock")
    argv = helper_argv(setup, box_pid, ready_w, exit_r, api)
    log = os.open(setup.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - replaced by exec
        try:
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:
                os._exit(1)
            # Python ignores SIGPIPE and that survives exec; pasta (2023) refuses to
            # start when SIGPIPE was not at its default (as subprocess does, reset it).
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            os.close(ready_r)
            os.close(exit_w)
            for fd in (ready_w, exit_r):
                os.set_inheritable(fd, True)
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.execve(argv[0], argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})
        finally:
            os._exit(127)
    os.close(log)
    os.close(ready_w)
    os.close(exit_r)
    return Helper(setup, pid, ready_r, exit_w, api)


def proxy_listener() -> socket.socket:
    """The allow mode's proxy socket, made by the box's PID 1 in the box's namespace."""
    from coopy.proxy import PORT

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", PORT))
    s.listen(128)
    return s


def proxy_env() -> dict[str, str]:
    """What points a box's tools at the proxy (curl, pip, npm, git, Python, Node…)."""
    from coopy.proxy import PORT

    url = f"http://127.0.0.1:{PORT}"
    out = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        out[name] = out[name.lower()] = url
    out["NO_PROXY"] = out["no_proxy"] = "localhost,127.0.0.1,::1"
    return out


def start_proxy(setup: NetSetup, listen_fd: int) -> Helper:
    """Fork the allow mode's proxy serving ``listen_fd`` (a socket in the box's netns)."""
    from coopy import syscalls as sc

    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the proxy process
        code = 1
        try:
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:
                os._exit(1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            for name in os.listdir("/proc/self/fd"):  # P's terminal, sockets, pidfds…
                if int(name) > 2 and int(name) != listen_fd:
                    with contextlib.suppress(OSError):
                        os.close(int(name))
            from coopy.proxy import serve

            serve(listen_fd, setup.allow_path, setup.log_path)
            code = 0
        finally:
            os._exit(code)
    return Helper(setup, pid, -1, -1, None)


# ---- routes inside the box ----------------------------------------------------------------

_RTM_NEWROUTE = 24
_NLM_F = 0x1 | 0x4 | 0x400 | 0x200  # REQUEST | ACK | CREATE | EXCL
_NLMSG_ERROR = 2
_RTN_UNREACHABLE = 7
_RT_TABLE_MAIN = 254
_RTPROT_STATIC = 4
_RTA_DST = 1


def block_routes(prefixes: Sequence[str] = BLOCKED) -> None:
    """Add an unreachable route for each prefix in the calling process's namespace."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as s:  # NETLINK_ROUTE
        for seq, prefix in enumerate(prefixes, 1):
            net = ipaddress.ip_network(prefix)
            family = socket.AF_INET if net.version == 4 else socket.AF_INET6
            dst = net.network_address.packed
            rta = struct.pack("HH", 4 + len(dst), _RTA_DST) + dst
            rtm = struct.pack("BBBBBBBBI", family, net.prefixlen, 0, 0, _RT_TABLE_MAIN,
                              _RTPROT_STATIC, 0, _RTN_UNREACHABLE, 0)
            body = rtm + rta
            s.send(struct.pack("IHHII", 16 + len(body), _RTM_NEWROUTE, _NLM_F, seq, 0) + body)
            reply = s.recv(4096)
            kind = struct.unpack_from("H", reply, 4)[0]
            if kind == _NLMSG_ERROR:
                err = -struct.unpack_from("i", reply, 16)[0]
                if err and err != 17 and not (net.version == 6 and err == 97):  # EEXIST, no v6
                    raise OSError(err, f"cannot make {prefix} unreachable in the box: "
                                  f"{os.strerror(err)}")
