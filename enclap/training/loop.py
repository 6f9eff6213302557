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

* **batches are global**: ``train_batch_size`` examples per optimizer step over every process, as the
  reference's recipes mean it; the per-device batch and the accumulation are derived from the number of
  processes (:mod:`enclap.training.distributed`), and the log and the result say the effective geometry.
* **Accelerate**: the launcher's mixed precision and accumulation are honoured (see
  :mod:`~enclap.training.distributed`); the prepared module runs every forward (DDP, FSDP or DeepSpeed from
  ``accelerate launch --config_file``); accumulation goes through ``accelerator.accumulate`` (DeepSpeed's
  engine steps at its boundary); exports use ``accelerator.get_state_dict`` on every process. Data is
  sharded here, not by Accelerate: :class:`~enclap.training.sampling.EpochBatchSampler` gives every process
  a disjoint part of each global micro-batch (no padding by repeated examples), in an order that depends
  only on (seed, epoch, global batch); optionally length-bucketed. DataLoader workers persist across epochs.
  A streaming (iterable) training set is read instead through one DataLoader pass per epoch (its workers
  start with the epoch, whose stream depends on it): the per-device micro-batch of the geometry, steps
  per epoch from its declared length, bad samples it skipped counted (see :class:`TrainingTask`).
* **optimizer / schedule**: AdamW without weight decay on biases and normalisation weights (chosen by
  module type: the reference's name list misses BART's ``layernorm_embedding``); any warm-up schedule of
  ``transformers.get_scheduler``, including the reference's ``inverse_sqrt`` with ``time_scale``;
  gradient clipping; epochs or a step budget. ``reduce_on_plateau`` is torch's ReduceLROnPlateau instead,
  stepped once per validation with ``best_metric`` (min for losses, max otherwise); its state is in the
  checkpoints (``accelerator.save_state``), so a resumed run cuts the rate exactly when an uninterrupted one would.
* **early stopping**: ``early_stopping_patience=N`` ends the run (checkpoint, final export) after N
  validations in a row without a new best ``best_metric``; the summary and ``train_log.jsonl`` say why, the
  checkpoint records it, and running the command again does not train further (unless the patience was
  raised or early stopping turned off: then the run continues).
* **checkpoints**: ``<output>/checkpoints/step_<n>/`` every ``checkpointing_steps`` steps, at each
  epoch end, at the end, and when stopped by SIGTERM / SIGINT (at the next step boundary; a second
  Ctrl-C aborts at once). ``accelerator.save_state`` (model, optimizer, scheduler, every process's
  RNG states) plus ``loop_state.json`` (epoch, position in the epoch, best metric, log window,
  fingerprint), written to a temporary directory and renamed; the last ``checkpoints_total_limit`` are
  kept, and the ``keep_best_checkpoints`` best by ``best_metric`` besides.
* **resume**: ``resume=auto`` continues from the latest checkpoint when the same command is run again,
  skipping the examples already seen, so the run continues exactly as if it had never stopped, also on
  another number of processes when the global batch is the same (data-parallel DDP; FSDP / DeepSpeed
  checkpoints hold per-process shards and are refused on another process count). A checkpoint of a run that differs in what matters
  (the task's fingerprint: model shape, data...; seed; global batch) is refused with the differences
  listed. Other settings may change and are logged; optimizer settings (learning rate, schedule, weight
  decay...) then apply from the resumed step on. ``resume=never`` refuses an output directory that holds
  checkpoints; ``resume=<dir>`` names one, and the checkpoints after it are set aside in
  ``checkpoints/abandoned/`` so that a later ``resume=auto`` does not pick the abandoned history.
* **validation** (on every process): loss on the validation set each epoch (and every ``eval_steps``),
  summed over processes without counting any example twice; the task may add metrics (e.g. caption
  scores computed on every process's share and gathered); the best value of ``best_metric`` is tracked
  and the task exports the model at each new best. An ``on_validation(step, figures)`` callback (e.g. a
  hyper-parameter tuner reporting to its trial, :mod:`enclap.tuning`) sees every validation's figures on
  the main process; when it returns True the run saves a checkpoint and stops with status ``"stopped"``
  (resumable like an interrupted run).
* **safety**: a non-finite loss or gradient norm stops the run with :class:`NonFiniteLossError`
  naming the step, before the weights change (under DeepSpeed the engine steps inside ``backward``, so
  the check comes after that step); the last checkpoint stays as it was.
* **logging**: tqdm on the main process, ``train_log.jsonl``, TensorBoard and W&B (loss and its parts,
  learning rate, gradient norm, throughput of the training steps alone); a final summary line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, ConfigError
from . import checkpoints as ckpt
from .contract import (
    _SCHEDULES_USING_TOTAL,
    SCHEDULERS,
    STREAM_SKIPPED_KEY,
    LoopConfig,
    LossTerms,
    NonFiniteLossError,
    TrainingResult,
    TrainingTask,
    ValidationContext,
    _takes,
)
from .distributed import (
    MIXED_PRECISION,
    batch_geometry,
    configure_deepspeed,
    distributed_type,
    full_parameters,
    is_sharded,
    launcher_gradient_accumulation,
    make_accelerator,
)
from .sampling import EpochBatchSampler, ReusableBatchSampler, micro_batches_per_epoch, shard_indices
from .signals import StopSignals, ignore_signals_in_worker
from .tracking import StepWindow, TrainingLog

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
BEST_DIR = "best"
EXPORT_STATE_FILE = "training_state.json"


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
    """The learning-rate schedule: ``transformers.get_scheduler``, inverse square root with ``time_scale``, or
    ReduceLROnPlateau (stepped by the loop with each validation's ``best_metric``)."""
    from transformers import get_inverse_sqrt_schedule, get_scheduler

    if config.lr_scheduler_type == "reduce_on_plateau":
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        return ReduceLROnPlateau(
            optimizer, mode="max" if config.greater_is_better else "min", factor=config.plateau_factor,
            patience=config.plateau_patience, threshold=config.plateau_threshold,
            threshold_mode=config.plateau_threshold_mode, min_lr=config.min_lr,
        )
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


def _is_streaming(dataset: Any) -> bool:
    from torch.utils.data import IterableDataset

    return isinstance(dataset, IterableDataset)


class _StreamCollate:
    """A streaming set's batches: the task's collate of the examples, with their skipped-sample counts summed."""

    def __init__(self, collate_fn: Any) -> None:
        self.collate_fn = collate_fn

    def __call__(self, examples: list) -> dict[str, Any]:
        import torch
        from torch.utils.data import default_collate

        skipped = sum(int(e.pop(STREAM_SKIPPED_KEY, 0)) for e in examples if isinstance(e, dict))
        batch = self.collate_fn(examples) if self.collate_fn is not None else default_collate(examples)
        batch[STREAM_SKIPPED_KEY] = torch.tensor(skipped, dtype=torch.int64)
        return batch


def _batch_size(batch: dict[str, Any]) -> int:
    """Examples in a collated batch: the leading size of its first tensor."""
    for value in batch.values():
        if hasattr(value, "shape") and len(value.shape):
            return int(value.shape[0])
    raise ValueError("a batch must hold at least one tensor with a batch dimension")


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
        on_validation: "Callable[[int, dict[str, float]], bool | None] | None" = None,
    ) -> None:
        config.validate()
        logging.getLogger("accelerate.utils.other").addFilter(_TIED_WEIGHTS_FILTER)  # idempotent
        self.task = task
        self.config = config
        self.output_dir = Path(output_dir)
        self.seed = int(seed)
        self.accelerator = accelerator if accelerator is not None else make_accelerator(config)
        self._signals = StopSignals()
        self._stop_requested_by_call = False
        self.on_validation = on_validation
        self._stopped_by_validation = False
        known = {"val_loss"} | {f"val_{group}" for group in task.loss_terms.groups} | task.validation_metric_names()
        if config.best_metric not in known:
            raise ConfigError(f"best_metric {config.best_metric!r} is not a validation figure of this run; known: {', '.join(sorted(known))}")
        if config.length_bucketing and task.example_lengths() is None:
            raise ConfigError("length_bucketing=true, but this task gives no example lengths (TrainingTask.example_lengths)")
        self.streaming = _is_streaming(task.train_dataset)
        if self.streaming and config.length_bucketing:
            raise ConfigError("length_bucketing=true needs a map-style training set; a streaming one has no lengths up front")
        self.bad_samples = 0
        self._stream_iterator: Any = None

    # ------------------------------------------------------------------ public
    def request_stop(self) -> None:
        """Ask the run to save a checkpoint and stop at the next step boundary (as SIGTERM does)."""
        self._stop_requested_by_call = True

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    def run(self) -> TrainingResult:
        """Train (or resume) until the step budget is spent or a stop is requested.

        The process's memory allocator is left alone: the training entry point (``train.py`` /
        ``enclap-train``) sets its own policy (:func:`enclap.allocator.retain_freed_memory`).
        """
        self._signals.install()
        try:
            return self._run()
        finally:
            self._close_loaders()
            self._signals.restore()

    def _close_loaders(self) -> None:
        """Stop the DataLoaders' persistent workers now, however the run ended.

        The workers ignore SIGTERM (:func:`ignore_signals_in_worker`: they must outlive a Ctrl-C while the
        checkpoint is saved), so one left for the garbage collector, which a reference cycle can delay past
        the end of the program, is never stopped by the interpreter's exit, which then waits on it forever.
        """
        self._stop_stream()
        for name in ("_train_loader", "_val_loader"):
            loader = getattr(self, name, None)
            iterator = getattr(loader, "_iterator", None)  # where a DataLoader keeps its persistent workers
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            setattr(self, name, None)

    # ------------------------------------------------------------------ set-up
    def _geometry(self) -> None:
        acc, cfg = self.accelerator, self.config
        self.num_processes = acc.num_processes
        self.process_index = acc.process_index
        launcher = launcher_gradient_accumulation()
        if distributed_type(acc) == "DEEPSPEED":
            configured = (acc.state.deepspeed_plugin.deepspeed_config or {}).get("gradient_accumulation_steps", "auto")
            if configured not in ("auto", None):
                launcher = int(configured)
        self.geometry = batch_geometry(
            cfg.train_batch_size,
            self.num_processes,
            per_device=cfg.per_device_train_batch_size,
            accumulation=cfg.gradient_accumulation_steps,
            launcher_accumulation=launcher,
        )
        self.task.check_geometry(self.geometry)
        self.accumulation = self.geometry.accumulation
        self.global_micro_batch = self.geometry.global_micro_batch
        if self.streaming:
            # A declared epoch of whole global micro-batches: every process reads as many batches as the others.
            num_examples = int(self.task.train_dataset.epoch_examples)
            self.micro_batches = num_examples // self.global_micro_batch
            if self.micro_batches == 0:
                raise ConfigError(f"the declared epoch of {num_examples} example(s) is shorter than one global micro-batch "
                                  f"({self.global_micro_batch} = {self.geometry.describe()})")
            self.examples_per_epoch = self.micro_batches * self.global_micro_batch
            if num_examples > self.examples_per_epoch:
                logger.info("a streamed epoch is %d example(s): the declared %d in whole global micro-batches of %d",
                            self.examples_per_epoch, num_examples, self.global_micro_batch)
        else:
            num_examples = len(self.task.train_dataset)
            self.micro_batches = micro_batches_per_epoch(num_examples, self.global_micro_batch, self.num_processes)
            if self.micro_batches == 0:
                raise ConfigError(
                    f"the training set has {num_examples} example(s): fewer than the {self.num_processes} processes need"
                )
            self.examples_per_epoch = min(num_examples, self.micro_batches * self.global_micro_batch)
            dropped = num_examples - self.examples_per_epoch
            if dropped:
                logger.warning("the last %d example(s) of each epoch's order are left out: fewer than one per process", dropped)
        self.num_train_examples = num_examples
        self.steps_per_epoch = math.ceil(self.micro_batches / self.accumulation)
        self.total_steps = cfg.max_train_steps or cfg.num_train_epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.lengths = self.task.example_lengths() if cfg.length_bucketing else None

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the checkpoint's run.

        The examples of each step are a function of (seed, epoch, global batch) alone; the number of
        processes and the accumulation may change (``steps_per_epoch`` / ``examples_per_epoch`` catch
        the one case where they change an epoch: a last partial micro-batch too small for every process).
        """
        cfg = self.config
        return {
            "loop": {
                "seed": self.seed,
                "train_batch_size": cfg.train_batch_size,
                "num_train_examples": self.num_train_examples,
                "steps_per_epoch": self.steps_per_epoch,
                "examples_per_epoch": self.examples_per_epoch,
                **({"length_bucketing": {"window": cfg.bucket_window}} if cfg.length_bucketing else {}),
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
        configure_deepspeed(self.accelerator, self.geometry, cfg.max_grad_norm)
        self.module, self.optimizer, self.scheduler = self.accelerator.prepare(self.task.module, optimizer, scheduler)
        self._plateau = cfg.lr_scheduler_type == "reduce_on_plateau"  # stepped per validation, not per step
        self.device = self.accelerator.device
        weights = torch.tensor(self.task.loss_terms.weights, dtype=torch.float64)
        self.term_weights = weights.to(self.device)
        self._build_loaders()

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
        saved_processes = int(state.get("num_processes", self.num_processes))
        same_processes = saved_processes == self.num_processes
        if not same_processes:
            saved_kind = state.get("distributed_type", "")
            if saved_kind in ("FSDP", "DEEPSPEED") or is_sharded(self.accelerator):
                raise CheckpointError(
                    f"{path} was saved by {saved_processes} process(es) under {saved_kind or distributed_type(self.accelerator)}, "
                    f"this run has {self.num_processes}: sharded model and optimizer states are split per process and do not "
                    f"load on another count. Resume on {saved_processes} process(es), or export the weights and fine-tune from them."
                )
            logger.warning(
                "resuming a checkpoint of %d process(es) on %d: the same global batch of %d, so the same examples per step; "
                "the dropout random streams cannot continue exactly and start afresh from the seed",
                saved_processes, self.num_processes, self.config.train_batch_size,
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
        if same_processes:
            rng_file = path / f"random_states_{self.process_index}.pkl"
            try:
                saved = accelerate_load(str(rng_file))
                restored = torch.equal(saved["torch_manual_seed"], torch.get_rng_state())
            except Exception as err:
                raise CheckpointError(f"{rng_file}: the random states cannot be read ({type(err).__name__}: {err})") from err
            if not restored:
                # accelerate only logs a failure to restore them; without them the run would not continue exactly.
                raise CheckpointError(f"{rng_file}: the random states were not restored")
        else:
            from accelerate.utils import set_seed

            set_seed(self.seed + int(state["global_step"]), device_specific=True)
        self.bad_samples = int(state.get("bad_samples", 0))
        saved_layout = state.get("stream_layout")
        if self.streaming and saved_layout is not None and saved_layout != self._stream_layout():
            logger.warning(
                "resuming a streaming run saved with %s on %s: each process's stream depends on these, so from here on the "
                "samples read differ from those an uninterrupted run would read", saved_layout, self._stream_layout())
        if "examples_into_epoch" in state:
            into, rest = divmod(int(state["examples_into_epoch"]), self.global_micro_batch)
            if rest:
                raise CheckpointError(
                    f"{path}: saved {state['examples_into_epoch']} examples into epoch {state['epoch']}, which is not a whole "
                    f"number of this run's global micro-batches of {self.global_micro_batch}"
                )
            state["micro_batch"] = into
        return state

    def _apply_optimizer_settings(self) -> None:
        """Make the restored optimizer and schedule follow this run's settings from the resumed step on.

        ``load_state`` restores the checkpoint's learning rate, weight decay, betas and epsilon with the
        optimizer state; a run resumed with other values (e.g. a lower learning rate after a divergence)
        must use its own. Unchanged settings give back exactly the restored values.
        """
        from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

        cfg = self.config
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        scheduler = getattr(self.scheduler, "scheduler", self.scheduler)
        for group, decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0)):
            group.update(weight_decay=decay, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon, initial_lr=cfg.learning_rate)
        if isinstance(scheduler, ReduceLROnPlateau):
            # The restored learning rate (cut or not) and plateau history stay; the cut rules are this run's.
            scheduler.factor, scheduler.patience = cfg.plateau_factor, cfg.plateau_patience
            scheduler.threshold, scheduler.threshold_mode = cfg.plateau_threshold, cfg.plateau_threshold_mode
            scheduler.min_lrs = [cfg.min_lr] * len(optimizer.param_groups)
            return
        if not isinstance(scheduler, LambdaLR):
            return
        scheduler.base_lrs = [cfg.learning_rate] * len(optimizer.param_groups)
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)  # what LambdaLR.step sets at this step
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    # ------------------------------------------------------------------ data
    def _build_loaders(self) -> None:
        """One training and one validation DataLoader for the whole run: their workers persist across epochs
        (a streaming training set's start with each epoch: see :meth:`_build_stream_loader`)."""
        import torch
        from torch.utils.data import DataLoader

        workers = self.config.dataloader_num_workers
        if self.streaming:
            self._build_stream_loader(workers)
        else:
            self._build_map_loader(workers)
        self._val_loader = None
        if self.task.val_dataset is not None and len(self.task.val_dataset):
            indices = shard_indices(len(self.task.val_dataset), self.process_index, self.num_processes)
            val_workers = workers if indices else 0
            self._val_loader = DataLoader(
                self.task.val_dataset,
                sampler=indices,
                batch_size=self.config.per_device_eval_batch_size,
                collate_fn=self.task.collate_fn,
                num_workers=val_workers,
                worker_init_fn=ignore_signals_in_worker if val_workers else None,
                persistent_workers=val_workers > 0,
                generator=torch.Generator().manual_seed(self.seed),
            )

    def _build_map_loader(self, workers: int) -> None:
        import torch
        from torch.utils.data import DataLoader

        self._train_sampler = ReusableBatchSampler(
            lambda epoch, start: EpochBatchSampler(
                len(self.task.train_dataset),
                self.global_micro_batch,
                seed=self.seed,
                epoch=epoch,
                process_index=self.process_index,
                num_processes=self.num_processes,
                start=start,
                lengths=self.lengths,
                step_batch_size=self.config.train_batch_size if self.lengths is not None else None,
                bucket_window=self.config.bucket_window,
            )
        )
        self._train_loader = DataLoader(
            self.task.train_dataset,
            batch_sampler=self._train_sampler,
            collate_fn=self.task.collate_fn,
            num_workers=workers,
            worker_init_fn=ignore_signals_in_worker if workers else None,
            persistent_workers=workers > 0,
            # Its own generator: creating a loader must not draw from the global RNG (dropout's), or a
            # resumed run, which creates its loader at another moment, would diverge.
            generator=torch.Generator().manual_seed(self.seed * 100_003),
            pin_memory=self.device.type == "cuda",
        )

    def _stream_layout(self) -> dict[str, int]:
        """What a streaming set's per-process streams depend on besides (seed, epoch)."""
        return {"num_processes": self.num_processes, "per_device_batch": self.geometry.per_device,
                "dataloader_num_workers": self.config.dataloader_num_workers}

    def _build_stream_loader(self, workers: int) -> None:
        """A streaming training set: the DataLoader batches each worker's examples (``per_device`` of them).

        The workers are not persistent: a pass starts them with the dataset as ``set_epoch`` left it, so
        each epoch's stream is that epoch's wherever the run was started or resumed.
        """
        import torch
        from torch.utils.data import DataLoader

        dataset = self.task.train_dataset
        dataset.set_stream(process_index=self.process_index, num_processes=self.num_processes,
                           batch_size=self.geometry.per_device, batches_per_epoch=self.micro_batches, num_workers=workers)
        self._train_sampler = None
        self._train_loader = DataLoader(
            dataset,
            batch_size=self.geometry.per_device,
            collate_fn=_StreamCollate(self.task.collate_fn),
            num_workers=workers,
            worker_init_fn=ignore_signals_in_worker if workers else None,
            persistent_workers=False,
            # Each pass draws its workers' base seed from this generator, not from the global RNG (SpecAugment's,
            # dropout's): a run resumed mid-epoch starts its pass at another point of the global stream.
            generator=torch.Generator().manual_seed(self.seed * 100_003 + 1),
            pin_memory=self.device.type == "cuda",
        )

    def _stop_stream(self) -> None:
        iterator, self._stream_iterator = self._stream_iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def _stream_batches(self, epoch: int, start: int):
        """Micro-batches ``start``.. of ``epoch`` of a streaming set: the epoch's stream, its first ``start`` dropped."""
        import itertools

        self._stop_stream()
        self.task.train_dataset.set_epoch(epoch)
        self._stream_iterator = iter(self._train_loader)
        read = start
        for batch in itertools.islice(self._stream_iterator, start, None):
            read += 1
            yield batch
        raise RuntimeError(
            f"epoch {epoch}: the training stream of process {self.process_index} ended after {read} of its "
            f"{self.micro_batches} micro-batches: its readers found no usable sample in a whole pass over their shards "
            "(see the bad-sample warnings above)"
        )

    def _train_batches(self, epoch: int, start: int):
        if self.streaming:
            return self._stream_batches(epoch, start)
        self._train_sampler.set_epoch(epoch, start)
        return iter(self._train_loader)

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

    def _loss_divisor(self) -> float:
        """What ``accelerator.backward`` divides the loss by: the engine's accumulation under DeepSpeed, else Accelerate's."""
        if distributed_type(self.accelerator) == "DEEPSPEED":
            steps = getattr(self.module, "gradient_accumulation_steps", None)
            return float(steps() if callable(steps) else self.accumulation)
        return float(self.accelerator.gradient_accumulation_steps)

    def _train_step(self, micro_batches: list[dict[str, Any]], step: int) -> tuple[dict[str, float], bool]:
        """One optimizer step over the micro-batches of an accumulation window; returns (figures, stopped)."""
        import torch

        acc = self.accelerator
        skipped = sum(float(b.pop(STREAM_SKIPPED_KEY, 0)) for b in micro_batches)  # a streaming set's bad samples
        counts = sum(self.task.counts(b).to(torch.float64) for b in micro_batches)
        examples = sum(_batch_size(b) for b in micro_batches)
        # The counts of the whole window on every process, its examples, and whether any process was
        # asked to stop, in one collective: every process takes the same decision at the same boundary.
        flag = 1.0 if self._stop_requested() else 0.0
        shared = self._reduce_sum(torch.cat([counts, torch.tensor([examples, skipped, flag], dtype=torch.float64)]).to(self.device))
        if float(shared[-1]) > 0:
            return {}, True
        global_counts = shared[:-3]
        # Each micro-batch's sums divided by the window's global counts; times the process count
        # because the data-parallel gradient reduction averages over processes.
        scale = (self.term_weights / global_counts.clamp(min=1) * self.num_processes).float()
        self.module.train()
        # accelerate.accumulate syncs (and DeepSpeed's engine steps) at the window's last micro-batch;
        # a window can be shorter than the accumulation at an epoch's end, hence set per window.
        # accelerator.backward divides by the accumulation: multiplied back, the scale above is the loss.
        if distributed_type(acc) != "DEEPSPEED":
            acc.gradient_accumulation_steps = len(micro_batches)
        acc.step = 0
        divisor = self._loss_divisor()
        local_sums = torch.zeros_like(global_counts)
        for batch in micro_batches:
            with acc.accumulate(self.module):
                sums = self.module(**self.task.model_inputs(self._to_device(batch)))
                acc.backward((sums.float() * scale).sum() * divisor)
            local_sums += sums.detach().to(torch.float64)
        figures = self._figures(self._reduce_sum(local_sums), global_counts)
        figures["examples"] = float(shared[-3])
        figures["bad_samples"] = float(shared[-2])
        if not math.isfinite(figures["loss"]):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(self._non_finite_message(step, "the loss", figures))
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        norm = acc.clip_grad_norm_(self.module.parameters(), max_norm)  # None under DeepSpeed before its first step
        grad_norm = float(norm) if norm is not None else None
        fp16 = acc.mixed_precision == "fp16"
        if grad_norm is not None and not math.isfinite(grad_norm) and not fp16:
            # (with fp16 the gradient scaler skips such steps by design)
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(self._non_finite_message(step, "the gradient norm", {**figures, "grad_norm": grad_norm}))
        self.optimizer.step()
        skipped = bool(acc.optimizer_step_was_skipped)
        if not skipped and not self._plateau:  # fp16: the gradient scaler skipped an overflowing step
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # A skipped fp16 step's norm is infinite by design: it stays out of the logged average.
        if grad_norm is not None and math.isfinite(grad_norm) and not skipped:
            figures["grad_norm"] = grad_norm
        figures["skipped"] = float(skipped)
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
        """Every process: the validation loss (prepared module) and the task's figures (broadcast from the main process)."""
        import torch

        task, acc = self.task, self.accelerator
        self.module.eval()
        figures: dict[str, float] = {}
        if self._val_loader is not None:
            num_terms = len(task.loss_terms.weights)
            sums = torch.zeros(num_terms, dtype=torch.float64, device=self.device)
            counts = torch.zeros(num_terms, dtype=torch.float64, device=self.device)
            with torch.no_grad():
                for batch in self._val_loader:
                    counts += task.counts(batch).to(device=self.device, dtype=torch.float64)
                    sums += self.module(**task.model_inputs(self._to_device(batch))).to(torch.float64)
            values = self._figures(self._reduce_sum(sums), self._reduce_sum(counts), omit_empty=True)
            figures = {f"val_{name}": value for name, value in values.items()}
        extra: dict[str, float] = {}
        module = acc.unwrap_model(self.module)
        if _takes(task.extra_validation, "context"):
            with torch.no_grad(), full_parameters(acc, self.module):
                extra = task.extra_validation(module, step, ValidationContext(acc)) or {}
        elif self.is_main_process:  # the earlier contract: the main process alone
            extra = task.extra_validation(module, step)
        if self.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            extra = broadcast_object_list([extra if self.is_main_process else {}])[0]
        self.module.train()
        return {**figures, **extra}

    def _is_better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best["value"] if self.config.greater_is_better else value < self.best["value"]

    # ------------------------------------------------------------------ saving
    def _export(self, name: str, step: int, epoch: int, figures: dict[str, float] | None) -> Path:
        """Every process gathers the full weights; the main process commits the task's export to ``<output>/<name>``."""
        acc = self.accelerator
        state_dict = acc.get_state_dict(self.module)  # a collective under FSDP / ZeRO-3
        final = self.output_dir / name
        if self.is_main_process:
            tmp = self.output_dir / f"{ckpt.TMP_PREFIX}{name}"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            # (keep_fp32_wrapper=False would strip the mixed-precision wrapper from the live module for good)
            module = acc.unwrap_model(self.module)
            if _takes(self.task.export, "state_dict"):
                self.task.export(module, tmp, state_dict=state_dict)
            else:
                if is_sharded(acc):
                    raise ConfigError(
                        f"{type(self.task).__name__}.export(module, directory) cannot export a sharded model: "
                        "accept state_dict (see TrainingTask.export)"
                    )
                self.task.export(module, tmp)
            module.train()
            info = {"step": step, "epoch": epoch, "total_steps": self.total_steps, "validation": figures or {},
                    "global_batch": self.config.train_batch_size}
            (tmp / EXPORT_STATE_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            ckpt.commit_directory(tmp, final)
        acc.wait_for_everyone()
        return final

    def _save_checkpoint(self, step: int, epoch: int, micro_batch: int) -> Path:
        """Every process: save the full training state after ``step`` (position: micro-batch ``micro_batch`` of ``epoch``)."""
        acc, cfg = self.accelerator, self.config
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
                    # The position as examples: a run on another process count / accumulation resumes from it.
                    "examples_into_epoch": micro_batch * self.global_micro_batch,
                    "bad_samples": self.bad_samples,
                    **({"stream_layout": self._stream_layout()} if self.streaming else {}),
                    "total_steps": self.total_steps,
                    "best": self.best,
                    "last_validation": self.last_validation,
                    "validation_step": self.validation_step,
                    "validations_since_best": self.validations_since_best,
                    "stopped_early": self.stopped_early,
                    "log_window": self.window.state(),
                    "num_processes": self.num_processes,
                    "distributed_type": distributed_type(acc),
                    "geometry": dataclasses.asdict(self.geometry),
                    "fingerprint": self.fingerprint(),
                    "settings": dataclasses.asdict(cfg),
                    "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
            ckpt.commit_directory(tmp, final)
            removed = ckpt.prune_checkpoints(
                self.output_dir, cfg.checkpoints_total_limit, keep_best=cfg.keep_best_checkpoints,
                metric=cfg.best_metric, greater_is_better=cfg.greater_is_better,
            )
            for path in removed:
                logger.info("removed old checkpoint %s", path)
            logger.info("saved checkpoint %s", final)
        acc.wait_for_everyone()
        self.last_checkpoint = final
        self.last_saved_step = step
        if self.best is not None and self.best["step"] == step:
            self.best_checkpoint = final
        return final

    # ------------------------------------------------------------------ logging
    def _log_train(self, step: int, epoch: int, figures: dict[str, float], examples: int, lr: float, seconds: float) -> None:
        skipped = bool(figures.pop("skipped", 0.0))
        self.window.add(figures, examples=examples, seconds=seconds, skipped=skipped)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{figures['loss']:.4f}", lr=f"{lr:.3g}")
        if step % self.config.logging_steps and step != self.total_steps:
            return
        values = self.window.summary()
        values.update(epoch=epoch, lr=lr, global_batch=self.config.train_batch_size)
        if self.streaming:
            values["bad_samples_total"] = self.bad_samples
            if self.bad_samples > self._bad_samples_logged and self.is_main_process:
                logger.warning("%d bad training sample(s) skipped so far (step %d)", self.bad_samples, step)
            self._bad_samples_logged = self.bad_samples
        if self.log is not None:
            self.log.write("train", step, values)
        self.window = StepWindow()

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
        resume_from = ckpt.find_checkpoint(self.output_dir, cfg.resume)
        self._prepare()
        # One dropout stream per process (the model itself was built before, identically everywhere).
        set_seed(self.seed, device_specific=True)

        self.best: dict[str, Any] | None = None
        self.best_checkpoint: Path | None = None
        self.last_validation: dict[str, float] | None = None
        self.validation_step: int | None = None
        self.window = StepWindow()
        self.last_checkpoint: Path | None = None
        self.last_saved_step = -1
        self.validations_since_best = 0  # early stopping's count
        self.stopped_early: str | None = None
        self.bad_samples = 0
        step, epoch, micro_batch = 0, 0, 0
        if resume_from is not None:
            state = self._load_checkpoint(resume_from)
            step, epoch, micro_batch = int(state["global_step"]), int(state["epoch"]), int(state["micro_batch"])
            self.best = state.get("best")
            self.last_validation = state.get("last_validation")
            self.validation_step = state.get("validation_step")
            self.window = StepWindow(state.get("log_window"))
            self.validations_since_best = int(state.get("validations_since_best", 0))
            self.stopped_early = state.get("stopped_early")
            self.last_checkpoint, self.last_saved_step = resume_from, step
            if self.best is not None:
                candidate = ckpt.checkpoint_dir(self.output_dir, self.best["step"])
                self.best_checkpoint = candidate if candidate.is_dir() else None
            if self.is_main_process:
                for moved in ckpt.set_aside_later_checkpoints(self.output_dir, resume_from):
                    logger.warning("%s: after the resumed step, so set aside (a later resume=auto will not pick it)", moved)
            acc.wait_for_everyone()
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
        self._bad_samples_logged = self.bad_samples

        if self.is_main_process:
            for name, text in self.task.run_files().items():
                tmp = self.output_dir / f"{ckpt.TMP_PREFIX}{name}"
                tmp.write_text(text)
                os.replace(tmp, self.output_dir / name)
        self.log = (
            TrainingLog(self.output_dir, report_to=cfg.report_to, resume_step=step if resume_from else None,
                        run_config=dataclasses.asdict(cfg), wandb_project=cfg.wandb_project)
            if self.is_main_process else None
        )
        self.progress = (
            tqdm(total=self.total_steps, initial=min(step, self.total_steps), desc="training", unit="step",
                 file=sys.stderr, dynamic_ncols=True, disable=not cfg.progress)
            if self.is_main_process else None
        )
        if self.is_main_process:
            logger.info(
                "training %d optimizer steps (%d epoch(s) of %d steps) on %d examples: %s%s",
                self.total_steps, self.num_epochs, self.steps_per_epoch, self.num_train_examples, self.geometry.describe(),
                ", length-bucketed" if self.lengths is not None else ", streamed" if self.streaming else "",
            )
        try:
            status = self._loop(step, epoch, micro_batch)
            final_dir = None
            if status == "completed":
                final_dir = self.output_dir / FINAL_DIR
                if not self._final_is_current(final_dir, resume_from):
                    self._export(FINAL_DIR, self.step, self.epoch, self.last_validation)
                    if self.is_main_process:
                        logger.info("final model written to %s", final_dir)
            best_dir = self.output_dir / BEST_DIR
            result = TrainingResult(
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
                geometry=self.geometry,
                best_checkpoint=self.best_checkpoint if self.best_checkpoint is not None and self.best_checkpoint.is_dir() else None,
                stopped_early=self.stopped_early,
                bad_samples=self.bad_samples if self.streaming else None,
            )
            if self.is_main_process:
                logger.info("summary: %s", result.summary())
                if self.log is not None:
                    self.log.summary(_summary_values(result))
        finally:
            if self.progress is not None:
                self.progress.close()
            if self.log is not None:
                self.log.close()
        return result

    def _final_is_current(self, directory: Path, resume_from: Path | None) -> bool:
        """True when this invocation only resumed a finished run whose final export is of the same step.

        A fresh run, or one that trained any step, always exports: an earlier run in the same directory
        may have left a final/ of the same step count. (The same answer on every process: the export is collective.)
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
        if self.stopped_early:
            patience = cfg.early_stopping_patience
            if patience and self.validations_since_best >= patience:
                logger.info("training stopped early at step %d (%s); not training further", step, self.stopped_early)
                return "completed"
            # the settings changed (patience raised or early stopping off): the run would not have stopped here
            logger.warning("continuing a run that stopped early at step %d (%s): early_stopping_patience is now %d",
                           step, self.stopped_early, patience)
            self.stopped_early = None
        for epoch in range(epoch, self.num_epochs):
            self.epoch = epoch
            batches = self._train_batches(epoch, micro_batch)
            while micro_batch < self.micro_batches and step < self.total_steps:
                started = time.perf_counter()  # throughput counts the steps alone: not validation, saving or resuming
                take = min(self.accumulation, self.micro_batches - micro_batch)
                window = [next(batches) for _ in range(take)]
                figures, stopped = self._train_step(window, step + 1)
                if stopped:
                    if self.last_saved_step != step:
                        self._save_checkpoint(step, epoch, micro_batch)
                    logger.warning("stopped at step %d; rerun the same command to resume", step)
                    return "interrupted"
                seconds = time.perf_counter() - started
                step += 1
                micro_batch += take
                self.step = step
                examples = int(figures.pop("examples"))
                self.bad_samples += int(figures.pop("bad_samples"))
                self._log_train(step, epoch, figures, examples, float(self.scheduler.get_last_lr()[0]), seconds)
                epoch_end = micro_batch >= self.micro_batches
                last = step >= self.total_steps
                if epoch_end or last or (cfg.eval_steps and step % cfg.eval_steps == 0):
                    self._run_validation(step, epoch)
                if epoch_end or last or self.stopped_early or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    self._save_checkpoint(step, epoch, micro_batch)
                if self.stopped_early:
                    logger.warning("stopped early at step %d of %d: %s", step, self.total_steps, self.stopped_early)
                    return "completed"
                if self._stopped_by_validation and not last:
                    if self.last_saved_step != step:
                        self._save_checkpoint(step, epoch, micro_batch)
                    logger.info("stopped at step %d by the validation callback", step)
                    return "stopped"
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
        self.validation_step = step
        if self.log is not None:
            self.log.write("validation", step, {"epoch": epoch, **figures})
        if self.is_main_process:
            logger.info("validation at step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in figures.items()))
        cfg = self.config
        value = figures.get(cfg.best_metric)
        measured = value is not None and math.isfinite(value)
        if measured and self._is_better(value):
            self.best = {"metric": cfg.best_metric, "value": value, "step": step, "figures": dict(figures)}
            self.validations_since_best = 0
            self._export(BEST_DIR, step, epoch, figures)
            if self.is_main_process:
                logger.info("new best %s=%.4f at step %d: exported to %s", cfg.best_metric, value, step, self.output_dir / BEST_DIR)
        else:
            self.validations_since_best += 1
        if self._plateau:
            if measured:
                before = float(self.scheduler.get_last_lr()[0])
                self.scheduler.step(value)
                after = float(self.scheduler.get_last_lr()[0])
                if after < before and self.is_main_process:
                    logger.info("%s has not improved for %d validation(s): learning rate cut from %.3g to %.3g",
                                cfg.best_metric, cfg.plateau_patience + 1, before, after)
            elif self.is_main_process:
                logger.warning("validation at step %d gave no finite %s: the plateau schedule is not stepped", step, cfg.best_metric)
        if cfg.early_stopping_patience and self.validations_since_best >= cfg.early_stopping_patience:
            best = f"; best {self.best['value']:.4f} at step {self.best['step']}" if self.best else ""
            self.stopped_early = (f"{cfg.best_metric} did not improve for {self.validations_since_best} validation(s) "
                                  f"(early_stopping_patience={cfg.early_stopping_patience}){best}")
            if self.log is not None:
                self.log.write("early_stop", step, {"reason": self.stopped_early, "epoch": epoch})
        if self.on_validation is not None:
            stop = bool(self.on_validation(step, dict(figures))) if self.is_main_process else False
            if self.num_processes > 1:  # the main process decides; every process stops at the same step
                from accelerate.utils import broadcast_object_list

                stop = broadcast_object_list([stop])[0]
            self._stopped_by_validation = stop
        self.accelerator.wait_for_everyone()


def _summary_values(result: TrainingResult) -> dict[str, Any]:
    values: dict[str, Any] = {"global_step": result.global_step, "status": result.status}
    if result.stopped_early:
        values["stopped_early"] = result.stopped_early
    if result.geometry is not None:
        values["global_batch"] = result.geometry.global_batch
    if result.bad_samples is not None:
        values["bad_samples"] = result.bad_samples
    if result.best:
        values.update({f"best/{k}": v for k, v in (result.best.get("figures") or {}).items()})
        values.update({"best/metric": result.best["metric"], "best/value": result.best["value"], "best/step": result.best["step"]})
    return values


def run_training(
    task: TrainingTask,
    config: LoopConfig,
    *,
    output_dir: str | os.PathLike,
    seed: int,
    accelerator: "Accelerator | None" = None,
    on_validation: "Callable[[int, dict[str, float]], bool | None] | None" = None,
) -> TrainingResult:
    """Train ``task`` with ``config`` into ``output_dir`` (resuming per ``config.resume``); see :class:`Trainer`.

    ``on_validation(step, figures)``, called on the main process after each validation, stops the run
    (checkpoint saved, status ``"stopped"``) by returning True.
    """
    return Trainer(task, config, output_dir=output_dir, seed=seed, accelerator=accelerator, on_validation=on_validation).run()


__all__ = [
    "BEST_DIR",
    "FINAL_DIR",
    "MIXED_PRECISION",
    "LoopConfig",
    "LossTerms",
    "NonFiniteLossError",
    "Trainer",
    "TrainingResult",
    "TrainingTask",
    "ValidationContext",
    "build_scheduler",
    "make_accelerator",
    "parameter_groups",
    "run_training",
]
