"""Images with more layers than a box can stack: the bottom ones merged into one layer.

overlayfs stacks at most 500 lower layers (``OVL_MAX_STACK``), and the box adds one of
its own (``image-etc``).  Boxes of root meet a lower limit first: the parent clones each
image layer (``open_tree``) and passes the fds to the box's process in one SCM_RIGHTS
message of at most 200 fds, next to the id-mapped binds, with their paths (64 KiB:
coopy/spawn.py, native/front/).  An image with
more layers than the box may stack keeps its top layers as they are and has the rest
merged, as overlayfs would show them (whiteouts and opaque directories applied: nothing
is below), into one *flattened* layer, ``layers/<map>/<key>`` with ``key = sha256`` of
the merged layers' names, bottom first.  It is made once per chain and id map (the
first box pays a copy) and recorded as the image ``<image>+flat-<key>`` so that
``coopy system prune`` keeps it while the image is kept.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

from coopy.errors import ImageError
from coopy.facts import HostFacts
from coopy.idmap import IdMap
from coopy.image.store import ImageRecord, LayerRef, Store, remove_owned_tree, say

OVERLAY_MAX_LOWER = 500  # the kernel's OVL_MAX_STACK
ROOT_BOX_MAX_LAYERS = 150  # fds passed to a box of root: 200, less room for its binds
ROOT_BOX_PATH_BYTES = 48 << 10  # and their paths: 64 KiB, less room for the binds'
FLAT_TYPE = "application/vnd.coopy.flattened"


def max_layers(facts: HostFacts, idmap: IdMap | None) -> int:
    """How many image layers a box of this user can stack (besides its own layer)."""
    if facts.uid == 0 and idmap is not None:
        return ROOT_BOX_MAX_LAYERS
    return OVERLAY_MAX_LOWER - 1


def layers_kept(layers: Sequence[str], facts: HostFacts, idmap: IdMap | None) -> int | None:
    """How many top layers stay as they are above a flattened one; None: no need."""
    from itertools import accumulate

    limit = max_layers(facts, idmap)
    sizes = [len(p) + 1 for p in layers]
    root_box = facts.uid == 0 and idmap is not None
    if len(layers) <= limit and (not root_box or sum(sizes) <= ROOT_BOX_PATH_BYTES):
        return None
    count = limit - 1
    if root_box:  # as many paths as fit, with the flattened layer's (as long as any)
        budget = ROOT_BOX_PATH_BYTES - max(sizes)
        count = min(count, sum(1 for total in accumulate(sizes) if total <= budget))
    return count


def fit_layers(record: ImageRecord, layers: Sequence[str], idmap: IdMap | None,
               facts: HostFacts) -> tuple[str, ...]:
    """``layers`` (top first) as the box can stack them: unchanged, or the top ones and
    one flattened layer for the rest (made now when it is not there yet)."""
    count = layers_kept(layers, facts, idmap)
    if count is None:
        return tuple(layers)
    root_box = facts.uid == 0 and idmap is not None
    keep, bottom = list(layers[:count]), list(layers[count:])
    names = "\n".join(os.path.basename(p) for p in reversed(bottom))
    key = "sha256:" + hashlib.sha256(f"flatten\n{names}".encode()).hexdigest()
    store = Store()
    dest = store.layer_path(key, idmap)
    if not dest.is_dir():
        say(f"coopy: {record.name} has {len(layers)} layers, more than a box "
            f"{'of root ' if root_box else ''}stacks ({count + 1}): merging the bottom "
            f"{len(bottom)} into one (once)")
        _flatten(bottom, dest, idmap, facts)
    name = f"{record.name}+flat-{key[7:19]}"
    if store.get(name) is None:  # what keeps the layer through `coopy system prune`
        store.save(record._replace(name=name, digest=key, config=key,
                                   layers=(LayerRef(key, FLAT_TYPE, 0),),
                                   created=time.time(), source="flatten"))
    return (*keep, str(dest))


def _flatten(bottom: Sequence[str], dest: Path, idmap: IdMap | None,
             facts: HostFacts) -> None:
    from coopy.image.volume import merge_as_box

    tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
    try:
        # Owners as they are: the copy is a layer of the same map as its sources.
        error = merge_as_box(bottom, tmp, idmap, facts, lambda uid, gid: (uid, gid))
        if error:
            raise ImageError(f"flattening {len(bottom)} layers: {error}",
                             hint="free some disk space; or squash the image "
                             "(e.g. `docker build --squash`)")
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # another box flattened it first: keep theirs
                raise
    finally:
        if os.path.lexists(tmp):
            remove_owned_tree(tmp, idmap, facts)
