"""bench/bench_unsupervised.py's settings: each seed is its own data set and training seed, the three students
share teacher, epochs, learning rate and seed and differ only in the student settings they are about."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_unsupervised", ROOT / "bench" / "bench_unsupervised.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seeds_set_the_data_and_both_trainings_and_variants_differ_only_in_the_student_settings(tmp_path):
    bench = load_bench()
    configs = {name: bench.recipe_config(2, bench.QUICK, tmp_path / directory, curation_prob=prob, softclap_beta=beta)
               for name, (directory, prob, beta) in bench.VARIANTS.items()}
    first = next(iter(configs.values()))
    assert first.data.seed == 2 and first.data.num_annotated == bench.QUICK["data"]["num_annotated"]
    assert first.teacher.overrides[-2:] == [f"train.num_train_epochs={bench.QUICK['teacher_epochs']}", f"seed={bench.TRAIN_SEED + 2}"]
    assert first.student.overrides[-2:] == [f"train.num_train_epochs={bench.QUICK['student_epochs']}", f"seed={bench.TRAIN_SEED + 2}"]
    assert sum(o.startswith("train.num_train_epochs=") for o in first.student.overrides) == 1  # replaced, not appended
    assert [(c.student.curation_prob, c.student.softclap_beta) for c in configs.values()] == [(0.0, 0.0), (0.5, 0.0), (0.5, 0.3)]
    for config in configs.values():
        assert (config.data, config.teacher, config.curation, config.student.overrides) == \
               (first.data, first.teacher, first.curation, first.student.overrides)
    # the full scale is the recipe config's own (epochs and data untouched), still one seed each
    from enclap.jobs.train_clap import load_clap_train_config
    from enclap.jobs.unsupervised import load_unsupervised_config

    assert load_clap_train_config(bench.TOWER_CONFIG, []).seed == bench.TRAIN_SEED  # seed 0 trains as the demo does

    demo = load_unsupervised_config(bench.RECIPE_CONFIG, [f"teacher.config={bench.TOWER_CONFIG}", f"student.config={bench.TOWER_CONFIG}"])
    full = bench.recipe_config(1, bench.FULL, tmp_path / "full")
    assert full.data.seed == 1 and (full.data.num_annotated, full.data.num_test) == (demo.data.num_annotated, demo.data.num_test)
    assert full.teacher.overrides == [*demo.teacher.overrides, f"seed={bench.TRAIN_SEED + 1}"]
    assert full.student.overrides == [*demo.student.overrides, f"seed={bench.TRAIN_SEED + 1}"]


def test_mean_sd_matches_a_hand_computation():
    bench = load_bench()
    assert bench.mean_sd([1.0, 2.0, 3.0]) == "2.000 ± 1.000 (1.000-3.000)"
    assert bench.mean_sd([0.5]) == "0.500 ± 0.000 (0.500-0.500)"
    assert bench.mean_sd([-0.25, 0.25], 2) == "0.00 ± 0.35 (-0.25 to 0.25)"
