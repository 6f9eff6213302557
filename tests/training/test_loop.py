"""The model-agnostic training loop, on a toy regression task: exact resume, accumulation, signals, NaN, checkpoints."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

from enclap.errors import CheckpointError, ConfigError
from enclap.training.checkpoints import list_checkpoints, remove_stale_temporaries
from enclap.training.loop import LoopConfig, LossTerms, NonFiniteLossError, Trainer, TrainingTask, parameter_groups
from enclap.training.sampling import EpochBatchSampler, epoch_order, micro_batches_per_epoch
from enclap.training.tracking import LOG_FILE, read_train_log

from ..conftest import torch_threads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_TRAIN, NUM_VAL = 22, 6


class Points:
    """x in R^4 -> y in R^2; a training item (epoch, index) adds noise drawn from (epoch, index) alone."""

    def __init__(self, count: int, seed: int, noisy: bool) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((count, 4)).astype(np.float32)
        self.y = np.stack([self.x[:, 0] - 2 * self.x[:, 1], self.x[:, 2] * self.x[:, 3]], axis=1).astype(np.float32)
        self.noisy = noisy

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, item):
        epoch, index = item if isinstance(item, tuple) else (0, item)
        x = self.x[index]
        if self.noisy:
            x = x + 0.05 * np.random.default_rng([epoch, index]).standard_normal(4).astype(np.float32)
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(self.y[index]), "index": index}


def collate(items):
    return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}


class Regressor(nn.Module):
    """Returns the two loss-term sums (squared error of each output) of a batch; ``hook(self)`` runs in training."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.LayerNorm(16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))
        self.calls = 0
        self.hook = None

    def forward(self, x, y):
        sums = ((self.net(x) - y) ** 2).sum(dim=0)
        if self.training:
            self.calls += 1
            if self.hook is not None and self.hook(self):
                sums = sums * float("nan")
        return sums


class ToyTask(TrainingTask):
    def __init__(self, dropout: float = 0.3, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.module = Regressor(dropout)
        self.loss_terms = LossTerms(weights=[1.0, 0.5], groups={"first": [0], "second": [1]})
        self.train_dataset = Points(NUM_TRAIN, 1, noisy=True)
        self.val_dataset = Points(NUM_VAL, 2, noisy=False)
        self.collate_fn = collate
        self.exports = []

    def counts(self, batch):
        n = float(len(batch["x"]))
        return torch.tensor([n, n], dtype=torch.float64)

    def fingerprint(self):
        return {"width": 16}

    def export(self, module, directory):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(directory / "weights.safetensors"))
        self.exports.append(directory.name)


def loop_config(**overrides) -> LoopConfig:
    values = dict(
        num_train_epochs=3, train_batch_size=4, per_device_eval_batch_size=4, learning_rate=0.05,
        lr_scheduler_type="linear", num_warmup_steps=2, max_grad_norm=1.0, report_to="none",
        dataloader_num_workers=0, progress=False, logging_steps=1, checkpoints_total_limit=0,
    )
    values.update(overrides)
    return LoopConfig(**values)


def train(output, config=None, *, task=None, seed=5, hook=None):
    task = task or ToyTask()
    trainer = Trainer(task, config or loop_config(), output_dir=output, seed=seed)
    if hook is not None:
        task.module.hook = lambda module: hook(trainer, module)
    result = trainer.run()
    return result, {k: v.detach().clone() for k, v in task.module.state_dict().items()}


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def losses(output, kind="train", names=("loss", "first", "second")):
    return {e["step"]: tuple(e[n] for n in names) for e in read_train_log(output) if e["type"] == kind}


def stop_at(call):
    def hook(trainer, module):
        if module.calls == call:
            trainer.request_stop()
    return hook


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run of every resume test: 3 epochs of 6 steps, dropout on, no interruption."""
    output = tmp_path_factory.mktemp("loop") / "uninterrupted"
    with torch_threads(1):  # as the tests compared with it (module fixtures run before one_torch_thread)
        result, weights = train(output)
    return output, result, weights


# --------------------------------------------------------------------------------------------- resume


def test_resume_mid_epoch_equals_an_uninterrupted_run(uninterrupted, tmp_path):
    reference_dir, reference, reference_weights = uninterrupted
    assert reference.status == "completed" and reference.global_step == reference.total_steps == 18
    output = tmp_path / "run"
    first, _ = train(output, hook=stop_at(8))  # step 8: the second step of epoch 2
    assert first.status == "interrupted" and first.global_step == 8
    assert [step for step, _ in list_checkpoints(output)] == [6, 8]
    state = json.loads((output / "checkpoints" / "step_8" / "loop_state.json").read_text())
    assert (state["epoch"], state["micro_batch"]) == (1, 2)
    # A line an interrupted run might have logged past its checkpoint is dropped on resume.
    with open(output / LOG_FILE, "a") as fh:
        fh.write(json.dumps({"type": "train", "step": 9, "loss": -1.0, "first": 0, "second": 0}) + "\n")

    second, weights = train(output, task=ToyTask(seed=123))  # other initial weights: all must come from the checkpoint
    assert second.status == "completed" and second.resumed_from == output / "checkpoints" / "step_8"
    assert_same_weights(weights, reference_weights)
    assert losses(output) == losses(reference_dir)
    assert sorted(losses(output)) == list(range(1, 19))
    assert losses(output, "validation", ("val_loss", "val_first")) == losses(reference_dir, "validation", ("val_loss", "val_first"))


def test_resume_with_accumulation_and_loader_workers_equals_an_uninterrupted_run(tmp_path):
    config = loop_config(gradient_accumulation_steps=2, train_batch_size=4, dataloader_num_workers=2, num_train_epochs=2)
    reference, reference_weights = train(tmp_path / "reference", config)
    assert reference.total_steps == 12  # 11 micro-batches of 2 per epoch, 2 per step
    interrupted, _ = train(tmp_path / "run", config, hook=stop_at(9))  # during step 5 of epoch 1 (calls 9-10)
    assert interrupted.status == "interrupted" and interrupted.global_step == 5
    resumed, weights = train(tmp_path / "run", config)
    assert resumed.status == "completed"
    assert_same_weights(weights, reference_weights)
    assert losses(tmp_path / "run") == losses(tmp_path / "reference")


@pytest.mark.parametrize("stop", [False, True], ids=["completed", "interrupted"])
def test_a_run_leaves_no_loader_workers_behind(tmp_path, stop):
    """Loader workers ignore SIGTERM (they must outlive a Ctrl-C while the checkpoint is saved), so a worker still
    alive after run() makes the program's exit wait on it forever (seen in a benchmark that trained many models)."""
    before = set(multiprocessing.active_children())
    task = ToyTask()
    trainer = Trainer(task, loop_config(dataloader_num_workers=2, num_train_epochs=1), output_dir=tmp_path, seed=5)
    if stop:
        task.module.hook = lambda module: stop_at(3)(trainer, module)
    result = trainer.run()  # the trainer stays referenced: the run itself must have stopped its workers
    assert result.status == ("interrupted" if stop else "completed")
    assert [p for p in multiprocessing.active_children() if p not in before] == []


def test_sigterm_saves_a_checkpoint_and_the_rerun_completes(uninterrupted, tmp_path):
    reference_dir, _, reference_weights = uninterrupted
    previous = signal.getsignal(signal.SIGTERM)

    def hook(trainer, module):
        if module.calls == 11:
            os.kill(os.getpid(), signal.SIGTERM)

    output = tmp_path / "run"
    first, _ = train(output, hook=hook)
    assert (first.status, first.signal, first.global_step) == ("interrupted", "SIGTERM", 11)
    assert first.last_checkpoint == output / "checkpoints" / "step_11"
    assert signal.getsignal(signal.SIGTERM) is previous  # the loop's handler is gone again
    second, weights = train(output)
    assert second.status == "completed"
    assert_same_weights(weights, reference_weights)
    assert losses(output) == losses(reference_dir)


def test_the_validation_callback_sees_each_validation_and_stops_the_run_resumably(uninterrupted, tmp_path):
    reference_dir, _, reference_weights = uninterrupted
    seen = []

    def on_validation(step, figures):
        seen.append((step, figures["val_loss"]))
        return step == 12  # e.g. a pruned trial

    output = tmp_path / "run"
    trainer = Trainer(ToyTask(), loop_config(), output_dir=output, seed=5, on_validation=on_validation)
    stopped = trainer.run()
    assert (stopped.status, stopped.global_step) == ("stopped", 12)
    assert stopped.last_checkpoint == output / "checkpoints" / "step_12"
    assert seen == [(s, v[0]) for s, v in sorted(losses(output, "validation", ("val_loss",)).items())]
    assert [s for s, _ in seen] == [6, 12]
    resumed, weights = train(output)  # no callback: it continues to the end as if never stopped
    assert resumed.status == "completed" and resumed.resumed_from == output / "checkpoints" / "step_12"
    assert_same_weights(weights, reference_weights)
    # a callback asking to stop at the last validation changes nothing: the run is complete
    last = Trainer(ToyTask(), loop_config(), output_dir=tmp_path / "last", seed=5, on_validation=lambda s, f: True).run()
    assert (last.status, last.global_step) == ("stopped", 6)
    whole = Trainer(ToyTask(), loop_config(num_train_epochs=1), output_dir=tmp_path / "one", seed=5,
                    on_validation=lambda s, f: True).run()
    assert (whole.status, whole.global_step) == ("completed", 6)


def test_a_finished_run_rerun_does_nothing_and_keeps_its_model(uninterrupted):
    output, reference, weights = uninterrupted
    before = (output / "final" / "weights.safetensors").read_bytes()
    task = ToyTask(seed=9)
    again, after = train(output, task=task)
    assert again.status == "completed" and again.global_step == reference.global_step
    assert task.module.calls == 0 and task.exports == []
    assert_same_weights(after, weights)
    assert (output / "final" / "weights.safetensors").read_bytes() == before


def test_more_epochs_continue_a_finished_run(tmp_path):
    config = loop_config(lr_scheduler_type="constant", num_train_epochs=1)
    train(tmp_path / "run", config)
    longer = loop_config(lr_scheduler_type="constant", num_train_epochs=2)
    extended, weights = train(tmp_path / "run", longer)
    assert extended.resumed_from == tmp_path / "run" / "checkpoints" / "step_6" and extended.global_step == 12
    _, direct = train(tmp_path / "direct", longer)
    assert_same_weights(weights, direct)


# --------------------------------------------------------------------------------------------- the loss


def test_accumulation_and_micro_batch_size_do_not_change_the_steps(tmp_path):
    common = dict(dropout=0.0)
    results = {}
    for batch, accumulation in ((8, 1), (4, 2), (2, 4)):
        config = loop_config(train_batch_size=8, per_device_train_batch_size=batch, num_train_epochs=2)
        assert 8 // batch == accumulation
        output = tmp_path / f"b{batch}"
        result, weights = train(output, config, task=ToyTask(**common))
        assert result.total_steps == 6  # steps of 8, 8 and 6 examples per epoch in every variant
        results[batch] = (weights, losses(output))
    for batch in (4, 2):
        assert_same_weights(results[batch][0], results[8][0], atol=1e-6)
        for step, values in results[8][1].items():
            np.testing.assert_allclose(results[batch][1][step], values, rtol=1e-6)


def test_the_step_loss_is_the_weighted_mean_over_the_step_examples(tmp_path):
    task = ToyTask(dropout=0.0)
    initial = {k: v.clone() for k, v in task.module.state_dict().items()}
    train(tmp_path / "run", loop_config(num_train_epochs=1), task=task, seed=5)
    first = [e for e in read_train_log(tmp_path / "run") if e["type"] == "train"][0]
    # Recompute step 1 by hand: its examples, the initial weights, mean squared error per output.
    model = Regressor(0.0)
    model.load_state_dict(initial)
    order = epoch_order(NUM_TRAIN, 5, 0)[:4]
    items = [task.train_dataset[(0, int(i))] for i in order]
    x, y = torch.stack([i["x"] for i in items]), torch.stack([i["y"] for i in items])
    with torch.no_grad():
        err = (model.net(x) - y) ** 2
    assert first["first"] == pytest.approx(float(err[:, 0].mean()), rel=1e-6)
    assert first["second"] == pytest.approx(0.5 * float(err[:, 1].mean()), rel=1e-6)
    assert first["loss"] == pytest.approx(first["first"] + first["second"], rel=1e-12)
    assert first["examples_per_second"] > 0 and first["lr"] == pytest.approx(0.025)  # warm-up step 1 of 2


# --------------------------------------------------------------------------------------------- failures


def test_a_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    output = tmp_path / "run"
    seen = {}

    def hook(trainer, module):
        if module.calls == 7:
            path = output / "checkpoints" / "step_6" / "model.safetensors"
            seen["hash"] = hashlib.sha256(path.read_bytes()).hexdigest()
            return True
        return False

    with pytest.raises(NonFiniteLossError, match=r"step 7: the loss is not finite \(loss=nan") as info:
        train(output, loop_config(checkpointing_steps="3"), hook=hook)
    assert str(output / "checkpoints" / "step_6") in str(info.value)
    assert [step for step, _ in list_checkpoints(output)] == [3, 6]
    assert hashlib.sha256((output / "checkpoints" / "step_6" / "model.safetensors").read_bytes()).hexdigest() == seen["hash"]
    assert not [p for p in (output / "checkpoints").iterdir() if p.name.startswith(".")]
    # The run resumes from step 6 once the cause is gone.
    result, _ = train(output, loop_config(checkpointing_steps="3"))
    assert result.status == "completed" and result.resumed_from.name == "step_6"


def test_only_the_last_checkpoints_are_kept(tmp_path):
    result, _ = train(tmp_path / "run", loop_config(checkpointing_steps="4", checkpoints_total_limit=2))
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [16, 18]
    assert result.last_checkpoint.name == "step_18"


def test_damaged_checkpoints_are_refused_clearly(tmp_path):
    output = tmp_path / "run"
    train(output, loop_config(num_train_epochs=1))
    latest = output / "checkpoints" / "step_6"
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"step_6: the checkpoint cannot be loaded .*damaged"):
        train(output, loop_config(num_train_epochs=2))
    (latest / "loop_state.json").unlink()
    with pytest.raises(CheckpointError, match=r"step_6: not a training checkpoint of this project \(no loop_state.json\)"):
        train(output, loop_config(num_train_epochs=2))
    (latest / "loop_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"loop_state.json: unreadable"):
        train(output, loop_config(num_train_epochs=2))


def test_a_checkpoint_of_a_different_run_is_refused_with_the_differences(tmp_path):
    output = tmp_path / "run"
    train(output, loop_config(num_train_epochs=1))
    with pytest.raises(CheckpointError, match=r"loop.seed: checkpoint 5, now 6"):
        train(output, loop_config(num_train_epochs=2), seed=6)
    with pytest.raises(CheckpointError, match=r"loop.train_batch_size: checkpoint 4, now 8"):
        train(output, loop_config(num_train_epochs=2, train_batch_size=8))
    task = ToyTask()
    task.fingerprint = lambda: {"width": 32}
    with pytest.raises(CheckpointError, match=r"task.width: checkpoint 16, now 32"):
        train(output, loop_config(num_train_epochs=2), task=task)
    with pytest.raises(ConfigError, match=r"already holds checkpoints \(latest: step_6\) and resume=never"):
        train(output, loop_config(resume="never"))
    with pytest.raises(CheckpointError, match=r"no such checkpoint directory"):
        train(output, loop_config(resume=str(tmp_path / "nowhere")))


def test_optimizer_settings_changed_on_resume_apply_from_the_resumed_step(tmp_path, caplog):
    output = tmp_path / "run"
    train(output, loop_config(num_train_epochs=1, lr_scheduler_type="constant"))
    with caplog.at_level("WARNING", logger="enclap.training.loop"):
        result, _ = train(output, loop_config(num_train_epochs=2, lr_scheduler_type="constant", learning_rate=0.01, weight_decay=0.5))
    assert result.resumed_from.name == "step_6"
    assert "learning_rate: checkpoint 0.05, now 0.01" in caplog.text
    rates = {e["step"]: e["lr"] for e in read_train_log(output) if e["type"] == "train"}
    assert [rates[s] for s in range(1, 13)] == [0.05] * 6 + [0.01] * 6
    optimizer = torch.load(output / "checkpoints" / "step_12" / "optimizer.bin", weights_only=True)
    assert [group["weight_decay"] for group in optimizer["param_groups"]] == [0.5, 0.0]
    # Unchanged settings restore exactly (the resume tests above compare whole runs bit for bit).


def test_resume_from_a_named_checkpoint(tmp_path):
    output = tmp_path / "run"
    train(output, loop_config(checkpointing_steps="2", num_train_epochs=1))
    result, _ = train(tmp_path / "other", loop_config(resume=str(output / "checkpoints" / "step_4"), num_train_epochs=1))
    assert result.resumed_from == output / "checkpoints" / "step_4" and result.global_step == 6


def test_best_metric_exports_the_best_model(tmp_path):
    task = ToyTask()
    result, _ = train(tmp_path / "run", loop_config(eval_steps=2), task=task)
    validations = losses(tmp_path / "run", "validation", ("val_loss",))
    best_step = min(validations, key=lambda step: validations[step][0])
    assert {k: result.best[k] for k in ("metric", "value", "step")} == {"metric": "val_loss", "value": validations[best_step][0], "step": best_step}
    assert result.best["figures"]["val_loss"] == validations[best_step][0]
    state = json.loads((tmp_path / "run" / "best" / "training_state.json").read_text())
    assert state["step"] == best_step and state["validation"]["val_loss"] == validations[best_step][0]
    assert (tmp_path / "run" / "final" / "weights.safetensors").is_file()
    with pytest.raises(ConfigError, match=r"best_metric 'spider' is not a validation figure"):
        Trainer(ToyTask(), loop_config(best_metric="spider"), output_dir=tmp_path / "x", seed=1)


def test_config_validation_names_each_bad_setting():
    with pytest.raises(ValueError) as info:
        loop_config(learning_rate=0, lr_scheduler_type="reduce_lr_on_plateau", checkpointing_steps="often", mixed_precision="fp8").validate()
    text = str(info.value)
    for part in ("learning_rate must be > 0", "lr_scheduler_type must be one of", "checkpointing_steps must be 'epoch'", "mixed_precision must be one of"):
        assert part in text


# --------------------------------------------------------------------------------------------- pieces


def test_stale_temporaries_are_removed_and_a_moved_aside_checkpoint_restored(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".tmp-step_9").mkdir(parents=True)
    (root / ".old-step_4").mkdir()
    (root / ".old-step_4" / "loop_state.json").write_text("{}")
    (root / "step_6").mkdir()
    (root / ".old-step_6").mkdir()
    remove_stale_temporaries(root)
    assert sorted(p.name for p in root.iterdir()) == ["step_4", "step_6"]
    assert (root / "step_4" / "loop_state.json").read_text() == "{}"


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_processes_read_disjoint_parts_that_together_are_the_global_batch(processes):
    num_examples, per_device = 23, 2
    global_size = per_device * processes
    samplers = [
        EpochBatchSampler(num_examples, global_size, seed=4, epoch=1, process_index=p, num_processes=processes)
        for p in range(processes)
    ]
    parts = [list(s) for s in samplers]
    assert len({len(p) for p in parts}) == 1  # every process takes part in every step
    order = epoch_order(num_examples, 4, 1)
    for number, pieces in enumerate(zip(*parts)):
        indices = [index for piece in pieces for _, index in piece]
        assert indices == order[number * global_size : (number + 1) * global_size].tolist()
        assert all(epoch == 1 for piece in pieces for epoch, _ in piece)
    covered = [index for part in parts for batch in part for _, index in batch]
    dropped = num_examples - len(covered)
    assert len(set(covered)) == len(covered)
    assert dropped == (num_examples % global_size if num_examples % global_size < processes else 0)
    # Starting at micro-batch 3 reads exactly what is left.
    assert list(EpochBatchSampler(num_examples, global_size, seed=4, epoch=1, process_index=0, num_processes=processes, start=3)) == parts[0][3:]


def test_order_depends_on_seed_and_epoch_only():
    assert epoch_order(50, 1, 2).tolist() == epoch_order(50, 1, 2).tolist()
    assert epoch_order(50, 1, 2).tolist() != epoch_order(50, 1, 3).tolist()
    assert epoch_order(50, 1, 2).tolist() != epoch_order(50, 2, 2).tolist()
    assert micro_batches_per_epoch(10, 4, 2) == 3 and micro_batches_per_epoch(9, 4, 2) == 2 and micro_batches_per_epoch(9, 4, 1) == 3


def test_no_weight_decay_on_biases_and_normalisation():
    module = Regressor(0.0)
    decay, plain = parameter_groups(module, 0.01)
    assert decay["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(module.net[0].weight), id(module.net[4].weight)}
    assert {id(p) for p in plain["params"]} == {id(module.net[0].bias), id(module.net[1].weight), id(module.net[1].bias), id(module.net[4].bias)}


def test_bf16_mixed_precision_trains_and_a_later_full_precision_run_still_starts(tmp_path):
    result, weights = train(tmp_path / "bf16", loop_config(num_train_epochs=1, mixed_precision="bf16"))
    assert result.status == "completed"
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())  # fp32 master weights
    first, last = losses(tmp_path / "bf16")[1][0], losses(tmp_path / "bf16")[6][0]
    assert np.isfinite(first) and np.isfinite(last)
    again, _ = train(tmp_path / "fp32", loop_config(num_train_epochs=1))
    assert again.status == "completed"


# --------------------------------------------------------------------------------------------- a fresh run in a used directory


def test_a_fresh_run_exports_its_own_final_model_and_claims_no_earlier_best(tmp_path):
    output = tmp_path / "run"
    first, first_weights = train(output, loop_config(num_train_epochs=1))
    assert first.best_dir == output / "best" and first.final_dir == output / "final"
    # The checkpoints are deleted (to start over, or the run was killed before its first one) and a different
    # run of the same length starts fresh in the same directory, without a validation set.
    import shutil

    shutil.rmtree(output / "checkpoints")
    task = ToyTask(seed=123)
    task.val_dataset = None
    second, second_weights = train(output, loop_config(num_train_epochs=1), task=task, seed=6)
    assert second.resumed_from is None and second.global_step == first.global_step
    assert [name.removeprefix(".tmp-") for name in task.exports] == ["final"]  # although an earlier final/ of 6 steps was there
    from safetensors.torch import load_file

    assert_same_weights(load_file(output / "final" / "weights.safetensors"), second_weights)
    assert not all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)
    assert second.best is None and second.best_dir is None  # best/ is the earlier run's, not this one's


def test_a_fresh_run_hides_the_tensorboard_curves_of_an_earlier_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = tmp_path / "run"
    train(output, loop_config(num_train_epochs=1, report_to="tensorboard"))
    import shutil

    shutil.rmtree(output / "checkpoints")  # start over in the same directory
    train(output, loop_config(num_train_epochs=1, report_to="tensorboard"), task=ToyTask(seed=123), seed=6)
    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    logged = {step: values[0] for step, values in losses(output).items()}
    shown = [(event.step, event.value) for event in events.Scalars("train/loss")]
    assert [step for step, _ in shown] == sorted(logged)  # one curve: no step twice
    for step, value in shown:
        assert value == pytest.approx(logged[step], rel=1e-6)


# --------------------------------------------------------------------------------------------- global batches, launcher, policies


def test_the_global_batch_is_divided_by_processes_and_accumulation_or_refused():
    from enclap.training.distributed import batch_geometry

    g = batch_geometry(64, 8)
    assert (g.per_device, g.accumulation, g.global_micro_batch) == (8, 1, 64)
    g = batch_geometry(64, 4, per_device=8)
    assert (g.per_device, g.accumulation) == (8, 2) and "derived" in g.describe()
    g = batch_geometry(64, 2, launcher_accumulation=4)
    assert (g.per_device, g.accumulation) == (8, 4) and "launcher" in g.accumulation_source
    g = batch_geometry(64, 2, accumulation=2, launcher_accumulation=4)
    assert g.accumulation == 2 and "wins over the launcher's 4" in g.accumulation_source
    with pytest.raises(ConfigError, match=r"train_batch_size=64 \(the global batch\) does not divide into 3 process\(es\)"):
        batch_geometry(64, 3)
    with pytest.raises(ConfigError, match=r"not a multiple of 2 process\(es\) x train.per_device_train_batch_size=5"):
        batch_geometry(64, 2, per_device=5)
    with pytest.raises(ConfigError, match=r"per_device_train_batch_size=16 does not fit"):
        batch_geometry(64, 2, per_device=16, accumulation=4)


def test_launcher_accumulation_is_honoured_without_dividing_the_loss(tmp_path, monkeypatch):
    """`accelerate launch --gradient_accumulation_steps 2` = the same steps as the config's accumulation 2 (and as none)."""
    plain, plain_weights = train(tmp_path / "plain", loop_config(num_train_epochs=1), task=ToyTask(dropout=0.0))
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # the env is read when the Accelerator is made
    launched, launched_weights = train(tmp_path / "launched", loop_config(num_train_epochs=1), task=ToyTask(dropout=0.0))
    assert launched.geometry.accumulation == 2 and launched.geometry.per_device == 2
    assert "launcher" in launched.geometry.accumulation_source
    assert_same_weights(launched_weights, plain_weights, atol=1e-6)  # had the loss been divided by 2, they would differ
    np.testing.assert_allclose([v[0] for v in losses(tmp_path / "launched").values()],
                               [v[0] for v in losses(tmp_path / "plain").values()], rtol=1e-6)
    AcceleratorState._reset_state()


def test_launcher_mixed_precision_is_used_unless_the_config_sets_one(monkeypatch, caplog):
    from enclap.training.distributed import resolve_mixed_precision

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_mixed_precision("auto", cpu=True)[0] == "bf16"
    value, why = resolve_mixed_precision("no", cpu=True)
    assert value == "no" and "wins over the launcher's bf16" in why
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert resolve_mixed_precision("auto", cpu=True) == ("no", "full precision (train.mixed_precision=auto: CPU)")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert resolve_mixed_precision("fp16", cpu=True)[0] == "fp16"


def test_keep_best_k_keeps_exactly_the_k_best_checkpoints_and_the_latest(tmp_path):
    output = tmp_path / "run"
    result, _ = train(output, loop_config(checkpointing_steps="1", eval_steps=1, checkpoints_total_limit=1, keep_best_checkpoints=2, num_train_epochs=2))
    validation = {step: v[0] for step, v in losses(output, "validation", ("val_loss",)).items()}
    assert sorted(validation) == list(range(1, 13))
    two_best = sorted(sorted(validation, key=lambda s: (validation[s], s))[:2])
    kept = [step for step, _ in list_checkpoints(output)]
    assert kept == sorted(set(two_best) | {12})
    assert result.best_checkpoint is not None and result.best_checkpoint.name == f"step_{min(validation, key=validation.get)}"


def test_resuming_an_older_checkpoint_sets_the_later_ones_aside(tmp_path):
    output = tmp_path / "run"
    train(output, loop_config(checkpointing_steps="2", num_train_epochs=1))
    assert [s for s, _ in list_checkpoints(output)] == [2, 4, 6]
    older = output / "checkpoints" / "step_2"
    result, _ = train(output, loop_config(checkpointing_steps="2", num_train_epochs=1, max_train_steps=3, resume=str(older)))
    assert result.resumed_from == older and result.global_step == 3
    assert [s for s, _ in list_checkpoints(output)] == [2, 3]
    assert sorted(p.name for p in (output / "checkpoints" / "abandoned").iterdir()) == ["step_4", "step_6"]
    again, _ = train(output, loop_config(checkpointing_steps="2", num_train_epochs=1, max_train_steps=3))
    assert again.resumed_from.name == "step_3"  # not the abandoned step_6


def test_throughput_counts_training_steps_only(tmp_path, monkeypatch):
    """Validation and saving are slowed by 0.5 s each; the logged rate must not see it."""
    slow = {"on": True}
    original_validate, original_save = Trainer._validate, Trainer._save_checkpoint

    def slow_validate(self, step):
        import time as _time
        _time.sleep(0.5)
        return original_validate(self, step)

    def slow_save(self, *args):
        import time as _time
        _time.sleep(0.5)
        return original_save(self, *args)

    monkeypatch.setattr(Trainer, "_validate", slow_validate)
    monkeypatch.setattr(Trainer, "_save_checkpoint", slow_save)
    output = tmp_path / "run"
    train(output, loop_config(num_train_epochs=2, logging_steps=12, eval_steps=1, checkpointing_steps="1"))
    entry = [e for e in read_train_log(output) if e["type"] == "train"][-1]
    assert entry["step"] == 12
    # 12 steps of a tiny MLP take far less than 12 s; with the sleeps inside the window it would be < 1 step/s.
    assert entry["steps_per_second"] > 12 / 1.0
    # A resumed window keeps its seconds: the log line after a resume covers the steps before it as well.
    from enclap.training.tracking import StepWindow

    window = StepWindow()
    window.add({"loss": 1.0, "grad_norm": 2.0}, examples=4, seconds=0.5)
    restored = StepWindow(json.loads(json.dumps(window.state())))
    restored.add({"loss": 3.0}, examples=4, seconds=0.5, skipped=True)  # a skipped fp16 step has no norm
    summary = restored.summary()
    assert summary["loss"] == 2.0 and summary["grad_norm"] == 2.0 and summary["skipped_steps"] == 1
    assert summary["examples_per_second"] == 8.0 and summary["steps_per_second"] == 2.0


def test_an_infinite_norm_of_a_skipped_fp16_step_stays_out_of_the_logged_average(tmp_path, monkeypatch):
    from accelerate import Accelerator

    calls = {"n": 0}
    real_clip = Accelerator.clip_grad_norm_

    def clip(self, parameters, max_norm, norm_type=2):
        calls["n"] += 1
        norm = real_clip(self, parameters, max_norm, norm_type)
        return torch.tensor(float("inf")) if calls["n"] == 2 else norm

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", clip)
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(lambda self: calls["n"] == 2))
    monkeypatch.setattr(Accelerator, "mixed_precision", property(lambda self: "fp16"))
    output = tmp_path / "run"
    train(output, loop_config(num_train_epochs=1, logging_steps=3))
    first = [e for e in read_train_log(output) if e["type"] == "train"][0]
    assert first["step"] == 3 and first["skipped_steps"] == 1 and np.isfinite(first["grad_norm"])


def test_length_bucketing_groups_similar_lengths_per_step_and_keeps_every_example_once():
    from enclap.training.sampling import bucketed_order

    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 1000, size=203)
    order = bucketed_order(lengths, seed=3, epoch=1, step_batch_size=8, bucket_window=5)
    assert sorted(order.tolist()) == list(range(203))
    assert np.array_equal(order, bucketed_order(lengths, seed=3, epoch=1, step_batch_size=8, bucket_window=5))
    spread = lambda o: np.mean([np.ptp(lengths[o[i:i + 8]]) for i in range(0, 200, 8)])
    assert spread(order) < spread(epoch_order(203, 3, 1)) / 3
    # The same steps whatever the processes and the accumulation: only the global batch (8) matters.
    one = EpochBatchSampler(203, 8, seed=3, epoch=1, lengths=lengths, step_batch_size=8, bucket_window=5)
    steps_of_one = [sorted(i for _, i in batch) for batch in one]
    # 2 processes x 2 per device x 2 accumulation steps: a step = 2 global micro-batches of 4
    two = [list(EpochBatchSampler(203, 4, seed=3, epoch=1, process_index=p, num_processes=2, lengths=lengths,
                                  step_batch_size=8, bucket_window=5)) for p in range(2)]
    steps_of_two = [sorted(i for p in range(2) for batch in two[p][2 * k : 2 * k + 2] for _, i in batch) for k in range(len(two[0]) // 2)]
    assert steps_of_two[:25] == steps_of_one[:25]


def test_a_task_with_the_earlier_export_and_validation_contract_still_works(tmp_path):
    class Earlier(ToyTask):
        def validation_metric_names(self):
            return {"score"}

        def extra_validation(self, module, step):  # the earlier two-argument hook
            return {"score": float(step)}

    result, _ = train(tmp_path / "run", loop_config(num_train_epochs=1, best_metric="score"), task=Earlier())
    assert result.best["metric"] == "score" and result.best["step"] == 6
    assert (tmp_path / "run" / "best" / "weights.safetensors").is_file()


def test_wandb_offline_logs_the_run_without_network(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb is an optional extra (pip install 'enclap[wandb]'); requirements.txt pins it for CI")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    output = tmp_path / "run"
    result, _ = train(output, loop_config(num_train_epochs=1, report_to="wandb"))
    assert result.status == "completed"
    runs = list((output / "wandb").glob("wandb/offline-run-*")) or list((output / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((output / "wandb").rglob("*"))[:20]
    run_id = (output / "wandb_run_id").read_text().strip()
    assert runs[0].name.endswith(run_id) and list(runs[0].glob(f"run-{run_id}.wandb"))
    # The offline run's record (protobuf, keys stored as text) holds the training curves and the final summary.
    # (wandb's service process may still be flushing it when finish() returns: wait for it, at most 60 s)
    import time

    keys = (b"train/loss", b"train/examples_per_second", b"validation/val_loss", b"best/value", b"best/step")
    deadline = time.monotonic() + 60
    while True:
        record = next(runs[0].glob(f"run-{run_id}.wandb")).read_bytes()
        if all(key in record for key in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [key for key in keys if key not in record] == []
    # A resumed run continues the same W&B run.
    again, _ = train(output, loop_config(num_train_epochs=2, report_to="wandb"))
    assert (output / "wandb_run_id").read_text().strip() == run_id


def test_the_library_loop_leaves_the_process_allocator_alone(tmp_path, monkeypatch):
    """retain_freed_memory is process-wide and irreversible: only entry points whose process is ours set it."""
    import enclap.allocator

    calls = []
    monkeypatch.setattr(enclap.allocator, "retain_freed_memory", lambda: calls.append(1) or True)
    train(tmp_path / "run", loop_config(num_train_epochs=1))
    assert calls == []
