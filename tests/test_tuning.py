"""Hyper-parameter search (enclap.tuning, enclap-tune): real Optuna studies of tiny CLAP trials on generated audio.

A study runs, is interrupted (a signal during a trial; a search process killed outright) and resumes with the
interrupted trial retried from its checkpoints; its reported best equals the best value stored in the SQLite
file; pruning stops a trial with a checkpoint; the best config loads with the job's loader; bad space files
fail naming the file and the reason.
"""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from enclap import tuning
from enclap.data.synthetic import SyntheticConfig, generate_dataset
from enclap.errors import ConfigError
from enclap.jobs.train_clap import load_clap_train_config
from enclap.jobs.tune import main
from enclap.training.loop import Trainer
from enclap.training.tracking import read_train_log

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "cfg" / "clap" / "tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune-data")
    return generate_dataset(root, SyntheticConfig(num_train=16, num_valid=8, num_test=2, seconds=3.0, sample_rate=16000,
                                                  captions_per_clip=2, structure_weights=[1.0, 0.0, 0.0, 0.0]))


def write_space(directory: Path, data, **changes) -> Path:
    """A space file over the tiny tower: 2 epochs of 2 steps, validation (retrieval on 8 clips) at steps 2 and 4."""
    space = {
        "job": "clap",
        "config": str(TINY),
        "overrides": {
            "data.train_file": str(data["train"]), "data.validation_file": str(data["valid"]),
            "data.audio_root": str(data["audio_root"]), "model.clip_seconds": 3.0, "train.train_batch_size": 8,
            "train.num_train_epochs": 2, "train.num_warmup_steps": 1, "train.dataloader_num_workers": 0,
            "train.progress": False, "train.checkpoints_total_limit": 1, "train.keep_best_checkpoints": 0,
        },
        "output_dir": str(directory / "runs"),
        "trials": 3,
        "metric": "val_mAP@10",
        "sampler": {"type": "random", "seed": 3},
        "pruner": {"type": "none"},
        "heartbeat_interval": 1,
        "grace_period": 30,
        "space": {
            "train.learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
            "train.weight_decay": {"type": "categorical", "choices": [0.0, 0.1]},
            "train.max_grad_norm": {"type": "int", "low": 1, "high": 3},
        },
    }
    for key, value in changes.items():
        if value is None:
            space.pop(key, None)
        else:
            space[key] = value
    path = directory / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def stored_study(spec):
    return optuna.load_study(study_name=spec.study_name, storage=spec.storage_url)


def sqlite_best(database: Path, direction: str = "maximize") -> tuple[int, float]:
    """The best COMPLETE trial straight from the SQLite file, without Optuna."""
    order = "DESC" if direction == "maximize" else "ASC"
    with sqlite3.connect(database) as db:
        number, value = db.execute(
            "SELECT trials.number, trial_values.value FROM trials JOIN trial_values USING (trial_id) "
            f"WHERE trials.state = 'COMPLETE' ORDER BY trial_values.value {order} LIMIT 1"
        ).fetchone()
    return number, value


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"epochs": 3}, "unknown key(s) epochs"),
        ({"job": "vae"}, "job must be one of clap, captioner, got 'vae'"),
        ({"space": {"train.learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}}, "low=0.1 > high=0.01"),
        ({"space": {"train.learning_rate": {"type": "float", "low": "small", "high": 0.01}}}, "low must be a number, got 'small'"),
        ({"space": {"train.num_warmup_steps": {"type": "int", "low": 0.5, "high": 3}}}, "low must be an integer, got 0.5"),
        ({"space": {"train.learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}, "log=true needs low > 0"),
        ({"space": {"train.learning_rate": {"type": "uniform", "low": 0.0, "high": 0.1}}}, "type must be one of float, int, categorical"),
        ({"space": {"train.learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "q": 2}}}, "unknown key(s) q for type float"),
        ({"space": {"model.projection": {"type": "categorical", "choices": []}}}, "choices must be a non-empty list"),
        ({"space": {"output_dir": {"type": "categorical", "choices": ["a", "b"]}}}, "output_dir cannot be set here"),
        ({"direction": "minimize"}, "direction=minimize disagrees with the training loop"),
        ({"value": "mean"}, "value must be one of best, last"),
        ({"sampler": {"type": "tpe", "n_startup": 2}}, "TPESampler takes no n_startup"),
        ({"pruner": {"type": "early"}}, "pruner.type must be one of median"),
        ({"trials": 0}, "trials must be an integer >= 1"),
        ({"metric": None}, "metric (the validation figure to optimise"),
    ],
)
def test_bad_space_files_fail_naming_the_file_and_the_reason(tmp_path, data, changes, reason):
    path = write_space(tmp_path, data, **changes)
    with pytest.raises(ConfigError) as caught:
        tuning.load_search_spec(path)
    assert str(path) in str(caught.value) and reason in str(caught.value), str(caught.value)


def test_every_problem_is_listed_at_once_and_a_missing_file_is_named(tmp_path, data):
    path = write_space(tmp_path, data, epochs=3, space={"train.learning_rate": {"type": "float", "low": 2, "high": 1}})
    message = str(pytest.raises(ConfigError, tuning.load_search_spec, path).value)
    assert "2 problem(s)" in message and "unknown key(s) epochs" in message and "low=2 > high=1" in message
    assert "search-space file not found" in str(pytest.raises(ConfigError, tuning.load_search_spec, tmp_path / "nope.yaml").value)
    missing = write_space(tmp_path, data, config=str(tmp_path / "absent.yaml"))
    assert f"config: {tmp_path / 'absent.yaml'} does not exist" in str(pytest.raises(ConfigError, tuning.load_search_spec, missing).value)


@pytest.mark.parametrize(
    ("space", "reason"),
    [
        ({"train.learnin_rate": {"type": "float", "low": 1e-4, "high": 1e-3}}, "learnin_rate"),
        ({"model.projection_dim": {"type": "categorical", "choices": [32, "wide"]}}, "space.model.projection_dim='wide'"),
        ({"train.lr_scheduler_type": {"type": "categorical", "choices": ["cosine", "sawtooth"]}}, "lr_scheduler_type must be one of"),
    ],
)
def test_keys_and_values_the_job_config_refuses_are_named_before_any_trial(tmp_path, data, space, reason):
    spec = tuning.load_search_spec(write_space(tmp_path, data, space=space))
    with pytest.raises(ConfigError) as caught:
        tuning.run_search(spec)
    assert str(spec.path) in str(caught.value) and reason in str(caught.value), str(caught.value)
    assert not Path(spec.output_dir).exists()  # nothing created, no study opened


def test_a_stored_study_of_another_definition_is_refused(tmp_path, data):
    spec = tuning.load_search_spec(write_space(tmp_path, data))
    tuning.open_study(spec)
    other = tuning.load_search_spec(write_space(tmp_path, data, space={"train.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2}}))
    with pytest.raises(ConfigError, match=r"was created with another space.*--study NAME"):
        tuning.open_study(other)
    renamed = tuning.apply_command_line(other, study_name="second")
    assert tuning.open_study(renamed).study_name == "second"  # the same storage holds both studies
    with pytest.raises(ConfigError, match="no study 'third'"):
        tuning.open_study(tuning.apply_command_line(other, study_name="third"), create=False)


# --------------------------------------------------------------------------------------------- studies


@pytest.mark.slow
def test_a_study_interrupted_by_a_signal_resumes_its_trial_and_reports_its_best(tmp_path, data, monkeypatch, capsys):
    spec = tuning.load_search_spec(write_space(tmp_path, data))
    original = Trainer._run_validation
    fired = []

    def signal_in_trial_1(self, step, epoch):
        original(self, step, epoch)
        if self.output_dir.name == "trial_0001" and not fired:
            fired.append(step)
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the loop saves a checkpoint at the step's end

    monkeypatch.setattr(Trainer, "_run_validation", signal_in_trial_1)
    with pytest.raises(tuning.TrialInterrupted) as caught:
        tuning.run_search(spec)
    assert (caught.value.number, caught.value.signal, caught.value.step) == (1, "SIGINT", 2)
    study = stored_study(spec)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "WAITING"]
    failed, waiting = study.trials[1], study.trials[2]
    assert "interrupted by SIGINT at step 2" in failed.user_attrs["failure"]
    assert waiting.params == failed.params and waiting.user_attrs["output_dir"] == failed.user_attrs["output_dir"]
    assert "worker" not in waiting.user_attrs  # not the stopped process's: nothing may take the retry for lost
    assert waiting.intermediate_values == failed.intermediate_values == {2: pytest.approx(failed.intermediate_values[2])}
    trial_dir = Path(failed.user_attrs["output_dir"])
    assert (trial_dir / "checkpoints" / "step_2").is_dir()

    monkeypatch.setattr(Trainer, "_run_validation", original)
    outcome = tuning.run_search(spec)  # the rerun: the retry first, then one new trial
    study = stored_study(spec)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert outcome.finished == 3 and study.trials[2].system_attrs["retry_history"] == [1]
    retry = study.trials[2]
    assert retry.user_attrs["output_dir"] == str(trial_dir) and retry.user_attrs["steps"] == 4
    # the retry resumed the checkpoint: its log's validations are the interrupted trial's at step 2, then step 4
    validations = [e for e in read_train_log(trial_dir) if e["type"] == "validation"]
    assert [e["step"] for e in validations] == [2, 4]
    assert retry.intermediate_values == {e["step"]: pytest.approx(e["val_mAP@10"]) for e in validations}
    assert retry.value == pytest.approx(max(e["val_mAP@10"] for e in validations))  # value: best

    number, value = sqlite_best(spec.output_dir / "study.db")
    assert (outcome.best_trial, outcome.best_value) == (number, pytest.approx(value))
    assert study.best_trial.number == number
    rows = list(csv.DictReader((spec.study_dir / "results.csv").open()))
    assert [(r["trial"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "FAIL"), ("2", "COMPLETE"), ("3", "COMPLETE")]
    assert "retried as trial 2" in rows[1]["notes"] and "retry of trial 1" in rows[2]["notes"]
    assert float(rows[number]["value"]) == pytest.approx(value) and rows[number]["steps"] == "4/4"

    best = load_clap_train_config(spec.study_dir / "best_config.yaml")
    params = study.trials[number].params
    assert best.train.learning_rate == params["train.learning_rate"] and best.train.weight_decay == params["train.weight_decay"]
    assert best.train.max_grad_norm == params["train.max_grad_norm"] and best.train.best_metric == "val_mAP@10"
    assert best.output_dir == str(spec.study_dir / "best_run") and best.data.train_file == str(data["train"])

    assert tuning.run_search(spec).finished == 3  # done: nothing more runs
    assert len(stored_study(spec).trials) == 4
    capsys.readouterr()
    assert main(["--space", str(spec.path), "--report"]) == 0
    printed = capsys.readouterr().out
    assert f"Best: trial {number}, val_mAP@10 = {value:.6g}" in printed and "best_run" in printed


@pytest.mark.slow
def test_pruning_stops_a_trial_at_its_validation_with_a_checkpoint(tmp_path, data):
    # mAP@10 is at most 1: a threshold above it prunes every trial at its first validation (step 2 of 4)
    spec = tuning.load_search_spec(write_space(tmp_path, data, trials=1, pruner={"type": "threshold", "lower": 1.01}))
    outcome = tuning.run_search(spec)
    trial = stored_study(spec).trials[0]
    assert outcome.finished == 1 and outcome.best_trial is None
    assert trial.state.name == "PRUNED" and trial.user_attrs["steps"] == 2 and trial.user_attrs["total_steps"] == 4
    trial_dir = Path(trial.user_attrs["output_dir"])
    assert sorted(p.name for p in (trial_dir / "checkpoints").iterdir()) == ["step_2"] and not (trial_dir / "final").exists()
    (validation,) = [e for e in read_train_log(trial_dir) if e["type"] == "validation"]
    assert trial.intermediate_values == {2: pytest.approx(validation["val_mAP@10"])}
    rows = list(csv.DictReader((spec.study_dir / "results.csv").open()))
    assert rows[0]["state"] == "PRUNED" and rows[0]["notes"] == "pruned at step 2" and rows[0]["value"] == ""
    assert not (spec.study_dir / "best_config.yaml").exists()  # no trial completed


@pytest.mark.slow
def test_a_killed_search_process_leaves_a_trial_that_the_next_run_fails_and_resumes(tmp_path, data):
    spec = tuning.load_search_spec(write_space(tmp_path, data, trials=1))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    code = "import sys, torch; torch.set_num_threads(1); from enclap.jobs.tune import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, "--space", str(spec.path)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = spec.study_dir / "trials" / "trial_0000" / "checkpoints" / "step_2"
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.is_dir() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert checkpoint.is_dir(), "the search process saved no checkpoint"
    finally:
        process.kill()  # no chance to clean up: the trial stays RUNNING in the study
        process.wait()
    (trial,) = stored_study(spec).trials
    if trial.state.name != "RUNNING":
        pytest.skip(f"the trial ended ({trial.state.name}) before the process was killed")
    outcome = tuning.run_search(spec)
    study = stored_study(spec)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"] and outcome.finished == 1
    lost, retry = study.trials
    assert retry.params == lost.params and retry.system_attrs["retry_history"] == [0]
    assert retry.user_attrs["output_dir"] == lost.user_attrs["output_dir"] == str(checkpoint.parents[1])
    assert str(os.getpid()) in retry.user_attrs["worker"] and str(process.pid) in lost.user_attrs["worker"]
    steps = [e["step"] for e in read_train_log(checkpoint.parents[1]) if e["type"] == "validation"]
    assert steps[-1] == 4 and retry.user_attrs["steps"] == 4
    rows = list(csv.DictReader((spec.study_dir / "results.csv").open()))
    assert "its process was lost" in rows[0]["notes"] and "retried as trial 1" in rows[0]["notes"]


@pytest.mark.parametrize("name", ["clap_tiny", "clotho_captioner"])
def test_the_shipped_space_files_load_and_fit_their_job(name):
    spec = tuning.load_search_spec(REPO / "cfg" / "tune" / f"{name}.yaml")
    tuning.check_spec_against_job(spec)
    assert spec.study_name == name and spec.storage_url == "sqlite:///runs/tune/study.db"
    assert spec.config.is_file() and spec.direction == "maximize"


@pytest.mark.slow
def test_a_captioner_study_minimises_its_validation_loss(tmp_path):
    """The same search over the captioner job (train_captioner), on tiny random features, optimising val_loss."""
    from omegaconf import OmegaConf

    from enclap.jobs.train_captioner import load_train_config

    from .training import make_feature_set, tiny_overrides

    files = make_feature_set(tmp_path / "features")
    base = tmp_path / "captioner.yaml"
    dotlist = [o for o in tiny_overrides(files, tmp_path / "unused") if not o.startswith("output_dir=")]
    base.write_text(OmegaConf.to_yaml(OmegaConf.from_dotlist(dotlist)))
    space = {
        "job": "captioner", "config": str(base), "output_dir": str(tmp_path / "runs"), "trials": 2, "metric": "val_loss",
        "overrides": {"train.train_batch_size": 8},  # 4 steps per epoch
        "sampler": {"type": "random", "seed": 0}, "pruner": {"type": "median", "n_startup_trials": 1},
        "space": {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
                  "model.mcm_loss_scale": {"type": "float", "low": 0.0, "high": 1.0}},
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    spec = tuning.load_search_spec(tmp_path / "space.yaml")
    assert spec.direction == "minimize"  # *loss: the loop keeps the lowest
    outcome = tuning.run_search(spec)
    study = stored_study(spec)
    assert outcome.finished == 2 and {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    for trial in study.trials:
        validations = {e["step"]: e["val_loss"] for e in read_train_log(trial.user_attrs["output_dir"]) if e["type"] == "validation"}
        assert trial.intermediate_values == {s: pytest.approx(v) for s, v in validations.items()}
        if trial.state.name == "COMPLETE":
            assert trial.value == pytest.approx(min(validations.values()))
    number, value = sqlite_best(spec.output_dir / "study.db", "minimize")
    assert (outcome.best_trial, outcome.best_value) == (number, pytest.approx(value))
    best = load_train_config(spec.study_dir / "best_config.yaml")
    assert best.model.mcm_loss_scale == study.best_trial.params["model.mcm_loss_scale"] and best.train.best_metric == "val_loss"
