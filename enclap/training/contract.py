"""The training loop's contract: its settings (:class:`LoopConfig`), what a model brings
(:class:`TrainingTask`, :class:`LossTerms`, :class:`ValidationContext`) and how a run ended
(:class:`TrainingResult`). The loop itself is :mod:`enclap.training.loop`, which re-exports these names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EnclapError
from .distributed import MIXED_PRECISION, BatchGeometry
from .sampling import merge_by_index, padded_shard
from .tracking import REPORT_TO

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_on_plateau",
)
# Schedules whose learning rate at a step depends on the total number of steps.
_SCHEDULES_USING_TOTAL = ("linear", "cosine", "cosine_with_restarts", "polynomial")


# What a streaming training set's examples carry: the bad samples it skipped before each (see TrainingTask).
STREAM_SKIPPED_KEY = "__skipped__"


class NonFiniteLossError(EnclapError):
    """The loss or the gradient norm became NaN or infinite; the weights were not updated."""


@dataclass
class LoopConfig:
    """Settings of the training loop (keys and defaults follow the reference's ``cfg/clotho/base.yaml``)."""

    num_train_epochs: int = 15
    max_train_steps: int | None = None  # optimizer steps; overrides num_train_epochs when set
    train_batch_size: int = 64  # GLOBAL: examples per optimizer step over all processes and accumulation steps
    per_device_train_batch_size: int | None = None  # null: train_batch_size / (processes x accumulation); set: caps memory, accumulation derived
    gradient_accumulation_steps: int | None = None  # null: the launcher's, else derived, else 1
    per_device_eval_batch_size: int = 64  # validation-loss batch per process
    learning_rate: float = 4e-5  # peak learning rate
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lr_scheduler_type: str = "inverse_sqrt"
    num_warmup_steps: int = 1000
    time_scale: int | None = None  # inverse_sqrt only: steps over which the rate halves after warm-up (default: warm-up length)
    # reduce_on_plateau: torch's ReduceLROnPlateau, stepped with each validation's best_metric (not per step; no warm-up)
    plateau_factor: float = 0.1  # the learning rate is multiplied by this after plateau_patience bad validations
    plateau_patience: int = 5  # validations without improvement (beyond plateau_threshold) tolerated before a cut
    plateau_threshold: float = 1e-4  # what counts as an improvement (torch's threshold)
    plateau_threshold_mode: str = "rel"  # rel | abs (torch's threshold_mode)
    min_lr: float = 0.0  # the learning rate is never cut below this
    early_stopping_patience: int = 0  # stop after N validations in a row without a new best best_metric (0: off)
    max_grad_norm: float = 1.0  # 0: no clipping (the norm is still logged)
    mixed_precision: str = "auto"  # auto (the launcher's, else bf16 on a GPU that has it) | no | fp16 | bf16 (wins over the launcher)
    cpu: bool = False  # train on CPU even when a GPU is present
    checkpointing_steps: str = "epoch"  # "epoch": at epoch ends only; N: also every N optimizer steps
    checkpoints_total_limit: int = 3  # keep the last K checkpoints (0: all)
    keep_best_checkpoints: int = 1  # and the K best by best_metric besides (0: none kept for being best)
    resume: str = "auto"  # auto | never | <checkpoint directory>
    eval_steps: int = 0  # also validate every N optimizer steps (0: at epoch ends only)
    best_metric: str = "val_loss"  # validation figure that picks the best model (*loss: lower is better)
    logging_steps: int = 10  # average and log the training figures every N steps
    report_to: str = "tensorboard"  # tensorboard | wandb | tensorboard,wandb | none (train_log.jsonl is always written)
    wandb_project: str = "enclap"  # W&B project (the WANDB_PROJECT environment variable wins)
    dataloader_num_workers: int = 2  # data loading processes per training process (kept alive across epochs)
    length_bucketing: bool = False  # group examples of similar length into the same steps (less padding)
    bucket_window: int = 50  # length bucketing: steps whose examples are sorted together
    progress: bool = True  # tqdm progress bar on the main process

    def validate(self) -> None:
        if str(self.mixed_precision).lower() == "false":  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        problems = []
        for name in ("num_train_epochs", "train_batch_size", "per_device_eval_batch_size", "logging_steps", "bucket_window"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 or null (derived from train_batch_size), got {getattr(self, name)}")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            problems.append(f"max_train_steps must be >= 1 or null, got {self.max_train_steps}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1) or self.adam_epsilon <= 0:
            problems.append("adam_beta1/adam_beta2 must be in [0, 1) and adam_epsilon > 0")
        if self.lr_scheduler_type not in SCHEDULERS:
            problems.append(f"lr_scheduler_type must be one of {', '.join(SCHEDULERS)}, got {self.lr_scheduler_type!r}")
        if self.lr_scheduler_type == "reduce_on_plateau":
            if not 0 < self.plateau_factor < 1:
                problems.append(f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
            if self.plateau_patience < 0 or self.plateau_threshold < 0 or self.min_lr < 0:
                problems.append("plateau_patience, plateau_threshold and min_lr must be >= 0")
            if self.plateau_threshold_mode not in ("rel", "abs"):
                problems.append(f"plateau_threshold_mode must be rel or abs, got {self.plateau_threshold_mode!r}")
            if self.num_warmup_steps:
                problems.append("lr_scheduler_type=reduce_on_plateau has no warm-up: set num_warmup_steps=0")
        if self.early_stopping_patience < 0:
            problems.append(f"early_stopping_patience must be >= 0 (0: off), got {self.early_stopping_patience}")
        if self.num_warmup_steps < 0:
            problems.append(f"num_warmup_steps must be >= 0, got {self.num_warmup_steps}")
        if self.time_scale is not None and (self.time_scale < 1 or self.lr_scheduler_type != "inverse_sqrt"):
            problems.append("time_scale must be >= 1 and is only used with lr_scheduler_type=inverse_sqrt")
        if self.max_grad_norm < 0:
            problems.append(f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        if self.checkpointing_steps != "epoch" and not (str(self.checkpointing_steps).isdigit() and int(self.checkpointing_steps) > 0):
            problems.append(f"checkpointing_steps must be 'epoch' or a positive number of steps, got {self.checkpointing_steps!r}")
        if self.checkpoints_total_limit < 0:
            problems.append(f"checkpoints_total_limit must be >= 0 (0 keeps all), got {self.checkpoints_total_limit}")
        if self.keep_best_checkpoints < 0:
            problems.append(f"keep_best_checkpoints must be >= 0, got {self.keep_best_checkpoints}")
        if not self.resume:
            problems.append("resume must be auto, never or a checkpoint directory")
        if self.eval_steps < 0:
            problems.append(f"eval_steps must be >= 0, got {self.eval_steps}")
        if self.report_to not in REPORT_TO:
            problems.append(f"report_to must be one of {', '.join(REPORT_TO)}, got {self.report_to!r}")
        if self.dataloader_num_workers < 0:
            problems.append(f"dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}")
        if not self.best_metric:
            problems.append("best_metric must name a validation figure, e.g. val_loss")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def checkpoint_every(self) -> int:
        """Steps between periodic checkpoints (0: epoch ends only)."""
        return 0 if self.checkpointing_steps == "epoch" else int(self.checkpointing_steps)

    @property
    def greater_is_better(self) -> bool:
        """Losses are minimised; every other figure (caption scores) is maximised."""
        return not self.best_metric.endswith("loss")


@dataclass
class LossTerms:
    """How a module's loss-term sums combine: ``weights[t]`` per term, named groups of terms for logging."""

    weights: list[float]
    groups: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        covered = sorted(i for members in self.groups.values() for i in members)
        if any(not 0 <= i < len(self.weights) for i in covered):
            raise ValueError(f"loss groups {self.groups} name terms outside 0..{len(self.weights) - 1}")


class ValidationContext:
    """What :meth:`TrainingTask.extra_validation` gets to share its work over the processes.

    ``shard(n)``: this process's indices of ``n`` items, padded to the same length on every process
    (collective generation needs that); ``gather(objects)``: every process's list, concatenated in
    process order, on every process; ``merge(pairs, n)``: gathered ``(index, value)`` pairs in index
    order with the padding's repeats dropped (an index missing is an error).
    """

    def __init__(self, accelerator: "Accelerator") -> None:
        self.accelerator = accelerator
        self.process_index = accelerator.process_index
        self.num_processes = accelerator.num_processes
        self.is_main_process = accelerator.is_main_process

    def shard(self, num_items: int) -> list[int]:
        return padded_shard(num_items, self.process_index, self.num_processes)

    def gather(self, objects: list) -> list:
        if self.num_processes == 1:
            return list(objects)
        from accelerate.utils import gather_object

        return list(gather_object(list(objects)))

    @staticmethod
    def merge(pairs: list, num_items: int) -> list:
        return merge_by_index(pairs, num_items)


class TrainingTask:
    """What a model brings to the loop. Subclass and set/override the members below.

    - ``module``: ``forward(**model_inputs(batch))`` returns the loss-term sums, shape ``(num_terms,)``.
    - ``loss_terms``: the weights and named groups of those terms.
    - ``train_dataset`` / ``val_dataset``: map-style data sets; training items are ``(epoch, index)``,
      validation items plain indices. ``collate_fn`` batches their items into dicts of tensors.
      A *streaming* training set is a ``torch.utils.data.IterableDataset`` with ``epoch_examples`` (the
      declared global length of an epoch), ``set_stream(process_index=, num_processes=, batch_size=,
      batches_per_epoch=, num_workers=)`` (called once) and ``set_epoch(epoch)`` (before each pass). Each
      process's stream must yield ``batches_per_epoch * batch_size`` examples an epoch, split over its
      DataLoader workers as batches are taken round-robin from them, and be a function of (its seed,
      epoch, process, worker) alone: then a run resumed at an epoch boundary reads what an uninterrupted
      one does, and one resumed mid-epoch skips exactly the batches already trained on (they are read
      again and dropped). An example may carry :data:`STREAM_SKIPPED_KEY`: the bad samples the stream
      skipped before it; the loop sums them over processes, logs the total (``bad_samples_total``) and
      reports it in :class:`TrainingResult`. See :class:`enclap.data.shards.ShardStream`.
    - ``counts(batch)``: ``(num_terms,)`` float64: how many items each term's sum runs over.
    - ``example_lengths()`` (optional): one length per training example, for ``length_bucketing``.

    **Every process** calls :meth:`extra_validation` and :meth:`export` (since the multi-GPU rework;
    FSDP / ZeRO-3 need every rank for a full state dict or for generation):

    - ``extra_validation(module, step, context)``: ``module`` is the unwrapped module in eval mode with its
      full parameters; do this process's share (``context.shard``), ``context.gather`` the results, score
      on ``context.is_main_process`` and return the figures there (other processes' return values are
      ignored: the main process's are broadcast). A task whose ``extra_validation`` takes only
      ``(module, step)`` (the earlier contract) is still called on the main process alone.
    - ``export(module, directory, state_dict)``: called on the main process only, after every process
      took part in gathering ``state_dict`` (``accelerator.get_state_dict``: the module's full weights,
      whatever the sharding). Write the model from ``state_dict``; ``module`` may hold shards only. An
      ``export(module, directory)`` of the earlier contract still works where nothing is sharded.
    """

    module: "torch.nn.Module"
    loss_terms: LossTerms
    train_dataset: Any
    val_dataset: Any = None
    collate_fn: Callable[[list], dict] | None = None

    def counts(self, batch: dict[str, Any]) -> "torch.Tensor":
        raise NotImplementedError

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The part of a batch the module's ``forward`` takes (default: all of it)."""
        return batch

    def fingerprint(self) -> dict[str, Any]:
        """What must not change when a run is resumed (model shape, data identity...), JSON-serialisable."""
        return {}

    def run_files(self) -> dict[str, str]:
        """Files (name -> text) written into the output directory once the run is accepted (fresh, or resumable)."""
        return {}

    def check_geometry(self, geometry: "BatchGeometry") -> None:
        """Called once the batch geometry is known (processes, per-device batch, accumulation): raise or warn
        where the task cannot train as configured (e.g. a contrastive loss, whose negatives come from one
        micro-batch, under gradient accumulation). Default: anything goes."""

    def example_lengths(self) -> "list[int] | None":
        """Length of each training example (e.g. codec frames), for ``length_bucketing``; None: not supported."""
        return None

    def validation_metric_names(self) -> set[str]:
        """Names :meth:`extra_validation` can return (so that ``best_metric`` can be checked up front)."""
        return set()

    def extra_validation(self, module: "torch.nn.Module", step: int, context: ValidationContext) -> dict[str, float]:
        """Further validation figures; on every process (see the class docstring)."""
        return {}

    def export(self, module: "torch.nn.Module", directory: Path, state_dict: dict[str, Any]) -> None:
        """Write a usable model (e.g. a pipeline directory) of the weights ``state_dict`` into ``directory``."""


def _takes(method: Callable, name: str) -> bool:
    """Whether a task's hook accepts the parameter ``name`` (the earlier contract had fewer)."""
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


@dataclass
class TrainingResult:
    """How a run ended. ``status`` is ``"completed"``, ``"interrupted"`` (a signal; resumable) or ``"stopped"``
    (by the loop's ``on_validation`` callback, e.g. a pruned trial of a hyper-parameter search; resumable)."""

    status: str
    global_step: int
    total_steps: int
    epoch: int
    output_dir: Path
    last_checkpoint: Path | None
    final_dir: Path | None = None
    best_dir: Path | None = None
    best: dict[str, Any] | None = None
    last_validation: dict[str, float] | None = None
    resumed_from: Path | None = None
    signal: str | None = None
    geometry: BatchGeometry | None = None
    best_checkpoint: Path | None = None
    stopped_early: str | None = None  # why early stopping ended the run (status stays "completed")
    bad_samples: int | None = None  # streaming training sets: bad samples skipped over the whole run

    def summary(self) -> str:
        """One line: the steps, the effective global batch, the final and best models."""
        line = f"{self.status} after {self.global_step} of {self.total_steps} steps"
        if self.stopped_early:
            line += f" (stopped early: {self.stopped_early})"
        if self.geometry is not None:
            line += f" ({self.geometry.describe()})"
        if self.bad_samples:
            line += f"; {self.bad_samples} bad training sample(s) skipped"
        if self.final_dir is not None:
            line += f"; final model: {self.final_dir}"
        if self.best:
            line += f"; best {self.best['metric']}={self.best['value']:.4f} at step {self.best['step']}"
            scores = {k: v for k, v in (self.best.get("figures") or {}).items() if k != self.best["metric"]}
            if scores:
                line += " (" + ", ".join(f"{k}={v:.4f}" for k, v in sorted(scores.items())) + ")"
            if self.best_dir is not None:
                line += f": {self.best_dir}"
            if self.best_checkpoint is not None:
                line += f", checkpoint {self.best_checkpoint}"
        return line


# ------------------------------------------------------------------------------------------ helpers
