"""Small random-initialised EnCodec and CLAP models, built deterministically from a seed.

The real feature models (``facebook/encodec_24khz``, ``laion/clap-htsat-fused``) come from the model
hub. Where the hub cannot be reached -- the offline demo, the test suite -- a run may *explicitly ask*
for these stand-ins instead; nothing in the project falls back to them silently. They keep the real
models' interfaces, so every job, the feature store and the captioner's configuration stay EnCLAP's:

* EnCodec: 24 kHz, causal, hop 320 (75 frames/s), 1024-entry codebooks, target bandwidths
  1.5/3/6/12/24 kbps -> 2/4/8/16/32 codebooks (so 12 kbps gives the captioner's 16 codebooks);
* CLAP: a fused HTSAT audio tower on LAION's 48 kHz front end (64 mels, 10 s window, 50 Hz - 14 kHz)
  with a ``projection_dim`` embedding (512 by default, the real model's size).

They are a few thousand times smaller than the real ones (a few hundred thousand parameters each), so
they build and run in a second or two on a CPU. Their features carry information about the audio
(different sounds give different codes and embeddings), but nothing learned: a captioner trained on
them learns from its own training data only.

Every parameter and buffer is filled from a seeded generator. The stock initialisation leaves
codebooks, relative position biases and batch-norm statistics at constants, which would make all
frames quantise to the same code and would let wrong weight mappings or broken inputs go unnoticed.
EnCodec's codebooks are then drawn from the encoder's own outputs on a fixed probe signal, level by
level from the residuals of the levels before (as a k-means initialisation would), so every level
splits real frames and codes vary from frame to frame.

Determinism: the same seed and shape give bit-identical state dicts. Construction runs on one torch
thread (restored afterwards) because the codebook draw passes the probe through the encoder, and a
float reduction's result can depend on the thread count.

    from enclap.features.random_models import save_random_feature_models
    paths = save_random_feature_models("runs/demo/models", seed=0)
    # -> FeatureExtractor.from_pretrained(str(paths.encodec), str(paths.clap)), or the extraction job's
    #    --encodec / --clap options, load them by local path like any save_pretrained directory.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch
    from transformers import ClapConfig, ClapModel, EncodecConfig, EncodecModel

ENCODEC_SAMPLE_RATE = 24_000
# Written next to the weights of every directory built here: anyone who opens it sees what it is.
RANDOM_MARKER_FILE = "random_init.json"


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run torch on ``count`` threads inside the block (the caller's setting is restored)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def randomise_parameters(model: "torch.nn.Module", seed: int, scale: float = 0.05) -> None:
    """Perturb every float parameter and buffer of ``model`` from a generator seeded by ``seed``.

    Weights get ``scale`` x standard-normal noise added; batch-norm running variances are redrawn in
    [0.5, 1.5) and running means near 0 (so normalisation stays well-conditioned); weight-norm
    magnitudes are scaled up by a few percent (they must stay positive).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen, dtype=tensor.dtype))
            elif name.endswith("running_mean"):
                tensor.copy_(0.1 * noise)
            elif name.endswith(("original0", "weight_g")):
                # weight-norm magnitude: keep it positive and near the stock value
                tensor.mul_(1.0 + 0.1 * noise.abs())
            else:
                tensor.add_(scale * noise)


# --------------------------------------------------------------------------------------------- EnCodec


def random_encodec_config(**overrides: Any) -> "EncodecConfig":
    """A 24 kHz EnCodec config shaped like facebook/encodec_24khz (causal, hop 320, 75 fps) but tiny.

    ``overrides`` are EncodecConfig arguments (e.g. ``num_filters=8`` for a wider encoder).
    """
    from transformers import EncodecConfig

    kwargs: dict[str, Any] = dict(
        target_bandwidths=[1.5, 3.0, 6.0, 12.0, 24.0],
        sampling_rate=ENCODEC_SAMPLE_RATE,
        audio_channels=1,
        normalize=False,
        chunk_length_s=None,
        hidden_size=16,  # codebook dimension
        num_filters=4,
        num_residual_layers=1,
        upsampling_ratios=[8, 5, 4, 2],  # hop 320 samples = 75 frames/s at 24 kHz, as the real model
        num_lstm_layers=2,
        codebook_size=1024,
        use_causal_conv=True,
        pad_mode="reflect",
    )
    kwargs.update(overrides)
    return EncodecConfig(**kwargs)


def _probe_signal(seconds: int, sample_rate: int, gen: "torch.Generator") -> "torch.Tensor":
    """Noise with a slow loudness swell plus a gliding tone: frames of many levels and spectra."""
    import torch

    t = torch.arange(seconds * sample_rate) / sample_rate
    envelope = 0.02 + 0.3 * (1 + torch.sin(2 * torch.pi * 0.3 * t)) / 2
    return torch.randn(t.shape, generator=gen) * envelope + 0.2 * torch.sin(2 * torch.pi * 440 * t * (1 + t / 8))


def random_encodec_model(seed: int = 0, **config_overrides: Any) -> "EncodecModel":
    """A random EncodecModel (eval mode) whose codebooks are spread so that codes vary frame to frame."""
    import torch
    from transformers import EncodecModel

    with _torch_threads(1), torch.no_grad():  # construction runs many tiny ops: extra threads only contend
        torch.manual_seed(seed)
        model = EncodecModel(random_encodec_config(**config_overrides)).eval()
        randomise_parameters(model, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        # Codewords drawn from the encoder's own outputs (and, level by level, from the residuals left by
        # the levels before), as a k-means initialisation would: every level then splits real frames.
        probe = _probe_signal(16, int(model.config.sampling_rate), gen)
        residual = model.encoder(probe.reshape(1, 1, -1).expand(1, model.config.audio_channels, -1))
        frames = residual[0].t()  # (frames, dim)
        for layer in model.quantizer.layers:
            size = layer.codebook.embed.shape[0]
            pick = torch.randint(0, frames.shape[0], (size,), generator=gen)
            embed = frames[pick] + 0.01 * frames.std() * torch.randn(size, frames.shape[1], generator=gen)
            layer.codebook.embed.copy_(embed)
            layer.codebook.embed_avg.copy_(embed)
            layer.codebook.cluster_size.copy_(torch.rand(size, generator=gen))
            frames = frames - layer.decode(layer.encode(frames.t()[None]))[0].t()
    return model


def save_random_encodec(directory: str | os.PathLike, seed: int = 0, **config_overrides: Any) -> Path:
    """Build :func:`random_encodec_model` and save it (+ its feature-extractor config) as an HF directory.

    The directory loads with ``EncodecTokenizer.from_pretrained(str(directory))`` / the extraction job's
    ``encodec`` setting; it also holds :data:`RANDOM_MARKER_FILE` saying how it was made.
    """
    from transformers import EncodecFeatureExtractor

    directory = Path(directory)
    model = random_encodec_model(seed, **config_overrides)
    model.save_pretrained(directory)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=int(model.config.sampling_rate)).save_pretrained(directory)
    _write_marker(directory, "EnCodec", seed, config_overrides)
    return directory


# ------------------------------------------------------------------------------------------------ CLAP


def random_clap_config(projection_dim: int = 512, enable_fusion: bool = True, **audio_overrides: Any) -> "ClapConfig":
    """A CLAP config with LAION's audio interface (64 mels, spec_size 256, HTSAT layout) but tiny towers.

    ``audio_overrides`` are ClapAudioConfig arguments. The text tower is a token one: the captioner
    reads only audio embeddings.
    """
    from transformers import ClapAudioConfig, ClapConfig, ClapTextConfig

    patch_hidden = int(audio_overrides.pop("patch_embeds_hidden_size", 8))
    depths = list(audio_overrides.pop("depths", [2, 1]))  # two blocks in stage 0: a shifted-window block is exercised
    audio: dict[str, Any] = dict(
        spec_size=256,
        num_mel_bins=64,
        window_size=8,
        patch_size=4,
        patch_stride=[4, 4],
        patch_embeds_hidden_size=patch_hidden,
        depths=depths,
        num_attention_heads=[1, 2],
        # the pooled HTSAT feature the projection reads has patch_hidden * 2**(stages-1) channels
        hidden_size=patch_hidden * 2 ** (len(depths) - 1),
        mlp_ratio=2.0,
        enable_fusion=enable_fusion,
        fusion_type="aff_2d" if enable_fusion else None,
        aff_block_r=4,
        hidden_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    audio.update(audio_overrides)
    text = dict(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ClapConfig(
        text_config=ClapTextConfig(**text),
        audio_config=ClapAudioConfig(**audio),
        projection_dim=projection_dim,
    )


def random_clap_model(
    seed: int = 0, projection_dim: int = 512, enable_fusion: bool = True, **audio_overrides: Any
) -> "ClapModel":
    """A random ClapModel (eval mode; fusion by default, like laion/clap-htsat-fused)."""
    import torch
    from transformers import ClapModel

    with _torch_threads(1), torch.no_grad():
        torch.manual_seed(seed)
        model = ClapModel(random_clap_config(projection_dim, enable_fusion, **audio_overrides)).eval()
        randomise_parameters(model, seed)
    return model


def save_random_clap(
    directory: str | os.PathLike,
    seed: int = 0,
    *,
    enable_fusion: bool = True,
    projection_dim: int = 512,
    **audio_overrides: Any,
) -> Path:
    """Build :func:`random_clap_model` and save it with LAION's feature-extractor config (frequency_min=50).

    The directory loads with ``ClapAudioEmbedder.from_pretrained(str(directory))`` / the extraction job's
    ``clap`` setting; it also holds :data:`RANDOM_MARKER_FILE` saying how it was made.
    """
    from .clap_embed import laion_feature_extractor

    directory = Path(directory)
    random_clap_model(seed, projection_dim, enable_fusion, **audio_overrides).save_pretrained(directory)
    laion_feature_extractor(enable_fusion=enable_fusion).save_pretrained(directory)
    _write_marker(
        directory, "CLAP", seed, {"enable_fusion": enable_fusion, "projection_dim": projection_dim, **audio_overrides}
    )
    return directory


# -------------------------------------------------------------------------------------------- together


@dataclass(frozen=True)
class RandomFeatureModels:
    """Where :func:`save_random_feature_models` put the two models (``save_pretrained`` directories)."""

    encodec: Path
    clap: Path


def save_random_feature_models(
    directory: str | os.PathLike,
    seed: int = 0,
    *,
    projection_dim: int = 512,
    encodec_overrides: dict[str, Any] | None = None,
    clap_overrides: dict[str, Any] | None = None,
) -> RandomFeatureModels:
    """Save a random EnCodec into ``directory/encodec`` and a random fused CLAP into ``directory/clap``.

    Both are drawn from ``seed`` (they share no parameters, so one seed serves both). ``encodec_overrides``
    are :func:`random_encodec_config` arguments, ``clap_overrides`` ClapAudioConfig arguments of
    :func:`random_clap_config` (e.g. ``{"patch_embeds_hidden_size": 32}`` for a wider CLAP whose
    embeddings tell sounds apart better). Rebuilding with the same arguments writes the same weights.
    """
    directory = Path(directory)
    return RandomFeatureModels(
        encodec=save_random_encodec(directory / "encodec", seed, **(encodec_overrides or {})),
        clap=save_random_clap(directory / "clap", seed, projection_dim=projection_dim, **(clap_overrides or {})),
    )


def is_random_model_dir(path: str | os.PathLike) -> bool:
    """True for a directory written by this module (it holds :data:`RANDOM_MARKER_FILE`)."""
    return (Path(path) / RANDOM_MARKER_FILE).is_file()


def _write_marker(directory: Path, what: str, seed: int, settings: dict[str, Any]) -> None:
    marker = {
        "random_init": True,
        "model": what,
        "seed": int(seed),
        "settings": settings,
        "note": (
            f"A random-initialised {what} built by enclap.features.random_models for offline runs: its features "
            "carry no learned knowledge. Use the real model (facebook/encodec_24khz / laion/clap-htsat-fused) "
            "for meaningful captions."
        ),
    }
    (directory / RANDOM_MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")


__all__ = [
    "RANDOM_MARKER_FILE",
    "RandomFeatureModels",
    "is_random_model_dir",
    "random_clap_config",
    "random_clap_model",
    "random_encodec_config",
    "random_encodec_model",
    "randomise_parameters",
    "save_random_clap",
    "save_random_encodec",
    "save_random_feature_models",
]
