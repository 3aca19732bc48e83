"""GPUs: what the host has (discovery), which of them a box gets (selection), and why.

Everything here is pure over a root directory: ``/`` normally, ``COOPY_GPU_ROOT=DIR`` to
point all of it (device nodes, /proc/driver, libraries, the ld cache, CDI specs) at
another tree, which is how the tests run real boxes against a fake driver.  No NVIDIA
container toolkit, no NVML: device nodes, two /proc files, the loader's cache and a
directory scan (NOTES.md (a), "Recommended discovery algorithm").

A CDI spec for ``nvidia.com/gpu`` in /etc/cdi or /var/run/cdi is used instead of
discovery when every path it names exists (:mod:`coopy.cdi`); a stale or broken one is
reported and discovery is used.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence

from coopy.errors import HostError
from coopy.facts import read_text
from coopy.gpuhost import (
    Gpu,
    GpuFile,
    GpuHost,
    driver_version,
    gpu_root,
    join,
    resolve_in_root,
)

NVIDIA_MAJOR = 195
# Control nodes, bound when present: nvidia-uvm(-tools) are what cuInit needs besides
# nvidiactl (570+ fails with 304 without uvm-tools); modeset only matters for display.
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
BINARIES = (
    "nvidia-smi", "nvidia-debugdump", "nvidia-persistenced",
    "nvidia-cuda-mps-control", "nvidia-cuda-mps-server",
)
BIN_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin")
# The driver's user-space libraries looked up in the ld cache by name prefix
# (libnvidia-container's compute and utility lists).
KNOWN_LIBS = (
    "libcuda.so", "libcudadebugger.so", "libnvidia-ml.so", "libnvidia-cfg.so",
    "libnvidia-nscq.so", "libnvidia-ptxjitcompiler.so", "libnvidia-nvvm.so",
    "libnvidia-gpucomp.so", "libnvidia-opencl.so", "libnvidia-allocator.so",
    "libnvidia-pkcs11.so", "libnvidia-pkcs11-openssl3.so", "libnvidia-fatbinaryloader.so",
    "libnvidia-compiler.so", "libnvidia-tileiras.so", "libnvidia-nvvm70.so",
)
# Libraries of the driver's directory a compute box does not get: graphics and display
# (NVIDIA_DRIVER_CAPABILITIES "graphics"/"display"), and never the GLVND loaders.
SKIPPED_LIBS = (
    "libGLX", "libEGL", "libGLES", "libGL.", "libGLdispatch", "libOpenGL",
    "libnvidia-glcore", "libnvidia-eglcore", "libnvidia-glsi", "libnvidia-glvkspirv",
    "libnvidia-rtcore", "libnvoptix", "libnvidia-vulkan", "libnvidia-wayland",
    "libnvidia-egl-", "libnvidia-gtk", "libnvidia-tls", "libnvidia-fbc", "libnvidia-ifr",
    "libvdpau_nvidia",
)
# Where the libraries and binaries appear in the box (a tmpfs of their own, read-only
# once filled); the box's ld cache lists the libraries there.
GPU_DIR = "/run/coopy/gpu"
GPU_LIB_DIR = f"{GPU_DIR}/lib"
GPU_BIN_DIR = f"{GPU_DIR}/bin"


class GpuError(HostError):
    """A GPU request that cannot be met (exit 125, with what to do)."""


# ---- discovery --------------------------------------------------------------------


def _gpu_info(root: str) -> dict[int, tuple[str | None, str, str | None]]:
    """minor -> (uuid, bus id, model) from /proc/driver/nvidia/gpus/<bus>/information."""
    base = join(root, "/proc/driver/nvidia/gpus")
    out: dict[int, tuple[str | None, str, str | None]] = {}
    try:
        buses = sorted(os.listdir(base))
    except OSError:
        return out
    for bus in buses:
        fields = {}
        for line in (read_text(f"{base}/{bus}/information") or "").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        minor = fields.get("Device Minor", "")
        if minor.isdigit():
            out[int(minor)] = (fields.get("GPU UUID") or None, bus, fields.get("Model"))
    return out


def _is_node(root: str, path: str, minor: int | None) -> bool:
    """A character device (195:minor on a real root); in a test tree any file will do."""
    try:
        st = os.stat(join(root, path))
    except OSError:
        return False
    if root != "/":
        return stat.S_ISCHR(st.st_mode) or stat.S_ISREG(st.st_mode)
    if not stat.S_ISCHR(st.st_mode):
        return False
    return minor is None or (os.major(st.st_rdev), os.minor(st.st_rdev)) == (NVIDIA_MAJOR, minor)


def discover_devices(root: str) -> tuple[tuple[Gpu, ...], tuple[str, ...]]:
    """The GPUs (numbered in PCI bus order, as nvidia-smi) and the control nodes."""
    try:
        names = os.listdir(join(root, "/dev"))
    except OSError:
        return (), ()
    minors = sorted(int(n[6:]) for n in names if n.startswith("nvidia") and n[6:].isdigit())
    minors = [m for m in minors if _is_node(root, f"/dev/nvidia{m}", m)]
    info = _gpu_info(root)
    # nvidia-smi numbers GPUs in PCI bus order; without /proc/driver, by minor
    minors.sort(key=lambda m: (info[m][1] if m in info else "~", m))
    gpus = tuple(
        Gpu(i, m, f"/dev/nvidia{m}", *(info.get(m) or (None, None, None)))
        for i, m in enumerate(minors)
    )
    control = [f"/dev/{n}" for n in CONTROL_NODES if _is_node(root, f"/dev/{n}", None)]
    try:
        caps = sorted(os.listdir(join(root, "/dev/nvidia-caps")))
    except OSError:
        caps = []
    control += [f"/dev/nvidia-caps/{c}" for c in caps
                if _is_node(root, f"/dev/nvidia-caps/{c}", None)]
    return gpus, tuple(control)


def _cache_entries(root: str) -> list[tuple[str, int, str]]:
    from coopy.ldcache import parse_cache

    try:
        with open(join(root, "/etc/ld.so.cache"), "rb") as f:
            data = f.read()
        return [(e.name, e.flags, e.path) for e in parse_cache(data)]
    except (OSError, ValueError):
        return []


def _native_flags(entries: list[tuple[str, int, str]]) -> int | None:
    return next((f for n, f, _ in entries if n == "libc.so.6"), None)


def discover_libraries(root: str) -> tuple[str | None, tuple[GpuFile, ...]]:
    """(libcuda's version, the libraries): every ``*.so.<version>`` in libcuda's
    directory plus what the ld cache lists for :data:`KNOWN_LIBS`, real files, deduped."""
    from coopy.ldcache import read_elf

    entries = _cache_entries(root)
    native = _native_flags(entries)
    found: dict[str, GpuFile] = {}  # real path -> file
    anchors = []
    for name, flags, path in entries:
        if native is not None and flags != native:
            continue  # another ABI (32-bit libraries are for compat32 only)
        if name.startswith(KNOWN_LIBS):
            real = resolve_in_root(root, path)
            if real is not None:
                found.setdefault(real, GpuFile(join(root, real), os.path.basename(real),
                                               "ld cache", name if ".so." in name else None))
                if name.startswith(("libcuda.so", "libnvidia-ml.so")):
                    anchors.append(real)
    version = None
    anchors.sort(key=lambda p: not os.path.basename(p).startswith("libcuda.so"))
    if anchors:
        base = os.path.basename(anchors[0])
        version = base.split(".so.", 1)[1] if ".so." in base else None
    if version:
        for libdir in dict.fromkeys(os.path.dirname(a) for a in anchors):
            try:
                names = sorted(os.listdir(join(root, libdir)))
            except OSError:
                continue
            for name in names:
                if name.endswith(".so." + version) and not name.startswith(SKIPPED_LIBS):
                    real = f"{libdir}/{name}"
                    found.setdefault(real, GpuFile(join(root, real), name,
                                                   "in libcuda's directory"))
    machine = None
    out = []
    for _, file in sorted(found.items()):
        if file.name.startswith(SKIPPED_LIBS):
            continue
        elf = read_elf(file.source)
        if elf is None:
            continue
        if machine is None:
            machine = (elf.elf_class, elf.machine)
        elif (elf.elf_class, elf.machine) != machine:
            continue  # a library of another ABI in the same directory
        out.append(file._replace(soname=elf.soname or file.soname))
    return version, tuple(out)


def discover_binaries(root: str) -> tuple[GpuFile, ...]:
    """nvidia-smi & co.: root-owned, not group- or world-writable (as apptainer checks)."""
    out = []
    for name in BINARIES:
        for d in BIN_DIRS:
            real = resolve_in_root(root, f"{d}/{name}")
            if real is None:
                continue
            try:
                st = os.stat(join(root, real))
            except OSError:
                continue
            if root == "/" and (st.st_uid != 0 or st.st_mode & 0o022):
                continue
            out.append(GpuFile(join(root, real), name, f"found in {d}"))
            break
    return tuple(out)


def discover(root: str | None = None) -> GpuHost:
    """Everything about the host's NVIDIA GPUs; cheap (one stat) when there are none."""
    root = root or gpu_root()
    if not os.path.exists(join(root, "/dev/nvidiactl")):
        if os.path.exists(join(root, "/dev/dxg")):
            return discover_wsl(root)
        if os.path.exists(join(root, "/dev/kfd")):
            return discover_amd(root)
        version = driver_version(root)
        missing = f"the NVIDIA driver {version} is loaded but {join(root, '/dev/nvidiactl')} " \
            "does not exist"
        return GpuHost(root, "none", driver=version, problems=(missing,) if version else ())
    from coopy.cdi import load_cdi

    cdi, cdi_problems = load_cdi(root)
    if cdi is not None:
        return cdi._replace(problems=cdi.problems + cdi_problems)
    gpus, control = discover_devices(root)
    lib_version, libraries = discover_libraries(root)
    driver = driver_version(root)
    problems: list[str] = list(cdi_problems)
    for node in ("/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"):
        if node not in control:
            problems.append(f"{node} is missing: CUDA needs it (the nvidia_uvm module)")
    version = driver or lib_version
    firmware: tuple[str, ...] = ()
    if version and os.path.isdir(join(root, f"/lib/firmware/nvidia/{version}")):
        firmware = (f"/lib/firmware/nvidia/{version}",)
    sockets = tuple(s for s in ("/run/nvidia-persistenced/socket",)
                    if os.path.exists(join(root, s)))
    return GpuHost(root, "discovery", driver, lib_version, gpus, control, libraries,
                   discover_binaries(root), firmware, sockets, (), tuple(problems))


WSL_LIB_DIR = "/usr/lib/wsl/lib"


def discover_wsl(root: str) -> GpuHost:
    """WSL2: one /dev/dxg serves every GPU; the driver's libraries (libcuda, libdxcore,
    NVML) and nvidia-smi are in /usr/lib/wsl/lib."""
    from coopy.ldcache import read_elf

    libs, bins = [], []
    try:
        names = sorted(os.listdir(join(root, WSL_LIB_DIR)))
    except OSError:
        names = []
    for name in names:
        path = join(root, f"{WSL_LIB_DIR}/{name}")
        if os.path.islink(path) or not os.path.isfile(path):
            continue  # links are remade from SONAMEs
        if ".so" in name:
            elf = read_elf(path)
            if elf is not None:
                libs.append(GpuFile(path, name, f"in {WSL_LIB_DIR}", elf.soname))
        elif name in BINARIES:
            bins.append(GpuFile(path, name, f"in {WSL_LIB_DIR}"))
    version = next((f.name.split(".so.", 1)[1] for f in libs
                    if f.name.startswith("libcuda.so.")), None)
    problems = () if libs else (f"/dev/dxg exists but {WSL_LIB_DIR} holds no libraries",)
    return GpuHost(root, "wsl", None, version, (Gpu(0, 0, "/dev/dxg", model="WSL2 (dxg)"),),
                   (), tuple(libs), tuple(bins), problems=problems)


def discover_amd(root: str) -> GpuHost:
    """AMD (ROCm): /dev/kfd and one /dev/dri/renderD<N> per GPU, numbered in N's order.
    The ROCm libraries are the image's (/opt/rocm on the host image), not the driver's."""
    try:
        names = os.listdir(join(root, "/dev/dri"))
    except OSError:
        names = []
    minors = sorted(int(n[7:]) for n in names if n.startswith("renderD") and n[7:].isdigit())
    gpus = tuple(Gpu(i, m, f"/dev/dri/renderD{m}") for i, m in enumerate(minors)
                 if _is_node(root, f"/dev/dri/renderD{m}", None))
    return GpuHost(root, "amd", gpus=gpus, control=("/dev/kfd",))


# ---- selection ----------------------------------------------------------------------

Request = str | tuple[int | str, ...]


def parse_gpus(text: str) -> Request:
    """``--gpus``: ``all``, ``none``, ``0,2``, ``GPU-…`` (also Docker's ``device=0,2``)."""
    text = text.strip()
    if text.startswith("device="):
        text = text[7:].strip("\"'")
    if text in ("all", "none"):
        return text
    out: list[int | str] = []
    for item in text.split(","):
        item = item.strip()
        if item.isdigit():
            out.append(int(item))
        elif item.startswith(("GPU-", "MIG-")) and len(item) > 4:
            out.append(item)
        else:
            raise GpuError(f"--gpus {text}: {item!r} is not a GPU index or UUID",
                           hint="--gpus all, --gpus none, --gpus 0,2 or --gpus GPU-<uuid>")
    if not out:
        raise GpuError("--gpus: no GPU given", hint="--gpus all, none, 0,2 or GPU-<uuid>")
    return tuple(out)


def _match(gpus: Sequence[Gpu], token: str) -> Gpu | None:
    token = token.strip()
    if token.isdigit():
        return next((g for g in gpus if g.index == int(token)), None)
    if token.startswith("GPU-"):  # CUDA accepts a unique prefix of the UUID
        hits = [g for g in gpus if g.uuid and g.uuid.startswith(token)]
        return hits[0] if len(hits) == 1 else None
    return None


def _narrow(allowed: list[Gpu], value: str) -> list[Gpu]:
    """CUDA's reading of a ``*_VISIBLE_DEVICES`` list: indices count within ``allowed``,
    UUID prefixes match, an invalid entry ends the list."""
    visible: list[Gpu] = []
    for token in value.split(",") if value.strip() else []:
        token = token.strip()
        if token.isdigit():
            gpu = allowed[int(token)] if int(token) < len(allowed) else None
        else:
            gpu = _match(allowed, token)
        if gpu is None:
            break
        if gpu not in visible:
            visible.append(gpu)
    return visible


# The caller's narrowing variables after NVIDIA_VISIBLE_DEVICES and Slurm, per vendor:
# HIP reads CUDA_VISIBLE_DEVICES too.
_VISIBLE_VARS = {"amd": ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")}


def allowed_gpus(gpus: Sequence[Gpu], env: Mapping[str, str], vendor: str = "nvidia"
                 ) -> tuple[tuple[Gpu, ...], str]:
    """The GPUs the caller was given, and by which variables (never widened).

    ``NVIDIA_VISIBLE_DEVICES`` (all, none/void, indices, UUIDs); a Slurm allocation
    (``SLURM_STEP_GPUS``/``SLURM_JOB_GPUS``: host indices); then ``CUDA_VISIBLE_DEVICES``
    (AMD: ``ROCR_``/``HIP_VISIBLE_DEVICES`` too), whose indices count within what is
    left, as CUDA counts them (an invalid entry ends the list, as in CUDA).
    """
    allowed = list(gpus)
    why = []
    nvd = env.get("NVIDIA_VISIBLE_DEVICES")
    if nvd is not None and nvd.strip() != "all" and vendor != "amd":
        why.append(f"NVIDIA_VISIBLE_DEVICES={nvd}")
        tokens = [] if nvd.strip() in ("", "none", "void") else nvd.split(",")
        picked = [g for g in (_match(allowed, t) for t in tokens) if g is not None]
        allowed = list(dict.fromkeys(picked))
    slurm = env.get("SLURM_STEP_GPUS") or env.get("SLURM_JOB_GPUS")
    if slurm is not None:
        var = "SLURM_STEP_GPUS" if env.get("SLURM_STEP_GPUS") else "SLURM_JOB_GPUS"
        why.append(f"{var}={slurm}")
        picked = [g for g in (_match(allowed, t) for t in slurm.split(",")) if g is not None]
        allowed = list(dict.fromkeys(picked))
    for var in _VISIBLE_VARS.get(vendor, ("CUDA_VISIBLE_DEVICES",)):
        value = env.get(var)
        if value is not None:
            why.append(f"{var}={value}")
            allowed = _narrow(allowed, value)
    return tuple(allowed), ", ".join(why)


def select_gpus(host: GpuHost, request: Request | None, env: Mapping[str, str]) -> tuple[Gpu, ...]:
    """The GPUs a box gets.  ``request`` None is the default ("all" of what exists,
    nothing and no error when there is none); errors say what exists and what to do."""
    if request == "none":
        return ()
    explicit = request is not None
    shown = "all" if request in (None, "all") else ",".join(str(x) for x in request or ())
    if not host.gpus:
        if not explicit:
            return ()
        why = "; ".join(host.problems) or (
            f"no {host.host_path('/dev/nvidiactl')}, /dev/dxg (WSL2) or /dev/kfd (AMD)")
        raise GpuError(f"GPUs were asked for (--gpus {shown}) but this host has none: {why}",
                       hint="`coopy gpu` and `coopy doctor` show what was found; "
                       "--gpus none runs without")
    allowed, why = allowed_gpus(host.gpus, env, host.vendor)
    if request in (None, "all"):
        if not allowed and explicit:
            raise GpuError(f"--gpus all: no GPU is left to you ({why})",
                           hint="unset that variable, or --gpus none")
        return allowed
    out: list[Gpu] = []
    listed = ", ".join(str(g.index) for g in host.gpus)
    for item in request or ():
        gpu = _match(host.gpus, str(item))
        if gpu is None:
            what = f"GPU {item} does not exist" if isinstance(item, int) else \
                f"no GPU has the UUID {item}"
            raise GpuError(f"{what}: this host has {len(host.gpus)} GPU"
                           f"{'s' if len(host.gpus) != 1 else ''} ({listed})",
                           hint="`coopy gpu` lists them with their UUIDs")
        if gpu not in allowed:
            mine = ", ".join(str(g.index) for g in allowed) or "none"
            raise GpuError(f"GPU {item} is not among the GPUs you were given ({why})",
                           hint=f"ask for one of yours: {mine}")
        if gpu not in out:
            out.append(gpu)
    return tuple(out)


def box_env(gpus: Sequence[Gpu], host: GpuHost, caller: Mapping[str, str] = {}  # noqa: B006
            ) -> dict[str, str]:
    """The box's GPU variables, in the box's view: its GPUs are 0…n-1.  AMD needs none
    (the render nodes present are the selection); WSL2's /dev/dxg serves every GPU, so
    the caller's CUDA_VISIBLE_DEVICES is passed on as it is."""
    if host.vendor == "amd":
        return {}
    if host.vendor == "wsl":
        env = {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
               "TRITON_LIBCUDA_PATH": GPU_LIB_DIR}
        if "CUDA_VISIBLE_DEVICES" in caller:
            env["CUDA_VISIBLE_DEVICES"] = caller["CUDA_VISIBLE_DEVICES"]
        return env
    env = {k: v for k, v in host.env if k != "NVIDIA_VISIBLE_DEVICES"}
    indices = ",".join(str(i) for i in range(len(gpus)))
    uuids = [g.uuid for g in gpus]
    env.update(
        NVIDIA_VISIBLE_DEVICES=",".join(u for u in uuids if u) if all(uuids) else indices,
        CUDA_VISIBLE_DEVICES=indices,
        NVIDIA_DRIVER_CAPABILITIES="compute,utility",
        TRITON_LIBCUDA_PATH=GPU_LIB_DIR,
    )
    return env


def shm_default() -> int:
    """/dev/shm for a box with GPUs: half of the RAM (NCCL and DataLoader workers share
    tensors through it; tmpfs takes memory only as it is written)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError):
        return 1 << 30

