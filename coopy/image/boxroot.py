"""A box's root on a pulled image: the image's layers, and a small layer of the box's own.

The box's overlay is ``lowerdir = <box layer>:<image layers, top first>`` with the
box's upper on top.  The box layer holds what every box gets on the ``host`` image too:
``/etc/passwd`` and ``/etc/group`` (the image's own, plus the box's users), ``hosts``,
``hostname``, ``resolv.conf``, and the mount points the plan needs (``/proc``, ``/dev``…)
for images that lack them (``FROM scratch``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from coopy.facts import HostFacts
from coopy.idmap import IdMap
from coopy.image.store import ImageRecord, Store, install_layers, pull, say
from coopy.rootfs import BoxUser, build_hosts

MOUNT_POINTS = (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("tmp", 0o1777),
                ("run", 0o755), ("etc", 0o755), ("root", 0o700))


def ensure_image(name: str, *, facts: HostFacts, idmap: IdMap | None,
                 platform: str | None = None, insecure: bool = False,
                 workspace: Path | None = None) -> ImageRecord:
    """The store's record of ``name``, pulled (or unpacked for this map) when missing.

    ``oci:PATH[:TAG]``, ``dir:PATH`` and ``recipe:NAME`` (looked up in
    ``workspace``/rootfs first) are local sources.
    """
    from coopy.image.ref import parse_reference

    if name.startswith("recipe:"):
        from coopy.image.recipe import build_recipe

        return build_recipe(name[len("recipe:"):], workspace or Path.cwd(), facts=facts,
                            idmap=idmap)
    if name.startswith("oci:"):
        from coopy.image.local import import_oci

        return import_oci(name, facts=facts, idmap=idmap, platform=platform)
    if name.startswith("dir:"):
        from coopy.image.local import import_dir

        return import_dir(name, facts=facts, idmap=idmap)
    store = Store()
    full = str(parse_reference(name))
    record = store.get(full)
    if record is not None:
        missing = [layer for layer in record.layers
                   if not store.layer_path(layer.digest, idmap).is_dir()]
        if not missing:
            _warn_if_older(record, workspace)
            return record
        if all(store.blob_path(layer.digest).exists() for layer in missing):
            install_layers(store, missing, idmap, facts)
            return record
    if record is None:
        say(f"coopy: {full} is not here: pulling it")
    return pull(name, facts=facts, idmap=idmap, platform=platform, insecure=insecure)


def _warn_if_older(record: ImageRecord, workspace: Path | None) -> None:
    """Say so when the project's coop.toml changed after the image was pulled: the
    config may name a tag that has moved since."""
    if workspace is None:
        return
    try:
        changed = (workspace / "coop.toml").stat().st_mtime
    except OSError:
        return
    if changed > record.created:
        say(f"coopy: note: {record.name} was pulled before coop.toml last changed; "
            f"`coopy pull {record.name}` fetches what it names now")


def layer_paths(record: ImageRecord, idmap: IdMap | None) -> tuple[str, ...]:
    """The image's unpacked layers as overlay lower dirs: top first."""
    store = Store()
    return tuple(str(store.layer_path(layer.digest, idmap)) for layer in reversed(record.layers))


def image_file(layers: Sequence[str], rel: str) -> str | None:
    """The path of the image's file ``rel`` (``etc/passwd``) in the topmost layer that
    has it, or None.

    A whiteout (0:0 char device) or opaque directory above ends the search: the file was
    deleted in the image.  Symlinks are not followed (they could point anywhere on the
    host): an image whose file is a symlink has none here.
    """
    for layer in layers:
        path = os.path.join(layer, rel)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        return path if stat.S_ISREG(st.st_mode) else None
    return None


def read_image_file(layers: Sequence[str], rel: str) -> str:
    """A text file of the image (see :func:`image_file`), or ''."""
    path = image_file(layers, rel)
    if path is None:
        return ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
            return f.read(4 << 20)
    except OSError:
        return ""


def merge_accounts(image_text: str, entries: Sequence[str], fields: int) -> str:
    """The image's passwd/group lines, with ``entries`` replacing those of the same name."""
    names = {e.split(":", 1)[0] for e in entries}
    kept = [line for line in image_text.splitlines()
            if line and len(line.split(":")) == fields and line.split(":", 1)[0] not in names]
    return "\n".join([*kept, *entries]) + "\n"


def write_box_layer(path: Path, layers: Sequence[str], *, users: Sequence[BoxUser],
                    hostname: str, resolv: str, owner: tuple[int, int] | None) -> None:
    """Write the box's own layer at ``path`` (see the module doc)."""
    path.mkdir(mode=0o755)
    for name, mode in MOUNT_POINTS:
        (path / name).mkdir()
        os.chmod(path / name, mode)
    etc = path / "etc"
    shells = [u.shell if _in_image(layers, u.shell) else "/bin/sh" for u in users]
    passwd = [f"{u.name}:x:{u.uid}:{u.gid}:{u.name}:{u.home}:{sh}"
              for u, sh in zip(users, shells, strict=True)]
    groups: dict[int, str] = {}
    for u in users:
        groups.setdefault(u.gid, f"{u.name}:x:{u.gid}:")
    image_group = read_image_file(layers, "etc/group")
    have_gids = {line.split(":")[2] for line in image_group.splitlines()
                 if len(line.split(":")) == 4}
    group_entries = [g for gid, g in groups.items() if str(gid) not in have_gids]
    files = {
        "passwd": merge_accounts(read_image_file(layers, "etc/passwd"), passwd, 7),
        "group": merge_accounts(image_group, group_entries, 4),
        "hosts": build_hosts(hostname),
        "hostname": hostname + "\n",
        "resolv.conf": resolv,
    }
    for name, text in files.items():
        fd = os.open(etc / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    for u in users:
        if u.uid != 0:
            home = path / u.home.lstrip("/")
            home.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        for dirpath, dirnames, filenames in os.walk(path):
            os.chown(dirpath, *owner)
            for n in dirnames + filenames:
                os.chown(os.path.join(dirpath, n), *owner, follow_symlinks=False)


def _in_image(layers: Sequence[str], program: str) -> bool:
    rel = program.lstrip("/")
    for layer in layers:
        for candidate in (rel, "usr/" + rel):
            if os.path.lexists(os.path.join(layer, candidate)):
                return True
    return False


def image_env(record: ImageRecord) -> dict[str, str]:
    """The image config's ``Env`` (PATH and the like), as a mapping."""
    env = {}
    for item in record.env:
        key, sep, value = item.partition("=")
        if sep and key:
            env[key] = value
    return env

