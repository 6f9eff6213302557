"""Fixtures of the metric tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclap import metrics as M


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """A metrics cache with pycocoevalcap's files placed (no CoreNLP jars): provisioned once per session."""
    return M.provision_resources(tmp_path_factory.mktemp("metrics-cache"))
