"""The CLAP tower's configuration: which audio and text encoders, how they are pooled and projected.

A :class:`ClapTowerConfig` is data (``config.json`` next to the weights, or a YAML file in ``cfg/clap/``):

* ``audio_encoder``: ``"htsat"`` (LAION's Swin transformer over the mel image, as
  :class:`transformers.ClapAudioModel`, with its attentional feature fusion for clips longer than the
  window when ``audio_config.enable_fusion``) or ``"cnn14"`` (PANNs' CNN14 with its own 32 kHz log-mel
  front end, laid out so that ``Cnn14_mAP=0.431.pth`` loads by its own key names);
* ``audio_config``: for ``htsat`` the arguments of :class:`transformers.ClapAudioConfig`; for ``cnn14``
  the keys of :data:`CNN14_DEFAULTS` (PANNs' ``Cnn14(sample_rate, window_size, hop_size, mel_bins,
  fmin, fmax, classes_num)`` plus ``base_channels``: 64 is the published network, smaller values
  shrink every block proportionally);
* ``text_encoder``: ``"transformers"`` (a trainable text model of ``text_config``, below) or
  ``"sentence_transformers"``: a frozen Sentence-BERT (``sentence_transformer``: its hub id or directory,
  ``text_embedding_dim``: its output size) outside the tower's weights, whose sentence vectors only the
  text projection maps (the DCASE 2023 retrieval baseline; :mod:`enclap.clap.sentence_text`);
* ``text_config``: any transformers config as a dict with its ``model_type`` (``roberta``, ``gpt2``,
  ``bert``, ``mpnet``, ``clip_text_model``...), built with ``transformers.AutoModel.from_config``;
  ``text_pooling`` says how one vector is read from it (:data:`TEXT_POOLINGS`);
* ``projection`` (``"mlp"``: LAION's Linear-ReLU-Linear; ``"linear"``) into ``projection_dim``;
* a learnable temperature ``logit_scale`` (log of the inverse temperature, initialised at
  ``log(1/0.07)`` as CLIP and LAION do, its exponential capped at ``logit_scale_max`` = 100 as in open_clip);
* ``freeze_audio`` / ``freeze_text``: keep a (pretrained) tower fixed while the rest trains;
* ``clip_seconds``: the audio window; shorter clips are repeat-padded, longer ones cropped (or fused).
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

AUDIO_ENCODERS = ("htsat", "cnn14")
# cls: the first token's hidden state; pooler: the model's own pooler (RoBERTa/BERT dense+tanh on the first
# token, CLIP's end-of-text token); mean: the mean over non-padding tokens (Sentence-BERT); last: the last
# non-padding token (GPT-2, as Microsoft's CLAP 2023).
TEXT_POOLINGS = ("cls", "pooler", "mean", "last")
PROJECTIONS = ("mlp", "linear")
TEXT_ENCODERS = ("transformers", "sentence_transformers")

# PANNs' Cnn14 as trained on AudioSet (pytorch/main.py defaults of qiuqiangkong/audioset_tagging_cnn).
CNN14_DEFAULTS: dict[str, Any] = {
    "sample_rate": 32000,
    "window_size": 1024,
    "hop_size": 320,
    "mel_bins": 64,
    "fmin": 50,
    "fmax": 14000,
    "classes_num": 527,
    "base_channels": 64,
}
# LAION's HTSAT-tiny on its 48 kHz front end (enclap/clap/convert.py: HTSAT_ARCHITECTURES).
HTSAT_DEFAULTS: dict[str, Any] = {
    "spec_size": 256,
    "num_mel_bins": 64,
    "window_size": 8,
    "patch_size": 4,
    "patch_stride": [4, 4],
    "patch_embeds_hidden_size": 96,
    "depths": [2, 2, 6, 2],
    "num_attention_heads": [4, 8, 16, 32],
    "hidden_size": 768,
    "mlp_ratio": 4.0,
    "enable_fusion": False,
    "fusion_type": None,
    "aff_block_r": 4,
}
HTSAT_SAMPLE_RATE = 48000


class ClapTowerConfig(PretrainedConfig):
    """Configuration of :class:`~enclap.clap.modeling.ClapTowerModel`; see the module docstring."""

    model_type = "enclap_clap_tower"

    def __init__(
        self,
        audio_encoder: str = "htsat",
        audio_config: dict[str, Any] | None = None,
        text_config: dict[str, Any] | None = None,
        text_pooling: str = "pooler",
        projection: str = "mlp",
        projection_dim: int = 512,
        logit_scale_init: float = math.log(1 / 0.07),
        logit_scale_max: float = 100.0,
        freeze_audio: bool = False,
        freeze_text: bool = False,
        clip_seconds: float = 10.0,
        max_text_length: int = 77,
        text_encoder: str = "transformers",
        sentence_transformer: str = "",
        text_embedding_dim: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.text_encoder = text_encoder
        self.sentence_transformer = str(sentence_transformer)
        self.text_embedding_dim = int(text_embedding_dim)
        self.audio_encoder = audio_encoder
        defaults = HTSAT_DEFAULTS if audio_encoder == "htsat" else CNN14_DEFAULTS
        self.audio_config = {**defaults, **dict(audio_config or {})}
        if audio_encoder == "htsat" and self.audio_config.get("enable_fusion") and not self.audio_config.get("fusion_type"):
            self.audio_config["fusion_type"] = "aff_2d"
        self.text_config = dict(text_config or ({} if self.uses_sentence_transformer else {"model_type": "roberta"}))
        self.text_pooling = text_pooling
        self.projection = projection
        self.projection_dim = int(projection_dim)
        self.logit_scale_init = float(logit_scale_init)
        self.logit_scale_max = float(logit_scale_max)
        self.freeze_audio = bool(freeze_audio)
        self.freeze_text = bool(freeze_text)
        self.clip_seconds = float(clip_seconds)
        self.max_text_length = int(max_text_length)
        self.validate()

    # ------------------------------------------------------------------------------------ derived
    @property
    def sample_rate(self) -> int:
        """The audio rate the audio encoder reads (48 kHz for HTS-AT, the CNN14 config's own otherwise)."""
        return HTSAT_SAMPLE_RATE if self.audio_encoder == "htsat" else int(self.audio_config["sample_rate"])

    @property
    def uses_sentence_transformer(self) -> bool:
        """A frozen Sentence-BERT outside the weights; the tower learns only its text projection."""
        return self.text_encoder == "sentence_transformers"

    @property
    def enable_fusion(self) -> bool:
        return self.audio_encoder == "htsat" and bool(self.audio_config.get("enable_fusion"))

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    def text_model_config(self) -> PretrainedConfig:
        """The transformers config of the text encoder (``text_config`` through ``AutoConfig.for_model``)."""
        from transformers import AutoConfig

        settings = dict(self.text_config)
        return AutoConfig.for_model(settings.pop("model_type"), **settings)

    def htsat_config(self):
        """The :class:`transformers.ClapAudioConfig` of an HTS-AT audio encoder."""
        from transformers import ClapAudioConfig

        return ClapAudioConfig(**self.audio_config)

    def validate(self) -> None:
        from ..errors import ConfigError

        problems = []
        if self.audio_encoder not in AUDIO_ENCODERS:
            problems.append(f"audio_encoder must be one of {', '.join(AUDIO_ENCODERS)}, got {self.audio_encoder!r}")
        if self.text_pooling not in TEXT_POOLINGS:
            problems.append(f"text_pooling must be one of {', '.join(TEXT_POOLINGS)}, got {self.text_pooling!r}")
        if self.projection not in PROJECTIONS:
            problems.append(f"projection must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}")
        if self.text_encoder not in TEXT_ENCODERS:
            problems.append(f"text_encoder must be one of {', '.join(TEXT_ENCODERS)}, got {self.text_encoder!r}")
        elif self.uses_sentence_transformer:
            if not self.sentence_transformer:
                problems.append("text_encoder=sentence_transformers needs sentence_transformer (a hub id or directory)")
            if self.text_embedding_dim < 1:
                problems.append(f"text_encoder=sentence_transformers needs text_embedding_dim >= 1, got {self.text_embedding_dim}")
        elif "model_type" not in self.text_config:
            problems.append("text_config needs a model_type (e.g. roberta, gpt2, bert, mpnet, clip_text_model)")
        if self.projection_dim < 1:
            problems.append(f"projection_dim must be >= 1, got {self.projection_dim}")
        if self.logit_scale_max <= 0 or self.logit_scale_init > math.log(self.logit_scale_max):
            problems.append("logit_scale_max must be > 0 and logit_scale_init <= log(logit_scale_max)")
        if self.clip_seconds <= 0:
            problems.append(f"clip_seconds must be > 0, got {self.clip_seconds}")
        if self.audio_encoder == "htsat" and self.clip_seconds > 10.0:
            problems.append(f"clip_seconds must be <= 10 for HTS-AT (its mel image holds 10 s), got {self.clip_seconds}")
        if self.max_text_length < 2:
            problems.append(f"max_text_length must be >= 2, got {self.max_text_length}")
        if self.audio_encoder == "cnn14":
            unknown = set(self.audio_config) - set(CNN14_DEFAULTS)
            if unknown:
                problems.append(f"audio_config: unknown CNN14 key(s) {sorted(unknown)}; known: {sorted(CNN14_DEFAULTS)}")
            if int(self.audio_config.get("base_channels", 1)) < 1:
                problems.append("audio_config.base_channels must be >= 1")
            # five 2x2 poolings: the mel image must be at least 32 bins high and 32 frames long
            if int(self.audio_config.get("mel_bins", 64)) < 32:
                problems.append(f"audio_config.mel_bins must be >= 32 (CNN14 halves it five times), got {self.audio_config.get('mel_bins')}")
            frames = self.clip_seconds * int(self.audio_config.get("sample_rate", 1)) / int(self.audio_config.get("hop_size", 1))
            if frames < 32:
                problems.append(f"clip_seconds={self.clip_seconds} gives {frames:.0f} frames; CNN14 needs >= 32 (halved five times)")
        if problems:
            raise ConfigError("ClapTowerConfig: " + "; ".join(problems))


def _register() -> None:
    # AutoTokenizer / AutoConfig read config.json of a tower directory: let them know the model type.
    from transformers import AutoConfig

    try:
        AutoConfig.register(ClapTowerConfig.model_type, ClapTowerConfig)
    except ValueError:  # already registered (module reloaded)
        pass


_register()

__all__ = ["AUDIO_ENCODERS", "CNN14_DEFAULTS", "HTSAT_DEFAULTS", "PROJECTIONS", "TEXT_ENCODERS", "TEXT_POOLINGS", "ClapTowerConfig"]
