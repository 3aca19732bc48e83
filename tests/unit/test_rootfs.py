"""Unit tests of coopy.rootfs: the generated /etc of the ``host`` image, from texts and trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coopy.facts import HostFacts
from coopy.rootfs import (
    GENERATED,
    BoxUser,
    box_user,
    build_group,
    build_hosts,
    build_passwd,
    build_resolv_conf,
    copy_host_etc,
    hidden_etc_entries,
)
from tests.unit.hostfacts import host_facts

SH = "/bin/sh"  # exists everywhere, so pick_shell keeps it

HOST_PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:*:33:33:www-data:/var/www:/usr/sbin/nologin
systemd-network:!:998:998:systemd Network Management:/:/usr/sbin/nologin
alice:$6$salt$hash:1000:1000:Alice,,,:/home/alice:/bin/bash
carol:x:1001:1001:Carol:/home/carol:/bin/zsh
bob:x:1002:1002:Bob:/home/bob:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
garbage line
short:x:5
weird:x:notanumber:0:w:/:/bin/sh
"""

HOST_GROUP = """\
root:x:0:
adm:x:4:syslog,alice
sudo:x:27:alice,bob
www-data:x:33:
users:x:100:alice,bob,root
docker:x:999:alice
alice:x:1000:
bob:x:1002:
nogroup:x:65534:
broken
bad:x:nan:
"""

ROOT = BoxUser("root", 0, 0, "/root", SH)
BOB = BoxUser("bob", 1000, 1000, "/home/bob", SH)


def facts(uid: int, user: str = "alice", shell: str = SH) -> HostFacts:
    return host_facts(uid, user, shell=shell)


def names_uids(text: str) -> list[tuple[str, int]]:
    return [(e.split(":")[0], int(e.split(":")[2])) for e in text.splitlines()]


# --- passwd ---------------------------------------------------------------------------


def test_build_passwd() -> None:
    text = build_passwd(HOST_PASSWD, [ROOT, BOB])
    assert text.endswith("\n")
    assert text.splitlines() == [
        "root:x:0:0:root:/root:/bin/sh",
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
        "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin",
        "systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin",
        # bob's host entry (uid 1002) is replaced by the box's bob.
        "bob:x:1000:1000:bob:/home/bob:/bin/sh",
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
    ]


@pytest.mark.parametrize(
    ("users", "present", "absent"),
    [
        pytest.param([ROOT], {"root", "daemon", "nobody"}, {"alice", "bob", "carol"},
                     id="root-only"),
        pytest.param([ROOT, BOB], {"bob"}, {"alice", "carol"}, id="named-user"),
        pytest.param(
            [ROOT, BoxUser("www-data", 33, 33, "/var/www", SH)], {"www-data"}, {"alice"},
            id="system-account-user",
        ),
        pytest.param(
            [ROOT, BoxUser("alice", 1000, 1000, "/home/alice", SH)], {"alice"}, {"carol"},
            id="caller",
        ),
    ],
)
def test_build_passwd_users(
    users: list[BoxUser], present: set[str], absent: set[str]
) -> None:
    text = build_passwd(HOST_PASSWD, users)
    entries = names_uids(text)
    names = [n for n, _ in entries]
    assert present <= set(names)
    assert not absent & set(names)
    assert len(names) == len(set(names)), "one entry per name"
    assert [u for _, u in entries] == sorted(u for _, u in entries)
    assert all(e.split(":")[1] == "x" for e in text.splitlines()), "no password hashes"
    assert all(len(e.split(":")) == 7 for e in text.splitlines())
    for u in users:
        assert f"{u.name}:x:{u.uid}:{u.gid}:{u.name}:{u.home}:{u.shell}" in text.splitlines()


def test_build_passwd_no_hash_leaks() -> None:
    assert "$6$" not in build_passwd(HOST_PASSWD, [ROOT, BOB])


# --- group ----------------------------------------------------------------------------


def test_build_group() -> None:
    assert build_group(HOST_GROUP, [ROOT, BOB]).splitlines() == [
        "root:x:0:",
        "adm:x:4:",
        "sudo:x:27:bob",
        "www-data:x:33:",
        "users:x:100:bob,root",
        "docker:x:999:",
        "bob:x:1000:",
        "nogroup:x:65534:",
    ]


@pytest.mark.parametrize(
    ("users", "expected_extra"),
    [
        pytest.param([ROOT], [], id="root-only"),
        pytest.param([ROOT, BoxUser("www-data", 33, 33, "/var/www", SH)], [],
                     id="system-group-not-duplicated"),
        pytest.param([ROOT, BoxUser("dev", 1234, 1234, "/home/dev", SH)], ["dev:x:1234:"],
                     id="new-group"),
    ],
)
def test_build_group_users(users: list[BoxUser], expected_extra: list[str]) -> None:
    lines = build_group(HOST_GROUP, users).splitlines()
    gids = [int(e.split(":")[2]) for e in lines]
    assert gids == sorted(gids) and len(gids) == len(set(gids))
    host_kept = [e for e in lines if int(e.split(":")[2]) < 1000 or e.startswith("nogroup:")]
    assert len(host_kept) == 7
    assert [e for e in lines if e not in host_kept] == expected_extra
    names = {u.name for u in users}
    for e in lines:
        members = [m for m in e.split(":")[3].split(",") if m]
        assert set(members) <= names, e


# --- box_user ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uid", "name", "expected"),
    [
        pytest.param(1000, None, BoxUser("root", 0, 0, "/root", SH), id="default-rootless"),
        pytest.param(0, None, BoxUser("root", 0, 0, "/root", SH), id="default-root"),
        pytest.param(1000, "root", BoxUser("root", 0, 0, "/root", SH), id="root-by-name"),
        pytest.param(1234, "dev", BoxUser("dev", 1234, 1234, "/home/dev", SH),
                     id="new-user-rootless-keep-id"),
        pytest.param(0, "dev", BoxUser("dev", 1000, 1000, "/home/dev", SH), id="new-user-root"),
        pytest.param(1234, "carol", BoxUser("carol", 1234, 1234, "/home/carol", SH),
                     id="host-human-is-new-rootless"),
        pytest.param(0, "carol", BoxUser("carol", 1000, 1000, "/home/carol", SH),
                     id="host-human-is-new-root"),
        pytest.param(1234, "www-data",
                     BoxUser("www-data", 33, 33, "/var/www", "/usr/sbin/nologin"),
                     id="system-account-rootless"),
        pytest.param(0, "daemon", BoxUser("daemon", 1, 1, "/usr/sbin", "/usr/sbin/nologin"),
                     id="system-account-root"),
        pytest.param(1234, "nobody",
                     BoxUser("nobody", 65534, 65534, "/nonexistent", "/usr/sbin/nologin"),
                     id="nobody"),
    ],
)
def test_box_user(uid: int, name: str | None, expected: BoxUser) -> None:
    assert box_user(facts(uid), name, HOST_PASSWD) == expected


def test_box_user_missing_shell_falls_back() -> None:
    user = box_user(facts(1000, shell="/nonexistent/shell"), None, HOST_PASSWD)
    assert user.shell in ("/bin/bash", "/bin/sh")
    assert os.path.exists(user.shell)


# --- hosts, resolv.conf -----------------------------------------------------------------


@pytest.mark.parametrize("hostname", ["box", "my-project"])
def test_build_hosts(hostname: str) -> None:
    lines = build_hosts(hostname).splitlines()
    assert f"127.0.1.1\t{hostname}" in lines
    assert "127.0.0.1\tlocalhost" in lines
    assert any(line.startswith("::1\tlocalhost") for line in lines)


HOST_RESOLV = "nameserver 10.0.0.53\nsearch example.org\n"


@pytest.mark.parametrize(
    ("net", "host", "nameserver"),
    [
        ("host", HOST_RESOLV, True),
        ("none", HOST_RESOLV, False),
        ("none", None, False),
    ],
)
def test_build_resolv_conf(net: str, host: str | None, nameserver: bool) -> None:
    text = build_resolv_conf(net, host)
    assert ("nameserver" in text) is nameserver
    if nameserver:
        assert text == HOST_RESOLV
    else:
        assert all(line.startswith("#") for line in text.splitlines())


# --- hidden_etc_entries -----------------------------------------------------------------

# (relative path, kind, mode, hidden?) — kind: f file, d directory, l symlink (mode unused).
ETC_TREE = [
    ("shadow", "f", 0o640, True),
    ("gshadow", "f", 0o600, True),
    ("os-release", "f", 0o644, False),
    ("world-only", "f", 0o604, False),
    ("private", "d", 0o700, True),
    ("traverse-only", "d", 0o711, True),
    ("apt", "d", 0o755, False),
    ("apt/secret", "f", 0o600, False),  # not a scanned directory
    ("link-to-shadow", "l", 0, False),
    ("dangling", "l", 0, False),
    ("ssh", "d", 0o755, False),
    ("ssh/ssh_host_rsa_key", "f", 0o600, True),
    ("ssh/ssh_host_rsa_key.pub", "f", 0o644, False),
    ("ssh/ssh_config", "f", 0o644, False),
    ("ssh/key-link", "l", 0, False),
    ("ssl", "d", 0o755, False),
    ("ssl/private", "d", 0o700, True),
    ("ssl/private/key.pem", "f", 0o600, False),  # under a hidden dir: hidden with it
    ("security", "d", 0o755, False),
    ("security/opasswd", "f", 0o600, True),
    *[(name, "f", 0o600, False) for name in GENERATED],
]


def make_tree(root: Path, tree: list[tuple[str, str, int, bool]]) -> None:
    root.mkdir()
    dirs = []
    for rel, kind, mode, _ in tree:
        p = root / rel
        if kind == "d":
            p.mkdir()
            dirs.append((p, mode))
        elif kind == "f":
            p.write_text("x")
            os.chmod(p, mode)
        else:
            os.symlink("/nonexistent" if rel == "dangling" else "shadow", p)
    for p, mode in reversed(dirs):  # contents first: a 0700 dir is still ours to fill
        os.chmod(p, mode)


@pytest.fixture
def fake_etc(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    make_tree(etc, ETC_TREE)
    return etc


def test_hidden_etc_entries(fake_etc: Path) -> None:
    expected = sorted(rel for rel, _, _, hidden in ETC_TREE if hidden)
    assert sorted(hidden_etc_entries(str(fake_etc))) == expected


@pytest.mark.parametrize("name", GENERATED)
def test_hidden_etc_entries_never_lists_generated(fake_etc: Path, name: str) -> None:
    assert name not in hidden_etc_entries(str(fake_etc))


def test_hidden_etc_entries_missing_dir(tmp_path: Path) -> None:
    assert hidden_etc_entries(str(tmp_path / "absent")) == []


@pytest.mark.parametrize(
    "tree",
    [
        pytest.param(
            # Debian's /etc/sudoers.d is 0750 root:root; its files are 0440.
            [("sudoers.d", "d", 0o750, True), ("sudoers.d/README", "f", 0o440, False)],
            id="sudoers.d-0750",
        ),
        pytest.param(
            [("ssh", "d", 0o700, True), ("ssh/ssh_host_ed25519_key", "f", 0o600, False)],
            id="ssh-0700",
        ),
    ],
)
def test_hidden_etc_entries_hidden_dir_not_descended(
    tmp_path: Path, tree: list[tuple[str, str, int, bool]]
) -> None:
    # A whiteout of a directory hides all of it; an entry under it as well would make
    # create_host_layers mknod the directory's whiteout, then fail to mkdir it as a parent.
    etc = tmp_path / "etc"
    make_tree(etc, tree)
    hidden = hidden_etc_entries(str(etc))
    assert hidden == [rel for rel, _, _, h in tree if h]
    for a in hidden:
        assert not [b for b in hidden if b.startswith(a + "/")], hidden


# --- copy_host_etc ----------------------------------------------------------------------


def test_copy_host_etc(fake_etc: Path, tmp_path: Path) -> None:
    dst = tmp_path / "etc-host"
    copy_host_etc(dst, str(fake_etc))
    copied = {
        str(p.relative_to(dst)): p for p in dst.rglob("*")
    }
    for rel, kind, mode, _ in ETC_TREE:
        src = fake_etc / rel
        parent_readable = all(
            m & 0o005 == 0o005 for r, k, m, _ in ETC_TREE if k == "d" and rel.startswith(r + "/")
        )
        if kind == "l":
            assert os.readlink(copied[rel]) == os.readlink(src), rel
        elif not parent_readable:
            assert rel not in copied, rel
        elif kind == "d":
            assert (rel in copied) is (mode & 0o005 == 0o005), rel
        else:
            assert (rel in copied) is bool(mode & 0o004), rel
            if rel in copied:
                assert copied[rel].read_text() == "x"
                assert copied[rel].stat().st_mode & 0o777 == mode
