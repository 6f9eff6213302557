"""The cache layout and placing pycocoevalcap's files (checked against their pinned SHA-256)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from enclap import metrics as M

from ..conftest import REPO_ROOT
from .helpers import java_path, sha256


def test_cache_dir_precedence(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AAC_METRICS_CACHE_PATH", raising=False)
    assert M.resolve_cache_dir() == Path(os.path.expanduser("~/.cache")).absolute()
    monkeypatch.setenv("AAC_METRICS_CACHE_PATH", str(tmp_path / "env"))
    assert M.resolve_cache_dir() == tmp_path / "env"
    assert M.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def _tree(root: Path) -> dict[str, tuple[bool, int]]:
    return {str(p.relative_to(root)): (p.is_symlink(), p.stat().st_size) for p in sorted(root.rglob("*")) if p.is_file()}


def test_provision_places_registry_files_idempotently(tmp_path: Path) -> None:
    source = M.pycocoevalcap_dir()
    assert source is not None, "pycocoevalcap==1.2 is a dependency"
    before_site = sorted(str(p) for p in source.rglob("*"))
    root = M.provision_resources(tmp_path)
    assert root == tmp_path
    base = tmp_path / "aac-metrics"
    expected = {
        base / "stanford_nlp/stanford-corenlp-3.4.1.jar": source / "tokenizer/stanford-corenlp-3.4.1.jar",
        base / "meteor/meteor-1.5.jar": source / "meteor/meteor-1.5.jar",
        base / "meteor/data/paraphrase-en.gz": source / "meteor/data/paraphrase-en.gz",
        base / "spice/spice-1.0.jar": source / "spice/spice-1.0.jar",
    }
    expected.update({base / "spice/lib" / n: source / "spice/lib" / n for n in M.SPICE_LIB_JARS})
    for dst, src in expected.items():
        assert dst.is_file(), dst
        assert dst.read_bytes()[:4096] == src.read_bytes()[:4096] and dst.stat().st_size == src.stat().st_size
    # SPICE's jar is a real file next to lib/, so its Class-Path finds the CoreNLP jars placed there
    assert not (base / "spice/spice-1.0.jar").is_symlink()
    assert (base / "spice/cache").is_dir()
    first = _tree(base)
    inodes = {p: os.lstat(p).st_ino for p in expected}
    assert M.provision_resources(tmp_path) == tmp_path
    assert _tree(base) == first
    assert {p: os.lstat(p).st_ino for p in expected} == inodes  # nothing re-placed
    assert sorted(str(p) for p in source.rglob("*")) == before_site  # nothing written into site-packages


def test_provision_repairs_broken_files_and_copy_mode(tmp_path: Path) -> None:
    M.provision_resources(tmp_path)
    jar = tmp_path / "aac-metrics/meteor/meteor-1.5.jar"
    jar.unlink()
    jar.write_bytes(b"truncated")
    M.provision_resources(tmp_path)
    assert jar.stat().st_size == (M.pycocoevalcap_dir() / "meteor/meteor-1.5.jar").stat().st_size
    copied = tmp_path / "copied"
    M.provision_resources(copied, copy=True)
    assert not any(p.is_symlink() for p in (copied / "aac-metrics").rglob("*"))


def test_provision_is_safe_with_concurrent_processes(tmp_path: Path) -> None:
    java_path()  # the check below runs the metrics' Java
    code = "import sys; from enclap.metrics import provision_resources; print(provision_resources(sys.argv[1]))"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == [str(tmp_path)] * 3
    statuses = M.metric_availability(("meteor", "bleu_1"), tmp_path)
    assert all(s.available for s in statuses.values()), statuses
    assert not [p for p in (tmp_path / "aac-metrics").rglob("*.tmp")]


def test_pycocoevalcap_files_equal_their_pins() -> None:
    """The installed wheel's files are the pinned ones (so provisioning passes), computed here with hashlib."""
    source = M.pycocoevalcap_dir()
    assert source is not None, "pycocoevalcap==1.2 is a dependency"
    placed = {"tokenizer/stanford-corenlp-3.4.1.jar", "meteor/meteor-1.5.jar", "meteor/data/paraphrase-en.gz",
              "spice/spice-1.0.jar"} | {f"spice/lib/{n}" for n in M.SPICE_LIB_JARS}
    assert set(M.PYCOCOEVALCAP_SHA256) == placed  # every file placed for Java to run has a pin
    assert {name: sha256(source / name) for name in placed} == M.PYCOCOEVALCAP_SHA256


def test_provision_refuses_a_file_whose_digest_differs(monkeypatch, tmp_path: Path) -> None:
    wrong = "0" * 64
    monkeypatch.setitem(M.PYCOCOEVALCAP_SHA256, "meteor/meteor-1.5.jar", wrong)
    with pytest.raises(M.ChecksumMismatchError) as err:
        M.provision_resources(tmp_path)
    jar = M.pycocoevalcap_dir() / "meteor/meteor-1.5.jar"
    message = str(err.value)
    assert str(jar) in message and f"expected {wrong}" in message and f"actual {sha256(jar)}" in message
    assert "pycocoevalcap==1.2" in message  # and how to fix it
    assert not (tmp_path / "aac-metrics/meteor/meteor-1.5.jar").exists()
