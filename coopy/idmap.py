"""User and group id mappings of a box: pure functions over host facts.

Three shapes (see docs/design.md, "Ids"):

* **rootless with subordinate ids**: box 0 is the caller, box 1…65535 are the caller's
  range from /etc/subuid, so package managers in pulled images work.  With ``--user``
  (box uid U), U is the caller instead ("keep-id"), so files the named user writes in
  the workspace belong to the caller on the host.
* **rootless without subordinate ids**: the only id that can be mapped is the caller's:
  box root (or the named user) is the caller, nothing else exists.
* **root**: every box id is one of root's subordinate ids (box root is not host root);
  the workspace is bound id-mapped so the box's files still belong to root on the host.
"""

from __future__ import annotations

from typing import NamedTuple

BOX_IDS = 65536  # ids 0…65535 inside a box, as in a normal system


class IdRange(NamedTuple):
    """``length`` ids from ``inside`` in the box are ``outside`` on the host (a map line)."""

    inside: int
    outside: int
    length: int  # not `count`: that is a tuple method

    def line(self) -> str:
        """The line as written to /proc/PID/uid_map."""
        return f"{self.inside} {self.outside} {self.length}"


class IdMap(NamedTuple):
    """The uid and gid maps of one box, and how they must be written."""

    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]
    subordinate: bool  # True when a subordinate range is used (newuidmap, or root's range)

    def to_host_uid(self, uid: int) -> int | None:
        """The host uid that box ``uid`` is, or None when it is not mapped."""
        return _lookup(self.uids, uid)

    def to_host_gid(self, gid: int) -> int | None:
        """The host gid that box ``gid`` is, or None when it is not mapped."""
        return _lookup(self.gids, gid)

    def maps_gid(self, gid: int) -> bool:
        """Whether box ``gid`` exists (e.g. gid 5, the tty group, for devpts)."""
        return _lookup(self.gids, gid) is not None


def _lookup(ranges: tuple[IdRange, ...], box_id: int) -> int | None:
    for r in ranges:
        if r.inside <= box_id < r.inside + r.length:
            return r.outside + box_id - r.inside
    return None


class SubRange(NamedTuple):
    """A subordinate id range from /etc/subuid or /etc/subgid."""

    start: int
    length: int  # not `count`: that is a tuple method


def parse_subid_file(text: str, name: str, ident: int) -> SubRange | None:
    """The first range of ``name`` (or of the numeric ``ident``) in an /etc/subuid text.

    shadow's newuidmap accepts entries by user name or by uid; so do we.  Ranges shorter
    than a whole box (65535 ids besides the caller's) are still used: the box then has
    fewer ids, which is reported by ``coopy doctor``.
    """
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3 or parts[0] not in (name, str(ident)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if count > 0:
            return SubRange(start, count)
    return None


def _keep_id(own: int, box_id: int, sub: SubRange) -> tuple[IdRange, ...]:
    """Box ids 0…N: ``box_id`` is the caller's ``own`` id, the others come from ``sub``."""
    total = min(sub.length + 1, BOX_IDS)
    if box_id >= total:
        box_id = min(box_id, total - 1)
    ranges = []
    if box_id > 0:
        ranges.append(IdRange(0, sub.start, box_id))
    ranges.append(IdRange(box_id, own, 1))
    if total - box_id - 1 > 0:
        ranges.append(IdRange(box_id + 1, sub.start + box_id, total - box_id - 1))
    return tuple(ranges)


def build_idmap(
    *,
    host_uid: int,
    host_gid: int,
    box_uid: int,
    box_gid: int,
    subuid: SubRange | None,
    subgid: SubRange | None,
) -> IdMap:
    """The maps for a box whose main process runs as ``box_uid``/``box_gid`` inside.

    Raises ValueError for root without a subordinate range: mapping box root to host root
    would make the box's root the host's, which coopy only does on explicit request.
    """
    if host_uid == 0:
        if subuid is None or subgid is None:
            raise ValueError("root has no subordinate id range")
        return IdMap(
            (IdRange(0, subuid.start, min(subuid.length, BOX_IDS)),),
            (IdRange(0, subgid.start, min(subgid.length, BOX_IDS)),),
            subordinate=True,
        )
    if subuid is None or subgid is None:
        return IdMap(
            (IdRange(box_uid, host_uid, 1),), (IdRange(box_gid, host_gid, 1),), subordinate=False
        )
    return IdMap(
        _keep_id(host_uid, box_uid, subuid), _keep_id(host_gid, box_gid, subgid), subordinate=True
    )


def build_workspace_idmap(box: IdMap, box_uid: int, box_gid: int) -> IdMap:
    """The map of an id-mapped bind for boxes of root: on-disk 0 (root) is box ``box_uid``.

    An id-mapped mount shows an on-disk id k as the host id map(k), so for the box's user
    to see (and create) files that are root's on disk, on-disk 0 must map to the host id
    that box ``box_uid`` is; the other ids keep their box meaning (on-disk 1000 is box 1000)
    except ``box_uid`` itself, which takes on-disk 0's place (a swap).
    """
    return IdMap(_swap(box.uids, box_uid), _swap(box.gids, box_gid), box.subordinate)


def _swap(ranges: tuple[IdRange, ...], box_id: int) -> tuple[IdRange, ...]:
    if box_id == 0:
        return ranges
    (only,) = ranges  # boxes of root have one contiguous range
    base, count = only.outside, only.length
    out = [IdRange(0, base + box_id, 1), IdRange(box_id, base, 1)]
    if box_id > 1:
        out.append(IdRange(1, base + 1, box_id - 1))
    if count - box_id - 1 > 0:
        out.append(IdRange(box_id + 1, base + box_id + 1, count - box_id - 1))
    return tuple(sorted(out, key=lambda r: r.inside))
