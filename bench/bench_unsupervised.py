"""Benchmark: the unsupervised-improvement recipe (curation + SoftCLAP) against its replay-only control, over seeds.

``enclap-unsupervised`` reports one teacher and one student. What a student gains over its teacher mixes
two things: the curated pairs (and SoftCLAP) and simply training longer. Here, per seed, one teacher is
trained (the recipe's data and teacher stages, ``cfg/clap/unsupervised_demo.yaml``) and three students
start from that same tower (``teacher.tower``), each in its own ``output_dir``, with the same epochs,
learning rate and training seed:

* (a) replay only: ``student.curation_prob=0``, ``student.softclap_beta=0`` (the control: more training alone),
* (b) DU curated, plain CLAP: ``student.softclap_beta=0``,
* (c) DU curated + SoftCLAP: ``student.softclap_beta=0.3`` (the demo's student).

Seed ``N`` sets ``data.seed=N`` (the synthetic data set, so each seed is a different data set, pool and
caption corpus) and the training ``seed`` of teacher and students to ``1115 + N`` (the teacher's random
initialisation, and both trainings' order, crops and curated draws; seed 0 is the demo's ``1115``, so
seed 0's (c) is ``enclap-unsupervised --config cfg/clap/unsupervised_demo.yaml``). Figures are the
recipe report's (test split), mean ± sd (min-max) over the seeds.

    python bench/bench_unsupervised.py [--quick] [--seeds 0 1 2]
    python bench/run_all.py --only unsupervised

Runs are cached in ``bench/.cache/unsupervised[_quick]/seed<N>/``, keyed by the code of ``enclap/``, the
configs and the scale (``bench/demo_cache.py``): a rerun of an unchanged tree only reprints (every recipe
stage is then skipped).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
RECIPE_CONFIG = ROOT / "cfg" / "clap" / "unsupervised_demo.yaml"
TOWER_CONFIG = ROOT / "cfg" / "clap" / "tiny.yaml"
SEEDS = (0, 1, 2)
TRAIN_SEED = 1115  # cfg/clap/tiny.yaml's seed: seed N trains with TRAIN_SEED + N
# variant -> (directory, student.curation_prob, student.softclap_beta)
VARIANTS = {
    "(a) replay only (control)": ("replay", 0.0, 0.0),
    "(b) DU curated, plain CLAP": ("du_clap", 0.5, 0.0),
    "(c) DU curated + SoftCLAP 0.3": ("du_softclap", 0.5, 0.3),
}
METRICS = {("zero_shot", "top1"): "ZS top-1", ("retrieval", "t2a_mAP@10"): "t2a mAP@10", ("retrieval", "t2a_R@1"): "t2a R@1",
           ("retrieval", "a2t_mAP@10"): "a2t mAP@10", ("retrieval", "a2t_R@1"): "a2t R@1"}
# Quick: a check that the bench runs (smaller data, fewer epochs); the full scale is the demo config's.
QUICK = {"data": {"num_annotated": 32, "num_pool": 32, "num_valid": 8, "num_test": 32}, "teacher_epochs": 3, "student_epochs": 2}
FULL = {"data": {}, "teacher_epochs": None, "student_epochs": None}  # None: the recipe config's


def mean_sd(values: list[float], digits: int = 3) -> str:
    """``mean ± sd (min-max)`` of the values (sd with n - 1; 0 for one value), as bench_demo_seeds; ``(min to max)``
    when a value is negative (a difference), where a dash would read as a minus sign."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    dash = " to " if min(values) < 0 else "-"
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f} ({min(values):.{digits}f}{dash}{max(values):.{digits}f})"


def with_epochs(overrides: list[str], epochs: int | None) -> list[str]:
    """``overrides`` with ``train.num_train_epochs`` set to ``epochs`` (unchanged for None)."""
    if epochs is None:
        return list(overrides)
    return [o for o in overrides if not o.startswith("train.num_train_epochs=")] + [f"train.num_train_epochs={epochs}"]


def recipe_config(seed: int, scale: dict, output_dir: Path, **student):
    """The demo recipe config at ``scale`` for ``seed`` (validated); ``student``: student.* values."""
    from enclap.jobs.unsupervised import load_unsupervised_config

    config = load_unsupervised_config(RECIPE_CONFIG, [f"output_dir={output_dir}", f"teacher.config={TOWER_CONFIG}",
                                                      f"student.config={TOWER_CONFIG}", "progress=false"])
    config.data.seed = seed
    for key, value in scale["data"].items():
        setattr(config.data, key, value)
    config.teacher.overrides = with_epochs(config.teacher.overrides, scale["teacher_epochs"]) + [f"seed={TRAIN_SEED + seed}"]
    config.student.overrides = with_epochs(config.student.overrides, scale["student_epochs"]) + [f"seed={TRAIN_SEED + seed}"]
    for key, value in student.items():
        setattr(config.student, key, value)
    config.validate()
    return config


def stage_seconds(output_dir: Path) -> dict[str, float]:
    """Wall time of each stage of a recipe run, as it recorded them (``.recipe/<stage>.json``)."""
    from enclap.jobs.unsupervised import STAGES, STATE_DIR

    seconds = {}
    for stage in STAGES:
        path = output_dir / STATE_DIR / f"{stage}.json"
        if path.is_file():
            seconds[stage] = float(json.loads(path.read_text()).get("seconds", 0.0))
    return seconds


def run_dir(seed: int, quick: bool) -> Path:
    from bench.demo_cache import CACHE

    return CACHE / ("unsupervised_quick" if quick else "unsupervised") / f"seed{seed}"


def run_seed(seed: int, quick: bool) -> dict:
    """Teacher and the three students of ``seed``: their reports and stage times (cached, see the docstring)."""
    from bench.demo_cache import cache_key, code_digest, prepare_cache
    from enclap.jobs.unsupervised import Recipe, run_recipe

    scale = QUICK if quick else FULL
    root = run_dir(seed, quick)
    prepare_cache(root, cache_key({"bench": "unsupervised", "scale": scale, "seed": seed, "train_seed": TRAIN_SEED + seed,
                                   "variants": VARIANTS, "recipe_config": code_digest([RECIPE_CONFIG])}))
    # the teacher: the recipe's data and teacher stages once; every student then starts from this tower
    teacher_config = recipe_config(seed, scale, root / "teacher")
    recipe = Recipe(teacher_config)
    recipe.layout.root.mkdir(parents=True, exist_ok=True)
    recipe.stage_data()
    recipe.stage_teacher()
    tower = recipe.teacher_tower()
    out = {"teacher_seconds": stage_seconds(root / "teacher").get("teacher", 0.0), "variants": {}}
    for name, (directory, curation_prob, beta) in VARIANTS.items():
        config = recipe_config(seed, scale, root / directory, curation_prob=curation_prob, softclap_beta=beta)
        config.data.directory = str(recipe.layout.data)  # the same data set (generated once, only checked here)
        config.teacher.tower = str(tower)
        config.validate()
        started = time.perf_counter()
        report = run_recipe(config)
        out["variants"][name] = {"report": report, "seconds": stage_seconds(root / directory),
                                 "wall": time.perf_counter() - started}
    out["config"] = teacher_config
    return out


def figure(report: dict, tower: str, key: tuple[str, str]) -> float:
    kind, metric = key
    return float(report["towers"][tower][kind]["metrics"][metric])


def main(quick: bool = False, seeds: tuple[int, ...] | None = None) -> str:
    seeds = seeds or ((SEEDS[0],) if quick else SEEDS)  # quick: one seed
    runs = {seed: run_seed(seed, quick) for seed in seeds}
    first = runs[seeds[0]]
    config = first["config"]
    names = list(VARIANTS)
    reports = {seed: {name: run["variants"][name]["report"] for name in names} for seed, run in runs.items()}
    # the teacher is one tower per seed, evaluated in each variant's report: the figures must agree
    teacher_same = all(figure(reports[s][n], "teacher", k) == figure(reports[s][names[0]], "teacher", k)
                       for s in seeds for n in names for k in METRICS)
    any_report = reports[seeds[0]][names[0]]["towers"]["teacher"]
    zs, ret = any_report["zero_shot"], any_report["retrieval"]
    d = config.data
    teacher_epochs = next(o for o in config.teacher.overrides if o.startswith("train.num_train_epochs=")).split("=")[1]
    student_epochs = next(o for o in config.student.overrides if o.startswith("train.num_train_epochs=")).split("=")[1]
    student_lr = next((o.split("=")[1] for o in config.student.overrides if o.startswith("train.learning_rate=")), "the config's")

    lines = [
        "### Unsupervised improvement (curation + SoftCLAP) against a replay-only control",
        "",
        f"{'Quick check (smaller data, fewer epochs; the figures mean little), ' if quick else ''}"
        f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}): seed N is `data.seed=N` (its own synthetic data set, pool "
        f"and caption corpus) and training `seed={TRAIN_SEED}+N` (teacher initialisation; both trainings' order and draws). "
        f"Per seed one tiny teacher (`cfg/clap/tiny.yaml`, {teacher_epochs} epochs on {d.num_annotated} annotated clips); "
        f"three students start from that same tower with the same {student_epochs} epochs, learning rate {student_lr} "
        f"and seed, and differ only in `student.curation_prob` / `student.softclap_beta`: (a) 0 / 0 (replay of the "
        f"annotated set only), (b) {VARIANTS[names[1]][1]} / 0, (c) {VARIANTS[names[2]][1]} / {VARIANTS[names[2]][2]}. "
        f"Curation: DU top-{config.curation.top_k} over a pool of {d.num_pool} clips "
        f"(corpus: {' + '.join(d.caption_corpus)} captions). Test split: {ret['clips']} clips, {ret['captions']} captions "
        f"(retrieval); zero-shot on its {zs['clips']} single-source clips, {zs['classes']} classes "
        f"(one clip = {1 / zs['clips']:.3f} of top-1). Mean ± sd (min-max) over the seeds.",
        "",
        "| tower | " + " | ".join(METRICS.values()) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    lines.append("| teacher | " + " | ".join(mean_sd([figure(reports[s][names[0]], "teacher", k) for s in seeds]) for k in METRICS) + " |")
    for name in names:
        lines.append(f"| {name} | " + " | ".join(mean_sd([figure(reports[s][name], "student", k) for s in seeds]) for k in METRICS) + " |")
    chance = [any_report[kind]["chance"].get(metric) for kind, metric in METRICS]
    lines.append("| chance | " + " | ".join("-" if v is None else f"{v:.3f}" for v in chance) + " |")

    # paired differences: the same seed, teacher and training; only the student setting differs
    pairs = {"(b) − (a): the curated pairs": (names[1], names[0]), "(c) − (b): SoftCLAP": (names[2], names[1]),
             "(c) − (a): the recipe over replay": (names[2], names[0])}
    lines += ["", "Paired differences per seed (same teacher, data and training seed), mean ± sd (min-max), and in how many "
                  "seeds the difference is > 0:", "",
              "| difference | " + " | ".join(METRICS.values()) + " |", "|---|" + "---:|" * len(METRICS)]
    for label, (x, y) in pairs.items():
        cells = []
        for k in METRICS:
            diffs = [figure(reports[s][x], "student", k) - figure(reports[s][y], "student", k) for s in seeds]
            cells.append(f"{mean_sd(diffs)}, {sum(v > 0 for v in diffs)}/{len(diffs)}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    curation = [reports[s][names[1]]["curation"] for s in seeds]
    same_curation = all(reports[s][names[1]]["curation"] == reports[s][names[2]]["curation"] for s in seeds)
    lines += [
        "",
        f"Curation (the teacher's DU picks, used by (b) and (c); {'identical' if same_curation else 'DIFFERENT'} in both): "
        f"precision (share of curated captions that are one of the clip's own) {mean_sd([c['precision'] for c in curation])}; "
        f"{mean_sd([float(c['captions']) for c in curation], 1)} distinct captions over "
        f"{mean_sd([float(c['clips']) for c in curation], 1)} pool clips; similarity mean "
        f"{mean_sd([c['similarity_mean'] for c in curation])}.",
        "",
        "| wall time (s), mean over seeds | student training | embed + curate + report | variant total |",
        "|---|---:|---:|---:|",
        f"| teacher training (once per seed) | {statistics.fmean(r['teacher_seconds'] for r in runs.values()):.1f} | - | - |",
    ]
    for name in names:
        secs = [runs[s]["variants"][name]["seconds"] for s in seeds]
        student = statistics.fmean(x.get("student", 0.0) for x in secs)
        other = statistics.fmean(sum(x.get(st, 0.0) for st in ("embed", "curate", "report")) for x in secs)
        lines.append(f"| {name} | {student:.1f} | {other:.1f} | {student + other:.1f} |")
    lines += [
        "",
        f"Teacher figures identical in the three variants' reports (one tower per seed): {'yes' if teacher_same else 'NO'}. "
        "Times are each stage's own record from when it ran (a cached rerun reprints them); (a) runs the curation "
        "too (for the report) but its student does not use it.",
        "",
        "What this shows and does not: a student's gain over the teacher can be put down to the curated pairs or "
        "to SoftCLAP only as far as (b) and (c) differ from (a), which had the same extra training. The teacher is "
        f"a tiny tower trained on {d.num_annotated} synthetic clips; on average "
        f"{statistics.fmean(c['precision'] for c in curation):.1%} of its curated captions are the clip's own. The "
        "figures are about this teacher on this synthetic data, not about the method with a competent teacher or on "
        "real data. The zero-shot figures rest "
        f"on {zs['clips']} clips (one clip moves top-1 by {1 / zs['clips']:.3f}) and retrieval on {ret['clips']} clips, "
        f"over {len(seeds)} seed(s): a difference within the spread over seeds is not evidence either way.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, smaller data, fewer epochs: checks the bench runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (quick: 0)")
    args = parser.parse_args()
    print(main(quick=args.quick, seeds=tuple(args.seeds) if args.seeds else None))
