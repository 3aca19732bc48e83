"""Fixtures shared by the integration tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import BoxUser


@pytest.fixture
def name(box_user: BoxUser) -> Iterator[str]:
    """A box name for this test; the box is killed and removed afterwards whatever
    happened (`coopy rm -f` kills first)."""
    box = f"t{uuid.uuid4().hex[:8]}"
    yield box
    box_user.coopy("rm", "-f", box)
