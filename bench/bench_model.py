"""Benchmark: EnCLAP captioner training step and inference vs a straightforward implementation.

The baseline (written here) is what the reference implementation computes and how it computes it:
``num_rvq`` separate embedding lookups summed into a zero tensor, every encoder position projected
through every MCM head, eager attention, and captions generated one clip at a time. It runs with the
very same weights as the library model, and its losses are checked to be equal before timing.

Variants are timed interleaved (one step of each in turn) so that load from other processes hits all
of them alike; ratios are the meaningful figures.
"""

from __future__ import annotations

import copy
import json
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from enclap.allocator import retain_freed_memory
from enclap.model import (
    EnClapBartConfig,
    EnClapBartForConditionalGeneration,
    build_encoder_inputs,
    mask_codec_tokens,
)

BART_BASE = dict(
    vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
    decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024,
    d_clap=512, num_rvq=16, dropout=0.1, attention_dropout=0.1, activation_dropout=0.1,
)
TINY = dict(
    vocab_size=1000, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128,
    d_clap=32, num_rvq=16, dropout=0.1,
)


# ----------------------------------------------------------------------------- the straightforward baseline
def _baseline_embed_codec_frames(self, codes: torch.Tensor) -> torch.Tensor:
    """Reference style: a zero tensor plus one lookup per codebook table."""
    summed = torch.zeros(*codes.shape[:-1], self.config.d_model, device=codes.device)
    for i, embedding in enumerate(self.embed_encodec):
        summed = summed + embedding(codes[..., i])
    return summed


def _baseline_embed_encoder_inputs(self, input_ids, encodec_mask, clap_embedding):
    """Reference style: codec ids 0 at non-codec positions, full-size codec and BART embeddings, where."""
    is_codec = encodec_mask.unsqueeze(-1) > 0
    codec = self.embed_codec_frames(torch.where(is_codec, input_ids, 0))
    bart = F.embedding(torch.where(encodec_mask == 0, input_ids[..., 0], 0), self.embed_tokens.weight, self.embed_tokens.padding_idx)
    embeds = torch.where(is_codec, codec, bart)
    embeds[:, 0] = self.clap_projection(clap_embedding)
    return embeds


def _baseline_masked_codec_loss(self, encoder_hidden, mcm_labels):
    """Reference style: every position through every head, CrossEntropyLoss over the flattened logits."""
    total = 0.0
    loss_fn = nn.CrossEntropyLoss()
    for i, head in enumerate(self.mcm_heads):
        logits = head(encoder_hidden)
        total = total + loss_fn(logits.view(-1, logits.shape[-1]), mcm_labels[..., i].reshape(-1)) * (1 / 2 ** (i + 1))
    return total


def make_baseline(config: EnClapBartConfig, state_dict: dict) -> EnClapBartForConditionalGeneration:
    config = EnClapBartConfig.from_dict(config.to_dict())
    config._attn_implementation = "eager"
    model = EnClapBartForConditionalGeneration(config)
    model.load_state_dict(state_dict)
    encoder = model.model.encoder
    encoder.embed_codec_frames = types.MethodType(_baseline_embed_codec_frames, encoder)
    encoder.embed_encoder_inputs = types.MethodType(_baseline_embed_encoder_inputs, encoder)
    model.masked_codec_loss = types.MethodType(_baseline_masked_codec_loss, model)
    return model


# ----------------------------------------------------------------------------- data
def set_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout probability of a BART model (hidden, attention, activation) to ``p``."""
    for module in model.modules():
        for name in ("dropout", "activation_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, p)


def make_batch(config: EnClapBartConfig, batch: int, frames: int, caption_tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    clips = [rng.integers(0, 1024, size=(frames, config.num_rvq)) for _ in range(batch)]
    masked, labels = zip(*(mask_codec_tokens(c, 0.15, 10, rng) for c in clips))
    claps = rng.standard_normal((batch, config.d_clap)).astype(np.float32)
    inputs = build_encoder_inputs(list(masked), claps, max_frames=config.max_position_embeddings - 3, mcm_labels=list(labels))
    captions = torch.from_numpy(rng.integers(3, config.vocab_size, size=(batch, caption_tokens)))
    captions[:, 0], captions[:, -1] = 0, 2
    inputs["labels"] = captions
    plain = build_encoder_inputs(clips, claps, max_frames=config.max_position_embeddings - 3)
    return inputs, plain


class Timer:
    """Wall and process-CPU seconds of repeated calls; CPU time is robust to other processes' load."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)
        return result

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)


def interleaved(variants: dict, repeats: int, warmup: int = 1) -> dict[str, Timer]:
    """Time each variant ``repeats`` times, one call of each in turn, after ``warmup`` untimed rounds."""
    timers = {name: Timer() for name in variants}
    for round_index in range(warmup + repeats):
        for name, fn in variants.items():
            if round_index < warmup:
                fn()
            else:
                timers[name](fn)
    return timers


def _allocator_probe(mode: str, quick: bool) -> dict[str, float]:
    """In this (fresh) process: page faults and CPU seconds of training steps, with glibc's default or ``retain``.

    One warm-up step, then the median over 3 steps of minor page faults and process CPU time. The
    policy is process-wide and irreversible, hence one process per mode (see :func:`allocator_comparison`).
    """
    torch.set_num_threads(1)
    if mode == "retain":
        retain_freed_memory()
    torch.manual_seed(0)
    shape = TINY if quick else BART_BASE
    batch, frames, caption_tokens = (4, 100, 12) if quick else (4, 753, 20)
    config = EnClapBartConfig(**shape)
    model = EnClapBartForConditionalGeneration(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    inputs, _ = make_batch(config, batch, frames, caption_tokens)
    faults, seconds = [], []
    for step in range(4):
        before_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        before = time.process_time()
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step grows the heap under either policy
            seconds.append(time.process_time() - before)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before_faults)
    return {"faults": statistics.median(faults), "cpu_seconds": statistics.median(seconds)}


def allocator_comparison(quick: bool) -> list[str]:
    """Table rows: a training step with glibc's default allocator policy and with ``retain_freed_memory``."""
    rows = {}
    for mode in ("default", "retain"):
        command = [sys.executable, str(Path(__file__).resolve()), "--allocator-probe", mode] + (["--quick"] if quick else [])
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    default, retain = rows["default"], rows["retain"]
    return [
        "| training step, glibc allocator (fresh process each, 1 thread, median of 3 after a warm-up) | minor page faults | CPU s |",
        "|---|---|---|",
        f"| glibc default (freed large blocks go back to the kernel) | {default['faults']:.0f} | {default['cpu_seconds']:.2f} |",
        f"| `retain_freed_memory()` (train.py / enclap-train and the benchmarks set it) | {retain['faults']:.0f} | {retain['cpu_seconds']:.2f} |",
    ]


def main(quick: bool = False, threads: int = 1) -> str:
    """Run the comparison; ``threads`` intra-op threads (1 keeps CPU-time ratios clean on a shared machine)."""
    # Without this, glibc returns large freed blocks to the kernel and every step page-faults them
    # back in: seconds of system time that depend on which variant ran before (glibc adapts its
    # threshold to the history), which would time the allocator rather than the models. The
    # training job applies the same policy on CPU.
    retain_freed_memory()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(previous_threads)


def _run(quick: bool) -> str:
    torch.manual_seed(0)
    shape = TINY if quick else BART_BASE
    batch, frames, caption_tokens = (4, 100, 12) if quick else (4, 753, 20)
    train_steps, gen_max_length = (3, 12) if quick else (3, 50)

    config = EnClapBartConfig(**shape)
    fast = EnClapBartForConditionalGeneration(config)  # the library default: SDPA + blockwise CPU dropout kernel
    initial_weights = {name: value.clone() for name, value in fast.state_dict().items()}
    baseline = make_baseline(config, initial_weights)
    # The same model with plain SDPA: shows what the blockwise attention-dropout kernel adds.
    # (_from_config sets the back end on the config object it is given: give it its own copy.)
    sdpa_only = EnClapBartForConditionalGeneration._from_config(copy.deepcopy(config), attn_implementation="sdpa")
    sdpa_only.load_state_dict(initial_weights)
    assert fast.config._attn_implementation == "enclap_sdpa" and sdpa_only.config._attn_implementation == "sdpa"
    inputs, plain = make_batch(config, batch, frames, caption_tokens)
    masked_positions = int((inputs["mcm_labels"] != -100).sum())

    # 1. Same numbers: losses (eval mode: no dropout) and gradients of a codec table and an MCM head.
    losses, grads = {}, {}
    for name, model in (("fast", fast), ("baseline", baseline)):
        model.eval()
        model.zero_grad()
        out = model(**inputs)
        out.loss.backward()
        losses[name] = (out.loss.item(), out.lm_loss.item(), out.mcm_loss.item())
        grads[name] = (model.model.encoder.embed_encodec[3].weight.grad.clone(), model.mcm_heads[5].weight.grad.clone())
        model.zero_grad(set_to_none=True)
    loss_diff = max(abs(a - b) for a, b in zip(losses["fast"], losses["baseline"]))
    grad_diff = max((a - b).abs().max().item() for a, b in zip(grads["fast"], grads["baseline"]))
    if loss_diff > 1e-4:
        raise AssertionError(f"losses differ: fast {losses['fast']} vs baseline {losses['baseline']}")

    # 2. Training step (forward + backward + AdamW step, dropout on, MCM on).
    optimizers = {
        name: torch.optim.AdamW(model.parameters(), lr=1e-5)
        for name, model in (("fast", fast), ("baseline", baseline), ("sdpa_only", sdpa_only))
    }

    def train_step(name, model):
        def run():
            out = model(**inputs)
            out.loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
        return run

    for model in (fast, baseline, sdpa_only):
        model.train()
    train = interleaved(
        {"baseline": train_step("baseline", baseline), "sdpa_only": train_step("sdpa_only", sdpa_only), "fast": train_step("fast", fast)},
        train_steps,
    )
    del sdpa_only
    # The same without dropout: shows what attention dropout costs (SDPA's fast CPU kernel has no
    # dropout, so with it PyTorch falls back to the unfused math path, as slow as eager attention).
    for model in (fast, baseline):
        set_dropout(model, 0.0)
    train_no_dropout = interleaved({"baseline": train_step("baseline", baseline), "fast": train_step("fast", fast)}, train_steps)
    del optimizers  # everything below runs in eval mode, where dropout is inactive anyway
    # The optimizer steps moved the two models apart (different dropout draws): share weights again.
    for model in (fast, baseline):
        model.load_state_dict(initial_weights)
    fast.eval()
    baseline.eval()

    # 3. Parts of the step, forward + backward, on the same batch.
    hidden = torch.randn(batch, inputs["input_ids"].shape[1], config.d_model, requires_grad=True)

    def mcm(model):
        return lambda: model.masked_codec_loss(hidden, inputs["mcm_labels"]).backward()

    def embed(model):
        encoder = model.model.encoder
        return lambda: encoder.embed_encoder_inputs(inputs["input_ids"], inputs["encodec_mask"], inputs["clap_embedding"]).sum().backward()

    def eval_loss(model):
        def run():
            with torch.no_grad():
                model(**inputs)
        return run

    parts = {
        "MCM loss (heads + cross-entropy)": interleaved({"baseline": mcm(baseline), "fast": mcm(fast)}, 3),
        "codec embedding (16 codebooks + CLAP slot)": interleaved({"baseline": embed(baseline), "fast": embed(fast)}, 3),
        "validation loss (eval forward, no grad)": interleaved({"baseline": eval_loss(baseline), "fast": eval_loss(fast)}, 3),
    }
    fast.zero_grad(set_to_none=True)
    baseline.zero_grad(set_to_none=True)

    # 4. Inference: beam-4 generation with the reference defaults. Baseline: one clip at a time
    #    (the reference CLI); ours: one at a time and the whole batch at once.
    # min_length = max_length: every variant decodes the same number of steps, whatever it generates.
    generation = dict(max_length=gen_max_length, min_length=gen_max_length)
    clip = lambda b: {k: v[b : b + 1] for k, v in plain.items()}  # noqa: E731
    results: dict[str, list] = {}

    def per_clip(name, model):
        return lambda: results.__setitem__(name, [model.generate(**clip(b), **generation) for b in range(batch)])

    with torch.no_grad():
        fast.generate(**clip(0), max_length=4)  # warm-up
        generate = {
            "baseline": Timer(),
            "fast_single": Timer(),
            "fast_batched": Timer(),
        }
        generate["baseline"](per_clip("baseline", baseline))
        generate["fast_single"](per_clip("fast_single", fast))
        generate["fast_batched"](lambda: results.__setitem__("fast_batched", fast.generate(**plain, **generation)))
    batched = results["fast_batched"]
    same_batched = sum(torch.equal(batched[b, : row.shape[1]], row[0]) for b, row in enumerate(results["fast_single"]))
    same_baseline = sum(torch.equal(a, b) for a, b in zip(results["baseline"], results["fast_single"]))
    generated_tokens = int((batched != config.pad_token_id).sum())

    def ratio(timers: dict[str, Timer], attr: str = "cpu_median") -> float:
        return getattr(timers["baseline"], attr) / getattr(timers["fast"], attr)

    shape_text = "tiny (quick check)" if quick else "bart-base shape (6+6 layers, d_model 768, vocab 50265, 16 codebooks)"
    allocator_rows = allocator_comparison(quick)
    lines = [
        "### EnCLAP captioner model (`enclap.model`)",
        "",
        f"{shape_text}; batch {batch} × {frames} codec frames ({inputs['input_ids'].shape[1]} encoder positions), "
        f"{caption_tokens}-token captions, MCM p=0.15 span 10 ({masked_positions} masked codes of "
        f"{batch * frames * config.num_rvq}); dropout 0.1 everywhere (BART-base's). CPU, {torch.get_num_threads()} torch thread(s).",
        "",
        "| training step (fwd + bwd + AdamW) | CPU s (median of %d) | wall s | speed-up (CPU) |" % train_steps,
        "|---|---|---|---|",
        f"| straightforward: per-codebook lookups, MCM heads on all positions, eager attention | {train['baseline'].cpu_median:.2f} | {train['baseline'].wall_median:.2f} | 1.00× |",
        f"| ours with plain SDPA: fused lookup, MCM at masked positions, SDPA (math path under dropout) | {train['sdpa_only'].cpu_median:.2f} | {train['sdpa_only'].wall_median:.2f} | {train['baseline'].cpu_median / train['sdpa_only'].cpu_median:.2f}× |",
        f"| `EnClapBartForConditionalGeneration` default: the above + blockwise CPU attention-dropout kernel | {train['fast'].cpu_median:.2f} | {train['fast'].wall_median:.2f} | **{ratio(train):.2f}×** |",
        f"| straightforward, all dropout off | {train_no_dropout['baseline'].cpu_median:.2f} | {train_no_dropout['baseline'].wall_median:.2f} | 1.00× |",
        f"| ours, all dropout off | {train_no_dropout['fast'].cpu_median:.2f} | {train_no_dropout['fast'].wall_median:.2f} | {ratio(train_no_dropout):.2f}× |",
        "",
        "| part (fwd + bwd unless noted) | straightforward CPU s | ours CPU s | speed-up |",
        "|---|---|---|---|",
    ]
    for label, timers in parts.items():
        lines.append(f"| {label} | {timers['baseline'].cpu_median:.3f} | {timers['fast'].cpu_median:.3f} | {ratio(timers):.2f}× |")
    base_gen = generate["baseline"].cpu[0]
    lines += [
        "",
        "| generation (beam 4, no_repeat_ngram 3, exactly %d tokens), %d clips | CPU s | wall s | clips/s (CPU) | speed-up |" % (gen_max_length, batch),
        "|---|---|---|---|---|",
        f"| straightforward, one clip at a time (reference CLI) | {base_gen:.2f} | {generate['baseline'].wall[0]:.2f} | {batch / base_gen:.2f} | 1.00× |",
        f"| ours, one clip at a time | {generate['fast_single'].cpu[0]:.2f} | {generate['fast_single'].wall[0]:.2f} | {batch / generate['fast_single'].cpu[0]:.2f} | {base_gen / generate['fast_single'].cpu[0]:.2f}× |",
        f"| ours, whole batch at once | {generate['fast_batched'].cpu[0]:.2f} | {generate['fast_batched'].wall[0]:.2f} | {batch / generate['fast_batched'].cpu[0]:.2f} | {base_gen / generate['fast_batched'].cpu[0]:.2f}× |",
        "",
        f"Equal numerics (eval mode, same weights): loss {losses['fast'][0]:.6f} vs {losses['baseline'][0]:.6f} "
        f"(lm {losses['fast'][1]:.6f} / {losses['baseline'][1]:.6f}, mcm {losses['fast'][2]:.6f} / {losses['baseline'][2]:.6f}); "
        f"max |Δloss| = {loss_diff:.1e}, max |Δgrad| (a codec table, an MCM head) = {grad_diff:.1e}. "
        f"Batched captions equal to per-clip ones: {same_batched}/{batch}; ours equal to the straightforward model's: "
        f"{same_baseline}/{batch} (with random weights beams are near ties, so float rounding may legitimately pick another). "
        f"{generated_tokens} tokens generated in the batch.",
        "",
        "Measured: process CPU time (and wall time) of each call, variants interleaved, after one warm-up round, with "
        "glibc keeping freed memory for reuse (`enclap.allocator.retain_freed_memory`, as CPU training does; otherwise "
        "page faults add seconds of system time per step that depend on which variant ran before); "
        "both implementations share random-initialised weights. CPU time is the robust figure on a shared machine.",
        "",
        *allocator_rows,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if "--allocator-probe" in sys.argv:
        print(json.dumps(_allocator_probe(sys.argv[sys.argv.index("--allocator-probe") + 1], quick="--quick" in sys.argv)))
    else:
        print(main(quick="--quick" in sys.argv))
