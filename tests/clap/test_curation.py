"""DU / DS / ADS curation (enclap.clap.curation) and the embedding dumps / CLI (enclap.jobs.curate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enclap.clap.curation import (
    CuratedPair,
    EmbeddingTable,
    curate,
    curate_ads,
    curate_du,
    domain_captions,
    read_curated_manifest,
    row_top_k,
    search,
    select_domain_captions,
    write_curated_manifest,
)
from enclap.errors import ConfigError, ManifestError

F = lambda x: float(np.float32(x))  # noqa: E731  (a float32 similarity as the search computes it)
SIX, EIGHT = F(0.6), F(0.8)


# ------------------------------------------------------------------------------------------ hand-made embeddings
# Products of these 2-d vectors are exact in float32: a0.t = [1, .6, .8, 0, .6, -1], a1.t = [0, .8, .6, 1, .8, 0]
def _tables():
    v6, v8 = np.float32(0.6), np.float32(0.8)
    audio = EmbeddingTable(["a0", "a1"], np.array([[1, 0], [0, 1]], dtype=np.float32), {"kind": "audio"})
    text = EmbeddingTable(
        [f"t{i}" for i in range(6)],
        np.array([[1, 0], [v6, v8], [v8, v6], [0, 1], [v6, v8], [-1, 0]], dtype=np.float32),
        {"kind": "text"},
    )
    return audio, text


def _pairs(pairs):
    return [(p.audio_id, p.text_id, round(p.similarity, 6)) for p in pairs]


@pytest.mark.parametrize("block_size", [1, 2, 3, 4096])
def test_du_threshold_is_inclusive_and_ties_rank_by_caption_index(block_size):
    audio, text = _tables()
    got = curate_du(audio, text, threshold=SIX, block_size=block_size)
    assert _pairs(got) == [
        ("a0", "t0", 1.0), ("a0", "t2", 0.8), ("a0", "t1", 0.6), ("a0", "t4", 0.6),
        ("a1", "t3", 1.0), ("a1", "t1", 0.8), ("a1", "t4", 0.8), ("a1", "t2", 0.6),
    ]
    # a hair above the tie drops the tied pairs
    above = curate_du(audio, text, threshold=float(np.nextafter(np.float32(SIX), np.float32(1))), block_size=block_size)
    assert [p for p in _pairs(got) if p[2] != 0.6] == _pairs(above)


@pytest.mark.parametrize("block_size", [1, 2, 4, 4096])
def test_du_top_k_breaks_ties_by_lower_caption_index(block_size):
    audio, text = _tables()
    assert _pairs(curate_du(audio, text, top_k=2, block_size=block_size)) == [
        ("a0", "t0", 1.0), ("a0", "t2", 0.8), ("a1", "t3", 1.0), ("a1", "t1", 0.8)]
    assert _pairs(curate_du(audio, text, top_k=3, block_size=block_size)) == [
        ("a0", "t0", 1.0), ("a0", "t2", 0.8), ("a0", "t1", 0.6),
        ("a1", "t3", 1.0), ("a1", "t1", 0.8), ("a1", "t4", 0.8)]


@pytest.mark.parametrize("block_size", [1, 5, 4096])
def test_du_threshold_and_top_k_together_and_top_k_past_the_corpus(block_size):
    audio, text = _tables()
    both = curate_du(audio, text, threshold=0.7, top_k=3, block_size=block_size)
    assert _pairs(both) == [("a0", "t0", 1.0), ("a0", "t2", 0.8), ("a1", "t3", 1.0), ("a1", "t1", 0.8), ("a1", "t4", 0.8)]
    everything = curate_du(audio, text, top_k=100, block_size=block_size)
    assert [(p.audio_id, p.text_id) for p in everything] == [
        ("a0", t) for t in ("t0", "t2", "t1", "t4", "t3", "t5")] + [("a1", t) for t in ("t3", "t1", "t4", "t2", "t0", "t5")]


def test_empty_results_and_bad_selections():
    audio, text = _tables()
    assert curate_du(audio, text, threshold=1.5) == []
    assert curate_du(audio, text, threshold=1.5, top_k=2) == []
    result = curate(audio, text, threshold=1.5, sweep=[0.5])
    assert result.clips_without_pair == 2 and result.captions_used == 0
    with pytest.raises(ConfigError, match="threshold and/or top_k"):
        curate_du(audio, text)
    with pytest.raises(ConfigError, match="top_k"):
        curate_du(audio, text, top_k=0)
    with pytest.raises(ConfigError, match="different CLAP models"):
        curate_du(audio, EmbeddingTable(["x"], np.ones((1, 3), dtype=np.float32)), top_k=1)


def test_ds_selects_captions_near_any_label():
    _, text = _tables()
    labels = EmbeddingTable(["dog", "rain"], np.array([[1, 0], [0, 1]], dtype=np.float32), {"kind": "labels"})
    # best label of each caption: t0 1 (dog), t1 .8 (rain), t2 .8 (dog), t3 1 (rain), t4 .8 (rain), t5 0
    assert select_domain_captions(labels, text, threshold=EIGHT) == ["t0", "t1", "t2", "t3", "t4"]
    assert select_domain_captions(labels, text, threshold=0.9) == ["t0", "t3"]
    assert select_domain_captions(labels, text, top_k=1) == ["t0", "t3"]
    assert select_domain_captions(labels, text, top_k=2) == ["t0", "t1", "t2", "t3"]  # rain: t3, then t1 (tie with t4)
    assert select_domain_captions(labels, text, threshold=EIGHT, top_k=1, block_size=1) == ["t0", "t3"]
    assert select_domain_captions(labels, text, threshold=1.01) == []
    scored = domain_captions(labels, text, threshold=0.0)
    assert [(d.text_id, d.label, round(d.similarity, 6)) for d in scored] == [
        ("t0", "dog", 1.0), ("t1", "rain", 0.8), ("t2", "dog", 0.8), ("t3", "rain", 1.0), ("t4", "rain", 0.8),
        ("t5", "rain", 0.0)]  # t5: dog -1, rain 0


def test_ads_is_du_over_the_domain_captions():
    audio, text = _tables()
    # a0.t1 = .6, a0.t5 = -1; a1.t1 = .8, a1.t5 = 0 (inclusive at 0)
    assert _pairs(curate_ads(audio, text, ["t1", "t5"], threshold=0.0)) == [
        ("a0", "t1", 0.6), ("a1", "t1", 0.8), ("a1", "t5", 0.0)]
    assert _pairs(curate_ads(audio, text, ["t5", "t1"], top_k=1)) == [("a0", "t1", 0.6), ("a1", "t1", 0.8)]
    assert curate_ads(audio, text, [], top_k=3) == []
    domain = ["t0", "t1", "t2", "t3", "t4"]
    assert curate_ads(audio, text, domain, top_k=2) == curate_du(audio, text.subset(domain), top_k=2)
    with pytest.raises(ConfigError, match="not in the embedding table"):
        curate_ads(audio, text, ["t1", "nope"], top_k=1)


def test_target_labels_and_their_prompted_embeddings(tmp_path):
    from enclap.clap.curation import PAPER_PROMPT, label_embeddings, read_target_labels

    (tmp_path / "esc.csv").write_text("filename,fold,target,category\na.wav,1,0,dog_bark\nb.wav,2,1,rain\nc.wav,1,0,dog_bark\n")
    (tmp_path / "tut.txt").write_text("# TUT scenes\nbeach\n\ncity center\n")
    assert read_target_labels(tmp_path / "esc.csv") == ["dog bark", "rain"]
    assert read_target_labels(tmp_path / "tut.txt") == ["beach", "city center"]
    assert len(read_target_labels(None)) == 50  # ESC-50's classes ship with the package
    seen = []

    class Texts:
        def embed_texts(self, texts):
            seen.extend(texts)
            rows = np.array([[1.0, 0.0] if "dog" in t else [0.0, 1.0] if t.startswith("a ") else [1.0, 1.0] for t in texts])
            return rows / np.linalg.norm(rows, axis=1, keepdims=True)  # a text tower's rows are unit length

    table = label_embeddings(Texts(), ["dog bark", "rain"])
    assert seen == [PAPER_PROMPT.format(label="dog bark"), PAPER_PROMPT.format(label="rain")] == ["this is a sound of dog bark", "this is a sound of rain"]
    assert table.ids == ["dog bark", "rain"] and np.allclose(table.vectors, [[1, 0], [2 ** -0.5, 2 ** -0.5]])
    two = label_embeddings(Texts(), ["rain"], ("a {label}", "{label}"))  # mean of [0, 1] and [.71, .71], renormalised
    expected = np.array([0.5 ** 0.5, 1 + 0.5 ** 0.5])
    assert np.allclose(two.vectors[0], expected / np.linalg.norm(expected))


# ------------------------------------------------------------------------------------------ against a dense computation
def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _dense(queries, candidates, threshold, top_k):
    scores = queries @ candidates.T
    out = []
    for i, row in enumerate(scores):
        order = np.lexsort((np.arange(row.size), -row))
        if top_k is not None:
            order = order[:top_k]
        out += [(i, int(j), float(row[j])) for j in order if threshold is None or row[j] >= threshold]
    return out


@pytest.mark.parametrize("threshold,top_k", [(3.0, None), (None, 7), (1.0, 5), (None, 500), (-100.0, None)])
def test_blockwise_search_equals_dense(threshold, top_k):
    # small integers: every product and sum is exact in float32 whatever the block shape, and ties abound
    rng = np.random.default_rng(14)
    queries = rng.integers(-3, 4, size=(103, 12)).astype(np.float32)
    candidates = rng.integers(-3, 4, size=(77, 12)).astype(np.float32)
    expected = _dense(queries, candidates, threshold, top_k)
    scores = queries @ candidates.T
    sweep = [-2.0, 0.5, 3.0]
    for block in (3, 7, 50, 76, 77, 1000):
        got = search(queries, candidates, threshold=threshold, top_k=top_k, block_size=block, sweep=sweep)
        assert list(zip(got.query.tolist(), got.candidate.tolist(), got.similarity.tolist())) == expected, block
        stats = got.stats
        for t, kept, with_pair in zip(stats.thresholds, stats.kept, stats.queries_with_pair):
            per_row = (scores >= t).sum(axis=1)
            if top_k is not None:
                per_row = np.minimum(per_row, top_k)
            assert kept == per_row.sum() and with_pair == (per_row > 0).sum(), (block, t)
        assert stats.histogram.sum() == scores.size


def test_blockwise_search_on_unit_vectors_matches_dense_similarities():
    rng = np.random.default_rng(7)
    queries, candidates = _unit(rng, 90, 16), _unit(rng, 130, 16)
    scores = queries @ candidates.T
    for threshold, top_k in ((0.4, None), (None, 5), (0.2, 3)):
        expected = _dense(queries, candidates, threshold, top_k)
        for block in (13, 64, 4096):
            got = search(queries, candidates, threshold=threshold, top_k=top_k, block_size=block, sweep=[0.0, 0.5])
            assert list(zip(got.query.tolist(), got.candidate.tolist())) == [(i, j) for i, j, _ in expected]
            np.testing.assert_allclose(got.similarity, [s for _, _, s in expected], atol=1e-6)
            dense_bins = np.clip(np.floor(scores * np.float32(100) + np.float32(100)), 0, 199).astype(int)
            assert np.array_equal(got.stats.histogram, np.bincount(dense_bins.ravel(), minlength=200))
            # the bins are those of np.histogram up to float32 rounding at the edges
            assert np.abs(got.stats.histogram - np.histogram(scores, bins=got.stats.bin_edges)[0]).sum() <= 4


def test_row_top_k_is_exact_at_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(40, 23)).astype(np.float32)  # many ties
    for k in (1, 3, 10, 22, 23, 30):
        got = row_top_k(scores, k)
        for row, picked in zip(scores, got):
            expected = np.sort(np.lexsort((np.arange(row.size), -row))[:k])
            assert picked.tolist() == expected.tolist()


# ------------------------------------------------------------------------------------------ tables and manifests
def test_embedding_table_round_trip_and_checks(tmp_path):
    rng = np.random.default_rng(0)
    table = EmbeddingTable(["b", "a", "c"], _unit(rng, 3, 5), {"kind": "audio", "model": "m"}, ["x/b.wav", "a.wav", "c.wav"])
    table.save(tmp_path / "t")
    for mmap in (False, True):
        back = EmbeddingTable.load(tmp_path / "t", mmap=mmap)
        assert back.ids == table.ids and back.sources == table.sources and back.kind == "audio" and back.model == "m"
        assert np.array_equal(np.asarray(back.vectors), table.vectors) and back.vectors.dtype == np.float32
    unnormalised = EmbeddingTable(["x"], np.array([[3.0, 4.0]]))
    assert np.allclose(unnormalised.vectors, [[0.6, 0.8]])
    with pytest.raises(ConfigError, match="unique"):
        EmbeddingTable(["a", "a"], np.eye(2))
    with pytest.raises(ConfigError, match="'z' is zero"):
        EmbeddingTable(["y", "z"], np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_broken_table_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="no such directory") as err:
        EmbeddingTable.load(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(err.value)
    table = EmbeddingTable(["a", "b"], np.eye(2), {"kind": "text"})
    table.save(tmp_path / "t")
    (tmp_path / "t" / "ids.json").write_text(json.dumps(["a"]))
    with pytest.raises(ManifestError, match="1 ids but vectors.npy 2 rows"):
        EmbeddingTable.load(tmp_path / "t")
    (tmp_path / "t" / "meta.json").unlink()
    with pytest.raises(ManifestError, match="missing meta.json"):
        EmbeddingTable.load(tmp_path / "t")
    (tmp_path / "t" / "meta.json").write_text("{not json")
    with pytest.raises(ManifestError, match="meta.json: unreadable"):
        EmbeddingTable.load(tmp_path / "t")


def test_curated_manifest_is_a_project_manifest(tmp_path):
    from enclap.data.manifest import read_manifest

    pairs = [CuratedPair("x/a", "t1", 0.5), CuratedPair("x/a", "t2", 0.25), CuratedPair("b", "t1", -0.125)]
    captions = {"t1": 'a dog, "barking"', "t2": "rain"}
    rows = write_curated_manifest(pairs, {"x/a": "x/a.wav", "b": "b.wav"}, captions, tmp_path / "cur.csv")
    assert rows == 3
    clips = read_manifest(tmp_path / "cur.csv")
    assert [(c.file_path, c.captions) for c in clips] == [("x/a.wav", ('a dog, "barking"', "rain")), ("b.wav", ('a dog, "barking"',))]
    assert [s for _, _, s in read_curated_manifest(tmp_path / "cur.csv")] == [0.5, 0.25, -0.125]
    with pytest.raises(ConfigError, match="'c'"):
        write_curated_manifest([CuratedPair("c", "t1", 0.1)], {}, captions, tmp_path / "bad.csv")


# ------------------------------------------------------------------------------------------ dumps and the command line
def _write_audio(root: Path, n: int, rate: int = 16000) -> list[Path]:
    import soundfile as sf

    rng = np.random.default_rng(5)
    paths = []
    for i in range(n):
        path = root / "pool" / f"clip_{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(rate * (0.4 + 0.1 * i))) / rate
        sf.write(path, (0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32), rate)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory):
    """A tiny random tower saved as enclap-train-clap exports it (built once: construction takes seconds)."""
    from .factories import tiny_tower

    path = tmp_path_factory.mktemp("tower")
    tiny_tower("cnn14").save_pretrained(path)
    return path


class _Counting:
    """An audio embedder that counts the files it embeds and can be interrupted after some calls."""

    def __init__(self, inner, interrupt_after: int | None = None):
        self.inner, self.interrupt_after = inner, interrupt_after
        self.sample_rate, self.dim, self.name_or_path = inner.sample_rate, inner.dim, "tiny-tower"
        self.files = self.calls = 0

    def embed(self, waves):
        if self.interrupt_after is not None and self.calls >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.files += len(waves)
        return self.inner.embed(waves)


@pytest.mark.slow
def test_embed_audio_resumes_after_an_interruption(tmp_path, tower_dir):
    from enclap.clap.embedder import ClapTowerEmbedder
    from enclap.jobs.curate import audio_from_directory, embed_audio, embed_audio_with_summary

    paths = _write_audio(tmp_path / "audio", 7)
    (tmp_path / "audio" / "pool" / "zz_broken.wav").write_bytes(b"not audio at all")
    items = audio_from_directory(tmp_path / "audio")
    assert len(items) == 8
    inner = ClapTowerEmbedder.from_pretrained(tower_dir, batch_size=2)

    reference = embed_audio(_Counting(inner), items, tmp_path / "ref", batch_size=2, chunk_size=2,
                            audio_root=tmp_path / "audio", progress=False)
    assert len(reference) == 7 and "pool/zz_broken" not in reference.ids
    assert reference.sources[0] == "pool/clip_00.wav"

    first = _Counting(inner, interrupt_after=2)  # two chunks of two files are committed, then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        embed_audio(first, items, tmp_path / "run", batch_size=2, chunk_size=2, audio_root=tmp_path / "audio", progress=False)
    assert first.files == 4 and len(list((tmp_path / "run" / "chunks").glob("*.json"))) == 2
    second = _Counting(inner)
    table, summary = embed_audio_with_summary(second, items, tmp_path / "run", batch_size=2, chunk_size=2,
                                              audio_root=tmp_path / "audio", progress=False)
    assert second.files == 3  # the remaining readable files only
    assert summary.reused == 4 and summary.embedded == 3 and [f[0] for f in summary.failed] == ["pool/zz_broken"]
    assert "broken.wav" in summary.failed[0][1] and summary.failed[0][2]
    assert table.ids == reference.ids and table.sources == reference.sources
    np.testing.assert_allclose(table.vectors, reference.vectors, atol=1e-6)
    assert not (tmp_path / "run" / "chunks").exists()  # merged into the table
    written = (tmp_path / "run" / "vectors.npy").stat().st_mtime_ns
    third = _Counting(inner)
    embed_audio(third, items, tmp_path / "run", batch_size=2, chunk_size=2, audio_root=tmp_path / "audio", progress=False)
    assert third.files == 0  # only the broken file is retried, and it fails again
    assert (tmp_path / "run" / "vectors.npy").stat().st_mtime_ns == written and not (tmp_path / "run" / "chunks").exists()
    assert [f["id"] for f in json.loads((tmp_path / "run" / "failed.json").read_text())] == ["pool/zz_broken"]
    other = _Counting(inner)
    other.name_or_path = "another-model"
    with pytest.raises(ConfigError, match="another job"):
        embed_audio(other, items, tmp_path / "run", progress=False)


def test_audio_lists_from_manifests_and_file_lists(tmp_path):
    from enclap.jobs.curate import audio_from_file_list, audio_from_labelled_csv, audio_from_manifest

    root = tmp_path / "root"
    (root / "audio").mkdir(parents=True)
    (root / "a.wav").write_bytes(b"")
    (root / "audio" / "b.wav").write_bytes(b"")
    (tmp_path / "esc.csv").write_text("filename,fold,target,category\na.wav,1,0,dog\nb.wav,1,1,rain\nc.wav,2,1,rain\n")
    assert audio_from_labelled_csv(tmp_path / "esc.csv", root) == [
        ("a", str(root / "a.wav")), ("audio/b", str(root / "audio" / "b.wav")), ("c", str(root / "c.wav"))]
    (tmp_path / "m.csv").write_text("file_path,caption\nx/a.npy,one\nx/a.npy,two\nb.npy,three\n")
    (root / "x").mkdir()
    (root / "x" / "a.flac").write_bytes(b"")
    assert audio_from_manifest(tmp_path / "m.csv", root) == [("x/a", str(root / "x" / "a.flac")), ("b", str(root / "b.npy"))]
    (tmp_path / "list.txt").write_text(f"# pool\nx/a.flac\n{root / 'a.wav'}\n")
    assert audio_from_file_list(tmp_path / "list.txt", root) == [("x/a", str(root / "x" / "a.flac")), ("a", str(root / "a.wav"))]
    (tmp_path / "bad.txt").write_text("/elsewhere/z.wav\n../up.wav\n")
    with pytest.raises(ManifestError, match="line 1.*not below the audio root") as err:
        audio_from_file_list(tmp_path / "bad.txt", root)
    assert "line 2" in str(err.value)


def test_embed_text_embeds_each_caption_once(tmp_path):
    from enclap.jobs.curate import caption_id, captions_from_text_file, embed_text

    calls = []

    def vector(text):  # a deterministic stand-in for a text tower
        return np.random.default_rng(list(text.encode())).standard_normal(6).astype(np.float32)

    class Texts:
        dimension, name_or_path = 6, "fake"

        def embed_texts(self, texts):
            calls.append(list(texts))
            return np.stack([vector(t) for t in texts])

    (tmp_path / "c.txt").write_text("a dog barks\n\nrain on a roof\na dog barks  \nrain on a roof\na bell\n")
    items = captions_from_text_file(tmp_path / "c.txt")
    assert [t for _, t in items] == ["a dog barks", "rain on a roof", "a bell"] and items[0][0] == caption_id("a dog barks")
    table = embed_text(Texts(), items + [("alias", "a bell")], tmp_path / "t", batch_size=8, progress=False)
    assert sum(len(c) for c in calls) == 3  # "a bell" under two ids: embedded once
    assert table.sources == ["a dog barks", "rain on a roof", "a bell", "a bell"]
    expected = np.stack([vector(t) for t in table.sources])
    np.testing.assert_allclose(table.vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)
    calls.clear()
    again = embed_text(Texts(), items + [("new", "a cat")], tmp_path / "t", batch_size=8, progress=False)
    assert calls == [["a cat"]] and again.ids == [i for i, _ in items] + ["new"]  # "alias" was not asked for now
    with pytest.raises(ConfigError, match="different values"):
        embed_text(Texts(), [("x", "one"), ("x", "two")], tmp_path / "t2", progress=False)
    with pytest.raises(ConfigError, match="empty caption"):
        embed_text(Texts(), [("x", "  ")], tmp_path / "t3", progress=False)


@pytest.mark.slow
def test_cli_end_to_end_on_tiny_data(tmp_path, capsys, tower_dir):
    from enclap.data.manifest import read_manifest
    from enclap.jobs.curate import main
    _write_audio(tmp_path / "audio", 5)
    (tmp_path / "audio" / "pool" / "broken.wav").write_bytes(b"nope")
    train = tmp_path / "train.csv"
    train.write_text("file_path,caption\npool/clip_00.npy,a loud beep\npool/clip_00.npy,a dog barks twice\n"
                     "pool/clip_01.npy,rain on a roof\npool/clip_02.npy,a bell rings\npool/clip_03.npy,a loud beep\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\nx.wav,dog_bark\ny.wav,rain\nz.wav,bell\n")
    emb = tmp_path / "emb"

    def run(*argv):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        assert code == 0, out.err
        return out.out

    out = run("embed-audio", "--model", tower_dir, "--audio-dir", tmp_path / "audio", "--out", emb / "audio", "--batch-size", 2, "--chunk-size", 2)
    assert "5 embedded now" in out and "1 skipped" in out and "broken.wav" in out
    out = run("embed-audio", "--model", tower_dir, "--audio-dir", tmp_path / "audio", "--out", emb / "audio")
    assert "0 embedded now, 5 from an earlier run" in out
    out = run("embed-text", "--model", tower_dir, "--manifest", train, "--out", emb / "text")
    assert "4 distinct captions" in out

    out = run("du", "--audio-emb", emb / "audio", "--text-emb", emb / "text", "--output", tmp_path / "du.csv", "--top-k", 2, "--block-size", 3)
    assert "10 pairs from 5 clips x 4 captions" in out and "pairs kept per threshold" in out
    clips = read_manifest(tmp_path / "du.csv")
    assert len(clips) == 5 and all(len(c.captions) == 2 for c in clips) and clips[0].file_path == "pool/clip_00.wav"
    assert (tmp_path / "du.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads((tmp_path / "du.stats.json").read_text())
    assert stats["pairs"] == 10 and stats["clips_without_pair"] == 0
    expected = curate_du(EmbeddingTable.load(emb / "audio"), EmbeddingTable.load(emb / "text"), top_k=2)
    assert [(p, round(s, 6)) for p, _, s in read_curated_manifest(tmp_path / "du.csv")] == [
        (f"pool/clip_{int(p.audio_id[-2:]):02d}.wav", round(p.similarity, 6)) for p in expected]

    out = run("ds", "--model", tower_dir, "--text-emb", emb / "text", "--labels", labels, "--top-k", 1,
              "--manifest", train, "--output", tmp_path / "ds.csv", "--domain-emb", emb / "ds")
    domain = EmbeddingTable.load(emb / "ds")
    assert 1 <= len(domain) <= 3 and f"{len(domain)} of 4 captions selected by 3 labels" in out
    ds_rows = read_curated_manifest(tmp_path / "ds.csv")
    assert {c for _, c, _ in ds_rows} == set(domain.sources)
    assert len(ds_rows) == sum(1 for line in train.read_text().splitlines()[1:] if line.split(",", 1)[1] in domain.sources)

    out = run("ads", "--audio-emb", emb / "audio", "--domain-emb", emb / "ds", "--output", tmp_path / "ads.csv", "--threshold", -1)
    assert f"{5 * len(domain)} pairs from 5 clips x {len(domain)} captions" in out
    out = run("stats", "--manifest", tmp_path / "du.csv", "--audio-emb", emb / "audio")
    assert "10 pairs, 5 clips" in out and "clips with no pair: 0 of 5" in out
    assert (tmp_path / "du_stats.png").is_file()

    assert main(["du", "--audio-emb", str(tmp_path / "nowhere"), "--text-emb", str(emb / "text"), "--output", str(tmp_path / "x.csv")]) == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_with_a_transformers_clap_model_directory(tmp_path, capsys):
    from enclap.features.random_models import save_random_clap
    from enclap.jobs.curate import main

    model = save_random_clap(tmp_path / "hf-clap", enable_fusion=False, projection_dim=16)
    _write_audio(tmp_path / "audio", 3)
    (tmp_path / "captions.txt").write_text("a loud beep\nrain on a roof\na bell rings\n")
    emb = tmp_path / "emb"
    assert main(["embed-audio", "--model", str(model), "--audio-dir", str(tmp_path / "audio"), "--out", str(emb / "a")]) == 0
    assert main(["embed-text", "--model", str(model), "--text-file", str(tmp_path / "captions.txt"), "--out", str(emb / "t")]) == 0
    assert main(["du", "--audio-emb", str(emb / "a"), "--text-emb", str(emb / "t"), "--output", str(tmp_path / "du.csv"), "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "3 pairs from 3 clips x 3 captions" in out
    audio, text = EmbeddingTable.load(emb / "a"), EmbeddingTable.load(emb / "t")
    assert audio.dim == text.dim == 16 and audio.model == text.model == str(model)
