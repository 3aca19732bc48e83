"""GPUs without a GPU: the ld cache format, discovery over a fake driver tree, selection
tables, the mount ops, CDI specs (valid, broken, stale), locks, and the seccomp table."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coopy import gpu as G
from coopy import gpubox, ldcache, seccomp
from coopy.cdi import load_cdi, parse_yaml
from coopy.ops import Bind, Symlink, Tmpfs
from tests.fakegpu import UUIDS, VERSION, build_fake_driver, multiarch


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_driver(tmp_path_factory.mktemp("gpu") / "root", gpus=3)


# ---- the loader's cache ---------------------------------------------------------------


def _ldconfig_p(cache: Path) -> list[str]:
    out = subprocess.run(["ldconfig", "-p", "-C", str(cache)], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    return [line.strip() for line in out[1:] if "=>" in line]


def test_host_cache_parses_as_ldconfig_reads_it() -> None:
    entries = ldcache.parse_cache(Path("/etc/ld.so.cache").read_bytes())
    listed = _ldconfig_p(Path("/etc/ld.so.cache"))
    assert [f"{e.name} " for e in entries] == [line.split("(")[0] for line in listed]
    assert [e.path for e in entries] == [line.split("=> ")[1] for line in listed]


def test_written_cache_is_read_by_ldconfig_in_the_same_order(tmp_path: Path) -> None:
    entries = ldcache.parse_cache(Path("/etc/ld.so.cache").read_bytes())
    extra = ldcache.Entry("libcuda.so.1", entries[0].flags, "/run/coopy/gpu/lib/libcuda.so.1")
    shuffled = [extra, *reversed(entries)]
    (tmp_path / "cache").write_bytes(ldcache.build_cache(shuffled))
    listed = _ldconfig_p(tmp_path / "cache")
    assert "libcuda.so.1 (libc6,x86-64) => /run/coopy/gpu/lib/libcuda.so.1" in listed
    # without the extra entry the order is ldconfig's own: the loader's binary search
    # depends on it
    (tmp_path / "same").write_bytes(ldcache.build_cache(reversed(entries)))
    assert _ldconfig_p(tmp_path / "same") == _ldconfig_p(Path("/etc/ld.so.cache"))


@pytest.mark.parametrize(("a", "b", "sign"), [
    ("libc.so.6", "libc.so.6", 0), ("libx.so.10", "libx.so.9", 1), ("liba.so", "libb.so", -1),
    ("libx.so", "libx.so.1", -1), ("lib2", "libx", 1),  # digits after letters
])
def test_libcmp_compares_numbers_as_numbers(a: str, b: str, sign: int) -> None:
    res = ldcache.libcmp(a, b)
    assert (res > 0) - (res < 0) == sign


def test_elf_soname_and_machine(tree: Path) -> None:
    libc = ldcache.read_elf(next(p for p in ("/lib/x86_64-linux-gnu/libc.so.6",
                                             "/usr/lib/x86_64-linux-gnu/libc.so.6")
                                 if os.path.exists(p)))
    assert libc is not None and libc.soname == "libc.so.6"
    stub = ldcache.read_elf(str(tree / "usr/lib" / multiarch() / f"libcuda.so.{VERSION}"))
    assert stub == ldcache.ElfInfo(libc.elf_class, libc.machine, "libcuda.so.1")
    assert ldcache.read_elf(sys.executable.replace("python", "no-such")) is None
    assert ldcache.read_elf("/etc/hostname") is None


# ---- discovery ---------------------------------------------------------------------


def test_discovery_of_the_fake_tree(tree: Path) -> None:
    host = G.discover(str(tree))
    assert host.source == "discovery"
    assert (host.driver, host.lib_version) == (VERSION, VERSION)
    assert [(g.index, g.minor, g.uuid, g.model) for g in host.gpus] == [
        (i, i, UUIDS[i], f"Fake H100 {i}") for i in range(3)]
    assert host.control == ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
    names = {f.name: f.soname for f in host.libraries}
    assert names == {f"libcuda.so.{VERSION}": "libcuda.so.1",
                     f"libnvidia-ml.so.{VERSION}": "libnvidia-ml.so.1",
                     f"libnvidia-ptxjitcompiler.so.{VERSION}": "libnvidia-ptxjitcompiler.so.1"}
    assert [b.name for b in host.binaries] == ["nvidia-smi"]
    assert host.problems == ()


@pytest.mark.parametrize(("text", "version"), [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 2023\n",
     "535.104.05"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release Build\n",
     "550.54.14"),
    ("garbage\n", None),
])
def test_driver_version(tmp_path: Path, text: str, version: str | None) -> None:
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
    (tmp_path / "proc/driver/nvidia/version").write_text(text)
    assert G.driver_version(str(tmp_path)) == version


def test_no_driver_is_cheap_and_empty(tmp_path: Path) -> None:
    host = G.discover(str(tmp_path))
    assert (host.source, host.gpus, host.problems) == ("none", (), ())
    with pytest.raises(G.GpuError, match=r"--gpus all.* this host has none"):
        G.select_gpus(host, "all", {})
    assert G.select_gpus(host, None, {}) == ()  # the default: no GPU, no error


def test_resolve_in_root_keeps_absolute_links_inside(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib/real.so.1").write_text("")
    (tmp_path / "lib/abs.so").symlink_to("/lib/real.so.1")
    (tmp_path / "lib/out.so").symlink_to("/etc/passwd")  # the host's: not in the root
    assert G.resolve_in_root(str(tmp_path), "/lib/abs.so") == "/lib/real.so.1"
    assert G.resolve_in_root(str(tmp_path), "/lib/out.so") is None


# ---- selection ---------------------------------------------------------------------

GPUS = tuple(G.Gpu(i, i, f"/dev/nvidia{i}", UUIDS[i]) for i in range(3))
HOST = G.GpuHost("/", "discovery", gpus=GPUS)


@pytest.mark.parametrize(("env", "allowed"), [
    ({}, [0, 1, 2]),
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, [0, 1, 2]),
    ({"NVIDIA_VISIBLE_DEVICES": "none"}, []),
    ({"NVIDIA_VISIBLE_DEVICES": "void"}, []),
    ({"NVIDIA_VISIBLE_DEVICES": ""}, []),
    ({"NVIDIA_VISIBLE_DEVICES": "2,0"}, [2, 0]),
    ({"NVIDIA_VISIBLE_DEVICES": UUIDS[1]}, [1]),
    ({"NVIDIA_VISIBLE_DEVICES": "7"}, []),  # never widened by a token that matches nothing
    ({"CUDA_VISIBLE_DEVICES": "1"}, [1]),
    ({"CUDA_VISIBLE_DEVICES": ""}, []),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, []),
    ({"CUDA_VISIBLE_DEVICES": "0,9,2"}, [0]),  # CUDA stops at the first invalid entry
    ({"CUDA_VISIBLE_DEVICES": "GPU-6666"}, [1]),  # a UUID prefix, as CUDA takes it
    # CUDA counts within what is left: Slurm gave GPUs 1 and 2, CUDA's 0 is GPU 1
    ({"SLURM_JOB_GPUS": "1,2", "CUDA_VISIBLE_DEVICES": "0"}, [1]),
    ({"SLURM_STEP_GPUS": "2", "SLURM_JOB_GPUS": "1,2"}, [2]),
    ({"NVIDIA_VISIBLE_DEVICES": "1,2", "CUDA_VISIBLE_DEVICES": "1"}, [2]),
])
def test_allowed_gpus_never_widen(env: dict[str, str], allowed: list[int]) -> None:
    got, why = G.allowed_gpus(GPUS, env)
    assert [g.index for g in got] == allowed
    assert bool(why) == (env not in ({}, {"NVIDIA_VISIBLE_DEVICES": "all"}))


@pytest.mark.parametrize(("request_", "env", "selected"), [
    (None, {}, [0, 1, 2]),
    ("all", {}, [0, 1, 2]),
    ("none", {}, []),
    ((2, 0), {}, [2, 0]),
    ((UUIDS[1],), {}, [1]),
    ((1, 1), {}, [1]),
    (None, {"CUDA_VISIBLE_DEVICES": "2"}, [2]),
    (None, {"CUDA_VISIBLE_DEVICES": ""}, []),  # the default asks for nothing in particular
])
def test_select_gpus(request_: G.Request | None, env: dict[str, str], selected: list[int]) -> None:
    assert [g.index for g in G.select_gpus(HOST, request_, env)] == selected


@pytest.mark.parametrize(("request_", "env", "message"), [
    ((3,), {}, r"GPU 3 does not exist: this host has 3 GPUs \(0, 1, 2\)"),
    (("GPU-deadbeef",), {}, r"no GPU has the UUID GPU-deadbeef"),
    ((0,), {"CUDA_VISIBLE_DEVICES": "1"},
     r"GPU 0 is not among the GPUs you were given \(CUDA_VISIBLE_DEVICES=1\)"),
    ("all", {"NVIDIA_VISIBLE_DEVICES": "none"}, r"no GPU is left to you"),
])
def test_select_gpus_errors(request_: G.Request, env: dict[str, str], message: str) -> None:
    with pytest.raises(G.GpuError, match=message) as info:
        G.select_gpus(HOST, request_, env)
    assert info.value.exit_code == 125 and info.value.hint


@pytest.mark.parametrize(("text", "parsed"), [
    ("all", "all"), ("none", "none"), ("0,2", (0, 2)), ("device=1", (1,)),
    (UUIDS[0], (UUIDS[0],)), (f"1,{UUIDS[2]}", (1, UUIDS[2])),
])
def test_parse_gpus(text: str, parsed: G.Request) -> None:
    assert G.parse_gpus(text) == parsed


@pytest.mark.parametrize("text", ["yes", "0,,1", "-1", "GPU-", ""])
def test_parse_gpus_refuses(text: str) -> None:
    with pytest.raises(G.GpuError, match="--gpus"):
        G.parse_gpus(text)


def test_box_env_is_the_box_view() -> None:
    env = G.box_env(GPUS[1:], HOST)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["NVIDIA_VISIBLE_DEVICES"] == f"{UUIDS[1]},{UUIDS[2]}"
    assert env["TRITON_LIBCUDA_PATH"] == G.GPU_LIB_DIR
    no_uuid = G.box_env([G.Gpu(0, 4, "/dev/nvidia4")], HOST)
    assert no_uuid["NVIDIA_VISIBLE_DEVICES"] == "0"


# ---- the plan ------------------------------------------------------------------------


def test_plan_gpu_ops(tree: Path) -> None:
    host = G.discover(str(tree))
    ops = gpubox.plan_gpu(host, host.gpus[1:2], "/state/gpu/ld.so.cache-x", idmap=True)
    lib = f"{tree}/usr/lib/{multiarch()}"
    assert ops == (
        Bind(f"{tree}/dev/nvidiactl", "/dev/nvidiactl", directory=False, nodev=False),
        Bind(f"{tree}/dev/nvidia-uvm", "/dev/nvidia-uvm", directory=False, nodev=False),
        Bind(f"{tree}/dev/nvidia-uvm-tools", "/dev/nvidia-uvm-tools", directory=False,
             nodev=False),
        Bind(f"{tree}/dev/nvidia1", "/dev/nvidia1", directory=False, nodev=False),
        Tmpfs("/run/coopy/gpu"),
        Bind(f"{lib}/libcuda.so.{VERSION}", f"/run/coopy/gpu/lib/libcuda.so.{VERSION}",
             readonly=True, directory=False),
        Bind(f"{lib}/libnvidia-ml.so.{VERSION}",
             f"/run/coopy/gpu/lib/libnvidia-ml.so.{VERSION}", readonly=True, directory=False),
        Bind(f"{lib}/libnvidia-ptxjitcompiler.so.{VERSION}",
             f"/run/coopy/gpu/lib/libnvidia-ptxjitcompiler.so.{VERSION}", readonly=True,
             directory=False),
        Symlink("/run/coopy/gpu/lib/libcuda.so.1", f"libcuda.so.{VERSION}"),
        Symlink("/run/coopy/gpu/lib/libnvidia-ml.so.1", f"libnvidia-ml.so.{VERSION}"),
        Symlink("/run/coopy/gpu/lib/libnvidia-ptxjitcompiler.so.1",
                f"libnvidia-ptxjitcompiler.so.{VERSION}"),
        Symlink("/run/coopy/gpu/lib/libcuda.so", "libcuda.so.1"),
        Bind(f"{tree}/usr/bin/nvidia-smi", "/run/coopy/gpu/bin/nvidia-smi", readonly=True,
             directory=False),
        Bind(f"{tree}/run/nvidia-persistenced/socket", "/run/nvidia-persistenced/socket",
             directory=False, noexec=True),
        Bind("/state/gpu/ld.so.cache-x", "/etc/ld.so.cache", readonly=True, directory=False,
             idmap=True),
    )


def test_ld_conf_is_the_host_one_plus_the_gpu_dir(tmp_path: Path) -> None:
    (tmp_path / "ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf")
    path = gpubox.ensure_ld_conf(tmp_path / "cache", str(tmp_path / "ld.so.conf"))
    assert path is not None
    assert Path(path).read_text() == ("include /etc/ld.so.conf.d/*.conf\n"
                                      "# coopy: the GPU driver's libraries\n/run/coopy/gpu/lib\n")
    assert gpubox.ensure_ld_conf(tmp_path / "cache", str(tmp_path / "none")) is None


def test_ld_cache_is_the_host_cache_plus_the_gpu_libraries(tree: Path, tmp_path: Path) -> None:
    host = G.discover(str(tree))
    path = gpubox.ensure_ld_cache(host, tmp_path)
    assert gpubox.ensure_ld_cache(host, tmp_path) == path  # cached: same file
    listed = _ldconfig_p(Path(path))
    host_listed = _ldconfig_p(Path("/etc/ld.so.cache"))
    ours = [line for line in listed if "/run/coopy/gpu/lib/" in line]
    assert sorted(line.split()[0] for line in ours) == [
        "libcuda.so", "libcuda.so.1", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1"]
    assert {line for line in listed if line not in ours} == {
        line for line in host_listed if line.split()[0] not in
        ("libcuda.so", "libcuda.so.1", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1")}



def test_ld_cache_of_an_image_is_its_own_plus_the_gpu_libraries(tree: Path,
                                                                 tmp_path: Path) -> None:
    from coopy.image.boxroot import image_file
    from coopy.ldcache import Entry, build_cache, parse_cache

    host = G.discover(str(tree))
    top, low = tmp_path / "top", tmp_path / "low"
    (low / "etc").mkdir(parents=True)
    (top / "etc").mkdir(parents=True)
    (low / "etc/ld.so.cache").write_bytes(build_cache([Entry("libimg.so.1", 0x0303, "/x/a")]))
    base = image_file([str(top), str(low)], "etc/ld.so.cache")
    assert base == str(low / "etc/ld.so.cache")
    path = gpubox.ensure_ld_cache(host, tmp_path / "cache", base)
    gpu = {n: f"/run/coopy/gpu/lib/{n}" for n in ("libcuda.so", "libcuda.so.1",
           "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1")}
    assert {e.name: e.path for e in parse_cache(Path(path).read_bytes())} == \
        {"libimg.so.1": "/x/a", **gpu}
    # another image's cache is another file; an image without one gets the GPU's only
    (top / "etc/ld.so.cache").write_bytes(build_cache([Entry("libtop.so.1", 0x0303, "/x/b")]))
    other = gpubox.ensure_ld_cache(host, tmp_path / "cache",
                                   image_file([str(top), str(low)], "etc/ld.so.cache"))
    assert other != path and "libtop.so.1" in Path(other).read_bytes().decode("latin-1")
    none = gpubox.ensure_ld_cache(host, tmp_path / "cache", None)
    assert {e.name for e in parse_cache(Path(none).read_bytes())} == set(gpu)
    assert gpubox.ensure_ld_conf(tmp_path / "cache", None) is None

# ---- CDI -------------------------------------------------------------------------------

CDI_YAML = """---
cdiVersion: 0.5.0
containerEdits:
  deviceNodes:
  - path: /dev/nvidiactl
  - path: /dev/nvidia-uvm
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  - NVIDIA_CTK_LIBCUDA_DIR=/usr/lib/{arch}
  hooks:
  - args:
    - nvidia-cdi-hook
    - update-ldcache
    hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
  mounts:
  - containerPath: /usr/lib/{arch}/libcuda.so.{version}
    hostPath: /usr/lib/{arch}/libcuda.so.{version}
    options:
    - ro
    - nosuid
  - containerPath: /usr/bin/nvidia-smi
    hostPath: /usr/bin/nvidia-smi
    options: [ro]
devices:
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
  name: "0"
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
  name: {uuid}
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
kind: nvidia.com/gpu
"""


def _cdi_tree(tree: Path, tmp_path: Path, text: str, name: str = "nvidia.yaml") -> Path:
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", str(tree), str(root)], check=True)
    (root / "etc/cdi").mkdir()
    (root / "etc/cdi" / name).write_text(text.format(arch=multiarch(), version=VERSION,
                                                     uuid=UUIDS[1]))
    return root


def test_cdi_spec_is_used_instead_of_discovery(tree: Path, tmp_path: Path) -> None:
    root = _cdi_tree(tree, tmp_path, CDI_YAML)
    host = G.discover(str(root))
    assert host.source == "cdi:/etc/cdi/nvidia.yaml"
    assert [(g.index, g.minor, g.uuid) for g in host.gpus] == [(0, 1, UUIDS[1])]
    assert host.control == ("/dev/nvidiactl", "/dev/nvidia-uvm")
    assert [(f.name, f.soname) for f in host.libraries] == [
        (f"libcuda.so.{VERSION}", "libcuda.so.1")]
    assert [b.name for b in host.binaries] == ["nvidia-smi"]
    assert dict(host.env)["NVIDIA_CTK_LIBCUDA_DIR"] == f"/usr/lib/{multiarch()}"
    assert "NVIDIA_VISIBLE_DEVICES" not in G.box_env(host.gpus, host) or \
        G.box_env(host.gpus, host)["NVIDIA_VISIBLE_DEVICES"] == UUIDS[1]


def test_cdi_spec_as_json(tree: Path, tmp_path: Path) -> None:
    doc = parse_yaml(CDI_YAML.format(arch=multiarch(), version=VERSION, uuid=UUIDS[1]))
    root = _cdi_tree(tree, tmp_path, json.dumps(doc).replace("{", "{{").replace("}", "}}"),
                     "nvidia.json")
    assert G.discover(str(root)).source == "cdi:/etc/cdi/nvidia.json"


@pytest.mark.parametrize(("text", "why"), [
    ("kind: nvidia.com/gpu\ndevices: [a, [b]]\n", "unsupported YAML"),
    ("kind: nvidia.com/gpu\ndevices: &anchor\n", "unsupported YAML"),
    ("kind: nvidia.com/gpu\n  bad: indent\n", "indentation"),
    (CDI_YAML.replace("libcuda.so.{version}", "libcuda.so.1.2.3"), "stale"),
    ("kind: nvidia.com/gpu\ncontainerEdits:\n  deviceNodes:\n  - nopath: x\n", "without a path"),
])
def test_broken_or_stale_cdi_spec_falls_back_to_discovery(
        tree: Path, tmp_path: Path, text: str, why: str) -> None:
    root = _cdi_tree(tree, tmp_path, text)
    host = G.discover(str(root))
    assert host.source == "discovery"
    assert len(host.gpus) == 3
    assert any(p.startswith("CDI spec /etc/cdi/nvidia.yaml not used") and why in p
               for p in host.problems), host.problems
    assert load_cdi(str(root))[0] is None


def test_cdi_spec_of_another_kind_is_ignored(tree: Path, tmp_path: Path) -> None:
    root = _cdi_tree(tree, tmp_path, "kind: vendor.com/fpga\ndevices: []\n")
    host = G.discover(str(root))
    assert (host.source, host.problems) == ("discovery", ())


# ---- locks -----------------------------------------------------------------------------


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(gpubox, "LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path / "locks"


def test_exclusive_locks_name_the_holder(lock_dir: Path) -> None:
    held = gpubox.lock_gpus(HOST, GPUS[:2], "box web of alice")
    try:
        assert sorted(n for n, _ in gpubox.held_locks()) == sorted(UUIDS[:2])
        with pytest.raises(G.GpuError, match="GPU 1 is held by box web of alice"):
            gpubox.lock_gpus(HOST, GPUS[1:], "box other")
        for fd in gpubox.lock_gpus(HOST, GPUS[2:], "box other"):  # GPU 2 is free
            os.close(fd)
    finally:
        for fd in held:
            os.close(fd)
    assert gpubox.held_locks() == []
    for fd in gpubox.lock_gpus(HOST, GPUS, "box next"):
        os.close(fd)


def test_lock_is_released_when_its_holder_is_killed(lock_dir: Path) -> None:
    gpubox.lock_gpus(HOST, (), "")  # makes the directory
    path = gpubox.lock_name(HOST, GPUS[0])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR "
         "| os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('ok', flush=True); "
         "sys.stdin.read()", path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ok\n"
        with pytest.raises(G.GpuError, match="GPU 0 is held"):
            gpubox.lock_gpus(HOST, GPUS[:1], "me")
    finally:
        holder.kill()  # SIGKILL: the kernel drops its flock
        holder.wait()
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.stdout.close()
    fds = gpubox.lock_gpus(HOST, GPUS[:1], "me")
    with pytest.raises(BlockingIOError):
        fcntl.flock(os.open(path, os.O_RDONLY | os.O_CLOEXEC), fcntl.LOCK_EX | fcntl.LOCK_NB)
    for fd in fds:
        os.close(fd)


# ---- no security rule breaks CUDA (NOTES.md (c)) -----------------------------------


def test_seccomp_keeps_what_cuda_needs() -> None:
    needed = {"memfd_create", "mmap", "mprotect", "mremap", "madvise", "mbind",
              "get_mempolicy", "set_mempolicy", "move_pages", "migrate_pages", "ptrace",
              "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_getfd", "kcmp",
              "eventfd2", "futex", "sched_setaffinity", "prctl", "rseq", "membarrier",
              "prlimit64", "sched_getaffinity"}
    denied = {r.syscall for r in seccomp.RULES}
    assert needed.isdisjoint(denied)
    ioctls = [r for r in seccomp.RULES if r.syscall == "ioctl"]
    assert all(r.test == "in" and set(r.values) <= {seccomp.TIOCSTI, seccomp.TIOCLINUX}
               for r in ioctls)
    sockets = next(r for r in seccomp.RULES if r.syscall == "socket")
    assert {seccomp.AF_UNIX, seccomp.AF_INET, seccomp.AF_INET6} <= set(sockets.values)


# ---- WSL2 and AMD ------------------------------------------------------------------


def test_wsl_discovery_and_plan(tmp_path: Path) -> None:
    from tests.fakegpu import build_fake_wsl

    root = build_fake_wsl(tmp_path / "wsl")
    host = G.discover(str(root))
    assert (host.source, host.vendor, host.lib_version) == ("wsl", "wsl", "1.1")
    assert [g.node for g in host.gpus] == ["/dev/dxg"]
    assert {(f.name, f.soname) for f in host.libraries} == {
        ("libcuda.so.1.1", "libcuda.so.1"), ("libdxcore.so", "libdxcore.so")}
    assert [b.name for b in host.binaries] == ["nvidia-smi"]
    ops = gpubox.plan_gpu(host, host.gpus, None)
    assert ops[0] == Bind(f"{root}/dev/dxg", "/dev/dxg", directory=False, nodev=False)
    assert Symlink("/run/coopy/gpu/lib/libcuda.so.1", "libcuda.so.1.1") in ops
    # /dev/dxg serves every GPU: the caller's CUDA_VISIBLE_DEVICES goes in as it is
    env = G.box_env(host.gpus, host, {"CUDA_VISIBLE_DEVICES": "1"})
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and "NVIDIA_VISIBLE_DEVICES" not in env


def test_amd_discovery_and_selection(tmp_path: Path) -> None:
    from tests.fakegpu import build_fake_amd

    root = build_fake_amd(tmp_path / "amd", gpus=3)
    host = G.discover(str(root))
    assert (host.source, host.vendor, host.control) == ("amd", "amd", ("/dev/kfd",))
    assert [(g.index, g.node) for g in host.gpus] == [
        (0, "/dev/dri/renderD128"), (1, "/dev/dri/renderD129"), (2, "/dev/dri/renderD130")]
    assert host.libraries == ()
    picked = G.select_gpus(host, None, {"HIP_VISIBLE_DEVICES": "2,0"})
    assert [g.index for g in picked] == [2, 0]
    picked = G.select_gpus(host, None, {"ROCR_VISIBLE_DEVICES": "1,2",
                                        "HIP_VISIBLE_DEVICES": "1"})
    assert [g.index for g in picked] == [2]  # HIP counts within what ROCR left
    assert G.box_env(picked, host) == {}
    ops = gpubox.plan_gpu(host, picked, None)
    assert [op.target for op in ops if isinstance(op, Bind)] == [
        "/dev/kfd", "/dev/dri/renderD130"]
