"""[conda] env: finding the installation and the environment, the box's variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from coopy.conda import PROFILE, apply_conda, env_prefix, find_root
from coopy.config import load_config
from coopy.errors import ConfigError
from coopy.request import BOX_PATH, RunRequest
from coopy.trust import project_grants, without_grants


def _root(base: Path) -> Path:
    for d in ("conda-meta", "envs/torch/conda-meta", "envs/jax/bin"):
        (base / d).mkdir(parents=True)
    return base


def test_find_root(tmp_path: Path) -> None:
    root = _root(tmp_path / "mf")
    assert find_root(None, {"CONDA_EXE": f"{root}/bin/conda"}, tmp_path) == root
    _root(tmp_path / "miniforge3")
    assert find_root(None, {}, tmp_path) == tmp_path / "miniforge3"
    assert find_root(Path("/x"), {}, tmp_path) == Path("/x")
    assert find_root(None, {}, tmp_path / "nobody") is None


@pytest.mark.parametrize(
    ("env", "name", "rel"),
    [("torch", "torch", "envs/torch"), ("base", "base", ""), ("auto", "jax", "envs/jax")],
)
def test_env_prefix(tmp_path: Path, env: str, name: str, rel: str) -> None:
    root = _root(tmp_path)
    assert env_prefix(root, env, Path("/home/u/jax")) == (name, root / rel if rel else root)


def test_missing_env_lists_the_others(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        env_prefix(_root(tmp_path), "tf", Path("/w"))
    assert err.value.hint == "its environments: base, jax, torch"


def test_apply_conda(tmp_path: Path) -> None:
    root = _root(tmp_path)
    req = RunRequest(command=["x"], workspace=tmp_path, env={"A": "1"})
    out = apply_conda(req, "torch", root)
    prefix = f"{root}/envs/torch"
    assert [(str(m.source), m.target, m.readonly) for m in out.mounts] == [
        (str(root), str(root), True)]
    assert out.env["PATH"] == f"{prefix}/bin:{root}/condabin:{BOX_PATH}"
    assert (out.env["CONDA_PREFIX"], out.env["CONDA_DEFAULT_ENV"], out.env["A"]) == (
        prefix, "torch", "1")
    ((path, script),) = out.etc_files
    assert path == PROFILE and f"conda activate {prefix}" in script


def test_project_conda_env_needs_trust(tmp_path: Path) -> None:
    project = tmp_path / "coop.toml"
    project.write_text('[conda]\nenv = "torch"\n')
    config = load_config(tmp_path, project, user_file=None)
    grants = project_grants(config, project, tmp_path)
    assert [g.key for g in grants] == ["conda.env"]
    assert without_grants(config, grants).conda.env is None


def test_a_virtual_environment_and_the_python_it_was_made_from(tmp_path: Path) -> None:
    home = tmp_path / "home"
    base = home / ".pyenv/versions/3.12.1/bin"
    base.mkdir(parents=True)
    (base / "python3.12").write_bytes(b"\x7fELF")
    venv = tmp_path / "venvs/proj"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {base}\n")
    (venv / "bin/python").symlink_to(base / "python3.12")
    req = RunRequest(command=["x"], workspace=tmp_path / "ws")
    out = apply_conda(req, str(venv), None, home=home)
    assert [str(m.source) for m in out.mounts] == [str(venv), str(home / ".pyenv/versions/3.12.1")]
    assert all(m.readonly and str(m.source) == m.target for m in out.mounts)
    assert out.env["VIRTUAL_ENV"] == str(venv)
    assert out.env["PATH"] == f"{venv}/bin:{BOX_PATH}"
    assert "export VIRTUAL_ENV=" in out.etc_files[0][1]
