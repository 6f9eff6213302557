"""EncodecTokenizer: codes equal the model's own single-clip encoding, whatever the batching."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
import torch

from enclap.errors import CheckpointError, ConfigError, PretrainedNotFoundError
from enclap.features.codec import EncodecTokenizer, convert_encodec_checkpoint, load_original_encodec

from .factories import save_tiny_encodec, tiny_encodec_config, tiny_encodec_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HOP = 320


def _clip(seconds: float, seed: int, rate: int = 24_000) -> np.ndarray:
    """Noise under a slow envelope plus a chirp: varied enough that codes change frame to frame."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    env = 0.05 + 0.3 * (1 + np.sin(2 * np.pi * (0.5 + seed % 3) * t)) / 2
    x = rng.standard_normal(n) * env + 0.2 * np.sin(2 * np.pi * (200 + 50 * seed) * t * (1 + t))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return tiny_encodec_model(seed=0)


def _reference_codes(model, clip: np.ndarray, bandwidth: float = 12.0) -> np.ndarray:
    """transformers' own EncodecModel.encode of one clip, as (frames, codebooks)."""
    with torch.inference_mode():
        out = model.encode(torch.from_numpy(clip)[None, None, :], bandwidth=bandwidth)
    codes = out.audio_codes  # (chunks=1, batch=1, codebooks, frames)
    assert codes.shape[0] == 1 and codes.shape[1] == 1
    return codes[0, 0].t().numpy()


def test_codes_shape_dtype_and_rates(model):
    tok = EncodecTokenizer(model, bandwidth=12.0)
    assert tok.sample_rate == 24_000 and tok.frame_rate == 75.0 and tok.num_codebooks == 16
    lengths = [HOP * 10, HOP * 10 + 1, 7_919, 24_000]
    codes = tok.encode([_clip(n / 24_000, i) for i, n in enumerate(lengths)])
    for n, c in zip(lengths, codes):
        assert c.dtype == np.int16
        assert c.shape == (math.ceil(n / HOP), 16)
        assert c.min() >= 0 and c.max() < 1024
    # the tiny model's codebooks are spread: every level uses many codewords
    assert all(len(np.unique(codes[3][:, k])) > 5 for k in range(16))


@pytest.mark.parametrize("bandwidth,expected", [(1.5, 2), (3.0, 4), (6.0, 8), (12.0, 16), (24.0, 32)])
def test_bandwidth_selects_codebooks(model, bandwidth, expected):
    tok = EncodecTokenizer(model, bandwidth=bandwidth)
    assert tok.num_codebooks == expected
    clip = _clip(0.5, 1)
    codes = tok.encode([clip])[0]
    assert codes.shape[1] == expected
    np.testing.assert_array_equal(codes, _reference_codes(model, clip, bandwidth))


def test_codes_equal_transformers_single_clip_encode(model):
    tok = EncodecTokenizer(model)
    clips = [_clip(s, i) for i, s in enumerate([0.3, 1.0, 1.37])]
    for clip, codes in zip(clips, tok.encode(clips)):
        np.testing.assert_array_equal(codes, _reference_codes(model, clip))


def test_batch_independence_mixed_lengths(model):
    """A clip's codes are the same alone, in a batch with longer and shorter clips, and in any order."""
    lengths = [1.0, 0.5, 1.0, 2.0, 1.0, 0.5, 1.3, 1.0, 1.0]
    clips = [_clip(s, i) for i, s in enumerate(lengths)]
    batched = EncodecTokenizer(model, batch_size=4).encode(clips)
    alone = [EncodecTokenizer(model, batch_size=1).encode([c])[0] for c in clips]
    for b, a in zip(batched, alone):
        np.testing.assert_array_equal(b, a)
    order = np.random.default_rng(3).permutation(len(clips))
    shuffled = EncodecTokenizer(model, batch_size=3).encode([clips[i] for i in order])
    for position, i in enumerate(order):
        np.testing.assert_array_equal(shuffled[position], alone[i])


def test_naive_padded_batching_would_leak(model):
    """Why equal-length grouping: zero-padding a clip inside a batch changes its last frame's embedding."""
    short, long = _clip(0.51, 1), _clip(1.0, 2)
    frames = math.ceil(len(short) / HOP)
    padded = np.stack([np.pad(short, (0, len(long) - len(short))), long])
    with torch.inference_mode():
        alone = model.encoder(torch.from_numpy(short)[None, None])[0]
        in_batch = model.encoder(torch.from_numpy(padded)[:, None])[0, :, :frames]
    assert alone.shape == in_batch.shape
    # every frame before the last is untouched (the 24 kHz model is causal); the last one is not
    torch.testing.assert_close(in_batch[:, :-1], alone[:, :-1], rtol=0, atol=1e-5)
    assert (in_batch[:, -1] - alone[:, -1]).abs().max() > 1e-4


def test_repeated_runs_bit_identical(tmp_path):
    directory = save_tiny_encodec(tmp_path / "enc", seed=3)
    clips = [_clip(s, i) for i, s in enumerate([0.7, 1.1, 0.7])]
    first = EncodecTokenizer.from_pretrained(str(directory)).encode(clips)
    second = EncodecTokenizer.from_pretrained(str(directory), batch_size=2).encode(clips)
    again = EncodecTokenizer.from_pretrained(str(directory)).encode(clips)
    for a, b, c in zip(first, second, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_batch_variant_backend_falls_back_to_single_clips(model, caplog):
    """If batched convolutions ever differ from single-clip ones, codes still equal single-clip codes."""
    variant = tiny_encodec_model(seed=0)
    # a hook that perturbs outputs by an amount depending on the batch size stands in for a backend
    # whose kernels are not batch-invariant
    last_conv = variant.encoder.layers[-1]
    handle = last_conv.register_forward_hook(lambda mod, inp, out: out + 1e-2 * (out.shape[0] - 1))
    try:
        # seven clips of one length: batches of 3, 3 and 1; the first batch reveals the variance
        clips = [_clip(0.5, i) for i in range(7)] + [_clip(0.8, i) for i in range(3)]
        tok = EncodecTokenizer(variant, batch_size=3)
        with caplog.at_level(logging.INFO, logger="enclap.features.codec"):
            batched = tok.encode(clips)
        assert "one clip at a time" in caplog.text
        assert tok._batching_ok is False
        for clip, codes in zip(clips, batched):
            np.testing.assert_array_equal(codes, _reference_codes(variant, clip))
    finally:
        handle.remove()


def test_bad_inputs_are_named():
    tok = EncodecTokenizer(tiny_encodec_model(seed=1))
    with pytest.raises(ValueError, match=r"waveform 1: is empty"):
        tok.encode([_clip(0.1, 0), np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match=r"waveform 0: expected a mono 1-D array"):
        tok.encode([np.zeros((100, 2), np.float32)])
    bad = _clip(0.1, 0)
    bad[5] = np.nan
    with pytest.raises(ValueError, match=r"waveform 0: holds NaN"):
        tok.encode([bad])
    with pytest.raises(ConfigError, match=r"bandwidth 5.0"):
        EncodecTokenizer(tiny_encodec_model(seed=1), bandwidth=5.0)
    with pytest.raises(ConfigError, match=r"chunk_length_s"):
        from transformers import EncodecModel

        EncodecTokenizer(EncodecModel(tiny_encodec_config(chunk_length_s=1.0, overlap=0.01)))


def test_from_pretrained_missing(tmp_path):
    with pytest.raises(PretrainedNotFoundError, match="enclap-tests/no-such-encodec"):
        EncodecTokenizer.from_pretrained("enclap-tests/no-such-encodec")
    with pytest.raises(PretrainedNotFoundError, match="does not exist"):
        EncodecTokenizer.from_pretrained(str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------------- original checkpoints
def _to_original_key(key: str) -> str:
    """transformers EncodecModel key -> the `encodec` package's key, written from the original sources.

    encodec/modules/conv.py: SConv1d.conv (NormConv1d).conv (nn.Conv1d) with weight_norm's weight_g /
    weight_v; SConvTranspose1d.convtr.convtr; seanet.py: SEANetEncoder/Decoder.model (nn.Sequential),
    SEANetResnetBlock.block / .shortcut; lstm.py: SLSTM.lstm; quantization/core_vq.py:
    ResidualVectorQuantization.layers[k]._codebook (EuclideanCodebook) under quantizer.vq.
    """
    m = re.match(r"^quantizer\.layers\.(\d+)\.codebook\.(\w+)$", key)
    if m:
        return f"quantizer.vq.layers.{m.group(1)}._codebook.{m.group(2)}"
    m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.(block\.\d+\.|shortcut\.)?(conv|lstm)\.(.+)$", key)
    assert m, key
    part, index, sub, kind, param = m.groups()
    sub = sub or ""
    if kind == "lstm":
        return f"{part}.model.{index}.lstm.{param}"
    param = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}.get(
        param, param
    )
    transposed = part == "decoder" and not sub and index in {"3", "6", "9", "12"}
    conv = "convtr.convtr" if transposed else "conv.conv"
    return f"{part}.model.{index}.{sub}{conv}.{param}"


def _expected_original_keys(num_quantizers: int) -> set[str]:
    """The 24 kHz checkpoint's keys, enumerated from SEANet's layer list (ratios 8,5,4,2, 1 residual
    layer, 2 LSTM layers): encoder model.0 conv, (1 resblock, 3 downsample) x4 at 1/4/7/10 and 3/6/9/12,
    13 LSTM, 15 conv; decoder 0 conv, 1 LSTM, (3 convtr, 4 resblock) x4, 15 conv."""
    conv = ["weight_g", "weight_v", "bias"]
    lstm = [f"{w}_{k}_l{layer}" for layer in (0, 1) for w in ("weight", "bias") for k in ("ih", "hh")]
    keys = set()

    def add(prefix: str, params: list[str]) -> None:
        keys.update(f"{prefix}.{p}" for p in params)

    add("encoder.model.0.conv.conv", conv)
    for block in (1, 4, 7, 10):
        for sub in ("block.1", "block.3", "shortcut"):
            add(f"encoder.model.{block}.{sub}.conv.conv", conv)
    for down in (3, 6, 9, 12):
        add(f"encoder.model.{down}.conv.conv", conv)
    add("encoder.model.13.lstm", lstm)
    add("encoder.model.15.conv.conv", conv)
    add("decoder.model.0.conv.conv", conv)
    add("decoder.model.1.lstm", lstm)
    for up in (3, 6, 9, 12):
        add(f"decoder.model.{up}.convtr.convtr", conv)
    for block in (4, 7, 10, 13):
        for sub in ("block.1", "block.3", "shortcut"):
            add(f"decoder.model.{block}.{sub}.conv.conv", conv)
    add("decoder.model.15.conv.conv", conv)
    for k in range(num_quantizers):
        add(f"quantizer.vq.layers.{k}._codebook", ["inited", "cluster_size", "embed", "embed_avg"])
    return keys


def _original_state_dict(model) -> dict:
    return {_to_original_key(k): v.clone() for k, v in model.state_dict().items()}


def test_encodec_converter_round_trip(model, tmp_path):
    original = _original_state_dict(model)
    assert set(original) == _expected_original_keys(model.config.num_quantizers)
    assert original["encoder.model.0.conv.conv.weight_g"].shape == (model.config.num_filters, 1, 1)

    converted = convert_encodec_checkpoint(original)
    fresh = tiny_encodec_model(seed=99)  # different weights everywhere
    result = fresh.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)

    clips = [_clip(0.6, 4), _clip(1.0, 5)]
    np.testing.assert_array_equal(
        np.concatenate(EncodecTokenizer(fresh).encode(clips)), np.concatenate(EncodecTokenizer(model).encode(clips))
    )
    with torch.inference_mode():
        codes = model.encode(torch.from_numpy(clips[1])[None, None], bandwidth=12.0).audio_codes
        torch.testing.assert_close(fresh.decode(codes, [None]).audio_values, model.decode(codes, [None]).audio_values)

    # the same through a file, as the encodec package saves it
    path = tmp_path / "encodec_24khz-tiny.th"
    torch.save(original, path)
    loaded = load_original_encodec(str(path), config=tiny_encodec_config())
    np.testing.assert_array_equal(EncodecTokenizer(loaded).encode(clips)[0], EncodecTokenizer(model).encode(clips)[0])
    # with the 24 kHz model's real architecture the tiny weights do not fit: a clear error, not garbage
    with pytest.raises(CheckpointError, match="encodec_24khz-tiny.th"):
        load_original_encodec(str(path))


def test_encodec_converter_rejects_foreign_keys(model):
    original = _original_state_dict(model)
    original["encoder.model.0.conv.conv.weight_q"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"weight_q"):
        convert_encodec_checkpoint(original)
