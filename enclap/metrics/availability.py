"""Which metrics can run here, checked honestly (files present, Java of the right version, models cached)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .corenlp import CORENLP_HOW_TO, CORENLP_JARS
from .fense import FENSE_ECHECKER, FENSE_HOW_TO, FENSE_SBERT_MODEL, _fense_problems
from .java import JAVA_HOW_TO, JAVA_MIN, SPICE_JAVA_MAX, JavaRuntime, find_java
from .names import DEFAULT_METRICS, SUPPORTED_METRICS
from .report import MetricStatus
from .resources import METEOR_JAR, METEOR_PARAPHRASE, PTB_JAR, SETUP_HOW_TO, SPICE_JAR, SPICE_LIB, SPICE_LIB_JARS, _missing, resolve_cache_dir


def _check_metric(
    name: str,
    root: Path,
    java: JavaRuntime | None,
    java_problem: str,
    fense_sbert: str,
    fense_echecker: str,
    memo: dict[str, MetricStatus],
) -> MetricStatus:
    if name in memo:
        return memo[name]

    def status(problems: list[str], how: list[str]) -> MetricStatus:
        if not problems:
            return MetricStatus(name, True)
        return MetricStatus(name, False, "; ".join(problems), "; ".join(dict.fromkeys(h for h in how if h)))

    def tokenizer_needs() -> tuple[list[str], list[str]]:
        problems, how = [], []
        if java is None:
            problems.append(java_problem)
            how.append(JAVA_HOW_TO)
        missing = _missing(root, [PTB_JAR])
        if missing:
            problems.append(f"PTB tokenizer jar missing ({missing[0]})")
            how.append(SETUP_HOW_TO)
        return problems, how

    if name not in SUPPORTED_METRICS:
        result = MetricStatus(name, False, f"unknown metric (known: {', '.join(SUPPORTED_METRICS)})")
    elif name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d", "vocab"):
        result = status(*tokenizer_needs())
    elif name == "meteor":
        problems, how = tokenizer_needs()
        missing = _missing(root, [METEOR_JAR, METEOR_PARAPHRASE])
        if missing:
            problems.append(f"METEOR files missing ({', '.join(missing)})")
            how.append(SETUP_HOW_TO)
        result = status(problems, how)
    elif name == "spice":
        problems, how = tokenizer_needs()
        if java is not None and java.major > SPICE_JAVA_MAX:
            problems.append(f"SPICE needs Java {JAVA_MIN}-{SPICE_JAVA_MAX}, {java.path} is Java {java.version}")
            how.append(JAVA_HOW_TO)
        missing = _missing(root, [SPICE_JAR] + [SPICE_LIB / n for n in SPICE_LIB_JARS])
        if missing:
            problems.append(f"SPICE files missing ({len(missing)}, e.g. {missing[0]})")
            how.append(SETUP_HOW_TO)
        corenlp = _missing(root, [SPICE_LIB / n for n in CORENLP_JARS])
        if corenlp:
            problems.append(f"Stanford CoreNLP 3.6.0 jars missing ({', '.join(corenlp)})")
            how.append(CORENLP_HOW_TO)
        result = status(problems, how)
    elif name == "spider":
        parts = [_check_metric(n, root, java, java_problem, fense_sbert, fense_echecker, memo) for n in ("cider_d", "spice")]
        result = status(
            [f"needs {p.name.upper()}: {p.reason}" for p in parts if not p.available],
            [p.how_to_enable for p in parts if not p.available],
        )
    elif name == "fense":
        problems, how = tokenizer_needs()
        fense = _fense_problems(fense_sbert, fense_echecker, need_sbert=True)
        result = status(problems + fense, how + ([FENSE_HOW_TO] if fense else []))
    else:  # spider_fl
        spider = _check_metric("spider", root, java, java_problem, fense_sbert, fense_echecker, memo)
        fer = _fense_problems(fense_sbert, fense_echecker, need_sbert=False)
        problems = ([spider.reason] if not spider.available else []) + fer
        result = status(problems, [spider.how_to_enable if not spider.available else ""] + ([FENSE_HOW_TO] if fer else []))
    memo[name] = result
    return result


def metric_availability(
    metrics: Sequence[str] = DEFAULT_METRICS,
    cache_dir: str | os.PathLike | None = None,
    *,
    java_path: str | os.PathLike | None = None,
    fense_sbert_model: str = FENSE_SBERT_MODEL,
    fense_echecker: str = FENSE_ECHECKER,
) -> dict[str, MetricStatus]:
    """Which of ``metrics`` can run here, checked honestly: the files exist and Java runs (in the right version).

    Writes nothing: a fresh machine reports the jars missing until :func:`provision_resources` has run
    (:class:`CaptionScorer` runs it itself).
    """
    root = resolve_cache_dir(cache_dir)
    java, java_problem = find_java(java_path)
    memo: dict[str, MetricStatus] = {}
    return {
        name: _check_metric(name, root, java, java_problem, fense_sbert_model, fense_echecker, memo)
        for name in dict.fromkeys(metrics)
    }
