"""Fine-tune an audio classifier on a CLAP audio encoder (LAION-CLAP's linear probe / fine-tuning), and score it.

    enclap-train-classifier --config cfg/clap/classifier_esc50.yaml key=value ...
    enclap-train-classifier evaluate --model runs/classifier-esc50/best --labels ESC-50/meta/esc50.csv \\
        --audio-root ESC-50/audio --fold 5 --output-dir runs/classifier-esc50/evaluation-fold5
    python -m enclap.jobs.train_classifier --config cfg/clap/classifier_tiny.yaml

Settings: a :class:`TrainClassifierConfig` (``cfg/clap/classifier_*.yaml`` document every key).

* ``data`` + ``split``: ESC-50's ``meta/esc50.csv`` or a ``file,label[,fold][,source]`` CSV with
  ``split.mode=esc50_fold5`` (folds 1-4 train, fold 5 split by source recording into validation and test)
  or ``crossval`` (every fold held out once), or separate CSVs with ``split.mode=files``; see
  :mod:`enclap.data.labelled`. Clips of one source recording are never on two sides.
* ``model``: where the encoder comes from: ``model.init=pretrained`` with ``model.init_from`` (a CLAP tower
  directory trained here, a transformers ClapModel directory or hub id such as ``laion/clap-htsat-unfused``,
  or a LAION ``630k-*.pt`` checkpoint), or ``model.init=random`` (explicitly random: tests, the demo, with
  the tower's ``audio_encoder`` / ``audio_config`` / ``projection`` / ``projection_dim`` / ``clip_seconds``);
  ``model.features`` (``projection``: LAION's probe reads the projected embedding; ``pooled``), ``model.head``
  (``linear`` | ``mlp``) and ``model.freeze_encoder`` (true: linear probe; false: fine-tune everything).
* ``train``: the project's training loop (:class:`~enclap.training.loop.LoopConfig`: checkpoints, exact
  resume, schedules, logging); ``train.best_metric`` defaults to ``val_accuracy``.

Outputs in ``output_dir`` (for ``crossval``, in ``output_dir/fold<k>/`` for each fold, plus
``crossval.json``): ``training_config.yaml``, ``checkpoints/``, ``train_log.jsonl``, ``best/`` (best
``val_accuracy``) and ``final/`` classifier directories (``ClapClassifierModel.from_pretrained``), and
``evaluation/`` on the test split: ``report.json`` (accuracy, per-class accuracy, confusion matrix),
``confusion_matrix.png`` and ``predictions.csv``. Rerunning the same command resumes an interrupted run
(and skips folds already done).

Exit codes: 0 finished, 1 the loss diverged, 2 configuration / data / checkpoint error, 130 / 143 stopped
by a signal after saving a checkpoint (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ConfigError, EnclapError, ManifestError
from ..training.loop import LoopConfig

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from ..clap.classifier import ClapClassifierModel
    from ..data.labelled import LabelledClip, Split
    from ..training.loop import TrainingResult

logger = logging.getLogger(__name__)

CONFIG_FILE = "training_config.yaml"
EVALUATION_DIR = "evaluation"
CROSSVAL_FILE = "crossval.json"
INIT_MODES = ("random", "pretrained")


@dataclass
class ClassifierDataConfig:
    labels_file: str = ""  # split.mode esc50_fold5 / crossval: ESC-50's meta/esc50.csv or file,label,fold[,source]
    train_file: str = ""  # split.mode=files: file,label[,source] CSVs of each split
    validation_file: str = ""  # "" = no validation (no best/ model)
    test_file: str = ""  # "" = no test evaluation
    audio_root: str = ""  # the CSVs' files are relative to it (ESC-50: ESC-50/audio)


@dataclass
class ClassifierSplitConfig:
    mode: str = "esc50_fold5"  # esc50_fold5 | crossval | files
    test_fold: str = "5"  # esc50_fold5: the fold split into validation and test
    validation_share: float = 0.5  # esc50_fold5: share of the test fold's clips (by source) that validate
    crossval_validation_share: float = 0.125  # crossval: share of the training folds' clips (by source) that validate


@dataclass
class ClassifierModelConfig:
    """Where the encoder comes from and the head on it (see the module docstring)."""

    init: str = "pretrained"  # random | pretrained
    init_from: str = ""  # CLAP tower dir | transformers ClapModel dir / hub id | LAION .pt
    features: str = "projection"  # projection (LAION's linear probe) | pooled
    head: str = "linear"  # linear | mlp (LAION's MLPLayers [d, 2d, classes])
    freeze_encoder: bool = False  # true: linear probe (only the head trains); false: fine-tune all
    # the tower's audio side, for model.init=random only (ClapTowerConfig fields)
    audio_encoder: str = "cnn14"  # htsat | cnn14
    audio_config: dict[str, Any] = field(default_factory=dict)
    projection: str = "linear"  # mlp | linear
    projection_dim: int = 512
    clip_seconds: float = 5.0


@dataclass
class TrainClassifierConfig:
    output_dir: str = ""
    seed: int = 1115
    data: ClassifierDataConfig = field(default_factory=ClassifierDataConfig)
    split: ClassifierSplitConfig = field(default_factory=ClassifierSplitConfig)
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    train: LoopConfig = field(default_factory=lambda: LoopConfig(best_metric="val_accuracy", lr_scheduler_type="cosine",
                                                                 num_warmup_steps=0, learning_rate=1e-3))
    evaluation_batch_size: int = 16

    def validate(self) -> None:
        from ..clap.classifier import CLASSIFIER_FEATURES, CLASSIFIER_HEADS
        from ..data.labelled import SPLIT_MODES

        problems = []
        if not self.output_dir:
            problems.append("output_dir is required")
        if not 0 <= self.seed < 2**32:
            problems.append(f"seed must be in [0, 2**32 - 1], got {self.seed}")
        d, s, m = self.data, self.split, self.model
        if not d.audio_root:
            problems.append("data.audio_root is required (where the CSVs' audio files are)")
        if s.mode not in SPLIT_MODES:
            problems.append(f"split.mode must be one of {', '.join(SPLIT_MODES)}, got {s.mode!r}")
        elif s.mode == "files":
            if not d.train_file:
                problems.append("split.mode=files needs data.train_file (and data.validation_file / data.test_file)")
            if d.labels_file:
                problems.append("split.mode=files reads data.train_file / validation_file / test_file, not data.labels_file")
        else:
            if not d.labels_file:
                problems.append(f"split.mode={s.mode} needs data.labels_file (ESC-50's meta/esc50.csv or file,label,fold[,source])")
            if d.train_file or d.validation_file or d.test_file:
                problems.append(f"split.mode={s.mode} splits data.labels_file; data.train_file / validation_file / test_file "
                                "belong to split.mode=files")
        for name in ("validation_share", "crossval_validation_share"):
            if not 0.0 < getattr(s, name) < 1.0:
                problems.append(f"split.{name} must be between 0 and 1 (exclusive), got {getattr(s, name)}")
        if m.init not in INIT_MODES:
            problems.append(f"model.init must be one of {', '.join(INIT_MODES)}, got {m.init!r}")
        elif m.init == "random" and m.init_from:
            problems.append("model.init=random takes no model.init_from")
        elif m.init == "pretrained" and not m.init_from:
            problems.append("model.init=pretrained needs model.init_from (a CLAP tower directory, a transformers ClapModel "
                            "directory / hub id, or a LAION .pt); for a random encoder set model.init=random")
        if m.features not in CLASSIFIER_FEATURES:
            problems.append(f"model.features must be one of {', '.join(CLASSIFIER_FEATURES)}, got {m.features!r}")
        if m.head not in CLASSIFIER_HEADS:
            problems.append(f"model.head must be one of {', '.join(CLASSIFIER_HEADS)}, got {m.head!r}")
        if not self.train.best_metric.startswith("val_"):
            problems.append(f"train.best_metric must be a validation figure (val_accuracy, val_balanced_accuracy, val_loss), "
                            f"got {self.train.best_metric!r}")
        if self.evaluation_batch_size < 1:
            problems.append("evaluation_batch_size must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))


def load_classifier_train_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> TrainClassifierConfig:
    """Defaults < YAML file (which may name a ``base:`` file) < ``key=value`` overrides, validated."""
    from ..config import load_config

    return load_config(TrainClassifierConfig, path, list(overrides))


# --------------------------------------------------------------------------------------------- data
@dataclass
class ClassifierData:
    """The clips, their classes and audio files, and the run(s) to make: one split, or one per fold."""

    clips: "list[LabelledClip]"
    class_names: list[str]
    paths: list[str]
    splits: "list[Split]"
    crossval: bool

    def targets(self, indices: Sequence[int]) -> list[int]:
        index = {name: i for i, name in enumerate(self.class_names)}
        return [index[self.clips[i].label] for i in indices]


def load_classifier_data(config: TrainClassifierConfig) -> ClassifierData:
    """Read the CSV(s), make the split(s) and find every audio file, all before any training starts."""
    from ..data import labelled

    d, s = config.data, config.split
    if s.mode == "files":
        parts = {side: (path, labelled.read_labelled(path)) for side, path in
                 (("train", d.train_file), ("validation", d.validation_file), ("test", d.test_file)) if path}
        clips, split = labelled.files_split(parts)
        splits = [split]
        paths = []
        for side in ("train", "validation", "test"):
            if side in parts:
                paths += labelled.resolve_audio(parts[side][1], d.audio_root, parts[side][0])
        names = labelled.class_names(clips)
    else:
        clips = labelled.read_labelled(d.labels_file)
        if s.mode == "esc50_fold5":
            splits = [labelled.esc50_fold_split(clips, d.labels_file, test_fold=s.test_fold,
                                                validation_share=s.validation_share, seed=config.seed)]
        else:
            splits = labelled.crossval_splits(clips, d.labels_file, validation_share=s.crossval_validation_share, seed=config.seed)
        paths = labelled.resolve_audio(clips, d.audio_root, d.labels_file)
        names = labelled.class_names(clips)
    for split in splits:
        labelled.check_sources_disjoint(clips, split)
        trained = {clips[i].label for i in split.train}
        unseen = sorted({clips[i].label for i in split.validation + split.test} - trained)
        if unseen:
            logger.warning("%s: class(es) %s have no training clip; the classifier cannot learn them", split.name, unseen)
        if len(trained) < 2:
            raise ConfigError(f"{split.name}: the training clips hold {len(trained)} class(es); a classifier needs at least 2")
    return ClassifierData(clips, names, paths, splits, crossval=s.mode == "crossval")


# --------------------------------------------------------------------------------------------- the encoder
def _tower_settings_of_clap_model(clap: Any) -> dict[str, Any]:
    """The ClapTowerConfig fields of a transformers ClapModel's audio side (HTS-AT, MLP projection)."""
    import inspect

    from transformers import ClapAudioConfig, PretrainedConfig

    own = set(inspect.signature(ClapAudioConfig.__init__).parameters) - set(inspect.signature(PretrainedConfig.__init__).parameters)
    audio = {k: v for k, v in clap.config.audio_config.to_dict().items() if k in own and k != "self"}
    return {"audio_encoder": "htsat", "audio_config": audio, "projection": "mlp",
            "projection_dim": int(clap.config.projection_dim), "clip_seconds": 10.0}


def load_encoder(settings: ClassifierModelConfig) -> tuple[dict[str, Any], "dict[str, torch.Tensor] | None", str]:
    """``(tower config fields, state dict with audio_model.* / audio_projection.*, description)`` of the encoder."""
    from ..clap.embedder import is_clap_tower_dir

    if settings.init == "random":
        tower = {"audio_encoder": settings.audio_encoder, "audio_config": dict(settings.audio_config),
                 "projection": settings.projection, "projection_dim": settings.projection_dim,
                 "clip_seconds": settings.clip_seconds}
        return tower, None, "random (model.init=random)"
    source = settings.init_from
    if is_clap_tower_dir(source):
        from ..clap.modeling import ClapTowerModel
        from ..loading import load_pretrained

        tower_model = load_pretrained(ClapTowerModel.from_pretrained, source, what="CLAP tower (model.init_from)")
        tower = tower_model.config.to_dict()
        tower["freeze_audio"] = tower["freeze_text"] = False
        return tower, tower_model.state_dict(), f"CLAP tower {source}"
    from ..features.clap_embed import ClapAudioEmbedder

    clap = ClapAudioEmbedder.from_pretrained(source).model  # hub id, ClapModel directory or LAION checkpoint
    return _tower_settings_of_clap_model(clap), clap.state_dict(), f"CLAP model {source}"


# --------------------------------------------------------------------------------------------- one run
@dataclass
class ClassifierRun:
    """One training run (a split or a fold): how it ended and, when it finished with a test split, its test report."""

    split: str
    result: "TrainingResult"
    test_report: dict[str, Any] | None = None


def _digest(items: Sequence[Any]) -> str:
    from .train_captioner import _digest as digest

    return digest(items)


def train_one(
    config: TrainClassifierConfig, data: ClassifierData, split: "Split", encoder: tuple[dict, Any, str], output_dir: Path,
    accelerator: "Accelerator",
) -> "ClassifierRun":
    """Train (or resume) the classifier of one split into ``output_dir``; evaluate it on the test side."""
    from accelerate.utils import set_seed
    from omegaconf import OmegaConf

    from ..clap.classifier import ClapClassifierModel
    from ..training.classifier import ClassifierTask, LabelledAudioDataset
    from ..training.loop import run_training

    tower_settings, state_dict, described = encoder
    m = config.model
    set_seed(config.seed)  # the same initial head on every process and every fold
    classifier = ClapClassifierModel.from_encoder(tower_settings, state_dict, data.class_names, features=m.features,
                                                  head=m.head, freeze_encoder=m.freeze_encoder, where=described)
    tower_config = classifier.tower_config
    train_set = LabelledAudioDataset([data.paths[i] for i in split.train], data.targets(split.train), tower_config,
                                     seed=config.seed, train=True)
    validation = None
    if split.validation:
        validation = LabelledAudioDataset([data.paths[i] for i in split.validation], data.targets(split.validation),
                                          tower_config, seed=config.seed, train=False)
    config_text = OmegaConf.to_yaml(OmegaConf.structured(config))
    model_config = json.loads(classifier.config.to_json_string(use_diff=False))
    for key in ("transformers_version", "_name_or_path", "architectures"):
        model_config.pop(key, None)
    fingerprint = {
        "classifier": model_config,
        "encoder": described,
        "split": split.name,
        "train": {"clips": len(split.train), "digest": _digest([[data.clips[i].file, data.clips[i].label] for i in split.train])},
        "validation": _digest([[data.clips[i].file, data.clips[i].label] for i in split.validation]),
    }
    task = ClassifierTask(classifier, train_set, validation, fingerprint=fingerprint, run_files={CONFIG_FILE: config_text},
                          export_files={CONFIG_FILE: config_text}, validation_batch_size=config.evaluation_batch_size)
    train_config = config.train
    if validation is None and train_config.best_metric != "val_loss":
        import dataclasses

        logger.warning("%s: no validation clips: no best/ model is picked (train.best_metric=%s)", split.name, train_config.best_metric)
        train_config = dataclasses.replace(train_config, best_metric="val_loss")  # never appears without validation
    if accelerator.is_main_process:
        logger.info("%s; encoder: %s; %s", split.describe(data.clips), described,
                    "linear probe (encoder frozen)" if m.freeze_encoder else "fine-tuning the encoder")
    result = run_training(task, train_config, output_dir=output_dir, seed=config.seed, accelerator=accelerator)
    report = None
    if result.status == "completed" and split.test and accelerator.is_main_process:
        chosen = result.best_dir or result.final_dir
        report = evaluate_saved(chosen, [data.paths[i] for i in split.test], data.targets(split.test),
                                files=[data.clips[i].file for i in split.test], batch_size=config.evaluation_batch_size,
                                seed=config.seed, device=str(accelerator.device))
        report.update(model=str(chosen), split=split.name)
        from ..clap.classification import format_classification_report, write_classification_report

        write_classification_report(report, output_dir / EVALUATION_DIR, title=f"{split.name} test")
        print(f"{split.name} test split ({chosen.name}/): " + format_classification_report(report), flush=True)
    accelerator.wait_for_everyone()
    return ClassifierRun(split.name, result, report)


def evaluate_saved(
    model_dir: str | os.PathLike, paths: Sequence[str], targets: Sequence[int], *, files: Sequence[str] | None = None,
    batch_size: int = 16, seed: int = 0, device: str = "cpu", progress: bool = True,
) -> dict[str, Any]:
    """The classification report of a saved classifier on the given audio files and class indices."""
    import torch

    from ..clap.classification import classification_report
    from ..clap.classifier import load_classifier
    from ..training.classifier import LabelledAudioDataset, predict_logits

    classifier = load_classifier(model_dir).to(torch.device(device))
    dataset = LabelledAudioDataset(paths, targets, classifier.tower_config, seed=seed, train=False)
    logits = predict_logits(classifier, dataset, batch_size=batch_size, progress=progress)
    return classification_report(list(targets), logits, classifier.class_names, files=files)


# --------------------------------------------------------------------------------------------- the job
def train_classifier(config: TrainClassifierConfig, *, accelerator: "Accelerator | None" = None) -> "list[ClassifierRun]":
    """Run (or resume) every run the config asks for: one split, or one per cross-validation fold."""
    from ..training.loop import make_accelerator

    try:
        config.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from err
    data = load_classifier_data(config)  # every CSV row and audio file is checked up front
    encoder = load_encoder(config.model)
    accelerator = accelerator if accelerator is not None else make_accelerator(config.train)
    output_dir = Path(config.output_dir).expanduser()
    results = []
    for split in data.splits:
        run_dir = output_dir / split.name if data.crossval else output_dir
        run = train_one(config, data, split, encoder, run_dir, accelerator)
        results.append(run)
        if run.result.status != "completed":
            return results
    if data.crossval and accelerator.is_main_process:
        from ..clap.classification import crossval_summary, format_crossval

        reports = {run.split: run.test_report for run in results}
        summary = crossval_summary(reports)
        (output_dir / CROSSVAL_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        print(format_crossval(summary), flush=True)
    return results


# --------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enclap-train-classifier",
        description="Train an audio classifier on a CLAP audio encoder, then score it on the test split. Rerun the same "
        "command to resume. `enclap-train-classifier evaluate --help` scores a saved classifier.",
        epilog="Settings: defaults < the YAML config < key=value overrides with dotted names, e.g. model.freeze_encoder=true.",
    )
    parser.add_argument("--config", help="YAML settings (e.g. cfg/clap/classifier_esc50.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    parser.add_argument("args", nargs="*", metavar="key=value", help="overrides")
    return parser


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enclap-train-classifier evaluate",
                                     description="Score a saved classifier (best/ or final/ of a run) on labelled audio.")
    parser.add_argument("--model", required=True, help="a classifier directory")
    parser.add_argument("--labels", required=True, help="ESC-50's meta/esc50.csv or a file,label[,fold][,source] CSV")
    parser.add_argument("--audio-root", required=True, help="root the CSV's files are relative to")
    parser.add_argument("--fold", action="append", help="score only these folds (repeatable; default: every row)")
    parser.add_argument("--output-dir", help="write report.json, confusion_matrix.png and predictions.csv here")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops of clips longer than the window")
    return parser


def evaluate_command(argv: Sequence[str]) -> int:
    from ..clap.classification import format_classification_report, write_classification_report
    from ..clap.classifier import load_classifier
    from ..data.labelled import read_labelled, resolve_audio

    args = build_evaluate_parser().parse_args(argv)
    try:
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
        names = load_classifier(args.model).class_names
        clips = read_labelled(args.labels)
        if args.fold:
            wanted = {str(f) for f in args.fold}
            folds = {c.fold for c in clips}
            if not wanted <= folds:
                raise ConfigError(f"{args.labels}: no fold(s) {sorted(wanted - folds)}; the folds are {sorted(folds)}")
            clips = [c for c in clips if c.fold in wanted]
        index = {name: i for i, name in enumerate(names)}
        unknown = [f"line {c.line}: label '{c.label}' is not a class of {args.model} ({len(names)} classes)"
                   for c in clips if c.label not in index]
        if unknown:
            raise ManifestError(args.labels, unknown)
        paths = resolve_audio(clips, args.audio_root, args.labels)
        report = evaluate_saved(args.model, paths, [index[c.label] for c in clips], files=[c.file for c in clips],
                                batch_size=args.batch_size, seed=args.seed, device=args.device)
    except EnclapError as err:
        print(f"train-classifier evaluate: {err}", file=sys.stderr)
        return 2
    report.update(model=str(args.model), labels=str(args.labels), folds=args.fold or "all")
    print(format_classification_report(report))
    if args.output_dir:
        write_classification_report(report, args.output_dir, title=Path(args.model).name)
        print(f"report: {Path(args.output_dir) / 'report.json'}; picture: {Path(args.output_dir) / 'confusion_matrix.png'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (see the module docstring)."""
    from . import quiet_model_loading
    from .train_captioner import run_training_command

    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0") or 0) == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_model_loading()
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    if argv[:1] == ["evaluate"]:
        return evaluate_command(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        bad = [a for a in args.args if "=" not in a]
        if bad:
            raise ConfigError(f"unexpected argument(s) {bad}: expected key=value overrides (the config file goes after --config)")
        config = load_classifier_train_config(args.config, args.args)
    except ConfigError as err:
        print(f"train-classifier: configuration error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.structured(config)), end="")
        return 0
    holder: dict[str, Any] = {}

    def run() -> "TrainingResult":
        holder["runs"] = train_classifier(config)
        return holder["runs"][-1].result

    status, result = run_training_command("train-classifier", run)
    if result is None or result.status == "interrupted":
        return status
    if int(os.environ.get("RANK", "0") or 0) == 0:
        for run in holder["runs"]:
            print(f"train-classifier: {run.result.output_dir}: {run.result.summary()}", flush=True)
    return 0


__all__ = [
    "ClassifierRun",
    "TrainClassifierConfig",
    "evaluate_saved",
    "load_classifier_data",
    "load_classifier_train_config",
    "load_encoder",
    "main",
    "train_classifier",
]

if __name__ == "__main__":
    raise SystemExit(main())
