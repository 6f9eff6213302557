"""Reading the CSVs the metrics score (references, predictions) and writing per-clip scores."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import ManifestError
from .report import ScoreReport

_CAPTION_COLUMN = re.compile(r"^caption_(\d+)$")
_PREDICTION_COLUMNS = ("prediction", "candidate", "caption")


def _caption_columns(header: Sequence[str]) -> list[int]:
    """Positions of the caption_1..caption_N columns, in caption order."""
    found = []
    for position, name in enumerate(header):
        match = _CAPTION_COLUMN.match(name)
        if match:
            found.append((int(match.group(1)), position))
    return [position for _, position in sorted(found)]


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError as err:
        raise ManifestError(path, ["file not found"]) from err
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(path, [f"cannot be read as a UTF-8 CSV: {err}"]) from err
    if not rows:
        raise ManifestError(path, ["empty file (no header)"])
    return [h.strip() for h in rows[0]], rows[1:]


def _complete_rows(rows: list[list[str]], width: int, problems: list[str]) -> Iterator[tuple[int, list[str]]]:
    """``(line number, row)`` of the non-blank rows with ``width`` fields; the others go to ``problems``."""
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != width:
            problems.append(f"line {line}: {len(row)} fields, header has {width}")
            continue
        yield line, row


def read_references_csv(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """``(file_paths, references)`` of an evaluation CSV (``file_path,caption_1..caption_N``) or of a training
    CSV (``file_path,caption``, one row per caption, grouped by file). Empty cells are not references."""
    path = Path(path)
    header, rows = _read_rows(path)
    problems: list[str] = []
    if "file_path" not in header:
        raise ManifestError(path, [f"no 'file_path' column (header: {','.join(header)})"])
    key = header.index("file_path")
    columns = _caption_columns(header)
    grouped: dict[str, list[str]] = {}
    if columns:
        for line, row in _complete_rows(rows, len(header), problems):
            name = row[key].strip()
            if name in grouped:
                problems.append(f"line {line}: '{name}' appears twice")
                continue
            grouped[name] = [row[i] for i in columns if row[i].strip()]
    elif "caption" in header:
        col = header.index("caption")
        for line, row in _complete_rows(rows, len(header), problems):
            if row[col].strip():
                grouped.setdefault(row[key].strip(), []).append(row[col])
    else:
        raise ManifestError(path, [f"no caption columns: expected caption_1..caption_N or caption (header: {','.join(header)})"])
    if problems:
        raise ManifestError(path, problems)
    return list(grouped), list(grouped.values())


def read_predictions_csv(path: str | os.PathLike) -> tuple[list[str], list[str], list[list[str]] | None]:
    """``(file_paths, predictions, references or None)`` of a predictions CSV.

    Columns: ``file_path`` and one of ``prediction``/``candidate``/``caption``; ``caption_1..N`` columns, as
    ``enclap-evaluate`` writes them, are read as the references.
    """
    path = Path(path)
    header, rows = _read_rows(path)
    if "file_path" not in header:
        raise ManifestError(path, [f"no 'file_path' column (header: {','.join(header)})"])
    pred_col = next((header.index(c) for c in _PREDICTION_COLUMNS if c in header), None)
    if pred_col is None:
        raise ManifestError(path, [f"no prediction column: expected one of {', '.join(_PREDICTION_COLUMNS)} (header: {','.join(header)})"])
    key = header.index("file_path")
    numbered = _caption_columns(header)
    names: list[str] = []
    preds: list[str] = []
    refs: list[list[str]] = []
    problems: list[str] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            problems.append(f"line {line}: {len(row)} fields, header has {len(header)}")
            continue
        name = row[key].strip()
        if name in seen:
            problems.append(f"line {line}: '{name}' appears twice")
            continue
        seen.add(name)
        names.append(name)
        preds.append(row[pred_col])
        refs.append([row[i] for i in numbered if row[i].strip()])
    if problems:
        raise ManifestError(path, problems)
    return names, preds, (refs if numbered else None)


def _write_per_clip(path: Path, names: Sequence[str], report: ScoreReport) -> None:
    assert report.per_clip is not None
    keys = list(report.per_clip)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_path"] + keys)
        for i, name in enumerate(names):
            writer.writerow([name] + [f"{report.per_clip[k][i]:.6f}" for k in keys])
    tmp.replace(path)
