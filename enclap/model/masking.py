"""Span masking for masked codec modeling (MCM).

The sampler has the semantics of wav2vec2's ``_compute_mask_indices`` (which the reference
EnCLAP preprocessing uses): a sequence of ``length`` frames gets
``int(mask_prob * length / mask_length + epsilon)`` spans (``epsilon ~ U(0, 1)``: probabilistic
rounding), at least ``min_masks``, capped so the spans fit (``length // mask_length`` and
``length - mask_length + 1``); span starts are drawn uniformly *without replacement* from
``0 .. length - mask_length`` and spans may overlap, so ``mask_prob`` is an upper bound on the
masked fraction.

The reference calls the sampler once per clip with the codebooks as the batch dimension: one
``epsilon`` per clip (so every codebook gets the same number of spans) and independent span starts
per codebook. :func:`mask_codec_tokens` does the same. Unlike the reference, it does not fail on
clips shorter than a span (they simply get no span) nor when no span fits.
"""

from collections.abc import Sequence

import numpy as np
import torch

IGNORE_INDEX = -100


def _check_mask_args(mask_prob: float, mask_length: int, min_masks: int) -> None:
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if int(mask_length) != mask_length or mask_length < 1:
        raise ValueError(f"mask_length must be an integer >= 1, got {mask_length}")
    if int(min_masks) != min_masks or min_masks < 0:
        raise ValueError(f"min_masks must be an integer >= 0, got {min_masks}")


def num_masked_spans(length: int, mask_prob: float, mask_length: int, epsilon: float, min_masks: int = 0) -> int:
    """How many spans wav2vec2's sampler puts in ``length`` frames for a given rounding draw ``epsilon``."""
    count = int(mask_prob * length / mask_length + epsilon)
    count = max(count, min_masks)
    if count * mask_length > length:
        count = length // mask_length
    # Every span must start at 0 .. length - mask_length.
    if length - (mask_length - 1) < count:
        count = max(length - (mask_length - 1), 0)
    return count


def compute_span_mask(
    length: int,
    mask_prob: float,
    mask_length: int,
    generator: np.random.Generator,
    *,
    min_masks: int = 0,
    epsilon: float | None = None,
) -> np.ndarray:
    """Boolean ``(length,)`` span mask drawn with wav2vec2's sampler (see the module docstring).

    ``epsilon`` is the probabilistic-rounding draw; by default it is drawn from ``generator``.
    Lengths 0 and those shorter than ``mask_length`` give an all-False mask.
    """
    _check_mask_args(mask_prob, mask_length, min_masks)
    if int(length) != length or length < 0:
        raise ValueError(f"length must be an integer >= 0, got {length}")
    length = int(length)
    if epsilon is None:
        epsilon = float(generator.random())
    mask = np.zeros(length, dtype=bool)
    count = num_masked_spans(length, mask_prob, mask_length, epsilon, min_masks)
    if count == 0:
        return mask
    starts = generator.choice(length - mask_length + 1, size=count, replace=False)
    covered = (starts[:, None] + np.arange(mask_length)[None, :]).reshape(-1)
    mask[covered] = True
    return mask


def _mask_one_clip(
    codes: np.ndarray,
    mask_prob: float,
    mask_length: int,
    generator: np.random.Generator,
    pad_id: int,
    min_masks: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask one ``(frames, num_codebooks)`` clip; returns (masked codes, labels)."""
    frames, num_codebooks = codes.shape
    # One rounding draw per clip, independent spans per codebook: the reference's behaviour.
    epsilon = float(generator.random())
    mask = np.stack(
        [
            compute_span_mask(frames, mask_prob, mask_length, generator, min_masks=min_masks, epsilon=epsilon)
            for _ in range(num_codebooks)
        ],
        axis=1,
    ).reshape(frames, num_codebooks)
    labels = np.where(mask, codes, IGNORE_INDEX).astype(np.int64)
    masked = np.where(mask, pad_id, codes).astype(np.int64)
    return masked, labels


def mask_codec_tokens(
    codes: np.ndarray | torch.Tensor,
    mask_prob: float = 0.15,
    mask_length: int = 10,
    generator: np.random.Generator | None = None,
    *,
    pad_id: int = 1024,
    lengths: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    min_masks: int = 0,
) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """Mask codec frames for MCM: returns ``(masked_codes, mcm_labels)``.

    ``codes`` is one clip ``(frames, num_codebooks)`` or a batch ``(batch, frames, num_codebooks)``
    of codec frames only (no BOS/EOS/CLAP slot). Masks are drawn independently per codebook; masked
    codes become ``pad_id`` (which embeds to the zero pad row) and are the labels, every other label is
    -100. For a padded batch, ``lengths`` gives each clip's real frame count: frames past it are
    neither masked nor labelled. The result has the input's type (numpy or torch, int64) and device.
    """
    _check_mask_args(mask_prob, mask_length, min_masks)
    if generator is None:
        generator = np.random.default_rng()
    is_torch = isinstance(codes, torch.Tensor)
    device = codes.device if is_torch else None
    array = codes.detach().cpu().numpy() if is_torch else np.asarray(codes)
    if array.ndim not in (2, 3):
        raise ValueError(f"codes must be (frames, codebooks) or (batch, frames, codebooks), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {array.dtype}")
    if array.shape[-1] < 1:
        raise ValueError(f"codes must have at least one codebook, got shape {array.shape}")
    batched = array.ndim == 3
    clips = array if batched else array[None]
    if lengths is None:
        lengths = [clips.shape[1]] * clips.shape[0]
    else:
        if not batched:
            raise ValueError("lengths is only meaningful for a (batch, frames, codebooks) batch")
        lengths = [int(n) for n in (lengths.tolist() if hasattr(lengths, "tolist") else lengths)]
        if len(lengths) != clips.shape[0]:
            raise ValueError(f"lengths has {len(lengths)} entries for a batch of {clips.shape[0]} clips")
        bad = [n for n in lengths if not 0 <= n <= clips.shape[1]]
        if bad:
            raise ValueError(f"lengths must be in [0, {clips.shape[1]}], got {bad}")

    masked = clips.astype(np.int64, copy=True)
    labels = np.full(clips.shape, IGNORE_INDEX, dtype=np.int64)
    for index, frames in enumerate(lengths):
        masked[index, :frames], labels[index, :frames] = _mask_one_clip(
            clips[index, :frames], mask_prob, mask_length, generator, pad_id, min_masks
        )
    if not batched:
        masked, labels = masked[0], labels[0]
    if is_torch:
        return torch.from_numpy(masked).to(device), torch.from_numpy(labels).to(device)
    return masked, labels


__all__ = ["compute_span_mask", "mask_codec_tokens", "num_masked_spans", "IGNORE_INDEX"]
