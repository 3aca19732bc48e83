"""The `allow` network: an HTTP(S) proxy on the host side that admits listed names only.

The box has its own network namespace with nothing but ``lo``.  Its PID 1 opens a
listening socket on the box's 127.0.0.1:3128 before the command starts and hands it to
the process that starts the box; that process forks this proxy, which accepts on the
socket (it stays in the box's namespace) and connects out from the host's.  There is
no process in the box to kill and no route out of it.

Policy, per request (``CONNECT host:port`` or a plain-HTTP absolute URI):

* the name must match ``[network] allow`` (exact, or ``*.suffix`` for any subdomain) or
  be an IP literal inside a listed IP/CIDR;
* every address the name resolves to (on the host) is checked: loopback, link-local,
  multicast and unspecified addresses are refused always (DNS rebinding onto the host
  or the cloud metadata service); private-range addresses only when listed as an IP or
  CIDR; the connection goes to the first address that passes;
* anything else gets ``403`` with the reason, and a line in the box's ``net.log``
  (``coopy logs --net``).  TLS is tunnelled, never intercepted.

The allowlist lives in a file in the box's directory, re-read when it changes, so
``coopy allow BOX NAME`` widens a running box.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Sequence

PORT = 3128
MAX_CLIENTS = 64
HEADER_LIMIT = 64 << 10
CONNECT_TIMEOUT = 15.0
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Policy:
    """The allowlist: names, ``*.suffix`` wildcards, IPs and CIDRs."""

    def __init__(self, entries: Sequence[str]) -> None:
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[Network] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                self.suffixes.append(entry[1:])  # ".example.com"
            else:
                self.names.add(entry)

    def name_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def listed(self, addr: Address) -> bool:
        return any(addr in net for net in self.networks)

    def check(self, host: str, addrs: Sequence[Address]) -> tuple[Address | None, str]:
        """The address to connect to, or None and why not."""
        literal = _ip(host)
        if literal is not None:
            if not self.listed(literal):
                return None, f"{host} is not in the allowlist"
            addrs = [literal]
        elif not self.name_allowed(host):
            return None, f"{host} is not in the allowlist"
        why = f"{host} does not resolve"
        for addr in addrs:
            if addr.is_loopback or addr.is_link_local or addr.is_multicast or \
                    addr.is_unspecified or (addr.version == 6 and addr.ipv4_mapped is not None):
                why = f"{host} resolves to {addr}, a loopback or link-local address"
                continue
            if addr.is_private and not self.listed(addr):
                why = (f"{host} resolves to {addr}, a private address not listed as an IP "
                       "or CIDR")
                continue
            return addr, ""
        return None, why


def _ip(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


class AllowFile:
    """The box's allowlist file, re-read when its mtime or size changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stamp: tuple[float, int] | None = None
        self.policy = Policy(())
        self.lock = threading.Lock()

    def current(self) -> Policy:
        with self.lock:
            try:
                st = os.stat(self.path)
                stamp = (st.st_mtime, st.st_size)
                if stamp != self.stamp:
                    with open(self.path) as f:
                        self.policy = Policy(f.read().split())
                    self.stamp = stamp
            except OSError:
                pass  # keep the last good list
            return self.policy


def entry_error(entry: str) -> str | None:
    """Why ``entry`` is not a domain, ``*.suffix``, IP or CIDR (None when it is one)."""
    import re

    with contextlib.suppress(ValueError):
        ipaddress.ip_network(entry, strict=False)
        return None
    if re.fullmatch(r"(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?\.?",
                    entry.lower()):
        return None
    return "not a domain, *.suffix, IP or CIDR"


def write_allow_file(path: str, entries: Sequence[str]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("".join(f"{e}\n" for e in entries))
    os.replace(tmp, path)


class Proxy:
    """Serves a listening socket until it is closed (the box ended)."""

    def __init__(self, listener: socket.socket, allow: AllowFile, log_path: str) -> None:
        self.listener, self.allow, self.log_path = listener, allow, log_path
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.log_lock = threading.Lock()

    def log(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n"
        with self.log_lock, contextlib.suppress(OSError), open(self.log_path, "a") as f:
            f.write(line)

    def serve_forever(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.slots.acquire(blocking=False):
                self._reply(client, 503, "too many connections through the proxy")
                client.close()
                continue
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            with client:
                client.settimeout(60)
                self._serve(client)
        except OSError:
            pass
        finally:
            self.slots.release()

    def _serve(self, client: socket.socket) -> None:
        head = _read_head(client)
        if head is None:
            return
        header, rest = head
        lines = header.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._reply(client, 400, "not an HTTP request")
            return
        if method == "CONNECT":
            host, port = _split_host_port(target, 443)
        elif target.startswith("http://"):
            authority, _, path = target[7:].partition("/")
            host, port = _split_host_port(authority, 80)
            target = "/" + path
        else:
            self._reply(client, 400, "the proxy takes CONNECT or absolute http:// URLs "
                        "(HTTPS goes through CONNECT; TLS is not intercepted)")
            return
        if host is None:
            self._reply(client, 400, "bad host or port")
            return
        upstream = self._connect(client, method, host, port)
        if upstream is None:
            return
        with upstream:
            if method == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
            else:
                kept = [ln for ln in lines[1:] if ln and not ln.lower().startswith(
                    ("proxy-", "connection:", "keep-alive:"))]
                request = "\r\n".join([f"{method} {target} {version}", *kept,
                                       "Connection: close", "", ""])
                upstream.sendall(request.encode("latin-1") + rest)
            _relay(client, upstream)

    def _connect(self, client: socket.socket, method: str, host: str, port: int
                 ) -> socket.socket | None:
        policy = self.allow.current()
        addrs: list[Address] = []
        if _ip(host) is None and policy.name_allowed(host):
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                addrs = [ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos]
            except (OSError, UnicodeError):
                addrs = []
        addr, why = policy.check(host, addrs)
        if addr is None:
            self.log(f"DENY {method} {host}:{port}: {why}")
            self._reply(client, 403, f"coopy: {why} ([network] allow; `coopy allow BOX NAME` "
                        "adds one)")
            return None
        try:
            upstream = socket.create_connection((str(addr), port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            self.log(f"FAIL {method} {host}:{port} ({addr}): {exc.strerror or exc}")
            self._reply(client, 502, f"coopy: cannot reach {host}:{port}: {exc.strerror or exc}")
            return None
        upstream.settimeout(None)
        self.log(f"ALLOW {method} {host}:{port} ({addr})")
        return upstream

    @staticmethod
    def _reply(client: socket.socket, code: int, text: str) -> None:
        reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway",
                  503: "Service Unavailable"}[code]
        body = (text + "\n").encode()
        with contextlib.suppress(OSError):
            client.sendall(f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\n"
                           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                           .encode() + body)


def _read_head(client: socket.socket) -> tuple[bytes, bytes] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(8192)
        if not chunk or len(data) > HEADER_LIMIT:
            return None
        data += chunk
    header, _, rest = data.partition(b"\r\n\r\n")
    return header, rest


def _split_host_port(authority: str, default: int) -> tuple[str | None, int]:
    if authority.startswith("["):
        host, _, tail = authority[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = authority.rpartition(":") if ":" in authority else (
            authority, "", "")
    try:
        port = int(port_text) if port_text else default
    except ValueError:
        return None, 0
    if not host or not 0 < port < 65536:
        return None, 0
    return host, port


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both sides are done."""
    import selectors

    a.settimeout(None)
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    open_sides = 2
    while open_sides:
        for key, _ in sel.select():
            src = key.fileobj
            dst = key.data
            assert isinstance(src, socket.socket)
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if data:
                try:
                    dst.sendall(data)
                except OSError:
                    return
                continue
            sel.unregister(src)
            open_sides -= 1
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
    sel.close()


def serve(listen_fd: int, allow_path: str, log_path: str) -> None:
    """The proxy process's body (see :func:`coopy.net.start_proxy`)."""
    listener = socket.socket(fileno=listen_fd)
    Proxy(listener, AllowFile(allow_path), log_path).serve_forever()
