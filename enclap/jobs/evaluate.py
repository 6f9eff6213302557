"""Evaluate a captioner on a captioned test set: predictions CSV, a score table and a JSON of scores.

Command-line compatible with the reference ``evaluate.py`` (``--ckpt --clap_ckpt --test_csv
--from_preprocessed --encodec_path --clap_path --audio_path --save_path --num_captions``), but batched,
on CPU or GPU, from precomputed features (EnCLAP's per-file ``.npy`` layout or the project's store) or
from audio files. Predictions are written batch by batch to a ``.partial`` file, so a run that is
stopped resumes where it was and does not caption a clip twice.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    predictions_path: Path
    scores_path: Path
    scores: dict
    unavailable: dict
    num_clips: int
    failed: list[tuple[str, str]] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="enclap-evaluate",
        description="Caption a test set with an EnCLAP checkpoint and score it with the AAC metrics.",
    )
    p.add_argument("--ckpt", "-c", required=True, help="checkpoint directory (config.json + weights [+ tokenizer, pipeline.json])")
    p.add_argument("--clap_ckpt", "-cl", default=None, help="CLAP: hub id, HF directory or LAION .pt (needed for audio input)")
    p.add_argument("--encodec", default=None, help="EnCodec: hub id or HF directory (default: pipeline.json or facebook/encodec_24khz)")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the checkpoint's own, else facebook/bart-base)")
    p.add_argument("--test_csv", "-ts", required=True, help="evaluation manifest: file_path,caption_1..caption_N")
    src = p.add_argument_group("input (one of)")
    src.add_argument("--from_preprocessed", "-fp", action="store_true", help="read features instead of audio")
    src.add_argument("--encodec_path", "-ep", default=None, help="EnCLAP layout: folder of per-clip EnCodec .npy")
    src.add_argument("--clap_path", "-cp", default=None, help="EnCLAP layout: folder of per-clip CLAP .npy")
    src.add_argument("--features", default=None, help="a feature store written by enclap-extract (implies --from_preprocessed)")
    src.add_argument("--audio_path", "-ap", default=None, help="audio root the manifest's file_path values point into")
    p.add_argument("--save_path", "-s", default=None, help="predictions CSV (default: <ckpt>/eval/<csv name>.predictions.csv)")
    p.add_argument("--scores_path", default=None, help="scores JSON (default: next to --save_path, .scores.json)")
    p.add_argument("--num_captions", "-n", type=int, default=None, help="references per clip to use (default: all)")
    p.add_argument("--metrics", default=None, help="comma-separated metric names (default: all; unavailable ones are reported)")
    p.add_argument("--per_clip", action="store_true", help="also write per-clip scores into the predictions CSV")
    p.add_argument("--batch_size", "-b", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--long_audio", choices=("truncate", "windows"), default=None, help="how clips over ~13.6 s are captioned")
    p.add_argument("--num_beams", type=int, default=None)
    p.add_argument("--max_length", type=int, default=None)
    p.add_argument("--no_resume", action="store_true", help="ignore predictions of an earlier interrupted run")
    p.add_argument("--metrics_cache", default=None, help="where metric resources (jars, Java settings) are provisioned")
    return p


PARTIAL_HEADER = "#settings"


def _partial_path(save_path: Path) -> Path:
    return save_path.with_name(save_path.name + ".partial")


def _run_settings(args: argparse.Namespace, pipeline, from_features: bool) -> dict:
    """What decides the predictions: a resumed run must match it, or it would mix two runs' captions."""
    from dataclasses import asdict

    def resolved(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path else None

    return {
        "checkpoint": resolved(args.ckpt),
        "test_csv": resolved(args.test_csv),
        "tokenizer": str(getattr(pipeline.tokenizer, "name_or_path", "")),
        "pipeline": asdict(pipeline.settings) if not from_features else {
            k: v for k, v in asdict(pipeline.settings).items() if k not in ("encodec", "clap", "bandwidth")
        },
        "input": {"features": resolved(args.features), "encodec_path": resolved(args.encodec_path),
                  "clap_path": resolved(args.clap_path)} if from_features else {"audio_path": resolved(args.audio_path)},
    }


def _open_partial(path: Path, settings: dict) -> dict[str, str]:
    """Finished predictions of an interrupted run with the same settings; starts the file when there is none.

    Only complete lines count: a last line cut off by a kill is dropped (and cut from the file, so the
    next row does not run into it). A file written with other settings is refused, not mixed in.
    """
    from ..errors import ConfigError

    header = [PARTIAL_HEADER, json.dumps(settings, sort_keys=True)]
    data = path.read_bytes() if path.is_file() else b""
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        logger.warning("%s: dropping an incomplete last line left by an interrupted run", path)
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    rows = list(csv.reader(io.StringIO(complete.decode("utf-8", errors="replace"), newline="")))
    if not rows:
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(header)
        return {}
    if rows[0][:1] != [PARTIAL_HEADER] or len(rows[0]) != 2:
        raise ConfigError(f"{path}: not a predictions file of an interrupted evaluation; remove it or pass --no_resume")
    saved = json.loads(rows[0][1])
    if saved != settings:
        differing = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        raise ConfigError(
            f"{path} holds predictions of an interrupted run with other settings ({', '.join(differing)}); "
            "rerun with the same settings to resume it, or pass --no_resume to start over"
        )
    return {row[0]: row[1] for row in rows[1:] if len(row) == 2}


def run_evaluation(args: argparse.Namespace) -> EvaluationResult:
    from tqdm import tqdm

    from ..data.manifest import read_manifest, resolve_audio_path
    from ..errors import AudioError, ConfigError
    from ..features.store import open_feature_store
    from ..metrics import DEFAULT_METRICS, CaptionScorer, format_table
    from ..pipeline import CaptioningPipeline

    from_features = bool(args.from_preprocessed or args.features)
    if from_features and not (args.features or (args.encodec_path and args.clap_path)):
        raise ConfigError("--from_preprocessed needs --encodec_path and --clap_path (EnCLAP layout) or --features STORE")
    if not from_features and not args.audio_path:
        raise ConfigError("give --audio_path (audio input) or --from_preprocessed with feature paths")

    clips = read_manifest(args.test_csv)
    if not clips:
        raise ConfigError(f"{args.test_csv}: no clips to evaluate")
    references = [list(c.captions[: args.num_captions] if args.num_captions else c.captions) for c in clips]

    save_path = Path(args.save_path) if args.save_path else Path(args.ckpt) / "eval" / f"{Path(args.test_csv).stem}.predictions.csv"
    scores_path = Path(args.scores_path) if args.scores_path else save_path.with_suffix(".scores.json")
    save_path.parent.mkdir(parents=True, exist_ok=True)
    generation = {k: v for k, v in (("num_beams", args.num_beams), ("max_length", args.max_length)) if v is not None}
    pipeline = CaptioningPipeline.from_pretrained(
        args.ckpt,
        clap=args.clap_ckpt,
        encodec=args.encodec,
        tokenizer=args.tokenizer,
        device=args.device,
        with_audio_models=not from_features,
        batch_size=args.batch_size,
        generation=generation or None,
        long_audio=args.long_audio,
    )
    store = None
    if from_features:
        store = open_feature_store(args.features, encodec_path=args.encodec_path, clap_path=args.clap_path)

    partial = _partial_path(save_path)
    if args.no_resume and partial.exists():
        partial.unlink()
    done = _open_partial(partial, _run_settings(args, pipeline, from_features))
    if done:
        logger.info("resuming: %d of %d clips already captioned in %s", len(done), len(clips), partial)

    pending = [c for c in clips if c.file_path not in done]
    failed: list[tuple[str, str]] = []
    started = time.perf_counter()
    with open(partial, "a", newline="", encoding="utf-8") as out, tqdm(
        total=len(clips), initial=len(clips) - len(pending), desc="captioning", unit="clip", dynamic_ncols=True
    ) as bar:
        writer = csv.writer(out)
        for start in range(0, len(pending), args.batch_size):
            batch = pending[start : start + args.batch_size]
            if store is not None:
                try:
                    features = [store[c.key] for c in batch]
                except KeyError as err:
                    raise ConfigError(f"features missing for a clip of {args.test_csv}: {err}") from err
                captions = pipeline.caption_features(features, names=[c.file_path for c in batch])
                items = list(zip(batch, captions))
            else:
                paths = []
                for c in batch:
                    try:
                        paths.append(resolve_audio_path(c.file_path, args.audio_path))
                    except AudioError as err:
                        failed.append((c.file_path, err.reason))
                        paths.append(None)
                good = [(c, p) for c, p in zip(batch, paths) if p is not None]
                results = pipeline.caption_files([p for _, p in good], skip_errors=True)
                items = []
                for (c, _), r in zip(good, results):
                    if r.error:
                        failed.append((c.file_path, r.error))
                    else:
                        items.append((c, r.caption))
            for c, caption in items:
                writer.writerow([c.file_path, caption])
                done[c.file_path] = caption
            out.flush()
            bar.update(len(batch))
    seconds = time.perf_counter() - started

    if failed:
        for path, reason in failed:
            logger.error("%s: %s", path, reason)
        raise ConfigError(
            f"{len(failed)} clip(s) of {args.test_csv} could not be captioned (first: {failed[0][0]}: {failed[0][1]}); "
            "fix or remove them and run again: finished predictions are kept"
        )

    metrics = tuple(m.strip() for m in args.metrics.split(",")) if args.metrics else DEFAULT_METRICS
    scorer = CaptionScorer(metrics, cache_dir=args.metrics_cache)
    candidates = [done[c.file_path] for c in clips]
    report = scorer.score(candidates, references, per_clip=args.per_clip)

    tmp = save_path.with_name(save_path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        per_clip_names = sorted(report.per_clip) if (args.per_clip and report.per_clip) else []
        width = max(len(r) for r in references)
        writer.writerow(["file_path", "prediction"] + [f"caption_{i + 1}" for i in range(width)] + per_clip_names)
        for i, (c, refs) in enumerate(zip(clips, references)):
            row = [c.file_path, candidates[i]] + refs + [""] * (width - len(refs))
            row += [f"{report.per_clip[name][i]:.6f}" for name in per_clip_names]
            writer.writerow(row)
    tmp.replace(save_path)
    summary = {
        "checkpoint": str(args.ckpt),
        "test_csv": str(args.test_csv),
        "num_clips": len(clips),
        "input": "features" if from_features else "audio",
        "caption_seconds": round(seconds, 3),
        "scores": report.corpus,
        "unavailable": report.unavailable,
    }
    scores_path.write_text(json.dumps(summary, indent=2) + "\n")
    partial.unlink(missing_ok=True)
    print(format_table(report))
    print(f"> predictions: {save_path}\n> scores: {scores_path}")
    return EvaluationResult(save_path, scores_path, report.corpus, report.unavailable, len(clips))


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import EnclapError
    from . import quiet_model_loading

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    quiet_model_loading()
    args = build_parser().parse_args(argv)
    try:
        run_evaluation(args)
    except EnclapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
