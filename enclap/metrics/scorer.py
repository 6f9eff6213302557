"""The scorer: every requested metric over a corpus, Java started once per program, unavailable metrics reported."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, MetricUnavailableError
from .availability import metric_availability
from .fense import FENSE_ECHECKER, FENSE_HOW_TO, FENSE_PENALTY, FENSE_SBERT_MODEL, verify_echecker
from .java import find_java
from .meteor import MeteorProcess
from .names import DEFAULT_METRICS, SUPPORTED_METRICS
from .ptb import ptb_tokenize
from .report import ScoreReport, _unavailable_text
from .resources import provision_resources, resolve_cache_dir

logger = logging.getLogger(__name__)

_NEEDS = {  # internal computations each metric needs
    "bleu_1": {"bleu"},
    "bleu_2": {"bleu"},
    "bleu_3": {"bleu"},
    "bleu_4": {"bleu"},
    "rouge_l": {"rouge_l"},
    "cider_d": {"cider_d"},
    "meteor": {"meteor"},
    "spice": {"spice"},
    "spider": {"cider_d", "spice"},
    "fense": {"sbert", "fer"},
    "spider_fl": {"cider_d", "spice", "fer"},
    "vocab": {"vocab"},
}


def _validate(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    if isinstance(candidates, str) or not isinstance(candidates, Sequence):
        raise ValueError(f"candidates must be a sequence of captions, got {type(candidates).__name__}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"references must be a sequence of caption lists, got {type(references).__name__}")
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists: one list per candidate")
    problems = []
    for i, cand in enumerate(candidates):
        if not isinstance(cand, str):
            problems.append(f"candidate {i} is {type(cand).__name__}, not str")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            problems.append(f"references of clip {i} must be a list of captions, got {type(refs).__name__}")
        elif not refs:
            problems.append(f"clip {i} has no reference")
        else:
            problems += [f"reference {j} of clip {i} is {type(r).__name__}, not str" for j, r in enumerate(refs) if not isinstance(r, str)]
    if problems:
        raise ValueError("invalid caption input: " + "; ".join(problems[:10]) + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))
    return list(candidates), [list(r) for r in references]


class CaptionScorer:
    """Scores candidate captions against references with the AAC metrics, Java started once per metric per call.

    ``metrics``: names from :data:`SUPPORTED_METRICS`. On creation the resources are provisioned (idempotent,
    see :func:`provision_resources`), Java is found and each metric is checked; a metric that cannot run is
    reported in every :class:`ScoreReport` (``strict=True``: :class:`MetricUnavailableError` instead). FENSE
    models are loaded on first use and kept for later calls.
    """

    def __init__(
        self,
        metrics: Sequence[str] = DEFAULT_METRICS,
        *,
        cache_dir: str | os.PathLike | None = None,
        java_path: str | os.PathLike | None = None,
        strict: bool = False,
        device: str | None = None,
        tmp_dir: str | os.PathLike | None = None,
        provision: bool = True,
        fense_sbert_model: str = FENSE_SBERT_MODEL,
        fense_echecker: str = FENSE_ECHECKER,
    ) -> None:
        if isinstance(metrics, str):
            metrics = [m.strip() for m in metrics.split(",") if m.strip()]
        unknown = [m for m in metrics if m not in SUPPORTED_METRICS]
        if unknown:
            raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(SUPPORTED_METRICS)}")
        if not metrics:
            raise ConfigError("no metric requested")
        self.metrics: tuple[str, ...] = tuple(dict.fromkeys(metrics))
        self.strict = strict
        self.device = device
        self.tmp_dir = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
        self.fense_sbert_model = fense_sbert_model
        self.fense_echecker = fense_echecker
        self.cache_dir = resolve_cache_dir(cache_dir)
        provision_problem = ""
        if provision:
            try:
                provision_resources(self.cache_dir)
            except (MetricUnavailableError, OSError) as err:
                provision_problem = str(err)  # the checks below then say which metrics this costs
        self.java, self.java_problem = find_java(java_path)
        self.status = metric_availability(
            self.metrics, self.cache_dir, java_path=java_path, fense_sbert_model=fense_sbert_model, fense_echecker=fense_echecker
        )
        if provision_problem:
            for st in self.status.values():
                if not st.available:
                    st.reason = f"{st.reason} (setup failed: {provision_problem})"
        self._fense_models: tuple[Any, Any, Any] | None = None
        if strict:
            self._raise_if_unavailable({n: _unavailable_text(s) for n, s in self.status.items() if not s.available})

    # -- public -------------------------------------------------------------------------------------------------

    @property
    def unavailable(self) -> dict[str, str]:
        """Requested metrics that cannot run on this machine, with reason and how to enable them."""
        return {n: _unavailable_text(s) for n, s in self.status.items() if not s.available}

    def score(
        self,
        candidates: Sequence[str],
        references: Sequence[Sequence[str]],
        *,
        per_clip: bool = False,
    ) -> ScoreReport:
        """Scores of ``candidates[i]`` against ``references[i]`` (any number of references per clip)."""
        cands, refs = _validate(candidates, references)
        if not cands:
            raise ValueError("nothing to score: no candidate")
        corpus_list, sentence, unavailable, notes = self._evaluate(cands, refs, [list(range(len(cands)))])
        corpus = corpus_list[0]
        return ScoreReport(
            corpus=corpus,
            per_clip={k: v for k, v in sentence.items() if k in corpus} if per_clip else None,
            unavailable=unavailable,
            num_candidates=len(cands),
            notes=notes,
        )

    # -- internals ----------------------------------------------------------------------------------------------

    def _raise_if_unavailable(self, unavailable: dict[str, str]) -> None:
        if unavailable:
            raise MetricUnavailableError(
                "metric(s) unavailable: " + "; ".join(f"{name}: {why}" for name, why in unavailable.items())
            )

    def _torch_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _load_fense(self) -> tuple[Any, Any, Any]:
        if self._fense_models is None:
            from aac_metrics.functional.fer import _load_echecker_and_tokenizer
            from aac_metrics.functional.sbert_sim import _load_sbert

            verify_echecker(self.fense_echecker)  # aac-metrics unpickles it and checks no digest of a file in place
            device = self._torch_device()
            sbert = _load_sbert(self.fense_sbert_model, device=device) if {"fense"} & set(self.metrics) else None
            echecker, tokenizer = _load_echecker_and_tokenizer(self.fense_echecker, None, device=device)
            self._fense_models = (sbert, echecker, tokenizer)
        return self._fense_models

    def _evaluate(
        self,
        cands_raw: list[str],
        refs_raw: list[list[str]],
        groups: list[list[int]],
    ) -> tuple[list[dict[str, float]], dict[str, list[float]], dict[str, str], list[str]]:
        """Scores of each corpus of ``groups`` (index lists partitioning the pairs) and per-pair scores.

        Tokenisation, METEOR, SPICE and FENSE run once over all pairs; corpus-dependent metrics (BLEU,
        CIDEr-D, Vocab, METEOR's aggregation) are computed per group.
        """
        unavailable = dict(self.unavailable)
        runnable = [m for m in self.metrics if m not in unavailable]
        if not runnable:
            return [{} for _ in groups], {}, unavailable, []
        assert self.java is not None  # every runnable metric needs Java for the tokenizer
        needed = set().union(*(_NEEDS[m] for m in runnable))
        meteor: MeteorProcess | MetricUnavailableError | OSError | None = None
        if "meteor" in needed:
            try:  # started first: it loads while the tokenizer and the other metrics run
                meteor = MeteorProcess(self.java.path, self.cache_dir)
            except (MetricUnavailableError, OSError) as err:
                meteor = err
        try:
            return self._evaluate_started(cands_raw, refs_raw, groups, unavailable, runnable, needed, meteor)
        finally:
            if isinstance(meteor, MeteorProcess):
                meteor.close()

    def _evaluate_started(
        self,
        cands_raw: list[str],
        refs_raw: list[list[str]],
        groups: list[list[int]],
        unavailable: dict[str, str],
        runnable: list[str],
        needed: set[str],
        meteor: Any,
    ) -> tuple[list[dict[str, float]], dict[str, list[float]], dict[str, str], list[str]]:
        import numpy as np

        assert self.java is not None
        notes: list[str] = []
        n = len(cands_raw)
        sentence: dict[str, list[float]] = {}
        corpora: list[dict[str, float]] = [{} for _ in groups]

        # 1. One PTB run for candidates and references together.
        flat = cands_raw + [r for refs in refs_raw for r in refs]
        try:
            tokens = ptb_tokenize(flat, self.java.path, self.cache_dir, self.tmp_dir)
        except (RuntimeError, OSError, MetricUnavailableError) as err:
            # every metric scores tokenised text: without the tokenizer none can run
            if self.strict:
                raise MetricUnavailableError(f"the PTB tokenizer failed: {err}") from err
            logger.error("PTB tokenizer failed: %s", err)
            unavailable.update({m: f"the PTB tokenizer failed: {err}" for m in runnable})
            return corpora, sentence, unavailable, notes
        cands = [" ".join(t) for t in tokens[:n]]
        refs: list[list[str]] = []
        pos, dropped, no_refs = n, 0, []
        for i, rs in enumerate(refs_raw):
            kept = [" ".join(t) for t in tokens[pos : pos + len(rs)] if t]
            dropped += len(rs) - len(kept)
            pos += len(rs)
            if not kept:
                no_refs.append(i)
            refs.append(kept)
        if no_refs:
            raise ValueError(
                f"{len(no_refs)} clip(s) have no non-empty reference after tokenisation (clips {no_refs[:20]}); "
                "give each clip at least one reference with words"
            )
        empty_cands = sum(1 for c in cands if not c)
        if empty_cands:
            notes.append(f"{empty_cands} empty candidate(s) scored 0 by the n-gram metrics and SPICE")
        if dropped:
            notes.append(f"{dropped} empty reference(s) left out of their clip's references")

        failed: dict[str, str] = {}  # internal computation -> reason it failed at run time
        values: dict[str, Any] = {}  # internal computation -> per-pair numpy array
        group_scores: list[dict[str, float]] = [{} for _ in groups]

        def run(part: str, fn) -> None:
            try:
                fn()
            except MetricUnavailableError as err:
                failed[part] = str(err)
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as err:
                if self.strict:
                    raise MetricUnavailableError(f"{part} failed: {err}") from err
                logger.error("%s failed: %s", part, err)
                failed[part] = f"{part} failed while scoring: {type(err).__name__}: {err}"

        # 2. Corpus-dependent pure-Python metrics, per group (aac-metrics' own functions).
        if "bleu" in needed:

            def bleu_part() -> None:
                from aac_metrics.functional.bleu import bleu

                arr = np.full((4, n), math.nan)
                for g, group in enumerate(groups):
                    c, s = bleu([cands[i] for i in group], [refs[i] for i in group], n=4, return_1_to_n=True)
                    for k in range(4):
                        group_scores[g][f"bleu_{k + 1}"] = float(c["bleu_1_to_4"][k])
                    arr[:, group] = s["bleu_1_to_4"].numpy()
                for k in range(4):
                    values[f"bleu_{k + 1}"] = arr[k]

            run("bleu", bleu_part)
        if "rouge_l" in needed:

            def rouge_part() -> None:
                from aac_metrics.functional.rouge_l import rouge_l

                _, s = rouge_l(cands, refs)
                values["rouge_l"] = s["rouge_l"].numpy()

            run("rouge_l", rouge_part)
        if "cider_d" in needed:

            def cider_part() -> None:
                from aac_metrics.functional.cider_d import cider_d

                small = [g for g, group in enumerate(groups) if len(group) < 2]
                if small:
                    raise MetricUnavailableError(
                        "CIDEr-D needs at least 2 clips in a corpus (its IDF comes from the references of all clips)"
                        + (f"; got {len(groups[small[0]])}" if len(groups) == 1 else f"; {len(small)} round(s) have fewer")
                    )
                arr = np.full(n, math.nan)
                for g, group in enumerate(groups):
                    c, s = cider_d([cands[i] for i in group], [refs[i] for i in group])
                    group_scores[g]["cider_d"] = float(c["cider_d"])
                    arr[group] = s["cider_d"].numpy()
                values["cider_d"] = arr

            run("cider_d", cider_part)
        if "vocab" in needed:

            def vocab_part() -> None:
                from aac_metrics.functional.vocab import vocab

                for g, group in enumerate(groups):
                    c, _ = vocab([cands[i] for i in group], [refs[i] for i in group])
                    group_scores[g].update({k: float(v) for k, v in c.items()})

            run("vocab", vocab_part)

        # 3. Java metrics: one process each for all pairs.
        if "meteor" in needed:

            def meteor_part() -> None:
                if not isinstance(meteor, MeteorProcess):
                    raise MetricUnavailableError(f"METEOR could not start: {meteor}")
                sent, corp = meteor.score(cands, refs, groups)
                values["meteor"] = np.asarray(sent)
                for g, value in enumerate(corp):
                    group_scores[g]["meteor"] = value

            run("meteor", meteor_part)
        if "spice" in needed:

            def spice_part() -> None:
                from aac_metrics.functional.spice import spice

                arr = np.zeros(n)
                work = [i for i in range(n) if cands[i]]  # an empty candidate has no scene graph: 0, not run
                if work:
                    _, s = spice(
                        [cands[i] for i in work],
                        [refs[i] for i in work],
                        cache_path=str(self.cache_dir),
                        java_path=self.java.path,
                        tmp_path=str(self.tmp_dir),
                    )
                    got = s["spice"].numpy()
                    nan = int(np.isnan(got).sum())
                    if nan:
                        # SPICE's F-score is 0/0 when the candidate yields no semantic tuple: it matched nothing.
                        notes.append(f"SPICE found no semantic tuple in {nan} candidate(s): scored 0")
                        got = np.nan_to_num(got, nan=0.0)
                    arr[work] = got
                values["spice"] = arr

            run("spice", spice_part)

        # 4. FENSE models (sentence-level scores, corpus = mean).
        if "fer" in needed or "sbert" in needed:

            def fense_part() -> None:
                from aac_metrics.functional.fer import fer
                from aac_metrics.functional.sbert_sim import sbert_sim

                try:
                    sbert_model, echecker, tokenizer = self._load_fense()
                except Exception as err:  # model loading fails in many ways (network, cache, files)
                    raise MetricUnavailableError(
                        f"FENSE models could not be loaded ({type(err).__name__}: {err}); {FENSE_HOW_TO}"
                    ) from err
                device = self._torch_device()
                _, f = fer(cands, echecker=echecker, echecker_tokenizer=tokenizer, device=device)
                values["fer"] = f["fer"].cpu().numpy().astype(float)
                if sbert_model is not None and "sbert" in needed:
                    _, s = sbert_sim(cands, refs, sbert_model=sbert_model, device=device)
                    values["sbert"] = s["sbert_sim"].cpu().numpy().astype(float)

            run("fense", fense_part)
            if "fense" in failed:
                failed["fer"] = failed["sbert"] = failed.pop("fense")

        # 5. Assemble: each requested metric from its parts, or its reason.
        for metric in runnable:
            broken = [failed[p] for p in sorted(_NEEDS[metric]) if p in failed]
            if broken:
                unavailable[metric] = "; ".join(dict.fromkeys(broken))
                continue
            if metric.startswith("bleu_"):
                sentence[metric] = values[metric].tolist()
                for g in range(len(groups)):
                    corpora[g][metric] = group_scores[g][metric]
            elif metric in ("rouge_l", "spice"):
                sentence[metric] = values[metric].tolist()
                for g, group in enumerate(groups):
                    corpora[g][metric] = float(np.mean(values[metric][group]))
            elif metric in ("cider_d", "meteor"):
                sentence[metric] = values[metric].tolist()
                for g in range(len(groups)):
                    corpora[g][metric] = group_scores[g][metric]
            elif metric == "spider":
                spider = (values["cider_d"] + values["spice"]) / 2.0
                sentence[metric] = spider.tolist()
                for g, group in enumerate(groups):
                    corpora[g][metric] = (group_scores[g]["cider_d"] + float(np.mean(values["spice"][group]))) / 2.0
            elif metric == "fense":
                fense = values["sbert"] * (1.0 - FENSE_PENALTY * values["fer"])
                sentence[metric] = fense.tolist()
                for g, group in enumerate(groups):
                    corpora[g][metric] = float(np.mean(fense[group]))
            elif metric == "spider_fl":
                spider_fl = (values["cider_d"] + values["spice"]) / 2.0 * (1.0 - FENSE_PENALTY * values["fer"])
                sentence[metric] = spider_fl.tolist()
                for g, group in enumerate(groups):
                    corpora[g][metric] = float(np.mean(spider_fl[group]))
            elif metric == "vocab":
                for g in range(len(groups)):
                    corpora[g].update({k: v for k, v in group_scores[g].items() if k.startswith("vocab.")})
        if self.strict:
            self._raise_if_unavailable({m: unavailable[m] for m in self.metrics if m in unavailable})
        return corpora, sentence, unavailable, notes
