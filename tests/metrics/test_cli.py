"""The command line end to end (tokenizer only: no METEOR start)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from enclap import metrics as M

from .helpers import PLAIN_CANDS, PLAIN_REFS, java_path, write_csv


@pytest.mark.slow
def test_cli_score_and_ceiling_write_reports(cache: Path, tmp_path: Path, capsys) -> None:
    from aac_metrics import evaluate

    java = java_path()
    refs_csv = write_csv(
        tmp_path / "refs.csv",
        [["file_path", "caption_1", "caption_2", "caption_3"]] + [[f"clip{i}.wav"] + (refs[:3] + ["", ""])[:3] for i, refs in enumerate(PLAIN_REFS)],
    )
    preds_csv = write_csv(tmp_path / "preds.csv", [["file_path", "caption"]] + [[f"clip{i}.wav", c] for i, c in enumerate(PLAIN_CANDS)])
    common = ["--cache-dir", str(cache), "--metrics", "bleu_4,rouge_l,cider_d"]
    assert M.main(["score", str(preds_csv), "--references", str(refs_csv), "--json", str(tmp_path / "s.json"),
                   "--per-clip", str(tmp_path / "s.csv"), *common]) == 0
    out = capsys.readouterr().out
    assert "CIDEr-D" in out and "6 candidate(s)" in out
    data = json.loads((tmp_path / "s.json").read_text())
    # expected: aac-metrics itself on the same captions (the CSV kept the first 3 references of each clip)
    corpus, sents = evaluate(PLAIN_CANDS, [r[:3] for r in PLAIN_REFS], metrics=["bleu_4", "rouge_l", "cider_d"],
                             cache_path=str(cache), java_path=java, tmp_path=str(tmp_path))
    assert data["corpus"] == pytest.approx({k: float(corpus[k]) for k in ("bleu_4", "rouge_l", "cider_d")}, abs=1e-9)
    with open(tmp_path / "s.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file_path", "bleu_4", "rouge_l", "cider_d"] and [r[0] for r in rows[1:]] == [f"clip{i}.wav" for i in range(6)]
    for column, name in enumerate(("bleu_4", "rouge_l", "cider_d"), start=1):
        assert [float(r[column]) for r in rows[1:]] == pytest.approx(sents[name].tolist(), abs=1e-6), name

    assert M.main(["ceiling", str(refs_csv), "--json", str(tmp_path / "c.json"), "--per-clip", str(tmp_path / "c.csv"), *common]) == 0
    ceiling = json.loads((tmp_path / "c.json").read_text())
    assert set(ceiling["corpus"]) == {"bleu_4", "rouge_l", "cider_d"} and len(ceiling["rounds"]) == 3
    # clip 5 has 2 references, the others 3: all 6 clips are scored
    with open(tmp_path / "c.csv", newline="") as f:
        assert len(list(csv.reader(f))) == 7
