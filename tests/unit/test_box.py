"""Unit tests of the pure parts of coopy.box: hostname, environment, id planning, warnings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coopy.box import box_hostname, build_env, single_id_warning
from coopy.errors import ConfigError, HostError
from coopy.facts import HostFacts
from coopy.idmap import IdMap, IdRange, SubRange
from coopy.request import BOX_PATH, plan_ids
from tests.unit.hostfacts import host_facts

# RFC 1123 label, as sethostname(2) users expect: letters, digits, inner hyphens, ≤ 63.
LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

SUB = SubRange(100000, 65536)


def facts(uid: int, sub: SubRange | None) -> HostFacts:
    return host_facts(uid, "root" if uid == 0 else "alice", subuid=sub, subgid=sub,
                      newuidmap="/usr/bin/newuidmap", newgidmap="/usr/bin/newgidmap")


# --- box_hostname -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workspace", "expected"),
    [
        ("/home/u/My Project", "my-project"),
        ("/home/u/proj", "proj"),
        ("/home/u/___", "box"),
        ("/", "box"),
        ("/home/u/web.app_v2", "web-app-v2"),
        ("/home/u/-lead-trail-", "lead-trail"),
        ("/home/u/Über Café", "ber-caf"),
        ("/home/u/" + "a" * 100, "a" * 63),
        ("/home/u/" + "a" * 62 + "_b", "a" * 62),
        ("/home/u/" + "a" * 62 + "--b", "a" * 62),
    ],
    ids=lambda x: x if len(x) < 30 else f"{x[:20]}...({len(x)})",
)
def test_box_hostname(workspace: str, expected: str) -> None:
    name = box_hostname(Path(workspace))
    assert name == expected
    assert LABEL.fullmatch(name), name


# --- build_env --------------------------------------------------------------------------

HOST_ENV = {
    "TERM": "xterm-kitty",
    "COLORTERM": "truecolor",
    "LANG": "en_US.UTF-8",
    "LC_ALL": "C.UTF-8",
    "LC_TIME": "de_DE.UTF-8",
    "TZ": "Europe/Berlin",
    "NO_COLOR": "1",
    "HTTP_PROXY": "http://proxy:3128",
    "https_proxy": "http://proxy:3128",
    "no_proxy": "localhost",
    "AWS_SECRET_ACCESS_KEY": "hunter2",
    "SSH_AUTH_SOCK": "/run/user/1000/ssh-agent",
    "PATH": "/home/alice/bin:/usr/bin",
    "HOME": "/home/alice",
    "USER": "alice",
    "LD_PRELOAD": "/tmp/evil.so",
    "GITHUB_TOKEN": "ghp_x",
    "XLC_ALL": "no",
    "DISPLAY": ":0",
}


def env(extra: dict[str, str] | None = None, host: dict[str, str] | None = None) -> dict[str, str]:
    return build_env(HOST_ENV if host is None else host, extra or {},
                     home="/root", user="root", hostname="proj")


@pytest.mark.parametrize(
    "name",
    ["TERM", "COLORTERM", "LANG", "LC_ALL", "LC_TIME", "TZ", "NO_COLOR", "HTTP_PROXY",
     "https_proxy", "no_proxy"],
)
def test_env_passes(name: str) -> None:
    assert env()[name] == HOST_ENV[name]


@pytest.mark.parametrize(
    "name",
    ["AWS_SECRET_ACCESS_KEY", "SSH_AUTH_SOCK", "LD_PRELOAD", "GITHUB_TOKEN", "XLC_ALL",
     "DISPLAY"],
)
def test_env_blocks(name: str) -> None:
    assert name not in env()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PATH", BOX_PATH),
        ("HOME", "/root"),
        ("USER", "root"),
        ("LOGNAME", "root"),
        ("HOSTNAME", "proj"),
        ("container", "coopy"),
        ("IS_SANDBOX", "1"),
    ],
)
def test_env_own(name: str, value: str) -> None:
    assert env()[name] == value


def test_env_no_secret_values() -> None:
    values = set(env().values())
    assert not values & {"hunter2", "ghp_x", "/home/alice/bin:/usr/bin", "/home/alice"}


def test_env_term_default() -> None:
    assert env(host={})["TERM"] in ("xterm-256color", "dumb")


@pytest.mark.parametrize(
    ("extra", "name", "value"),
    [
        ({"FOO": "bar"}, "FOO", "bar"),
        ({"HOME": "/work"}, "HOME", "/work"),
        ({"PATH": "/opt/bin"}, "PATH", "/opt/bin"),
        ({"TERM": "dumb"}, "TERM", "dumb"),
        ({"SSH_AUTH_SOCK": "/x"}, "SSH_AUTH_SOCK", "/x"),
    ],
)
def test_env_extra_overrides(extra: dict[str, str], name: str, value: str) -> None:
    assert env(extra)[name] == value


# --- plan_ids ---------------------------------------------------------------------------


def test_plan_ids_root_without_subids() -> None:
    with pytest.raises(HostError, match="subordinate") as info:
        plan_ids(facts(0, None), 0, 0, "auto")
    assert info.value.hint is not None and "usermod" in info.value.hint
    assert "--userns=host" in info.value.hint


def test_plan_ids_userns_host_needs_root() -> None:
    with pytest.raises(ConfigError, match="needs root") as info:
        plan_ids(facts(1000, SUB), 0, 0, "host")
    assert info.value.hint


def test_plan_ids_userns_host_as_root() -> None:
    assert plan_ids(facts(0, None), 0, 0, "host") is None


@pytest.mark.parametrize(
    ("uid", "sub", "box_uid", "subordinate", "box_root_host"),
    [
        (0, SubRange(1000000, 65536), 0, True, 1000000),
        (0, SubRange(1000000, 65536), 1000, True, 1000000),
        (1000, SUB, 0, True, 1000),
        (1000, SUB, 1000, True, 100000),
        (1000, None, 0, False, 1000),
        (1000, None, 1000, False, None),
    ],
)
def test_plan_ids(
    uid: int, sub: SubRange | None, box_uid: int, subordinate: bool, box_root_host: int | None
) -> None:
    m = plan_ids(facts(uid, sub), box_uid, box_uid, "auto")
    assert m is not None
    assert m.subordinate is subordinate
    assert m.to_host_uid(0) == box_root_host
    if uid != 0:
        assert m.to_host_uid(box_uid) == uid


# --- single_id_warning ------------------------------------------------------------------

SINGLE = IdMap((IdRange(0, 1000, 1),), (IdRange(0, 1000, 1),), subordinate=False)
SUBORDINATE = IdMap((IdRange(0, 1000, 1), IdRange(1, 100000, 65535)),
                    (IdRange(0, 1000, 1), IdRange(1, 100000, 65535)), subordinate=True)


@pytest.mark.parametrize(
    ("uid", "idmap", "warns"),
    [
        (1000, SINGLE, True),
        (1000, SUBORDINATE, False),
        (0, SUBORDINATE, False),
        (0, SINGLE, False),
    ],
)
def test_single_id_warning(uid: int, idmap: IdMap, warns: bool) -> None:
    text = single_id_warning(facts(uid, None), idmap)
    if not warns:
        assert text is None
        return
    assert text is not None
    assert text.startswith("coopy: warning: alice ")
    assert "hint: sudo usermod --add-subuids" in text and text.endswith("alice\n")
