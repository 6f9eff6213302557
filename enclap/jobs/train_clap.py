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
``sentence-transformers/all-mpnet-base-v2``). ``model.text_encoder=sentence_transformers`` makes the text
side a frozen Sentence-BERT (``model.text_weights``: its hub id or directory, loaded with the
``sentence-transformers`` package, also with ``model.init=random``, which then concerns the audio side and
the projections): the captions' vectors are computed once and cached in ``model.text_cache_dir`` (default
``~/.cache/enclap/sentence_embeddings``), only the text projection trains, and no tokenizer is needed (the
DCASE 2023 baseline, ``cfg/clap/dcase2023_baseline.yaml``). ``train`` is the project's training loop
(:class:`~enclap.training.loop.LoopConfig`: checkpoints, exact resume, warm-up + cosine, mixed
precision, logging); ``loss.local_loss`` / ``loss.gather_with_grad`` choose open_clip's variants, ``loss.similarity`` cosine or
dot product, ``loss.temperature`` a fixed temperature instead of the learnt one;
``data.curated_file`` + ``data.curation_prob`` + ``data.subset_pct`` and ``loss.softclap_beta`` /
``loss.softclap_text`` / ``loss.softclap_teacher`` train a student as in SoftCLAP's recipe (curated pairs
mixed per item with a subset of the annotated ones, soft targets from caption similarities; see
enclap/training/clap.py and docs/recipes/unsupervised.md); ``model.init_from`` starts it from the teacher.
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
    from collections.abc import Callable

    from accelerate import Accelerator

    from ..clap.modeling import ClapTowerModel
    from ..training.loop import TrainingResult

logger = logging.getLogger(__name__)

CONFIG_FILE = "training_config.yaml"
TOKENIZER_DIR = "tokenizer"
TRANSFORMERS_CLAP_DIR = "transformers_clap"
INIT_MODES = ("random", "pretrained")
SOFTCLAP_TEXT = ("teacher", "self")


@dataclass
class ClapDataConfig:
    train_file: str = ""  # caption manifest of the training clips (file_path,caption or file_path,caption_1..N)
    validation_file: str = ""  # caption manifest of the validation clips ("" = no validation)
    audio_root: str = ""  # the manifests' file_path are relative to it (extension swapped for the audio's)
    validation_audio_root: str = ""  # "" = audio_root
    max_validation_clips: int = 0  # 0 = all
    # student training (SoftCLAP's recipe, docs/recipes/unsupervised.md): curated pairs mixed per item with the
    # annotated (replay) clips of train_file
    curated_file: str = ""  # curated manifest: file_path,caption[,similarity] ("" = none)
    curated_audio_root: str = ""  # "" = audio_root
    curation_prob: float = 0.0  # probability that a training item is a curated pair instead of an annotated one
    subset_pct: float = 100.0  # percent of train_file's clips kept (a subset fixed by the seed), in (0, 100]
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
    text_encoder: str = "transformers"  # transformers | sentence_transformers (frozen, vectors cached; text_weights names it)
    text_cache_dir: str = ""  # sentence_transformers: where caption vectors are cached ("" = ~/.cache/enclap/sentence_embeddings)


@dataclass
class ClapTokenizerConfig:
    name_or_path: str = ""  # "" = model.text_weights' (or init_from's) tokenizer
    train_from_captions: bool = False  # a byte-level BPE trained on the training captions (saved in output_dir)
    vocab_size: int = 1000


@dataclass
class ClapLossConfig:
    local_loss: bool = False  # each process: its rows against all gathered columns
    gather_with_grad: bool = True  # gradients flow through the gathered features (exact global-batch gradient)
    similarity: str = "cosine"  # cosine | dot (dot product of the raw projections)
    temperature: float | None = None  # null: the tower's learnt logit scale (CLIP); a number: fixed (DCASE baseline: 0.07)
    softclap_beta: float = 0.0  # SoftCLAP: targets (1 - beta) I + beta * caption similarities; 0 = plain CLAP
    softclap_text: str = "teacher"  # whose text embeddings give the caption similarities: teacher | self
    softclap_teacher: str = ""  # the teacher tower directory ("" = model.init_from)


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
        if d.train_shards and (d.curated_file or d.subset_pct < 100):
            problems.append("data.curated_file / data.subset_pct mix manifest clips: write the annotated and curated "
                            "pairs into the shards instead, or train from data.train_file")
        if d.train_shards and self.model.text_encoder == "sentence_transformers":
            problems.append("a Sentence-BERT tower (model.text_encoder=sentence_transformers) trains from data.train_file; "
                            "streaming its cached caption vectors from shards is not supported")
        if d.train_file and not d.audio_root:
            problems.append("data.audio_root is required (where the manifests' audio files are)")
        if d.validation_file and not (d.audio_root or d.validation_audio_root):
            problems.append("data.validation_file needs data.validation_audio_root or data.audio_root")
        if d.shard_epoch_samples < 0 or d.shuffle_buffer < 0:
            problems.append("data.shard_epoch_samples and data.shuffle_buffer must be >= 0")
        m, tok = self.model, self.tokenizer
        sbert = m.text_encoder == "sentence_transformers"
        if m.text_encoder not in ("transformers", "sentence_transformers"):
            problems.append(f"model.text_encoder must be transformers or sentence_transformers, got {m.text_encoder!r}")
        if sbert and not (m.text_weights or m.init_from):
            problems.append("model.text_encoder=sentence_transformers needs model.text_weights (the Sentence-BERT hub id or directory)")
        if sbert and (m.text_config or tok.name_or_path or tok.train_from_captions):
            problems.append("model.text_encoder=sentence_transformers takes no model.text_config and no tokenizer (Sentence-BERT brings its own)")
        if self.loss.similarity not in ("cosine", "dot"):
            problems.append(f"loss.similarity must be cosine or dot, got {self.loss.similarity!r}")
        if self.loss.temperature is not None and not 0.01 <= self.loss.temperature:
            problems.append(f"loss.temperature must be >= 0.01 (the logit scale is capped at 100) or null, got {self.loss.temperature}")
        if m.init not in INIT_MODES:
            problems.append(f"model.init must be one of {', '.join(INIT_MODES)}, got {m.init!r}")
        elif m.init == "random" and sbert and (m.init_from or m.audio_weights):
            problems.append("model.init=random takes no model.init_from / audio_weights (the Sentence-BERT of model.text_weights stays pretrained)")
        elif m.init == "random" and not sbert and (m.init_from or m.audio_weights or m.text_weights):
            problems.append("model.init=random takes no model.init_from / audio_weights / text_weights")
        elif m.init == "pretrained":
            if m.init_from and (m.audio_weights or m.text_weights):
                problems.append("give model.init_from or model.audio_weights + model.text_weights, not both")
            elif sbert and m.init_from and m.text_weights:
                problems.append("model.init_from names its own Sentence-BERT; give no model.text_weights with it")
            elif not m.init_from and not (m.audio_weights and m.text_weights):
                problems.append(
                    "model.init=pretrained needs model.init_from (a tower directory) or both model.audio_weights and "
                    "model.text_weights; for random weights set model.init=random"
                )
            if m.text_weights and m.text_config:
                problems.append("model.text_config comes from model.text_weights; give one of them")
        if m.init == "random" and not m.text_config and not sbert:
            problems.append("model.init=random needs model.text_config (with its model_type)")
        if not sbert and not (tok.name_or_path or tok.train_from_captions or m.text_weights or m.init_from):
            problems.append("a tokenizer is needed: tokenizer.name_or_path, tokenizer.train_from_captions=true, or model.text_weights")
        if tok.name_or_path and tok.train_from_captions:
            problems.append("give tokenizer.name_or_path or tokenizer.train_from_captions=true, not both")
        per_device = self.train.per_device_train_batch_size
        if not self.loss.local_loss and (self.train.train_batch_size < 2 or (per_device is not None and per_device < 2)):
            problems.append("train.train_batch_size (and per_device_train_batch_size, when set) must be >= 2: "
                            "a contrastive batch needs negatives")
        if self.validation_batch_size < 1:
            problems.append("validation_batch_size must be >= 1")
        d, lo = self.data, self.loss
        if not 0.0 <= d.curation_prob <= 1.0:
            problems.append(f"data.curation_prob must be in [0, 1], got {d.curation_prob}")
        elif d.curation_prob > 0 and not d.curated_file:
            problems.append(f"data.curation_prob={d.curation_prob} needs data.curated_file (a curated manifest)")
        elif d.curated_file and d.curation_prob == 0:
            problems.append(f"data.curated_file={d.curated_file} is never used with data.curation_prob=0; set a probability")
        if not 0.0 < d.subset_pct <= 100.0:
            problems.append(f"data.subset_pct must be in (0, 100], got {d.subset_pct}")
        if not 0.0 <= lo.softclap_beta <= 1.0:
            problems.append(f"loss.softclap_beta must be in [0, 1], got {lo.softclap_beta}")
        if lo.softclap_text not in SOFTCLAP_TEXT:
            problems.append(f"loss.softclap_text must be one of {', '.join(SOFTCLAP_TEXT)}, got {lo.softclap_text!r}")
        elif lo.softclap_beta > 0 and lo.softclap_text == "teacher" and not (lo.softclap_teacher or m.init_from):
            problems.append("loss.softclap_text=teacher needs loss.softclap_teacher (a tower directory) or model.init_from")
        if problems:
            raise ValueError("; ".join(problems))


def load_clap_train_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> TrainClapConfig:
    """Defaults < YAML file (which may name a ``base:`` file) < ``key=value`` overrides, validated."""
    from ..config import load_config

    return load_config(TrainClapConfig, path, list(overrides))


# --------------------------------------------------------------------------------------------- pieces
def tower_config_from(settings: ClapModelConfig, text_config: dict[str, Any] | None = None, *, sentence_transformer: str = "",
                      text_embedding_dim: int = 0):
    from ..clap.configuration import ClapTowerConfig

    return ClapTowerConfig(
        text_encoder=settings.text_encoder,
        sentence_transformer=sentence_transformer,
        text_embedding_dim=text_embedding_dim,
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
    if m.text_encoder == "sentence_transformers":
        from ..clap.sentence_text import load_sentence_transformer, sentence_embedding_dimension

        encoder = load_sentence_transformer(m.text_weights)
        local = Path(m.text_weights).expanduser()
        # a directory is recorded by its absolute path: the exported tower finds it from anywhere
        name = str(local.resolve()) if local.exists() else m.text_weights
        tower = ClapTowerModel(tower_config_from(m, sentence_transformer=name, text_embedding_dim=sentence_embedding_dimension(encoder)))
        tower.attach_sentence_encoder(encoder)
        if m.init == "pretrained":
            load_audio_weights(tower, m.audio_weights)
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


def load_softclap_teacher(directory: str) -> "ClapTowerModel":
    """SoftCLAP's teacher: a tower directory (with its tokenizer), frozen, in eval mode."""
    from ..clap.modeling import ClapTowerModel
    from ..loading import load_pretrained

    teacher = load_pretrained(ClapTowerModel.from_pretrained, directory, what="SoftCLAP teacher tower (loss.softclap_teacher)")
    if teacher.tokenizer is None:
        raise ConfigError(f"loss.softclap_teacher {directory}: the tower directory has no tokenizer files")
    teacher.requires_grad_(False)
    return teacher.eval()


def check_tokenizer_fits(tower: "ClapTowerModel", tokenizer: Any) -> None:
    if tower.text_model is None:  # a Sentence-BERT tower: its tokenizer is its own
        return
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


def _is_sentence_tower(directory: str) -> bool:
    """Whether a tower directory (model.init_from) has a Sentence-BERT text side."""
    import json

    try:
        return json.loads((Path(directory).expanduser() / "config.json").read_text()).get("text_encoder") == "sentence_transformers"
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------------------------- the job
def train_clap(
    config: TrainClapConfig, *, accelerator: "Accelerator | None" = None,
    on_validation: "Callable[[int, dict[str, float]], bool | None] | None" = None,
) -> "TrainingResult":
    """Run (or resume) the CLAP training ``config`` describes; data and pretrained parts are checked first.

    ``on_validation(step, figures)`` is the loop's per-validation callback (True stops the run, see
    :func:`~enclap.training.loop.run_training`); the hyper-parameter search (:mod:`enclap.tuning`) uses it.
    """
    import json

    import torch
    from accelerate.utils import set_seed
    from omegaconf import OmegaConf

    from ..clap.interop import export_transformers_clap, exports_as_transformers_clap
    from ..clap.loss import ClipLoss
    from ..training.clap import ClapAudioDataset, ClapAudioSource, ClapTask, ClapTrainDataset, annotated_subset
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
    curated_source = None
    if data.curated_file:
        curated_source = ClapAudioSource(data.curated_file, data.curated_audio_root or data.audio_root)
        if len(curated_source) == 0:
            raise ConfigError(f"data.curated_file {data.curated_file}: no curated pairs in it")
    subset = annotated_subset(len(train_source), data.subset_pct, config.seed) if train_source is not None else None
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
    def train_captions() -> list[str]:
        if train_source is not None:
            return [c for caps in train_source.captions for c in caps]
        from ..data.shards import shard_captions

        return [c for caps in shard_captions(shards) for c in caps]

    sentence_table = None
    if config.model.text_encoder == "sentence_transformers" or (config.model.init_from and not config.tokenizer.name_or_path
                                                               and _is_sentence_tower(config.model.init_from)):
        from ..clap.sentence_text import cached_sentence_embeddings

        tokenizer = None
        tower = build_tower(config)
        captions = train_captions()
        captions += [c for caps in val_source.captions for c in caps] if val_source is not None else []
        sentence_table = cached_sentence_embeddings(
            tower.sentence_encoder, captions, config.model.text_cache_dir or None, accelerator=accelerator,
            name=tower.config.sentence_transformer,
        )
        tower.sentence_embedding_table = sentence_table  # validation reads its captions' vectors here
    else:
        tokenizer = build_tower_tokenizer(config, train_captions() if config.tokenizer.train_from_captions else [], is_main=is_main)
        accelerator.wait_for_everyone()
        tower = build_tower(config)
        tower.tokenizer = tokenizer
        check_tokenizer_fits(tower, tokenizer)
    if config.loss.temperature is not None:  # a fixed temperature: the logit scale is set and frozen
        import math

        tower.config.logit_scale_init = math.log(1.0 / config.loss.temperature)
        with torch.no_grad():
            tower.logit_scale.fill_(tower.config.logit_scale_init)
        tower.logit_scale.requires_grad_(False)
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
        "tokenizer": _digest(sorted(tokenizer.get_vocab().items())) if tokenizer is not None else None,
        "loss": {"local_loss": config.loss.local_loss, "gather_with_grad": config.loss.gather_with_grad},
    }
    if sentence_table is not None:  # the frozen text encoder's vectors decide the training pairs
        fingerprint["sentence_encoder"] = sentence_table.identity
        fingerprint["tower"].pop("sentence_transformer", None)  # its path may move; its identity may not
    if config.loss.similarity != "cosine" or config.loss.temperature is not None:
        fingerprint["loss"].update(similarity=config.loss.similarity, temperature=config.loss.temperature)
    if curated_source is not None or data.subset_pct < 100:
        fingerprint["student"] = {
            "subset": _digest(subset), "curation_prob": data.curation_prob,
            "curated": _digest([[k, *c] for k, c in zip(curated_source.keys, curated_source.captions)]) if curated_source else "",
        }
    teacher = teacher_tokenizer = None
    if config.loss.softclap_beta > 0:
        fingerprint["softclap"] = {"beta": config.loss.softclap_beta, "text": config.loss.softclap_text}
        if config.loss.softclap_text == "teacher":
            teacher = load_softclap_teacher(config.loss.softclap_teacher or config.model.init_from)
            teacher_tokenizer = teacher.tokenizer
            fingerprint["softclap"]["teacher"] = _digest(sorted((k, v.float().sum().item()) for k, v in teacher.state_dict().items()))
    for key in ("transformers_version", "_name_or_path", "architectures"):
        fingerprint["tower"].pop(key, None)
    task = ClapTask(
        tower,
        tokenizer,
        ClapTrainDataset(train_source, tower.config, tokenizer, config.seed, subset=subset, curated=curated_source,
                         curation_prob=data.curation_prob, teacher_tokenizer=teacher_tokenizer,
                         teacher_max_text_length=teacher.config.max_text_length if teacher is not None else None,
                         sentence_table=sentence_table) if train_source is not None else
        clap_shard_stream(shards, tower.config, tokenizer, config.seed, resampled=data.resampled,
                          shuffle_buffer=data.shuffle_buffer, epoch_examples=data.shard_epoch_samples or None),
        ClapAudioDataset(val_source, tower.config, seed=config.seed) if val_source is not None else None,
        loss=ClipLoss(local_loss=config.loss.local_loss, gather_with_grad=config.loss.gather_with_grad,
                      similarity=config.loss.similarity),
        softclap_beta=config.loss.softclap_beta,
        softclap_teacher=teacher,
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
    return run_training(
        task, config.train, output_dir=output_dir, seed=config.seed, accelerator=accelerator, on_validation=on_validation
    )


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
