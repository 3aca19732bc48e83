"""Unit tests of coopy.idmap: /etc/subuid parsing and the three shapes of box id maps.

Every map is also checked the way the kernel checks a uid_map write (kernel/user_namespace.c,
``map_write``): at most 340 lines, no empty range, no two ranges overlapping on either side;
and box ids 0…N-1 must be a bijection onto distinct host ids.
"""

from __future__ import annotations

import pytest

from coopy.idmap import (
    BOX_IDS,
    IdMap,
    IdRange,
    SubRange,
    build_idmap,
    build_workspace_idmap,
    parse_subid_file,
)

MAX_MAP_LINES = 340  # UID_GID_MAP_MAX_EXTENTS since Linux 4.15


def check_kernel_map(ranges: tuple[IdRange, ...]) -> None:
    """Fail unless ``ranges`` would be accepted by a write to /proc/PID/uid_map."""
    assert 0 < len(ranges) <= MAX_MAP_LINES
    for r in ranges:
        assert r.length > 0 and r.inside >= 0 and r.outside >= 0, r
    for side in ("inside", "outside"):
        spans = sorted((getattr(r, side), getattr(r, side) + r.length) for r in ranges)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert end <= start, f"{side} ranges overlap: {ranges}"


def check_bijection(m: IdMap, n: int) -> None:
    """Box ids 0…n-1 are all mapped, to n distinct host ids, in uids and in gids."""
    for lookup in (m.to_host_uid, m.to_host_gid):
        hosts = [lookup(i) for i in range(n)]
        assert None not in hosts
        assert len(set(hosts)) == n


def check_valid(m: IdMap, n: int = BOX_IDS) -> None:
    check_kernel_map(m.uids)
    check_kernel_map(m.gids)
    check_bijection(m, n)
    assert m.to_host_uid(n) is None and m.to_host_gid(n) is None
    assert m.to_host_uid(-1) is None


# --- parse_subid_file ---------------------------------------------------------------

SUBID_TEXT = """\
# comment: alice:1:1
   # indented comment
alice:100000:65536
alice:300000:65536
1001:200000:65536

bob:zero:10
bob:400000:0
bob:500000
bob:600000:10:extra
bob:700000:1000
carol:-:x
2000:800000:65536
dave:900000:65536
"""


@pytest.mark.parametrize(
    ("name", "ident", "expected"),
    [
        pytest.param("alice", 1000, SubRange(100000, 65536), id="by-name-first-match-wins"),
        pytest.param("nobody-here", 1001, SubRange(200000, 65536), id="by-uid"),
        pytest.param("bob", 1002, SubRange(700000, 1000), id="malformed-and-zero-skipped"),
        pytest.param("carol", 1003, None, id="non-numeric-only"),
        pytest.param("dave", 2000, SubRange(800000, 65536), id="uid-line-before-name-line"),
        pytest.param("comment", 1, None, id="comments-ignored"),
        pytest.param("eve", 1004, None, id="absent"),
        pytest.param("alic", 1000, None, id="no-prefix-match"),
    ],
)
def test_parse_subid_file(name: str, ident: int, expected: SubRange | None) -> None:
    assert parse_subid_file(SUBID_TEXT, name, ident) == expected


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "alice:1:0\n"])
def test_parse_subid_file_nothing(text: str) -> None:
    assert parse_subid_file(text, "alice", 1000) is None


# --- build_idmap --------------------------------------------------------------------

FULL_SUB = SubRange(100000, 65536)
FULL_SUBG = SubRange(300000, 65536)


def ids(
    host_uid: int,
    box_uid: int,
    subuid: SubRange | None,
    subgid: SubRange | None,
    host_gid: int | None = None,
    box_gid: int | None = None,
) -> IdMap:
    return build_idmap(
        host_uid=host_uid,
        host_gid=host_uid if host_gid is None else host_gid,
        box_uid=box_uid,
        box_gid=box_uid if box_gid is None else box_gid,
        subuid=subuid,
        subgid=subgid,
    )


@pytest.mark.parametrize(
    ("host_uid", "box_uid", "sub", "uids", "subordinate", "size"),
    [
        pytest.param(
            0, 0, SubRange(1000000, 65536),
            (IdRange(0, 1000000, 65536),), True, BOX_IDS, id="root-range",
        ),
        pytest.param(
            0, 1000, SubRange(1000000, 200000),
            (IdRange(0, 1000000, 65536),), True, BOX_IDS, id="root-long-range-capped",
        ),
        pytest.param(
            0, 0, SubRange(1000000, 1000),
            (IdRange(0, 1000000, 1000),), True, 1000, id="root-short-range",
        ),
        pytest.param(
            1000, 0, FULL_SUB,
            (IdRange(0, 1000, 1), IdRange(1, 100000, 65535)), True, BOX_IDS,
            id="rootless-box-root",
        ),
        pytest.param(
            1000, 1000, FULL_SUB,
            (IdRange(0, 100000, 1000), IdRange(1000, 1000, 1), IdRange(1001, 101000, 64535)),
            True, BOX_IDS, id="rootless-keep-id",
        ),
        pytest.param(
            1000, 65535, FULL_SUB,
            (IdRange(0, 100000, 65535), IdRange(65535, 1000, 1)), True, BOX_IDS,
            id="rootless-keep-id-last",
        ),
        pytest.param(
            1000, 0, SubRange(100000, 1000),
            (IdRange(0, 1000, 1), IdRange(1, 100000, 1000)), True, 1001,
            id="rootless-short-range",
        ),
        pytest.param(
            1000, 500, SubRange(100000, 1000),
            (IdRange(0, 100000, 500), IdRange(500, 1000, 1), IdRange(501, 100500, 500)),
            True, 1001, id="rootless-short-range-keep-id",
        ),
        pytest.param(
            1000, 1000, SubRange(100000, 1000),
            (IdRange(0, 100000, 1000), IdRange(1000, 1000, 1)), True, 1001,
            id="rootless-short-range-keep-id-last",
        ),
        pytest.param(1000, 0, None, (IdRange(0, 1000, 1),), False, 0, id="rootless-single-root"),
        pytest.param(
            1000, 1000, None, (IdRange(1000, 1000, 1),), False, 0, id="rootless-single-user",
        ),
    ],
)
def test_build_idmap(
    host_uid: int,
    box_uid: int,
    sub: SubRange | None,
    uids: tuple[IdRange, ...],
    subordinate: bool,
    size: int,
) -> None:
    m = ids(host_uid, box_uid, sub, sub)
    assert m.uids == uids
    assert m.gids == uids  # same numbers given for gids
    assert m.subordinate is subordinate
    check_kernel_map(m.uids)
    check_kernel_map(m.gids)
    if size:
        check_valid(m, size)
    if host_uid != 0:
        # Rootless: the box's user is always the caller.
        assert m.to_host_uid(box_uid) == host_uid


def test_build_idmap_uids_and_gids_independent() -> None:
    m = ids(1000, 1000, FULL_SUB, FULL_SUBG, host_gid=1500, box_gid=100)
    assert m.to_host_uid(1000) == 1000
    assert m.to_host_gid(100) == 1500
    assert m.to_host_gid(0) == 300000
    assert m.to_host_gid(101) == 300100
    check_valid(m)


def test_build_idmap_single_id_gid() -> None:
    m = ids(1000, 1000, None, None, host_gid=1500, box_gid=1000)
    assert m.gids == (IdRange(1000, 1500, 1),)
    assert m.to_host_uid(0) is None


@pytest.mark.parametrize(
    ("subuid", "subgid"),
    [(None, None), (FULL_SUB, None), (None, FULL_SUBG)],
    ids=["none", "no-subgid", "no-subuid"],
)
def test_build_idmap_root_needs_range(subuid: SubRange | None, subgid: SubRange | None) -> None:
    with pytest.raises(ValueError, match="subordinate"):
        ids(0, 0, subuid, subgid)


@pytest.mark.parametrize(
    ("subuid", "subgid"),
    [(FULL_SUB, None), (None, FULL_SUBG)],
    ids=["no-subgid", "no-subuid"],
)
def test_build_idmap_rootless_half_range_is_single(
    subuid: SubRange | None, subgid: SubRange | None
) -> None:
    m = ids(1000, 0, subuid, subgid)
    assert not m.subordinate
    assert m.uids == (IdRange(0, 1000, 1),)


# --- IdMap lookups --------------------------------------------------------------------

KEEP_ID = IdMap(
    (IdRange(0, 100000, 1000), IdRange(1000, 1000, 1), IdRange(1001, 101000, 64535)),
    (IdRange(0, 100000, 1000), IdRange(1000, 1000, 1), IdRange(1001, 101000, 64535)),
    subordinate=True,
)
SINGLE = IdMap((IdRange(0, 1000, 1),), (IdRange(0, 1000, 1),), subordinate=False)


@pytest.mark.parametrize(
    ("m", "box_id", "host_id"),
    [
        (KEEP_ID, 0, 100000),
        (KEEP_ID, 999, 100999),
        (KEEP_ID, 1000, 1000),
        (KEEP_ID, 1001, 101000),
        (KEEP_ID, 65535, 165534),
        (KEEP_ID, 65536, None),
        (KEEP_ID, -1, None),
        (SINGLE, 0, 1000),
        (SINGLE, 1, None),
        (SINGLE, 5, None),
    ],
)
def test_to_host(m: IdMap, box_id: int, host_id: int | None) -> None:
    assert m.to_host_uid(box_id) == host_id
    assert m.to_host_gid(box_id) == host_id
    assert m.maps_gid(box_id) is (host_id is not None)


@pytest.mark.parametrize(
    ("r", "line"),
    [(IdRange(0, 1000, 1), "0 1000 1"), (IdRange(1, 100000, 65535), "1 100000 65535")],
)
def test_range_line(r: IdRange, line: str) -> None:
    assert r.line() == line


# --- build_workspace_idmap ------------------------------------------------------------

ROOT_BASE = 1000000
ROOT_BOX = build_idmap(
    host_uid=0, host_gid=0, box_uid=0, box_gid=0,
    subuid=SubRange(ROOT_BASE, 65536), subgid=SubRange(2000000, 65536),
)


def test_workspace_idmap_box_root_is_identity() -> None:
    ws = build_workspace_idmap(ROOT_BOX, 0, 0)
    assert ws == ROOT_BOX
    assert ws.to_host_uid(0) == ROOT_BASE
    check_valid(ws)


@pytest.mark.parametrize("box_id", [1, 2, 1000, 65534, 65535])
def test_workspace_idmap_swap(box_id: int) -> None:
    ws = build_workspace_idmap(ROOT_BOX, box_id, box_id)
    check_valid(ws)
    assert len(ws.uids) <= 4
    for m, base in ((ws.to_host_uid, ROOT_BASE), (ws.to_host_gid, 2000000)):
        # On-disk 0 (root's files) is the box user; the box user's on-disk id is box root.
        assert m(0) == base + box_id
        assert m(box_id) == base
        # Every other id keeps its box meaning.
        for other in {1, box_id - 1, box_id + 1, 500, 65535} - {0, box_id}:
            if 0 < other < BOX_IDS:
                assert m(other) == base + other, other
    assert ws.subordinate
    assert [r.inside for r in ws.uids] == sorted(r.inside for r in ws.uids)


def test_workspace_idmap_uid_and_gid_swapped_separately() -> None:
    ws = build_workspace_idmap(ROOT_BOX, 1000, 100)
    assert ws.to_host_uid(0) == ROOT_BASE + 1000
    assert ws.to_host_gid(0) == 2000000 + 100
    assert ws.to_host_gid(1000) == 2000000 + 1000
    check_valid(ws)
