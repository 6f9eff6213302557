"""A trained CLAP tower as the captioner's :class:`~enclap.features.clap_embed.AudioEmbedder` (and a text embedder).

:class:`ClapTowerEmbedder` wraps a :class:`~enclap.clap.modeling.ClapTowerModel`: ``embed(waveforms)``
(mono float32 at :attr:`sample_rate`) -> L2-normalised ``(n, dim)`` audio embeddings, ``embed_texts``
-> L2-normalised text embeddings (the web demo's ``TextEmbedder``: ``embed_texts`` + ``dimension``), and
``config_dict`` for provenance. ``ClapAudioEmbedder.from_pretrained(DIR)`` returns one for a directory
written by the tower's ``save_pretrained`` (``config.json`` of model type ``enclap_clap_tower``), so the
extraction job (``--clap DIR``), ``FeatureExtractor`` and ``CaptioningPipeline.from_pretrained(...,
clap=DIR)`` use a trained tower unchanged.

Audio input (:func:`tower_audio_input`, shared with training): a clip shorter than the window
(``config.clip_seconds``) is repeat-padded (LAION's ``repeatpad``: whole repeats, then zeros); a longer
one is cropped, or, for an HTS-AT fusion tower, represented by LAION's fusion stack. Here, at
inference, the crops are drawn from a generator seeded by ``seed`` and the clip's own samples (as
:class:`ClapAudioEmbedder` does), so the same audio always gets the same embedding. Every forward runs on
exactly ``FORWARD_ROWS`` rows (topped up with silence) sharing one ``is_longer`` flag, so a clip's
embedding does not depend on the batch it came in (see ``enclap/features/clap_embed.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..audio import check_waveform
from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

    from .configuration import ClapTowerConfig
    from .modeling import ClapTowerModel

TOWER_MODEL_TYPE = "enclap_clap_tower"


def is_clap_tower_dir(path: str | os.PathLike) -> bool:
    """True for a directory saved by :class:`ClapTowerModel` (its config.json names the tower's model type)."""
    import json

    config = Path(str(path)).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == TOWER_MODEL_TYPE
    except (OSError, ValueError):
        return False


def repeat_pad(samples: np.ndarray, length: int) -> np.ndarray:
    """LAION's repeatpad: ``samples`` repeated whole as often as they fit in ``length``, then zeros."""
    samples = np.asarray(samples, dtype=np.float32)
    n = samples.shape[0]
    if n >= length:
        return samples[:length]
    repeats = max(length // n, 1)
    tiled = np.tile(samples, repeats)
    return np.pad(tiled, (0, length - tiled.shape[0]))


def tower_audio_input(
    config: "ClapTowerConfig", feature_extractor: Any, waveform: np.ndarray, rng: np.random.Generator | None
) -> tuple[np.ndarray, bool]:
    """What the tower's audio encoder reads of one clip at ``config.sample_rate``, and whether it was longer.

    HTS-AT: LAION's mel stack (``feature_extractor``: the tower's ClapFeatureExtractor). CNN14: the
    waveform window (``feature_extractor`` unused). ``rng`` picks crops of clips longer than the window.
    """
    if config.audio_encoder == "htsat":
        from ..features.clap_embed import laion_input_features

        return laion_input_features(feature_extractor, waveform, rng, enable_fusion=config.enable_fusion)
    samples = np.asarray(waveform, dtype=np.float32)
    length = config.clip_samples
    if samples.shape[0] <= length:
        return repeat_pad(samples, length), False
    if rng is None:
        raise ValueError(f"a clip of {samples.shape[0]} samples is longer than the {length}-sample window: its crop needs a generator")
    start = int(rng.integers(0, samples.shape[0] - length + 1))
    return samples[start : start + length].copy(), True


class ClapTowerEmbedder:
    """:class:`AudioEmbedder` and text embedder over a :class:`ClapTowerModel`; see the module docstring."""

    def __init__(
        self,
        model: "ClapTowerModel",
        device: "str | torch.device" = "cpu",
        batch_size: int = 16,
        *,
        seed: int = 0,
        name_or_path: str = "",
    ) -> None:
        import torch

        from .modeling import htsat_feature_extractor

        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.to(torch.device(device)).eval()
        self.device = torch.device(device)
        self.config = model.config
        self.feature_extractor = htsat_feature_extractor(self.config) if self.config.audio_encoder == "htsat" else None
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.sample_rate = int(self.config.sample_rate)
        self.dim = int(self.config.projection_dim)
        self.name_or_path = name_or_path or str(getattr(self.config, "_name_or_path", "") or "")

    @property
    def dimension(self) -> int:
        return self.dim

    @property
    def logit_scale(self) -> float:
        """The tower's learned inverse temperature (zero-shot probabilities use it, as LAION's do)."""
        import torch

        with torch.no_grad():
            return float(self.model.scale().detach().cpu())

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, device: "str | torch.device" = "cpu", batch_size: int = 16, seed: int = 0
    ) -> "ClapTowerEmbedder":
        from ..loading import load_pretrained
        from .modeling import ClapTowerModel

        model = load_pretrained(ClapTowerModel.from_pretrained, str(name_or_path), what="CLAP tower")
        return cls(model, device=device, batch_size=batch_size, seed=seed, name_or_path=str(name_or_path))

    def input_features(self, waveform: np.ndarray) -> tuple[np.ndarray, bool]:
        """The encoder input of one clip; crops of long clips seeded by ``seed`` and the clip's samples."""
        from ..features.clap_embed import _content_hash

        longer = np.asarray(waveform).shape[0] > self.config.clip_samples
        rng = np.random.default_rng([self.seed, _content_hash(waveform)]) if longer else None
        return tower_audio_input(self.config, self.feature_extractor, waveform, rng)

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised audio embeddings ``(n, dim)`` float32 of mono waveforms at :attr:`sample_rate`."""
        import torch

        from ..features.clap_embed import FORWARD_ROWS

        clips = [check_waveform(w, i) for i, w in enumerate(waveforms)]
        out = np.zeros((len(clips), self.dim), dtype=np.float32)
        for start in range(0, len(clips), self.batch_size):
            indices = list(range(start, min(start + self.batch_size, len(clips))))
            feats = [self.input_features(clips[i]) for i in indices]
            # is_longer only matters to a fusion model; there, long and short clips never share a forward
            kinds = sorted({flag for _, flag in feats}) if self.config.enable_fusion else [None]
            for kind in kinds:
                rows = [j for j, (_, flag) in enumerate(feats) if kind is None or flag == kind]
                for c in range(0, len(rows), FORWARD_ROWS):
                    chunk = rows[c : c + FORWARD_ROWS]
                    inputs = torch.from_numpy(np.stack([feats[j][0] for j in chunk]))
                    if len(chunk) < FORWARD_ROWS:  # every forward has the same shape: batch-independent results
                        inputs = torch.cat([inputs, inputs.new_zeros((FORWARD_ROWS - len(chunk), *inputs.shape[1:]))])
                    longer = torch.full((FORWARD_ROWS, 1), bool(kind), dtype=torch.bool)
                    with torch.inference_mode():
                        emb = self.model.get_audio_features(inputs.to(self.device), longer.to(self.device))
                    out[[indices[j] for j in chunk]] = emb[: len(chunk)].float().cpu().numpy()
        return out

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings ``(len(texts), dim)`` float32."""
        return self.model.embed_texts(texts, batch_size=max(self.batch_size, 1))

    def config_dict(self) -> dict[str, Any]:
        """What produced the embeddings (for provenance in the feature store)."""
        return {
            "model": self.name_or_path,
            "type": "clap_tower",
            "audio_encoder": self.config.audio_encoder,
            "text_encoder": (f"sentence_transformers:{self.config.sentence_transformer}" if self.config.uses_sentence_transformer
                             else self.config.text_config.get("model_type")),
            "dim": self.dim,
            "sample_rate": self.sample_rate,
            "enable_fusion": self.config.enable_fusion,
            "clip_seconds": self.config.clip_seconds,
            "padding": "repeatpad",
            "crop_seed": self.seed,
            "normalized": True,
        }


__all__ = ["ClapTowerEmbedder", "is_clap_tower_dir", "repeat_pad", "tower_audio_input"]
