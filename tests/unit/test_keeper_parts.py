"""Pure pieces of the keeper and its client: the scrollback ring, detach keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coopy.client import parse_detach_key
from coopy.errors import CoopyError
from coopy.keeper import _Pty


@pytest.mark.parametrize(("spec", "byte"), [("ctrl-]", 0x1D), ("ctrl-a", 0x01),
                                            ("CTRL-Q", 0x11), (" ctrl-x ", 0x18)])
def test_detach_keys(spec: str, byte: int) -> None:
    assert parse_detach_key(spec) == byte


@pytest.mark.parametrize("spec", ["", "alt-x", "ctrl-", "ctrl-ab", "q"])
def test_bad_detach_keys(spec: str) -> None:
    with pytest.raises(CoopyError, match="expected ctrl-<key>"):
        parse_detach_key(spec)


def test_scrollback_keeps_the_newest_bytes_and_at_least_the_limit(tmp_path: Path) -> None:
    pty = _Pty(1, -1, "shell", [], tmp_path / "log")
    for i in range(100):
        pty.keep(f"{i:04d}\n".encode() * 10, 200)  # 50-byte chunks
    kept = pty.scrollback
    assert kept.endswith(b"0099\n")
    assert 200 <= len(kept) < 250  # trimmed by whole chunks, never below the limit
    assert pty.held == len(kept)
    os.close(pty.log_fd)


@pytest.mark.parametrize(("value", "seconds"), [
    (None, 10.0), ("2", 2.0), ("0.5", 0.5), ("0", 0.1), ("-3", 0.1), ("1e9", 600.0),
    ("nan", 10.0), ("soon", 10.0), ("", 10.0),
])
def test_stall_timeout_is_bounded(value: str | None, seconds: float) -> None:
    from coopy.keeper import STALL_ENV, stall_timeout

    assert stall_timeout({} if value is None else {STALL_ENV: value}) == seconds
