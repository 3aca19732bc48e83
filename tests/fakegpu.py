"""A fake NVIDIA driver tree for tests without a GPU (``COOPY_GPU_ROOT`` points at it).

What it holds, as a real host would: device nodes (/dev/nvidiactl, nvidia-uvm,
nvidia-uvm-tools, nvidia<N>), /proc/driver/nvidia/{version,gpus/<bus>/information}, a
stub ``libcuda.so.<version>`` compiled here with gcc (tests/fixtures/nvidia/) plus
stub NVML/PTX-JIT libraries and a graphics one that a box must not get, the SONAME links
and ``/etc/ld.so.cache`` made by the real ``ldconfig -r``, an ``nvidia-smi`` script and
nvidia-persistenced's socket.

Device nodes: when the suite runs as root they are real character devices with
/dev/null's numbers (1:3) made with mknod, so a box can open them only if coopy binds
them without ``nodev`` (a ``nodev`` mount makes opening one fail with EACCES: the test
would see no GPU).  A real 195:N node cannot stand in: without the driver, opening it
fails with ENXIO.  Run as an ordinary user (no mknod), they are regular files, which
checks everything but ``nodev``.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia"
VERSION = "535.104.05"
UUIDS = (
    "GPU-11111111-2222-3333-4444-555555555555",
    "GPU-66666666-7777-8888-9999-aaaaaaaaaaaa",
    "GPU-bbbbbbbb-cccc-dddd-eeee-ffffffffffff",
)
BUSES = ("0000:3b:00.0", "0000:86:00.0", "0000:af:00.0")
# (file name, SONAME) of the stub libraries besides libcuda
OTHER_LIBS = (
    (f"libnvidia-ml.so.{VERSION}", "libnvidia-ml.so.1"),
    (f"libnvidia-ptxjitcompiler.so.{VERSION}", "libnvidia-ptxjitcompiler.so.1"),
    (f"libGLX_nvidia.so.{VERSION}", "libGLX_nvidia.so.0"),  # graphics: never passed in
)
SMI = """#!/bin/sh
# stub nvidia-smi: lists the GPU device nodes this process can open
n=0
for d in /dev/nvidia[0-9]*; do
    if [ -e "$d" ] && : 2>/dev/null <>"$d"; then
        echo "GPU $n: Fake GPU ($d)"
        n=$((n + 1))
    fi
done
[ "$n" -gt 0 ] || { echo "No devices were found"; exit 6; }
"""


def multiarch() -> str:
    """The host's library directory name (x86_64-linux-gnu)."""
    out = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True)
    return out.stdout.strip() or "x86_64-linux-gnu"


def _node(path: Path) -> None:
    if os.getuid() == 0:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    else:
        path.touch()
    os.chmod(path, 0o666)


def build_fake_driver(root: Path, gpus: int = 2, *, uvm: bool = True,
                      extra_libs: int = 0) -> Path:
    """Make the tree under ``root`` (created); returns ``root``.  ``extra_libs`` more
    stub ``libnvidia-stubN.so.<version>`` (a real driver has ~15 compute/utility ones)."""
    libdir = root / "usr" / "lib" / multiarch()
    for d in ("dev", "etc", "usr/bin", "proc/driver/nvidia/gpus"):
        (root / d).mkdir(parents=True, exist_ok=True)
    libdir.mkdir(parents=True, exist_ok=True)
    for name in ("nvidiactl", *(("nvidia-uvm", "nvidia-uvm-tools") if uvm else ())):
        _node(root / "dev" / name)
    for i in range(gpus):
        _node(root / "dev" / f"nvidia{i}")
        info = root / "proc/driver/nvidia/gpus" / BUSES[i]
        info.mkdir()
        (info / "information").write_text(
            f"Model: \t\t Fake H100 {i}\nIRQ:   \t\t 100\nGPU UUID: \t {UUIDS[i]}\n"
            f"Bus Location: \t {BUSES[i]}\nDevice Minor: \t {i}\nGPU Excluded:\t No\n")
    (root / "proc/driver/nvidia/version").write_text(
        f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {VERSION}  Sat Aug 19 01:15:15 "
        "UTC 2023\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    cc = ["gcc", "-shared", "-fPIC", "-O1", "-Wall", "-Werror"]
    subprocess.run([*cc, "-Wl,-soname,libcuda.so.1", "-o", str(libdir / f"libcuda.so.{VERSION}"),
                    str(FIXTURES / "libcuda_stub.c")], check=True)
    empty = root / "empty.c"
    empty.write_text("int coopy_fake_driver_symbol(void) { return 0; }\n")
    extra = tuple((f"libnvidia-stub{i}.so.{VERSION}", f"libnvidia-stub{i}.so.1")
                  for i in range(extra_libs))
    for name, soname in OTHER_LIBS + extra:
        subprocess.run([*cc, f"-Wl,-soname,{soname}", "-o", str(libdir / name), str(empty)],
                       check=True)
    empty.unlink()
    (root / "etc/ld.so.conf").write_text(f"/usr/lib/{multiarch()}\n")
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    # -r chroots: as root directly, otherwise in a user namespace of our own
    prefix = [] if os.getuid() == 0 else ["unshare", "-r"]
    subprocess.run([*prefix, ldconfig, "-r", str(root)], check=True)
    # nvidia-persistenced's socket (NVML asks it about persistence mode)
    (root / "run/nvidia-persistenced").mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "run/nvidia-persistenced/socket"))
    os.chmod(root / "run/nvidia-persistenced/socket", 0o777)
    smi = root / "usr/bin/nvidia-smi"
    smi.write_text(SMI)
    os.chmod(smi, 0o755)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return root


def build_fake_wsl(root: Path) -> Path:
    """A WSL2 tree: /dev/dxg and /usr/lib/wsl/lib with a stub libcuda.so.1.1 (SONAME
    libcuda.so.1), libdxcore.so and nvidia-smi, as Windows' driver installs them."""
    lib = root / "usr/lib/wsl/lib"
    lib.mkdir(parents=True)
    (root / "dev").mkdir()
    _node(root / "dev/dxg")
    cc = ["gcc", "-shared", "-fPIC", "-O1", "-Wall", "-Werror"]
    subprocess.run([*cc, "-Wl,-soname,libcuda.so.1", "-o", str(lib / "libcuda.so.1.1"),
                    str(FIXTURES / "libcuda_stub.c")], check=True)
    (lib / "libcuda.so.1").symlink_to("libcuda.so.1.1")
    empty = root / "empty.c"
    empty.write_text("int coopy_fake_dxcore(void) { return 0; }\n")
    subprocess.run([*cc, "-Wl,-soname,libdxcore.so", "-o", str(lib / "libdxcore.so"),
                    str(empty)], check=True)
    empty.unlink()
    (lib / "nvidia-smi").write_text(SMI)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    os.chmod(lib / "nvidia-smi", 0o755)
    return root


def build_fake_amd(root: Path, gpus: int = 2) -> Path:
    """An AMD (ROCm) tree: /dev/kfd and /dev/dri/renderD128… (card* nodes are ignored)."""
    (root / "dev/dri").mkdir(parents=True)
    _node(root / "dev/kfd")
    for i in range(gpus):
        _node(root / "dev/dri" / f"renderD{128 + i}")
        _node(root / "dev/dri" / f"card{i}")
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return root
