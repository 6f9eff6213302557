"""bench/run_all.py: a partial run (--only) keeps the other benchmarks' sections of RESULTS.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_runner():
    spec = importlib.util.spec_from_file_location("bench_run_all", ROOT / "bench" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_previous_sections_are_split_at_each_trailer(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(
        "# Benchmark results\n\n- Date: x\n\n"
        "### A\n\n| a | 1 |\n\n#### A detail\n\ntext\n\n_bench_a.py took 1.0 s (2026-11-22, revision abc)._\n"
        "### B\n\nb\n\n_bench_b.py took 2.0 s._\n"
    )
    sections = load_runner().previous_sections(results)
    assert [name for name, _ in sections] == ["bench_a.py", "bench_b.py"]
    assert sections[0][1].startswith("### A\n") and "#### A detail" in sections[0][1]
    assert sections[0][1].endswith("revision abc)._\n")
    assert sections[1][1] == "### B\n\nb\n\n_bench_b.py took 2.0 s._\n"
    assert load_runner().previous_sections(tmp_path / "missing.md") == []


def test_every_section_carries_its_date_and_revision_or_says_it_does_not(tmp_path):
    runner = load_runner()
    trailer = runner.stamp_trailer(12.34, "bench_x.py", "2026-12-01", "abc1234")
    assert trailer == "_bench_x.py took 12.3 s (2026-12-01, revision abc1234)._"
    stamped = f"### X\n\nfigures\n\n{trailer}\n"
    assert runner.mark_unstamped(stamped) == stamped
    old = "### B\n\nb\n\n_bench_b.py took 2.0 s._\n"
    marked = runner.mark_unstamped(old)
    assert marked == ("### B\n\nb\n\n_bench_b.py took 2.0 s (date and revision not recorded by that run: "
                      "rerun `python bench/run_all.py --only b`)._\n")
    # the marked section is still found as bench_b.py's by the next partial run
    (tmp_path / "RESULTS.md").write_text("# Benchmark results\n\n" + stamped + marked)
    assert [name for name, _ in runner.previous_sections(tmp_path / "RESULTS.md")] == ["bench_x.py", "bench_b.py"]
