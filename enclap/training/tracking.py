"""Where training figures go: ``train_log.jsonl`` (one JSON object per line), TensorBoard, W&B.

``report_to`` is ``tensorboard``, ``wandb``, ``tensorboard,wandb`` or ``none`` (the JSON log is always
written). W&B runs under ``<output>/wandb`` with a run id kept in ``<output>/wandb_run_id`` so that a
resumed run continues the same W&B run; ``WANDB_MODE=offline`` works without network (``wandb sync``
uploads later). W&B is an optional extra: ``pip install 'enclap[wandb]'``.

:class:`StepWindow` averages the figures of the steps between two log lines and measures throughput
over the training steps only: the time spent in validation, checkpointing or resuming is not counted,
and the window (with its seconds) is saved in each checkpoint, so a resumed run logs what an
uninterrupted one would.

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
REPORT_TO = ("tensorboard", "wandb", "tensorboard,wandb", "none")
WANDB_DIR = "wandb"
WANDB_ID_FILE = "wandb_run_id"


def report_targets(report_to: str) -> set[str]:
    """``"tensorboard,wandb"`` -> ``{"tensorboard", "wandb"}``; ``"none"`` -> empty."""
    if report_to not in REPORT_TO:
        raise ValueError(f"report_to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    return {part for part in report_to.split(",") if part != "none"}


class StepWindow:
    """Figures of the optimizer steps since the last log line, and the seconds those steps took.

    ``add`` takes one step's figures; a figure missing from a step (e.g. the gradient norm of an fp16
    step the gradient scaler skipped, which is infinite by design) is averaged over the steps that
    have it. ``state``/``from_state`` round-trip it through a checkpoint.
    """

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.steps = int(state.get("steps", 0))
        self.examples = int(state.get("examples", 0))
        self.seconds = float(state.get("seconds", 0.0))
        self.skipped = int(state.get("skipped", 0))
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.counts: dict[str, int] = {k: int(v) for k, v in state.get("counts", {}).items()}
        for name in self.sums:  # a window saved before counts were kept: every step had every figure
            self.counts.setdefault(name, self.steps)

    def add(self, figures: dict[str, float], *, examples: int, seconds: float, skipped: bool = False) -> None:
        self.steps += 1
        self.examples += int(examples)
        self.seconds += float(seconds)
        self.skipped += int(skipped)
        for name, value in figures.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
            self.counts[name] = self.counts.get(name, 0) + 1

    def summary(self) -> dict[str, float]:
        values: dict[str, float] = {name: total / self.counts[name] for name, total in self.sums.items() if self.counts[name]}
        seconds = max(self.seconds, 1e-9)
        values.update(
            examples_per_second=round(self.examples / seconds, 3),
            steps_per_second=round(self.steps / seconds, 4),
        )
        if self.skipped:
            values["skipped_steps"] = self.skipped
        return values

    def state(self) -> dict[str, Any]:
        return {"steps": self.steps, "examples": self.examples, "seconds": self.seconds, "skipped": self.skipped,
                "sums": dict(self.sums), "counts": dict(self.counts)}


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

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        report_to: str = "tensorboard",
        resume_step: int | None = None,
        run_config: dict[str, Any] | None = None,
        wandb_project: str = "enclap",
    ) -> None:
        targets = report_targets(report_to)
        self.path = Path(output_dir) / LOG_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        else:
            self._truncate(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._writer = None
        self._wandb = None
        if "wandb" in targets:
            self._wandb = _start_wandb(Path(output_dir), run_config or {}, wandb_project, fresh=resume_step is None)
        if "tensorboard" in targets:
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
        if self._wandb is not None:
            numbers = {f"{kind}/{name}": value for name, value in values.items()
                       if isinstance(value, (int, float)) and not isinstance(value, bool)}
            self._wandb.log(numbers, step=int(step))

    def summary(self, values: dict[str, Any]) -> None:
        """The run's final summary (best checkpoint and its scores) into W&B's summary."""
        if self._wandb is not None:
            for name, value in values.items():
                self._wandb.summary[name] = value

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(output_dir: Path, run_config: dict[str, Any], project: str, *, fresh: bool):
    """A W&B run in ``output_dir/wandb``; a resumed training run continues its W&B run (same id)."""
    try:
        import wandb
    except ImportError as err:
        from ..errors import ConfigError

        raise ConfigError("report_to includes wandb, but wandb is not installed: pip install 'enclap[wandb]' (or wandb)") from err
    id_file = output_dir / WANDB_ID_FILE
    run_id = None if fresh or not id_file.is_file() else id_file.read_text().strip() or None
    if run_id is None:
        import secrets

        run_id = secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
    (output_dir / WANDB_DIR).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", project),
        name=output_dir.name,
        id=run_id,
        resume="allow",
        dir=str(output_dir / WANDB_DIR),
        config=run_config,
    )


__all__ = ["LOG_FILE", "REPORT_TO", "TENSORBOARD_DIR", "StepWindow", "TrainingLog", "read_train_log", "report_targets"]
