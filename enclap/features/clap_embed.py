"""CLAP audio embedder: mono 48 kHz waveforms -> L2-normalised 512-d CLAP audio embeddings.

The captioner conditions on one CLAP audio embedding per clip. :class:`AudioEmbedder` is what it needs
from any CLAP tower; :class:`ClapAudioEmbedder` implements it over :class:`transformers.ClapModel` and
:class:`transformers.ClapFeatureExtractor`, fixing the ways the transformers port differs from LAION's
own inference (``laion_clap.CLAP_Module.get_audio_embedding_from_data``):

* **Mel front end.** LAION computes mels from 50 Hz to 14 kHz; the hub's ``preprocessor_config.json``
  for the port says ``frequency_min=0``. :meth:`ClapAudioEmbedder.from_pretrained` rebuilds the feature
  extractor with ``frequency_min=50`` unless told otherwise.
* **is_longer.** In fusion mode the feature extractor marks a random clip of a batch with no clip over
  10 s as "longer", which changes that clip's embedding depending on its batch. The true flag is used.
* **Random crops.** Fusion mode represents a clip longer than 10 s by a downsampled whole-clip mel plus
  three crops chosen at random from its front, middle and back thirds (``np.random.choice``); the
  non-fusion model takes one random 10 s crop. Here the crops come from a generator seeded by
  ``seed`` and a hash of the clip's own samples, so the same audio always gets the same crops, at any
  batch size and in any order, without touching numpy's global random state.
* **Normalisation.** The embedding is ``normalize(audio_projection(pooler_output))``, float32, which
  is what LAION's ``get_audio_embedding_from_data`` returns.

**Batch independence.** CPU kernels give results that differ in the last bits with the *shape* of
what they compute: measured ~1e-7 between a clip run alone (matrix-vector products) and inside a
batch (matrix-matrix), and between a "longer" clip whose fusion branch ran with 1 or with 3 other
long clips. Running every clip alone is batch-independent but ~3x slower than batches of 4 on CPU (full-size
HTSAT-tiny, 2 cores: 3.5 s vs 1.2 s per clip). So by default (``batch_invariant=True``) the network
always runs on exactly :data:`FORWARD_ROWS` rows that share one ``is_longer`` flag, topped up with
silent (all-zero) rows: every forward has the same shape, and a row's result was then measured not to
depend on its position or on the other rows. The canonical embedding of a clip is its row when it is
the only real row; the first chunk of each kind is also computed that way and compared bit for bit,
and if a backend ever differs the embedder logs it and computes every clip canonically from then on.
Measured on the full-size fused model (random weights, 2 loaded CPU cores): 0.9 s per clip in bulk
versus 3.5 s per clip one at a time, with embeddings bit-identical between the two; the one-off
verification costs one extra forward per clip of the first chunk of each kind.
``FORWARD_ROWS`` is a constant, not ``batch_size``, so that extraction jobs and single-clip inference
produce the same embeddings (bit-identity holds on one device and thread count; another backend may
differ in the last bits). ``batch_invariant=False`` runs whole batches as they come (fastest,
especially on GPU; embeddings then agree across batchings only to ~1e-6).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import numpy as np

from ..audio import check_waveform
from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

logger = logging.getLogger(__name__)

DEFAULT_CLAP = "laion/clap-htsat-fused"
LAION_FREQUENCY_MIN = 50.0
LAION_FREQUENCY_MAX = 14_000.0
LAION_CHECKPOINT_SUFFIXES = (".pt", ".ckpt", ".pth")
FORWARD_ROWS = 4  # rows of every batch-invariant CLAP forward (see the module docstring)


@runtime_checkable
class AudioEmbedder(Protocol):
    """What the captioner needs from a CLAP audio tower (pretrained LAION, or one trained here)."""

    sample_rate: int
    dim: int

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Mono float32 waveforms at :attr:`sample_rate` -> ``(n, dim)`` float32, one row per clip."""
        ...

    def config_dict(self) -> dict[str, Any]:
        """What produced the embeddings (model id or path, rates, options), for provenance."""
        ...


class ClapAudioEmbedder:
    """:class:`AudioEmbedder` over a transformers :class:`ClapModel` (only its audio tower is used).

    ``feature_extractor`` is used as given (see :meth:`from_pretrained` for the LAION front end);
    its truncation mode must agree with the model: ``"fusion"`` for a fusion model, otherwise
    ``"rand_trunc"``. ``seed`` feeds the deterministic choice of crops of clips longer than the
    window (10 s).
    """

    sample_rate: int
    dim: int

    def __init__(
        self,
        model: "ClapModel",
        feature_extractor: "ClapFeatureExtractor",
        device: "str | torch.device" = "cpu",
        batch_size: int = 16,
        *,
        seed: int = 0,
        batch_invariant: bool = True,
    ) -> None:
        import torch

        audio_config = model.config.audio_config
        self.enable_fusion = bool(audio_config.enable_fusion)
        expected = "fusion" if self.enable_fusion else "rand_trunc"
        if feature_extractor.truncation != expected:
            raise ConfigError(
                f"CLAP feature extractor truncation='{feature_extractor.truncation}' does not fit a "
                f"{'fusion' if self.enable_fusion else 'non-fusion'} model; it must be '{expected}'"
            )
        if feature_extractor.feature_size != audio_config.num_mel_bins:
            raise ConfigError(
                f"CLAP feature extractor makes {feature_extractor.feature_size} mel bins, the model expects "
                f"{audio_config.num_mel_bins}"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.feature_extractor = feature_extractor
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.batch_invariant = bool(batch_invariant)
        self._fixed_shape_ok = True  # cleared if rows of a forward turn out to influence each other
        self._verified: set[bool] = set()  # is_longer kinds whose chunked results were checked
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.dim = int(model.config.projection_dim)
        self.max_samples = int(feature_extractor.nb_max_samples)
        self.name_or_path = str(getattr(model.config, "_name_or_path", "") or "")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_CLAP,
        *,
        device: "str | torch.device" = "cpu",
        enable_fusion: bool | None = None,
        batch_size: int = 16,
        frequency_min: float | None = LAION_FREQUENCY_MIN,
        seed: int = 0,
        batch_invariant: bool = True,
        laion_config: "ClapConfig | None" = None,
    ) -> "ClapAudioEmbedder":
        """Load from a hub id, a ``save_pretrained`` directory, or a LAION ``.pt``/``.ckpt`` checkpoint.

        A directory saved by a CLAP tower trained here (:class:`enclap.clap.modeling.ClapTowerModel`)
        gives a :class:`enclap.clap.embedder.ClapTowerEmbedder` (the same :class:`AudioEmbedder` protocol).

        A LAION checkpoint is converted on the fly (:func:`enclap.clap.convert.load_laion_clap`); its
        architecture is chosen from the file name (``enable_fusion`` overrides the fusion flag), or given
        in full as ``laion_config`` (a transformers ClapConfig). For a hub id or
        directory, ``enable_fusion`` (when given) must match the model's config. The feature extractor is
        rebuilt with ``frequency_min`` (default 50 Hz, LAION's) when it differs (``None`` keeps it as
        saved), and with the truncation the model needs ("fusion" for a fusion model, else "rand_trunc").
        """
        from transformers import ClapFeatureExtractor, ClapModel

        from ..loading import load_pretrained

        name = str(name_or_path)
        from ..clap.embedder import ClapTowerEmbedder, is_clap_tower_dir

        if is_clap_tower_dir(name):
            # a CLAP tower trained here (enclap-train-clap): same protocol, its own audio front end
            return ClapTowerEmbedder.from_pretrained(name, device=device, batch_size=batch_size, seed=seed)  # type: ignore[return-value]
        if is_laion_checkpoint(name):
            from ..clap.convert import load_laion_clap

            overrides = {} if enable_fusion is None else {"enable_fusion": enable_fusion}
            model = load_laion_clap(name, device="cpu", config=laion_config, **overrides)
            extractor = laion_feature_extractor(enable_fusion=bool(model.config.audio_config.enable_fusion))
        else:
            model = load_pretrained(ClapModel.from_pretrained, name, what="CLAP model")
            extractor = load_pretrained(ClapFeatureExtractor.from_pretrained, name, what="CLAP feature extractor")
            fused = bool(model.config.audio_config.enable_fusion)
            if enable_fusion is not None and enable_fusion != fused:
                raise ConfigError(
                    f"CLAP model '{name}' is {'a fusion' if fused else 'a non-fusion'} model, "
                    f"but enable_fusion={enable_fusion} was asked for"
                )
            truncation = "fusion" if fused else "rand_trunc"
            if extractor.truncation != truncation:
                # the model decides how long clips are represented; a saved extractor cannot override it
                logger.info("CLAP feature extractor of '%s': truncation=%r -> %r to fit the model",
                            name, extractor.truncation, truncation)
                extractor = rebuild_feature_extractor(extractor, truncation=truncation)
        if frequency_min is not None and float(extractor.frequency_min) != float(frequency_min):
            logger.info(
                "CLAP feature extractor of '%s' has frequency_min=%s; using %s (LAION's mel front end)",
                name, extractor.frequency_min, frequency_min,
            )
            extractor = rebuild_feature_extractor(extractor, frequency_min=float(frequency_min))
        model.config._name_or_path = name
        return cls(model, extractor, device=device, batch_size=batch_size, seed=seed, batch_invariant=batch_invariant)

    # ----------------------------------------------------------------------------------------- features
    def input_features(self, waveform: np.ndarray) -> tuple[np.ndarray, bool]:
        """The model input of one clip: ``(channels, frames, mels)`` float32 mel stack and the true is_longer.

        Deterministic: crops of clips longer than the window depend only on the samples and ``seed``.
        """
        longer = np.asarray(waveform).shape[0] > self.max_samples
        rng = np.random.default_rng([self.seed, _content_hash(waveform)]) if longer else None
        return laion_input_features(self.feature_extractor, waveform, rng, enable_fusion=self.enable_fusion)

    # -------------------------------------------------------------------------------------------- embed
    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised audio embeddings ``(n, dim)`` float32 of mono waveforms at :attr:`sample_rate`."""
        import torch

        clips = [check_waveform(w, i) for i, w in enumerate(waveforms)]
        out = np.zeros((len(clips), self.dim), dtype=np.float32)
        for start in range(0, len(clips), self.batch_size):  # bounds the memory held by mels
            indices = list(range(start, min(start + self.batch_size, len(clips))))
            feats = [self.input_features(clips[i]) for i in indices]
            mels = torch.from_numpy(np.stack([m for m, _ in feats])).to(self.device)
            flags = [flag for _, flag in feats]
            with torch.inference_mode():
                if not self.batch_invariant:
                    longer = torch.tensor([[f] for f in flags], dtype=torch.bool, device=self.device)
                    out[indices] = self._forward(mels, longer).float().cpu().numpy()
                    continue
                # is_longer only matters to a fusion model; there, long and short clips never share a forward
                kinds = sorted(set(flags)) if self.enable_fusion else [None]
                for kind in kinds:
                    rows = [j for j, f in enumerate(flags) if kind is None or f == kind]
                    for c in range(0, len(rows), FORWARD_ROWS):
                        chunk = rows[c : c + FORWARD_ROWS]
                        flag = bool(kind) if kind is not None else False
                        emb = self._fixed_shape_embed(mels[chunk], flag)
                        out[[indices[j] for j in chunk]] = emb.float().cpu().numpy()
        return out

    def _fixed_shape_embed(self, mels: "torch.Tensor", flag: bool) -> "torch.Tensor":
        """Embeddings of up to FORWARD_ROWS clips of one is_longer kind, each equal to its canonical one."""
        import torch

        if not self._fixed_shape_ok:
            return torch.cat([self._padded_forward(mels[i : i + 1], flag) for i in range(mels.shape[0])])
        emb = self._padded_forward(mels, flag)
        if mels.shape[0] > 1 and flag not in self._verified:
            canonical = torch.cat([self._padded_forward(mels[i : i + 1], flag) for i in range(mels.shape[0])])
            self._verified.add(flag)
            if not torch.equal(emb, canonical):
                logger.warning(
                    "CLAP on %s: a clip's embedding depends on the other rows of its forward; computing every "
                    "clip alone from now on so embeddings stay batch-independent (slower)", self.device,
                )
                self._fixed_shape_ok = False
                return canonical
        return emb

    def _padded_forward(self, mels: "torch.Tensor", flag: bool) -> "torch.Tensor":
        """Forward of ``mels`` topped up with all-zero rows to exactly FORWARD_ROWS rows; real rows returned."""
        import torch

        count = mels.shape[0]
        if count < FORWARD_ROWS:
            mels = torch.cat([mels, mels.new_zeros((FORWARD_ROWS - count, *mels.shape[1:]))])
        longer = torch.full((FORWARD_ROWS, 1), flag, dtype=torch.bool, device=mels.device)
        return self._forward(mels, longer)[:count]

    def _forward(self, mels: "torch.Tensor", longer: "torch.Tensor") -> "torch.Tensor":
        import torch.nn.functional as F

        audio = self.model.audio_model(input_features=mels, is_longer=longer)
        return F.normalize(self.model.audio_projection(audio.pooler_output), dim=-1)

    def config_dict(self) -> dict[str, Any]:
        """What produced the embeddings (for provenance in the feature store)."""
        fe = self.feature_extractor
        return {
            "model": self.name_or_path,
            "dim": self.dim,
            "sample_rate": self.sample_rate,
            "enable_fusion": self.enable_fusion,
            "max_length_s": float(fe.max_length_s),
            "frequency_min": float(fe.frequency_min),
            "frequency_max": float(fe.frequency_max),
            "truncation": fe.truncation,
            "padding": fe.padding,
            "crop_seed": self.seed,
            "normalized": True,
            "batch_invariant": self.batch_invariant,
            "forward_rows": FORWARD_ROWS if self.batch_invariant else None,
        }


def laion_input_features(
    fe: "ClapFeatureExtractor", waveform: np.ndarray, rng: np.random.Generator | None, *, enable_fusion: bool
) -> tuple[np.ndarray, bool]:
    """LAION's model input of one clip: ``(channels, frames, mels)`` float32 mel stack and the true is_longer.

    A clip up to the window is repeat-padded (``fe.padding``); a longer one is represented by one crop
    (non-fusion) or by the fusion stack, its crops drawn from ``rng`` (required then). Shared by
    :class:`ClapAudioEmbedder` (crops seeded by the clip's content) and the CLAP tower's training data
    (crops seeded by (seed, epoch, index)).
    """
    samples = np.asarray(waveform, dtype=np.float64)
    max_samples = int(fe.nb_max_samples)
    if samples.shape[0] <= max_samples:
        mel, _ = fe._get_input_mel(samples, max_samples, fe.truncation, fe.padding)
        return np.asarray(mel, dtype=np.float32), False
    if rng is None:
        raise ValueError(f"a clip of {samples.shape[0]} samples is longer than the {max_samples}-sample window: its crops need a generator")
    if not enable_fusion:
        start = int(rng.integers(0, samples.shape[0] - max_samples + 1))
        mel, _ = fe._get_input_mel(samples[start : start + max_samples], max_samples, fe.truncation, fe.padding)
        return np.asarray(mel, dtype=np.float32), True
    mel = fe._np_extract_fbank_features(samples, fe.mel_filters)
    chunk_frames = max_samples // fe.hop_length + 1
    if mel.shape[0] == chunk_frames:
        # longer than the window by less than a hop: the whole mel fits, as in the feature extractor
        return np.stack([mel] * 4).astype(np.float32), False
    return _fusion_stack(mel, chunk_frames, rng), True


def laion_feature_extractor(enable_fusion: bool, **overrides: Any) -> "ClapFeatureExtractor":
    """The feature extractor matching LAION's audio front end (48 kHz, 10 s, 64 mels, 50 Hz - 14 kHz)."""
    from transformers import ClapFeatureExtractor

    kwargs: dict[str, Any] = dict(
        feature_size=64,
        sampling_rate=48_000,
        hop_length=480,
        max_length_s=10,
        fft_window_size=1024,
        frequency_min=LAION_FREQUENCY_MIN,
        frequency_max=LAION_FREQUENCY_MAX,
        truncation="fusion" if enable_fusion else "rand_trunc",
        padding="repeatpad",
    )
    kwargs.update(overrides)
    return ClapFeatureExtractor(**kwargs)


def rebuild_feature_extractor(extractor: "ClapFeatureExtractor", **changes: Any) -> "ClapFeatureExtractor":
    """A copy of ``extractor`` with some constructor arguments changed (mel filters are recomputed)."""
    from transformers import ClapFeatureExtractor

    names = (
        "feature_size", "sampling_rate", "hop_length", "max_length_s", "fft_window_size", "padding_value",
        "return_attention_mask", "frequency_min", "frequency_max", "top_db", "truncation", "padding",
    )
    kwargs = {name: getattr(extractor, name) for name in names if hasattr(extractor, name)}
    kwargs.update(changes)
    return ClapFeatureExtractor(**kwargs)


def _content_hash(waveform: np.ndarray) -> int:
    """A 63-bit integer fixed by the clip's float32 samples (seeds its crop choice)."""
    data = np.ascontiguousarray(np.asarray(waveform, dtype=np.float32)).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def _fusion_stack(mel: np.ndarray, chunk_frames: int, rng: np.random.Generator) -> np.ndarray:
    """LAION's fusion input: the whole mel shrunk to the window, then crops from the front/middle/back thirds."""
    import torch

    total_frames = mel.shape[0]
    ranges = np.array_split(np.arange(0, total_frames - chunk_frames + 1), 3)
    # a clip barely longer than the window leaves the later thirds empty: those crops start at 0
    starts = [int(rng.choice(r)) if len(r) else 0 for r in ranges]
    crops = [mel[s : s + chunk_frames, :] for s in starts]
    shrunk = torch.nn.functional.interpolate(
        torch.tensor(mel[None, None, :]), size=[chunk_frames, mel.shape[1]], mode="bilinear", align_corners=False
    )[0, 0].numpy()
    return np.stack([shrunk, *crops]).astype(np.float32)


def is_laion_checkpoint(name_or_path: str | Path) -> bool:
    """True when ``name_or_path`` names a LAION training checkpoint file rather than a hub id/HF directory."""
    return str(name_or_path).endswith(LAION_CHECKPOINT_SUFFIXES)
