"""A box's GPUs: the mount ops that pass them in, its ld cache, and the exclusive locks.

:func:`plan_gpu` is pure (ops from what :mod:`coopy.gpu` found and selected).  What
acts: :func:`ensure_ld_cache` writes the box's loader cache once per (image cache,
driver libraries) into ``<state>/gpu/``; :func:`lock_gpus` takes one flock per GPU in a
machine-wide directory, held by the process that owns the box (``coopy run`` itself, or
the keeper) so the kernel drops them when the box ends, also on SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from coopy.gpu import (
    GPU_BIN_DIR,
    GPU_DIR,
    GPU_LIB_DIR,
    GpuError,
    Request,
    box_env,
    discover,
    select_gpus,
    shm_default,
)
from coopy.gpuhost import Gpu, GpuHost
from coopy.ops import Bind, Op, Symlink, Tmpfs

# Locks are machine-wide so that two users' boxes do not share a GPU either.  They are
# cooperative (a lock, not a permission: whoever can open /dev/nvidiaN can use it).
LOCK_DIR = "/tmp/coopy-gpu-locks"


def plan_gpu(host: GpuHost, gpus: Sequence[Gpu], ld_cache: str | None,
             idmap: bool = False, ld_conf: str | None = None) -> tuple[Op, ...]:
    """The ops that pass ``gpus`` in: nodes, libraries, binaries, links, the ld cache.

    Device nodes are binds of the host's (a user namespace cannot mknod) and never
    nodev; the files go read-only into :data:`GPU_DIR`, a tmpfs of its own, so the same
    ops work on any image.  The tmpfs itself is not made read-only: the ReadOnly op is
    also noexec, which would stop the libraries from being mapped; box root may add
    files there as anywhere in its /run, but cannot change the bound files.
    """
    ops: list[Op] = []
    for node in (*host.control, *(g.node for g in gpus)):
        ops.append(Bind(host.host_path(node), node, directory=False, nodev=False))
    ops.append(Tmpfs(GPU_DIR, mode=0o755))
    names = {f.name for f in host.libraries}
    for lib in host.libraries:
        ops.append(Bind(lib.source, f"{GPU_LIB_DIR}/{lib.name}", readonly=True,
                        directory=False))
    links = sonames(host)
    for link, name in links.items():
        if link not in names:
            ops.append(Symlink(f"{GPU_LIB_DIR}/{link}", name))
    for binary in host.binaries:
        ops.append(Bind(binary.source, f"{GPU_BIN_DIR}/{binary.name}", readonly=True,
                        directory=False))
    for sock in host.sockets:
        ops.append(Bind(host.host_path(sock), sock, directory=False, noexec=True))
    if ld_cache is not None:
        ops.append(Bind(ld_cache, "/etc/ld.so.cache", readonly=True, directory=False,
                        idmap=idmap))
    if ld_conf is not None:  # so that an `ldconfig` run in the box keeps them
        ops.append(Bind(ld_conf, "/etc/ld.so.conf", readonly=True, directory=False,
                        idmap=idmap))
    return tuple(ops)


def sonames(host: GpuHost) -> dict[str, str]:
    """Link name -> file name in the GPU dir: each SONAME, and ``libcuda.so`` (Triton
    links with -lcuda)."""
    links = {lib.soname: lib.name for lib in host.libraries if lib.soname}
    if "libcuda.so.1" in links:
        links["libcuda.so"] = "libcuda.so.1"
    return links


def ensure_ld_conf(cache_dir: Path, base: str | None = "/etc/ld.so.conf") -> str | None:
    """The box's /etc/ld.so.conf: the image's (``base``), plus :data:`GPU_LIB_DIR`
    (None when the image has none)."""
    import zlib

    if base is None:
        return None
    try:
        with open(base, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return None
    text = text + ("" if text.endswith("\n") or not text else "\n") + \
        f"# coopy: the GPU driver's libraries\n{GPU_LIB_DIR}\n"
    data = text.encode("utf-8", "surrogateescape")
    path = cache_dir / f"ld.so.conf-{zlib.crc32(data):08x}{zlib.adler32(data):08x}"
    if not path.exists():
        _write_atomic(path, data)
    return str(path)


def _write_atomic(path: Path, data: bytes) -> None:
    from coopy.paths import ensure_private_dir

    ensure_private_dir(path.parent)
    tmp = path.parent / f".{path.name}.{os.getpid()}"
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def ensure_ld_cache(host: GpuHost, cache_dir: Path,
                    base: str | None = "/etc/ld.so.cache") -> str:
    """The box's /etc/ld.so.cache: the image's entries (``base``: the host's, or the
    file in a pulled image's layer) plus the GPU libraries in :data:`GPU_LIB_DIR`;
    written once per (image cache file, driver libraries)."""
    from coopy.ldcache import Entry, build_cache, parse_cache

    links = sonames(host)
    ident = "-"
    with contextlib.suppress(OSError):
        if base is not None:
            st = os.stat(base)
            ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    import zlib  # not hashlib: importing it costs ~3 ms of every start with GPUs

    data = repr((ident, sorted(links.items()), GPU_LIB_DIR)).encode()
    path = cache_dir / f"ld.so.cache-{zlib.crc32(data):08x}{zlib.adler32(data):08x}"
    if path.exists():
        return str(path)
    entries: list[Entry] = []
    if base is not None:
        with contextlib.suppress(OSError, ValueError), open(base, "rb") as f:
            entries = parse_cache(f.read())
    flags = next((e.flags for e in entries if e.name == "libc.so.6"), 0x0303)
    entries = [e for e in entries if e.name not in links]
    entries += [Entry(link, flags, f"{GPU_LIB_DIR}/{link}") for link in links]
    _write_atomic(path, build_cache(entries))
    return str(path)


# ---- exclusive locks ----------------------------------------------------------------


def lock_name(host: GpuHost, gpu: Gpu) -> str:
    """The lock file of a GPU: its UUID, else its minor (tagged by a test root)."""
    import zlib

    name = gpu.uuid or f"nvidia{gpu.minor}"
    if host.root != "/":
        name = f"root-{zlib.crc32(host.root.encode()):08x}-{name}"
    return f"{LOCK_DIR}/{name}.lock"


def _lock_dir() -> None:
    try:
        os.mkdir(LOCK_DIR, 0o1777)
        os.chmod(LOCK_DIR, 0o1777)  # umask
    except FileExistsError:
        pass  # made by another user or an earlier box
    st = os.lstat(LOCK_DIR)
    import stat

    if not stat.S_ISDIR(st.st_mode):
        raise GpuError(f"{LOCK_DIR} is not a directory", hint=f"remove it: rm {LOCK_DIR}")


def lock_gpus(host: GpuHost, gpus: Sequence[Gpu], holder: str) -> tuple[int, ...]:
    """flock every GPU of ``gpus`` (CLOEXEC fds, released when closed or the holder
    dies); a GPU held by another box is an error naming that box."""
    _lock_dir()
    fds: list[int] = []
    try:
        for gpu in gpus:
            path = lock_name(host, gpu)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
                with contextlib.suppress(PermissionError):  # another user's file
                    os.fchmod(fd, 0o666)
            except PermissionError:  # another user's file whose mode is not 0666
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                raise GpuError(
                    f"GPU {gpu.index} is held by {other or 'another box'} ([gpu] exclusive)",
                    hint="wait for that box to end, stop it, or choose another GPU with --gpus",
                ) from None
            with contextlib.suppress(OSError):  # read-only: the holder stays unnamed
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{holder}\n".encode(), 0)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return tuple(fds)


def held_locks() -> list[tuple[str, str]]:
    """(lock file name, holder) of every GPU lock some live process holds (/proc/locks)."""
    try:
        names = sorted(n for n in os.listdir(LOCK_DIR) if n.endswith(".lock"))
        with open("/proc/locks") as f:
            locks = f.read().split("\n")
    except OSError:
        return []
    held = set()
    for line in locks:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK":
            held.add(fields[5])  # maj:min:inode
    out = []
    for name in names:
        try:
            st = os.stat(f"{LOCK_DIR}/{name}")
            with open(f"{LOCK_DIR}/{name}", encoding="utf-8", errors="replace") as f:
                holder = f.read().strip()
        except OSError:
            continue
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        if dev in held:
            out.append((name[:-5], holder))
    return out


# ---- everything a box needs -------------------------------------------------------


class BoxGpus(NamedTuple):
    """The GPUs of one box and how they get in; ``locks`` are fds to keep open."""

    host: GpuHost
    gpus: tuple[Gpu, ...]
    ops: tuple[Op, ...]
    env: dict[str, str]
    shm: int  # /dev/shm unless configured: half of the RAM
    locks: tuple[int, ...] = ()


def prepare_gpus(request: Request | None, environ: Mapping[str, str], *, cache_dir: Path,
                 idmap: bool, exclusive: bool = False, holder: str = "",
                 dry_run: bool = False, image_layers: Sequence[str] = ()) -> BoxGpus | None:
    """Discover, select, plan; lock when ``exclusive``.  None when the box gets no GPU.

    ``image_layers`` (a pulled image's, top first): the box's ld cache and ld.so.conf
    start from the image's own files there, not the host's."""
    if request == "none":
        return None
    host = discover()
    gpus = select_gpus(host, request, environ)
    if not gpus:
        return None
    ld_cache = ld_conf = None
    if host.libraries:
        cache: str | None = "/etc/ld.so.cache"
        conf: str | None = "/etc/ld.so.conf"
        if image_layers:  # a pulled image's own, never the host's
            from coopy.image.boxroot import image_file

            cache, conf = (image_file(image_layers, "etc/ld.so.cache"),
                           image_file(image_layers, "etc/ld.so.conf"))
        ld_cache = ensure_ld_cache(host, cache_dir, cache)
        ld_conf = ensure_ld_conf(cache_dir, conf)
    ops = plan_gpu(host, gpus, ld_cache, idmap, ld_conf)
    env = box_env(gpus, host, environ)
    if host.binaries:
        from coopy.request import BOX_PATH

        env["PATH"] = f"{BOX_PATH}:{GPU_BIN_DIR}"
    locks: tuple[int, ...] = ()
    if not dry_run:
        raise_memlock()
    if exclusive and not dry_run:
        label = ", ".join(str(g.index) for g in gpus)
        locks = lock_gpus(host, gpus, f"{holder} (GPU {label})")
    return BoxGpus(host, gpus, ops, env, shm_default(), locks)


def raise_memlock() -> None:
    """RLIMIT_MEMLOCK as high as allowed (pinned host memory for CUDA, NCCL, RDMA):
    unlimited for root, the hard limit otherwise; the box inherits it."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    want = resource.RLIM_INFINITY if os.getuid() == 0 else hard
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (want, want))
    except (ValueError, OSError):
        with contextlib.suppress(ValueError, OSError):  # no CAP_SYS_RESOURCE: the hard one
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
