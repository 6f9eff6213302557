"""Span masking for MCM: wav2vec2 sampler semantics, robustness on short clips, statistics, per-codebook masks."""

from __future__ import annotations

from math import comb, floor

import numpy as np
import pytest
import torch

from enclap.model import compute_span_mask, mask_codec_tokens, num_masked_spans


def expected_masked_fraction(length: int, mask_prob: float, span: int) -> float:
    """Exact expectation, computed independently of the sampler.

    The span count is floor(x) or floor(x)+1 (x = p*T/span) with probabilities 1-frac(x), frac(x);
    starts are ``n`` distinct values out of N = T-span+1; frame j is uncovered when none of the c_j
    starts that would cover it is drawn: C(N-c_j, n) / C(N, n).
    """
    x = mask_prob * length / span
    choices = length - span + 1
    counts = {floor(x): 1 - (x - floor(x)), floor(x) + 1: x - floor(x)}
    total = 0.0
    for j in range(length):
        covering = min(j, choices - 1) - max(0, j - span + 1) + 1
        for n, prob in counts.items():
            n = min(n, length // span, choices)
            total += prob * (1 - comb(choices - covering, n) / comb(choices, n))
    return total / length


def runs_of_true(mask: np.ndarray) -> list[int]:
    runs, current = [], 0
    for value in mask:
        if value:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return runs


def test_span_count_follows_wav2vec2_rounding_and_caps():
    assert num_masked_spans(230, 0.15, 10, epsilon=0.0) == 3  # int(3.45 + 0)
    assert num_masked_spans(230, 0.15, 10, epsilon=0.6) == 4  # int(3.45 + 0.6)
    assert num_masked_spans(100, 0.0, 10, epsilon=0.5, min_masks=2) == 2
    assert num_masked_spans(25, 1.0, 10, epsilon=0.9) == 2  # capped at length // span
    assert num_masked_spans(9, 1.0, 10, epsilon=0.9, min_masks=3) == 0  # no span fits


@pytest.mark.parametrize("length", [0, 1, 5, 9])
def test_short_lengths_give_an_empty_mask_instead_of_failing(length):
    generator = np.random.default_rng(0)
    for _ in range(20):
        mask = compute_span_mask(length, 0.15, 10, generator, min_masks=2)
        assert mask.shape == (length,) and mask.dtype == bool and not mask.any()


def test_length_equal_to_span_masks_everything_with_probability_p():
    generator = np.random.default_rng(1)
    draws = np.array([compute_span_mask(10, 0.15, 10, generator) for _ in range(4000)])
    assert set(draws.sum(axis=1).tolist()) <= {0, 10}
    assert abs(draws[:, 0].mean() - 0.15) < 4 * np.sqrt(0.15 * 0.85 / 4000)


@pytest.mark.parametrize("length", [230, 753])
def test_masked_fraction_matches_its_expectation(length):
    generator = np.random.default_rng(2)
    fractions = np.array([compute_span_mask(length, 0.15, 10, generator).mean() for _ in range(3000)])
    expected = expected_masked_fraction(length, 0.15, 10)
    standard_error = fractions.std() / np.sqrt(len(fractions))
    assert abs(fractions.mean() - expected) < 4 * standard_error + 1e-4
    assert expected < 0.15  # overlapping spans: mask_prob is an upper bound


def test_long_sequences_are_unions_of_whole_spans():
    generator = np.random.default_rng(3)
    mask = compute_span_mask(20000, 0.15, 10, generator)
    assert all(run >= 10 for run in runs_of_true(mask))
    assert 0.12 < mask.mean() < 0.15


def test_min_masks_and_determinism():
    mask = compute_span_mask(100, 0.0, 10, np.random.default_rng(4), min_masks=2)
    assert 11 <= mask.sum() <= 20  # two distinct spans of 10
    a = compute_span_mask(500, 0.15, 10, np.random.default_rng(7))
    b = compute_span_mask(500, 0.15, 10, np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_bad_mask_arguments_raise():
    generator = np.random.default_rng(0)
    with pytest.raises(ValueError, match="mask_prob"):
        compute_span_mask(10, 1.5, 10, generator)
    with pytest.raises(ValueError, match="mask_length"):
        compute_span_mask(10, 0.1, 0, generator)
    with pytest.raises(ValueError, match="length"):
        compute_span_mask(-1, 0.1, 2, generator)


def test_mask_codec_tokens_replaces_masked_codes_and_labels_them():
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 1024, size=(400, 16))
    masked, labels = mask_codec_tokens(codes, 0.15, 10, np.random.default_rng(6))
    is_masked = labels != -100
    assert masked.dtype == np.int64 and labels.dtype == np.int64 and masked.shape == codes.shape
    assert np.array_equal(masked[is_masked], np.full(is_masked.sum(), 1024))
    assert np.array_equal(labels[is_masked], codes[is_masked])
    assert np.array_equal(masked[~is_masked], codes[~is_masked])
    # Independent masks per codebook, each made of whole spans.
    columns = {tuple(np.flatnonzero(is_masked[:, k])) for k in range(16)}
    assert len(columns) == 16
    for k in range(16):
        assert all(run >= 10 for run in runs_of_true(is_masked[:, k]))
    assert 0.10 < is_masked.mean() < 0.15
    assert not np.shares_memory(masked, codes)


def test_mask_codec_tokens_on_a_padded_batch_respects_lengths_and_keeps_torch():
    codes = torch.randint(0, 1024, (3, 60, 4))
    masked, labels = mask_codec_tokens(codes, 0.5, 10, np.random.default_rng(8), lengths=[60, 0, 25])
    assert isinstance(masked, torch.Tensor) and masked.dtype == torch.long and labels.dtype == torch.long
    assert (labels[1] == -100).all() and torch.equal(masked[1], codes[1])
    assert (labels[2, 25:] == -100).all() and torch.equal(masked[2, 25:], codes[2, 25:])
    assert (labels[0] != -100).any() and (labels[2, :25] != -100).any()


@pytest.mark.parametrize("frames", [0, 1, 9])
def test_mask_codec_tokens_handles_clips_shorter_than_a_span(frames):
    codes = np.ones((frames, 16), dtype=np.int64)
    masked, labels = mask_codec_tokens(codes, 0.15, 10, np.random.default_rng(9))
    assert masked.shape == labels.shape == (frames, 16)
    assert (labels == -100).all() and np.array_equal(masked, codes)


def test_mask_codec_tokens_rejects_bad_input():
    generator = np.random.default_rng(0)
    with pytest.raises(ValueError, match="frames, codebooks"):
        mask_codec_tokens(np.zeros(10, dtype=np.int64), generator=generator)
    with pytest.raises(ValueError, match="integers"):
        mask_codec_tokens(np.zeros((10, 4)), generator=generator)
    with pytest.raises(ValueError, match="lengths has 1 entries for a batch of 2"):
        mask_codec_tokens(np.zeros((2, 10, 4), dtype=np.int64), generator=generator, lengths=[3])
    with pytest.raises(ValueError, match=r"lengths must be in \[0, 10\]"):
        mask_codec_tokens(np.zeros((1, 10, 4), dtype=np.int64), generator=generator, lengths=[11])


def test_span_starts_are_drawn_without_replacement():
    # 20 frames, p=1: two spans of 10 among 11 possible starts; distinct starts always cover >= 11 frames.
    generator = np.random.default_rng(10)
    sums = [compute_span_mask(20, 1.0, 10, generator).sum() for _ in range(500)]
    assert min(sums) >= 11 and max(sums) == 20
