"""The one place that turns per-clip EnCodec codes + CLAP embeddings into captioner inputs.

Training collation, evaluation and inference all call :func:`build_encoder_inputs`, so the layout
below is defined once. For a clip of ``T`` codec frames (``T <= max_frames``) the encoder sequence is

    position:      0     1     2 .. T+1        T+2
    input_ids:     BOS   BOS   frame_1..T      EOS      (every codebook column holds the BOS/EOS id)
    encodec_mask:  0     0     1 .. 1          0
    attention:     1     1     1 .. 1          1

Position 0 is the CLAP slot (its embedding is replaced by the projected CLAP embedding). Shorter clips
in a batch are right-padded: codec columns with ``codec_pad_id`` (1024, embeds to zero),
``encodec_mask`` with **1** (as the reference collator does, so padding takes the codec path and
embeds to the zero pad row rather than to a BART token), ``attention_mask`` with 0 and MCM labels
with -100.

Clips longer than ``max_frames`` (``max_position_embeddings - 3`` = 1021 frames, about 13.6 s at
75 Hz) are cropped as the reference does: ``crop="start"`` keeps the beginning (evaluation),
``crop="random"`` a random window (training). :func:`split_codes_into_windows` offers the
alternative for long clips: caption several windows that together cover the whole clip.
"""

from collections.abc import Sequence

import numpy as np
import torch

IGNORE_INDEX = -100
CROP_MODES = ("start", "random")


def max_frames_for(config) -> int:
    """Longest clip (codec frames) the model takes: ``config.max_position_embeddings - 3``."""
    return int(config.max_position_embeddings) - 3


def _as_numpy(value, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _check_clip_codes(codes, index: int, codec_pad_id: int) -> np.ndarray:
    array = _as_numpy(codes, "codes")
    if array.ndim != 2:
        raise ValueError(f"clip {index}: codes must be (frames, num_codebooks), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"clip {index}: codes must be integers, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > codec_pad_id):
        raise ValueError(
            f"clip {index}: codes must be in [0, {codec_pad_id}] (codes, or the pad/mask id {codec_pad_id}); "
            f"got values in [{array.min()}, {array.max()}]"
        )
    return array.astype(np.int64, copy=False)


def window_starts(num_frames: int, max_frames: int, hop_frames: int) -> list[int]:
    """Start frames of the windows :func:`split_codes_into_windows` cuts (the last one ends at the clip's end)."""
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if hop_frames < 1:
        raise ValueError(f"hop_frames must be >= 1, got {hop_frames}")
    if num_frames <= max_frames:
        return [0]
    starts = list(range(0, num_frames - max_frames + 1, hop_frames))
    if starts[-1] + max_frames < num_frames:
        # Cover the tail too: one last window aligned to the end of the clip.
        starts.append(num_frames - max_frames)
    return starts


def split_codes_into_windows(codes: np.ndarray | torch.Tensor, max_frames: int, hop_frames: int) -> list[np.ndarray]:
    """Cut a long clip's ``(frames, num_codebooks)`` codes into windows of at most ``max_frames``.

    Windows start every ``hop_frames`` frames and a last window ends exactly at the clip's end, so
    every frame is in at least one window (the reference hears only the first ``max_frames``).
    A clip that fits is returned whole, as a single window.
    """
    array = _check_clip_codes(codes, 0, np.iinfo(np.int64).max)
    return [array[start : start + max_frames] for start in window_starts(array.shape[0], max_frames, hop_frames)]


def crop_codes(
    codes: np.ndarray | torch.Tensor,
    max_frames: int,
    *,
    crop: str = "start",
    generator: np.random.Generator | None = None,
) -> tuple[np.ndarray, int]:
    """Crop one clip to at most ``max_frames`` frames; returns ``(codes, start_frame)``.

    ``"start"`` keeps the first ``max_frames`` frames; ``"random"`` a uniformly drawn window
    (start in ``0 .. frames - max_frames``, as the reference's training preprocessing).
    """
    if crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
    if max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    array = _as_numpy(codes, "codes")
    frames = array.shape[0]
    if frames <= max_frames:
        return array, 0
    if crop == "start":
        start = 0
    else:
        generator = generator if generator is not None else np.random.default_rng()
        start = int(generator.integers(0, frames - max_frames + 1))
    return array[start : start + max_frames], start


def build_encoder_inputs(
    codes: Sequence[np.ndarray | torch.Tensor],
    clap_embeddings: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
    *,
    max_frames: int,
    bos_token_id: int = 0,
    eos_token_id: int = 2,
    codec_pad_id: int = 1024,
    crop: str = "start",
    generator: np.random.Generator | None = None,
    mcm_labels: Sequence[np.ndarray | torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Batch per-clip codes ``(frames, num_codebooks)`` and CLAP embeddings into model inputs.

    Returns ``input_ids`` (B, L, K) long, ``encodec_mask`` (B, L) long, ``attention_mask`` (B, L)
    long, ``clap_embedding`` (B, d_clap) float32, and ``mcm_labels`` (B, L, K) long when per-clip
    labels (same shape as the clip's codes, -100 where not masked) are given. ``L`` is the longest
    cropped clip + 3. Clips longer than ``max_frames`` are cropped with ``crop`` (labels with the
    same window). See the module docstring for the layout.
    """
    if crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if isinstance(codes, (np.ndarray, torch.Tensor)) and codes.ndim == 2:
        raise ValueError("codes must be a sequence of per-clip (frames, num_codebooks) arrays, got a single 2-D array")
    clips = [_check_clip_codes(clip, index, codec_pad_id) for index, clip in enumerate(codes)]
    if not clips:
        raise ValueError("codes is empty: need at least one clip")
    num_codebooks = {clip.shape[1] for clip in clips}
    if len(num_codebooks) != 1:
        raise ValueError(
            "all clips must have the same number of codebooks, got "
            + ", ".join(f"clip {i}: {clip.shape[1]}" for i, clip in enumerate(clips))
        )
    num_codebooks = num_codebooks.pop()

    clap = _stack_clap(clap_embeddings, len(clips))

    labels = None
    if mcm_labels is not None:
        if len(mcm_labels) != len(clips):
            raise ValueError(f"mcm_labels has {len(mcm_labels)} clips, codes has {len(clips)}")
        labels = []
        for index, (clip, clip_labels) in enumerate(zip(clips, mcm_labels)):
            clip_labels = _as_numpy(clip_labels, "mcm_labels")
            if clip_labels.shape != clip.shape:
                raise ValueError(f"clip {index}: mcm_labels shape {clip_labels.shape} != codes shape {clip.shape}")
            real = clip_labels != IGNORE_INDEX
            if real.any() and (clip_labels[real].min() < 0 or clip_labels[real].max() >= codec_pad_id):
                raise ValueError(f"clip {index}: mcm_labels must be -100 or codes in [0, {codec_pad_id})")
            labels.append(clip_labels.astype(np.int64, copy=False))

    cropped, cropped_labels = [], []
    for index, clip in enumerate(clips):
        window, start = crop_codes(clip, max_frames, crop=crop, generator=generator)
        cropped.append(window)
        if labels is not None:
            cropped_labels.append(labels[index][start : start + window.shape[0]])

    batch = len(cropped)
    length = max(clip.shape[0] for clip in cropped) + 3
    input_ids = np.full((batch, length, num_codebooks), codec_pad_id, dtype=np.int64)
    encodec_mask = np.ones((batch, length), dtype=np.int64)  # padding embeds through the codec path
    attention_mask = np.zeros((batch, length), dtype=np.int64)
    label_batch = np.full((batch, length, num_codebooks), IGNORE_INDEX, dtype=np.int64) if labels is not None else None
    for index, clip in enumerate(cropped):
        frames = clip.shape[0]
        input_ids[index, :2] = bos_token_id
        input_ids[index, 2 : 2 + frames] = clip
        input_ids[index, 2 + frames] = eos_token_id
        encodec_mask[index, :2] = 0
        encodec_mask[index, 2 + frames] = 0
        attention_mask[index, : frames + 3] = 1
        if label_batch is not None:
            label_batch[index, 2 : 2 + frames] = cropped_labels[index]

    result = {
        "input_ids": torch.from_numpy(input_ids),
        "encodec_mask": torch.from_numpy(encodec_mask),
        "attention_mask": torch.from_numpy(attention_mask),
        "clap_embedding": torch.from_numpy(clap),
    }
    if label_batch is not None:
        result["mcm_labels"] = torch.from_numpy(label_batch)
    return result


def _stack_clap(clap_embeddings, batch: int) -> np.ndarray:
    if isinstance(clap_embeddings, (np.ndarray, torch.Tensor)):
        clap = _as_numpy(clap_embeddings, "clap_embeddings")
        if clap.ndim == 1 and batch == 1:
            clap = clap[None]
    else:
        rows = [_as_numpy(row, "clap_embeddings") for row in clap_embeddings]
        if len(rows) != batch:
            raise ValueError(f"got {len(rows)} CLAP embeddings for {batch} clips")
        # A stored CLAP embedding may be (d,) or (1, d).
        rows = [row.reshape(-1) if row.ndim == 2 and row.shape[0] == 1 else row for row in rows]
        shapes = {row.shape for row in rows}
        if len(shapes) != 1 or any(row.ndim != 1 for row in rows):
            raise ValueError(f"CLAP embeddings must all be (d_clap,) vectors, got shapes {[row.shape for row in rows]}")
        clap = np.stack(rows)
    if clap.ndim != 2 or clap.shape[0] != batch:
        raise ValueError(f"clap_embeddings must be (batch={batch}, d_clap), got shape {clap.shape}")
    if not np.issubdtype(clap.dtype, np.floating):
        raise ValueError(f"clap_embeddings must be floating point, got dtype {clap.dtype}")
    bad = np.where(~np.isfinite(clap).all(axis=1))[0]
    if bad.size:
        raise ValueError(f"clap_embeddings of clip(s) {bad.tolist()} contain NaN or infinite values")
    return np.array(clap, dtype=np.float32)  # a fresh, writable copy for torch.from_numpy


__all__ = [
    "build_encoder_inputs",
    "crop_codes",
    "max_frames_for",
    "split_codes_into_windows",
    "window_starts",
    "CROP_MODES",
    "IGNORE_INDEX",
]
