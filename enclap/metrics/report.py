"""What scoring returns: per-metric availability and the scores of one corpus, and their text forms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .names import _DISPLAY, SUPPORTED_METRICS


@dataclass
class MetricStatus:
    """Whether one metric can run here; when not, why and how to make it run."""

    name: str
    available: bool
    reason: str = ""
    how_to_enable: str = ""


@dataclass
class ScoreReport:
    """Scores of one corpus.

    ``corpus`` holds only the metrics that ran (``vocab`` expands to its ``vocab.*`` outputs); ``per_clip``
    the same keys except ``vocab.*`` (corpus-level only), one value per candidate, when asked for;
    ``unavailable`` maps each requested metric that did not run to the reason and how to enable it.
    ``notes`` records what was done to the input (empty captions, skipped clips ...). ``indices`` is set by
    :func:`reference_ceiling`: the input positions of the clips that ``per_clip`` values belong to; ``rounds``
    too: the corpus scores of each leave-one-out round (``corpus`` is their mean).
    """

    corpus: dict[str, float]
    per_clip: dict[str, list[float]] | None
    unavailable: dict[str, str]
    num_candidates: int
    notes: list[str] = field(default_factory=list)
    indices: list[int] | None = None
    rounds: list[dict[str, float]] | None = None

    def to_dict(self) -> dict:
        """A JSON-serialisable copy."""
        out: dict[str, Any] = {
            "corpus": dict(self.corpus),
            "per_clip": None if self.per_clip is None else {k: list(v) for k, v in self.per_clip.items()},
            "unavailable": dict(self.unavailable),
            "num_candidates": self.num_candidates,
            "notes": list(self.notes),
        }
        if self.indices is not None:
            out["indices"] = list(self.indices)
        if self.rounds is not None:
            out["rounds"] = [dict(r) for r in self.rounds]
        return out


def _unavailable_text(status: MetricStatus) -> str:
    return status.reason + (f" -> to enable: {status.how_to_enable}" if status.how_to_enable else "")


def format_table(report: ScoreReport) -> str:
    """A Markdown table of the scores, then the unavailable metrics with their reasons, then the notes."""
    order = {name: i for i, name in enumerate(SUPPORTED_METRICS)}
    names = sorted(report.corpus, key=lambda k: (order.get(k.split(".")[0], len(order)), k))
    rows = []
    for k in names:
        value = float(report.corpus[k])
        # vocabulary sizes are counts: no decimals
        text = f"{value:.0f}" if k.startswith("vocab.") and value.is_integer() else f"{value:.4f}"
        rows.append((_DISPLAY.get(k, k), text))
    width = max([len("metric")] + [len(r[0]) for r in rows])
    lines = [f"| {'metric'.ljust(width)} | score  |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {name.ljust(width)} | {value:>6} |" for name, value in rows]
    lines.append(f"\n{report.num_candidates} candidate(s)" + (f"; {'; '.join(report.notes)}" if report.notes else ""))
    if report.unavailable:
        lines.append("\nUnavailable:")
        lines += [f"- {_DISPLAY.get(k, k)}: {why}" for k, why in report.unavailable.items()]
    return "\n".join(lines)


def format_availability(statuses: dict[str, MetricStatus]) -> str:
    """One line per metric: available, or why not and how to enable it."""
    width = max(len(_DISPLAY.get(n, n)) for n in statuses)
    lines = []
    for name, st in statuses.items():
        label = _DISPLAY.get(name, name).ljust(width)
        if st.available:
            lines.append(f"{label}  available")
        else:
            lines.append(f"{label}  UNAVAILABLE: {st.reason}" + (f"\n{' ' * width}  to enable: {st.how_to_enable}" if st.how_to_enable else ""))
    return "\n".join(lines)
