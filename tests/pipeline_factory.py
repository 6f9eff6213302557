"""A tiny, complete captioning checkpoint for pipeline, evaluation and CLI tests (random weights, no download)."""

from __future__ import annotations

from pathlib import Path

import torch

from enclap.model import EnClapBartConfig, EnClapBartForConditionalGeneration
from enclap.pipeline import CaptioningPipeline, PipelineSettings
from enclap.text import train_caption_tokenizer

from .features.factories import save_tiny_clap, save_tiny_encodec, tiny_feature_extractor

CAPTIONS = [
    "A dog barks while a car passes by.",
    "A siren wails in the distance.",
    "Birds chirp and a man speaks.",
    "Rain falls on a metal roof.",
    "A bell rings twice followed by a knock.",
    "Rapid ticking of a clock in a quiet room.",
] * 4


def tiny_enclap_config(vocab_size: int, *, max_position_embeddings: int = 128, d_clap: int = 512) -> EnClapBartConfig:
    return EnClapBartConfig(
        vocab_size=vocab_size,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=max_position_embeddings,
        d_clap=d_clap,
        num_rvq=16,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        # Larger random weights than BART's 0.02 make the untrained model's captions depend on its input.
        init_std=0.5,
    )


def build_tiny_checkpoint(directory: Path, *, seed: int = 0, max_position_embeddings: int = 128) -> Path:
    """Save model + tokenizer + pipeline.json, with tiny EnCodec / CLAP inside the checkpoint directory."""
    directory = Path(directory)
    save_tiny_encodec(directory / "encodec", seed)
    save_tiny_clap(directory / "clap", seed)
    tokenizer = train_caption_tokenizer(CAPTIONS, vocab_size=300)
    torch.manual_seed(seed)
    model = EnClapBartForConditionalGeneration(tiny_enclap_config(len(tokenizer), max_position_embeddings=max_position_embeddings))
    settings = PipelineSettings(encodec="encodec", clap="clap")
    CaptioningPipeline(model, tokenizer, None, settings=settings, device="cpu").save_pretrained(directory)
    return directory


__all__ = ["build_tiny_checkpoint", "tiny_enclap_config", "tiny_feature_extractor"]
