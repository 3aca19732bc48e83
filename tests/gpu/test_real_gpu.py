"""On a machine with an NVIDIA GPU: real CUDA in boxes, as root and as an ordinary user.

Marked ``gpu`` and skipped (with the reason) where there is no /dev/nvidiactl, as on
CI.  Run them on a GPU machine with (README, "GPUs")::

    sudo ./tests/run.sh -m gpu tests/gpu -v

torch is tried when pip can install it in the box (network: --net host); otherwise
that test is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import BoxUser

HERE = Path(__file__).parent
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not os.path.exists("/dev/nvidiactl"),
                       reason="no NVIDIA GPU here (/dev/nvidiactl is missing)"),
]


def test_nvidia_smi_lists_the_gpus(box_user: BoxUser) -> None:
    res = box_user.coopy("run", "--", "nvidia-smi", "-L", cwd=box_user.workspace())
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("GPU 0:")
    one = box_user.coopy("run", "--gpus", "0", "--", "nvidia-smi", "-L",
                         cwd=box_user.workspace())
    assert one.returncode == 0 and one.stdout.count("GPU ") == 1, one.stdout


def test_driver_api_kernel_launch(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    shutil.copy(HERE / "cuda_kernel.py", ws / "cuda_kernel.py")
    res = box_user.coopy("run", "--", "python3", "cuda_kernel.py", cwd=ws)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["kernel_ok"] and out["devices"] >= 1
    hidden = box_user.coopy("run", "--gpus", "none", "--", "python3", "cuda_kernel.py", cwd=ws)
    assert hidden.returncode != 0  # no GPU asked for: none reachable


@pytest.mark.slow
def test_torch_matmul(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    install = box_user.coopy(
        "run", "--net", "host", "--", "sh", "-c",
        "python3 -m venv venv && mkdir -p tmp && TMPDIR=$PWD/tmp venv/bin/pip install -q "
        "--no-cache-dir torch", cwd=ws, timeout=1800)
    if install.returncode != 0:
        pytest.skip(f"pip could not install torch here: {install.stderr[-300:]}")
    script = ("import torch; assert torch.cuda.is_available(); "
              "a = torch.randn(2048, 2048, device='cuda'); b = a @ a; "
              "torch.cuda.synchronize(); print(torch.cuda.device_count(), b.shape[0])")
    res = box_user.coopy("run", "--", "venv/bin/python", "-c", script, cwd=ws, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[1] == "2048"
