"""A prepared box: what :mod:`coopy.box` has validated and made ready to start.

Its own module so that what consumes one — the plan cache (coopy/plancache.py) and image
builds (coopy/image/build.py, whose steps are boxes) — can name it without importing the
runner that makes it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from coopy.facts import HostFacts
    from coopy.gpubox import BoxGpus
    from coopy.idmap import IdMap
    from coopy.net import NetSetup
    from coopy.ops import Op
    from coopy.plan import BoxSpec
    from coopy.request import RunRequest
    from coopy.rootfs import BoxUser


class Prepared(NamedTuple):
    """A validated box, its directory prepared, ready to start."""

    req: RunRequest
    facts: HostFacts
    spec: BoxSpec
    ops: tuple[Op, ...]
    idmap: IdMap | None
    user: BoxUser
    box_dir: Path
    network: NetSetup | None = None
    gpus: BoxGpus | None = None


# coopy.box.run_prepared: run a request as a box, calling ``after(prepared, status)``
# before its directory goes (an image build keeps the step's upper layer that way).
RunPrepared = Callable[["RunRequest", Callable[[Prepared, int], None]], int]
