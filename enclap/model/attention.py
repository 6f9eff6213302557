"""Attention back end of the captioner: SDPA, plus a blockwise kernel for CPU training with dropout.

BART applies dropout to the attention probabilities (``attention_dropout`` 0.1 in BART-base and in
the released EnCLAP configs). PyTorch's fused CPU attention kernel has no dropout, so with dropout
on, SDPA falls back to its unfused math path: every layer writes and re-reads several
``batch × heads × T × T`` tensors (scores, probabilities, dropped probabilities, the dropout mask;
about 27 M elements each at batch 4 × 755 positions) and draws the mask with ``bernoulli_``. That
traffic, not arithmetic, is most of a CPU training step.

:class:`BlockwiseDropoutAttention` computes the same function one head (or a few small heads) at a
time, so each ``T × T`` block stays in cache, and keeps nothing of size ``T × T`` for the backward
pass: it recomputes the scores there and regenerates the dropout mask from per-block seeds drawn
from torch's default generator (so ``torch.manual_seed`` and Accelerate's RNG checkpointing make
runs reproducible). The result is the standard attention with dropout,
``softmax(Q Kᵀ · scale + bias) ⊙ M / (1 - p) · V`` with ``M ~ Bernoulli(1 - p)``, exactly as
:func:`reference_dropout_attention` writes it out.

Everything else (eval, no dropout, CUDA, reduced precision, causal self-attention) goes to
transformers' SDPA function unchanged, so inference numerics are SDPA's.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

# The name under which the back end is registered with transformers' attention / mask interfaces.
ENCLAP_ATTENTION = "enclap_sdpa"

# Blocks of about this many score elements (2 MiB of float32) are processed at once: big enough to
# amortise Python overhead for short sequences, small enough to stay in a core's cache.
_BLOCK_ELEMENTS = 1 << 19
# Dropout keeps an element when a uniform 31-bit integer is >= p * 2**31 (a resolution of 2**-31;
# bernoulli_ on float32 compares a 24-bit uniform).
_RANDOM_RANGE = 1 << 31


def drop_mask(shape: tuple[int, ...], seed: int, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The dropout mask of one block: ``True`` (dropped) with probability ``p``, a pure function of ``seed``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    draws = torch.empty(shape, dtype=torch.int32, device=device).random_(generator=generator)
    return draws < int(round(p * _RANDOM_RANGE))


def _blocks(batch: int, heads: int, q_len: int, k_len: int) -> list[tuple[int, int, int]]:
    """(batch index, first head, end head) of each block; a block never spans two batch items."""
    per_block = max(1, min(heads, _BLOCK_ELEMENTS // max(1, q_len * k_len)))
    return [(b, h, min(h + per_block, heads)) for b in range(batch) for h in range(0, heads, per_block)]


def _block_probabilities(q, k, bias, scale: float) -> torch.Tensor:
    """softmax(q kᵀ · scale + bias) for one block: q (g, Tq, D), k (g, Tk, D), bias (1|g, Tq|1, Tk) or None."""
    scores = torch.bmm(q, k.transpose(1, 2))
    scores.mul_(scale)
    if bias is not None:
        scores.add_(bias)
    return torch.softmax(scores, dim=-1)


class BlockwiseDropoutAttention(torch.autograd.Function):
    """Attention with dropout on the probabilities, block by block, recomputing in the backward pass.

    ``forward(q, k, v, bias, p, scale, seed)``: q ``(B, H, Tq, D)``, k / v ``(B, H, Tk, D)``, bias an
    additive float mask broadcastable to ``(B, H, Tq, Tk)`` with a batch dimension of 1 or B and a
    head dimension of 1 or H, or None; returns ``(B, H, Tq, D)``. Block ``i`` of :func:`_blocks` uses
    ``~drop_mask(block shape, seed + i, p)`` as its keep-mask.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, p: float, scale: float, seed: int):  # type: ignore[override]
        batch, heads, q_len, _ = q.shape
        out = torch.empty_like(q)
        for index, (b, h0, h1) in enumerate(_blocks(batch, heads, q_len, k.shape[2])):
            probs = _block_probabilities(q[b, h0:h1], k[b, h0:h1], _bias_block(bias, b, h0, h1), scale)
            probs.masked_fill_(drop_mask(probs.shape, seed + index, p, probs.device), 0.0)
            torch.bmm(probs, v[b, h0:h1], out=out[b, h0:h1])
        out.mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(q, k, v, bias)
        ctx.p, ctx.scale, ctx.seed = p, scale, seed
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, bias = ctx.saved_tensors
        p, scale, seed = ctx.p, ctx.scale, ctx.seed
        batch, heads, q_len, _ = q.shape
        grad_out = grad_out.contiguous()
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for index, (b, h0, h1) in enumerate(_blocks(batch, heads, q_len, k.shape[2])):
            qb, kb, vb, gb = q[b, h0:h1], k[b, h0:h1], v[b, h0:h1], grad_out[b, h0:h1]
            probs = _block_probabilities(qb, kb, _bias_block(bias, b, h0, h1), scale)
            dropped = drop_mask(probs.shape, seed + index, p, probs.device)
            # out = (probs ⊙ keep) v / (1 - p): the 1 / (1 - p) factor is applied once at the end.
            torch.bmm(probs.masked_fill(dropped, 0.0).transpose(1, 2), gb, out=grad_v[b, h0:h1])
            grad_probs = torch.bmm(gb, vb.transpose(1, 2))
            grad_probs.masked_fill_(dropped, 0.0)
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
            torch.bmm(grad_scores, kb, out=grad_q[b, h0:h1])
            torch.bmm(grad_scores.transpose(1, 2), qb, out=grad_k[b, h0:h1])
        inverse_keep = 1.0 / (1.0 - p)
        grad_v.mul_(inverse_keep)
        grad_q.mul_(scale * inverse_keep)
        grad_k.mul_(scale * inverse_keep)
        return grad_q, grad_k, grad_v, None, None, None, None


def _bias_block(bias: torch.Tensor | None, b: int, h0: int, h1: int) -> torch.Tensor | None:
    if bias is None:
        return None
    rows = bias[b if bias.shape[0] > 1 else 0]
    return rows[h0:h1] if rows.shape[0] > 1 else rows


def additive_bias(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """SDPA's mask convention (bool: True = attend; float: added to the scores) as an additive float mask."""
    if attention_mask is None:
        return None
    if attention_mask.dtype == torch.bool:
        bias = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
        return bias.masked_fill_(~attention_mask, torch.finfo(dtype).min)
    return attention_mask.to(dtype)


def reference_dropout_attention(q, k, v, bias, keep: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """The textbook formula with an explicit keep-mask ``(B, H, Tq, Tk)``: what the blockwise kernel computes."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores, dim=-1) * keep / (1.0 - p), v)


def _uses_blockwise(module, query, key, attention_mask, dropout: float, is_causal: bool | None, kwargs: dict) -> bool:
    if dropout <= 0.0 or query.device.type != "cpu" or query.dtype not in (torch.float32, torch.float64):
        return False
    if query.shape[1] != key.shape[1] or attention_mask is not None and attention_mask.requires_grad:
        return False  # grouped-query attention / a learned bias: not BART's case, leave it to SDPA
    if any(kwargs.get(name) is not None for name in ("softcap", "position_bias", "cache", "sliding_window")):
        return False
    if kwargs.get("output_attentions"):
        return False
    # The same causality rule as transformers' SDPA function: an unmasked multi-token query of a
    # causal module attends causally. The decoder's short self-attention stays with SDPA.
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return not (query.shape[2] > 1 and attention_mask is None and causal)


def enclap_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: the blockwise kernel for CPU training with dropout, else SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _uses_blockwise(module, query, key, attention_mask, dropout, is_causal, kwargs):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    # One draw from the default generator per call: seeded runs and resumed runs see the same masks.
    seed = int(torch.randint(0, 1 << 62, (), dtype=torch.int64))
    bias = additive_bias(attention_mask, query.dtype)
    out = BlockwiseDropoutAttention.apply(
        query.contiguous(), key.contiguous(), value.contiguous(), bias, float(dropout), float(scale), seed
    )
    return out.transpose(1, 2).contiguous(), None


def register_enclap_attention() -> str:
    """Register the back end (and SDPA's mask format for it) with transformers; idempotent. Returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ENCLAP_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ENCLAP_ATTENTION, enclap_attention_forward)
        AttentionMaskInterface.register(ENCLAP_ATTENTION, sdpa_mask)
    return ENCLAP_ATTENTION
