"""A CLAP tower to and from the layouts others use: transformers' ClapModel and LAION's training checkpoints.

* :func:`export_transformers_clap`: an HTS-AT + RoBERTa tower (pooler pooling, MLP projections: LAION's
  architecture) as a plain transformers ``ClapModel`` directory (weights, feature extractor, tokenizer)
  that transformers alone loads; the tower's one ``logit_scale`` fills both ``logit_scale_a`` and
  ``logit_scale_t``.
* :func:`load_laion_clap_weights`: a LAION ``laion_clap`` training state dict (``630k-*.pt``: ``module.``
  prefix, fused ``qkv``, ``audio_branch`` / ``text_branch``) into such a tower, through
  :func:`enclap.clap.convert.convert_laion_clap_checkpoint` (the tower's keys are transformers'
  ClapModel's, minus the two scales and the text buffers); LAION's ``logit_scale_a`` (the audio side's
  scale, the one its loss uses for audio-to-text) becomes the tower's ``logit_scale``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from transformers import ClapConfig

    from .modeling import ClapTowerModel

_TEXT_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
              "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id",
              "hidden_dropout_prob", "attention_probs_dropout_prob")


def exports_as_transformers_clap(tower: "ClapTowerModel") -> bool:
    """True when the tower is transformers' ClapModel architecture (HTS-AT + RoBERTa pooler + MLP projections)."""
    c = tower.config
    return (c.audio_encoder == "htsat" and c.text_config.get("model_type") == "roberta" and c.text_pooling == "pooler"
            and c.projection == "mlp")


def transformers_clap_config(tower: "ClapTowerModel") -> "ClapConfig":
    """The transformers ClapConfig of an exportable tower (:func:`exports_as_transformers_clap`)."""
    from transformers import ClapConfig, ClapTextConfig

    c = tower.config
    if not exports_as_transformers_clap(tower):
        raise ConfigError(
            "only an HTS-AT + RoBERTa tower with text_pooling=pooler and projection=mlp is a transformers ClapModel "
            f"(this one: {c.audio_encoder} + {c.text_config.get('model_type')}, pooling {c.text_pooling}, projection {c.projection})"
        )
    text = tower.text_model.config
    return ClapConfig(
        text_config=ClapTextConfig(**{k: getattr(text, k) for k in _TEXT_KEYS}).to_dict(),
        audio_config=c.htsat_config().to_dict(),
        projection_dim=c.projection_dim,
        logit_scale_init_value=float(tower.scale().detach()),
    )


def export_transformers_clap(tower: "ClapTowerModel", directory: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write the tower as a transformers ClapModel directory; see the module docstring."""
    from transformers import ClapModel

    from .modeling import _load_strict, htsat_feature_extractor

    model = ClapModel(transformers_clap_config(tower))
    state = {k: v for k, v in tower.state_dict().items() if k != "logit_scale"}
    state["logit_scale_a"] = tower.logit_scale.detach().clone()
    state["logit_scale_t"] = tower.logit_scale.detach().clone()
    expected = model.state_dict()
    for key in ("text_model.embeddings.position_ids", "text_model.embeddings.token_type_ids"):
        state.setdefault(key, expected[key])  # buffers ClapTextModel saves and RobertaModel does not
    _load_strict(model, state, "the CLAP tower")
    directory = Path(directory)
    model.save_pretrained(directory)
    htsat_feature_extractor(tower.config).save_pretrained(directory)
    tokenizer = tokenizer if tokenizer is not None else tower.tokenizer
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def load_laion_clap_weights(tower: "ClapTowerModel", path_or_state_dict: "str | os.PathLike | dict") -> None:
    """Fill an HTS-AT + RoBERTa tower from a LAION CLAP training checkpoint (strict; see the module docstring)."""
    from ..loading import load_state_dict
    from .convert import convert_laion_clap_checkpoint
    from .modeling import _load_strict

    where = "the given state dict" if isinstance(path_or_state_dict, dict) else str(path_or_state_dict)
    raw = path_or_state_dict if isinstance(path_or_state_dict, dict) else load_state_dict(path_or_state_dict)
    converted = convert_laion_clap_checkpoint(raw, transformers_clap_config(tower))
    converted.pop("logit_scale_t", None)
    if "logit_scale_a" in converted:
        converted["logit_scale"] = converted.pop("logit_scale_a").reshape(())
    for key in ("text_model.embeddings.position_ids", "text_model.embeddings.token_type_ids"):
        if key not in tower.state_dict():
            converted.pop(key, None)
    _load_strict(tower, converted, where)


__all__ = ["export_transformers_clap", "exports_as_transformers_clap", "load_laion_clap_weights", "transformers_clap_config"]
