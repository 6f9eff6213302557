"""build_encoder_inputs: the reference layout, padding, cropping, MCM labels, long-clip windows and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enclap.model import (
    EnClapBartConfig,
    build_encoder_inputs,
    crop_codes,
    mask_codec_tokens,
    max_frames_for,
    split_codes_into_windows,
    window_starts,
)

from .straightforward import hand_built_batch, random_clip_codes, tiny_model


def test_single_clip_layout_written_out():
    codes = np.array([[10, 11], [20, 21], [30, 31]])
    clap = np.arange(4, dtype=np.float64)
    out = build_encoder_inputs([codes], [clap], max_frames=100)
    assert out["input_ids"].tolist() == [[[0, 0], [0, 0], [10, 11], [20, 21], [30, 31], [2, 2]]]
    assert out["encodec_mask"].tolist() == [[0, 0, 1, 1, 1, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1]]
    assert out["clap_embedding"].dtype == torch.float32 and out["clap_embedding"].tolist() == [[0, 1, 2, 3]]
    assert all(out[k].dtype == torch.long for k in ("input_ids", "encodec_mask", "attention_mask"))
    assert "mcm_labels" not in out


def test_padded_batch_follows_the_reference_collator(rng):
    clips = [random_clip_codes(rng, n) for n in (4, 9, 0)]
    out = build_encoder_inputs(clips, rng.standard_normal((3, 8)).astype(np.float32), max_frames=100)
    ids, emask, amask = hand_built_batch(clips)
    assert torch.equal(out["input_ids"], ids)
    assert torch.equal(out["encodec_mask"], emask)
    assert torch.equal(out["attention_mask"], amask)
    # Padding explicitly: codec pad 1024, encodec_mask 1 (so it embeds to the zero pad row), attention 0.
    assert (out["input_ids"][0, 7:] == 1024).all() and (out["encodec_mask"][0, 7:] == 1).all()
    assert (out["attention_mask"][0, 7:] == 0).all()
    assert out["input_ids"][2, :3, 0].tolist() == [0, 0, 2] and out["encodec_mask"][2, :3].tolist() == [0, 0, 0]


def test_mcm_labels_are_placed_on_codec_frames_and_padded_with_ignore(rng):
    clips = [random_clip_codes(rng, n) for n in (30, 12)]
    generator = np.random.default_rng(1)
    masked, labels = zip(*(mask_codec_tokens(c, 0.3, 5, generator) for c in clips))
    out = build_encoder_inputs(list(masked), np.zeros((2, 8), np.float32), max_frames=100, mcm_labels=list(labels))
    mcm = out["mcm_labels"]
    assert mcm.shape == out["input_ids"].shape and mcm.dtype == torch.long
    assert (mcm[:, :2] == -100).all() and (mcm[0, 32:] == -100).all() and (mcm[1, 14:] == -100).all()
    assert torch.equal(mcm[0, 2:32], torch.from_numpy(labels[0]))
    labelled = mcm != -100
    assert (out["input_ids"][labelled] == 1024).all()  # a labelled code is hidden from the encoder
    assert labelled.any()


def test_start_crop_keeps_the_first_frames(rng):
    codes = random_clip_codes(rng, 50)
    out = build_encoder_inputs([codes], np.zeros((1, 8), np.float32), max_frames=20)
    assert out["input_ids"].shape == (1, 23, 4)
    assert torch.equal(out["input_ids"][0, 2:22], torch.from_numpy(codes[:20]))


def test_random_crop_windows_codes_and_labels_together():
    frames = np.repeat(np.arange(50)[:, None], 4, axis=1)  # code value == frame index
    starts = set()
    generator = np.random.default_rng(2)
    for _ in range(300):
        out = build_encoder_inputs([frames], np.zeros((1, 8), np.float32), max_frames=20, crop="random",
                                   generator=generator, mcm_labels=[frames])
        window = out["input_ids"][0, 2:22, 0]
        start = int(window[0])
        assert window.tolist() == list(range(start, start + 20))
        assert torch.equal(out["mcm_labels"][0, 2:22, 0], window)
        starts.add(start)
    assert starts == set(range(0, 31))  # every window start 0 .. frames - max_frames occurs
    a = crop_codes(frames, 20, crop="random", generator=np.random.default_rng(3))
    b = crop_codes(frames, 20, crop="random", generator=np.random.default_rng(3))
    assert a[1] == b[1] and np.array_equal(a[0], b[0])


def test_max_frames_for_config():
    assert max_frames_for(EnClapBartConfig()) == 1021
    assert max_frames_for(EnClapBartConfig(max_position_embeddings=64)) == 61


def test_built_inputs_drive_the_model(rng):
    model = tiny_model(seed=3)
    clips = [random_clip_codes(rng, n) for n in (80, 10)]  # the first exceeds max_frames 61
    inputs = build_encoder_inputs(clips, rng.standard_normal((2, 16)).astype(np.float32), max_frames=max_frames_for(model.config))
    with torch.no_grad():
        out = model(**inputs, decoder_input_ids=torch.tensor([[2, 0], [2, 0]]))
    assert out.encoder_last_hidden_state.shape == (2, 64, 32) and torch.isfinite(out.logits).all()


def test_clap_embeddings_accept_rows_of_several_shapes():
    codes = [np.zeros((2, 4), np.int64)] * 2
    rows = [np.ones(8, np.float32), torch.full((1, 8), 2.0)]
    out = build_encoder_inputs(codes, rows, max_frames=10)
    assert out["clap_embedding"].tolist() == [[1.0] * 8, [2.0] * 8]
    tensor = build_encoder_inputs(codes, torch.ones(2, 8, dtype=torch.float64), max_frames=10)
    assert tensor["clap_embedding"].dtype == torch.float32


def test_bad_inputs_name_the_clip_and_the_reason():
    ok = np.zeros((3, 4), np.int64)
    clap = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match=r"clip 1: codes must be in \[0, 1024\].*1025"):
        build_encoder_inputs([ok, np.full((3, 4), 1025)], clap, max_frames=10)
    with pytest.raises(ValueError, match="clip 1: codes must be integers"):
        build_encoder_inputs([ok, np.zeros((3, 4))], clap, max_frames=10)
    with pytest.raises(ValueError, match=r"clip 0: codes must be \(frames, num_codebooks\)"):
        build_encoder_inputs([np.zeros(3, np.int64), ok], clap, max_frames=10)
    with pytest.raises(ValueError, match="clip 0: 4, clip 1: 2"):
        build_encoder_inputs([ok, np.zeros((3, 2), np.int64)], clap, max_frames=10)
    with pytest.raises(ValueError, match="got 3 CLAP embeddings for 2 clips"):
        build_encoder_inputs([ok, ok], [np.zeros(8)] * 3, max_frames=10)
    bad_clap = clap.copy()
    bad_clap[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"clip\(s\) \[1\] contain NaN"):
        build_encoder_inputs([ok, ok], bad_clap, max_frames=10)
    with pytest.raises(ValueError, match="crop must be one of"):
        build_encoder_inputs([ok, ok], clap, max_frames=10, crop="middle")
    with pytest.raises(ValueError, match="clip 1: mcm_labels shape"):
        build_encoder_inputs([ok, ok], clap, max_frames=10, mcm_labels=[ok, ok[:2]])
    with pytest.raises(ValueError, match="codes is empty"):
        build_encoder_inputs([], np.zeros((0, 8), np.float32), max_frames=10)
    with pytest.raises(ValueError, match="sequence of per-clip"):
        build_encoder_inputs(ok, clap[:1], max_frames=10)


def test_windows_cover_a_long_clip_and_keep_a_short_one_whole():
    codes = np.repeat(np.arange(100)[:, None], 2, axis=1)
    windows = split_codes_into_windows(codes, max_frames=30, hop_frames=30)
    assert window_starts(100, 30, 30) == [0, 30, 60, 70]
    assert [int(w[0, 0]) for w in windows] == [0, 30, 60, 70]
    assert all(w.shape == (30, 2) for w in windows)
    covered = np.zeros(100, bool)
    for w in windows:
        covered[w[:, 0]] = True
    assert covered.all()
    assert window_starts(100, 30, 10) == [0, 10, 20, 30, 40, 50, 60, 70]
    short = split_codes_into_windows(codes[:25], max_frames=30, hop_frames=10)
    assert len(short) == 1 and np.array_equal(short[0], codes[:25])
    with pytest.raises(ValueError, match="hop_frames"):
        window_starts(100, 30, 0)
