"""Benchmark: captioning clips longer than the encoder's window, `truncate` (the reference) vs `windows`.

The reference keeps the first ``max_position_embeddings - 3`` codec frames (13.6 s at 75 frames/s) of
every clip, so most of a 30 s Clotho clip is never heard. ``long_audio="windows"`` captions every
window of the clip and keeps the candidate with the best mean log-likelihood across windows.

The released checkpoints cannot be downloaded here, so the comparison is made on a trained model of
the same situation in miniature: the demo's pipeline (synthetic captioned scenes, random feature
models, a small captioner trained with EnCLAP's objective and random crops) with the encoder window
shortened to 45 % of a demo clip, as 13.6 s is of a 30 s Clotho clip. The synthetic scenes say what
sounds when (``data/meta/test.jsonl``), which gives a direct measure besides the caption metrics: of the
foreground events that start after the truncation point, how many a caption names. The test split is
enlarged to :data:`NUM_TEST` clips (about 300 late events) so that the two modes' shares can be told
apart; each share is reported with its 95 % Wilson interval and the difference with a paired bootstrap
interval over clips.

The trained model is cached in ``bench/.cache/long_audio/``, keyed by what trained it: a digest of the
code under ``enclap/``, the demo's configs and this benchmark's settings (``cache_key.json``). When any of
them changes, the cache is wiped and the model trained anew.
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Words a caption uses for each source kind (from enclap.data.synthetic's phrase tables); "tone" is left
# out because beeps and chirps share it.
KIND_WORDS = {
    "beep": ("beep", "beeps"),
    "chirp": ("chirp", "sweep", "rises", "falls"),
    "siren": ("siren", "wails"),
    "burst": ("burst",),
    "knock": ("knock", "knocks"),
    "bell": ("bell", "chime"),
    "ticking": ("ticking", "ticks", "clock"),
    "hum": ("hum", "hums"),
    "hiss": ("hiss", "hisses", "static", "white noise"),
}
FRAME_RATE = 75  # EnCodec 24 kHz (the demo's random EnCodec keeps its hop of 320 samples)
NUM_TEST = 600  # test clips: ~300 late events, enough to separate shares ~15 points apart
BOOTSTRAP_ROUNDS = 2000


def mentions(caption: str, kind: str) -> bool:
    words = caption.lower()
    return any(re.search(rf"\b{re.escape(w)}\b", words) for w in KIND_WORDS[kind])


def late_events_named(captions: dict[str, str], scenes: dict, cut_seconds: float) -> dict[str, list[bool]]:
    """For each clip, whether its caption names each foreground event that starts after ``cut_seconds``."""
    return {
        name: [mentions(captions[name], event.kind) for event in scene.foreground if event.start >= cut_seconds]
        for name, scene in scenes.items()
    }


def late_event_recall(captions: dict[str, str], scenes: dict, cut_seconds: float) -> tuple[int, int]:
    """(named, total) over foreground events that start after ``cut_seconds``, the truncation point."""
    flags = [f for per_clip in late_events_named(captions, scenes, cut_seconds).values() for f in per_clip]
    return sum(flags), len(flags)


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval of a binomial proportion."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_bootstrap_difference(
    a: dict[str, list[bool]], b: dict[str, list[bool]], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> tuple[float, float, float]:
    """(difference, 2.5 %, 97.5 %) of share(b) - share(a), resampling clips (both modes' flags of a clip together)."""
    names = [n for n in a if a[n]]
    named_a = np.array([sum(a[n]) for n in names], dtype=float)
    named_b = np.array([sum(b[n]) for n in names], dtype=float)
    counts = np.array([len(a[n]) for n in names], dtype=float)
    if not names:
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(names), size=(rounds, len(names)))
    totals = counts[picks].sum(axis=1)
    diffs = (named_b[picks].sum(axis=1) - named_a[picks].sum(axis=1)) / totals
    point = (named_b.sum() - named_a.sum()) / counts.sum()
    low, high = np.quantile(diffs, [0.025, 0.975])
    return float(point), float(low), float(high)


def false_mentions(captions: dict[str, str], scenes: dict) -> tuple[int, int]:
    """(kinds named that are not in the scene, captions): how much a mode invents."""
    invented = 0
    for name, scene in scenes.items():
        present = {event.kind for event in scene.events}
        invented += sum(mentions(captions[name], kind) for kind in KIND_WORDS if kind not in present)
    return invented, len(captions)




def main(quick: bool = False, work_dir: str | None = None) -> str:
    """Run (or reuse) the demo pipeline in ``work_dir`` (default ``bench/.cache/long_audio[_quick]``), compare the modes.

    The demo's stages are skipped when they already ran with the same settings, so a rerun only
    captions and scores again (a few seconds); delete the folder to train anew.
    """
    from enclap.data.manifest import read_manifest
    from enclap.data.synthetic import read_scenes
    from enclap.features.store import open_feature_store
    from bench.demo_cache import CACHE, cache_key, prepare_cache
    from enclap.jobs.demo import FULL, QUICK, DemoOptions, DemoScale, Layout, run_demo
    from enclap.metrics import CaptionScorer
    from enclap.pipeline import CaptioningPipeline

    base = QUICK if quick else FULL
    scale = DemoScale(**{**base.__dict__, "num_test": base.num_test if quick else NUM_TEST})
    seconds = scale.seconds
    window_fraction = 13.6 / 30.0
    max_frames = int(seconds * FRAME_RATE * window_fraction)
    overrides = [f"model.max_position_embeddings={max_frames + 3}"]
    root = Path(work_dir) if work_dir else CACHE / ("long_audio_quick" if quick else "long_audio")
    key = cache_key({"scale": scale.__dict__, "overrides": overrides})
    reused = prepare_cache(root, key)
    started = time.perf_counter()
    run_demo(DemoOptions(output=root, size=scale, overrides=overrides, progress=False))
    demo_seconds = time.perf_counter() - started
    layout = Layout(root)
    checkpoint = _trained_checkpoint(layout)
    clips = read_manifest(layout.manifest("test"))
    references = [list(clip.captions) for clip in clips]
    names = [clip.key for clip in clips]
    store = open_feature_store(layout.features)
    features = [store[name] for name in names]
    scenes_by_file = read_scenes(layout.data / "meta" / "test.jsonl")
    scenes = {clip.key: scenes_by_file[clip.file_path] for clip in clips}
    frames = [f.codes.shape[0] for f in features]

    import torch

    rows = {}
    scorer = CaptionScorer(metrics=["bleu_4", "meteor", "rouge_l", "cider_d"])
    # One intra-op thread: with two, OpenMP's spinning threads bill idle waits as CPU time whenever the
    # machine is shared, and small generation steps make that dominate (seen: 26x instead of 8x).
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for mode in ("truncate", "windows"):
        pipeline = CaptioningPipeline.from_pretrained(checkpoint, with_audio_models=False, device="cpu", long_audio=mode)
        assert pipeline.max_frames == max_frames, (pipeline.max_frames, max_frames)
        t0 = time.process_time()
        captions = pipeline.caption_features(features, names=names)
        cpu = time.process_time() - t0
        by_name = dict(zip(names, captions))
        scores = scorer.score(captions, references).corpus
        rows[mode] = dict(
            cpu=cpu,
            scores=scores,
            late=late_event_recall(by_name, scenes, max_frames / FRAME_RATE),
            late_flags=late_events_named(by_name, scenes, max_frames / FRAME_RATE),
            invented=false_mentions(by_name, scenes),
        )
    torch.set_num_threads(previous_threads)

    cut = max_frames / FRAME_RATE
    lines = [
        "### Long clips: `truncate` (reference) vs `windows` (`CaptioningPipeline(long_audio=...)`)",
        "",
        f"{'quick check, ' if quick else ''}demo captioner trained on {scale.num_train} synthetic clips with the encoder window "
        f"cut to {max_frames} frames ({cut:.2f} s of {seconds:.0f} s clips, {100 * window_fraction:.0f} % as 13.6 s of a "
        f"30 s Clotho clip); test set: {len(names)} clips of {min(frames)}-{max(frames)} frames. Demo pipeline "
        f"(data, models, CLAP tower, extraction, training, evaluation) in {root.name}/: {demo_seconds:.0f} s "
        f"({'reused: the cache key matched' if reused else 'trained now'}; cache key: enclap/ code {key['enclap_code']}, "
        f"configs {key['configs']}).",
        "",
        "| mode | BLEU-4 | METEOR | ROUGE-L | CIDEr-D | late events named (95 % CI) | kinds named but absent (per caption) | CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, row in rows.items():
        s = row["scores"]
        named, total = row["late"]
        invented, count = row["invented"]
        low, high = wilson_interval(named, total)
        lines.append(
            f"| {mode} | {s['bleu_4']:.3f} | {s['meteor']:.3f} | {s['rouge_l']:.3f} | {s['cider_d']:.3f} | "
            f"{named}/{total} ({100 * named / max(total, 1):.0f} %, {100 * low:.0f}-{100 * high:.0f} %) | "
            f"{invented / count:.2f} | {row['cpu']:.1f} |"
        )
    ratio = rows["windows"]["cpu"] / rows["truncate"]["cpu"]
    diff, diff_low, diff_high = paired_bootstrap_difference(rows["truncate"]["late_flags"], rows["windows"]["late_flags"])
    lines += [
        "",
        f"`windows` costs {ratio:.2f}× the CPU time of `truncate` (1 torch thread). \"Late events\": foreground events of the test scenes "
        f"that start after {cut:.2f} s (the truncation point), which `truncate` never hears; \"named\": the caption uses "
        "a word for that kind of source. Metrics: aac-metrics, corpus level, 5 references per clip. "
        f"Late events named, windows minus truncate: {100 * diff:+.1f} points (95 % paired bootstrap interval over the "
        f"{len(names)} clips, {BOOTSTRAP_ROUNDS} resamples: {100 * diff_low:+.1f} to {100 * diff_high:+.1f}); per-mode "
        "intervals are Wilson's.",
        "",
    ]
    return "\n".join(lines)


def _trained_checkpoint(layout) -> Path:
    for candidate in (layout.captioner / "best", layout.captioner / "final"):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"no trained captioner under {layout.captioner}")


if __name__ == "__main__":
    work = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--work-dir=")), None)
    print(main(quick="--quick" in sys.argv, work_dir=work))
