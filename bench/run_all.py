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
import re
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


_TRAILER = re.compile(r"^_(bench_\w+\.py) took ", re.MULTILINE)


def previous_sections(results: Path) -> list[tuple[str, str]]:
    """(bench file, Markdown section) of an existing RESULTS.md; a section ends with its "_bench_x.py took" line."""
    if not results.is_file():
        return []
    text = results.read_text()
    sections = []
    begin = text.find("\n### ") + 1  # the first section starts after the header
    for match in _TRAILER.finditer(text):
        end = text.find("\n", match.end())
        end = end + 1 if end >= 0 else len(text)
        sections.append((match.group(1), text[begin:end].strip("\n") + "\n"))
        begin = end
    return sections


_STAMPED_TRAILER = re.compile(r"^_(bench_\w+\.py) took [^\n]*\(\d{4}-\d{2}-\d{2}, revision [^)\s]+\)\._$", re.MULTILINE)
_BARE_TRAILER = re.compile(r"^_(bench_(\w+)\.py) took ([^\n(]*?)\._$", re.MULTILINE)


def stamp_trailer(seconds: float, name: str, date: str, revision: str) -> str:
    """The closing line of a section: how long it took, when and at which revision it was measured."""
    return f"_{name} took {seconds:.1f} s ({date}, revision {revision})._"


def mark_unstamped(section: str) -> str:
    """A kept section whose trailer lacks its date and revision (an older runner's) says so and how to remeasure."""
    if _STAMPED_TRAILER.search(section):
        return section
    return _BARE_TRAILER.sub(
        lambda m: f"_{m.group(1)} took {m.group(3)} (date and revision not recorded by that run: "
                  f"rerun `python bench/run_all.py --only {m.group(2)}`)._",
        section,
    )


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
        trailer = stamp_trailer(time.perf_counter() - started, path.name, dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
                                git_revision())
        sections.append(section.rstrip() + f"\n\n{trailer}\n")
        print(section, flush=True)
    command = "python bench/run_all.py" + (" --quick" if args.quick else "") + (f" --only {' '.join(args.only)}" if args.only else "")
    header = (
        "# Benchmark results\n\n"
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- Machine: {machine_description()}\n"
        f"- Command: `{command}` (or `make bench`)\n"
        f"- Revision: {git_revision()}\n\n"
        "Ratios compare variants measured in the same run; absolute times on a shared 2-core machine are noisy. "
        "Each section ends with the date and revision it was measured at (`--only` reruns some and keeps the rest).\n\n"
    )
    if args.only:
        # A partial run replaces its own sections and keeps the others (each says when it was measured).
        ran = {path.name for path in files}
        kept = [mark_unstamped(section) for name, section in previous_sections(Path(args.output)) if name not in ran]
        sections = kept + sections
        sections.sort(key=lambda section: _TRAILER.findall(section)[-1] if _TRAILER.findall(section) else "")
    Path(args.output).write_text(header + "\n".join(sections))
    print(f"> wrote {args.output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
