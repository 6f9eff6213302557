"""FENSE with local models (tiny random stand-ins, no hub), and its checkpoint's SHA-256 check."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclap import metrics as M

from .helpers import PLAIN_CANDS, PLAIN_REFS, java_path, sha256, tiny_fense_models


@pytest.mark.slow
def test_fense_runs_with_local_models_and_equals_aac_metrics(monkeypatch, cache: Path, tmp_path: Path) -> None:
    java_path()
    monkeypatch.setenv("FENSE_DATA", str(tmp_path))
    sbert, echecker = tiny_fense_models(tmp_path, monkeypatch)
    statuses = M.metric_availability(("fense",), cache, fense_sbert_model=sbert, fense_echecker=echecker)
    assert statuses["fense"].available, statuses["fense"]
    scorer = M.CaptionScorer(("fense", "bleu_1"), cache_dir=cache, device="cpu", fense_sbert_model=sbert, fense_echecker=echecker)
    report = scorer.score(PLAIN_CANDS, PLAIN_REFS, per_clip=True)
    assert report.unavailable == {} and set(report.corpus) == {"fense", "bleu_1"}

    from aac_metrics.functional.fense import fense

    corpus, sents = fense(PLAIN_CANDS, PLAIN_REFS, sbert_model=sbert, echecker=echecker, device="cpu")
    assert report.corpus["fense"] == pytest.approx(float(corpus["fense"]), abs=1e-6)
    assert report.per_clip["fense"] == pytest.approx(sents["fense"].tolist(), abs=1e-6)
    again = scorer.score(PLAIN_CANDS, PLAIN_REFS)  # models are kept: same numbers, no reload
    assert again.corpus["fense"] == pytest.approx(report.corpus["fense"], abs=1e-9)


def test_published_echecker_pins_are_aac_metrics_own() -> None:
    """The pins are the digests FENSE publishes, as aac-metrics records them for its own download check."""
    from aac_metrics.functional.fer import _PRETRAIN_ECHECKERS_DICT

    assert M.FENSE_ECHECKER_SHA256 == {name: digest for name, (_, digest) in _PRETRAIN_ECHECKERS_DICT.items()}
    assert set(M.FENSE_ECHECKER_URLS) == set(M.FENSE_ECHECKER_SHA256)


def test_an_unverified_echecker_is_refused_before_it_is_unpickled(monkeypatch, cache: Path, tmp_path: Path) -> None:
    java_path()
    monkeypatch.setenv("FENSE_DATA", str(tmp_path))
    sbert, echecker = tiny_fense_models(tmp_path)  # not pinned: its digest is not the published one
    ckpt = tmp_path / f"{echecker}.ckpt"
    import torch

    def no_load(*args, **kwargs):
        raise AssertionError(f"torch.load ran on {args[0] if args else kwargs}")

    monkeypatch.setattr(torch, "load", no_load)
    status = M.metric_availability(("fense",), cache, fense_sbert_model=sbert, fense_echecker=echecker)["fense"]
    assert not status.available
    assert str(ckpt) in status.reason
    assert f"expected {M.FENSE_ECHECKER_SHA256[echecker]}" in status.reason and f"actual {sha256(ckpt)}" in status.reason
    scorer = M.CaptionScorer(("fense",), cache_dir=cache, device="cpu", fense_sbert_model=sbert, fense_echecker=echecker)
    assert "SHA-256 mismatch" in scorer.unavailable["fense"]


@pytest.mark.slow
def test_an_echecker_changed_after_the_check_is_refused_at_load(monkeypatch, cache: Path, tmp_path: Path) -> None:
    java_path()
    monkeypatch.setenv("FENSE_DATA", str(tmp_path))
    sbert, echecker = tiny_fense_models(tmp_path, monkeypatch)
    scorer = M.CaptionScorer(("fense",), cache_dir=cache, device="cpu", fense_sbert_model=sbert, fense_echecker=echecker)
    assert scorer.unavailable == {}
    ckpt = tmp_path / f"{echecker}.ckpt"
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")  # replaced between the check and the first use
    report = scorer.score(PLAIN_CANDS, PLAIN_REFS)
    assert "fense" not in report.corpus
    assert "SHA-256 mismatch" in report.unavailable["fense"] and f"actual {sha256(ckpt)}" in report.unavailable["fense"]
