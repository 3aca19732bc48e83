"""Image references and platforms: pure parsing, no I/O.

``ubuntu`` → ``docker.io/library/ubuntu:latest``; ``ghcr.io/org/img@sha256:…``;
``127.0.0.1:5000/x:1``.  The rules are Docker's (distribution/reference): the first
path component names a registry when it holds a ``.`` or a ``:`` or is ``localhost``.
"""

from __future__ import annotations

import platform as _platform
from typing import NamedTuple

from coopy.errors import ImageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_REPO_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-/")
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_HEX = frozenset("0123456789abcdef")


class Reference(NamedTuple):
    """A parsed image reference; ``digest`` pins it when given."""

    registry: str  # "docker.io", "ghcr.io", "127.0.0.1:5000"
    repository: str  # "library/ubuntu"
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        """The host:port the v2 API is served on (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def hostname(self) -> str:
        """The registry host without its port (``[::1]:5000`` → ``::1``)."""
        host = self.registry
        if host.startswith("["):
            return host[1:].split("]", 1)[0]
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def check_digest(digest: str) -> str:
    """``digest`` if it is a well-formed ``sha256:<64 hex>``; raises ImageError otherwise."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not set(hexpart) <= _HEX:
        raise ImageError(f"unsupported or malformed digest {digest!r}",
                         hint="coopy verifies sha256 digests (sha256:<64 hex digits>)")
    return digest


def parse_reference(text: str) -> Reference:
    """Parse an image reference as Docker does; raises ImageError with the reason."""
    ref = text.strip()
    if not ref:
        raise ImageError("empty image reference")
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
        check_digest(digest)
    tag = None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref, tag = ref.rsplit(":", 1)
        if not tag or len(tag) > 128 or not set(tag) <= _TAG_CHARS or tag[0] in ".-":
            raise ImageError(f"{text!r}: invalid tag {tag!r}")
    first, sep, rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repo = first, rest
    else:
        registry, repo = DOCKER_HUB, ref
    if registry == DOCKER_HUB and "/" not in repo:
        repo = f"library/{repo}"
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if not repo or not set(repo) <= _REPO_CHARS or "//" in repo or repo[0] in "._-/" \
            or repo[-1] in "._-/":
        raise ImageError(f"{text!r}: invalid repository name {repo!r}",
                         hint="names are lower case: [REGISTRY/]NAME[:TAG][@sha256:DIGEST]")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repo, tag, digest)


def is_loopback(host: str) -> bool:
    """Registries Docker talks plain HTTP to without being told: this machine's."""
    return host in ("localhost", "::1") or host.startswith("127.")


class Platform(NamedTuple):
    """An OCI platform: ``linux/amd64``, ``linux/arm/v7``."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386",
         "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
_VARIANT = {"armv7l": "v7", "armv6l": "v6"}


def host_platform() -> Platform:
    """This machine's platform as registries name it."""
    machine = _platform.machine()
    return Platform("linux", _ARCH.get(machine, machine), _VARIANT.get(machine))


def parse_platform(text: str) -> Platform:
    """``linux/arm64`` or ``linux/arm/v7``; raises ImageError on another shape."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"invalid platform {text!r}", hint='write OS/ARCH[/VARIANT], e.g. '
                         '"linux/arm64"')
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def platform_matches(want: Platform, entry: dict[str, object]) -> bool:
    """Whether an index entry's ``platform`` object is ``want`` (arm64's v8 is implied)."""
    if entry.get("os") != want.os or entry.get("architecture") != want.architecture:
        return False
    variant = entry.get("variant") or None
    if want.variant is None:
        # arm needs its variant named; arm64's only one is v8; amd64's v2/v3 all run here
        return want.architecture != "arm" or variant is None
    return variant == want.variant
