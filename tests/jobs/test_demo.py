"""The one-command demo in --quick mode: every stage's output, the learning claim, skip / resume / redo rules."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from enclap.jobs.demo import QUICK, STAGES, main

from ..conftest import torch_threads

QUICK_ARGS = ["--quick", "--device", "cpu", "--no-progress"]


def run_demo_main(output: Path, *extra: str) -> tuple[int, str, float]:
    """``enclap-demo --quick --output OUTPUT extra...`` in this process: (exit code, stdout, seconds)."""
    buffer = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(buffer), torch_threads(1):
        code = main([*QUICK_ARGS, "--output", str(output), *extra])
    return code, buffer.getvalue(), time.monotonic() - started


def summary_of(output: Path) -> dict:
    return json.loads((output / "summary.json").read_text())


def statuses(output: Path) -> dict[str, str]:
    return {name: stage["status"] for name, stage in summary_of(output)["stages"].items()}


def check_every_stage_output(output: Path, stdout: str) -> None:
    from enclap.data.manifest import read_manifest
    from enclap.features.random_models import is_random_model_dir
    from enclap.features.store import open_feature_store
    from enclap.pipeline import CaptioningPipeline

    summary = summary_of(output)
    assert list(summary["stages"]) == list(STAGES)
    assert all(stage["status"] == "done" for stage in summary["stages"].values())
    assert summary["random_feature_models"] is True
    assert "RANDOM-INITIALISED" in stdout and "--encodec facebook/encodec_24khz --clap laion/clap-htsat-fused" in stdout

    # data: the quick sizes, one wav per clip
    clips = {split: read_manifest(output / "data" / "csv" / f"{split}.csv") for split in ("train", "valid", "test")}
    assert {s: len(c) for s, c in clips.items()} == {"train": QUICK.num_train, "valid": QUICK.num_valid, "test": QUICK.num_test}
    assert all(len(c.captions) == QUICK.captions_per_clip for c in clips["train"])
    for split_clips in clips.values():
        assert all((output / "data" / "audio" / f"{c.key}.wav").is_file() for c in split_clips)

    # models: marked random; the CLAP tower: trained here, its test figures next to chance, in the summary
    assert is_random_model_dir(output / "models" / "encodec") and is_random_model_dir(output / "models" / "clap")
    tower = output / "clap" / "best"
    assert not is_random_model_dir(tower) and (tower / "model.safetensors").is_file()
    tower_dim = json.loads((tower / "config.json").read_text())["projection_dim"]
    clap = summary["clap"]
    assert clap == {k: v for k, v in json.loads((output / "clap" / "test_report.json").read_text()).items() if k in clap}
    retrieval = clap["retrieval"]
    assert retrieval["clips"] == QUICK.num_test and retrieval["captions"] == QUICK.num_test * QUICK.captions_per_clip
    assert retrieval["chance"]["t2a_R@1"] == pytest.approx(1 / QUICK.num_test)
    assert 0.0 <= retrieval["metrics"]["t2a_R@1"] <= 1.0 and 0.0 <= retrieval["metrics"]["a2t_R@1"] <= 1.0
    labelled = (output / "data" / "labels" / "test.csv").read_text().splitlines()[1:]
    if labelled:  # the seeded quick test split has single-source clips; the zero-shot figures are over them
        assert clap["zero_shot"]["clips"] == len(labelled)
        assert clap["zero_shot"]["chance"]["top1"] == pytest.approx(1 / len({row.split(",")[1] for row in labelled}))
    assert "text->audio R@1" in stdout and "zero-shot top-1" in stdout

    # features: every clip, EnCLAP's geometry, frames = ceil(seconds * 75), the trained tower's embedding
    store = open_feature_store(str(output / "features"))
    keys = [c.key for split_clips in clips.values() for c in split_clips]
    assert sorted(store.keys()) == sorted(keys)
    clip = store[keys[0]]
    assert clip.codes.shape == (int(np.ceil(QUICK.seconds * 75)), 16) and clip.clap.shape == (tower_dim,)
    assert (output / "features" / "failures.csv").read_text().strip() == "file,reason"

    # captioner: loads in the pipeline with its feature models, named relative to it (the run can move)
    for name in ("final", "best"):
        pipeline = CaptioningPipeline.from_pretrained(output / "captioner" / name, device="cpu")
        assert Path(pipeline.settings.encodec).resolve() == (output / "models" / "encodec").resolve()
        assert Path(pipeline.settings.clap).resolve() == tower.resolve()
        assert pipeline.features is not None and pipeline.features.num_codebooks == 16

    # evaluation: the metrics that run offline, and the unavailable ones named with their reasons
    scores = json.loads((output / "eval" / "trained.scores.json").read_text())
    assert scores["num_clips"] == QUICK.num_test
    assert {"bleu_1", "bleu_4", "meteor", "rouge_l", "cider_d"} <= set(scores["scores"])
    assert "spice" in scores["unavailable"] and "CoreNLP" in scores["unavailable"]["spice"]
    with open(output / "eval" / "trained.predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file_path"] for r in rows] == [c.file_path for c in clips["test"]]
    assert summary["scores"] == scores["scores"]

    # the audio-blind baseline: a training caption (chosen on the validation split), for every test clip,
    # scored on the test split; recomputed here with the scorer directly
    from enclap.data.manifest import read_caption_pairs
    from enclap.metrics import CaptionScorer

    baseline = summary["constant_baseline"]
    assert baseline["caption"] in {caption for _, caption in read_caption_pairs(output / "data" / "csv" / "train.csv")}
    assert baseline["chosen_on"] == "validation"
    direct = CaptionScorer(metrics=["cider_d", "meteor"]).score(
        [baseline["caption"]] * len(clips["test"]), [list(c.captions) for c in clips["test"]]).corpus
    assert baseline["scores"]["cider_d"] == pytest.approx(direct["cider_d"]) and baseline["scores"]["meteor"] == pytest.approx(direct["meteor"])
    assert "audio-blind: best constant caption" in stdout and baseline["caption"] in stdout
    assert "python gradio_app.py" in stdout

    # captions: three test recordings, captioned from audio, printed next to a reference
    with open(output / "captions.csv", newline="") as fh:
        captioned = list(csv.DictReader(fh))
    assert len(captioned) == 3 and all(row["caption"].strip() for row in captioned)
    for row, test_clip in zip(captioned, clips["test"]):
        assert Path(row["file"]) == output / "data" / "audio" / f"{test_clip.key}.wav"
        assert row["reference_1"] == test_clip.captions[0]
        assert f"caption:   {row['caption']}" in stdout
    assert [c["caption"] for c in summary["captions"]] == [row["caption"] for row in captioned]

    # the printed summary says where things are
    for key in ("features", "trained_model", "predictions", "captions", "summary"):
        assert summary["paths"][key] in stdout


def check_the_captioner_learned(output: Path) -> None:
    """Training must beat the same network at its random start by a margin no untrained model reaches."""
    from enclap.training.tracking import read_train_log

    summary = summary_of(output)
    trained, untrained = summary["scores"], summary["untrained_scores"]
    assert trained["bleu_1"] > untrained["bleu_1"] + 0.15, (trained, untrained)
    assert trained["cider_d"] > untrained["cider_d"] + 0.08, (trained, untrained)
    log = list(read_train_log(output / "captioner"))
    lm = [e["lm_loss"] for e in log if e["type"] == "train"]
    assert lm[-1] < lm[0] - 1.5, lm  # caption loss (nats per token), first vs last logging window
    validation = [e["val_loss"] for e in log if e["type"] == "validation"]
    assert min(validation) < validation[0] - 0.5, validation


@pytest.mark.slow
def test_quick_demo_end_to_end_then_skip_resume_and_redo_rules(tmp_path):
    """One test, because the stages build on each other (and xdist groups are not honoured here)."""
    output = tmp_path / "run"
    code, stdout, first_seconds = run_demo_main(output)
    assert code == 0, stdout
    check_every_stage_output(output, stdout)
    check_the_captioner_learned(output)
    before = summary_of(output)

    # 1. the same command again: every stage skipped, fast, same results
    code, stdout, seconds = run_demo_main(output)
    assert code == 0, stdout
    assert set(statuses(output).values()) == {"skipped"}
    assert stdout.count("already done with these settings") == len(STAGES)
    assert seconds < min(30.0, 0.5 * first_seconds), (seconds, first_seconds)
    again = summary_of(output)
    assert again["scores"] == before["scores"] and again["captions"] == before["captions"]

    # 1b. a rerun with the same seed reproduces: retraining from scratch gives the same bytes and scores
    trained_first = (output / "captioner" / "final" / "model.safetensors").read_bytes()
    code, stdout, _ = run_demo_main(output, "--force", "train")
    assert code == 0, stdout
    assert statuses(output) == {**{s: "skipped" for s in STAGES[:4]}, **{s: "done" for s in STAGES[4:]}}
    assert (output / "captioner" / "final" / "model.safetensors").read_bytes() == trained_first
    rerun = summary_of(output)
    assert rerun["scores"] == before["scores"] and rerun["constant_baseline"] == before["constant_baseline"]
    assert rerun["captions"] == before["captions"]

    # 2. a stage recorded as started but not finished (killed) runs again and resumes through its job:
    #    the extraction finds every clip stored and extracts none, so the stages after it stay valid
    state_file = output / ".demo" / "features.json"
    state = json.loads(state_file.read_text())
    state["status"] = "running"
    state_file.write_text(json.dumps(state))
    code, stdout, _ = run_demo_main(output)
    assert code == 0, stdout
    features = summary_of(output)["stages"]["features"]
    assert features["status"] == "done" and features["resumed"] is True
    assert features["result"]["extracted"] == 0 and features["result"]["already_stored"] == features["result"]["clips"]
    assert statuses(output) == {**{s: "skipped" for s in STAGES}, "features": "done"}

    # 3. the same for training: the loop resumes from its last checkpoint (at the end), trains no step
    #    and leaves the model as it was
    trained_before = (output / "captioner" / "final" / "model.safetensors").read_bytes()
    state_file = output / ".demo" / "train.json"
    state = json.loads(state_file.read_text())
    state["status"] = "running"
    state_file.write_text(json.dumps(state))
    code, stdout, _ = run_demo_main(output)
    assert code == 0, stdout
    assert statuses(output) == {**{s: "skipped" for s in STAGES}, "train": "done"}
    assert summary_of(output)["stages"]["train"]["resumed"] is True
    assert (output / "captioner" / "final" / "model.safetensors").read_bytes() == trained_before

    # 4. a training setting changed: training and the stages after it are redone, the others kept
    code, stdout, _ = run_demo_main(output, "train.learning_rate=2.0e-03")
    assert code == 0, stdout
    assert statuses(output) == {"data": "skipped", "models": "skipped", "clap": "skipped", "features": "skipped",
                                "train": "done", "evaluate": "done", "caption": "done"}
    assert "settings changed" in stdout
    assert (output / "captioner" / "final" / "model.safetensors").read_bytes() != trained_before

    # 5. --force redoes the named stage (and the ones after it: here none)
    code, stdout, _ = run_demo_main(output, "train.learning_rate=2.0e-03", "--force", "caption")
    assert code == 0, stdout
    assert statuses(output) == {**{s: "skipped" for s in STAGES[:-1]}, "caption": "done"}
    assert "forced: starting it over" in stdout

    # 6. an output that went missing is remade although its record says done
    (output / "captions.csv").unlink()
    code, stdout, _ = run_demo_main(output, "train.learning_rate=2.0e-03")
    assert code == 0 and statuses(output)["caption"] == "done" and (output / "captions.csv").is_file()

    # 7. a moved run directory keeps its finished stages: nothing that decides a stage records where it was
    moved = tmp_path / "moved"
    shutil.move(output, moved)
    code, stdout, _ = run_demo_main(moved, "train.learning_rate=2.0e-03")
    assert code == 0, stdout
    assert set(statuses(moved).values()) == {"skipped"}
    assert summary_of(moved)["paths"]["trained_model"].startswith(str(moved))


# --------------------------------------------------------------------------------------------- bad usage


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--encodec", "facebook/encodec_24khz"], "give both --encodec and --clap"),
        (["--force", "everything"], "--force everything: unknown stage"),
        (["--config", "no/such/config.yaml"], "training config no/such/config.yaml not found"),
        (["not-an-override"], "expected key=value"),
        (["train.no_such_key=1"], "no_such_key"),
        (["output_dir=/elsewhere"], "the demo sets output_dir itself"),
        (["--device", "gpu0"], "--device must be auto, cpu, cuda"),
    ],
)
def test_bad_usage_is_refused_before_any_work(tmp_path, capsys, extra, message):
    output = tmp_path / "run"
    assert main([*QUICK_ARGS, "--output", str(output), *extra]) == 2
    assert message in capsys.readouterr().err
    # nothing was generated (the last case is only found once the train stage reads its config)
    if extra != ["train.no_such_key=1"]:
        assert not (output / "data").exists()


def test_force_redoes_the_named_stage_and_every_stage_after_it(tmp_path):
    from enclap.jobs.demo import DemoOptions, _Demo

    def forced(*stages: str) -> set[str]:
        return _Demo(DemoOptions(output=tmp_path, quick=True, force=list(stages))).forced

    assert forced() == set()
    assert forced("features") == {"features", "train", "evaluate", "caption"}
    assert forced("caption", "models") == set(STAGES[1:])
    assert forced("all") == set(STAGES)


def test_a_feature_model_that_cannot_be_found_is_named(tmp_path, capsys):
    missing = tmp_path / "no-encodec-here"
    args = [*QUICK_ARGS, "--output", str(tmp_path / "run"), "--encodec", str(missing), "--clap", str(tmp_path / "no-clap")]
    with torch_threads(1):
        assert main(args) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err


def test_deterministic_kernels_make_the_threaded_gather_backward_reproducible():
    """The masked-codec loss gathers encoder rows by index; its backward accumulates into shared rows."""
    import torch

    from enclap.jobs.demo import deterministic_kernels

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(8, 231, 64, generator=generator, requires_grad=True)
    rows_b = torch.randint(0, 8, (5000,), generator=generator)
    rows_t = torch.randint(0, 231, (5000,), generator=generator)
    weights = torch.randn(5000, 64, generator=generator)

    def gradient() -> torch.Tensor:
        hidden.grad = None
        (hidden[rows_b, rows_t] * weights).sum().backward()
        return hidden.grad.clone()

    # an independent computation of the same gradient: every gathered row adds its weights to its source row
    expected = torch.zeros_like(hidden, dtype=torch.float64)
    expected.index_put_((rows_b, rows_t), weights.double(), accumulate=True)
    before = torch.are_deterministic_algorithms_enabled()
    with torch_threads(2), deterministic_kernels():
        assert torch.are_deterministic_algorithms_enabled()
        grads = [gradient() for _ in range(5)]
    assert torch.are_deterministic_algorithms_enabled() == before  # restored
    assert all(torch.equal(g, grads[0]) for g in grads)
    assert torch.allclose(grads[0].double(), expected, atol=1e-5)
