"""Captioning throughput of the pipeline from features: batched vs one clip at a time, and long-clip modes.

The reference evaluates one clip at a time; the pipeline sorts clips by length and batches them. This
measures both on the same model and clips in one run, and the cost of ``long_audio="windows"`` (caption
every window of a 30 s clip and pick the most likely candidate) against ``"truncate"`` (the reference:
first 13.6 s only). The model is random-initialised (no checkpoint can be downloaded here), so every
caption runs to ``max_length``: the worst case for generation time. Features are random codes and
embeddings of realistic shape; audio-model time is measured in bench_features.
"""

from __future__ import annotations

import time

import numpy as np


def _pipeline(d_model: int, layers: int, batch_size: int, long_audio: str = "truncate"):
    import torch

    from enclap.model import EnClapBartConfig, EnClapBartForConditionalGeneration
    from enclap.pipeline import CaptioningPipeline, PipelineSettings
    from enclap.text import train_caption_tokenizer

    words = "a dog barks while a car passes by and birds chirp in the distance as rain falls on a roof".split()
    rng = np.random.default_rng(0)
    captions = [" ".join(rng.choice(words, size=8)) for _ in range(200)]
    tokenizer = train_caption_tokenizer(captions, vocab_size=400)
    config = EnClapBartConfig(
        vocab_size=len(tokenizer), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=max(1, d_model // 64), decoder_attention_heads=max(1, d_model // 64),
        encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, max_position_embeddings=1024,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(config)
    with torch.no_grad():
        model.final_logits_bias[0, 2] = -1e4  # never end early: every caption costs max_length steps
    settings = PipelineSettings(long_audio=long_audio)
    return CaptioningPipeline(model, tokenizer, None, settings=settings, device="cpu", batch_size=batch_size)


def _clips(count: int, frames: int, seed: int = 0):
    from enclap.features.extractor import ClipFeatures

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        clap = rng.standard_normal(512).astype(np.float32)
        out.append(ClipFeatures(codes=rng.integers(0, 1024, (frames, 16)).astype(np.int16), clap=clap / np.linalg.norm(clap)))
    return out


def _time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(quick: bool = False) -> str:
    import torch

    from enclap.model import window_starts

    d_model, layers = (64, 1) if quick else (256, 3)
    n_clips, max_length = (4, 10) if quick else (32, 30)
    clips = _clips(n_clips, frames=750)  # 10 s at 75 frames/s

    batched = _pipeline(d_model, layers, batch_size=16)
    single = _pipeline(d_model, layers, batch_size=1)
    for p in (batched, single):
        p.settings.generation.max_length = max_length
    _ = batched.caption_features(clips[:2])  # warm-up
    t_single = _time(lambda: single.caption_features(clips))
    t_batched = _time(lambda: batched.caption_features(clips))
    same = single.caption_features(clips[:4]) == batched.caption_features(clips[:4])

    long_clips = _clips(2 if quick else 6, frames=2250, seed=1)  # 30 s
    truncate = _pipeline(d_model, layers, batch_size=8)
    windows = _pipeline(d_model, layers, batch_size=8, long_audio="windows")
    for p in (truncate, windows):
        p.settings.generation.max_length = max_length
    t_truncate = _time(lambda: truncate.caption_features(long_clips))
    t_windows = _time(lambda: windows.caption_features(long_clips))
    n_windows = len(window_starts(2250, truncate.max_frames, truncate.max_frames // 2))

    return "\n".join(
        [
            "### Captioning pipeline (from features)",
            "",
            f"Random model d_model {d_model}, {layers}+{layers} layers, beam 4, {max_length} tokens per caption "
            f"(no early end), CPU, torch threads {torch.get_num_threads()}.",
            "",
            "| case | clips | seconds | clips/s | ratio |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| one clip at a time (the reference's way), 10 s clips | {n_clips} | {t_single:.2f} | {n_clips / t_single:.2f} | 1.00 |",
            f"| batched (batch 16, sorted by length), 10 s clips | {n_clips} | {t_batched:.2f} | {n_clips / t_batched:.2f} | "
            f"{t_single / t_batched:.2f}x faster |",
            f"| 30 s clips, long_audio=truncate (first 13.6 s) | {len(long_clips)} | {t_truncate:.2f} | "
            f"{len(long_clips) / t_truncate:.2f} | 1.00 |",
            f"| 30 s clips, long_audio=windows ({n_windows} windows + rescoring) | {len(long_clips)} | {t_windows:.2f} | "
            f"{len(long_clips) / t_windows:.2f} | {t_windows / t_truncate:.2f}x the time |",
            "",
            f"Batched and one-at-a-time captions identical: {same}. Caption quality of the two long-clip modes needs a "
            "trained model and is not measured here.",
        ]
    )


if __name__ == "__main__":
    print(main())
