"""Hyper-parameter search over any training config with Optuna: a search space in YAML, trials run by the job.

A *search-space file* (``cfg/tune/*.yaml``) names the training job and its base config, the fixed
overrides every trial gets, the validation figure to optimise, Optuna's sampler and pruner, and the search
space over dotted config keys::

    job: clap                          # clap (enclap/jobs/train_clap.py) | captioner (enclap/jobs/train_captioner.py)
    config: ../clap/tiny.yaml          # the base training config (relative to this file, as `base:` is)
    overrides: {train.num_train_epochs: 4, train.progress: false}
    output_dir: runs/tune              # the study directory is <output_dir>/<study_name>
    metric: val_mAP@10                 # a validation figure of the job; direction follows the loop's rule
    sampler: {type: tpe, seed: 0}
    pruner: {type: median, n_startup_trials: 2}
    trials: 8
    space:
      train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      train.num_warmup_steps: {type: int, low: 0, high: 16, step: 4}
      model.projection: {type: categorical, choices: [linear, mlp]}

Each trial is the job itself (:func:`~enclap.jobs.train_clap.train_clap` or
:func:`~enclap.jobs.train_captioner.train_captioner`, in this process) with the trial's values as
``key=value`` overrides and its own ``output_dir`` under the study directory, so a trial has the loop's
checkpoints, exact resume and logs. Every validation is reported to the trial (``trial.report(value,
step)``, the step being the optimizer step); when the pruner says so, the loop's ``on_validation``
callback stops the run at that step with a checkpoint saved and the trial is marked PRUNED.

The study lives in an Optuna RDB storage (SQLite by default, ``<output_dir>/study.db``; a PostgreSQL /
MySQL URL lets several machines share it): rerunning the same command continues it, and several
processes can run the same command against one storage. ``trials`` is the number of *finished* trials
(COMPLETE, PRUNED, or FAIL because the loss diverged, which is an outcome of the hyper-parameters).

A trial whose process stopped is not lost: stopped by SIGINT / SIGTERM, the loop saves a checkpoint, the
trial is marked FAIL and re-enqueued with the same parameters (Optuna's
``RetryHeartbeatStaleTrialCallback``: the new trial records ``retry_history`` and inherits the reported
values); the retry trains in the *same* output directory, so the loop's ``resume=auto`` continues from the
last checkpoint and the trial's outcome is the one an uninterrupted run would have had. A process killed
outright leaves its trial RUNNING: the next run on the same host sees that the recorded process no longer
exists and does the same; on other hosts, the storage's heartbeat marks it FAIL once it has been silent for
``grace_period`` seconds (Optuna's ``fail_stale_trials``) and it is retried then. A RUNNING trial of a live
process, here or elsewhere, is never touched. The FAIL record stays in the study: it happened.

Outputs in the study directory: ``trials/trial_<n>/`` (each trial's training output), ``results.csv`` and
``results.md`` (trial, state, value, steps, duration, parameters, notes; rewritten after every trial) and
``best_config.yaml``: the best trial's full training config, which the job's ``--config`` accepts as is
(its ``output_dir`` is ``<study dir>/best_run``, so running it retrains rather than touching the trial).
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import io
import json
import logging
import math
import os
import socket
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .errors import ConfigError, EnclapError

if TYPE_CHECKING:
    import optuna

    from .training.loop import TrainingResult

logger = logging.getLogger(__name__)

TRIALS_DIR = "trials"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
BEST_CONFIG = "best_config.yaml"
BEST_RUN_DIR = "best_run"
STUDY_ATTR = "enclap_search"  # the study's definition, stored with it: a rerun with another one is refused

TOP_LEVEL_KEYS = (
    "job", "config", "overrides", "output_dir", "study_name", "storage", "trials", "metric", "direction", "value",
    "sampler", "pruner", "heartbeat_interval", "grace_period", "max_retries", "space",
)
PARAM_TYPES = ("float", "int", "categorical")
PARAM_KEYS = {"float": ("type", "low", "high", "log", "step"), "int": ("type", "low", "high", "log", "step"),
              "categorical": ("type", "choices")}
VALUE_MODES = ("best", "last")
# Keys the tuner sets itself: a search over them would break the trial's output, its model choice or its resume.
RESERVED_KEYS = {"output_dir": "each trial's output_dir is set by the tuner (under the study directory)",
                 "train.best_metric": "set from `metric`, so that each trial's best/ is its best by the tuned figure",
                 "train.resume": "trials resume with resume=auto (a retried trial continues its checkpoints)"}

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler", "gp": "GPSampler",
            "brute_force": "BruteForceSampler"}
PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "successive_halving": "SuccessiveHalvingPruner",
           "hyperband": "HyperbandPruner", "threshold": "ThresholdPruner", "none": "NopPruner"}


# --------------------------------------------------------------------------------------------- the space file
@dataclass
class ParamSpec:
    """One searched key: ``float`` / ``int`` in ``[low, high]`` (optionally ``log`` or ``step``) or ``categorical``."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial: "optuna.Trial") -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, self.choices)

    def corners(self) -> list[Any]:
        """Values that reach every part of the range's types (checked against the job's config up front)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def as_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        return {"type": self.type, "low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass
class SearchSpec:
    """A parsed search-space file (see the module docstring); ``path`` is where it was read from."""

    path: Path
    job: str
    config: Path
    space: dict[str, ParamSpec]
    metric: str
    direction: str
    overrides: dict[str, Any] = field(default_factory=dict)
    output_dir: Path = Path("runs/tune")
    study_name: str = ""
    storage: str = ""
    trials: int = 10
    value: str = "best"
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    heartbeat_interval: int = 60
    grace_period: int = 180
    max_retries: int = 3

    @property
    def study_dir(self) -> Path:
        return self.output_dir / self.study_name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.output_dir / 'study.db'}"

    def definition(self) -> dict[str, Any]:
        """What a study is (stored with it): trials of another definition are not comparable."""
        return {"job": self.job, "config": str(self.config), "overrides": dict(self.overrides), "metric": self.metric,
                "direction": self.direction, "value": self.value,
                "space": {name: spec.as_dict() for name, spec in self.space.items()}}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_param(name: str, raw: Any, problems: list[str]) -> ParamSpec | None:
    where = f"space.{name}"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping like {{type: float, low: ..., high: ...}}, got {raw!r}")
        return None
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        problems.append(f"{where}.type must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
        return None
    unknown = sorted(set(raw) - set(PARAM_KEYS[kind]))
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)} for type {kind} (known: {', '.join(PARAM_KEYS[kind])})")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append(f"{where}.choices must be a non-empty list, got {choices!r}")
            return None
        bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
        if bad:
            problems.append(f"{where}.choices: Optuna takes None, bool, int, float or str only, got {bad!r}")
        if len({json.dumps(c) for c in choices}) != len(choices):
            problems.append(f"{where}.choices has duplicates: {choices!r}")
        return ParamSpec(name, kind, choices=list(choices))
    low, high, log, step = raw.get("low"), raw.get("high"), raw.get("log", False), raw.get("step")
    number = int if kind == "int" else (int, float)
    for key, value in (("low", low), ("high", high)):
        if not _is_number(value) or not isinstance(value, number):
            problems.append(f"{where}.{key} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
            return None
    if low > high:
        problems.append(f"{where}: low={low} > high={high}")
    if not isinstance(log, bool):
        problems.append(f"{where}.log must be true or false, got {log!r}")
    if log and low <= 0:
        problems.append(f"{where}: log=true needs low > 0, got low={low}")
    if step is not None:
        if not _is_number(step) or not isinstance(step, number) or step <= 0:
            problems.append(f"{where}.step must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
        elif log and (kind == "float" or step != 1):
            problems.append(f"{where}: log=true and step cannot be combined")
    return ParamSpec(name, kind, low=float(low) if kind == "float" else low, high=float(high) if kind == "float" else high,
                     log=bool(log), step=step)


def _check_choice(kind: str, table: dict[str, str], raw: Any, where: str, problems: list[str]) -> dict[str, Any]:
    """``sampler`` / ``pruner``: ``{type: name, **constructor arguments}``, the arguments checked against the class."""
    import optuna

    if raw is None:
        raw = {"type": next(iter(table))}
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict) or raw.get("type") not in table:
        problems.append(f"{where}.type must be one of {', '.join(table)}, got {raw!r}")
        return {"type": next(iter(table))}
    cls = getattr(getattr(optuna, kind), table[raw["type"]])
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(raw) - {"type"} - accepted)
    if unknown:
        problems.append(f"{where}: {cls.__name__} takes no {', '.join(unknown)} (it takes: {', '.join(sorted(accepted)) or 'nothing'})")
    return dict(raw)


def load_search_spec(path: str | os.PathLike) -> SearchSpec:
    """Read and check a search-space file; every problem found is named with the file, in one :class:`ConfigError`."""
    from omegaconf import OmegaConf

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: search-space file not found")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    problems: list[str] = []
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(TOP_LEVEL_KEYS)})")
    job = raw.get("job")
    if job not in JOBS:
        problems.append(f"job must be one of {', '.join(JOBS)}, got {job!r}")
    config = raw.get("config")
    config_path = None
    if not isinstance(config, str) or not config:
        problems.append("config (the base training config file) is required")
    else:
        config_path = Path(config).expanduser()
        config_path = Path(os.path.normpath(config_path if config_path.is_absolute() else path.parent / config_path))
        if not config_path.is_file():
            problems.append(f"config: {config_path} does not exist")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        problems.append(f"overrides must be a mapping of dotted keys to values, got {overrides!r}")
        overrides = {}
    space_raw = raw.get("space")
    space: dict[str, ParamSpec] = {}
    if not isinstance(space_raw, dict) or not space_raw:
        problems.append("space must map at least one dotted config key to its range")
    else:
        for name, value in space_raw.items():
            parsed = _parse_param(str(name), value, problems)
            if parsed is not None:
                space[str(name)] = parsed
        both = sorted(set(space_raw) & set(overrides))
        if both:
            problems.append(f"{', '.join(both)}: both searched (space) and fixed (overrides)")
    for key in [*overrides, *(space_raw or {})]:
        if key in RESERVED_KEYS:
            problems.append(f"{key} cannot be set here: {RESERVED_KEYS[key]}")
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric:
        problems.append("metric (the validation figure to optimise, e.g. val_mAP@10 or cider_d) is required")
        metric = ""
    # The loop keeps the lowest *loss and the highest of any other figure as best/: the study must agree.
    natural = "minimize" if metric.endswith("loss") else "maximize"
    direction = raw.get("direction", natural)
    if direction not in ("minimize", "maximize"):
        problems.append(f"direction must be minimize or maximize, got {direction!r}")
    elif metric and direction != natural:
        problems.append(f"direction={direction} disagrees with the training loop, which {natural}s {metric} "
                        "(lower is better for *loss figures, higher for every other)")
    value = raw.get("value", "best")
    if value not in VALUE_MODES:
        problems.append(f"value must be one of {', '.join(VALUE_MODES)} (the trial's best or last validation), got {value!r}")
    ints = {}
    for key, default, low in (("trials", 10, 1), ("heartbeat_interval", 60, 1), ("grace_period", None, 1), ("max_retries", 3, 0)):
        number = raw.get(key, default)
        if number is not None and (not isinstance(number, int) or isinstance(number, bool) or number < low):
            problems.append(f"{key} must be an integer >= {low}, got {number!r}")
            number = default
        ints[key] = number
    if ints["grace_period"] is None:
        ints["grace_period"] = 3 * (ints["heartbeat_interval"] or 60)
    elif ints["heartbeat_interval"] and ints["grace_period"] <= ints["heartbeat_interval"]:
        problems.append(f"grace_period ({ints['grace_period']} s) must exceed heartbeat_interval ({ints['heartbeat_interval']} s)")
    sampler = _check_choice("samplers", SAMPLERS, raw.get("sampler"), "sampler", problems)
    pruner = _check_choice("pruners", PRUNERS, raw.get("pruner"), "pruner", problems)
    for key in ("output_dir", "study_name", "storage"):
        if key in raw and not isinstance(raw[key], str):
            problems.append(f"{key} must be a string, got {raw[key]!r}")
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return SearchSpec(
        path=path, job=job, config=config_path, space=space, metric=metric, direction=direction,
        overrides={str(k): v for k, v in overrides.items()}, output_dir=Path(raw.get("output_dir") or "runs/tune").expanduser(),
        study_name=raw.get("study_name") or path.stem, storage=raw.get("storage") or "", trials=ints["trials"], value=value,
        sampler=sampler, pruner=pruner, heartbeat_interval=ints["heartbeat_interval"], grace_period=ints["grace_period"],
        max_retries=ints["max_retries"],
    )


# --------------------------------------------------------------------------------------------- the jobs
@dataclass(frozen=True)
class Job:
    """A training job the tuner can run: its config loader ``(path, overrides)`` and its ``train(config, on_validation=)``."""

    name: str
    load_config: Callable[[Any, Sequence[str]], Any]
    train: Callable[..., "TrainingResult"]
    command: str  # the console script that accepts the best config


def _clap_job() -> Job:
    from .jobs.train_clap import load_clap_train_config, train_clap

    return Job("clap", load_clap_train_config, train_clap, "enclap-train-clap --config")


def _captioner_job() -> Job:
    from .jobs.train_captioner import load_train_config, train_captioner

    return Job("captioner", load_train_config, train_captioner, "enclap-train --config")


JOBS: dict[str, Callable[[], Job]] = {"clap": _clap_job, "captioner": _captioner_job}


def override_items(values: dict[str, Any]) -> list[str]:
    """``key=value`` overrides whose values read back as the same YAML values (a string stays a string)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def trial_config(spec: SearchSpec, params: dict[str, Any], output_dir: str | os.PathLike, job: Job | None = None) -> Any:
    """The job's config of a trial: base file < fixed overrides < the trial's values < output_dir / best_metric."""
    job = job or JOBS[spec.job]()
    forced = {"output_dir": str(output_dir), "train.best_metric": spec.metric}
    config = job.load_config(spec.config, override_items({**spec.overrides, **params, **forced}))
    loop = getattr(config, "train", None)
    if loop is not None:  # the loop's settings are checked by the loop, at the start of training: check them now
        try:
            loop.validate()
        except ValueError as err:
            raise ConfigError(f"{spec.config} + {params}: train: {err}") from err
    return config


def check_spec_against_job(spec: SearchSpec) -> None:
    """Load the job's config at the ends of every range and with every choice: unknown keys and bad types fail now."""
    job = JOBS[spec.job]()
    base = {name: param.corners()[0] for name, param in spec.space.items()}
    problems = []
    try:
        trial_config(spec, base, spec.study_dir / "check", job)
    except ConfigError as err:
        raise ConfigError(f"{spec.path}: the overrides and space do not fit the {spec.job} config {spec.config}: {err}") from err
    for name, param in spec.space.items():
        for value in param.corners()[1:]:
            try:
                trial_config(spec, {**base, name: value}, spec.study_dir / "check", job)
            except ConfigError as err:
                problems.append(f"space.{name}={value!r}: {err}")
    if problems:
        raise ConfigError(f"{spec.path}: values of the space do not fit the {spec.job} config {spec.config}:\n"
                          + "\n".join(f"  - {p}" for p in problems))


# --------------------------------------------------------------------------------------------- the study
class TrialInterrupted(EnclapError):
    """A trial's training was stopped by a signal (checkpoint saved); the trial is retried on the next run."""

    def __init__(self, number: int, signal: str | None, step: int) -> None:
        self.number, self.signal, self.step = number, signal, step
        super().__init__(f"trial {number} stopped by {signal or 'request'} at step {step} (checkpoint saved)")


@contextlib.contextmanager
def _experimental_allowed() -> Iterator[None]:
    """Heartbeats and the retry callback are marked experimental by Optuna; their warning says nothing to act on."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _build(kind: str, table: dict[str, str], settings: dict[str, Any], path: Path) -> Any:
    import optuna

    args = {k: v for k, v in settings.items() if k != "type"}
    cls = getattr(getattr(optuna, kind), table[settings["type"]])
    try:
        return cls(**args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: {kind[:-1]} {settings}: {err}") from err


def _retry_callback(spec: SearchSpec) -> Callable[["optuna.Study", "optuna.trial.FrozenTrial"], None]:
    """Optuna's retry (same parameters, user attributes and reported values), without the failed trial's process.

    The retry inherits the user attributes, hence its output directory; the ``worker`` (host:pid) of the
    dead process is dropped, or another process could take the retry for lost in the moment between Optuna
    starting it and the new process recording itself.
    """
    import copy

    from optuna.storages import RetryHeartbeatStaleTrialCallback

    retry = RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retries, inherit_intermediate_values=True)

    def callback(study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs.pop("worker", None)
        retry(study, trial)

    return callback


def open_storage(spec: SearchSpec) -> "optuna.storages.RDBStorage":
    """The RDB storage with heartbeats (so a trial of a lost process is retried); SQLite's directory created."""
    import optuna

    url = spec.storage_url
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        database = url[len("sqlite:///"):]
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several processes share the file: wait for its lock
    try:
        with _experimental_allowed():
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period,
                heartbeat_stale_trial_callback=_retry_callback(spec),
            )
    except Exception as err:  # sqlalchemy's errors for a bad URL or an unreachable database
        raise ConfigError(f"{spec.path}: cannot open the study storage {url!r}: {type(err).__name__}: {err}") from err


def open_study(spec: SearchSpec, *, create: bool = True) -> "optuna.Study":
    """Create or load the study; a stored study of another definition (job, metric, space...) is refused."""
    import optuna

    storage = open_storage(spec)
    sampler = _build("samplers", SAMPLERS, spec.sampler, spec.path)
    pruner = _build("pruners", PRUNERS, spec.pruner, spec.path)
    if not create:
        try:
            return optuna.load_study(study_name=spec.study_name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError as err:
            raise ConfigError(f"no study {spec.study_name!r} in {spec.storage_url} (run enclap-tune --space {spec.path} first)") from err
    study = optuna.create_study(storage=storage, study_name=spec.study_name, direction=spec.direction,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    stored = study.user_attrs.get(STUDY_ATTR)
    mine = json.loads(json.dumps(spec.definition()))
    if stored is None:
        study.set_user_attr(STUDY_ATTR, mine)
    elif stored != mine:
        changed = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
        raise ConfigError(
            f"{spec.path}: study {spec.study_name!r} in {spec.storage_url} was created with another {', '.join(changed)} "
            f"(stored: {json.dumps({k: stored.get(k) for k in changed})}); its trials would not be comparable. "
            "Restore them, or start a new study with --study NAME."
        )
    if study.direction.name.lower() != spec.direction:
        raise ConfigError(f"study {spec.study_name!r} in {spec.storage_url} {study.direction.name.lower()}s, not {spec.direction}s")
    return study


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def fail_lost_trials(study: "optuna.Study", spec: SearchSpec) -> list[int]:
    """Mark FAIL (and retry) the RUNNING trials of this host whose process no longer exists; their numbers.

    Only what is certain: the process recorded by the trial is gone from this machine. A trial of another
    host is left to the heartbeat (``grace_period``); a live process's trial is never touched.
    """
    import optuna

    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and _process_exists(int(pid)):
            continue
        try:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process got there first
        _retry(study, spec, trial.number)
        logger.warning("trial %d: its process %s is gone; marked FAIL and re-enqueued with the same parameters",
                       trial.number, trial.user_attrs["worker"])
        failed.append(trial.number)
    return failed


def counts_as_finished(trial: "optuna.trial.FrozenTrial") -> bool:
    """COMPLETE, PRUNED, or FAIL because the loss diverged (an outcome of its parameters); not an interruption."""
    import optuna

    state = trial.state
    if state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
        return True
    return state == optuna.trial.TrialState.FAIL and str(trial.user_attrs.get("failure") or "").startswith("diverged")


@dataclass
class SearchOutcome:
    """What :func:`run_search` did: trials finished (in the whole study), whether it stopped early, the report files."""

    finished: int
    target: int
    running_elsewhere: int
    best_trial: int | None
    best_value: float | None
    files: dict[str, Path]


class _Objective:
    """One trial: the job's config with the trial's values, trained in the trial's directory, pruned on validation."""

    def __init__(self, spec: SearchSpec, job: Job) -> None:
        self.spec, self.job = spec, job
        self.current: int | None = None

    def __call__(self, trial: "optuna.Trial") -> float:
        import optuna

        from .training.loop import NonFiniteLossError

        spec = self.spec
        self.current = trial.number
        trial.set_user_attr("worker", _worker_id())
        for key in ("failure", "pruned_at", "steps", "total_steps"):  # a retry inherits its failed trial's attributes
            if key in trial.user_attrs:
                trial.set_user_attr(key, None)
        # A retry inherits the user attributes of the trial it retries, hence its output directory (and checkpoints).
        output_dir = trial.user_attrs.get("output_dir") or str(spec.study_dir / TRIALS_DIR / f"trial_{trial.number:04d}")
        trial.set_user_attr("output_dir", output_dir)
        params = {name: param.suggest(trial) for name, param in spec.space.items()}
        reported = set(_find_trial(trial.study, trial.number).intermediate_values)  # a retry's inherited reports
        logger.info("trial %d: %s -> %s", trial.number, ", ".join(f"{k}={v!r}" for k, v in params.items()), output_dir)
        try:
            config = trial_config(spec, params, output_dir, self.job)
        except ConfigError as err:
            trial.set_user_attr("failure", f"configuration: {err}")
            raise

        def on_validation(step: int, figures: dict[str, float]) -> bool:
            value = figures.get(spec.metric)
            if value is None or not math.isfinite(value) or step in reported:
                return False
            trial.report(float(value), step)
            reported.add(step)
            if trial.should_prune():
                trial.set_user_attr("pruned_at", step)
                return True
            return False

        try:
            result = self.job.train(config, on_validation=on_validation)
        except NonFiniteLossError as err:
            trial.set_user_attr("failure", f"diverged: {str(err).splitlines()[0][:300]}")
            raise
        except EnclapError as err:
            trial.set_user_attr("failure", f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("failure", "aborted by a second interrupt, without saving (retried from its last checkpoint)")
            raise
        trial.set_user_attr("steps", result.global_step)
        trial.set_user_attr("total_steps", result.total_steps)
        if result.status == "stopped":
            raise optuna.TrialPruned(f"pruned at step {result.global_step} of {result.total_steps}")
        if result.status == "interrupted":
            trial.set_user_attr("failure", f"interrupted by {result.signal or 'request'} at step {result.global_step} "
                                           f"(checkpoint {result.last_checkpoint}; retried from it)")
            raise TrialInterrupted(trial.number, result.signal, result.global_step)
        if spec.value == "best" and result.best and result.best.get("metric") == spec.metric:
            value = result.best["value"]
        else:
            value = (result.last_validation or {}).get(spec.metric)
        if value is None or not math.isfinite(value):
            raise ConfigError(
                f"trial {trial.number}: the training gave no finite {spec.metric} (validation figures: "
                f"{sorted(result.last_validation or {})}); does {spec.config} set a validation file?"
            )
        return float(value)


def run_search(spec: SearchSpec, *, trials: int | None = None) -> SearchOutcome:
    """Run trials until ``trials`` (default ``spec.trials``) of the study have finished; resumable, shareable.

    A signal or a second Ctrl-C during a trial leaves it FAIL and re-enqueued (with a checkpoint to resume),
    then re-raises: :class:`TrialInterrupted`, or ``KeyboardInterrupt``.
    """
    import optuna

    from .training.loop import NonFiniteLossError

    target = spec.trials if trials is None else int(trials)
    if target < 1:
        raise ConfigError(f"--trials must be >= 1, got {target}")
    check_spec_against_job(spec)
    study = open_study(spec)
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    job = JOBS[spec.job]()
    objective = _Objective(spec, job)
    fail_lost_trials(study, spec)
    with _experimental_allowed():
        optuna.storages.fail_stale_trials(study)  # other hosts' trials silent for grace_period (also before every trial)
    running = 0
    try:
        while True:
            all_trials = study.get_trials(deepcopy=False)
            finished = sum(counts_as_finished(t) for t in all_trials)
            running = sum(t.state == optuna.trial.TrialState.RUNNING for t in all_trials)
            if finished >= target:
                break
            if finished + running >= target:
                logger.warning(
                    "%d trial(s) finished and %d RUNNING in other processes (or in one lost less than grace_period=%d s ago, "
                    "retried after it): not starting another of the %d", finished, running, spec.grace_period, target)
                break
            objective.current = None
            study.optimize(objective, n_trials=1, catch=(NonFiniteLossError,), gc_after_trial=True)
            write_reports(study, spec)
    except (TrialInterrupted, KeyboardInterrupt):
        if objective.current is not None:
            _retry(study, spec, objective.current)
        write_reports(study, spec)
        raise
    files = write_reports(study, spec)
    best = _best_trial(study)
    return SearchOutcome(finished=finished, target=target, running_elsewhere=running,
                         best_trial=best.number if best else None, best_value=best.value if best else None, files=files)


def _find_trial(study: "optuna.Study", number: int) -> "optuna.trial.FrozenTrial | None":
    return next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)


def _retry(study: "optuna.Study", spec: SearchSpec, number: int) -> None:
    """Re-enqueue a FAIL trial with its parameters, user attributes (its output_dir) and reported values."""
    import optuna

    trial = _find_trial(study, number)
    if trial is None or trial.state != optuna.trial.TrialState.FAIL:
        return
    with _experimental_allowed():
        _retry_callback(spec)(study, trial)
    logger.warning("trial %d re-enqueued with the same parameters: the next trial resumes it from %s",
                   number, trial.user_attrs.get("output_dir"))


def _best_trial(study: "optuna.Study") -> "optuna.trial.FrozenTrial | None":
    try:
        return study.best_trial
    except ValueError:  # no COMPLETE trial yet
        return None


# --------------------------------------------------------------------------------------------- reports
def results_rows(study: "optuna.Study", spec: SearchSpec) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, steps, duration, parameters, last reported value, notes."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    retried_as = {}
    for t in trials:
        for number in t.system_attrs.get("retry_history", [])[-1:]:
            retried_as[number] = t.number
    rows = []
    for t in trials:
        notes = []
        if t.system_attrs.get("retry_history"):
            notes.append(f"retry of trial {t.system_attrs['retry_history'][-1]} (resumed from its checkpoints)")
        if t.state == optuna.trial.TrialState.PRUNED and t.user_attrs.get("pruned_at") is not None:
            notes.append(f"pruned at step {t.user_attrs['pruned_at']}")
        if t.state == optuna.trial.TrialState.FAIL:
            notes.append(str(t.user_attrs.get("failure") or "its process was lost (gone from this host, or no heartbeat for "
                                                             f"{spec.grace_period} s)"))
        if t.number in retried_as:
            notes.append(f"retried as trial {retried_as[t.number]}")
        duration = t.duration.total_seconds() if isinstance(t.duration, timedelta) else None
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        steps = t.user_attrs.get("steps")
        row = {
            "trial": t.number,
            "state": t.state.name,
            "value": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
            "steps": f"{steps}/{t.user_attrs.get('total_steps')}" if steps is not None else "",
            "duration_s": round(duration, 1) if duration is not None else None,
            **{name: t.params.get(name) for name in spec.space},
            "last_reported": last,
            "output_dir": t.user_attrs.get("output_dir", ""),
            "notes": "; ".join(notes),
        }
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def results_markdown(rows: list[dict[str, Any]], spec: SearchSpec, study: "optuna.Study") -> str:
    best = _best_trial(study)
    lines = [f"# Study {spec.study_name}: {spec.direction} {spec.metric} ({spec.job}, {spec.config})", ""]
    if best is not None:
        lines += [f"Best: trial {best.number}, {spec.metric} = {best.value:.6g}, "
                  + ", ".join(f"{k}={_cell(v)}" for k, v in best.params.items()), ""]
    if rows:
        header = list(rows[0])
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            lines.append("| " + " | ".join(_cell(row[k]).replace("|", "\\|") for k in header) + " |")
    return "\n".join(lines) + "\n"


def best_config_text(study: "optuna.Study", spec: SearchSpec) -> str | None:
    """The best trial's full training config as YAML (output_dir: <study dir>/best_run), or None before any COMPLETE trial."""
    from omegaconf import OmegaConf

    best = _best_trial(study)
    if best is None:
        return None
    config = trial_config(spec, dict(best.params), spec.study_dir / BEST_RUN_DIR)
    header = [
        f"# Best trial {best.number} of study {spec.study_name} ({spec.storage_url}): {spec.metric} = {best.value:.6g}",
        f"# parameters: " + ", ".join(f"{k}={v!r}" for k, v in best.params.items()),
        f"# its model: {best.user_attrs.get('output_dir', '?')}/best. Retrain with: {JOBS[spec.job]().command} <this file>",
    ]
    return "\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.structured(config))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_reports(study: "optuna.Study", spec: SearchSpec) -> dict[str, Path]:
    """``results.csv``, ``results.md`` and (once a trial completed) ``best_config.yaml`` in the study directory."""
    directory = spec.study_dir
    directory.mkdir(parents=True, exist_ok=True)
    rows = results_rows(study, spec)
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    files = {"csv": directory / RESULTS_CSV, "markdown": directory / RESULTS_MD}
    _write_atomic(files["csv"], buffer.getvalue())
    _write_atomic(files["markdown"], results_markdown(rows, spec, study))
    text = best_config_text(study, spec)
    if text is not None:
        files["best_config"] = directory / BEST_CONFIG
        _write_atomic(files["best_config"], text)
    return files


def apply_command_line(spec: SearchSpec, *, storage: str | None = None, study_name: str | None = None) -> SearchSpec:
    """``--storage`` / ``--study`` win over the file's ``storage`` / ``study_name``."""
    from dataclasses import replace

    return replace(spec, storage=storage or spec.storage, study_name=study_name or spec.study_name)


__all__ = [
    "JOBS",
    "Job",
    "ParamSpec",
    "SearchOutcome",
    "SearchSpec",
    "TrialInterrupted",
    "apply_command_line",
    "best_config_text",
    "check_spec_against_job",
    "counts_as_finished",
    "fail_lost_trials",
    "load_search_spec",
    "open_study",
    "results_rows",
    "run_search",
    "trial_config",
    "write_reports",
]
