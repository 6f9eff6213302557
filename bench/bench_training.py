"""Training input pipeline and step: can data loading keep up, and what does the loop's loss form cost?

Measured in one run on the same data and weights:

* the data path (feature store read, random crop, MCM span masking, collation through
  ``build_encoder_inputs``) in examples per second, in the main process and with 2 DataLoader workers;
* one training step (forward + backward, batch 8 of 10 s clips) with the model's own mean loss
  (``model(**batch).loss``, what the reference backpropagates) and with the loop's loss-term sums
  (:class:`~enclap.training.captioner.CaptionerLossModule`, normalised by the counts), to show the
  exact-accumulation form costs nothing measurable;
* the ratio of data throughput to training throughput (how many times faster the data path is than
  the model consumes examples).

The model is random-initialised and smaller than BART-base (no checkpoint can be downloaded here);
features are random codes / embeddings of the real shapes (16 codebooks, 512-d CLAP, 750 frames).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def _store(root: Path, clips: int, frames: int) -> Path:
    from enclap.features.extractor import ClipFeatures
    from enclap.features.store import ShardWriter

    rng = np.random.default_rng(0)
    with ShardWriter(root, shard_size=256) as writer:
        for i in range(clips):
            clap = rng.standard_normal(512).astype(np.float32)
            writer.add(f"train/c{i}", ClipFeatures(codes=rng.integers(0, 1024, (frames, 16)).astype(np.int16), clap=clap / np.linalg.norm(clap)))
    return root


def _dataset(root: Path, clips: int):
    from enclap.data.dataset import CaptionPairDataset, encode_captions
    from enclap.features.store import open_feature_store
    from enclap.text import train_caption_tokenizer

    words = "a dog barks while a car passes by and birds chirp in the distance as rain falls on a roof".split()
    rng = np.random.default_rng(1)
    captions = [" ".join(rng.choice(words, size=10)) for _ in range(clips * 5)]
    tokenizer = train_caption_tokenizer(captions, vocab_size=400)
    pairs = [(f"train/c{i // 5}.npy", caption) for i, caption in enumerate(captions)]
    dataset = CaptionPairDataset(
        pairs, encode_captions(tokenizer, captions, 128), open_feature_store(root),
        max_frames=1021, mask_prob=0.15, mask_span=10, seed=0, train=True,
    )
    return dataset, tokenizer


def _data_rate(dataset, workers: int, batches: int, batch_size: int) -> float:
    from torch.utils.data import DataLoader

    from enclap.data.dataset import CaptionCollator

    order = [[(0, (b * batch_size + i) % len(dataset)) for i in range(batch_size)] for b in range(batches)]
    loader = DataLoader(dataset, batch_sampler=order, collate_fn=CaptionCollator(1021), num_workers=workers)
    started = time.perf_counter()
    for _ in loader:
        pass
    return batches * batch_size / (time.perf_counter() - started)


def _step_times(dataset, tokenizer, d_model: int, layers: int, repeats: int) -> tuple[float, float]:
    """Seconds per forward+backward of batch 8: (the model's own loss, the loop's loss sums)."""
    import torch

    from enclap.data.dataset import CaptionCollator
    from enclap.model import EnClapBartConfig, EnClapBartForConditionalGeneration
    from enclap.training.captioner import CaptionerLossModule, caption_batch_counts, captioner_loss_terms

    config = EnClapBartConfig(
        vocab_size=len(tokenizer), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=max(1, d_model // 64), decoder_attention_heads=max(1, d_model // 64),
        encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, max_position_embeddings=1024, d_clap=512,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(config).train()
    module = CaptionerLossModule(model)
    batch = CaptionCollator(1021)([dataset[(0, i)] for i in range(8)])
    inputs = {k: batch[k] for k in ("input_ids", "encodec_mask", "attention_mask", "clap_embedding", "labels", "mcm_labels")}
    weights = torch.tensor(captioner_loss_terms(config).weights)
    scale = weights / caption_batch_counts(batch).float().clamp(min=1)

    def own() -> None:
        model(**inputs).loss.backward()

    def sums() -> None:
        (module(**inputs) * scale).sum().backward()

    for fn in (own, sums):  # warm-up
        fn()
    times = {own: [], sums: []}
    for _ in range(repeats):
        for fn in (own, sums):  # interleaved, so machine noise hits both alike
            model.zero_grad(set_to_none=True)
            started = time.process_time()
            fn()
            times[fn].append(time.process_time() - started)
    return float(np.median(times[own])), float(np.median(times[sums]))


def main(quick: bool = False) -> str:
    import torch

    from enclap.allocator import retain_freed_memory

    retain_freed_memory()  # a benchmark's process is ours: time the steps as the training command runs them
    clips, frames = (16, 750) if quick else (128, 750)
    batches, batch_size = (4, 16) if quick else (12, 64)
    d_model, layers, repeats = (64, 1, 3) if quick else (256, 3, 7)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one training process per core, as a launcher runs them
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = _store(Path(tmp) / "store", clips, frames)
            dataset, tokenizer = _dataset(root, clips)
            _data_rate(dataset, 0, 1, batch_size)  # warm the page cache and imports
            inline = _data_rate(dataset, 0, batches, batch_size)
            workers = _data_rate(dataset, 2, batches, batch_size)
            t_own, t_sums = _step_times(dataset, tokenizer, d_model, layers, repeats)
    finally:
        torch.set_num_threads(previous_threads)
    train_rate = 8 / t_sums
    return "\n".join(
        [
            "### Training: data path and step",
            "",
            "| measurement | value |",
            "| --- | --- |",
            f"| data path, main process (examples/s) | {inline:.0f} |",
            f"| data path, 2 DataLoader workers (examples/s) | {workers:.0f} |",
            f"| workers / main process | {workers / inline:.2f}x |",
            f"| training step, model's own loss (s per batch of 8, CPU time) | {t_own:.3f} |",
            f"| training step, loop's loss-term sums (s per batch of 8, CPU time) | {t_sums:.3f} |",
            f"| loss sums / own loss | {t_sums / t_own:.3f}x |",
            f"| data path (main process) / training consumption | {inline / train_rate:.0f}x |",
            "",
            f"Measured: {batches} batches of {batch_size} examples (10 s clips, 16 codebooks, 512-d CLAP, crop + MCM "
            f"masking + collation) read from a sharded store; forward+backward of a random d_model={d_model}, "
            f"{layers}+{layers}-layer captioner on a batch of 8, median of {repeats} interleaved repeats, one torch thread. "
            "Worker start-up is included in the 2-worker figure.",
        ]
    )


if __name__ == "__main__":
    print(main())
