"""Disk use and clean-up: ``coopy system df``, ``coopy system prune``, ``coopy volume``.

What is *in use* is read from the boxes themselves: every box directory (running
ephemeral boxes under ``run/``, persistent ones under ``boxes/``) of a box on a pulled
image holds ``image-layers``, the layer directories its overlay stacks.  Prune never
removes those, nor the images persistent boxes name, nor a volume a box mounts.

Files owned by subordinate ids (layers, volumes, uppers of rootless boxes) are removed
from inside a user namespace with the map they were made with (``map.json`` beside
the layers), as box root can and the caller cannot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from coopy.errors import CoopyError
from coopy.facts import HostFacts
from coopy.image.store import Store, read_map, remove_owned_tree
from coopy.paths import state_dir


class Usage(NamedTuple):
    """One line of ``coopy system df``."""

    kind: str  # image, layer, box, volume
    name: str
    bytes: int
    in_use: bool


def tree_size(path: Path) -> int:
    """Bytes allocated under ``path`` (hard links counted once); unreadable parts skipped."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path, onerror=lambda e: None):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def box_dirs() -> list[Path]:
    """Every box directory of this user (ephemeral and persistent)."""
    out = []
    for sub in ("run", "boxes"):
        try:
            out += [e for e in (state_dir() / sub).iterdir()
                    if e.is_dir() and not e.name.startswith("skel-")]
        except OSError:
            continue
    return out


def _box_texts(name: str) -> list[str]:
    """The file ``name`` of every box directory that has one."""
    out = []
    for box in box_dirs():
        try:
            out.append((box / name).read_text())
        except OSError:
            continue
    return out


def _box_records() -> list[dict[str, object]]:
    out = []
    for text in _box_texts("box.json"):
        try:
            doc = json.loads(text)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def layers_in_use() -> set[str]:
    """Layer directories that some box stacks (its ``image-layers``)."""
    return {line for text in _box_texts("image-layers") for line in text.splitlines() if line}


def images_in_use() -> set[str]:
    """Image names that persistent boxes were made with."""
    return {str(doc.get("image")) for doc in _box_records()}


def volumes_in_use() -> set[str]:
    """Named volumes that persistent boxes mount (``NAME:/target``)."""
    names: set[str] = set()
    for doc in _box_records():
        mounts = doc.get("mounts")
        for spec in mounts if isinstance(mounts, list) else []:
            source = str(spec).split(":", 1)[0]
            if source and "/" not in source and not source.startswith(("~", ".")):
                names.add(source)
    return names


def _layer_dirs(store: Store) -> list[Path]:
    out = []
    try:
        maps = [m for m in (store.root / "layers").iterdir() if m.is_dir()]
    except OSError:
        return []
    for mapdir in maps:
        out += [p for p in mapdir.iterdir() if p.is_dir()]
    return out


def disk_usage() -> list[Usage]:
    """Per image, layer, box and volume: bytes used and whether a box uses it."""
    from coopy.image.ref import parse_reference

    store = Store()
    used_layers = layers_in_use()
    used_images = set()
    for name in images_in_use():
        try:
            used_images.add(str(parse_reference(name)) if name != "host" else name)
        except CoopyError:
            continue
    out: list[Usage] = []
    sizes: dict[str, int] = {}
    for layer in _layer_dirs(store):
        size = tree_size(layer)
        sizes[layer.name] = sizes.get(layer.name, 0) + size
        out.append(Usage("layer", f"{layer.parent.name}/{layer.name[:12]}", size,
                         str(layer) in used_layers))
    for record in store.records():
        size = sum(sizes.get(layer.digest.split(":", 1)[1], 0) for layer in record.layers)
        out.insert(0, Usage("image", record.name, size, record.name in used_images))
    for box in box_dirs():
        out.append(Usage("box", f"{box.parent.name}/{box.name}", tree_size(box / "upper"),
                         True))
    used_vols = volumes_in_use()
    try:
        volumes = sorted((state_dir() / "volumes").iterdir())
    except OSError:
        volumes = []
    for vol in volumes:
        out.append(Usage("volume", vol.name, tree_size(vol), vol.name in used_vols))
    return out


def prune(facts: HostFacts, *, everything: bool = False) -> list[str]:
    """Remove what no box uses; return what was removed.

    Always: layers no image record names, half-made layers (``.tmp-*``, ``.old-*``),
    partial downloads, blobs no record names.  With ``everything``: also the image
    records themselves (those no persistent box names), then their layers.
    """
    store = Store()
    removed: list[str] = []
    keep_images = images_in_use()
    if everything:
        for record in store.records():
            if record.name not in keep_images and record.name.split("+")[0] not in keep_images:
                store.remove(record.name)
                removed.append(f"image {record.name}")
    records = store.records()
    wanted = {layer.digest.split(":", 1)[1] for r in records for layer in r.layers}
    used = layers_in_use()
    try:
        maps = [m for m in (store.root / "layers").iterdir() if m.is_dir()]
    except OSError:
        maps = []
    for mapdir in maps:
        try:
            idmap = read_map(mapdir)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # made by an older coopy or damaged: leave it to the user
        for layer in list(mapdir.iterdir()):
            if not layer.is_dir() or str(layer) in used:
                continue
            if layer.name in wanted and not layer.name.startswith("."):
                continue
            remove_owned_tree(layer, idmap, facts)
            removed.append(f"layer {mapdir.name}/{layer.name[:19]}")
    wanted_blobs = wanted | {d.split(":", 1)[1] for r in records for d in (r.digest, r.config)}
    try:
        blobs = list(store.blobs.iterdir())
    except OSError:
        blobs = []
    for blob in blobs:
        if blob.name.split(".")[0] not in wanted_blobs or blob.name.endswith(".part"):
            blob.unlink(missing_ok=True)
            removed.append(f"blob {blob.name[:19]}")
    return removed


def remove_volume(name: str, facts: HostFacts) -> None:
    """Remove the named volume ``name`` unless a box mounts it."""
    from coopy.errors import ConfigError
    from coopy.request import plan_ids

    path = state_dir() / "volumes" / name
    if "/" in name or name in (".", "..") or not path.is_dir():
        raise ConfigError(f"no volume named {name!r}", hint="see `coopy volume ls`")
    if name in volumes_in_use():
        raise ConfigError(f"volume {name!r} is mounted by a box",
                          hint="remove that box first (`coopy rm`)")
    remove_owned_tree(path, plan_ids(facts, 0, 0, "auto"), facts)
