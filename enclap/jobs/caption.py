"""Caption audio files from the shell: files or folders in, one caption per file out."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="enclap-caption", description="Caption audio files with an EnCLAP checkpoint.")
    p.add_argument("inputs", nargs="*", help="audio files or folders (searched recursively)")
    p.add_argument("--input", "-i", action="append", default=[], help="an audio file or folder (reference CLI spelling; repeatable)")
    p.add_argument("--ckpt", "-c", required=True, help="checkpoint directory")
    p.add_argument("--clap_ckpt", "-cl", default=None, help="CLAP: hub id, HF directory or LAION .pt")
    p.add_argument("--encodec", default=None, help="EnCodec: hub id or HF directory")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--output", "-o", default=None, help="write results to a .csv or .json file as well")
    p.add_argument("--batch_size", "-b", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--long_audio", choices=("truncate", "windows"), default=None)
    p.add_argument("--num_beams", type=int, default=None)
    p.add_argument("--max_length", type=int, default=None)
    return p


def collect_inputs(items: Sequence[str]) -> list[Path]:
    from ..audio import find_audio_files

    paths: list[Path] = []
    for item in items:
        path = Path(item)
        paths.extend(find_audio_files(path) if path.is_dir() else [path])
    # A file named both directly and through its folder is captioned once, at its first place.
    return list(dict.fromkeys(paths))


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    from ..errors import EnclapError
    from . import quiet_model_loading
    from ..pipeline import CaptioningPipeline

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    quiet_model_loading()
    parser = build_parser()
    args = parser.parse_args(argv)
    items = list(args.inputs) + list(args.input)
    if not items:
        parser.error("give at least one audio file or folder")
    try:
        paths = collect_inputs(items)
        generation = {k: v for k, v in (("num_beams", args.num_beams), ("max_length", args.max_length)) if v is not None}
        pipeline = CaptioningPipeline.from_pretrained(
            args.ckpt, clap=args.clap_ckpt, encodec=args.encodec, tokenizer=args.tokenizer, device=args.device,
            batch_size=args.batch_size, generation=generation or None, long_audio=args.long_audio,
        )
        with tqdm(total=len(paths), desc="captioning", unit="file", disable=len(paths) < 2, file=sys.stderr) as bar:
            results = pipeline.caption_files(paths, skip_errors=True, progress=bar.update)
    except EnclapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for r in results:
        if r.error:
            print(f"error: {r.source}: {r.error}", file=sys.stderr)
        else:
            print(f"{r.source}\t{r.caption}")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"file": r.source, "caption": r.caption, "error": r.error} for r in results]
        if out.suffix.lower() == ".json":
            out.write_text(json.dumps(rows, indent=2) + "\n")
        else:
            with open(out, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=["file", "caption", "error"])
                writer.writeheader()
                writer.writerows(rows)
    failed = sum(1 for r in results if r.error)
    if failed:
        print(f"{failed} of {len(results)} file(s) could not be captioned", file=sys.stderr)
        return 1
    return 0
