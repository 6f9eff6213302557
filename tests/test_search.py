"""Text-to-audio search: incremental indexing, exact ranking, bad files, and the enclap-search CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from enclap.audio import load_audio
from enclap.features.clap_embed import ClapAudioEmbedder
from enclap.errors import ConfigError
from enclap.features.clap_text import ClapTextEmbedder
from enclap.jobs.search import main as search_main
from enclap.search import SearchIndex, SearchIndexError, update_index, write_index_arrays

from .audio_helpers import tone, write_audio, write_bad_files
from .features.factories import save_tiny_clap

QUERIES = ["a dog barks", "rain falls on a roof", "a high whistle"]


def noise(seconds: float, rate: int, seed: int, colour: float) -> np.ndarray:
    """Filtered noise: different ``colour`` gives a different spectrum (so different CLAP embeddings)."""
    white = np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype(np.float32)
    out = np.empty_like(white)
    acc = 0.0
    for i, x in enumerate(white):  # a one-pole low-pass
        acc = colour * acc + (1 - colour) * x
        out[i] = acc
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def write_clip(path: Path, seed: int) -> Path:
    rate = 16_000
    samples = noise(1.0, rate, seed, colour=0.1 + 0.15 * (seed % 6)) + tone(1.0, rate, freq=200.0 + 150 * seed, amplitude=0.2)
    return write_audio(path, samples, rate, subtype="PCM_16")


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory) -> Path:
    return save_tiny_clap(tmp_path_factory.mktemp("clap") / "clap")


@pytest.fixture(scope="module")
def embedder(clap_dir) -> ClapAudioEmbedder:
    return ClapAudioEmbedder.from_pretrained(str(clap_dir), batch_size=4)


@pytest.fixture(scope="module")
def text(clap_dir) -> ClapTextEmbedder:
    return ClapTextEmbedder.from_pretrained(str(clap_dir))


class CountingEmbedder:
    """The real embedder, counting the clips it embeds (to see what a rerun recomputes)."""

    def __init__(self, inner: ClapAudioEmbedder, fail_after: int | None = None) -> None:
        self.inner = inner
        self.sample_rate = inner.sample_rate
        self.dim = inner.dim
        self.embedded = 0
        self.fail_after = fail_after

    def embed(self, waves):
        if self.fail_after is not None and self.embedded >= self.fail_after:
            raise KeyboardInterrupt
        self.embedded += len(waves)
        return self.inner.embed(waves)

    def config_dict(self):
        return self.inner.config_dict()


def reference_embeddings(embedder: ClapAudioEmbedder, folder: Path, names: list[str]) -> np.ndarray:
    """Embeddings computed directly, file by file, without the index."""
    return np.concatenate([embedder.embed([load_audio(folder / n, embedder.sample_rate)[0]]) for n in names])


def stored(index: SearchIndex) -> dict[str, np.ndarray]:
    rows = np.concatenate([index.embeddings(i) for i in range(len(index.segments))]) if index.segments else np.zeros((0, index.dim))
    return {rel: rows[i] for i, (rel, _, _) in enumerate(index.iter_entries())}


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "sounds"
    for i in range(6):
        write_clip(root / ("sub" if i % 2 else "") / f"clip {i}.wav", seed=i)
    return root


def test_ranking_equals_dense_numpy(folder, tmp_path, embedder, text, one_torch_thread):
    report = update_index(folder, tmp_path / "idx", embedder, clap="tiny", dtype="float32", progress=False)
    assert report.total == 6 and not report.failed
    index = SearchIndex(tmp_path / "idx")
    names = sorted(rel for rel, _, _ in index.iter_entries())
    audio = reference_embeddings(embedder, folder, names)
    queries = text.embed_texts(QUERIES)
    dense = queries @ audio.T  # (queries, files)
    for top in (1, 3, 6, 10):
        hits = index.search(queries, top)
        for q in range(len(QUERIES)):
            order = np.argsort(-dense[q], kind="stable")[: min(top, 6)]
            assert [h.relative for h in hits[q]] == [names[i] for i in order]
            np.testing.assert_allclose([h.score for h in hits[q]], dense[q, order], atol=1e-5)
            assert [h.rank for h in hits[q]] == list(range(1, len(order) + 1))
            assert all(Path(h.path) == folder.resolve() / h.relative for h in hits[q])
    # the running top-k over small blocks gives what one block gives
    rows_small, scores_small = index.top_k(queries, 4, block_rows=2)
    rows_big, scores_big = index.top_k(queries, 4)
    np.testing.assert_array_equal(rows_small, rows_big)
    np.testing.assert_allclose(scores_small, scores_big, atol=1e-6)


def test_float16_index_is_close_to_float32(folder, tmp_path, embedder, text, one_torch_thread):
    update_index(folder, tmp_path / "idx16", embedder, clap="tiny", dtype="float16", progress=False)
    index = SearchIndex(tmp_path / "idx16")
    names = [rel for rel, _, _ in index.iter_entries()]
    audio = reference_embeddings(embedder, folder, names)
    query = text.embed_texts(["a dog barks"])
    hits = index.search(query, 6)[0]
    dense = dict(zip(names, (query @ audio.T)[0]))
    for hit in hits:
        assert abs(hit.score - dense[hit.relative]) < 2e-3


def test_reindex_embeds_only_new_and_changed_and_drops_deleted(folder, tmp_path, embedder, one_torch_thread):
    counting = CountingEmbedder(embedder)
    first = update_index(folder, tmp_path / "idx", counting, clap="tiny", progress=False)
    assert counting.embedded == 6 and len(first.added) == 6 and first.total == 6

    again = update_index(folder, tmp_path / "idx", counting, clap="tiny", progress=False)
    assert counting.embedded == 6  # nothing recomputed
    assert (again.added, again.updated, again.removed, again.unchanged) == ([], [], [], 6)

    write_clip(folder / "new one.wav", seed=40)
    write_clip(folder / "clip 0.wav", seed=41)  # same name, new content
    os.utime(folder / "clip 0.wav", ns=(1, 1))  # a different mtime even on a coarse clock
    (folder / "sub" / "clip 1.wav").unlink()
    third = update_index(folder, tmp_path / "idx", counting, clap="tiny", progress=False)
    assert counting.embedded == 8
    assert third.added == ["new one.wav"]
    assert third.updated == ["clip 0.wav"]
    assert third.removed == ["sub/clip 1.wav"]
    assert third.unchanged == 4 and third.total == 6

    index = SearchIndex(tmp_path / "idx")
    rows = stored(index)
    current = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.wav"))
    assert sorted(rows) == current
    expected = reference_embeddings(embedder, folder, current)
    for name, row in zip(current, expected):  # the changed file holds its new content's embedding
        np.testing.assert_allclose(rows[name].astype(np.float32), row, atol=2e-3)


def test_bad_files_are_listed_never_fatal_and_retried_only_when_changed(folder, tmp_path, embedder, one_torch_thread):
    bad = write_bad_files(folder / "bad")
    counting = CountingEmbedder(embedder)
    report = update_index(folder, tmp_path / "idx", counting, clap="tiny", progress=False)
    assert report.total == 6
    assert sorted(report.failed) == sorted(f"bad/{p.name}" for p in bad.values())
    assert "empty" in report.failed["bad/empty.wav"]
    assert "truncated" in report.failed["bad/truncated.wav"]
    assert "not a readable audio file" in report.failed["bad/notes.wav"]

    again = update_index(folder, tmp_path / "idx", counting, clap="tiny", progress=False)
    assert sorted(again.failed) == sorted(report.failed) and again.added == []  # still listed, not retried

    write_clip(bad["text"], seed=7)  # fixed
    fixed = update_index(folder, tmp_path / "idx", counting, clap="tiny", progress=False)
    assert fixed.added == ["bad/notes.wav"] and "bad/notes.wav" not in fixed.failed and fixed.total == 7


def test_an_interrupted_run_keeps_what_it_embedded(folder, tmp_path, embedder, one_torch_thread):
    for i in range(6, 12):
        write_clip(folder / f"more {i}.wav", seed=i)
    interrupted = CountingEmbedder(embedder, fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        update_index(folder, tmp_path / "idx", interrupted, clap="tiny", batch_size=2, commit_every=2, progress=False)
    assert len(SearchIndex(tmp_path / "idx")) == 4
    resumed = CountingEmbedder(embedder)
    report = update_index(folder, tmp_path / "idx", resumed, clap="tiny", batch_size=2, progress=False)
    assert resumed.embedded == 8 and report.unchanged == 4 and report.total == 12
    leftovers = [p.name for p in (tmp_path / "idx").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_an_index_refuses_another_folder_or_clap(folder, tmp_path, embedder):
    update_index(folder, tmp_path / "idx", embedder, clap="tiny", progress=False)
    other = tmp_path / "other"
    write_clip(other / "x.wav", seed=3)
    with pytest.raises(SearchIndexError, match="indexes the folder"):
        update_index(other, tmp_path / "idx", embedder, clap="tiny", progress=False)
    with pytest.raises(SearchIndexError, match="was built with CLAP 'tiny'"):
        update_index(folder, tmp_path / "idx", embedder, clap="another", progress=False)
    report = update_index(other, tmp_path / "idx", embedder, clap="tiny", rebuild=True, progress=False)
    assert report.total == 1 and [r for r, _, _ in SearchIndex(tmp_path / "idx").iter_entries()] == ["x.wav"]


def test_query_dimension_mismatch_and_missing_index(tmp_path):
    index = write_index_arrays(tmp_path / "idx", tmp_path, [("a.wav", 1, 1)], np.ones((1, 4)) / 2, clap="x")
    with pytest.raises(SearchIndexError, match="4"):
        index.top_k(np.ones((1, 8), dtype=np.float32))
    with pytest.raises(SearchIndexError, match="enclap-search index"):
        SearchIndex(tmp_path / "nothing here")


# ------------------------------------------------------------------------------------------- the CLI


def test_cli_index_then_query(folder, tmp_path, clap_dir, embedder, text, capsys, one_torch_thread):
    (folder / "broken.wav").write_text("not audio")
    index_dir = tmp_path / "cli-idx"
    assert search_main(["index", str(folder), "--index", str(index_dir), "--clap", str(clap_dir), "--dtype", "float32", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "6 file(s) indexed" in out and "6 new" in out
    assert "broken.wav: not a readable audio file" in err

    assert search_main(["query", "a dog barks", "--index", str(index_dir), "--top", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.wav") if p.name != "broken.wav")
    dense = (text.embed_texts(["a dog barks"]) @ reference_embeddings(embedder, folder, names).T)[0]
    order = np.argsort(-dense)[:3]
    assert result["query"] == "a dog barks"
    assert [r["path"] for r in result["results"]] == [str(folder.resolve() / names[i]) for i in order]
    np.testing.assert_allclose([r["score"] for r in result["results"]], dense[order], atol=1e-5)

    assert search_main(["query", "a dog barks", "rain", "--index", str(index_dir), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# a dog barks" and lines[3] == "# rain" and lines[1].split()[0] == "1"

    assert search_main(["index", str(folder), "--index", str(index_dir), "--no-progress"]) == 0  # keeps its CLAP
    assert "6 unchanged" in capsys.readouterr().out


def test_cli_errors_are_one_line_and_exit_2(tmp_path, folder, clap_dir, capsys):
    assert search_main(["query", "a dog", "--index", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert search_main(["index", str(folder), "--index", str(tmp_path / "i"), "--clap", str(tmp_path / "no-clap")]) == 2
    err = capsys.readouterr().err
    assert "Could not load CLAP" in err and "no-clap" in err
    assert search_main(["index", str(tmp_path / "no-folder"), "--index", str(tmp_path / "i"), "--clap", str(clap_dir)]) == 2
    assert "no-folder: not a directory" in capsys.readouterr().err


def test_a_project_clap_tower_serves_search_and_zero_shot(folder, tmp_path, capsys, one_torch_thread):
    """A tower trained here (enclap-train-clap's export) is a text tower for search and tags, as a HF ClapModel is."""
    import torch

    from enclap.clap.embedder import ClapTowerEmbedder
    from enclap.features.clap_text import ZeroShotTagger, load_text_embedder, text_embedder_for

    from .clap.factories import tiny_tower

    tower_dir = tmp_path / "tower"
    tiny_tower(seed=3).save_pretrained(tower_dir)
    text = load_text_embedder(tower_dir)
    assert isinstance(text, ClapTowerEmbedder)
    audio = ClapAudioEmbedder.from_pretrained(tower_dir)  # the loader the captioner's features use
    assert text_embedder_for(audio) is audio  # the tower is its own text tower: no second copy
    with pytest.raises(ConfigError, match="carries its own tokenizer"):
        load_text_embedder(tower_dir, tokenizer="roberta-base")

    index_dir = tmp_path / "tower-idx"
    assert search_main(["index", str(folder), "--index", str(index_dir), "--clap", str(tower_dir), "--dtype", "float32", "--no-progress"]) == 0
    capsys.readouterr()
    assert search_main(["query", "a dog barks", "--index", str(index_dir), "--top", "6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.wav"))
    dense = (text.embed_texts(["a dog barks"]) @ reference_embeddings(audio, folder, names).T)[0]
    order = np.argsort(-dense)
    assert [r["path"] for r in result["results"]] == [str(folder.resolve() / names[i]) for i in order]
    np.testing.assert_allclose([r["score"] for r in result["results"]], dense[order], atol=1e-5)

    tagger = ZeroShotTagger(text, ["dog bark", "rain", "siren"])
    with torch.no_grad():
        expected_temperature = float(torch.exp(text.model.logit_scale).clamp(max=text.model.config.logit_scale_max))
    assert tagger.temperature == pytest.approx(expected_temperature)
