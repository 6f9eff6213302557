"""Train a CLAP tower (contrastive audio-text) on captioned audio: manifests + audio in, a tower directory out.

    enclap-train-clap --config cfg/clap/tiny.yaml data.train_file=... data.audio_root=... output_dir=runs/clap
    enclap-train-clap --config cfg/clap/tiny_shards.yaml "data.train_shards=shards/data-{000000..000007}.tar" output_dir=...
    python -m enclap.jobs.train_clap --config cfg/clap/tiny.yaml key=value ...
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 -m enclap.jobs.train_clap --config ...

Settings: a :class:`TrainClapConfig` (``cfg/clap/*.yaml`` document every key): ``model`` is the tower's
architecture (:class:`~enclap.clap.configuration.ClapTowerConfig` fields) and where its weights come
from: ``model.init=random`` (explicitly random: tests, the demo), or ``model.init=pretrained`` with
``model.init_from`` (a tower directory to continue from) or ``model.audio_weights`` + ``model.text_weights``
(PANNs' ``Cnn14_mAP=0.431.pth`` for CNN14; a transformers ClapModel directory / hub id or a LAION ``.pt``
for HTS-AT; any hub id / directory of the text encoder, e.g. ``roberta-base``, ``gpt2``,
``sentence-transformers/all-mpnet-base-v2``). ``train`` is the project's training loop
(:class:`~enclap.training.loop.LoopConfig`: checkpoints, exact resume, warm-up + cosine, mixed
precision, logging); ``loss.local_loss`` / ``loss.gather_with_grad`` choose open_clip's variants;
``sync_batchnorm=true`` converts batch norm to SyncBatchNorm in multi-process runs (CNN14 has batch norm;
torch's SyncBatchNorm runs on GPUs only). ``data.train_shards`` streams the training pairs from webdataset
shards instead of ``data.train_file`` (:mod:`enclap.data.shards`, ``docs/recipes/shards.md``).

Outputs in ``output_dir``: ``training_config.yaml``, ``tokenizer/`` (when trained from the captions),
``checkpoints/step_<n>/``, ``train_log.jsonl`` + ``tensorboard/``, ``best/`` (best ``train.best_metric``,
default ``val_mAP@10``) and ``final/``: tower directories that ``ClapTowerModel.from_pretrained``,
``enclap-extract --clap DIR``, ``CaptioningPipeline.from_pretrained(..., clap=DIR)`` and
``enclap-eval-clap --model DIR`` load. An HTS-AT + RoBERTa tower with pooler pooling and MLP projections
is also written as a plain transformers ClapModel directory in ``<export>/transformers_clap/``.

Exit codes: 0 finished, 1 the loss diverged, 2 configuration / data / checkpoint error, 130 / 143 stopped
by a signal after saving a checkpoint (rerun to resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ConfigError, EnclapError
from ..training.loop import LoopConfig

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ..clap.modeling import ClapTowerModel
    from ..training.loop import TrainingResult

logger = logging.getLogger(__name__)

CONFIG_FILE = "training_config.yaml"
TOKENIZER_DIR = "tokenizer"
TRANSFORMERS_CLAP_DIR = "transformers_clap"
INIT_MODES = ("random", "pretrained")


@dataclass
class ClapDataConfig:
    train_file: str = ""  # caption manifest of the training clips (file_path,caption or file_path,caption_1..N)
    validation_file: str = ""  # caption manifest of the validation clips ("" = no validation)
    audio_root: str = ""  # the manifests' file_path are relative to it (extension swapped for the audio's)
    validation_audio_root: str = ""  # "" = audio_root
    max_validation_clips: int = 0  # 0 = all
    # Webdataset shards instead of train_file (enclap-shards write; LAION-CLAP's layout): a brace pattern
    # "shards/data-{000000..000009}.tar", "a.tar::b.tar", or a list of patterns / files.
    train_shards: Any = ""
    shard_epoch_samples: int = 0  # declared examples per epoch; 0 = the samples the shards' sizes.json lists
    shuffle_buffer: int = 1000  # samples shuffled together in each reader (0 or 1: shard order only)
    resampled: bool = False  # draw shards with replacement per reader (multi-epoch runs on many shards/readers)


@dataclass
class ClapModelConfig:
    """The tower (ClapTowerConfig fields) and where its weights come from (see the module docstring)."""

    init: str = "pretrained"  # random | pretrained
    init_from: str = ""  # a tower directory (best/ or final/ of an earlier run) to continue from
    audio_weights: str = ""  # PANNs .pth (cnn14) | transformers ClapModel dir / hub id or LAION .pt (htsat)
    text_weights: str = ""  # hub id / directory of the text encoder (its config replaces text_config)
    audio_encoder: str = "htsat"  # htsat | cnn14
    audio_config: dict[str, Any] = field(default_factory=dict)
    text_config: dict[str, Any] = field(default_factory=dict)
    text_pooling: str = "pooler"  # cls | pooler | mean | last
    projection: str = "mlp"  # mlp | linear
    projection_dim: int = 512
    freeze_audio: bool = False
    freeze_text: bool = False
    clip_seconds: float = 10.0
    max_text_length: int = 77


@dataclass
class ClapTokenizerConfig:
    name_or_path: str = ""  # "" = model.text_weights' (or init_from's) tokenizer
    train_from_captions: bool = False  # a byte-level BPE trained on the training captions (saved in output_dir)
    vocab_size: int = 1000


@dataclass
class ClapLossConfig:
    local_loss: bool = False  # each process: its rows against all gathered columns
    gather_with_grad: bool = True  # gradients flow through the gathered features (exact global-batch gradient)


@dataclass
class TrainClapConfig:
    output_dir: str = ""
    seed: int = 1115
    data: ClapDataConfig = field(default_factory=ClapDataConfig)
    model: ClapModelConfig = field(default_factory=ClapModelConfig)
    tokenizer: ClapTokenizerConfig = field(default_factory=ClapTokenizerConfig)
    loss: ClapLossConfig = field(default_factory=ClapLossConfig)
    train: LoopConfig = field(default_factory=lambda: LoopConfig(best_metric="val_mAP@10", lr_scheduler_type="cosine"))
    sync_batchnorm: bool = False
    validation_batch_size: int = 16

    def validate(self) -> None:
        problems = []
        if not self.output_dir:
            problems.append("output_dir is required")
        if not 0 <= self.seed < 2**32:
            problems.append(f"seed must be in [0, 2**32 - 1], got {self.seed}")
        d = self.data
        if not d.train_file and not d.train_shards:
            problems.append("data.train_file (a caption manifest) or data.train_shards (webdataset shards) is required")
        if d.train_file and d.train_shards:
            problems.append("give data.train_file or data.train_shards, not both")
        if d.train_file and not d.audio_root:
            problems.append("data.audio_root is required (where the manifests' audio files are)")
        if d.validation_file and not (d.audio_root or d.validation_audio_root):
            problems.append("data.validation_file needs data.validation_audio_root or data.audio_root")
        if d.shard_epoch_samples < 0 or d.shuffle_buffer < 0:
            problems.append("data.shard_epoch_samples and data.shuffle_buffer must be >= 0")
        m, tok = self.model, self.tokenizer
        if m.init not in INIT_MODES:
            problems.append(f"model.init must be one of {', '.join(INIT_MODES)}, got {m.init!r}")
        elif m.init == "random" and (m.init_from or m.audio_weights or m.text_weights):
            problems.append("model.init=random takes no model.init_from / audio_weights / text_weights")
        elif m.init == "pretrained":
            if m.init_from and (m.audio_weights or m.text_weights):
                problems.append("give model.init_from or model.audio_weights + model.text_weights, not both")
            elif not m.init_from and not (m.audio_weights and m.text_weights):
                problems.append(
                    "model.init=pretrained needs model.init_from (a tower directory) or both model.audio_weights and "
                    "model.text_weights; for random weights set model.init=random"
                )
            if m.text_weights and m.text_config:
                problems.append("model.text_config comes from model.text_weights; give one of them")
        if m.init == "random" and not m.text_config:
            problems.append("model.init=random needs model.text_config (with its model_type)")
        if not (tok.name_or_path or tok.train_from_captions or m.text_weights or m.init_from):
            problems.append("a tokenizer is needed: tokenizer.name_or_path, tokenizer.train_from_captions=true, or model.text_weights")
        if tok.name_or_path and tok.train_from_captions:
            problems.append("give tokenizer.name_or_path or tokenizer.train_from_captions=true, not both")
        per_device = self.train.per_device_train_batch_size
        if not self.loss.local_loss and (self.train.train_batch_size < 2 or (per_device is not None and per_device < 2)):
            problems.append("train.train_batch_size (and per_device_train_batch_size, when set) must be >= 2: "
                            "a contrastive batch needs negatives")
        if self.validation_batch_size < 1:
            problems.append("validation_batch_size must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))


def load_clap_train_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> TrainClapConfig:
    """Defaults < YAML file (which may name a ``base:`` file) < ``key=value`` overrides, validated."""
    from ..config import load_config

    return load_config(TrainClapConfig, path, list(overrides))


# --------------------------------------------------------------------------------------------- pieces
def tower_config_from(settings: ClapModelConfig, text_config: dict[str, Any] | None = None):
    from ..clap.configuration import ClapTowerConfig

    return ClapTowerConfig(
        audio_encoder=settings.audio_encoder,
        audio_config=dict(settings.audio_config),
        text_config=dict(text_config if text_config is not None else settings.text_config),
        text_pooling=settings.text_pooling,
        projection=settings.projection,
        projection_dim=settings.projection_dim,
        freeze_audio=settings.freeze_audio,
        freeze_text=settings.freeze_text,
        clip_seconds=settings.clip_seconds,
        max_text_length=settings.max_text_length,
    )


def load_audio_weights(tower: "ClapTowerModel", source: str) -> None:
    """Fill the tower's audio encoder from PANNs' CNN14 checkpoint or an HTS-AT ClapModel (dir, hub id, LAION .pt)."""
    from ..clap.modeling import _load_strict, load_panns_cnn14
    from ..errors import PretrainedNotFoundError

    if tower.config.audio_encoder == "cnn14":
        if not Path(source).expanduser().is_file():
            raise PretrainedNotFoundError(
                f"model.audio_weights: PANNs checkpoint '{source}' does not exist. Download Cnn14_mAP=0.431.pth from "
                "https://zenodo.org/record/3987831 and give its path, or set model.init=random."
            )
        load_panns_cnn14(tower, source)
        return
    from ..features.clap_embed import ClapAudioEmbedder

    clap = ClapAudioEmbedder.from_pretrained(source).model  # hub id, ClapModel directory or LAION checkpoint
    _load_strict(tower.audio_model, clap.audio_model.state_dict(), f"model.audio_weights {source}")


def build_tower(config: TrainClapConfig) -> "ClapTowerModel":
    """The tower the config asks for (random, from a tower directory, or from pretrained parts)."""
    from ..clap.modeling import ClapTowerModel
    from ..loading import load_pretrained

    m = config.model
    if m.init_from:
        tower = load_pretrained(ClapTowerModel.from_pretrained, m.init_from, what="CLAP tower (model.init_from)")
        for key in ("freeze_audio", "freeze_text"):
            setattr(tower.config, key, getattr(m, key))
        tower.apply_freezing()
        return tower
    if m.init == "random":
        return ClapTowerModel(tower_config_from(m))
    from transformers import AutoConfig, AutoModel

    text_config = load_pretrained(AutoConfig.from_pretrained, m.text_weights, what="text encoder config (model.text_weights)")
    tower = ClapTowerModel(tower_config_from(m, text_config.to_dict()))
    text = load_pretrained(AutoModel.from_pretrained, m.text_weights, what="text encoder (model.text_weights)")
    missing, unexpected = tower.text_model.load_state_dict(text.state_dict(), strict=False)
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing:
        from ..errors import CheckpointError

        raise CheckpointError(f"model.text_weights {m.text_weights}: weights missing for {missing[:5]}")
    load_audio_weights(tower, m.audio_weights)
    return tower


def build_tower_tokenizer(config: TrainClapConfig, captions: Sequence[str], *, is_main: bool):
    """The text tokenizer: trained from the captions (saved in output_dir/tokenizer, reused on resume) or loaded."""
    from ..clap.modeling import load_tower_tokenizer
    from ..text import has_tokenizer_files, train_caption_tokenizer
    from ..training.checkpoints import commit_directory, list_checkpoints
    from .train_captioner import resumes_in_output_dir

    tok = config.tokenizer
    if tok.train_from_captions:
        output_dir = Path(config.output_dir).expanduser()
        saved = output_dir / TOKENIZER_DIR
        if has_tokenizer_files(saved) and resumes_in_output_dir(config):
            return load_tower_tokenizer(str(saved))
        tokenizer = train_caption_tokenizer(captions, vocab_size=tok.vocab_size)
        if is_main and (not has_tokenizer_files(saved) or not list_checkpoints(output_dir)):
            import shutil

            tmp = saved.with_name(f".tmp-{TOKENIZER_DIR}")
            shutil.rmtree(tmp, ignore_errors=True)
            tokenizer.save_pretrained(tmp)
            commit_directory(tmp, saved)
        return tokenizer
    return load_tower_tokenizer(tok.name_or_path or config.model.text_weights or config.model.init_from)


def check_tokenizer_fits(tower: "ClapTowerModel", tokenizer: Any) -> None:
    vocab = int(getattr(tower.text_model.config, "vocab_size", 0) or 0)
    if vocab and len(tokenizer) > vocab:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the text encoder's vocab_size is {vocab}: "
            "set model.text_config.vocab_size (or tokenizer.vocab_size) so they agree"
        )
    positions = int(getattr(tower.text_model.config, "max_position_embeddings", 0) or 0)
    needed = tower.config.max_text_length + (2 if tower.text_model.config.model_type in ("roberta", "xlm-roberta", "camembert") else 0)
    if positions and needed > positions:
        raise ConfigError(
            f"model.max_text_length={tower.config.max_text_length} needs {needed} positions; the text encoder has {positions}"
        )


# --------------------------------------------------------------------------------------------- the job
def train_clap(config: TrainClapConfig, *, accelerator: "Accelerator | None" = None) -> "TrainingResult":
    """Run (or resume) the CLAP training ``config`` describes; data and pretrained parts are checked first."""
    import json

    import torch
    from accelerate.utils import set_seed
    from omegaconf import OmegaConf

    from ..clap.interop import export_transformers_clap, exports_as_transformers_clap
    from ..clap.loss import ClipLoss
    from ..training.clap import ClapAudioDataset, ClapAudioSource, ClapTask, ClapTrainDataset
    from ..training.clap_shards import clap_shard_stream
    from ..training.loop import make_accelerator, run_training
    from .train_captioner import _digest

    try:
        config.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from err
    accelerator = accelerator if accelerator is not None else make_accelerator(config.train)
    is_main = accelerator.is_main_process
    output_dir = Path(config.output_dir).expanduser()
    data = config.data
    shards = None
    if data.train_shards:
        from ..data.shards import expand_shards, read_shard_sizes

        patterns = data.train_shards if isinstance(data.train_shards, str) else [str(p) for p in data.train_shards]
        shards = expand_shards(patterns)
        sizes = read_shard_sizes(shards) if not data.shard_epoch_samples else {}
        train_source = None
    else:
        train_source = ClapAudioSource(data.train_file, data.audio_root)  # every clip's audio file is found up front
    val_source = None
    if data.validation_file:
        val_source = ClapAudioSource(data.validation_file, data.validation_audio_root or data.audio_root)
        if data.max_validation_clips:
            for name in ("captions", "keys", "audio_paths"):
                setattr(val_source, name, getattr(val_source, name)[: data.max_validation_clips])
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(config.seed)  # the same initial tower on every process
    if train_source is not None:
        train_captions = [c for caps in train_source.captions for c in caps]
    elif config.tokenizer.train_from_captions:
        from ..data.shards import shard_captions

        train_captions = [c for caps in shard_captions(shards) for c in caps]
    else:
        train_captions = []
    tokenizer = build_tower_tokenizer(config, train_captions, is_main=is_main)
    accelerator.wait_for_everyone()
    tower = build_tower(config)
    tower.tokenizer = tokenizer
    check_tokenizer_fits(tower, tokenizer)
    if config.sync_batchnorm:
        if accelerator.device.type == "cpu" and accelerator.num_processes > 1:
            raise ConfigError("sync_batchnorm=true: torch's SyncBatchNorm runs on GPUs only; on CPU leave it off")
        # (in one process SyncBatchNorm computes plain batch norm)
        tower = torch.nn.SyncBatchNorm.convert_sync_batchnorm(tower)
    config_text = OmegaConf.to_yaml(OmegaConf.structured(config))
    fingerprint = {
        "tower": json.loads(tower.config.to_json_string(use_diff=False)) | {"_name_or_path": ""},
        "data": (
            {"clips": len(train_source), "digest": _digest([[k, *c] for k, c in zip(train_source.keys, train_source.captions)])}
            if train_source is not None else
            {"shards": _digest([Path(u).name for u in shards]), "sizes": _digest(sorted(sizes.items())) if sizes else None,
             "epoch_examples": data.shard_epoch_samples or sum(sizes.values()), "resampled": data.resampled,
             "shuffle_buffer": data.shuffle_buffer}
        ),
        "tokenizer": _digest(sorted(tokenizer.get_vocab().items())),
        "loss": {"local_loss": config.loss.local_loss, "gather_with_grad": config.loss.gather_with_grad},
    }
    for key in ("transformers_version", "_name_or_path", "architectures"):
        fingerprint["tower"].pop(key, None)
    task = ClapTask(
        tower,
        tokenizer,
        ClapTrainDataset(train_source, tower.config, tokenizer, config.seed) if train_source is not None else
        clap_shard_stream(shards, tower.config, tokenizer, config.seed, resampled=data.resampled,
                          shuffle_buffer=data.shuffle_buffer, epoch_examples=data.shard_epoch_samples or None),
        ClapAudioDataset(val_source, tower.config, seed=config.seed) if val_source is not None else None,
        loss=ClipLoss(local_loss=config.loss.local_loss, gather_with_grad=config.loss.gather_with_grad),
        fingerprint=fingerprint,
        run_files={CONFIG_FILE: config_text},
        export_files={CONFIG_FILE: config_text},
        validation_batch_size=config.validation_batch_size,
    )
    if exports_as_transformers_clap(tower):
        plain_export = task.export

        def export(module: Any, directory: Path) -> None:
            plain_export(module, directory)
            export_transformers_clap(module.tower, Path(directory) / TRANSFORMERS_CLAP_DIR, tokenizer)

        task.export = export  # type: ignore[method-assign]
    if not data.validation_file and config.train.best_metric != "val_loss":
        logger.warning("no data.validation_file: no best/ model is picked (train.best_metric=%s)", config.train.best_metric)
        config.train.best_metric = "val_loss"  # the loop's always-known figure; without validation it never appears
    return run_training(task, config.train, output_dir=output_dir, seed=config.seed, accelerator=accelerator)


# --------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enclap-train-clap",
        description="Train a CLAP tower. Rerun the same command to resume. Several processes: "
        "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 -m enclap.jobs.train_clap ... (CPU) "
        "or torchrun --nproc_per_node N -m enclap.jobs.train_clap ...",
        epilog="Settings: defaults < the YAML config < key=value overrides with dotted names, e.g. train.learning_rate=1e-4.",
    )
    parser.add_argument("--config", help="YAML settings (e.g. cfg/clap/tiny.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    parser.add_argument("args", nargs="*", metavar="key=value", help="overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (see the module docstring)."""
    from . import quiet_model_loading
    from .train_captioner import run_training_command

    args = build_parser().parse_args(argv)
    try:
        bad = [a for a in args.args if "=" not in a]
        if bad:
            raise ConfigError(f"unexpected argument(s) {bad}: expected key=value overrides (the config file goes after --config)")
        config = load_clap_train_config(args.config, args.args)
    except ConfigError as err:
        print(f"train-clap: configuration error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.structured(config)), end="")
        return 0
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_model_loading()
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    status, result = run_training_command("train-clap", lambda: train_clap(config))
    if result is None or result.status == "interrupted":
        return status
    if rank == 0:
        best = f"; best {result.best['metric']}={result.best['value']:.4f} at step {result.best['step']}: {result.best_dir}" if result.best else ""
        print(f"train-clap: finished {result.global_step} steps; final tower: {result.final_dir}{best}", flush=True)
    return 0


__all__ = [
    "TrainClapConfig",
    "build_tower",
    "load_clap_train_config",
    "main",
    "train_clap",
]

if __name__ == "__main__":
    raise SystemExit(main())
