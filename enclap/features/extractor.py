"""Audio -> what the captioner reads: EnCodec codes and a CLAP audio embedding per clip.

:class:`FeatureExtractor` is the one place that turns waveforms into :class:`ClipFeatures`; the
extraction job, the inference pipeline and the demo all go through it, so training and inference
features are made the same way. Input audio at any rate is resampled (``enclap.audio.resample``, soxr)
to the codec's rate (24 kHz) and the CLAP tower's rate (48 kHz) separately, each from the original
samples rather than one from the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..audio import load_audio, resample
from .clap_embed import DEFAULT_CLAP, AudioEmbedder, ClapAudioEmbedder
from .codec import DEFAULT_ENCODEC, EncodecTokenizer

if TYPE_CHECKING:
    import torch


@dataclass
class ClipFeatures:
    """The captioner's input for one clip."""

    codes: np.ndarray  # (frames, num_codebooks) int16 EnCodec codes
    clap: np.ndarray  # (d_clap,) float32 L2-normalised CLAP audio embedding


class FeatureExtractor:
    """Audio -> ClipFeatures: the one place that turns waveforms into what the captioner reads."""

    def __init__(self, codec: EncodecTokenizer, clap: AudioEmbedder) -> None:
        self.codec = codec
        self.clap = clap
        self.num_codebooks: int = int(codec.num_codebooks)
        self.d_clap: int = int(clap.dim)

    @classmethod
    def from_pretrained(
        cls,
        encodec: str = DEFAULT_ENCODEC,
        clap: str = DEFAULT_CLAP,
        *,
        bandwidth: float = 12.0,
        device: "str | torch.device" = "cpu",
        batch_size: int = 16,
    ) -> "FeatureExtractor":
        """Both towers from hub ids or local paths (see the two ``from_pretrained`` they delegate to)."""
        return cls(
            EncodecTokenizer.from_pretrained(encodec, bandwidth=bandwidth, device=device, batch_size=batch_size),
            ClapAudioEmbedder.from_pretrained(clap, device=device, batch_size=batch_size),
        )

    def extract(self, waveforms: Sequence[tuple[np.ndarray, int]]) -> list[ClipFeatures]:
        """Features of ``(mono float32 samples, sample_rate)`` pairs at any rate, in input order."""
        codec_inputs: list[np.ndarray] = []
        clap_inputs: list[np.ndarray] = []
        for index, item in enumerate(waveforms):
            try:
                samples, rate = item
            except (TypeError, ValueError):
                raise ValueError(f"waveform {index}: expected a (samples, sample_rate) pair") from None
            samples = np.asarray(samples, dtype=np.float32)
            if samples.ndim != 1 or samples.size == 0:
                raise ValueError(f"waveform {index}: expected non-empty mono 1-D samples, got shape {samples.shape}")
            if int(rate) <= 0:
                raise ValueError(f"waveform {index}: sample rate must be positive, got {rate}")
            codec_inputs.append(resample(samples, int(rate), self.codec.sample_rate))
            clap_inputs.append(resample(samples, int(rate), self.clap.sample_rate))
        if not codec_inputs:
            return []
        codes = self.codec.encode(codec_inputs)
        embeddings = self.clap.embed(clap_inputs)
        return [ClipFeatures(codes=c, clap=np.asarray(e, dtype=np.float32)) for c, e in zip(codes, embeddings)]

    def extract_files(
        self, paths: Sequence[str | os.PathLike], *, max_seconds: float | None = None
    ) -> list[ClipFeatures]:
        """Features of audio files (any format soundfile reads), in input order.

        Raises :class:`enclap.errors.AudioError` (a subclass naming the file and the reason) for the first
        file that cannot be read; no features are returned in that case. ``max_seconds`` keeps only the
        first ``max_seconds`` of each file.
        """
        loaded = [load_audio(Path(p), None, max_seconds=max_seconds) for p in paths]
        return self.extract(loaded)

    def config_dict(self) -> dict[str, Any]:
        """What produced these features (model ids/paths, bandwidth, rates): stored for provenance."""
        clap_config = self.clap.config_dict() if hasattr(self.clap, "config_dict") else {"type": type(self.clap).__name__}
        return {
            "codec": self.codec.config_dict(),
            "clap": clap_config,
            "num_codebooks": self.num_codebooks,
            "d_clap": self.d_clap,
            "resampler": "soxr",
        }
