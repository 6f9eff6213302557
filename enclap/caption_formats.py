"""Captions as files: TSV, CSV, JSON, JSON lines, SRT and WebVTT.

Two kinds of results are written: one caption per recording (:class:`~enclap.pipeline.CaptionResult`)
and timed captions (:class:`~enclap.pipeline.TimedCaptionResult`: one caption per window with its start
and end, plus the caption chosen for the whole recording).

* **TSV / CSV**: one row per recording (``file, caption, error``); for timed results one row for the
  whole recording (``kind=recording``, 0 to its duration) followed by one row per window
  (``kind=window``): ``file, kind, start, end, caption, error``, times in seconds with millisecond
  precision. A recording that could not be read has one row with ``error`` set.
* **JSON** (a list) / **JSON lines** (one object per line): ``{"file", "caption", "error"}``, and for
  timed results also ``"duration"`` and ``"windows": [{"start", "end", "caption"}, ...]``.
* **SRT / WebVTT** hold timed captions of one recording each, one cue per window (WebVTT adds a
  ``NOTE`` with the whole recording's caption). Of several recordings, each gets its own file
  (:func:`subtitle_paths`), named like the recording, so that players pick it up next to it.

SRT and WebVTT are simple enough to write directly; what matters is what a player parses:
``HH:MM:SS,mmm`` (SRT) / ``HH:MM:SS.mmm`` (WebVTT) times, cues separated by a blank line, no line of a
cue's text empty or containing ``-->``, and in WebVTT ``&``, ``<`` and ``>`` escaped. A window whose
caption is empty (the model ended at once) shows ``...`` in subtitles; the other formats keep it empty.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TextIO, Union

if TYPE_CHECKING:
    from .pipeline import CaptionResult, TimedCaptionResult

    Result = Union[CaptionResult, TimedCaptionResult]

FORMATS = ("tsv", "csv", "json", "jsonl", "srt", "vtt")
SUBTITLE_FORMATS = ("srt", "vtt")
_SUFFIXES = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".srt": "srt", ".vtt": "vtt"}


def format_for_path(path: str | os.PathLike) -> str | None:
    """The format an output file's extension names (``.tsv .txt .csv .json .jsonl .srt .vtt``), else None."""
    return _SUFFIXES.get(Path(path).suffix.lower())


def _is_timed(result: Any) -> bool:
    return hasattr(result, "windows")


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def table_rows(results: Sequence["Result"]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the TSV / CSV layout (see the module docstring)."""
    if not any(_is_timed(r) for r in results):
        return ["file", "caption", "error"], [[r.source, r.caption or "", r.error or ""] for r in results]
    rows = []
    for r in results:
        rows.append([r.source, "recording", _seconds(0.0 if r.duration is not None else None), _seconds(r.duration),
                     r.caption or "", r.error or ""])
        rows.extend([r.source, "window", _seconds(w.start), _seconds(w.end), w.caption, ""] for w in r.windows)
    return ["file", "kind", "start", "end", "caption", "error"], rows


def result_dict(result: "Result") -> dict[str, Any]:
    """The JSON object of one result."""
    out: dict[str, Any] = {"file": result.source, "caption": result.caption}
    if _is_timed(result):
        out["duration"] = result.duration
        out["windows"] = [{"start": w.start, "end": w.end, "caption": w.caption} for w in result.windows]
    out["error"] = result.error
    return out


def write_table(results: Sequence["Result"], stream: TextIO, *, delimiter: str = ",", header: bool = True) -> None:
    """Results as CSV (``delimiter=","``) or TSV (``"\\t"``), quoted where a field needs it."""
    columns, rows = table_rows(results)
    writer = csv.writer(stream, delimiter=delimiter, lineterminator="\n")
    if header:
        writer.writerow(columns)
    writer.writerows(rows)


def _timestamp(seconds: float, separator: str) -> str:
    millis = int(round(max(0.0, seconds) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cue_text(caption: str, *, vtt: bool) -> str:
    # Captions are one line already (the pipeline collapses whitespace); a cue's text must not hold an
    # empty line (it would end the cue) nor an arrow (it would read as a timing line).
    text = " ".join(caption.split()) or "..."
    if vtt:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("-->", "->")


def srt_text(result: "TimedCaptionResult") -> str:
    """The SubRip subtitles of one recording: one numbered cue per window."""
    cues = [
        f"{i}\n{_timestamp(w.start, ',')} --> {_timestamp(w.end, ',')}\n{_cue_text(w.caption, vtt=False)}\n"
        for i, w in enumerate(result.windows, start=1)
    ]
    return "\n".join(cues)


def vtt_text(result: "TimedCaptionResult") -> str:
    """The WebVTT subtitles of one recording: a NOTE with the whole recording's caption, then one cue per window."""
    parts = ["WEBVTT\n"]
    if result.caption:
        # A NOTE block may not contain "-->"; the caption is one line.
        parts.append("NOTE whole recording: " + result.caption.replace("-->", "->") + "\n")
    parts.extend(
        f"{_timestamp(w.start, '.')} --> {_timestamp(w.end, '.')}\n{_cue_text(w.caption, vtt=True)}\n" for w in result.windows
    )
    return "\n".join(parts)


def render(results: Sequence["Result"], fmt: str) -> str:
    """All ``results`` in one text of format ``fmt`` (SRT / WebVTT: exactly one timed result)."""
    if fmt in ("tsv", "csv"):
        buffer = io.StringIO()
        write_table(results, buffer, delimiter="\t" if fmt == "tsv" else ",")
        return buffer.getvalue()
    if fmt == "json":
        return json.dumps([result_dict(r) for r in results], indent=2, ensure_ascii=False) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(result_dict(r), ensure_ascii=False) + "\n" for r in results)
    if fmt in SUBTITLE_FORMATS:
        if len(results) != 1 or not _is_timed(results[0]):
            raise ValueError(f"{fmt} holds the timed captions of exactly one recording, got {len(results)} result(s)")
        return srt_text(results[0]) if fmt == "srt" else vtt_text(results[0])
    raise ValueError(f"unknown caption format {fmt!r}; known: {FORMATS}")


def subtitle_paths(sources: Sequence[str], directory: str | os.PathLike, fmt: str) -> list[Path]:
    """Where the subtitles of each recording go in ``directory``: its path relative to the recordings'
    common folder, with the audio extension replaced by ``.srt`` / ``.vtt`` (``a.wav`` -> ``a.srt``,
    ``sub/b.flac`` -> ``sub/b.srt``). Recordings whose names would clash (``a.wav`` and ``a.flac``)
    keep their audio extension (``a.wav.srt``, ``a.flac.srt``).
    """
    paths = [Path(os.path.abspath(s)) for s in sources]
    common = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path(".")
    relative = [p.relative_to(common) for p in paths]
    plain = [r.with_suffix(f".{fmt}") for r in relative]
    taken = {}
    for name in plain:
        taken[name] = taken.get(name, 0) + 1
    return [
        Path(directory) / (name if taken[name] == 1 else rel.with_name(rel.name + f".{fmt}"))
        for name, rel in zip(plain, relative)
    ]


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8, parents created) through a temporary file, so a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


__all__ = [
    "FORMATS",
    "SUBTITLE_FORMATS",
    "format_for_path",
    "render",
    "result_dict",
    "srt_text",
    "subtitle_paths",
    "table_rows",
    "vtt_text",
    "write_table",
    "write_text",
]
