"""The demo's stage bookkeeping: settings fingerprints, the records in ``.demo/<stage>.json``, and the
rule that decides whether a stage is skipped, resumed or redone (see :mod:`enclap.jobs.demo`).

Kept apart from the stages themselves: nothing here knows what a stage does, only whether its recorded
settings match and whether its output still passes its check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import EnclapError

STATE_DIR = ".demo"


@dataclass
class StageReport:
    """What happened to one stage in this invocation."""

    name: str
    status: str  # "done" (ran now), "skipped" (already done with the same settings)
    seconds: float  # wall time of the run that produced the output (for a skipped stage: when it ran)
    resumed: bool = False  # ran again after an interruption with the same settings
    result: dict[str, Any] = field(default_factory=dict)


class StageFailed(EnclapError):
    """A stage finished without producing a usable output (the message says why)."""


def fingerprint_of(value: Any) -> str:
    """A short stable digest of JSON-serialisable settings."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_state(state_dir: Path, stage: str) -> dict[str, Any] | None:
    path = state_dir / f"{stage}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_state(state_dir: Path, stage: str, state: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / f"{stage}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def say(text: str) -> None:
    print(text, flush=True)


class StageRunner:
    """Runs, skips or resumes named stages in order, recording each under ``state_dir``.

    ``stages`` is the full ordered list; ``force`` names stages to redo (each with every stage after it,
    ``"all"`` for every stage).
    """

    def __init__(self, state_dir: Path, stages: Sequence[str], force: Sequence[str] = ()) -> None:
        self.state_dir = Path(state_dir)
        self.stages = tuple(stages)
        self.reports: dict[str, StageReport] = {}
        self.fingerprints: dict[str, str] = {}
        forced = set(force)
        first_forced = min((self.stages.index(s) for s in forced if s in self.stages), default=len(self.stages))
        self.forced = set(self.stages) if "all" in forced else set(self.stages[first_forced:])

    def header(self, name: str) -> str:
        return f"[{self.stages.index(name) + 1}/{len(self.stages)}] {name}"

    def not_run(self, name: str, settings: dict[str, Any], message: str, result: dict[str, Any]) -> StageReport:
        """Record a stage that has nothing to do in this configuration (its fingerprint still feeds later stages)."""
        self.fingerprints[name] = fingerprint_of(settings)
        say(f"{self.header(name)}: {message}")
        report = StageReport(name, "skipped", 0.0, result=result)
        self.reports[name] = report
        return report

    def run(
        self,
        name: str,
        settings: dict[str, Any],
        *,
        run: Callable[[bool], dict[str, Any]],
        check: Callable[[dict[str, Any]], str | None],
        wipe: Sequence[Path] = (),
        describe: str,
    ) -> StageReport:
        """Skip, resume or (re)do stage ``name``; ``settings`` must include upstream fingerprints.

        ``run(fresh)`` does the work (``fresh``: start over rather than resume) and returns the stage's
        result; ``check(result)`` says what is wrong with the output (None when usable); ``wipe`` is
        removed before a fresh run.
        """
        fingerprint = fingerprint_of(settings)
        self.fingerprints[name] = fingerprint
        header = f"{self.header(name)}: {describe}"
        state = read_state(self.state_dir, name)
        same = state is not None and state.get("fingerprint") == fingerprint
        if same and state.get("status") == "done" and name not in self.forced:
            problem = check(state.get("result") or {})
            if problem is None:
                seconds = float(state.get("seconds", 0.0))
                say(f"{header} -- already done with these settings ({duration(seconds)} when it ran), skipped")
                report = StageReport(name, "skipped", seconds, result=state.get("result") or {})
                self.reports[name] = report
                return report
            say(f"{header} -- its output is incomplete ({problem}); running it again")
        fresh = name in self.forced or not same
        resumed = same and not fresh and state.get("status") != "done"
        if fresh:
            if state is not None and name not in self.forced:
                say(f"{header} -- settings changed since it last ran: starting it over")
            elif name in self.forced:
                say(f"{header} -- forced: starting it over")
            else:
                say(header)
            for path in wipe:
                remove(path)
        elif resumed:
            say(f"{header} -- resuming an interrupted run with the same settings")
        else:
            say(header)
        write_state(self.state_dir, name, {"stage": name, "fingerprint": fingerprint, "status": "running", "settings": settings})
        started = time.monotonic()
        result = run(fresh)
        seconds = time.monotonic() - started
        problem = check(result)
        if problem is not None:
            raise StageFailed(f"stage '{name}' finished but its output is not usable: {problem}")
        write_state(
            self.state_dir, name,
            {"stage": name, "fingerprint": fingerprint, "status": "done", "settings": settings,
             "seconds": round(seconds, 3), "result": result},
        )
        say(f"    {name} done in {duration(seconds)}")
        report = StageReport(name, "done", seconds, resumed=resumed, result=result)
        self.reports[name] = report
        return report


__all__ = ["STATE_DIR", "StageFailed", "StageReport", "StageRunner", "fingerprint_of"]
