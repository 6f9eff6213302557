"""Webdataset shards: written from a manifest, read back exactly; the checker; the stream; training from shards."""

from __future__ import annotations

import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from enclap.audio import load_audio, load_audio_bytes
from enclap.data.manifest import CaptionedClip, read_manifest, write_eval_manifest, write_train_manifest
from enclap.data.shards import (
    SIZES_FILE,
    SKIPPED_KEY,
    ShardStream,
    check_shards,
    decode_sample_audio,
    main,
    sample_captions,
    write_shards,
)
from enclap.errors import AudioDecodeError, ConfigError, ManifestError
from enclap.training.loop import LossTerms, TrainingTask

from ..audio_helpers import tone, write_audio

REPO = Path(__file__).resolve().parents[2]


def make_clips(root: Path, n: int = 17) -> tuple[Path, Path]:
    """``n`` clips of 1 to 3 captions (wav and flac, 16 and 22.05 kHz, dots in some names) and their manifest."""
    audio = root / "audio"
    pairs = []
    for i in range(n):
        name = f"train/clip.{i:02d}.v2" if i % 4 == 0 else f"train/clip_{i:02d}"
        rate = 22050 if i % 3 == 0 else 16000
        ext = "flac" if i % 2 else "wav"
        write_audio(audio / f"{name}.{ext}", tone(0.25 + 0.05 * i, rate, freq=200.0 + 40 * i), rate)
        for j in range(1 + i % 3):
            pairs.append((f"{name}.npy", f"caption {j} of clip {i}"))
    manifest = root / "train.csv"
    write_train_manifest(manifest, pairs)
    return manifest, audio


def as_record(sample: dict, epoch: int) -> dict:
    """A raw sample -> what the read-back test compares (a module-level function: DataLoader workers pickle it)."""
    meta = json.loads(sample["json"])
    return {"clip_key": meta["clip_key"], "text": sample_captions(sample), "frames": len(decode_sample_audio(sample))}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    manifest, audio = make_clips(root)
    result = write_shards(manifest, audio, root / "shards", max_samples_per_shard=3, progress=False)
    return {"root": root, "manifest": manifest, "audio": audio, "result": result,
            "pattern": str(root / "shards" / "data-{000000..000005}.tar")}


def test_written_shards_hold_the_manifests_clips_and_sizes(written):
    result = written["result"]
    assert [p.name for p in result.shards] == [f"data-{i:06d}.tar" for i in range(6)]
    assert result.sizes == {f"data-{i:06d}.tar": 3 for i in range(5)} | {"data-000005.tar": 2}
    index = json.loads(result.sizes_file.read_text())
    assert index["shards"] == result.sizes and index["samples"] == 17 and index["skipped"] == []
    with tarfile.open(result.shards[0]) as archive:
        names = archive.getnames()
        assert sorted(names) == ["000000000.json", "000000000.wav", "000000001.flac", "000000001.json",
                                 "000000002.json", "000000002.wav"]
        meta = json.loads(archive.extractfile("000000000.json").read())
        raw = archive.extractfile("000000001.flac").read()
    assert meta == {"text": ["caption 0 of clip 0"], "original_filename": "clip.00.v2.wav", "clip_key": "train/clip.00.v2"}
    assert raw == (written["audio"] / "train" / "clip_01.flac").read_bytes()  # the file's bytes, untouched


def read_back(pattern: str, rank: int, world: int, workers: int, epoch: int = 0) -> list[dict]:
    stream = ShardStream(pattern, as_record, seed=7, shuffle_buffer=4)
    stream.set_stream(process_index=rank, num_processes=world, num_workers=workers)
    stream.set_epoch(epoch)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return list(loader)


def test_two_processes_by_two_workers_read_every_pair_exactly_once(written):
    expected = {clip.key: list(clip.captions) for clip in read_manifest(written["manifest"])}
    by_rank = [read_back(written["pattern"], rank, 2, 2) for rank in range(2)]
    keys = [r["clip_key"] for part in by_rank for r in part]
    assert len(keys) == len(expected) and Counter(keys) == Counter(list(expected))  # no duplicate, none missing
    assert not {r["clip_key"] for r in by_rank[0]} & {r["clip_key"] for r in by_rank[1]}
    got = {r["clip_key"]: r["text"] for part in by_rank for r in part}
    assert got == expected  # every caption of every clip, in order
    for record in by_rank[0][:3]:  # the audio decodes to the file's samples
        path = next((written["audio"]).glob(f"{record['clip_key']}.*"))
        assert record["frames"] == len(load_audio(path)[0])
    # the stream is a function of (seed, epoch, process, worker): the same again, another order next epoch
    again = read_back(written["pattern"], 0, 2, 2)
    assert [r["clip_key"] for r in again] == [r["clip_key"] for r in by_rank[0]]
    other = read_back(written["pattern"], 0, 2, 2, epoch=1)
    assert [r["clip_key"] for r in other] != [r["clip_key"] for r in by_rank[0]]


def test_declared_epoch_gives_every_process_its_batches(written):
    """With a quota, each process yields exactly batches_per_epoch full batches, however the workers split it."""
    def collate(examples):
        return {"keys": [e["clip_key"] for e in examples], SKIPPED_KEY: sum(e[SKIPPED_KEY] for e in examples)}

    for workers in (0, 1, 2):
        stream = ShardStream(written["pattern"], as_record, seed=3, shuffle_buffer=0, epoch_examples=40)
        stream.set_stream(process_index=1, num_processes=2, batch_size=4, batches_per_epoch=5, num_workers=workers)
        batches = list(DataLoader(stream, batch_size=4, num_workers=workers, collate_fn=collate))
        assert [len(b["keys"]) for b in batches] == [4] * 5, workers
        assert sum(b[SKIPPED_KEY] for b in batches) == 0
    resampled = ShardStream(written["pattern"], as_record, seed=3, resampled=True, epoch_examples=40)
    resampled.set_stream(process_index=0, num_processes=2, batch_size=4, batches_per_epoch=3, num_workers=2)
    first = [b["keys"] for b in DataLoader(resampled, batch_size=4, num_workers=2, collate_fn=collate)]
    assert [len(keys) for keys in first] == [4] * 3
    # resampling is seeded too: the same epoch again gives the same draws, the next epoch others
    assert [b["keys"] for b in DataLoader(resampled, batch_size=4, num_workers=2, collate_fn=collate)] == first
    resampled.set_epoch(1)
    assert [b["keys"] for b in DataLoader(resampled, batch_size=4, num_workers=2, collate_fn=collate)] != first


def test_a_stream_needs_a_shard_per_reader_unless_resampled(written):
    stream = ShardStream(written["pattern"], as_record)
    with pytest.raises(ConfigError, match="6 shard\\(s\\) for 2 process\\(es\\) x 4"):
        stream.set_stream(process_index=0, num_processes=2, num_workers=4)
    ShardStream(written["pattern"], as_record, resampled=True).set_stream(process_index=0, num_processes=2, num_workers=4)


def test_missing_audio_fails_before_anything_is_written_or_is_skipped_when_asked(tmp_path):
    manifest, audio = make_clips(tmp_path, n=6)
    (audio / "train" / "clip_03.flac").unlink()
    (audio / "train" / "clip_05.flac").write_bytes(b"not audio at all" * 20)
    out = tmp_path / "shards"
    with pytest.raises(ManifestError) as err:
        write_shards(manifest, audio, out, progress=False)
    text = str(err.value)
    assert "clip_03" in text and "no audio file" in text and "clip_05.flac" in text and "not a readable audio file" in text
    assert not out.exists() or not list(out.iterdir())  # nothing half-written
    result = write_shards(manifest, audio, out, skip_bad=True, progress=False)
    assert result.samples == 4 and len(result.skipped) == 2
    assert len(json.loads((out / SIZES_FILE).read_text())["skipped"]) == 2
    with pytest.raises(ConfigError, match="already holds"):
        write_shards(manifest, audio, out, skip_bad=True, progress=False)
    again = write_shards(manifest, audio, out, skip_bad=True, overwrite=True, max_samples_per_shard=2, progress=False)
    assert sorted(p.name for p in out.glob("*.tar")) == [p.name for p in again.shards] and again.samples == 4


def test_load_audio_bytes_matches_load_audio_and_refuses_truncated_data(tmp_path):
    for ext in ("wav", "flac"):
        path = write_audio(tmp_path / f"a.{ext}", tone(0.5, 22050, channels=2), 22050)
        np.testing.assert_array_equal(load_audio_bytes(path.read_bytes(), 16000, name="a")[0], load_audio(path, 16000)[0])
    data = (tmp_path / "a.wav").read_bytes()
    with pytest.raises(AudioDecodeError, match="truncated"):
        load_audio_bytes(data[: len(data) // 2], name="cut.wav")


def damage(shards: Path) -> dict[str, str]:
    """A corrupt audio member and a bad json in shard 0, shard 1 truncated, a corrupt member header in shard 2."""
    def member(shard: Path, name: str) -> tarfile.TarInfo:
        with tarfile.open(shard) as archive:
            return archive.getmember(name)

    first = shards / "data-000000.tar"
    audio, meta = member(first, "000000001.flac"), member(first, "000000002.json")
    with open(first, "r+b") as fh:
        fh.seek(audio.offset_data)  # the flac's header overwritten
        fh.write(b"\x13" * 64)
        fh.seek(meta.offset_data)
        fh.write(b"{broken")
    second = shards / "data-000001.tar"
    cut = member(second, "000000004.wav")  # the file ends in the middle of this member
    os.truncate(second, cut.offset_data + cut.size // 2)
    third = shards / "data-000002.tar"
    header = member(third, "000000007.flac").offset  # a member header of the second sample made unreadable
    with open(third, "r+b") as fh:
        fh.seek(header + 100)
        fh.write(b"\xff" * 20)
    return {"audio": audio.name, "json": meta.name}


def test_checker_names_every_bad_sample_and_keeps_going(written, tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(written["root"] / "shards", shards)
    assert check_shards(str(shards / "data-{000000..000005}.tar"), progress=False).ok
    damage(shards)
    report = check_shards(str(shards / "data-{000000..000005}.tar"), progress=False)
    found = [(Path(p.shard).name, p.key, p.reason.split(" (")[0].split(":")[0]) for p in report.problems]
    assert ("data-000000.tar", "000000001", "undecodable audio") in found
    assert ("data-000000.tar", "000000002", "bad json") in found
    assert ("data-000001.tar", "000000004", "truncated tar") in found
    assert ("data-000002.tar", None, "corrupt tar") in found
    assert {Path(p.shard).name for p in report.problems} == {"data-000000.tar", "data-000001.tar", "data-000002.tar"}
    # it kept going: the good samples of the damaged shards and every sample of the others were read
    assert [report.samples[str(shards / f"data-{i:06d}.tar")] for i in range(6)] == [1, 1, 1, 3, 3, 2]
    out = tmp_path / "report.json"
    assert main(["check", str(shards / "data-{000000..000005}.tar"), "--report", str(out), "--no-progress"]) == 1
    saved = json.loads(out.read_text())
    assert saved["bad"] == len(report.problems) and saved["good_samples"] == 11
    assert main(["check", str(written["pattern"]), "--no-progress"]) == 0


def test_bad_samples_in_a_stream_are_skipped_and_counted(written, tmp_path, caplog):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(written["root"] / "shards", shards)
    damage(shards)
    stream = ShardStream(str(shards / "data-{000000..000005}.tar"), as_record, shuffle_buffer=0)
    stream.set_stream(process_index=0, num_processes=1)
    with caplog.at_level("WARNING", logger="enclap.data.shards"):
        records = list(stream)
    assert len(records) == 11
    # shard 0: 2 bad samples; shard 1: the cut sample and the one never reached; shard 2: 2 after the bad header
    assert sum(r[SKIPPED_KEY] for r in records) == 17 - 11
    assert "data-000000.tar" in caplog.text and "undecodable audio" in caplog.text and "000000002" in caplog.text


def test_training_config_takes_shards_or_a_manifest():
    from enclap.jobs.train_clap import load_clap_train_config

    with pytest.raises(ConfigError, match="not both"):
        load_clap_train_config(REPO / "cfg" / "clap" / "tiny_shards.yaml", ["data.train_file=x.csv"])
    config = load_clap_train_config(REPO / "cfg" / "clap" / "tiny_shards.yaml")
    assert config.data.train_shards.endswith("data-{000000..000007}.tar") and not config.data.train_file


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def shard_training(tmp_path_factory):
    from enclap.data.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("shard_training")
    data = generate_dataset(root / "data", SyntheticConfig(num_train=24, num_valid=0, num_test=0, seconds=3.0, sample_rate=16000))
    result = write_shards(data["train"], data["audio_root"], root / "shards", max_samples_per_shard=6, progress=False)
    for shard in result.shards:  # the first sample of every shard is bad: each pass reads it before the others
        with tarfile.open(shard) as archive:
            audio = next(m for m in archive.getmembers() if m.name.startswith("000") and not m.name.endswith(".json"))
        with open(shard, "r+b") as fh:
            fh.seek(audio.offset_data)
            fh.write(b"\x00" * 64)
    return {"root": root, "pattern": str(root / "shards" / "data-{000000..000003}.tar")}


def train_from_shards(setup: dict, name: str, *extra: str):
    from enclap.jobs.train_clap import load_clap_train_config, train_clap

    torch.set_num_threads(1)
    overrides = [
        f"output_dir={setup['root'] / name}", "data.validation_file=''", "data.audio_root=''",
        f"data.train_shards={setup['pattern']}", "data.shard_epoch_samples=20", "data.shuffle_buffer=0",
        "model.clip_seconds=3.0", "train.train_batch_size=10", "train.progress=false", "train.lr_scheduler_type=constant",
        "train.num_warmup_steps=0", "train.checkpointing_steps=1", "train.checkpoints_total_limit=0", *extra,
    ]
    return train_clap(load_clap_train_config(REPO / "cfg" / "clap" / "tiny_shards.yaml", overrides))


@pytest.mark.slow
def test_a_tiny_tower_trains_from_shards_skips_bad_samples_and_resumes_exactly(shard_training):
    from safetensors.torch import load_file

    from enclap.training.tracking import read_train_log

    whole = train_from_shards(shard_training, "whole", "train.num_train_epochs=2", "train.dataloader_num_workers=2")
    assert whole.status == "completed" and whole.global_step == 4  # 20 declared examples / 10 = 2 steps an epoch
    # every shard's first sample is bad and every pass reads all 4 shards (20 good samples are needed)
    assert whole.bad_samples == 8
    log = [e for e in read_train_log(whole.output_dir) if e["type"] == "train"]
    assert log[-1]["bad_samples_total"] == 8 and log[-1]["step"] == 4
    assert "8 bad training sample(s) skipped" in whole.summary()

    # resumed at an epoch boundary, then mid-epoch (after step 3 of 4): the same weights, the same count
    first = train_from_shards(shard_training, "resumed", "train.num_train_epochs=1", "train.dataloader_num_workers=2")
    assert first.global_step == 2 and first.bad_samples == 4
    middle = train_from_shards(shard_training, "resumed", "train.max_train_steps=3", "train.dataloader_num_workers=2")
    assert middle.resumed_from is not None and middle.global_step == 3
    resumed = train_from_shards(shard_training, "resumed", "train.num_train_epochs=2", "train.dataloader_num_workers=2")
    assert resumed.resumed_from.name == "step_3" and resumed.global_step == 4 and resumed.bad_samples == 8
    a = load_file(str(whole.final_dir / "model.safetensors"))
    b = load_file(str(resumed.final_dir / "model.safetensors"))
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------ the loop's streaming path
class ToyStream(torch.utils.data.IterableDataset):
    """The loop's streaming contract on toy data: a stream from (seed, epoch, process, worker); every 7th item 'bad'."""

    def __init__(self, epoch_examples: int) -> None:
        super().__init__()
        self.epoch_examples = epoch_examples
        self.epoch = 0
        self.calls: list[tuple] = []

    def set_stream(self, *, process_index, num_processes, batch_size, batches_per_epoch, num_workers):
        self.calls.append((process_index, num_processes, batch_size, batches_per_epoch, num_workers))
        self.rank, self.batch_size, self.batches = process_index, batch_size, batches_per_epoch

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.epoch, self.rank, worker])
        wanted = self.batch_size * len(range(worker, self.batches, workers))
        made = skipped = 0
        while made < wanted:
            x = rng.standard_normal(4).astype(np.float32)
            if rng.integers(7) == 0:
                skipped += 1
                continue
            made += 1
            yield {"x": torch.from_numpy(x), "y": torch.tensor([x[0] - x[1], x[2] * x[3]]), SKIPPED_KEY: skipped}
            skipped = 0


class ToyRegressor(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2))

    def forward(self, x, y):
        return ((self.net(x) - y) ** 2).sum().reshape(1)


def toy_collate(items):
    return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}


class ToyStreamTask(TrainingTask):
    def __init__(self, epoch_examples: int) -> None:
        torch.manual_seed(0)
        self.module = ToyRegressor()
        self.loss_terms = LossTerms(weights=[1.0])
        self.train_dataset = ToyStream(epoch_examples)
        self.collate_fn = toy_collate

    def counts(self, batch):
        return torch.tensor([float(batch["x"].shape[0])], dtype=torch.float64)


def run_toy(tmp_path: Path, name: str, **settings):
    from enclap.training.loop import LoopConfig, run_training

    config = LoopConfig(train_batch_size=6, learning_rate=0.05, lr_scheduler_type="constant", num_warmup_steps=0,
                        checkpointing_steps="1", checkpoints_total_limit=0, report_to="none", progress=False,
                        cpu=True, mixed_precision="no", dataloader_num_workers=0, **settings)
    task = ToyStreamTask(epoch_examples=20)  # 3 global batches of 6 an epoch (2 examples left out)
    return task, run_training(task, config, output_dir=tmp_path / name, seed=5)


def test_the_loop_trains_a_streaming_set_and_resumes_it_mid_epoch_exactly(tmp_path):
    from safetensors.torch import load_file

    from enclap.training.tracking import read_train_log

    torch.set_num_threads(1)
    task, whole = run_toy(tmp_path, "whole", num_train_epochs=2)
    assert task.train_dataset.calls == [(0, 1, 6, 3, 0)]  # the geometry's micro-batch, batches from the declared length
    assert whole.global_step == 6 and whole.total_steps == 6
    assert whole.bad_samples > 0
    log = [e for e in read_train_log(whole.output_dir) if e["type"] == "train"]
    assert log[-1]["bad_samples_total"] == whole.bad_samples
    _, part = run_toy(tmp_path, "resumed", max_train_steps=4)  # stops inside epoch 1
    _, rest = run_toy(tmp_path, "resumed", num_train_epochs=2)
    assert rest.resumed_from.name == "step_4" and rest.global_step == 6
    assert rest.bad_samples == whole.bad_samples  # the dropped batches' bad samples are not counted twice
    a = load_file(str(whole.last_checkpoint / "model.safetensors"))
    b = load_file(str(rest.last_checkpoint / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
