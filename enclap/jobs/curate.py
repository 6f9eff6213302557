"""``enclap-curate``: embedding dumps and DU / DS / ADS curation with a trained CLAP (see :mod:`enclap.clap.curation`).

Subcommands (``docs/recipes/curation.md`` has a walk-through on the demo data)::

    enclap-curate embed-audio --model TOWER --audio-dir AUDIO --out EMB/audio        # or --manifest M --audio-root R,
                                                      # --labelled-csv esc50.csv --audio-root R, --file-list L [--audio-root R]
    enclap-curate embed-text  --model TOWER --manifest train.csv --out EMB/text      # or --text-file captions.txt
    enclap-curate du   --audio-emb EMB/audio --text-emb EMB/text --output du.csv [--threshold T] [--top-k K]
    enclap-curate ds   --model TOWER --text-emb EMB/text --manifest train.csv --labels esc50.csv \\
                       --output ds.csv --domain-emb EMB/ds
    enclap-curate ads  --audio-emb EMB/audio --domain-emb EMB/ds --output ads.csv [--threshold T] [--top-k K]
    enclap-curate stats --manifest du.csv [--audio-emb EMB/audio]

**Resumable dumps.** :func:`embed_audio` / :func:`embed_text` embed in chunks (``chunk_size`` items);
each chunk is committed atomically (``chunks/NNNNNN.npy``, then its ``.json`` index, written last, is the
commit mark). A rerun after an interruption reads the committed chunks (and a finished table) and embeds
only what is missing; when all is done the chunks are merged into the :class:`EmbeddingTable` of the
directory and removed. The directory belongs to one model and one kind: pointing another model at it is
an error, not a silent mix. The table holds the items of the latest run's list (embeddings of items an
earlier run had and this one does not ask for are not kept). One process per directory at a time. Unreadable audio is logged with its file and reason, skipped, counted in the
summary, and listed in ``failed.json``; it is retried on the next run (it may have been fixed).

Caption ids are content hashes of the (stripped) caption text (:func:`caption_id`), so a caption that
appears several times in a corpus is embedded once and keeps its id when the corpus is reordered or grown.
Audio ids are clip keys (:func:`enclap.data.manifest.clip_key`) of the path below the audio root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..clap.curation import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_SWEEP,
    PAPER_ADS_THRESHOLD,
    PAPER_DS_THRESHOLD,
    PAPER_DU_THRESHOLD,
    PAPER_PROMPT,
    EmbeddingTable,
)
from ..errors import AudioError, ConfigError, EnclapError
from ..fileio import write_atomic

logger = logging.getLogger(__name__)

CHUNK_DIR = "chunks"
JOB_FILE = "job.json"
FAILED_FILE = "failed.json"
_CHUNK_INDEX = re.compile(r"^(\d{6})\.json$")
DEFAULT_AUDIO_CHUNK = 256
DEFAULT_TEXT_CHUNK = 4096


def caption_id(text: str) -> str:
    """The id of a caption: ``t`` + 16 hex digits of the SHA-1 of its stripped UTF-8 text."""
    return "t" + hashlib.sha1(text.strip().encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ resumable dumps
@dataclass
class DumpSummary:
    """What one run of a dump did."""

    requested: int = 0
    reused: int = 0  # already embedded by an earlier run
    embedded: int = 0  # embedded by this run
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (id, source, reason)

    def __str__(self) -> str:
        text = f"{self.requested} requested: {self.embedded} embedded now, {self.reused} from an earlier run"
        return text + (f", {len(self.failed)} skipped (unreadable)" if self.failed else "")


class _ChunkStore:
    """The committed chunks of a dump directory."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.chunk_dir = out_dir / CHUNK_DIR

    def indexes(self) -> list[int]:
        if not self.chunk_dir.is_dir():
            return []
        return sorted(int(m.group(1)) for name in os.listdir(self.chunk_dir) if (m := _CHUNK_INDEX.match(name)))

    def read(self) -> tuple[dict[str, tuple[np.ndarray, str]], int]:
        """``{id: (vector, source)}`` of every committed chunk, and the next chunk number."""
        done: dict[str, tuple[np.ndarray, str]] = {}
        numbers = self.indexes()
        for n in numbers:
            index_path = self.chunk_dir / f"{n:06d}.json"
            try:
                index = json.loads(index_path.read_text(encoding="utf-8"))
                vectors = np.load(self.chunk_dir / f"{n:06d}.npy", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise ConfigError(f"{index_path}: a committed chunk is unreadable ({err}); delete it to embed its items again") from err
            if len(index["ids"]) != vectors.shape[0]:
                raise ConfigError(f"{index_path}: {len(index['ids'])} ids for {vectors.shape[0]} rows; delete it to embed its items again")
            for i, (id_, source) in enumerate(zip(index["ids"], index["sources"])):
                done[id_] = (vectors[i], source)
        return done, (numbers[-1] + 1 if numbers else 0)

    def commit(self, number: int, ids: list[str], sources: list[str], vectors: np.ndarray, failed: list) -> None:
        import io

        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(vectors, dtype=np.float32), allow_pickle=False)
        write_atomic(self.chunk_dir / f"{number:06d}.npy", buffer.getvalue())
        index = {"ids": ids, "sources": sources, "failed": [list(f) for f in failed]}
        write_atomic(self.chunk_dir / f"{number:06d}.json", json.dumps(index, ensure_ascii=False).encode("utf-8"))

    def clear(self) -> None:
        if not self.chunk_dir.is_dir():
            return
        for name in os.listdir(self.chunk_dir):
            (self.chunk_dir / name).unlink()
        self.chunk_dir.rmdir()


def _check_job(out_dir: Path, kind: str, model: str, dim: int) -> None:
    """The directory's job description; another kind or model is an error (the dump would mix two spaces)."""
    path = out_dir / JOB_FILE
    want = {"kind": kind, "model": model, "dim": dim}
    if path.is_file():
        try:
            have = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: unreadable ({err})") from err
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if diff:
            details = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ConfigError(f"{out_dir}: holds embeddings of another job ({details}); use another directory")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(want, indent=2) + "\n").encode("utf-8"))


def _dedupe(items: Sequence[tuple[str, str]], what: str) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for id_, value in items:
        id_, value = str(id_), str(value)
        if id_ in seen and seen[id_] != value:
            raise ConfigError(f"{what} id '{id_}' is given twice with different values ({seen[id_]!r} and {value!r})")
        seen.setdefault(id_, value)
    return list(seen.items())


def _run_dump(
    kind: str,
    model_name: str,
    dim: int,
    items: list[tuple[str, str]],
    out_dir: Path,
    embed_many: Callable[[list[tuple[str, str]]], tuple[list[str], np.ndarray, list[tuple[str, str, str]]]],
    *,
    batch_size: int,
    chunk_size: int,
    progress: bool,
    unit: str,
) -> tuple[EmbeddingTable, DumpSummary]:
    """The shared resumable loop: skip what is done, embed the rest chunk by chunk, merge into the table."""
    from tqdm import tqdm

    if batch_size < 1 or chunk_size < 1:
        raise ConfigError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    _check_job(out_dir, kind, model_name, dim)
    summary = DumpSummary(requested=len(items))
    done: dict[str, tuple[np.ndarray, str]] = {}
    table = None
    if (out_dir / "meta.json").is_file():
        table = EmbeddingTable.load(out_dir)
        sources = table.sources or [""] * len(table)
        done.update({id_: (table.vectors[i], sources[i]) for i, id_ in enumerate(table.ids)})
    store = _ChunkStore(out_dir)
    from_chunks, number = store.read()
    done.update(from_chunks)
    pending = [(id_, value) for id_, value in items if id_ not in done]
    summary.reused = len(items) - len(pending)
    bar = tqdm(total=len(pending), desc=f"embedding {kind}", unit=unit, file=sys.stderr, disable=not progress or not pending)
    try:
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start : start + chunk_size]
            ids: list[str] = []
            sources: list[str] = []
            vectors: list[np.ndarray] = []
            failed: list[tuple[str, str, str]] = []
            for b in range(0, len(chunk), batch_size):
                batch = chunk[b : b + batch_size]
                ok_sources, batch_vectors, batch_failed = embed_many(batch)
                failed_ids = {f[0] for f in batch_failed}
                ok_ids = [id_ for id_, _ in batch if id_ not in failed_ids]
                ids += ok_ids
                sources += ok_sources
                vectors.append(np.asarray(batch_vectors, dtype=np.float32).reshape(len(ok_ids), dim))
                failed += batch_failed
                bar.update(len(batch))
            stacked = np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)
            store.commit(number, ids, sources, stacked, failed)
            number += 1
            summary.embedded += len(ids)
            summary.failed += failed
            for i, id_ in enumerate(ids):
                done[id_] = (stacked[i], sources[i])
    finally:
        bar.close()
    keep = [id_ for id_, _ in items if id_ in done]
    if table is None or from_chunks or summary.embedded or table.ids != keep:  # else the table on disk is this list's
        vectors = np.stack([done[i][0] for i in keep]) if keep else np.zeros((0, dim), dtype=np.float32)
        table = EmbeddingTable(keep, vectors, {"kind": kind, "model": model_name}, [done[i][1] for i in keep])
        table.save(out_dir)
    store.clear()  # merged into the table (a crash before this line only leaves duplicates of table rows)
    write_atomic(out_dir / FAILED_FILE, (json.dumps(
        [{"id": i, "source": s, "reason": r} for i, s, r in summary.failed], indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return table, summary


def _audio_embedder(model: Any, device: str, batch_size: int) -> Any:
    if not isinstance(model, (str, os.PathLike)):
        return model  # an embedder already loaded (the recipe reuses its teacher's)
    from ..features.clap_embed import ClapAudioEmbedder

    return ClapAudioEmbedder.from_pretrained(str(model), device=device, batch_size=batch_size)


def _model_name(model: Any, embedder: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return str(getattr(embedder, "name_or_path", "") or type(embedder).__name__)


def embed_audio(
    model: Any,
    audio: Sequence[tuple[str, str | os.PathLike]],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 16,
    chunk_size: int = DEFAULT_AUDIO_CHUNK,
    audio_root: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> EmbeddingTable:
    """Audio embeddings of ``(id, path)`` files into ``out_dir`` (resumable; see the module docstring).

    ``model``: a trained tower directory, a transformers ClapModel directory / hub id, or an embedder
    object (``embed`` + ``sample_rate`` + ``dim``). The table's ``sources`` are the paths relative to
    ``audio_root`` when given (what a curated manifest names), else as given. Unreadable files are skipped
    (see :func:`embed_audio_with_summary` for the counts).
    """
    return embed_audio_with_summary(model, audio, out_dir, batch_size=batch_size, chunk_size=chunk_size,
                                    audio_root=audio_root, device=device, progress=progress)[0]


def embed_audio_with_summary(
    model: Any,
    audio: Sequence[tuple[str, str | os.PathLike]],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 16,
    chunk_size: int = DEFAULT_AUDIO_CHUNK,
    audio_root: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[EmbeddingTable, DumpSummary]:
    """:func:`embed_audio` and what this run did (embedded, reused, failed with file and reason)."""
    from ..audio import load_audio

    items = _dedupe([(id_, str(path)) for id_, path in audio], "audio")
    embedder = _audio_embedder(model, device, batch_size)
    root = Path(audio_root) if audio_root is not None else None

    def source_of(path: str) -> str:
        if root is not None:
            try:
                return Path(path).relative_to(root).as_posix()
            except ValueError:
                pass
        return path

    def embed_many(batch: list[tuple[str, str]]):
        waves, sources, failed = [], [], []
        for id_, path in batch:
            try:
                waves.append(load_audio(path, embedder.sample_rate)[0])
                sources.append(source_of(path))
            except AudioError as err:
                logger.warning("skipping %s: %s", err.path, err.reason)
                failed.append((id_, path, err.reason))
        vectors = embedder.embed(waves) if waves else np.zeros((0, embedder.dim), dtype=np.float32)
        return sources, vectors, failed

    table, summary = _run_dump("audio", _model_name(model, embedder), int(embedder.dim), items, Path(out_dir), embed_many,
                               batch_size=batch_size, chunk_size=chunk_size, progress=progress, unit="file")
    return table, summary


def embed_text(
    model: Any,
    captions: Sequence[tuple[str, str]],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    chunk_size: int = DEFAULT_TEXT_CHUNK,
    device: str = "cpu",
    progress: bool = True,
) -> EmbeddingTable:
    """Text embeddings of ``(id, caption)`` pairs into ``out_dir`` (resumable); a repeated pair is embedded once.

    ``model``: a trained tower directory, a transformers ClapModel directory / hub id, or a text embedder
    (``embed_texts`` + ``dimension``). An empty caption is a ConfigError naming its id.
    """
    return embed_text_with_summary(model, captions, out_dir, batch_size=batch_size, chunk_size=chunk_size,
                                   device=device, progress=progress)[0]


def embed_text_with_summary(
    model: Any,
    captions: Sequence[tuple[str, str]],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    chunk_size: int = DEFAULT_TEXT_CHUNK,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[EmbeddingTable, DumpSummary]:
    """:func:`embed_text` and what this run did."""
    items = _dedupe([(id_, str(text).strip()) for id_, text in captions], "caption")
    empty = [id_ for id_, text in items if not text]
    if empty:
        raise ConfigError(f"{len(empty)} empty caption(s), e.g. id '{empty[0]}': nothing to embed")
    if isinstance(model, (str, os.PathLike)):
        from ..features.clap_text import load_text_embedder

        embedder = load_text_embedder(str(model), device=device)
    else:
        embedder = model
    dim = int(getattr(embedder, "dimension", 0) or getattr(embedder, "dim"))

    def embed_many(batch: list[tuple[str, str]]):
        unique = list(dict.fromkeys(text for _, text in batch))  # the same text under two ids: embedded once
        vectors = np.asarray(embedder.embed_texts(unique), dtype=np.float32)
        row = {text: i for i, text in enumerate(unique)}
        return [text for _, text in batch], vectors[[row[text] for _, text in batch]], []

    return _run_dump("text", _model_name(model, embedder), dim, items, Path(out_dir), embed_many,
                     batch_size=batch_size, chunk_size=chunk_size, progress=progress, unit="caption")


# ------------------------------------------------------------------------------------------ inputs
def audio_from_manifest(manifest: str | os.PathLike, audio_root: str | os.PathLike) -> list[tuple[str, str]]:
    """``(clip key, audio path)`` of every clip of a caption manifest; a missing file stays in (and fails when read)."""
    from ..data.manifest import read_manifest, resolve_audio_path
    from ..errors import AudioNotFoundError

    out = []
    for clip in read_manifest(manifest):
        try:
            path = resolve_audio_path(clip.file_path, audio_root)
        except AudioNotFoundError:
            path = Path(audio_root) / clip.file_path
        out.append((clip.key, str(path)))
    return out


def audio_from_labelled_csv(path: str | os.PathLike, audio_root: str | os.PathLike) -> list[tuple[str, str]]:
    """``(clip key, audio path)`` of a labelled CSV (ESC-50's ``esc50.csv`` or ``file,label[,fold]``; labels
    ignored): each file under ``audio_root`` or ``audio_root/audio`` (ESC-50's layout), as the zero-shot
    evaluation finds them; a missing file stays in (and fails when read)."""
    from ..clap.evaluation import read_labelled_csv
    from ..data.manifest import clip_key

    root = Path(audio_root)
    out = []
    for row in dict.fromkeys(r["file"] for r in read_labelled_csv(path)):
        found = next((c for c in (root / row, root / "audio" / row) if c.is_file()), root / row)
        out.append((clip_key(found.relative_to(root).as_posix()), str(found)))
    return out


def audio_from_directory(directory: str | os.PathLike) -> list[tuple[str, str]]:
    """``(clip key, path)`` of every audio file below ``directory`` (sorted)."""
    from ..audio import find_audio_files
    from ..data.manifest import clip_key

    root = Path(directory)
    return [(clip_key(p.relative_to(root).as_posix()), str(p)) for p in find_audio_files(root)]


def audio_from_file_list(path: str | os.PathLike, audio_root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """``(clip key, path)`` of a file list (one path per line, ``#`` comments), relative to ``audio_root``
    (default: the list's folder); an absolute path must lie below the root (curated manifests are relative)."""
    from ..data.manifest import clip_key
    from ..errors import ManifestError

    path = Path(path)
    root = Path(audio_root) if audio_root is not None else path.parent
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(path, [f"cannot be read ({err})"]) from err
    out, problems = [], []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        file = Path(entry)
        if file.is_absolute():
            try:
                relative = file.relative_to(root.resolve() if not root.is_absolute() else root)
            except ValueError:
                problems.append(f"line {number}: {entry} is not below the audio root {root}")
                continue
        else:
            relative = file
        if ".." in relative.parts:
            problems.append(f"line {number}: {entry} leads outside the audio root ('..')")
            continue
        out.append((clip_key(relative.as_posix()), str(root / relative)))
    if problems:
        raise ManifestError(path, problems)
    if not out:
        raise ManifestError(path, ["no audio files listed"])
    return out


def captions_from_manifest(manifest: str | os.PathLike) -> list[tuple[str, str]]:
    """``(caption id, caption)`` of a manifest's captions, each distinct caption once, in order of appearance."""
    from ..data.manifest import read_manifest

    texts = dict.fromkeys(c.strip() for clip in read_manifest(manifest) for c in clip.captions)
    return [(caption_id(t), t) for t in texts]


def captions_from_text_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``(caption id, caption)`` of a text file, one caption per line (blank lines skipped), duplicates once."""
    from ..errors import ManifestError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(path, [f"cannot be read ({err})"]) from err
    texts = dict.fromkeys(line.strip() for line in lines if line.strip())
    if not texts:
        raise ManifestError(path, ["no captions (one per line)"])
    return [(caption_id(t), t) for t in texts]


# ------------------------------------------------------------------------------------------ curation runs
def _sources(table: EmbeddingTable, where: str) -> dict[str, str]:
    if table.sources is None:
        raise ConfigError(f"{where}: the embedding table has no sources (file paths / captions) to write a manifest from")
    return dict(zip(table.ids, table.sources))


def _summary_text(mode: str, curation: Any, rows: int, output: Path) -> str:
    from ..clap.curation import format_sweep

    stats = curation.stats
    lines = [
        f"{mode}: {rows} pairs from {curation.audio} clips x {curation.captions} captions -> {output}",
        f"  clips with no pair: {curation.clips_without_pair} of {curation.audio}; "
        f"captions used: {curation.captions_used} of {curation.captions}",
    ]
    if stats is not None:
        selection = ", ".join(filter(None, [f"threshold {stats.threshold:g}" if stats.threshold is not None else "",
                                            f"top_k {stats.top_k}" if stats.top_k is not None else ""]))
        lines.append(f"  pairs kept per threshold ({'with top_k ' + str(stats.top_k) if stats.top_k else 'threshold alone'}; chosen: {selection}):")
        table = format_sweep(list(zip(stats.thresholds, stats.kept, stats.queries_with_pair)), clips=curation.audio,
                             marked=stats.threshold)
        lines += ["    " + line for line in table.splitlines()]
    return "\n".join(lines)


def run_curation(
    mode: str,
    audio: EmbeddingTable,
    text: EmbeddingTable,
    output: str | os.PathLike,
    *,
    threshold: float | None,
    top_k: int | None,
    domain_ids: Sequence[str] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    sweep: Sequence[float] = DEFAULT_SWEEP,
    histogram: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """DU (or ADS with ``domain_ids``) into a curated manifest, a ``.stats.json`` beside it and a histogram PNG.

    Returns the statistics (also written as JSON); the caller prints ``summary``.
    """
    from ..clap.curation import curate, save_similarity_histogram, write_curated_manifest

    output = Path(output)
    curation = curate(audio, text, threshold=threshold, top_k=top_k, block_size=block_size, restrict_to=domain_ids,
                      sweep=sweep, progress=progress)
    rows = write_curated_manifest(curation.pairs, _sources(audio, "audio embeddings"), _sources(text, "text embeddings"), output)
    histogram = Path(histogram) if histogram else output.with_suffix(".png")
    stats = curation.stats
    save_similarity_histogram(histogram, kept=[p.similarity for p in curation.pairs], all_counts=stats.histogram,
                              bin_edges=stats.bin_edges, threshold=threshold,
                              title=f"{mode}: {audio.model or 'CLAP'} ({curation.audio} clips x {curation.captions} captions)")
    report = {
        "mode": mode, "manifest": str(output), "histogram": str(histogram), "pairs": rows,
        "clips": curation.audio, "captions": curation.captions, "clips_without_pair": curation.clips_without_pair,
        "captions_used": curation.captions_used, "threshold": threshold, "top_k": top_k, "model": audio.model,
        "sweep": [{"threshold": t, "pairs": k, "clips_with_pair": q}
                  for t, k, q in zip(stats.thresholds, stats.kept, stats.queries_with_pair)],
        "summary": _summary_text(mode, curation, rows, output) + f"\n  histogram: {histogram}",
    }
    write_atomic(output.with_suffix(".stats.json"), (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    return report


def run_ds(
    model: Any,
    text: EmbeddingTable,
    labels: Sequence[str],
    *,
    threshold: float | None,
    top_k: int | None,
    templates: Sequence[str] = (PAPER_PROMPT,),
    manifest: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    domain_emb: str | os.PathLike | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    sweep: Sequence[float] = DEFAULT_SWEEP,
    histogram: str | os.PathLike | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """DS: the captions of ``text`` closest to the prompted ``labels``; their embeddings into ``domain_emb``
    (for ADS) and, given the annotated ``manifest`` they come from, its pairs with those captions into ``output``."""
    from ..clap.curation import (
        CuratedPair,
        domain_captions,
        label_embeddings,
        save_similarity_histogram,
        search,
        write_curated_manifest,
    )

    if isinstance(model, (str, os.PathLike)):
        from ..features.clap_text import load_text_embedder

        embedder = load_text_embedder(str(model), device=device)
    else:
        embedder = model
    name = _model_name(model, embedder)
    if text.model and text.model != name:
        logger.warning("labels are embedded with '%s' but the captions were embedded with '%s'", name, text.model)
    label_table = label_embeddings(embedder, labels, templates, model=name)
    selected = domain_captions(label_table, text, threshold=threshold, top_k=top_k, block_size=block_size)
    # every caption's best label: the DS score whose distribution the sweep and histogram show
    best = search(text.vectors, label_table.vectors, top_k=1, block_size=block_size, sweep=sweep)
    stats = best.stats
    report: dict[str, Any] = {
        "mode": "ds", "labels": len(labels), "templates": list(templates), "captions": len(text),
        "captions_selected": len(selected), "threshold": threshold, "top_k": top_k, "model": name,
        "per_label": {label: 0 for label in labels},
        "sweep": [{"threshold": t, "captions": q} for t, q in zip(stats.thresholds, stats.queries_with_pair)],
    }
    for d in selected:
        report["per_label"][d.label] += 1
    lines = [f"ds: {len(selected)} of {len(text)} captions selected by {len(labels)} labels "
             f"(prompt{'s' if len(templates) > 1 else ''} {list(templates)})"]
    if domain_emb is not None:
        text.subset([d.text_id for d in selected]).save(domain_emb)
        report["domain_emb"] = str(domain_emb)
        lines.append(f"  caption embeddings of the DS set -> {domain_emb}")
    if manifest is not None and output is not None:
        from ..data.manifest import read_manifest

        score = {d.text_id: d.similarity for d in selected}
        # the table's own ids for a caption text (it may have been embedded with other ids than caption_id)
        id_of = dict(zip(text.sources, text.ids)) if text.sources is not None else {}
        pairs, files, captions = [], {}, {}
        for clip in read_manifest(manifest):
            for caption in clip.captions:
                cid = id_of.get(caption.strip()) or caption_id(caption)
                if cid in score:
                    files[clip.key] = clip.file_path
                    captions[cid] = caption.strip()
                    pairs.append(CuratedPair(clip.key, cid, score[cid]))
        rows = write_curated_manifest(pairs, files, captions, output)
        report.update({"manifest": str(output), "pairs": rows, "clips": len(files)})
        lines.append(f"  {rows} annotated pairs of {len(files)} clips with those captions -> {output}")
        histogram = Path(histogram) if histogram else Path(output).with_suffix(".png")
    elif histogram is not None:
        histogram = Path(histogram)
    if histogram is not None:
        save_similarity_histogram(histogram, kept=[d.similarity for d in selected], all_counts=np.histogram(
            best.similarity, bins=stats.bin_edges)[0], bin_edges=stats.bin_edges, threshold=threshold,
            title=f"ds: best class-label similarity of each caption ({name})", all_label="all captions",
            kept_label="selected captions")
        report["histogram"] = str(histogram)
        lines.append(f"  histogram: {histogram}")
    top = sorted(report["per_label"].items(), key=lambda kv: -kv[1])
    lines.append("  captions per label: " + ", ".join(f"{label} {n}" for label, n in top[:10])
                 + (f", ... ({sum(1 for _, n in top if n == 0)} label(s) with none)" if len(top) > 10 else ""))
    lines.append("  captions whose best label reaches each threshold:")
    lines.append(f"    {'threshold':>10} {'captions':>10}")
    for t, q in zip(stats.thresholds, stats.queries_with_pair):
        mark = "  <- chosen" if threshold is not None and abs(t - threshold) < 1e-12 else ""
        lines.append(f"    {t:>10.3f} {q:>10d} ({q / max(len(text), 1):6.1%}){mark}")
    report["summary"] = "\n".join(lines)
    if output is not None:
        write_atomic(Path(output).with_suffix(".stats.json"), (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    return report


# ------------------------------------------------------------------------------------------ command line
def _sweep(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--sweep expects comma-separated numbers, got {text!r}") from err
    if not values:
        raise argparse.ArgumentTypeError("--sweep needs at least one threshold")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enclap-curate", description="Embedding dumps and DU / DS / ADS curation "
                                     "with a trained CLAP (Wang et al. 2023); see docs/recipes/curation.md.")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="a CLAP tower directory (enclap-train-clap's best/) or a "
                       "transformers ClapModel directory / hub id")
        p.add_argument("--device", default="cpu")

    def selection(p: argparse.ArgumentParser, default: float) -> None:
        p.add_argument("--threshold", type=float, help=f"keep pairs with similarity >= this (inclusive); default "
                       f"{default} (the paper's) when --top-k is not given either")
        p.add_argument("--top-k", type=int, help="keep each query's top-k (ties: lower caption index); with "
                       "--threshold both must hold")
        p.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE,
                       help="rows per similarity block: memory O(block^2 + kept pairs)")
        p.add_argument("--sweep", type=_sweep, default=DEFAULT_SWEEP, help="thresholds of the statistics table, "
                       "comma-separated (default %(default)s)")
        p.add_argument("--histogram", help="similarity histogram PNG (default: the output with .png)")

    p = sub.add_parser("embed-audio", help="audio embeddings of a manifest's clips, a directory, or a file list")
    model_arg(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="caption manifest whose clips to embed (with --audio-root)")
    source.add_argument("--labelled-csv", help="label manifest whose clips to embed: ESC-50's esc50.csv or "
                        "file,label[,fold] (with --audio-root; files also looked up in <root>/audio)")
    source.add_argument("--audio-dir", help="embed every audio file below this directory (it is the audio root)")
    source.add_argument("--file-list", help="text file, one audio path per line (relative to --audio-root)")
    p.add_argument("--audio-root", help="root of the manifest's / list's paths (a list defaults to its folder)")
    p.add_argument("--out", required=True, help="output directory (an embedding table; rerun to resume)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=DEFAULT_AUDIO_CHUNK, help="files per committed chunk")

    p = sub.add_parser("embed-text", help="text embeddings of a caption corpus (each distinct caption once)")
    model_arg(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="caption manifest (either layout) whose captions form the corpus")
    source.add_argument("--text-file", help="text file, one caption per line")
    p.add_argument("--out", required=True, help="output directory (an embedding table; rerun to resume)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=DEFAULT_TEXT_CHUNK, help="captions per committed chunk")

    p = sub.add_parser("du", help="domain-unspecific curation: every clip with its most similar corpus captions")
    p.add_argument("--audio-emb", required=True, help="embed-audio's directory (the unlabelled clips)")
    p.add_argument("--text-emb", required=True, help="embed-text's directory (the caption corpus)")
    p.add_argument("--output", required=True, help="curated manifest to write (file_path,caption,similarity)")
    selection(p, PAPER_DU_THRESHOLD)

    p = sub.add_parser("ds", help="domain-specific curation: the corpus captions closest to a target task's labels")
    model_arg(p)
    p.add_argument("--text-emb", required=True, help="embed-text's directory of the annotated training captions")
    p.add_argument("--labels", help="target task labels: ESC-50-style CSV (esc50.csv or file,label[,fold]) or one "
                   "label per line; default: the 50 ESC-50 classes")
    p.add_argument("--template", action="append", help=f"prompt with {{label}} (repeatable; default the paper's "
                   f"'{PAPER_PROMPT}'; a class embedding is the mean over its prompts)")
    p.add_argument("--manifest", help="the annotated manifest the captions come from: its pairs with the selected "
                   "captions are written to --output")
    p.add_argument("--output", help="DS manifest (file_path,caption,similarity = best label similarity)")
    p.add_argument("--domain-emb", required=True, help="directory for the embedding table of the selected captions (ADS reads it)")
    selection(p, PAPER_DS_THRESHOLD)

    p = sub.add_parser("ads", help="augmented DS: DU with the captions restricted to a DS selection")
    p.add_argument("--audio-emb", required=True, help="embed-audio's directory (the unlabelled clips)")
    p.add_argument("--domain-emb", required=True, help="ds's --domain-emb directory")
    p.add_argument("--output", required=True, help="curated manifest to write")
    selection(p, PAPER_ADS_THRESHOLD)

    p = sub.add_parser("stats", help="statistics of a curated manifest (pairs per threshold, histogram)")
    p.add_argument("--manifest", required=True, help="a curated manifest (file_path,caption,similarity)")
    p.add_argument("--audio-emb", help="the clips it was curated from: counts the clips with no pair")
    p.add_argument("--sweep", type=_sweep, default=DEFAULT_SWEEP)
    p.add_argument("--histogram", help="PNG to write (default: <manifest stem>_stats.png beside it)")
    return parser


def _selection(args: argparse.Namespace, default: float) -> tuple[float | None, int | None]:
    if args.threshold is None and args.top_k is None:
        return default, None
    return args.threshold, args.top_k


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "embed-audio":
            if (args.manifest or args.labelled_csv) and not args.audio_root:
                raise ConfigError("--manifest / --labelled-csv need --audio-root (where their audio files are)")
            if args.manifest:
                items, root = audio_from_manifest(args.manifest, args.audio_root), args.audio_root
            elif args.labelled_csv:
                items, root = audio_from_labelled_csv(args.labelled_csv, args.audio_root), args.audio_root
            elif args.audio_dir:
                items, root = audio_from_directory(args.audio_dir), args.audio_dir
            else:
                root = args.audio_root or str(Path(args.file_list).parent)
                items = audio_from_file_list(args.file_list, root)
            table, summary = embed_audio_with_summary(args.model, items, args.out, batch_size=args.batch_size,
                                                      chunk_size=args.chunk_size, audio_root=root, device=args.device)
            print(f"embed-audio: {summary}; table of {len(table)} clips x {table.dim} -> {args.out}")
            if summary.failed:
                print(f"  {len(summary.failed)} unreadable file(s) skipped, listed in {Path(args.out) / FAILED_FILE}; "
                      f"first: {summary.failed[0][1]}: {summary.failed[0][2]}")
        elif args.command == "embed-text":
            items = captions_from_manifest(args.manifest) if args.manifest else captions_from_text_file(args.text_file)
            table, summary = embed_text_with_summary(args.model, items, args.out, batch_size=args.batch_size,
                                                     chunk_size=args.chunk_size, device=args.device)
            print(f"embed-text: {summary}; table of {len(table)} distinct captions x {table.dim} -> {args.out}")
        elif args.command in ("du", "ads"):
            threshold, top_k = _selection(args, PAPER_DU_THRESHOLD if args.command == "du" else PAPER_ADS_THRESHOLD)
            audio = EmbeddingTable.load(args.audio_emb, mmap=True)
            text = EmbeddingTable.load(args.text_emb if args.command == "du" else args.domain_emb, mmap=True)
            report = run_curation(args.command, audio, text, args.output, threshold=threshold, top_k=top_k,
                                  block_size=args.block_size, sweep=args.sweep, histogram=args.histogram)
            print(report["summary"])
        elif args.command == "ds":
            if args.output and not args.manifest:
                raise ConfigError("--output (the DS pairs) needs --manifest, the annotated manifest of the captions")
            from ..clap.curation import read_target_labels

            threshold, top_k = _selection(args, PAPER_DS_THRESHOLD)
            text = EmbeddingTable.load(args.text_emb, mmap=True)
            report = run_ds(args.model, text, read_target_labels(args.labels), threshold=threshold, top_k=top_k,
                            templates=tuple(args.template or (PAPER_PROMPT,)), manifest=args.manifest,
                            output=args.output, domain_emb=args.domain_emb, block_size=args.block_size,
                            sweep=args.sweep, histogram=args.histogram, device=args.device)
            print(report["summary"])
        else:
            print(run_stats(args.manifest, audio_emb=args.audio_emb, sweep=args.sweep, histogram=args.histogram))
    except (EnclapError, ValueError) as err:
        print(f"enclap-curate: error: {err}", file=sys.stderr)
        return 2
    return 0


def run_stats(
    manifest: str | os.PathLike, *, audio_emb: str | os.PathLike | None = None, sweep: Sequence[float] = DEFAULT_SWEEP,
    histogram: str | os.PathLike | None = None,
) -> str:
    """The statistics of a curated manifest as text (and its histogram PNG)."""
    from ..clap.curation import format_sweep, read_curated_manifest, save_similarity_histogram, sweep_from_pairs
    from ..data.manifest import clip_key

    rows = read_curated_manifest(manifest)
    keys = [clip_key(f) for f, _, _ in rows]
    sims = [s for _, _, s in rows]
    clips = None
    lines = [f"{manifest}: {len(rows)} pairs, {len(set(keys))} clips, {len(set(c for _, c, _ in rows))} distinct captions"]
    if audio_emb is not None:
        table = EmbeddingTable.load(audio_emb, mmap=True)
        clips = len(table)
        lines.append(f"  clips with no pair: {len(set(table.ids) - set(keys))} of {clips}")
    if rows:
        lines.append(f"  similarity: min {min(sims):.4f}, mean {float(np.mean(sims)):.4f}, max {max(sims):.4f}")
    lines.append("  pairs per threshold (among these pairs):")
    lines += ["    " + line for line in format_sweep(sweep_from_pairs(sims, keys, sweep), clips=clips).splitlines()]
    histogram = Path(histogram) if histogram else Path(manifest).with_name(Path(manifest).stem + "_stats.png")
    save_similarity_histogram(histogram, kept=sims, title=f"{Path(manifest).name}: similarity of the curated pairs",
                              kept_label="curated pairs")
    lines.append(f"  histogram: {histogram}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
