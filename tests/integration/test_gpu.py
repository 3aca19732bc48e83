"""GPUs in real boxes, against a fake driver tree (tests/fakegpu.py; CI has no GPU).

Each box runs tests/fixtures/nvidia/cuda_probe.py, which dlopen()s libcuda.so.1 by its
SONAME through the box's loader cache, calls cuInit and counts the GPUs the stub
library can open: exactly the selected ones, as root and as an ordinary user.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coopy.ldcache import Entry as CacheEntry
from coopy.ldcache import build_cache, parse_cache
from tests.conftest import WORK_BASE, BoxUser
from tests.fakegpu import FIXTURES, UUIDS, build_fake_driver
from tests.imagekit import Entry, OciLayout, Registry, base_entries, probe_binary, push, tar_bytes

PROBE = FIXTURES / "cuda_probe.py"


@pytest.fixture(scope="module")
def gpu_root() -> Iterator[Path]:
    WORK_BASE.mkdir(mode=0o755, exist_ok=True)
    root = WORK_BASE / f"gpu-root-{uuid.uuid4().hex[:8]}"
    build_fake_driver(root, gpus=2)
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root)


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {"COOPY_GPU_ROOT": str(root), **extra}


def cuda_probe(user: BoxUser, root: Path, *args: str, env: dict[str, str] | None = None
               ) -> dict[str, Any]:
    ws = user.workspace()
    shutil.copy(PROBE, ws / "cuda_probe.py")
    os.chown(ws / "cuda_probe.py", user.uid, user.pw.pw_gid)
    res = user.coopy("run", *args, "--", "python3", "cuda_probe.py", cwd=ws,
                     env=_env(root, **(env or {})))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_cuda_sees_every_gpu_by_default(box_user: BoxUser, gpu_root: Path) -> None:
    out = cuda_probe(box_user, gpu_root)
    assert out.get("error") is None
    assert (out["init"], out["count_status"], out["count"]) == (0, 0, 2)
    assert out["names"] == ["Fake GPU /dev/nvidia0", "Fake GPU /dev/nvidia1"]
    # found by SONAME through the box's ld cache, from the read-only GPU directory
    assert out["mapped"] == ["/run/coopy/gpu/lib/libcuda.so.535.104.05"]
    assert out["find_library"] == "libcuda.so.1"  # what Triton does: ldconfig -p
    assert {"libcuda.so.1", "libcuda.so", "libnvidia-ml.so.1"} <= set(out["ldconfig_p"])
    assert "libGLX_nvidia.so.0" not in out["ldconfig_p"]  # graphics: not passed in
    assert out["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert out["env"]["NVIDIA_VISIBLE_DEVICES"] == ",".join(UUIDS[:2])


@pytest.mark.parametrize(("args", "env", "names", "box_cvd"), [
    (["--gpus", "1"], {}, ["Fake GPU /dev/nvidia1"], "0"),
    (["--gpus", UUIDS[0]], {}, ["Fake GPU /dev/nvidia0"], "0"),
    (["--gpus", "1,0"], {}, ["Fake GPU /dev/nvidia0", "Fake GPU /dev/nvidia1"], "0,1"),
    ([], {"CUDA_VISIBLE_DEVICES": "1"}, ["Fake GPU /dev/nvidia1"], "0"),
    ([], {"NVIDIA_VISIBLE_DEVICES": UUIDS[1]}, ["Fake GPU /dev/nvidia1"], "0"),
])
def test_cuda_counts_exactly_the_selected_gpus(
        box_user: BoxUser, gpu_root: Path, args: list[str], env: dict[str, str],
        names: list[str], box_cvd: str) -> None:
    out = cuda_probe(box_user, gpu_root, *args, env=env)
    assert (out["init"], out["count"], out["names"]) == (0, len(names), names)
    assert out["env"]["CUDA_VISIBLE_DEVICES"] == box_cvd
    assert sorted(n for n in out["nodes"] if n[6:].isdigit()) == sorted(
        n.rsplit("/", 1)[1] for n in names)


def test_no_gpus_means_no_driver_in_the_box(box_user: BoxUser, gpu_root: Path) -> None:
    out = cuda_probe(box_user, gpu_root, "--gpus", "none")
    assert "libcuda.so.1" in out["error"]
    assert out["nodes"] == [] and out["find_library"] is None
    assert "CUDA_VISIBLE_DEVICES" not in out["env"]


def test_config_selects_gpus(box_user: BoxUser, gpu_root: Path) -> None:
    ws = box_user.workspace()
    (ws / "coop.toml").write_text("[gpu]\ndevices = [1]\n")
    os.chown(ws / "coop.toml", box_user.uid, box_user.pw.pw_gid)
    shutil.copy(PROBE, ws / "cuda_probe.py")
    res = box_user.coopy("run", "--", "python3", "cuda_probe.py", cwd=ws, env=_env(gpu_root))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["names"] == ["Fake GPU /dev/nvidia1"]


def test_nvidia_smi_and_the_box_around_the_gpus(box_user: BoxUser, gpu_root: Path) -> None:
    script = (
        "nvidia-smi; test -S /run/nvidia-persistenced/socket && echo socket; "
        "grep -E ' /dev/(nvidia1|shm) ' /proc/self/mountinfo; "
        "stat -c '%F' /dev/nvidia1; df -k /dev/shm | tail -1; ulimit -l; "
        "tail -1 /etc/ld.so.conf; printf probe > /proc/$$/task/$$/comm && "
        "cat /proc/$$/task/$$/comm"
    )
    res = box_user.coopy("run", "--gpus", "1", "--", "sh", "-c", script,
                         cwd=box_user.workspace(), env=_env(gpu_root))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:2] == ["GPU 0: Fake GPU (/dev/nvidia1)", "socket"]
    node = next(line for line in lines if " /dev/nvidia1 " in line)
    assert "nodev" not in node.split()[5].split(",")  # the mount's own options
    kind = "character special file" if box_user.uid == 0 or os.getuid() == 0 else \
        "regular empty file"
    assert kind in lines
    shm_kb = int(next(line for line in lines if line.startswith("tmpfs")).split()[1])
    half = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2 // 1024
    assert abs(shm_kb - half) < half // 50  # half of the RAM, not Docker's 64 MiB
    assert lines[-2:] == ["/run/coopy/gpu/lib", "probe"]  # cuInit 570+ names its threads


@pytest.mark.parametrize(("args", "root_kind", "message"), [
    (["--gpus", "3"], "fake", "GPU 3 does not exist: this host has 2 GPUs (0, 1)"),
    (["--gpus", "GPU-0000dead"], "fake", "no GPU has the UUID GPU-0000dead"),
    (["--gpus", "all"], "empty", "GPUs were asked for (--gpus all) but this host has none"),
    (["--gpus", "yes"], "fake", "--gpus yes: 'yes' is not a GPU index or UUID"),
])
def test_gpu_request_errors(box_user: BoxUser, gpu_root: Path, tmp_path: Path,
                            args: list[str], root_kind: str, message: str) -> None:
    empty = WORK_BASE / f"gpu-empty-{uuid.uuid4().hex[:8]}"
    empty.mkdir(mode=0o755)
    try:
        root = gpu_root if root_kind == "fake" else empty
        res = box_user.coopy("run", *args, "--", "true", cwd=box_user.workspace(),
                             env=_env(root))
        assert res.returncode == 125, res.stderr
        assert f"coopy: {message}" in res.stderr
        assert "hint: " in res.stderr
        # no GPU and none asked for: runs as always
        res = box_user.coopy("run", "--", "true", cwd=box_user.workspace(), env=_env(empty))
        assert res.returncode == 0, res.stderr
    finally:
        empty.rmdir()


def test_exclusive_gpu_is_held_by_a_box_until_it_ends(
        box_user: BoxUser, gpu_root: Path) -> None:
    env = {**_env(gpu_root), **box_user.user_config("[gpu]\nexclusive = true\n")}
    ws = box_user.workspace()
    name = f"gpu-{uuid.uuid4().hex[:6]}"
    res = box_user.coopy("-d", "-n", name, "--gpus", "0", "--", "sleep", "300", cwd=ws, env=env)
    assert res.returncode == 0, res.stderr
    try:
        res = box_user.coopy("run", "--gpus", "0", "--", "true", cwd=ws, env=env)
        assert res.returncode == 125
        assert f"coopy: GPU 0 is held by box {name} of {box_user.pw.pw_name}" in res.stderr
        listing = box_user.coopy("ls", env=env)
        assert f"held by box {name} of {box_user.pw.pw_name} (GPU 0)" in listing.stdout
        assert any(line.startswith(name) and line.endswith("gpus 0")
                   for line in listing.stdout.splitlines()), listing.stdout
        rows = json.loads(box_user.coopy("ls", "--json", env=env).stdout)
        assert next(r for r in rows if r["name"] == name)["gpus"] == ["0"]
        # the other GPU is free; without exclusive nobody is refused
        assert box_user.coopy("run", "--gpus", "1", "--", "true", cwd=ws,
                              env=env).returncode == 0
        assert box_user.coopy("run", "--gpus", "0", "--", "true", cwd=ws,
                              env=_env(gpu_root)).returncode == 0
        # the keeper killed with SIGKILL: the kernel drops its lock
        keeper = next(r for r in rows if r["name"] == name)["pid"]
        os.kill(keeper, signal.SIGKILL)
        res = box_user.coopy("run", "--gpus", "0", "--", "true", cwd=ws, env=env)
        deadline = 50
        while res.returncode != 0 and deadline:  # the box's processes exit asynchronously
            deadline -= 1
            res = box_user.coopy("run", "--gpus", "0", "--", "true", cwd=ws, env=env)
        assert res.returncode == 0, res.stderr
    finally:
        box_user.coopy("kill", "-f", name, env=env)
        box_user.coopy("rm", "-f", name, env=env)


def test_coopy_gpu_reports_what_a_box_gets(box_user: BoxUser, gpu_root: Path) -> None:
    res = box_user.coopy("gpu", "--json", "--gpus", "1", env=_env(gpu_root))
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["source"], data["driver_version"]) == ("discovery", "535.104.05")
    assert [(g["index"], g["selected"]) for g in data["gpus"]] == [(0, False), (1, True)]
    assert data["device_nodes"][-1] == "/dev/nvidia1"
    assert data["links"]["libcuda.so.1"] == "libcuda.so.535.104.05"
    assert data["env"]["NVIDIA_VISIBLE_DEVICES"] == UUIDS[1]
    text = box_user.coopy("gpu", env=_env(gpu_root, CUDA_VISIBLE_DEVICES="0")).stdout
    assert "limited by: CUDA_VISIBLE_DEVICES=0" in text
    assert "[not yours]" in text and "[passed in]" in text


def test_doctor_reports_a_driver_library_mismatch(box_user: BoxUser, gpu_root: Path) -> None:
    res = box_user.coopy("doctor", "--json", "--no-box", env=_env(gpu_root))
    checks = {c["name"]: c for c in json.loads(res.stdout)}
    assert checks["gpu"]["status"] == "ok" and "2 NVIDIA GPU(s)" in checks["gpu"]["detail"]
    assert checks["gpu libraries"]["status"] == "ok"
    broken = WORK_BASE / f"gpu-mismatch-{uuid.uuid4().hex[:8]}"
    subprocess.run(["cp", "-a", str(gpu_root), str(broken)], check=True)
    try:
        version = broken / "proc/driver/nvidia/version"
        version.write_text(version.read_text().replace("535.104.05", "550.54.14"))
        if os.getuid() == 0:  # root's own node: the rootless user cannot open it
            os.chown(broken / "dev/nvidia1", 0, 0)
            os.chmod(broken / "dev/nvidia1", 0o600)
        else:  # the runner's own file: no mode bit for anyone
            os.chmod(broken / "dev/nvidia1", 0)
        res = box_user.coopy("doctor", "--json", "--no-box", env=_env(broken))
        assert res.returncode == 1  # CUDA cannot work: a failure
        checks = {c["name"]: c for c in json.loads(res.stdout)}
        lib = checks["gpu libraries"]
        assert lib["status"] == "fail" and "550.54.14" in lib["detail"]
        assert "reboot" in lib["fix"]
        node = checks.get("/dev/nvidia1")
        if box_user.uid != 0:
            assert node is not None and node["status"] == "warn" and "usermod" in node["fix"]
        assert stat.S_IMODE(os.stat(gpu_root / "dev/nvidia1").st_mode) == 0o666
    finally:
        shutil.rmtree(broken)


def test_wsl_box_loads_the_windows_driver_library(box_user: BoxUser) -> None:
    from tests.fakegpu import build_fake_wsl

    root = build_fake_wsl(WORK_BASE / f"gpu-wsl-{uuid.uuid4().hex[:8]}")
    try:
        os.chmod(root, 0o755)
        out = cuda_probe(box_user, root, env={"CUDA_VISIBLE_DEVICES": "0"})
        assert out.get("error") is None
        assert out["mapped"] == ["/run/coopy/gpu/lib/libcuda.so.1.1"]
        assert out["init"] == 100  # the stub's answer without /dev/nvidiactl: loaded, ran
        assert out["nodes"] == [] and out["env"]["CUDA_VISIBLE_DEVICES"] == "0"
        res = box_user.coopy("run", "--", "sh", "-c", "test -c /dev/dxg || test -f /dev/dxg; "
                             "ls /run/coopy/gpu/bin", cwd=box_user.workspace(), env=_env(root))
        assert res.returncode == 0 and res.stdout.split() == ["nvidia-smi"], res.stderr
    finally:
        shutil.rmtree(root)


def test_amd_box_gets_kfd_and_its_render_nodes(box_user: BoxUser) -> None:
    from tests.fakegpu import build_fake_amd

    root = build_fake_amd(WORK_BASE / f"gpu-amd-{uuid.uuid4().hex[:8]}", gpus=2)
    try:
        os.chmod(root, 0o755)
        res = box_user.coopy("run", "--gpus", "1", "--", "sh", "-c",
                             "ls /dev/kfd /dev/dri; : <>/dev/dri/renderD129 && echo opened",
                             cwd=box_user.workspace(), env=_env(root))
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["/dev/kfd", "/dev/dri:", "renderD129", "opened"]
    finally:
        shutil.rmtree(root)


def test_cdi_spec_decides_what_the_box_gets(box_user: BoxUser, gpu_root: Path) -> None:
    from tests.fakegpu import multiarch
    from tests.unit.test_gpu import CDI_YAML

    root = WORK_BASE / f"gpu-cdi-{uuid.uuid4().hex[:8]}"
    subprocess.run(["cp", "-a", str(gpu_root), str(root)], check=True)
    try:
        (root / "etc/cdi").mkdir(mode=0o755)
        (root / "etc/cdi/nvidia.yaml").write_text(CDI_YAML.format(
            arch=multiarch(), version="535.104.05", uuid=UUIDS[1]))
        os.chmod(root / "etc/cdi/nvidia.yaml", 0o644)
        out = cuda_probe(box_user, root)
        # the spec's only GPU is /dev/nvidia1; its libcuda and nvidia-smi are passed in
        assert (out["init"], out["names"]) == (0, ["Fake GPU /dev/nvidia1"])
        assert out["mapped"] == ["/run/coopy/gpu/lib/libcuda.so.535.104.05"]
        assert "libnvidia-ml.so.1" not in out["ldconfig_p"]  # not in the spec
        assert out["env"]["NVIDIA_VISIBLE_DEVICES"] == UUIDS[1]
        gpu = json.loads(box_user.coopy("gpu", "--json", env=_env(root)).stdout)
        assert gpu["source"] == "cdi:/etc/cdi/nvidia.yaml"
    finally:
        shutil.rmtree(root)


# ---- a pulled image -----------------------------------------------------------------

IMAGE_LIB = "/opt/img/lib/libimage.so.1"


@pytest.fixture(scope="module")
def gpu_image() -> Iterator[str]:
    """An image on a loopback registry (tests/imagekit.py) with a loader cache and an
    ld.so.conf of its own, unlike the host's; its reference."""
    if not shutil.which("docker-registry") or not shutil.which("skopeo"):
        pytest.skip("needs docker-registry and skopeo (apt install docker-registry skopeo)")
    base = WORK_BASE / f"gpu-images-{uuid.uuid4().hex[:8]}"
    base.mkdir(parents=True)
    registry = Registry(base / "registry")
    registry.start()
    try:
        cache = build_cache([CacheEntry("libimage.so.1", 0x0303, IMAGE_LIB),
                             CacheEntry("libc.so.6", 0x0303, "/opt/img/lib/libc.so.6")])
        layer = tar_bytes([*base_entries(probe_binary(base)),
                           Entry("etc/ld.so.cache", data=cache),
                           Entry("etc/ld.so.conf", data="/opt/img/lib\n"),
                           Entry("opt/", "dir", mode=0o755),
                           Entry("opt/img/", "dir", mode=0o755),
                           Entry("opt/img/lib/", "dir", mode=0o755),
                           Entry(IMAGE_LIB[1:], data=b"\x7fELF")])
        layout = OciLayout(base / "oci")
        layout.tag(layout.image([(layer, "gzip")]), "gpu")
        ref = f"{registry.host}/test/gpu:v1"
        push(base / "oci", "gpu", ref)
        yield ref
    finally:
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.registry
def test_pulled_image_box_gets_the_gpus_and_its_own_ld_cache(
        box_user: BoxUser, gpu_root: Path, gpu_image: str) -> None:
    ws = box_user.workspace()
    env = _env(gpu_root, COOPY_HOME=str(ws / "coopy"))

    def probe(*args: str) -> bytes:
        res = subprocess.run(box_user.argv(["run", "--image", gpu_image, "--gpus", "1", "--",
                                            "/bin/imgprobe", *args]),
                             capture_output=True, cwd=ws, env=box_user.env(env), timeout=120)
        assert res.returncode == 0, res.stderr.decode(errors="replace")
        return res.stdout

    cache = {e.name: e.path for e in parse_cache(probe("cat", "/etc/ld.so.cache"))}
    # the image's entries (not the host's) plus the driver's, by SONAME
    assert cache.pop("libimage.so.1") == IMAGE_LIB
    assert cache.pop("libc.so.6") == "/opt/img/lib/libc.so.6"
    assert cache == {name: f"/run/coopy/gpu/lib/{name}" for name in
                     ("libcuda.so.1", "libcuda.so", "libnvidia-ml.so.1",
                      "libnvidia-ptxjitcompiler.so.1")}
    assert probe("cat", "/etc/ld.so.conf").decode().splitlines() == \
        ["/opt/img/lib", "# coopy: the GPU driver's libraries", "/run/coopy/gpu/lib"]
    # what the cache names is there, and so are the device nodes
    assert probe("stat", "/run/coopy/gpu/lib/libcuda.so.1").split()[0] == b"link"
    assert probe("stat", "/run/coopy/gpu/lib/libcuda.so.535.104.05").split()[0] == b"file"
    kind = b"chr" if box_user.uid == 0 or os.getuid() == 0 else b"file"
    for node in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia1"):
        assert probe("stat", node).split()[0] == kind
    assert b"nvidia0" not in probe("ls", "/dev").split()
