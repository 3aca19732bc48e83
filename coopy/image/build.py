"""``coopy build``: an image's ``setup`` commands, each run in a box, each cached as a layer.

Step *i* runs ``/bin/sh -c COMMAND`` in an ephemeral box whose root is the base image plus
the layers of steps 1…i-1; when it exits 0, the box's upper directory (overlay's own
format: whiteouts as 0:0 devices, opaque dirs as ``user.overlay.opaque``: exactly what a
lower layer needs) is renamed into the store as that step's layer.  The layer's key is
``sha256(parent key, command)``, the parent of step 1 being the base image's manifest
digest, so changing step 3 rebuilds steps 3… and keeps 1 and 2.

Atomic: a step's layer appears under its final name only by one rename after the
command succeeded; an interrupted or failed step leaves its box directory, which the
next run sweeps (it is not locked any more), and the next build resumes at that step.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from coopy.errors import STATE_FS_HINT, ImageError
from coopy.facts import HostFacts
from coopy.idmap import IdMap
from coopy.image.store import ImageRecord, LayerRef, Store, remove_owned_tree

if TYPE_CHECKING:
    from coopy.prepared import Prepared, RunPrepared
    from coopy.request import RunRequest

STEP_TYPE = "application/vnd.coopy.setup-step"  # a step's layer: a directory, no blob
BUILD_TARGET = "/tmp/coopy-build"  # the steps' working directory: on the box's /tmp tmpfs


def step_keys(record: ImageRecord, setup: Sequence[str]) -> list[str]:
    """The cache key (``sha256:<hex>``) of each step, in order."""
    keys = []
    parent = record.digest
    for command in setup:
        parent = "sha256:" + hashlib.sha256(f"{parent}\n{command}".encode()).hexdigest()
        keys.append(parent)
    return keys


def ensure_built(req: RunRequest, record: ImageRecord, idmap: IdMap | None, facts: HostFacts,
                 run: RunPrepared, *, no_cache: bool = False,
                 quiet: bool = False) -> tuple[str, ...]:
    """The layers of ``req.setup`` on ``record`` (top first), running the missing steps
    as boxes with ``run`` (coopy.box.run_prepared: given, so that this module and the
    runner that calls it do not import each other)."""
    store = Store()
    keys = step_keys(record, req.setup)
    paths = [store.layer_path(key, idmap) for key in keys]
    first_missing = next((i for i, p in enumerate(paths) if not p.is_dir()), len(paths))
    if no_cache:
        first_missing = 0
    for i in range(len(keys)):
        command = req.setup[i]
        if i < first_missing:
            if not quiet:
                _say(f"step {i + 1}/{len(keys)}: {command} (cached)")
            continue
        _say(f"step {i + 1}/{len(keys)}: {command}")
        _run_step(req, i, paths[i], idmap, facts, run)
    if keys and (first_missing < len(keys) or store.get(built_name(record, keys)) is None):
        # A record of the chain: `coopy images` lists it, `system prune` keeps its layers.
        steps = tuple(LayerRef(key, STEP_TYPE, 0) for key in keys)
        store.save(record._replace(name=built_name(record, keys), layers=record.layers + steps,
                                   created=time.time(), source="build"))
    return tuple(str(p) for p in reversed(paths))


def built_name(record: ImageRecord, keys: Sequence[str]) -> str:
    """The name a built chain is listed under: ``<image>+<last step key, 12 hex>``."""
    return f"{record.name}+{keys[-1][7:19]}"


def _run_step(req: RunRequest, index: int, dest: Path, idmap: IdMap | None,
              facts: HostFacts, run_prepared: RunPrepared) -> None:
    import tempfile

    # An empty directory of its own: setup commands see no project and no host /tmp.
    workspace = Path(tempfile.mkdtemp(prefix="coopy-build-"))
    step = req._replace(
        command=("/bin/sh", "-c", req.setup[index]), setup=req.setup[:index], tty=False,
        workspace=workspace, workspace_target=BUILD_TARGET, mounts=(), dry_run=False,
        ports=(),  # a step publishes nothing (the box it builds for may)
        # GPUs would run ldconfig into the step's layer; a worktree or a cow workspace
        # belongs to the box, not to its image
        gpus="none", worktree=None, workspace_mode="rw", agent=None,
    )

    def keep_upper(p: Prepared, status: int) -> None:
        if status != 0:
            return
        Store().layers_dir(idmap)
        tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
        try:
            os.rename(p.box_dir / "upper", tmp)
        except OSError as exc:
            raise ImageError(f"keeping the layer of step {index + 1}: {exc.strerror}",
                             hint=STATE_FS_HINT + "; coopy's state and data directories "
                             "must be on one filesystem") from exc
        if dest.exists():  # --no-cache: the new layer replaces the old one
            old = dest.with_name(f".old-{dest.name}-{os.getpid()}")
            os.rename(dest, old)
            os.rename(tmp, dest)
            remove_owned_tree(old, idmap, facts)
        else:
            os.rename(tmp, dest)
        os.chmod(dest, 0o755)

    try:
        status = run_prepared(step, keep_upper)
    finally:
        os.rmdir(workspace)
    if status != 0:
        raise ImageError(f"setup step {index + 1} failed with status {status}: "
                         f"{req.setup[index]}",
                         hint="fix the command in [sandbox] setup; the steps before it are "
                         "cached, `coopy build` resumes there")


def _say(text: str) -> None:
    sys.stderr.write(f"coopy: {text}\n")
    sys.stderr.flush()
