"""Tiny random-initialised EnCodec and CLAP models for everyone's tests (no download, CPU, fast).

The models keep the real models' *interfaces* (24 kHz EnCodec with a 320-sample hop = 75 frames/s
and 16 codebooks at 12 kbps; 48 kHz CLAP with 64 mels, a 10 s window and a 512-d embedding) but are a
few thousand times smaller. Every parameter and buffer is filled from a seeded generator (the stock
initialisation leaves codebooks, relative position biases and batch-norm statistics at constants,
which would let wrong weight mappings or broken inputs go unnoticed).
"""

from __future__ import annotations

from pathlib import Path

import torch

from enclap.features.clap_embed import ClapAudioEmbedder, laion_feature_extractor
from enclap.features.codec import EncodecTokenizer
from enclap.features.extractor import FeatureExtractor

from ..conftest import torch_threads


def _randomise(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Perturb every float parameter and buffer (keeping variances positive) from a seeded generator."""
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
def tiny_encodec_config(**overrides):
    """A 24 kHz EnCodec config shaped like facebook/encodec_24khz (causal, hop 320, 75 fps) but tiny."""
    from transformers import EncodecConfig

    kwargs = dict(
        target_bandwidths=[1.5, 3.0, 6.0, 12.0, 24.0],
        sampling_rate=24_000,
        audio_channels=1,
        normalize=False,
        chunk_length_s=None,
        hidden_size=16,  # codebook dimension
        num_filters=4,
        num_residual_layers=1,
        upsampling_ratios=[8, 5, 4, 2],
        num_lstm_layers=2,
        codebook_size=1024,
        use_causal_conv=True,
        pad_mode="reflect",
    )
    kwargs.update(overrides)
    return EncodecConfig(**kwargs)


def tiny_encodec_model(seed: int = 0, **config_overrides):
    """A random tiny EncodecModel whose codebooks are spread so that codes vary frame to frame."""
    from transformers import EncodecModel

    with torch_threads(1):  # construction runs many tiny ops: threads only contend here
        torch.manual_seed(seed)
        model = EncodecModel(tiny_encodec_config(**config_overrides)).eval()
        _randomise(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad(), torch_threads(1):
        # Codewords drawn from the encoder's own outputs (and, level by level, from the residuals left by
        # the levels before), as a k-means initialisation would: every level then splits real frames.
        seconds = 16
        t = torch.arange(seconds * 24_000) / 24_000
        envelope = 0.02 + 0.3 * (1 + torch.sin(2 * torch.pi * 0.3 * t)) / 2
        probe = torch.randn(t.shape, generator=gen) * envelope + 0.2 * torch.sin(2 * torch.pi * 440 * t * (1 + t / 8))
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


def save_tiny_encodec(directory: Path, seed: int = 0) -> Path:
    """Save a tiny EnCodec as a ``save_pretrained`` directory (with its feature extractor config)."""
    from transformers import EncodecFeatureExtractor

    directory = Path(directory)
    model = tiny_encodec_model(seed)
    model.save_pretrained(directory)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=24_000).save_pretrained(directory)
    return directory


# ------------------------------------------------------------------------------------------------ CLAP
def tiny_clap_config(projection_dim: int = 512, enable_fusion: bool = True, **audio_overrides):
    """A CLAP config with LAION's audio interface (64 mels, spec_size 256, HTSAT layout) but tiny towers."""
    from transformers import ClapAudioConfig, ClapConfig, ClapTextConfig

    patch_hidden = 8
    depths = [2, 1]  # two blocks in stage 0, so a shifted-window block (with its mask) is exercised
    audio = dict(
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


def tiny_clap_model(seed: int = 0, projection_dim: int = 512, enable_fusion: bool = True, **audio_overrides):
    """A random tiny ClapModel (fusion by default, like laion/clap-htsat-fused)."""
    from transformers import ClapModel

    with torch_threads(1):
        torch.manual_seed(seed)
        model = ClapModel(tiny_clap_config(projection_dim, enable_fusion, **audio_overrides)).eval()
        _randomise(model, seed)
    return model


def save_tiny_clap(directory: Path, seed: int = 0, *, enable_fusion: bool = True, projection_dim: int = 512) -> Path:
    """Save a tiny CLAP plus a LAION-style feature extractor config (frequency_min=50) as an HF directory."""
    directory = Path(directory)
    tiny_clap_model(seed, projection_dim, enable_fusion).save_pretrained(directory)
    laion_feature_extractor(enable_fusion=enable_fusion).save_pretrained(directory)
    return directory


# ------------------------------------------------------------------------------------------- extractor
def tiny_feature_extractor(tmp_path: Path, seed: int = 0, batch_size: int = 4) -> FeatureExtractor:
    """A FeatureExtractor over tiny models saved under ``tmp_path`` and loaded back via from_pretrained."""
    tmp_path = Path(tmp_path)
    with torch_threads(1):
        encodec_dir = save_tiny_encodec(tmp_path / "tiny_encodec", seed)
        clap_dir = save_tiny_clap(tmp_path / "tiny_clap", seed)
        return FeatureExtractor(
            EncodecTokenizer.from_pretrained(str(encodec_dir), batch_size=batch_size),
            ClapAudioEmbedder.from_pretrained(str(clap_dir), batch_size=batch_size),
        )
