"""Feature extraction job: bad files, resume after a kill, two processes == one, manifests, CLI."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from enclap.audio import load_audio
from enclap.errors import ConfigError
from enclap.features.extractor import ClipFeatures, FeatureExtractor
from enclap.features.store import SHARD_DIR, ShardedFeatureStore
from enclap.jobs.extract import ExtractConfig, main, read_failures, run_extraction
from tests.audio_helpers import tone, write_audio, write_bad_files
from tests.conftest import torch_threads
from tests.features.factories import save_tiny_clap, save_tiny_encodec

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRY = REPO_ROOT / "data" / "extract_features.py"
BIN = Path(sys.executable).parent
THREADS = 1  # torch threads per process in every run here (see `reference`)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return save_tiny_encodec(root / "encodec"), save_tiny_clap(root / "clap")


def write_good_clips(folder: Path, count: int, seed: int = 0) -> dict[str, Path]:
    """Clips of several rates, lengths, channel counts and formats; returns key -> path."""
    rng = np.random.default_rng(seed)
    rates = [16_000, 22_050, 44_100, 48_000]
    clips = {}
    for i in range(count):
        rate = rates[i % len(rates)]
        seconds = 0.4 + 0.15 * (i % 7)
        channels = 2 if i % 5 == 3 else 1
        samples = tone(seconds, rate, freq=110.0 * (1 + i % 9), amplitude=0.3, channels=channels)
        samples = samples + 0.05 * rng.standard_normal(samples.shape).astype(np.float32)
        ext = ".flac" if i % 4 == 1 else ".wav"
        key = f"part {i % 3}/clip {i:02d}"
        clips[key] = write_audio(folder / f"{key}{ext}", samples, rate, subtype="PCM_16")
    return clips


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """Good clips among corrupt, empty, non-audio and truncated files."""
    folder = tmp_path_factory.mktemp("mixed")
    good = write_good_clips(folder, 16)
    bad = write_bad_files(folder / "bad")
    (folder / "README.txt").write_text("not an audio extension: ignored, not a failure")
    return folder, good, bad


@pytest.fixture(scope="module")
def reference(models, mixed_folder) -> dict[str, ClipFeatures]:
    """Features computed file by file with the extractor itself, outside the job."""
    encodec, clap = models
    extractor = FeatureExtractor.from_pretrained(str(encodec), str(clap), device="cpu")
    _, good, _ = mixed_folder
    # One torch thread, as every job run below: on CPU a different thread count may flip a near-tie in
    # EnCodec's codeword search, and this test is about batching and processes, not threads.
    with torch_threads(THREADS):
        return {key: extractor.extract_files([path])[0] for key, path in good.items()}


def cli_args(models, input_: Path, output: Path, *extra: str) -> list[str]:
    encodec, clap = models
    return [
        "--input", str(input_), "--output", str(output), "--encodec", str(encodec), "--clap", str(clap),
        "--device", "cpu", "--no-progress", "--threads", str(THREADS), *extra,
    ]


def assert_store_matches(store: ShardedFeatureStore, expected: dict[str, ClipFeatures]) -> None:
    assert sorted(store.keys()) == sorted(expected)
    for key, want in expected.items():
        got = store[key]
        assert got.codes.dtype == np.int16 and got.codes.shape == want.codes.shape, key
        np.testing.assert_array_equal(got.codes, want.codes, err_msg=key)
        np.testing.assert_array_equal(got.clap, want.clap, err_msg=key)


def free_port() -> int:
    import socket

    with socket.socket() as sock:  # other tests may run a distributed job at the same time
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def committed_keys(output: Path) -> list[str]:
    return ShardedFeatureStore(output).keys()


# --------------------------------------------------------------------------------------------- bad files


def test_folder_with_bad_files_keeps_every_good_file_and_names_every_bad_one(
    models, mixed_folder, reference, tmp_path, capsys
):
    folder, good, bad = mixed_folder
    output = tmp_path / "features"
    code = main(cli_args(models, folder, output, "--batch-size", "4", "--shard-size", "3", "--decode-workers", "2"))
    assert code == 1
    store = ShardedFeatureStore(output)
    assert_store_matches(store, reference)
    assert store.metadata["extractor"]["codec"]["bandwidth"] == 12.0
    assert (store.num_codebooks, store.d_clap) == (16, 512)

    failures = dict(read_failures(output))
    assert set(failures) == {str(p) for p in bad.values()}
    assert "empty" in failures[str(bad["empty"])]
    assert "truncated" in failures[str(bad["truncated"])]
    assert "not a readable audio file" in failures[str(bad["text"])]
    out = capsys.readouterr().out
    assert f"{len(good) + len(bad)} clip(s) in the input; {len(good)} extracted, 0 already stored, {len(bad)} failed" in out
    for path in bad.values():
        assert str(path) in out
    assert not (output / ".extract-run").exists()  # per-process reports are merged and removed

    # Rerunning is a no-op for the good files; the bad ones are tried again and reported again.
    code = main(cli_args(models, folder, output))
    assert code == 1
    out = capsys.readouterr().out
    assert f"0 extracted, {len(good)} already stored, {len(bad)} failed" in out
    assert ShardedFeatureStore(output).shards == store.shards


class FakeExtractor:
    """Deterministic stand-in that fails on 8 kHz input and returns a NaN embedding at 11.025 kHz."""

    num_codebooks = 2
    d_clap = 3

    def __init__(self) -> None:
        self.calls: list[int] = []

    def config_dict(self) -> dict:
        return {"fake": True}

    @staticmethod
    def expected(samples: np.ndarray, rate: int) -> ClipFeatures:
        frames = len(samples) // 400
        return ClipFeatures(
            codes=(np.arange(frames * 2).reshape(frames, 2) % 1024).astype(np.int16),
            clap=np.array([len(samples), rate, float(np.abs(samples).sum())], dtype=np.float32),
        )

    def extract(self, waveforms):
        self.calls.append(len(waveforms))
        results = []
        for samples, rate in waveforms:
            if rate == 8000:
                raise RuntimeError("cannot handle 8 kHz")
            features = self.expected(samples, rate)
            if rate == 11025:
                features.clap[0] = np.nan
            results.append(features)
        return results


def test_a_clip_that_fails_extraction_loses_only_itself(tmp_path):
    folder = tmp_path / "audio"
    files = {
        "a": write_audio(folder / "a.wav", tone(0.5, 16000), 16000),
        "b": write_audio(folder / "b.wav", tone(0.5, 8000), 8000),  # extractor raises
        "c": write_audio(folder / "c.wav", tone(0.5, 11025), 11025),  # NaN embedding
        "d": write_audio(folder / "d.wav", tone(0.7, 16000, freq=300), 16000),
    }
    (folder / "e.wav").write_bytes(b"RIFF....garbage")
    import torch

    fake = FakeExtractor()
    config = ExtractConfig(
        input=str(folder), output=str(tmp_path / "out"), device="cpu", batch_size=8, decode_workers=0, progress=False,
        threads=3,
    )
    threads = torch.get_num_threads()
    summary = run_extraction(config, extractor=fake)
    assert torch.get_num_threads() == threads  # the caller's setting is restored

    assert fake.calls == [4, 1, 1, 1, 1]  # the whole decoded batch, then clip by clip after it failed
    assert (summary.done, summary.skipped_existing, summary.total) == (2, 0, 5)
    failed = dict(summary.failed)
    assert failed[str(files["b"])] == "feature extraction failed (RuntimeError: cannot handle 8 kHz)"
    assert "unusable features" in failed[str(files["c"])] and "NaN" in failed[str(files["c"])]
    assert str(folder / "e.wav") in failed
    assert dict(read_failures(tmp_path / "out")) == failed
    expected = {key: FakeExtractor.expected(*load_audio(files[key])) for key in ("a", "d")}
    assert_store_matches(ShardedFeatureStore(tmp_path / "out"), expected)


# --------------------------------------------------------------------------------------------- manifests


def test_manifest_input_keys_clips_like_the_manifest(models, mixed_folder, reference, tmp_path):
    folder, good, _ = mixed_folder
    chosen = sorted(good)[:3]
    manifest = tmp_path / "test.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_path", "caption_1", "caption_2"])
        for key in chosen:
            writer.writerow([f"{key}.npy", "a sound", "another sound"])
        writer.writerow(["missing/clip.npy", "nothing", "here"])
    encodec, clap = models
    config = ExtractConfig(
        input=str(manifest), audio_root=str(folder), output=str(tmp_path / "out"), encodec=str(encodec),
        clap=str(clap), device="cpu", batch_size=2, decode_workers=0, progress=False, threads=THREADS,
    )
    summary = run_extraction(config)
    assert (summary.done, summary.total) == (3, 4)
    assert len(summary.failed) == 1
    file, reason = summary.failed[0]
    assert file.endswith("missing/clip") and "no audio file for manifest entry 'missing/clip.npy'" in reason
    assert_store_matches(ShardedFeatureStore(tmp_path / "out"), {key: reference[key] for key in chosen})


def test_manifest_entry_linked_out_of_the_audio_root_fails_alone(tmp_path):
    root = tmp_path / "audio"
    inside = write_audio(root / "test" / "inside.wav", tone(0.5, 16000), 16000)
    outside = write_audio(tmp_path / "elsewhere" / "secret.wav", tone(0.5, 16000, freq=300), 16000)
    (root / "test" / "linked.wav").symlink_to(outside)
    manifest = tmp_path / "m.csv"
    manifest.write_text("file_path,caption\ntest/inside.npy,a tone\ntest/linked.npy,another tone\n")
    config = ExtractConfig(
        input=str(manifest), audio_root=str(root), output=str(tmp_path / "out"), device="cpu", batch_size=2,
        decode_workers=0, progress=False,
    )
    summary = run_extraction(config, extractor=FakeExtractor())
    assert (summary.done, summary.total) == (1, 2)
    (file, reason), = summary.failed
    assert file == str(root / "test" / "linked.wav") and "outside the audio root" in reason and str(outside) in reason
    assert_store_matches(ShardedFeatureStore(tmp_path / "out"), {"test/inside": FakeExtractor.expected(*load_audio(inside))})


def test_manifest_needs_an_audio_root(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file_path,caption\nx.npy,a dog barks\n")
    config = ExtractConfig(input=str(manifest), output=str(tmp_path / "out"), device="cpu")
    with pytest.raises(ConfigError, match="audio_root is required"):
        run_extraction(config, extractor=FakeExtractor())


# --------------------------------------------------------------------------------------------- usage


def test_entry_point_help_runs():
    result = subprocess.run([sys.executable, str(ENTRY), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--input" in result.stdout and "--audio-root" in result.stdout and "Resumable" in result.stdout


def test_usage_and_config_errors_exit_2_with_a_message(models, mixed_folder, tmp_path, capsys):
    folder, _, _ = mixed_folder
    assert main(["--output", str(tmp_path / "o")]) == 2
    assert "input is required" in capsys.readouterr().err
    assert main(cli_args(models, folder, tmp_path / "o", "batch_size=0")) == 2
    assert "batch_size must be at least 1" in capsys.readouterr().err
    assert main(cli_args(models, folder, tmp_path / "o", "colour=blue")) == 2
    assert "'colour'" in capsys.readouterr().err
    assert main(cli_args(models, tmp_path / "absent", tmp_path / "o")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--input", str(folder), "--output", str(tmp_path / "o"), "--encodec", str(tmp_path / "no_model"), "--device", "cpu"]) == 2
    assert "no_model" in capsys.readouterr().err
    assert main(["--bogus-flag"]) == 2
    assert not (tmp_path / "o" / SHARD_DIR).exists()  # nothing was started


def test_resuming_with_other_settings_is_refused(models, tmp_path, capsys):
    folder = tmp_path / "audio"
    write_good_clips(folder, 2)
    output = tmp_path / "out"
    assert main(cli_args(models, folder, output)) == 0
    assert main(cli_args(models, folder, output, "--bandwidth", "6.0")) == 2
    err = capsys.readouterr().err
    assert "other extractor settings" in err and "bandwidth: stored 12.0, now 6.0" in err


def test_config_file_and_overrides_compose(tmp_path):
    from enclap.jobs.extract import build_parser, config_from_args

    yaml = tmp_path / "x.yaml"
    yaml.write_text(f"base: {REPO_ROOT / 'cfg' / 'extract' / 'default.yaml'}\ninput: in_dir\noutput: out_dir\nbatch_size: 4\n")
    args = build_parser().parse_args(["--config", str(yaml), "batch_size=8", "shard_size=16", "--shard-size", "32"])
    config = config_from_args(args)
    assert (config.input, config.output, config.batch_size, config.shard_size) == ("in_dir", "out_dir", 8, 32)
    assert config.encodec == "facebook/encodec_24khz" and config.max_seconds is None
    with pytest.raises(ConfigError, match="device must be"):
        config_from_args(build_parser().parse_args(["--config", str(yaml), "--device", "gpu"]))


# --------------------------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_killed_run_restarted_redoes_nothing_finished_and_loses_nothing(
    models, mixed_folder, reference, tmp_path, capsys
):
    folder, good, bad = mixed_folder
    output = tmp_path / "killed"
    # One clip per batch and per shard: the run is killed right after its first commit, many clips early.
    args = cli_args(models, folder, output, "--batch-size", "1", "--shard-size", "1", "--decode-workers", "0")
    process = subprocess.Popen(
        [sys.executable, str(ENTRY), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT
    )
    try:
        deadline = time.monotonic() + 300
        while not list((output / SHARD_DIR).glob("*.index.json")):
            assert process.poll() is None, "extraction ended before any shard was committed"
            assert time.monotonic() < deadline, "no shard committed within 300 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    before = committed_keys(output)
    assert 0 < len(before) < len(good), f"the kill was not midway ({len(before)} of {len(good)} committed)"

    assert main(args) == 1  # the bad files still fail
    out = capsys.readouterr().out
    total = len(good) + len(bad)
    assert (
        f"{total} clip(s) in the input; {len(good) - len(before)} extracted, {len(before)} already stored, "
        f"{len(bad)} failed" in out
    )
    store = ShardedFeatureStore(output)
    assert_store_matches(store, reference)
    # The restart continued the writer's numbering: one shard per clip, none rewritten.
    assert store.shards == [f"rank0-{i:06d}" for i in range(len(good))]


# --------------------------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_two_processes_give_exactly_the_single_process_result(models, mixed_folder, reference, tmp_path):
    folder, good, bad = mixed_folder
    output = tmp_path / "two"
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    # `accelerate launch --cpu --num_processes 2` would silently run one process; --multi_gpu with
    # ACCELERATE_USE_CPU starts two CPU processes joined by gloo.
    result = subprocess.run(
        [
            str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            str(ENTRY), *cli_args(models, folder, output, "--batch-size", "3", "--shard-size", "2", "--decode-workers", "1"),
        ],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]  # the bad files
    assert result.stdout.count("Feature extraction into") == 1  # one summary, from the main process
    assert f"{len(good)} extracted, 0 already stored, {len(bad)} failed" in result.stdout
    assert "2 process(es)" in result.stdout
    store = ShardedFeatureStore(output)
    writers = {name.split("-")[0] for name in store.shards}
    assert writers == {"rank0", "rank1"}  # both processes really worked
    assert_store_matches(store, reference)
    assert {file for file, _ in read_failures(output)} == {str(p) for p in bad.values()}
