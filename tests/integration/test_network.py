"""Networking: what a box can and cannot reach in each mode, ports, DNS, failures.

Only loopback and namespaces the tests make: the ``lan`` fixture builds two network
namespaces joined by a veth pair, "host" (where coopy runs, through ``nsenter``) and
"upstream" (a stand-in for the internet, with a fake metadata service on
169.254.169.254).  Servers are sockets the test process opens inside those namespaces
(setns in its own thread: network namespaces are per thread) and serves from threads.
Both NAT helpers (pasta, slirp4netns) are tested, as root and rootless.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from coopy.syscalls import setns
from tests.conftest import BoxUser

BACKENDS = ["pasta", "slirp4netns"]
CLONE_NEWNET = 0x40000000
UPSTREAM = "10.77.1.1"  # a server "on the internet"
METADATA = "169.254.169.254"
HOST_ADDR = "10.77.0.1"  # the host's own address on its "LAN"

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to make namespaces")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Lan(NamedTuple):
    host: str  # /run/netns/… of the namespace coopy runs in
    upstream: str


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    tag = uuid.uuid4().hex[:6]
    host, up = f"coopyt-h-{tag}", f"coopyt-u-{tag}"
    _ip("netns", "add", host)
    _ip("netns", "add", up)
    try:
        _ip("link", "add", f"vh{tag}", "type", "veth", "peer", "name", f"vu{tag}")
        _ip("link", "set", f"vh{tag}", "netns", host)
        _ip("link", "set", f"vu{tag}", "netns", up)
        for ns, dev, addr in ((host, f"vh{tag}", f"{HOST_ADDR}/24"),
                              (up, f"vu{tag}", "10.77.0.2/24")):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", host, "route", "add", "default", "via", "10.77.0.2")
        for addr in (f"{UPSTREAM}/32", f"{METADATA}/32"):
            _ip("-n", up, "addr", "add", addr, "dev", "lo")
        yield Lan(f"/run/netns/{host}", f"/run/netns/{up}")
    finally:
        for ns in (host, up):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


class Server:
    """A TCP or UDP server in a network namespace: answers every client with ``reply``."""

    def __init__(self, netns: str | None, addr: str, reply: bytes | Callable[[bytes], bytes],
                 udp: bool = False, port: int = 0) -> None:
        self.reply, self.udp = reply, udp
        self.sock = _socket_in(netns, udp)
        self.sock.bind((addr, port))
        if not udp:
            self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self.seen: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                if self.udp:
                    query, peer = self.sock.recvfrom(512)
                    if peer is None:  # shut down by close()
                        return
                    self.hits += 1
                    self.seen.append(query)
                    self.sock.sendto(self._answer(query), peer)
                    continue
                conn, _ = self.sock.accept()
                self.hits += 1
                with conn:
                    conn.sendall(self._answer(b""))

    def _answer(self, query: bytes) -> bytes:
        return self.reply(query) if callable(self.reply) else self.reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def _socket_in(netns: str | None, udp: bool) -> socket.socket:
    """A socket created in ``netns`` (from a thread of its own: setns is per thread)."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    if netns is None:
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return s
    out: list[socket.socket] = []

    def make() -> None:
        fd = os.open(netns, os.O_RDONLY)
        try:
            setns(fd, CLONE_NEWNET)
        finally:
            os.close(fd)
        out.append(socket.socket(socket.AF_INET, kind))

    t = threading.Thread(target=make)
    t.start()
    t.join(5)
    return out[0]


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    made: list[Server] = []

    def make(*args: object, **kw: object) -> Server:
        server = Server(*args, **kw)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    for s in made:
        s.close()


def in_lan(user: BoxUser, lan: Lan, args: list[str], cwd: Path, setup: str = "",
           env: dict[str, str] | None = None, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    """``coopy ARGS`` as ``user`` in the lan's host namespace (and a private mount ns
    where ``setup`` may bind test files over host ones)."""
    coopy = shlex.join(user.argv(args))
    script = f"set -e; mount --make-rprivate /; {setup}\nexec nsenter --net={lan.host} {coopy}"
    return subprocess.run(["unshare", "--mount", "--", "sh", "-c", script],
                          capture_output=True, text=True, cwd=cwd, env=user.env(env),
                          timeout=timeout, stdin=subprocess.DEVNULL)


def project(user: BoxUser, text: str) -> Path:
    ws = user.workspace()
    (ws / "coop.toml").write_text(text)
    os.chown(ws / "coop.toml", user.uid, user.pw.pw_gid)
    return ws


PROBE = r"""
import socket, sys
def tcp(addr, port):
    try:
        with socket.create_connection((addr, int(port)), timeout=3) as s:
            return s.recv(64).decode() or "EMPTY"
    except OSError as e:
        return f"ERR {e.__class__.__name__}"
for target in sys.argv[1:]:
    addr, port = target.rsplit(":", 1)
    print(target, tcp(addr, port))
"""


def probe(user: BoxUser, lan: Lan, backend: str, targets: list[str]) -> dict[str, str]:
    ws = project(user, f'[network]\nbackend = "{backend}"\n')
    res = in_lan(user, lan, ["run", "--", "python3", "-c", PROBE, *targets], ws)
    assert res.returncode == 0, res.stderr
    return dict(line.split(" ", 1) for line in res.stdout.splitlines())


@pytest.mark.parametrize("backend", BACKENDS)
def test_private_reaches_upstream_but_not_the_host_or_metadata(
        box_user: BoxUser, lan: Lan, servers: Callable[..., Server], backend: str) -> None:
    up = servers(lan.upstream, UPSTREAM, b"upstream")
    meta = servers(lan.upstream, METADATA, b"credentials")
    local = servers(lan.host, "127.0.0.1", b"host-loopback")
    anyaddr = servers(lan.host, "0.0.0.0", b"host-service")
    # test_the_servers_are_reachable_without_a_box shows these blocks are the box's.
    got = probe(box_user, lan, backend, [
        f"{UPSTREAM}:{up.port}", f"{METADATA}:{meta.port}", f"127.0.0.1:{local.port}",
        f"10.77.0.2:{local.port}", f"{HOST_ADDR}:{anyaddr.port}", f"10.0.2.2:{local.port}",
    ])
    assert got[f"{UPSTREAM}:{up.port}"] == "upstream"
    for target, value in got.items():
        if not target.startswith(UPSTREAM):
            assert value.startswith("ERR"), (target, value)
    assert meta.hits == local.hits == anyaddr.hits == 0


def test_the_servers_are_reachable_without_a_box(lan: Lan, servers: Callable[..., Server]
                                                 ) -> None:
    """The other tests' "blocked" results would be empty if these servers were broken."""
    up = servers(lan.upstream, UPSTREAM, b"upstream")
    meta = servers(lan.upstream, METADATA, b"credentials")
    script = ("import socket,sys\nfor p in sys.argv[1:]:\n a,q=p.rsplit(':',1)\n"
              " print(socket.create_connection((a,int(q)),timeout=3).recv(64).decode())")
    res = subprocess.run(["nsenter", f"--net={lan.host}", "python3", "-c", script,
                          f"{UPSTREAM}:{up.port}", f"{METADATA}:{meta.port}"],
                         capture_output=True, text=True, timeout=30)
    assert res.stdout.split() == ["upstream", "credentials"], res.stderr


@pytest.mark.parametrize("mode", ["none", "host"])
def test_none_and_host(box_user: BoxUser, lan: Lan, servers: Callable[..., Server],
                       mode: str) -> None:
    up = servers(lan.upstream, UPSTREAM, b"upstream")
    ws = box_user.workspace()
    script = ("import socket,sys\ns=socket.socket();s.bind(('127.0.0.1',0));s.listen()\n"
              "c=socket.create_connection(s.getsockname());print('lo-ok')\n" + PROBE)
    res = in_lan(box_user, lan, ["run", "--net", mode, "--", "python3", "-c", script,
                                 f"{UPSTREAM}:{up.port}"], ws)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "lo-ok"
    reached = lines[1].split(" ", 1)[1]
    assert reached == ("upstream" if mode == "host" else "ERR OSError") or (
        mode == "none" and reached.startswith("ERR")), reached


@pytest.mark.parametrize("backend", BACKENDS)
def test_dns_uses_the_hosts_resolver(box_user: BoxUser, lan: Lan,
                                     servers: Callable[..., Server], backend: str,
                                     tmp_path: Path) -> None:
    dns = servers(lan.upstream, UPSTREAM, _dns_reply, udp=True, port=53)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {UPSTREAM}\nsearch example.test\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(resolv, 0o644)
    ws = project(box_user, f'[network]\nbackend = "{backend}"\n')
    lookup = "import socket; print(socket.gethostbyname('pypi.example'), 'pypi.example')"
    res = in_lan(box_user, lan, ["run", "--", "sh", "-c",
                                 f'cat /etc/resolv.conf; python3 -c "{lookup}"'], ws,
                 setup=f"mount --bind {resolv} /etc/resolv.conf")
    assert res.returncode == 0, (res.stderr, dns.seen)
    assert f"nameserver {UPSTREAM}" in res.stdout
    assert "search example.test" in res.stdout
    assert "10.77.1.99" in res.stdout and "pypi.example" in res.stdout, res.stdout
    assert dns.hits >= 1


def _dns_reply(query: bytes) -> bytes:
    """An A answer 10.77.1.99 for any name (AAAA and others: no data)."""
    qid, end = query[:2], 12
    while end < len(query) and query[end]:
        end += query[end] + 1
    if end + 5 > len(query):
        return qid + b"\x81\x81" + bytes(8)  # FORMERR
    question = query[12:end + 5]
    qtype = query[end + 1:end + 3]
    if qtype != b"\x00\x01":
        return qid + b"\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00" + question
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([10, 77, 1, 99])
    return qid + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer


@pytest.mark.parametrize("backend", BACKENDS)
def test_published_ports(box_user: BoxUser, backend: str) -> None:
    """-p: the host's 127.0.0.1:PORT reaches the box's server (tcp, and udp with pasta)."""
    tcp_port, udp_port = _free_port(), _free_port(udp=True)
    if backend == "slirp4netns":
        ws = project(box_user, '[network]\nbackend = "slirp4netns"\n')
        res = box_user.coopy("run", "-p", f"{udp_port}/udp", "--", "true", cwd=ws)
        assert res.returncode == 125
        assert "slirp4netns drops the replies of published UDP ports" in res.stderr
        udp_port = 0
    ws = project(box_user, f'[network]\nbackend = "{backend}"\n')
    server = ("import socket\n"
              "t=socket.socket();t.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
              "t.bind(('0.0.0.0',8000));t.listen()\n"
              f"u=socket.socket(type=socket.SOCK_DGRAM);u.bind(('0.0.0.0',{udp_port}))\n"
              "print('listening',flush=True)\n"
              "c,_=t.accept();c.sendall(b'box-tcp');c.close()\n"
              f"if not {udp_port}: raise SystemExit(0)\n"
              "u.settimeout(20)\n"
              "for _ in range(20):\n"
              " d,p=u.recvfrom(64);u.sendto(b'box-udp',p)\n"
              " if d==b'bye': break\n")
    udp = ["-p", f"{udp_port}/udp"] if udp_port else []
    proc = subprocess.Popen(
        box_user.argv(["run", "-p", f"{tcp_port}:8000", *udp, "--", "python3", "-c", server]),
        cwd=ws, env=box_user.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "listening", proc.stderr
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as c:
            assert c.recv(64) == b"box-tcp"
        if udp_port:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.settimeout(1)
                got = b""
                for _ in range(10):  # the first datagram may come before the flow exists
                    u.sendto(b"hi", ("127.0.0.1", udp_port))
                    with contextlib.suppress(TimeoutError):
                        got = u.recv(64)
                        break
                assert got == b"box-udp"
                u.sendto(b"bye", ("127.0.0.1", udp_port))
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.terminate()  # coopy stops the box and removes its directory
            proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    # Only on loopback: the port is not open on other host addresses.
    assert not _port_open_anywhere_but_loopback(tcp_port)


def _port_open_anywhere_but_loopback(port: int) -> bool:
    out = subprocess.run(["ss", "-Htln", f"sport = :{port}"], capture_output=True,
                         text=True, timeout=10).stdout
    return any("127.0.0.1" not in line for line in out.splitlines() if line.strip())


def _free_port(udp: bool = False) -> int:
    with socket.socket(type=socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_port_in_use_is_refused(box_user: BoxUser) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = box_user.state_runs()
        res = box_user.coopy("run", "-p", f"{port}:80", "--", "true", cwd=box_user.workspace())
    assert res.returncode == 125
    assert f"127.0.0.1:{port}/tcp is already in use" in res.stderr
    assert "hint: " in res.stderr and "Traceback" not in res.stderr
    assert box_user.state_runs() == before


@pytest.mark.parametrize("spec", ["80:http", "70000:80", "1.2.3:80:80", "80/sctp"])
def test_bad_port_specs(box_user: BoxUser, spec: str) -> None:
    res = box_user.coopy("run", "-p", spec, "--", "true", cwd=box_user.workspace())
    assert res.returncode == 125
    assert res.stderr.startswith(f"coopy: -p {spec}: "), res.stderr


def test_ports_need_the_private_mode(box_user: BoxUser) -> None:
    res = box_user.coopy("run", "--net", "none", "-p", "8080:80", "--", "true",
                         cwd=box_user.workspace())
    assert res.returncode == 125
    assert "private network mode only" in res.stderr


def test_no_nat_helper_installed(box_user: BoxUser, tmp_path: Path) -> None:
    from tests.integration.test_failures import assert_refused, in_mount_ns

    setup = "mount --bind /dev/null /usr/bin/pasta; mount --bind /dev/null /usr/bin/slirp4netns"
    # /dev/null is not executable: shutil.which passes over it as over a missing file.
    res = in_mount_ns(box_user, setup, ["run", "--", "true"], box_user.workspace())
    assert_refused(res, "private networking needs pasta or slirp4netns", "--net none")


def test_unusable_tun_device(box_user: BoxUser, tmp_path: Path) -> None:
    from tests.integration.test_failures import in_mount_ns

    closed = tmp_path / "tun"
    closed.write_text("")
    os.chmod(closed, 0)
    res = in_mount_ns(box_user, f"mount --bind {closed} /dev/net/tun", ["run", "--", "true"],
                      box_user.workspace())
    assert res.returncode == 125, res.stderr
    if box_user.name == "rootless":
        assert "needs /dev/net/tun, which you cannot open (mode 0000)" in res.stderr
        assert "chmod 0666 /dev/net/tun" in res.stderr
    else:  # root opens anything; the helper then finds no tun device behind it
        assert "network helper (slirp4netns)" in res.stderr and "/dev/net/tun" in res.stderr
    assert "Traceback" not in res.stderr


def test_helper_ends_with_the_box(box_user: BoxUser) -> None:
    """kill -9 of coopy: the NAT helper goes with the box (PDEATHSIG), nothing left."""
    ws = box_user.workspace()
    proc = subprocess.Popen(box_user.argv(["run", "--", "sleep", "1000"]), cwd=ws,
                            env=box_user.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        helpers: list[int] = []
        while time.monotonic() < deadline and not helpers:
            helpers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_helper(p)
                       and _ppid(p) == proc.pid]
            time.sleep(0.05)
        assert helpers, "no NAT helper started for the box"
        os.kill(proc.pid, 9)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in helpers):
            time.sleep(0.05)
        assert not [p for p in helpers if Path(f"/proc/{p}").exists()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert box_user.coopy("run", "--net", "none", "--", "true", cwd=ws).returncode == 0


def _is_helper(pid: str) -> bool:
    with contextlib.suppress(OSError):
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        return argv0.endswith((b"pasta", b"slirp4netns"))
    return False


def _ppid(pid: str) -> int:
    with contextlib.suppress(OSError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return -1


def test_persistent_box_publishes_and_ls_shows_it(box_user: BoxUser) -> None:
    """A keeper's box: the port works, `ls` names it, and killing the keeper -9 takes the
    NAT helper along (nothing left listening)."""
    import json

    port, name = _free_port(), f"net-{uuid.uuid4().hex[:6]}"
    ws = box_user.workspace()
    server = ("import socket\nt=socket.socket();t.bind(('0.0.0.0',8000));t.listen()\n"
              "while True:\n c,_=t.accept();c.sendall(b'kept');c.close()\n")
    res = box_user.coopy("-d", "-n", name, "-p", f"{port}:8000", "--", "python3", "-c", server,
                         cwd=ws)
    assert res.returncode == 0, res.stderr
    try:
        got = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and got != b"kept":
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                got = c.recv(16)
            time.sleep(0.1)
        assert got == b"kept"
        info = {b["name"]: b for b in json.loads(box_user.coopy("ls", "--json").stdout)}[name]
        assert info["network"] == "private"
        assert info["ports"] == [f"127.0.0.1:{port}->8000/tcp"]
        assert f"ports 127.0.0.1:{port}->8000/tcp" in box_user.coopy("ls").stdout
        os.kill(int(info["pid"]), 9)  # the keeper
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _port_free(port):
            time.sleep(0.05)
        assert _port_free(port), "the NAT helper outlived its keeper"
    finally:
        box_user.coopy("kill", "-f", name)
        box_user.coopy("rm", "-f", name)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---- the allow mode: a proxy that admits listed names only --------------------------------

HOSTS = ("127.0.0.1 localhost\n10.77.1.1 pypi.test evil.test\n127.0.0.1 rebind.test\n"
         f"{METADATA} meta.test\n")

FETCH = r"""
import json, os, ssl, sys, urllib.error, urllib.request
out = {}
for url in sys.argv[1:]:
    ctx = ssl.create_default_context(cafile="test-ca.pem") if url.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
            out[url] = r.read().decode()
    except urllib.error.HTTPError as e:
        out[url] = f"HTTP {e.code} {e.read().decode().strip()}"
    except Exception as e:
        out[url] = f"ERR {e}"
print(json.dumps(out))
"""


class HttpServer:
    """A one-response-per-connection HTTP(S) server in a namespace the test made."""

    def __init__(self, netns: str, addr: str, body: bytes, tls: tuple[Path, Path] | None = None
                 ) -> None:
        import ssl

        self.sock = _socket_in(netns, udp=False)
        self.sock.bind((addr, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.body, self.hits = body, 0
        self.ctx = None
        if tls:
            self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), conn:
                c = self.ctx.wrap_socket(conn, server_side=True) if self.ctx else conn
                c.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.hits += 1
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                          % len(self.body) + self.body)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def web(lan: Lan, tmp_path: Path) -> Iterator[tuple[HttpServer, HttpServer, Path]]:
    """Plain and TLS (self-signed for pypi.test) servers upstream, and the certificate."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=pypi.test",
                    "-addext", "subjectAltName=DNS:pypi.test"], check=True, capture_output=True,
                   timeout=60)
    plain = HttpServer(lan.upstream, UPSTREAM, b"upstream")
    tls = HttpServer(lan.upstream, UPSTREAM, b"tls-upstream", (cert, key))
    yield plain, tls, cert
    plain.close()
    tls.close()


def allow_workspace(user: BoxUser, cert: Path, tmp_path: Path) -> tuple[Path, str]:
    ws = user.workspace()
    import shutil

    shutil.copy(cert, ws / "test-ca.pem")
    os.chmod(ws / "test-ca.pem", 0o644)
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    os.chmod(tmp_path, 0o755)
    os.chmod(hosts, 0o644)
    return ws, f"mount --bind {hosts} /etc/hosts"


def test_allow_admits_listed_names_only(box_user: BoxUser, lan: Lan, web: tuple[
        HttpServer, HttpServer, Path], tmp_path: Path) -> None:
    plain, tls, cert = web
    ws, setup = allow_workspace(box_user, cert, tmp_path)
    urls = [f"http://pypi.test:{plain.port}/", f"https://pypi.test:{tls.port}/",
            f"http://evil.test:{plain.port}/", f"http://rebind.test:{plain.port}/",
            "http://meta.test/latest/meta-data/"]
    allow = ["--allow", "pypi.test", "--allow", "10.77.0.0/16", "--allow", "rebind.test",
             "--allow", "meta.test"]
    res = in_lan(box_user, lan, ["run", "--net", "allow", *allow, "--", "python3", "-c",
                                 FETCH + "\nimport socket\ntry:\n socket.create_connection("
                                 f"('{UPSTREAM}', {plain.port}), timeout=3)\n print('DIRECT')\n"
                                 "except OSError as e:\n print('no route:', e)\n", *urls],
                 ws, setup=setup)
    assert res.returncode == 0, res.stderr
    import json

    lines = res.stdout.splitlines()
    got = json.loads(lines[0])
    assert got[urls[0]] == "upstream"
    assert got[urls[1]] == "tls-upstream"  # tunnelled: the box verified pypi.test's own cert
    assert got[urls[2]].startswith("HTTP 403 coopy: evil.test is not in the allowlist")
    assert got[urls[3]].startswith("HTTP 403 coopy: rebind.test resolves to 127.0.0.1, a "
                                   "loopback or link-local address")
    assert got[urls[4]].startswith(f"HTTP 403 coopy: meta.test resolves to {METADATA}")
    assert lines[1].startswith("no route:")
    assert plain.hits == 1 and tls.hits == 1


def test_allow_private_addresses_need_their_cidr(box_user: BoxUser, lan: Lan, web: tuple[
        HttpServer, HttpServer, Path], tmp_path: Path) -> None:
    plain, _, cert = web
    ws, setup = allow_workspace(box_user, cert, tmp_path)
    url = f"http://pypi.test:{plain.port}/"
    res = in_lan(box_user, lan, ["run", "--net", "allow", "--allow", "pypi.test", "--",
                                 "python3", "-c", FETCH, url], ws, setup=setup)
    assert res.returncode == 0, res.stderr
    assert "a private address not listed as an IP or CIDR" in res.stdout
    assert plain.hits == 0


def test_allow_grows_on_a_running_box_and_logs_denials(box_user: BoxUser, lan: Lan, web: tuple[
        HttpServer, HttpServer, Path], tmp_path: Path) -> None:
    import json

    plain, _, cert = web
    ws, setup = allow_workspace(box_user, cert, tmp_path)
    name = f"allow-{uuid.uuid4().hex[:6]}"
    res = in_lan(box_user, lan, ["-d", "-n", name, "--net", "allow", "--allow", "pypi.test",
                                 "--allow", "10.77.0.0/16", "--", "sleep", "1000"],
                 ws, setup=setup)
    assert res.returncode == 0, res.stderr
    url = f"http://evil.test:{plain.port}/"
    try:
        def fetch() -> str:
            r = box_user.coopy("exec", name, "--", "python3", "-c", FETCH, url, cwd=ws)
            assert r.returncode == 0, r.stderr
            return str(json.loads(r.stdout)[url])

        assert fetch().startswith("HTTP 403")
        assert "DENY GET evil.test" in box_user.coopy("logs", "--net", name).stdout
        bad = box_user.coopy("allow", name, "not a name")
        assert bad.returncode == 125 and "not a domain" in bad.stderr
        added = box_user.coopy("allow", name, "evil.test")
        assert added.returncode == 0, added.stderr
        assert fetch() == "upstream"
        assert "ALLOW GET evil.test" in box_user.coopy("logs", "--net", name).stdout
    finally:
        box_user.coopy("kill", "-f", name)
        box_user.coopy("rm", "-f", name)
