"""Tiny configs, synthetic batches and an independent, straightforward EnCLAP forward for the model tests.

``straightforward_forward`` recomputes the whole model from its parameters, written directly from
the formulas of the spec: a loop over codebooks (one ``nn.Embedding``-style lookup per table, pad rows
excluded from gradients as ``padding_idx`` does), an explicit right shift of the positions, hand-written
post-LayerNorm BART layers with masked softmax attention, the tied LM head, label-smoothed
cross-entropy and MCM heads applied to every position. It never calls the model's modules.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from enclap.model import EnClapBartConfig, EnClapBartForConditionalGeneration

TINY = dict(
    vocab_size=100,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    max_position_embeddings=64,
    d_clap=16,
    num_rvq=4,
    dropout=0.1,
)


def tiny_config(**overrides) -> EnClapBartConfig:
    return EnClapBartConfig(**{**TINY, **overrides})


def tiny_model(seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> EnClapBartForConditionalGeneration:
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    config._attn_implementation = attn_implementation
    model = EnClapBartForConditionalGeneration(config)
    # Random init leaves final_logits_bias at zero; make it matter in the comparisons.
    with torch.no_grad():
        model.final_logits_bias.normal_(0, 0.5)
    return model.eval()


def random_clip_codes(rng: np.random.Generator, frames: int, num_rvq: int = 4, vocab: int = 1024) -> np.ndarray:
    return rng.integers(0, vocab, size=(frames, num_rvq), dtype=np.int64)


def hand_built_batch(clip_codes: list[np.ndarray], bos: int = 0, eos: int = 2, pad: int = 1024):
    """The reference layout written out by hand (independent of ``build_encoder_inputs``)."""
    length = max(len(c) for c in clip_codes) + 3
    num_rvq = clip_codes[0].shape[1]
    input_ids = torch.full((len(clip_codes), length, num_rvq), pad, dtype=torch.long)
    encodec_mask = torch.ones(len(clip_codes), length, dtype=torch.long)
    attention_mask = torch.zeros(len(clip_codes), length, dtype=torch.long)
    for b, codes in enumerate(clip_codes):
        t = len(codes)
        seq = [[bos] * num_rvq, [bos] * num_rvq] + codes.tolist() + [[eos] * num_rvq]
        input_ids[b, : t + 3] = torch.tensor(seq)
        encodec_mask[b, : t + 3] = torch.tensor([0, 0] + [1] * t + [0])
        attention_mask[b, : t + 3] = 1
    return input_ids, encodec_mask, attention_mask


def _linear(x, sd, name):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _layer_norm(x, sd, name):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _attention(x_q, x_kv, sd, name, heads, key_mask, causal=False):
    """Multi-head attention; ``key_mask`` (B, Lk) True where a key may be attended to."""
    batch, len_q, dim = x_q.shape
    len_k = x_kv.shape[1]
    head_dim = dim // heads
    q = _linear(x_q, sd, f"{name}.q_proj").view(batch, len_q, heads, head_dim).transpose(1, 2)
    k = _linear(x_kv, sd, f"{name}.k_proj").view(batch, len_k, heads, head_dim).transpose(1, 2)
    v = _linear(x_kv, sd, f"{name}.v_proj").view(batch, len_k, heads, head_dim).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
    allowed = key_mask[:, None, None, :].expand(batch, 1, len_q, len_k)
    if causal:
        allowed = allowed & torch.ones(len_q, len_k, dtype=torch.bool).tril()
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = scores.softmax(-1) @ v
    out = out.transpose(1, 2).reshape(batch, len_q, dim)
    return _linear(out, sd, f"{name}.out_proj")


def _ffn(x, sd, name):
    return _linear(F.gelu(_linear(x, sd, f"{name}.fc1")), sd, f"{name}.fc2")


def straightforward_encoder_embeddings(params, config, input_ids, encodec_mask, clap):
    """Inputs embeddings (before positions): codebook loop, BART tokens, CLAP slot at position 0."""
    pad = config.encodec_pad_token_id
    is_codec = encodec_mask > 0
    codec_ids = torch.where(is_codec.unsqueeze(-1), input_ids, 0)
    codec = 0
    for i in range(config.num_rvq):  # one table per codebook, summed
        codec = codec + F.embedding(codec_ids[..., i], params[f"model.encoder.embed_encodec.{i}.weight"], padding_idx=pad)
    bart_ids = torch.where(is_codec, 0, input_ids[..., 0])
    bart = F.embedding(bart_ids, params["model.shared.weight"], padding_idx=config.pad_token_id)  # no embed_scale
    embeds = torch.where(is_codec.unsqueeze(-1), codec, bart)
    clap_slot = _linear(clap, params, "model.encoder.clap_projection")
    return torch.cat([clap_slot.unsqueeze(1), embeds[:, 1:]], dim=1)


def straightforward_encoder(params, config, input_ids, encodec_mask, attention_mask, clap):
    embeds = straightforward_encoder_embeddings(params, config, input_ids, encodec_mask, clap)
    batch, length, dim = embeds.shape
    table = params["model.encoder.embed_positions.weight"]
    positions = []
    for t in range(length):
        # Slot 0 (CLAP) has no position; slot t gets BART position t-1, stored at row (t-1) + 2.
        positions.append(torch.zeros(dim) if t == 0 else table[(t - 1) + 2])
    h = embeds + torch.stack(positions)
    h = _layer_norm(h, params, "model.encoder.layernorm_embedding")
    key_mask = attention_mask.bool()
    for layer in range(config.encoder_layers):
        name = f"model.encoder.layers.{layer}"
        h = _layer_norm(h + _attention(h, h, params, f"{name}.self_attn", config.encoder_attention_heads, key_mask), params, f"{name}.self_attn_layer_norm")
        h = _layer_norm(h + _ffn(h, params, name), params, f"{name}.final_layer_norm")
    return h


def straightforward_decoder_logits(params, config, decoder_input_ids, encoder_hidden, attention_mask):
    scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
    length = decoder_input_ids.shape[1]
    h = params["model.shared.weight"][decoder_input_ids] * scale
    h = h + params["model.decoder.embed_positions.weight"][torch.arange(length) + 2]
    h = _layer_norm(h, params, "model.decoder.layernorm_embedding")
    self_keys = torch.ones(decoder_input_ids.shape, dtype=torch.bool)
    for layer in range(config.decoder_layers):
        name = f"model.decoder.layers.{layer}"
        h = _layer_norm(h + _attention(h, h, params, f"{name}.self_attn", config.decoder_attention_heads, self_keys, causal=True), params, f"{name}.self_attn_layer_norm")
        h = _layer_norm(h + _attention(h, encoder_hidden, params, f"{name}.encoder_attn", config.decoder_attention_heads, attention_mask.bool()), params, f"{name}.encoder_attn_layer_norm")
        h = _layer_norm(h + _ffn(h, params, name), params, f"{name}.final_layer_norm")
    return h @ params["model.shared.weight"].T + params["final_logits_bias"]


def smoothed_cross_entropy(logits, labels, smoothing):
    """Mean over non -100 labels of (1-e) * NLL + e * mean over classes of -log p."""
    logp = logits.reshape(-1, logits.shape[-1]).log_softmax(-1)
    labels = labels.reshape(-1)
    total, count = 0.0, 0
    for row, label in zip(logp, labels):
        if label == -100:
            continue
        total = total + (1 - smoothing) * -row[label] + smoothing * -row.mean()
        count += 1
    return total / count


def straightforward_mcm(params, config, encoder_hidden, mcm_labels):
    """Every position through every head; CE over labelled positions; codebook i weighted 1/2**(i+1)."""
    total = 0.0
    for i in range(config.num_rvq):
        logits = _linear(encoder_hidden, params, f"mcm_heads.{i}")
        logp = logits.log_softmax(-1)
        labels = mcm_labels[..., i]
        picked = [-logp[b, t, labels[b, t]] for b in range(labels.shape[0]) for t in range(labels.shape[1]) if labels[b, t] != -100]
        if picked:
            total = total + torch.stack(picked).mean() / 2 ** (i + 1)
    return total


def straightforward_forward(model, input_ids, encodec_mask, attention_mask, clap, labels=None, mcm_labels=None, detach=True):
    """Everything the model returns, recomputed from its parameters (dict of tensors)."""
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    if detach:
        params = {k: v.detach() for k, v in params.items()}
    config = model.config
    enc = straightforward_encoder(params, config, input_ids, encodec_mask, attention_mask, clap)
    out = {"encoder_last_hidden_state": enc}
    if labels is not None:
        decoder_input_ids = torch.full_like(labels, config.decoder_start_token_id)
        decoder_input_ids[:, 1:] = labels[:, :-1]
        decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == -100, config.pad_token_id)
        logits = straightforward_decoder_logits(params, config, decoder_input_ids, enc, attention_mask)
        out["logits"] = logits
        out["lm_loss"] = smoothed_cross_entropy(logits, labels, config.label_smoothing)
    if mcm_labels is not None:
        out["mcm_loss_unscaled"] = straightforward_mcm(params, config, enc, mcm_labels)
    return out
