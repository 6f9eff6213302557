"""Generation: batched beam search on CPU with the reference defaults, equal to per-clip runs and to a hand-written greedy loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from enclap.model import REFERENCE_GENERATION_DEFAULTS, build_encoder_inputs

from .straightforward import random_clip_codes, tiny_model


@pytest.fixture(scope="module")
def model():
    # Larger weights than the default init so that captions depend visibly on the audio inputs
    # (with std 0.02 a random decoder says the same thing for every clip, which would hide mix-ups).
    model = tiny_model(seed=11, init_std=0.5)
    with torch.no_grad():
        model.final_logits_bias.zero_()
    return model


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(5)
    clips = [random_clip_codes(rng, n) for n in (7, 15, 3)]
    claps = rng.standard_normal((3, 16)).astype(np.float32) * 3
    return clips, claps, build_encoder_inputs(clips, claps, max_frames=61)


@pytest.fixture(scope="module")
def default_output(model, batch):
    with torch.no_grad():
        return model.generate(**batch[2])  # defaults: beam 4, no_repeat_ngram 3, max_length 50


def test_model_defaults_are_the_reference_cli_settings(model):
    config = model.generation_config
    for key, value in REFERENCE_GENERATION_DEFAULTS.items():
        assert getattr(config, key) == value, key


def test_default_generation_is_batched_beam_search_with_reference_settings(default_output):
    sequences = default_output
    assert sequences.shape[0] == 3 and sequences.shape[1] <= 50
    assert (sequences[:, 0] == 2).all() and (sequences[:, 1] == 0).all()  # decoder start, forced BOS
    assert len({tuple(row) for row in sequences.tolist()}) == 3  # the captions depend on the clip
    for row in sequences.tolist():
        row = [t for t in row if t != 1]
        assert row[-1] == 2  # ends with EOS (forced at max_length at the latest)
        trigrams = [tuple(row[i : i + 3]) for i in range(len(row) - 2)]
        assert len(trigrams) == len(set(trigrams))  # no_repeat_ngram_size=3


def test_batched_beam_search_equals_each_clip_alone(model, batch):
    clips, claps, inputs = batch
    settings = dict(max_length=20)  # otherwise the reference defaults (beam 4, ...), shorter for speed
    with torch.no_grad():
        together = model.generate(**inputs, **settings)
    assert len({tuple(row) for row in together.tolist()}) == 3
    for b, codes in enumerate(clips):
        alone_inputs = build_encoder_inputs([codes], claps[b : b + 1], max_frames=61)
        with torch.no_grad():
            alone = model.generate(**alone_inputs, **settings)
        n = alone.shape[1]
        assert torch.equal(together[b, :n], alone[0]), b
        assert (together[b, n:] == 1).all()  # the rest is padding


def test_greedy_generate_equals_hand_written_decoding_loop(model, batch):
    _, _, inputs = batch
    max_length = 12
    with torch.no_grad():
        generated = model.generate(**inputs, num_beams=1, do_sample=False, no_repeat_ngram_size=0, max_length=max_length)
        # Hand-written: decoder start 2, forced BOS 0, argmax of the full (uncached) forward, forced EOS at the end.
        for b in range(3):
            one = {k: v[b : b + 1] for k, v in inputs.items()}
            tokens = [2, 0]
            while tokens[-1] != 2 and len(tokens) < max_length:
                if len(tokens) == max_length - 1:
                    tokens.append(2)  # forced EOS as the last token
                else:
                    logits = model(**one, decoder_input_ids=torch.tensor([tokens])).logits[0, -1]
                    tokens.append(int(logits.argmax()))
            row = generated[b].tolist()
            assert row[: len(tokens)] == tokens, (b, row, tokens)
            assert all(t == 1 for t in row[len(tokens) :])


def test_generation_config_argument_and_kwargs_are_honoured(model, batch, default_output):
    _, _, inputs = batch
    with torch.no_grad():
        short = model.generate(**inputs, generation_config=GenerationConfig(**{**REFERENCE_GENERATION_DEFAULTS, "max_length": 6}))
        shorter = model.generate(**inputs, max_length=5)
        # The reference CLI passes this exact dictionary as keyword arguments.
        reference_cli = {"_from_model_config": True, **REFERENCE_GENERATION_DEFAULTS}
        explicit = model.generate(**inputs, **reference_cli)
    assert short.shape[1] == 6 and shorter.shape[1] == 5
    assert torch.equal(explicit, default_output)


def test_generate_without_attention_mask_for_unpadded_input(model, batch):
    clips, claps, _ = batch
    inputs = build_encoder_inputs([clips[1]], claps[1:2], max_frames=61)
    with torch.no_grad():
        with_mask = model.generate(**inputs, max_length=20)
        inputs.pop("attention_mask")
        without = model.generate(**inputs, max_length=20)
    assert torch.equal(with_mask, without)


def test_generate_reuses_precomputed_encoder_outputs(model, batch, default_output):
    _, _, inputs = batch
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=inputs["input_ids"], encodec_mask=inputs["encodec_mask"],
                                      attention_mask=inputs["attention_mask"], clap_embedding=inputs["clap_embedding"])
        from_encoded = model.generate(encoder_outputs=encoded, attention_mask=inputs["attention_mask"])
    assert torch.equal(from_encoded, default_output)


def test_skipping_the_cross_attention_cache_reorder_changes_nothing(model, batch, monkeypatch):
    _, _, inputs = batch
    calls = {"ours": 0, "generic": 0}
    original = model._reorder_cache

    def reorder_self_only(past_key_values, beam_idx):
        calls["ours"] += 1
        return original(past_key_values, beam_idx)

    def reorder_everything(past_key_values, beam_idx):
        calls["generic"] += 1
        past_key_values.reorder_cache(beam_idx)  # transformers' generic: self- and cross-attention caches
        return past_key_values

    with torch.no_grad():
        monkeypatch.setattr(model, "_reorder_cache", reorder_self_only)
        ours = model.generate(**inputs, max_length=20, num_beams=3, return_dict_in_generate=True, output_scores=True)
        monkeypatch.setattr(model, "_reorder_cache", reorder_everything)
        generic = model.generate(**inputs, max_length=20, num_beams=3, return_dict_in_generate=True, output_scores=True)
    # Both reorderings really ran (as often), so the equality below compares the two.
    assert calls["ours"] == calls["generic"] > 0
    assert torch.equal(ours.sequences, generic.sequences)
    torch.testing.assert_close(ours.sequences_scores, generic.sequences_scores, atol=0, rtol=0)
