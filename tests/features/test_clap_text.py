"""CLAP's text side: embeddings against an independent computation, batch independence, tokenizers, zero-shot tags."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from enclap.errors import ConfigError, PretrainedNotFoundError
from enclap.features.clap_embed import ClapAudioEmbedder
from enclap.features.clap_text import (
    ClapTextEmbedder,
    TextEmbedder,
    ZeroShotTagger,
    character_tokenizer,
    load_text_embedder,
    read_labels,
)
from enclap.features.random_models import RANDOM_MARKER_FILE

from .factories import save_tiny_clap

SENTENCES = ["a dog barks", "Rain falls on a tin roof.", "a siren wails in the distance", "x"]


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return save_tiny_clap(tmp_path_factory.mktemp("clap") / "clap")


@pytest.fixture(scope="module")
def text(clap_dir) -> ClapTextEmbedder:
    return ClapTextEmbedder.from_pretrained(str(clap_dir))


def independent_text_embedding(model, tokenizer, sentence: str) -> np.ndarray:
    """LAION's get_text_embedding written out: RoBERTa pooler -> text projection -> L2 normalisation."""
    ids = tokenizer(sentence)["input_ids"]
    with torch.no_grad():
        out = model.text_model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        projected = model.text_projection(out.pooler_output)[0]
    return (projected / projected.norm()).numpy()


def test_embeddings_equal_an_independent_computation(text, one_torch_thread):
    assert isinstance(text, TextEmbedder)
    embeddings = text.embed_texts(SENTENCES)
    assert embeddings.shape == (len(SENTENCES), text.dimension) == (4, 512) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    for sentence, row in zip(SENTENCES, embeddings):
        np.testing.assert_allclose(row, independent_text_embedding(text.model, text.tokenizer, sentence), atol=1e-5)
    assert np.abs(embeddings[0] - embeddings[1]).max() > 1e-3  # different sentences, different embeddings


def test_a_sentence_does_not_depend_on_its_batch(text, one_torch_thread):
    together = text.embed_texts(SENTENCES)
    alone = np.concatenate([text.embed_texts([s]) for s in SENTENCES])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    small = ClapTextEmbedder(text.model, text.tokenizer, batch_size=3)
    np.testing.assert_allclose(small.embed_texts(SENTENCES), together, atol=1e-6)
    with pytest.raises(ValueError, match="text 1 is empty"):
        text.embed_texts(["fine", "  "])


def test_the_text_tower_shares_the_audio_embedders_model(clap_dir, text, one_torch_thread):
    audio = ClapAudioEmbedder.from_pretrained(str(clap_dir))
    shared = ClapTextEmbedder.from_audio_embedder(audio)
    assert shared.model is audio.model
    np.testing.assert_allclose(shared.embed_texts(SENTENCES), text.embed_texts(SENTENCES), atol=1e-6)
    assert load_text_embedder(str(clap_dir)).dimension == 512


def test_tokenizers_come_from_the_directory_or_fail_with_the_reason(clap_dir, tmp_path):
    own = tmp_path / "with-tokenizer"
    shutil.copytree(clap_dir, own)
    (own / RANDOM_MARKER_FILE).unlink()
    with pytest.raises(PretrainedNotFoundError, match="no text tokenizer"):
        ClapTextEmbedder.from_pretrained(str(own))
    tokenizer = character_tokenizer(40)
    tokenizer.save_pretrained(own)
    loaded = ClapTextEmbedder.from_pretrained(str(own))
    assert loaded.tokenizer("ab")["input_ids"] == [0, 4, 5, 2]  # <s> a b </s>
    with pytest.raises(PretrainedNotFoundError, match="does not exist"):
        ClapTextEmbedder.from_pretrained(str(tmp_path / "630k-audioset-fusion-best.pt"))
    with pytest.raises(PretrainedNotFoundError, match="CLAP model"):
        ClapTextEmbedder.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="do not belong together"):
        ClapTextEmbedder(loaded.model, _big_tokenizer())


def _big_tokenizer():
    """A tokenizer with more tokens than the tiny text tower's 64."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(100)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")), pad_token="t1")


def test_zero_shot_tags_are_cosines_with_the_prompts(text, one_torch_thread):
    labels = read_labels()
    assert len(labels) == 50 and len(set(labels)) == 50 and "dog" in labels and "church bells" in labels
    tagger = ZeroShotTagger(text, labels)
    audio = np.random.default_rng(0).standard_normal((2, 512)).astype(np.float32)
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    prompts = text.embed_texts([f"This is a sound of {label}." for label in labels])
    np.testing.assert_allclose(tagger.scores(audio), audio @ prompts.T, atol=1e-5)
    tags = tagger.tag(audio[0], top=5)
    cosines = audio[0] @ prompts.T
    assert [t[0] for t in tags] == [labels[i] for i in np.argsort(-cosines)[:5]]
    np.testing.assert_allclose([t[1] for t in tags], np.sort(cosines)[::-1][:5], atol=1e-5)
    logits = tagger.temperature * cosines.astype(np.float64)
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose([t[2] for t in tags], np.sort(softmax)[::-1][:5], rtol=1e-4)
    with pytest.raises(ConfigError, match="different CLAP"):
        tagger.scores(np.ones(8, dtype=np.float32))


def test_label_files(tmp_path):
    mine = tmp_path / "labels.txt"
    mine.write_text("# my sounds\nkettle whistle\n\n  door slam  \n")
    assert read_labels(mine) == ["kettle whistle", "door slam"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="empty.txt: no labels"):
        read_labels(tmp_path / "empty.txt")
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(ConfigError, match=r"duplicate label\(s\) \['a'\]"):
        read_labels(tmp_path / "dup.txt")
    with pytest.raises(ConfigError, match="missing.txt: cannot read"):
        read_labels(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="must contain"):
        ZeroShotTagger(None, ["a"], prompt="no slot")  # type: ignore[arg-type]
