"""EnCodec tokenizer: mono waveforms -> discrete codec codes, one (frames, codebooks) array per clip.

The captioner reads EnCodec codes of the 24 kHz model at 12 kbps (16 codebooks, 75 frames/s). This
module wraps :class:`transformers.EncodecModel` and adds what a feature-extraction job needs:

* **Batch independence.** A clip's codes are exactly those of encoding the clip alone, whatever it is
  batched with. Measured on the 24 kHz architecture (full-size config, random
  weights, CPU; ``tests/features/test_codec.py`` checks the same on the tiny test model):

  - zero-padding a shorter clip to a longer one changes its *last* frame: the model's convolutions
    reflect-pad the right edge of each layer's input up to a multiple of the layer's stride, and in a
    padded batch that edge holds the padding instead of the clip's own end (deviation ~2 % of the
    embedding scale in the last frame, every other frame unaffected since the 24 kHz model is causal);
  - among the encoder layers only the LSTM gives different floating-point results for a clip alone and
    the same clip inside a batch (~2e-8, enough to flip a nearest-codeword choice now and then over
    millions of frames); the convolutions and the codebook search were bit-identical.

  So clips are grouped by exact length (no padding at all) and batched; within a batch the
  convolutions run batched while the LSTM and the residual vector quantiser run clip by clip. The
  first batch of each size on a device is also encoded clip by clip and compared bit for bit; if a
  backend is not batch-invariant, the tokenizer logs it and encodes one clip at a time from then on.
  Data sets of fixed-length clips (AudioCaps: 10 s) batch fully; clips of unique lengths are encoded
  alone, which is what the reference implementation did for every clip. Batching pays on GPU; on two
  CPU cores batches of eight 10 s clips measured within +-30 % of one clip at a time (noisy machine).
* **Codes as numpy.** ``(frames, num_codebooks)`` ``int16`` per clip, frames = ceil(samples / hop).
* A converter from the original ``encodec`` package checkpoint (``encodec_24khz-d7cc33bc.th``) to the
  transformers key layout (:func:`convert_encodec_checkpoint`).
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..audio import check_waveform
from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # imported lazily at run time: importing this module must stay cheap
    import torch
    from transformers import EncodecModel

logger = logging.getLogger(__name__)

DEFAULT_ENCODEC = "facebook/encodec_24khz"


class EncodecTokenizer:
    """Turns mono float32 waveforms at :attr:`sample_rate` into EnCodec codes.

    ``bandwidth`` (kbps) selects how many residual codebooks are used: for the 24 kHz model
    1.5/3/6/12/24 -> 2/4/8/16/32. ``batch_size`` is the largest number of equal-length clips encoded
    together (see the module docstring for why only equal lengths are batched).
    """

    sample_rate: int
    frame_rate: float
    num_codebooks: int

    def __init__(
        self,
        model: "EncodecModel",
        bandwidth: float = 12.0,
        device: "str | torch.device" = "cpu",
        batch_size: int = 16,
    ) -> None:
        import torch

        config = model.config
        bandwidths = [float(b) for b in config.target_bandwidths]
        if float(bandwidth) not in bandwidths:
            raise ConfigError(
                f"EnCodec bandwidth {bandwidth} kbps is not supported by this model; choose one of {bandwidths}"
            )
        if config.chunk_length_s is not None:
            # The 48 kHz model encodes overlapping 1 s chunks with per-chunk scales; its codes are not the
            # single (frames, codebooks) sequence the captioner reads.
            raise ConfigError(
                f"EnCodec model with chunk_length_s={config.chunk_length_s} (the 48 kHz model) is not supported: "
                "use the unchunked 24 kHz model (facebook/encodec_24khz)"
            )
        if config.codebook_size > np.iinfo(np.int16).max + 1:
            raise ConfigError(f"EnCodec codebook_size {config.codebook_size} does not fit the int16 codes")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.bandwidth = float(bandwidth)
        self.batch_size = int(batch_size)
        self.sample_rate = int(config.sampling_rate)
        self.hop_length = int(np.prod(config.upsampling_ratios))
        self.frame_rate = self.sample_rate / self.hop_length
        self.num_codebooks = int(model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth))
        self.audio_channels = int(config.audio_channels)
        self.name_or_path = str(getattr(config, "_name_or_path", "") or "")
        # batch size -> whether batched convolutions were verified bit-identical to clip-by-clip ones here
        self._batch_checked: dict[int, bool] = {}
        self._batching_ok = True

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_ENCODEC,
        *,
        bandwidth: float = 12.0,
        device: "str | torch.device" = "cpu",
        batch_size: int = 16,
    ) -> "EncodecTokenizer":
        """Load from a hub id, a ``save_pretrained`` directory, or an original ``encodec_24khz-*.th`` file."""
        from transformers import EncodecModel

        from ..loading import load_pretrained

        name = str(name_or_path)
        if name.endswith(".th") or name.endswith(".pt"):
            model = load_original_encodec(name)
        else:
            model = load_pretrained(
                EncodecModel.from_pretrained,
                name,
                what="EnCodec model",
                how_to_get="An original encodec checkpoint (encodec_24khz-*.th) can also be given as a path.",
            )
        model.config._name_or_path = name
        return cls(model, bandwidth=bandwidth, device=device, batch_size=batch_size)

    # ------------------------------------------------------------------------------------------ encode
    def encode(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Encode mono float32 waveforms sampled at :attr:`sample_rate`.

        Returns one ``(frames, num_codebooks)`` int16 array per input, in input order, with
        ``frames = ceil(len(waveform) / hop_length)``; identical to encoding each clip on its own.
        """
        clips = [check_waveform(w, i) for i, w in enumerate(waveforms)]
        out: list[np.ndarray | None] = [None] * len(clips)
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, clip in enumerate(clips):
            by_length[len(clip)].append(i)
        for length in sorted(by_length):
            indices = by_length[length]
            step = self.batch_size if self._batching_ok else 1
            for start in range(0, len(indices), step):
                group = indices[start : start + step]
                for i, codes in zip(group, self._encode_equal_length([clips[i] for i in group])):
                    out[i] = codes
        return out  # type: ignore[return-value]

    def _encode_equal_length(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        if len(clips) > 1 and not self._batching_ok:
            return [codes for clip in clips for codes in self._encode_equal_length([clip])]

        batch = torch.from_numpy(np.stack(clips)).to(self.device)[:, None, :]
        if self.audio_channels == 2:  # a stereo model hears the mono clip on both channels
            batch = batch.expand(-1, 2, -1)
        with torch.inference_mode():
            embeddings = self._encoder_forward(batch)
            if len(clips) > 1 and len(clips) not in self._batch_checked:
                ok = all(
                    torch.equal(embeddings[i : i + 1], self._encoder_forward(batch[i : i + 1]))
                    for i in range(len(clips))
                )
                self._batch_checked[len(clips)] = ok
                if not ok:
                    # Expected on CPU (near-ties in the codebook search); an explanation, not a problem.
                    logger.info(
                        "EnCodec on %s gives different results for a clip alone and inside a batch of %d; "
                        "encoding one clip at a time from now on so codes stay batch-independent",
                        self.device, len(clips),
                    )
                    self._batching_ok = False
                    embeddings = torch.cat([self._encoder_forward(batch[i : i + 1]) for i in range(len(clips))])
            codes = []
            for i in range(len(clips)):
                # (num_codebooks, 1, frames): quantised clip by clip, as the model does for a batch of one
                clip_codes = self.model.quantizer.encode(embeddings[i : i + 1], self.bandwidth)
                codes.append(clip_codes[:, 0, :].t().to(torch.int16).cpu().numpy())
        return codes

    def _encoder_forward(self, batch: "torch.Tensor") -> "torch.Tensor":
        """The model's encoder, with each LSTM run clip by clip (the one batch-variant layer)."""
        import torch
        from transformers.models.encodec.modeling_encodec import EncodecLSTM

        hidden = batch
        if self.model.config.normalize:
            # per-clip loudness normalisation as in EncodecModel._encode_frame (no padding: lengths are equal)
            mono = hidden.mean(dim=1, keepdim=True)
            hidden = hidden / (mono.pow(2).mean(dim=-1, keepdim=True).sqrt() + 1e-8)
        for layer in self.model.encoder.layers:
            if isinstance(layer, EncodecLSTM) and hidden.shape[0] > 1:
                hidden = torch.cat([layer(hidden[i : i + 1]) for i in range(hidden.shape[0])])
            else:
                hidden = layer(hidden)
        return hidden

    def num_frames(self, num_samples: int) -> int:
        """Number of code frames for a clip of ``num_samples`` samples."""
        return math.ceil(num_samples / self.hop_length)

    def config_dict(self) -> dict[str, Any]:
        """What produced the codes (for provenance in the feature store)."""
        return {
            "model": self.name_or_path,
            "bandwidth": self.bandwidth,
            "num_codebooks": self.num_codebooks,
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "codebook_size": int(self.model.config.codebook_size),
        }


# ------------------------------------------------------------------------------------ checkpoint conversion
# Original `encodec` package layout (facebookresearch/encodec): SEANet `encoder.model.<i>` / `decoder.model.<i>`
# where each conv is SConv1d -> NormConv1d (`.conv`) -> nn.Conv1d (`.conv`), weight-normed as weight_g/weight_v;
# transposed convs are SConvTranspose1d -> NormConvTranspose1d (`.convtr`) -> nn.ConvTranspose1d (`.convtr`);
# time-group-norm models keep the GroupNorm as `.conv.norm` / `.convtr.norm`; SLSTM wraps `.lstm`;
# residual blocks hold `.block.<j>` and `.shortcut`. The RVQ is `quantizer.vq.layers.<k>._codebook.*`.
_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def convert_encodec_checkpoint(original_state_dict: dict) -> dict:
    """Rename an original ``encodec`` package state dict to :class:`transformers.EncodecModel` keys.

    Plain renaming: ``encoder.model.N.conv.conv.weight_g`` -> ``encoder.layers.N.conv.parametrizations
    .weight.original0`` (``weight_v`` -> ``original1``), ``...convtr.convtr...`` -> ``...conv...``,
    ``...conv.norm...`` -> ``...norm...``, ``quantizer.vq.layers.K._codebook.X`` ->
    ``quantizer.layers.K.codebook.X``; LSTM and bias keys keep their names. Tensors are not copied.
    A key that fits none of these patterns raises :class:`CheckpointError` naming it.
    """
    converted: dict = {}
    unknown: list[str] = []
    for key, value in original_state_dict.items():
        new_key = _convert_encodec_key(key)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise CheckpointError(
            f"not an original EnCodec state dict: {len(unknown)} key(s) fit no known pattern, e.g. {unknown[:5]}"
        )
    return converted


_QUANTIZER_KEY = re.compile(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.(inited|cluster_size|embed|embed_avg)$")
_SEANET_KEY = re.compile(r"^(encoder|decoder)\.model\.(\d+)\.(.+)$")


def _convert_encodec_key(key: str) -> str | None:
    match = _QUANTIZER_KEY.match(key)
    if match:
        return f"quantizer.layers.{match.group(1)}.codebook.{match.group(2)}"
    match = _SEANET_KEY.match(key)
    if not match:
        return None
    part, index, rest = match.groups()
    prefix = f"{part}.layers.{index}"
    if rest.startswith("lstm."):
        return f"{prefix}.{rest}"
    # residual block: block.<j>.<conv> or shortcut.<conv>
    block = re.match(r"^(block\.\d+|shortcut)\.(.+)$", rest)
    if block:
        prefix, rest = f"{prefix}.{block.group(1)}", block.group(2)
    conv = re.match(r"^(conv\.conv|convtr\.convtr)\.(weight_g|weight_v|weight|bias)$", rest)
    if conv:
        param = conv.group(2)
        return f"{prefix}.conv.{_WEIGHT_NORM.get(param, param)}"
    norm = re.match(r"^(conv|convtr)\.norm\.(weight|bias)$", rest)
    if norm:
        return f"{prefix}.norm.{norm.group(2)}"
    return None


def load_original_encodec(path: str, config: "Any | None" = None) -> "EncodecModel":
    """Build a transformers EncodecModel from an original ``encodec_24khz-*.th`` checkpoint file.

    ``config`` defaults to the 24 kHz model's :class:`transformers.EncodecConfig` (the class defaults).
    Every key of the model must be filled and every key of the file used, else :class:`CheckpointError`.
    """
    from transformers import EncodecConfig, EncodecModel

    from ..loading import load_state_dict

    state = convert_encodec_checkpoint(load_state_dict(path))
    model = EncodecModel(config or EncodecConfig())
    _load_strict(model, state, path)
    return model.eval()


def _load_strict(model: Any, state: dict, source: str) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches: the checkpoint is of another architecture
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err)[:300])
        raise CheckpointError(f"{source}: does not fit {type(model).__name__} ({first})") from err
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: does not fit {type(model).__name__}: missing {list(result.missing_keys)[:8]}"
            f"{'...' if len(result.missing_keys) > 8 else ''}, unexpected {list(result.unexpected_keys)[:8]}"
            f"{'...' if len(result.unexpected_keys) > 8 else ''}"
        )
