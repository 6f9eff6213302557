"""Benchmark (ablation): what the CLAP embedding and masked codec modeling add to the demo's captioner.

On the demo's data and EnCodec codes (seed 0's demo run, shared with ``bench_demo_seeds.py``), the same
captioner (``cfg/demo.yaml``) is trained and scored on the test split with:

* the CLAP embeddings of the tower trained in the demo (the demo itself),
* the embeddings of a random-initialised CLAP (``models/clap``, extracted here),
* an empty CLAP slot (every embedding zero: the slot carries nothing),
* the trained tower's embeddings without MCM (``data.encodec_masking_prob=0``, ``model.mcm_loss_scale=0``),

each over several captioner seeds (``seed`` = the config's + N), mean ± sd of CIDEr-D and METEOR.

    python bench/bench_ablation.py [--quick] [--epochs N] [--seeds 0 1 2]
    python bench/run_all.py --only ablation

``--epochs`` trains fewer epochs than the demo's (cheaper, and says so in the section). Finished runs
are cached in ``bench/.cache/ablation[_quick]/`` keyed by the code, configs and settings.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEEDS = (0, 1, 2)
# variant -> (CLAP features, MCM on)
VARIANTS = {
    "trained CLAP tower + MCM (the demo)": ("trained", True),
    "random CLAP + MCM": ("random", True),
    "empty CLAP slot (zeros) + MCM": ("zeros", True),
    "trained CLAP tower, no MCM": ("trained", False),
}
METRICS = {"cider_d": "CIDEr-D", "meteor": "METEOR"}


def zeroed_store(source: Path, target: Path) -> Path:
    """A copy of the feature store at ``source`` with every CLAP embedding set to zero (codes unchanged)."""
    import numpy as np

    from enclap.features.extractor import ClipFeatures
    from enclap.features.store import ShardWriter, open_feature_store

    if (target / "store.json").is_file() and (target / "complete").is_file():
        return target
    store = open_feature_store(str(source))
    metadata = {**store.metadata, "ablation": "CLAP embeddings set to zero (bench/bench_ablation.py)"}
    with ShardWriter(target, shard_size=256, metadata=metadata) as writer:
        for key in store.keys():
            clip = store[key]
            writer.add(key, ClipFeatures(codes=clip.codes, clap=np.zeros_like(clip.clap)))
    (target / "complete").write_text("")
    return target


def random_clap_store(demo, target: Path) -> Path:
    """The demo's clips extracted again with the random-initialised CLAP (``models/clap``) instead of the tower."""
    from enclap.jobs.extract import run_extraction

    config = replace(demo._extract_config(), output=str(target), clap=str(demo.layout.models / "clap"), progress=False, device="cpu")
    summary = run_extraction(config)
    if summary.failed:
        raise RuntimeError(f"extraction with the random CLAP failed for {len(summary.failed)} file(s) (see {target / 'failures.csv'})")
    return target


def train_and_score(demo, features: Path, mcm: bool, seed: int, epochs: int | None, out: Path) -> dict[str, float]:
    """Train the demo's captioner on ``features`` and score it on the test split; cached in ``out``."""
    from enclap.jobs.evaluate import build_parser, run_evaluation
    from enclap.jobs.train_captioner import train_captioner

    scores_file = out / "test.scores.json"
    if scores_file.is_file():
        return json.loads(scores_file.read_text())["scores"]
    config = demo.train_config()
    config.output_dir = str(out / "captioner")
    config.data.features = str(features)
    config.seed += seed
    config.train.progress = False
    if epochs is not None:
        config.train.num_train_epochs = epochs
    if not mcm:
        config.data.encodec_masking_prob = 0.0
        config.model.mcm_loss_scale = 0.0
    result = train_captioner(config)
    if result.status != "completed":
        raise RuntimeError(f"training in {out} stopped: {result.signal}")
    checkpoint = out / "captioner" / ("best" if (out / "captioner" / "best" / "config.json").is_file() else "final")
    args = build_parser().parse_args([
        "--ckpt", str(checkpoint), "--test_csv", str(demo.layout.manifest("test")), "--features", str(features),
        "--save_path", str(out / "test.predictions.csv"), "--scores_path", str(scores_file), "--device", "cpu", "--no_resume",
    ])
    return run_evaluation(args).scores


def distinct_predictions(out: Path) -> int:
    """How many different captions the run gave the test clips (1 = the same caption for every clip: it ignores the audio)."""
    import csv

    with open(out / "test.predictions.csv", newline="", encoding="utf-8") as f:
        return len({row["prediction"] for row in csv.DictReader(f)})


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def main(quick: bool = False, seeds: tuple[int, ...] = SEEDS, epochs: int | None = None) -> str:
    from bench.bench_demo_seeds import run_dir, run_seed
    from bench.demo_cache import CACHE, cache_key, prepare_cache
    from enclap.jobs.demo import DemoOptions, _Demo, deterministic_kernels

    started = time.perf_counter()
    run_seed(0, quick)  # the demo run whose data, codes and CLAP tower every variant shares
    demo = _Demo(DemoOptions(output=run_dir(0, quick), quick=quick, device="cpu", progress=False))
    work = CACHE / ("ablation_quick" if quick else "ablation")
    prepare_cache(work, cache_key({"quick": quick, "epochs": epochs}))
    epochs_used = epochs if epochs is not None else demo.train_config().train.num_train_epochs
    results: dict[str, list[dict[str, float]]] = {}
    distinct: dict[str, list[int]] = {}
    with deterministic_kernels():
        stores = {
            "trained": demo.layout.features,
            "random": random_clap_store(demo, work / "features_random"),  # the extraction skips clips already stored
            "zeros": zeroed_store(demo.layout.features, work / "features_zeros"),
        }
        for name, (clap, mcm) in VARIANTS.items():
            slug = f"{clap}{'' if mcm else '_nomcm'}"
            results[name] = [train_and_score(demo, stores[clap], mcm, s, epochs, work / slug / f"seed{s}") for s in seeds]
            distinct[name] = [distinct_predictions(work / slug / f"seed{s}") for s in seeds]
    scale = demo.scale
    lines = [
        "### Ablation: the CLAP embedding and masked codec modeling in the demo's captioner",
        "",
        f"{'quick check, ' if quick else ''}demo data of seed 0 ({scale.num_train}/{scale.num_valid}/{scale.num_test} train/valid/test "
        f"clips); the demo's captioner (cfg/demo.yaml) trained {epochs_used} epoch(s)"
        f"{' (fewer than the demo: --epochs)' if epochs is not None else ''} per variant and seed, seeds {', '.join(map(str, seeds))}; "
        "test scores as mean ± sd over the seeds.",
        "",
        f"| variant | " + " | ".join(METRICS.values()) + f" | distinct captions of the {scale.num_test} test clips, per seed |",
        "|---|" + "---:|" * len(METRICS) + "---:|",
    ]
    for name, runs in results.items():
        lines.append(f"| {name} | " + " | ".join(mean_sd([r[m] for r in runs]) for m in METRICS)
                     + f" | {', '.join(map(str, distinct[name]))} |")
    lines += [
        "",
        "Same codes, same captions and the same seeds in every row: the rows differ only in what the CLAP slot holds and "
        "whether MCM is trained. A run that gives (nearly) every test clip the same caption has learnt to ignore its "
        "input: it scores about what the best constant caption does (bench_demo_seeds.py's audio-blind row). "
        f"Total {time.perf_counter() - started:.0f} s (cached runs are not retrained).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=None, help="captioner epochs per run (default: the demo's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args()
    print(main(quick=args.quick, seeds=tuple(args.seeds), epochs=args.epochs))
