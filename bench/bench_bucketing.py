"""Benchmark: padding saved by length-bucketed batches (``train.length_bucketing``) on real clip-length spreads.

Each process pads its micro-batch to its longest clip; the padded positions are computed and thrown
away by the encoder. This counts them for the training loop's own sampler
(:class:`enclap.training.sampling.EpochBatchSampler`), in random order and length-bucketed, for the
recipes' global batches on 1 and 8 processes.

The data: the real training manifests in ``../shared/data/captions/{clotho,audiocaps}/train.csv``
(their clips and captions per clip). They carry no durations, so each clip's duration is drawn from
the published spread: Clotho v2 clips are 15-30 s (Drossos et al., 2020: uniformly distributed
between 15 and 30 s); AudioCaps clips are AudioSet 10-s segments, some shorter where the source
video was. The share of shorter AudioCaps clips is not published: this benchmark assumes 5 %, uniform
over 1-10 s, and says so in its table. EnCodec 24 kHz gives 75 frames per second. The encoder window of
bart-base / bart-large (1021 codec frames, ~13.6 s) crops every longer clip, so the table gives the
padding both as the model sees the clips (cropped) and uncropped.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from enclap.training.sampling import EpochBatchSampler

FRAMES_PER_SECOND = 75
MAX_FRAMES = 1021  # max_position_embeddings 1024 - 3 (CLAP slot, <s>, </s>)
# ../shared/data/captions next to the repository (ENCLAP_SHARED_CAPTIONS overrides, e.g. from a git worktree)
CAPTIONS = Path(os.environ.get("ENCLAP_SHARED_CAPTIONS", Path(__file__).resolve().parents[2] / "shared" / "data" / "captions"))
AUDIOCAPS_SHORT_SHARE = 0.05  # assumption (not published): share of AudioCaps clips shorter than 10 s


def clips_of(manifest: Path) -> list[str]:
    """The clip of every training pair (one row per caption), in manifest order."""
    with open(manifest, newline="", encoding="utf-8") as fh:
        return [row["file_path"] for row in csv.DictReader(fh)]


def durations(name: str, clips: list[str], rng: np.random.Generator) -> dict[str, float]:
    unique = sorted(set(clips))
    if name == "clotho":
        seconds = rng.uniform(15.0, 30.0, size=len(unique))
    else:
        seconds = np.full(len(unique), 10.0)
        short = rng.random(len(unique)) < AUDIOCAPS_SHORT_SHARE
        seconds[short] = rng.uniform(1.0, 10.0, size=int(short.sum()))
    return dict(zip(unique, seconds))


def padding_share(lengths: np.ndarray, global_batch: int, processes: int, bucketing: bool, epochs: int = 2) -> float:
    """Padded share of the encoder positions of every process's micro-batches over ``epochs`` epochs."""
    padded = real = 0
    for epoch in range(epochs):
        for process in range(processes):
            sampler = EpochBatchSampler(
                len(lengths), global_batch, seed=1115, epoch=epoch, process_index=process, num_processes=processes,
                lengths=lengths if bucketing else None, step_batch_size=global_batch if bucketing else None,
            )
            for batch in sampler:
                part = lengths[[index for _, index in batch]]
                padded += int(part.max()) * len(part)
                real += int(part.sum())
    return 1.0 - real / padded


def main(quick: bool = False) -> str:
    rng = np.random.default_rng(0)
    lines = [
        "### Length-bucketed batches (`train.length_bucketing`)",
        "",
        "Share of the encoder's positions that are padding, over 2 epochs of the training sampler "
        "(bucket window 50 steps). Clips: the real training manifests; durations drawn from the published spreads "
        f"(Clotho 15-30 s uniform; AudioCaps 10 s, {AUDIOCAPS_SHORT_SHARE:.0%} of clips shorter, uniform 1-10 s: an assumption, "
        "no share is published). 75 EnCodec frames/s; the BART encoder window crops at 1021 frames.",
        "",
        "| data set (pairs) | global batch | processes | frames | padding, random order | padding, bucketed | positions saved |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, global_batch in (("clotho", 64), ("audiocaps", 16)):
        manifest = CAPTIONS / name / "train.csv"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: the real caption manifests are needed (../shared/data/captions)")
        clips = clips_of(manifest)
        if quick:
            clips = clips[:4000]
        seconds = durations(name, clips, rng)
        uncropped = np.array([round(seconds[c] * FRAMES_PER_SECOND) for c in clips])
        for label, lengths in (("cropped (as trained)", np.minimum(uncropped, MAX_FRAMES)), ("uncropped", uncropped)):
            for processes in (1, 8):
                plain = padding_share(lengths, global_batch, processes, False)
                bucketed = padding_share(lengths, global_batch, processes, True)
                saved = (plain - bucketed) / (1 - bucketed) if plain < 1 else 0.0  # fewer positions, relative to random order
                lines.append(
                    f"| {name} ({len(clips)}) | {global_batch} | {processes} | {label} | {plain:.1%} | {bucketed:.1%} | "
                    f"{saved:.1%} |"
                )
    lines += [
        "",
        "Positions saved = 1 - (positions bucketed / positions in random order). With the BART window, every Clotho "
        "clip is cropped to the same 1021 frames, so bucketing cannot save anything there; it pays on AudioCaps' short "
        "clips and on models with a longer window.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv))
