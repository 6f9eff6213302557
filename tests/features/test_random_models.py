"""Random-initialised feature models: deterministic from a seed, loadable by the extraction job, informative."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from enclap.features.clap_embed import ClapAudioEmbedder
from enclap.features.codec import EncodecTokenizer
from enclap.features.extractor import FeatureExtractor
from enclap.features.random_models import (
    RANDOM_MARKER_FILE,
    is_random_model_dir,
    random_clap_model,
    random_encodec_model,
    save_random_feature_models,
)

from ..audio_helpers import tone, write_audio
from ..conftest import torch_threads


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def differing_tensors(a: torch.nn.Module, b: torch.nn.Module) -> int:
    sa, sb = a.state_dict(), b.state_dict()
    return sum(not torch.equal(sa[k], sb[k]) for k in sa if sa[k].is_floating_point())


def test_same_seed_gives_identical_models_at_any_caller_thread_count():
    with torch_threads(2):
        encodec_two = random_encodec_model(seed=3)
        clap_two = random_clap_model(seed=3)
        assert torch.get_num_threads() == 2  # the caller's setting is restored
    with torch_threads(1):
        encodec_one = random_encodec_model(seed=3)
        clap_one = random_clap_model(seed=3)
    assert_same_state(encodec_two, encodec_one)
    assert_same_state(clap_two, clap_one)


def test_another_seed_changes_every_float_tensor_class():
    a, b = random_encodec_model(seed=0), random_encodec_model(seed=1)
    floats = sum(t.is_floating_point() for t in a.state_dict().values())
    # every perturbed tensor differs (the seed reaches them all), not just a few
    assert differing_tensors(a, b) == floats
    assert differing_tensors(random_clap_model(seed=0), random_clap_model(seed=1)) > 0


def test_encodec_keeps_the_real_models_interface():
    model = random_encodec_model(seed=0)
    tokenizer = EncodecTokenizer(model, bandwidth=12.0)
    assert (tokenizer.sample_rate, tokenizer.frame_rate, tokenizer.num_codebooks) == (24_000, 75.0, 16)
    assert model.config.codebook_size == 1024
    assert [model.quantizer.get_num_quantizers_for_bandwidth(b) for b in (1.5, 3.0, 6.0, 12.0, 24.0)] == [2, 4, 8, 16, 32]


def test_codes_vary_from_frame_to_frame_and_with_the_sound():
    tokenizer = EncodecTokenizer(random_encodec_model(seed=0))
    low, high = tone(1.0, 24_000, 220.0, 0.3), tone(1.0, 24_000, 3000.0, 0.3)
    noise = (np.random.default_rng(0).standard_normal(24_000) * 0.2).astype(np.float32)
    codes = tokenizer.encode([low, high, noise])
    assert [c.shape for c in codes] == [(75, 16)] * 3
    # stock codebooks are all equal, so every frame would get code 0; spread codebooks split real frames
    assert len(np.unique(codes[2][:, 0])) > 10
    assert not np.array_equal(codes[0][:, 0], codes[1][:, 0])


def test_save_writes_loadable_directories_with_a_marker(tmp_path):
    paths = save_random_feature_models(tmp_path / "models", seed=5, clap_overrides={"patch_embeds_hidden_size": 16})
    assert (paths.encodec, paths.clap) == (tmp_path / "models" / "encodec", tmp_path / "models" / "clap")
    for directory, what in ((paths.encodec, "EnCodec"), (paths.clap, "CLAP")):
        assert is_random_model_dir(directory)
        marker = json.loads((directory / RANDOM_MARKER_FILE).read_text())
        assert marker["random_init"] is True and marker["model"] == what and marker["seed"] == 5
    assert json.loads((paths.clap / RANDOM_MARKER_FILE).read_text())["settings"]["patch_embeds_hidden_size"] == 16
    assert not is_random_model_dir(tmp_path)

    # the extraction job's loaders read them by local path, weights unchanged
    extractor = FeatureExtractor.from_pretrained(str(paths.encodec), str(paths.clap), bandwidth=12.0, batch_size=2)
    assert (extractor.num_codebooks, extractor.d_clap) == (16, 512)
    assert extractor.clap.sample_rate == 48_000 and extractor.clap.enable_fusion
    assert extractor.clap.model.config.audio_config.hidden_size == 32  # 16 x 2 ** (stages - 1)
    assert_same_state(extractor.codec.model, random_encodec_model(seed=5))
    assert_same_state(extractor.clap.model, random_clap_model(seed=5, patch_embeds_hidden_size=16))


def test_rebuilding_writes_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    first = save_random_feature_models(tmp_path / "a", seed=2)
    second = save_random_feature_models(tmp_path / "b", seed=2)
    for part in ("encodec", "clap"):
        a = load_file(getattr(first, part) / "model.safetensors")
        b = load_file(getattr(second, part) / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


@pytest.mark.slow
def test_extraction_job_runs_on_them(tmp_path):
    from enclap.features.store import open_feature_store
    from enclap.jobs.extract import ExtractConfig, run_extraction

    paths = save_random_feature_models(tmp_path / "models", seed=0)
    audio = tmp_path / "audio"
    write_audio(audio / "low.wav", tone(1.5, 16_000, 300.0, 0.3), 16_000)
    write_audio(audio / "high.wav", tone(0.8, 44_100, 2500.0, 0.3), 44_100)
    config = ExtractConfig(
        input=str(audio), output=str(tmp_path / "store"), encodec=str(paths.encodec), clap=str(paths.clap),
        device="cpu", batch_size=2, decode_workers=0, progress=False,
    )
    with torch_threads(1):
        summary = run_extraction(config)
    assert summary.ok and summary.done == 2
    store = open_feature_store(str(tmp_path / "store"))
    low, high = store["low"], store["high"]
    assert low.codes.shape == (int(np.ceil(1.5 * 75)), 16) and high.codes.shape == (60, 16)
    for clip in (low, high):
        assert clip.clap.shape == (512,) and abs(float(np.linalg.norm(clip.clap)) - 1.0) < 1e-5
    assert float(low.clap @ high.clap) < 0.9999  # different sounds, different embeddings
    assert store.metadata["extractor"]["codec"]["model"] == str(paths.encodec)
