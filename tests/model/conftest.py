"""Model tests use tiny models: one intra-op thread is faster than several (and does not oversubscribe under xdist)."""

from __future__ import annotations

import pytest

from ..conftest import torch_threads


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    with torch_threads(1):
        yield
