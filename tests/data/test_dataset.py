"""Caption pairs over a feature store: collation against a hand-built batch, per-example randomness, bad inputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from enclap.data.manifest import read_caption_pairs
from enclap.data.dataset import CaptionCollator, CaptionPairDataset
from enclap.errors import InvalidFeaturesError, ManifestError
from enclap.features.store import NpyFeatureStore, open_feature_store
from enclap.text import train_caption_tokenizer

from ..training import WORDS, caption_for, random_clip, write_eval_csv, write_store, write_train_csv

NUM_CODEBOOKS, D_CLAP, MAX_FRAMES, SEED = 4, 6, 10, 3
MAX_TOKENS = 24  # every caption fits but the long one (32 tokens with this tiny tokenizer)
LONG = 3  # the example index of that long caption
FRAMES = [5, 12, 30, 9, 17, 1, 10]
MASK_PROB, MASK_SPAN, PAD_ID = 0.3, 2, 1024
TRAIN_STREAM = 0x7E1A  # the stream tag of the training examples' generators (enclap.data.dataset)


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer([" ".join(WORDS)] * 3 + [caption_for(i) for i in range(50)], vocab_size=300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    rng = np.random.default_rng(0)
    clips = {f"train/c{i}": random_clip(rng, frames, NUM_CODEBOOKS, D_CLAP) for i, frames in enumerate(FRAMES)}
    store = write_store(root / "store", clips)
    rows = [(f"train/c{i}.npy", caption_for(i)) for i in range(len(FRAMES))]
    rows.append(("train/c2.npy", " ".join(WORDS)))  # a second, long caption of clip 2 (cut at max_target_length)
    manifest = write_train_csv(root / "train.csv", rows)
    # Examples come in manifest order with a clip's captions grouped: c0, c1, c2, c2 (long), c3, ...
    pairs = read_caption_pairs(manifest)
    assert pairs[3] == rows[-1]
    return {"root": root, "clips": clips, "store": store, "manifest": manifest, "pairs": pairs}


def make_dataset(corpus, tokenizer, *, train=True, store=None, **overrides):
    settings = dict(
        max_target_length=MAX_TOKENS, num_codebooks=NUM_CODEBOOKS, d_clap=D_CLAP, max_frames=MAX_FRAMES,
        codebook_size=1024, codec_pad_id=PAD_ID, mask_prob=MASK_PROB, mask_span=MASK_SPAN, seed=SEED, train=train,
    )
    settings.update(overrides)
    return CaptionPairDataset.from_manifest(corpus["manifest"], store or open_feature_store(corpus["store"]), tokenizer, **settings)


def documented_crop_and_mask(codes: np.ndarray, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The crop and MCM mask of training example ``index`` in ``epoch``, written from the documented rules
    with plain numpy (none of the library's cropping, masking or generator helpers):

    * the generator is ``default_rng(SeedSequence([seed, TRAIN_STREAM, epoch, index]))``;
    * a clip longer than ``max_frames`` is cut at a start drawn first, ``integers(0, frames - max_frames + 1)``;
    * then wav2vec2's span sampler, once per clip: one rounding draw ``epsilon = random()``, then per
      codebook ``count = int(p * length / span + epsilon)`` spans (capped at ``length // span`` and at
      ``length - span + 1``) whose starts are ``choice(length - span + 1, count, replace=False)``;
    * masked codes become the pad id and are the labels; every other label is -100.
    """
    rng = np.random.default_rng(np.random.SeedSequence([SEED, TRAIN_STREAM, epoch, index]))
    frames = len(codes)
    if frames > MAX_FRAMES:
        start = int(rng.integers(0, frames - MAX_FRAMES + 1))
        codes = codes[start : start + MAX_FRAMES]
    length = len(codes)
    epsilon = float(rng.random())
    count = int(MASK_PROB * length / MASK_SPAN + epsilon)
    count = min(count, length // MASK_SPAN, max(length - MASK_SPAN + 1, 0))
    masked, labels = codes.copy(), np.full(codes.shape, -100, dtype=np.int64)
    for codebook in range(codes.shape[1]):
        if count == 0:
            continue
        for span_start in rng.choice(length - MASK_SPAN + 1, size=count, replace=False):
            for frame in range(span_start, span_start + MASK_SPAN):
                labels[frame, codebook] = codes[frame, codebook]
                masked[frame, codebook] = PAD_ID
    return masked, labels


def expected_batch(corpus, tokenizer, items, *, epoch, clean=False):
    """The collated batch computed here from the stored clips, independently of the data set and collator.

    ``clean``: a validation batch (the first MAX_FRAMES frames, unmasked, no MCM label).
    """
    examples = []
    for index in items:
        file_path, caption = corpus["pairs"][index]
        codes, clap = corpus["clips"][file_path[: -len(".npy")]]
        codes = codes.astype(np.int64)
        if clean:
            masked, labels = codes[:MAX_FRAMES], np.full(codes[:MAX_FRAMES].shape, -100)
        else:
            masked, labels = documented_crop_and_mask(codes, epoch, index)
        ids = tokenizer(caption)["input_ids"]
        if len(ids) > MAX_TOKENS:
            ids = ids[: MAX_TOKENS - 1] + [tokenizer.eos_token_id]
        examples.append((masked, labels, clap, ids))
    length = max(len(m) for m, *_ in examples) + 3
    text = max(len(ids) for *_, ids in examples)
    batch = len(items)
    out = {
        "input_ids": np.full((batch, length, NUM_CODEBOOKS), 1024),
        "encodec_mask": np.ones((batch, length), dtype=np.int64),
        "attention_mask": np.zeros((batch, length), dtype=np.int64),
        "mcm_labels": np.full((batch, length, NUM_CODEBOOKS), -100),
        "labels": np.full((batch, text), -100),
        "clap_embedding": np.stack([clap for _, _, clap, _ in examples]),
    }
    for row, (masked, labels, _, ids) in enumerate(examples):
        frames = len(masked)
        out["input_ids"][row, :2] = 0  # CLAP slot and BOS
        out["input_ids"][row, 2 : 2 + frames] = masked
        out["input_ids"][row, 2 + frames] = 2  # EOS
        out["encodec_mask"][row, [0, 1, 2 + frames]] = 0
        out["attention_mask"][row, : frames + 3] = 1
        out["mcm_labels"][row, 2 : 2 + frames] = labels
        out["labels"][row, : len(ids)] = ids
    return out


def test_collated_batch_equals_an_independent_computation(corpus, tokenizer):
    dataset = make_dataset(corpus, tokenizer)
    collate = CaptionCollator(MAX_FRAMES)
    items = [0, 2, 6, LONG]  # 5 frames, 30 frames (cropped), 1 frame, the long caption of clip 2
    batch = collate([dataset[(1, i)] for i in items])
    expected = expected_batch(corpus, tokenizer, items, epoch=1)
    assert set(batch) == set(expected) | {"example_index"}
    for key, value in expected.items():
        assert batch[key].numpy().shape == value.shape, key
        np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=key)
    assert batch["example_index"].tolist() == items
    assert batch["input_ids"].dtype == torch.long and batch["clap_embedding"].dtype == torch.float32
    # Masking really happened somewhere, and only on codec frames.
    assert (batch["mcm_labels"] != -100).any()
    assert ((batch["mcm_labels"] != -100) <= (batch["encodec_mask"][..., None] == 1)).all()


def test_each_example_is_the_same_whatever_the_batching_and_workers(corpus, tokenizer):
    dataset = make_dataset(corpus, tokenizer)
    collate = CaptionCollator(MAX_FRAMES)
    epoch = 2
    singles = {i: collate([dataset[(epoch, i)]]) for i in range(len(dataset))}

    def rows_of(loader):
        found = {}
        for batch in loader:
            for row, index in enumerate(batch["example_index"].tolist()):
                length = int(batch["attention_mask"][row].sum())
                text = int((batch["labels"][row] != -100).sum())
                found[index] = {
                    "input_ids": batch["input_ids"][row, :length],
                    "mcm_labels": batch["mcm_labels"][row, :length],
                    "labels": batch["labels"][row, :text],
                    "clap_embedding": batch["clap_embedding"][row],
                }
        return found

    order = [[(epoch, i) for i in chunk] for chunk in ([7, 1, 4], [0, 6], [2, LONG, 5])]
    by_three = rows_of(DataLoader(dataset, batch_sampler=order, collate_fn=collate, num_workers=2))
    by_eight = rows_of(DataLoader(dataset, batch_sampler=[[(epoch, i) for i in range(8)]], collate_fn=collate))
    for index, single in singles.items():
        for found in (by_three, by_eight):
            for key, value in found[index].items():
                torch.testing.assert_close(value, single[key][0, : len(value)], rtol=0, atol=0)


def test_randomness_is_a_function_of_seed_epoch_and_index(corpus, tokenizer):
    dataset = make_dataset(corpus, tokenizer)
    long_clip = 2  # 30 frames, cropped to 10

    def draw(ds, epoch, index=long_clip):
        item = ds[(epoch, index)]
        return item["crop_start"], item["mcm_labels"].tolist()

    assert draw(dataset, 0) == draw(dataset, 0) == draw(make_dataset(corpus, tokenizer), 0)
    assert dataset[long_clip]["crop_start"] == dataset[(0, long_clip)]["crop_start"]  # a plain index is epoch 0
    per_epoch = [draw(dataset, epoch) for epoch in range(6)]
    assert len({str(d) for d in per_epoch}) == 6, "every epoch draws a new crop and mask"
    assert draw(make_dataset(corpus, tokenizer, seed=SEED + 1), 0) != draw(dataset, 0)
    # Two captions of the same clip (examples 2 and 3) draw independently.
    assert draw(dataset, 0, 2) != draw(dataset, 0, LONG)


def test_validation_examples_are_the_clean_start_of_the_clip_in_every_epoch(corpus, tokenizer):
    # mask_prob=0.3 as in training: validation must still see clean codes, as the captioner does at inference.
    dataset = make_dataset(corpus, tokenizer, train=False)
    for index, (file_path, _) in enumerate(corpus["pairs"]):
        codes = corpus["clips"][file_path[: -len(".npy")]][0].astype(np.int64)
        for item in (index, (0, index), (5, index)):
            example = dataset[item]
            assert example["crop_start"] == 0
            np.testing.assert_array_equal(example["codes"], codes[:MAX_FRAMES])
            assert (example["mcm_labels"] == -100).all() and example["mcm_labels"].shape == example["codes"].shape
    with pytest.raises(ValueError, match="validation examples are clean"):
        dataset.rng_for(0, 2)

    items = [0, 2, 6, LONG]  # 5 frames, 30 frames (cut to the first 10), 1 frame, the long caption of clip 2
    batch = CaptionCollator(MAX_FRAMES)([dataset[(3, i)] for i in items])
    expected = expected_batch(corpus, tokenizer, items, epoch=3, clean=True)
    for key, value in expected.items():
        np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=key)
    codec = (batch["attention_mask"] == 1) & (batch["encodec_mask"] == 1)  # codec frames, padding excluded
    assert int(codec.sum()) == 5 + 10 + 1 + 10
    assert not (batch["input_ids"][codec] == 1024).any(), "a validation code was masked"
    assert (batch["mcm_labels"] == -100).all()
    # The same examples in training are masked (the settings do mask): only validation is clean.
    trained = CaptionCollator(MAX_FRAMES)([make_dataset(corpus, tokenizer)[(3, i)] for i in items])
    assert (trained["input_ids"][codec] == 1024).any() and (trained["mcm_labels"] != -100).any()


def test_no_masking_leaves_codes_and_ignores_every_label(corpus, tokenizer):
    dataset = make_dataset(corpus, tokenizer, mask_prob=0.0)
    item = dataset[(0, 0)]
    np.testing.assert_array_equal(item["codes"], corpus["clips"]["train/c0"][0])
    assert (item["mcm_labels"] == -100).all()


def test_long_captions_are_cut_keeping_eos_and_counted_in_the_log(corpus, tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="enclap.data.dataset"):
        dataset = make_dataset(corpus, tokenizer)
    long = dataset.labels[LONG]
    assert len(long) == MAX_TOKENS and long[0] == tokenizer.bos_token_id and long[-1] == tokenizer.eos_token_id
    assert long.tolist()[:-1] == tokenizer(" ".join(WORDS))["input_ids"][: MAX_TOKENS - 1]
    assert all(len(ids) < MAX_TOKENS for i, ids in enumerate(dataset.labels) if i != LONG)
    assert f"1 of {len(dataset)} caption(s) are longer than max_target_length={MAX_TOKENS} tokens (longest 32)" in caplog.text
    assert str(corpus["manifest"]) in caplog.text


def test_the_enclap_npy_layout_gives_the_same_examples(corpus, tokenizer, tmp_path):
    for key, (codes, clap) in corpus["clips"].items():
        for kind, array in (("encodec", codes.astype(np.int64)), ("clap", clap[None])):
            path = tmp_path / kind / f"{key}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, array)
    npy = make_dataset(corpus, tokenizer, store=NpyFeatureStore(tmp_path / "encodec", tmp_path / "clap"))
    sharded = make_dataset(corpus, tokenizer)
    for index in range(len(sharded)):
        a, b = npy[(3, index)], sharded[(3, index)]  # (epoch 3, example)
        for key in ("codes", "mcm_labels", "clap", "labels"):
            np.testing.assert_array_equal(a[key], b[key])


# --------------------------------------------------------------------------------------------- bad inputs


def test_missing_features_name_the_manifest_the_store_and_the_keys(corpus, tokenizer, tmp_path):
    rows = corpus["pairs"] + [(f"train/gone{i}.npy", "a dog barks") for i in range(25)]
    manifest = write_train_csv(tmp_path / "more.csv", rows)
    with pytest.raises(ManifestError) as info:
        CaptionPairDataset.from_manifest(manifest, open_feature_store(corpus["store"]), tokenizer, max_target_length=MAX_TOKENS, max_frames=10)
    text = str(info.value)
    assert str(manifest) in text and str(corpus["store"]) in text
    assert f"25 of {len(FRAMES) + 25} clip(s) have no features" in text
    assert "'train/gone0'" in text and "'train/gone19'" in text and "'train/gone20'" not in text
    assert "... and 5 more" in text


def test_a_store_with_another_codebook_count_is_refused(corpus, tokenizer):
    with pytest.raises(InvalidFeaturesError, match=r"4 codebooks per frame, the model expects num_rvq=16") as info:
        make_dataset(corpus, tokenizer, num_codebooks=16)
    assert str(corpus["store"]) in str(info.value)
    with pytest.raises(InvalidFeaturesError, match=r"CLAP embeddings of size 6, the model expects d_clap=512"):
        make_dataset(corpus, tokenizer, d_clap=512)


def test_empty_captions_are_refused_with_their_line_numbers(corpus, tokenizer, tmp_path):
    manifest = tmp_path / "empty.csv"
    manifest.write_text("file_path,caption\ntrain/c0.npy,a dog barks\ntrain/c1.npy,  \ntrain/c2.npy,\n")
    with pytest.raises(ManifestError) as info:
        CaptionPairDataset.from_manifest(manifest, open_feature_store(corpus["store"]), tokenizer, max_target_length=MAX_TOKENS, max_frames=10)
    assert "line 3: empty caption" in str(info.value) and "line 4: empty caption" in str(info.value)


def test_clips_without_frames_and_bad_codes_are_named(corpus, tokenizer, tmp_path):
    rng = np.random.default_rng(1)
    codes, clap = random_clip(rng, 6, NUM_CODEBOOKS, D_CLAP)
    empty = np.zeros((0, NUM_CODEBOOKS), dtype=np.int16)
    too_big = codes.copy()
    too_big[3, 1] = 1024  # the pad / mask id is not a code
    store = write_store(tmp_path / "store", {"a/ok": (codes, clap), "a/empty": (empty, clap), "a/big": (too_big, clap)})
    manifest = write_train_csv(tmp_path / "m.csv", [("a/ok.npy", "a dog"), ("a/empty.npy", "a bell")])
    with pytest.raises(InvalidFeaturesError, match=r"1 clip\(s\) have 0 codec frames .*'a/empty'"):
        CaptionPairDataset.from_manifest(manifest, open_feature_store(store), tokenizer, max_target_length=MAX_TOKENS, max_frames=10)

    # EnCLAP's layout has no index: an empty clip is found when read, and named.
    for key, array in (("a/ok", codes), ("a/empty", empty), ("a/big", too_big)):
        for kind, value in (("encodec", array), ("clap", clap)):
            (tmp_path / kind / "a").mkdir(parents=True, exist_ok=True)
            np.save(tmp_path / kind / f"{key}.npy", value)
    npy = NpyFeatureStore(tmp_path / "encodec", tmp_path / "clap")
    dataset = CaptionPairDataset.from_manifest(manifest, npy, tokenizer, max_target_length=MAX_TOKENS, max_frames=10)
    dataset[0]
    with pytest.raises(InvalidFeaturesError, match=r"clip 'a/empty' .*has 0 codec frames"):
        dataset[1]
    big = write_train_csv(tmp_path / "big.csv", [("a/big.npy", "a dog")])
    dataset = CaptionPairDataset.from_manifest(big, open_feature_store(store), tokenizer, max_target_length=MAX_TOKENS, max_frames=10)
    with pytest.raises(InvalidFeaturesError, match=r"clip 'a/big' .*codes must be in \[0, 1024\), found values in \[\d+, 1024\]"):
        dataset[0]


def test_clips_that_disagree_with_the_others_or_are_not_finite_are_named(tokenizer, tmp_path):
    # EnCLAP's layout is read clip by clip: a bad one must name itself, not fail in the collator as "clip 3".
    rng = np.random.default_rng(2)
    codes, clap = random_clip(rng, 6, NUM_CODEBOOKS, D_CLAP)
    nan_clap = clap.copy()
    nan_clap[2] = np.nan
    clips = {
        "a/ok": (codes, clap),
        "a/wide": (random_clip(rng, 6, NUM_CODEBOOKS + 4, D_CLAP)[0], clap),
        "a/short": (codes, clap[:-1]),
        "a/nan": (codes, nan_clap),
    }
    for key, (array, embedding) in clips.items():
        for kind, value in (("encodec", array), ("clap", embedding)):
            (tmp_path / kind / "a").mkdir(parents=True, exist_ok=True)
            np.save(tmp_path / kind / f"{key}.npy", value)
    manifest = write_train_csv(tmp_path / "m.csv", [(f"{key}.npy", "a dog") for key in clips])
    dataset = CaptionPairDataset.from_manifest(
        manifest, NpyFeatureStore(tmp_path / "encodec", tmp_path / "clap"), tokenizer,
        max_target_length=MAX_TOKENS, max_frames=10, num_codebooks=NUM_CODEBOOKS, d_clap=D_CLAP,
    )
    dataset[0]
    expected = {
        1: rf"clip 'a/wide' .*: {NUM_CODEBOOKS + 4} codebooks per frame, expected {NUM_CODEBOOKS}",
        2: rf"clip 'a/short' .*: a CLAP embedding of size {D_CLAP - 1}, expected {D_CLAP}",
        3: r"clip 'a/nan' .*: the CLAP embedding contains NaN or infinite values",
    }
    for index, message in expected.items():
        with pytest.raises(InvalidFeaturesError, match=message) as info:
            dataset[(0, index)]
        assert str(manifest) in str(info.value)


def test_evaluation_manifests_give_one_example_per_reference(corpus, tokenizer, tmp_path):
    manifest = write_eval_csv(tmp_path / "valid.csv", [("train/c0.npy", ["a dog", "a bell", "rain falls"]), ("train/c3.npy", ["a car", "a bird", "soft rain"])])
    dataset = CaptionPairDataset.from_manifest(
        manifest, open_feature_store(corpus["store"]), tokenizer, max_target_length=MAX_TOKENS, max_frames=10, train=False
    )
    assert len(dataset) == 6
    assert dataset.keys == ["train/c0"] * 3 + ["train/c3"] * 3
    assert [tokenizer.decode(ids, skip_special_tokens=True) for ids in dataset.labels[:3]] == ["a dog", "a bell", "rain falls"]
