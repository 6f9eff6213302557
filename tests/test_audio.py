"""The audio front end on files the tests write: formats, channel layouts, rates, long files, bad input."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from enclap.audio import audio_info, find_audio_files, load_audio, split_windows, stream_audio, to_mono
from enclap.errors import AudioDecodeError, AudioError, AudioNotFoundError, EmptyAudioError, NonFiniteAudioError

from .audio_helpers import tone, write_audio, write_bad_files

FORMATS = [
    ("WAV", "PCM_U8", "wav", 1e-2),
    ("WAV", "PCM_16", "wav", 1e-4),
    ("WAV", "PCM_24", "wav", 1e-6),
    ("WAV", "PCM_32", "wav", 1e-6),
    ("WAV", "FLOAT", "wav", 1e-7),
    ("WAV", "DOUBLE", "wav", 1e-7),
    ("FLAC", "PCM_16", "flac", 1e-4),
    ("FLAC", "PCM_24", "flac", 1e-6),
]


@pytest.mark.parametrize("fmt,subtype,ext,tol", FORMATS)
def test_lossless_formats_read_back_the_samples(tmp_path, fmt, subtype, ext, tol):
    x = tone(0.5, 16000, amplitude=0.5)
    path = write_audio(tmp_path / f"x.{ext}", x, 16000, subtype=subtype, format=fmt)
    y, sr = load_audio(path)
    assert sr == 16000 and y.dtype == np.float32 and y.shape == x.shape
    assert np.max(np.abs(y - x)) < tol


@pytest.mark.parametrize("fmt,subtype,ext", [("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")])
def test_lossy_formats_keep_the_tone(tmp_path, fmt, subtype, ext):
    x = tone(1.0, 16000, freq=440.0, amplitude=0.5)
    path = write_audio(tmp_path / f"x.{ext}", x, 16000, subtype=subtype, format=fmt)
    y, sr = load_audio(path)
    assert sr == 16000 and y.dtype == np.float32
    # Lossy codecs add a delay of a few ms; the spectrum peak must still be at 440 Hz.
    spectrum = np.abs(np.fft.rfft(y))
    peak_hz = np.argmax(spectrum) * sr / len(y)
    assert abs(peak_hz - 440.0) < 3.0
    assert abs(len(y) - len(x)) < 0.1 * sr


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_downmix_averages_all_channels(tmp_path, channels):
    x = tone(0.25, 8000, freq=200.0, amplitude=0.3, channels=channels)
    path = write_audio(tmp_path / "multi.wav", x, 8000, subtype="FLOAT")
    y, _ = load_audio(path)
    expected = x if channels == 1 else x.astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(y, expected, atol=1e-7)
    assert audio_info(path).channels == channels


def test_right_channel_only_source_is_not_lost(tmp_path):
    x = np.zeros((8000, 2), dtype=np.float32)
    x[:, 1] = tone(1.0, 8000, amplitude=0.8)
    y, _ = load_audio(write_audio(tmp_path / "right.wav", x, 8000, subtype="FLOAT"))
    assert np.abs(y).max() == pytest.approx(0.4, abs=1e-6)


@pytest.mark.parametrize("native", [8000, 11025, 16000, 22050, 44100, 48000, 96000, 192000])
@pytest.mark.parametrize("target", [24000, 48000])
def test_resampling_matches_an_independent_polyphase_resampler(tmp_path, native, target):
    x = tone(0.5, native, freq=1000.0, amplitude=0.5)
    path = write_audio(tmp_path / f"r{native}.wav", x, native, subtype="FLOAT")
    y, sr = load_audio(path, target)
    assert sr == target and y.dtype == np.float32
    assert len(y) == round(len(x) * target / native)
    g = np.gcd(native, target)
    ref = resample_poly(x.astype(np.float64), target // g, native // g)
    # Compare away from the edges, where the two filters' transients differ.
    edge = target // 50
    assert np.max(np.abs(y[edge:-edge] - ref[edge : len(y) - edge])) < 2e-3


def test_silence_is_valid_audio(tmp_path):
    path = write_audio(tmp_path / "silence.wav", np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")
    y, _ = load_audio(path, 24000)
    assert y.shape == (24000,) and not y.any()


def test_samples_beyond_full_scale_are_kept_and_reported(tmp_path, caplog):
    x = tone(0.1, 8000, amplitude=1.5)
    path = write_audio(tmp_path / "hot.wav", x, 8000, subtype="FLOAT")
    y, _ = load_audio(path)
    assert np.abs(y).max() == pytest.approx(1.5, abs=1e-6)
    assert "exceeds full scale" in caplog.text


def test_max_seconds_truncation_is_said(tmp_path, caplog):
    path = write_audio(tmp_path / "long.wav", tone(3.0, 8000), 8000, subtype="PCM_16")
    y, _ = load_audio(path, max_seconds=1.0)
    assert len(y) == 8000
    assert "read the first 1.00 s of 3.00 s" in caplog.text


def test_bad_inputs_raise_typed_errors_naming_the_file(tmp_path):
    bad = write_bad_files(tmp_path)
    expected = {
        "empty": (EmptyAudioError, "empty"),
        "text": (AudioDecodeError, "not a readable audio file"),
        "garbage": (AudioDecodeError, "not a readable audio file"),
        "truncated": (AudioDecodeError, "truncated"),
    }
    for name, path in bad.items():
        cls, words = expected[name]
        with pytest.raises(cls) as info:
            load_audio(path)
        assert str(path) in str(info.value) and words in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(AudioNotFoundError, match="no such file"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioNotFoundError, match="not a regular file"):
        load_audio(tmp_path)


def test_zero_frames_and_non_finite_samples(tmp_path):
    empty = write_audio(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), 8000, subtype="PCM_16")
    with pytest.raises(EmptyAudioError, match="zero samples"):
        load_audio(empty)
    for bad_value in (np.nan, np.inf):
        x = tone(0.1, 8000)
        x[10] = bad_value
        path = write_audio(tmp_path / f"nf{bad_value}.wav", x, 8000, subtype="FLOAT")
        with pytest.raises(NonFiniteAudioError, match="NaN or infinite"):
            load_audio(path)
        with pytest.raises(NonFiniteAudioError):
            list(stream_audio(path))


def test_truncated_flac_and_mp3(tmp_path):
    for fmt, sub, ext in (("FLAC", "PCM_16", "flac"), ("MP3", "MPEG_LAYER_III", "mp3")):
        full = write_audio(tmp_path / f"full.{ext}", tone(2.0, 16000), 16000, subtype=sub, format=fmt)
        data = full.read_bytes()
        cut = tmp_path / f"cut.{ext}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(AudioError) as info:
            load_audio(cut)
        assert str(cut) in str(info.value)


def test_stream_concatenates_to_the_whole_file(tmp_path):
    x = tone(7.3, 16000, freq=300.0)
    path = write_audio(tmp_path / "s.wav", x, 16000, subtype="FLOAT")
    whole, _ = load_audio(path, 24000)
    streamed = np.concatenate(list(stream_audio(path, 24000, block_seconds=1.0)))
    assert abs(len(streamed) - len(whole)) <= 2
    n = min(len(whole), len(streamed))
    # Block-wise resampling equals one-shot resampling away from the final sample.
    assert np.max(np.abs(streamed[: n - 100] - whole[: n - 100])) < 1e-4


@pytest.mark.slow
def test_one_hour_file_streams_in_bounded_memory(tmp_path):
    sr = 8000
    path = tmp_path / "hour.wav"
    block = tone(60.0, sr, freq=100.0, amplitude=0.2)
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        for _ in range(60):
            f.write(block)
    assert audio_info(path).duration == pytest.approx(3600.0)
    tracemalloc.start()
    total = 0
    for chunk in stream_audio(path, 16000, block_seconds=10.0):
        total += len(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert abs(total - 3600 * 16000) <= 2
    # The whole file at 16 kHz float32 would be 230 MB; streaming must stay far below.
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_split_windows_covers_everything_with_overlap():
    sr = 100
    x = np.arange(1050, dtype=np.float32)
    windows = split_windows(x, sr, window_seconds=3.0, hop_seconds=2.0)
    assert [w.start for w in windows] == [0.0, 2.0, 4.0, 6.0, 7.5]
    assert all(len(w.samples) == 300 for w in windows)
    covered = np.zeros(len(x), bool)
    for w in windows:
        covered[int(w.start * sr) : int(w.end * sr)] = True
        np.testing.assert_array_equal(w.samples, x[int(w.start * sr) : int(w.end * sr)])
    assert covered.all()
    short = split_windows(x[:50], sr, window_seconds=3.0)
    assert len(short) == 1 and len(short[0].samples) == 50
    with pytest.raises(ValueError):
        split_windows(x, sr, window_seconds=0)


def test_to_mono_and_find_audio_files(tmp_path):
    assert to_mono(np.ones(5, np.float32)).shape == (5,)
    write_audio(tmp_path / "b" / "x.flac", tone(0.1, 8000), 8000)
    write_audio(tmp_path / "a.wav", tone(0.1, 8000), 8000)
    (tmp_path / "readme.txt").write_text("not audio")
    found = find_audio_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.wav", "b/x.flac"]
    with pytest.raises(AudioNotFoundError):
        find_audio_files(tmp_path / "missing")
