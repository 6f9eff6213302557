"""The one training loop: Accelerate, AdamW, warm-up schedule, checkpoints, resume, validation, logging.

It knows nothing about captioning. A :class:`TrainingTask` gives it a module whose ``forward(**batch)``
returns a vector of *loss-term sums* (e.g. the summed token cross-entropy, then one summed cross-entropy
per codebook), a ``counts(batch)`` vector saying over how many items each sum runs, and the term
weights. The loss of an optimizer step is

    loss = sum_t weight_t * (sum of term t over the whole step) / (count of term t over the whole step)

where "the whole step" is every micro-batch of the gradient-accumulation window on every process. The
counts are known from the batches before any forward pass, so each micro-batch's contribution is
exactly scaled: a mean over a global batch is the same number whether it is computed in one piece,
in 2 accumulated halves or on 2 processes (up to float rounding). (Averaging per-micro-batch means,
as most loops do, weights a short caption in a small micro-batch more than in a big one.) A task whose
loss is not a sum over items uses one term with count 1 per batch: the step loss is then the mean of
the per-batch losses.

Around that:

* **Accelerate**: ``Accelerator(cpu=..., mixed_precision=...)`` prepares the module (DDP when launched
  with several processes), the optimizer and the scheduler. Data is sharded here, not by Accelerate:
  :class:`~enclap.training.sampling.EpochBatchSampler` gives every process a disjoint part of each
  global micro-batch (no padding by repeated examples), in an order that depends only on (seed, epoch).
* **optimizer / schedule**: AdamW without weight decay on biases and normalisation weights (chosen by
  module type: the reference's name list misses BART's ``layernorm_embedding``); any warm-up schedule of
  ``transformers.get_scheduler``, including the reference's ``inverse_sqrt`` with ``time_scale``;
  gradient clipping; epochs or a step budget.
* **checkpoints**: ``<output>/checkpoints/step_<n>/`` every ``checkpointing_steps`` steps, at each
  epoch end, at the end, and when stopped by SIGTERM / SIGINT (at the next step boundary; a second
  Ctrl-C aborts at once). ``accelerator.save_state`` (model, optimizer, scheduler, every process's
  RNG states) plus ``loop_state.json`` (epoch, position in the epoch, best metric, log window,
  fingerprint), written to a temporary directory and renamed; the last ``checkpoints_total_limit`` are kept.
* **resume**: ``resume=auto`` continues from the latest checkpoint when the same command is run again,
  skipping the batches already seen (the sampler order is a function of seed and epoch), so the run
  continues exactly as if it had never stopped. A checkpoint of a run that differs in what matters
  (the task's fingerprint: model shape, data...; seed; batch geometry; number of processes) is refused
  with the differences listed. Other settings may change and are logged; optimizer settings (learning
  rate, schedule, weight decay...) then apply from the resumed step on, e.g. to continue a diverged run
  at a lower learning rate. ``resume=never`` refuses an output directory that holds checkpoints;
  ``resume=<dir>`` names one.
* **validation**: loss on the validation set each epoch (and every ``eval_steps``), summed over
  processes without counting any example twice; the task may add metrics (e.g. caption scores); the
  best value of ``best_metric`` is tracked and the task exports the model at each new best.
* **safety**: a non-finite loss or gradient norm stops the run with :class:`NonFiniteLossError`
  naming the step, before the weights change; the last checkpoint stays as it was.
* **logging**: tqdm on the main process, ``train_log.jsonl`` and TensorBoard (loss and its parts,
  learning rate, gradient norm, throughput).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, ConfigError, EnclapError
from . import checkpoints as ckpt
from .sampling import EpochBatchSampler, micro_batches_per_epoch, shard_indices
from .tracking import REPORT_TO, TrainingLog

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
BEST_DIR = "best"
EXPORT_STATE_FILE = "training_state.json"
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
# Schedules whose learning rate at a step depends on the total number of steps.
_SCHEDULES_USING_TOTAL = ("linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISION = ("no", "fp16", "bf16")


class NonFiniteLossError(EnclapError):
    """The loss or the gradient norm became NaN or infinite; the weights were not updated."""


@dataclass
class LoopConfig:
    """Settings of the training loop (keys and defaults follow the reference's ``cfg/clotho/base.yaml``)."""

    num_train_epochs: int = 15
    max_train_steps: int | None = None  # optimizer steps; overrides num_train_epochs when set
    per_device_train_batch_size: int = 64
    per_device_eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 4e-5  # peak learning rate
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lr_scheduler_type: str = "inverse_sqrt"
    num_warmup_steps: int = 1000
    time_scale: int | None = None  # inverse_sqrt only: steps over which the rate halves after warm-up (default: warm-up length)
    max_grad_norm: float = 1.0  # 0: no clipping (the norm is still logged)
    mixed_precision: str = "no"  # no | fp16 | bf16
    cpu: bool = False  # train on CPU even when a GPU is present
    checkpointing_steps: str = "epoch"  # "epoch": at epoch ends only; N: also every N optimizer steps
    checkpoints_total_limit: int = 3  # keep the last K checkpoints (0: all)
    resume: str = "auto"  # auto | never | <checkpoint directory>
    eval_steps: int = 0  # also validate every N optimizer steps (0: at epoch ends only)
    best_metric: str = "val_loss"  # validation figure that picks the best model (*loss: lower is better)
    logging_steps: int = 10  # average and log the training figures every N steps
    report_to: str = "tensorboard"  # tensorboard | none (train_log.jsonl is always written)
    dataloader_num_workers: int = 2  # data loading processes per training process
    progress: bool = True  # tqdm progress bar on the main process

    def validate(self) -> None:
        problems = []
        for name in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps", "logging_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
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


class TrainingTask:
    """What a model brings to the loop. Subclass and set/override the members below.

    - ``module``: ``forward(**model_inputs(batch))`` returns the loss-term sums, shape ``(num_terms,)``.
    - ``loss_terms``: the weights and named groups of those terms.
    - ``train_dataset`` / ``val_dataset``: map-style data sets; training items are ``(epoch, index)``,
      validation items plain indices. ``collate_fn`` batches their items into dicts of tensors.
    - ``counts(batch)``: ``(num_terms,)`` float64: how many items each term's sum runs over.
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

    def validation_metric_names(self) -> set[str]:
        """Names :meth:`extra_validation` can return (so that ``best_metric`` can be checked up front)."""
        return set()

    def extra_validation(self, module: "torch.nn.Module", step: int) -> dict[str, float]:
        """Further validation figures, computed on the main process with the unwrapped module in eval mode."""
        return {}

    def export(self, module: "torch.nn.Module", directory: Path) -> None:
        """Write a usable model (e.g. a pipeline directory) of the unwrapped module into ``directory``."""


@dataclass
class TrainingResult:
    """How a run ended. ``status`` is ``"completed"`` or ``"interrupted"`` (a signal; resumable)."""

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


# ------------------------------------------------------------------------------------------ helpers


def make_accelerator(config: LoopConfig) -> "Accelerator":
    """An Accelerator for ``config`` (CPU when asked, or when ``ACCELERATE_USE_CPU`` is set by the launcher).

    The scheduler is stepped once per optimizer step by the loop itself (Accelerate would otherwise
    step it once per process). In a single process, a state left by an earlier run with another
    mixed-precision setting is replaced rather than refused.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    env_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in {"1", "true", "yes"}
    existing = AcceleratorState._shared_state
    if existing and existing.get("_mixed_precision") not in (None, config.mixed_precision):
        if PartialState().num_processes == 1:
            AcceleratorState._reset_state()
    return Accelerator(
        cpu=config.cpu or env_cpu,
        mixed_precision=config.mixed_precision,
        step_scheduler_with_optimizer=False,
    )


def parameter_groups(module: "torch.nn.Module", weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weights, none on biases and on normalisation layers' parameters."""
    from torch import nn

    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm)
    no_decay: set[int] = set()
    for sub in module.modules():
        if isinstance(sub, norm_types):
            no_decay.update(id(p) for p in sub.parameters(recurse=False))
    decay, plain = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        if id(parameter) in no_decay or name.endswith(".bias") or name == "bias":
            plain.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_scheduler(optimizer, config: LoopConfig, total_steps: int):
    """The learning-rate schedule: ``transformers.get_scheduler``, or inverse square root with ``time_scale``."""
    from transformers import get_inverse_sqrt_schedule, get_scheduler

    if config.lr_scheduler_type == "inverse_sqrt":
        return get_inverse_sqrt_schedule(optimizer, num_warmup_steps=config.num_warmup_steps, timescale=config.time_scale)
    return get_scheduler(
        config.lr_scheduler_type, optimizer, num_warmup_steps=config.num_warmup_steps, num_training_steps=total_steps
    )


class _TiedWeightsNotice(logging.Filter):
    """Drop accelerate's warning, at every save, that tied weights are stored once (they load back tied)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


_TIED_WEIGHTS_FILTER = _TiedWeightsNotice()


def _batch_size(batch: dict[str, Any]) -> int:
    """Examples in a collated batch: the leading size of its first tensor."""
    for value in batch.values():
        if hasattr(value, "shape") and len(value.shape):
            return int(value.shape[0])
    raise ValueError("a batch must hold at least one tensor with a batch dimension")


def _ignore_signals_in_worker(_worker_id: int) -> None:
    # A terminal's Ctrl-C reaches every process of the group; the loader workers must keep serving
    # batches until the main process has saved its checkpoint at the next step boundary.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _StopSignals:
    """SIGINT / SIGTERM -> a flag checked at step boundaries; a second signal aborts at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; the caller handles stopping
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt(f"second {name}: stopping without saving")
        self.requested = name
        logger.warning("%s received: saving a checkpoint at the end of this step, then stopping (again to abort)", name)


# ------------------------------------------------------------------------------------------ the loop


class Trainer:
    """One training run of a :class:`TrainingTask`; call :meth:`run`. See the module docstring."""

    def __init__(
        self,
        task: TrainingTask,
        config: LoopConfig,
        *,
        output_dir: str | os.PathLike,
        seed: int,
        accelerator: "Accelerator | None" = None,
    ) -> None:
        config.validate()
        logging.getLogger("accelerate.utils.other").addFilter(_TIED_WEIGHTS_FILTER)  # idempotent
        self.task = task
        self.config = config
        self.output_dir = Path(output_dir)
        self.seed = int(seed)
        self.accelerator = accelerator if accelerator is not None else make_accelerator(config)
        self._signals = _StopSignals()
        self._stop_requested_by_call = False
        known = {"val_loss"} | {f"val_{group}" for group in task.loss_terms.groups} | task.validation_metric_names()
        if config.best_metric not in known:
            raise ConfigError(f"best_metric {config.best_metric!r} is not a validation figure of this run; known: {', '.join(sorted(known))}")

    # ------------------------------------------------------------------ public
    def request_stop(self) -> None:
        """Ask the run to save a checkpoint and stop at the next step boundary (as SIGTERM does)."""
        self._stop_requested_by_call = True

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    def run(self) -> TrainingResult:
        """Train (or resume) until the step budget is spent or a stop is requested."""
        if self.accelerator.device.type == "cpu":
            # Each step frees and re-allocates the same large activations; by default glibc returns
            # them to the kernel and page-faults them back (seconds per step at BART-base size).
            from ..allocator import retain_freed_memory

            retain_freed_memory()
        self._signals.install()
        try:
            return self._run()
        finally:
            self._signals.restore()

    # ------------------------------------------------------------------ set-up
    def _geometry(self) -> None:
        acc, cfg = self.accelerator, self.config
        self.num_processes = acc.num_processes
        self.process_index = acc.process_index
        self.global_micro_batch = cfg.per_device_train_batch_size * self.num_processes
        num_examples = len(self.task.train_dataset)
        self.micro_batches = micro_batches_per_epoch(num_examples, self.global_micro_batch, self.num_processes)
        if self.micro_batches == 0:
            raise ConfigError(
                f"the training set has {num_examples} example(s): fewer than the {self.num_processes} processes need"
            )
        dropped = num_examples - min(num_examples, self.micro_batches * self.global_micro_batch)
        if dropped:
            logger.warning("the last %d example(s) of each epoch's order are left out: fewer than one per process", dropped)
        accumulation = cfg.gradient_accumulation_steps
        self.steps_per_epoch = math.ceil(self.micro_batches / accumulation)
        self.total_steps = cfg.max_train_steps or cfg.num_train_epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the checkpoint's run."""
        cfg = self.config
        return {
            "loop": {
                "seed": self.seed,
                "num_processes": self.num_processes,
                "global_micro_batch": self.global_micro_batch,
                "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
                "num_train_examples": len(self.task.train_dataset),
            },
            "task": self.task.fingerprint(),
        }

    def _prepare(self) -> None:
        import torch

        cfg = self.config
        optimizer = torch.optim.AdamW(
            parameter_groups(self.task.module, cfg.weight_decay),
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_epsilon,
        )
        scheduler = build_scheduler(optimizer, cfg, self.total_steps)
        self.module, self.optimizer, self.scheduler = self.accelerator.prepare(self.task.module, optimizer, scheduler)
        self.device = self.accelerator.device
        weights = torch.tensor(self.task.loss_terms.weights, dtype=torch.float64)
        self.term_weights = weights.to(self.device)

    def _find_checkpoint(self) -> Path | None:
        resume = self.config.resume
        existing = ckpt.list_checkpoints(self.output_dir)
        if resume == "auto":
            return existing[-1][1] if existing else None
        if resume == "never":
            if existing:
                raise ConfigError(
                    f"{self.output_dir} already holds checkpoints (latest: {existing[-1][1].name}) and resume=never: "
                    "rerun with resume=auto to continue that run, or choose another output_dir to start over"
                )
            return None
        path = Path(resume).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"resume={resume!r}: no such checkpoint directory")
        return path

    def _load_checkpoint(self, path: Path) -> dict[str, Any]:
        import torch
        from accelerate.utils import load as accelerate_load

        state = ckpt.read_loop_state(path)
        differences = ckpt.fingerprint_differences(state["fingerprint"], self.fingerprint())
        if differences:
            raise CheckpointError(
                f"{path} was saved by a run that differs from this one in what matters for resuming:\n  - "
                + "\n  - ".join(differences)
                + f"\nRestore those settings to resume it, or start a new run in another output_dir (or with resume=never there)."
            )
        changed = ckpt.fingerprint_differences(state.get("settings", {}), dataclasses.asdict(self.config))
        changed = [c for c in changed if not c.startswith("resume:")]
        if changed:
            logger.warning("resuming with changed settings: %s", "; ".join(changed))
            if any(c.startswith(("num_train_epochs", "max_train_steps")) for c in changed) and (
                self.config.lr_scheduler_type in _SCHEDULES_USING_TOTAL
            ):
                logger.warning("the %s schedule depends on the total number of steps, which changed", self.config.lr_scheduler_type)
        try:
            self.accelerator.load_state(str(path))
        except Exception as err:  # a damaged file can fail in many library-specific ways
            first = str(err).splitlines()[0] if str(err) else ""
            raise CheckpointError(
                f"{path}: the checkpoint cannot be loaded ({type(err).__name__}: {first}). It may be damaged: delete it to "
                "resume from the one before, or pass resume=<another checkpoint>."
            ) from err
        self._apply_optimizer_settings()
        rng_file = path / f"random_states_{self.process_index}.pkl"
        try:
            saved = accelerate_load(str(rng_file))
            restored = torch.equal(saved["torch_manual_seed"], torch.get_rng_state())
        except Exception as err:
            raise CheckpointError(f"{rng_file}: the random states cannot be read ({type(err).__name__}: {err})") from err
        if not restored:
            # accelerate only logs a failure to restore them; without them the run would not continue exactly.
            raise CheckpointError(f"{rng_file}: the random states were not restored")
        return state

    def _apply_optimizer_settings(self) -> None:
        """Make the restored optimizer and schedule follow this run's settings from the resumed step on.

        ``load_state`` restores the checkpoint's learning rate, weight decay, betas and epsilon with the
        optimizer state; a run resumed with other values (e.g. a lower learning rate after a divergence)
        must use its own. Unchanged settings give back exactly the restored values.
        """
        from torch.optim.lr_scheduler import LambdaLR

        cfg = self.config
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        scheduler = getattr(self.scheduler, "scheduler", self.scheduler)
        for group, decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0)):
            group.update(weight_decay=decay, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon, initial_lr=cfg.learning_rate)
        if not isinstance(scheduler, LambdaLR):
            return
        scheduler.base_lrs = [cfg.learning_rate] * len(optimizer.param_groups)
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)  # what LambdaLR.step sets at this step
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    # ------------------------------------------------------------------ data
    def _train_loader(self, epoch: int, start: int):
        import torch
        from torch.utils.data import DataLoader

        sampler = EpochBatchSampler(
            len(self.task.train_dataset),
            self.global_micro_batch,
            seed=self.seed,
            epoch=epoch,
            process_index=self.process_index,
            num_processes=self.num_processes,
            start=start,
        )
        workers = self.config.dataloader_num_workers
        return DataLoader(
            self.task.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.task.collate_fn,
            num_workers=workers,
            worker_init_fn=_ignore_signals_in_worker if workers else None,
            # Its own generator: creating a loader must not draw from the global RNG (dropout's), or a
            # resumed run, which creates its loader at another moment, would diverge.
            generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch),
            pin_memory=self.device.type == "cuda",
        )

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}

    def _reduce_sum(self, tensor: "torch.Tensor") -> "torch.Tensor":
        if self.num_processes == 1:
            return tensor
        return self.accelerator.reduce(tensor, reduction="sum")

    def _figures(self, sums: "torch.Tensor", counts: "torch.Tensor", omit_empty: bool = False) -> dict[str, float]:
        """``loss`` and each group's value from global sums and counts (float64).

        ``omit_empty`` (validation) leaves out a group none of whose terms counted anything, e.g. the
        MCM terms on clean validation inputs: its 0 would be an absence, not a measurement.
        """
        per_term = self.term_weights * sums / counts.clamp(min=1)
        figures = {"loss": float(per_term.sum())}
        for group, members in self.task.loss_terms.groups.items():
            if not omit_empty or float(counts[members].sum()) > 0:
                figures[group] = float(per_term[members].sum())
        return figures

    # ------------------------------------------------------------------ steps
    def _stop_requested(self) -> bool:
        return self._signals.requested is not None or self._stop_requested_by_call

    def _train_step(self, micro_batches: list[dict[str, Any]], step: int) -> tuple[dict[str, float], bool]:
        """One optimizer step over the micro-batches of an accumulation window; returns (figures, stopped)."""
        import torch

        acc = self.accelerator
        counts = sum(self.task.counts(b).to(torch.float64) for b in micro_batches)
        examples = sum(_batch_size(b) for b in micro_batches)
        # The counts of the whole window on every process, its examples, and whether any process was
        # asked to stop, in one collective: every process takes the same decision at the same boundary.
        flag = 1.0 if self._stop_requested() else 0.0
        shared = self._reduce_sum(torch.cat([counts, torch.tensor([examples, flag], dtype=torch.float64)]).to(self.device))
        if float(shared[-1]) > 0:
            return {}, True
        global_counts = shared[:-2]
        # Each micro-batch's sums divided by the window's global counts; times the process count
        # because DDP averages the processes' gradients.
        scale = (self.term_weights / global_counts.clamp(min=1) * self.num_processes).float()
        self.module.train()
        local_sums = torch.zeros_like(global_counts)
        for position, batch in enumerate(micro_batches):
            last = position == len(micro_batches) - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.module):
                sums = self.module(**self.task.model_inputs(self._to_device(batch)))
                acc.backward((sums.float() * scale).sum())
            local_sums += sums.detach().to(torch.float64)
        figures = self._figures(self._reduce_sum(local_sums), global_counts)
        figures["examples"] = float(shared[-2])
        if not math.isfinite(figures["loss"]):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(self._non_finite_message(step, "the loss", figures))
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        grad_norm = float(acc.clip_grad_norm_(self.module.parameters(), max_norm))
        if not math.isfinite(grad_norm) and self.config.mixed_precision != "fp16":
            # (with fp16 the gradient scaler skips such steps by design)
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(self._non_finite_message(step, "the gradient norm", {**figures, "grad_norm": grad_norm}))
        self.optimizer.step()
        if not acc.optimizer_step_was_skipped:  # fp16: the gradient scaler skipped an overflowing step
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        figures["grad_norm"] = grad_norm
        return figures, False

    def _non_finite_message(self, step: int, what: str, figures: dict[str, float]) -> str:
        last = ckpt.latest_checkpoint(self.output_dir)
        shown = ", ".join(f"{k}={v:.6g}" for k, v in figures.items())
        return (
            f"step {step}: {what} is not finite ({shown}); training stopped before updating the weights. "
            + (f"The last checkpoint, {last}, is intact. " if last else "No checkpoint had been saved yet. ")
            + "Lower the learning rate, check the data, or train in full precision (mixed_precision=no)."
        )

    # ------------------------------------------------------------------ validation
    def _validate(self, step: int) -> dict[str, float]:
        import torch
        from torch.utils.data import DataLoader

        task = self.task
        module = self.accelerator.unwrap_model(self.module)
        module.eval()
        figures: dict[str, float] = {}
        if task.val_dataset is not None and len(task.val_dataset):
            indices = shard_indices(len(task.val_dataset), self.process_index, self.num_processes)
            loader = DataLoader(
                task.val_dataset,
                sampler=indices,
                batch_size=self.config.per_device_eval_batch_size,
                collate_fn=task.collate_fn,
                num_workers=self.config.dataloader_num_workers if indices else 0,
                worker_init_fn=_ignore_signals_in_worker if self.config.dataloader_num_workers else None,
                generator=torch.Generator().manual_seed(self.seed),
            )
            num_terms = len(task.loss_terms.weights)
            sums = torch.zeros(num_terms, dtype=torch.float64, device=self.device)
            counts = torch.zeros(num_terms, dtype=torch.float64, device=self.device)
            with torch.no_grad():
                for batch in loader:
                    counts += task.counts(batch).to(device=self.device, dtype=torch.float64)
                    sums += module(**task.model_inputs(self._to_device(batch))).to(torch.float64)
            values = self._figures(self._reduce_sum(sums), self._reduce_sum(counts), omit_empty=True)
            figures = {f"val_{name}": value for name, value in values.items()}
        extra: dict[str, float] = {}
        if self.is_main_process:
            extra = task.extra_validation(module, step)
        if self.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            extra = broadcast_object_list([extra])[0]
        module.train()
        return {**figures, **extra}

    def _is_better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best["value"] if self.config.greater_is_better else value < self.best["value"]

    # ------------------------------------------------------------------ saving
    def _export(self, name: str, step: int, epoch: int, figures: dict[str, float] | None) -> Path:
        """Main process: the task's export of the current model, committed atomically to ``<output>/<name>``."""
        final = self.output_dir / name
        tmp = self.output_dir / f"{ckpt.TMP_PREFIX}{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        # (keep_fp32_wrapper=False would strip the mixed-precision wrapper from the live module for good)
        module = self.accelerator.unwrap_model(self.module)
        self.task.export(module, tmp)
        module.train()
        info = {"step": step, "epoch": epoch, "total_steps": self.total_steps, "validation": figures or {}}
        (tmp / EXPORT_STATE_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        ckpt.commit_directory(tmp, final)
        return final

    def _save_checkpoint(self, step: int, epoch: int, micro_batch: int) -> Path:
        """Every process: save the full training state after ``step`` (position: micro-batch ``micro_batch`` of ``epoch``)."""
        acc = self.accelerator
        final = ckpt.checkpoint_dir(self.output_dir, step)
        tmp = final.parent / f"{ckpt.TMP_PREFIX}{final.name}"
        if self.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if self.is_main_process:
            if micro_batch >= self.micro_batches:  # an epoch's end: the next read is the next epoch's start
                epoch, micro_batch = epoch + 1, 0
            ckpt.write_loop_state(
                tmp,
                {
                    "global_step": step,
                    "epoch": epoch,
                    "micro_batch": micro_batch,
                    "total_steps": self.total_steps,
                    "best": self.best,
                    "last_validation": self.last_validation,
                    "log_window": self.window,
                    "num_processes": self.num_processes,
                    "fingerprint": self.fingerprint(),
                    "settings": dataclasses.asdict(self.config),
                    "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
            ckpt.commit_directory(tmp, final)
            for removed in ckpt.prune_checkpoints(self.output_dir, self.config.checkpoints_total_limit):
                logger.info("removed old checkpoint %s", removed)
            logger.info("saved checkpoint %s", final)
        acc.wait_for_everyone()
        self.last_checkpoint = final
        self.last_saved_step = step
        return final

    # ------------------------------------------------------------------ logging
    def _new_window(self) -> dict[str, Any]:
        return {"steps": 0, "examples": 0, "sums": {}}

    def _log_train(self, step: int, epoch: int, figures: dict[str, float], examples: int, lr: float) -> None:
        window = self.window
        window["steps"] += 1
        window["examples"] += examples
        for name, value in figures.items():
            window["sums"][name] = window["sums"].get(name, 0.0) + value
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{figures['loss']:.4f}", lr=f"{lr:.3g}")
        if step % self.config.logging_steps and step != self.total_steps:
            return
        elapsed = max(time.monotonic() - self.window_started, 1e-9)
        values = {name: total / window["steps"] for name, total in window["sums"].items()}
        values.update(
            epoch=epoch,
            lr=lr,
            examples_per_second=round(window["examples"] / elapsed, 3),
            steps_per_second=round(window["steps"] / elapsed, 4),
        )
        if self.log is not None:
            self.log.write("train", step, values)
        self.window = self._new_window()
        self.window_started = time.monotonic()

    # ------------------------------------------------------------------ main
    def _run(self) -> TrainingResult:
        from accelerate.utils import set_seed
        from tqdm import tqdm

        acc, cfg = self.accelerator, self.config
        self._geometry()
        if self.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.output_dir)
            ckpt.remove_stale_temporaries(self.output_dir / ckpt.CHECKPOINTS_DIR)
        acc.wait_for_everyone()
        resume_from = self._find_checkpoint()
        self._prepare()
        # One dropout stream per process (the model itself was built before, identically everywhere).
        set_seed(self.seed, device_specific=True)

        self.best: dict[str, Any] | None = None
        self.last_validation: dict[str, float] | None = None
        self.window = self._new_window()
        self.last_checkpoint: Path | None = None
        self.last_saved_step = -1
        step, epoch, micro_batch = 0, 0, 0
        if resume_from is not None:
            state = self._load_checkpoint(resume_from)
            step, epoch, micro_batch = int(state["global_step"]), int(state["epoch"]), int(state["micro_batch"])
            self.best = state.get("best")
            self.last_validation = state.get("last_validation")
            self.window = state.get("log_window") or self._new_window()
            self.last_checkpoint, self.last_saved_step = resume_from, step
            logger.info("resuming from %s: step %d of %d, epoch %d, micro-batch %d", resume_from, step, self.total_steps, epoch, micro_batch)
        elif self.is_main_process:
            stale = [name for name in (FINAL_DIR, BEST_DIR) if (self.output_dir / name).is_dir()]
            if stale:
                # No checkpoint: a fresh run. Exports already there belong to an earlier run of this directory.
                logger.warning(
                    "%s: %s left by an earlier run; this run starts from scratch and replaces them when it exports",
                    self.output_dir, " and ".join(f"{name}/" for name in stale),
                )
        self.start_step = step

        if self.is_main_process:
            for name, text in self.task.run_files().items():
                tmp = self.output_dir / f"{ckpt.TMP_PREFIX}{name}"
                tmp.write_text(text)
                os.replace(tmp, self.output_dir / name)
        self.log = TrainingLog(self.output_dir, report_to=cfg.report_to, resume_step=step if resume_from else None) if self.is_main_process else None
        self.progress = (
            tqdm(total=self.total_steps, initial=min(step, self.total_steps), desc="training", unit="step",
                 file=sys.stderr, dynamic_ncols=True, disable=not cfg.progress)
            if self.is_main_process else None
        )
        self.window_started = time.monotonic()
        if step == 0 and self.is_main_process:
            logger.info(
                "training %d optimizer steps (%d epoch(s) of %d steps): %d examples, %d process(es) x %d per batch x %d accumulation",
                self.total_steps, self.num_epochs, self.steps_per_epoch, len(self.task.train_dataset),
                self.num_processes, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps,
            )
        try:
            status = self._loop(step, epoch, micro_batch)
        finally:
            if self.progress is not None:
                self.progress.close()
            if self.log is not None:
                self.log.close()
        final_dir = None
        if status == "completed":
            final_dir = self.output_dir / FINAL_DIR
            if self.is_main_process and not self._final_is_current(final_dir, resume_from):
                self._export(FINAL_DIR, self.step, self.epoch, self.last_validation)
                logger.info("final model written to %s", final_dir)
            acc.wait_for_everyone()
        best_dir = self.output_dir / BEST_DIR
        return TrainingResult(
            status=status,
            global_step=self.step,
            total_steps=self.total_steps,
            epoch=self.epoch,
            output_dir=self.output_dir,
            last_checkpoint=self.last_checkpoint,
            final_dir=final_dir,
            # Only a best this run's history recorded: a fresh run may find an earlier run's best/ there.
            best_dir=best_dir if self.best is not None and best_dir.is_dir() else None,
            best=self.best,
            last_validation=self.last_validation,
            resumed_from=resume_from,
            signal=self._signals.requested,
        )

    def _final_is_current(self, directory: Path, resume_from: Path | None) -> bool:
        """True when this invocation only resumed a finished run whose final export is of the same step.

        A fresh run, or one that trained any step, always exports: an earlier run in the same directory
        may have left a final/ of the same step count.
        """
        if resume_from is None or self.step != self.start_step:
            return False
        try:
            info = json.loads((directory / EXPORT_STATE_FILE).read_text())
        except (OSError, ValueError):
            return False
        return info.get("step") == self.step

    def _loop(self, step: int, epoch: int, micro_batch: int) -> str:
        cfg = self.config
        self.step, self.epoch = step, epoch
        if step >= self.total_steps:
            logger.info("training already reached step %d of %d", step, self.total_steps)
            return "completed"
        accumulation = cfg.gradient_accumulation_steps
        for epoch in range(epoch, self.num_epochs):
            self.epoch = epoch
            batches = iter(self._train_loader(epoch, micro_batch))
            while micro_batch < self.micro_batches and step < self.total_steps:
                take = min(accumulation, self.micro_batches - micro_batch)
                window = [next(batches) for _ in range(take)]
                figures, stopped = self._train_step(window, step + 1)
                if stopped:
                    if self.last_saved_step != step:
                        self._save_checkpoint(step, epoch, micro_batch)
                    logger.warning("stopped at step %d; rerun the same command to resume", step)
                    return "interrupted"
                step += 1
                micro_batch += take
                self.step = step
                examples = int(figures.pop("examples"))
                self._log_train(step, epoch, figures, examples, float(self.scheduler.get_last_lr()[0]))
                epoch_end = micro_batch >= self.micro_batches
                last = step >= self.total_steps
                if epoch_end or last or (cfg.eval_steps and step % cfg.eval_steps == 0):
                    self._run_validation(step, epoch)
                if epoch_end or last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    self._save_checkpoint(step, epoch, micro_batch)
            micro_batch = 0
            if step >= self.total_steps:
                break
        self.epoch = epoch
        return "completed"

    def _run_validation(self, step: int, epoch: int) -> None:
        figures = self._validate(step)
        if not figures:
            return
        self.last_validation = figures
        if self.log is not None:
            self.log.write("validation", step, {"epoch": epoch, **figures})
        if self.is_main_process:
            logger.info("validation at step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in figures.items()))
        value = figures.get(self.config.best_metric)
        if value is not None and math.isfinite(value) and self._is_better(value):
            self.best = {"metric": self.config.best_metric, "value": value, "step": step}
            if self.is_main_process:
                self._export(BEST_DIR, step, epoch, figures)
                logger.info("new best %s=%.4f at step %d: exported to %s", self.config.best_metric, value, step, self.output_dir / BEST_DIR)
        self.accelerator.wait_for_everyone()


def run_training(
    task: TrainingTask,
    config: LoopConfig,
    *,
    output_dir: str | os.PathLike,
    seed: int,
    accelerator: "Accelerator | None" = None,
) -> TrainingResult:
    """Train ``task`` with ``config`` into ``output_dir`` (resuming per ``config.resume``); see :class:`Trainer`."""
    return Trainer(task, config, output_dir=output_dir, seed=seed, accelerator=accelerator).run()


__all__ = [
    "BEST_DIR",
    "FINAL_DIR",
    "LoopConfig",
    "LossTerms",
    "NonFiniteLossError",
    "Trainer",
    "TrainingResult",
    "TrainingTask",
    "build_scheduler",
    "make_accelerator",
    "parameter_groups",
    "run_training",
]
