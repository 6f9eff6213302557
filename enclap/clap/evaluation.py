"""Evaluating a CLAP tower: audio-text retrieval both ways and zero-shot classification.

**Retrieval protocol** (DCASE 2022-2024 task 6b / LAION-CLAP's evaluation, several captions per clip):

* *text -> audio*: every caption is a query with exactly one correct clip (its own). ``R@k`` is the
  share of queries whose clip ranks in the top ``k``; ``mAP@10`` is DCASE's: with one relevant item,
  the average precision at 10 is ``1 / rank`` when the clip ranks in the top 10, else 0, averaged over
  queries.
* *audio -> text*: every clip is a query; it is a hit at ``k`` when *any* of its captions ranks in the
  top ``k`` (LAION counts the best-ranked of the 5); ``mAP@10`` is LAION's audio-to-text figure,
  ``1 / rank`` of the best-ranked correct caption when within 10, else 0.
* **Ties** are broken against the query: a candidate scoring exactly as high as the best correct one
  ranks before it (rank = 1 + number of wrong candidates scoring >= the best correct score), so a model
  that scores everything alike gets no credit.
* A query with no correct candidate (a clip without captions) counts as a miss (0) and is reported as
  ``<direction>_queries_without_target``.

**Zero-shot classification**: each label becomes prompts from templates (default
:data:`DEFAULT_TEMPLATES`, e.g. "This is the sound of {label}."); a class embedding is the mean of its
prompts' normalised text embeddings, renormalised; a clip is assigned the classes by cosine similarity.
Top-1 / top-5 accuracy (same tie rule). Labelled audio comes from ESC-50's ``meta/esc50.csv``
(``filename,fold,target,category,...``: accuracy per fold and the mean over folds, as ESC-50 results
are reported; zero-shot needs no training folds), UrbanSound8K's, TUT Acoustic Scenes' or a generic CSV with
``file,label`` (optional ``fold``); several sets and towers in one table: :mod:`enclap.clap.zeroshot_suite`.

Command line (``enclap-eval-clap``)::

    enclap-eval-clap retrieval --model DIR --manifest test.csv --audio-root AUDIO [--output report.json]
    enclap-eval-clap zeroshot --model DIR --labels esc50.csv --audio-root AUDIO [--template "..."]...
    enclap-eval-clap zeroshot-suite --model DIR [--model DIR2] --set NAME=LABELS[:AUDIO_ROOT]... [--output t.csv]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, EnclapError

logger = logging.getLogger(__name__)

RETRIEVAL_KS = (1, 5, 10)
RETRIEVAL_METRIC_NAMES = tuple(
    [f"t2a_R@{k}" for k in RETRIEVAL_KS] + ["t2a_mAP@10"] + [f"a2t_R@{k}" for k in RETRIEVAL_KS] + ["a2t_mAP@10", "mAP@10"]
)
DEFAULT_TEMPLATES = (
    "This is the sound of {label}.",
    "A sound of {label}.",
    "The sound of {label} can be heard.",
    "{label}.",
)
RETRIEVAL_PROTOCOL = (
    "text->audio: each caption is a query with one correct clip; audio->text: a clip is a hit when any of its "
    "captions is ranked within k; mAP@10 = mean of 1/rank of the first correct item within 10 (DCASE task 6b for "
    "text->audio, LAION for audio->text); ties are broken against the query; a query with no correct item counts 0"
)


# ------------------------------------------------------------------------------------------ the metrics
def first_hit_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of each row's best correct candidate, ties broken against it (``inf`` when it has none).

    ``scores`` and ``relevant`` are ``(queries, candidates)``; ``relevant`` is boolean.
    """
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must be the same 2-D shape")
    if not np.isfinite(scores).all():
        raise ValueError("similarity scores must be finite")
    best = np.where(relevant, scores, -np.inf).max(axis=1)
    wrong_ahead = ((scores >= best[:, None]) & ~relevant).sum(axis=1)
    ranks = (1 + wrong_ahead).astype(np.float64)
    ranks[~relevant.any(axis=1)] = np.inf
    return ranks


def rank_metrics(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    """R@1/5/10 and mAP@10 (mean of 1/rank within 10) of first-hit ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no queries to score")
    out = {f"{prefix}R@{k}": float(np.mean(ranks <= k)) for k in RETRIEVAL_KS}
    out[f"{prefix}mAP@10"] = float(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0)))
    return out


def retrieval_metrics(similarity: np.ndarray, caption_clip: Sequence[int]) -> dict[str, float]:
    """Both directions' R@1/5/10 and mAP@10 of an ``(clips, captions)`` similarity matrix.

    ``caption_clip[j]`` is the clip (row) caption ``j`` describes. ``mAP@10`` (no prefix) repeats
    ``t2a_mAP@10``, DCASE's ranking figure. See the module docstring for the protocol.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    owner = np.asarray(caption_clip, dtype=np.int64)
    clips, captions = similarity.shape
    if owner.shape != (captions,):
        raise ValueError(f"caption_clip has {owner.shape[0] if owner.ndim else 0} entries for {captions} captions")
    if captions and (owner.min() < 0 or owner.max() >= clips):
        raise ValueError(f"caption_clip names clips outside 0..{clips - 1}")
    relevant = owner[None, :] == np.arange(clips)[:, None]  # (clips, captions)
    figures = rank_metrics(first_hit_ranks(similarity.T, relevant.T), "t2a_")
    a2t_ranks = first_hit_ranks(similarity, relevant)
    figures.update(rank_metrics(a2t_ranks, "a2t_"))
    figures["mAP@10"] = figures["t2a_mAP@10"]
    figures["a2t_queries_without_target"] = float(np.sum(~relevant.any(axis=1)))
    return figures


def chance_retrieval(clips: int) -> dict[str, float]:
    """Expected figures of a random ranking of ``clips`` clips (text->audio; audio->text with equally many captions per clip)."""
    n = max(int(clips), 1)
    t2a = {f"t2a_R@{k}": min(k, n) / n for k in RETRIEVAL_KS}
    t2a["t2a_mAP@10"] = sum(1.0 / r for r in range(1, min(10, n) + 1)) / n
    return {**t2a, "a2t_R@1": 1.0 / n}


def topk_accuracy(scores: np.ndarray, labels: Sequence[int], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy of ``(items, classes)`` scores against class indices (ties broken against the item)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    relevant = labels[:, None] == np.arange(scores.shape[1])[None, :]
    ranks = first_hit_ranks(scores, relevant)
    return {f"top{k}": float(np.mean(ranks <= k)) for k in ks}


def class_embeddings(text_embedder: Any, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
    """``(classes, dim)``: per label, the renormalised mean of its prompts' normalised text embeddings."""
    if not templates or any("{label}" not in t for t in templates):
        raise ConfigError(f"every prompt template must contain '{{label}}', got {list(templates)}")
    prompts = [t.format(label=label) for label in labels for t in templates]
    emb = np.asarray(text_embedder.embed_texts(prompts), dtype=np.float64).reshape(len(labels), len(templates), -1)
    mean = emb.mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True).clip(min=1e-12)).astype(np.float32)


# ------------------------------------------------------------------------------------------ labelled audio
def read_labelled_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows ``{file, label, fold, source, target, line}`` of a label manifest: ESC-50's esc50.csv, UrbanSound8K's,
    a TUT meta.txt or a ``file,label[,fold][,source]`` CSV (see :func:`enclap.clap.zeroshot_suite.read_labelled_set`).

    ``source`` is the recording a clip was cut from (ESC-50's ``src_file``, UrbanSound8K's ``fsID``, a generic
    CSV's ``source`` column; ``""`` when unknown), ``target`` the class index where the set has one, ``line``
    the manifest line.
    """
    from .zeroshot_suite import read_labelled_set

    return read_labelled_set(path).rows


def _resolve(file: str, audio_root: str | os.PathLike) -> Path:
    from ..errors import AudioNotFoundError

    root = Path(audio_root)
    for candidate in (root / file, root / "audio" / file):
        if candidate.is_file():
            return candidate
    raise AudioNotFoundError(root / file, f"no audio file '{file}' under {root} (nor {root / 'audio'})")


def embed_files(embedder: Any, paths: Sequence[Path], batch_size: int = 16) -> np.ndarray:
    """Audio embeddings of files (decoded and resampled to the embedder's rate), with a progress bar."""
    from tqdm import tqdm

    from ..audio import load_audio

    chunks = []
    for start in tqdm(range(0, len(paths), batch_size), desc="embedding audio", unit="batch", file=sys.stderr):
        waves = [load_audio(p, embedder.sample_rate)[0] for p in paths[start : start + batch_size]]
        chunks.append(embedder.embed(waves))
    return np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), dtype=np.float32)


def evaluate_retrieval(embedder: Any, manifest: str | os.PathLike, audio_root: str | os.PathLike, batch_size: int = 16) -> dict[str, Any]:
    """Retrieval figures of ``embedder`` (audio + text) on a caption manifest's clips and all their captions."""
    from ..data.manifest import read_manifest, resolve_audio_path

    clips = read_manifest(manifest)
    paths = [resolve_audio_path(c.file_path, audio_root) for c in clips]
    audio = embed_files(embedder, paths, batch_size)
    captions = [cap for c in clips for cap in c.captions]
    owner = [i for i, c in enumerate(clips) for _ in c.captions]
    text = embedder.embed_texts(captions)
    return {
        "task": "retrieval",
        "protocol": RETRIEVAL_PROTOCOL,
        "clips": len(clips),
        "captions": len(captions),
        "metrics": retrieval_metrics(audio @ text.T, owner),
        "chance": chance_retrieval(len(clips)),
    }


def evaluate_zero_shot(
    embedder: Any, labels_csv: str | os.PathLike, audio_root: str | os.PathLike, templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Zero-shot top-1/top-5 accuracy on labelled audio, overall and per fold (with their mean)."""
    rows = read_labelled_csv(labels_csv)
    classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    audio = embed_files(embedder, [_resolve(r["file"], audio_root) for r in rows], batch_size)
    from .zeroshot_suite import readable_label

    scores = audio @ class_embeddings(embedder, [readable_label(c) for c in classes], templates).T
    labels = np.array([index[r["label"]] for r in rows])
    report: dict[str, Any] = {
        "task": "zero-shot classification",
        "protocol": f"class embedding = mean of {len(templates)} prompt(s) {list(templates)}; top-k by cosine; ties against the clip",
        "clips": len(rows),
        "classes": len(classes),
        "chance": {"top1": 1.0 / len(classes), "top5": min(1.0, 5.0 / len(classes))},
        "metrics": topk_accuracy(scores, labels),
    }
    folds = sorted({r["fold"] for r in rows if r["fold"]}, key=lambda f: (len(f), f))
    if folds:
        per_fold = {}
        for fold in folds:
            mask = np.array([r["fold"] == fold for r in rows])
            per_fold[fold] = topk_accuracy(scores[mask], labels[mask])
        report["folds"] = per_fold
        report["fold_mean"] = {k: float(np.mean([f[k] for f in per_fold.values()])) for k in ("top1", "top5")}
    return report


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of a report."""
    lines = [f"{report['task']}: {report['clips']} clips" + (f", {report['captions']} captions" if "captions" in report else "")
             + (f", {report['classes']} classes" if "classes" in report else ""), f"protocol: {report['protocol']}"]
    width = max(len(k) for k in report["metrics"])
    for name, value in report["metrics"].items():
        chance = report.get("chance", {}).get(name)
        lines.append(f"  {name:<{width}}  {value:.4f}" + (f"   (chance {chance:.4f})" if chance is not None else ""))
    for fold, figures in report.get("folds", {}).items():
        lines.append(f"  fold {fold}: " + ", ".join(f"{k}={v:.4f}" for k, v in figures.items()))
    if "fold_mean" in report:
        lines.append("  mean over folds: " + ", ".join(f"{k}={v:.4f}" for k, v in report["fold_mean"].items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``enclap-eval-clap {retrieval,zeroshot,zeroshot-suite}``: evaluate CLAP towers (table on stdout, JSON with --output)."""
    parser = argparse.ArgumentParser(prog="enclap-eval-clap", description=main.__doc__)
    sub = parser.add_subparsers(dest="task", required=True)
    for name in ("retrieval", "zeroshot"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True, help="a CLAP tower directory (enclap-train-clap's best/ or final/)")
        p.add_argument("--audio-root", required=True, help="root the manifest's / CSV's file paths are relative to")
        p.add_argument("--output", help="also write the report as JSON here")
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--device", default="cpu")
        if name == "retrieval":
            p.add_argument("--manifest", required=True, help="caption manifest (file_path,caption_1..N or file_path,caption)")
        else:
            p.add_argument("--labels", required=True, help="ESC-50 esc50.csv, UrbanSound8K.csv, a TUT meta.txt or a file,label[,fold] CSV")
            p.add_argument("--template", action="append", help="prompt template with {label} (repeatable; default: 4 templates)")
    from . import zeroshot_suite

    zeroshot_suite.add_arguments(sub.add_parser("zeroshot-suite", help="zero-shot on several sets and towers: one table"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.task == "zeroshot-suite":
        return zeroshot_suite.run_from_args(args)
    from .embedder import ClapTowerEmbedder

    try:
        embedder = ClapTowerEmbedder.from_pretrained(args.model, device=args.device, batch_size=args.batch_size)
        if args.task == "retrieval":
            report = evaluate_retrieval(embedder, args.manifest, args.audio_root, args.batch_size)
        else:
            report = evaluate_zero_shot(embedder, args.labels, args.audio_root, tuple(args.template or DEFAULT_TEMPLATES), args.batch_size)
    except EnclapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report["model"] = str(args.model)
    print(format_report(report))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


__all__ = [
    "DEFAULT_TEMPLATES",
    "RETRIEVAL_METRIC_NAMES",
    "class_embeddings",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "first_hit_ranks",
    "main",
    "read_labelled_csv",
    "retrieval_metrics",
    "topk_accuracy",
]
