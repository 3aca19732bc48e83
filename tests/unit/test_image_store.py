"""The image store's pure parts: map keys, records, progress lines."""

from __future__ import annotations

import io
from pathlib import Path

from coopy.idmap import IdMap, IdRange
from coopy.image.boxroot import merge_accounts, read_image_file
from coopy.image.build import step_keys
from coopy.image.store import ImageRecord, LayerRef, Progress, Store, map_key

D = "sha256:" + "a" * 64
REC = ImageRecord("docker.io/library/debian:12", D, D, (LayerRef(D, "t+gzip", 10),),
                  "linux/amd64", 1.0, ("PATH=/bin",))


def test_map_keys_differ_per_map() -> None:
    a = IdMap((IdRange(0, 1000, 1), IdRange(1, 100000, 65535)), (IdRange(0, 1000, 1),), True)
    b = IdMap((IdRange(0, 100000, 1000), IdRange(1000, 1000, 1)), (IdRange(0, 1000, 1),), True)
    assert map_key(a) != map_key(b) and map_key(a) == map_key(a)
    assert map_key(None) == "host"


def test_records_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure()
    store.save(REC)
    assert store.get(REC.name) == REC
    assert store.records() == [REC]
    assert store.remove(REC.name) and store.get(REC.name) is None


def test_step_keys_chain() -> None:
    one = step_keys(REC, ["a", "b"])
    two = step_keys(REC, ["a", "c"])
    assert one[0] == two[0] and one[1] != two[1]
    assert step_keys(REC._replace(digest="sha256:" + "b" * 64), ["a"])[0] != one[0]


def test_progress_lines_without_a_terminal() -> None:
    out = io.StringIO()
    p = Progress(out, tty=False)
    p.start(D, 2_000_000)
    p.advance(D, 2_000_000)
    p.done(D)
    assert out.getvalue().startswith("aaaaaaaaaaaa: 2.0 MB in ")


def test_accounts_merge_and_image_files(tmp_path: Path) -> None:
    merged = merge_accounts("root:x:0:0:root:/root:/bin/bash\nbin:x:2:2::/:/x\n",
                            ["root:x:0:0:root:/root:/bin/sh", "me:x:1000:1000:me:/home/me:/bin/sh"],
                            7)
    assert merged.splitlines() == ["bin:x:2:2::/:/x", "root:x:0:0:root:/root:/bin/sh",
                                   "me:x:1000:1000:me:/home/me:/bin/sh"]
    top, low = tmp_path / "top", tmp_path / "low"
    (top / "etc").mkdir(parents=True)
    (low / "etc").mkdir(parents=True)
    (low / "etc" / "passwd").write_text("low\n")
    assert read_image_file([str(top), str(low)], "etc/passwd") == "low\n"
    (top / "etc" / "passwd").symlink_to("/etc/shadow")  # never followed out of the image
    assert read_image_file([str(top), str(low)], "etc/passwd") == ""


def test_config_diff_ids() -> None:
    import pytest

    from coopy.errors import ImageError
    from coopy.image.store import config_diff_ids

    assert config_diff_ids({"rootfs": {"diff_ids": [D, D]}}, 2, "x") == [D, D]
    assert config_diff_ids({}, 2, "x") == ["", ""]  # none given: blob digests still hold
    with pytest.raises(ImageError, match="lists 1 rootfs.diff_ids for 2 layers"):
        config_diff_ids({"rootfs": {"diff_ids": [D]}}, 2, "x")
    with pytest.raises(ImageError, match="malformed digest"):
        config_diff_ids({"rootfs": {"diff_ids": ["md5:x"]}}, 1, "x")
    # records of older pulls (three fields per layer) still load
    old = REC.to_json() | {"layers": [[D, "t+gzip", 10]]}
    assert ImageRecord.from_json(old).layers[0].diff_id == ""
