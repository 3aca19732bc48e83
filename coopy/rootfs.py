"""The built-in ``host`` image: the host's programs, read-only, with an /etc of the box's own.

It needs no download.  The box's root is an overlay whose only lower layer is a small
skeleton made here (top-level directories, the host's merged-/usr symlinks, /root and
the user's home); the host's /usr, /bin, /sbin, /lib*, /opt are bound read-only on top.
/etc is a read-only overlay of two layers: a generated one (passwd and group with only
system accounts and the box's users, hosts, hostname, resolv.conf, machine-id, plus
whiteouts that hide every host /etc entry not readable by everybody: shadow, gshadow,
sudoers, ssh host keys, ssl/private, …) over the host's /etc, so os-release,
alternatives, nsswitch.conf, ld.so.cache, ssl/certs and localtime are the host's own.
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from coopy.facts import HostFacts, read_text
from coopy.state import remove_tree

# The skeleton: (path, mode).  Mount points for the host directories are added from
# the host's layout; /tmp and /var/tmp are sticky, /root private as on any Debian.
SKELETON_DIRS = (
    ("etc", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("var", 0o755),
    ("var/tmp", 0o1777),
    ("var/cache", 0o755),
    ("var/lib", 0o755),
    ("var/log", 0o755),
    ("root", 0o700),
    ("home", 0o755),
    ("mnt", 0o755),
    ("srv", 0o755),
    ("media", 0o755),
)

# Host /etc subdirectories scanned for entries to hide besides the top level.
SECRET_DIRS = ("ssh", "ssl", "security", "sudoers.d")

# Files the generated layer always provides (they shadow the host's).
GENERATED = ("passwd", "group", "hosts", "hostname", "resolv.conf", "machine-id")

SYSTEM_ID_MAX = 999  # uids/gids below 1000 are system accounts on Debian and Ubuntu
NOBODY = 65534


class BoxUser(NamedTuple):
    """The account the box's command runs as."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str


def pick_shell(facts: HostFacts) -> str:
    """The user's host shell when the box has it (it does on the host image), else sh."""
    for candidate in (facts.shell, "/bin/bash", "/bin/sh"):
        if candidate and os.path.exists(candidate):
            return candidate
    return "/bin/sh"


def box_user(facts: HostFacts, name: str | None, host_passwd: str) -> BoxUser:
    """The box's user: root by default; ``--user NAME`` a named non-root account.

    A system account of the host (``nobody``, ``www-data``) keeps its ids; any other name
    gets the caller's uid when rootless (so the map can make it the caller: keep-id), or
    1000 when coopy runs as root.
    """
    shell = pick_shell(facts)
    if name is None or name == "root":
        return BoxUser("root", 0, 0, "/root", shell)
    for line in host_passwd.splitlines():
        parts = line.split(":")
        if len(parts) == 7 and parts[0] == name:
            uid, gid = int(parts[2]), int(parts[3])
            if uid <= SYSTEM_ID_MAX or uid == NOBODY:
                return BoxUser(name, uid, gid, parts[5] or "/", parts[6] or shell)
    uid = facts.uid if facts.uid != 0 else 1000
    gid = facts.gid if facts.uid != 0 else 1000
    return BoxUser(name, uid, gid, f"/home/{name}", shell)


def build_passwd(host_passwd: str, users: Iterable[BoxUser]) -> str:
    """System accounts of the host plus the box's users; no other human on the host."""
    wanted = {u.name: u for u in users}
    out = []
    for line in host_passwd.splitlines():
        parts = line.split(":")
        if len(parts) != 7 or parts[0] in wanted:
            continue
        uid = int(parts[2]) if parts[2].isdigit() else -1
        if 0 < uid <= SYSTEM_ID_MAX or uid == NOBODY:
            parts[1] = "x"
            out.append(":".join(parts))
    for u in wanted.values():
        out.append(f"{u.name}:x:{u.uid}:{u.gid}:{u.name}:{u.home}:{u.shell}")
    return "\n".join(sorted(out, key=lambda e: int(e.split(":")[2]))) + "\n"


def build_group(host_group: str, users: Iterable[BoxUser]) -> str:
    """System groups of the host (members limited to the box's users) plus users' groups."""
    users = list(users)
    names = {u.name for u in users}
    have: set[int] = set()
    out = []
    for line in host_group.splitlines():
        parts = line.split(":")
        if len(parts) != 4 or not parts[2].isdigit():
            continue
        gid = int(parts[2])
        if gid <= SYSTEM_ID_MAX or gid == NOBODY:
            parts[1] = "x"
            parts[3] = ",".join(m for m in parts[3].split(",") if m in names)
            out.append(":".join(parts))
            have.add(gid)
    for u in users:
        if u.gid not in have:
            out.append(f"{u.name}:x:{u.gid}:")
            have.add(u.gid)
    return "\n".join(sorted(out, key=lambda e: int(e.split(":")[2]))) + "\n"


def build_hosts(hostname: str) -> str:
    """/etc/hosts naming the box."""
    return (
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{hostname}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n"
    )


def build_resolv_conf(net: str, host_resolv: str | None) -> str:
    """resolv.conf: the host's with the host's network; none at all without a network."""
    if net == "host" and host_resolv:
        return host_resolv
    return "# coopy: this box has no network (--net none)\n"


def hidden_etc_entries(etc: str = "/etc") -> list[str]:
    """Host /etc entries (relative paths) that everybody may not read: they stay hidden.

    A file another user cannot read (shadow, gshadow, sudoers, ssh host keys,
    ssl/private) is a secret by the host's own account; the box never sees it, also
    when box root could read it.
    """
    hidden = []
    for sub in ("", *SECRET_DIRS):
        if sub in hidden:
            continue  # hidden whole by its own whiteout; entries under it would clash
        base = os.path.join(etc, sub)
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            rel = os.path.join(sub, entry.name) if sub else entry.name
            if rel in GENERATED:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            need = 0o005 if stat.S_ISDIR(st.st_mode) else 0o004
            if st.st_mode & need != need:
                hidden.append(rel)
    return hidden


def copy_host_etc(dst: Path, etc: str = "/etc") -> None:
    """A copy of the host's /etc with only what everybody may read (see hidden_etc_entries).

    Used instead of /etc itself as the lower layer when something is mounted below the
    host's /etc; costs tens of milliseconds, only on such hosts.
    """
    for dirpath, dirnames, filenames in os.walk(etc):
        rel = os.path.relpath(dirpath, etc)
        target = dst if rel == "." else dst / rel
        target.mkdir(exist_ok=True)
        keep = []
        for name in dirnames:
            src = os.path.join(dirpath, name)
            st = os.lstat(src)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), target / name)
            elif st.st_mode & 0o005 == 0o005:
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            src = os.path.join(dirpath, name)
            try:
                st = os.lstat(src)
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(src), target / name)
                elif stat.S_ISREG(st.st_mode) and st.st_mode & 0o004:
                    with open(src, "rb") as fin, open(target / name, "xb") as fout:
                        fout.write(fin.read())
                    os.chmod(target / name, stat.S_IMODE(st.st_mode) & 0o7755)
            except OSError:
                continue  # unreadable or vanished: not part of the box's /etc


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


SKELETON_VERSION = 1  # bump when SKELETON_DIRS or the way a skeleton is made changes


def ensure_skeleton(
    base: Path, facts: HostFacts, user: BoxUser, owner: tuple[int, int] | None
) -> Path:
    """The root skeleton layer for this host layout and box user, made once and shared.

    Lower layers are only read, so every box of the same shape shares one skeleton;
    making and removing ~30 directories per box cost ~5 ms.  It is built under a
    temporary name and renamed into place, so a box never sees half of one.
    """
    shape = (SKELETON_VERSION, sorted(facts.layout.items()), user.home, user.uid, user.gid,
             owner, facts.uid, facts.gid)
    path = base / f"skel-{zlib.crc32(repr(shape).encode()):08x}"
    if path.is_dir():
        return path
    tmp = base / f".{path.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        _fill_skeleton(tmp, facts, user)
        if owner is not None:
            _chown_tree(tmp, owner)
        if user.uid != 0:
            os.chown(tmp / user.home.lstrip("/"), *_host_ids(owner, facts, user))
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, path)
        except OSError:  # another box made it first: use theirs
            if not path.is_dir():
                raise
    finally:
        if tmp.exists():
            remove_tree(tmp)
    return path


def _fill_skeleton(skel: Path, facts: HostFacts, user: BoxUser) -> None:
    for name, target in sorted(facts.layout.items()):
        if target is None:
            (skel / name).mkdir(mode=0o755)
        else:
            os.symlink(target, skel / name)
    for rel, mode in SKELETON_DIRS:
        p = skel / rel
        p.mkdir(mode=mode)
        os.chmod(p, mode)
    if "usr" not in facts.layout:
        (skel / "usr").mkdir()
    if user.uid != 0:
        (skel / user.home.lstrip("/")).mkdir(parents=True, exist_ok=True)


def create_host_layers(
    box_dir: Path,
    facts: HostFacts,
    *,
    hostname: str,
    net: str,
    user: BoxUser,
    owner: tuple[int, int] | None,
    host_passwd: str,
    resolv: str | None = None,
) -> tuple[Path, Path]:
    """Write the generated /etc layer of a box, find its skeleton; return both paths.

    ``owner`` is the host uid/gid that box root is when it differs from the caller
    (boxes of root): the layers are given to it so box root owns its / and /root.
    ``host_passwd`` is the host's /etc/passwd as the caller already read it.  The
    skeleton is shared by the boxes next to this one (see :func:`ensure_skeleton`).
    """
    skel = ensure_skeleton(box_dir.parent, facts, user, owner)
    etc = box_dir / "etc"
    etc.mkdir()
    users = [box_user(facts, None, host_passwd), user]
    if facts.uid != 0 and user.name != facts.user:
        users.append(BoxUser(facts.user, facts.uid, facts.gid, f"/home/{facts.user}", user.shell))
    _write(etc / "passwd", build_passwd(host_passwd, users))
    _write(etc / "group", build_group(read_text("/etc/group") or "", users))
    _write(etc / "hosts", build_hosts(hostname))
    _write(etc / "hostname", hostname + "\n")
    if resolv is None:
        resolv = build_resolv_conf(net, read_text("/etc/resolv.conf") or "")
    _write(etc / "resolv.conf", resolv)
    _write(etc / "machine-id", os.urandom(16).hex() + "\n", 0o444)
    for rel in hidden_etc_entries():
        parent = etc / os.path.dirname(rel)
        parent.mkdir(parents=True, exist_ok=True)
        # A 0:0 character device is an overlay whiteout; since Linux 5.8 anyone may
        # create one (vfs_mknod exempts WHITEOUT_DEV from CAP_MKNOD).
        os.mknod(etc / rel, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    if facts.etc_submounts:
        copy_host_etc(box_dir / "etc-host")
    if owner is not None:
        _chown_tree(etc, owner)
        if facts.etc_submounts:
            _chown_tree(box_dir / "etc-host", owner)
    return skel, etc


def _host_ids(owner: tuple[int, int] | None, facts: HostFacts, user: BoxUser) -> tuple[int, int]:
    # The named user's home must be theirs: rootless keep-id maps box uid -> caller, so
    # the caller's own ids; for boxes of root, box uid U is root's subordinate start + U.
    if owner is None:
        return facts.uid, facts.gid
    return owner[0] + user.uid, owner[1] + user.gid


def _chown_tree(top: Path, owner: tuple[int, int]) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        os.chown(dirpath, *owner, follow_symlinks=False)
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), *owner, follow_symlinks=False)
