"""The local image store: blobs and unpacked layers, content-addressed and shared.

Layout under the data directory (``$XDG_DATA_HOME/coopy`` or ``$COOPY_HOME/data``)::

    blobs/sha256/<hex>            manifests, configs; layer blobs until they are unpacked
    blobs/sha256/<hex>.part       a download in progress (resumed by the next pull)
    layers/<map>/<hex>/           one unpacked layer, named by its blob's digest
    layers/<map>/.tmp-<hex>-<pid> a layer being unpacked (renamed into place when done)
    images/<key>.json             one record per name (``docker.io/library/debian:12``)

``<map>`` names the user-namespace id map the layer was unpacked in (``map-1a2b3c4d``,
or ``host`` for ``--userns=host``): files are owned by the host ids that the box's ids
map to, so a layer unpacked for one map is not right for another (``--user NAME``
rootless maps ids differently).  A layer is unpacked once per map and shared by every
image that has it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from coopy.errors import ImageError
from coopy.facts import HostFacts
from coopy.idmap import IdMap
from coopy.image.layer import compression_of
from coopy.paths import data_dir, ensure_private_dir


class LayerRef(NamedTuple):
    """One layer of an image: its blob's digest, media type and size."""

    digest: str
    media_type: str
    size: int
    diff_id: str = ""  # sha256 of the uncompressed tar (the config's rootfs.diff_ids)


class ImageRecord(NamedTuple):
    """What the store knows about one image name."""

    name: str  # the full reference it was pulled as: docker.io/library/debian:12
    digest: str  # the manifest's digest (what the name pointed at when pulled)
    config: str  # the config blob's digest
    layers: tuple[LayerRef, ...]  # bottom first, as in the manifest
    platform: str
    created: float  # when it was stored here
    env: tuple[str, ...] = ()  # the config's Env, KEY=VALUE
    source: str = "registry"

    @property
    def size(self) -> int:
        """Bytes of its (compressed) layers."""
        return sum(layer.size for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        """The record as written to ``images/<key>.json``."""
        data = self._asdict()
        data["layers"] = [list(layer) for layer in self.layers]
        data["env"] = list(self.env)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRecord:
        """Read a record written by :meth:`to_json`."""
        return cls(
            name=data["name"], digest=data["digest"], config=data["config"],
            layers=tuple(LayerRef(*entry) for entry in data["layers"]),
            platform=data["platform"], created=data["created"],
            env=tuple(data.get("env", ())), source=data.get("source", "registry"),
        )


def default_idmap(facts: HostFacts) -> IdMap | None:
    """The id map of a box of root on this host: what `coopy pull` unpacks for."""
    from coopy.request import plan_ids

    return plan_ids(facts, 0, 0, "auto")


def read_map(layers_dir: Path) -> IdMap | None:
    """The id map a layers directory was made for (its ``map.json``)."""
    from coopy.idmap import IdRange

    doc = json.loads((layers_dir / "map.json").read_text())
    if doc is None:
        return None
    return IdMap(tuple(IdRange(*r) for r in doc["uids"]), tuple(IdRange(*r) for r in doc["gids"]),
                 bool(doc["subordinate"]))


def map_key(idmap: IdMap | None) -> str:
    """The name of the layer directory for boxes with ``idmap`` (see the module doc)."""
    if idmap is None:
        return "host"
    shape = ([tuple(r) for r in idmap.uids], [tuple(r) for r in idmap.gids])
    return f"map-{zlib.crc32(repr(shape).encode()):08x}"


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


class Store:
    """The store at ``root`` (default: coopy's data directory)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else data_dir()

    @property
    def blobs(self) -> Path:
        """Where blobs are kept."""
        return self.root / "blobs" / "sha256"

    @property
    def images_dir(self) -> Path:
        """Where image records are kept."""
        return self.root / "images"

    def ensure(self) -> None:
        """Create the store's directories (0700, checked to be the caller's)."""
        for path in (self.root, self.root / "blobs", self.blobs, self.images_dir,
                     self.root / "layers"):
            ensure_private_dir(path)

    def blob_path(self, digest: str) -> Path:
        """Where blob ``digest`` is (or will be)."""
        return self.blobs / _hex(digest)

    def write_blob(self, digest: str, data: bytes) -> Path:
        """Store small ``data`` (a manifest, a config) atomically under ``digest``."""
        path = self.blob_path(digest)
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_bytes(data)
            os.rename(tmp, path)
        return path

    def layers_dir(self, idmap: IdMap | None) -> Path:
        """The directory of layers unpacked for ``idmap`` (created, 0711).

        0711, not 0700: for boxes of root, box root (a subordinate id) mounts these as
        its overlay's lower layers and must pass through; nothing here can be listed.
        """
        path = self.root / "layers" / map_key(idmap)
        ensure_private_dir(path, mode=0o711)
        if not (path / "map.json").exists():  # prune removes layers inside this map
            doc = None if idmap is None else {
                "uids": [list(r) for r in idmap.uids], "gids": [list(r) for r in idmap.gids],
                "subordinate": idmap.subordinate}
            (path / "map.json").write_text(json.dumps(doc) + "\n")
        return path

    def layer_path(self, digest: str, idmap: IdMap | None) -> Path:
        """The unpacked layer ``digest`` for ``idmap`` (it may not exist yet)."""
        return self.root / "layers" / map_key(idmap) / _hex(digest)

    # -- image records

    def _record_path(self, name: str) -> Path:
        return self.images_dir / f"{zlib.crc32(name.encode()):08x}-{_safe(name)}.json"

    def save(self, record: ImageRecord) -> None:
        """Write (or replace) the record of ``record.name`` atomically."""
        path = self._record_path(record.name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record.to_json(), indent=1) + "\n")
        os.rename(tmp, path)

    def get(self, name: str) -> ImageRecord | None:
        """The record of ``name``, or None when it was never stored."""
        try:
            return ImageRecord.from_json(json.loads(self._record_path(name).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ImageError(f"the store's record of {name} is damaged: {exc}",
                             hint=f"coopy pull {name} writes it again") from None

    def remove(self, name: str) -> bool:
        """Forget the record of ``name`` (its layers stay until `coopy system prune`)."""
        try:
            self._record_path(name).unlink()
            return True
        except FileNotFoundError:
            return False

    def records(self) -> list[ImageRecord]:
        """Every image record, by name."""
        out = []
        try:
            entries = sorted(self.images_dir.glob("*.json"))
        except OSError:
            return []
        for path in entries:
            try:
                out.append(ImageRecord.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged record is reported by `coopy images`' count only
        return sorted(out, key=lambda r: r.name)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


# ---- unpacking in the box's user namespace ---------------------------------------------


class UnpackJob(NamedTuple):
    """One layer to unpack: its blob, how it is compressed, where it goes."""

    blob: Path
    compression: str | None
    dest: Path  # the final directory (the job writes a temporary one beside it)
    diff_id: str | None = None  # checked while unpacking, when known


def unpack_layers(jobs: Sequence[UnpackJob], idmap: IdMap | None, facts: HostFacts) -> None:
    """Unpack ``jobs`` (in parallel) inside a user namespace with ``idmap``.

    Unpacking inside the box's own map is what lands each file on the host id its tar
    owner is in the box (NOTES.md (b) 9).  Each layer goes to ``.tmp-<hex>-<pid>`` and is
    renamed into place when complete, so an interrupted pull leaves no half layer under
    a final name; leftovers are removed by the next pull of that layer or by prune.
    """
    if not jobs:
        return
    _fds_for(2 * len(jobs))
    owner = _box_root_ids(idmap, facts)
    prefix = "trusted.overlay." if idmap is None else "user.overlay."
    tmps: list[Path] = []
    blob_fds: list[int] = []
    dir_fds: list[int] = []
    try:
        for job in jobs:
            tmp = job.dest.with_name(f".tmp-{job.dest.name}-{os.getpid()}")
            if tmp.exists():
                remove_owned_tree(tmp, idmap, facts)
            tmp.mkdir(mode=0o755)
            tmps.append(tmp)
            if owner is not None:
                os.chown(tmp, *owner)
            # Opened here, by the caller: box root of a box of root cannot search the
            # caller's home to reach them by path.
            blob_fds.append(os.open(job.blob, os.O_RDONLY | os.O_CLOEXEC))
            dir_fds.append(os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        how = [(job.compression, job.diff_id) for job in jobs]
        errors = _in_userns(idmap, facts, lambda: _unpack_all(how, blob_fds, dir_fds, prefix))
        if errors:
            raise ImageError(f"unpacking layer {jobs[errors[0][0]].dest.name[:12]}: "
                             f"{errors[0][1]}")
        for job, tmp in zip(jobs, tmps, strict=True):
            try:
                os.rename(tmp, job.dest)
            except OSError:
                if not job.dest.is_dir():  # another pull unpacked it first: keep theirs
                    raise
                remove_owned_tree(tmp, idmap, facts)
    finally:
        for fd in blob_fds + dir_fds:
            os.close(fd)
        for tmp in tmps:
            if tmp.exists():
                remove_owned_tree(tmp, idmap, facts)


def _fds_for(count: int) -> None:
    """Raise the soft RLIMIT_NOFILE (up to the hard one) so ``count`` more fds fit: an
    image of hundreds of layers holds two per layer while they unpack."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (
            want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def _box_root_ids(idmap: IdMap | None, facts: HostFacts) -> tuple[int, int] | None:
    """The host ids of box root when they are not the caller's (boxes of root)."""
    if idmap is None or facts.uid != 0:
        return None
    uid, gid = idmap.to_host_uid(0), idmap.to_host_gid(0)
    return (uid, gid) if uid is not None and gid is not None else None


def _unpack_all(how: list[tuple[str | None, str | None]], blob_fds: list[int],
                dir_fds: list[int], prefix: str) -> list[tuple[int, str]]:
    """In the namespace: one forked worker per layer, at most one per CPU at a time."""
    from coopy.image.layer import extract_blob

    rd, wr = os.pipe2(os.O_CLOEXEC)
    running: dict[int, int] = {}
    failed: list[tuple[int, str]] = []
    limit = max(1, os.cpu_count() or 1)

    def reap_one() -> None:
        pid, status = os.wait()
        index = running.pop(pid, -1)
        if status != 0 and index >= 0 and not any(i == index for i, _ in failed):
            failed.append((index, f"worker exited with status {status}"))

    for index, (compression, diff_id) in enumerate(how):
        while len(running) >= limit:
            reap_one()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(rd)
                extract_blob(blob_fds[index], compression, dir_fds[index],
                             xattr_prefix=prefix, diff_id=diff_id)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                os.write(wr, json.dumps([index, msg]).encode() + b"\n")
            finally:
                os._exit(code)
        running[pid] = index
    while running:
        reap_one()
    os.close(wr)
    reported = b""
    while chunk := os.read(rd, 65536):
        reported += chunk
    os.close(rd)
    messages = [tuple(json.loads(line)) for line in reported.splitlines() if line]
    return sorted(messages or failed)


def _in_userns(idmap: IdMap | None, facts: HostFacts,
               fn: Callable[[], list[tuple[int, str]]]) -> list[tuple[int, str]]:
    """Run ``fn`` as root of a user namespace with ``idmap`` (or here, without one)."""
    if idmap is None:
        return fn()
    from coopy.userns import run_in_userns

    rd, wr = os.pipe2(os.O_CLOEXEC)

    def child() -> None:
        os.close(rd)
        result = fn()
        os.write(wr, json.dumps(result).encode())

    try:
        run_in_userns(idmap, child, facts.newuidmap, facts.newgidmap)
    except OSError as exc:
        os.close(wr)
        os.close(rd)
        raise ImageError(f"unpacking in the box's user namespace failed: {exc}") from None
    os.close(wr)
    data = b""
    while chunk := os.read(rd, 65536):
        data += chunk
    os.close(rd)
    return [tuple(e) for e in json.loads(data or b"[]")]


def remove_owned_tree(path: Path, idmap: IdMap | None, facts: HostFacts) -> None:
    """Remove ``path`` whose files belong to the box's ids (subordinate ids rootless).

    The caller cannot remove files of subordinate ids; box root, in a user namespace
    with the same map, can (DESIGN.md, "Disk management").
    """
    from coopy.state import remove_tree

    if idmap is None or facts.uid == 0 or not idmap.subordinate:
        remove_tree(path)
        return
    from coopy.userns import run_in_userns

    def inside() -> None:
        remove_tree(path)

    try:
        remove_tree(path)
    except OSError:
        run_in_userns(idmap, inside, facts.newuidmap, facts.newgidmap)


# ---- pulling ---------------------------------------------------------------------------


class Progress:
    """Download progress: per-layer lines redrawn on a terminal, plain lines otherwise."""

    def __init__(self, out: Any = None, tty: bool | None = None) -> None:
        self.out = out if out is not None else sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.rows: dict[str, list[float]] = {}  # digest -> [done, total, started]
        self.drawn = 0
        self.last = 0.0
        import threading

        self.lock = threading.Lock()

    def start(self, digest: str, total: int) -> None:
        """A layer download begins."""
        with self.lock:
            self.rows[digest] = [0, total, time.monotonic()]

    def advance(self, digest: str, n: int) -> None:
        """``n`` more bytes of ``digest`` arrived (negative: a restart)."""
        with self.lock:
            self.rows[digest][0] += n
            now = time.monotonic()
            if self.tty and now - self.last > 0.1:
                self.last = now
                self._draw()

    def done(self, digest: str) -> None:
        """A layer is complete."""
        with self.lock:
            row = self.rows[digest]
            row[0] = row[1]
            if self.tty:
                self._draw()
            else:
                secs = max(time.monotonic() - row[2], 1e-6)
                self.out.write(f"{digest[7:19]}: {_mb(row[1])} in {secs:.1f}s "
                               f"({_mb(row[1] / secs)}/s)\n")
                self.out.flush()

    def _draw(self) -> None:
        lines = []
        now = time.monotonic()
        for digest, (done, total, started) in self.rows.items():
            rate = done / max(now - started, 1e-6)
            state = "done" if done >= total else f"{_mb(rate)}/s"
            lines.append(f"{digest[7:19]}: {_mb(done)} / {_mb(total)}  {state}")
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self.drawn = len(lines)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def say(text: str) -> None:
    """A status line on stderr (stdout stays for `--json` and the box's own output)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def choose_manifest(index: dict[str, Any], want: Any, name: str) -> dict[str, Any]:
    """The entry of an image index for platform ``want``; ImageError listing the others."""
    from coopy.image.ref import platform_matches

    entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    for entry in entries:
        plat = entry.get("platform")
        if isinstance(plat, dict) and platform_matches(want, plat):
            return entry
    have = sorted({"/".join(str(p.get(k)) for k in ("os", "architecture", "variant")
                            if p.get(k)) for m in entries
                   if isinstance(p := m.get("platform"), dict)} - {""})
    raise ImageError(f"{name} has no image for {want}; it has: {', '.join(have) or 'none'}",
                     hint="choose one with --platform or [image] platform")


def pull(name: str, *, facts: HostFacts, idmap: IdMap | None, platform: str | None = None,
         insecure: bool = False, quiet: bool = False) -> ImageRecord:
    """Pull ``name`` from its registry into the store and unpack it for ``idmap``."""
    from coopy.image.ref import host_platform, parse_platform, parse_reference
    from coopy.image.registry import INDEX_TYPES, Client, load_json

    ref = parse_reference(name)
    want = parse_platform(platform) if platform else host_platform()
    store = Store()
    store.ensure()
    client = Client(ref, insecure=insecure)
    data, media, digest = client.manifest(ref.digest or ref.tag or "latest")
    doc = load_json(data, f"{ref}'s manifest")
    if media in INDEX_TYPES or "manifests" in doc:
        entry = choose_manifest(doc, want, str(ref))
        data, media, digest = client.manifest(str(entry.get("digest", "")))
        doc = load_json(data, f"{ref}'s manifest for {want}")
    if doc.get("schemaVersion") != 2 or "layers" not in doc or "config" not in doc:
        raise ImageError(f"{ref}: unsupported manifest ({media or 'no media type'})",
                         hint="coopy reads OCI and Docker schema 2 manifests; "
                         "re-push the image with a current tool")
    store.write_blob(digest, data)
    config_desc = doc["config"]
    config_digest = _descriptor_digest(config_desc)
    config_path = store.blob_path(config_digest)
    if not config_path.exists():
        client.blob(config_digest, config_path, config_desc.get("size"))
    config = load_json(config_path.read_bytes(), f"{ref}'s config")
    diff_ids = config_diff_ids(config, len(doc["layers"]), str(ref))
    layers = tuple(LayerRef(_descriptor_digest(d), str(d.get("mediaType", "")),
                            int(d.get("size", 0)), diff_id)
                   for d, diff_id in zip(doc["layers"], diff_ids, strict=True))
    for layer in layers:
        compression_of(layer.media_type)  # refuse unknown types before downloading
    missing = [layer for layer in layers
               if not store.layer_path(layer.digest, idmap).is_dir()]
    if not quiet:
        size = sum(layer.size for layer in missing)
        say(f"pulling {ref} ({want}): {len(layers)} layers, {len(missing)} to fetch"
            + (f" ({_mb(size)})" if missing else ""))
    fetch_blobs(client, store, [m for m in missing if not store.blob_path(m.digest).exists()],
                quiet=quiet)
    install_layers(store, missing, idmap, facts)
    record = ImageRecord(
        name=str(ref), digest=digest,
        config=config_digest, layers=layers,
        platform=str(_config_platform(config) or want), created=time.time(),
        env=tuple(str(e) for e in (config.get("config") or {}).get("Env") or ()),
    )
    store.save(record)
    return record


def install_layers(store: Store, layers: Iterable[LayerRef], idmap: IdMap | None,
                   facts: HostFacts) -> None:
    """Unpack the stored blobs of ``layers`` for ``idmap``; drop each blob once unpacked."""
    todo = list(dict.fromkeys(layers))
    if not todo:
        return
    store.layers_dir(idmap)
    jobs = [UnpackJob(store.blob_path(layer.digest), compression_of(layer.media_type),
                      store.layer_path(layer.digest, idmap), layer.diff_id or None)
            for layer in todo]
    try:
        unpack_layers(jobs, idmap, facts)
    except ImageError:
        for job in jobs:  # a damaged blob (say, after a crash) is fetched again next time
            job.blob.unlink(missing_ok=True)
        raise
    for job in jobs:
        # The unpacked tree is what boxes use: the blob would only double the disk used.
        # (Another id map needs the layer again: the pull fetches it again.)
        job.blob.unlink(missing_ok=True)


def fetch_blobs(client: Any, store: Store, layers: Sequence[LayerRef], *,
                quiet: bool = False) -> None:
    """Download ``layers`` in parallel (4 at a time), verified, with progress."""
    if not layers:
        return
    from concurrent.futures import ThreadPoolExecutor

    progress = None if quiet else Progress()
    client.ping()  # learn the auth scheme once, before threads share the client

    def one(layer: LayerRef) -> None:
        if progress:
            progress.start(layer.digest, layer.size)
        client.blob(layer.digest, store.blob_path(layer.digest), layer.size,
                    (lambda n: progress.advance(layer.digest, n)) if progress else None)
        if progress:
            progress.done(layer.digest)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(one, layer) for layer in layers]:
            future.result()


def config_diff_ids(config: Any, count: int, name: str) -> list[str]:
    """The config's ``rootfs.diff_ids`` (one per layer; '' each when it has none)."""
    from coopy.image.ref import check_digest

    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if ids is None:
        return [""] * count  # an old or minimal config: the blob digests still hold
    if not isinstance(ids, list) or len(ids) != count or \
            not all(isinstance(i, str) for i in ids):
        raise ImageError(f"{name}: the config lists {len(ids) if isinstance(ids, list) else 0} "
                         f"rootfs.diff_ids for {count} layers",
                         hint="the image is malformed; rebuild or re-push it")
    try:
        return [check_digest(i) for i in ids]
    except ImageError as exc:
        raise ImageError(f"{name}: rootfs.diff_ids: {exc.message}") from None


def _descriptor_digest(desc: Any) -> str:
    from coopy.image.ref import check_digest

    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
        raise ImageError("a manifest descriptor has no digest")
    return check_digest(desc["digest"])


def _config_platform(config: dict[str, Any]) -> str | None:
    os_name, arch = config.get("os"), config.get("architecture")
    if isinstance(os_name, str) and isinstance(arch, str):
        variant = config.get("variant")
        return f"{os_name}/{arch}" + (f"/{variant}" if isinstance(variant, str) else "")
    return None
