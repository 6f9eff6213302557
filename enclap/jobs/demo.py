"""The one-command demo: the whole EnCLAP pipeline, end to end, on the synthetic captioned data set.

    make demo                         # = the venv, then `enclap-demo`
    enclap-demo [--output runs/demo] [--quick] [--device auto] [--force STAGE] [key=value ...]
    python -m enclap.jobs.demo ...

Six stages, each the project's own job, all writing under one directory (``--output``, default
``runs/demo``):

==========  ==========================================================================================
data        :func:`enclap.data.synthetic.generate_dataset`: captioned sound scenes (``data/``)
models      :mod:`enclap.features.random_models`: a small **random-initialised** EnCodec and CLAP
            (``models/``), because the real ones come from the model hub; see below
features    :func:`enclap.jobs.extract.run_extraction`: EnCodec codes + CLAP embeddings of every clip
            (``features/``, a sharded feature store)
train       :func:`enclap.jobs.train_captioner.train_captioner` with ``cfg/demo.yaml``: a small BART
            captioner with EnCLAP's objective, trained from scratch (``captioner/``)
evaluate    :func:`enclap.jobs.evaluate.run_evaluation` on the test split, for the trained captioner and,
            as a reference point, for the same network at its random initialisation (``eval/``)
caption     :class:`enclap.pipeline.CaptioningPipeline` on three test recordings, from audio (``captions.csv``)
==========  ==========================================================================================

``summary.json`` then lists the paths, the scores and each stage's wall time.

**Resuming.** A stage is skipped when it finished before with the same settings: each stage records a
fingerprint of what decides its output (its own settings and the fingerprints of the stages it reads),
in ``.demo/<stage>.json``. A stage that was interrupted with the same settings is run again and resumes
through its job's own resume (the extraction skips stored clips, the training continues from its last
checkpoint, the evaluation from its partial predictions). A stage whose settings changed starts over, and
so do the stages after it; the ones before it are kept. ``--force STAGE`` redoes a stage and every stage
after it. Where things run (``--device``, progress bars) is not part of any fingerprint, and neither is
where the output directory is: a finished run can be moved as a whole. (An extraction interrupted before
a move must be finished in place: the feature store records its models' paths and refuses others.)

**Random feature models.** Without hub access the real EnCodec (``facebook/encodec_24khz``) and CLAP
(``laion/clap-htsat-fused``) cannot be loaded, and the project never falls back to random weights on its
own: the demo *asks* for random ones, and says so loudly. Their features still distinguish sounds, so the
captioner learns the synthetic data set; captions of real recordings mean nothing. With the hub (or local
copies) ``--encodec facebook/encodec_24khz --clap laion/clap-htsat-fused`` runs the same demo on the
real feature models (much slower on a CPU).

Exit codes of :func:`main`: 0 done, 1 a stage failed (its message says which and why), 2 usage or
configuration error (bad option or training setting, a feature model that cannot be found), 130 / 143
interrupted by SIGINT / SIGTERM (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, EnclapError, ManifestError, PretrainedNotFoundError

logger = logging.getLogger(__name__)

STAGES = ("data", "models", "features", "train", "evaluate", "caption")
STATE_DIR = ".demo"
SUMMARY_FILE = "summary.json"
CAPTIONS_FILE = "captions.csv"
DEFAULT_OUTPUT = "runs/demo"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "cfg" / "demo.yaml"
NUM_CAPTIONED_FILES = 3
REAL_ENCODEC = "facebook/encodec_24khz"
REAL_CLAP = "laion/clap-htsat-fused"
# The scores printed in the closing summary (all of them are in the scores JSON and the printed table).
HEADLINE_METRICS = {"bleu_4": "BLEU-4", "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider_d": "CIDEr-D"}
# Training settings that follow from the demo's layout and --device: an override of them is refused.
DEMO_OWNED_KEYS = (
    "output_dir", "data.train_file", "data.validation_file", "data.features", "data.encodec_base_path",
    "data.clap_base_path", "data.validation_features", "data.encodec_model", "data.clap_model", "train.cpu",
    "train.progress",
)


@dataclass(frozen=True)
class DemoScale:
    """How big the demo is: the synthetic data set, and training overrides on top of the demo config."""

    num_train: int
    num_valid: int
    num_test: int
    seconds: float
    captions_per_clip: int = 5
    train_overrides: tuple[str, ...] = ()


# The full demo: a few minutes on 2 CPU cores (the figures in README.md), enough training for the
# captions to follow the audio.
FULL = DemoScale(num_train=400, num_valid=40, num_test=40, seconds=4.0)
# --quick: the same stages at a size the tests run in seconds; the captioner still learns visibly.
QUICK = DemoScale(
    num_train=24,
    num_valid=8,
    num_test=8,
    seconds=3.0,
    train_overrides=(
        "model.d_model=64",
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "model.ffn_dim=128",
        "model.dropout=0.0",
        "train.num_train_epochs=10",
        "train.train_batch_size=8",
        "train.per_device_eval_batch_size=16",
        "train.learning_rate=3.0e-03",
        "train.num_warmup_steps=5",
        "train.checkpointing_steps=epoch",
        "validation.num_beams=2",
        "validation.val_max_target_length=32",
    ),
)


@dataclass
class DemoOptions:
    """Everything the command line sets."""

    output: Path = Path(DEFAULT_OUTPUT)
    quick: bool = False
    device: str = "auto"
    config: Path = DEFAULT_CONFIG  # the captioner's training config
    overrides: list[str] = field(default_factory=list)  # key=value overrides of the training config
    force: list[str] = field(default_factory=list)  # stages to redo (with every stage after them)
    seed: int = 0  # of the synthetic data and the random feature models
    encodec: str | None = None  # real feature models instead of random ones (both or neither)
    clap: str | None = None
    progress: bool = True

    @property
    def scale(self) -> DemoScale:
        return QUICK if self.quick else FULL

    @property
    def random_feature_models(self) -> bool:
        return self.encodec is None

    def validate(self) -> None:
        if (self.encodec is None) != (self.clap is None):
            raise ConfigError(
                "give both --encodec and --clap (the real feature models), or neither (the demo then builds random ones)"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps|xpu(:\d+)?", self.device):
            raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N, mps or xpu, got {self.device!r}")
        unknown = [s for s in self.force if s not in STAGES and s != "all"]
        if unknown:
            raise ConfigError(f"--force {', '.join(unknown)}: unknown stage; stages are {', '.join(STAGES)} (or all)")
        owned = [o for o in self.overrides if o.split("=", 1)[0].strip() in DEMO_OWNED_KEYS]
        if owned:
            raise ConfigError(
                f"{', '.join(owned)}: the demo sets {', '.join(o.split('=', 1)[0] for o in owned)} itself "
                "(use --output / --device, or run train.py with the config for other paths)"
            )
        if not Path(self.config).is_file():
            raise ConfigError(
                f"training config {self.config} not found; the demo's is cfg/demo.yaml in the repository (pass --config FILE)"
            )


@dataclass
class StageReport:
    """What happened to one stage in this invocation."""

    name: str
    status: str  # "done" (ran now), "skipped" (already done with the same settings)
    seconds: float  # wall time of the run that produced the output (for a skipped stage: when it ran)
    resumed: bool = False  # ran again after an interruption with the same settings
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoResult:
    """The outcome of :func:`run_demo` (also written to ``summary.json``)."""

    output: Path
    stages: dict[str, StageReport]
    paths: dict[str, str]
    scores: dict[str, float]
    baseline_scores: dict[str, float]
    unavailable_metrics: dict[str, str]
    captions: list[dict[str, Any]]
    random_feature_models: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "random_feature_models": self.random_feature_models,
            "seconds": round(self.seconds, 2),
            "stages": {name: asdict(report) for name, report in self.stages.items()},
            "paths": self.paths,
            "scores": self.scores,
            "untrained_scores": self.baseline_scores,
            "unavailable_metrics": self.unavailable_metrics,
            "captions": self.captions,
        }


class DemoInterrupted(EnclapError):
    """A stage was stopped by a signal after saving what it had; rerunning resumes it."""

    def __init__(self, stage: str, signal_name: str) -> None:
        super().__init__(f"stage '{stage}' stopped by {signal_name}; rerun the same command to resume it")
        self.stage = stage
        self.signal_name = signal_name


class StageFailed(EnclapError):
    """A stage finished without producing a usable output (the message says why)."""


# --------------------------------------------------------------------------------------------- layout


class Layout:
    """Where each stage writes, under the demo's output directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        self.data = self.root / "data"
        self.audio = self.data / "audio"
        self.csv = self.data / "csv"
        self.models = self.root / "models"
        self.features = self.root / "features"
        self.captioner = self.root / "captioner"
        self.eval = self.root / "eval"
        self.untrained = self.eval / "untrained"  # the captioner at its random initialisation (a checkpoint)
        self.captions = self.root / CAPTIONS_FILE
        self.summary = self.root / SUMMARY_FILE
        self.state = self.root / STATE_DIR

    def manifest(self, split: str) -> Path:
        return self.csv / f"{split}.csv"

    def predictions(self, which: str) -> Path:
        return self.eval / f"{which}.predictions.csv"

    def scores(self, which: str) -> Path:
        return self.eval / f"{which}.scores.json"


# --------------------------------------------------------------------------------------------- stage records


def fingerprint_of(value: Any) -> str:
    """A short stable digest of JSON-serialisable settings."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _read_state(layout: Layout, stage: str) -> dict[str, Any] | None:
    path = layout.state / f"{stage}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_state(layout: Layout, stage: str, state: dict[str, Any]) -> None:
    layout.state.mkdir(parents=True, exist_ok=True)
    path = layout.state / f"{stage}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# --------------------------------------------------------------------------------------------- the stages


class _Demo:
    """The stages of one demo invocation; :meth:`run` goes through them in order."""

    def __init__(self, options: DemoOptions) -> None:
        options.validate()
        self.options = options
        self.layout = Layout(options.output)
        self.scale = options.scale
        self.reports: dict[str, StageReport] = {}
        self.fingerprints: dict[str, str] = {}
        forced = set(options.force)
        first_forced = min((STAGES.index(s) for s in forced if s in STAGES), default=len(STAGES))
        self.forced = set(STAGES) if "all" in forced else set(STAGES[first_forced:])

    # ------------------------------------------------------------------------- the driver

    def _stage(
        self,
        index: int,
        name: str,
        settings: dict[str, Any],
        *,
        run: Callable[[bool], dict[str, Any]],
        check: Callable[[dict[str, Any]], str | None],
        wipe: Sequence[Path] = (),
        describe: str,
    ) -> StageReport:
        """Skip, resume or (re)do stage ``name``; ``settings`` must include upstream fingerprints."""
        fingerprint = fingerprint_of(settings)
        self.fingerprints[name] = fingerprint
        header = f"[{index}/{len(STAGES)}] {name}: {describe}"
        state = _read_state(self.layout, name)
        same = state is not None and state.get("fingerprint") == fingerprint
        if same and state.get("status") == "done" and name not in self.forced:
            problem = check(state.get("result") or {})
            if problem is None:
                seconds = float(state.get("seconds", 0.0))
                _say(f"{header} -- already done with these settings ({_duration(seconds)} when it ran), skipped")
                report = StageReport(name, "skipped", seconds, result=state.get("result") or {})
                self.reports[name] = report
                return report
            _say(f"{header} -- its output is incomplete ({problem}); running it again")
        fresh = name in self.forced or not same
        resumed = same and not fresh and state.get("status") != "done"
        if fresh:
            if state is not None and name not in self.forced:
                _say(f"{header} -- settings changed since it last ran: starting it over")
            elif name in self.forced:
                _say(f"{header} -- forced: starting it over")
            else:
                _say(header)
            for path in wipe:
                _remove(path)
        elif resumed:
            _say(f"{header} -- resuming an interrupted run with the same settings")
        else:
            _say(header)
        _write_state(self.layout, name, {"stage": name, "fingerprint": fingerprint, "status": "running", "settings": settings})
        started = time.monotonic()
        result = run(fresh)
        seconds = time.monotonic() - started
        problem = check(result)
        if problem is not None:
            raise StageFailed(f"stage '{name}' finished but its output is not usable: {problem}")
        _write_state(
            self.layout, name,
            {"stage": name, "fingerprint": fingerprint, "status": "done", "settings": settings,
             "seconds": round(seconds, 3), "result": result},
        )
        _say(f"    {name} done in {_duration(seconds)}")
        report = StageReport(name, "done", seconds, resumed=resumed, result=result)
        self.reports[name] = report
        return report

    def run(self) -> DemoResult:
        started = time.monotonic()
        opts, layout = self.options, self.layout
        self.train_config()  # a bad training setting is reported now, not after minutes of extraction
        layout.root.mkdir(parents=True, exist_ok=True)
        _say(f"EnCLAP demo{' (quick)' if opts.quick else ''}: everything goes under {layout.root}")
        if opts.random_feature_models:
            _say(_RANDOM_BANNER)
        self.stage_data(1)
        self.stage_models(2)
        self.stage_features(3)
        self.stage_train(4)
        self.stage_evaluate(5)
        self.stage_caption(6)
        result = self._result(time.monotonic() - started)
        tmp = layout.summary.with_name(f".{layout.summary.name}.tmp")
        tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        os.replace(tmp, layout.summary)
        return result

    # ------------------------------------------------------------------------- 1. data

    def _synthetic_config(self):
        from ..data.synthetic import SyntheticConfig

        s = self.scale
        return SyntheticConfig(
            num_train=s.num_train, num_valid=s.num_valid, num_test=s.num_test, seconds=s.seconds,
            captions_per_clip=s.captions_per_clip, seed=self.options.seed,
        )

    def stage_data(self, index: int) -> None:
        config = self._synthetic_config()
        layout = self.layout

        def run(fresh: bool) -> dict[str, Any]:
            from ..data.synthetic import generate_dataset

            # generate_dataset rewrites only what differs and removes clips of a larger earlier run, so
            # there is nothing to wipe first.
            generate_dataset(layout.data, config)
            return {"clips": {"train": config.num_train, "valid": config.num_valid, "test": config.num_test},
                    "seconds_per_clip": config.seconds}

        def check(result: dict[str, Any]) -> str | None:
            from ..data.manifest import read_manifest

            expected = {"train": config.num_train, "valid": config.num_valid, "test": config.num_test}
            for split, count in expected.items():
                try:
                    clips = read_manifest(layout.manifest(split))
                except (OSError, EnclapError) as err:
                    return f"{layout.manifest(split)}: {err}"
                if len(clips) != count:
                    return f"{layout.manifest(split)} has {len(clips)} clips, expected {count}"
                missing = [c.file_path for c in clips if not (layout.audio / (c.key + ".wav")).is_file()]
                if missing:
                    return f"{len(missing)} audio file(s) of {split} missing (first: {missing[0]})"
            return None

        self._stage(
            index, "data", {"synthetic": asdict(config)}, run=run, check=check,
            describe=f"synthetic captioned sound scenes, {config.num_train}/{config.num_valid}/{config.num_test} "
                     f"train/valid/test clips of {config.seconds:g} s, {config.captions_per_clip} captions each -> {layout.data}",
        )

    # ------------------------------------------------------------------------- 2. models

    def _feature_model_paths(self) -> tuple[str, str]:
        if self.options.random_feature_models:
            return str(self.layout.models / "encodec"), str(self.layout.models / "clap")
        return str(self.options.encodec), str(self.options.clap)

    def stage_models(self, index: int) -> None:
        opts, layout = self.options, self.layout
        if not opts.random_feature_models:
            settings = {"encodec": opts.encodec, "clap": opts.clap}
            self.fingerprints["models"] = fingerprint_of(settings)
            _say(f"[{index}/{len(STAGES)}] models: using the given feature models EnCodec={opts.encodec}, CLAP={opts.clap}")
            self.reports["models"] = StageReport("models", "skipped", 0.0, result={"random": False, **settings})
            return
        settings = {"random_models": {"seed": opts.seed, "projection_dim": 512, "builder": "enclap.features.random_models"}}

        def run(fresh: bool) -> dict[str, Any]:
            from ..features.random_models import save_random_feature_models

            paths = save_random_feature_models(layout.models, seed=opts.seed, projection_dim=512)
            return {"random": True, "encodec": str(paths.encodec), "clap": str(paths.clap)}

        def check(result: dict[str, Any]) -> str | None:
            from ..features.random_models import is_random_model_dir

            for part in ("encodec", "clap"):
                directory = layout.models / part
                if not (is_random_model_dir(directory) and (directory / "config.json").is_file()):
                    return f"{directory} is not a complete model directory"
            return None

        self._stage(
            index, "models", settings, run=run, check=check, wipe=[layout.models],
            describe=f"RANDOM-initialised EnCodec (24 kHz, 16 codebooks at 12 kbps) and fused CLAP (48 kHz, 512-d), "
                     f"seed {opts.seed} -> {layout.models}",
        )

    # ------------------------------------------------------------------------- 3. features

    def _extract_config(self):
        from ..jobs.extract import ExtractConfig

        encodec, clap = self._feature_model_paths()
        return ExtractConfig(
            input=str(self.layout.audio),  # the whole audio folder: keys are train/clip_0001 ... as in the manifests
            output=str(self.layout.features),
            encodec=encodec,
            clap=clap,
            bandwidth=12.0,
            batch_size=16,
            device=self.options.device,
            shard_size=64,
            decode_workers=1,
            progress=self.options.progress,
        )

    def _all_keys(self) -> list[str]:
        from ..data.manifest import read_manifest

        keys: list[str] = []
        for split in ("train", "valid", "test"):
            keys += [c.key for c in read_manifest(self.layout.manifest(split))]
        return keys

    def stage_features(self, index: int) -> None:
        layout = self.layout
        config = self._extract_config()
        settings = {
            "upstream": {"data": self.fingerprints["data"], "models": self.fingerprints["models"]},
            # Which models is part of "models"; batching, processes, threads and the device do not change the
            # features (the extraction job keeps them batch-independent), so only these decide them:
            "extract": {"bandwidth": config.bandwidth, "max_seconds": config.max_seconds},
        }

        def run(fresh: bool) -> dict[str, Any]:
            from ..jobs.extract import run_extraction

            summary = run_extraction(config)
            _say("    " + summary.format().replace("\n", "\n    "))
            if summary.failed:
                raise StageFailed(f"feature extraction failed for {len(summary.failed)} file(s); see {layout.features / 'failures.csv'}")
            return {"clips": summary.total, "extracted": summary.done, "already_stored": summary.skipped_existing}

        def check(result: dict[str, Any]) -> str | None:
            from ..features.store import open_feature_store

            try:
                store = open_feature_store(str(layout.features))
                missing = [k for k in self._all_keys() if k not in store]
            except (OSError, EnclapError, ValueError) as err:
                return f"{layout.features}: {err}"
            if missing:
                return f"{len(missing)} clip(s) missing from {layout.features} (first: {missing[0]})"
            return None

        self._stage(
            index, "features", settings, run=run, check=check, wipe=[layout.features],
            describe=f"EnCodec codes + CLAP embeddings of every clip -> {layout.features}",
        )

    # ------------------------------------------------------------------------- 4. train

    def train_config(self):
        """The resolved training config: cfg/demo.yaml < --quick sizes < the demo's paths < user overrides."""
        from ..jobs.train_captioner import load_train_config

        layout = self.layout
        cpu = self.options.device == "cpu" or (self.options.device == "auto" and not _cuda_available())
        overrides = [
            *self.scale.train_overrides,
            f"output_dir={layout.captioner}",
            f"data.train_file={layout.manifest('train')}",
            f"data.validation_file={layout.manifest('valid')}",
            f"data.features={layout.features}",
            f"train.cpu={str(cpu).lower()}",
            f"train.progress={str(self.options.progress).lower()}",
        ]
        if self.options.random_feature_models:
            # pipeline.json of the exported models names the feature models relative to the model directory
            # (captioner/final -> ../../models/...), so the run directory can be moved as a whole.
            overrides += ["data.encodec_model=../../models/encodec", "data.clap_model=../../models/clap"]
        overrides += list(self.options.overrides)
        try:
            return load_train_config(self.options.config, overrides)
        except ConfigError as err:
            raise ConfigError(f"training config {self.options.config} + overrides: {err}") from err

    def stage_train(self, index: int) -> None:
        from omegaconf import OmegaConf

        layout = self.layout
        config = self.train_config()
        resolved = OmegaConf.to_container(OmegaConf.structured(config))
        # Paths follow from --output and where things run is not a setting: neither decides the model.
        for key in ("output_dir",):
            resolved.pop(key)
        for key in ("train_file", "validation_file", "features"):
            resolved["data"].pop(key)
        for key in ("cpu", "progress"):
            resolved["train"].pop(key)
        settings = {"upstream": {"data": self.fingerprints["data"], "features": self.fingerprints["features"]}, "config": resolved}

        def run(fresh: bool) -> dict[str, Any]:
            from ..jobs.train_captioner import train_captioner

            result = train_captioner(config)
            if result.status != "completed":
                raise DemoInterrupted("train", result.signal or "a stop request")
            return {
                "steps": result.global_step,
                "best_val_loss": result.best["value"] if result.best else None,
                "best_step": result.best["step"] if result.best else None,
                "last_validation": result.last_validation,
            }

        def check(result: dict[str, Any]) -> str | None:
            directory = layout.captioner / "final"
            for name in ("config.json", "model.safetensors", "pipeline.json"):
                if not (directory / name).is_file():
                    return f"{directory / name} is missing"
            return None

        m = config.model
        self._stage(
            index, "train", settings, run=run, check=check, wipe=[layout.captioner],
            describe=f"a {m.encoder_layers}+{m.decoder_layers}-layer BART captioner (d_model {m.d_model}, random start) with "
                     f"EnCLAP's caption + masked-codec-modeling loss, {config.train.num_train_epochs} epochs "
                     f"(config {self.options.config}) -> {layout.captioner}",
        )

    def trained_checkpoint(self) -> Path:
        """The model the demo evaluates and uses: the best by validation loss (else the final one)."""
        best = self.layout.captioner / "best"
        return best if (best / "config.json").is_file() else self.layout.captioner / "final"

    # ------------------------------------------------------------------------- 5. evaluate

    def _save_untrained(self) -> Path:
        """The captioner at its random initialisation (same config and seed), saved as a checkpoint."""
        from accelerate.utils import set_seed

        from ..data.dataset import store_geometry
        from ..features.store import open_feature_store
        from ..jobs.train_captioner import TOKENIZER_DIR, build_model
        from ..pipeline import CaptioningPipeline, PipelineSettings
        from ..text import load_tokenizer

        config = self.train_config()
        trained = self.trained_checkpoint()
        store = open_feature_store(str(self.layout.features))
        num_codebooks, d_clap = store_geometry(store, self._all_keys()[0])
        extractor = (getattr(store, "metadata", None) or {}).get("extractor") or {}
        codebook_size = int((extractor.get("codec") or {}).get("codebook_size", 1024))  # as the training job reads it
        tokenizer = load_tokenizer(self.layout.captioner / TOKENIZER_DIR) if config.tokenizer.train_from_captions else load_tokenizer(trained)
        set_seed(config.seed)  # as the training job does before building its model
        model = build_model(config, tokenizer, num_codebooks=num_codebooks, d_clap=d_clap, codebook_size=codebook_size)
        settings = PipelineSettings.read(trained)
        directory = self.layout.untrained
        _remove(directory)
        CaptioningPipeline(model.eval(), tokenizer, None, settings=settings, device="cpu").save_pretrained(directory)
        # pipeline.json as the trained model's (same relative feature-model paths: eval/untrained is as deep)
        shutil.copyfile(trained / "pipeline.json", directory / "pipeline.json")
        return directory

    def _evaluate(self, checkpoint: Path, which: str, fresh: bool):
        from .evaluate import build_parser, run_evaluation

        argv = [
            "--ckpt", str(checkpoint),
            "--test_csv", str(self.layout.manifest("test")),
            "--features", str(self.layout.features),
            "--save_path", str(self.layout.predictions(which)),
            "--scores_path", str(self.layout.scores(which)),
            "--device", self.options.device,
        ]
        if fresh:
            argv.append("--no_resume")
        return run_evaluation(build_parser().parse_args(argv))

    def stage_evaluate(self, index: int) -> None:
        layout = self.layout
        settings = {"upstream": {"train": self.fingerprints["train"], "features": self.fingerprints["features"]}}

        def run(fresh: bool) -> dict[str, Any]:
            layout.eval.mkdir(parents=True, exist_ok=True)
            _say(f"    the trained captioner ({self.trained_checkpoint()}) on the {self.scale.num_test} test clips:")
            trained = self._evaluate(self.trained_checkpoint(), "trained", fresh)
            _say("    the same captioner at its random initialisation (a reference point: what training added):")
            untrained = self._evaluate(self._save_untrained(), "untrained", True)
            return {
                "scores": trained.scores,
                "untrained_scores": untrained.scores,
                "unavailable": trained.unavailable,
                "model": self.trained_checkpoint().name,
            }

        def check(result: dict[str, Any]) -> str | None:
            for which in ("trained", "untrained"):
                path = layout.scores(which)
                try:
                    scores = json.loads(path.read_text()).get("scores") or {}
                except (OSError, ValueError) as err:
                    return f"{path}: {err}"
                if "cider_d" not in scores:
                    return f"{path} holds no CIDEr-D score"
            return None

        self._stage(
            index, "evaluate", settings, run=run, check=check, wipe=[layout.eval],
            describe=f"caption the test split from its features and score with the AAC metrics -> {layout.eval}",
        )

    # ------------------------------------------------------------------------- 6. caption

    def stage_caption(self, index: int) -> None:
        layout = self.layout
        settings = {"upstream": {"train": self.fingerprints["train"], "data": self.fingerprints["data"],
                                 "models": self.fingerprints["models"]}, "files": NUM_CAPTIONED_FILES}

        def run(fresh: bool) -> dict[str, Any]:
            from ..data.manifest import read_manifest
            from ..pipeline import CaptioningPipeline

            clips = read_manifest(layout.manifest("test"))[:NUM_CAPTIONED_FILES]
            files = [layout.audio / (c.key + ".wav") for c in clips]
            encodec, clap = self._feature_model_paths()
            pipeline = CaptioningPipeline.from_pretrained(
                self.trained_checkpoint(), encodec=encodec, clap=clap, device=self.options.device
            )
            results = pipeline.caption_files(files, skip_errors=True)
            rows = []
            for clip, file, r in zip(clips, files, results):
                if r.error:
                    raise StageFailed(f"{file}: {r.error}")
                rows.append({"file": str(file), "caption": r.caption, "references": list(clip.captions)})
            tmp = layout.captions.with_name(f".{layout.captions.name}.tmp")
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                width = max(len(r["references"]) for r in rows)
                writer.writerow(["file", "caption"] + [f"reference_{i + 1}" for i in range(width)])
                for row in rows:
                    writer.writerow([row["file"], row["caption"], *row["references"]])
            os.replace(tmp, layout.captions)
            for row in rows:  # recorded relative to the output directory, which may move
                row["file"] = str(Path(row["file"]).relative_to(layout.root))
            return {"captions": rows}

        def check(result: dict[str, Any]) -> str | None:
            rows = result.get("captions") or []
            if len(rows) != NUM_CAPTIONED_FILES or not layout.captions.is_file():
                return f"{layout.captions} does not hold {NUM_CAPTIONED_FILES} captions"
            return None

        self._stage(
            index, "caption", settings, run=run, check=check, wipe=[layout.captions],
            describe=f"caption {NUM_CAPTIONED_FILES} test recordings from their audio (EnCodec + CLAP + captioner) -> {layout.captions}",
        )
        for row in self.reports["caption"].result["captions"]:
            _say(f"    {layout.root / row['file']}\n      caption:   {row['caption']}\n"
                 f"      reference: {row['references'][0]}")

    # ------------------------------------------------------------------------- summary

    def _result(self, seconds: float) -> DemoResult:
        layout = self.layout
        evaluation = self.reports["evaluate"].result
        paths = {
            "data": str(layout.data),
            "manifests": str(layout.csv),
            "feature_models": str(layout.models) if self.options.random_feature_models else f"{self.options.encodec} + {self.options.clap}",
            "features": str(layout.features),
            "captioner": str(layout.captioner),
            "trained_model": str(self.trained_checkpoint()),
            "final_model": str(layout.captioner / "final"),
            "training_log": str(layout.captioner / "train_log.jsonl"),
            "predictions": str(layout.predictions("trained")),
            "scores": str(layout.scores("trained")),
            "untrained_model": str(layout.untrained),
            "captions": str(layout.captions),
            "summary": str(layout.summary),
        }
        return DemoResult(
            output=layout.root,
            stages=self.reports,
            paths=paths,
            scores=dict(evaluation.get("scores") or {}),
            baseline_scores=dict(evaluation.get("untrained_scores") or {}),
            unavailable_metrics=dict(evaluation.get("unavailable") or {}),
            captions=list(self.reports["caption"].result.get("captions") or []),
            random_feature_models=self.options.random_feature_models,
            seconds=seconds,
        )


_RANDOM_BANNER = """
!!! The EnCodec and CLAP feature models of this demo are RANDOM-INITIALISED (the model hub is not used). !!!
    Their features still tell the synthetic sounds apart, so the captioner learns this data set, but its
    captions come from the synthetic training data only and mean nothing for real recordings. With the hub
    or local copies, run the same demo on the real models:
        enclap-demo --encodec facebook/encodec_24khz --clap laion/clap-htsat-fused
"""


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _say(text: str) -> None:
    print(text, flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def format_summary(result: DemoResult) -> str:
    """The closing report: where everything is, the scores (trained vs untrained), the time of each stage."""
    lines = ["", f"==== EnCLAP demo finished in {_duration(result.seconds)}: everything is under {result.output} ===="]
    width = max(len(k) for k in result.paths)
    lines += [f"  {name.ljust(width)}  {path}" for name, path in result.paths.items()]
    if result.scores:
        names = [m for m in HEADLINE_METRICS if m in result.scores]
        head = " | ".join(f"{HEADLINE_METRICS[m]:>8}" for m in names)
        lines += ["", f"  test scores            | {head}",
                  "  trained captioner      | " + " | ".join(f"{result.scores[m]:8.4f}" for m in names),
                  "  untrained (random init)| " + " | ".join(f"{result.baseline_scores.get(m, float('nan')):8.4f}" for m in names)]
        if result.unavailable_metrics:
            lines.append(f"  not computed here: {', '.join(sorted(result.unavailable_metrics))} "
                         "(`enclap-metrics check` says why and how to enable them)")
    lines += ["", "  stage      status              wall time (of the run that did it)"]
    for name in STAGES:
        report = result.stages.get(name)
        if report is not None:
            status = report.status + (" (resumed)" if report.resumed else "")
            lines.append(f"  {name:<10} {status:<19} {_duration(report.seconds)}")
    if result.random_feature_models:
        lines += ["", "  Reminder: the EnCodec / CLAP models were random (see the note at the start); use "
                      "--encodec facebook/encodec_24khz --clap laion/clap-htsat-fused for the real ones."]
    lines += ["", "  Rerun the same command to skip what is done (an interrupted stage resumes); --force STAGE redoes a stage."]
    return "\n".join(lines)


def run_demo(options: DemoOptions) -> DemoResult:
    """Run (or resume, or skip) every stage; returns what was done and where (also in ``summary.json``).

    Raises :class:`~enclap.errors.ConfigError` for bad options, :class:`DemoInterrupted` when a stage
    was stopped by a signal (its work is saved), :class:`StageFailed` or another
    :class:`~enclap.errors.EnclapError` when a stage cannot finish.
    """
    return _Demo(options).run()


# --------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enclap-demo",
        description=(
            "The whole EnCLAP pipeline on a synthetic captioned data set, offline, in a few minutes on a CPU: "
            "generate the data, extract EnCodec + CLAP features (random-initialised models unless --encodec/--clap "
            "name real ones), train a small captioner, evaluate it with the AAC metrics, caption a few recordings. "
            "Rerun to skip finished stages; an interrupted stage resumes."
        ),
        epilog="Extra key=value arguments override the training config (e.g. train.num_train_epochs=4); "
               "they change the train stage's settings, so training and the stages after it are redone.",
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"directory for everything (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--quick", action="store_true", help="a much smaller run (tens of clips, a tiny captioner): seconds, for tests")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--force", action="append", default=[], metavar="STAGE",
                        help=f"redo STAGE and every stage after it ({', '.join(STAGES)}, or all); repeatable")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the captioner's training config (default: cfg/demo.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data set and the random feature models")
    parser.add_argument("--encodec", default=None, help=f"a real EnCodec (hub id or directory), e.g. {REAL_ENCODEC}; needs --clap")
    parser.add_argument("--clap", default=None, help=f"a real CLAP (hub id or directory), e.g. {REAL_CLAP}; needs --encodec")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides")
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM as an exception, so that the jobs' ``finally`` blocks save what they have."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (see the module docstring)."""
    from . import quiet_model_loading

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"enclap-demo: unexpected argument(s) {bad}: expected key=value training config overrides", file=sys.stderr)
        return 2
    options = DemoOptions(
        output=Path(args.output), quick=args.quick, device=args.device, config=Path(args.config),
        overrides=list(args.overrides), force=list(args.force), seed=args.seed, encodec=args.encodec,
        clap=args.clap, progress=args.progress,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_model_loading()
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    in_main_thread = _main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        result = run_demo(options)
    except DemoInterrupted as err:
        print(f"enclap-demo: {err}", file=sys.stderr)
        return 143 if err.signal_name == "SIGTERM" else 130
    except (ConfigError, ManifestError, PretrainedNotFoundError) as err:
        print(f"enclap-demo: {err}", file=sys.stderr)
        return 2
    except EnclapError as err:
        print(f"enclap-demo: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        name = "SIGTERM" if isinstance(err, _Terminated) else "SIGINT"
        print(f"enclap-demo: interrupted by {name}; finished work is saved, rerun the same command to resume", file=sys.stderr)
        return 143 if name == "SIGTERM" else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(format_summary(result), flush=True)
    return 0


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


__all__ = [
    "DemoInterrupted",
    "DemoOptions",
    "DemoResult",
    "DemoScale",
    "FULL",
    "Layout",
    "QUICK",
    "STAGES",
    "StageFailed",
    "StageReport",
    "build_parser",
    "format_summary",
    "main",
    "run_demo",
]

if __name__ == "__main__":
    raise SystemExit(main())
