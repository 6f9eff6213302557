"""The ``require`` helper: skips on a developer's machine, fails under CI (``CI=true``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from .conftest import REPO_ROOT

TEST = '''
from tests.conftest import require

def test_needs_something():
    require(False, "the thing", "install it")

def test_has_something():
    require(True, "the thing", "install it")
'''


def _run(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(TEST)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path / "test_probe.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def test_require_fails_under_ci(tmp_path):
    out = _run(tmp_path, "true")
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(r"\b1 failed, 1 passed\b", out.stdout), out.stdout
    assert "the thing is not available: install it" in out.stdout and "skipped" not in out.stdout


def test_require_skips_outside_ci(tmp_path):
    out = _run(tmp_path, None)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"\b1 passed, 1 skipped\b", out.stdout), out.stdout
    assert "the thing is not available: install it" in out.stdout
