"""The synthetic data set: deterministic files, EnCLAP manifest format, captions true of the audio, learnable."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from enclap.audio import load_audio
from enclap.config import load_config
from enclap.data.manifest import manifest_layout, read_caption_pairs, read_manifest, resolve_audio_path, validate_manifest
from enclap.data.synthetic import (
    STRUCTURES,
    SyntheticConfig,
    describe_scene,
    generate_dataset,
    main,
    make_clip,
    read_scenes,
    sample_scene,
)
from enclap.errors import ConfigError

SMALL = dict(num_train=6, num_valid=3, num_test=3, seconds=3.0, sample_rate=16000)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- the files


def test_same_config_gives_byte_identical_files(tmp_path):
    cfg = SyntheticConfig(**SMALL, seed=3)
    generate_dataset(tmp_path / "a", cfg)
    generate_dataset(tmp_path / "b", SyntheticConfig(**SMALL, seed=3))
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert len(a) == 6 + 3 + 3 + 3 + 3 + 3 + 1  # wavs, csvs, meta, labels, config.json
    assert a == b
    generate_dataset(tmp_path / "c", SyntheticConfig(**SMALL, seed=4))
    c = tree(tmp_path / "c")
    assert c.keys() == a.keys()
    assert sum(a[k] != c[k] for k in a if k.endswith(".wav")) == 12


def test_regenerating_rewrites_nothing_and_follows_a_smaller_config(tmp_path):
    out = tmp_path / "d"
    paths = generate_dataset(out, SyntheticConfig(**SMALL))
    first = tree(out)
    wav = out / "audio" / "train" / "clip_0001.wav"
    os.utime(wav, (1_000_000, 1_000_000))
    generate_dataset(out, SyntheticConfig(**SMALL))
    assert tree(out) == first
    assert wav.stat().st_mtime == 1_000_000  # same content: not rewritten
    wav.write_bytes(b"damaged")
    generate_dataset(out, SyntheticConfig(**SMALL))
    assert tree(out) == first  # a damaged file is put right
    smaller = dict(SMALL, num_train=4)
    generate_dataset(out, SyntheticConfig(**smaller))
    assert sorted(p.name for p in (out / "audio" / "train").iterdir()) == [f"clip_000{i}.wav" for i in range(1, 5)]
    assert len(read_manifest(paths["train"])) == 4
    generate_dataset(tmp_path / "fresh", SyntheticConfig(**smaller))
    assert tree(out) == tree(tmp_path / "fresh")


def test_growing_a_split_keeps_its_clips():
    small = make_clip(SyntheticConfig(**SMALL), "train", 2)
    large = make_clip(SyntheticConfig(**dict(SMALL, num_train=500)), "train", 2)
    assert small.file_path == large.file_path == "train/clip_0003.npy"
    assert np.array_equal(small.audio, large.audio) and small.captions == large.captions


def test_splits_columns_and_paraphrases(tmp_path):
    cfg = SyntheticConfig(**SMALL)
    paths = generate_dataset(tmp_path, cfg)
    assert set(paths) == {"train", "valid", "test", "audio_root"}
    assert paths["audio_root"] == tmp_path / "audio"
    assert manifest_layout(paths["train"]) == "train"
    assert len(read_caption_pairs(paths["train"])) == 6 * 5
    assert paths["train"].read_text().splitlines()[0] == "file_path,caption"
    for split, n in (("train", 6), ("valid", 3), ("test", 3)):
        if split != "train":
            assert manifest_layout(paths[split]) == "eval"
            assert paths[split].read_text().splitlines()[0] == "file_path," + ",".join(f"caption_{i}" for i in range(1, 6))
        clips = validate_manifest(paths[split], audio_root=paths["audio_root"])
        assert [c.file_path for c in clips] == [f"{split}/clip_{i:04d}.npy" for i in range(1, n + 1)]
        scenes = read_scenes(tmp_path / "meta" / f"{split}.jsonl")
        for clip in clips:
            assert len(set(clip.captions)) == 5  # five different paraphrases
            assert all(c[0].isupper() and "  " not in c for c in clip.captions)
            samples, rate = load_audio(resolve_audio_path(clip.file_path, paths["audio_root"]))
            assert rate == 16000 and len(samples) == 3 * 16000
            assert 0.02 < np.abs(samples).max() <= 0.96
            assert scenes[clip.file_path].structure in STRUCTURES


def test_label_csvs_name_the_source_of_every_single_source_clip(tmp_path):
    import csv

    from enclap.data.synthetic import KIND_LABELS

    cfg = SyntheticConfig(**dict(SMALL, num_train=30, num_valid=0, num_test=0), structure_weights=[0.5, 0.5, 0.0, 0.0])
    generate_dataset(tmp_path, cfg)
    with open(tmp_path / "labels" / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    scenes = read_scenes(tmp_path / "meta" / "train.jsonl")
    # read back from the scenes, independently of the label writer: one row per single-source clip, in order
    expected = [(path[: -len(".npy")] + ".wav", scene.events[0].kind) for path, scene in scenes.items() if scene.structure == "single"]
    assert 5 <= len(expected) < 30  # both structures were drawn
    names = {v: k for k, v in KIND_LABELS.items()}
    assert [(r["file"], names[r["label"]]) for r in rows] == expected
    assert all((tmp_path / "audio" / r["file"]).is_file() for r in rows)
    assert len(set(KIND_LABELS.values())) == len(KIND_LABELS)
    assert (tmp_path / "labels" / "valid.csv").read_text() == "file,label\n"  # an empty split: header only


def test_config_validation():
    with pytest.raises(ConfigError, match="num_train must be >= 0"):
        load_config(SyntheticConfig, overrides=["num_train=-1"])
    with pytest.raises(ConfigError, match="seconds"):
        load_config(SyntheticConfig, overrides=["seconds=1.0"])
    with pytest.raises(ConfigError, match="structure_weights"):
        load_config(SyntheticConfig, overrides=["structure_weights=[1,0]"])
    with pytest.raises(ConfigError, match="empty"):
        load_config(SyntheticConfig, overrides=["num_train=0", "num_valid=0", "num_test=0"])
    assert load_config(SyntheticConfig, overrides=["num_train=7"]).num_train == 7


def test_command_line(tmp_path, capsys):
    assert main([str(tmp_path), "num_train=2", "num_valid=1", "num_test=1", "seconds=3.0", "sample_rate=8000"]) == 0
    assert len(read_manifest(tmp_path / "csv" / "valid.csv")) == 1
    assert "audio_root" in capsys.readouterr().out
    assert main([str(tmp_path), "seconds=0.5"]) == 1


def test_default_demo_vocabulary_is_modest():
    rng = np.random.default_rng(0)
    words = Counter()
    for _ in range(600):
        for caption in describe_scene(sample_scene(rng, 5.0), 5, rng):
            words.update(re.findall(r"[a-z-]+", caption.lower()))
    assert 60 <= len(words) <= 120


# ---------------------------------------------------------------------------- captions true of the audio

LOUD = {"loud", "loudly"}
FAINT = {"faint", "faintly", "quiet", "quietly", "soft", "softly"}


def caption_facts(caption: str) -> dict:
    """What a caption claims about a single source, read from its words alone."""
    text = caption.lower()
    words = set(re.findall(r"[a-z-]+", text))
    facts = {"loudness": "loud" if words & LOUD else "faint" if words & FAINT else "normal"}
    chirp = bool(words & {"chirp", "sweep", "sweeps", "rises", "falls"})
    if words & {"beep", "beeps", "tone", "bell", "chime"} and not chirp:
        facts["pitch"] = "high" if words & {"high", "high-pitched"} else "low" if words & {"low", "low-pitched", "deep"} else None
    if words & {"ticking", "ticks"}:
        facts["rate"] = "rapid" if words & {"rapid", "rapidly", "fast", "quickly"} else "slow" if words & {"slow", "slowly"} else None
    if words & {"knock", "knocks", "beep", "beeps", "tone"} and not chirp:
        facts["count"] = 4 if "four" in words else 3 if "three" in words else 2 if words & {"two", "twice"} else 1
    if chirp:
        facts["direction"] = "up" if words & {"rising", "upward", "rises"} else "down"
    return facts


def frame_rms(x: np.ndarray, sr: int, seconds: float = 0.005) -> np.ndarray:
    n = int(sr * seconds)
    frames = x[: len(x) // n * n].reshape(-1, n).astype(np.float64)
    return np.sqrt((frames**2).mean(1))


def count_onsets(x: np.ndarray, sr: int) -> int:
    active = frame_rms(x, sr) > 0.25 * frame_rms(x, sr).max()
    return int(np.sum(active[1:] & ~active[:-1]) + active[0])


def dominant_frequency(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spectrum.argmax()])


def test_captions_of_single_sources_match_measurements_of_the_audio():
    """Every paraphrase of a one-source clip states the same facts, and measuring the audio confirms them."""
    sr = 16000
    cfg = SyntheticConfig(num_train=120, seconds=4.0, sample_rate=sr, structure_weights=[1.0, 0.0, 0.0, 0.0])
    checked = Counter()
    for i in range(cfg.num_train):
        clip = make_clip(cfg, "train", i)
        (event,) = clip.scene.events
        facts = [caption_facts(c) for c in clip.captions]
        assert all(f == facts[0] for f in facts), clip.captions
        facts = facts[0]
        x = clip.audio.astype(np.float64)
        start, end = int(event.start * sr), int(np.ceil(event.end * sr))
        assert np.abs(x[:start]).max(initial=0) == 0 and np.abs(x[end + 1 :]).max(initial=0) == 0
        peak = np.abs(x).max()
        assert {"loud": peak > 0.4, "normal": 0.1 < peak < 0.3, "faint": peak < 0.06}[facts["loudness"]], (clip.captions, peak)
        inside = x[start:end]
        if "pitch" in facts and event.kind in ("beep", "bell"):
            f = dominant_frequency(inside, sr)
            assert (f > 800) if facts["pitch"] == "high" else (f < 450), (clip.captions, f)
            checked["pitch"] += 1
        if "rate" in facts:
            per_second = count_onsets(inside, sr) / (len(inside) / sr)
            assert (per_second > 5) if facts["rate"] == "rapid" else (per_second < 3.2), (clip.captions, per_second)
            checked["rate"] += 1
        if "count" in facts and event.kind in ("beep", "knock"):
            assert count_onsets(inside, sr) == facts["count"], clip.captions
            checked["count"] += 1
        if "direction" in facts:
            third = len(inside) // 3
            early, late = dominant_frequency(inside[:third], sr), dominant_frequency(inside[-third:], sr)
            assert (late > early) if facts["direction"] == "up" else (late < early), clip.captions
            checked["direction"] += 1
        checked["loudness"] += 1
    assert min(checked.values()) >= 3 and len(checked) == 5, checked


def test_order_and_overlap_follow_the_scene():
    cfg = SyntheticConfig(num_train=80, seconds=5.0, sample_rate=8000)
    # What each structure is made of: (foreground events, has a background).
    shape = {"single": (1, False), "sequence": (2, False), "overlap": (1, True), "sequence_over_background": (2, True)}
    seen = Counter()
    for i in range(cfg.num_train):
        scene = make_clip(cfg, "train", i).scene
        seen[scene.structure] += 1
        fg, bg = scene.foreground, scene.background
        assert (len(fg), bg is not None) == shape[scene.structure], scene
        if scene.structure in ("sequence", "sequence_over_background"):
            # "followed by", "then": the first ends before the second starts
            assert fg[0].end < fg[1].start
        if scene.structure in ("overlap", "sequence_over_background"):
            # "while", "over": the background spans every foreground event
            assert all(bg.start < e.start and e.end < bg.end for e in fg)
            assert bg.loudness in ("normal", "faint") and all(e.loudness != "faint" for e in fg)
    # Every structure, and so every check above, ran several times.
    assert set(seen) == set(STRUCTURES) and min(seen.values()) >= 5, seen


# ------------------------------------------------------------------------------------------- learnable


def spectral_descriptor(x: np.ndarray, sr: int) -> np.ndarray:
    """Hand-written features: log energy in 16 log-spaced bands over 4 time quarters, their max and spread."""
    from scipy.signal import stft

    freqs, _, z = stft(x, fs=sr, nperseg=512, noverlap=256)
    power = np.abs(z) ** 2
    edges = np.geomspace(40, sr / 2, 17)
    bands = np.log10(np.stack([power[(freqs >= lo) & (freqs < hi)].sum(0) for lo, hi in zip(edges[:-1], edges[1:])]) + 1e-10)
    n = bands.shape[1]
    quarters = [bands[:, q * n // 4 : (q + 1) * n // 4].mean(1) for q in range(4)]
    flux = np.maximum(np.diff(bands, axis=1), 0).sum(0)
    return np.concatenate(quarters + [bands.max(1), bands.std(1), [np.log(flux.std() + 1e-6)]])


def tokens(sentence: str) -> list[str]:
    return re.sub(r"[^a-z0-9 ]", " ", sentence.lower()).split()


def cider_d(candidates: list[str], references: list[list[str]], max_n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015, as in coco-caption), written out here: tf-idf n-gram cosine with
    clipping and a length penalty. Rare n-grams weigh more, so a caption shared by many clips scores low.
    (aac-metrics has the same function, but importing it loads transformers: seconds per test process.)"""

    def grams(sentence: str) -> list[Counter]:
        words = tokens(sentence)
        return [Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1)) for n in range(1, max_n + 1)]

    refs = [[grams(r) for r in rs] for rs in references]
    df: Counter = Counter()
    for rs in refs:
        df.update({g for r in rs for counts in r for g in counts})
    log_docs = np.log(float(len(references)))

    def vector(counts: list[Counter]) -> tuple[list[dict], list[float]]:
        vecs = [{g: tf * (log_docs - np.log(max(1.0, df[g]))) for g, tf in c.items()} for c in counts]
        return vecs, [float(np.sqrt(sum(v * v for v in vec.values()))) for vec in vecs]

    total = 0.0
    for cand, rs in zip(candidates, refs):
        cand_vec, cand_norm = vector(grams(cand))
        cand_len = len(tokens(cand))
        score = np.zeros(max_n)
        for r in rs:
            ref_vec, ref_norm = vector(r)
            delta = cand_len - sum(r[0].values())
            for n in range(max_n):
                dot = sum(min(v, ref_vec[n].get(g, 0.0)) * ref_vec[n].get(g, 0.0) for g, v in cand_vec[n].items())
                if cand_norm[n] and ref_norm[n]:
                    score[n] += dot / (cand_norm[n] * ref_norm[n]) * np.exp(-(delta**2) / (2 * sigma**2))
        total += 10.0 * score.mean() / len(rs)
    return total / len(candidates)


def test_own_cider_d_on_known_cases():
    refs = [["a dog barks loudly", "a dog is barking"], ["rain falls on a roof", "heavy rain falls"], ["a bell rings", "a bell rings twice"]]
    assert cider_d(["a dog barks loudly", "rain falls on a roof", "a bell rings"], refs) > cider_d(["a bell rings"] * 3, refs)
    assert cider_d(["zzz qqq", "zzz qqq", "zzz qqq"], refs) == 0.0
    # Identical candidates and references, no shared n-grams across clips: each n-gram has idf log(3).
    exact = [["x y z w"], ["p q r s"], ["k l m n"]]
    assert cider_d(["x y z w", "p q r s", "k l m n"], exact) == pytest.approx(10.0)


@pytest.mark.slow
def test_own_cider_d_matches_aac_metrics():
    from aac_metrics.functional import cider_d as reference  # slow import (pulls in transformers)

    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng, 5.0) for _ in range(30)]
    references = [list(describe_scene(s, 5, rng)) for s in scenes]
    candidates = [describe_scene(scenes[(i * 7) % 30], 1, rng)[0] for i in range(30)]
    expected = float(reference(candidates, references, tokenizer=tokens)[0]["cider_d"])
    assert cider_d(candidates, references) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_captions_depend_on_the_audio(tmp_path):
    """Nearest-neighbour retrieval on audio features beats every caption choice that ignores the audio."""
    cfg = SyntheticConfig(num_train=160, num_valid=0, num_test=60, seconds=4.0, sample_rate=16000, seed=11)
    paths = generate_dataset(tmp_path, cfg)
    train, test = read_manifest(paths["train"]), read_manifest(paths["test"])

    def features(clips):
        return np.stack([spectral_descriptor(load_audio(resolve_audio_path(c.file_path, paths["audio_root"]))[0], 16000) for c in clips])

    train_x, test_x = features(train), features(test)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    nearest = ((b[:, None, :] - a[None]) ** 2).sum(-1).argmin(1)
    references = [list(c.captions) for c in test]

    retrieved = [train[j].captions[0] for j in nearest]
    most_common = Counter(cap for c in train for cap in c.captions).most_common(1)[0][0]
    blind = [most_common] * len(test)
    # Same captions as the retrieval, given to the wrong clips: the language is identical, the audio is ignored.
    shuffled = [retrieved[k] for k in np.random.default_rng(0).permutation(len(test))]

    nn_score, blind_score, shuffled_score = cider_d(retrieved, references), cider_d(blind, references), cider_d(shuffled, references)
    assert nn_score > 2.0 * max(blind_score, shuffled_score), (nn_score, blind_score, shuffled_score)
    assert nn_score - max(blind_score, shuffled_score) > 0.4, (nn_score, blind_score, shuffled_score)
