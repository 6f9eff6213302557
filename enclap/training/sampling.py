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

**Length bucketing** (``lengths`` given): the epoch's permutation is cut into windows of
``bucket_window`` optimizer steps; inside a window the examples are sorted by length and cut into
step-sized groups (``step_batch_size`` examples: the global batch), and the groups are shuffled
(again from ``(seed, epoch)``). A step then holds examples of similar length, so each process pads
its micro-batches less; which examples form a step still depends only on (seed, epoch, global batch),
not on the number of processes or the accumulation, so a run resumes on another process count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from collections.abc import Sequence

ORDER_STREAM = 0x0D3E
BUCKET_STREAM = 0xB0C7


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``range(num_examples)`` visited in ``epoch``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), ORDER_STREAM, int(epoch)]))
    return rng.permutation(int(num_examples))


def bucketed_order(
    lengths: Sequence[int], seed: int, epoch: int, *, step_batch_size: int, bucket_window: int = 50
) -> np.ndarray:
    """``epoch_order`` regrouped so that every ``step_batch_size`` consecutive examples have similar lengths.

    Windows of ``bucket_window * step_batch_size`` examples of the epoch's permutation are sorted by
    length (ties keep the permutation's order) and cut into groups of ``step_batch_size``; the full
    groups of a window are shuffled. A last partial group (the epoch's tail) stays last.
    """
    if step_batch_size < 1 or bucket_window < 1:
        raise ValueError(f"step_batch_size and bucket_window must be >= 1, got {step_batch_size}, {bucket_window}")
    lengths = np.asarray(lengths)
    order = epoch_order(len(lengths), seed, epoch)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), BUCKET_STREAM, int(epoch)]))
    window = step_batch_size * bucket_window
    out = []
    for start in range(0, len(order), window):
        part = order[start : start + window]
        part = part[np.argsort(lengths[part], kind="stable")]
        full = len(part) // step_batch_size * step_batch_size
        groups = part[:full].reshape(-1, step_batch_size)
        out.extend(groups[rng.permutation(len(groups))].reshape(-1))
        out.extend(part[full:])
    return np.asarray(out, dtype=order.dtype)


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
        lengths: Sequence[int] | None = None,
        step_batch_size: int | None = None,
        bucket_window: int = 50,
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
        if lengths is not None:
            if len(lengths) != self.num_examples:
                raise ValueError(f"lengths has {len(lengths)} entries for {self.num_examples} examples")
            if step_batch_size is None or step_batch_size % self.global_batch_size:
                raise ValueError(
                    f"length bucketing groups whole optimizer steps: step_batch_size ({step_batch_size}) must be a "
                    f"multiple of the global micro-batch ({self.global_batch_size})"
                )
        self.lengths = lengths
        self.step_batch_size = step_batch_size
        self.bucket_window = int(bucket_window)

    def order(self) -> np.ndarray:
        """Every example index of this epoch in the order the global micro-batches take them."""
        if self.lengths is not None:
            return bucketed_order(
                self.lengths, self.seed, self.epoch, step_batch_size=int(self.step_batch_size), bucket_window=self.bucket_window
            )
        return epoch_order(self.num_examples, self.seed, self.epoch) if self.shuffle else np.arange(self.num_examples)

    def global_batch(self, number: int) -> np.ndarray:
        """Example indices of global micro-batch ``number`` of this epoch (all processes together)."""
        return self.order()[number * self.global_batch_size : (number + 1) * self.global_batch_size]

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order()
        for number in range(self.start, self.total):
            batch = order[number * self.global_batch_size : (number + 1) * self.global_batch_size]
            part = np.array_split(batch, self.num_processes)[self.process_index]
            yield [(self.epoch, int(index)) for index in part]


class ReusableBatchSampler:
    """The batch sampler of one long-lived DataLoader (persistent workers): ``set_epoch`` before each pass.

    The DataLoader iterates its batch sampler in the main process, so replacing the epoch's
    :class:`EpochBatchSampler` between passes is seen by the next pass while the workers stay alive.
    """

    def __init__(self, make: "Callable[[int, int], EpochBatchSampler]") -> None:
        self._make = make
        self._current: EpochBatchSampler | None = None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self._current = self._make(int(epoch), int(start))

    def __len__(self) -> int:
        return len(self._current) if self._current is not None else 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self._current is None:
            raise RuntimeError("ReusableBatchSampler.set_epoch must be called before iterating")
        return iter(self._current)


def shard_indices(num_examples: int, process_index: int, num_processes: int) -> list[int]:
    """A process's share of an evaluation set: every ``num_processes``-th example, none repeated."""
    return list(range(int(process_index), int(num_examples), int(num_processes)))


def padded_shard(num_examples: int, process_index: int, num_processes: int) -> list[int]:
    """``shard_indices`` padded to the same length on every process by repeating the shard's last index.

    Collective work (e.g. generation under ZeRO-3, which runs in lockstep) needs the same number of
    items everywhere; whoever gathers the results drops the repeats by index (see :func:`merge_by_index`).
    A process with no example at all gets index 0 repeated.
    """
    share = shard_indices(num_examples, process_index, num_processes)
    longest = -(-int(num_examples) // int(num_processes))
    if not share:
        return [0] * longest if num_examples else []
    return share + [share[-1]] * (longest - len(share))


def merge_by_index(pairs: "Sequence[tuple[int, object]]", num_examples: int) -> list:
    """Values of ``(index, value)`` pairs gathered from every process, in index order, each index once.

    A missing index is an error (it would silently score fewer clips); a repeated one (the padding of
    :func:`padded_shard`) keeps its first value.
    """
    merged: dict[int, object] = {}
    for index, value in pairs:
        merged.setdefault(int(index), value)
    missing = [i for i in range(int(num_examples)) if i not in merged]
    if missing or len(merged) != num_examples:
        raise RuntimeError(f"gathered results miss {len(missing)} of {num_examples} example(s) (first: {missing[:5]})")
    return [merged[i] for i in range(int(num_examples))]


__all__ = [
    "EpochBatchSampler",
    "ReusableBatchSampler",
    "bucketed_order",
    "epoch_order",
    "merge_by_index",
    "micro_batches_per_epoch",
    "padded_shard",
    "shard_indices",
]
