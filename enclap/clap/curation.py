"""Curating audio-text pairs from unpaired audio and a caption corpus with a trained CLAP (DU / DS / ADS).

The recipe of Wang et al., "Unsupervised Improvement of Audio-Text Cross-Modal Representations" (WASPAA
2023; public code ``zhepeiw/clap_curation``): a trained teacher CLAP embeds an unlabelled audio pool and
a caption corpus, and pairs are made where the teacher finds them similar. Three ways:

* **DU** (domain-unspecific, :func:`curate_du`): for every unlabelled clip, the corpus captions whose
  cosine similarity to the clip is ``>= threshold`` and/or is among the clip's ``top_k``. The paper's
  default is a threshold (0.75 on its teacher); its code also has a top-5 variant.
* **DS** (domain-specific, :func:`select_domain_captions`): the captions of the teacher's training set
  whose similarity to the prompted class labels of a target task (ESC-50, UrbanSound8K, TUT...; prompt
  ``"this is a sound of {label}"``) reaches the threshold for *some* label (0.7 in the paper; 0.675 for
  TUT) and/or which are among some label's ``top_k``. Their annotated pairs form the DS set.
* **ADS** (augmented DS, :func:`curate_ads`): DU with the captions restricted to the DS subset (0.7).

**Selection rule** (one rule for all three, :func:`search`): a candidate ``j`` is kept for a query ``i``
when ``s_ij >= threshold`` (inclusive) if a threshold is given, and ``j`` is among the ``top_k`` best of
``i`` if ``top_k`` is given (both given: both must hold). Ranking is by similarity, ties broken by the
lower candidate index, so the top-k is always exactly ``min(top_k, candidates)`` items. Pairs come out
in query order, then rank order.

**Bounded memory.** The similarity matrix is never formed: queries and candidates are cut in blocks of
``block_size`` rows, each ``(block, block)`` product is reduced at once to a running top-k per query and
to the threshold hits. Peak memory beyond the two embedding tables is ``O(block_size**2 + kept pairs)``:
at most about ``12 * block_size**2`` bytes of temporaries (192 MiB at the default 4096: the float32
scores, one partitioned copy, three boolean masks) plus 24 bytes per kept pair (``top_k`` per query, or
the hits of the threshold) and 8 bytes per query and sweep threshold when statistics are asked for,
whatever the number of clips x captions (a dense 100k x 100k float32 matrix would be 37 GiB); the
:class:`CuratedPair` list the curation functions return adds about 100 bytes per pair.
``bench/bench_curation.py`` measures it (10k x 10k at block 4096: 183 MiB above the tables; at 1024:
39 MiB). After the first candidate block only scores ``>=`` a query's current k-th best can enter its
top-k, so the exact top-k costs little more than the product itself.
The result is the dense computation's (tests compare them for several block sizes); only the last
bits of a similarity depend on the block shape (float32 products), as with any BLAS.

Embeddings live in an :class:`EmbeddingTable` directory (``vectors.npy``, ``ids.json``, ``meta.json``,
optionally ``sources.json``: what each row was computed from); :mod:`enclap.jobs.curate` writes them
(``enclap-curate embed-audio`` / ``embed-text``) and runs the curation from the command line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, ManifestError
from ..fileio import write_atomic

TABLE_FORMAT = "enclap-embedding-table"
TABLE_VERSION = 1
VECTORS_FILE = "vectors.npy"
IDS_FILE = "ids.json"
META_FILE = "meta.json"
SOURCES_FILE = "sources.json"

# The paper's prompt for class labels (its code: "this is a sound of " + label); one template.
PAPER_PROMPT = "this is a sound of {label}"
# The paper's thresholds on its teacher (cosine similarity of L2-normalised embeddings).
PAPER_DU_THRESHOLD = 0.75
PAPER_DS_THRESHOLD = 0.7
PAPER_ADS_THRESHOLD = 0.7
DEFAULT_BLOCK_SIZE = 4096
DEFAULT_SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
HISTOGRAM_BINS = 200  # over [-1, 1]: bins of 0.01

MANIFEST_COLUMNS = ("file_path", "caption", "similarity")


# ------------------------------------------------------------------------------------------ embedding tables
@dataclass
class EmbeddingTable:
    """L2-normalised float32 rows with their ids (unique), what produced them, and what each row was made from.

    ``meta`` holds at least ``kind`` (``audio`` / ``text`` / ``labels``) and ``model`` once saved;
    ``sources[i]`` (optional) is row ``i``'s audio file path (relative to the audio root) or caption text.
    Rows that are not unit length are normalised on construction (a zero or non-finite row is an error).
    """

    ids: list[str]
    vectors: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    sources: list[str] | None = None

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        vectors = np.asarray(self.vectors)
        if vectors.ndim != 2:
            raise ConfigError(f"embedding vectors must be a 2-D (rows, dim) array, got shape {vectors.shape}")
        if vectors.shape[0] != len(self.ids):
            raise ConfigError(f"{len(self.ids)} ids for {vectors.shape[0]} embedding rows")
        if len(set(self.ids)) != len(self.ids):
            seen: set[str] = set()
            dup = next(i for i in self.ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise ConfigError(f"embedding ids must be unique; '{dup}' appears more than once")
        if self.sources is not None:
            self.sources = [str(s) for s in self.sources]
            if len(self.sources) != len(self.ids):
                raise ConfigError(f"{len(self.sources)} sources for {len(self.ids)} embedding rows")
        if vectors.dtype != np.float32:
            vectors = vectors.astype(np.float32)
        if vectors.shape[0]:
            norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
            if not np.isfinite(norms).all() or (norms == 0).any():
                bad = int(np.flatnonzero(~np.isfinite(norms) | (norms == 0))[0])
                raise ConfigError(f"embedding '{self.ids[bad]}' is zero or not finite: it has no direction")
            if np.abs(norms - 1.0).max() > 1e-4:  # normalise only when needed: a memory-mapped table stays mapped
                vectors = (vectors / norms[:, None]).astype(np.float32)
        self.vectors = vectors

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", ""))

    @property
    def model(self) -> str:
        return str(self.meta.get("model", ""))

    def index(self) -> dict[str, int]:
        """Row of every id."""
        return {id_: i for i, id_ in enumerate(self.ids)}

    def subset(self, ids: Sequence[str]) -> "EmbeddingTable":
        """The rows of ``ids``, in that order (an unknown id is a ConfigError naming it)."""
        where = self.index()
        missing = [i for i in ids if i not in where]
        if missing:
            raise ConfigError(f"{len(missing)} id(s) not in the embedding table, e.g. {missing[:3]}")
        rows = np.array([where[i] for i in ids], dtype=np.int64)
        sources = [self.sources[r] for r in rows] if self.sources is not None else None
        return EmbeddingTable(list(ids), np.asarray(self.vectors)[rows], dict(self.meta), sources)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``vectors.npy``, ``ids.json`` (+ ``sources.json``) and, last, ``meta.json`` (the commit mark).

        Each file is written to a temporary name and renamed, so an interrupted save leaves the previous
        table or an incomplete one that :meth:`load` rejects, never a mix that looks whole.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta_path = directory / META_FILE
        if meta_path.exists():
            meta_path.unlink()  # the old commit mark goes first: a crash below leaves no valid-looking mix
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(self.vectors, dtype=np.float32), allow_pickle=False)
        write_atomic(directory / VECTORS_FILE, buffer.getvalue())
        write_atomic(directory / IDS_FILE, json.dumps(self.ids, ensure_ascii=False).encode("utf-8"))
        sources_path = directory / SOURCES_FILE
        if self.sources is not None:
            write_atomic(sources_path, json.dumps(self.sources, ensure_ascii=False).encode("utf-8"))
        elif sources_path.exists():
            sources_path.unlink()
        meta = {**self.meta, "format": TABLE_FORMAT, "format_version": TABLE_VERSION, "count": len(self.ids),
                "dim": self.dim, "normalized": True, "has_sources": self.sources is not None}
        write_atomic(meta_path, (json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, directory: str | os.PathLike, *, mmap: bool = False) -> "EmbeddingTable":
        """Read a table written by :meth:`save`; ``mmap`` maps the vectors instead of reading them.

        A missing directory or file, unreadable JSON, another format, or counts / shapes that do not
        agree raise :class:`ManifestError` naming the directory and every problem found.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise ManifestError(directory, ["no such directory" if not directory.exists() else "not a directory"])
        problems: list[str] = []

        def read_json(name: str) -> Any:
            path = directory / name
            if not path.is_file():
                problems.append(f"missing {name}" + (" (not an embedding table, or its writing was interrupted)"
                                                     if name == META_FILE else ""))
                return None
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as err:
                problems.append(f"{name}: unreadable ({err})")
                return None

        meta = read_json(META_FILE)
        ids = read_json(IDS_FILE)
        if isinstance(meta, dict):
            if meta.get("format") != TABLE_FORMAT:
                problems.append(f"{META_FILE}: not an {TABLE_FORMAT} (format {meta.get('format')!r})")
            elif meta.get("format_version") != TABLE_VERSION:
                problems.append(f"{META_FILE}: format version {meta.get('format_version')} (this library reads {TABLE_VERSION})")
        elif meta is not None:
            problems.append(f"{META_FILE}: expected a JSON object")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
            problems.append(f"{IDS_FILE}: expected a JSON list of strings")
            ids = None
        sources = None
        if isinstance(meta, dict) and meta.get("has_sources"):
            sources = read_json(SOURCES_FILE)
            if sources is not None and (not isinstance(sources, list) or not all(isinstance(s, str) for s in sources)):
                problems.append(f"{SOURCES_FILE}: expected a JSON list of strings")
                sources = None
        vectors = None
        vectors_path = directory / VECTORS_FILE
        if not vectors_path.is_file():
            problems.append(f"missing {VECTORS_FILE}")
        else:
            try:
                vectors = np.load(vectors_path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (OSError, ValueError) as err:
                problems.append(f"{VECTORS_FILE}: unreadable ({err})")
        if vectors is not None:
            if vectors.ndim != 2:
                problems.append(f"{VECTORS_FILE}: shape {vectors.shape}, expected (rows, dim)")
            else:
                if ids is not None and len(ids) != vectors.shape[0]:
                    problems.append(f"{IDS_FILE} has {len(ids)} ids but {VECTORS_FILE} {vectors.shape[0]} rows")
                if isinstance(meta, dict) and meta.get("count") not in (None, vectors.shape[0]):
                    problems.append(f"{META_FILE} says {meta.get('count')} rows but {VECTORS_FILE} has {vectors.shape[0]}")
                if isinstance(meta, dict) and meta.get("dim") not in (None, vectors.shape[1]):
                    problems.append(f"{META_FILE} says dim {meta.get('dim')} but {VECTORS_FILE} has {vectors.shape[1]}")
        if sources is not None and ids is not None and len(sources) != len(ids):
            problems.append(f"{SOURCES_FILE} has {len(sources)} entries for {len(ids)} ids")
        if problems:
            raise ManifestError(directory, problems)
        try:
            return cls(ids, vectors, dict(meta), sources)
        except ConfigError as err:
            raise ManifestError(directory, [str(err)]) from err


# ------------------------------------------------------------------------------------------ the search
@dataclass(frozen=True, slots=True)
class CuratedPair:
    """One curated pair: a clip, a caption, and the teacher's cosine similarity between them."""

    audio_id: str
    text_id: str
    similarity: float


@dataclass
class SearchStats:
    """What a threshold sweep would keep, and the histogram of *all* query-candidate similarities.

    ``kept[t]`` / ``queries_with_pair[t]``: pairs kept / queries with at least one pair if the threshold
    were ``thresholds[t]`` (with the search's ``top_k`` if it had one). ``histogram`` counts every pair's
    similarity in bins of 0.01 over [-1, 1] (:func:`histogram_bins`; ``bin_edges`` for plotting).
    """

    thresholds: tuple[float, ...]
    kept: list[int]
    queries_with_pair: list[int]
    histogram: np.ndarray
    bin_edges: np.ndarray
    queries: int
    candidates: int
    top_k: int | None
    threshold: float | None


@dataclass
class SearchResult:
    """Kept pairs as parallel arrays (query row, candidate row, similarity), query order then rank order."""

    query: np.ndarray
    candidate: np.ndarray
    similarity: np.ndarray
    stats: SearchStats | None = None

    def __len__(self) -> int:
        return int(self.query.shape[0])


def _check_selection(threshold: float | None, top_k: int | None, block_size: int) -> None:
    if threshold is None and top_k is None:
        raise ConfigError("give a similarity threshold and/or top_k: without either every pair would be kept")
    if threshold is not None and not math.isfinite(float(threshold)):
        raise ConfigError(f"threshold must be a finite number, got {threshold}")
    if top_k is not None and (int(top_k) != top_k or int(top_k) < 1):
        raise ConfigError(f"top_k must be a whole number >= 1, got {top_k}")
    if int(block_size) < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")


def row_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices ``(rows, k)`` of each row's ``k`` highest scores, ties broken by the lower column.

    Exact at ties in O(rows x columns): the k-th highest value ``t`` of a row is found by partition;
    every column above ``t`` is in, and the lowest-indexed columns equal to ``t`` fill the rest.
    Columns come out in increasing order (not by score).
    """
    rows, cols = scores.shape
    if k >= cols:
        return np.broadcast_to(np.arange(cols), (rows, cols)).copy()
    kth = np.partition(scores, cols - k, axis=1)[:, cols - k]
    above = scores > kth[:, None]
    equal = scores == kth[:, None]
    need = k - above.sum(axis=1)
    tied = np.flatnonzero(equal.sum(axis=1) > need)  # rows where only some of the ties fit
    if tied.size:
        first = np.cumsum(equal[tied], axis=1, dtype=np.int32) <= need[tied, None]
        equal[tied] &= first
    keep = above | equal
    return np.nonzero(keep)[1].reshape(rows, k)


def _merge_top_k(best_s: np.ndarray, best_c: np.ndarray, scores: np.ndarray, offset: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The running top-k ``(rows, k)`` of a query block merged with one more candidate block's scores.

    Only entries ``>=`` a row's current k-th best can enter its top-k, so after the first block a cheap
    mask leaves few candidates; when many pass (the first block, or a flat row) the block's own exact
    top-k (:func:`row_top_k`) is taken first. The merge sorts by (row, -similarity, candidate index), so
    ties go to the lower candidate index across blocks as within one.
    """
    rows = scores.shape[0]
    mask = scores >= best_s[:, k - 1 : k]
    if np.count_nonzero(mask) > 4 * rows * k:
        del mask
        local = row_top_k(scores, k)
        new_r = np.repeat(np.arange(rows), local.shape[1])
        new_c = local.reshape(-1)
    else:
        new_r, new_c = np.nonzero(mask)
        del mask
    new_s = scores[new_r, new_c]
    all_r = np.concatenate([np.repeat(np.arange(rows), k), new_r])
    all_c = np.concatenate([best_c.reshape(-1), new_c + offset])
    all_s = np.concatenate([best_s.reshape(-1), new_s])
    order = np.lexsort((all_c, -all_s, all_r))
    sorted_r = all_r[order]
    rank = np.arange(order.size) - np.searchsorted(sorted_r, np.arange(rows))[sorted_r]
    keep = order[rank < k]  # exactly k per row (each row has its k running entries), rows in order
    return all_s[keep].reshape(rows, k), all_c[keep].reshape(rows, k)


def search(
    queries: np.ndarray,
    candidates: np.ndarray,
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    sweep: Sequence[float] | None = None,
    progress: bool = False,
) -> SearchResult:
    """The pairs of ``(queries, dim)`` x ``(candidates, dim)`` rows kept by the selection rule, blockwise.

    See the module docstring for the rule and the memory bound. ``sweep`` (thresholds) also collects
    :class:`SearchStats` (the chosen threshold is added to it); ``progress`` shows a tqdm bar over blocks.
    """
    _check_selection(threshold, top_k, block_size)
    queries = np.asarray(queries)
    candidates = np.asarray(candidates)
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ConfigError(f"embeddings of different sizes cannot be compared: {queries.shape} vs {candidates.shape}")
    n_q, n_c = queries.shape[0], candidates.shape[0]
    block = int(block_size)
    k = None if top_k is None else min(int(top_k), n_c)
    thresholds: tuple[float, ...] = ()
    if sweep is not None:
        thresholds = tuple(sorted({float(t) for t in sweep} | ({float(threshold)} if threshold is not None else set())))
    counts = np.zeros((n_q, len(thresholds)), dtype=np.int64) if sweep is not None else None
    histogram = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
    out_q: list[np.ndarray] = []
    out_c: list[np.ndarray] = []
    out_s: list[np.ndarray] = []

    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=math.ceil(n_q / block) * math.ceil(n_c / block) if n_c else 0, desc="similarity blocks",
                   unit="block", file=sys.stderr)
    for q0 in range(0, n_q, block):
        q_block = np.ascontiguousarray(queries[q0 : q0 + block], dtype=np.float32)
        rows = q_block.shape[0]
        if k:
            best_s = np.full((rows, k), -np.inf, dtype=np.float32)
            best_c = np.full((rows, k), n_c, dtype=np.int64)  # placeholders rank last (index past the end)
        hits_q, hits_c, hits_s = [], [], []
        for c0 in range(0, n_c, block):
            c_block = np.ascontiguousarray(candidates[c0 : c0 + block], dtype=np.float32)
            scores = q_block @ c_block.T
            if k:
                best_s, best_c = _merge_top_k(best_s, best_c, scores, c0, k)
            elif threshold is not None:
                r, c = np.nonzero(scores >= threshold)
                hits_q.append(r + q0)
                hits_c.append(c + c0)
                hits_s.append(scores[r, c])
            if counts is not None:
                for t, value in enumerate(thresholds):
                    counts[q0 : q0 + rows, t] += np.count_nonzero(scores >= value, axis=1)
                histogram += _histogram(scores)
            if bar is not None:
                bar.update(1)
        if k:
            q_idx = np.repeat(np.arange(q0, q0 + rows, dtype=np.int64), k)
            c_idx, s_val = best_c.reshape(-1), best_s.reshape(-1)
            if threshold is not None:
                keep = s_val >= threshold
                q_idx, c_idx, s_val = q_idx[keep], c_idx[keep], s_val[keep]
        elif hits_q:
            q_idx, c_idx, s_val = np.concatenate(hits_q), np.concatenate(hits_c), np.concatenate(hits_s)
            order = np.lexsort((c_idx, -s_val, q_idx))
            q_idx, c_idx, s_val = q_idx[order], c_idx[order], s_val[order]
        else:
            continue
        out_q.append(q_idx)
        out_c.append(c_idx)
        out_s.append(s_val)
    if bar is not None:
        bar.close()
    result = SearchResult(
        np.concatenate(out_q) if out_q else np.zeros(0, dtype=np.int64),
        np.concatenate(out_c) if out_c else np.zeros(0, dtype=np.int64),
        np.concatenate(out_s).astype(np.float32) if out_s else np.zeros(0, dtype=np.float32),
    )
    if counts is not None:
        per_query = counts if k is None else np.minimum(counts, k)
        result.stats = SearchStats(
            thresholds=thresholds,
            kept=[int(v) for v in per_query.sum(axis=0)],
            queries_with_pair=[int(v) for v in (per_query > 0).sum(axis=0)],
            histogram=histogram,
            bin_edges=np.linspace(-1.0, 1.0, HISTOGRAM_BINS + 1),
            queries=n_q,
            candidates=n_c,
            top_k=None if top_k is None else int(top_k),
            threshold=None if threshold is None else float(threshold),
        )
    return result


def histogram_bins(scores: np.ndarray) -> np.ndarray:
    """Bin of every similarity: ``floor(100 * (s + 1))`` in float32, clipped to ``[0, HISTOGRAM_BINS)`` (bins of
    0.01 over [-1, 1]; a value a rounding error outside goes to the end bin)."""
    half = np.float32(HISTOGRAM_BINS / 2)
    q = np.asarray(scores, dtype=np.float32) * half
    q += half
    np.floor(q, out=q)
    np.clip(q, 0, HISTOGRAM_BINS - 1, out=q)
    return q.astype(np.intp)


def _histogram(scores: np.ndarray, rows: int = 256) -> np.ndarray:
    counts = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
    for r in range(0, scores.shape[0], rows):  # row slices keep the temporaries small
        counts += np.bincount(histogram_bins(scores[r : r + rows]).reshape(-1), minlength=HISTOGRAM_BINS)
    return counts


# ------------------------------------------------------------------------------------------ DU / DS / ADS
@dataclass
class Curation:
    """The pairs of a curation and, when a sweep was asked for, its statistics."""

    pairs: list[CuratedPair]
    stats: SearchStats | None
    audio: int  # clips searched
    captions: int  # captions searched

    @property
    def clips_without_pair(self) -> int:
        return self.audio - len({p.audio_id for p in self.pairs})

    @property
    def captions_used(self) -> int:
        return len({p.text_id for p in self.pairs})


def _check_tables(audio: EmbeddingTable, text: EmbeddingTable) -> None:
    if audio.dim != text.dim:
        raise ConfigError(
            f"audio embeddings ({audio.model or 'unknown model'}) have {audio.dim} dimensions but text embeddings "
            f"({text.model or 'unknown model'}) {text.dim}: they come from different CLAP models"
        )
    if audio.model and text.model and audio.model != text.model:
        import logging

        logging.getLogger(__name__).warning("audio embeddings are from '%s' but text embeddings from '%s'",
                                            audio.model, text.model)


def curate(
    audio: EmbeddingTable,
    text: EmbeddingTable,
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    restrict_to: Sequence[str] | None = None,
    sweep: Sequence[float] | None = None,
    progress: bool = False,
) -> Curation:
    """DU pairs of every clip (ADS when ``restrict_to`` names the captions allowed), with statistics on request."""
    _check_tables(audio, text)
    if restrict_to is not None:
        text = text.subset(list(dict.fromkeys(restrict_to)))
    result = search(audio.vectors, text.vectors, threshold=threshold, top_k=top_k, block_size=block_size,
                    sweep=sweep, progress=progress)
    pairs = [CuratedPair(audio.ids[q], text.ids[c], float(s))
             for q, c, s in zip(result.query.tolist(), result.candidate.tolist(), result.similarity.tolist())]
    return Curation(pairs, result.stats, len(audio), len(text))


def curate_du(
    audio: EmbeddingTable,
    text: EmbeddingTable,
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[CuratedPair]:
    """Domain-unspecific curation: for each clip the captions with similarity ``>= threshold`` and/or in its ``top_k``.

    Both given: both must hold. Ties in the top-k go to the lower caption index. Clip order, then rank order.
    """
    return curate(audio, text, threshold=threshold, top_k=top_k, block_size=block_size).pairs


def curate_ads(
    audio: EmbeddingTable,
    text: EmbeddingTable,
    domain_ids: Sequence[str],
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[CuratedPair]:
    """Augmented domain-specific curation: :func:`curate_du` with the captions restricted to ``domain_ids``."""
    return curate(audio, text, threshold=threshold, top_k=top_k, block_size=block_size, restrict_to=domain_ids).pairs


@dataclass(frozen=True, slots=True)
class DomainCaption:
    """A caption selected by DS, the class label it is closest to (among those that selected it), and that similarity."""

    text_id: str
    label: str
    similarity: float


def domain_captions(
    labels: EmbeddingTable,
    text: EmbeddingTable,
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[DomainCaption]:
    """DS with scores: the captions kept for *some* label (threshold and/or that label's top_k), in corpus order.

    Each label is a query of the selection rule over the captions; a caption kept by several labels
    reports the most similar of them (ties: the earlier label).
    """
    _check_tables(labels, text)
    result = search(labels.vectors, text.vectors, threshold=threshold, top_k=top_k, block_size=block_size)
    best: dict[int, tuple[float, int]] = {}
    for q, c, s in zip(result.query.tolist(), result.candidate.tolist(), result.similarity.tolist()):
        if c not in best or s > best[c][0] or (s == best[c][0] and q < best[c][1]):
            best[c] = (s, q)
    return [DomainCaption(text.ids[c], labels.ids[q], float(s)) for c, (s, q) in sorted(best.items())]


def select_domain_captions(
    labels: EmbeddingTable,
    text: EmbeddingTable,
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[str]:
    """Domain-specific curation (DS): ids of the captions most similar to any prompted class-label embedding.

    ``labels`` holds one row per class (:func:`label_embeddings`). Corpus order. See :func:`domain_captions`.
    """
    return [d.text_id for d in domain_captions(labels, text, threshold=threshold, top_k=top_k, block_size=block_size)]


# ------------------------------------------------------------------------------------------ labels of a target task
def read_target_labels(path: str | os.PathLike | None) -> list[str]:
    """Class labels of a target task: an ESC-50-style CSV (``esc50.csv`` or ``file,label[,fold]``; the distinct
    labels, sorted, ``_`` read as a space as the zero-shot evaluation does) or a list, one label per line.
    ``None``: the 50 ESC-50 classes shipped with the package."""
    from ..features.clap_text import read_labels

    if path is not None and Path(path).suffix.lower() == ".csv":
        from .evaluation import read_labelled_csv

        return [label.replace("_", " ") for label in sorted({row["label"] for row in read_labelled_csv(path)})]
    return read_labels(path)


def label_embeddings(
    text_embedder: Any, labels: Sequence[str], templates: Sequence[str] = (PAPER_PROMPT,), *, model: str = ""
) -> EmbeddingTable:
    """One row per class: the renormalised mean of its prompts' text embeddings (``class_embeddings``)."""
    from .evaluation import class_embeddings

    if not labels:
        raise ConfigError("no class labels to embed")
    vectors = class_embeddings(text_embedder, list(labels), tuple(templates))
    return EmbeddingTable(list(labels), vectors, {"kind": "labels", "model": model, "templates": list(templates)},
                          [templates[0].format(label=label) for label in labels])


# ------------------------------------------------------------------------------------------ output
def write_curated_manifest(
    pairs: Iterable[CuratedPair], audio_files: Mapping[str, str], captions: Mapping[str, str], path: str | os.PathLike
) -> int:
    """The project's caption manifest of ``pairs``: ``file_path,caption,similarity``, one row per pair.

    ``audio_files`` maps an audio id to its manifest ``file_path`` (relative to the audio root),
    ``captions`` a text id to its caption. Written through a temporary file (a crash leaves no half
    manifest). Returns the rows written; a pair whose id has no file or caption is a ConfigError.
    """
    rows = []
    for pair in pairs:
        if pair.audio_id not in audio_files:
            raise ConfigError(f"curated pair names audio '{pair.audio_id}', which has no file path")
        if pair.text_id not in captions:
            raise ConfigError(f"curated pair names caption '{pair.text_id}', which has no text")
        rows.append((audio_files[pair.audio_id], captions[pair.text_id], f"{pair.similarity:.6f}"))
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue().encode("utf-8"))
    return len(rows)


def read_curated_manifest(path: str | os.PathLike) -> list[tuple[str, str, float]]:
    """``(file_path, caption, similarity)`` rows of a curated manifest (ManifestError listing bad lines)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            records = list(reader)
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(path, [f"cannot be read ({err})"]) from err
    missing = [c for c in MANIFEST_COLUMNS if c not in header]
    if missing:
        raise ManifestError(path, [f"header {header}: missing column(s) {missing} (expected {','.join(MANIFEST_COLUMNS)})"])
    out, problems = [], []
    for line, row in enumerate(records, start=2):
        try:
            similarity = float(row["similarity"])
        except (TypeError, ValueError):
            problems.append(f"line {line}: similarity {row.get('similarity')!r} is not a number")
            continue
        out.append(((row["file_path"] or "").strip(), (row["caption"] or "").strip(), similarity))
    if problems:
        raise ManifestError(path, problems)
    return out


# ------------------------------------------------------------------------------------------ statistics
def sweep_from_pairs(similarities: Sequence[float], audio_ids: Sequence[str], thresholds: Sequence[float]) -> list[tuple[float, int, int]]:
    """``(threshold, pairs >= it, clips with such a pair)`` over already curated pairs (``stats`` subcommand)."""
    sims = np.asarray(similarities, dtype=np.float64)
    ids = np.asarray(list(audio_ids), dtype=object)
    return [(float(t), int((sims >= t).sum()), len(set(ids[sims >= t].tolist()))) for t in sorted(set(thresholds))]


def format_sweep(rows: Sequence[tuple[float, int, int]], *, clips: int | None, marked: float | None = None) -> str:
    """A small plain-text table: threshold, pairs kept, clips with a pair (and their share when ``clips`` known)."""
    lines = [f"{'threshold':>10} {'pairs kept':>12} {'clips with a pair':>18}"]
    for t, kept, with_pair in rows:
        share = f" ({with_pair / clips:6.1%})" if clips else ""
        mark = "  <- chosen" if marked is not None and abs(t - marked) < 1e-12 else ""
        lines.append(f"{t:>10.3f} {kept:>12d} {with_pair:>18d}{share}{mark}")
    return "\n".join(lines)


def save_similarity_histogram(
    path: str | os.PathLike,
    *,
    kept: Sequence[float] = (),
    all_counts: np.ndarray | None = None,
    bin_edges: np.ndarray | None = None,
    threshold: float | None = None,
    title: str = "",
    all_label: str = "all pairs",
    kept_label: str = "kept pairs",
) -> Path:
    """A PNG of the similarity distribution: every pair searched (when counted) and the pairs kept, log scale.

    Drawn with matplotlib's Agg canvas directly, so the caller's matplotlib backend is left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    edges = np.linspace(-1.0, 1.0, HISTOGRAM_BINS + 1) if bin_edges is None else np.asarray(bin_edges)
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    if all_counts is not None and np.asarray(all_counts).sum() > 0:
        axes.stairs(np.asarray(all_counts), edges, fill=True, alpha=0.4, label=f"{all_label} ({int(np.sum(all_counts)):,})")
    kept = np.asarray(list(kept), dtype=np.float64)
    if kept.size:
        counts, _ = np.histogram(np.clip(kept, -1.0, 1.0), bins=edges)
        axes.stairs(counts, edges, fill=True, alpha=0.7, label=f"{kept_label} ({kept.size:,})")
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    axes.set_yscale("log")
    axes.set_xlabel("cosine similarity (teacher CLAP)")
    axes.set_ylabel("pairs")
    axes.set_title(title or "similarity of audio-caption pairs")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


__all__ = [
    "Curation",
    "CuratedPair",
    "DomainCaption",
    "EmbeddingTable",
    "PAPER_PROMPT",
    "SearchResult",
    "SearchStats",
    "curate",
    "curate_ads",
    "curate_du",
    "domain_captions",
    "format_sweep",
    "label_embeddings",
    "read_curated_manifest",
    "read_target_labels",
    "row_top_k",
    "save_similarity_histogram",
    "search",
    "select_domain_captions",
    "sweep_from_pairs",
    "write_curated_manifest",
]
