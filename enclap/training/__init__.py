"""Training: one model-agnostic loop under Accelerate, and the captioner's task for it.

* :mod:`enclap.training.loop` -- :func:`run_training` / :class:`Trainer` (checkpoints, exact resume,
  validation, best model, logging); it re-exports the contract of :mod:`enclap.training.contract`
  (:class:`LoopConfig`, :class:`TrainingTask`, :class:`LossTerms`, :class:`TrainingResult`).
* :mod:`enclap.training.distributed` -- global batch geometry, the launcher's settings, FSDP / DeepSpeed.
* :mod:`enclap.training.sampling` -- which examples each process reads: a function of (seed, epoch).
* :mod:`enclap.training.checkpoints` -- checkpoint directories: atomic commit, discovery, resume policy, pruning.
* :mod:`enclap.training.tracking` -- ``train_log.jsonl``, TensorBoard, W&B; the throughput window.
* :mod:`enclap.training.signals` -- SIGINT / SIGTERM: save at the next step boundary.
* :mod:`enclap.training.captioner` -- the EnCLAP captioner as a task (loss-term sums, caption metrics, export).

The captioner training job (config, command line) is :mod:`enclap.jobs.train_captioner`. Names are
imported lazily, so importing this package does no work.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "loop": (
        "BEST_DIR", "FINAL_DIR", "LoopConfig", "LossTerms", "NonFiniteLossError", "Trainer", "TrainingResult",
        "TrainingTask", "ValidationContext", "build_scheduler", "parameter_groups", "run_training",
    ),
    "distributed": ("BatchGeometry", "batch_geometry", "make_accelerator", "resolve_mixed_precision"),
    "sampling": ("EpochBatchSampler", "bucketed_order", "epoch_order", "micro_batches_per_epoch", "shard_indices"),
    "checkpoints": ("find_checkpoint", "latest_checkpoint", "list_checkpoints", "read_loop_state"),
    "tracking": ("StepWindow", "read_train_log"),
    "captioner": (
        "CaptionMetricValidation", "CaptionerLossModule", "CaptionerTask", "caption_batch_counts",
        "captioner_loss_terms",
    ),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
