"""LAION CLAP training checkpoints -> transformers :class:`ClapModel`.

LAION releases CLAP as training checkpoints (``630k-audioset-fusion-best.pt`` and siblings): a dict
whose ``state_dict`` holds the weights of ``laion_clap.clap_module.model.CLAP`` under DDP's
``module.`` prefix. Their layout (from ``laion_clap/clap_module/{model,htsat,feature_fusion}.py``):

* ``audio_branch.*`` - HTSAT (a Swin transformer over the mel image): ``bn0``, ``patch_embed.{proj,norm,
  mel_conv2d,fusion_model.{local_att,global_att}.N}``, ``layers.I.blocks.J.{norm1,attn.{qkv,proj,
  relative_position_bias_table,relative_position_index},norm2,mlp.{fc1,fc2}}``, ``layers.I.downsample.
  {reduction,norm}``, ``norm``; plus parts the transformers port computes elsewhere or does not have:
  the torchlibrosa front end (``spectrogram_extractor``, ``logmel_extractor``: the feature extractor
  makes the mels), the AudioSet heads (``tscam_conv``, ``head``), and the shifted-window masks
  (``attn_mask``, recomputed by the model);
* ``text_branch.*`` - a RoBERTa-base, same names as transformers' RoBERTa;
* ``audio_projection.{0,2}``/``text_projection.{0,2}`` - Linear-ReLU-Linear;
* ``audio_transform``/``text_transform`` - MLPs used only inside LAION's training loss (dropped);
* ``logit_scale_a``, ``logit_scale_t``.

:func:`convert_laion_clap_checkpoint` renames these (splitting the fused ``qkv`` projections) and
fills the buffers transformers keeps but LAION's checkpoints may lack. The architecture of a
checkpoint cannot be read reliably from its weights alone (text head count, fusion type), so
:func:`clap_config_for_checkpoint` knows the released checkpoints by name and otherwise requires the
architecture to be given.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import ClapConfig, ClapModel

logger = logging.getLogger(__name__)

# HTSAT sizes (laion_clap/clap_module/htsat.py: create_htsat_model)
HTSAT_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "HTSAT-tiny": {"patch_embeds_hidden_size": 96, "depths": [2, 2, 6, 2], "num_attention_heads": [4, 8, 16, 32]},
    "HTSAT-base": {"patch_embeds_hidden_size": 128, "depths": [2, 2, 12, 2], "num_attention_heads": [4, 8, 16, 32]},
    "HTSAT-large": {"patch_embeds_hidden_size": 256, "depths": [2, 2, 12, 2], "num_attention_heads": [4, 8, 16, 32]},
}

# The released checkpoints (LAION-AI/CLAP README, "Pretrained Models"): audio tower and fusion.
KNOWN_CHECKPOINTS: dict[str, tuple[str, bool]] = {
    "630k-best": ("HTSAT-tiny", False),
    "630k-audioset-best": ("HTSAT-tiny", False),
    "630k-fusion-best": ("HTSAT-tiny", True),
    "630k-audioset-fusion-best": ("HTSAT-tiny", True),
    "music_audioset_epoch_15_esc_90.14": ("HTSAT-base", False),
    "music_speech_epoch_15_esc_89.25": ("HTSAT-base", False),
    "music_speech_audioset_epoch_15_esc_89.98": ("HTSAT-base", False),
}

# RoBERTa-base, LAION's text branch (transformers' roberta-base config)
ROBERTA_BASE = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)


def _checkpoint_stem(path_or_name: str | Path) -> str:
    name = Path(str(path_or_name)).name
    for suffix in (".pt", ".ckpt", ".pth"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def clap_config_for_checkpoint(path_or_name: str | Path, **overrides: Any) -> "ClapConfig":
    """The transformers ClapConfig of a LAION checkpoint, chosen by its file name.

    ``overrides``: ``audio_model`` (``"HTSAT-tiny"``, ``"HTSAT-base"``, ``"HTSAT-large"``) and/or
    ``enable_fusion`` (bool) replace what the name implies; a checkpoint whose name is not one of
    :data:`KNOWN_CHECKPOINTS` needs both. Raises :class:`ConfigError` naming the checkpoint otherwise.
    """
    from transformers import ClapAudioConfig, ClapConfig, ClapTextConfig

    unknown = set(overrides) - {"audio_model", "enable_fusion"}
    if unknown:
        raise ConfigError(f"clap_config_for_checkpoint: unknown override(s) {sorted(unknown)}; "
                          "use audio_model= and/or enable_fusion=")
    stem = _checkpoint_stem(path_or_name)
    audio_model, fusion = KNOWN_CHECKPOINTS.get(stem, (None, None))
    audio_model = overrides.get("audio_model", audio_model)
    fusion = overrides.get("enable_fusion", fusion)
    if audio_model is None or fusion is None:
        raise ConfigError(
            f"{path_or_name}: unknown LAION CLAP checkpoint '{stem}'. Known: {', '.join(sorted(KNOWN_CHECKPOINTS))}. "
            "For another checkpoint give its architecture: audio_model='HTSAT-tiny'|'HTSAT-base'|'HTSAT-large' "
            "and enable_fusion=True|False."
        )
    if audio_model not in HTSAT_ARCHITECTURES:
        raise ConfigError(f"{path_or_name}: unknown audio_model '{audio_model}'; one of {sorted(HTSAT_ARCHITECTURES)}")
    arch = HTSAT_ARCHITECTURES[audio_model]
    audio = ClapAudioConfig(
        **arch,
        hidden_size=arch["patch_embeds_hidden_size"] * 2 ** (len(arch["depths"]) - 1),
        enable_fusion=bool(fusion),
        fusion_type="aff_2d" if fusion else None,
        spec_size=256,
        num_mel_bins=64,
        window_size=8,
        patch_size=4,
        patch_stride=[4, 4],
        mlp_ratio=4.0,
        aff_block_r=4,
    )
    return ClapConfig(text_config=ClapTextConfig(**ROBERTA_BASE), audio_config=audio, projection_dim=512)


# ---------------------------------------------------------------------------------------------- renaming
_DROPPED = [
    re.compile(p)
    for p in (
        r"^audio_branch\.spectrogram_extractor\.",  # torchlibrosa STFT kernels: the feature extractor makes mels
        r"^audio_branch\.logmel_extractor\.",
        r"^audio_branch\.tscam_conv\.",  # AudioSet classification heads
        r"^audio_branch\.head\.",
        r"^audio_branch\.layers\.\d+\.blocks\.\d+\.attn_mask$",  # recomputed by the model
        r"^audio_transform\.sequential\.\d+\.",  # MLPs of LAION's training loss only
        r"^text_transform\.sequential\.\d+\.",
    )
]

_AUDIO_BLOCK = re.compile(r"^audio_branch\.layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_BLOCK_RENAMES = {
    "norm1.": "layernorm_before.",
    "norm2.": "layernorm_after.",
    "attn.proj.": "attention.output.dense.",
    "attn.relative_position_bias_table": "attention.self.relative_position_bias_table",
    "attn.relative_position_index": "attention.self.relative_position_index",
    "mlp.fc1.": "intermediate.dense.",
    "mlp.fc2.": "output.dense.",
}
_AUDIO_OTHER = [
    (re.compile(r"^audio_branch\.bn0\.(.+)$"), r"audio_model.audio_encoder.batch_norm.\1"),
    (re.compile(r"^audio_branch\.patch_embed\.(proj|norm|mel_conv2d)\.(weight|bias)$"),
     r"audio_model.audio_encoder.patch_embed.\1.\2"),
    (re.compile(r"^audio_branch\.patch_embed\.fusion_model\.((?:local|global)_att\.\d+\..+)$"),
     r"audio_model.audio_encoder.patch_embed.fusion_model.\1"),
    (re.compile(r"^audio_branch\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)$"),
     r"audio_model.audio_encoder.layers.\1.downsample.\2.\3"),
    (re.compile(r"^audio_branch\.norm\.(weight|bias)$"), r"audio_model.audio_encoder.norm.\1"),
    (re.compile(r"^(audio|text)_projection\.0\.(weight|bias)$"), r"\1_projection.linear1.\2"),
    (re.compile(r"^(audio|text)_projection\.2\.(weight|bias)$"), r"\1_projection.linear2.\2"),
    (re.compile(r"^text_branch\.(.+)$"), r"text_model.\1"),
    (re.compile(r"^(logit_scale_a|logit_scale_t)$"), r"\1"),
]


def strip_module_prefix(state_dict: dict) -> dict:
    """Drop DDP's ``module.`` prefix (present on every key of LAION's checkpoints) where it is present."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def convert_laion_clap_checkpoint(state_dict: dict, config: "ClapConfig") -> dict:
    """Rename a LAION CLAP state dict (``module.``-prefixed or not) to transformers ClapModel keys.

    Fused ``attn.qkv`` weights are split into query/key/value; LAION-only tensors (mel front end,
    AudioSet heads, window masks, training-loss MLPs) are dropped; buffers transformers stores but
    LAION's checkpoints may lack (text ``position_ids``/``token_type_ids``, relative position
    indices) are filled in. A key that fits no known pattern raises :class:`CheckpointError`.
    """
    import torch

    converted: dict[str, "torch.Tensor"] = {}
    unknown: list[str] = []
    for key, value in strip_module_prefix(state_dict).items():
        if any(p.search(key) for p in _DROPPED):
            continue
        block = _AUDIO_BLOCK.match(key)
        if block:
            stage, index, rest = block.groups()
            prefix = f"audio_model.audio_encoder.layers.{stage}.blocks.{index}."
            qkv = re.match(r"^attn\.qkv\.(weight|bias)$", rest)
            if qkv:
                if value.shape[0] % 3:
                    raise CheckpointError(f"{key}: fused qkv of size {value.shape[0]} is not divisible by 3")
                for part, name in zip(value.chunk(3, dim=0), ("query", "key", "value")):
                    converted[f"{prefix}attention.self.{name}.{qkv.group(1)}"] = part.clone()
                continue
            for old, new in _BLOCK_RENAMES.items():
                if rest.startswith(old):
                    converted[prefix + new + rest[len(old):]] = value
                    break
            else:
                unknown.append(key)
            continue
        for pattern, replacement in _AUDIO_OTHER:
            if pattern.match(key):
                converted[pattern.sub(replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"not a LAION CLAP state dict: {len(unknown)} key(s) fit no known pattern, e.g. {unknown[:5]}"
        )
    _fill_buffers(converted, config)
    return converted


def _fill_buffers(converted: dict, config: "ClapConfig") -> None:
    import torch

    max_positions = int(config.text_config.max_position_embeddings)
    position_ids = converted.setdefault(
        "text_model.embeddings.position_ids", torch.arange(max_positions).expand((1, -1)).clone()
    )
    converted.setdefault("text_model.embeddings.token_type_ids", torch.zeros_like(position_ids, dtype=torch.long))
    for key in [k for k in converted if k.endswith("attention.self.relative_position_bias_table")]:
        index_key = key.replace("relative_position_bias_table", "relative_position_index")
        if index_key not in converted:
            side = int(round(converted[key].shape[0] ** 0.5))  # the table has (2w-1)^2 rows
            converted[index_key] = _relative_position_index((side + 1) // 2)


def _relative_position_index(window: int) -> "torch.Tensor":
    """Swin's pair-wise relative position index of a ``window`` x ``window`` window."""
    import torch

    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    relative[:, :, 0] += window - 1
    relative[:, :, 1] += window - 1
    relative[:, :, 0] *= 2 * window - 1
    return relative.sum(-1)


def state_dict_problems(expected: dict, state: dict) -> list[str]:
    """What keeps ``state`` from filling a module whose state dict is ``expected`` exactly ([] when it fits)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    detail = []
    if missing:
        detail.append(f"missing {len(missing)} key(s), e.g. {missing[:5]}")
    if unexpected:
        detail.append(f"unexpected {len(unexpected)} key(s), e.g. {unexpected[:5]}")
    if mismatched:
        k = mismatched[0]
        detail.append(
            f"{len(mismatched)} shape mismatch(es), e.g. {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        )
    return detail


def load_laion_clap(
    path: str | Path,
    device: "str | torch.device" = "cpu",
    *,
    config: "ClapConfig | None" = None,
    **overrides: Any,
) -> "ClapModel":
    """A transformers ClapModel with the weights of LAION checkpoint ``path`` (converted in memory).

    ``config`` defaults to :func:`clap_config_for_checkpoint` ``(path, **overrides)``. The file is read
    with ``torch.load(weights_only=True)``. Raises :class:`PretrainedNotFoundError` when the file is
    missing, :class:`ConfigError` for an unknown checkpoint name, and :class:`CheckpointError` when the
    weights do not fill the model exactly (the message lists missing/unexpected keys or the first
    shape mismatch, which usually means the wrong architecture was chosen).
    """
    from transformers import ClapModel

    from ..errors import PretrainedNotFoundError
    from ..loading import load_state_dict

    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedNotFoundError(
            f"LAION CLAP checkpoint '{path}' does not exist. Download it from "
            "https://huggingface.co/lukewys/laion_clap (e.g. 630k-audioset-fusion-best.pt) or use a hub id "
            "such as laion/clap-htsat-fused."
        )
    config = config if config is not None else clap_config_for_checkpoint(path, **overrides)
    state = convert_laion_clap_checkpoint(load_state_dict(path), config)
    model = ClapModel(config)
    detail = state_dict_problems(model.state_dict(), state)
    if detail:
        raise CheckpointError(
            f"{path}: does not fit the CLAP architecture chosen for it "
            f"(audio {config.audio_config.patch_embeds_hidden_size}-d HTSAT depths {list(config.audio_config.depths)}, "
            f"fusion={config.audio_config.enable_fusion}): " + "; ".join(detail)
        )
    model.load_state_dict(state, strict=True)
    model.config._name_or_path = str(path)
    return model.to(device).eval()
