"""Tiny random-initialised EnCodec and CLAP models for everyone's tests (no download, CPU, fast).

The models are :mod:`enclap.features.random_models` (the library builds them for the offline demo as
well): they keep the real models' *interfaces* (24 kHz EnCodec with a 320-sample hop = 75 frames/s
and 16 codebooks at 12 kbps; 48 kHz CLAP with 64 mels, a 10 s window and a 512-d embedding) but are a
few thousand times smaller, with every parameter and buffer drawn from a seeded generator. The names
below are the ones the tests have always used.
"""

from __future__ import annotations

from pathlib import Path

from enclap.features.clap_embed import ClapAudioEmbedder
from enclap.features.codec import EncodecTokenizer
from enclap.features.extractor import FeatureExtractor
from enclap.features.random_models import (
    random_clap_config as tiny_clap_config,
    random_clap_model as tiny_clap_model,
    random_encodec_config as tiny_encodec_config,
    random_encodec_model as tiny_encodec_model,
    save_random_clap,
    save_random_encodec,
)

from ..conftest import torch_threads


def save_tiny_encodec(directory: Path, seed: int = 0) -> Path:
    """Save a tiny EnCodec as a ``save_pretrained`` directory (with its feature extractor config)."""
    return save_random_encodec(directory, seed)


def save_tiny_clap(directory: Path, seed: int = 0, *, enable_fusion: bool = True, projection_dim: int = 512) -> Path:
    """Save a tiny CLAP plus a LAION-style feature extractor config (frequency_min=50) as an HF directory."""
    return save_random_clap(directory, seed, enable_fusion=enable_fusion, projection_dim=projection_dim)


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


__all__ = [
    "save_tiny_clap",
    "save_tiny_encodec",
    "tiny_clap_config",
    "tiny_clap_model",
    "tiny_encodec_config",
    "tiny_encodec_model",
    "tiny_feature_extractor",
]
