"""Benchmark: the demo's test scores over seeds (mean ± spread), a same-seed rerun, and the audio-blind baseline.

``make demo`` reports one run; this runs the whole demo (data, random EnCodec, CLAP tower, features,
captioner, evaluation) once per seed with ``--seed N`` (which seeds the data, the models and both
trainings), then retrains seed 0's captioner from scratch (``--force train``) to measure what a rerun
with the same seed moves. The README's demo table comes from this section.

    python bench/bench_demo_seeds.py [--quick] [--seeds 0 1 2]
    python bench/run_all.py --only demo_seeds

Runs are cached in ``bench/.cache/demo_seeds/seed<N>/``, keyed by the code of ``enclap/``, the demo's
configs and the scale (``bench/demo_cache.py``): a rerun of an unchanged tree only reprints.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEEDS = (0, 1, 2)
METRICS = {"bleu_4": "BLEU-4", "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider_d": "CIDEr-D"}


def mean_sd(values: list[float]) -> str:
    """``mean ± sd (min-max)`` of the values (sd with n - 1; 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f} ({min(values):.3f}-{max(values):.3f})"


def run_dir(seed: int, quick: bool) -> Path:
    from bench.demo_cache import CACHE

    return CACHE / ("demo_seeds_quick" if quick else "demo_seeds") / f"seed{seed}"


def run_seed(seed: int, quick: bool, force: tuple[str, ...] = ()) -> tuple[dict, float]:
    """(summary of the demo run of ``seed``, seconds): cached by the code and settings that make it."""
    from bench.demo_cache import cache_key, prepare_cache
    from enclap.jobs.demo import FULL, QUICK, DemoOptions, run_demo

    scale = QUICK if quick else FULL
    root = run_dir(seed, quick)
    prepare_cache(root, cache_key({"scale": scale.__dict__, "seed": seed}))
    started = time.perf_counter()
    result = run_demo(DemoOptions(output=root, quick=quick, seed=seed, progress=False, device="cpu", force=list(force)))
    return result.to_dict(), time.perf_counter() - started


def main(quick: bool = False, seeds: tuple[int, ...] = SEEDS) -> str:
    from enclap.jobs.demo import FULL, QUICK, STAGES

    scale = QUICK if quick else FULL
    runs = {}
    for seed in seeds:
        runs[seed], _ = run_seed(seed, quick)
    model_file = run_dir(seeds[0], quick) / "captioner" / "final" / "model.safetensors"
    first_model = model_file.read_bytes()
    rerun, rerun_seconds = run_seed(seeds[0], quick, force=("train",))
    same_model = model_file.read_bytes() == first_model
    rows = {
        "trained captioner": [r["scores"] for r in runs.values()],
        "audio-blind: best constant caption (chosen on validation)": [r["constant_baseline"]["scores"] for r in runs.values()],
        "the same network untrained": [r["untrained_scores"] for r in runs.values()],
    }
    lines = [
        "### The demo over seeds (`make demo` = seed 0)",
        "",
        f"{'quick check, ' if quick else ''}{len(seeds)} seeds ({', '.join(map(str, seeds))}), each the whole demo with `--seed N` "
        f"({scale.num_train}/{scale.num_valid}/{scale.num_test} train/valid/test clips of {scale.seconds:g} s, "
        f"{scale.captions_per_clip} captions each); test scores as mean ± sd (min-max) over the seeds.",
        "",
        "| test set | " + " | ".join(METRICS.values()) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for label, scores in rows.items():
        lines.append(f"| {label} | " + " | ".join(mean_sd([s[m] for s in scores]) for m in METRICS) + " |")
    clap = [r["clap"] for r in runs.values() if r.get("clap")]
    if clap:
        t2a = [c["retrieval"]["metrics"]["t2a_R@1"] for c in clap]
        a2t = [c["retrieval"]["metrics"]["a2t_R@1"] for c in clap]
        zs = [c["zero_shot"]["metrics"]["top1"] for c in clap if c.get("zero_shot")]
        zs_chance = [c["zero_shot"]["chance"]["top1"] for c in clap if c.get("zero_shot")]
        lines += [
            "",
            "| CLAP tower (trained in the demo), test split | value | chance |",
            "|---|---:|---:|",
            f"| text->audio R@1 | {mean_sd(t2a)} | {clap[0]['retrieval']['chance']['t2a_R@1']:.3f} |",
            f"| audio->text R@1 | {mean_sd(a2t)} | {clap[0]['retrieval']['chance']['a2t_R@1']:.3f} |",
        ]
        if zs:
            lines.append(f"| zero-shot top-1 (single-source clips) | {mean_sd(zs)} | {statistics.fmean(zs_chance):.3f} |")
    first = runs[seeds[0]]
    moved = {m: abs(rerun["scores"][m] - first["scores"][m]) for m in METRICS}
    stage_seconds = {name: statistics.fmean(r["stages"][name]["seconds"] for r in runs.values()) for name in STAGES}
    lines += [
        "",
        f"Rerun of seed {seeds[0]} (`--force train`: the captioner retrained from scratch, re-evaluated, {rerun_seconds:.0f} s): "
        + ", ".join(f"{METRICS[m]} moved {moved[m]:.4f}" for m in METRICS)
        + f"; the retrained model's bytes are {'identical' if same_model else 'DIFFERENT'}.",
        "Mean wall time per stage (s): " + ", ".join(f"{name} {stage_seconds[name]:.0f}" for name in STAGES)
        + f"; demo total {sum(stage_seconds.values()):.0f} s (the stages' sum, as each run recorded them; the environment "
        "install comes on top).",
        "Constant captions chosen: " + "; ".join(f"seed {s}: \"{r['constant_baseline']['caption']}\"" for s, r in runs.items()) + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args()
    print(main(quick=args.quick, seeds=tuple(args.seeds)))
