"""The CSV readers and the command line's argument handling (no Java)."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclap import metrics as M
from enclap.errors import ManifestError

from .helpers import write_csv


def test_read_references_csv_layouts(tmp_path: Path) -> None:
    evaluation = write_csv(
        tmp_path / "eval.csv",
        [["file_path", "caption_2", "caption_1"], ["a.npy", "second, with comma", "first"], ["b.npy", "", "only one"]],
    )
    assert M.read_references_csv(evaluation) == (["a.npy", "b.npy"], [["first", "second, with comma"], ["only one"]])
    training = write_csv(tmp_path / "train.csv", [["file_path", "caption"], ["a.npy", "x"], ["b.npy", "y"], ["a.npy", "z"]])
    assert M.read_references_csv(training) == (["a.npy", "b.npy"], [["x", "z"], ["y"]])
    broken = write_csv(tmp_path / "broken.csv", [["file_path", "caption_1"], ["a.npy", "x"], ["a.npy", "y"], ["c.npy"]])
    with pytest.raises(ManifestError) as err:
        M.read_references_csv(broken)
    assert "line 3" in str(err.value) and "line 4" in str(err.value) and str(broken) in str(err.value)
    with pytest.raises(ManifestError, match="no caption columns"):
        M.read_references_csv(write_csv(tmp_path / "nocap.csv", [["file_path", "text"], ["a", "b"]]))
    with pytest.raises(ManifestError, match="file not found"):
        M.read_references_csv(tmp_path / "missing.csv")


def test_read_predictions_csv(tmp_path: Path) -> None:
    with_refs = write_csv(
        tmp_path / "p.csv", [["file_path", "prediction", "caption_1", "caption_2"], ["a", "a dog", "dog", "a dog barks"], ["b", "rain", "rain", ""]]
    )
    assert M.read_predictions_csv(with_refs) == (["a", "b"], ["a dog", "rain"], [["dog", "a dog barks"], ["rain"]])
    plain = write_csv(tmp_path / "q.csv", [["file_path", "caption"], ["a", "a dog"]])
    assert M.read_predictions_csv(plain) == (["a"], ["a dog"], None)
    with pytest.raises(ManifestError, match="no prediction column"):
        M.read_predictions_csv(write_csv(tmp_path / "r.csv", [["file_path", "text"], ["a", "b"]]))


def test_cli_errors_are_clean(tmp_path: Path, capsys) -> None:
    assert M.main(["check", "--cache-dir", str(tmp_path), "--metrics", "bleu_1,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert M.main(["check", "--cache-dir", str(tmp_path / "empty"), "--metrics", "bleu_1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().out
    preds = write_csv(tmp_path / "p.csv", [["file_path", "prediction"], ["a", "x"]])
    assert M.main(["score", str(preds), "--cache-dir", str(tmp_path), "--metrics", "bleu_1"]) == 2
    assert "--references" in capsys.readouterr().err
