"""Where training figures go: ``train_log.jsonl`` (one JSON object per line) and TensorBoard.

Only the main process writes. Each line of ``train_log.jsonl`` has a ``type`` (``"train"`` or
``"validation"``), the optimizer ``step`` it belongs to and the figures. A resumed run first drops
the lines of steps after its checkpoint (they were computed by the interrupted run and are computed
again), and TensorBoard is told to purge its events from the same step on, so both logs read as
one uninterrupted run. A fresh run (no checkpoint) starts both logs empty: TensorBoard purges from step 0.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"
REPORT_TO = ("tensorboard", "none")


def read_train_log(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every entry of a run's ``train_log.jsonl`` (an incomplete last line, from a kill, is skipped)."""
    path = Path(output_dir) / LOG_FILE
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


class TrainingLog:
    """Append-only JSON lines + optional TensorBoard scalars, truncated to ``resume_step`` on open."""

    def __init__(self, output_dir: str | os.PathLike, *, report_to: str = "tensorboard", resume_step: int | None = None) -> None:
        if report_to not in REPORT_TO:
            raise ValueError(f"report_to must be one of {REPORT_TO}, got {report_to!r}")
        self.path = Path(output_dir) / LOG_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        else:
            self._truncate(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._writer = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides earlier events from that step on: those an interrupted run wrote past its
            # checkpoint, or (a fresh run, step 0) every curve of an earlier run in this directory.
            purge = 0 if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(log_dir=str(Path(output_dir) / TENSORBOARD_DIR), purge_step=purge)

    def _truncate(self, step: int) -> None:
        kept = [entry for entry in read_train_log(self.path.parent) if int(entry.get("step", 0)) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(entry, sort_keys=True) + "\n" for entry in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """One entry: ``{"type": kind, "step": step, **values}``; numbers also go to TensorBoard as ``kind/name``."""
        entry = {"type": kind, "step": int(step), "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(entry, sort_keys=True) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "epoch":
                    self._writer.add_scalar(f"{kind}/{name}", value, global_step=int(step))
            self._writer.flush()

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


__all__ = ["LOG_FILE", "REPORT_TO", "TENSORBOARD_DIR", "TrainingLog", "read_train_log"]
