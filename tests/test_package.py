"""The package itself: importing it does no work, and the entry points are installed."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO_ROOT


def test_import_is_light_and_side_effect_free(tmp_path):
    code = (
        "import sys, enclap, enclap.errors, enclap.config, enclap.loading;"
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'soundfile', 'omegaconf') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing enclap pulled in: {out.stdout.strip()}"
    assert list(tmp_path.iterdir()) == [], "importing enclap wrote files"


def test_version_is_declared_once():
    import enclap

    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert f'version = "{enclap.__version__}"' in pyproject
