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
