"""Text-to-audio search over a folder of your own: CLAP audio embeddings indexed once, queried by sentence.

:func:`update_index` embeds every audio file below a folder with a CLAP audio tower and stores the
L2-normalised embeddings in an index directory; a rerun embeds only files that are new or changed
(path + size + modification time) and drops deleted ones. :class:`SearchIndex` answers a query
embedding (the CLAP *text* tower's, :mod:`enclap.features.clap_text`) with the files of highest cosine
similarity, by an exact scan.

**Exact search in bounded memory.** The embeddings are read block by block (:data:`BLOCK_ROWS` rows)
into one reused buffer, scored with a matrix product against all queries at once, and merged into a
running top-k with ``argpartition``; the memory a query needs is the buffer plus the queries, whatever
the size of the index. Measured in ``bench/bench_search.py``: see bench/RESULTS.md. Up to about a
million clips a scan answers in well under a second on a CPU; far beyond that (tens of millions, or
many queries per second) an approximate nearest-neighbour index (faiss, hnswlib) is the tool, at the
price of exactness.

Index layout (format version 1)::

    <index>/index.json                the description: folder, CLAP, dimension, dtype, segments, failed files
    <index>/<segment>.emb.npy         (rows, dim) float16 or float32 embeddings (a standard .npy: np.load
                                      with mmap_mode="r" reads it memory-mapped)
    <index>/<segment>.files.jsonl     one JSON line per row: [relative path, size in bytes, mtime in ns]
    <index>/<segment>.offsets.npy     int64 byte offset of every line of the .files.jsonl (+ the end)

New embeddings are committed as segments every :data:`COMMIT_EVERY` files (arrays first, then
``index.json`` is replaced atomically), so an interrupted run keeps what it embedded and a rerun goes
on from there. Deleted and changed files are removed by rewriting the kept rows into one segment
before anything new is embedded; many small segments are merged at the end of a run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from .errors import AudioError, EnclapError
from .features.store import _save_npy_atomic, _write_atomic  # temp file, fsync, rename: the feature store's commit
from .fileio import fsync_dir

if TYPE_CHECKING:
    from .features.clap_embed import AudioEmbedder

logger = logging.getLogger(__name__)

FORMAT_NAME = "enclap-audio-search-index"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
DTYPES = ("float16", "float32")
BLOCK_ROWS = 16_384  # rows scored per matrix product (a 512-d block: 16 MiB float16 + 32 MiB float32)
COMMIT_EVERY = 256  # files embedded between two commits of an indexing run
MAX_SEGMENTS = 16  # more segments than this are merged into one at the end of a run
_TMP = ".tmp-"


class SearchIndexError(EnclapError):
    """A search index is missing, malformed, or does not fit the folder / CLAP it is used with."""


@dataclass(frozen=True)
class SearchHit:
    """One result of a query: the file, its cosine similarity to the query, its rank (1 = best)."""

    rank: int
    score: float
    path: str  # absolute path of the file
    relative: str  # path relative to the indexed folder


@dataclass
class IndexReport:
    """What one :func:`update_index` run did."""

    index: str
    folder: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # relative path -> reason (this run's and kept ones)
    total: int = 0  # files in the index after the run
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------- helpers


def _file_key(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return int(stat.st_size), int(stat.st_mtime_ns)


def scan_folder(folder: Path, exclude: Path | None = None) -> dict[str, tuple[int, int]]:
    """Audio files below ``folder`` (by extension): relative POSIX path -> (size, mtime_ns)."""
    from .audio import find_audio_files

    found: dict[str, tuple[int, int]] = {}
    for path in find_audio_files(folder):
        if exclude is not None and exclude in path.parents:
            continue
        try:
            found[path.relative_to(folder).as_posix()] = _file_key(path)
        except OSError as err:  # vanished or unreadable between the listing and the stat
            logger.warning("%s: skipped (%s)", path, err)
    return found


def _read_npy_header(fh) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(fh)
    if fortran:
        raise SearchIndexError(f"{fh.name}: Fortran-ordered array, not written by this library")
    return shape, dtype


# --------------------------------------------------------------------------------------------- reader


class SearchIndex:
    """Read side of an index directory: what it holds, and exact cosine top-k queries."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        path = self.directory / INDEX_FILE
        if not path.is_file():
            reason = "no such directory" if not self.directory.exists() else f"not a search index (no {INDEX_FILE})"
            raise SearchIndexError(
                f"{self.directory}: {reason}. Build one with `enclap-search index FOLDER --index {self.directory}`."
            )
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SearchIndexError(f"{path}: unreadable index description ({err})") from err
        if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
            raise SearchIndexError(f"{path}: not an {FORMAT_NAME} description")
        if info.get("format_version") != FORMAT_VERSION:
            raise SearchIndexError(f"{path}: format version {info.get('format_version')} is not supported (reads {FORMAT_VERSION})")
        self.info: dict[str, Any] = info
        self.folder = Path(info["folder"])
        self.clap: str = info["clap"]
        self.dim: int = int(info["dim"])
        self.dtype: str = info["dtype"]
        self.segments: list[dict[str, Any]] = list(info.get("segments", []))
        self.failed: dict[str, dict[str, Any]] = dict(info.get("failed", {}))

    def __len__(self) -> int:
        return sum(int(s["rows"]) for s in self.segments)

    def __repr__(self) -> str:
        return f"SearchIndex({str(self.directory)!r}, files={len(self)}, clap={self.clap!r})"

    # -- entries
    def _segment_file(self, name: str, suffix: str) -> Path:
        return self.directory / f"{name}{suffix}"

    def iter_entries(self) -> Iterator[tuple[str, int, int]]:
        """(relative path, size, mtime_ns) of every row, in row order."""
        for segment in self.segments:
            with open(self._segment_file(segment["name"], ".files.jsonl"), "rb") as fh:
                for line in fh:
                    rel, size, mtime = json.loads(line)
                    yield rel, int(size), int(mtime)

    def relative_path(self, row: int) -> str:
        """The file of global row ``row`` (reads one line, through the offsets table)."""
        for segment in self.segments:
            rows = int(segment["rows"])
            if row < rows:
                offsets = np.load(self._segment_file(segment["name"], ".offsets.npy"), mmap_mode="r")
                start, stop = int(offsets[row]), int(offsets[row + 1])
                with open(self._segment_file(segment["name"], ".files.jsonl"), "rb") as fh:
                    fh.seek(start)
                    return json.loads(fh.read(stop - start))[0]
            row -= rows
        raise IndexError(f"row {row} is beyond the {len(self)} rows of {self.directory}")

    def embeddings(self, segment: int = 0) -> np.ndarray:
        """The stored embeddings of one segment, memory-mapped (read-only)."""
        return np.load(self._segment_file(self.segments[segment]["name"], ".emb.npy"), mmap_mode="r")

    def iter_blocks(self, block_rows: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first global row, float32 block) over all embeddings, read into one reused buffer.

        The block is a view of that buffer: it is overwritten by the next one (copy what must outlive it).
        """
        largest = max((int(s["rows"]) for s in self.segments), default=0)
        buffer = np.empty((max(1, min(block_rows, largest)), self.dim), dtype=self.dtype)
        # float16 rows are widened into a second reused buffer: no allocation per block
        wide = buffer if buffer.dtype == np.float32 else np.empty(buffer.shape, dtype=np.float32)
        raw = memoryview(buffer).cast("B")
        row_bytes = self.dim * buffer.itemsize
        first = 0
        for segment in self.segments:
            path = self._segment_file(segment["name"], ".emb.npy")
            with open(path, "rb") as fh:
                shape, dtype = _read_npy_header(fh)
                if shape != (int(segment["rows"]), self.dim) or dtype != np.dtype(self.dtype):
                    raise SearchIndexError(
                        f"{path}: holds {dtype} {shape}, the index says {self.dtype} ({segment['rows']}, {self.dim})"
                    )
                remaining = shape[0]
                while remaining:
                    count = min(block_rows, remaining)
                    got = fh.readinto(raw[: count * row_bytes])
                    if got != count * row_bytes:
                        raise SearchIndexError(f"{path}: truncated ({got} of {count * row_bytes} bytes of a block)")
                    if wide is not buffer:
                        np.copyto(wide[:count], buffer[:count])
                    yield first, wide[:count]
                    first += count
                    remaining -= count

    # -- queries
    def top_k(self, queries: np.ndarray, k: int = 10, *, block_rows: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` rows by dot product (= cosine for unit vectors) of every query.

        ``queries`` is ``(n, dim)``; returns ``(rows, scores)``, both ``(n, min(k, len))``, best first
        (ties broken by the lower row).
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise SearchIndexError(
                f"query embeddings have {queries.shape[1]} dimensions, the index at {self.directory} {self.dim} "
                f"(it was built with CLAP '{self.clap}')"
            )
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(int(k), len(self))
        n = queries.shape[0]
        best_rows = np.zeros((n, 0), dtype=np.int64)
        best_scores = np.zeros((n, 0), dtype=np.float32)
        for first, block in self.iter_blocks(block_rows):
            scores = queries @ block.T  # (n, rows of the block)
            rows = np.broadcast_to(np.arange(first, first + block.shape[0], dtype=np.int64), scores.shape)
            scores = np.concatenate([best_scores, scores], axis=1)
            rows = np.concatenate([best_rows, rows], axis=1)
            if scores.shape[1] > k:
                keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                scores = np.take_along_axis(scores, keep, axis=1)
                rows = np.take_along_axis(rows, keep, axis=1)
            best_scores, best_rows = scores, rows
        order = np.lexsort((best_rows, -best_scores), axis=1) if best_rows.size else best_rows
        return np.take_along_axis(best_rows, order, axis=1), np.take_along_axis(best_scores, order, axis=1)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[SearchHit]]:
        """:meth:`top_k` as files: one list of :class:`SearchHit` per query."""
        rows, scores = self.top_k(queries, k)
        return [
            [
                SearchHit(rank + 1, float(score), str(self.folder / rel), rel)
                for rank, (rel, score) in enumerate(zip((self.relative_path(int(r)) for r in row_list), score_list))
            ]
            for row_list, score_list in zip(rows, scores)
        ]


def search_text(index: SearchIndex, text_embedder: Any, queries: Sequence[str], k: int = 10) -> list[list[SearchHit]]:
    """Ranked files for each sentence of ``queries`` (embedded by a :class:`~enclap.features.clap_text.TextEmbedder`)."""
    if getattr(text_embedder, "dimension", index.dim) != index.dim:
        raise SearchIndexError(
            f"the text tower gives {text_embedder.dimension}-d embeddings, the index at {index.directory} holds "
            f"{index.dim}-d ones (built with CLAP '{index.clap}')"
        )
    return index.search(text_embedder.embed_texts(list(queries)), k)


# --------------------------------------------------------------------------------------------- writer


class _IndexWriter:
    """Writes segments and the description of one index directory (one writer at a time)."""

    def __init__(self, directory: Path, info: dict[str, Any]) -> None:
        self.directory = directory
        self.info = info
        self.directory.mkdir(parents=True, exist_ok=True)
        # what the description on disk still lists stays until a commit replaces it
        on_disk: set[str] = set()
        try:
            on_disk = {s["name"] for s in json.loads((directory / INDEX_FILE).read_text()).get("segments", [])}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            pass
        self._remove_orphans(on_disk)

    def _remove_orphans(self, keep: set[str] = frozenset()) -> None:
        """Files of segments an interrupted run wrote but never committed, and temporary files."""
        live = {s["name"] for s in self.info.get("segments", [])} | set(keep)
        for entry in os.listdir(self.directory):
            name = entry.split(".", 1)[0]
            if entry.startswith(_TMP) or (entry.startswith("seg-") and name not in live):
                (self.directory / entry).unlink(missing_ok=True)

    def _next_name(self) -> str:
        self.info["next_segment"] = int(self.info.get("next_segment", 0)) + 1
        return f"seg-{self.info['next_segment']:06d}"

    def write_segment(self, entries: Sequence[tuple[str, int, int]], embeddings: np.ndarray) -> dict[str, Any]:
        name = self._next_name()
        lines = [json.dumps(list(e), ensure_ascii=False).encode() + b"\n" for e in entries]
        offsets = np.zeros(len(lines) + 1, dtype=np.int64)
        np.cumsum([len(line) for line in lines], out=offsets[1:])
        array = np.ascontiguousarray(embeddings, dtype=self.info["dtype"])
        _save_npy_atomic(self.directory / f"{name}.emb.npy", array)
        _write_atomic(self.directory / f"{name}.files.jsonl", b"".join(lines))
        _save_npy_atomic(self.directory / f"{name}.offsets.npy", offsets)
        return {"name": name, "rows": len(lines)}

    def commit(self, segments: list[dict[str, Any]], failed: dict[str, dict[str, Any]]) -> None:
        """Make ``segments`` the index's content (atomic), then delete the files of segments no longer listed."""
        self.info["segments"] = segments
        self.info["failed"] = failed
        self.info["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        _write_atomic(self.directory / INDEX_FILE, (json.dumps(self.info, indent=1, ensure_ascii=False) + "\n").encode())
        fsync_dir(self.directory)
        self._remove_orphans()

    def merged(self, index: SearchIndex, keep: Callable[[str, int, int], bool]) -> dict[str, Any] | None:
        """One new segment with the rows of ``index`` that ``keep`` accepts, copied block by block."""
        name = self._next_name()
        rows_kept = 0
        emb_path = self.directory / f"{_TMP}{name}.emb.raw"
        lines_path = self.directory / f"{_TMP}{name}.files.jsonl"
        offsets = [0]
        entries = index.iter_entries()
        with open(emb_path, "wb") as emb_out, open(lines_path, "wb") as lines_out:
            for _, block in index.iter_blocks():
                mask = np.zeros(block.shape[0], dtype=bool)
                for i in range(block.shape[0]):
                    rel, size, mtime = next(entries)
                    if keep(rel, size, mtime):
                        mask[i] = True
                        line = json.dumps([rel, size, mtime], ensure_ascii=False).encode() + b"\n"
                        lines_out.write(line)
                        offsets.append(offsets[-1] + len(line))
                emb_out.write(np.ascontiguousarray(block[mask], dtype=self.info["dtype"]).tobytes())
                rows_kept += int(mask.sum())
        if not rows_kept:
            emb_path.unlink()
            lines_path.unlink()
            return None
        # the raw rows become a .npy: a header, then the bytes as written
        final = self.directory / f"{name}.emb.npy"
        header_tmp = self.directory / f"{_TMP}{name}.emb.npy"
        with open(header_tmp, "wb") as out, open(emb_path, "rb") as raw:
            np.lib.format.write_array_header_1_0(
                out, {"descr": np.lib.format.dtype_to_descr(np.dtype(self.info["dtype"])), "fortran_order": False,
                      "shape": (rows_kept, int(self.info["dim"]))}
            )
            while chunk := raw.read(1 << 24):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        emb_path.unlink()
        os.replace(header_tmp, final)
        os.replace(lines_path, self.directory / f"{name}.files.jsonl")
        _save_npy_atomic(self.directory / f"{name}.offsets.npy", np.asarray(offsets, dtype=np.int64))
        return {"name": name, "rows": rows_kept}


def _new_info(folder: Path, clap: str, dim: int, dtype: str, embedder_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "folder": str(folder),
        "clap": clap,
        "dim": int(dim),
        "dtype": dtype,
        "embedder": embedder_config,
        "segments": [],
        "failed": {},
        "next_segment": 0,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _same_clap(a: str, b: str) -> bool:
    return a == b or (Path(a).expanduser().exists() and Path(a).expanduser().resolve() == Path(b).expanduser().resolve())


def clap_spec_for_index(spec: str) -> str:
    """A CLAP spec as an index records it: a local path made absolute (queries may run elsewhere)."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def update_index(
    folder: str | os.PathLike,
    index_dir: str | os.PathLike,
    embedder: "AudioEmbedder",
    *,
    clap: str,
    dtype: str | None = None,
    batch_size: int = 16,
    max_seconds: float | None = None,
    rebuild: bool = False,
    commit_every: int = COMMIT_EVERY,
    progress: bool = True,
) -> IndexReport:
    """Bring the index at ``index_dir`` up to date with the audio files below ``folder``.

    New and changed files are embedded with ``embedder`` (a CLAP audio tower, :class:`AudioEmbedder`),
    deleted and changed ones dropped, unchanged ones kept as they are. A file that cannot be read is
    listed in the report (and in the index) with the reason, and tried again only once it changes.
    ``clap`` is the spec the embedder was loaded from (queries load the text tower from it); ``dtype``
    (``float16`` or ``float32``) defaults to the existing index's, else float16. An existing index
    built for another folder, CLAP or dtype is refused unless ``rebuild``.
    """
    from tqdm.auto import tqdm

    from .audio import load_audio

    started = time.perf_counter()
    folder = Path(folder).expanduser().resolve()
    index_dir = Path(index_dir).expanduser().resolve()
    if not folder.is_dir():
        raise SearchIndexError(f"{folder}: not a directory (nothing to index)")
    clap = clap_spec_for_index(clap)
    dim = int(embedder.dim)
    existing: SearchIndex | None = None
    if (index_dir / INDEX_FILE).is_file() and not rebuild:
        existing = SearchIndex(index_dir)
    if dtype is None:
        dtype = existing.dtype if existing is not None else "float16"
    if dtype not in DTYPES:
        raise SearchIndexError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if existing is not None:
        problems = []
        if existing.folder != folder:
            problems.append(f"indexes the folder {existing.folder}, not {folder}")
        if not _same_clap(existing.clap, clap):
            problems.append(f"was built with CLAP '{existing.clap}', not '{clap}'")
        if existing.dim != dim or existing.dtype != dtype:
            problems.append(f"holds {existing.dim}-d {existing.dtype} embeddings, not {dim}-d {dtype}")
        if problems:
            raise SearchIndexError(
                f"{index_dir}: this index {'; '.join(problems)}. Use another --index, or --rebuild to start it over."
            )
    embedder_config = embedder.config_dict() if hasattr(embedder, "config_dict") else {}
    info = dict(existing.info) if existing else _new_info(folder, clap, dim, dtype, embedder_config)
    if existing is None and (index_dir / INDEX_FILE).is_file():  # --rebuild: never reuse a live segment's name
        try:
            info["next_segment"] = int(json.loads((index_dir / INDEX_FILE).read_text()).get("next_segment", 0))
        except (OSError, ValueError, AttributeError):
            pass
    writer = _IndexWriter(index_dir, info)
    if existing is None:
        writer.commit([], {})

    found = scan_folder(folder, exclude=index_dir)
    report = IndexReport(index=str(index_dir), folder=str(folder))
    indexed: dict[str, tuple[int, int]] = {}
    if existing is not None:
        indexed = {rel: (size, mtime) for rel, size, mtime in existing.iter_entries()}
    failed_before = dict(existing.failed) if existing else {}

    stale = {rel for rel, key in indexed.items() if found.get(rel) != key}
    report.removed = sorted(rel for rel in stale if rel not in found)
    failed: dict[str, dict[str, Any]] = {}
    to_embed: list[str] = []
    for rel, key in found.items():
        if rel in indexed and rel not in stale:
            report.unchanged += 1
            continue
        previous = failed_before.get(rel)
        if previous and (previous["size"], previous["mtime_ns"]) == key:
            failed[rel] = previous  # still the same bad file: not tried again
            continue
        to_embed.append(rel)
    report.updated = sorted(rel for rel in to_embed if rel in indexed)
    report.added = sorted(rel for rel in to_embed if rel not in indexed)

    segments = list(info.get("segments", []))
    if stale and existing is not None:
        merged = writer.merged(existing, lambda rel, size, mtime: rel not in stale)
        segments = [merged] if merged else []
        writer.commit(segments, failed)

    pending_entries: list[tuple[str, int, int]] = []
    pending_embeddings: list[np.ndarray] = []

    def commit_pending() -> None:
        if pending_entries:
            segments.append(writer.write_segment(pending_entries, np.stack(pending_embeddings)))
            pending_entries.clear()
            pending_embeddings.clear()
        writer.commit(segments, failed)

    with tqdm(total=len(to_embed), desc="indexing", unit="file", disable=not progress or not to_embed) as bar:
        since_commit = 0
        for start in range(0, len(to_embed), batch_size):
            batch = to_embed[start : start + batch_size]
            waves: list[np.ndarray] = []
            good: list[str] = []
            for rel in batch:
                try:
                    samples, _ = load_audio(folder / rel, embedder.sample_rate, max_seconds=max_seconds)
                except AudioError as err:
                    size, mtime = found[rel]
                    failed[rel] = {"size": size, "mtime_ns": mtime, "reason": err.reason}
                    continue
                waves.append(samples)
                good.append(rel)
            if waves:
                embeddings = np.asarray(embedder.embed(waves), dtype=np.float32)
                for rel, row in zip(good, embeddings):
                    pending_entries.append((rel, *found[rel]))
                    pending_embeddings.append(row)
            bar.update(len(batch))
            since_commit += len(batch)
            if since_commit >= commit_every:
                commit_pending()
                since_commit = 0
    commit_pending()

    if len(segments) > MAX_SEGMENTS:
        merged = writer.merged(SearchIndex(index_dir), lambda *_: True)
        segments = [merged] if merged else []
        writer.commit(segments, failed)
    report.failed = {rel: entry["reason"] for rel, entry in sorted(failed.items())}
    report.added = [rel for rel in report.added if rel not in failed]
    report.updated = [rel for rel in report.updated if rel not in failed]
    report.total = sum(int(s["rows"]) for s in segments)
    report.seconds = time.perf_counter() - started
    return report


def write_index_arrays(
    index_dir: str | os.PathLike,
    folder: str | os.PathLike,
    entries: Sequence[tuple[str, int, int]],
    embeddings: np.ndarray,
    *,
    clap: str,
    dtype: str = "float16",
) -> SearchIndex:
    """Write a new index from embeddings computed elsewhere (e.g. a feature store's CLAP embeddings)."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(entries):
        raise SearchIndexError(f"embeddings must be (len(entries)={len(entries)}, dim), got {embeddings.shape}")
    index_dir = Path(index_dir)
    writer = _IndexWriter(index_dir, _new_info(Path(folder).resolve(), clap, embeddings.shape[1], dtype, {}))
    writer.commit([writer.write_segment(entries, embeddings)] if len(entries) else [], {})
    return SearchIndex(index_dir)


__all__ = [
    "IndexReport",
    "SearchHit",
    "SearchIndex",
    "SearchIndexError",
    "clap_spec_for_index",
    "scan_folder",
    "search_text",
    "update_index",
    "write_index_arrays",
]
