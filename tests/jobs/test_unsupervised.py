"""The unsupervised-improvement recipe end to end on a reduced demo config: every stage runs, the report puts
teacher and student side by side with the figures of their saved towers, a rerun skips, a changed curation
redoes only what follows it, and bad settings are refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from enclap.errors import ConfigError
from enclap.jobs.unsupervised import load_unsupervised_config, main, run_recipe

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "cfg" / "clap" / "unsupervised_demo.yaml"
TINY = REPO / "cfg" / "clap" / "tiny.yaml"


def reduced(tmp_path: Path, *extra: str) -> list[str]:
    return [f"output_dir={tmp_path / 'recipe'}", "data.num_annotated=24", "data.num_pool=16", "data.num_valid=0",
            "data.num_test=16", f"teacher.config={TINY}", f"student.config={TINY}",
            "teacher.overrides=[train.num_train_epochs=2,train.dataloader_num_workers=0,train.num_warmup_steps=0]",
            "student.overrides=[train.num_train_epochs=1,train.dataloader_num_workers=0,train.num_warmup_steps=0]",
            "progress=false", *extra]


@pytest.mark.slow
def test_recipe_runs_end_to_end_and_reports_teacher_and_student(tmp_path, capsys):
    from enclap.clap.embedder import ClapTowerEmbedder
    from enclap.clap.evaluation import evaluate_retrieval, evaluate_zero_shot

    torch.set_num_threads(1)
    config = load_unsupervised_config(DEMO, reduced(tmp_path))
    report = run_recipe(config)
    root = tmp_path / "recipe"
    assert set(report["towers"]) == {"teacher", "student"}
    data = root / "data"
    for name, row in report["towers"].items():
        embedder = ClapTowerEmbedder.from_pretrained(row["tower"], device="cpu")
        retrieval = evaluate_retrieval(embedder, data / "csv" / "test.csv", data / "audio")
        zero_shot = evaluate_zero_shot(embedder, data / "labels" / "test.csv", data / "audio", tuple(config.templates))
        assert row["retrieval"]["metrics"] == pytest.approx(retrieval["metrics"], abs=1e-6), name
        assert row["zero_shot"]["metrics"] == pytest.approx(zero_shot["metrics"], abs=1e-6), name
    assert Path(report["towers"]["teacher"]["tower"]).parent == root / "teacher"
    assert Path(report["towers"]["student"]["tower"]).parent == root / "student"
    markdown = (root / "report.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| teacher") or line.startswith("| student")]
    assert [r.split("|")[1].strip() for r in rows] == ["teacher", "student"]
    t2a = report["towers"]["student"]["retrieval"]["metrics"]["t2a_mAP@10"]
    assert f"{t2a:.4f}" in rows[1]
    # DU top-1: one curated pair per pool clip, its audio from the pool, its caption from the corpus
    with (root / "curated.csv").open() as f:
        curated = list(csv.DictReader(f))
    pool = {row["file_path"] for row in json.loads((root / "splits" / "pool.json").read_text())}
    corpus = {row["text"] for row in json.loads((root / "splits" / "corpus.json").read_text())}
    assert len(curated) == 16 and {r["file_path"] for r in curated} == pool
    assert all(r["caption"] in corpus for r in curated)
    # the student really trained on the mix: its config names the curated manifest and SoftCLAP
    student_cfg = (root / "student" / "training_config.yaml").read_text()
    assert "curation_prob: 0.5" in student_cfg and "softclap_beta: 0.3" in student_cfg
    capsys.readouterr()

    # a rerun skips every stage
    assert main(["--config", str(DEMO), *reduced(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("already done with these settings") == 6, out

    # ADS: teacher and embeddings kept, curation and what follows redone; captions are annotated ones near the labels
    assert main(["--config", str(DEMO), *reduced(tmp_path, "curation.method=ads", "curation.ds_top_k=3")]) == 0
    out = capsys.readouterr().out
    assert "[2/6] teacher" in out and out.count("already done with these settings") == 3, out  # data, teacher, embed
    annotated = {row["caption"] for row in csv.DictReader((root / "splits" / "annotated.csv").open())}
    with (root / "curated.csv").open() as f:
        ads = list(csv.DictReader(f))
    assert {r["file_path"] for r in ads} == pool and {r["caption"] for r in ads} <= annotated
    stats = json.loads((root / "curation.json").read_text())
    assert stats["method"] == "ads" and stats["domain_captions"] <= 3 * stats["labels"]
    assert len({r["caption"] for r in ads}) <= stats["domain_captions"]

    # DS: the annotated pairs whose captions are near the labels (their own clips, not the pool's)
    assert main(["--config", str(DEMO), *reduced(tmp_path, "curation.method=ds", "curation.ds_top_k=3")]) == 0
    annotated_pairs = {(r["file_path"], r["caption"]) for r in csv.DictReader((root / "splits" / "annotated.csv").open())}
    with (root / "curated.csv").open() as f:
        ds = [(r["file_path"], r["caption"]) for r in csv.DictReader(f)]
    assert ds and set(ds) <= annotated_pairs and len(ds) == json.loads((root / "curation.json").read_text())["domain_captions"]


def test_bad_recipe_settings_are_refused(tmp_path, capsys):
    for override, message in (("curation.method=banana", "curation.method must be one of"),
                              ("student.curation_prob=1.5", r"student.curation_prob must be in \[0, 1\]"),
                              ("student.subset_pct=0", r"student.subset_pct must be in \(0, 100\]"),
                              ("student.softclap_beta=1.5", r"student.softclap_beta must be in \[0, 1\]"),
                              ("student.init=banana", "student.init must be one of"),
                              ("teacher.config=nowhere.yaml", "teacher.config: nowhere.yaml does not exist"),
                              ("teacher.tower=/no/such/tower", "teacher.tower: /no/such/tower is not a directory"),
                              ("data.caption_corpus=[web]", "data.caption_corpus must list")):
        with pytest.raises(ConfigError, match=message):
            load_unsupervised_config(DEMO, [f"output_dir={tmp_path}", f"teacher.config={TINY}", f"student.config={TINY}", override])
    assert main(["--config", str(DEMO), f"teacher.config={TINY}", f"student.config={TINY}", "curation.top_k=null"]) == 2
    assert "curation.threshold and/or curation.top_k" in capsys.readouterr().err
    assert main(["--config", str(DEMO), f"teacher.config={TINY}", f"student.config={TINY}", "--force", "bogus",
                 f"output_dir={tmp_path / 'x'}"]) == 2
    assert "unknown stage" in capsys.readouterr().err


def test_curation_prob_zero_is_the_replay_only_control(tmp_path):
    """student.curation_prob=0: the student trains on the annotated set alone (no curated manifest given to it),
    otherwise as the curated student; the default mixes the curated pairs in."""
    from enclap.jobs.unsupervised import Recipe

    settings = [f"output_dir={tmp_path}", f"teacher.config={TINY}", f"student.config={TINY}"]
    replay = Recipe(load_unsupervised_config(DEMO, [*settings, "student.curation_prob=0", "student.softclap_beta=0"])).student_config()
    curated = Recipe(load_unsupervised_config(DEMO, [*settings, "student.softclap_beta=0"])).student_config()
    assert (replay.data.curated_file, replay.data.curation_prob) == ("", 0.0)
    assert (curated.data.curated_file, curated.data.curation_prob) == (str(tmp_path / "curated.csv"), 0.5)
    assert replay.data.train_file == curated.data.train_file == str(tmp_path / "splits" / "annotated.csv")
    assert (replay.train.num_train_epochs, replay.train.learning_rate) == (curated.train.num_train_epochs, curated.train.learning_rate)
    assert replay.model.init_from == curated.model.init_from == str(tmp_path / "teacher" / "final")
