"""evaluate.py end to end on a tiny random checkpoint: features and audio agree, resume, honest failures."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from enclap.jobs.evaluate import main

from ..audio_helpers import tone, write_audio
from ..conftest import REPO_ROOT, torch_threads
from ..pipeline_factory import build_tiny_checkpoint

METRICS = "bleu_1,bleu_4,rouge_l,cider_d"
NUM_CLIPS = 5



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint, audio + an evaluation CSV in EnCLAP's format, and the same clips' features in both layouts."""
    from enclap.features.store import ShardWriter
    from enclap.pipeline import CaptioningPipeline

    root = tmp_path_factory.mktemp("eval")
    ckpt = build_tiny_checkpoint(root / "ckpt")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(NUM_CLIPS):
        x = tone(0.5 + 0.25 * i, 22050, freq=150.0 * (i + 1), amplitude=0.3)
        x = (x + 0.05 * rng.standard_normal(len(x))).astype(np.float32)
        write_audio(root / "audio" / "test" / f"clip {i}.wav", x, 22050, subtype="PCM_16")
        rows.append([f"test/clip {i}.npy"] + [f"a sound number {i} version {j}" for j in range(5)])
    test_csv = root / "test.csv"
    with open(test_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_path"] + [f"caption_{j + 1}" for j in range(5)])
        writer.writerows(rows)

    pipeline = CaptioningPipeline.from_pretrained(ckpt, device="cpu")
    paths = [root / "audio" / "test" / f"clip {i}.wav" for i in range(NUM_CLIPS)]
    # Features must be computed under the same thread count as the runs they are compared with:
    # float reductions differ across thread counts, and a random model amplifies any difference.
    with torch_threads(1):
        features = pipeline.features.extract_files(paths)
    with ShardWriter(root / "store", shard_size=2) as writer:
        for i, feats in enumerate(features):
            writer.add(f"test/clip {i}", feats)
    for i, feats in enumerate(features):
        for kind, array in (("encodec", feats.codes.astype(np.int64)), ("clap", feats.clap[None])):
            target = root / kind / "test" / f"clip {i}.npy"
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, array)
    return {"root": root, "ckpt": ckpt, "csv": test_csv}


def _run(setup, out_name, *extra):
    save = setup["root"] / "out" / f"{out_name}.csv"
    args = ["--ckpt", str(setup["ckpt"]), "--test_csv", str(setup["csv"]), "--save_path", str(save), "--metrics", METRICS, "-b", "2", *extra]
    code = main(args)
    return code, save


def _predictions(path):
    with open(path, newline="") as f:
        return [(r["file_path"], r["prediction"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_features_npy_layout_and_audio_give_identical_predictions(setup):
    root = setup["root"]
    code_a, audio = _run(setup, "audio", "--audio_path", str(root / "audio"))
    code_s, store = _run(setup, "store", "--features", str(root / "store"))
    code_n, npy = _run(
        setup, "npy", "--from_preprocessed", "--encodec_path", str(root / "encodec"), "--clap_path", str(root / "clap")
    )
    assert code_a == code_s == code_n == 0
    assert _predictions(audio) == _predictions(store) == _predictions(npy)
    assert [p for p, _ in _predictions(audio)] == [f"test/clip {i}.npy" for i in range(NUM_CLIPS)]
    scores = [json.loads(p.with_suffix(".scores.json").read_text()) for p in (audio, store, npy)]
    assert scores[0]["scores"] == scores[1]["scores"] == scores[2]["scores"]
    assert set(scores[0]["scores"]) == set(METRICS.split(","))
    assert scores[0]["num_clips"] == NUM_CLIPS and scores[0]["input"] == "audio"
    with open(audio, newline="") as f:
        header = next(csv.reader(f))
    assert header == ["file_path", "prediction"] + [f"caption_{j + 1}" for j in range(5)]
    assert not audio.with_name(audio.name + ".partial").exists()


@pytest.mark.slow
def test_scores_equal_the_scorer_on_the_saved_predictions_and_per_clip(setup):
    from enclap.metrics import CaptionScorer

    code, path = _run(setup, "perclip", "--features", str(setup["root"] / "store"), "--per_clip")
    assert code == 0
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    candidates = [r["prediction"] for r in rows]
    references = [[r[f"caption_{j + 1}"] for j in range(5)] for r in rows]
    expected = CaptionScorer(METRICS).score(candidates, references, per_clip=True)
    saved = json.loads(path.with_suffix(".scores.json").read_text())["scores"]
    assert saved == pytest.approx(expected.corpus, abs=1e-9)
    for name in METRICS.split(","):
        assert [float(r[name]) for r in rows] == pytest.approx(expected.per_clip[name], abs=1e-6)


def _interrupt_on_call(monkeypatch, call: int):
    """Make the pipeline's ``call``-th captioning call raise KeyboardInterrupt (a user pressing Ctrl-C)."""
    from enclap.pipeline import CaptioningPipeline

    original = CaptioningPipeline.caption_features
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CaptioningPipeline, "caption_features", interrupted)


@pytest.mark.slow
def test_resume_keeps_finished_predictions_and_drops_a_cut_line(setup, monkeypatch):
    store = str(setup["root"] / "store")
    _interrupt_on_call(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _run(setup, "resume", "--features", store)
    monkeypatch.undo()
    save = setup["root"] / "out" / "resume.csv"
    partial = save.with_name(save.name + ".partial")
    with open(partial, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "#settings" and len(rows) == 3  # header + the first batch of 2
    assert not save.exists()
    # Mark one finished prediction, so that recomputing it would show; and leave a line cut by a kill.
    rows[1][1] = "PRESET"
    with open(partial, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with open(partial, "a") as f:
        f.write("test/clip 4.npy,half a capt")

    code, _ = _run(setup, "resume", "--features", store)
    assert code == 0
    predictions = dict(_predictions(save))
    _, fresh = _run(setup, "fresh", "--features", store)
    fresh_predictions = dict(_predictions(fresh))
    assert predictions[rows[1][0]] == "PRESET"
    for key, caption in fresh_predictions.items():
        if key != rows[1][0]:
            assert predictions[key] == caption, key
    assert not partial.exists()


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(setup, monkeypatch, capsys):
    store = str(setup["root"] / "store")
    _interrupt_on_call(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _run(setup, "other", "--features", store)
    monkeypatch.undo()
    code, save = _run(setup, "other", "--features", store, "--num_beams", "2")
    assert code == 2 and "other settings (pipeline)" in capsys.readouterr().err
    assert save.with_name(save.name + ".partial").exists()  # nothing lost
    code, _ = _run(setup, "other", "--features", store, "--num_beams", "2", "--no_resume")
    assert code == 0


@pytest.mark.slow
def test_bad_features_are_named(setup, tmp_path, capsys):
    root = setup["root"]
    for kind in ("encodec", "clap"):
        target = tmp_path / kind / "test"
        target.mkdir(parents=True)
        for i in range(NUM_CLIPS):
            array = np.load(root / kind / "test" / f"clip {i}.npy")
            if kind == "clap" and i == 2:
                array[0, 5] = np.nan
            np.save(target / f"clip {i}.npy", array)
    code = main(["--ckpt", str(setup["ckpt"]), "--test_csv", str(setup["csv"]), "--from_preprocessed",
                 "--encodec_path", str(tmp_path / "encodec"), "--clap_path", str(tmp_path / "clap"),
                 "--save_path", str(tmp_path / "preds.csv"), "--metrics", METRICS, "-b", "2"])
    assert code == 2
    assert "test/clip 2.npy: CLAP embedding holds NaN" in capsys.readouterr().err


@pytest.mark.slow
def test_missing_audio_fails_naming_the_clip_and_keeps_work(setup, tmp_path, capsys):
    audio = tmp_path / "audio"
    (audio / "test").mkdir(parents=True)
    for i in (0, 1, 2, 4):  # clip 3 is missing
        src = setup["root"] / "audio" / "test" / f"clip {i}.wav"
        (audio / "test" / src.name).write_bytes(src.read_bytes())
    save = tmp_path / "preds.csv"
    code = main(["--ckpt", str(setup["ckpt"]), "--test_csv", str(setup["csv"]), "--audio_path", str(audio),
                 "--save_path", str(save), "--metrics", METRICS])
    assert code == 2
    err = capsys.readouterr().err
    assert "clip 3" in err and "could not be captioned" in err
    partial = save.with_name(save.name + ".partial")
    with open(partial, newline="") as f:
        assert len(list(csv.reader(f))) == 1 + NUM_CLIPS - 1  # the settings header + every other clip
    assert not save.exists()


def test_usage_errors_are_clear(setup, capsys):
    code = main(["--ckpt", str(setup["ckpt"]), "--test_csv", str(setup["csv"]), "--from_preprocessed"])
    assert code == 2 and "--encodec_path and --clap_path" in capsys.readouterr().err
    code = main(["--ckpt", str(setup["ckpt"]), "--test_csv", str(setup["csv"])])
    assert code == 2 and "--audio_path" in capsys.readouterr().err
    code = main(["--ckpt", str(setup["ckpt"]), "--test_csv", str(setup["root"] / "nope.csv"), "--features", "x"])
    assert code == 2 and "nope.csv" in capsys.readouterr().err


def test_entry_point_help():
    out = subprocess.run([sys.executable, str(REPO_ROOT / "evaluate.py"), "--help"], capture_output=True, text=True, check=True)
    for flag in ("--ckpt", "--clap_ckpt", "--test_csv", "--from_preprocessed", "--encodec_path", "--clap_path", "--audio_path", "--save_path"):
        assert flag in out.stdout
