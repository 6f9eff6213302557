"""The attention back end: the blockwise CPU dropout kernel equals the textbook formula, and dispatch."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from enclap.model import attention
from enclap.model import EnClapBartConfig, EnClapBartForConditionalGeneration, build_encoder_inputs
from enclap.model.attention import (
    ENCLAP_ATTENTION,
    BlockwiseDropoutAttention,
    _blocks,
    additive_bias,
    enclap_attention_forward,
    drop_mask,
    reference_dropout_attention,
)


def full_keep_mask(batch: int, heads: int, q_len: int, k_len: int, seed: int, p: float) -> torch.Tensor:
    """The (B, H, Tq, Tk) keep-mask the kernel uses, assembled block by block from its documented seeds."""
    keep = torch.empty(batch, heads, q_len, k_len, dtype=torch.bool)
    for index, (b, h0, h1) in enumerate(_blocks(batch, heads, q_len, k_len)):
        keep[b, h0:h1] = ~drop_mask((h1 - h0, q_len, k_len), seed + index, p)
    return keep


def padding_mask(lengths: list[int], q_len: int, k_len: int) -> torch.Tensor:
    """SDPA's bool convention (True = attend), (B, 1, Tq, Tk): keys past each item's length are masked."""
    keys = torch.arange(k_len)[None, :] < torch.tensor(lengths)[:, None]
    return keys[:, None, None, :].expand(len(lengths), 1, q_len, k_len)


@pytest.mark.parametrize(
    "batch, heads, q_len, k_len, head_dim",
    [(2, 3, 40, 40, 8), (3, 4, 5, 70, 16), (1, 2, 1, 9, 4)],  # one head per block; several heads per block; one query
)
@pytest.mark.parametrize("masked", [False, True])
def test_forward_and_gradients_equal_the_formula(batch, heads, q_len, k_len, head_dim, masked):
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, heads, n, head_dim, dtype=torch.float64, requires_grad=True) for n in (q_len, k_len, k_len))
    lengths = [k_len - 3 * i for i in range(batch)]
    bias = additive_bias(padding_mask(lengths, q_len, k_len), torch.float64) if masked else None
    p, scale, seed = 0.3, head_dim**-0.5, 1234
    out = BlockwiseDropoutAttention.apply(q, k, v, bias, p, scale, seed)
    keep = full_keep_mask(batch, heads, q_len, k_len, seed, p)
    expected = reference_dropout_attention(q, k, v, bias, keep, p, scale)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)

    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_gradcheck():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, n, 4, dtype=torch.float64, requires_grad=True) for n in (6, 7, 7))
    bias = additive_bias(padding_mask([7, 5], 6, 7), torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: BlockwiseDropoutAttention.apply(a, b, c, bias, 0.25, 0.5, 99), (q, k, v))


def test_keep_mask_statistics_and_determinism():
    p = 0.1
    keep = ~drop_mask((200, 1000), seed=7, p=p)
    n = keep.numel()
    kept = keep.float().mean().item()
    # Binomial(n, 0.9): standard deviation sqrt(p (1-p) / n) ~ 6.7e-4; 6 sigmas.
    assert abs(kept - (1 - p)) < 6 * (p * (1 - p) / n) ** 0.5
    assert torch.equal(keep, ~drop_mask((200, 1000), seed=7, p=p))
    assert not torch.equal(keep, ~drop_mask((200, 1000), seed=8, p=p))
    assert not drop_mask((10, 10), seed=1, p=0.0).any()
    # Independent elements: neighbouring draws do not agree more often than chance.
    agree = (keep[:, 1:] == keep[:, :-1]).float().mean().item()
    assert abs(agree - ((1 - p) ** 2 + p**2)) < 0.005


def test_additive_bias():
    mask = torch.tensor([[[[True, True, False]]]])
    bias = additive_bias(mask, torch.float32)
    assert bias[0, 0, 0, :2].eq(0).all() and bias[0, 0, 0, 2] == torch.finfo(torch.float32).min
    float_mask = torch.tensor([[[[0.0, -5.0]]]])
    assert torch.equal(additive_bias(float_mask, torch.float32), float_mask)
    assert additive_bias(None, torch.float32) is None


class _Module(torch.nn.Module):
    is_causal = False


def test_dispatch_without_dropout_is_sdpa_exactly():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 3, 20, 8) for _ in range(3))
    mask = padding_mask([20, 14], 20, 20)
    out, _ = enclap_attention_forward(_Module(), q, k, v, mask, dropout=0.0, scaling=0.25)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25).transpose(1, 2)
    assert torch.equal(out, expected)


def test_dispatch_with_dropout_is_seeded_and_unbiased():
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    mask = padding_mask([12], 16, 16)
    torch.manual_seed(10)
    first, _ = enclap_attention_forward(_Module(), q, k, v, mask, dropout=0.2, scaling=0.3)
    torch.manual_seed(10)
    again, _ = enclap_attention_forward(_Module(), q, k, v, mask, dropout=0.2, scaling=0.3)
    other, _ = enclap_attention_forward(_Module(), q, k, v, mask, dropout=0.2, scaling=0.3)
    assert torch.equal(first, again) and not torch.equal(first, other)
    # Inverted dropout keeps the expectation: the mean over many draws approaches the no-dropout output.
    mean = torch.stack([enclap_attention_forward(_Module(), q, k, v, mask, dropout=0.2, scaling=0.3)[0] for _ in range(400)]).mean(0)
    clean = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3).transpose(1, 2)
    assert (mean - clean).abs().max() < 0.1
    assert (first - clean).abs().max() > 0.1  # a single draw does differ


def test_causal_self_attention_goes_to_sdpa():
    """The decoder's unmasked causal self-attention must stay causal (handled by SDPA)."""
    module = _Module()
    module.is_causal = True
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    torch.manual_seed(0)
    out, _ = enclap_attention_forward(module, q, k, v, None, dropout=0.5, scaling=0.5)
    torch.manual_seed(0)
    expected = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5, is_causal=True, scale=0.5).transpose(1, 2)
    assert torch.equal(out, expected)


def _tiny_config(**overrides) -> EnClapBartConfig:
    shape = dict(
        vocab_size=60, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
        d_clap=8, num_rvq=4, attention_dropout=0.1,
    )
    shape.update(overrides)
    return EnClapBartConfig(**shape)


def _batch(config: EnClapBartConfig):
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 1024, size=(n, config.num_rvq)) for n in (30, 21)]
    inputs = build_encoder_inputs(clips, rng.standard_normal((2, config.d_clap)).astype(np.float32), max_frames=61)
    inputs["labels"] = torch.tensor([[0, 5, 9, 2], [0, 7, 2, -100]])
    return inputs


def test_model_default_backend_and_equal_numbers_without_dropout(monkeypatch):
    calls = []
    original = BlockwiseDropoutAttention.apply
    monkeypatch.setattr(BlockwiseDropoutAttention, "apply", lambda *args: calls.append(1) or original(*args))
    config = _tiny_config()
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(config)
    assert model.config._attn_implementation == ENCLAP_ATTENTION
    # _from_config sets the back end on the config object it is given: give it its own copy.
    sdpa = EnClapBartForConditionalGeneration._from_config(copy.deepcopy(config), attn_implementation="sdpa")
    assert model.config._attn_implementation == ENCLAP_ATTENTION
    sdpa.load_state_dict(model.state_dict())
    inputs = _batch(config)
    # Training mode with attention dropout only: the blockwise kernel runs, and is reproducible.
    for m in (model, sdpa):
        m.train()
        for module in m.modules():
            if hasattr(module, "activation_dropout"):
                module.activation_dropout = 0.0
            if isinstance(getattr(module, "dropout", None), float) and not hasattr(module, "head_dim"):
                module.dropout = 0.0
    torch.manual_seed(5)
    first = model(**inputs).loss
    first.backward()
    torch.manual_seed(5)
    assert model(**inputs).loss.item() == first.item()
    assert len(calls) == 2 * (config.encoder_layers + config.decoder_layers)  # encoder self- and decoder cross-attention
    # Attention dropout off: the blockwise path is not taken and the numbers are SDPA's.
    for m in (model, sdpa):
        for module in m.modules():
            if hasattr(module, "head_dim"):
                module.dropout = 0.0
    torch.testing.assert_close(model(**inputs).logits, sdpa(**inputs).logits, rtol=0, atol=0)


# ------------------------------------------------------------------------ fallback when private APIs change


def _reset_probes(monkeypatch) -> None:
    """Forget what this process found out about torch and transformers (restored after the test)."""
    monkeypatch.setattr(attention, "_kernel_problem", None)
    monkeypatch.setattr(attention, "_registered_backend", None)
    monkeypatch.setattr(attention, "_fallback_warned", False)


def _fallback_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "falls back to plain SDPA" in str(w.message)]


def _train(model, inputs, steps: int = 4, seed: int = 11) -> list[float]:
    """A few SGD steps on one batch with dropout on (training mode); returns the losses."""
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _eval_loss(model, inputs) -> float:
    model.eval()
    with torch.no_grad():
        return model(**inputs).loss.item()


def _sdpa_twin(model, config):
    twin = EnClapBartForConditionalGeneration._from_config(copy.deepcopy(config), attn_implementation="sdpa")
    twin.load_state_dict(model.state_dict())
    return twin


@pytest.mark.parametrize("breakage", ["removed", "changed"])
def test_kernel_falls_back_to_sdpa_when_torch_changes(monkeypatch, breakage):
    _reset_probes(monkeypatch)
    if breakage == "removed":
        monkeypatch.delattr(torch, "_softmax_backward_data")
    else:
        # Still there but meaning something else (torch changed this function's arguments once, in 1.11).
        monkeypatch.setattr(torch, "_softmax_backward_data", lambda grad, output, dim, dtype: grad)
    config = _tiny_config()
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(config)
    assert model.config._attn_implementation == ENCLAP_ATTENTION
    sdpa = _sdpa_twin(model, config)
    inputs = _batch(config)
    before = _eval_loss(model, inputs)
    assert attention._kernel_problem is None  # lazy: inference never needed the kernel, nothing was probed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = _train(model, inputs)  # 4 steps x 3 attention layers: many calls, one warning
        expected = _train(sdpa, inputs)
    # With dropout on, the kernel draws its own masks: equality with SDPA's run means it did not run.
    assert losses == expected
    for got, want in zip(model.parameters(), sdpa.parameters()):
        assert torch.equal(got, want)
    assert _eval_loss(model, inputs) < before  # and the model does train
    messages = _fallback_warnings(caught)
    assert len(messages) == 1 and "\n" not in messages[0]
    assert ("_softmax_backward_data" if breakage == "removed" else "no longer equals the attention formula") in messages[0]


def test_kernel_is_used_when_the_probe_passes(monkeypatch):
    _reset_probes(monkeypatch)
    config = _tiny_config()
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(config)
    sdpa = _sdpa_twin(model, config)
    inputs = _batch(config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = _train(model, inputs, steps=1)
    assert attention._kernel_problem == "" and _fallback_warnings(caught) == []
    assert losses != _train(sdpa, inputs, steps=1)  # different dropout masks: the kernel ran


def test_registration_falls_back_to_sdpa_without_a_public_registry(monkeypatch):
    from transformers.utils.generic import GeneralInterface

    _reset_probes(monkeypatch)
    monkeypatch.delattr(GeneralInterface, "register")  # what AttentionInterface.register resolves to
    config = _tiny_config()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(0)
        model = EnClapBartForConditionalGeneration(copy.deepcopy(config))
        EnClapBartForConditionalGeneration(copy.deepcopy(config))  # asked again: no second warning
    assert model.config._attn_implementation == "sdpa"
    messages = _fallback_warnings(caught)
    assert len(messages) == 1 and "cannot register an attention function" in messages[0]
    inputs = _batch(config)
    before = _eval_loss(model, inputs)
    _train(model, inputs)
    assert _eval_loss(model, inputs) < before
