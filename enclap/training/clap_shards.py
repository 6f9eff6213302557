"""The CLAP tower's training pairs streamed from webdataset shards (LAION-CLAP's data layout).

:func:`clap_shard_stream` is a :class:`~enclap.data.shards.ShardStream` whose examples are those of
:class:`~enclap.training.clap.ClapTrainDataset`: the audio decoded from the sample's bytes
(:func:`enclap.audio.load_audio_bytes`, resampled to the tower's rate), turned into the tower's input by
:func:`~enclap.clap.embedder.tower_audio_input` (repeat-pad, crops / fusion of long clips), and one of
the sample's captions, tokenized the same way. The caption and the crop are drawn from a generator
seeded by ``(seed, epoch, shard name, sample key)``: the same sample gets the same pair in the same
epoch whichever process or worker reads it. A sample that cannot be used (no json, no captions,
undecodable audio) raises :class:`~enclap.data.shards.BadSample`, which the stream skips and counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..clap.embedder import tower_audio_input

SHARD_PAIR_STREAM = 0x5CA9


class ClapShardExamples:
    """``(raw shard sample, epoch)`` -> ``{"input_features", "is_longer", "input_ids"}`` (picklable: runs in workers)."""

    def __init__(self, config: Any, tokenizer: Any, seed: int) -> None:
        from .clap import _TowerAudio

        self.config = config
        self.feature_extractor = _TowerAudio(config).feature_extractor
        self.tokenizer = tokenizer
        self.max_text_length = int(config.max_text_length)
        self.seed = int(seed)

    def rng(self, sample: dict[str, Any], epoch: int) -> np.random.Generator:
        from ..data.shards import key_number

        where = f"{Path(str(sample.get('__url__', ''))).name}/{sample.get('__key__')}"
        return np.random.default_rng([self.seed, SHARD_PAIR_STREAM, int(epoch), key_number(where)])

    def __call__(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        from ..data.shards import decode_sample_audio, sample_captions

        captions = sample_captions(sample)
        rng = self.rng(sample, epoch)
        caption = captions[int(rng.integers(len(captions)))]
        waveform = decode_sample_audio(sample, self.config.sample_rate)
        features, longer = tower_audio_input(self.config, self.feature_extractor, waveform, rng)
        ids = self.tokenizer(caption, truncation=True, max_length=self.max_text_length)["input_ids"]
        return {"input_features": features, "is_longer": longer, "input_ids": ids}


def clap_shard_stream(
    shards: str | Sequence[str], config: Any, tokenizer: Any, seed: int, *, resampled: bool = False,
    shuffle_buffer: int = 1000, epoch_examples: int | None = None,
):
    """The streaming training set of a tower ``config`` over ``shards`` (see the module docstring)."""
    from ..data.shards import ShardStream

    return ShardStream(shards, ClapShardExamples(config, tokenizer, seed), seed=seed, resampled=resampled,
                       shuffle_buffer=shuffle_buffer, epoch_examples=epoch_examples)


__all__ = ["ClapShardExamples", "clap_shard_stream"]
