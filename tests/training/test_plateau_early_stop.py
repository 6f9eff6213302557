"""The loop's ReduceLROnPlateau schedule and early stopping, on the toy regression task of test_loop.py.

The validation figure is scripted per step (``SCRIPT``) so that the expected learning rates and the stop
step can be written down by hand from torch's rule (a cut when more than ``patience`` validations in a
row fail to beat the best by the threshold) and the loop's (stop after N validations without a new best).
"""

from __future__ import annotations

import json

import pytest

from enclap.training.checkpoints import list_checkpoints
from enclap.training.loop import LoopConfig, Trainer
from enclap.training.tracking import read_train_log

from .test_loop import ToyTask, assert_same_weights, loop_config, losses, stop_at, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# step -> validation score (greater is better); validation after every step (eval_steps=1)
SCRIPT = {1: 0.50, 2: 0.60, 3: 0.60, 4: 0.55, 5: 0.59, 6: 0.70, 7: 0.65, 8: 0.69, 9: 0.70, 10: 0.71,
          11: 0.71, 12: 0.70, 13: 0.60, 14: 0.60, 15: 0.60, 16: 0.60, 17: 0.60, 18: 0.60}


class ScoredTask(ToyTask):
    """ToyTask whose ``val_score`` is SCRIPT[step] (the model's own val_loss is still computed)."""

    def validation_metric_names(self):
        return {"val_score"}

    def extra_validation(self, module, step, context):
        return {"val_score": SCRIPT[step]}


def plateau_config(**overrides) -> LoopConfig:
    values = dict(lr_scheduler_type="reduce_on_plateau", num_warmup_steps=0, learning_rate=0.04, best_metric="val_score",
                  eval_steps=1, plateau_factor=0.5, plateau_patience=2, plateau_threshold=0.0, plateau_threshold_mode="abs")
    values.update(overrides)
    return loop_config(**values)


def learning_rates(output) -> dict[int, float]:
    return {e["step"]: e["lr"] for e in read_train_log(output) if e["type"] == "train"}


def expected_rates(lr: float, patience: int, factor: float, steps: int, min_lr: float = 0.0) -> dict[int, float]:
    """By hand: the rate of step s is the one left by the validations of steps < s."""
    rates, best, bad = {}, None, 0
    for step in range(1, steps + 1):
        rates[step] = lr
        score = SCRIPT[step]
        if best is None or score > best:
            best, bad = score, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = max(lr * factor, min_lr), 0
    return rates


def test_the_plateau_schedule_cuts_the_rate_after_patience_bad_validations(tmp_path):
    result, _ = train(tmp_path / "run", plateau_config(), task=ScoredTask())
    assert result.status == "completed" and result.global_step == 18 and result.stopped_early is None
    rates = learning_rates(tmp_path / "run")
    assert rates == pytest.approx(expected_rates(0.04, 2, 0.5, 18), rel=1e-12)
    # the hand schedule: bad validations at steps 3, 4, 5 (no new best over 0.60) -> cut for step 6; 7, 8, 9 -> for 10;
    # 11..13 -> for 14; 14..16 -> for 17
    assert [rates[s] for s in (5, 6, 9, 10, 13, 14, 16, 17)] == pytest.approx([0.04, 0.02, 0.02, 0.01, 0.01, 0.005, 0.005, 0.0025])
    assert result.best["step"] == 10 and result.best["value"] == 0.71


def test_min_lr_bounds_the_cuts_and_bad_settings_are_named(tmp_path):
    train(tmp_path / "run", plateau_config(min_lr=0.015), task=ScoredTask())
    assert min(learning_rates(tmp_path / "run").values()) == pytest.approx(0.015)
    with pytest.raises(ValueError) as err:
        plateau_config(num_warmup_steps=3, plateau_factor=1.5, plateau_threshold_mode="relative", early_stopping_patience=-1).validate()
    for name in ("num_warmup_steps=0", "plateau_factor", "plateau_threshold_mode", "early_stopping_patience"):
        assert name in str(err.value)


def test_resume_with_the_plateau_schedule_equals_an_uninterrupted_run(tmp_path):
    config = plateau_config()
    reference, reference_weights = train(tmp_path / "reference", config, task=ScoredTask())
    # stopped after step 8: after the cut for step 6, inside the second plateau (bad validations at 7 and 8)
    first, _ = train(tmp_path / "run", plateau_config(), task=ScoredTask(), hook=stop_at(8))
    assert first.status == "interrupted" and first.global_step == 8
    second, weights = train(tmp_path / "run", plateau_config(), task=ScoredTask(seed=9))
    assert second.status == "completed" and second.resumed_from is not None
    assert_same_weights(weights, reference_weights)
    assert learning_rates(tmp_path / "run") == learning_rates(tmp_path / "reference")
    assert losses(tmp_path / "run") == losses(tmp_path / "reference")


def test_early_stopping_stops_says_why_and_a_rerun_trains_no_further(tmp_path):
    output = tmp_path / "run"
    config = loop_config(best_metric="val_score", eval_steps=1, early_stopping_patience=3)
    task = ScoredTask()
    result, weights = train(output, config, task=task)
    # best 0.60 at step 2; steps 3, 4, 5 do not beat it -> stop after step 5's validation
    assert result.status == "completed" and result.global_step == 5 and result.total_steps == 18
    assert result.stopped_early and "val_score did not improve for 3 validation(s)" in result.stopped_early
    assert "stopped early" in result.summary() and result.best["step"] == 2
    assert [s for s, _ in list_checkpoints(output)][-1] == 5
    entries = read_train_log(output)
    assert [e["step"] for e in entries if e["type"] == "early_stop"] == [5]
    assert max(e["step"] for e in entries if e["type"] == "train") == 5
    assert task.exports == [".tmp-best", ".tmp-best", ".tmp-final"]  # (written to a temporary, then renamed)
    state = json.loads((output / "final" / "training_state.json").read_text())
    assert state["step"] == 5

    again = ScoredTask(seed=4)
    rerun, rerun_weights = train(output, config, task=again)
    assert rerun.status == "completed" and rerun.global_step == 5 and rerun.stopped_early == result.stopped_early
    assert again.module.calls == 0 and again.exports == []  # no step trained, nothing re-exported
    assert_same_weights(rerun_weights, weights)

    # a raised patience continues the run (3 < 4 bad validations so far): new bests at steps 6 (0.70) and 10 (0.71),
    # then 11..14 do not beat 0.71 -> stop after step 14
    more, _ = train(output, loop_config(best_metric="val_score", eval_steps=1, early_stopping_patience=4), task=ScoredTask())
    assert more.global_step == 14 and "for 4 validation(s)" in more.stopped_early and more.best["step"] == 10


def test_early_stopping_off_by_default_and_with_a_loss_metric(tmp_path):
    result, _ = train(tmp_path / "off", loop_config(best_metric="val_score", eval_steps=1), task=ScoredTask())
    assert result.global_step == 18 and result.stopped_early is None
    # val_loss (lower is better) with plateau mode min: the toy loss falls, so no cut with patience 2 is forced
    trainer = Trainer(ToyTask(), plateau_config(best_metric="val_loss"), output_dir=tmp_path / "loss", seed=5)
    trainer._geometry()
    trainer._prepare()
    assert trainer.scheduler.scheduler.mode == "min"
    trainer._close_loaders()
