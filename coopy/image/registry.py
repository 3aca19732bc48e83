"""A registry client (distribution API v2) on the standard library: no skopeo, no crane.

What it does, in the order a pull needs it:

* **where**: ``https://`` first; plain HTTP only for this machine's registries
  (``localhost``, ``127.*``, ``::1``: Docker does the same) or when the user said
  ``--insecure`` / ``[image] insecure``.  The ``/v2/`` ping decides once per client.
* **who**: a 401's ``WWW-Authenticate`` challenge says Bearer (get a token from the realm,
  anonymously or with the user's credentials) or Basic.  Credentials come from
  ``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json``): ``auths`` entries, or a
  ``credsStore``/``credHelpers`` program (``docker-credential-NAME get``).
  The ``Authorization`` header is never sent on a redirect: blob GETs go to CDNs
  that reject it (and must not see the token).
* **what**: manifests (OCI and Docker, image indexes and manifest lists) are fetched by
  tag or digest and their sha256 checked when a digest names them; blobs are streamed to
  ``<dest>.part`` (resumed with ``Range`` after an interruption), hashed on the way,
  and renamed into place only when the digest matches.
* **when it fails**: connection errors, timeouts, 429 and 5xx are retried with backoff
  (4 attempts); other errors say what the registry answered.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from typing import Any

from coopy.errors import ImageError
from coopy.image.ref import DOCKER_HUB, Reference, is_loopback

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((*INDEX_TYPES, *MANIFEST_TYPES))

ATTEMPTS = 4
TIMEOUT = 30.0
CHUNK = 1 << 20
MAX_MANIFEST = 4 << 20  # the registry's own limit; a bigger answer is not a manifest


class Transient(Exception):
    """A failure worth retrying (connection, timeout, 429, 5xx)."""


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- credentials ---------------------------------------------------------------------


def docker_config_path() -> Path:
    """Where Docker (and podman with Docker's file) keep registry credentials."""
    base = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
    return Path(base) / "config.json"


def _auth_keys(registry: str) -> tuple[str, ...]:
    if registry == DOCKER_HUB:
        return ("https://index.docker.io/v1/", "index.docker.io", "docker.io",
                "registry-1.docker.io")
    return (registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/")


def find_credentials(registry: str, path: Path | None = None) -> tuple[str, str] | None:
    """(user, password) for ``registry`` from Docker's config file, or None."""
    try:
        config = json.loads((path or docker_config_path()).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    keys = _auth_keys(registry)
    helper = (config.get("credHelpers") or {}).get(registry) or config.get("credsStore")
    auths = config.get("auths") or {}
    for key in keys:
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            return user, password
        if entry.get("username") and entry.get("password"):
            return str(entry["username"]), str(entry["password"])
    if isinstance(helper, str) and helper:
        return _from_helper(helper, keys[0])
    return None


def _from_helper(helper: str, server: str) -> tuple[str, str] | None:
    import subprocess

    try:
        out = subprocess.run([f"docker-credential-{helper}", "get"], input=server,
                             capture_output=True, text=True, timeout=10, check=True).stdout
        data = json.loads(out)
        return str(data["Username"]), str(data["Secret"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return None  # no such helper or no entry: pull anonymously


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` → ("bearer", {"realm": …, "service": …})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().strip(",").strip().lower()
        i = eq + 1
        if i < len(rest) and rest[i] == '"':
            end = rest.find('"', i + 1)
            end = len(rest) if end < 0 else end
            params[key] = rest[i + 1:end]
            i = end + 1
        else:
            end = rest.find(",", i)
            end = len(rest) if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
        while i < len(rest) and rest[i] in ", ":
            i += 1
    return scheme.lower(), params


# ---- the client -------------------------------------------------------------------------


class _NoRedirectAuth(urllib.request.HTTPRedirectHandler):
    """Follow redirects (blob downloads go to CDNs) keeping Range, never Authorization."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and req.has_header("Range"):
            new.add_header("Range", req.get_header("Range") or "")
        return new


class Client:
    """One repository on one registry, as one user.  Not thread-safe for auth changes:
    call :meth:`ping` (or any request) once before sharing it between threads."""

    def __init__(self, ref: Reference, *, insecure: bool = False,
                 credentials: tuple[str, str] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.ref = ref
        self.plain_ok = insecure or is_loopback(ref.hostname)
        self.credentials = credentials if credentials is not None else \
            find_credentials(ref.registry)
        self.base: str | None = None
        self.authorization: str | None = None
        self.challenge: tuple[str, dict[str, str]] | None = None
        self.sleep = sleep
        ctx = ssl.create_default_context()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=ctx), _NoRedirectAuth())

    # -- transport

    def ping(self) -> None:
        """Pick https or (where allowed) http, and learn how the registry authenticates."""
        if self.base is not None:
            return
        schemes = ("https", "http") if self.plain_ok else ("https",)
        last: Exception | None = None
        for scheme in schemes:
            base = f"{scheme}://{self.ref.api_host}"
            try:
                with self._send("GET", base + "/v2/", {}) as resp:
                    resp.read()
                self.base = base
                return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    self.base = base
                    self.challenge = parse_challenge(exc.headers.get("WWW-Authenticate", ""))
                    exc.close()
                    return
                exc.close()
                raise ImageError(f"{self.ref.registry}: /v2/ answered {exc.code} {exc.reason}",
                                 hint="is this a container registry (API v2)?") from None
            except (urllib.error.URLError, OSError, HTTPException) as exc:
                last = exc
        hint = "check the name and your network"
        if not self.plain_ok:
            hint += "; a registry without TLS needs --insecure or [image] insecure = true"
        raise ImageError(f"cannot reach registry {self.ref.registry}: {_reason(last)}",
                         hint=hint)

    def _send(self, method: str, url: str, headers: dict[str, str],
              auth: str | None = None) -> HTTPResponse:
        req = urllib.request.Request(url, method=method, headers=headers)
        if auth:
            req.add_unredirected_header("Authorization", auth)
        resp = self.opener.open(req, timeout=TIMEOUT)
        assert isinstance(resp, HTTPResponse) or hasattr(resp, "read")
        return resp  # type: ignore[no-any-return]

    def _login(self) -> None:
        """Answer the registry's challenge: a bearer token, or basic credentials."""
        if self.challenge is None:
            return
        scheme, params = self.challenge
        if scheme == "basic":
            if self.credentials is None:
                raise ImageError(f"{self.ref.registry} wants a user name and password",
                                 hint="docker login (or podman login --authfile "
                                 "~/.docker/config.json) stores them where coopy reads them")
            user, password = self.credentials
            self.authorization = "Basic " + base64.b64encode(
                f"{user}:{password}".encode()).decode()
            return
        if scheme != "bearer" or "realm" not in params:
            raise ImageError(f"{self.ref.registry}: unsupported authentication {scheme!r}")
        query = {"scope": f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        url = params["realm"] + ("&" if "?" in params["realm"] else "?") + \
            urllib.parse.urlencode(query)
        if not url.startswith("https://") and not self.plain_ok:
            raise ImageError(f"{self.ref.registry}: token service {params['realm']} is not "
                             "https", hint="use --insecure only for a registry you trust")
        basic = None
        if self.credentials is not None:
            basic = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        try:
            with self._send("GET", url, {}, basic) as resp:
                data = json.loads(resp.read(1 << 20))
        except urllib.error.HTTPError as exc:
            exc.close()
            who = "your credentials" if basic else "anonymous pulls"
            raise ImageError(f"{self.ref.registry}: the token service refused {who} "
                             f"({exc.code} {exc.reason})",
                             hint="check the name, or log in (docker login) for a private "
                             "image") from None
        except (ValueError, urllib.error.URLError, OSError, HTTPException) as exc:
            raise ImageError(f"{self.ref.registry}: token service failed: {_reason(exc)}") \
                from None
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ImageError(f"{self.ref.registry}: the token service sent no token")
        self.authorization = f"Bearer {token}"

    def open(self, path: str, headers: dict[str, str] | None = None) -> HTTPResponse:
        """GET ``/v2/<repository>/<path>``, logging in on a 401, retrying transient errors.

        HTTP errors other than 401/429/5xx raise ImageError naming the answer.
        """
        self.ping()
        assert self.base is not None
        url = f"{self.base}/v2/{self.ref.repository}/{path}"
        headers = headers or {}
        delay = 0.5
        for attempt in range(ATTEMPTS):
            try:
                if self.authorization is None and self.challenge is not None:
                    self._login()
                try:
                    return self._send("GET", url, headers, self.authorization)
                except urllib.error.HTTPError as exc:
                    exc.close()
                    if exc.code == 401 and attempt == 0:
                        # token expired, or a scope the ping's challenge did not cover
                        header = exc.headers.get("WWW-Authenticate", "")
                        if header:
                            self.challenge = parse_challenge(header)
                        self.authorization = None
                        continue
                    if exc.code == 429 or exc.code >= 500:
                        raise Transient(f"{exc.code} {exc.reason}") from None
                    raise _http_error(self.ref, path, exc) from None
                except (urllib.error.URLError, OSError, HTTPException) as exc:
                    raise Transient(_reason(exc)) from None
            except Transient as exc:
                if attempt == ATTEMPTS - 1:
                    raise ImageError(f"{self.ref.registry}: GET {path}: {exc} "
                                     f"(after {ATTEMPTS} attempts)",
                                     hint="the registry or the network is failing; try "
                                     "again later") from None
                self.sleep(delay)
                delay *= 2
        raise ImageError(f"{self.ref.registry}: GET {path}: not authorized",
                         hint="log in (docker login) for a private image")

    # -- manifests and blobs

    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of the manifest named by tag or digest.

        A digest reference is verified against the bytes received.
        """
        with self.open(f"manifests/{reference}", {"Accept": ACCEPT}) as resp:
            data = resp.read(MAX_MANIFEST + 1)
            media = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        if len(data) > MAX_MANIFEST:
            raise ImageError(f"{self.ref}: the manifest is larger than 4 MiB")
        digest = sha256_digest(data)
        if reference.startswith("sha256:") and digest != reference:
            raise ImageError(f"{self.ref}: manifest {reference} arrived with digest {digest}",
                             hint="the registry (or something between) altered it; "
                             "nothing was stored")
        try:
            doc = json.loads(data)
        except ValueError:
            raise ImageError(f"{self.ref}: the manifest is not JSON") from None
        if isinstance(doc, dict) and isinstance(doc.get("mediaType"), str):
            media = doc["mediaType"]
        return data, media, digest

    def blob(self, digest: str, dest: Path, size: int | None = None,
             progress: Callable[[int], None] | None = None) -> None:
        """Download blob ``digest`` to ``dest``: via ``dest.part`` (resumed), verified.

        Two coopy processes fetching the same blob take turns (flock on the .part file);
        the second finds the blob in place.
        """
        part = dest.with_name(dest.name + ".part")
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "r+b") as out:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if dest.exists():
                return
            delay = 0.5
            for attempt in range(ATTEMPTS):
                try:
                    self._fetch_into(out, digest, size, progress)
                    break
                except Transient as exc:
                    if attempt == ATTEMPTS - 1:
                        raise ImageError(f"{self.ref.registry}: blob {digest}: {exc} (after "
                                         f"{ATTEMPTS} attempts)",
                                         hint="run the pull again: it resumes where it "
                                         "stopped") from None
                    self.sleep(delay)
                    delay *= 2
            out.seek(0)
            h = hashlib.sha256()
            while chunk := out.read(CHUNK):
                h.update(chunk)
            got = "sha256:" + h.hexdigest()
            if got != digest:
                out.truncate(0)
                raise ImageError(f"{self.ref}: blob {digest} arrived with digest {got}",
                                 hint="the registry (or something between) altered it; it "
                                 "was discarded, run the pull again")
            # No fsync: a layer blob lives only until it is unpacked (and the unpacked tree
            # is not synced either); a crash loses a pull, which the next one redoes.
            os.rename(part, dest)

    def _fetch_into(self, out: Any, digest: str, size: int | None,
                    progress: Callable[[int], None] | None) -> None:
        have = out.seek(0, os.SEEK_END)
        if size is not None and have >= size:
            if have > size:
                out.truncate(0)
                have = 0
            else:
                return
        headers = {"Range": f"bytes={have}-"} if have else {}
        if progress and have:
            progress(have)
        try:
            resp = self.open(f"blobs/{digest}", headers)
        except ImageError as exc:
            if have and "416" in exc.message:
                out.truncate(0)  # the part is not a prefix the registry knows: restart
                raise Transient("restarting a partial download") from None
            raise
        with resp:
            if have and resp.status != 206:  # the server ignored Range: start over
                out.seek(0)
                out.truncate(0)
                if progress:
                    progress(-have)
            try:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
            except (OSError, HTTPException) as exc:
                out.flush()
                raise Transient(_reason(exc)) from None
        out.flush()


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _http_error(ref: Reference, path: str, exc: urllib.error.HTTPError) -> ImageError:
    what = "manifest" if path.startswith("manifests/") else "blob"
    if exc.code == 404:
        return ImageError(f"{ref}: {what} not found ({path})",
                          hint="check the name and tag (`coopy pull REF` names what exists)")
    if exc.code in (401, 403):
        return ImageError(f"{ref}: access denied ({exc.code})",
                          hint="log in (docker login) if the image is private")
    return ImageError(f"{ref}: GET {path}: {exc.code} {exc.reason}")


def load_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object from ``data``; ImageError naming ``what`` otherwise."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise ImageError(f"{what} is not JSON") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    return doc
