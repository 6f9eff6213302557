"""The captioner's loss as the loop sees it (term sums and counts) against the model's own losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enclap.data.dataset import CaptionCollator
from enclap.model import EnClapBartConfig, EnClapBartForConditionalGeneration
from enclap.model.masking import mask_codec_tokens
from enclap.training.captioner import CaptionerLossModule, caption_batch_counts, captioner_loss_terms

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
    inputs = {k: batch[k] for k in ("input_ids", "encodec_mask", "attention_mask", "clap_embedding", "labels", "mcm_labels")}
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
    inputs = {k: batch[k] for k in ("input_ids", "encodec_mask", "attention_mask", "clap_embedding", "labels", "mcm_labels")}
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
