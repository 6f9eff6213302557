"""Tiny CLAP towers for the tests (random weights, built in a second)."""

from __future__ import annotations

from typing import Any

import torch

from enclap.clap.configuration import ClapTowerConfig
from enclap.clap.modeling import ClapTowerModel
from enclap.text import train_caption_tokenizer

CAPTIONS = ["a loud beep", "a dog barks twice", "rain on a roof", "a bell rings", "a faint hiss", "ticking fast"] * 3

TINY_ROBERTA = dict(model_type="roberta", vocab_size=320, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=40, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                    type_vocab_size=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TINY_HTSAT = dict(patch_embeds_hidden_size=8, depths=[2, 1], num_attention_heads=[1, 2], hidden_size=16, mlp_ratio=2.0,
                  drop_path_rate=0.0, hidden_dropout_prob=0.0)
TINY_CNN14 = dict(sample_rate=16000, window_size=256, hop_size=160, mel_bins=32, fmin=50, fmax=8000, classes_num=5, base_channels=2)


def tiny_tower(audio_encoder: str = "cnn14", *, seed: int = 0, fusion: bool = False, **overrides: Any) -> ClapTowerModel:
    torch.manual_seed(seed)
    audio = dict(TINY_HTSAT, enable_fusion=fusion) if audio_encoder == "htsat" else dict(TINY_CNN14)
    settings = dict(audio_encoder=audio_encoder, audio_config=audio, text_config=dict(TINY_ROBERTA), projection_dim=8,
                    clip_seconds=10.0 if audio_encoder == "htsat" else 1.0, max_text_length=32)
    settings.update(overrides)
    tower = ClapTowerModel(ClapTowerConfig(**settings)).eval()
    with torch.no_grad():  # stock init leaves biases / norms at constants: spread everything
        gen = torch.Generator().manual_seed(seed)
        for name, p in tower.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    tower.tokenizer = train_caption_tokenizer(CAPTIONS, vocab_size=300)
    return tower
