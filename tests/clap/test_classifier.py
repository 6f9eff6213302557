"""The CLAP audio classifier: source-grouped splits, metrics against hand counts, save/load, training beats chance."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from enclap.clap.classification import (
    classification_metrics,
    classification_report,
    confusion_matrix,
    crossval_summary,
    write_classification_report,
)
from enclap.clap.classifier import ClapClassifierModel
from enclap.data.labelled import (
    LabelledClip,
    check_sources_disjoint,
    class_names,
    crossval_splits,
    esc50_fold_split,
    files_split,
    read_labelled,
    resolve_audio,
    split_by_source,
)
from enclap.errors import ConfigError, ManifestError
from enclap.jobs.train_classifier import load_classifier_data, load_classifier_train_config, main, train_classifier
from tests.audio_helpers import write_audio
from tests.clap.factories import TINY_CNN14, tiny_tower

REPO = Path(__file__).resolve().parents[2]
ESC50_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
CATEGORIES = ["dog", "rain", "siren", "clock_tick"]


def write_esc50_csv(path: Path, *, folds: int = 5, sources_per_class: int = 4, takes: tuple[int, ...] = (1, 2, 3)) -> Path:
    """An esc50.csv in ESC-50's layout: per fold and class, several source recordings of 1-3 takes each."""
    rows = []
    for fold in range(1, folds + 1):
        for target, category in enumerate(CATEGORIES):
            for s in range(sources_per_class):
                src = f"{fold}{target}{s:02d}"
                for take in range(takes[(fold + target + s) % len(takes)]):
                    rows.append([f"{fold}-{src}-{'ABC'[take]}-{target}.wav", fold, target, category, "False", src, "ABC"[take]])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ESC50_HEADER)
        writer.writerows(rows)
    return path


def sources(clips, indices) -> set[str]:
    return {clips[i].source for i in indices}


# ------------------------------------------------------------------------------------------ splits
def test_esc50_fold5_split_keeps_every_source_on_one_side_and_is_deterministic(tmp_path):
    path = write_esc50_csv(tmp_path / "meta" / "esc50.csv")
    clips = read_labelled(path)
    assert class_names(clips) == CATEGORIES  # ESC-50's target order, not alphabetical
    split = esc50_fold_split(clips, path, seed=3)
    assert {clips[i].fold for i in split.train} == {"1", "2", "3", "4"}
    held = [i for i, c in enumerate(clips) if c.fold == "5"]
    assert sorted(split.validation + split.test) == held
    assert not set(split.validation) & set(split.test)
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not sources(clips, split.sides()[a]) & sources(clips, split.sides()[b]), (a, b)
    # every clip of a source that is on a side is on that side
    for side in (split.validation, split.test):
        for src in sources(clips, side):
            assert {i for i in held if clips[i].source == src} <= set(side)
    # about half of fold 5 validates, and every class is on both sides (stratified by class)
    assert abs(len(split.validation) - len(held) / 2) <= 0.15 * len(held)
    assert {clips[i].label for i in split.validation} == {clips[i].label for i in split.test} == set(CATEGORIES)
    again = esc50_fold_split(read_labelled(path), path, seed=3)
    assert (again.train, again.validation, again.test) == (split.train, split.validation, split.test)
    others = [esc50_fold_split(clips, path, seed=s).validation for s in range(4, 10)]
    assert any(v != split.validation for v in others)  # the seed decides


def test_crossval_holds_out_each_fold_once_with_source_grouped_validation(tmp_path):
    path = write_esc50_csv(tmp_path / "esc50.csv")
    clips = read_labelled(path)
    splits = crossval_splits(clips, path, validation_share=0.125, seed=0)
    assert [s.name for s in splits] == [f"fold{k}" for k in range(1, 6)]
    for k, split in enumerate(splits, start=1):
        assert {clips[i].fold for i in split.test} == {str(k)}
        assert sorted(split.train + split.validation) == [i for i, c in enumerate(clips) if c.fold != str(k)]
        assert not sources(clips, split.train) & sources(clips, split.validation)
        assert not sources(clips, split.test) & (sources(clips, split.train) | sources(clips, split.validation))
        share = len(split.validation) / (len(split.train) + len(split.validation))
        assert 0.05 < share < 0.25
    assert sorted(i for s in splits for i in s.test) == list(range(len(clips)))


def test_generic_source_column_is_grouped_like_src_file(tmp_path):
    path = tmp_path / "labels.csv"
    rng = np.random.default_rng(0)
    lines = ["file,label,fold,source"]
    for n in range(60):
        src = f"rec{n // 3}"  # three clips per recording
        lines.append(f"clip{n}.wav,{'ab'[(n // 3) % 2]},{1 + (n // 3) % 2},{src}")
    path.write_text("\n".join(lines) + "\n")
    clips = read_labelled(path)
    assert clips[0].source == "rec0" and clips[0].group == "source:rec0"
    split = esc50_fold_split(clips, path, test_fold="2", seed=int(rng.integers(100)))
    assert not sources(clips, split.validation) & sources(clips, split.test)
    first, second = split_by_source(clips, list(range(len(clips))), 0.5, seed=1)
    assert not sources(clips, first) & sources(clips, second)
    assert Counter(len([i for i in first if clips[i].source == s]) for s in sources(clips, first)) == Counter({3: len(sources(clips, first))})


def test_files_split_refuses_a_source_on_two_sides():
    train = [LabelledClip("a.wav", "x", source="r1"), LabelledClip("b.wav", "y", source="r2")]
    test = [LabelledClip("c.wav", "x", source="r1")]
    with pytest.raises(ConfigError, match="'r1' in \\['test', 'train'\\]"):
        files_split({"train": ("train.csv", train), "test": ("test.csv", test)})
    clips, split = files_split({"train": ("train.csv", train), "test": ("test.csv", [LabelledClip("c.wav", "x", source="r3")])})
    check_sources_disjoint(clips, split)
    assert split.train == [0, 1] and split.test == [2]


# ------------------------------------------------------------------------------------------ bad inputs
def test_unknown_fold_layout_label_column_missing_and_missing_audio_are_clear_errors(tmp_path):
    three = write_esc50_csv(tmp_path / "three" / "esc50.csv", folds=3)
    with pytest.raises(ConfigError, match=r"fold '5'.*\['1', '2', '3'\]"):
        esc50_fold_split(read_labelled(three), three)
    no_fold = tmp_path / "nofold.csv"
    no_fold.write_text("file,label\na.wav,x\nb.wav,y\n")
    with pytest.raises(ManifestError, match="no fold column"):
        esc50_fold_split(read_labelled(no_fold), no_fold)
    no_label = tmp_path / "nolabel.csv"
    no_label.write_text("file,fold\na.wav,1\n")
    with pytest.raises(ManifestError, match=r"(?s)nolabel\.csv.*lacks a 'label' column"):
        read_labelled(no_label)
    leaking = tmp_path / "leak.csv"
    leaking.write_text("file,label,fold,source\na.wav,x,1,r1\nb.wav,x,2,r1\nc.wav,y,1,r2\nd.wav,y,2,r3\n")
    with pytest.raises(ManifestError, match="source 'r1' lies in several folds"):
        crossval_splits(read_labelled(leaking), leaking)
    audio = tmp_path / "audio"
    write_audio(audio / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.wav,x\nmissing_clip.wav,y\n")
    with pytest.raises(ManifestError, match=r"(?s)labels\.csv.*line 3: audio file 'missing_clip\.wav' not found"):
        resolve_audio(read_labelled(labels), audio, labels)
    # the job checks the same before training
    config = load_classifier_train_config(None, [f"output_dir={tmp_path / 'run'}", "split.mode=files", f"data.train_file={labels}",
                                                 f"data.audio_root={audio}", "model.init=random"])
    with pytest.raises(ManifestError, match="missing_clip.wav"):
        load_classifier_data(config)
    assert main(["--config", str(REPO / "cfg/clap/classifier_tiny.yaml"), "split.mode=folds"]) == 2


# ------------------------------------------------------------------------------------------ metrics
def test_confusion_matrix_and_per_class_accuracy_equal_hand_counts(tmp_path):
    labels = [0, 0, 1, 2, 2, 2, 0]
    predictions = [0, 1, 1, 2, 0, 2, 0]
    expected = np.array([[2, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, 3), expected)
    figures = classification_metrics(labels, predictions, 4)  # class 3 has no clip
    assert figures["accuracy"] == pytest.approx(5 / 7)
    np.testing.assert_allclose(figures["per_class_accuracy"][:3], [2 / 3, 1.0, 2 / 3])
    assert np.isnan(figures["per_class_accuracy"][3])
    assert figures["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    logits = np.eye(4)[predictions] * 3.0
    report = classification_report(labels, logits, ["a", "b", "c", "d"], files=[f"{i}.wav" for i in range(7)])
    assert report["confusion_matrix"]["matrix"][:3] == [row + [0] for row in expected.tolist()]
    assert report["per_class_accuracy"] == {"a": pytest.approx(2 / 3), "b": 1.0, "c": pytest.approx(2 / 3), "d": None}
    assert report["support"] == {"a": 3, "b": 1, "c": 3, "d": 0}
    out = write_classification_report(report, tmp_path / "eval", title="hand")
    saved = json.loads((out / "report.json").read_text())
    assert saved["accuracy"] == pytest.approx(5 / 7) and "predictions" not in saved
    png = (out / "confusion_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(out / "confusion_matrix.png").shape[0] >= 300
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert rows[1] == {"file": "1.wav", "label": "a", "predicted": "b"}
    summary = crossval_summary({"fold1": {"accuracy": 0.5, "balanced_accuracy": 0.5, "clips": 4},
                                "fold2": {"accuracy": 0.7, "balanced_accuracy": 0.6, "clips": 4}})
    assert summary["accuracy_mean"] == pytest.approx(0.6)
    assert summary["accuracy_sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))


# ------------------------------------------------------------------------------------------ the model
@pytest.mark.parametrize(("audio_encoder", "features"), [("cnn14", "projection"), ("htsat", "pooled"), ("htsat", "projection")])
def test_save_load_round_trip_gives_the_same_logits(tmp_path, audio_encoder, features):
    tower = tiny_tower(audio_encoder)
    model = ClapClassifierModel.from_tower(tower, ["x", "y", "z"], features=features, head="mlp").eval()
    assert not any(name.startswith("text") for name in model.state_dict())
    x = torch.randn(3, 16000) if audio_encoder == "cnn14" else torch.randn(3, 1, 1001, 64)
    if features == "projection":  # LAION's probe: the unnormalised projected embedding of the tower
        torch.testing.assert_close(model.audio_features(x), tower.audio_embedding(x))
    logits = model(x).logits
    model.save_pretrained(tmp_path / "clf")
    loaded = ClapClassifierModel.from_pretrained(tmp_path / "clf").eval()
    torch.testing.assert_close(loaded(x).logits, logits, rtol=0, atol=0)
    assert loaded.config.id2label == {0: "x", 1: "y", 2: "z"} and loaded.class_names == ["x", "y", "z"]


def test_freeze_encoder_trains_the_head_alone_and_keeps_the_encoder_in_eval_mode():
    model = ClapClassifierModel.from_tower(tiny_tower("cnn14"), ["x", "y"], freeze_encoder=True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    model.train()
    assert not model.audio_model.training and not model.audio_projection.training and model.classifier.training
    out = model(torch.randn(2, 16000), labels=torch.tensor([0, 1]))
    assert out.loss is not None and out.loss.requires_grad


def test_init_from_a_transformers_clap_model_directory(tmp_path):
    from transformers import ClapConfig, ClapModel

    from enclap.features.clap_embed import laion_feature_extractor
    from enclap.jobs.train_classifier import ClassifierModelConfig, load_encoder
    from tests.clap.factories import TINY_HTSAT, TINY_ROBERTA

    torch.manual_seed(0)
    text = {k: v for k, v in TINY_ROBERTA.items() if k != "model_type"}
    clap = ClapModel(ClapConfig(text_config=text, audio_config=dict(TINY_HTSAT), projection_dim=8)).eval()
    clap.save_pretrained(tmp_path / "clap")
    laion_feature_extractor(enable_fusion=False).save_pretrained(tmp_path / "clap")
    settings, state, described = load_encoder(ClassifierModelConfig(init="pretrained", init_from=str(tmp_path / "clap")))
    model = ClapClassifierModel.from_encoder(settings, state, ["a", "b"], where=described).eval()
    x = torch.randn(2, 1, 1001, 64)
    with torch.no_grad():
        pooled = clap.audio_model(input_features=x, is_longer=torch.zeros(2, 1, dtype=torch.bool)).pooler_output
        torch.testing.assert_close(model.audio_features(x), clap.audio_projection(pooled))


# ------------------------------------------------------------------------------------------ training
def _sound(kind: int, rng: np.random.Generator, sr: int = 16000, seconds: float = 1.0) -> np.ndarray:
    """Four classes that differ plainly: a low tone, a high tone, white noise, a click train."""
    t = np.arange(int(sr * seconds)) / sr
    amp = rng.uniform(0.2, 0.6)
    if kind == 0:
        x = np.sin(2 * np.pi * rng.uniform(300, 500) * t + rng.uniform(0, 6.28))
    elif kind == 1:
        x = np.sin(2 * np.pi * rng.uniform(3000, 4000) * t + rng.uniform(0, 6.28))
    elif kind == 2:
        x = rng.standard_normal(t.shape)
    else:
        x = np.zeros_like(t)
        period = int(sr / rng.uniform(8, 12))
        x[int(rng.integers(period))::period] = 1.0
    return (amp * x / max(np.abs(x).max(), 1e-9)).astype(np.float32)


def write_labelled_tones(root: Path, per_class: dict[str, int], seed: int = 0) -> dict[str, Path]:
    names = ["low tone", "high tone", "noise", "clicks"]
    rng = np.random.default_rng(seed)
    out = {}
    for split, count in per_class.items():
        lines = ["file,label"]
        for kind, name in enumerate(names):
            for n in range(count):
                file = f"{split}/{kind}_{n}.wav"
                write_audio(root / "audio" / file, _sound(kind, rng), 16000, subtype="FLOAT")
                lines.append(f"{file},{name}")
        out[split] = root / f"{split}.csv"
        out[split].write_text("\n".join(lines) + "\n")
    return out


TINY_OVERRIDES = [
    "model.init=random", "model.audio_encoder=cnn14", "model.projection=linear", "model.projection_dim=16", "model.clip_seconds=1.0",
    *[f"model.audio_config.{k}={v}" for k, v in TINY_CNN14.items()],
    "train.train_batch_size=16", "train.learning_rate=3e-3", "train.num_warmup_steps=2", "train.dataloader_num_workers=0",
    "train.progress=false", "train.report_to=none", "train.checkpoints_total_limit=1",
]


@pytest.mark.slow
def test_tiny_classifier_beats_chance_and_evaluate_reproduces_its_report(tmp_path, capsys):
    torch.set_num_threads(1)
    csvs = write_labelled_tones(tmp_path, {"train": 12, "valid": 4, "test": 8})
    out = tmp_path / "run"
    overrides = [f"output_dir={out}", "split.mode=files", f"data.train_file={csvs['train']}", f"data.validation_file={csvs['valid']}",
                 f"data.test_file={csvs['test']}", f"data.audio_root={tmp_path / 'audio'}", "train.num_train_epochs=15",
                 *TINY_OVERRIDES, "model.features=pooled", "train.learning_rate=1e-2"]
    # (a random encoder fine-tuned on 48 clips: over seeds 1115, 7, 3, 11 this scored 1.0, 0.81, 1.0, 0.72)
    runs = train_classifier(load_classifier_train_config(REPO / "cfg/clap/classifier_tiny.yaml", overrides))
    (run,) = runs
    assert run.result.status == "completed" and run.result.global_step == 45 and run.result.best_dir is not None
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert report["clips"] == 32 and report["classes"] == 4
    assert report["accuracy"] >= 0.6, report  # chance 0.25
    assert (out / "evaluation" / "confusion_matrix.png").stat().st_size > 1000
    assert sum(map(sum, report["confusion_matrix"]["matrix"])) == 32
    # the standalone evaluation of the saved best/ model gives the same figures
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "best"), "--labels", str(csvs["test"]), "--audio-root", str(tmp_path / "audio"),
                 "--output-dir", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["accuracy"] == report["accuracy"] and again["confusion_matrix"] == report["confusion_matrix"]
    assert "accuracy" in capsys.readouterr().out
    odd = tmp_path / "odd.csv"
    odd.write_text(f"file,label\n{csvs['test'].read_text().splitlines()[1].split(',')[0]},trumpet\n")
    assert main(["evaluate", "--model", str(out / "best"), "--labels", str(odd), "--audio-root", str(tmp_path / "audio")]) == 2
    assert "line 2: label 'trumpet' is not a class" in capsys.readouterr().err
    # rerunning the finished run trains nothing more
    rerun = train_classifier(load_classifier_train_config(REPO / "cfg/clap/classifier_tiny.yaml", overrides))
    assert rerun[0].result.global_step == 45 and rerun[0].result.resumed_from is not None


@pytest.mark.slow
def test_crossval_writes_every_fold_and_the_mean_and_sd(tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    lines = ["file,label,fold,source"]
    names = ["low tone", "high tone", "noise", "clicks"]
    for fold in (1, 2, 3):
        for kind, name in enumerate(names):
            for s in range(3):
                for take in range(2):
                    file = f"{fold}_{kind}_{s}_{take}.wav"
                    write_audio(tmp_path / "audio" / file, _sound(kind, rng), 16000, subtype="FLOAT")
                    lines.append(f"{file},{name},{fold},src{fold}{kind}{s}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "cv"
    overrides = [f"output_dir={out}", "split.mode=crossval", f"data.labels_file={tmp_path / 'labels.csv'}",
                 f"data.audio_root={tmp_path / 'audio'}", "split.crossval_validation_share=0.25", "train.max_train_steps=4",
                 *TINY_OVERRIDES]
    runs = train_classifier(load_classifier_train_config(None, overrides))
    assert [r.split for r in runs] == ["fold1", "fold2", "fold3"]
    summary = json.loads((out / "crossval.json").read_text())
    accuracies = [json.loads((out / f"fold{k}" / "evaluation" / "report.json").read_text())["accuracy"] for k in (1, 2, 3)]
    assert [summary["folds"][f"fold{k}"]["accuracy"] for k in (1, 2, 3)] == accuracies
    assert summary["accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert summary["accuracy_sd"] == pytest.approx(np.std(accuracies, ddof=1))
    assert all(summary["folds"][f"fold{k}"]["clips"] == 24 for k in (1, 2, 3))


def write_esc50_tree(root: Path, rng: np.random.Generator) -> Path:
    """A miniature ESC-50 (meta/esc50.csv + audio/) whose four classes are the tone / noise / click kinds."""
    path = write_esc50_csv(root / "meta" / "esc50.csv", sources_per_class=2, takes=(1, 2))
    for clip in read_labelled(path):
        write_audio(root / "audio" / clip.file, _sound(CATEGORIES.index(clip.label), rng), 16000, subtype="FLOAT")
    return path


@pytest.mark.slow
def test_esc50_config_linear_probe_on_a_tower_directory_changes_the_head_alone(tmp_path):
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    esc50 = write_esc50_tree(tmp_path / "ESC-50", np.random.default_rng(2))
    tower = tiny_tower("cnn14")
    tower.save_pretrained(tmp_path / "tower")
    out = tmp_path / "run"
    overrides = [f"output_dir={out}", f"data.labels_file={esc50}", f"data.audio_root={tmp_path / 'ESC-50' / 'audio'}",
                 f"model.init_from={tmp_path / 'tower'}", "train.max_train_steps=3", "train.dataloader_num_workers=0",
                 "train.report_to=none", "train.progress=false", "train.num_warmup_steps=0", "train.learning_rate=1e-2"]
    config = load_classifier_train_config(REPO / "cfg/clap/classifier_esc50.yaml", overrides)
    assert config.model.freeze_encoder and config.model.features == "projection" and config.split.mode == "esc50_fold5"
    (run,) = train_classifier(config)
    assert run.result.status == "completed" and run.test_report is not None
    assert run.test_report["class_names"] == CATEGORIES
    fold5 = [c for c in read_labelled(esc50) if c.fold == "5"]
    assert 0 < run.test_report["clips"] < len(fold5)
    trained = load_file(str(out / "final" / "model.safetensors"))
    start = tower.state_dict()
    for key, value in trained.items():
        if key.startswith("classifier."):
            continue
        torch.testing.assert_close(value, start[key], rtol=0, atol=0, msg=key)  # weights and batch-norm statistics alike
    from accelerate.utils import set_seed

    set_seed(config.seed)  # the head the job started from
    untrained = ClapClassifierModel.from_tower(tower, CATEGORIES, freeze_encoder=True).classifier.weight.detach()
    assert untrained.shape == trained["classifier.weight"].shape
    assert not torch.allclose(trained["classifier.weight"], untrained)  # the head trained


@pytest.mark.slow
def test_an_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    import os
    import signal

    from safetensors.torch import load_file

    from enclap.training.classifier import ClassifierLossModule

    torch.set_num_threads(1)
    csvs = write_labelled_tones(tmp_path, {"train": 6, "valid": 2})
    common = ["split.mode=files", f"data.train_file={csvs['train']}", f"data.validation_file={csvs['valid']}",
              f"data.audio_root={tmp_path / 'audio'}", *TINY_OVERRIDES, "train.lr_scheduler_type=constant", "train.num_warmup_steps=0",
              "train.train_batch_size=8", "train.max_train_steps=5", "train.checkpoints_total_limit=0"]
    whole = tmp_path / "whole"
    train_classifier(load_classifier_train_config(None, [f"output_dir={whole}", *common]))
    parts = tmp_path / "parts"
    forward, calls = ClassifierLossModule.forward, []

    def forward_then_stop(self, *args, **kwargs):
        calls.append(self.training)
        if sum(calls) == 2:  # the second training forward: stopped mid-epoch (3 steps per epoch), as a killed job is
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ClassifierLossModule, "forward", forward_then_stop)
    first = train_classifier(load_classifier_train_config(None, [f"output_dir={parts}", *common]))
    assert first[0].result.status == "interrupted" and first[0].result.global_step == 2
    monkeypatch.setattr(ClassifierLossModule, "forward", forward)
    second = train_classifier(load_classifier_train_config(None, [f"output_dir={parts}", *common]))
    assert second[0].result.resumed_from is not None and second[0].result.global_step == 5
    a, b = load_file(str(whole / "final" / "model.safetensors")), load_file(str(parts / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
