"""Long recordings: windows streamed in bounded memory, timed captions, the whole-recording choice."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from enclap.audio import load_audio, split_windows, stream_windows, window_count
from enclap.pipeline import CaptioningPipeline, TimedCaptionResult

from .audio_helpers import tone, write_audio, write_bad_files
from .conftest import REPO_ROOT
from .pipeline_factory import build_tiny_checkpoint
from .test_pipeline import independent_mean_log_likelihood

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 16000
# Short captions keep the random captioner cheap; nothing here depends on their length.
FAST = {"num_beams": 2, "max_length": 12}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))  # encoder window 125 frames = 1.67 s


@pytest.fixture(scope="module")
def pipeline(checkpoint):
    return CaptioningPipeline.from_pretrained(checkpoint, device="cpu", batch_size=3, generation=FAST)


def scene(seconds: float, seed: int = 0) -> np.ndarray:
    """Tone, noise and a higher tone in turn: windows that sound different from one another."""
    rng = np.random.default_rng(seed)
    third = int(seconds * RATE) // 3
    parts = [
        tone(third / RATE, RATE, 300.0),
        0.3 * rng.standard_normal(third).astype(np.float32),
        tone((int(seconds * RATE) - 2 * third) / RATE, RATE, 1700.0, amplitude=0.2),
    ]
    return np.concatenate(parts).astype(np.float32)


# ------------------------------------------------------------------------------------------ windowing
@pytest.mark.parametrize("frames", [1, 999, 1000, 1001, 2500, 10_007])
@pytest.mark.parametrize("window, hop", [(1000, 1000), (1000, 400), (1000, 1300), (64, 7)])
@pytest.mark.parametrize("block", [1, 333, 5000])
def test_streamed_windows_are_the_windows_cut_from_the_whole_recording(frames, window, hop, block):
    samples = np.random.default_rng(frames).standard_normal(frames).astype(np.float32)
    if block == 1 and frames > 2500:
        block = 17
    streamed = list(stream_windows((samples[i : i + block] for i in range(0, frames, block)), window, hop))
    cut = split_windows(samples, 1, window, hop)
    assert [start for start, _ in streamed] == [int(w.start) for w in cut]
    assert all(np.array_equal(s, w.samples) for (_, s), w in zip(streamed, cut))
    assert window_count(frames, window, hop) == len(cut)


def test_streaming_holds_about_one_window_not_the_recording():
    """10 MB of audio in 1000 blocks, windows of 1000 samples: at most a few windows and blocks are ever held."""
    import tracemalloc

    def blocks():
        for i in range(1000):
            yield np.full(2500, i, np.float32)  # 10 kB each, made on demand

    tracemalloc.start()
    try:
        count = 0
        for start, samples in stream_windows(blocks(), 1000, 1000):
            assert samples[0] == start // 2500  # the right samples
            count += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == window_count(2_500_000, 1000, 1000) == 2500
    assert peak < 200_000, f"peak {peak} bytes while streaming 10 MB"


# ------------------------------------------------------------------------------------ timed captions
def test_window_captions_are_those_of_the_windows_captioned_alone(pipeline, tmp_path):
    samples = scene(6.0)
    path = write_audio(tmp_path / "long.wav", samples, RATE, subtype="FLOAT")
    window, hop = pipeline.window_seconds, 1.1
    (from_file,) = pipeline.caption_timed([path], window=window, hop=hop)
    (from_array,) = pipeline.caption_timed([(samples, RATE)], window=window, hop=hop)
    cut = split_windows(load_audio(path)[0], RATE, window, hop)
    alone = [pipeline.caption_audio([(w.samples, RATE)])[0] for w in cut]

    assert from_file.error is None and from_file.source == str(path)
    assert [w.caption for w in from_file.windows] == alone
    assert [(w.start, w.end) for w in from_file.windows] == [(w.start, w.end) for w in cut]
    assert from_array.windows == from_file.windows and from_array.caption == from_file.caption
    assert from_file.duration == pytest.approx(6.0)
    assert cut[-1].end == pytest.approx(6.0) and len(cut) == 5  # the last window is aligned to the end
    assert from_file.caption in alone


def test_defaults_tile_the_recording_with_the_encoders_window(pipeline):
    (result,) = pipeline.caption_timed([(scene(4.0), RATE)])
    window = pipeline.max_frames / 75.0
    assert window == pytest.approx(pipeline.window_seconds)
    starts = [w.start for w in result.windows]
    assert starts == pytest.approx([0.0, window, 4.0 - window], abs=1 / RATE)
    assert all(w.end - w.start == pytest.approx(window, abs=1e-4) for w in result.windows)


def test_a_short_recording_is_one_window_captioned_as_in_truncate_mode(pipeline):
    samples = tone(0.9, RATE, 440.0)
    (result,) = pipeline.caption_timed([(samples, RATE)])
    assert [(w.start, w.end) for w in result.windows] == [(0.0, 0.9)]
    assert result.caption == result.windows[0].caption == pipeline.caption_audio([(samples, RATE)])[0]


def test_whole_recording_caption_is_the_most_likely_window_caption(pipeline):
    """Checked against a direct teacher-forced forward of the captioner, one candidate and window at a time."""
    samples = scene(6.0, seed=2)
    (result,) = pipeline.caption_timed([(samples, RATE)], hop=1.0)
    windows = split_windows(samples, RATE, pipeline.window_seconds, 1.0)
    features = [pipeline.features.extract([(w.samples, RATE)])[0] for w in windows]
    candidates = list(dict.fromkeys(w.caption for w in result.windows))
    assert len(candidates) > 1, "the scene's windows must propose different captions for this test to mean anything"
    expected = independent_mean_log_likelihood(pipeline, [f.codes for f in features], [f.clap for f in features], candidates)
    scores = pipeline._mean_log_likelihood([f.codes for f in features], [f.clap for f in features], candidates)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    best = np.sort(expected)[::-1]
    assert best[0] - best[1] > 1e-3, "a near-tie would make the choice depend on rounding"
    assert result.caption == candidates[int(np.argmax(expected))]


def test_captions_do_not_depend_on_the_batch(checkpoint, pipeline):
    a, b = scene(5.0, seed=3), scene(3.5, seed=4)
    together = pipeline.caption_timed([(b, RATE), (a, RATE)])
    alone = pipeline.caption_timed([(a, RATE)])
    one_window_at_a_time = CaptioningPipeline.from_pretrained(checkpoint, device="cpu", batch_size=1, generation=FAST)
    single = one_window_at_a_time.caption_timed([(a, RATE)])
    assert together[1].windows == alone[0].windows == single[0].windows
    assert together[1].caption == alone[0].caption == single[0].caption
    assert together[0].windows == pipeline.caption_timed([(b, RATE)])[0].windows


def test_windows_mode_streams_long_files_and_picks_like_the_timed_mode(checkpoint, tmp_path):
    """Files over whole_clip_seconds are streamed: their caption is the timed mode's whole-recording choice."""
    windows = CaptioningPipeline.from_pretrained(checkpoint, device="cpu", batch_size=3, generation=FAST, long_audio="windows")
    windows.settings.whole_clip_seconds = 3.0
    samples = scene(5.0, seed=5)
    path = write_audio(tmp_path / "long.flac", samples, RATE)
    (result,) = windows.caption_files([path])
    (timed,) = windows.caption_timed([path], hop=windows.window_seconds / 2)
    cut = split_windows(load_audio(path)[0], RATE, windows.window_seconds, windows.window_seconds / 2)
    features = [windows.features.extract([(w.samples, RATE)])[0] for w in cut]
    # each window captioned alone, as one clip of the encoder's window (truncate mode: a window that
    # resamples to one codec frame more than the encoder takes is cropped to its start, as in the timed mode)
    truncate = CaptioningPipeline.from_pretrained(checkpoint, device="cpu", generation=FAST)
    candidates = list(dict.fromkeys(truncate.caption_audio([(w.samples, RATE)])[0] for w in cut))
    assert len(candidates) > 1
    expected = independent_mean_log_likelihood(windows, [f.codes for f in features], [f.clap for f in features], candidates)
    assert result.caption == timed.caption == candidates[int(np.argmax(expected))]


def test_truncate_reads_only_the_start_of_a_long_file(checkpoint, tmp_path):
    truncate = CaptioningPipeline.from_pretrained(checkpoint, device="cpu", generation=FAST)
    truncate.settings.whole_clip_seconds = 3.0
    samples = scene(8.0, seed=6)
    path = write_audio(tmp_path / "long.wav", samples, RATE, subtype="FLOAT")
    first = samples[: 3 * RATE]
    (result,) = truncate.caption_files([path])
    # the reference pipeline on the first 3 s, computed from features the test extracts itself
    expected = truncate.caption_features(truncate.features.extract([(first, RATE)]))
    assert result.caption == expected[0] == truncate.caption_audio([(samples, RATE)])[0]
    # a recording within whole_clip_seconds is read whole, as before
    short = samples[: int(2.5 * RATE)]
    assert truncate.caption_audio([(short, RATE)]) == truncate.caption_features(truncate.features.extract([(short, RATE)]))


def test_bad_inputs_give_errors_not_exceptions(pipeline, tmp_path):
    bad = write_bad_files(tmp_path / "bad")
    nan_late = scene(13.0)
    nan_late[12 * RATE] = np.nan  # in the second 10 s block the file is streamed in
    nan_file = write_audio(tmp_path / "nan_late.wav", nan_late, RATE, subtype="FLOAT")
    good = (scene(2.0), RATE)
    results = pipeline.caption_timed(
        [bad["text"], good, tmp_path / "missing.wav", (np.zeros(0, np.float32), RATE), (np.zeros((10, 2)), RATE),
         bad["truncated"], nan_file], window=30.0,
    )
    assert all(isinstance(r, TimedCaptionResult) for r in results)
    assert [r.error is None for r in results] == [False, True, False, False, False, False, False]
    assert "not a readable audio file" in results[0].error and "no such file" in results[2].error
    assert results[3].source == "waveform 3" and "zero samples" in results[3].error
    assert "mono" in results[4].error and "truncated" in results[5].error
    assert results[1].windows and results[1].caption
    assert "NaN" in results[6].error and "12.00 s" in results[6].error
    # a fault part-way through: its reason, and the windows captioned before it are kept
    (late,) = pipeline.caption_timed([nan_file], window=3.0, hop=3.0)
    assert late.error == results[6].error and late.caption is None
    assert [(w.start, w.end) for w in late.windows] == [(0.0, 3.0), (3.0, 6.0), (6.0, 9.0)]
    with pytest.raises(Exception, match="window and hop"):
        pipeline.caption_timed([good], window=-1)


# ------------------------------------------------------------------------------------ bounded memory
LONG_SECONDS = 6 * 60
_MEASURE = """
import resource, sys
from enclap.jobs.caption import main
code = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def _write_streamed(path, seconds: float, rate: int) -> None:
    """A long FLAC written block by block, so the test itself never holds it."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    block = 10 * rate
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        for i in range(int(seconds * rate) // block):
            t = np.arange(block) / rate
            freq = 200.0 + 50.0 * (i % 17)
            f.write((0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(block)).astype(np.float32))


def _peak_rss_kb(checkpoint, audio, mode: str, tmp_path) -> int:
    args = [str(audio), "--ckpt", str(checkpoint), "--num_beams", "1", "--max_length", "6", "--long_audio", mode,
            "--output", str(tmp_path / f"{audio.stem}-{mode}.jsonl")]
    env = {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.rsplit("MAXRSS_KB", 1)[1].split()[0])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["truncate", "windows", "timestamped"])
def test_peak_memory_of_a_long_recording_is_bounded_by_the_window(mode, tmp_path_factory):
    """6 min vs 30 s at 48 kHz: peak RSS of the CLI in a fresh process stays within 1.5x, in every mode.

    6 min at 48 kHz are 17 M samples (as 18 min at 16 kHz): read whole, resampled and embedded, they take
    far more than half the process's baseline memory (torch + models, about 0.5 GB), so a pipeline that
    held the recording fails; 6 min keeps the number of windows (27, or 53 in windows mode) cheap.
    """
    root = tmp_path_factory.getbasetemp() / "rss"
    if not (root / "ckpt" / "config.json").is_file():
        # the real encoder window (1021 frames, 13.6 s) so the long file has the realistic number of windows
        build_tiny_checkpoint(root / "ckpt", max_position_embeddings=1024)
        _write_streamed(root / "long.flac", LONG_SECONDS, 48000)
        _write_streamed(root / "short.flac", 30, 48000)
    tmp = tmp_path_factory.mktemp(mode)
    short = _peak_rss_kb(root / "ckpt", root / "short.flac", mode, tmp)
    long = _peak_rss_kb(root / "ckpt", root / "long.flac", mode, tmp)
    lines = (tmp / f"long-{mode}.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    assert record["error"] is None and record["caption"]
    if mode == "timestamped":
        window = int(round(1021 / 75 * 48000))
        assert len(record["windows"]) == window_count(LONG_SECONDS * 48000, window, window) == 27
        assert record["duration"] == pytest.approx(LONG_SECONDS)
    assert long <= 1.5 * short, f"{mode}: peak RSS {long / 1024:.0f} MiB for {LONG_SECONDS} s vs {short / 1024:.0f} MiB for 30 s"
