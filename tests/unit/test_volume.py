"""Seeding named volumes: the image's merged view read from its layers, and owners."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from coopy.idmap import IdMap, IdRange
from coopy.image.volume import _owner_map, copy_merged, image_dir
from tests.unit.hostfacts import host_facts


def _layer(root: Path, files: dict[str, str | None]) -> str:
    """A layer directory: name → text (a file), "/" suffix (a directory), None (whiteout),
    "-> target" (a symlink), "opaque" for an opaque directory."""
    for name, what in files.items():
        path = root / name.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(exist_ok=True)
            if what == "opaque":
                os.setxattr(path, "user.overlay.opaque", b"y")
        elif what is None:
            os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        elif what.startswith("-> "):
            path.symlink_to(what[3:])
        else:
            path.write_text(what)
    return str(root)


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            rel = str(p.relative_to(root))
            out[rel] = ("-> " + os.readlink(p) if p.is_symlink() else
                        "/" if p.is_dir() else p.read_text())
    return out


def test_merged_view(tmp_path: Path) -> None:
    try:
        top = _layer(tmp_path / "top", {"d/": None, "d/gone": None, "d/new": "2",
                                        "d/sub/": "opaque", "d/sub/c": "c", "d/f": "top",
                                        "link": "-> d", "usr/": None})
    except PermissionError:
        pytest.skip("whiteouts (0:0 devices) need Linux 5.8+ or root")
    low = _layer(tmp_path / "low", {"d/": None, "d/gone": "x", "d/old": "1",
                                    "d/sub/": None, "d/sub/a": "a", "d/f": "low",
                                    "usr/lib/": None, "usr/lib/x": "x"})
    layers = [top, low]
    assert image_dir(layers, "/d") == [f"{top}/d", f"{low}/d"]
    assert image_dir(layers, "/link/sub") == [f"{top}/d/sub"]  # opaque: the top only
    assert image_dir(layers, "/d/../usr/./lib") == [f"{low}/usr/lib"]
    assert image_dir(layers, "/d/gone") == []  # whited out
    assert image_dir(layers, "/d/f") == []  # a file: nothing to seed
    assert image_dir(layers, "/nope") == image_dir(layers, "/") == []
    dest = tmp_path / "vol"
    copy_merged(image_dir(layers, "/d"), str(dest), lambda u, g: (u, g))
    assert _tree(dest) == {"f": "top", "new": "2", "old": "1", "sub": "/", "sub/c": "c"}


def test_owner_map() -> None:
    base = host_facts(0, "root")
    box = IdMap((IdRange(0, 100000, 65536),), (IdRange(0, 200000, 65536),), True)
    plain = _owner_map(base, box, (0, 0))
    assert plain(100000, 200000) == (0, 0)
    assert plain(101000, 201000) == (1000, 1000)
    assert plain(5, 5) == (0, 0)  # not the box's: root's on disk
    # --user 1000: the bind swaps on-disk 0 and 1000
    swap = _owner_map(base, box, (1000, 1000))
    assert swap(101000, 201000) == (0, 0)
    assert swap(100000, 200000) == (1000, 1000)
    assert swap(100007, 200007) == (7, 7)
    # rootless and --userns=host: as they are
    assert _owner_map(base, None, (0, 0))(7, 8) == (7, 8)
    rootless = base._replace(uid=1000)
    assert _owner_map(rootless, box, (0, 0))(100007, 3) == (100007, 3)


def test_how_many_layers_are_kept() -> None:
    from coopy.image.flatten import layers_kept

    box = IdMap((IdRange(0, 100000, 65536),), (IdRange(0, 100000, 65536),), True)
    short = [f"/d/{i:064x}" for i in range(600)]  # 68 bytes a path, with its NUL
    rootless = host_facts()
    assert layers_kept(short[:499], rootless, box) is None
    assert layers_kept(short[:500], rootless, box) == 498  # + flattened + the box's own
    root = host_facts(0, "root")
    assert layers_kept(short[:150], root, box) is None
    assert layers_kept(short[:151], root, box) == 149
    assert layers_kept(short[:150], root, None) is None  # --userns=host: no fds passed
    long = ["/" + "x" * 999] * 100  # 100 KB of paths: more than a message carries
    kept = layers_kept(long, root, box)
    assert kept is not None and (kept + 1) * 1001 <= 48 << 10 < (kept + 2) * 1001
