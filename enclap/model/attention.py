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

The kernel leans on one private torch function, ``torch._softmax_backward_data``, and on transformers'
attention-function calling convention. Neither is promised to last, so the first time the kernel would
run, :func:`blockwise_kernel_available` checks both once per process (the function exists, and the kernel
still equals :func:`reference_dropout_attention` in value and gradient and lines up with transformers'
SDPA function on a tiny input); if not, every call goes to plain SDPA and one warning says why. The
back end is registered through transformers' public ``AttentionInterface.register``; a transformers
without it makes :func:`register_enclap_attention` answer ``"sdpa"`` instead (same single warning).
What falling back costs is memory and time, not correctness: bench/RESULTS.md measures the kernel.
"""

from __future__ import annotations

import warnings

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


# Why the blockwise kernel is off in this process ("" when it works); None until first probed.
_kernel_problem: str | None = None
# The back end register_enclap_attention() settled on; None until it has run.
_registered_backend: str | None = None
_fallback_warned = False


def _warn_fallback(reason: str) -> None:
    """One warning per process, whichever check failed first."""
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"EnCLAP attention falls back to plain SDPA: {reason}; CPU training with attention dropout "
            "will use more memory and time",
            RuntimeWarning,
            stacklevel=3,
        )


def _self_test_problem() -> str | None:
    """Run the kernel on a tiny input against the formula and against transformers' SDPA function.

    Uses its own generator, so the default RNG (and with it every seeded run) is untouched.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    generator = torch.Generator().manual_seed(0)
    batch, heads, q_len, k_len, dim = 2, 2, 3, 5, 4
    q, k, v = (
        torch.randn(batch, heads, n, dim, dtype=torch.float64, generator=generator, requires_grad=True)
        for n in (q_len, k_len, k_len)
    )
    mask = torch.ones(batch, 1, q_len, k_len, dtype=torch.bool)
    mask[1, ..., -2:] = False
    bias = additive_bias(mask, torch.float64)
    p, scale, seed = 0.25, dim**-0.5, 12345
    keep = torch.empty(batch, heads, q_len, k_len, dtype=torch.bool)
    for index, (b, h0, h1) in enumerate(_blocks(batch, heads, q_len, k_len)):
        keep[b, h0:h1] = ~drop_mask((h1 - h0, q_len, k_len), seed + index, p)
    with torch.enable_grad():
        out = BlockwiseDropoutAttention.apply(q, k, v, bias, p, scale, seed)
        expected = reference_dropout_attention(q, k, v, bias, keep, p, scale)
        grad_out = torch.randn(out.shape, dtype=torch.float64, generator=generator)
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
        expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
    if not all(torch.allclose(a, b, rtol=0, atol=1e-10) for a, b in zip((out, *grads), (expected, *expected_grads))):
        return f"with torch {torch.__version__} the blockwise kernel no longer equals the attention formula"
    with torch.no_grad():
        module = torch.nn.Module()
        module.is_causal = False
        theirs = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=scale, is_causal=False)[0]
        ours = BlockwiseDropoutAttention.apply(q, k, v, bias, 0.0, scale, seed).transpose(1, 2)
    if theirs.shape != ours.shape or not torch.allclose(theirs, ours, rtol=0, atol=1e-10):
        return "transformers' SDPA attention function no longer has the layout or mask convention the kernel assumes"
    return None


def blockwise_kernel_available() -> bool:
    """Whether the blockwise kernel can be trusted with this torch and transformers; checked once per process.

    Called on the kernel's first use, not at import. False (with one warning) when
    ``torch._softmax_backward_data`` is gone, or the kernel's self-test fails in any way.
    """
    global _kernel_problem
    if _kernel_problem is None:
        if not callable(getattr(torch, "_softmax_backward_data", None)):
            problem = f"torch {torch.__version__} has no torch._softmax_backward_data"
        else:
            try:
                problem = _self_test_problem()
            except Exception as err:  # a changed private API can fail in any way: none of them is ours to fix
                problem = f"the blockwise kernel's self-test failed ({type(err).__name__}: {err})"
        _kernel_problem = problem or ""
        if problem:
            _warn_fallback(problem)
    return not _kernel_problem


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

    if not (_uses_blockwise(module, query, key, attention_mask, dropout, is_causal, kwargs) and blockwise_kernel_available()):
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
    """Register the back end (and SDPA's mask format for it) with transformers, once; returns the back end to use.

    That is :data:`ENCLAP_ATTENTION`, or ``"sdpa"`` (with one warning) when this transformers has no public
    ``AttentionInterface.register`` / ``AttentionMaskInterface.register`` to add it with.
    """
    global _registered_backend
    if _registered_backend is None:
        try:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

            AttentionInterface.register(ENCLAP_ATTENTION, enclap_attention_forward)
            AttentionMaskInterface.register(ENCLAP_ATTENTION, sdpa_mask)
            _registered_backend = ENCLAP_ATTENTION
        except (ImportError, AttributeError, TypeError) as err:
            import transformers

            _warn_fallback(
                f"transformers {transformers.__version__} cannot register an attention function "
                f"({type(err).__name__}: {err})"
            )
            _registered_backend = "sdpa"
    return _registered_backend
