"""enclap-eval-clap zeroshot-suite: each manifest style parses, the table equals each set evaluated alone, bad input is named."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from enclap.clap.embedder import ClapTowerEmbedder
from enclap.clap.evaluation import evaluate_zero_shot, main
from enclap.clap.zeroshot_suite import (
    SuiteSet,
    ZeroShotSuiteConfig,
    parse_set,
    read_labelled_set,
    readable_label,
    run_suite,
)
from enclap.errors import ConfigError, ManifestError

from .factories import tiny_tower

RATE = 16000
TEMPLATES = ("a {label}", "{label} is heard")



def _core(rows):
    """The rows' file, label and fold (the readers also give source, target and line)."""
    return [{k: r[k] for k in ("file", "label", "fold")} for r in rows]

def _clip(path: Path, seed: int) -> None:
    """Half a second of a seeded tone plus noise: every clip different, so accuracies are not all alike."""
    rng = np.random.default_rng(seed)
    t = np.arange(RATE // 2) / RATE
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) + 0.05 * rng.standard_normal(t.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), RATE)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    seed = iter(range(1000))
    # ESC-50: meta/esc50.csv, audio/<filename>, folds 1-2
    esc = root / "ESC-50-master"
    esc_rows = [(f"{fold}-{i}-A-{c}.wav", fold, c, label) for fold in (1, 2) for i, (c, label) in
                enumerate([(0, "dog"), (1, "crying_baby"), (2, "door_wood_knock"), (0, "dog")])]
    (esc / "meta").mkdir(parents=True)
    with open(esc / "meta" / "esc50.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for name, fold, target, label in esc_rows:
            w.writerow([name, fold, target, label, "False", "1", "A"])
            _clip(esc / "audio" / name, next(seed))
    # UrbanSound8K: metadata/UrbanSound8K.csv, audio/fold<k>/<slice_file_name>
    us = root / "UrbanSound8K"
    us_rows = [(f"{100 + i}-{fold}-0-0.wav", fold, c, label) for fold in (1, 2, 3) for i, (c, label) in
               enumerate([(9, "street_music"), (3, "dog_bark"), (8, "siren")])]
    (us / "metadata").mkdir(parents=True)
    with open(us / "metadata" / "UrbanSound8K.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        for name, fold, class_id, label in us_rows:
            w.writerow([name, name.split("-")[0], "0.0", "4.0", "1", fold, class_id, label])
            _clip(us / "audio" / f"fold{fold}" / name, next(seed))
    # TUT Acoustic Scenes 2017: meta.txt and evaluation_setup/fold<k>_evaluate.txt, tab-separated
    tut = root / "TUT-acoustic-scenes-2017-development"
    scenes = ["beach", "cafe/restaurant", "city_center"]
    tut_rows = [(f"audio/{s[0]}{i:03d}_0_10.wav", s) for i, s in enumerate(scenes * 2)]
    for name, _ in tut_rows:
        _clip(tut / name, next(seed))
    (tut / "meta.txt").write_text("".join(f"{n}\t{s}\t{n[6:10]}\n" for n, s in tut_rows))
    (tut / "evaluation_setup").mkdir()
    (tut / "evaluation_setup" / "fold1_evaluate.txt").write_text("".join(f"{n}\t{s}\n" for n, s in tut_rows[:3]))
    (tut / "evaluation_setup" / "fold2_evaluate.txt").write_text("".join(f"{n}\t{s}\n" for n, s in tut_rows[3:]))
    # generic file,label
    generic = root / "generic"
    generic_rows = [(f"test/clip_{i}.wav", label) for i, label in enumerate(["beeping", "siren", "bell", "beeping"])]
    for name, _ in generic_rows:
        _clip(generic / "audio" / name, next(seed))
    (generic / "labels.csv").write_text("file,label\n" + "".join(f"{n},{label}\n" for n, label in generic_rows))
    return {"root": root, "esc": esc, "us": us, "tut": tut, "generic": generic,
            "esc_rows": esc_rows, "us_rows": us_rows, "tut_rows": tut_rows, "generic_rows": generic_rows}


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("towers")
    paths = []
    for seed in (0, 1):
        tiny_tower(seed=seed).save_pretrained(root / f"tower{seed}")
        paths.append(root / f"tower{seed}")
    return paths


def test_readable_labels():
    assert readable_label("street_music") == "street music"
    assert readable_label("dog") == "dog"
    assert readable_label("cafe/restaurant") == "cafe or restaurant"
    assert readable_label(" door_wood-knock ") == "door wood knock"


def test_each_manifest_style_parses(sets):
    esc = read_labelled_set(sets["esc"] / "meta" / "esc50.csv")
    assert esc.style == "esc50" and esc.default_audio_root == sets["esc"]
    assert _core(esc.rows) == [{"file": n, "label": label, "fold": str(f)} for n, f, _, label in sets["esc_rows"]]
    assert read_labelled_set(sets["esc"]).rows == esc.rows  # the data set's root finds its manifest
    assert [(r["source"], r["target"]) for r in esc.rows] == [("1", str(c)) for _, _, c, _ in sets["esc_rows"]]  # src_file

    us = read_labelled_set(sets["us"] / "metadata" / "UrbanSound8K.csv")
    assert us.style == "urbansound8k" and us.default_audio_root == sets["us"]
    assert _core(us.rows) == [{"file": f"fold{f}/{n}", "label": label, "fold": str(f)} for n, f, _, label in sets["us_rows"]]
    assert [(r["source"], r["target"]) for r in us.rows] == [(n.split("-")[0], str(c)) for n, _, c, _ in sets["us_rows"]]  # fsID

    meta = read_labelled_set(sets["tut"] / "meta.txt")
    assert meta.style == "tut" and meta.default_audio_root == sets["tut"]
    assert _core(meta.rows) == [{"file": n, "label": s, "fold": ""} for n, s in sets["tut_rows"]]
    folds = read_labelled_set(sets["tut"] / "evaluation_setup")
    assert folds.default_audio_root == sets["tut"]
    assert _core(folds.rows) == [{"file": n, "label": s, "fold": "1" if i < 3 else "2"} for i, (n, s) in enumerate(sets["tut_rows"])]
    one_fold = read_labelled_set(sets["tut"] / "evaluation_setup" / "fold2_evaluate.txt")
    assert [r["file"] for r in one_fold.rows] == [n for n, _ in sets["tut_rows"][3:]] and one_fold.default_audio_root == sets["tut"]

    generic = read_labelled_set(sets["generic"] / "labels.csv")
    assert generic.style == "generic" and _core(generic.rows) == [{"file": n, "label": label, "fold": ""} for n, label in sets["generic_rows"]]


def test_dcase_2018_style_header_is_skipped(tmp_path):
    meta = tmp_path / "meta.csv"
    meta.write_text("filename\tscene_label\tidentifier\tsource_label\naudio/airport-a.wav\tairport\tbarcelona-0\ta\n")
    assert _core(read_labelled_set(meta).rows) == [{"file": "audio/airport-a.wav", "label": "airport", "fold": ""}]


def _hand_zero_shot(tower_dir: Path, rows: list[dict[str, str]], audio_root: Path) -> tuple[float, float]:
    """Top-1 over all clips and the mean of per-fold top-1, computed densely from the embedder's raw outputs."""
    from enclap.audio import load_audio

    embedder = ClapTowerEmbedder.from_pretrained(tower_dir)
    classes = sorted({r["label"] for r in rows})
    prompts = [[t.format(label=readable_label(c)) for t in TEMPLATES] for c in classes]
    class_emb = np.stack([embedder.embed_texts(p).astype(np.float64).mean(axis=0) for p in prompts])
    class_emb /= np.linalg.norm(class_emb, axis=1, keepdims=True)
    audio = embedder.embed([load_audio(audio_root / r["file"], RATE)[0] for r in rows]).astype(np.float64)
    scores = audio @ class_emb.T
    truth = np.array([classes.index(r["label"]) for r in rows])
    # a hit: the true class strictly above every other (ties count against the clip)
    hit = np.array([all(scores[i, truth[i]] > scores[i, j] for j in range(len(classes)) if j != truth[i]) for i in range(len(rows))])
    folds = sorted({r["fold"] for r in rows})
    per_fold = [hit[[r["fold"] == f for r in rows]].mean() for f in folds]
    return float(hit.mean()), float(np.mean(per_fold))


def test_the_table_equals_each_set_evaluated_alone(sets, towers, tmp_path, capsys):
    argv = ["zeroshot-suite", "--model", str(towers[0]), "--model", str(towers[1]),
            "--set", f"esc50={sets['esc']}",  # a data set's root: its manifest and audio found there
            "--set", f"us8k={sets['us'] / 'metadata' / 'UrbanSound8K.csv'}",
            "--set", f"tut={sets['tut'] / 'evaluation_setup'}",
            "--set", f"generic={sets['generic'] / 'labels.csv'}:{sets['generic'] / 'audio'}",
            "--output", str(tmp_path / "table.json"), "--output", str(tmp_path / "table.csv")]
    for t in TEMPLATES:
        argv += ["--template", t]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| set | model | clips | classes | chance |") and printed.count("\n| ") == 2 * 4  # header, rule, one row per set and model
    result = json.loads((tmp_path / "table.json").read_text())
    rows = {(r["set"], r["model"]): r for r in result["rows"]}
    assert len(rows) == 8
    # a set's towers side by side, sets in the order given
    assert [(r["set"], r["model"]) for r in result["rows"]] == [(s, str(t)) for s in ("esc50", "us8k", "tut", "generic") for t in towers]
    with open(tmp_path / "table.csv", newline="") as fh:
        table_csv = {(r["set"], r["model"]): r for r in csv.DictReader(fh)}
    alone = {
        "esc50": (sets["esc"] / "meta" / "esc50.csv", sets["esc"] / "audio"),
        "us8k": (sets["us"] / "metadata" / "UrbanSound8K.csv", sets["us"] / "audio"),
        "tut": (sets["tut"] / "evaluation_setup", sets["tut"]),
        "generic": (sets["generic"] / "labels.csv", sets["generic"] / "audio"),
    }
    for tower in towers:
        embedder = ClapTowerEmbedder.from_pretrained(tower)
        for name, (labels, root) in alone.items():
            report = evaluate_zero_shot(embedder, labels, root, TEMPLATES)
            row = rows[(name, str(tower))]
            assert row["clips"] == report["clips"] and row["classes"] == report["classes"]
            assert row["chance_top1"] == pytest.approx(1 / report["classes"])
            assert row["top1"] == report["metrics"]["top1"] and row["top5"] == report["metrics"]["top5"]
            if "fold_mean" in report:
                assert row["fold_mean_top1"] == report["fold_mean"]["top1"] and row["folds"] == len(report["folds"])
            else:
                assert row["fold_mean_top1"] is None and row["folds"] == 0
            assert float(table_csv[(name, str(tower))]["top1"]) == pytest.approx(row["top1"])
    assert {r["folds"] for r in result["rows"] if r["set"] == "us8k"} == {3}
    assert {r["classes"] for r in result["rows"] if r["set"] == "esc50"} == {3}
    # independently of evaluate_zero_shot: the figures by hand, from raw embeddings
    for tower in towers:
        top1, fold_mean = _hand_zero_shot(tower, read_labelled_set(sets["us"]).rows, sets["us"] / "audio")
        assert rows[("us8k", str(tower))]["top1"] == pytest.approx(top1)
        assert rows[("us8k", str(tower))]["fold_mean_top1"] == pytest.approx(fold_mean)
    # the two towers are different models: not every figure of the table is alike
    assert len({(r["top1"], r["fold_mean_top1"]) for r in result["rows"]}) > 2


def test_a_yaml_suite_gives_the_same_table(sets, towers, tmp_path, capsys):
    config = tmp_path / "suite.yaml"
    config.write_text(
        f"models: [{towers[0]}]\ntemplates: {json.dumps(list(TEMPLATES))}\nsets:\n"
        f"  - {{name: tut, labels: {sets['tut'] / 'meta.txt'}}}\n"
        f"  - {{name: esc50, labels: {sets['esc'] / 'meta' / 'esc50.csv'}, audio_root: {sets['esc'] / 'audio'}}}\n"
    )
    assert main(["zeroshot-suite", "--config", str(config), "--output", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "| model |" not in out  # one model: no model column
    from_yaml = json.loads((tmp_path / "t.json").read_text())["rows"]
    direct = run_suite(ZeroShotSuiteConfig(sets=[SuiteSet("tut", str(sets["tut"] / "meta.txt")),
                                                 SuiteSet("esc50", str(sets["esc"]), "")],
                                           models=[str(towers[0])], templates=list(TEMPLATES)))["rows"]
    assert [(r["set"], r["top1"], r["top5"]) for r in from_yaml] == [(r["set"], r["top1"], r["top5"]) for r in direct]
    # the command line's --set adds to the file's sets
    assert main(["zeroshot-suite", "--config", str(config), "--set", f"us8k={sets['us']}"]) == 0
    assert "| us8k |" in capsys.readouterr().out


def test_bad_manifests_are_named(sets, towers, tmp_path, capsys):
    cases = {
        "unknown.csv": ("path,name\na.wav,x\n", "expected ESC-50"),
        "UrbanSound8K.csv": ("slice_file_name,fsID,start,end,salience,fold,classID,class\na.wav,1,0,1,1,x,3,dog_bark\n", "fold 'x'"),
        "meta.txt": ("audio/a.wav\tbeach\naudio/b.wav\n", "line 2: expected filename<TAB>scene_label"),
        "empty.csv": ("file,label\n", "no rows"),
        "esc50.csv": ("filename,fold,target,category\n1-1-A-0.wav,1,0,\n", "empty filename or category"),
    }
    for name, (text, reason) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ManifestError, match=reason) as info:
            read_labelled_set(path)
        assert str(path) in str(info.value)
    (tmp_path / "latin1.csv").write_bytes("file,label\nä.wav,x\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="latin1.csv"):
        read_labelled_set(tmp_path / "latin1.csv")
    with pytest.raises(ManifestError, match="no such file"):
        read_labelled_set(tmp_path / "absent.csv")
    (tmp_path / "not-a-dataset").mkdir()
    with pytest.raises(ManifestError, match="without a label manifest"):
        read_labelled_set(tmp_path / "not-a-dataset")

    # a missing clip fails before any model is loaded, naming the manifest and the clip
    labels = tmp_path / "missing.csv"
    labels.write_text("file,label\ntest/clip_0.wav,beeping\ntest/nope.wav,bell\n")
    argv = ["zeroshot-suite", "--model", str(tmp_path / "no-such-tower"), "--set", f"ok={sets['esc']}",
            "--set", f"broken={labels}:{sets['generic'] / 'audio'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "missing.csv" in err and "test/nope.wav" in err and "no-such-tower" not in err
    assert main(["zeroshot-suite", "--model", str(towers[0]), "--set", f"bad={tmp_path / 'unknown.csv'}"]) == 2
    assert "unknown.csv" in capsys.readouterr().err

    with pytest.raises(ConfigError, match="NAME=LABELS"):
        parse_set("just-a-path.csv")
    assert main(["zeroshot-suite", "--set", f"a={sets['esc']}"]) == 2
    assert "no models" in capsys.readouterr().err
    assert main(["zeroshot-suite", "--model", str(towers[0]), "--set", f"a={sets['esc']}", "--set", f"a={sets['us']}"]) == 2
    assert "unique" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text("sets: [{name: a, labels: x.csv, root: y}]\n")
    assert main(["zeroshot-suite", "--config", str(config), "--model", str(towers[0])]) == 2
    assert "bad.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["demo.yaml", "downstream.yaml"])
def test_shipped_suite_configs_load(name):
    from enclap.config import load_config

    config = load_config(ZeroShotSuiteConfig, Path(__file__).resolve().parents[2] / "cfg" / "zeroshot" / name)
    assert config.sets and all(s.name and s.labels for s in config.sets)
    config.models = config.models or ["a-tower"]
    config.check()
