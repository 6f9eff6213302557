"""Caption audio files from the shell: files or folders in, captions out (one per file, or timed per window).

Modes (``--long_audio``): ``truncate`` (the reference's: a recording's first encoder window, 13.6 s),
``windows`` (one caption for the whole recording, chosen across its windows) and ``timestamped`` (a
caption per window with its start and end, plus the whole recording's caption; ``--window`` and
``--hop`` set the windows and imply this mode). Every mode reads a long recording in bounded memory.

Output: tab-separated lines on stdout, and with ``--output FILE`` a file whose format the extension
names (``.tsv .csv .json .jsonl .srt .vtt``) or ``--format`` says. SRT / WebVTT hold the timed captions
of one recording (they imply ``timestamped``): with several recordings ``--output`` is a directory that
gets one subtitle file per recording, named like it (``a.wav`` -> ``DIR/a.srt``). Exit status 0 when
every file was captioned, 1 when some could not be (each named on stderr with the reason), 2 when
nothing could run (bad arguments, no checkpoint).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

LONG_AUDIO_CHOICES = ("truncate", "windows", "timestamped")


def build_parser() -> argparse.ArgumentParser:
    from ..caption_formats import FORMATS

    p = argparse.ArgumentParser(
        prog="enclap-caption", description="Caption audio files with an EnCLAP checkpoint.",
        epilog="Example: enclap-caption --ckpt CKPT --output subs/ --format srt recordings/  "
               "(one .srt of per-window captions per recording)",
    )
    p.add_argument("inputs", nargs="*", help="audio files or folders (searched recursively)")
    p.add_argument("--input", "-i", action="append", default=[], help="an audio file or folder (reference CLI spelling; repeatable)")
    p.add_argument("--ckpt", "-c", required=True, help="checkpoint directory")
    p.add_argument("--clap_ckpt", "-cl", default=None, help="CLAP: hub id, HF directory or LAION .pt")
    p.add_argument("--encodec", default=None, help="EnCodec: hub id or HF directory")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--output", "-o", default=None,
                   help="write results to FILE (.tsv .csv .json .jsonl .srt .vtt), or for SRT/WebVTT of several "
                        "recordings to a directory (one file per recording)")
    p.add_argument("--format", "-f", choices=FORMATS, default=None,
                   help="output format (default: from --output's extension; tsv on stdout)")
    p.add_argument("--batch_size", "-b", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--long_audio", choices=LONG_AUDIO_CHOICES, default=None,
                   help="recordings longer than the encoder's window (13.6 s): caption the start (truncate, the "
                        "reference's), choose one caption across windows (windows), or caption every window with "
                        "its times (timestamped)")
    p.add_argument("--window", type=float, default=None, metavar="SECONDS",
                   help="timestamped mode: window length (default: the encoder's window)")
    p.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                   help="timestamped mode: a window starts every SECONDS (default: the window length)")
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


def _output_plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str | None, bool]:
    """(format of the output or None for plain stdout lines, timestamped?) from the arguments; errors exit 2."""
    from ..caption_formats import SUBTITLE_FORMATS, format_for_path

    fmt = args.format
    if fmt is None and args.output is not None:
        fmt = format_for_path(args.output)
        if fmt is None:
            parser.error(f"--output {args.output}: the extension names no format (.tsv .csv .json .jsonl .srt .vtt); "
                         "or give --format")
    if args.output is not None and fmt not in SUBTITLE_FORMATS and Path(args.output).is_dir():
        parser.error(f"--output {args.output} is a directory: only --format srt or vtt writes one file per recording")
    timed_asked = args.window is not None or args.hop is not None or fmt in SUBTITLE_FORMATS
    if timed_asked and args.long_audio in ("truncate", "windows"):
        parser.error("--window/--hop and SRT/WebVTT output give per-window captions: use --long_audio timestamped")
    return fmt, timed_asked or args.long_audio == "timestamped"


def _subtitle_file(output: str) -> bool:
    """Whether an SRT/WebVTT ``--output`` names one file (``x.srt`` / ``x.vtt``) rather than a directory."""
    from ..caption_formats import SUBTITLE_FORMATS, format_for_path

    return format_for_path(output) in SUBTITLE_FORMATS and not Path(output).is_dir()


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    from ..caption_formats import SUBTITLE_FORMATS, render, subtitle_paths, table_rows, write_text
    from ..errors import EnclapError
    from ..pipeline import CaptioningPipeline
    from . import quiet_model_loading

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    quiet_model_loading()
    parser = build_parser()
    args = parser.parse_args(argv)
    items = list(args.inputs) + list(args.input)
    if not items:
        parser.error("give at least one audio file or folder")
    fmt, timed = _output_plan(args, parser)
    try:
        paths = collect_inputs(items)
        if fmt in SUBTITLE_FORMATS and len(paths) > 1 and (args.output is None or _subtitle_file(args.output)):
            parser.error(f"{len(paths)} recordings give one {fmt} file each: give --output a directory")
        generation = {k: v for k, v in (("num_beams", args.num_beams), ("max_length", args.max_length)) if v is not None}
        pipeline = CaptioningPipeline.from_pretrained(
            args.ckpt, clap=args.clap_ckpt, encodec=args.encodec, tokenizer=args.tokenizer, device=args.device,
            batch_size=args.batch_size, generation=generation or None,
            long_audio=None if timed else args.long_audio,
        )
        with tqdm(total=len(paths), desc="captioning", unit="file", disable=len(paths) < 2, file=sys.stderr) as bar:
            if timed:
                results = []
                for path in paths:  # one at a time: each long file shows its own progress bar of windows
                    results.extend(pipeline.caption_timed([path], window=args.window, hop=args.hop, progress=True))
                    bar.update(1)
            else:
                results = pipeline.caption_files(paths, skip_errors=True, progress=bar.update)
    except EnclapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    for r in results:
        if r.error:
            print(f"error: {r.source}: {r.error}", file=sys.stderr)
    good = [r for r in results if not r.error]
    if fmt in SUBTITLE_FORMATS and args.output is None:
        if good:
            sys.stdout.write(render(good, fmt))
    elif fmt is None or args.output is not None:
        # Plain lines for people (and `cut -f`): file, caption; timed: file, kind, start, end, caption.
        _, rows = table_rows(good)
        for row in rows:
            print("\t".join(row[:-1]))
    else:
        sys.stdout.write(render(results, fmt))
    if args.output is not None:
        out = Path(args.output)
        if fmt in SUBTITLE_FORMATS:
            targets = [out] if _subtitle_file(args.output) else subtitle_paths([r.source for r in good], out, fmt)
            for r, target in zip(good, targets):
                write_text(target, render([r], fmt))
        else:
            write_text(out, render(results, fmt))
    failed = len(results) - len(good)
    if failed:
        print(f"{failed} of {len(results)} file(s) could not be captioned", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
