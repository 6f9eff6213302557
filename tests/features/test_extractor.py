"""FeatureExtractor: waveforms or files at any rate -> codes + CLAP embedding, batch-independent."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from enclap.audio import load_audio
from enclap.errors import AudioError, PretrainedNotFoundError
from enclap.features.extractor import ClipFeatures, FeatureExtractor

from ..audio_helpers import tone, write_audio, write_bad_files
from .factories import tiny_feature_extractor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    return tiny_feature_extractor(tmp_path_factory.mktemp("models"))


def _noisy_tone(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (tone(seconds, rate, freq=220.0 * (seed + 1)) + 0.05 * rng.standard_normal(int(round(seconds * rate)))).astype(
        np.float32
    )


def soxr_vhq(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """The documented resampling (soxr, VHQ quality), called directly rather than through enclap.audio."""
    import soxr

    return soxr.resample(samples.astype(np.float32), rate, target, quality="VHQ").astype(np.float32)


def test_attributes_and_types(extractor):
    assert extractor.num_codebooks == 16 and extractor.d_clap == 512
    (features,) = extractor.extract([(_noisy_tone(1.0, 24_000, 0), 24_000)])
    assert isinstance(features, ClipFeatures)
    assert features.codes.shape == (75, 16) and features.codes.dtype == np.int16
    assert features.clap.shape == (512,) and features.clap.dtype == np.float32


def test_any_rate_resampled_per_tower(extractor):
    """Each tower gets the original samples resampled (soxr) straight to its own rate."""
    items = [(_noisy_tone(1.3, 16_000, 1), 16_000), (_noisy_tone(0.7, 44_100, 2), 44_100), (_noisy_tone(2.0, 48_000, 3), 48_000)]
    features = extractor.extract(items)
    for (samples, rate), feats in zip(items, features):
        at_24k = soxr_vhq(samples, rate, 24_000)
        at_48k = soxr_vhq(samples, rate, 48_000)
        assert feats.codes.shape[0] == math.ceil(len(at_24k) / 320)
        np.testing.assert_array_equal(feats.codes, extractor.codec.encode([at_24k])[0])
        np.testing.assert_array_equal(feats.clap, extractor.clap.embed([at_48k])[0])


def test_batch_independence_end_to_end(extractor):
    items = [(_noisy_tone(s, r, i), r) for i, (s, r) in enumerate([(1.0, 24_000), (12.0, 48_000), (1.0, 24_000), (0.3, 16_000)])]
    together = extractor.extract(items)
    for item, feats in zip(items, together):
        (alone,) = extractor.extract([item])
        np.testing.assert_array_equal(feats.codes, alone.codes)
        np.testing.assert_array_equal(feats.clap, alone.clap)


def test_extract_files_matches_extract(extractor, tmp_path):
    paths = [
        write_audio(tmp_path / "a.wav", _noisy_tone(1.0, 16_000, 4), 16_000, subtype="PCM_16"),
        write_audio(tmp_path / "b.flac", np.stack([_noisy_tone(0.8, 44_100, 5), _noisy_tone(0.8, 44_100, 6)], axis=1), 44_100),
    ]
    from_files = extractor.extract_files(paths)
    from_arrays = extractor.extract([load_audio(p) for p in paths])
    for f, a in zip(from_files, from_arrays):
        np.testing.assert_array_equal(f.codes, a.codes)
        np.testing.assert_array_equal(f.clap, a.clap)
    (cut,) = extractor.extract_files([paths[0]], max_seconds=0.5)
    assert cut.codes.shape[0] == math.ceil(0.5 * 24_000 / 320)


def test_bad_files_name_the_file(extractor, tmp_path):
    good = write_audio(tmp_path / "good.wav", _noisy_tone(0.5, 24_000, 7), 24_000)
    for kind, path in write_bad_files(tmp_path / "bad").items():
        with pytest.raises(AudioError) as info:
            extractor.extract_files([good, path])
        assert str(path) in str(info.value), kind
    with pytest.raises(AudioError, match="missing.wav"):
        extractor.extract_files([tmp_path / "missing.wav"])


def test_bad_waveforms(extractor):
    with pytest.raises(ValueError, match="waveform 0: expected a .samples, sample_rate. pair"):
        extractor.extract([np.zeros(100, np.float32)])
    with pytest.raises(ValueError, match="waveform 1: sample rate must be positive"):
        extractor.extract([(np.zeros(100, np.float32) + 0.1, 24_000), (np.zeros(100, np.float32), 0)])
    with pytest.raises(ValueError, match="waveform 0: expected non-empty mono"):
        extractor.extract([(np.zeros(0, np.float32), 24_000)])
    assert extractor.extract([]) == []


def test_config_dict_is_provenance(extractor, tmp_path):
    config = extractor.config_dict()
    json.dumps(config)  # stored by the feature store
    assert config["codec"]["bandwidth"] == 12.0 and config["codec"]["num_codebooks"] == 16
    assert config["codec"]["sample_rate"] == 24_000 and config["codec"]["frame_rate"] == 75.0
    assert config["codec"]["model"].endswith("tiny_encodec")
    assert config["clap"]["model"].endswith("tiny_clap") and config["clap"]["sample_rate"] == 48_000
    assert config["clap"]["frequency_min"] == 50.0 and config["d_clap"] == 512


def test_project_trained_tower_plugs_in(extractor):
    """Any AudioEmbedder works: here a trivial band-energy embedder stands in for a tower trained later."""

    class BandEnergy:
        sample_rate = 16_000
        dim = 8

        def embed(self, waveforms):
            rows = []
            for w in waveforms:
                spectrum = np.abs(np.fft.rfft(w, 512)) ** 2
                row = np.array([band.sum() for band in np.array_split(spectrum, self.dim)], dtype=np.float32)
                rows.append(row / np.linalg.norm(row))
            return np.stack(rows)

        def config_dict(self):
            return {"type": "band-energy", "dim": self.dim}

    custom = FeatureExtractor(extractor.codec, BandEnergy())
    assert custom.d_clap == 8
    samples = _noisy_tone(0.5, 48_000, 8)
    (feats,) = custom.extract([(samples, 48_000)])
    np.testing.assert_array_equal(feats.clap, BandEnergy().embed([soxr_vhq(samples, 48_000, 16_000)])[0])
    assert custom.config_dict()["clap"] == {"type": "band-energy", "dim": 8}


def test_from_pretrained(tmp_path):
    with pytest.raises(PretrainedNotFoundError, match="enclap-tests/none"):
        FeatureExtractor.from_pretrained("enclap-tests/none", str(tmp_path))
    built = tiny_feature_extractor(tmp_path)
    loaded = FeatureExtractor.from_pretrained(str(tmp_path / "tiny_encodec"), str(tmp_path / "tiny_clap"), bandwidth=6.0)
    assert loaded.num_codebooks == 8
    item = [(_noisy_tone(0.6, 24_000, 9), 24_000)]
    (a,), (b,) = built.extract(item), loaded.extract(item)
    np.testing.assert_array_equal(a.codes[:, :8], b.codes)  # residual levels: 6 kbps is a prefix of 12 kbps
    np.testing.assert_array_equal(a.clap, b.clap)
