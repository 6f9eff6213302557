"""Run every benchmark in bench/ and write bench/RESULTS.md (figures, machine, command, date).

Usage: python bench/run_all.py [--quick] [--only NAME ...]
Each bench/bench_<name>.py exposes main(quick=False) -> str (a Markdown section). Variants are compared
inside one module in the same run, so ratios are meaningful on a noisy machine even when absolute
seconds are not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def machine_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}, {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}"
    )


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the benchmarks run, figures mean little")
    parser.add_argument("--only", nargs="*", default=None, help="bench names (e.g. model metrics)")
    parser.add_argument("--output", default=str(BENCH_DIR / "RESULTS.md"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(BENCH_DIR.parent))
    files = sorted(BENCH_DIR.glob("bench_*.py"))
    if args.only:
        files = [f for f in files if f.stem.removeprefix("bench_") in args.only]
    sections, failures = [], 0
    for path in files:
        print(f"> {path.name} ...", flush=True)
        started = time.perf_counter()
        try:
            section = load(path).main(quick=args.quick)
        except Exception:
            failures += 1
            section = f"### {path.stem}\n\nFAILED:\n\n```\n{traceback.format_exc()}\n```\n"
        sections.append(section.rstrip() + f"\n\n_{path.name} took {time.perf_counter() - started:.1f} s._\n")
        print(section, flush=True)
    command = "python bench/run_all.py" + (" --quick" if args.quick else "") + (f" --only {' '.join(args.only)}" if args.only else "")
    header = (
        "# Benchmark results\n\n"
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- Machine: {machine_description()}\n"
        f"- Command: `{command}` (or `make bench`)\n"
        f"- Revision: {git_revision()}\n\n"
        "Ratios compare variants measured in the same run; absolute times on a shared 2-core machine are noisy.\n\n"
    )
    Path(args.output).write_text(header + "\n".join(sections))
    print(f"> wrote {args.output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
