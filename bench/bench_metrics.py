"""Benchmark: scoring 1,000 candidates x 5 references with every offline metric, raw aac-metrics vs the project.

Both paths compute BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and Vocab on the same captions with the same jars and
Java. Raw = ``aac_metrics.evaluate`` called directly (it tokenises candidates and references in two Java runs,
then runs METEOR); project = ``enclap.metrics.CaptionScorer.score`` (one tokenizer run, one METEOR run,
per-clip scores included). Java processes started are counted by wrapping ``subprocess.Popen``. The full
run also times the reference ceiling (leave-one-out over the 5 references: 5,000 pairs in 5 rounds, still
one METEOR process).

Captions: Clotho's test captions from ``../shared/data/captions/clotho/test.csv`` when present (references =
a clip's 5 captions, candidate = its first caption with some words swapped), else synthesised sentences.
"""

from __future__ import annotations

import csv
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLOTHO_TEST = REPO.parent / "shared" / "data" / "captions" / "clotho" / "test.csv"
METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d", "vocab")


def _perturb(caption: str, rng: random.Random) -> str:
    """A plausible imperfect candidate: the caption with a few neighbouring words swapped."""
    words = caption.split()
    for _ in range(max(1, len(words) // 4)):
        if len(words) > 2:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def _synthetic(n: int, rng: random.Random) -> tuple[list[str], list[list[str]]]:
    subjects = ["A dog", "A man", "Rain", "A car", "Birds", "A woman", "Water", "A crowd", "Wind", "A machine"]
    verbs = ["barks", "speaks", "falls", "passes by", "chirp", "laughs", "flows", "cheers", "blows", "hums"]
    places = ["in the distance", "on a metal roof", "near a busy road", "in a park", "inside a room", "outdoors"]
    extras = ["while music plays", "as people talk", "and then stops", "loudly", "quietly", "repeatedly"]

    def sentence() -> str:
        return f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(places)} {rng.choice(extras)}."

    refs = [[sentence() for _ in range(5)] for _ in range(n)]
    return [_perturb(r[0], rng) for r in refs], refs


def load_captions(n: int) -> tuple[list[str], list[list[str]], str]:
    rng = random.Random(0)
    if CLOTHO_TEST.is_file():
        with open(CLOTHO_TEST, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        refs = [[row[f"caption_{i}"] for i in range(1, 6)] for row in rows]
        refs = [r for r in refs if all(c.strip() for c in r)]
        while len(refs) < n:  # only if the file is smaller than asked
            refs += refs
        refs = refs[:n]
        return [_perturb(r[0], rng) for r in refs], refs, f"Clotho test captions ({CLOTHO_TEST.name})"
    cands, refs = _synthetic(n, rng)
    return cands, refs, "synthesised sentences"


class _JavaCounter:
    """Counts Java processes started, whoever starts them (aac-metrics binds Popen at import time)."""

    def __init__(self) -> None:
        self.count = 0
        self._original = subprocess.Popen.__init__

    def __enter__(self) -> "_JavaCounter":
        counter = self
        original = self._original

        def init(popen_self, args, *a, **kw):
            first = args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]
            if "java" in Path(str(first)).name:
                counter.count += 1
            return original(popen_self, args, *a, **kw)

        subprocess.Popen.__init__ = init
        return self

    def __exit__(self, *exc) -> None:
        subprocess.Popen.__init__ = self._original


def main(quick: bool = False) -> str:
    import aac_metrics  # imported before timing: both paths need it (~5 s of imports)

    from enclap.metrics import CaptionScorer, find_java, provision_resources, reference_ceiling

    n = 50 if quick else 1000
    cands, refs, source = load_captions(n)
    work = Path(tempfile.mkdtemp(prefix="bench_metrics_"))
    cache = provision_resources(work / "cache")
    java, why = find_java()
    if java is None:
        return f"### AAC metrics scoring\n\nnot run: {why}\n"
    tmp = work / "tmp"
    tmp.mkdir()

    def run_raw() -> tuple[float, int, dict]:
        with _JavaCounter() as counter:
            start = time.perf_counter()
            corpus, _ = aac_metrics.evaluate(
                cands, refs, metrics=list(METRICS), cache_path=str(cache), java_path=java.path, tmp_path=str(tmp)
            )
            seconds = time.perf_counter() - start
        return seconds, counter.count, {k: float(v) for k, v in corpus.items()}

    def run_project() -> tuple[float, int, dict]:
        with _JavaCounter() as counter:
            start = time.perf_counter()
            scorer = CaptionScorer(METRICS, cache_dir=cache, tmp_dir=tmp)
            report = scorer.score(cands, refs, per_clip=True)
            seconds = time.perf_counter() - start
        assert not report.unavailable, report.unavailable
        return seconds, counter.count, report.corpus

    repeats = 1 if quick else 2
    raw_times, project_times = [], []
    for _ in range(repeats):  # alternated, so both see the same machine state and page cache
        raw_s, raw_java, raw_scores = run_raw()
        project_s, project_java, project_scores = run_project()
        raw_times.append(raw_s)
        project_times.append(project_s)
    max_diff = max(abs(raw_scores[k] - project_scores[k]) for k in raw_scores if k in project_scores)
    raw_best, project_best = min(raw_times), min(project_times)

    rows = [
        ("raw `aac_metrics.evaluate`", raw_best, raw_java),
        ("project `CaptionScorer.score` (+ per-clip)", project_best, project_java),
    ]
    ceiling_line = ""
    if not quick:
        with _JavaCounter() as counter:
            start = time.perf_counter()
            ceiling = reference_ceiling(refs, METRICS, cache_dir=cache, tmp_dir=tmp)
            ceiling_s = time.perf_counter() - start
        rows.append((f"project `reference_ceiling` ({sum(len(r) for r in refs)} pairs, {len(ceiling.rounds)} rounds)", ceiling_s, counter.count))
        ceiling_line = (
            f"\nReference ceiling on the same references: METEOR {ceiling.corpus['meteor']:.4f}, "
            f"CIDEr-D {ceiling.corpus['cider_d']:.4f}, BLEU-4 {ceiling.corpus['bleu_4']:.4f}."
        )

    lines = [
        "### AAC metrics scoring (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, Vocab)",
        "",
        f"{n} candidates x 5 references ({source}); Java {java.version} ({java.source}); best of {repeats} alternated run(s).",
        "",
        "| path | seconds | Java processes started |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {sec:.2f} | {procs} |" for name, sec, procs in rows]
    lines += [
        "",
        f"Raw / project time ratio: **{raw_best / project_best:.2f}x** (above 1 = the project is faster). "
        f"Largest corpus-score difference between the two paths: {max_diff:.2e}."
        + ceiling_line,
        "",
        "Measured: wall-clock seconds of each call after imports (scorer creation, resource check and per-clip "
        "scores included for the project), and Java processes started during it (tokenizer, METEOR, `java -version` checks).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv))
