"""Scoring a fine-tuned classifier: top-1 accuracy, per-class accuracy, the confusion matrix (JSON and PNG).

* ``confusion[i][j]``: clips of true class ``i`` predicted as class ``j`` (rows: truth, columns: prediction);
* ``accuracy``: the share of clips predicted right (the trace over the total);
* ``per_class_accuracy[c]``: the share of class ``c``'s clips predicted right (its recall; ``null`` in the JSON
  for a class with no clip in the split), ``balanced_accuracy`` their mean over the classes present;
* cross-validation (:func:`crossval_summary`): every fold's accuracy, their mean and sample standard
  deviation (``ddof=1``, as "mean ± sd over 5 folds" is reported for ESC-50).

:func:`write_classification_report` writes ``<dir>/report.json`` and ``<dir>/confusion_matrix.png``
(matplotlib's Agg backend: no display needed), with the class names on both axes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPORT_FILE = "report.json"
CONFUSION_PNG = "confusion_matrix.png"
PREDICTIONS_FILE = "predictions.csv"


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """``(classes, classes)`` int64 counts: row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.shape[0]} labels for {predictions.shape[0]} predictions")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} outside 0..{num_classes - 1}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def classification_metrics(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> dict[str, Any]:
    """``accuracy``, ``balanced_accuracy``, ``per_class_accuracy`` (NaN for absent classes) and ``confusion``."""
    matrix = confusion_matrix(labels, predictions, num_classes)
    total = int(matrix.sum())
    if total == 0:
        raise ValueError("no clips to score")
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(matrix) / np.maximum(support, 1), np.nan)
    return {
        "accuracy": float(np.trace(matrix) / total),
        "balanced_accuracy": float(np.nanmean(per_class)),
        "per_class_accuracy": per_class,
        "support": support,
        "confusion": matrix,
    }


def classification_report(
    labels: Sequence[int], logits: np.ndarray, class_names: Sequence[str], *, files: Sequence[str] | None = None
) -> dict[str, Any]:
    """A JSON-ready report of logits against true classes (top-1 prediction; top-5 when there are > 5 classes)."""
    from .evaluation import topk_accuracy

    logits = np.asarray(logits, dtype=np.float64)
    predictions = logits.argmax(axis=1)
    figures = classification_metrics(labels, predictions, len(class_names))
    ks = (1, 5) if len(class_names) > 5 else (1,)
    report: dict[str, Any] = {
        "task": "classification",
        "clips": int(len(labels)),
        "classes": len(class_names),
        "class_names": list(class_names),
        "chance": 1.0 / len(class_names),
        "accuracy": figures["accuracy"],
        "balanced_accuracy": figures["balanced_accuracy"],
        **{name: v for name, v in topk_accuracy(logits, labels, ks).items() if name != "top1"},
        "per_class_accuracy": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, figures["per_class_accuracy"])},
        "support": {name: int(n) for name, n in zip(class_names, figures["support"])},
        "confusion_matrix": {"rows": "true class", "columns": "predicted class", "labels": list(class_names),
                             "matrix": figures["confusion"].tolist()},
    }
    if files is not None:
        report["predictions"] = [
            {"file": f, "label": class_names[int(t)], "predicted": class_names[int(p)]}
            for f, t, p in zip(files, labels, predictions)
        ]
    return report


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, *, title: str = "") -> Path:
    """The confusion matrix as a PNG (counts in the cells, class names on both axes)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    n = len(class_names)
    size = max(4.0, 0.32 * n + 2.5)
    figure = Figure(figsize=(size, size), dpi=100)
    ax = figure.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    from matplotlib.ticker import MaxNLocator

    bar = figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="clips")
    bar.locator = MaxNLocator(integer=True)  # counts
    bar.update_ticks()
    ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=8 if n > 12 else 10)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=8 if n > 12 else 10)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    if n <= 30:  # counts stay legible up to ESC-50's size only roughly; beyond it the colours say enough
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] > threshold else "black")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def write_classification_report(report: dict[str, Any], directory: str | os.PathLike, *, title: str = "") -> Path:
    """``report.json``, ``confusion_matrix.png`` and (when the report lists them) ``predictions.csv`` in ``directory``."""
    import csv

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    predictions = report.get("predictions")
    summary = {k: v for k, v in report.items() if k != "predictions"}
    (directory / REPORT_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    matrix = np.asarray(report["confusion_matrix"]["matrix"])
    accuracy = f"accuracy {report['accuracy']:.3f} on {report['clips']} clips"
    plot_confusion_matrix(matrix, report["class_names"], directory / CONFUSION_PNG, title=f"{title}: {accuracy}" if title else accuracy)
    if predictions is not None:
        with open(directory / PREDICTIONS_FILE, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["file", "label", "predicted"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(predictions)
    return directory


def crossval_summary(fold_reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-fold accuracy and balanced accuracy, their mean and sample standard deviation."""
    accuracies = np.array([r["accuracy"] for r in fold_reports.values()], dtype=np.float64)
    balanced = np.array([r["balanced_accuracy"] for r in fold_reports.values()], dtype=np.float64)
    sd = (lambda x: float(x.std(ddof=1)) if len(x) > 1 else 0.0)
    return {
        "task": "classification, cross-validation",
        "folds": {name: {"accuracy": r["accuracy"], "balanced_accuracy": r["balanced_accuracy"], "clips": r["clips"]}
                  for name, r in fold_reports.items()},
        "accuracy_mean": float(accuracies.mean()),
        "accuracy_sd": sd(accuracies),
        "balanced_accuracy_mean": float(balanced.mean()),
        "balanced_accuracy_sd": sd(balanced),
        "sd": "sample standard deviation over the folds (ddof=1)",
    }


def format_classification_report(report: dict[str, Any]) -> str:
    """A plain-text summary: accuracy against chance, then the per-class accuracies."""
    lines = [f"classification: {report['clips']} clips, {report['classes']} classes",
             f"  accuracy           {report['accuracy']:.4f}   (chance {report['chance']:.4f})",
             f"  balanced accuracy  {report['balanced_accuracy']:.4f}"]
    if "top5" in report:
        lines.append(f"  top-5 accuracy     {report['top5']:.4f}")
    width = max(len(name) for name in report["class_names"])
    for name in report["class_names"]:
        value = report["per_class_accuracy"][name]
        shown = "  n/a " if value is None else f"{value:.4f}"
        lines.append(f"    {name:<{width}}  {shown}  ({report['support'][name]} clips)")
    return "\n".join(lines)


def format_crossval(summary: dict[str, Any]) -> str:
    lines = ["cross-validation:"]
    for name, figures in summary["folds"].items():
        lines.append(f"  {name}: accuracy {figures['accuracy']:.4f} ({figures['clips']} clips)")
    lines.append(f"  mean accuracy {summary['accuracy_mean']:.4f} ± {summary['accuracy_sd']:.4f} (sd over folds)")
    return "\n".join(lines)


__all__ = [
    "classification_metrics",
    "classification_report",
    "confusion_matrix",
    "crossval_summary",
    "format_classification_report",
    "format_crossval",
    "plot_confusion_matrix",
    "write_classification_report",
]
