"""Host facts: what this machine and this caller can do, probed once, read-only after.

Planners take a :class:`HostFacts` as an argument (never a global), so tests can plan for
hosts they are not running on.  Probing is a handful of small file reads: it runs on
every ``coopy run`` and must stay well under a millisecond.
"""

from __future__ import annotations

import os
import pwd
from typing import NamedTuple

from coopy.idmap import SubRange, parse_subid_file

# Top-level host directories that the `host` image shows read-only, when they exist.
HOST_IMAGE_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "opt")

_HELPER_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin")


class HostFacts(NamedTuple):
    """Everything the plan depends on that comes from the host."""

    uid: int
    gid: int
    user: str
    home: str
    shell: str
    kernel: tuple[int, int]
    subuid: SubRange | None
    subgid: SubRange | None
    newuidmap: str | None
    newgidmap: str | None
    max_user_namespaces: int
    unprivileged_userns_clone: int | None  # Debian's sysctl; None where absent
    apparmor_restrict_userns: int | None  # Ubuntu 23.10+; None where absent
    # Whether something is mounted below the host's /etc (Docker and Kubernetes bind
    # /etc/hosts, /etc/resolv.conf…): overlay refuses such a layer in a user namespace
    # (its submounts are locked), so the host image then uses a copy of /etc.
    etc_submounts: bool = False
    # Top-level entries of the host root among HOST_IMAGE_DIRS: name -> symlink text, or
    # None for a real directory (merged-/usr hosts have bin -> usr/bin).
    layout: dict[str, str | None] = {}  # noqa: RUF012 - never mutated

    @property
    def rootless(self) -> bool:
        """Whether coopy runs as an ordinary user (the main mode)."""
        return self.uid != 0


def read_text(path: str) -> str | None:
    """A host file's text (UTF-8, undecodable bytes replaced), or None if unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _find_helper(name: str) -> str | None:
    for d in _HELPER_DIRS:
        path = f"{d}/{name}"
        if os.access(path, os.X_OK):
            return path
    return None


def probe_host() -> HostFacts:
    """Read the host facts for the calling user."""
    uid, gid = os.getuid(), os.getgid()
    try:
        pw = pwd.getpwuid(uid)
        user, home, shell = pw.pw_name, pw.pw_dir, pw.pw_shell
    except KeyError:
        user, home, shell = str(uid), os.environ.get("HOME", "/"), "/bin/sh"
    release = os.uname().release.split("-")[0].split(".")
    kernel = (int(release[0]), int(release[1]) if len(release) > 1 else 0)
    subuid = parse_subid_file(read_text("/etc/subuid") or "", user, uid)
    subgid = parse_subid_file(read_text("/etc/subgid") or "", user, uid)
    layout: dict[str, str | None] = {}
    for name in HOST_IMAGE_DIRS:
        path = "/" + name
        try:
            layout[name] = os.readlink(path)
        except FileNotFoundError:
            continue
        except OSError:  # EINVAL: a real directory, not a symlink
            if os.path.isdir(path):
                layout[name] = None
    mountinfo = read_text("/proc/self/mountinfo") or ""
    etc_submounts = any(
        len(f) > 4 and f[4].startswith("/etc/")
        for f in (line.split() for line in mountinfo.splitlines())
    )
    return HostFacts(
        uid=uid,
        gid=gid,
        user=user,
        home=home,
        shell=shell or "/bin/sh",
        kernel=kernel,
        subuid=subuid,
        subgid=subgid,
        newuidmap=_find_helper("newuidmap"),
        newgidmap=_find_helper("newgidmap"),
        max_user_namespaces=_read_int("/proc/sys/user/max_user_namespaces") or 0,
        unprivileged_userns_clone=_read_int("/proc/sys/kernel/unprivileged_userns_clone"),
        apparmor_restrict_userns=_read_int(
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
        ),
        etc_submounts=etc_submounts,
        layout=layout,
    )
