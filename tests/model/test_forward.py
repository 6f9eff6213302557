"""Forward pass: equality with an independent straightforward computation, batching invariance, losses, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enclap.model import IGNORE_INDEX

from .straightforward import hand_built_batch, random_clip_codes, straightforward_forward, tiny_model

ATOL = 1e-5


def _batch(rng, lengths=(9, 5, 12), vocab=100):
    clips = [random_clip_codes(rng, n) for n in lengths]
    input_ids, encodec_mask, attention_mask = hand_built_batch(clips)
    clap = torch.from_numpy(rng.standard_normal((len(lengths), 16)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(3, vocab, size=(len(lengths), 7)))
    labels[0, 5:] = IGNORE_INDEX  # a shorter caption
    labels[:, 4] = 2
    return clips, input_ids, encodec_mask, attention_mask, clap, labels


def _fixed_mcm_labels(input_ids, encodec_mask, rng, prob=0.3):
    """A fixed MCM mask over codec frames only; masked codes are replaced by 1024 as in training."""
    masked = (torch.from_numpy(rng.random(input_ids.shape) < prob)) & (encodec_mask.bool().unsqueeze(-1)) & (input_ids != 1024)
    labels = torch.where(masked, input_ids, IGNORE_INDEX)
    return torch.where(masked, 1024, input_ids), labels


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("scale_embedding", [False, True])
def test_forward_matches_straightforward_formulas(rng, attn, scale_embedding):
    model = tiny_model(seed=1, attn_implementation=attn, scale_embedding=scale_embedding)
    _, input_ids, encodec_mask, attention_mask, clap, labels = _batch(rng)
    masked_ids, mcm_labels = _fixed_mcm_labels(input_ids, encodec_mask, rng)
    with torch.no_grad():
        out = model(input_ids=masked_ids, encodec_mask=encodec_mask, attention_mask=attention_mask,
                    clap_embedding=clap, labels=labels, mcm_labels=mcm_labels)
        ref = straightforward_forward(model, masked_ids, encodec_mask, attention_mask, clap, labels, mcm_labels)
    torch.testing.assert_close(out.encoder_last_hidden_state, ref["encoder_last_hidden_state"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits, ref["logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.lm_loss, ref["lm_loss"], atol=ATOL, rtol=0)
    expected_mcm = ref["mcm_loss_unscaled"] * model.config.mcm_loss_scale
    torch.testing.assert_close(out.mcm_loss, expected_mcm, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.loss, ref["lm_loss"] + expected_mcm, atol=ATOL, rtol=0)


def test_gradients_match_straightforward_and_pad_rows_never_train(rng):
    """Same gradients as one nn.Embedding(padding_idx) per codebook, even with non-zero stored pad rows."""
    model = tiny_model(seed=2)
    with torch.no_grad():  # a checkpoint may store anything in the pad row; it must be added, never trained
        for table in model.model.encoder.embed_encodec:
            table.weight[1024].normal_()
    _, input_ids, encodec_mask, attention_mask, clap, labels = _batch(rng)
    masked_ids, mcm_labels = _fixed_mcm_labels(input_ids, encodec_mask, rng)
    kwargs = dict(input_ids=masked_ids, encodec_mask=encodec_mask, attention_mask=attention_mask, clap_embedding=clap)

    model.zero_grad()
    out = model(**kwargs, labels=labels, mcm_labels=mcm_labels)
    out.loss.backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    ref = straightforward_forward(model, masked_ids, encodec_mask, attention_mask, clap, labels, mcm_labels, detach=False)
    torch.testing.assert_close(out.loss.detach(), (ref["lm_loss"] + model.config.mcm_loss_scale * ref["mcm_loss_unscaled"]).detach(), atol=ATOL, rtol=0)
    (ref["lm_loss"] + model.config.mcm_loss_scale * ref["mcm_loss_unscaled"]).backward()
    slow = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    assert fast.keys() == slow.keys()
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-4, msg=name)
    for i in range(model.config.num_rvq):
        grad = fast[f"model.encoder.embed_encodec.{i}.weight"]
        assert torch.count_nonzero(grad[1024]) == 0
        assert torch.count_nonzero(grad) > 0


def test_padded_batch_gives_same_per_clip_outputs_as_clips_alone(rng):
    model = tiny_model(seed=3)
    clips, input_ids, encodec_mask, attention_mask, clap, labels = _batch(rng, lengths=(3, 14, 8))
    with torch.no_grad():
        together = model(input_ids=input_ids, encodec_mask=encodec_mask, attention_mask=attention_mask,
                         clap_embedding=clap, labels=labels)
        for b, codes in enumerate(clips):
            ids, emask, amask = hand_built_batch([codes])
            alone = model(input_ids=ids, encodec_mask=emask, attention_mask=amask,
                          clap_embedding=clap[b : b + 1], labels=labels[b : b + 1])
            valid = len(codes) + 3
            torch.testing.assert_close(together.encoder_last_hidden_state[b, :valid], alone.encoder_last_hidden_state[0], atol=ATOL, rtol=0)
            torch.testing.assert_close(together.logits[b], alone.logits[0], atol=ATOL, rtol=0)


def test_attention_mask_defaults_to_all_ones(rng):
    model = tiny_model(seed=4)
    _, input_ids, encodec_mask, _, clap, labels = _batch(rng, lengths=(6, 6))
    with torch.no_grad():
        implicit = model(input_ids=input_ids, encodec_mask=encodec_mask, clap_embedding=clap, labels=labels)
        explicit = model(input_ids=input_ids, encodec_mask=encodec_mask, clap_embedding=clap, labels=labels,
                         attention_mask=torch.ones(encodec_mask.shape, dtype=torch.long))
    torch.testing.assert_close(implicit.logits, explicit.logits, atol=0, rtol=0)


def test_codebook_without_masked_positions_contributes_zero_not_nan(rng):
    model = tiny_model(seed=5)
    _, input_ids, encodec_mask, attention_mask, clap, labels = _batch(rng)
    _, mcm_labels = _fixed_mcm_labels(input_ids, encodec_mask, rng)
    mcm_labels[..., 2] = IGNORE_INDEX  # codebook 2: nothing masked
    with torch.no_grad():
        out = model(input_ids=input_ids, encodec_mask=encodec_mask, attention_mask=attention_mask,
                    clap_embedding=clap, mcm_labels=mcm_labels)
        ref = straightforward_forward(model, input_ids, encodec_mask, attention_mask, clap, mcm_labels=mcm_labels)
    assert torch.isfinite(out.mcm_loss)
    # MCM only: loss is the unscaled MCM loss (the reference's convention).
    torch.testing.assert_close(out.loss, ref["mcm_loss_unscaled"], atol=ATOL, rtol=0)
    assert out.lm_loss is None

    nothing = torch.full_like(mcm_labels, IGNORE_INDEX)
    out = model(input_ids=input_ids, encodec_mask=encodec_mask, attention_mask=attention_mask,
                clap_embedding=clap, labels=labels, mcm_labels=nothing)
    assert out.mcm_loss.item() == 0.0
    torch.testing.assert_close(out.loss, out.lm_loss)
    out.loss.backward()  # still differentiable, heads included (zero gradient)
    assert model.mcm_heads[0].weight.grad is not None and torch.count_nonzero(model.mcm_heads[0].weight.grad) == 0


def test_labels_only_gives_lm_loss_and_no_mcm(rng):
    model = tiny_model(seed=6)
    _, input_ids, encodec_mask, attention_mask, clap, labels = _batch(rng)
    out = model(input_ids=input_ids, encodec_mask=encodec_mask, attention_mask=attention_mask, clap_embedding=clap, labels=labels)
    assert out.mcm_loss is None and out.loss is out.lm_loss


def test_dropout_is_active_in_training_and_off_in_eval(rng):
    model = tiny_model(seed=7)
    _, input_ids, encodec_mask, attention_mask, clap, labels = _batch(rng)
    kwargs = dict(input_ids=input_ids, encodec_mask=encodec_mask, attention_mask=attention_mask, clap_embedding=clap, labels=labels)
    with torch.no_grad():
        a, b = model(**kwargs).logits, model(**kwargs).logits
        assert torch.equal(a, b)
        model.train()
        c = model(**kwargs).logits
    assert not torch.allclose(a, c)


def test_plain_text_input_ids_use_scaled_bart_embeddings(rng):
    """2-D input_ids (the reference's text path): scaled token embeddings, shifted positions."""
    model = tiny_model(seed=8, scale_embedding=True)
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    with torch.no_grad():
        hidden = model.get_encoder()(input_ids=ids).last_hidden_state
        embeds = model.model.shared.weight[ids] * np.sqrt(32)
        again = model.get_encoder()(inputs_embeds=embeds).last_hidden_state
    torch.testing.assert_close(hidden, again, atol=ATOL, rtol=0)


def test_bad_inputs_raise_clear_errors(rng):
    model = tiny_model(seed=9)
    _, input_ids, encodec_mask, attention_mask, clap, labels = _batch(rng, lengths=(5, 5))
    base = dict(input_ids=input_ids, encodec_mask=encodec_mask, attention_mask=attention_mask, clap_embedding=clap, labels=labels)

    with pytest.raises(ValueError, match="clap_embedding"):
        model(**{**base, "clap_embedding": None})
    with pytest.raises(ValueError, match="d_clap=16"):
        model(**{**base, "clap_embedding": torch.zeros(2, 8)})
    with pytest.raises(ValueError, match="encodec_mask"):
        model(**{**base, "encodec_mask": None})
    with pytest.raises(ValueError, match="encodec_mask shape"):
        model(**{**base, "encodec_mask": encodec_mask[:, :-1]})
    bad = input_ids.clone()
    bad[0, 3, 1] = 1088  # past the 1088-row table: must not silently read the next codebook's table
    with pytest.raises(ValueError, match=r"codec ids must be in \[0, 1088\)"):
        model(**{**base, "input_ids": bad})
    with pytest.raises(ValueError, match="4 codebooks"):
        model(**{**base, "input_ids": input_ids[..., :3]})
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(**{**base, "labels": None})
    with pytest.raises(ValueError, match="mcm_labels must be"):
        model(**base, mcm_labels=torch.full((2, 3, 4), IGNORE_INDEX))

    too_long = [random_clip_codes(rng, 62)]  # 62 + 3 = 65 positions > max_position_embeddings=64
    ids, emask, amask = hand_built_batch(too_long)
    with pytest.raises(ValueError, match="max_position_embeddings=64.*61 codec frames"):
        model(input_ids=ids, encodec_mask=emask, attention_mask=amask, clap_embedding=clap[:1], labels=labels[:1])
    fits = [random_clip_codes(rng, 61)]
    ids, emask, amask = hand_built_batch(fits)
    assert model(input_ids=ids, encodec_mask=emask, attention_mask=amask, clap_embedding=clap[:1], labels=labels[:1]).logits.shape == (1, 7, 100)


def test_gradient_checkpointing_gives_the_same_gradients(rng):
    model = tiny_model(seed=10, dropout=0.0)  # no dropout: the two runs must be comparable
    _, input_ids, encodec_mask, attention_mask, clap, labels = _batch(rng)
    masked_ids, mcm_labels = _fixed_mcm_labels(input_ids, encodec_mask, rng)
    kwargs = dict(input_ids=masked_ids, encodec_mask=encodec_mask, attention_mask=attention_mask,
                  clap_embedding=clap, labels=labels, mcm_labels=mcm_labels)
    model.train()
    model(**kwargs).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.model.encoder.layers[0].gradient_checkpointing and model.model.decoder.layers[0].gradient_checkpointing
    model(**kwargs).loss.backward()
    checkpointed = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    # The same parameters get gradients both ways (a checkpointed layer that dropped out of the graph
    # would leave its gradients None), and that is nearly every parameter of the model.
    assert checkpointed.keys() == plain.keys()
    assert any(name.startswith("model.encoder.layers.0.") for name in plain)
    assert len(plain) >= 0.9 * sum(1 for _ in model.parameters())
    for name, grad in checkpointed.items():
        torch.testing.assert_close(grad, plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_hidden_states_and_attentions_can_be_returned(rng):
    model = tiny_model(seed=12, attn_implementation="eager")
    _, input_ids, encodec_mask, attention_mask, clap, labels = _batch(rng)
    with torch.no_grad():
        out = model(input_ids=input_ids, encodec_mask=encodec_mask, attention_mask=attention_mask, clap_embedding=clap,
                    labels=labels, output_hidden_states=True, output_attentions=True)
    assert len(out.encoder_hidden_states) == model.config.encoder_layers + 1
    torch.testing.assert_close(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)
    assert len(out.encoder_attentions) == model.config.encoder_layers
    assert out.encoder_attentions[0].shape == (3, 4, input_ids.shape[1], input_ids.shape[1])
    # Padded keys get no attention.
    assert torch.all(out.encoder_attentions[0][0, :, :, attention_mask[0] == 0] == 0)
