"""Fixtures of the tests that start real processes."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.procs import Proc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts; each group is killed at the end, whatever happens."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.stop(signal.SIGKILL)
