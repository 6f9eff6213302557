"""The one-command demo: the whole EnCLAP pipeline, end to end, on the synthetic captioned data set.

    make demo                         # = the venv, then `enclap-demo`
    enclap-demo [--output runs/demo] [--quick] [--seed N] [--device auto] [--force STAGE] [key=value ...]
    python -m enclap.jobs.demo ...

Seven stages, each the project's own job, all writing under one directory (``--output``, default
``runs/demo``):

==========  ==========================================================================================
data        :func:`enclap.data.synthetic.generate_dataset`: captioned sound scenes (``data/``)
models      :mod:`enclap.features.random_models`: a small **random-initialised** EnCodec and CLAP
            (``models/``), because the real ones come from the model hub; see below
clap        :func:`enclap.jobs.train_clap.train_clap` with ``cfg/clap/tiny.yaml``: a tiny CLAP tower trained
            from scratch on the training split's audio and captions (``clap/``), then its retrieval R@1 and
            zero-shot accuracy on the test split next to chance (``clap/test_report.json``)
features    :func:`enclap.jobs.extract.run_extraction`: EnCodec codes + the trained tower's CLAP embeddings
            of every clip (``features/``, a sharded feature store)
train       :func:`enclap.jobs.train_captioner.train_captioner` with ``cfg/demo.yaml``: a small BART
            captioner with EnCLAP's objective, trained from scratch (``captioner/``)
evaluate    :func:`enclap.jobs.evaluate.run_evaluation` on the test split, for the trained captioner and, as
            reference points, an audio-blind baseline (the training caption that scores best on the
            validation split, given for every test clip) and the same network at its random
            initialisation (``eval/``)
caption     :class:`enclap.pipeline.CaptioningPipeline` on three test recordings, from audio (``captions.csv``)
==========  ==========================================================================================

``summary.json`` then lists the paths, the scores and each stage's wall time.

**Reproducible.** The same command with the same ``--seed`` gives bit-identical models and scores on the
same machine and thread count: the demo runs with ``torch.use_deterministic_algorithms`` (on CPU the one
kernel that mattered is the accumulating scatter behind the masked-codec loss's gather, whose
multi-threaded backward adds in a varying order), and every random draw is seeded. ``--seed N`` seeds
everything: the data, the random EnCodec, the CLAP tower's and the captioner's training (config seed + N).

**Resuming.** A stage is skipped when it finished before with the same settings: each stage records a
fingerprint of what decides its output (its own settings and the fingerprints of the stages it reads),
in ``.demo/<stage>.json``. A stage that was interrupted with the same settings is run again and resumes
through its job's own resume (the extraction skips stored clips, the training continues from its last
checkpoint, the evaluation from its partial predictions). A stage whose settings changed starts over, and
so do the stages after it; the ones before it are kept. ``--force STAGE`` redoes a stage and every stage
after it. Where things run (``--device``, progress bars) is not part of any fingerprint, and neither is
where the output directory is: a finished run can be moved as a whole. (An extraction interrupted before
a move must be finished in place: the feature store records its models' paths and refuses others.)

**Feature models.** Without hub access the real EnCodec (``facebook/encodec_24khz``) and CLAP
(``laion/clap-htsat-fused``) cannot be loaded, and the project never falls back to random weights on its
own: the demo *asks* for a random EnCodec, says so loudly, and trains its own tiny CLAP tower (a random
CLAP is built as well, for ``bench/bench_ablation.py``). Their features distinguish the synthetic sounds,
so the captioner learns the synthetic data set; captions of real recordings mean nothing. With the hub (or local
copies) ``--encodec facebook/encodec_24khz --clap laion/clap-htsat-fused`` runs the same demo on the
real feature models (much slower on a CPU; the clap stage then has nothing to do).

Exit codes of :func:`main`: 0 done, 1 a stage failed (its message says which and why), 2 usage or
configuration error (bad option or training setting, a feature model that cannot be found), 130 / 143
interrupted by SIGINT / SIGTERM (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
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
from typing import Any, Iterator, Sequence

from ..errors import ConfigError, EnclapError, ManifestError, PretrainedNotFoundError
from .demo_records import STATE_DIR, StageFailed, StageReport, StageRunner, fingerprint_of, remove, say
from .demo_report import HEADLINE_METRICS, RANDOM_BANNER, DemoResult, format_summary

logger = logging.getLogger(__name__)

STAGES = ("data", "models", "clap", "features", "train", "evaluate", "caption")
SUMMARY_FILE = "summary.json"
CAPTIONS_FILE = "captions.csv"
DEFAULT_OUTPUT = "runs/demo"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "cfg" / "demo.yaml"
DEFAULT_CLAP_CONFIG = Path(__file__).resolve().parents[2] / "cfg" / "clap" / "tiny.yaml"
# The audio-blind baseline picks the best of this many training captions (seeded sample) on the validation split.
CONSTANT_CANDIDATES = 150
NUM_CAPTIONED_FILES = 3
REAL_ENCODEC = "facebook/encodec_24khz"
REAL_CLAP = "laion/clap-htsat-fused"
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
    train_overrides: tuple[str, ...] = ()  # on top of cfg/demo.yaml
    clap_overrides: tuple[str, ...] = ()  # on top of cfg/clap/tiny.yaml


# The full demo: a few minutes on 2 CPU cores (bench/bench_demo_seeds.py times it), enough training for the
# captions to follow the audio, and a test split large enough (200 clips, 1000 references) that the
# scores move little from one seed to the next (bench/bench_demo_seeds.py measures how little).
FULL = DemoScale(
    num_train=400, num_valid=40, num_test=200, seconds=4.0,
    # 4 epochs = 1600 clip-caption pairs, about what the tower's own test trains on to beat chance clearly
    clap_overrides=("train.num_train_epochs=4",),
)
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
    clap_overrides=("train.num_train_epochs=3", "train.train_batch_size=8", "train.logging_steps=3"),
)


@dataclass
class DemoOptions:
    """Everything the command line sets."""

    output: Path = Path(DEFAULT_OUTPUT)
    quick: bool = False
    device: str = "auto"
    config: Path = DEFAULT_CONFIG  # the captioner's training config
    clap_config: Path = DEFAULT_CLAP_CONFIG  # the CLAP tower's training config
    overrides: list[str] = field(default_factory=list)  # key=value overrides of the training config
    force: list[str] = field(default_factory=list)  # stages to redo (with every stage after them)
    seed: int = 0  # of everything: data, random models, and added to both training configs' seeds
    encodec: str | None = None  # real feature models instead of random ones (both or neither)
    clap: str | None = None
    progress: bool = True
    size: DemoScale | None = None  # another scale than FULL / QUICK (the benchmarks use it)

    @property
    def scale(self) -> DemoScale:
        if self.size is not None:
            return self.size
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
        if self.random_feature_models and not Path(self.clap_config).is_file():
            raise ConfigError(f"CLAP tower config {self.clap_config} not found; the demo's is cfg/clap/tiny.yaml in the repository")


class DemoInterrupted(EnclapError):
    """A stage was stopped by a signal after saving what it had; rerunning resumes it."""

    def __init__(self, stage: str, signal_name: str) -> None:
        super().__init__(f"stage '{stage}' stopped by {signal_name}; rerun the same command to resume it")
        self.stage = stage
        self.signal_name = signal_name


# --------------------------------------------------------------------------------------------- layout


class Layout:
    """Where each stage writes, under the demo's output directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        self.data = self.root / "data"
        self.audio = self.data / "audio"
        self.csv = self.data / "csv"
        self.models = self.root / "models"
        self.clap = self.root / "clap"  # the CLAP tower trained here (best/, final/, checkpoints)
        self.clap_report = self.clap / "test_report.json"
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


# --------------------------------------------------------------------------------------------- the stages


class _Demo:
    """The stages of one demo invocation; :meth:`run` goes through them in order."""

    def __init__(self, options: DemoOptions) -> None:
        options.validate()
        self.options = options
        self.layout = Layout(options.output)
        self.scale = options.scale
        self.runner = StageRunner(self.layout.state, STAGES, options.force)
        self.reports = self.runner.reports
        self.fingerprints = self.runner.fingerprints
        self.forced = self.runner.forced

    def run(self) -> DemoResult:
        started = time.monotonic()
        opts, layout = self.options, self.layout
        self.train_config()  # a bad training setting is reported now, not after minutes of extraction
        layout.root.mkdir(parents=True, exist_ok=True)
        say(f"EnCLAP demo{' (quick)' if opts.quick else ''}: everything goes under {layout.root}")
        if opts.random_feature_models:
            say(RANDOM_BANNER)
        with deterministic_kernels():
            self.stage_data()
            self.stage_models()
            self.stage_clap()
            self.stage_features()
            self.stage_train()
            self.stage_evaluate()
            self.stage_caption()
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

    def stage_data(self) -> None:
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

        self.runner.run(
            "data", {"synthetic": asdict(config)}, run=run, check=check,
            describe=f"synthetic captioned sound scenes, {config.num_train}/{config.num_valid}/{config.num_test} "
                     f"train/valid/test clips of {config.seconds:g} s, {config.captions_per_clip} captions each -> {layout.data}",
        )

    # ------------------------------------------------------------------------- 2. models

    def _feature_model_paths(self) -> tuple[str, str]:
        """(EnCodec, CLAP) the features come from: the random EnCodec and the tower trained here, or the given ones."""
        if self.options.random_feature_models:
            return str(self.layout.models / "encodec"), str(self.trained_clap())
        return str(self.options.encodec), str(self.options.clap)

    def trained_clap(self) -> Path:
        """The CLAP tower the captioner hears through: the best by validation mAP@10 (else the final one)."""
        best = self.layout.clap / "best"
        return best if (best / "config.json").is_file() else self.layout.clap / "final"

    def stage_models(self) -> None:
        opts, layout = self.options, self.layout
        if not opts.random_feature_models:
            settings = {"encodec": opts.encodec, "clap": opts.clap}
            self.runner.not_run("models", settings, f"using the given feature models EnCodec={opts.encodec}, CLAP={opts.clap}",
                                {"random": False, **settings})
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

        self.runner.run(
            "models", settings, run=run, check=check, wipe=[layout.models],
            describe=f"RANDOM-initialised EnCodec (24 kHz, 16 codebooks at 12 kbps) and fused CLAP (48 kHz, 512-d), "
                     f"seed {opts.seed} -> {layout.models}",
        )

    # ------------------------------------------------------------------------- 3. clap

    def _training_overrides(self, output_dir: Path) -> list[str]:
        """What the demo sets in both training configs: where the run writes, its data, where it runs."""
        cpu = self.options.device == "cpu" or (self.options.device == "auto" and not _cuda_available())
        return [
            f"output_dir={output_dir}",
            f"data.train_file={self.layout.manifest('train')}",
            f"data.validation_file={self.layout.manifest('valid')}",
            f"train.cpu={str(cpu).lower()}",
            f"train.progress={str(self.options.progress).lower()}",
        ]

    def clap_config(self):
        """The CLAP tower's training config: cfg/clap/tiny.yaml < the scale's overrides < the demo's paths."""
        from .train_clap import load_clap_train_config

        layout = self.layout
        overrides = [
            *self.scale.clap_overrides,
            *self._training_overrides(layout.clap),
            f"data.audio_root={layout.audio}",
            f"model.clip_seconds={self.scale.seconds}",  # the clips' length: no crops, no padding
        ]
        try:
            config = load_clap_train_config(self.options.clap_config, overrides)
        except ConfigError as err:
            raise ConfigError(f"CLAP tower config {self.options.clap_config}: {err}") from err
        config.seed += self.options.seed
        return config

    def stage_clap(self) -> None:
        from omegaconf import OmegaConf

        layout = self.layout
        if not self.options.random_feature_models:
            self.runner.not_run("clap", {"clap": self.options.clap}, f"using the given CLAP model {self.options.clap}", {})
            return
        config = self.clap_config()
        resolved = OmegaConf.to_container(OmegaConf.structured(config))
        resolved.pop("output_dir")  # paths follow from --output; where things run decides nothing
        for key in ("train_file", "validation_file", "audio_root"):
            resolved["data"].pop(key)
        for key in ("cpu", "progress"):
            resolved["train"].pop(key)
        settings = {"upstream": {"data": self.fingerprints["data"]}, "config": resolved}

        def run(fresh: bool) -> dict[str, Any]:
            from ..clap.embedder import ClapTowerEmbedder
            from ..clap.evaluation import evaluate_retrieval, evaluate_zero_shot, format_report
            from .train_clap import train_clap

            result = train_clap(config)
            if result.status != "completed":
                raise DemoInterrupted("clap", result.signal or "a stop request")
            embedder = ClapTowerEmbedder.from_pretrained(self.trained_clap(), device="cpu")
            retrieval = evaluate_retrieval(embedder, layout.manifest("test"), layout.audio)
            say("    " + format_report(retrieval).replace("\n", "\n    "))
            labels = layout.data / "labels" / "test.csv"
            zero_shot = None
            if len(labels.read_text().splitlines()) > 1:  # a header and at least one single-source clip
                zero_shot = evaluate_zero_shot(embedder, labels, layout.audio)
                say("    " + format_report(zero_shot).replace("\n", "\n    "))
            report = {"model": self.trained_clap().name, "retrieval": retrieval, "zero_shot": zero_shot,
                      "steps": result.global_step, "best": result.best}
            layout.clap_report.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
            return report

        def check(result: dict[str, Any]) -> str | None:
            directory = self.trained_clap()
            for name in ("config.json", "model.safetensors"):
                if not (directory / name).is_file():
                    return f"{directory / name} is missing"
            if not layout.clap_report.is_file():
                return f"{layout.clap_report} is missing"
            return None

        self.runner.run(
            "clap", settings, run=run, check=check, wipe=[layout.clap],
            describe=f"train a tiny CLAP tower from scratch on the {self.scale.num_train} training clips and their captions "
                     f"({config.model.audio_encoder} + {config.model.text_config.get('model_type', 'text')} text tower, "
                     f"{config.train.num_train_epochs} epochs, config {self.options.clap_config}), "
                     f"then retrieval and zero-shot on the test split -> {layout.clap}",
        )

    # ------------------------------------------------------------------------- 4. features

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

    def stage_features(self) -> None:
        layout = self.layout
        config = self._extract_config()
        settings = {
            "upstream": {"data": self.fingerprints["data"], "models": self.fingerprints["models"],
                         "clap": self.fingerprints["clap"]},
            # Which models is part of "models"; batching, processes, threads and the device do not change the
            # features (the extraction job keeps them batch-independent), so only these decide them:
            "extract": {"bandwidth": config.bandwidth, "max_seconds": config.max_seconds},
        }

        def run(fresh: bool) -> dict[str, Any]:
            from ..jobs.extract import run_extraction

            summary = run_extraction(config)
            say("    " + summary.format().replace("\n", "\n    "))
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

        self.runner.run(
            "features", settings, run=run, check=check, wipe=[layout.features],
            describe=f"EnCodec codes + CLAP embeddings of every clip -> {layout.features}",
        )

    # ------------------------------------------------------------------------- 5. train

    def train_config(self):
        """The resolved training config: cfg/demo.yaml < --quick sizes < the demo's paths < user overrides."""
        from ..jobs.train_captioner import load_train_config

        layout = self.layout
        overrides = [*self.scale.train_overrides, *self._training_overrides(layout.captioner), f"data.features={layout.features}"]
        if self.options.random_feature_models:
            # pipeline.json of the exported models names the feature models relative to the model directory
            # (captioner/final -> ../../models/...), so the run directory can be moved as a whole.
            overrides += ["data.encodec_model=../../models/encodec", f"data.clap_model=../../clap/{self.trained_clap().name}"]
        overrides += list(self.options.overrides)
        try:
            config = load_train_config(self.options.config, overrides)
        except ConfigError as err:
            raise ConfigError(f"training config {self.options.config} + overrides: {err}") from err
        config.seed += self.options.seed  # --seed varies the training too (0: the config's own seed)
        return config

    def stage_train(self) -> None:
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
        self.runner.run(
            "train", settings, run=run, check=check, wipe=[layout.captioner],
            describe=f"a {m.encoder_layers}+{m.decoder_layers}-layer BART captioner (d_model {m.d_model}, random start) with "
                     f"EnCLAP's caption + masked-codec-modeling loss, {config.train.num_train_epochs} epochs "
                     f"(config {self.options.config}) -> {layout.captioner}",
        )

    def trained_checkpoint(self) -> Path:
        """The model the demo evaluates and uses: the best by validation loss (else the final one)."""
        best = self.layout.captioner / "best"
        return best if (best / "config.json").is_file() else self.layout.captioner / "final"

    # ------------------------------------------------------------------------- 6. evaluate

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
        remove(directory)
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

    def constant_baseline(self) -> dict[str, Any]:
        """The audio-blind baseline: one caption for every test clip, the best a model deaf to the audio could pick.

        Candidates: a seeded sample of :data:`CONSTANT_CANDIDATES` distinct training captions; chosen by
        mean per-clip CIDEr-D on the validation split (never on test), then scored on the test split with
        the same metrics as the captioner. (Scoring all candidates in one call leaves every per-clip score
        as it is alone: CIDEr-D's document frequencies and corpus size both scale with the copies.)
        """
        import numpy as np

        from ..data.manifest import read_caption_pairs, read_manifest
        from ..metrics import CaptionScorer

        pool = sorted({caption for _, caption in read_caption_pairs(self.layout.manifest("train"))})
        rng = np.random.default_rng([self.options.seed, 7])
        if len(pool) > CONSTANT_CANDIDATES:
            pool = [pool[i] for i in sorted(rng.choice(len(pool), CONSTANT_CANDIDATES, replace=False))]
        valid = [list(c.captions) for c in read_manifest(self.layout.manifest("valid"))]
        chooser = CaptionScorer(metrics=["cider_d"])
        per_clip = chooser.score([c for c in pool for _ in valid], [r for _ in pool for r in valid], per_clip=True).per_clip
        means = np.asarray(per_clip["cider_d"], dtype=float).reshape(len(pool), len(valid)).mean(axis=1)
        best = int(np.argmax(means))
        test = [list(c.captions) for c in read_manifest(self.layout.manifest("test"))]
        report = CaptionScorer().score([pool[best]] * len(test), test)
        return {"caption": pool[best], "validation_cider_d": float(means[best]), "scores": report.corpus,
                "chosen_on": "validation", "candidates": len(pool)}

    def stage_evaluate(self) -> None:
        layout = self.layout
        settings = {"upstream": {"train": self.fingerprints["train"], "features": self.fingerprints["features"],
                                 "data": self.fingerprints["data"]},
                    "constant_baseline": {"candidates": CONSTANT_CANDIDATES, "seed": self.options.seed}}

        def run(fresh: bool) -> dict[str, Any]:
            layout.eval.mkdir(parents=True, exist_ok=True)
            say(f"    the trained captioner ({self.trained_checkpoint()}) on the {self.scale.num_test} test clips:")
            trained = self._evaluate(self.trained_checkpoint(), "trained", fresh)
            say("    the same captioner at its random initialisation (a reference point: what training added):")
            untrained = self._evaluate(self._save_untrained(), "untrained", True)
            say("    an audio-blind baseline: the training caption that scores best on the validation split, for every test clip")
            constant = self.constant_baseline()
            say(f"      \"{constant['caption']}\": " + ", ".join(
                f"{HEADLINE_METRICS[m]} {constant['scores'][m]:.4f}" for m in HEADLINE_METRICS if m in constant["scores"]))
            return {
                "scores": trained.scores,
                "untrained_scores": untrained.scores,
                "constant_baseline": constant,
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
            if "cider_d" not in (result.get("constant_baseline") or {}).get("scores", {}):
                return "the audio-blind baseline was not scored"
            return None

        self.runner.run(
            "evaluate", settings, run=run, check=check, wipe=[layout.eval],
            describe=f"caption the test split from its features and score with the AAC metrics -> {layout.eval}",
        )

    # ------------------------------------------------------------------------- 7. caption

    def stage_caption(self) -> None:
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

        self.runner.run(
            "caption", settings, run=run, check=check, wipe=[layout.captions],
            describe=f"caption {NUM_CAPTIONED_FILES} test recordings from their audio (EnCodec + CLAP + captioner) -> {layout.captions}",
        )
        for row in self.reports["caption"].result["captions"]:
            say(f"    {layout.root / row['file']}\n      caption:   {row['caption']}\n"
                 f"      reference: {row['references'][0]}")

    # ------------------------------------------------------------------------- summary

    def _result(self, seconds: float) -> DemoResult:
        layout = self.layout
        evaluation = self.reports["evaluate"].result
        paths = {
            "data": str(layout.data),
            "manifests": str(layout.csv),
            "feature_models": str(layout.models) if self.options.random_feature_models else f"{self.options.encodec} + {self.options.clap}",
            **({"clap_tower": str(self.trained_clap())} if self.options.random_feature_models else {}),
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
            constant_baseline=dict(evaluation.get("constant_baseline") or {}),
            clap={k: v for k, v in self.reports["clap"].result.items() if k in ("model", "retrieval", "zero_shot")},
            stage_order=STAGES,
        )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@contextlib.contextmanager
def deterministic_kernels() -> Iterator[None]:
    """Deterministic torch kernels for the duration (restored after): a rerun then reproduces bit for bit.

    Measured: with 2 CPU threads the backward pass of the masked-codec loss's row gather (an accumulating
    ``index_put_``) adds in a varying order, so two trainings on identical features differed by 1e-8 in
    their first losses and by 0.11 CIDEr-D at the end; with deterministic algorithms both are identical.
    ``warn_only``: a kernel without a deterministic version warns instead of stopping the demo.
    """
    import torch

    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


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
    parser.add_argument("--clap-config", default=str(DEFAULT_CLAP_CONFIG),
                        help="the CLAP tower's training config (default: cfg/clap/tiny.yaml)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of everything: the synthetic data, the random EnCodec, and (added to their configs' seeds) "
                             "the CLAP tower's and the captioner's training")
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
        clap_config=Path(args.clap_config),
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
