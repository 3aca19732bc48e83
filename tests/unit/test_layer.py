"""Hardened layer extraction: hostile tarballs (tables and Hypothesis) never escape."""

from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coopy.image.layer import (
    LayerError,
    compression_of,
    extract_blob,
    extract_tar,
    sniff_compression,
)

sys.path.insert(0, str(Path(__file__).parents[2]))
from tests.imagekit import Entry, compress, tar_bytes  # noqa: E402


def extract(root: Path, entries: list[Entry]) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        extract_tar(io.BytesIO(tar_bytes(entries)), fd)
    finally:
        os.close(fd)


@pytest.fixture
def box(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(layer root, a sibling directory that must stay empty)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    yield root, outside
    assert list(outside.iterdir()) == [], "something escaped the layer"


# (entries, error expected)
HOSTILE = {
    "dotdot": ([Entry("../outside/x")], True),
    "inner dotdot": ([Entry("a/../../outside/x")], True),
    "hardlink out": ([Entry("h", "link", "../outside/secret")], True),
    "hardlink to host file": ([Entry("h", "link", "/etc/hostname")], True),
    "hardlink through symlink": ([Entry("s", "symlink", "/"),
                                  Entry("h", "link", "s/etc/shadow")], True),
    "hardlink via dotdot symlink": ([Entry("s", "symlink", "../outside"),
                                     Entry("h", "link", "s/x")], True),
    "abs symlink parent": ([Entry("s", "symlink", "/tmp"), Entry("s/x", data="x")], False),
    "dotdot symlink parent": ([Entry("s", "symlink", "../../../../outside"),
                               Entry("s/x", data="x")], False),
    "symlink then file": ([Entry("f", "symlink", "../outside/f"), Entry("f", data="x")], False),
    "symlink chain": ([Entry("a", "symlink", "b"), Entry("b", "symlink", "../outside"),
                       Entry("a/x", data="x")], False),
    "absolute name": ([Entry("/abs/file", data="x")], False),
    "symlink loop": ([Entry("a", "symlink", "b"), Entry("b", "symlink", "a"),
                      Entry("a/x", data="x")], True),
    "file as parent": ([Entry("f", data="x"), Entry("f/x", data="y")], True),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile(box: tuple[Path, Path], case: str) -> None:
    root, _ = box
    entries, error = HOSTILE[case]
    if error:
        with pytest.raises(LayerError):
            extract(root, entries)
    else:
        extract(root, entries)


def test_symlink_parents_resolve_inside(box: tuple[Path, Path]) -> None:
    root, _ = box
    extract(root, [Entry("s", "symlink", "/etc"), Entry("s/passwd", data="mine\n"),
                   Entry("u", "symlink", "../../x"), Entry("u/y", data="y")])
    assert (root / "etc" / "passwd").read_text() == "mine\n"
    assert (root / "x" / "y").read_text() == "y"
    assert os.readlink(root / "s") == "/etc"  # rule 4: the target itself untouched


def test_file_replaces_symlink_not_through_it(box: tuple[Path, Path]) -> None:
    root, outside = box
    extract(root, [Entry("f", "symlink", str(outside / "f")), Entry("f", data="in")])
    assert (root / "f").read_text() == "in" and not (root / "f").is_symlink()


def test_whiteouts_and_opaque(box: tuple[Path, Path]) -> None:
    root, _ = box
    extract(root, [
        Entry("d/", "dir", mode=0o755), Entry("d/.wh.gone"), Entry("d/kept", data="k"),
        Entry("d/.wh.kept"),  # content of this layer wins over its own whiteout
        Entry("d/.wh.back"), Entry("d/back", data="b"),  # either order
        Entry("o/.wh..wh..opq"), Entry("o/new", data="n"),
        Entry(".wh..wh.plnk/", "dir"),  # aufs bookkeeping: ignored
    ])
    st_gone = os.lstat(root / "d" / "gone")
    assert stat.S_ISCHR(st_gone.st_mode) and st_gone.st_rdev == 0
    assert (root / "d" / "kept").read_text() == "k"
    assert (root / "d" / "back").read_text() == "b"
    assert os.getxattr(root / "o", "user.overlay.opaque") == b"y"
    assert (root / "o" / "new").read_text() == "n"
    assert not (root / ".wh..wh.plnk").exists()


def test_modes_owners_links(box: tuple[Path, Path]) -> None:
    root, _ = box
    extract(root, [
        Entry("ro/", "dir", mode=0o555), Entry("ro/inner", data="i", mode=0o600),
        Entry("suid", data="x", mode=0o4755, uid=0, gid=0),
        Entry("owned", data="o", uid=1234, gid=4321),
        Entry("hard", "link", "owned"),
        Entry("fifo", "fifo", mode=0o640),
    ])
    assert stat.S_IMODE(os.stat(root / "ro").st_mode) == 0o555
    assert (root / "ro" / "inner").read_text() == "i"
    assert stat.S_IMODE(os.stat(root / "suid").st_mode) == 0o4755
    if os.getuid() == 0:
        assert (os.stat(root / "owned").st_uid, os.stat(root / "owned").st_gid) == (1234, 4321)
    assert os.stat(root / "hard").st_ino == os.stat(root / "owned").st_ino
    assert stat.S_ISFIFO(os.stat(root / "fifo").st_mode)
    os.chmod(root / "ro", 0o755)  # let tmp_path be removed


def test_xattrs_from_pax_headers(box: tuple[Path, Path]) -> None:
    root, _ = box
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("ok", "forged"):
            info = tarfile.TarInfo(name)
            info.pax_headers = {"SCHILY.xattr.user.note": "hello",
                                "SCHILY.xattr.user.overlay.opaque": "y"}
            tar.addfile(info, io.BytesIO(b""))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        extract_tar(io.BytesIO(buf.getvalue()), fd)
    finally:
        os.close(fd)
    assert os.getxattr(root / "ok", "user.note") == b"hello"
    assert "user.overlay.opaque" not in os.listxattr(root / "forged")


@pytest.mark.parametrize("how", [None, "gzip", "zstd"])
def test_diff_id_is_checked(tmp_path: Path, how: str | None) -> None:
    import hashlib

    tar = tar_bytes([Entry("etc/", "dir", mode=0o755), Entry("etc/x", data="x" * 5000)])
    blob = tmp_path / "blob"
    blob.write_bytes(compress(tar, how))
    good = "sha256:" + hashlib.sha256(tar).hexdigest()
    bad = "sha256:" + hashlib.sha256(b"other").hexdigest()
    for n, (diff_id, ok) in enumerate([(good, True), (bad, False), (None, True)]):
        root = tmp_path / f"root{n}"
        root.mkdir()
        fd, rfd = os.open(blob, os.O_RDONLY), os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if ok:
                extract_blob(fd, how, rfd, diff_id=diff_id)
                assert (root / "etc" / "x").read_text() == "x" * 5000
            else:
                with pytest.raises(LayerError, match="rootfs.diff_ids says sha256:"):
                    extract_blob(fd, how, rfd, diff_id=diff_id)
        finally:
            os.close(fd)
            os.close(rfd)


def test_compression_names() -> None:
    assert compression_of("application/vnd.oci.image.layer.v1.tar+gzip") == "gzip"
    assert compression_of("application/vnd.docker.image.rootfs.diff.tar.gzip") == "gzip"
    assert compression_of("application/vnd.oci.image.layer.v1.tar+zstd") == "zstd"
    assert compression_of("application/vnd.oci.image.layer.v1.tar") is None
    assert sniff_compression(b"\x1f\x8b\x08") == "gzip"
    assert sniff_compression(b"\x28\xb5\x2f\xfd") == "zstd"


_PARTS = st.sampled_from(["a", "b", "..", ".", "", "c", ".wh.a", ".wh..wh..opq", "/"])
_NAMES = st.lists(_PARTS, min_size=1, max_size=4).map("/".join)
_ENTRIES = st.builds(
    Entry, _NAMES, st.sampled_from(["file", "dir", "symlink", "link", "fifo"]),
    st.one_of(st.just(b"x"), _NAMES), st.sampled_from([0o644, 0o755, 0o4755, 0o000, 0o555]),
    uid=st.just(0), gid=st.just(0))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(_ENTRIES, max_size=8))
def test_nothing_escapes(tmp_path_factory: pytest.TempPathFactory,
                         entries: list[Entry]) -> None:
    base = tmp_path_factory.mktemp("hyp")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    fixed = [e._replace(data=e.data if e.kind != "file" else b"x") for e in entries]
    fixed = [e._replace(data=str(e.data) if e.kind in ("symlink", "link") and
                        isinstance(e.data, bytes) else e.data) for e in fixed]
    try:
        extract(root, fixed)
    except LayerError:
        pass
    assert list(outside.iterdir()) == []
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
