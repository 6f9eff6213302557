"""Zero-shot classification on several downstream sets in one command: one table to compare CLAP towers.

**Label manifests** (:func:`read_labelled_set`; the style is recognised from the header or the layout):

* ESC-50 -- ``meta/esc50.csv``: ``filename,fold,target,category,...``; audio at ``audio/<filename>``; 5 folds.
* UrbanSound8K -- ``metadata/UrbanSound8K.csv``: ``slice_file_name,fsID,start,end,salience,fold,classID,class``;
  audio at ``audio/fold<k>/<slice_file_name>``; 10 folds.
* TUT Acoustic Scenes (DCASE 2016-2018 task 1) -- ``meta.txt`` / ``meta.csv`` or an ``evaluation_setup/*.txt``
  file: tab-separated ``filename<TAB>scene_label[<TAB>...]`` (an optional ``filename`` header line), file
  names like ``audio/a001_0_10.wav`` relative to the data set's root. The ``evaluation_setup`` *directory*
  reads every ``fold<k>_evaluate.*`` as fold ``k`` (the cross-validation's test sides).
* generic -- ``file,label[,fold]`` CSV (the demo data's ``labels/{split}.csv``).

A data set's root directory may be given instead of its manifest (``ESC-50-master``, ``UrbanSound8K``, a TUT
root with ``meta.txt``). Labels become prompt text by :func:`readable_label` (``street_music`` -> "street
music", ``cafe/restaurant`` -> "cafe or restaurant", ``dog`` stays).

**The suite** (:func:`run_suite`): every set is read, and every clip's audio file found, before any model is
loaded, so a typo in the last set fails at once, naming the file. Then per model (a tower directory, as
``enclap-eval-clap zeroshot --model`` takes) and per set, :func:`~enclap.clap.evaluation.evaluate_zero_shot`
-- the same figures as evaluating that set alone. A row: clips, classes, chance (1 / classes), top-1, top-5
over all clips, and where the set has folds the per-fold accuracies' mean (ESC-50's and UrbanSound8K's
reported figure).

Command line::

    enclap-eval-clap zeroshot-suite --model runs/clap-tiny/best [--model OTHER]... \\
        --set esc50=ESC-50-master/meta/esc50.csv:ESC-50-master/audio \\
        --set us8k=UrbanSound8K --set tut=TUT-acoustic-scenes-2017-development/evaluation_setup \\
        [--config suite.yaml] [--template "This is the sound of {label}."]... [--output table.json --output table.csv]

``--set NAME=LABELS[:AUDIO_ROOT]`` (repeatable; without AUDIO_ROOT, the data set's root, or for a generic
CSV its own directory). A YAML file (``--config``) holds the same: ``sets: [{name, labels, audio_root}]``,
``models``, ``templates``; ``--model`` / ``--template`` on the command line replace the file's, ``--set`` adds.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, EnclapError, ManifestError

logger = logging.getLogger(__name__)

STYLES = ("esc50", "urbansound8k", "tut", "generic")
EXPECTED_FORMATS = (
    "ESC-50's meta/esc50.csv (filename,fold,...,category), UrbanSound8K's metadata/UrbanSound8K.csv "
    "(slice_file_name,...,fold,classID,class), a TUT meta.txt / evaluation_setup file (filename<TAB>scene_label), "
    "or a file,label[,fold][,source] CSV"
)


def readable_label(label: str) -> str:
    """A class name as prompt text: ``_`` and ``-`` become spaces, ``a/b`` becomes "a or b", spaces collapse."""
    text = re.sub(r"\s*/\s*", " or ", label.strip())
    return re.sub(r"[\s_\-]+", " ", text).strip()


# ------------------------------------------------------------------------------------------ manifests
@dataclass
class LabelledSet:
    """Rows ``{file, label, fold}`` of a label manifest, its style, and the audio root its files are relative to."""

    path: Path
    style: str
    rows: list[dict[str, str]]
    default_audio_root: Path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(path, [f"cannot be read ({err})"]) from err


def _finish(path: Path, rows: list[dict[str, str]], problems: list[str]) -> list[dict[str, str]]:
    if not rows and not problems:
        problems.append("no rows")
    if problems:
        raise ManifestError(path, problems)
    return rows


def _read_csv_set(path: Path, text: str) -> tuple[str, list[dict[str, str]]]:
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    # the source column names the recording a clip was cut from (ESC-50's freesound src_file, UrbanSound8K's
    # fsID): clips of one source must stay on one side of a train/test split
    if {"filename", "fold", "category"} <= set(header):
        style, file_col, label_col, fold_col, source_col, target_col = "esc50", "filename", "category", "fold", "src_file", "target"
    elif {"slice_file_name", "fold", "class"} <= set(header):
        style, file_col, label_col, fold_col, source_col, target_col = "urbansound8k", "slice_file_name", "class", "fold", "fsID", "classID"
    elif {"file", "label"} <= set(header):
        style, file_col, label_col = "generic", "file", "label"
        fold_col, source_col, target_col = "fold" if "fold" in header else None, "source", None
    else:
        missing = "a 'label' column" if "file" in header else "a 'file' column" if "label" in header else "its columns"
        raise ManifestError(path, [f"header {header} lacks {missing}: expected {EXPECTED_FORMATS}"])
    rows, problems = [], []
    for line, row in enumerate(reader, start=2):
        file, label = (row.get(file_col) or "").strip(), (row.get(label_col) or "").strip()
        fold = (row.get(fold_col) or "").strip() if fold_col else ""
        if not file or not label:
            problems.append(f"line {line}: empty {file_col} or {label_col}")
            continue
        if style == "urbansound8k":
            if not fold.isdigit():
                problems.append(f"line {line}: fold {fold!r} is not a fold number (audio lives in audio/fold<k>/)")
                continue
            file = f"fold{int(fold)}/{file}"
        if fold_col and style != "generic" and not fold:
            problems.append(f"line {line}: empty fold")
            continue
        rows.append({"file": file, "label": label, "fold": fold, "line": str(line),
                     "source": (row.get(source_col) or "").strip() if source_col else "",
                     "target": (row.get(target_col) or "").strip() if target_col else ""})
    return style, _finish(path, rows, problems)


def _read_tut_file(path: Path, text: str, fold: str = "") -> list[dict[str, str]]:
    rows, problems = [], []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        fields = [f.strip() for f in raw.split("\t")]
        if line == 1 and fields[0].lower() == "filename":  # DCASE 2018's header line
            continue
        if len(fields) < 2 or not fields[0] or not fields[1]:
            problems.append(f"line {line}: expected filename<TAB>scene_label, got {raw[:80]!r}")
            continue
        rows.append({"file": fields[0], "label": fields[1], "fold": fold, "line": str(line), "source": "", "target": ""})
    return _finish(path, rows, problems)


def _manifest_of_directory(path: Path) -> Path | None:
    for candidate in ("meta/esc50.csv", "metadata/UrbanSound8K.csv", "meta.txt", "meta.csv"):
        if (path / candidate).is_file():
            return path / candidate
    return None


def read_labelled_set(path: str | os.PathLike) -> LabelledSet:
    """A label manifest of any style of the module docstring (a file, a data set's root, or ``evaluation_setup/``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        folds = sorted(path.glob("fold*_evaluate.*"), key=lambda p: (len(p.name), p.name))
        if folds:  # TUT's evaluation_setup: the test side of each cross-validation fold
            rows = []
            for fold_file in folds:
                number = re.match(r"fold(\d+)_", fold_file.name)
                rows += _read_tut_file(fold_file, _read_text(fold_file), number.group(1) if number else fold_file.stem)
            return LabelledSet(path, "tut", rows, path.parent)
        manifest = _manifest_of_directory(path)
        if manifest is None:
            raise ManifestError(path, [f"a directory without a label manifest (looked for meta/esc50.csv, "
                                       "metadata/UrbanSound8K.csv, meta.txt, meta.csv, fold*_evaluate.txt)"])
        return read_labelled_set(manifest)
    if not path.is_file():
        raise ManifestError(path, ["no such file"])
    text = _read_text(path)
    first = next((line for line in text.splitlines() if line.strip()), "")
    if "\t" in first or (path.suffix == ".txt" and "," not in first):
        rows = _read_tut_file(path, text)
        root = path.parent.parent if path.parent.name == "evaluation_setup" else path.parent
        return LabelledSet(path, "tut", rows, root)
    style, rows = _read_csv_set(path, text)
    root = path.parent.parent if style in ("esc50", "urbansound8k") else path.parent
    return LabelledSet(path, style, rows, root)


# ------------------------------------------------------------------------------------------ the suite
@dataclass
class SuiteSet:
    """One downstream set: a name for the table, its label manifest, and its audio root (empty: the default)."""

    name: str = ""
    labels: str = ""
    audio_root: str = ""


@dataclass
class ZeroShotSuiteConfig:
    """What ``enclap-eval-clap zeroshot-suite --config`` reads (the command line adds / replaces)."""

    sets: list[SuiteSet] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)  # empty: enclap.clap.evaluation.DEFAULT_TEMPLATES
    batch_size: int = 16
    device: str = "cpu"

    def check(self) -> None:
        """ValueError listing every problem; run once the command line is merged in (a file may leave models out)."""
        problems = []
        names = [s.name for s in self.sets]
        if not self.sets:
            problems.append("no sets: give --set NAME=LABELS[:AUDIO_ROOT] or sets: in the config")
        if any(not s.name or not s.labels for s in self.sets):
            problems.append("every set needs a name and labels")
        if len(set(names)) != len(names):
            problems.append(f"set names must be unique, got {names}")
        if not self.models:
            problems.append("no models: give --model DIR (repeatable) or models: in the config")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if any("{label}" not in t for t in self.templates):
            problems.append(f"every template must contain '{{label}}', got {self.templates}")
        if problems:
            raise ValueError("; ".join(problems))


def parse_set(spec: str) -> SuiteSet:
    """``NAME=LABELS[:AUDIO_ROOT]`` -> :class:`SuiteSet`."""
    name, sep, rest = spec.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ConfigError(f"--set {spec!r}: expected NAME=LABELS[:AUDIO_ROOT], e.g. esc50=ESC-50-master/meta/esc50.csv:ESC-50-master/audio")
    labels, _, audio_root = rest.partition(":")
    return SuiteSet(name.strip(), labels, audio_root)


@dataclass
class PreparedSet:
    """A set read and checked: every file of its manifest exists under ``audio_root``."""

    name: str
    labels: Path
    audio_root: Path
    data: LabelledSet


def prepare_sets(sets: Sequence[SuiteSet]) -> list[PreparedSet]:
    """Read every manifest and find every audio file, before any model is loaded; every problem of a set at once."""
    from .evaluation import _resolve

    prepared = []
    for s in sets:
        data = read_labelled_set(s.labels)
        root = Path(s.audio_root).expanduser() if s.audio_root else data.default_audio_root
        if not root.is_dir():
            raise ManifestError(data.path, [f"set '{s.name}': audio root {root} is not a directory"])
        missing = []
        for row in data.rows:
            try:
                _resolve(row["file"], root)
            except FileNotFoundError:
                missing.append(f"set '{s.name}': no audio file '{row['file']}' under {root} (nor {root / 'audio'})")
        if missing:
            raise ManifestError(data.path, missing)
        prepared.append(PreparedSet(s.name, Path(s.labels).expanduser(), root, data))
    return prepared


ROW_FIELDS = ("set", "model", "style", "clips", "classes", "folds", "chance_top1", "top1", "top5", "fold_mean_top1", "fold_mean_top5")


def run_suite(config: ZeroShotSuiteConfig) -> dict[str, Any]:
    """Zero-shot figures of every model on every set: ``{"rows": [...], "reports": [...], "templates": [...]}``."""
    from .embedder import ClapTowerEmbedder
    from .evaluation import DEFAULT_TEMPLATES, evaluate_zero_shot

    templates = tuple(config.templates) or DEFAULT_TEMPLATES
    try:
        config.check()
    except ValueError as err:
        raise ConfigError(str(err)) from err
    prepared = prepare_sets(config.sets)
    rows, reports = [], []
    for model in config.models:
        embedder = ClapTowerEmbedder.from_pretrained(model, device=config.device, batch_size=config.batch_size)
        for s in prepared:
            logger.info("zero-shot: %s on %s", model, s.name)
            report = evaluate_zero_shot(embedder, s.labels, s.audio_root, templates, config.batch_size)
            report.update({"set": s.name, "model": str(model), "style": s.data.style, "labels": str(s.labels),
                           "audio_root": str(s.audio_root)})
            reports.append(report)
            fold_mean = report.get("fold_mean", {})
            rows.append({
                "set": s.name, "model": str(model), "style": s.data.style, "clips": report["clips"],
                "classes": report["classes"], "folds": len(report.get("folds", {})),
                "chance_top1": report["chance"]["top1"], "top1": report["metrics"]["top1"], "top5": report["metrics"]["top5"],
                "fold_mean_top1": fold_mean.get("top1"), "fold_mean_top5": fold_mean.get("top5"),
            })
    # one model loaded at a time, but the table puts a set's towers side by side: the comparison it is for
    order = {s.name: i for i, s in enumerate(prepared)}
    rank = sorted(range(len(rows)), key=lambda i: (order[rows[i]["set"]], i))
    return {"task": "zero-shot suite", "templates": list(templates), "rows": [rows[i] for i in rank],
            "reports": [reports[i] for i in rank]}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def format_markdown(result: dict[str, Any]) -> str:
    """The suite's table in markdown (accuracies in %); the model column only when there are several."""
    rows = result["rows"]
    several = len({r["model"] for r in rows}) > 1
    header = ["set"] + (["model"] if several else []) + ["clips", "classes", "chance", "top-1", "top-5", "top-1 fold mean", "top-5 fold mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * (1 + several) + ["---:"] * 7) + "|"]
    for r in rows:
        cells = [r["set"]] + ([r["model"]] if several else []) + [
            str(r["clips"]), str(r["classes"]), _pct(r["chance_top1"]), _pct(r["top1"]), _pct(r["top5"]),
            _pct(r["fold_mean_top1"]) + (f" ({r['folds']} folds)" if r["folds"] else ""), _pct(r["fold_mean_top5"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_result(result: dict[str, Any], path: str | os.PathLike) -> None:
    """``.csv``: the table's rows (accuracies as fractions); anything else: JSON with the rows and every set's full report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=ROW_FIELDS)
            writer.writeheader()
            for row in result["rows"]:
                writer.writerow({k: ("" if row[k] is None else row[k]) for k in ROW_FIELDS})
    else:
        path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``zeroshot-suite`` subcommand's options (shared by ``enclap-eval-clap``)."""
    parser.add_argument("--config", help="YAML: sets: [{name, labels, audio_root}], models: [...], templates: [...]")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=LABELS[:AUDIO_ROOT]",
                        help="a downstream set (repeatable): its label manifest or data set root, and optionally the audio root")
    parser.add_argument("--model", dest="models", action="append", default=[], help="a CLAP tower directory (repeatable)")
    parser.add_argument("--template", dest="templates", action="append", default=[], help="prompt template with {label} (repeatable)")
    parser.add_argument("--output", action="append", default=[], help="write the table: .csv, or .json with every report (repeatable)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--device")


def config_from_args(args: argparse.Namespace) -> ZeroShotSuiteConfig:
    """The YAML file's config (or the defaults) with the command line's sets added and models / templates replaced."""
    import dataclasses

    from ..config import load_config

    config = load_config(ZeroShotSuiteConfig, args.config) if args.config else ZeroShotSuiteConfig()
    changes: dict[str, Any] = {"sets": list(config.sets) + [parse_set(s) for s in args.sets]}
    if args.models:
        changes["models"] = list(args.models)
    if args.templates:
        changes["templates"] = list(args.templates)
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    if args.device:
        changes["device"] = args.device
    config = dataclasses.replace(config, **changes)
    try:
        config.check()
    except ValueError as err:
        raise ConfigError(f"{args.config or 'command line'}: {err}") from err
    return config


def run_from_args(args: argparse.Namespace) -> int:
    """``enclap-eval-clap zeroshot-suite``: the table on stdout, files with ``--output``; 2 on a user error."""
    try:
        result = run_suite(config_from_args(args))
    except EnclapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_markdown(result))
    for path in args.output:
        write_result(result, path)
    return 0


__all__ = [
    "LabelledSet",
    "SuiteSet",
    "ZeroShotSuiteConfig",
    "format_markdown",
    "parse_set",
    "prepare_sets",
    "read_labelled_set",
    "readable_label",
    "run_suite",
    "write_result",
]
