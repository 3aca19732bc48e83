"""Pure pieces of the keeper's client: detach keys.  (The keeper's scrollback ring and
its stall timeout are C now, native/keeper/: tests/integration/test_boxes.py and
test_backpressure.py try them.)"""

from __future__ import annotations

import pytest

from coopy.client import parse_detach_key
from coopy.errors import CoopyError


@pytest.mark.parametrize(("spec", "byte"), [("ctrl-]", 0x1D), ("ctrl-a", 0x01),
                                            ("CTRL-Q", 0x11), (" ctrl-x ", 0x18)])
def test_detach_keys(spec: str, byte: int) -> None:
    assert parse_detach_key(spec) == byte


@pytest.mark.parametrize("spec", ["", "alt-x", "ctrl-", "ctrl-ab", "q"])
def test_bad_detach_keys(spec: str) -> None:
    with pytest.raises(CoopyError, match="expected ctrl-<key>"):
        parse_detach_key(spec)
