"""A fine-tuned audio classifier on a CLAP tower's audio encoder: LAION-CLAP's linear probe, done as a model.

:class:`ClapClassifierModel` (a transformers ``PreTrainedModel``: ``save_pretrained`` / ``from_pretrained``)
holds

* ``audio_model``: the tower's audio encoder (HTS-AT as :class:`transformers.ClapAudioModel`, or
  :class:`~enclap.clap.modeling.Cnn14`), with the same module names as in :class:`ClapTowerModel` and
  transformers' ``ClapModel``, so either's ``audio_model.*`` weights load into it unchanged;
* ``audio_projection``: the tower's audio projection (when ``features="projection"``);
* ``classifier``: the head, ``"linear"`` (one ``nn.Linear``) or ``"mlp"`` (LAION's ``MLPLayers([d, 2d,
  classes])``: Linear-ReLU-Dropout(0.1)-Linear).

**Which features the head reads.** ``features="projection"`` (the default) is LAION-CLAP's linear probe
(``laion_clap/clap_module/linear_probe.py``: ``lp_layer(audio_projection(audio_branch(x)["embedding"]))``):
the *unnormalised* projected audio embedding (512-d for LAION's towers). ``features="pooled"`` reads the
encoder's pooled output before the projection (HTS-AT's ``pooler_output``, CNN14's ``fc1`` embedding), as
PANNs' fine-tuning recipe does; the projection is then not part of the classifier.

**Freezing.** ``freeze_encoder=True`` is the linear probe: the encoder (and the projection) take no
gradient and stay in eval mode, so their batch-norm statistics and dropout do not move either (LAION's
probe calls ``clap_model.eval()`` in every forward for the same reason); only the head trains.
``freeze_encoder=False`` fine-tunes everything. The text tower is not part of the classifier.

The class names are the config's ``id2label`` (``label2id`` back), as in any transformers classifier.
The audio the encoder reads is the tower's: :attr:`ClapClassifierModel.tower_config` is the
:class:`ClapTowerConfig` the audio input is made for (:func:`enclap.clap.embedder.tower_audio_input`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from ..errors import CheckpointError, ConfigError
from .configuration import ClapTowerConfig

CLASSIFIER_FEATURES = ("projection", "pooled")
CLASSIFIER_HEADS = ("linear", "mlp")
# LAION's MLPLayers default dropout
MLP_DROPOUT = 0.1
# a stand-in text tower for the ClapTowerConfig a classifier keeps (its text side is never built)
_NO_TEXT = {"model_type": "roberta"}


class ClapClassifierConfig(PretrainedConfig):
    """Configuration of :class:`ClapClassifierModel`; see the module docstring.

    ``tower_config``: the :class:`ClapTowerConfig` fields of the tower the encoder comes from (only its
    audio side is built); ``features``: :data:`CLASSIFIER_FEATURES`; ``head``: :data:`CLASSIFIER_HEADS`;
    ``freeze_encoder``: linear probe (True) or full fine-tuning; ``id2label`` / ``label2id``: the classes.
    """

    model_type = "enclap_clap_classifier"

    def __init__(
        self,
        tower_config: Mapping[str, Any] | None = None,
        features: str = "projection",
        head: str = "linear",
        freeze_encoder: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        tower = dict(tower_config or {})
        for key in ("transformers_version", "architectures", "_name_or_path", "model_type", "id2label", "label2id",
                    "dtype", "torch_dtype"):
            tower.pop(key, None)
        self.tower_config = tower
        self.features = features
        self.head = head
        self.freeze_encoder = bool(freeze_encoder)
        self.validate()

    @property
    def tower(self) -> ClapTowerConfig:
        """The :class:`ClapTowerConfig` of the encoder (sample rate, clip length, front end)."""
        settings = dict(self.tower_config)
        settings.setdefault("text_config", dict(_NO_TEXT))
        return ClapTowerConfig(**settings)

    @property
    def class_names(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    def validate(self) -> None:
        problems = []
        if self.features not in CLASSIFIER_FEATURES:
            problems.append(f"features must be one of {', '.join(CLASSIFIER_FEATURES)}, got {self.features!r}")
        if self.head not in CLASSIFIER_HEADS:
            problems.append(f"head must be one of {', '.join(CLASSIFIER_HEADS)}, got {self.head!r}")
        if self.num_labels < 2:
            problems.append(f"a classifier needs at least 2 classes (id2label), got {self.num_labels}")
        if problems:
            raise ConfigError("ClapClassifierConfig: " + "; ".join(problems))
        self.tower  # noqa: B018 - raises ConfigError when the tower settings are invalid


def _register() -> None:
    from transformers import AutoConfig

    try:
        AutoConfig.register(ClapClassifierConfig.model_type, ClapClassifierConfig)
    except ValueError:  # already registered (module reloaded)
        pass


_register()


class ClapClassifierModel(PreTrainedModel):
    """See the module docstring. ``forward(input_features, is_longer=None, labels=None)`` ->
    :class:`SequenceClassifierOutput` (``logits`` ``(batch, classes)``; ``loss``: mean cross-entropy when
    ``labels`` are given)."""

    config: ClapClassifierConfig
    config_class = ClapClassifierConfig
    base_model_prefix = "clap_classifier"
    main_input_name = "input_features"

    def __init__(self, config: ClapClassifierConfig) -> None:
        super().__init__(config)
        from transformers import ClapAudioModel

        from .modeling import ClapProjection, Cnn14

        tower = config.tower
        if tower.audio_encoder == "htsat":
            self.audio_model = ClapAudioModel(tower.htsat_config())
            pooled_size = int(tower.audio_config["hidden_size"])
        else:
            self.audio_model = Cnn14(**tower.audio_config)
            pooled_size = self.audio_model.embedding_size
        if config.features == "projection":
            self.audio_projection = ClapProjection(pooled_size, tower.projection_dim, tower.projection)
            in_size = tower.projection_dim
        else:
            self.audio_projection = None
            in_size = pooled_size
        classes = config.num_labels
        if config.head == "linear":
            self.classifier = nn.Linear(in_size, classes)
        else:  # LAION's MLPLayers(units=[in_ch, in_ch * 2, out_ch]): Linear, ReLU, Dropout, Linear
            self.classifier = nn.Sequential(nn.Linear(in_size, 2 * in_size), nn.ReLU(), nn.Dropout(MLP_DROPOUT),
                                            nn.Linear(2 * in_size, classes))
        self.post_init()
        self.apply_freezing()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # the tower's init (PANNs' xavier / batch-norm constants, the front end recomputed), head included
        from .modeling import ClapTowerPreTrainedModel

        if isinstance(module, ClapClassifierModel):
            return
        ClapTowerPreTrainedModel._init_weights(self, module)

    # ------------------------------------------------------------------------------------- freezing
    def encoder_modules(self) -> list[nn.Module]:
        """The parts that ``freeze_encoder`` keeps fixed: the audio encoder and its projection."""
        return [m for m in (self.audio_model, self.audio_projection) if m is not None]

    def apply_freezing(self) -> None:
        """Honour ``freeze_encoder``; CNN14's fixed front end and AudioSet head never train."""
        from .modeling import Cnn14

        for part in self.encoder_modules():
            part.requires_grad_(not self.config.freeze_encoder)
        if isinstance(self.audio_model, Cnn14):
            for part in (self.audio_model.spectrogram_extractor, self.audio_model.logmel_extractor, self.audio_model.fc_audioset):
                part.requires_grad_(False)

    def train(self, mode: bool = True) -> "ClapClassifierModel":
        # a frozen encoder stays in eval mode: batch-norm statistics and dropout must not move (LAION's probe)
        super().train(mode)
        if self.config.freeze_encoder:
            for part in self.encoder_modules():
                part.eval()
        return self

    # ------------------------------------------------------------------------------------- forward
    @property
    def tower_config(self) -> ClapTowerConfig:
        return self.config.tower

    @property
    def class_names(self) -> list[str]:
        return self.config.class_names

    def audio_features(self, input_features: torch.Tensor, is_longer: torch.Tensor | None = None) -> torch.Tensor:
        """What the head reads: the unnormalised projected embedding, or the encoder's pooled output."""
        from .modeling import pooled_audio_output

        pooled = pooled_audio_output(self.audio_model, input_features, is_longer)
        return self.audio_projection(pooled) if self.audio_projection is not None else pooled

    def forward(
        self,
        input_features: torch.Tensor,
        is_longer: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        logits = self.classifier(self.audio_features(input_features, is_longer))
        loss = F.cross_entropy(logits.float(), labels.long()) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    # ------------------------------------------------------------------------------------- building
    @classmethod
    def from_encoder(
        cls,
        tower_config: ClapTowerConfig | Mapping[str, Any],
        state_dict: Mapping[str, torch.Tensor] | None,
        labels: Sequence[str],
        *,
        features: str = "projection",
        head: str = "linear",
        freeze_encoder: bool = False,
        where: str = "the encoder weights",
    ) -> "ClapClassifierModel":
        """A classifier over a tower's audio encoder: ``state_dict`` holds ``audio_model.*`` (and, for
        ``features="projection"``, ``audio_projection.*``) as a :class:`ClapTowerModel` or transformers
        ``ClapModel`` state dict does (other keys, e.g. the text tower's, are ignored); ``None`` keeps the
        random init. The head starts at random. Strict: every encoder weight must come from the state dict.
        """
        from .modeling import _load_strict

        settings = tower_config.to_dict() if isinstance(tower_config, PretrainedConfig) else dict(tower_config)
        labels = [str(label) for label in labels]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"class names must be distinct, got {labels}")
        config = ClapClassifierConfig(
            tower_config=settings, features=features, head=head, freeze_encoder=freeze_encoder,
            id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        )
        model = cls(config)
        if state_dict is not None:
            for prefix in ("audio_model", "audio_projection"):
                part = getattr(model, prefix)
                if part is None:
                    continue
                own = {k[len(prefix) + 1:]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}
                if not own:
                    raise CheckpointError(f"{where}: no {prefix}.* weights")
                _load_strict(part, own, f"{where} ({prefix})")
        model.apply_freezing()
        return model

    @classmethod
    def from_tower(cls, tower: Any, labels: Sequence[str], **kwargs: Any) -> "ClapClassifierModel":
        """A classifier on a :class:`ClapTowerModel`'s audio encoder (its text tower is left out)."""
        settings = tower.config.to_dict()
        settings["freeze_audio"] = settings["freeze_text"] = False
        return cls.from_encoder(settings, tower.state_dict(), labels, where=f"CLAP tower {getattr(tower.config, '_name_or_path', '')}".strip(),
                                **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> "ClapClassifierModel":
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model.apply_freezing()
        return model


def load_classifier(name_or_path: str | os.PathLike) -> ClapClassifierModel:
    """A saved classifier directory (``best/`` or ``final/`` of a training run), with the project's clear error when absent."""
    from ..loading import load_pretrained

    return load_pretrained(ClapClassifierModel.from_pretrained, str(name_or_path), what="CLAP classifier")


__all__ = ["CLASSIFIER_FEATURES", "CLASSIFIER_HEADS", "ClapClassifierConfig", "ClapClassifierModel", "load_classifier"]
