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

from .factories import save_tiny_clap, tiny_clap_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

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


def test_row_dependent_backend_falls_back_to_canonical(caplog):
    """If rows of a forward ever influenced each other, embeddings still equal the canonical ones."""
    import logging

    model = tiny_clap_model(seed=6)
    extractor = laion_feature_extractor(enable_fusion=True)
    clips = [_clip(s, 30 + i) for i, s in enumerate([2.0, 3.0, 4.0, 12.0, 5.0, 6.0, 7.0])]
    clean = ClapAudioEmbedder(model, extractor).embed(clips[:1])
    # a hook whose output depends on the row index stands in for a backend that is not row-invariant
    handle = model.audio_projection.register_forward_hook(
        lambda mod, inp, out: out + 1e-3 * torch.arange(out.shape[0], dtype=out.dtype)[:, None]
    )
    try:
        embedder = ClapAudioEmbedder(model, extractor, batch_size=8)
        with caplog.at_level(logging.WARNING):
            hooked = embedder.embed(clips)
        assert "computing every clip alone" in caplog.text and embedder._fixed_shape_ok is False
    finally:
        handle.remove()
    reference = ClapAudioEmbedder(model, extractor).embed(clips)  # no hook: the canonical embeddings
    np.testing.assert_array_equal(hooked, reference)
    np.testing.assert_array_equal(hooked[:1], clean)


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


def test_saved_truncation_is_fitted_to_the_model(tmp_path):
    directory = save_tiny_clap(tmp_path / "unfused", seed=3, enable_fusion=False)
    laion_feature_extractor(enable_fusion=True).save_pretrained(directory)  # a mismatching saved extractor
    embedder = ClapAudioEmbedder.from_pretrained(str(directory))
    assert embedder.enable_fusion is False and embedder.feature_extractor.truncation == "rand_trunc"
    mel, longer = embedder.input_features(_clip(14.0, 13))
    assert mel.shape == (1, 1001, 64) and longer is True


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


# ----------------------------------------------------------------------------------- LAION checkpoints
def _to_laion_key(key: str) -> list[str]:
    """transformers ClapModel key -> LAION CLAP key(s), written from laion_clap/clap_module sources.

    model.py: CLAP.audio_branch (HTSAT), .text_branch (RobertaModel), .audio_projection /
    .text_projection = Sequential(Linear, act, Linear), logit_scale_a/_t. htsat.py: bn0; PatchEmbed
    .proj/.norm/.mel_conv2d/.fusion_model (feature_fusion.AFF .local_att/.global_att Sequentials);
    BasicLayer.blocks[j] = SwinTransformerBlock(.norm1, .attn = WindowAttention(.qkv fused, .proj,
    .relative_position_bias_table, .relative_position_index), .norm2, .mlp = Mlp(.fc1, .fc2));
    .downsample = PatchMerging(.reduction, .norm); .norm. Query/key/value map to one fused qkv.
    """
    import re

    rules = [
        (r"^audio_model\.audio_encoder\.batch_norm\.", "audio_branch.bn0."),
        (r"^audio_model\.audio_encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"audio_branch.layers.\1.blocks.\2.norm1."),
        (r"^audio_model\.audio_encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"audio_branch.layers.\1.blocks.\2.norm2."),
        (r"^audio_model\.audio_encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.", r"audio_branch.layers.\1.blocks.\2.attn.qkv."),
        (r"^audio_model\.audio_encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.", r"audio_branch.layers.\1.blocks.\2.attn."),
        (r"^audio_model\.audio_encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.output\.dense\.", r"audio_branch.layers.\1.blocks.\2.attn.proj."),
        (r"^audio_model\.audio_encoder\.layers\.(\d+)\.blocks\.(\d+)\.intermediate\.dense\.", r"audio_branch.layers.\1.blocks.\2.mlp.fc1."),
        (r"^audio_model\.audio_encoder\.layers\.(\d+)\.blocks\.(\d+)\.output\.dense\.", r"audio_branch.layers.\1.blocks.\2.mlp.fc2."),
        (r"^audio_model\.audio_encoder\.", "audio_branch."),
        (r"^(audio|text)_projection\.linear1\.", r"\1_projection.0."),
        (r"^(audio|text)_projection\.linear2\.", r"\1_projection.2."),
        (r"^text_model\.", "text_branch."),
    ]
    for pattern, replacement in rules:
        if re.match(pattern, key):
            return ["module." + re.sub(pattern, replacement, key)]
    return ["module." + key]


def _laion_state_dict(model) -> dict:
    """A LAION-layout state dict holding ``model``'s weights, plus the tensors only LAION has."""
    hf = model.state_dict()
    laion: dict = {}
    for key, value in hf.items():
        if key == "text_model.embeddings.token_type_ids":
            continue  # a non-persistent buffer in the transformers version LAION used
        (target,) = _to_laion_key(key)
        if ".attn.qkv." in target:
            if target in laion:
                continue
            stem = key.rsplit(".attention.self.", 1)[0] + ".attention.self."
            leaf = key.rsplit(".", 1)[1]
            laion[target] = torch.cat([hf[f"{stem}{p}.{leaf}"] for p in ("query", "key", "value")]).clone()
        else:
            laion[target] = value.clone()
    gen = torch.Generator().manual_seed(5)
    a = model.config.audio_config
    d = model.config.projection_dim
    extras = {
        "module.audio_branch.spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
        "module.audio_branch.spectrogram_extractor.stft.conv_imag.weight": (513, 1, 1024),
        "module.audio_branch.logmel_extractor.melW": (513, 64),
        "module.audio_branch.tscam_conv.weight": (a.num_classes, a.hidden_size, 2, 3),
        "module.audio_branch.tscam_conv.bias": (a.num_classes,),
        "module.audio_branch.head.weight": (a.num_classes, a.num_classes),
        "module.audio_branch.head.bias": (a.num_classes,),
        "module.audio_transform.sequential.0.weight": (d, d),
        "module.audio_transform.sequential.0.bias": (d,),
        "module.audio_transform.sequential.3.weight": (d, d),
        "module.audio_transform.sequential.3.bias": (d,),
        "module.text_transform.sequential.0.weight": (d, d),
        "module.text_transform.sequential.0.bias": (d,),
        "module.text_transform.sequential.3.weight": (d, d),
        "module.text_transform.sequential.3.bias": (d,),
        # shifted-window mask of block 1 of stage 0 (64 windows of 8x8 tokens)
        "module.audio_branch.layers.0.blocks.1.attn_mask": (64, 64, 64),
    }
    for key, shape in extras.items():
        laion[key] = torch.randn(shape, generator=gen)
    return laion


def _expected_laion_keys(depths: list[int], text_layers: int) -> set[str]:
    """LAION's key names for a fused HTSAT with ``depths`` and a RoBERTa with ``text_layers`` layers."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    wb = ["weight", "bias"]
    keys: set[str] = set()

    def add(prefix: str, leaves: list[str]) -> None:
        keys.update(f"module.{prefix}.{leaf}" for leaf in leaves)

    add("audio_branch.bn0", bn)
    for name in ("proj", "norm", "mel_conv2d"):
        add(f"audio_branch.patch_embed.{name}", wb)
    add("audio_branch.patch_embed.fusion_model.local_att.0", wb)
    add("audio_branch.patch_embed.fusion_model.local_att.1", bn)
    add("audio_branch.patch_embed.fusion_model.local_att.3", wb)
    add("audio_branch.patch_embed.fusion_model.local_att.4", bn)
    add("audio_branch.patch_embed.fusion_model.global_att.1", wb)
    add("audio_branch.patch_embed.fusion_model.global_att.2", bn)
    add("audio_branch.patch_embed.fusion_model.global_att.4", wb)
    add("audio_branch.patch_embed.fusion_model.global_att.5", bn)
    for stage, depth in enumerate(depths):
        for block in range(depth):
            p = f"audio_branch.layers.{stage}.blocks.{block}"
            for sub in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
                add(f"{p}.{sub}", wb)
            add(f"{p}.attn", ["relative_position_bias_table", "relative_position_index"])
        if stage < len(depths) - 1:
            add(f"audio_branch.layers.{stage}.downsample.reduction", ["weight"])
            add(f"audio_branch.layers.{stage}.downsample.norm", wb)
    add("audio_branch.layers.0.blocks.1", ["attn_mask"])
    add("audio_branch.norm", wb)
    add("audio_branch.tscam_conv", wb)
    add("audio_branch.head", wb)
    add("audio_branch.spectrogram_extractor.stft.conv_real", ["weight"])
    add("audio_branch.spectrogram_extractor.stft.conv_imag", ["weight"])
    add("audio_branch.logmel_extractor", ["melW"])
    add("text_branch.embeddings", ["position_ids"])
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        add(f"text_branch.embeddings.{name}", ["weight"])
    add("text_branch.embeddings.LayerNorm", wb)
    for layer in range(text_layers):
        p = f"text_branch.encoder.layer.{layer}"
        for sub in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                    "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"):
            add(f"{p}.{sub}", wb)
    add("text_branch.pooler.dense", wb)
    for branch in ("audio", "text"):
        add(f"{branch}_projection.0", wb)
        add(f"{branch}_projection.2", wb)
        add(f"{branch}_transform.sequential.0", wb)
        add(f"{branch}_transform.sequential.3", wb)
    keys.update({"module.logit_scale_a", "module.logit_scale_t"})
    return keys


def _text_features(model, ids):
    with torch.inference_mode():
        out = model.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids))
    return out.pooler_output if hasattr(out, "pooler_output") else out


def test_laion_converter_round_trip(tmp_path):
    from transformers import ClapModel

    from enclap.clap.convert import convert_laion_clap_checkpoint, load_laion_clap

    source = tiny_clap_model(seed=4)
    config = source.config
    laion = _laion_state_dict(source)
    assert set(laion) == _expected_laion_keys(list(config.audio_config.depths), config.text_config.num_hidden_layers)

    converted = convert_laion_clap_checkpoint(laion, config)
    target = ClapModel(config).eval()
    result = target.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key

    extractor = laion_feature_extractor(enable_fusion=True)
    clips = [_clip(4.0, 20), _clip(17.0, 21)]
    np.testing.assert_array_equal(
        ClapAudioEmbedder(target, extractor).embed(clips), ClapAudioEmbedder(source, extractor).embed(clips)
    )
    ids = torch.tensor([[0, 5, 9, 33, 2]])
    torch.testing.assert_close(_text_features(target, ids), _text_features(source, ids), rtol=0, atol=0)

    # through a file shaped like LAION's: {"epoch", "state_dict" (module.-prefixed), "optimizer"...}
    path = tmp_path / "tiny-laion-fusion.pt"
    torch.save({"epoch": 45, "name": "tiny", "state_dict": laion, "optimizer": {"state": {}}}, path)
    loaded = load_laion_clap(path, config=config)
    embedder = ClapAudioEmbedder.from_pretrained(str(path), laion_config=config)
    assert embedder.feature_extractor.frequency_min == 50.0 and embedder.feature_extractor.truncation == "fusion"
    np.testing.assert_array_equal(embedder.embed(clips), ClapAudioEmbedder(source, extractor).embed(clips))
    np.testing.assert_array_equal(ClapAudioEmbedder(loaded, extractor).embed(clips[:1]), embedder.embed(clips[:1]))


def test_laion_converter_fills_missing_buffers_and_rejects_unknown_keys():
    from enclap.clap.convert import convert_laion_clap_checkpoint
    from enclap.errors import CheckpointError

    source = tiny_clap_model(seed=4)
    laion = _laion_state_dict(source)
    # later laion_clap versions delete position_ids before saving; relative indices are recomputable
    del laion["module.text_branch.embeddings.position_ids"]
    index_key = "module.audio_branch.layers.1.blocks.0.attn.relative_position_index"
    del laion[index_key]
    converted = convert_laion_clap_checkpoint(laion, source.config)
    expected = source.state_dict()
    assert set(converted) == set(expected)
    for key in ("text_model.embeddings.position_ids", "audio_model.audio_encoder.layers.1.blocks.0.attention.self.relative_position_index"):
        assert torch.equal(converted[key], expected[key]), key
    laion["module.audio_branch.something_new.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="something_new"):
        convert_laion_clap_checkpoint(laion, source.config)


@pytest.mark.parametrize(
    "name,hidden,depths,fusion",
    [
        ("630k-audioset-fusion-best.pt", 96, [2, 2, 6, 2], True),
        ("630k-fusion-best.pt", 96, [2, 2, 6, 2], True),
        ("630k-audioset-best.pt", 96, [2, 2, 6, 2], False),
        ("/models/630k-best.pt", 96, [2, 2, 6, 2], False),
        ("music_audioset_epoch_15_esc_90.14.pt", 128, [2, 2, 12, 2], False),
        ("music_speech_audioset_epoch_15_esc_89.98.pt", 128, [2, 2, 12, 2], False),
    ],
)
def test_configs_of_released_checkpoints(name, hidden, depths, fusion):
    from enclap.clap.convert import clap_config_for_checkpoint

    config = clap_config_for_checkpoint(name)
    audio = config.audio_config
    assert (audio.patch_embeds_hidden_size, list(audio.depths), audio.enable_fusion) == (hidden, depths, fusion)
    assert audio.hidden_size == hidden * 8 and config.projection_dim == 512
    assert config.text_config.hidden_size == 768 and config.text_config.num_hidden_layers == 12


def test_unknown_checkpoint_and_wrong_architecture(tmp_path):
    from enclap.clap.convert import clap_config_for_checkpoint, load_laion_clap
    from enclap.errors import CheckpointError

    with pytest.raises(ConfigError, match="unknown LAION CLAP checkpoint 'my-clap'"):
        clap_config_for_checkpoint("/x/my-clap.pt")
    custom = clap_config_for_checkpoint("/x/my-clap.pt", audio_model="HTSAT-base", enable_fusion=True)
    assert custom.audio_config.enable_fusion and custom.audio_config.patch_embeds_hidden_size == 128
    with pytest.raises(ConfigError, match="unknown override"):
        clap_config_for_checkpoint("630k-best.pt", fusion=True)
    with pytest.raises(PretrainedNotFoundError, match="630k-best.pt"):
        load_laion_clap(tmp_path / "630k-best.pt")
    # tiny weights under a released name: the chosen (full-size) architecture does not fit -> clear error
    path = tmp_path / "630k-audioset-fusion-best.pt"
    torch.save({"state_dict": _laion_state_dict(tiny_clap_model(seed=0))}, path)
    with pytest.raises(CheckpointError, match=r"630k-audioset-fusion-best.pt: does not fit .*shape mismatch"):
        load_laion_clap(path)
