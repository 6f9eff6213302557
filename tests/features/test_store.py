"""Feature stores: the sharded format (round trip, crash safety, resume, workers) and EnCLAP's .npy layout."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from enclap.features.extractor import ClipFeatures
from enclap.features.store import (
    SHARD_DIR,
    STORE_FILE,
    FeatureNotFoundError,
    FeatureReader,
    FeatureStoreError,
    NpyFeatureStore,
    ShardedFeatureStore,
    ShardWriter,
    open_feature_store,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_clips(rng: np.random.Generator, n: int, *, k: int = 16, d: int = 512, max_frames: int = 40, prefix: str = "clip") -> dict[str, ClipFeatures]:
    clips = {}
    for i in range(n):
        frames = int(rng.integers(0, max_frames + 1))  # zero-frame clips are legal and must not shift offsets
        clips[f"{prefix}/{i:05d}.x y"] = ClipFeatures(
            codes=rng.integers(0, 1024, size=(frames, k)).astype(np.int16),
            clap=rng.standard_normal(d).astype(np.float32),
        )
    return clips


def assert_same(got: ClipFeatures, want: ClipFeatures) -> None:
    assert got.codes.dtype == np.int16 and got.clap.dtype == np.float32
    assert got.codes.shape == want.codes.shape and got.clap.shape == want.clap.shape
    np.testing.assert_array_equal(got.codes, want.codes)
    np.testing.assert_array_equal(got.clap, want.clap)


def write_store(root: Path, clips: dict[str, ClipFeatures], **kwargs) -> None:
    with ShardWriter(root, **kwargs) as writer:
        for key, features in clips.items():
            writer.add(key, features)


def shard_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / SHARD_DIR).iterdir() if not p.name.startswith("."))


# --------------------------------------------------------------------------------------------- round trip


def test_round_trip_is_exact_across_shards(tmp_path, rng):
    clips = make_clips(rng, 11)
    write_store(tmp_path / "s", clips, writer_id="w", shard_size=4, metadata={"extractor": {"bandwidth": 12.0}})
    store = ShardedFeatureStore(tmp_path / "s")
    assert isinstance(store, FeatureReader)
    assert len(store) == 11 and store.keys() == list(clips)
    assert store.shards == ["w-000000", "w-000001", "w-000002"]  # 4 + 4 + 3 clips
    assert store.metadata == {"extractor": {"bandwidth": 12.0}}
    assert store.created_by["numpy"] == np.__version__
    assert (store.num_codebooks, store.d_clap) == (16, 512)
    for key in reversed(list(clips)):  # out of write order: offsets are per clip, not sequential
        assert key in store
        assert store.num_frames(key) == clips[key].codes.shape[0]
        assert_same(store[key], clips[key])
    assert "clip/99999.x y" not in store and 3 not in store


def test_three_files_per_shard_and_no_file_per_clip(tmp_path, rng):
    clips = make_clips(rng, 2500, k=4, d=8, max_frames=3)
    write_store(tmp_path / "s", clips, shard_size=1000)
    assert shard_files(tmp_path / "s") == [
        f"0-00000{i}.{part}" for i in range(3) for part in ("clap.npy", "codes.npy", "index.json")
    ]
    store = ShardedFeatureStore(tmp_path / "s")
    assert len(store) == 2500
    for key in rng.choice(list(clips), size=200, replace=False):
        assert_same(store[key], clips[key])


def test_reads_return_plain_arrays_that_outlive_the_store(tmp_path, rng):
    clips = make_clips(rng, 3)
    write_store(tmp_path / "s", clips)
    store = ShardedFeatureStore(tmp_path / "s")
    key = next(k for k, c in clips.items() if c.codes.shape[0] > 0)
    got = store[key]
    assert type(got.codes) is np.ndarray and type(got.clap) is np.ndarray  # copies, not views of the map
    got.codes[:] = 0  # writable and private
    assert_same(store[key], clips[key])


def test_missing_key_names_the_key_and_the_store(tmp_path, rng):
    write_store(tmp_path / "s", make_clips(rng, 2))
    store = ShardedFeatureStore(tmp_path / "s")
    with pytest.raises(KeyError) as info:
        store["test/Santa Motor"]
    assert isinstance(info.value, FeatureNotFoundError)
    assert "'test/Santa Motor'" in str(info.value) and str(tmp_path / "s") in str(info.value)


def test_opening_something_that_is_not_a_store_says_what_to_do(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(FeatureStoreError, match="not a sharded feature store.*encodec_path"):
        ShardedFeatureStore(tmp_path / "plain")
    with pytest.raises(FeatureStoreError, match="no such directory"):
        ShardedFeatureStore(tmp_path / "absent")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / STORE_FILE).write_text(json.dumps({"format": "enclap-sharded-features", "format_version": 99}))
    with pytest.raises(FeatureStoreError, match="format version 99"):
        ShardedFeatureStore(tmp_path / "other")


def test_empty_store_after_writer_without_clips(tmp_path):
    with ShardWriter(tmp_path / "s", metadata={"a": 1}):
        pass
    store = ShardedFeatureStore(tmp_path / "s")
    assert len(store) == 0 and store.keys() == [] and store.num_codebooks is None
    assert store.metadata == {"a": 1}


# --------------------------------------------------------------------------------------------- writer rules


def test_bad_clips_are_refused_with_the_key_named(tmp_path, rng):
    good = make_clips(rng, 1)
    with ShardWriter(tmp_path / "s") as writer:
        writer.add("a", next(iter(good.values())))
        with pytest.raises(ValueError, match="'b'.*differs"):
            writer.add("b", ClipFeatures(codes=np.zeros((3, 8), np.int16), clap=np.zeros(512, np.float32)))
        with pytest.raises(ValueError, match="'c'.*NaN"):
            writer.add("c", ClipFeatures(codes=np.zeros((3, 16), np.int16), clap=np.full(512, np.nan, np.float32)))
        with pytest.raises(ValueError, match="'d'.*outside"):
            writer.add("d", ClipFeatures(codes=np.full((3, 16), -1, np.int64), clap=np.zeros(512, np.float32)))
        with pytest.raises(ValueError, match="'e'.*2-d integer"):
            writer.add("e", ClipFeatures(codes=np.zeros((3, 16), np.float32), clap=np.zeros(512, np.float32)))
        with pytest.raises(ValueError, match="non-empty"):
            writer.add("", next(iter(good.values())))
    assert ShardedFeatureStore(tmp_path / "s").keys() == ["a"]  # refusals left nothing behind


def test_wider_integer_codes_and_1xd_clap_are_accepted(tmp_path, rng):
    codes = rng.integers(0, 1024, size=(7, 16))  # int64, as EnCodec returns them
    clap = rng.standard_normal((1, 512))  # float64 (1, d)
    write_store(tmp_path / "s", {"k": ClipFeatures(codes=codes, clap=clap)})
    got = ShardedFeatureStore(tmp_path / "s")["k"]
    np.testing.assert_array_equal(got.codes, codes)
    np.testing.assert_array_equal(got.clap, clap[0].astype(np.float32))


def test_duplicate_keys_are_refused(tmp_path, rng):
    clips = make_clips(rng, 3)
    first = next(iter(clips))
    with ShardWriter(tmp_path / "s", shard_size=10) as writer:
        writer.add(first, clips[first])
        with pytest.raises(ValueError, match="already in the feature store"):
            writer.add(first, clips[first])  # still pending
    with ShardWriter(tmp_path / "s", writer_id="other") as writer:
        assert first in writer
        with pytest.raises(ValueError, match="already in the feature store"):
            writer.add(first, clips[first])  # committed by another writer earlier


def test_concurrent_writers_that_share_a_key_resolve_to_the_last_shard(tmp_path, rng, caplog):
    a, b = make_clips(rng, 1, prefix="p").values(), make_clips(rng, 1, prefix="p").values()
    a, b = next(iter(a)), next(iter(b))
    assert not np.array_equal(a.clap, b.clap)  # so that reading b back below is telling
    key = "p/00000.x y"
    # Two writers open at once cannot see each other's pending keys.
    wa = ShardWriter(tmp_path / "s", writer_id="a")
    wb = ShardWriter(tmp_path / "s", writer_id="b")
    wa.add(key, a)
    wb.add(key, b)
    wa.close()
    wb.close()
    with caplog.at_level(logging.WARNING, logger="enclap.features.store"):
        store = ShardedFeatureStore(tmp_path / "s")
        assert len(store) == 1
    assert "more than one shard" in caplog.text
    assert_same(store[key], b)  # "b-000000" sorts after "a-000000"


def test_one_writer_id_cannot_be_used_twice_at_once(tmp_path):
    first = ShardWriter(tmp_path / "s", writer_id="rank0")
    try:
        with pytest.raises(FeatureStoreError, match="already writing with writer_id 'rank0'"):
            ShardWriter(tmp_path / "s", writer_id="rank0")
        ShardWriter(tmp_path / "s", writer_id="rank1").close()  # other ids are fine
    finally:
        first.close()
    ShardWriter(tmp_path / "s", writer_id="rank0").close()  # released on close


def test_writer_id_and_shard_size_are_checked(tmp_path):
    with pytest.raises(ValueError, match="writer_id"):
        ShardWriter(tmp_path / "s", writer_id="a-b")
    with pytest.raises(ValueError, match="shard_size"):
        ShardWriter(tmp_path / "s", shard_size=0)


def test_metadata_must_match_the_store(tmp_path, rng):
    write_store(tmp_path / "s", make_clips(rng, 1), metadata={"extractor": {"bandwidth": 12.0}, "d_clap": 512})
    with pytest.raises(FeatureStoreError, match=r"different settings \(differing metadata: extractor\)"):
        ShardWriter(tmp_path / "s", writer_id="x", metadata={"extractor": {"bandwidth": 6.0}, "d_clap": 512})
    ShardWriter(tmp_path / "s", writer_id="x", metadata={"extractor": {"bandwidth": 12.0}, "d_clap": 512}).close()
    ShardWriter(tmp_path / "s", writer_id="y").close()  # no metadata: append without checking
    with pytest.raises(FeatureStoreError, match="JSON"):
        ShardWriter(tmp_path / "t", metadata={"x": object()})


def test_resume_continues_the_sequence_and_keeps_everything(tmp_path, rng):
    clips = make_clips(rng, 9)
    items = list(clips.items())
    write_store(tmp_path / "s", dict(items[:5]), writer_id="rank0", shard_size=2)
    with ShardWriter(tmp_path / "s", writer_id="rank0", shard_size=2) as writer:
        assert writer.committed_keys == {k for k, _ in items[:5]}
        for key, features in items[5:]:
            writer.add(key, features)
    store = ShardedFeatureStore(tmp_path / "s")
    assert store.shards == [f"rank0-{i:06d}" for i in range(5)]  # 2+2+1, then 2+2
    assert store.keys() == list(clips)
    for key, features in clips.items():
        assert_same(store[key], features)


def test_a_view_is_a_snapshot_of_committed_shards(tmp_path, rng):
    clips = make_clips(rng, 4)
    items = list(clips.items())
    writer = ShardWriter(tmp_path / "s", shard_size=2)
    writer.add(*items[0])
    writer.add(*items[1])  # commits shard 0
    writer.add(*items[2])  # pending
    early = ShardedFeatureStore(tmp_path / "s")
    assert early.keys() == [items[0][0], items[1][0]]
    writer.add(*items[3])
    writer.close()
    assert len(early) == 2 and items[3][0] not in early
    assert len(ShardedFeatureStore(tmp_path / "s")) == 4


# --------------------------------------------------------------------------------------------- crash safety


def test_half_written_shard_is_invisible_and_cleaned_up(tmp_path, rng):
    clips = make_clips(rng, 6)
    items = list(clips.items())
    root = tmp_path / "s"
    write_store(root, dict(items[:3]), writer_id="rank0", shard_size=3)
    shards = root / SHARD_DIR
    # What a writer killed mid-shard leaves: temp files, and arrays renamed before their index.
    (shards / ".tmp-rank0-000001.codes.npy.123").write_bytes(b"\x93NUMPY half")
    (shards / ".tmp-rank0-000001.index.json.123").write_text('{"keys": ["clip/0')
    np.save(shards / "rank0-000001.codes.npy", np.zeros((5, 16), np.int16))
    np.save(shards / "rank0-000001.clap.npy", np.zeros((2, 512), np.float32))
    # Another writer's leftovers are not ours to delete (it may be alive).
    (shards / ".tmp-rank1-000000.codes.npy.7").write_bytes(b"x")

    store = ShardedFeatureStore(root)
    assert store.keys() == [k for k, _ in items[:3]] and store.shards == ["rank0-000000"]

    write_store(root, dict(items[3:]), writer_id="rank0", shard_size=3)
    assert not (shards / ".tmp-rank0-000001.codes.npy.123").exists()
    assert (shards / ".tmp-rank1-000000.codes.npy.7").exists()
    store = ShardedFeatureStore(root)
    assert store.shards == ["rank0-000000", "rank0-000001"]
    for key, features in clips.items():
        assert_same(store[key], features)


def test_killed_writer_loses_only_its_uncommitted_clips(tmp_path):
    root = tmp_path / "s"
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from enclap.features.extractor import ClipFeatures
        from enclap.features.store import ShardWriter
        w = ShardWriter({str(root)!r}, writer_id="rank0", shard_size=4)
        for i in range(10):
            w.add(f"k{{i}}", ClipFeatures(codes=np.full((i, 16), i, np.int16), clap=np.full(512, i, np.float32)))
        os._exit(0)  # no close(): like SIGKILL, the two pending clips are never committed
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT, timeout=120)
    store = ShardedFeatureStore(root)
    assert store.keys() == [f"k{i}" for i in range(8)]
    for i in range(8):
        assert (store[f"k{i}"].codes == i).all() and store[f"k{i}"].codes.shape == (i, 16)
    with ShardWriter(root, writer_id="rank0", shard_size=4) as writer:  # the lock died with the process
        writer.add("k8", ClipFeatures(codes=np.zeros((1, 16), np.int16), clap=np.zeros(512, np.float32)))
    assert len(ShardedFeatureStore(root)) == 9


def test_writer_leaving_with_an_exception_commits_what_was_added(tmp_path, rng):
    clips = make_clips(rng, 3)
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s", shard_size=100) as writer:
            for key, features in clips.items():
                writer.add(key, features)
            raise RuntimeError("boom")
    assert ShardedFeatureStore(tmp_path / "s").keys() == list(clips)


def test_a_shard_whose_arrays_disagree_with_its_index_is_reported(tmp_path, rng):
    clips = make_clips(rng, 3, max_frames=5)
    write_store(tmp_path / "s", clips)
    codes_file = tmp_path / "s" / SHARD_DIR / "0-000000.codes.npy"
    np.save(codes_file, np.zeros((999, 16), np.int16))
    store = ShardedFeatureStore(tmp_path / "s")
    with pytest.raises(FeatureStoreError, match=r"0-000000\.codes\.npy: expected int16"):
        store[next(iter(clips))]


# --------------------------------------------------------------------------------------------- processes


def test_pickled_store_carries_no_index_and_reads_the_same(tmp_path, rng):
    clips = make_clips(rng, 300, k=4, d=8)
    write_store(tmp_path / "s", clips, shard_size=64)
    store = ShardedFeatureStore(tmp_path / "s")
    key = list(clips)[123]
    store[key]  # index loaded, one shard mapped
    blob = pickle.dumps(store)
    assert len(blob) < 2000  # root + shard names, not 300 keys and their arrays
    clone = pickle.loads(blob)
    assert clone.keys() == store.keys() and clone.metadata == store.metadata
    for key in list(clips)[::37]:
        assert_same(clone[key], clips[key])


class StoreDataset:
    """A map-style dataset over a store, as a training data pipeline would hold it."""

    def __init__(self, store: ShardedFeatureStore) -> None:
        self.store = store
        self.keys = store.keys()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int):
        key = self.keys[index]
        features = self.store[key]
        return key, features.codes, features.clap, os.getpid()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_random_access_from_two_dataloader_workers(tmp_path, rng, context):
    from torch.utils.data import DataLoader

    clips = make_clips(rng, 120, k=16, d=32, max_frames=20)
    write_store(tmp_path / "s", clips, shard_size=16)
    store = ShardedFeatureStore(tmp_path / "s")
    if context == "fork":
        store[next(iter(clips))]  # maps opened in the parent must keep working in forked children
    order = rng.permutation(len(store)).tolist()
    loader = DataLoader(
        StoreDataset(store), batch_size=None, sampler=order, num_workers=2, multiprocessing_context=context
    )
    seen, pids = set(), set()
    for key, codes, clap, pid in loader:
        np.testing.assert_array_equal(np.asarray(codes), clips[key].codes)
        np.testing.assert_array_equal(np.asarray(clap), clips[key].clap)
        seen.add(key)
        pids.add(int(pid))
    assert seen == set(clips)
    assert len(pids) == 2 and os.getpid() not in pids


# --------------------------------------------------------------------------------------------- EnCLAP layout


def write_enclap_layout(root: Path, clips: dict[str, ClipFeatures], clap_2d: set[str]) -> tuple[Path, Path]:
    """EnCLAP's released layout: int64 (frames, 16) codes and (512,) or (1, 512) float32 embeddings."""
    encodec_root, clap_root = root / "encodec", root / "clap"
    for key, features in clips.items():
        for base, array in (
            (encodec_root, features.codes.astype(np.int64)),
            (clap_root, features.clap[None] if key in clap_2d else features.clap),
        ):
            path = base / f"{key}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, array)
    return encodec_root, clap_root


def test_enclap_npy_layout_reads_both_clap_shapes(tmp_path, rng):
    clips = {
        "test/Santa Motor": make_clips(rng, 1)["clip/00000.x y"],
        "train/FR.CTC.08.CoyuyoS.001": make_clips(rng, 1)["clip/00000.x y"],  # dots inside the name
        "Y-0B_sD_cJU8": make_clips(rng, 1)["clip/00000.x y"],
    }
    encodec_root, clap_root = write_enclap_layout(tmp_path, clips, clap_2d={"test/Santa Motor"})
    assert np.load(clap_root / "test/Santa Motor.npy").shape == (1, 512)
    store = open_feature_store(encodec_path=encodec_root, clap_path=clap_root)
    assert isinstance(store, NpyFeatureStore) and isinstance(store, FeatureReader)
    assert store.keys() == sorted(clips) and len(store) == 3
    for key, features in clips.items():
        assert key in store
        assert_same(store[key], features)  # int16 codes, 1-d float32 embedding, whatever was saved
    clone = pickle.loads(pickle.dumps(store))
    assert_same(clone["test/Santa Motor"], clips["test/Santa Motor"])


def test_enclap_layout_lists_only_complete_clips_and_names_missing_files(tmp_path, rng):
    clips = make_clips(rng, 2, prefix="d")
    encodec_root, clap_root = write_enclap_layout(tmp_path, clips, clap_2d=set())
    np.save(encodec_root / "d" / "codes_only.npy", np.zeros((3, 16), np.int64))
    store = NpyFeatureStore(encodec_root, clap_root)
    assert store.keys() == sorted(clips)
    assert "d/codes_only" not in store and "../etc/passwd" not in store
    with pytest.raises(FeatureNotFoundError) as info:
        store["d/codes_only"]
    assert "'d/codes_only'" in str(info.value) and str(clap_root / "d" / "codes_only.npy") in str(info.value)
    assert str(encodec_root / "d" / "codes_only.npy") not in str(info.value)  # that one exists


def test_enclap_layout_reports_unreadable_or_wrong_arrays(tmp_path, rng):
    clips = make_clips(rng, 1, prefix="d")
    key = next(iter(clips))
    encodec_root, clap_root = write_enclap_layout(tmp_path, clips, clap_2d=set())
    (encodec_root / f"{key}.npy").write_bytes(b"not an array")
    store = NpyFeatureStore(encodec_root, clap_root)
    with pytest.raises(FeatureStoreError, match=r"x y\.npy: not a readable \.npy array"):
        store[key]
    np.save(encodec_root / f"{key}.npy", np.zeros((3, 16), np.float32))
    with pytest.raises(FeatureStoreError, match="expected integer codes"):
        store[key]


def test_open_feature_store_routes_and_explains(tmp_path, rng):
    write_store(tmp_path / "s", make_clips(rng, 1))
    assert isinstance(open_feature_store(tmp_path / "s"), ShardedFeatureStore)
    (tmp_path / "e").mkdir()
    (tmp_path / "c").mkdir()
    with pytest.raises(FeatureStoreError, match="not both"):
        open_feature_store(tmp_path / "s", encodec_path=tmp_path / "e")
    with pytest.raises(FeatureStoreError, match="clap_path is missing"):
        open_feature_store(encodec_path=tmp_path / "e")
    with pytest.raises(FeatureStoreError, match="no features given"):
        open_feature_store()
    with pytest.raises(FeatureStoreError, match="CLAP feature directory not found"):
        open_feature_store(encodec_path=tmp_path / "e", clap_path=tmp_path / "nope")
