"""The captioner's loss as the loop sees it (term sums and counts) against the model's own losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enclap.data.dataset import CaptionCollator, CaptionPairDataset
from enclap.features.store import open_feature_store
from enclap.model import EnClapBartConfig, EnClapBartForConditionalGeneration
from enclap.model.masking import mask_codec_tokens
from enclap.training.captioner import MODEL_INPUT_KEYS, CaptionerLossModule, caption_batch_counts, captioner_loss_terms

from . import random_clip, write_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(num_rvq=4, label_smoothing=0.2, mcm_loss_scale=0.7):
    torch.manual_seed(0)
    config = EnClapBartConfig(
        vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=20,
        d_clap=8, num_rvq=num_rvq, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        label_smoothing=label_smoothing, mcm_loss_scale=mcm_loss_scale, init_std=0.3,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )
    return EnClapBartForConditionalGeneration(config).eval()


def make_batch(num_rvq=4, mask_prob=0.4):
    rng = np.random.default_rng(3)
    examples = []
    for index, (frames, words) in enumerate([(7, 5), (12, 3), (4, 8)]):
        codes = rng.integers(0, 1024, size=(frames, num_rvq))
        masked, labels = mask_codec_tokens(codes, mask_prob, 2, rng)
        caption = np.concatenate([[0], rng.integers(3, 40, size=words), [2]])
        examples.append({"codes": masked, "mcm_labels": labels, "clap": rng.standard_normal(8).astype(np.float32), "labels": caption, "index": index})
    return CaptionCollator(17)(examples)


def test_sums_over_counts_are_the_models_own_losses():
    model = tiny_model()
    batch = make_batch()
    inputs = {k: batch[k] for k in MODEL_INPUT_KEYS}
    with torch.no_grad():
        sums = CaptionerLossModule(model)(**inputs).double()
        reference = model(**inputs)
    counts = caption_batch_counts(batch)
    assert counts[0] == (batch["labels"] != -100).sum() and counts[1:].tolist() == (batch["mcm_labels"] != -100).sum((0, 1)).tolist()
    terms = captioner_loss_terms(model.config)
    per_term = torch.tensor(terms.weights, dtype=torch.float64) * sums / counts.clamp(min=1)
    assert float(per_term[terms.groups["lm_loss"]].sum()) == pytest.approx(float(reference.lm_loss), rel=1e-5)
    assert float(per_term[terms.groups["mcm_loss"]].sum()) == pytest.approx(float(reference.mcm_loss), rel=1e-5)
    assert float(per_term.sum()) == pytest.approx(float(reference.loss), rel=1e-5)


def test_a_codebook_without_masked_positions_adds_nothing_and_keeps_its_head_in_the_graph():
    model = tiny_model().train()
    batch = make_batch(mask_prob=0.0)
    batch["mcm_labels"][0, 3, 1] = int(batch["input_ids"][0, 3, 1])  # one labelled position, codebook 1 only
    inputs = {k: batch[k] for k in MODEL_INPUT_KEYS}
    sums = CaptionerLossModule(model)(**inputs)
    values = sums.detach()
    assert values[2] > 0 and float(values[1]) == float(values[3]) == float(values[4]) == 0.0
    sums.sum().backward()
    assert all(head.weight.grad is not None for head in model.mcm_heads)
    assert float(model.mcm_heads[0].weight.grad.abs().sum()) == 0.0 and float(model.mcm_heads[1].weight.grad.abs().sum()) > 0


def test_term_weights_follow_the_reference_codebook_weighting():
    terms = captioner_loss_terms(tiny_model(mcm_loss_scale=0.5).config)
    assert terms.weights == [1.0, 0.25, 0.125, 0.0625, 0.03125]
    assert terms.groups == {"lm_loss": [0], "mcm_loss": [1, 2, 3, 4]}


def clean_lm_loss_by_hand(model, codes, clap, caption):
    """Sum and count of the smoothed caption cross-entropy of one clean example, written out here.

    The encoder input is laid out by hand (CLAP slot, <s>, the clip's codes unchanged, </s>), the
    decoder reads the caption shifted right after ``decoder_start_token_id``, and label smoothing is
    ``(1 - eps) * nll + eps * mean over the vocabulary of -log p``.
    """
    config = model.config
    frames, num_codebooks = codes.shape
    input_ids = torch.zeros((1, frames + 3, num_codebooks), dtype=torch.long)  # CLAP slot and <s>: 0
    input_ids[0, 2 : 2 + frames] = torch.from_numpy(codes)
    input_ids[0, 2 + frames] = config.eos_token_id
    encodec_mask = torch.zeros((1, frames + 3), dtype=torch.long)
    encodec_mask[0, 2 : 2 + frames] = 1
    target = torch.from_numpy(caption)[None]
    decoder_input = torch.cat([torch.tensor([[config.decoder_start_token_id]]), target[:, :-1]], dim=1)
    with torch.no_grad():
        logits = model(
            input_ids=input_ids, clap_embedding=torch.from_numpy(clap)[None], encodec_mask=encodec_mask,
            attention_mask=torch.ones((1, frames + 3), dtype=torch.long), decoder_input_ids=decoder_input,
        ).logits[0].double()
    log_probs = logits.log_softmax(-1)
    nll = -log_probs.gather(1, target[0][:, None])[:, 0]
    eps = float(config.label_smoothing)
    per_token = (1 - eps) * nll - eps * log_probs.mean(-1)
    return float(per_token.sum()), len(caption)


def test_validation_loss_is_the_caption_loss_on_clean_codes(tmp_path):
    # A validation set with MCM settings that would mask (mask_prob=0.5): its loss must still be the
    # captioning loss of the unmasked clips, smoothing included, as the loop's formula turns it into val_loss.
    model = tiny_model(num_rvq=4, label_smoothing=0.2)
    max_frames = 17  # max_position_embeddings 20 - 3
    rng = np.random.default_rng(8)
    clips = {f"v/c{i}": random_clip(rng, frames, num_codebooks=4, d_clap=8) for i, frames in enumerate([6, 25, 11])}
    store = open_feature_store(write_store(tmp_path / "store", clips))
    pairs = [("v/c0.npy", "x"), ("v/c1.npy", "y"), ("v/c1.npy", "z"), ("v/c2.npy", "w")]
    captions = [np.concatenate([[0], rng.integers(3, 40, size=n), [2]]).astype(np.int64) for n in (4, 7, 2, 5)]
    settings = dict(max_frames=max_frames, mask_prob=0.5, mask_span=2, seed=1, num_codebooks=4, d_clap=8)
    validation = CaptionPairDataset(pairs, captions, store, train=False, **settings)
    batch = CaptionCollator(max_frames)([validation[i] for i in range(len(validation))])
    inputs = {k: batch[k] for k in MODEL_INPUT_KEYS}
    with torch.no_grad():
        sums = CaptionerLossModule(model)(**inputs).double()
    counts = caption_batch_counts(batch)
    assert counts[1:].tolist() == [0.0] * 4 and sums[1:].tolist() == [0.0] * 4  # no MCM term is measured
    terms = captioner_loss_terms(model.config)
    per_term = torch.tensor(terms.weights, dtype=torch.float64) * sums / counts.clamp(min=1)  # the loop's formula
    val_loss, val_lm_loss = float(per_term.sum()), float(per_term[terms.groups["lm_loss"]].sum())

    by_hand = [clean_lm_loss_by_hand(model, clips[f[:-4]][0][:max_frames].astype(np.int64), clips[f[:-4]][1], c)
               for (f, _), c in zip(pairs, captions)]
    expected = sum(total for total, _ in by_hand) / sum(n for _, n in by_hand)
    assert val_loss == val_lm_loss == pytest.approx(expected, rel=1e-5)
    # The model's own lm_loss on the clean batch (no mcm_labels) is the same figure.
    with torch.no_grad():
        own = model(**{k: v for k, v in inputs.items() if k != "mcm_labels"})
    assert own.mcm_loss is None and float(own.lm_loss) == pytest.approx(expected, rel=1e-5)
    # The same examples cropped and masked as in training give another caption loss: the test sees the difference.
    trained = CaptionPairDataset(pairs, captions, store, train=True, **settings)
    masked = CaptionCollator(max_frames)([trained[(0, i)] for i in range(len(trained))])
    with torch.no_grad():
        masked_sums = CaptionerLossModule(model)(**{k: masked[k] for k in inputs}).double()
    assert float(masked_sums[0] / counts[0]) != pytest.approx(expected, rel=1e-3)


def test_the_loss_terms_equal_a_straightforward_computation():
    """Independent of the model's loss code: one masked select and one plain CrossEntropyLoss per codebook."""
    model, batch = tiny_model(), make_batch()
    with torch.no_grad():
        inputs = {k: batch[k] for k in MODEL_INPUT_KEYS}
        sums = CaptionerLossModule(model)(**inputs).double()
        outputs = model(**{k: v for k, v in inputs.items() if k != "mcm_labels"})
        hidden = outputs.encoder_last_hidden_state
        labels = batch["labels"]
        token_losses = torch.nn.CrossEntropyLoss(reduction="none", label_smoothing=0.2, ignore_index=-100)(
            outputs.logits.reshape(-1, outputs.logits.shape[-1]), labels.reshape(-1)
        )
        expected = [float(token_losses[labels.reshape(-1) != -100].sum())]
        for i, head in enumerate(model.mcm_heads):
            where = batch["mcm_labels"][..., i] != -100
            rows, targets = hidden[where], batch["mcm_labels"][..., i][where]
            expected.append(float(torch.nn.CrossEntropyLoss(reduction="sum")(head(rows), targets)) if len(rows) else 0.0)
    np.testing.assert_allclose(sums.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert (batch["mcm_labels"] != -100).any()  # the batch does exercise the MCM terms
