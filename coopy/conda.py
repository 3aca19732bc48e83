"""``[conda] env``: the host's conda environment in the box, at the same path (as moor).

The conda installation (``[conda] root``, else the one ``$CONDA_EXE`` belongs to, else
the usual install directories) is mounted read-only at its own path, so the paths
compiled into its environments stay right.  The environment (a name under
``ROOT/envs``, ``base``, a path, or ``"auto"``: the workspace directory's name) is
activated twice over: the box's variables say so (``PATH``, ``CONDA_PREFIX``,
``CONDA_DEFAULT_ENV``…) for the agent, which is started without a shell, and
``/etc/profile.d/coopy-conda.sh`` runs ``conda activate`` in login shells, whose
``/etc/profile`` resets ``PATH``.

The path of a virtual environment (``pyvenv.cfg``) is taken the same way, without
conda: the environment and the Python it was made from (``~/.pyenv/versions/X``, uv's)
are mounted read-only at their own paths and ``VIRTUAL_ENV``/``PATH`` set.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from coopy.errors import ConfigError

if TYPE_CHECKING:
    from coopy.request import RunRequest

# Where installers put conda, home-relative or absolute, after $CONDA_EXE.
ROOT_CANDIDATES = ("miniforge3", "miniconda3", "anaconda3", "mambaforge", "/opt/conda")
PROFILE = "profile.d/coopy-conda.sh"  # in the box's /etc


def find_root(configured: Path | None, environ: Mapping[str, str], home: Path) -> Path | None:
    """The conda installation to use: configured, ``$CONDA_EXE``'s, or a usual place."""
    if configured is not None:
        return configured
    exe = environ.get("CONDA_EXE")
    candidates = [Path(exe).parent.parent] if exe else []
    candidates += [home / c for c in ROOT_CANDIDATES]
    for c in candidates:
        if (c / "conda-meta").is_dir() or (c / "etc/profile.d/conda.sh").is_file():
            return c
    return None


def env_prefix(root: Path, env: str, workspace: Path) -> tuple[str, Path]:
    """(name, prefix) of ``env`` in ``root``; errors list the environments there."""
    if env == "auto":
        env = workspace.name
    if env == "base":
        return env, root
    prefix = Path(env) if env.startswith("/") else root / "envs" / env
    if not (prefix / "conda-meta").is_dir() and not (prefix / "bin").is_dir():
        try:
            names = ", ".join(sorted(os.listdir(root / "envs"))) or "none"
        except OSError:
            names = "none"
        raise ConfigError(f"[conda] env {env!r}: no such environment in {root}",
                          hint=f"its environments: base, {names}")
    return prefix.name if env.startswith("/") else env, prefix


def profile_script(root: Path, name: str, prefix: Path) -> str:
    """``/etc/profile.d/coopy-conda.sh``: activate in login shells."""
    conda_sh = shlex.quote(str(root / "etc/profile.d/conda.sh"))
    return (
        "# coopy: [conda] env (coopy/conda.py)\n"
        f"if [ -f {conda_sh} ]; then . {conda_sh}; fi\n"
        f"if command -v conda >/dev/null 2>&1 && conda activate {shlex.quote(str(prefix))}"
        " 2>/dev/null; then :; else\n"
        f"    export PATH={shlex.quote(str(prefix / 'bin'))}:\"$PATH\" "
        f"CONDA_PREFIX={shlex.quote(str(prefix))} "
        f"CONDA_DEFAULT_ENV={shlex.quote(name)}\n"
        "fi\n"
    )


def apply_venv(req: RunRequest, venv: Path, home: Path) -> RunRequest:
    """``req`` with a host virtual environment (``[conda] env = "/path/to/venv"``) at its
    own path, read-only, with the Python it was made from (pyenv's, uv's…) and active."""
    from coopy.agents import VISIBLE_HOST, program_closure
    from coopy.request import BOX_PATH, MountRequest

    venv = venv.resolve()
    dirs, _ = program_closure(venv / "bin/python", [], home,
                              [*VISIBLE_HOST, str(req.workspace.resolve())])
    q = shlex.quote
    script = ("# coopy: [conda] env, a virtual environment (coopy/conda.py)\n"
              f"export VIRTUAL_ENV={q(str(venv))} PATH={q(str(venv / 'bin'))}:\"$PATH\"\n")
    return req._replace(
        mounts=(*req.mounts, *(MountRequest(d, None, str(d), True) for d in dirs)),
        env={**req.env, "VIRTUAL_ENV": str(venv),
             "PATH": f"{venv}/bin:{req.env.get('PATH', BOX_PATH)}"},
        etc_files=(*req.etc_files, (PROFILE, script)),
    )


def apply_conda(req: RunRequest, env: str, root: Path | None, *,
                environ: Mapping[str, str] = os.environ,
                home: Path | None = None) -> RunRequest:
    """``req`` with the conda root mounted read-only and ``env`` activated (or, for the
    path of a virtual environment, that environment: :func:`apply_venv`)."""
    from coopy.request import BOX_PATH, MountRequest

    home = home or Path(os.path.expanduser("~"))
    venv = Path(os.path.expanduser(env))
    if venv.is_absolute() and (venv / "pyvenv.cfg").is_file():
        return apply_venv(req, venv, home)
    found = find_root(root, environ, home)
    if found is None or not found.is_dir():
        where = str(root) if root else "$CONDA_EXE, ~/miniforge3, ~/miniconda3, …"
        raise ConfigError(f"[conda] env {env!r}: no conda installation found ({where})",
                          hint='set [conda] root = "~/miniforge3" (where conda is)')
    found = found.resolve()
    name, prefix = env_prefix(found, env, req.workspace)
    mounts = [MountRequest(found, None, str(found), True)]
    if not str(prefix).startswith(str(found) + "/") and prefix != found:
        mounts.append(MountRequest(prefix, None, str(prefix), True))
    path = req.env.get("PATH", BOX_PATH)
    box_env = {
        "PATH": f"{prefix}/bin:{found}/condabin:{path}",
        "CONDA_PREFIX": str(prefix), "CONDA_DEFAULT_ENV": name, "CONDA_SHLVL": "1",
        "CONDA_EXE": str(found / "bin/conda"), "CONDA_PYTHON_EXE": str(found / "bin/python"),
    }
    return req._replace(
        mounts=(*req.mounts, *mounts), env={**req.env, **box_env},
        etc_files=(*req.etc_files, (PROFILE, profile_script(found, name, prefix))),
    )
