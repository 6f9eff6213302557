"""The reference-only ceiling: each clip's references scored against each other, leave-one-out."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from .names import DEFAULT_METRICS
from .ptb import ptb_tokenize, sanitize_caption
from .report import ScoreReport
from .scorer import CaptionScorer

logger = logging.getLogger(__name__)


def reference_ceiling(
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    scorer: CaptionScorer | None = None,
    per_clip: bool = False,
    **scorer_kwargs: Any,
) -> ScoreReport:
    """Leave-one-out scores of the references against each other: the human ceiling (see the module docstring).

    Empty references are dropped first; clips left with fewer than 2 are skipped (counted in ``notes``, with
    a warning). Round i gathers the clips with more than i references and is scored as one corpus; rounds
    with fewer than 2 clips are not formed (a corpus of one clip has no CIDEr-D), which only matters when
    clips have different numbers of references. ``per_clip`` values belong to the clips listed in
    ``ScoreReport.indices``.
    """
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"references must be a sequence of caption lists, got {type(references).__name__}")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise ValueError(f"references of clip {index} must be a list of captions, got {type(refs).__name__}")
        bad = [j for j, r in enumerate(refs) if not isinstance(r, str)]
        if bad:
            raise ValueError(f"reference {bad[0]} of clip {index} is {type(refs[bad[0]]).__name__}, not str")
    scorer = scorer if scorer is not None else CaptionScorer(metrics, **scorer_kwargs)
    # A reference is usable when it has words *after tokenisation* ("..." has none): one tokenizer run
    # decides it, so such a reference is neither a candidate scored 0 nor a clip's only reference.
    flat = [r for refs in references for r in refs]
    if scorer.java is not None and flat and len(scorer.unavailable) < len(scorer.metrics):
        has_words = iter([bool(t) for t in ptb_tokenize(flat, scorer.java.path, scorer.cache_dir, scorer.tmp_dir)])
    else:  # no Java: every metric is reported unavailable anyway
        has_words = iter([bool(sanitize_caption(r)) for r in flat])
    kept: list[int] = []
    usable_refs: list[list[str]] = []
    empty = 0
    for index, refs in enumerate(references):
        usable = [r for r in refs if next(has_words)]
        empty += len(refs) - len(usable)
        if len(usable) >= 2:
            kept.append(index)
            usable_refs.append(usable)
    # Round i holds the clips that have an (i+1)-th reference; a round of one clip is no corpus (CIDEr-D's
    # IDF needs several clips), so rounds stop where fewer than 2 clips remain.
    num_rounds = sum(1 for i in range(max((len(u) for u in usable_refs), default=0)) if sum(len(u) > i for u in usable_refs) >= 2)
    pairs_cand: list[str] = []
    pairs_refs: list[list[str]] = []
    pair_clip: list[int] = []
    groups: list[list[int]] = []
    for i in range(num_rounds):
        group = []
        for clip, usable in enumerate(usable_refs):
            if len(usable) > i:
                group.append(len(pairs_cand))
                pairs_cand.append(usable[i])
                pairs_refs.append(usable[:i] + usable[i + 1 :])
                pair_clip.append(clip)
        groups.append(group)
    unused = sum(max(0, len(u) - num_rounds) for u in usable_refs)
    skipped = len(references) - len(kept)
    if num_rounds == 0:
        raise ValueError(
            f"the reference ceiling needs at least 2 clips with 2 or more non-empty references; "
            f"{len(kept)} of the {len(references)} clip(s) given have them"
        )
    notes = [f"leave-one-out over {len(kept)} clip(s), {len(pairs_cand)} reference(s) in {num_rounds} round(s)"]
    if empty:
        notes.append(f"{empty} empty reference(s) dropped")
    if skipped:
        logger.warning("reference ceiling: %d clip(s) with fewer than 2 references skipped", skipped)
        notes.append(f"{skipped} clip(s) with fewer than 2 references skipped")
    if unused:
        notes.append(f"{unused} reference(s) beyond round {num_rounds} not used as candidates (fewer than 2 clips have them)")
    corpora, sentence, unavailable, more_notes = scorer._evaluate(pairs_cand, pairs_refs, groups)
    names = [k for k in corpora[0]]
    corpus = {k: sum(c[k] for c in corpora) / len(corpora) for k in names}
    clip_scores: dict[str, list[float]] | None = None
    if per_clip:
        clip_scores = {}
        for k, vals in sentence.items():
            if k not in corpus:
                continue
            sums = [0.0] * len(kept)
            counts = [0] * len(kept)
            for value, clip in zip(vals, pair_clip):
                sums[clip] += value
                counts[clip] += 1
            clip_scores[k] = [s / c for s, c in zip(sums, counts)]
    return ScoreReport(
        corpus=corpus,
        per_clip=clip_scores,
        unavailable=unavailable,
        num_candidates=len(kept),
        notes=notes + more_notes,
        indices=kept,
        rounds=corpora,
    )
