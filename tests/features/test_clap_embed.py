"""ClapAudioEmbedder: LAION-faithful, deterministic, batch-independent CLAP audio embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enclap.errors import ConfigError, PretrainedNotFoundError
from enclap.features.clap_embed import (
    AudioEmbedder,
    ClapAudioEmbedder,
    _fusion_stack,
    laion_feature_extractor,
    rebuild_feature_extractor,
)

from .factories import save_tiny_clap, single_thread, tiny_clap_model  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

SR = 48_000


def _clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    x = 0.1 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * (300 + 70 * seed) * t) * np.sin(2 * np.pi * 0.4 * t)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def fused():
    return ClapAudioEmbedder(tiny_clap_model(seed=0), laion_feature_extractor(enable_fusion=True), batch_size=3)


@pytest.fixture(scope="module")
def unfused():
    model = tiny_clap_model(seed=1, enable_fusion=False)
    return ClapAudioEmbedder(model, laion_feature_extractor(enable_fusion=False), batch_size=3)


def test_protocol_and_shape(fused):
    assert isinstance(fused, AudioEmbedder)
    assert fused.sample_rate == 48_000 and fused.dim == 512
    emb = fused.embed([_clip(1.0, 0), _clip(12.0, 1)])
    assert emb.shape == (2, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(emb[0], emb[1])


def test_short_clip_matches_transformers_path(fused):
    """For a clip under 10 s (no randomness anywhere) the embedding is the normalised projection that
    transformers' feature extractor + ClapModel.get_audio_features give, with the true is_longer=False."""
    clip = _clip(3.0, 2)
    inputs = fused.feature_extractor(clip, sampling_rate=SR, return_tensors="pt")
    with torch.inference_mode():
        out = fused.model.get_audio_features(input_features=inputs["input_features"], is_longer=torch.tensor([[False]]))
    pooled = out.pooler_output if hasattr(out, "pooler_output") else out
    expected = torch.nn.functional.normalize(pooled, dim=-1)[0].numpy()
    np.testing.assert_allclose(fused.embed([clip])[0], expected, rtol=0, atol=1e-6)


def test_true_is_longer_flag_not_random(fused):
    """transformers' extractor marks a random short clip as longer; that changes its embedding, so the
    embedder must not do it: short clips embed the same alone or together."""
    clips = [_clip(2.0, 3), _clip(4.0, 4)]
    inputs = fused.feature_extractor(clips, sampling_rate=SR, return_tensors="pt")
    assert inputs["is_longer"].sum() == 1  # the trap is real
    with torch.inference_mode():
        flags = [torch.tensor([[False]]), torch.tensor([[True]])]
        a, b = (fused._forward(inputs["input_features"][:1], f) for f in flags)
    assert not torch.allclose(a, b)
    together = fused.embed(clips)
    for clip, row in zip(clips, together):
        np.testing.assert_array_equal(row, fused.embed([clip])[0])
    np.testing.assert_allclose(together[0], a[0].numpy(), atol=1e-6)


@pytest.mark.parametrize("which", ["fused", "unfused"])
def test_batch_independence(which, request):
    """Identical embeddings alone, in batches with longer and shorter clips, and in any order."""
    embedder = request.getfixturevalue(which)
    seconds = [3.0, 12.5, 25.0, 10.0, 0.4, 10.004]
    clips = [_clip(s, i) for i, s in enumerate(seconds)]
    together = embedder.embed(clips)
    for clip, row in zip(clips, together):
        np.testing.assert_array_equal(row, embedder.embed([clip])[0])
    order = [4, 2, 0, 5, 1, 3]
    shuffled = embedder.embed([clips[i] for i in order])
    np.testing.assert_array_equal(shuffled, together[order])


def test_repeated_runs_and_global_rng_untouched(fused, tmp_path):
    clips = [_clip(21.0, 7), _clip(2.0, 8)]
    state = np.random.get_state()
    first = fused.embed(clips)
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    np.testing.assert_array_equal(first, fused.embed(clips))
    # a fresh embedder over the same saved model agrees bit for bit
    directory = save_tiny_clap(tmp_path / "clap", seed=0)
    np.testing.assert_array_equal(first, ClapAudioEmbedder.from_pretrained(str(directory)).embed(clips))


def test_crops_depend_on_content_and_seed_only():
    model = tiny_clap_model(seed=0)
    extractor = laion_feature_extractor(enable_fusion=True)
    seeded = [ClapAudioEmbedder(model, extractor, seed=s) for s in (0, 0, 5)]
    long, short = _clip(30.0, 9), _clip(5.0, 10)
    mel_a, longer_a = seeded[0].input_features(long)
    mel_b, _ = seeded[1].input_features(long)
    mel_c, _ = seeded[2].input_features(long)
    assert longer_a is True
    np.testing.assert_array_equal(mel_a, mel_b)
    assert not np.array_equal(mel_a[1:], mel_c[1:])  # other seed, other crops
    np.testing.assert_array_equal(mel_a[0], mel_c[0])  # the shrunk whole clip does not depend on crops
    np.testing.assert_array_equal(seeded[0].input_features(short)[0], seeded[2].input_features(short)[0])


def test_fusion_stack_structure():
    """Channel 0 is the whole mel shrunk to the window; channels 1-3 are window-long crops taken from the
    front, middle and back thirds of the possible start positions (LAION's get_audio_features)."""
    rng_data = np.random.default_rng(0)
    total, chunk, mels = 2501, 1001, 64
    mel = rng_data.standard_normal((total, mels)).astype(np.float32)
    stack = _fusion_stack(mel, chunk, np.random.default_rng(42))
    assert stack.shape == (4, chunk, mels) and stack.dtype == np.float32
    shrunk = torch.nn.functional.interpolate(
        torch.from_numpy(mel)[None, None], size=(chunk, mels), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_array_equal(stack[0], shrunk)
    starts = np.arange(total - chunk + 1)
    thirds = np.array_split(starts, 3)
    for crop, third in zip(stack[1:], thirds):
        found = [s for s in third if np.array_equal(mel[s : s + chunk], crop)]
        assert len(found) == 1


def test_clip_just_over_window_uses_whole_mel(fused):
    """Between 10 s and 10 s + one hop the mel is exactly one window long: used whole, not as 'longer'."""
    clip = _clip(10.0, 11)
    clip = np.concatenate([clip, clip[:100]])
    mel, longer = fused.input_features(clip)
    assert longer is False and mel.shape == (4, 1001, 64)
    np.testing.assert_array_equal(mel[0], mel[3])


def test_frequency_min_is_laion_by_default(tmp_path):
    directory = save_tiny_clap(tmp_path / "clap", seed=2)
    # save the extractor the way the hub's port ships it: frequency_min=0
    laion_feature_extractor(enable_fusion=True, frequency_min=0).save_pretrained(directory)
    default = ClapAudioEmbedder.from_pretrained(str(directory))
    kept = ClapAudioEmbedder.from_pretrained(str(directory), frequency_min=None)
    assert default.feature_extractor.frequency_min == 50.0
    assert kept.feature_extractor.frequency_min == 0
    reference = laion_feature_extractor(enable_fusion=True)
    np.testing.assert_array_equal(default.feature_extractor.mel_filters, reference.mel_filters)
    assert not np.array_equal(kept.feature_extractor.mel_filters, reference.mel_filters)
    clip = [_clip(2.0, 12)]
    assert not np.allclose(default.embed(clip), kept.embed(clip))
    assert default.config_dict()["frequency_min"] == 50.0


def test_rebuild_feature_extractor_keeps_other_settings():
    original = laion_feature_extractor(enable_fusion=False, max_length_s=5, top_db=80)
    rebuilt = rebuild_feature_extractor(original, frequency_min=20.0)
    assert (rebuilt.max_length_s, rebuilt.top_db, rebuilt.truncation, rebuilt.frequency_min) == (5, 80, "rand_trunc", 20.0)


def test_unbatched_mode_close_to_exact(fused):
    clips = [_clip(s, i) for i, s in enumerate([1.0, 15.0, 6.0])]
    fast = ClapAudioEmbedder(fused.model, fused.feature_extractor, batch_size=3, batch_invariant=False)
    np.testing.assert_allclose(fast.embed(clips), fused.embed(clips), rtol=0, atol=1e-5)


def test_errors(tmp_path, fused):
    with pytest.raises(PretrainedNotFoundError, match="enclap-tests/no-such-clap"):
        ClapAudioEmbedder.from_pretrained("enclap-tests/no-such-clap")
    with pytest.raises(PretrainedNotFoundError, match="does not exist"):
        ClapAudioEmbedder.from_pretrained(str(tmp_path / "nothing-here"))
    directory = save_tiny_clap(tmp_path / "clap", seed=0)
    with pytest.raises(ConfigError, match="fusion model"):
        ClapAudioEmbedder.from_pretrained(str(directory), enable_fusion=False)
    with pytest.raises(ConfigError, match="truncation='rand_trunc'"):
        ClapAudioEmbedder(fused.model, laion_feature_extractor(enable_fusion=False))
    with pytest.raises(ValueError, match="waveform 1: is empty"):
        fused.embed([_clip(1.0, 0), np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match="waveform 0: expected a mono"):
        fused.embed([np.zeros((10, 2), np.float32)])
    with pytest.raises(ValueError, match="waveform 0: holds NaN"):
        fused.embed([np.full(100, np.inf, np.float32)])
