"""Image references, platforms, registry challenges and credentials: pure parsing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from coopy.errors import ImageError
from coopy.image.ref import Platform, parse_platform, parse_reference, platform_matches
from coopy.image.registry import find_credentials, parse_challenge
from coopy.image.store import choose_manifest

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(("text", "registry", "repo", "tag", "digest"), [
    ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
    ("ubuntu:24.04", "docker.io", "library/ubuntu", "24.04", None),
    ("nvidia/cuda:12.4.1-runtime-ubuntu22.04", "docker.io", "nvidia/cuda",
     "12.4.1-runtime-ubuntu22.04", None),
    (f"ghcr.io/org/img@{D}", "ghcr.io", "org/img", None, D),
    (f"ghcr.io/org/img:v1@{D}", "ghcr.io", "org/img", "v1", D),
    ("127.0.0.1:5000/x/y:1", "127.0.0.1:5000", "x/y", "1", None),
    ("localhost/x", "localhost", "x", "latest", None),
    ("index.docker.io/library/debian:12", "docker.io", "library/debian", "12", None),
    ("quay.io/a/b/c", "quay.io", "a/b/c", "latest", None),
])
def test_parse_reference(text: str, registry: str, repo: str, tag: str | None,
                         digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repo, tag, digest)


@pytest.mark.parametrize("text", ["", "Ubuntu", "a//b", "x:", "x@sha256:abc", "x@md5:" + "a" * 32,
                                  "x:-bad", "/x"])
def test_parse_reference_refuses(text: str) -> None:
    with pytest.raises(ImageError):
        parse_reference(text)


def test_docker_hub_api_host() -> None:
    assert parse_reference("debian").api_host == "registry-1.docker.io"
    assert parse_reference("127.0.0.1:5000/x").hostname == "127.0.0.1"


@pytest.mark.parametrize(("want", "entry", "ok"), [
    ("linux/amd64", {"os": "linux", "architecture": "amd64"}, True),
    ("linux/amd64", {"os": "linux", "architecture": "arm64", "variant": "v8"}, False),
    ("linux/arm64", {"os": "linux", "architecture": "arm64", "variant": "v8"}, True),
    ("linux/arm/v7", {"os": "linux", "architecture": "arm", "variant": "v6"}, False),
    ("linux/arm/v7", {"os": "linux", "architecture": "arm", "variant": "v7"}, True),
    ("linux/amd64", {"os": "windows", "architecture": "amd64"}, False),
])
def test_platform_matches(want: str, entry: dict[str, object], ok: bool) -> None:
    assert platform_matches(parse_platform(want), entry) is ok


def test_choose_manifest_names_the_alternatives() -> None:
    index = {"manifests": [
        {"digest": D, "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "sha256:" + "b" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
    ]}
    assert choose_manifest(index, Platform("linux", "amd64"), "x")["digest"].endswith("b" * 64)
    with pytest.raises(ImageError, match="linux/arm64"):
        choose_manifest(index, Platform("linux", "s390x"), "x")


@pytest.mark.parametrize(("header", "scheme", "params"), [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/debian:pull"', "bearer",
     {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
      "scope": "repository:library/debian:pull"}),
    ('Basic realm="Registry Realm"', "basic", {"realm": "Registry Realm"}),
    ("Bearer realm=https://x/t, service=s", "bearer", {"realm": "https://x/t", "service": "s"}),
    ('Bearer realm="https://x/t",scope="repository:a:pull,push"', "bearer",
     {"realm": "https://x/t", "scope": "repository:a:pull,push"}),
])
def test_parse_challenge(header: str, scheme: str, params: dict[str, str]) -> None:
    assert parse_challenge(header) == (scheme, params)


def test_credentials_from_docker_config(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
        "ghcr.io": {"auth": base64.b64encode(b"me:tok:en").decode()},
    }}))
    assert find_credentials("docker.io", path) == ("hub", "pw")
    assert find_credentials("ghcr.io", path) == ("me", "tok:en")
    assert find_credentials("quay.io", path) is None
    assert find_credentials("ghcr.io", tmp_path / "missing.json") is None
