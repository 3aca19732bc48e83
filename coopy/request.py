"""What a box is asked to be: the request records and the constants of a box's environment.

Kept apart from :mod:`coopy.box` (which runs boxes) so that the modules a box run calls
into — images, GPUs, worktrees, agents — can name a request without importing the
runner back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from coopy.errors import ConfigError, HostError
from coopy.idmap import IdMap, build_idmap

if TYPE_CHECKING:
    from coopy.facts import HostFacts
    from coopy.net import PortMap

# The environment of a box is built, never inherited: these host variables pass through
# (they describe the terminal, the locale and the proxies, not the user's secrets).
ENV_PASSTHROUGH = (
    "TERM", "COLORTERM", "LANG", "LANGUAGE", "TZ", "NO_COLOR",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)
ENV_PASSTHROUGH_PREFIXES = ("LC_",)
BOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

GIT_GUARDED = (".git/hooks", ".git/config")


class MountRequest(NamedTuple):
    """A validated ``-v``/``mounts`` entry: host source (or volume name), box target."""

    source: Path | None
    volume: str | None
    target: str
    readonly: bool


class RunRequest(NamedTuple):
    """What ``coopy run`` was asked for, after config layering."""

    command: Sequence[str]
    workspace: Path
    workspace_target: str | None = None
    image: str = "host"
    mounts: tuple[MountRequest, ...] = ()
    env: Mapping[str, str] = {}  # noqa: RUF012 - never mutated
    hostname: str | None = None
    user: str | None = None
    net: str = "none"
    ports: tuple[PortMap, ...] = ()  # published in the private mode
    allow: tuple[str, ...] = ()  # the allow mode's names, IPs and CIDRs
    net_backend: str = "auto"  # private: "pasta", "slirp4netns" or whichever is found
    userns: str = "auto"
    shm_size: int | None = None
    tmp_size: int | None = None
    tty: bool | None = None  # None: a PTY when stdin is a terminal
    dry_run: bool = False
    git: str = "default"  # .git/hooks and .git/config read-only; "ro": all .git; "rw"
    seccomp: bool = True
    nested_userns: bool = False
    pids: int | None = 4096
    nofile: int | None = None
    memory: int | None = None
    cpus: float | None = None
    setup: tuple[str, ...] = ()  # [sandbox] setup: steps built into layers on the image
    platform: str | None = None  # [image] platform: which image of a multi-platform index
    insecure: bool = False  # [image] insecure: plain HTTP to a registry not on loopback
    agent: str | None = None  # the preset's name (coopy/agents.py), for `coopy ls`
    worktree: str | None = None  # the box's own git worktree (coopy/worktree.py)
    workspace_mode: str = "rw"  # "cow": the box writes into an overlay (coopy/changes.py)
    etc_files: tuple[tuple[str, str], ...] = ()  # (path under /etc, text) added to its /etc
    gpus: str | tuple[int | str, ...] | None = None  # None: all there are, if any
    gpu_exclusive: bool = False


def plan_ids(facts: HostFacts, box_uid: int, box_gid: int, userns: str) -> IdMap | None:
    """The box's id map, or None for ``--userns=host``; errors say what to fix."""
    if userns == "host":
        if facts.uid != 0:
            raise ConfigError(
                "--userns=host needs root: it makes box root the host's root",
                hint="leave it out: as an ordinary user the box's root is you",
            )
        return None
    try:
        return build_idmap(
            host_uid=facts.uid, host_gid=facts.gid, box_uid=box_uid, box_gid=box_gid,
            subuid=facts.subuid, subgid=facts.subgid,
        )
    except ValueError:
        raise HostError(
            "root has no subordinate id range in /etc/subuid and /etc/subgid: a box of "
            "root runs on one, so that box root is not host root",
            hint="sudo usermod --add-subuids 1000000-1065535 --add-subgids "
            "1000000-1065535 root (or give --userns=host to let box root be host root)",
        ) from None
