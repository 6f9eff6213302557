"""Which examples each process reads, and in which order: a pure function of (seed, epoch).

An epoch visits the examples in a permutation drawn from ``(seed, epoch)`` and cuts it into *global
micro-batches* of ``per_device_batch_size * num_processes`` examples. Process ``p`` gets the ``p``-th
of ``num_processes`` near-equal contiguous parts of every global micro-batch, so the processes
together read exactly the global micro-batch, with no example twice (unlike a sampler that pads the
last batch by repeating examples). An optimizer step consumes ``gradient_accumulation_steps`` global
micro-batches; which examples form a step is therefore the same for 1 process with batch 8 and for 2
processes with batch 4, and resuming at micro-batch ``m`` of an epoch reads exactly what an
uninterrupted run reads from there.

Items are ``(epoch, example index)`` pairs, so that a data set can draw per-example randomness from
both (see :mod:`enclap.data.dataset`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

ORDER_STREAM = 0x0D3E


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``range(num_examples)`` visited in ``epoch``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), ORDER_STREAM, int(epoch)]))
    return rng.permutation(int(num_examples))


def micro_batches_per_epoch(num_examples: int, global_batch_size: int, num_processes: int = 1) -> int:
    """Global micro-batches in an epoch.

    A last partial micro-batch with fewer examples than processes is dropped (a process with nothing
    to read cannot take part in the step); with one process nothing is ever dropped.
    """
    if global_batch_size < 1 or num_processes < 1:
        raise ValueError(f"global_batch_size and num_processes must be >= 1, got {global_batch_size}, {num_processes}")
    full, rest = divmod(int(num_examples), int(global_batch_size))
    return full + (1 if rest >= num_processes else 0)


class EpochBatchSampler:
    """This process's part of every global micro-batch of one epoch, from micro-batch ``start`` on.

    Each yielded batch is a list of ``(epoch, index)``. ``shuffle=False`` keeps the examples in order.
    """

    def __init__(
        self,
        num_examples: int,
        global_batch_size: int,
        *,
        seed: int,
        epoch: int,
        process_index: int = 0,
        num_processes: int = 1,
        start: int = 0,
        shuffle: bool = True,
    ) -> None:
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} out of range for {num_processes} processes")
        if global_batch_size < num_processes:
            raise ValueError(
                f"a global micro-batch of {global_batch_size} examples cannot give each of {num_processes} processes one"
            )
        self.num_examples = int(num_examples)
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.process_index = int(process_index)
        self.num_processes = int(num_processes)
        self.total = micro_batches_per_epoch(self.num_examples, self.global_batch_size, self.num_processes)
        if not 0 <= start <= self.total:
            raise ValueError(f"start must be in [0, {self.total}], got {start}")
        self.start = int(start)
        self.shuffle = bool(shuffle)

    def global_batch(self, number: int) -> np.ndarray:
        """Example indices of global micro-batch ``number`` of this epoch (all processes together)."""
        order = epoch_order(self.num_examples, self.seed, self.epoch) if self.shuffle else np.arange(self.num_examples)
        return order[number * self.global_batch_size : (number + 1) * self.global_batch_size]

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.num_examples, self.seed, self.epoch) if self.shuffle else np.arange(self.num_examples)
        for number in range(self.start, self.total):
            batch = order[number * self.global_batch_size : (number + 1) * self.global_batch_size]
            part = np.array_split(batch, self.num_processes)[self.process_index]
            yield [(self.epoch, int(index)) for index in part]


def shard_indices(num_examples: int, process_index: int, num_processes: int) -> list[int]:
    """A process's share of an evaluation set: every ``num_processes``-th example, none repeated."""
    return list(range(int(process_index), int(num_examples), int(num_processes)))


__all__ = ["EpochBatchSampler", "epoch_order", "micro_batches_per_epoch", "shard_indices"]
