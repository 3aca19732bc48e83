"""Test images made here: tar layers, OCI layouts, a loopback registry and a token stub.

Used by tests/integration/test_images.py and bench/images.  Nothing is downloaded: the
layers are written by the tests (a static probe program compiled with ``gcc -static``
stands in for a userland), pushed with ``skopeo copy`` into Debian's ``docker-registry``
on 127.0.0.1.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).parent
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    None: "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


class Entry(NamedTuple):
    """One tar member: kind is file, dir, symlink, link, fifo, chr."""

    name: str
    kind: str = "file"
    data: bytes | str = b""  # file content, or the link target
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def tar_bytes(entries: Iterable[Entry]) -> bytes:
    """An uncompressed tar of ``entries``, in order, names kept as given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, 1_700_000_000
            payload = None
            if e.kind == "file":
                payload = e.data if isinstance(e.data, bytes) else e.data.encode()
                info.size = len(payload)
            elif e.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif e.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(e.data)
            elif e.kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, str(e.data)
            elif e.kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif e.kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def compress(data: bytes, how: str | None) -> bytes:
    """``data`` gzip- or zstd-compressed (zstd by the zstd program), or as it is."""
    if how == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if how == "zstd":
        return subprocess.run(["zstd", "-q", "-c", "-"], input=data, capture_output=True,
                              check=True).stdout
    return data


def probe_binary(dest_dir: Path) -> Path:
    """tests/probe/imgprobe.c compiled statically (cached in ``dest_dir``)."""
    out = dest_dir / "imgprobe"
    if not out.exists():
        subprocess.run(["gcc", "-O2", "-static", "-o", str(out),
                        str(HERE / "probe" / "imgprobe.c")], check=True)
    return out


def base_entries(probe: Path) -> list[Entry]:
    """A tiny root: /bin/imgprobe (static), /etc with passwd, os-release, a few dirs."""
    return [
        Entry("./", "dir", mode=0o755),
        Entry("bin/", "dir", mode=0o755),
        Entry("bin/imgprobe", data=probe.read_bytes(), mode=0o755),
        Entry("bin/sh", "link", "bin/imgprobe"),
        Entry("etc/", "dir", mode=0o755),
        Entry("etc/passwd", data="root:x:0:0:root:/root:/bin/sh\n"
              "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"),
        Entry("etc/group", data="root:x:0:\ndaemon:x:1:\n"),
        Entry("etc/os-release", data='ID=coopytest\nPRETTY_NAME="coopy test image"\n'),
        Entry("var/", "dir", mode=0o755),
        Entry("var/lib/", "dir", mode=0o755),
        Entry("var/lib/old/", "dir", mode=0o755),
        Entry("var/lib/old/a", data="a\n"),
        Entry("var/lib/old/b", data="b\n"),
        Entry("srv/", "dir", mode=0o755),
        Entry("srv/gone", data="gone\n"),
        Entry("srv/owned", data="owned\n", uid=1000, gid=1000),
        Entry("srv/suid", data="x", mode=0o4755),
        Entry("lib", "symlink", "usr/lib"),
        Entry("usr/", "dir", mode=0o755),
        Entry("usr/lib/", "dir", mode=0o755),
        Entry("usr/lib/hard", data="hard\n"),
        Entry("usr/lib/hardlink", "link", "usr/lib/hard"),
    ]


def top_entries() -> list[Entry]:
    """A second layer: a whiteout, an opaque directory, a changed file."""
    return [
        Entry("srv/", "dir", mode=0o755),
        Entry("srv/.wh.gone"),
        Entry("var/lib/old/", "dir", mode=0o755),
        Entry("var/lib/old/.wh..wh..opq"),
        Entry("var/lib/old/c", data="c\n"),
        Entry("etc/", "dir", mode=0o755),
        Entry("etc/os-release", data='ID=coopytest\nVERSION_ID="2"\n'),
    ]


class OciLayout:
    """An OCI image layout directory written by hand (blobs, index.json, oci-layout)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.refs: list[dict[str, Any]] = []

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        """Store ``data``; its descriptor."""
        digest = hashlib.sha256(data).hexdigest()
        (self.path / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def image(self, layers: Sequence[tuple[bytes, str | None]], *, arch: str = "amd64",
              env: Sequence[str] = ("PATH=/bin:/usr/bin",),
              lie: int | None = None) -> dict[str, Any]:
        """An image of ``layers`` (uncompressed tar, compression); its manifest descriptor.

        ``lie``: the config's diff_id of that layer is wrong (a config that does not
        describe its layers, as an altered image's would).
        """
        descs, diff_ids = [], []
        for i, (tar, how) in enumerate(layers):
            descs.append(self.blob(compress(tar, how), LAYER_TYPES[how]))
            diff_ids.append("sha256:" + hashlib.sha256(tar + b"x" * (i == lie)).hexdigest())
        config = {"architecture": arch, "os": "linux",
                  "config": {"Env": list(env), "Cmd": ["/bin/imgprobe", "id"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        cdesc = self.blob(json.dumps(config).encode(), OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc,
                    "layers": descs}
        desc = self.blob(json.dumps(manifest).encode(), OCI_MANIFEST)
        desc["platform"] = {"architecture": arch, "os": "linux"}
        return desc

    def index(self, manifests: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """A multi-platform index blob of ``manifests``; its descriptor."""
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(manifests)}
        return self.blob(json.dumps(doc).encode(), OCI_INDEX)

    def tag(self, desc: dict[str, Any], name: str) -> None:
        """Name ``desc`` in index.json and write it."""
        entry = dict(desc)
        entry["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.refs.append(entry)
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs}
        (self.path / "index.json").write_text(json.dumps(doc))


def push(layout: Path, tag: str, dest: str) -> None:
    """skopeo copy --all oci:LAYOUT:TAG docker://DEST (plain HTTP)."""
    subprocess.run(["skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false",
                    f"oci:{layout}:{tag}", f"docker://{dest}"], check=True,
                   capture_output=True, timeout=120)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """Debian's docker-registry on 127.0.0.1:PORT, detached (not a child of pytest)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.pid = 0
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.yml"
        self.config.write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: coopy-test\n")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it (double fork through sh) and wait for /v2/ (10 s at most)."""
        out = subprocess.run(
            ["sh", "-c", f"docker-registry serve {self.config} >{self.root}/log 2>&1 "
             "</dev/null & echo $!"], capture_output=True, text=True, check=True,
            start_new_session=True)
        self.pid = int(out.stdout.strip())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {(self.root / 'log').read_text()}")

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 5 s)."""
        if not self.pid:
            return
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return
        try:
            signal.pidfd_send_signal(fd, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and Path(f"/proc/{self.pid}").exists():
                time.sleep(0.02)
            if Path(f"/proc/{self.pid}").exists():
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)
        self.pid = 0


class AuthStub:
    """A registry front on 127.0.0.1 that wants a bearer token (or basic auth).

    mode "open": no authentication (``corrupt`` flips a bit of every blob, as a registry
    or proxy that alters content would).  mode "bearer": /v2/… without a token answers
    401 with a Bearer challenge whose realm is this server's /token, which hands out
    tokens (to anyone, or only to ``user:password`` when given).  mode "basic": /v2/…
    wants ``Authorization: Basic`` of ``user:password``.  Blob GETs are redirected to
    /cdn/…, which refuses any request that carries an Authorization header (as Docker
    Hub's CDN does).  Everything else is proxied to the real registry behind.  ``log``
    keeps (path, authorization) of every request.  ``fail_first``: the first N blob
    requests answer 503 (a registry having a bad moment).
    """

    def __init__(self, upstream: str, mode: str = "bearer",
                 credentials: tuple[str, str] | None = None, corrupt: bool = False,
                 fail_first: int = 0) -> None:
        self.upstream, self.mode, self.credentials = upstream, mode, credentials
        self.corrupt = corrupt
        self.fail_first = fail_first  # answer the first N blob requests 503
        self.tokens: set[str] = set()
        self.log: list[tuple[str, str | None]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                stub.handle(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _basic_ok(self, header: str | None) -> bool:
        if self.credentials is None:
            return True
        want = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        return header == want

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        auth = h.headers.get("Authorization")
        self.log.append((h.path, auth))
        if h.path.startswith("/token"):
            if not self._basic_ok(auth):
                return self._send(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            token = secrets.token_hex(8)
            self.tokens.add(token)
            return self._send(h, 200, json.dumps({"token": token}).encode())
        if h.path.startswith("/cdn/"):
            if auth is not None:
                return self._send(h, 400, b"no Authorization on the CDN, please")
            return self._proxy(h, h.path[len("/cdn"):])
        if self.fail_first and "/blobs/" in h.path:
            self.fail_first -= 1
            return self._send(h, 503, b"try again")
        if self.mode == "open":
            pass
        elif self.mode == "basic":
            if auth is None or not self._basic_ok(auth):
                return self._send(h, 401, b"{}", {"WWW-Authenticate": 'Basic realm="stub"'})
        elif not (auth and auth.startswith("Bearer ") and auth[7:] in self.tokens):
            parts = h.path.split("/")
            repo = "/".join(parts[2:-2]) if len(parts) > 4 else ""
            challenge = (f'Bearer realm="http://{self.host}/token",service="stub"'
                         + (f',scope="repository:{repo}:pull"' if repo else ""))
            return self._send(h, 401, b"{}", {"WWW-Authenticate": challenge})
        if "/blobs/" in h.path:
            return self._send(h, 307, b"", {"Location": f"http://{self.host}/cdn{h.path}"})
        return self._proxy(h, h.path)

    def _proxy(self, h: http.server.BaseHTTPRequestHandler, path: str) -> None:
        headers = {k: v for k, v in h.headers.items() if k in ("Accept", "Range")}
        req = urllib.request.Request(f"http://{self.upstream}{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                body = resp.read()
                status = resp.status
                out = {k: v for k, v in resp.headers.items()
                       if k in ("Content-Type", "Docker-Content-Digest", "Content-Range")}
        except urllib.error.HTTPError as exc:
            body, status, out = exc.read(), exc.code, {}
        if self.corrupt and "/blobs/" in path and body:
            body = bytes([body[0] ^ 1]) + body[1:]
        self._send(h, status, body, out)

    @staticmethod
    def _send(h: http.server.BaseHTTPRequestHandler, status: int, body: bytes,
              headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
