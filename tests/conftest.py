"""Shared test set-up: no test may reach the network, and shared caption data is optional."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# Set before any test imports transformers/huggingface_hub, so nothing ever tries the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CAPTIONS = REPO_ROOT.parent / "shared" / "data" / "captions"


@pytest.fixture
def shared_captions() -> Path:
    """``../shared/data/captions`` (real Clotho/AudioCaps caption CSVs); skips when it is absent."""
    if not SHARED_CAPTIONS.is_dir():
        pytest.skip(f"shared caption data not found at {SHARED_CAPTIONS}")
    return SHARED_CAPTIONS


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_configure(config) -> None:
    # Each xdist worker would otherwise start one torch thread per core: on 2 cores two workers' threads
    # spin against each other (measured 10-100x slower small convolutions and LSTMs).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@contextlib.contextmanager
def torch_threads(count: int = 1):
    """Temporarily run torch on ``count`` threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (restored afterwards).

    Tests that compare two runs of a float computation need both under the same thread count, since
    reductions differ across thread counts; and one thread avoids oversubscription outside xdist too.
    """
    with torch_threads(1):
        yield
