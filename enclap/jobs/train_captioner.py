"""Train the EnCLAP captioner: features + caption manifests in, a captioning checkpoint out.

    python train.py --config cfg/clotho/base.yaml [key=value ...]
    accelerate launch train.py --config cfg/clotho/base.yaml [key=value ...]
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 train.py --config ...   # 2 CPU processes
    torchrun --nproc_per_node 2 train.py --config ...

The settings are a :class:`TrainCaptionerConfig` (``cfg/clotho/base.yaml`` and its siblings carry the
reference's recipes and document every key); ``key=value`` overrides use dotted names
(``train.learning_rate=1e-4``). The model starts from a BART (``model.model_name_or_path``, a hub id or
a local directory: its weights are copied, the codec tables, CLAP projection and MCM heads are new),
from an EnCLAP checkpoint (``model.init_from``: fine-tuning, as the reference's ``clotho_finetune``), or
from random weights of an explicitly given shape (``model.init=random``: tests and the offline demo).
Nothing is ever initialised at random by default: a pretrained part that cannot be found is an error.

Outputs in ``output_dir``: ``training_config.yaml`` (the resolved settings), ``checkpoints/step_<n>/``
(resumable state: rerunning the same command continues where a run stopped), ``train_log.jsonl`` and
``tensorboard/``, ``best/`` (the model at the best validation figure: by default ``val_loss``, the
caption cross-entropy on clean, unmasked validation codes, as the captioner sees them at inference;
see :mod:`enclap.training.captioner`) and ``final/`` (the model at the end). ``best/`` and ``final/``
load with ``CaptioningPipeline.from_pretrained`` and ``evaluate.py --ckpt``: config.json +
model.safetensors + tokenizer + pipeline.json (which EnCodec / CLAP made the features, read from the
feature store).

Exit codes of :func:`main`: 0 finished, 1 the loss diverged (NaN/inf; the last checkpoint is intact),
2 configuration, data or checkpoint error (before any training step), 130 / 143 stopped by SIGINT /
SIGTERM after saving a checkpoint (rerun to resume), or aborted by a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
    from transformers import PreTrainedTokenizerBase

    from ..features.store import FeatureReader
    from ..model import EnClapBartForConditionalGeneration
    from ..training.loop import TrainingResult

logger = logging.getLogger(__name__)

CONFIG_FILE = "training_config.yaml"
TOKENIZER_DIR = "tokenizer"
INIT_MODES = ("pretrained", "random")
AUTO = "auto"
# Shape keys that only a random initialisation reads (a pretrained model brings its own shape).
_RANDOM_SHAPE_KEYS = ("d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim")


@dataclass
class DataConfig:
    """Manifests and features (keys of the reference: train_file, validation_file, encodec/clap_base_path)."""

    train_file: str = ""  # training manifest: file_path,caption (one row per caption)
    validation_file: str = ""  # evaluation manifest: file_path,caption_1..N ("" = no validation)
    features: str = ""  # feature store written by data/extract_features.py (holding train and validation clips)
    encodec_base_path: str = ""  # or EnCLAP's .npy layout: EnCodec root ...
    clap_base_path: str = ""  # ... and CLAP root
    validation_features: str = ""  # a separate feature store for the validation clips ("" = the same features)
    encodec_model: str = ""  # EnCodec that made the features, for pipeline.json ("" = from the store, else the paper's)
    clap_model: str = ""  # CLAP that made the features, for pipeline.json ("" = from the store, else the paper's)
    max_target_length: int = 128  # caption tokens (with <s> and </s>); longer captions are cut and counted
    # Masked codec modeling, in training only (validation codes are never masked):
    encodec_masking_prob: float = 0.15  # span-start probability (0 = no MCM)
    encodec_masking_span: int = 10  # span length in frames


@dataclass
class ModelConfig:
    """Where the captioner's weights come from; see the module docstring."""

    init: str = "pretrained"  # pretrained | random
    model_name_or_path: str = ""  # a BART to start from (hub id or local directory), e.g. facebook/bart-base
    init_from: str = ""  # or an EnCLAP checkpoint directory to fine-tune
    mcm_loss_scale: float | None = None  # weight of the MCM loss (null: 0.7, or the checkpoint's)
    label_smoothing: float | None = None  # of the caption loss (null: 0.2, or the checkpoint's)
    dropout: float | None = None  # override BART's dropout (null: the model's own; 0.1 for init=random)
    attention_dropout: float | None = None
    activation_dropout: float | None = None
    # init=random only (all of the first five are required then):
    d_model: int | None = None
    encoder_layers: int | None = None
    decoder_layers: int | None = None
    attention_heads: int | None = None
    ffn_dim: int | None = None
    max_position_embeddings: int | None = None  # null: 1024 (the encoder then takes 1021 codec frames)
    init_std: float | None = None  # null: 0.02


@dataclass
class TokenizerConfig:
    """The caption tokenizer (BART's special-token layout is required)."""

    name_or_path: str = ""  # hub id or directory ("" = the model's: model_name_or_path, or init_from's own)
    train_from_captions: bool = False  # train a byte-level BPE on the training captions (saved in output_dir)
    vocab_size: int = 1000  # of a tokenizer trained from the captions


@dataclass
class ValidationConfig:
    """Caption-metric validation, on top of the validation loss the loop always computes (on clean codes)."""

    # [auto]: SPIDEr where SPICE can run here (Java + CoreNLP jars), else CIDEr-D; or e.g. [spider, meteor]; [] = loss only
    metrics: list[str] = field(default_factory=lambda: [AUTO])
    max_clips: int = 0  # caption this many validation clips (0 = the whole validation split)
    val_max_target_length: int = 50  # generation: longest caption in tokens
    num_beams: int = 4  # generation: beam size
    batch_size: int = 16  # generation batch size
    metrics_cache: str = ""  # where metric resources are provisioned ("" = aac-metrics' default)


@dataclass
class TrainCaptionerConfig:
    """Every setting of a captioner training run."""

    output_dir: str = ""
    seed: int = 1115
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def validate(self) -> None:
        problems = []
        if not self.output_dir:
            problems.append("output_dir is required")
        if not 0 <= self.seed < 2**32:  # numpy's and torch's seeding refuse anything else
            problems.append(f"seed must be in [0, 2**32 - 1], got {self.seed}")
        data, model, tok = self.data, self.model, self.tokenizer
        if not data.train_file:
            problems.append("data.train_file is required (a training manifest)")
        npy = bool(data.encodec_base_path or data.clap_base_path)
        if data.features and npy:
            problems.append("give data.features (a feature store) or data.encodec_base_path + data.clap_base_path, not both")
        elif not data.features and not (data.encodec_base_path and data.clap_base_path):
            problems.append("features are required: data.features, or both data.encodec_base_path and data.clap_base_path")
        if data.max_target_length < 2:
            problems.append(f"data.max_target_length must be >= 2, got {data.max_target_length}")
        if not 0 <= data.encodec_masking_prob <= 1:
            problems.append(f"data.encodec_masking_prob must be in [0, 1], got {data.encodec_masking_prob}")
        if data.encodec_masking_span < 1:
            problems.append(f"data.encodec_masking_span must be >= 1, got {data.encodec_masking_span}")
        if model.init not in INIT_MODES:
            problems.append(f"model.init must be one of {', '.join(INIT_MODES)}, got {model.init!r}")
        elif model.init == "pretrained":
            if bool(model.model_name_or_path) == bool(model.init_from):
                problems.append(
                    "model.init=pretrained needs exactly one of model.model_name_or_path (a BART, e.g. facebook/bart-base) "
                    "and model.init_from (an EnCLAP checkpoint to fine-tune); for random weights set model.init=random"
                )
            given = [k for k in (*_RANDOM_SHAPE_KEYS, "max_position_embeddings", "init_std") if getattr(model, k) is not None]
            if given:
                problems.append(f"model.{', model.'.join(given)} only apply to model.init=random (a pretrained model has its own shape)")
            if model.init_from and any(getattr(model, k) is not None for k in ("dropout", "attention_dropout", "activation_dropout")):
                problems.append("dropout overrides apply to model.init=random or a BART start; an EnCLAP checkpoint keeps its own")
        else:
            if model.model_name_or_path or model.init_from:
                problems.append("model.init=random takes no model.model_name_or_path / model.init_from")
            missing = [k for k in _RANDOM_SHAPE_KEYS if getattr(model, k) is None]
            if missing:
                problems.append(f"model.init=random needs an explicit shape: set model.{', model.'.join(missing)}")
            if not (tok.name_or_path or tok.train_from_captions):
                problems.append("model.init=random needs tokenizer.name_or_path or tokenizer.train_from_captions=true")
            too_small = [k for k in _RANDOM_SHAPE_KEYS if getattr(model, k) is not None and getattr(model, k) < 1]
            problems += [f"model.{k} must be >= 1, got {getattr(model, k)}" for k in too_small]
            if model.d_model and model.attention_heads and model.d_model % model.attention_heads:
                problems.append(f"model.d_model ({model.d_model}) must be a multiple of model.attention_heads ({model.attention_heads})")
            if model.max_position_embeddings is not None and model.max_position_embeddings < 4:
                problems.append(
                    f"model.max_position_embeddings must be >= 4 (CLAP slot, <s>, one codec frame, </s>), got {model.max_position_embeddings}"
                )
            if model.init_std is not None and model.init_std < 0:
                problems.append(f"model.init_std must be >= 0, got {model.init_std}")
        for key in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(model, key)
            if value is not None and not 0 <= value < 1:
                problems.append(f"model.{key} must be in [0, 1), got {value}")
        if model.mcm_loss_scale is not None and model.mcm_loss_scale < 0:
            problems.append(f"model.mcm_loss_scale must be >= 0, got {model.mcm_loss_scale}")
        if model.label_smoothing is not None and not 0 <= model.label_smoothing < 1:
            problems.append(f"model.label_smoothing must be in [0, 1), got {model.label_smoothing}")
        if tok.name_or_path and tok.train_from_captions:
            problems.append("give tokenizer.name_or_path or tokenizer.train_from_captions=true, not both")
        if tok.vocab_size < 300:
            problems.append(f"tokenizer.vocab_size must be >= 300 (256 bytes + special tokens + merges), got {tok.vocab_size}")
        val = self.validation
        if val.metrics:
            from ..metrics import SUPPORTED_METRICS

            unknown = [m for m in val.metrics if m not in SUPPORTED_METRICS and m != AUTO]
            if unknown:
                problems.append(f"validation.metrics: unknown {', '.join(unknown)}; known: {', '.join(SUPPORTED_METRICS)}")
            if not data.validation_file:
                problems.append("validation.metrics needs data.validation_file")
        if val.max_clips < 0 or val.val_max_target_length < 2 or val.num_beams < 1 or val.batch_size < 1:
            problems.append("validation: max_clips >= 0, val_max_target_length >= 2, num_beams >= 1 and batch_size >= 1 are required")
        best = self.train.best_metric
        if best == AUTO:
            pass  # the selection metric of validation.metrics (see selection_metric), else val_loss
        elif not best.startswith("val_") and best not in val.metrics and AUTO not in val.metrics:
            problems.append(f"train.best_metric={best!r} is neither a validation loss (val_loss...) nor in validation.metrics")
        if best == "val_mcm_loss":
            problems.append(
                "train.best_metric=val_mcm_loss: validation codes are not masked (the captioner is judged on clean codes), "
                "so no MCM loss is measured on them; use val_loss (the caption loss) or a caption metric"
            )
        try:
            self.train.validate()
        except ValueError as err:
            problems.append(f"train: {err}")
        if problems:
            raise ValueError("; ".join(problems))


def resolve_validation_metrics(config: TrainCaptionerConfig) -> tuple[list[str], str]:
    """``(caption metrics to compute, best_metric)`` with ``auto`` resolved on this machine.

    ``validation.metrics: [auto]`` is SPIDEr when SPICE can run here (Java and the CoreNLP jars) and
    CIDEr-D otherwise; ``train.best_metric: auto`` is SPIDEr when computed, else CIDEr-D when computed,
    else the first caption metric, else ``val_loss``. Without a validation manifest there is nothing to caption.
    """
    metrics = list(config.validation.metrics)
    if not config.data.validation_file:
        metrics = [m for m in metrics if m != AUTO]
    if AUTO in metrics:
        from ..metrics import metric_availability

        cache = config.validation.metrics_cache or None
        chosen = "spider" if metric_availability(["spider"], cache)["spider"].available else "cider_d"
        if chosen != "spider":
            logger.info("validation.metrics=auto: SPICE cannot run here, so CIDEr-D (not SPIDEr) picks the best model")
        metrics = list(dict.fromkeys(chosen if m == AUTO else m for m in metrics))
    best = config.train.best_metric
    if best == AUTO:
        best = next((m for m in ("spider", "cider_d") if m in metrics), metrics[0] if metrics else "val_loss")
    return metrics, best


def load_train_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> TrainCaptionerConfig:
    """Defaults < YAML file (which may name a ``base:`` file) < ``key=value`` overrides, validated."""
    from ..config import load_config

    return load_config(TrainCaptionerConfig, path, list(overrides))


# --------------------------------------------------------------------------------------------- pieces


def open_stores(data: DataConfig) -> tuple["FeatureReader", "FeatureReader"]:
    """(training store, validation store)."""
    from ..features.store import open_feature_store

    if data.features:
        train = open_feature_store(data.features)
    else:
        train = open_feature_store(encodec_path=data.encodec_base_path, clap_path=data.clap_base_path)
    validation = open_feature_store(data.validation_features) if data.validation_features else train
    return train, validation


def _store_extractor(store: "FeatureReader") -> dict[str, Any]:
    return dict((getattr(store, "metadata", None) or {}).get("extractor") or {})


def pipeline_settings_for(config: TrainCaptionerConfig, store: "FeatureReader"):
    """``pipeline.json`` of the outputs: which EnCodec / CLAP made the features, and the generation settings."""
    from ..pipeline import DEFAULT_CLAP, DEFAULT_ENCODEC, GenerationSettings, PipelineSettings

    extractor = _store_extractor(store)
    codec, clap = extractor.get("codec") or {}, extractor.get("clap") or {}
    encodec = config.data.encodec_model or codec.get("model")
    clap_model = config.data.clap_model or clap.get("model")
    if not encodec or not clap_model:
        logger.info(
            "the feature store does not say which EnCodec / CLAP made it; pipeline.json names %s / %s "
            "(set data.encodec_model / data.clap_model otherwise)",
            encodec or DEFAULT_ENCODEC, clap_model or DEFAULT_CLAP,
        )
    return PipelineSettings(
        encodec=encodec or DEFAULT_ENCODEC,
        clap=clap_model or DEFAULT_CLAP,
        bandwidth=float(codec.get("bandwidth", 12.0)),
        generation=GenerationSettings(num_beams=config.validation.num_beams, max_length=config.validation.val_max_target_length),
    )


def resumes_in_output_dir(config: TrainCaptionerConfig) -> bool:
    """Whether the loop will continue a checkpoint of ``config.output_dir`` (as its ``train.resume`` rule picks one)."""
    from ..training.checkpoints import CHECKPOINTS_DIR, list_checkpoints

    output_dir = Path(config.output_dir).expanduser()
    resume = config.train.resume
    if resume == "never":
        return False
    if resume == "auto":
        return bool(list_checkpoints(output_dir))
    return Path(resume).expanduser().resolve().parent == (output_dir / CHECKPOINTS_DIR).resolve()


def build_tokenizer(config: TrainCaptionerConfig, train_captions: Sequence[str], *, is_main: bool) -> "PreTrainedTokenizerBase":
    """The caption tokenizer; one trained from the captions is saved in ``output_dir/tokenizer`` and reused on resume.

    Only a run that resumes a checkpoint of ``output_dir`` reuses the saved tokenizer; a fresh run trains
    its own (a tokenizer left by an earlier run may come from other captions or another vocab_size) and
    replaces the saved one, unless checkpoints it belongs to are still there (a run refused for them
    must change nothing).
    """
    from ..text import DEFAULT_TOKENIZER, has_tokenizer_files, load_tokenizer, train_caption_tokenizer
    from ..training.checkpoints import commit_directory, list_checkpoints

    tok, model = config.tokenizer, config.model
    if tok.train_from_captions:
        output_dir = Path(config.output_dir).expanduser()
        saved = output_dir / TOKENIZER_DIR
        if has_tokenizer_files(saved) and resumes_in_output_dir(config):
            logger.info("using the tokenizer trained for this run: %s", saved)
            return load_tokenizer(saved)
        tokenizer = train_caption_tokenizer(train_captions, vocab_size=tok.vocab_size)
        logger.info("trained a %d-token caption tokenizer on %d captions", len(tokenizer), len(train_captions))
        if is_main and (not has_tokenizer_files(saved) or not list_checkpoints(output_dir)):
            import shutil

            tmp = saved.with_name(f".tmp-{TOKENIZER_DIR}")
            shutil.rmtree(tmp, ignore_errors=True)
            tokenizer.save_pretrained(tmp)
            commit_directory(tmp, saved)  # whole or absent: a resumed run must find exactly this tokenizer
        return tokenizer
    if tok.name_or_path:
        return load_tokenizer(tok.name_or_path)
    if model.init_from:
        from ..errors import PretrainedNotFoundError
        from ..loading import looks_like_hub_id

        if not Path(model.init_from).expanduser().exists() and not looks_like_hub_id(model.init_from):
            # Checked here, before the fallback tokenizer would be looked for: the missing checkpoint is the problem.
            raise PretrainedNotFoundError(
                f"model.init_from: '{model.init_from}' does not exist on this machine and is not a model hub id; "
                "name an EnCLAP checkpoint directory to fine-tune (e.g. the best/ or final/ of an earlier run)"
            )
        return load_tokenizer(model.init_from if has_tokenizer_files(model.init_from) else DEFAULT_TOKENIZER)
    return load_tokenizer(model.model_name_or_path)


def check_caption_lengths(config: TrainCaptionerConfig, max_positions: int) -> None:
    """Refuse caption lengths the decoder's position table cannot hold (they fail mid-run otherwise).

    Training feeds ``max_target_length`` tokens to the decoder; generation of ``val_max_target_length``
    tokens feeds one fewer (the last token is never read back).
    """
    problems = []
    if config.data.max_target_length > max_positions:
        problems.append(f"data.max_target_length={config.data.max_target_length} exceeds the model's max_position_embeddings={max_positions}")
    if config.validation.val_max_target_length > max_positions + 1:
        problems.append(
            f"validation.val_max_target_length={config.validation.val_max_target_length} exceeds the model's "
            f"max_position_embeddings + 1 = {max_positions + 1}"
        )
    if problems:
        raise ConfigError("; ".join(problems) + ": the decoder has no position for longer captions")


def _dropout_overrides(model: ModelConfig) -> dict[str, float]:
    return {k: getattr(model, k) for k in ("dropout", "attention_dropout", "activation_dropout") if getattr(model, k) is not None}


def build_model(
    config: TrainCaptionerConfig,
    tokenizer: "PreTrainedTokenizerBase",
    *,
    num_codebooks: int,
    d_clap: int,
    codebook_size: int,
) -> "EnClapBartForConditionalGeneration":
    """The captioner to train (CPU, train mode) per ``config.model``; the codec geometry is the store's."""
    from ..model import EnClapBartConfig, EnClapBartForConditionalGeneration, load_enclap_model

    spec = config.model
    objective = {
        "mcm_loss_scale": 0.7 if spec.mcm_loss_scale is None else spec.mcm_loss_scale,
        "label_smoothing": 0.2 if spec.label_smoothing is None else spec.label_smoothing,
    }
    codec = {"num_rvq": num_codebooks, "d_clap": d_clap, "encodec_vocab_size": codebook_size, "encodec_pad_token_id": codebook_size}
    special = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2)
    if spec.init == "random":
        model_config = EnClapBartConfig(
            vocab_size=len(tokenizer),
            d_model=spec.d_model,
            encoder_layers=spec.encoder_layers,
            decoder_layers=spec.decoder_layers,
            encoder_attention_heads=spec.attention_heads,
            decoder_attention_heads=spec.attention_heads,
            encoder_ffn_dim=spec.ffn_dim,
            decoder_ffn_dim=spec.ffn_dim,
            max_position_embeddings=spec.max_position_embeddings or 1024,
            init_std=0.02 if spec.init_std is None else spec.init_std,
            **{"dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1, **_dropout_overrides(spec)},
            **codec,
            **objective,
            **special,
        )
        logger.info("random initialisation (model.init=random): d_model %d, %d+%d layers", spec.d_model, spec.encoder_layers, spec.decoder_layers)
        model = EnClapBartForConditionalGeneration(model_config)
    elif spec.init_from:
        model = load_enclap_model(spec.init_from, "cpu")
        found = (model.config.num_rvq, model.config.d_clap, model.config.encodec_vocab_size)
        if found != (num_codebooks, d_clap, codebook_size):
            from ..errors import InvalidFeaturesError

            raise InvalidFeaturesError(
                f"model.init_from={spec.init_from} expects {found[0]} codebooks of {found[2]} codes and d_clap={found[1]}, "
                f"but the training features have {num_codebooks} codebooks of {codebook_size} codes and d_clap={d_clap}"
            )
        for key in ("mcm_loss_scale", "label_smoothing"):  # read at every forward, so they can change here
            if getattr(spec, key) is not None:
                setattr(model.config, key, getattr(spec, key))
        logger.info("fine-tuning the EnCLAP checkpoint %s", spec.init_from)
    else:
        model = load_bart_as_captioner(spec.model_name_or_path, {**codec, **objective, **_dropout_overrides(spec)})
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {model.config.vocab_size}; "
            "use the model's own tokenizer"
        )
    return model.train()


# Parts of the captioner that a BART does not have: initialised anew when starting from a BART.
NEW_PARTS = ("model.encoder.embed_encodec.", "model.encoder.clap_projection.", "mcm_heads.")


def load_bart_as_captioner(name_or_path: str, overrides: dict[str, Any]) -> "EnClapBartForConditionalGeneration":
    """A captioner whose BART weights come from ``name_or_path`` (hub id or directory); the EnCLAP parts are new.

    Every BART weight must load: a missing, unexpected or wrongly shaped one is a
    :class:`~enclap.errors.CheckpointError`; a path that is neither a local directory nor a reachable hub
    id is a :class:`~enclap.errors.PretrainedNotFoundError` (there is no silent random fallback).
    """
    from transformers import AutoConfig

    from ..errors import CheckpointError
    from ..loading import load_pretrained
    from ..model import EnClapBartConfig, EnClapBartForConditionalGeneration

    def loader(path: str) -> EnClapBartForConditionalGeneration:
        base = AutoConfig.from_pretrained(path)
        if base.model_type != "bart":
            raise ConfigError(f"model.model_name_or_path={path} is a {base.model_type!r} model, not a BART")
        if getattr(base, "d_clap", None) is not None:
            raise ConfigError(f"model.model_name_or_path={path} is already an EnCLAP captioner: fine-tune it with model.init_from")
        config = EnClapBartConfig.from_pretrained(path, **overrides)
        model, info = EnClapBartForConditionalGeneration.from_pretrained(
            path, config=config, output_loading_info=True, weights_only=True
        )
        problems = []
        missing = [k for k in info.get("missing_keys") or [] if not k.startswith(NEW_PARTS)]
        for kind, keys in (("missing", missing), ("unexpected", info.get("unexpected_keys") or []),
                           ("mismatched", info.get("mismatched_keys") or []), ("errors", info.get("error_msgs") or [])):
            if keys:
                problems.append(f"{kind}: {', '.join(map(str, sorted(keys, key=str)[:10]))}" + (f" (+{len(keys) - 10} more)" if len(keys) > 10 else ""))
        if problems:
            raise CheckpointError(f"{path}: the BART weights do not fit the captioner: " + "; ".join(problems))
        new = sorted({k.split(".")[0] if k.startswith("mcm") else ".".join(k.split(".")[:3]) for k in info.get("missing_keys") or []})
        logger.info("started from the BART %s; new parts: %s", path, ", ".join(new))
        return model

    return load_pretrained(
        loader, name_or_path, what="BART model (model.model_name_or_path)",
        how_to_get="EnCLAP starts from facebook/bart-base or facebook/bart-large; for offline random weights set model.init=random.",
    )


def _digest(items: Sequence[Any]) -> str:
    hasher = hashlib.sha256()
    for item in items:
        hasher.update(json.dumps(item, ensure_ascii=False).encode("utf-8"))
        hasher.update(b"\n")
    return hasher.hexdigest()[:16]


def run_fingerprint(config: TrainCaptionerConfig, model, tokenizer, train_pairs, store) -> dict[str, Any]:
    """What a resumed run must share with its checkpoint: model shape, objective, data, features, tokenizer."""
    c = model.config
    shape_keys = ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                  "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
                  "num_rvq", "d_clap", "encodec_vocab_size", "encodec_pad_token_id")
    return {
        "model": {key: getattr(c, key) for key in shape_keys},
        "objective": {
            "mcm_loss_scale": float(c.mcm_loss_scale),
            "label_smoothing": float(c.label_smoothing),
            "encodec_masking_prob": config.data.encodec_masking_prob,
            "encodec_masking_span": config.data.encodec_masking_span,
            "max_target_length": config.data.max_target_length,
        },
        "data": {"train_pairs": len(train_pairs), "train_digest": _digest([list(p) for p in train_pairs])},
        "features": _digest([_store_extractor(store)]),
        "tokenizer": _digest(sorted(tokenizer.get_vocab().items())),
        # A resumed run reuses the saved tokenizer: a changed setting for training one must not pass unnoticed.
        **({"tokenizer_training": {"vocab_size": config.tokenizer.vocab_size}} if config.tokenizer.train_from_captions else {}),
    }


def _metric_validation(config: TrainCaptionerConfig, val_store, val_manifest: str, metrics: Sequence[str]):
    from ..data.manifest import read_manifest
    from ..training.captioner import CaptionMetricValidation

    clips = read_manifest(val_manifest)
    if config.validation.max_clips:
        clips = clips[: config.validation.max_clips]
    features = [val_store[clip.key] for clip in clips]
    return CaptionMetricValidation(
        features,
        [clip.file_path for clip in clips],
        [clip.captions for clip in clips],
        metrics,
        batch_size=config.validation.batch_size,
        metrics_cache=config.validation.metrics_cache or None,
    )


# --------------------------------------------------------------------------------------------- the job


def train_captioner(
    config: TrainCaptionerConfig, *, accelerator: "Accelerator | None" = None,
    on_validation: "Callable[[int, dict[str, float]], bool | None] | None" = None,
) -> "TrainingResult":
    """Run (or resume) the training ``config`` describes, in this process and its siblings under a launcher.

    Everything is checked before the first step: manifests against the stores (missing clips, empty
    captions, clips without frames), the stores' codebook count and CLAP size against the model,
    pretrained parts, resumability. Returns the loop's :class:`~enclap.training.loop.TrainingResult`
    (``final_dir`` / ``best_dir`` are pipeline directories). ``on_validation(step, figures)`` is the loop's
    per-validation callback (True stops the run; :mod:`enclap.tuning` prunes trials with it).
    """
    from accelerate.utils import set_seed

    from ..data.dataset import CaptionPairDataset, check_no_empty_clips, check_store_covers, encode_captions, store_geometry
    from ..data.manifest import clip_key, read_caption_pairs
    from ..model.inputs import max_frames_for
    from ..training.captioner import CaptionerTask
    from ..training.loop import make_accelerator, run_training

    try:
        config.validate()
    except ValueError as err:  # a config built in code rather than by load_train_config
        raise ConfigError(str(err)) from err
    accelerator = accelerator if accelerator is not None else make_accelerator(config.train)
    is_main = accelerator.is_main_process
    output_dir = Path(config.output_dir).expanduser()
    data = config.data

    # Data first: its problems are found in seconds, before any model is loaded.
    train_store, val_store = open_stores(data)
    train_pairs = read_caption_pairs(data.train_file)
    train_keys = [clip_key(p) for p, _ in train_pairs]
    check_store_covers(train_keys, train_store, data.train_file)
    check_no_empty_clips(train_keys, train_store, data.train_file)
    val_pairs: list[tuple[str, str]] = []
    if data.validation_file:
        val_pairs = read_caption_pairs(data.validation_file)
        val_keys = [clip_key(p) for p, _ in val_pairs]
        check_store_covers(val_keys, val_store, data.validation_file)
        check_no_empty_clips(val_keys, val_store, data.validation_file)
    num_codebooks, d_clap = store_geometry(train_store, train_keys[0])
    if val_pairs and val_store is not train_store:
        val_geometry = store_geometry(val_store, clip_key(val_pairs[0][0]))
        if val_geometry != (num_codebooks, d_clap):
            from ..errors import InvalidFeaturesError

            raise InvalidFeaturesError(
                f"validation features {data.validation_features} have (codebooks, d_clap) = {val_geometry}, "
                f"the training features {(num_codebooks, d_clap)}"
            )
    codebook_size = int((_store_extractor(train_store).get("codec") or {}).get("codebook_size", 1024))

    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(config.seed)  # the same model on every process
    tokenizer = build_tokenizer(config, [c for _, c in train_pairs], is_main=is_main)
    accelerator.wait_for_everyone()
    model = build_model(config, tokenizer, num_codebooks=num_codebooks, d_clap=d_clap, codebook_size=codebook_size)
    mc = model.config
    check_caption_lengths(config, mc.max_position_embeddings)
    settings = dict(
        max_frames=max_frames_for(mc),
        codebook_size=mc.encodec_vocab_size,
        codec_pad_id=mc.encodec_pad_token_id,
        mask_prob=data.encodec_masking_prob,
        mask_span=data.encodec_masking_span,
        seed=config.seed,
        num_codebooks=num_codebooks,
        d_clap=d_clap,
    )
    train_dataset = CaptionPairDataset(
        train_pairs, encode_captions(tokenizer, [c for _, c in train_pairs], data.max_target_length, source=data.train_file),
        train_store, train=True, source=data.train_file, **settings,
    )
    val_dataset = None
    if val_pairs:
        val_dataset = CaptionPairDataset(
            val_pairs, encode_captions(tokenizer, [c for _, c in val_pairs], data.max_target_length, source=data.validation_file),
            val_store, train=False, source=data.validation_file, **settings,
        )
    metrics, best_metric = resolve_validation_metrics(config)
    if best_metric not in metrics and not best_metric.startswith("val_"):
        raise ConfigError(f"train.best_metric={best_metric!r} is not among the validation metrics computed here: {metrics}")
    config.train.best_metric = best_metric
    metric_validation = _metric_validation(config, val_store, data.validation_file, metrics) if metrics else None
    from omegaconf import OmegaConf

    config_text = OmegaConf.to_yaml(OmegaConf.structured(config))
    task = CaptionerTask(
        model,
        tokenizer,
        train_dataset,
        val_dataset,
        pipeline_settings=pipeline_settings_for(config, train_store),
        metric_validation=metric_validation,
        fingerprint=run_fingerprint(config, model, tokenizer, train_pairs, train_store),
        export_files={CONFIG_FILE: config_text},
        run_files={CONFIG_FILE: config_text},  # written once the loop accepts the run (a refused resume changes nothing)
    )
    return run_training(
        task, config.train, output_dir=output_dir, seed=config.seed, accelerator=accelerator, on_validation=on_validation
    )


# --------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description=(
            "Train the EnCLAP captioner on precomputed features. Rerun the same command to resume an interrupted run. "
            "Several processes: `accelerate launch [--multi_gpu --num_processes N] train.py ...` or "
            "`torchrun --nproc_per_node N train.py ...` (on CPU set ACCELERATE_USE_CPU=true with accelerate's --multi_gpu; "
            "`accelerate launch --cpu --num_processes 2` silently runs one process)."
        ),
        epilog="Settings: defaults < the YAML config < key=value overrides with dotted names, e.g. train.learning_rate=1e-4.",
    )
    parser.add_argument("--config", help="YAML settings (e.g. cfg/clotho/base.yaml); may also be given as the first argument")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    parser.add_argument("args", nargs="*", metavar="[CONFIG.yaml] key=value", help="config file (reference style) and overrides")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainCaptionerConfig:
    path = args.config
    overrides = []
    for item in args.args:
        if "=" in item:
            overrides.append(item)
        elif path is None and item.endswith((".yaml", ".yml")):
            path = item
        else:
            raise ConfigError(f"unexpected argument {item!r}: expected key=value overrides after the config file")
    return load_train_config(path, overrides)


def _signal_exit_code(name: str | None) -> int:
    return {"SIGINT": 130, "SIGTERM": 143}.get(name or "", 130)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (see the module docstring)."""
    from . import quiet_model_loading

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        config = config_from_args(args)
    except ConfigError as err:
        print(f"train: configuration error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.structured(config)), end="")
        return 0
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    quiet_model_loading()
    # This process is ours (the training command): keep freed memory for reuse; a library caller of
    # train_captioner() keeps its own allocator policy (see enclap.allocator).
    from ..allocator import retain_freed_memory

    retain_freed_memory()
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise; the loop logs each save
    if rank != 0:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    status, result = run_training_command("train", lambda: train_captioner(config))
    if result is None or result.status == "interrupted":
        return status
    if rank == 0:
        print(f"train: finished: {result.summary()}", flush=True)
    return 0


def run_training_command(program: str, train: "Callable[[], TrainingResult]") -> "tuple[int, TrainingResult | None]":
    """Run a training job as a command: ``(exit status, result)`` with a message on stderr for each way it ends.

    1: the loss became non-finite (nothing saved past the last good checkpoint); 2: a configuration or data
    error; 130: a second Ctrl-C aborted without saving; a signal's code when a signal stopped it (a checkpoint
    was saved: rerunning the command resumes); 0 when it finished. Used by every training command.
    """
    from ..training.loop import NonFiniteLossError

    try:
        result = train()
    except NonFiniteLossError as err:
        print(f"{program}: {err}", file=sys.stderr)
        return 1, None
    except EnclapError as err:
        print(f"{program}: {err}", file=sys.stderr)
        return 2, None
    except KeyboardInterrupt:
        print(f"{program}: aborted without saving; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130, None
    finally:
        from ..training.distributed import end_process_group

        end_process_group()
    if result.status == "interrupted":
        print(
            f"{program}: stopped by {result.signal or 'request'} at step {result.global_step} of {result.total_steps}; "
            f"checkpoint {result.last_checkpoint}. Rerun the same command to resume.",
            file=sys.stderr,
        )
        return _signal_exit_code(result.signal), result
    return 0, result


__all__ = [
    "DataConfig",
    "ModelConfig",
    "TokenizerConfig",
    "TrainCaptionerConfig",
    "ValidationConfig",
    "build_model",
    "build_parser",
    "build_tokenizer",
    "check_caption_lengths",
    "config_from_args",
    "load_bart_as_captioner",
    "load_train_config",
    "main",
    "open_stores",
    "pipeline_settings_for",
    "resumes_in_output_dir",
    "train_captioner",
]


if __name__ == "__main__":
    raise SystemExit(main())
