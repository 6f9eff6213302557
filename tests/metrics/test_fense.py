"""FENSE with local models (tiny random stand-ins, no hub), and its checkpoint's SHA-256 check."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclap import metrics as M

from .helpers import PLAIN_CANDS, PLAIN_REFS, java_path, tiny_fense_models


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
