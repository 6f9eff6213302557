"""Training checkpoints on disk: where they live, how they are committed, found, checked and pruned.

Layout under a run's output directory::

    checkpoints/step_<n>/              one committed checkpoint after optimizer step n
        model.safetensors, optimizer.bin, scheduler.bin, random_states_<rank>.pkl   (accelerator.save_state)
        loop_state.json                epoch, position in the epoch, best metric, what the run was (fingerprint)
    checkpoints/.tmp-step_<n>/         a checkpoint being written (never read)
    checkpoints/abandoned/step_<n>/    checkpoints after the one a ``resume=<dir>`` went back to (never resumed)

A checkpoint is written completely into a temporary directory, flushed to disk, and renamed into place:
a reader sees a whole checkpoint or none. Replacing a directory that already exists (the same step saved
again, or an exported model) moves the old one aside first and removes it last; should the process die
between the two renames, :func:`remove_stale_temporaries` puts the old one back.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..fileio import fsync_dir

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "loop_state.json"
STATE_FORMAT = "enclap-training-state"
STATE_VERSION = 1
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint after optimizer step ``step`` lives."""
    return Path(output_dir) / CHECKPOINTS_DIR / f"step_{int(step)}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Committed checkpoints as ``(step, path)``, oldest step first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def _fsync_tree(directory: Path) -> None:
    """Flush every file below ``directory`` (and the directories themselves) to disk."""
    for root, _, files in os.walk(directory):
        for name in files:
            with open(Path(root) / name, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(root))


def commit_directory(tmp: Path, final: Path) -> None:
    """Move the fully written ``tmp`` to ``final`` (replacing it), so that ``final`` is never half written."""
    _fsync_tree(tmp)
    old = final.parent / f"{OLD_PREFIX}{final.name}"
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


def remove_stale_temporaries(directory: str | os.PathLike) -> None:
    """Remove half-written directories left in ``directory`` by a killed run; restore a moved-aside one."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            logger.info("removing %s, left half-written by an interrupted run", entry)
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        elif entry.name.startswith(OLD_PREFIX):
            original = directory / entry.name[len(OLD_PREFIX) :]
            if original.exists():
                shutil.rmtree(entry, ignore_errors=True)
            else:  # killed between the two renames of commit_directory: the old copy is the only one
                os.rename(entry, original)


def write_loop_state(directory: Path, state: dict[str, Any]) -> None:
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, **state}
    (directory / STATE_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_loop_state(directory: str | os.PathLike) -> dict[str, Any]:
    """The loop state of a checkpoint; :class:`CheckpointError` when it is not a readable checkpoint."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    path = directory / STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{directory}: not a training checkpoint of this project (no {STATE_FILE}); "
            "pass resume=<a checkpoints/step_N directory>, or resume=never with a new output_dir"
        )
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({err}); the checkpoint is damaged, delete it to resume from an earlier one") from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a {STATE_FORMAT} file")
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: state version {state.get('version')} is not supported (this library reads {STATE_VERSION})")
    for key in ("global_step", "epoch", "micro_batch", "fingerprint"):
        if key not in state:
            raise CheckpointError(f"{path}: missing '{key}'; the checkpoint is damaged")
    return state


ABANDONED_DIR = "abandoned"


def find_checkpoint(output_dir: str | os.PathLike, resume: str) -> Path | None:
    """The checkpoint a run with ``resume`` (``auto`` | ``never`` | a directory) continues, or None (a fresh run)."""
    from ..errors import ConfigError

    existing = list_checkpoints(output_dir)
    if resume == "auto":
        return existing[-1][1] if existing else None
    if resume == "never":
        if existing:
            raise ConfigError(
                f"{output_dir} already holds checkpoints (latest: {existing[-1][1].name}) and resume=never: "
                "rerun with resume=auto to continue that run, or choose another output_dir to start over"
            )
        return None
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"resume={resume!r}: no such checkpoint directory")
    return path


def set_aside_later_checkpoints(output_dir: str | os.PathLike, resumed: Path) -> list[Path]:
    """Move this run's checkpoints of steps after ``resumed`` to ``checkpoints/abandoned/``.

    Resuming from an older checkpoint abandons the history after it; left in place, the next
    ``resume=auto`` would continue the abandoned run. Kept (not deleted), in case the choice was a mistake.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    try:
        if Path(resumed).resolve().parent != root.resolve():
            return []  # a checkpoint of another directory: this directory's own history is not its future
    except OSError:
        return []
    match = _STEP_DIR.match(Path(resumed).name)
    if not match:
        return []
    moved = []
    for step, path in list_checkpoints(output_dir):
        if step > int(match.group(1)):
            target = root / ABANDONED_DIR / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            os.rename(path, target)
            moved.append(target)
    if moved:
        fsync_dir(root)
    return moved


def checkpoint_metric(path: Path, metric: str) -> float | None:
    """The value of ``metric`` measured at this checkpoint's own step (None when it was not validated there)."""
    try:
        state = json.loads((Path(path) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("validation_step") != state.get("global_step"):
        return None
    value = (state.get("last_validation") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def prune_checkpoints(
    output_dir: str | os.PathLike,
    keep: int,
    *,
    keep_best: int = 0,
    metric: str | None = None,
    greater_is_better: bool = False,
) -> list[Path]:
    """Delete all but the ``keep`` most recent checkpoints and the ``keep_best`` best by ``metric``.

    ``keep`` <= 0 keeps all. Only checkpoints validated at their own step compete for the best; ties
    keep the earlier step. Returns what was removed.
    """
    if keep <= 0:
        return []
    found = list_checkpoints(output_dir)
    kept = {path for _, path in found[-keep:]}
    if keep_best > 0 and metric:
        scored = [(value, step, path) for step, path in found if (value := checkpoint_metric(path, metric)) is not None]
        scored.sort(key=lambda item: ((-item[0] if greater_is_better else item[0]), item[1]))
        kept.update(path for _, _, path in scored[:keep_best])
    removed = []
    for _, path in found:
        if path not in kept:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key in sorted(value):
            flat.update(_flatten(value[key], f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: checkpoint X, now Y"`` for every setting that differs between two fingerprints."""
    # Round-trip through JSON so tuples/lists and int/float spellings compare as they are stored.
    saved_flat = _flatten(json.loads(json.dumps(saved)))
    current_flat = _flatten(json.loads(json.dumps(current)))
    differences = []
    for key in sorted(set(saved_flat) | set(current_flat)):
        if saved_flat.get(key, "<absent>") != current_flat.get(key, "<absent>"):
            differences.append(f"{key}: checkpoint {saved_flat.get(key, '<absent>')!r}, now {current_flat.get(key, '<absent>')!r}")
    return differences


__all__ = [
    "ABANDONED_DIR",
    "CHECKPOINTS_DIR",
    "STATE_FILE",
    "checkpoint_dir",
    "checkpoint_metric",
    "commit_directory",
    "find_checkpoint",
    "fingerprint_differences",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "read_loop_state",
    "remove_stale_temporaries",
    "set_aside_later_checkpoints",
    "write_loop_state",
]
