"""Images from local files: ``oci:PATH[:TAG]``, an OCI image layout directory, or a tarball
of one (``skopeo copy … oci-archive:``, ``docker save`` of Docker 25+), or a ``docker save``
tarball of the older form (``manifest.json`` naming ``<id>/layer.tar`` files); and
``dir:PATH``, a directory holding a root filesystem.

The layout is read as the registry's answers are: index → (platform) → manifest →
config and layers, every blob's sha256 checked against its descriptor.  Layers are
unpacked into the store by the same hardened extractor, in the box's user namespace;
the source files are never modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from coopy.errors import ImageError
from coopy.facts import HostFacts
from coopy.idmap import IdMap
from coopy.image.layer import LayerError, normalize, sniff_compression
from coopy.image.store import (
    ImageRecord,
    LayerRef,
    Store,
    UnpackJob,
    choose_manifest,
    config_diff_ids,
    unpack_layers,
)

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def split_source(name: str) -> tuple[Path, str | None]:
    """``oci:PATH[:TAG]`` → (real path, tag or None)."""
    rest = name[len("oci:"):]
    path, tag = rest, None
    if ":" in rest and not os.path.exists(rest):
        path, tag = rest.rsplit(":", 1)
    return Path(path).expanduser().resolve(), tag


def import_oci(name: str, *, facts: HostFacts, idmap: IdMap | None,
               platform: str | None = None) -> ImageRecord:
    """The store's record of ``oci:…``, unpacked for ``idmap`` (read again each time:
    the file may have changed; unchanged layers are not unpacked again)."""
    path, tag = split_source(name)
    if not path.exists():
        raise ImageError(f"{name}: {path} does not exist",
                         hint="oci:PATH[:TAG] names an OCI layout directory or a tarball")
    if path.is_dir():
        return _from_layout(name, path, tag, facts, idmap, platform)
    # An archive is unpacked again only when it changed (size and mtime).
    st = path.stat()
    stamp = f"oci-archive:{st.st_size}:{st.st_mtime_ns}"
    store = Store()
    known = store.get(name)
    if known is not None and known.source == stamp and _unpacked(store, known, idmap):
        return known
    with tempfile.TemporaryDirectory(prefix="coopy-oci-") as tmp:
        _unpack_archive(path, Path(tmp))
        if (Path(tmp) / "index.json").exists():
            record = _from_layout(name, Path(tmp), tag, facts, idmap, platform)
        else:
            record = _from_docker_save(name, Path(tmp), tag, facts, idmap)
    record = record._replace(source=stamp)
    store.save(record)
    return record


def _unpacked(store: Store, record: ImageRecord, idmap: IdMap | None) -> bool:
    return all(store.layer_path(layer.digest, idmap).is_dir() for layer in record.layers)


def _unpack_archive(path: Path, dest: Path) -> None:
    """The archive's regular files under ``dest`` (names checked; nothing else made)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                parts = normalize(member.name)
                if not parts:
                    continue
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with src, open(target, "xb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
    except (tarfile.TarError, LayerError, OSError) as exc:
        raise ImageError(f"{path}: not a readable image archive: {exc}") from None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ImageError(f"{what}: {exc}") from None


def _blob(layout: Path, desc: Any) -> Path:
    from coopy.image.ref import check_digest

    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
        raise ImageError(f"{layout}: a descriptor without a digest")
    digest = check_digest(desc["digest"])
    path = layout / "blobs" / "sha256" / digest[7:]
    _verify(path, digest)
    return path


def _verify(path: Path, digest: str) -> None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        raise ImageError(f"{path}: {exc.strerror}") from None
    if "sha256:" + h.hexdigest() != digest:
        raise ImageError(f"{path} does not match its digest {digest}",
                         hint="the layout is damaged: copy the image again")


def _from_layout(name: str, layout: Path, tag: str | None, facts: HostFacts,
                 idmap: IdMap | None, platform: str | None) -> ImageRecord:
    from coopy.image.ref import host_platform, parse_platform

    index = _read_json(layout / "index.json", f"{layout}/index.json")
    entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    if tag is not None:
        entries = [m for m in entries if (m.get("annotations") or {})
                   .get("org.opencontainers.image.ref.name") == tag]
    if len(entries) != 1:
        have = [str((m.get("annotations") or {}).get("org.opencontainers.image.ref.name"))
                for m in index.get("manifests", []) if isinstance(m, dict)]
        raise ImageError(f"{name}: {'no' if not entries else 'more than one'} image "
                         f"{'tagged ' + tag if tag else 'in the layout'}",
                         hint=f"name one: oci:{layout}:TAG (tags: {', '.join(have)})")
    desc = entries[0]
    doc = _read_json(_blob(layout, desc), f"{name}: manifest")
    if "manifests" in doc:
        want = parse_platform(platform) if platform else host_platform()
        desc = choose_manifest(doc, want, name)
        doc = _read_json(_blob(layout, desc), f"{name}: manifest")
    known = Store().get(name)
    if known is not None and known.digest == desc["digest"] and \
            _unpacked(Store(), known, idmap):
        return known  # the same manifest, already unpacked: its layers were verified then
    config = _read_json(_blob(layout, doc.get("config")), f"{name}: config")
    descs = doc.get("layers", [])
    diff_ids = config_diff_ids(config, len(descs), name)
    layers = [(_blob(layout, d), str(d.get("mediaType", "")), str(d["digest"]), diff_id)
              for d, diff_id in zip(descs, diff_ids, strict=True)]
    return _install(name, str(desc["digest"]), str(doc["config"]["digest"]), config,
                    layers, facts, idmap)


def _from_docker_save(name: str, root: Path, tag: str | None, facts: HostFacts,
                      idmap: IdMap | None) -> ImageRecord:
    manifest = _read_json(root / "manifest.json", f"{name}: manifest.json (docker save)")
    entries = [m for m in manifest if isinstance(m, dict)] if isinstance(manifest, list) else []
    if tag is not None:
        entries = [m for m in entries if any(str(t).endswith(":" + tag) or t == tag
                                             for t in m.get("RepoTags") or ())]
    if len(entries) != 1:
        raise ImageError(f"{name}: {'no' if not entries else 'more than one'} image in the "
                         "archive", hint="name one: oci:FILE:TAG")
    entry = entries[0]
    config_path = root.joinpath(*normalize(str(entry["Config"])))
    config = _read_json(config_path, f"{name}: config")
    layers = []
    rels = entry.get("Layers", [])
    for rel, diff_id in zip(rels, config_diff_ids(config, len(rels), name), strict=True):
        blob = root.joinpath(*normalize(str(rel)))
        digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
        layers.append((blob, "", digest, diff_id))
    config_digest = "sha256:" + hashlib.sha256(config_path.read_bytes()).hexdigest()
    return _install(name, config_digest, config_digest, config, layers, facts, idmap)


def _install(name: str, digest: str, config_digest: str, config: Any,
             layers: list[tuple[Path, str, str, str]], facts: HostFacts,
             idmap: IdMap | None) -> ImageRecord:
    from coopy.image.layer import compression_of

    store = Store()
    store.ensure()
    store.layers_dir(idmap)
    refs: list[LayerRef] = []
    jobs: list[UnpackJob] = []
    for blob, media, layer_digest, diff_id in layers:
        with open(blob, "rb") as f:
            sniffed = sniff_compression(f.read(4))
        compression = compression_of(media) if media else sniffed
        refs.append(LayerRef(layer_digest, media or OCI_LAYER, blob.stat().st_size, diff_id))
        dest = store.layer_path(layer_digest, idmap)
        if not dest.is_dir() and dest not in [j.dest for j in jobs]:
            jobs.append(UnpackJob(blob, compression, dest, diff_id or None))
    unpack_layers(jobs, idmap, facts)
    conf = config.get("config") if isinstance(config, dict) else None
    env = (conf or {}).get("Env") or () if isinstance(conf, dict) else ()
    record = ImageRecord(name=name, digest=digest, config=config_digest, layers=tuple(refs),
                         platform=f"{config.get('os', '?')}/{config.get('architecture', '?')}",
                         created=time.time(), env=tuple(str(e) for e in env), source="oci")
    store.save(record)
    return record


def install_tar_layer(name: str, tar: Path, *, facts: HostFacts, idmap: IdMap | None,
                      source: str) -> ImageRecord:
    """An image of one layer: the (uncompressed) tarball ``tar`` of a root filesystem."""
    h = hashlib.sha256()
    with open(tar, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    from coopy.image.ref import host_platform

    arch = host_platform().architecture
    record = _install(name, digest, digest, {"os": "linux", "architecture": arch},
                      [(tar, OCI_LAYER, digest, digest)], facts, idmap)
    record = record._replace(source=source)
    Store().save(record)
    return record


def import_dir(name: str, *, facts: HostFacts, idmap: IdMap | None) -> ImageRecord:
    """The image of ``dir:PATH``: the directory's tree as one layer, made again when
    any entry's type, mode, owner, size or time changed.

    The tree is written as a tar and unpacked like any layer (the same hardened
    extractor, in the box's user namespace), so the box never sees the directory itself
    and a change to it after the import does not reach running boxes.  Owners: as
    root, the files' ids are the box's (a root filesystem made by root); rootless, the
    tar is written as root of a user namespace with the box's map, so your files are
    box root's and files of your subordinate ids the box ids they map to.
    """
    path = Path(name[len("dir:"):]).expanduser().resolve()
    if not path.is_dir():
        raise ImageError(f"{name}: {path} is not a directory",
                         hint="dir:PATH names a directory holding a root filesystem")
    full = f"dir:{path}"
    stamp = "dir:" + _tree_stamp(path)
    store = Store()
    known = store.get(full)
    if known is not None and known.source == stamp and _unpacked(store, known, idmap):
        return known
    store.ensure()
    in_userns = idmap is not None and facts.uid != 0 and idmap.subordinate
    own = None if facts.uid == 0 or in_userns else (facts.uid, facts.gid)
    with tempfile.TemporaryDirectory(prefix="coopy-dir-", dir=store.root) as tmp:
        tar = Path(tmp) / "rootfs.tar"
        fd = os.open(tar, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            from coopy.image.store import _in_userns

            errors = _in_userns(idmap if in_userns else None, facts,
                                lambda: _write_tree_tar(path, fd, own))
        finally:
            os.close(fd)
        if errors:
            raise ImageError(f"{name}: reading the directory: {errors[0][1]}",
                             hint="every file of the tree must be readable by you (or, "
                             "rootless, by your subordinate ids)")
        return install_tar_layer(full, tar, facts=facts, idmap=idmap, source=stamp)


def _tree_stamp(root: Path) -> str:
    """A hash of every entry's (path, type and mode, owner, size, mtime) under ``root``."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in [".", *sorted(filenames), *dirnames]:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            h.update(f"{os.path.relpath(dirpath, root)}/{n}\0{st.st_mode}:{st.st_uid}:"
                     f"{st.st_gid}:{st.st_size}:{st.st_mtime_ns}\n".encode(errors="replace"))
    return h.hexdigest()


def _write_tree_tar(root: Path, fd: int, own: tuple[int, int] | None) -> list[tuple[int, str]]:
    """Write ``root``'s tree as a tar to ``fd`` ([] or [(0, why)], as the unpack workers).

    ``own``: the caller's ids, which become box root's (rootless without a namespace).
    """

    def entry(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uname = info.gname = ""  # numeric ids only: the box's, not this host's names
        if own is not None:
            info.uid = 0 if info.uid == own[0] else info.uid
            info.gid = 0 if info.gid == own[1] else info.gid
        return info

    try:
        with os.fdopen(os.dup(fd), "wb") as out, \
                tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(str(root), arcname=".", recursive=True, filter=entry)
    except OSError as exc:
        return [(0, f"{exc.filename or root}: {exc.strerror or exc}")]
    return []
