"""The metrics package: its import stays light, and every name the rest of the project imports is still there."""

from __future__ import annotations

import subprocess
import sys

from ..conftest import REPO_ROOT


def test_import_is_light_and_names_are_kept(tmp_path) -> None:
    code = (
        "import sys, enclap.metrics as M;"
        # the names enclap/, bench/ and tests/ import from enclap.metrics
        "names = ['CaptionScorer', 'DEFAULT_METRICS', 'SUPPORTED_METRICS', 'OFFLINE_METRICS', 'format_table',"
        " 'find_java', 'provision_resources', 'reference_ceiling', 'main', 'ScoreReport', 'metric_availability'];"
        "missing = [n for n in names if not hasattr(M, n)];"
        "undeclared = [n for n in M.__all__ if not hasattr(M, n)];"
        "heavy = [m for m in ('torch', 'numpy', 'transformers', 'aac_metrics', 'tqdm') if m in sys.modules];"
        "print(missing, undeclared, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[] [] []", out.stdout + out.stderr


def test_python_m_enclap_metrics_is_the_command(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-m", "enclap.metrics", "check", "--cache-dir", str(tmp_path), "--metrics", "nope"],
                         cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and "unknown metric(s) nope" in out.stderr, out.stderr
