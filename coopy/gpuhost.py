"""The host's GPUs as records (what discovery and CDI specs both produce), and the two
reads they share: where the driver's tree is (``COOPY_GPU_ROOT``) and the driver's version.

Its own module so that coopy/gpu.py (discovery, selection) and coopy/cdi.py (CDI specs,
which discovery consults first) both build on it without importing each other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

from coopy.facts import read_text

ENV_ROOT = "COOPY_GPU_ROOT"


class Gpu(NamedTuple):
    """One GPU: ``index`` is nvidia-smi's (PCI bus order), ``node`` its box path."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, as nvidia-smi's name
    minor: int
    node: str
    uuid: str | None = None
    bus_id: str | None = None
    model: str | None = None


class GpuFile(NamedTuple):
    """A file passed in: ``source`` a host path, ``name`` its name in the box's GPU dir."""

    source: str
    name: str
    why: str
    soname: str | None = None


class GpuHost(NamedTuple):
    """What discovery found: empty ``gpus`` means none (``problems`` may say why)."""

    root: str
    source: str  # "discovery", "cdi:<file>", "wsl", "amd" or "none"
    driver: str | None = None  # the kernel module's version
    lib_version: str | None = None  # the version in libcuda.so.<version>
    gpus: tuple[Gpu, ...] = ()
    control: tuple[str, ...] = ()  # box paths of the other nodes (/dev/nvidiactl…)
    libraries: tuple[GpuFile, ...] = ()
    binaries: tuple[GpuFile, ...] = ()
    firmware: tuple[str, ...] = ()
    sockets: tuple[str, ...] = ()  # box paths (/run/nvidia-persistenced/socket)
    env: tuple[tuple[str, str], ...] = ()  # from a CDI spec
    problems: tuple[str, ...] = ()

    @property
    def vendor(self) -> str:
        """``nvidia``, ``wsl`` (NVIDIA through /dev/dxg) or ``amd``."""
        return self.source if self.source in ("wsl", "amd") else "nvidia"

    def host_path(self, box_path: str) -> str:
        """Where a box path of the driver (a node, a socket) is under the root."""
        return join(self.root, box_path)


def gpu_root(environ: Mapping[str, str] = os.environ) -> str:
    """The root discovery reads: ``$COOPY_GPU_ROOT`` or ``/``."""
    return os.path.abspath(environ.get(ENV_ROOT) or "/")


def join(root: str, path: str) -> str:
    """``path`` (absolute, of the root's tree) as a host path."""
    return path if root == "/" else root.rstrip("/") + "/" + path.lstrip("/")


def resolve_in_root(root: str, path: str, hops: int = 40) -> str | None:
    """The real path of ``path`` inside ``root`` (absolute links restart at the root)."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        if part == ".":
            continue
        host = join(root, "/" + "/".join([*done, part]))
        try:
            target = os.readlink(host)
        except FileNotFoundError:
            return None
        except OSError:  # not a link
            done.append(part)
            continue
        hops -= 1
        if hops < 0:
            return None
        if target.startswith("/"):
            done = []
        parts = [p for p in target.split("/") if p] + parts
    result = "/" + "/".join(done)
    return result if os.path.exists(join(root, result)) else None


def driver_version(root: str) -> str | None:
    """The kernel module's version: /sys/module/nvidia/version, else /proc/driver/…/version."""
    text = read_text(join(root, "/sys/module/nvidia/version"))
    if text and text.strip():
        return text.strip()
    text = read_text(join(root, "/proc/driver/nvidia/version")) or ""
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug …" or
    # "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release …"
    words = text.split("\n", 1)[0].split()
    for i, word in enumerate(words):
        if word == "Module":
            rest = words[i + 1:]
            if rest[:1] == ["for"]:
                rest = rest[2:]
            if rest and rest[0][:1].isdigit():
                return rest[0]
    return None
