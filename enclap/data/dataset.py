"""Captioner training and validation examples: (clip, caption) pairs over a feature store, and their collation.

An *example* is one caption of one clip: a training manifest (``file_path,caption``) has one example per
row; an evaluation manifest (``file_path,caption_1..N``) has one example per reference caption. Each
example reads its clip's EnCodec codes and CLAP embedding from a feature store (the project's sharded
store or EnCLAP's per-file ``.npy`` layout, see :func:`enclap.features.store.open_feature_store`).

What an example becomes (:meth:`CaptionPairDataset.__getitem__`):

* **crop**: a clip longer than the encoder's window (``max_frames`` = ``max_position_embeddings - 3``) is
  cut to a random window in training (as the reference's preprocessing does) and to its first
  ``max_frames`` frames in validation (:func:`enclap.model.crop_codes`);
* **masked codec modeling** (training examples only): spans of codes are masked with
  :func:`enclap.model.mask_codec_tokens` (labels hold the original codes, -100 elsewhere);
* **validation examples are clean**: their codes are the stored codes unchanged (no MCM mask, every
  MCM label -100), whatever ``mask_prob`` is. At inference the captioner sees clean codes, so the
  validation loss, which picks ``best/``, must be measured on them; MCM is a training objective only.
  (The reference's evaluation preprocessing never masks either.)
* **caption**: BART token ids ``<s> ... </s>``, tokenised once when the data set is built; captions
  longer than ``max_target_length`` tokens are cut (keeping ``</s>``) and counted in the log, never
  silently.

**Randomness is a pure function of (seed, epoch, example index)**: every example draws its crop and
mask from its own generator, :func:`example_rng`. The batch size, the number of DataLoader workers
and of processes, and where a run was interrupted and resumed therefore change nothing in any
example. (The reference masks once in a cached preprocessing pass, so every epoch sees the same
mask; here each epoch draws a new one.) Validation examples draw nothing: they are a function of
the stored clip alone, so the validation loss of every epoch is computed on identical inputs.

A training item is addressed as ``(epoch, index)`` (the samplers of :mod:`enclap.training` yield
such pairs); a plain ``index`` means epoch 0. A validation item may be addressed either way; the
epoch changes nothing in it.

:class:`CaptionCollator` batches examples; it builds the encoder inputs only through
:func:`enclap.model.build_encoder_inputs` (the one place that defines that layout) and pads caption
labels with -100.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidFeaturesError, ManifestError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from ..features.store import FeatureReader

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# The stream tag keeps the training examples' generators apart from any other use of the same seed.
TRAIN_STREAM = 0x7E1A
# How many missing keys an error message lists before it only counts them.
MAX_LISTED_KEYS = 20


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of training example ``index`` in ``epoch``: its crop and MCM mask come from it alone."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), TRAIN_STREAM, int(epoch), int(index)]))


def describe_store(store: "FeatureReader") -> str:
    """Where a store's features live, for messages: its root, or the two roots of EnCLAP's layout."""
    root = getattr(store, "root", None)
    if root is not None:
        return str(root)
    encodec_root, clap_root = getattr(store, "encodec_root", None), getattr(store, "clap_root", None)
    if encodec_root is not None:
        return f"{encodec_root} (EnCodec) + {clap_root} (CLAP)"
    return repr(store)


def store_geometry(store: "FeatureReader", sample_key: str) -> tuple[int, int]:
    """``(num_codebooks, d_clap)`` of a store's features: from its index when it has one, else from one clip."""
    num_codebooks = getattr(store, "num_codebooks", None)
    d_clap = getattr(store, "d_clap", None)
    if num_codebooks is not None and d_clap is not None:
        return int(num_codebooks), int(d_clap)
    clip = store[sample_key]
    codes, clap = np.asarray(clip.codes), np.asarray(clip.clap)
    if codes.ndim != 2:
        raise InvalidFeaturesError(f"clip '{sample_key}' in {describe_store(store)}: codes must be (frames, codebooks), got {codes.shape}")
    return int(codes.shape[1]), int(clap.reshape(-1).shape[0])


def check_store_covers(keys: Sequence[str], store: "FeatureReader", manifest: str | os.PathLike) -> None:
    """Raise :class:`ManifestError` naming the manifest, the store and the missing keys unless every key is stored."""
    missing = list(dict.fromkeys(key for key in keys if key not in store))
    if not missing:
        return
    distinct = len(dict.fromkeys(keys))
    problems = [
        f"{len(missing)} of {distinct} clip(s) have no features in the feature store at {describe_store(store)} "
        "(extract them with data/extract_features.py, or fix the manifest)"
    ]
    problems += [f"no features for '{key}'" for key in missing[:MAX_LISTED_KEYS]]
    if len(missing) > MAX_LISTED_KEYS:
        problems.append(f"... and {len(missing) - MAX_LISTED_KEYS} more clip(s) without features")
    raise ManifestError(manifest, problems)


def check_no_empty_clips(keys: Sequence[str], store: "FeatureReader", manifest: str | os.PathLike) -> None:
    """Refuse clips with 0 codec frames up front where the store knows lengths without reading (sharded store)."""
    num_frames = getattr(store, "num_frames", None)
    if num_frames is None:
        return  # EnCLAP's layout: checked when the clip is read
    empty = [key for key in dict.fromkeys(keys) if num_frames(key) == 0]
    if empty:
        shown = ", ".join(f"'{key}'" for key in empty[:MAX_LISTED_KEYS])
        more = f" (+{len(empty) - MAX_LISTED_KEYS} more)" if len(empty) > MAX_LISTED_KEYS else ""
        raise InvalidFeaturesError(
            f"{manifest}: {len(empty)} clip(s) have 0 codec frames in {describe_store(store)}: {shown}{more}. "
            "A clip needs at least one frame; remove it from the manifest or re-extract it."
        )


def encode_captions(
    tokenizer: "PreTrainedTokenizerBase", captions: Sequence[str], max_length: int, *, source: str = ""
) -> list[np.ndarray]:
    """Token ids (``<s> ... </s>``) of each caption, cut to ``max_length`` tokens keeping the final ``</s>``.

    How many captions were cut (and the longest length seen) is logged at WARNING level.
    """
    if max_length < 2:
        raise ValueError(f"max_target_length must be at least 2 (<s> and </s>), got {max_length}")
    encoded = tokenizer(list(captions), add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    result: list[np.ndarray] = []
    cut = 0
    longest = 0
    for ids in encoded:
        longest = max(longest, len(ids))
        if len(ids) > max_length:
            ids = list(ids[: max_length - 1]) + [eos]
            cut += 1
        result.append(np.asarray(ids, dtype=np.int64))
    if cut:
        logger.warning(
            "%s%d of %d caption(s) are longer than max_target_length=%d tokens (longest %d) and were cut to it",
            f"{source}: " if source else "", cut, len(result), max_length, longest,
        )
    return result


class CaptionPairDataset:
    """Examples ``(clip, caption)`` over a feature store, with per-example crop and (in training) MCM masking.

    ``pairs`` are ``(file_path, caption)`` as :func:`enclap.data.manifest.read_caption_pairs` gives them;
    ``labels`` their token ids (:func:`encode_captions`). ``train=True``: random crop and a new mask every
    epoch (``mask_prob`` 0 disables masking: every MCM label is -100). ``train=False`` (validation):
    the first ``max_frames`` frames, clean, every MCM label -100; ``mask_prob`` / ``mask_span`` / ``seed``
    do not apply. Codes must be ``< codebook_size``; the MCM mask id is ``codec_pad_id``. ``num_codebooks`` / ``d_clap``, when given, are checked on every clip read (with
    finiteness of the CLAP embedding). Use :meth:`from_manifest` to build one from files with every check
    that can be done up front.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        labels: Sequence[np.ndarray],
        store: "FeatureReader",
        *,
        max_frames: int,
        codebook_size: int = 1024,
        codec_pad_id: int = 1024,
        mask_prob: float = 0.15,
        mask_span: int = 10,
        seed: int = 0,
        train: bool = True,
        source: str = "",
        num_codebooks: int | None = None,
        d_clap: int | None = None,
    ) -> None:
        from .manifest import clip_key

        if len(pairs) != len(labels):
            raise ValueError(f"{len(pairs)} pairs but {len(labels)} label sequences")
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if not 0.0 <= mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
        if mask_span < 1:
            raise ValueError(f"mask_span must be >= 1, got {mask_span}")
        self.file_paths = [file_path for file_path, _ in pairs]
        self.captions = [caption for _, caption in pairs]
        self.keys = [clip_key(file_path) for file_path in self.file_paths]
        self.labels = list(labels)
        self.store = store
        self.max_frames = int(max_frames)
        self.codebook_size = int(codebook_size)
        self.codec_pad_id = int(codec_pad_id)
        self.mask_prob = float(mask_prob)
        self.mask_span = int(mask_span)
        self.seed = int(seed)
        self.train = bool(train)
        self.source = source
        self.num_codebooks = None if num_codebooks is None else int(num_codebooks)
        self.d_clap = None if d_clap is None else int(d_clap)

    @classmethod
    def from_manifest(
        cls,
        manifest: str | os.PathLike,
        store: "FeatureReader",
        tokenizer: "PreTrainedTokenizerBase",
        *,
        max_target_length: int,
        num_codebooks: int | None = None,
        d_clap: int | None = None,
        **settings: Any,
    ) -> "CaptionPairDataset":
        """Read ``manifest`` (either layout), check it against ``store`` and tokenise its captions.

        Raises, before any training: :class:`ManifestError` for an unreadable manifest (empty captions
        with their line numbers, ...) or for clips missing from the store (naming the manifest, the
        store and the keys); :class:`InvalidFeaturesError` when the store's codebook count or CLAP size
        differs from ``num_codebooks`` / ``d_clap`` (when given) or a clip has 0 frames.
        """
        from .manifest import clip_key, read_caption_pairs

        pairs = read_caption_pairs(manifest)  # ManifestError lists every bad line
        keys = [clip_key(file_path) for file_path, _ in pairs]
        check_store_covers(keys, store, manifest)
        if num_codebooks is not None or d_clap is not None:
            found_codebooks, found_d_clap = store_geometry(store, keys[0])
            problems = []
            if num_codebooks is not None and found_codebooks != num_codebooks:
                problems.append(f"{found_codebooks} codebooks per frame, the model expects num_rvq={num_codebooks}")
            if d_clap is not None and found_d_clap != d_clap:
                problems.append(f"CLAP embeddings of size {found_d_clap}, the model expects d_clap={d_clap}")
            if problems:
                raise InvalidFeaturesError(
                    f"the feature store at {describe_store(store)} (used for {manifest}) has " + " and ".join(problems)
                    + ". Extract features with the settings the model was made for (12 kbps EnCodec = 16 codebooks)."
                )
        check_no_empty_clips(keys, store, manifest)
        labels = encode_captions(tokenizer, [caption for _, caption in pairs], max_target_length, source=str(manifest))
        return cls(pairs, labels, store, source=str(manifest), num_codebooks=num_codebooks, d_clap=d_clap, **settings)

    def __len__(self) -> int:
        return len(self.keys)

    def example_lengths(self) -> list[int]:
        """Encoder frames of each example as the model sees it (the clip's frames, cropped to ``max_frames``).

        For length-bucketed batches; read from the store's index (``num_frames``), no clip is loaded.
        """
        num_frames = getattr(self.store, "num_frames", None)
        if num_frames is None:
            raise TypeError(f"the feature store at {describe_store(self.store)} does not index clip lengths (num_frames)")
        per_clip = {key: min(int(num_frames(key)), self.max_frames) for key in dict.fromkeys(self.keys)}
        return [per_clip[key] for key in self.keys]

    def _address(self, item: int | tuple[int, int]) -> tuple[int, int]:
        if isinstance(item, (tuple, list)):
            epoch, index = (int(v) for v in item)
        else:
            epoch, index = 0, int(item)
        if not 0 <= index < len(self.keys):
            raise IndexError(f"example {index} out of range (0..{len(self.keys) - 1})")
        return epoch, index

    def rng_for(self, epoch: int, index: int) -> np.random.Generator:
        """The generator training example ``index`` draws its crop and mask from in ``epoch``.

        Raises ``ValueError`` on a validation data set, whose examples draw nothing.
        """
        if not self.train:
            raise ValueError("validation examples are clean and drawn from no generator (first max_frames frames, no MCM mask)")
        return example_rng(self.seed, epoch, index)

    def read_clip(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored ``(codes int64 (frames, codebooks), clap float32 (d,))`` of example ``index``, checked."""
        key = self.keys[index]
        clip = self.store[key]
        codes = np.asarray(clip.codes)
        clap = np.asarray(clip.clap, dtype=np.float32).reshape(-1)
        where = f"clip '{key}' ({self.source or 'manifest'}) in {describe_store(self.store)}"
        if codes.ndim != 2 or codes.shape[0] == 0:
            raise InvalidFeaturesError(f"{where}: has {codes.shape[0] if codes.ndim else 0} codec frames (shape {codes.shape}); a clip needs at least one")
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise InvalidFeaturesError(
                f"{where}: codes must be in [0, {self.codebook_size}), found values in [{codes.min()}, {codes.max()}]"
            )
        # Checked per clip because EnCLAP's .npy layout has no index saying every clip has the same shape;
        # the collator would otherwise fail on the batch without naming the clip.
        if self.num_codebooks is not None and codes.shape[1] != self.num_codebooks:
            raise InvalidFeaturesError(f"{where}: {codes.shape[1]} codebooks per frame, expected {self.num_codebooks}")
        if self.d_clap is not None and clap.shape[0] != self.d_clap:
            raise InvalidFeaturesError(f"{where}: a CLAP embedding of size {clap.shape[0]}, expected {self.d_clap}")
        if not np.isfinite(clap).all():
            raise InvalidFeaturesError(f"{where}: the CLAP embedding contains NaN or infinite values; re-extract this clip")
        return codes.astype(np.int64), clap

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        from ..model.inputs import crop_codes
        from ..model.masking import mask_codec_tokens

        epoch, index = self._address(item)
        codes, clap = self.read_clip(index)
        if self.train:
            generator = self.rng_for(epoch, index)
            cropped, start = crop_codes(codes, self.max_frames, crop="random", generator=generator)
        else:
            cropped, start = crop_codes(codes, self.max_frames, crop="start")
        if self.train and self.mask_prob > 0:
            masked, mcm_labels = mask_codec_tokens(
                cropped, self.mask_prob, self.mask_span, generator, pad_id=self.codec_pad_id
            )
        else:
            # Clean codes: validation always (the captioner is judged on what it sees at inference),
            # training when MCM is off.
            masked, mcm_labels = cropped.copy(), np.full(cropped.shape, IGNORE_INDEX, dtype=np.int64)
        return {
            "codes": masked,
            "mcm_labels": mcm_labels,
            "clap": clap,
            "labels": self.labels[index],
            "index": index,
            "crop_start": start,
        }


class CaptionCollator:
    """Batch examples of :class:`CaptionPairDataset` into the captioner's keyword arguments.

    Returns ``input_ids`` (B, L, K), ``encodec_mask``, ``attention_mask``, ``clap_embedding`` and
    ``mcm_labels`` from :func:`enclap.model.build_encoder_inputs`, ``labels`` (B, T) caption ids padded
    with -100, and ``example_index`` (B,) saying which examples the rows are.
    """

    def __init__(self, max_frames: int, *, bos_token_id: int = 0, eos_token_id: int = 2, codec_pad_id: int = 1024) -> None:
        self.max_frames = int(max_frames)
        self.bos_token_id = int(bos_token_id)
        self.eos_token_id = int(eos_token_id)
        self.codec_pad_id = int(codec_pad_id)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, "torch.Tensor"]:
        import torch

        from ..model.inputs import build_encoder_inputs

        if not examples:
            raise ValueError("cannot collate an empty batch")
        batch = build_encoder_inputs(
            [example["codes"] for example in examples],
            [example["clap"] for example in examples],
            max_frames=self.max_frames,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            codec_pad_id=self.codec_pad_id,
            crop="start",  # examples arrive cropped (randomly, in training) by the data set
            mcm_labels=[example["mcm_labels"] for example in examples],
        )
        longest = max(len(example["labels"]) for example in examples)
        labels = np.full((len(examples), longest), IGNORE_INDEX, dtype=np.int64)
        for row, example in enumerate(examples):
            labels[row, : len(example["labels"])] = example["labels"]
        batch["labels"] = torch.from_numpy(labels)
        batch["example_index"] = torch.tensor([int(example["index"]) for example in examples], dtype=torch.long)
        return batch


__all__ = [
    "CaptionCollator",
    "CaptionPairDataset",
    "check_no_empty_clips",
    "check_store_covers",
    "describe_store",
    "encode_captions",
    "example_rng",
    "store_geometry",
]
