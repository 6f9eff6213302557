"""Loading released-style checkpoints: reference state-dict names, config.json, .bin (weights_only) and safetensors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from enclap.errors import CheckpointError, PretrainedNotFoundError
from enclap.model import (
    REFERENCE_GENERATION_DEFAULTS,
    EnClapBartConfig,
    EnClapBartForConditionalGeneration,
    load_enclap_model,
)

from .straightforward import TINY, hand_built_batch, random_clip_codes, straightforward_forward

D, FFN, V, MAXPOS, K, DCLAP = TINY["d_model"], TINY["encoder_ffn_dim"], TINY["vocab_size"], TINY["max_position_embeddings"], TINY["num_rvq"], TINY["d_clap"]


def reference_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The released checkpoints' names and shapes, written out from the spec (not from the model)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    shared = r(V, D)
    sd = {
        "model.shared.weight": shared,
        "model.encoder.embed_tokens.weight": shared,  # old checkpoints store tied tensors under every name
        "model.decoder.embed_tokens.weight": shared,
        "lm_head.weight": shared,
        "final_logits_bias": r(1, V),
        "model.encoder.clap_projection.weight": r(D, DCLAP),
        "model.encoder.clap_projection.bias": r(D),
        "model.encoder.embed_positions.weight": r(MAXPOS + 2, D),
        "model.decoder.embed_positions.weight": r(MAXPOS + 2, D),
    }
    for i in range(K):
        table = r(1088, D)  # ceil(1025 / 64) * 64 rows
        table[1024] = 0
        sd[f"model.encoder.embed_encodec.{i}.weight"] = table
        sd[f"mcm_heads.{i}.weight"] = r(1024, D)
        sd[f"mcm_heads.{i}.bias"] = r(1024)
    for part in ("encoder", "decoder"):
        sd[f"model.{part}.layernorm_embedding.weight"] = 1 + r(D)
        sd[f"model.{part}.layernorm_embedding.bias"] = r(D)
        attentions = ["self_attn"] + (["encoder_attn"] if part == "decoder" else [])
        for layer in range(2):
            prefix = f"model.{part}.layers.{layer}"
            for attn in attentions:
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    sd[f"{prefix}.{attn}.{proj}.weight"] = r(D, D)
                    sd[f"{prefix}.{attn}.{proj}.bias"] = r(D)
                sd[f"{prefix}.{attn}_layer_norm.weight"] = 1 + r(D)
                sd[f"{prefix}.{attn}_layer_norm.bias"] = r(D)
            sd[f"{prefix}.fc1.weight"] = r(FFN, D)
            sd[f"{prefix}.fc1.bias"] = r(FFN)
            sd[f"{prefix}.fc2.weight"] = r(D, FFN)
            sd[f"{prefix}.fc2.bias"] = r(D)
            sd[f"{prefix}.final_layer_norm.weight"] = 1 + r(D)
            sd[f"{prefix}.final_layer_norm.bias"] = r(D)
    return sd


def released_config_json() -> dict:
    """A config.json as the reference wrote it (transformers 4.x, BART-base keys, the six EnCLAP keys)."""
    return {
        "_name_or_path": "facebook/bart-base",
        "architectures": ["EnClapBartForConditionalGeneration"],
        "model_type": "bart",
        "activation_dropout": 0.1, "activation_function": "gelu", "add_bias_logits": False,
        "add_final_layer_norm": False, "attention_dropout": 0.1, "bos_token_id": 0, "classif_dropout": 0.1,
        "classifier_dropout": 0.0, "d_model": D, "decoder_attention_heads": 4, "decoder_ffn_dim": FFN,
        "decoder_layerdrop": 0.0, "decoder_layers": 2, "decoder_start_token_id": 2, "dropout": 0.1,
        "early_stopping": True, "encoder_attention_heads": 4, "encoder_ffn_dim": FFN, "encoder_layerdrop": 0.0,
        "encoder_layers": 2, "eos_token_id": 2, "forced_bos_token_id": 0, "forced_eos_token_id": 2,
        "gradient_checkpointing": False, "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"},
        "init_std": 0.02, "is_encoder_decoder": True, "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2},
        "max_position_embeddings": MAXPOS, "no_repeat_ngram_size": 3, "normalize_before": False,
        "normalize_embedding": True, "num_beams": 4, "num_hidden_layers": 2, "pad_token_id": 1,
        "scale_embedding": False, "task_specific_params": {"summarization": {"length_penalty": 1.0, "max_length": 128}},
        "torch_dtype": "float32", "transformers_version": "4.29.2", "use_cache": True, "vocab_size": V,
        "d_clap": DCLAP, "num_rvq": K, "encodec_vocab_size": 1024, "encodec_pad_token_id": 1024,
        "mcm_loss_scale": 0.7, "label_smoothing": 0.2,
    }


def write_checkpoint(folder, state_dict, fmt="bin", config=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or released_config_json()))
    if fmt == "bin":
        torch.save(state_dict, folder / "pytorch_model.bin")
    else:
        # safetensors refuses shared storage: store independent copies, as save_pretrained would not, but a converter might
        save_file({k: v.clone().contiguous() for k, v in state_dict.items()}, str(folder / "model.safetensors"))
    return folder


def test_released_config_json_loads_with_every_field(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(released_config_json()))
    config = EnClapBartConfig.from_pretrained(folder)
    assert (config.d_clap, config.num_rvq, config.encodec_vocab_size, config.encodec_pad_token_id) == (DCLAP, K, 1024, 1024)
    assert config.mcm_loss_scale == 0.7 and config.label_smoothing == 0.2
    assert config.codec_table_rows == 1088 and config.max_codec_frames == MAXPOS - 3
    assert config.architectures == ["EnClapBartForConditionalGeneration"] and config.model_type == "bart"


def test_invalid_config_fields_are_rejected():
    with pytest.raises(Exception, match="num_rvq must be >= 1"):
        EnClapBartConfig(num_rvq=0)
    with pytest.raises(Exception, match="encodec_pad_token_id"):
        EnClapBartConfig(encodec_pad_token_id=3)
    with pytest.raises(Exception, match="label_smoothing"):
        EnClapBartConfig(label_smoothing=1.0)


def test_codec_pad_id_is_not_checked_against_the_text_vocabulary(caplog):
    """encodec_pad_token_id is a codec id: a small text vocabulary must not make it look invalid."""
    with caplog.at_level("WARNING", logger="enclap.model.configuration"):
        EnClapBartConfig(vocab_size=100)
        assert not caplog.records
        EnClapBartConfig(vocab_size=100, pad_token_id=500)  # a text id outside the text vocabulary is still reported
    assert [r.getMessage() for r in caplog.records] == ["EnClapBartConfig: pad_token_id must be None or a token id in [0, 100), got 500"]


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_reference_state_dict_loads_without_missing_or_unexpected_keys(tmp_path, fmt, rng):
    sd = reference_state_dict()
    folder = write_checkpoint(tmp_path / fmt, sd, fmt)
    model, info = EnClapBartForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    loaded = model.state_dict()
    assert set(loaded) == set(sd)
    for name, value in sd.items():
        assert torch.equal(loaded[name], value), name
    # Tied: one tensor behind shared / encoder / decoder embeddings and the LM head.
    shared = model.model.shared.weight
    assert model.lm_head.weight is shared and model.model.encoder.embed_tokens.weight is shared
    assert model.model.decoder.embed_tokens.weight is shared
    assert model.model.encoder.embed_encodec[0].weight.shape == (1088, D)

    # And it computes the formulas with those weights.
    clips = [random_clip_codes(rng, 6), random_clip_codes(rng, 4)]
    ids, emask, amask = hand_built_batch(clips)
    clap = torch.randn(2, DCLAP)
    labels = torch.tensor([[0, 7, 8, 9, 2], [0, 11, 12, 2, -100]])
    with torch.no_grad():
        out = model(input_ids=ids, encodec_mask=emask, attention_mask=amask, clap_embedding=clap, labels=labels)
        ref = straightforward_forward(model, ids, emask, amask, clap, labels)
    torch.testing.assert_close(out.logits, ref["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_load_enclap_model_reads_the_written_weights(tmp_path, fmt):
    written = reference_state_dict(seed=3)
    folder = write_checkpoint(tmp_path / fmt, written, fmt)
    model = load_enclap_model(folder, device="cpu")
    assert not model.training and model.device.type == "cpu"
    # Every weight is the one written to the file (not what another loader makes of it).
    loaded = model.state_dict()
    assert set(loaded) == set(written)
    for name, value in written.items():
        assert torch.equal(loaded[name], value), name
    # Released folders carry no generation_config.json: the reference CLI's settings apply.
    for key, value in REFERENCE_GENERATION_DEFAULTS.items():
        assert getattr(model.generation_config, key) == value, key


def test_bin_is_loaded_weights_only(tmp_path):
    """A pickle that would run code if unpickled normally must be refused, not executed."""
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    sd = reference_state_dict()
    sd["payload"] = Payload()
    folder = write_checkpoint(tmp_path / "evil", sd, "bin")
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_enclap_model(folder)
    with pytest.raises(Exception):
        EnClapBartForConditionalGeneration.from_pretrained(folder)
    assert not marker.exists()


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    sd = reference_state_dict()
    del sd["mcm_heads.2.weight"]
    sd["model.encoder.embed_clap.weight"] = torch.zeros(3)
    folder = write_checkpoint(tmp_path / "wrong", sd)
    with pytest.raises(CheckpointError, match=r"missing keys: mcm_heads\.2\.weight.*unexpected keys: model\.encoder\.embed_clap\.weight"):
        load_enclap_model(folder)

    sd = reference_state_dict()
    sd["model.encoder.embed_encodec.1.weight"] = torch.zeros(1024, D)  # table not rounded up to 1088 rows
    folder = write_checkpoint(tmp_path / "shape", sd)
    with pytest.raises(CheckpointError, match="embed_encodec.1.weight"):
        load_enclap_model(folder)


def test_missing_checkpoint_raises_project_error(tmp_path):
    with pytest.raises(PretrainedNotFoundError, match="does not exist"):
        load_enclap_model(tmp_path / "no" / "such" / "dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(released_config_json()))
    with pytest.raises(PretrainedNotFoundError, match=str(empty)):
        load_enclap_model(empty)


def test_save_pretrained_round_trip_keeps_weights_and_generation_settings(tmp_path):
    folder = write_checkpoint(tmp_path / "src", reference_state_dict(seed=5))
    model = load_enclap_model(folder)
    model.generation_config.max_length = 30
    model.save_pretrained(tmp_path / "saved")
    again = load_enclap_model(tmp_path / "saved")
    assert again.generation_config.max_length == 30  # a saved generation_config.json is respected
    assert again.generation_config.num_beams == 4
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["architectures"] == ["EnClapBartForConditionalGeneration"]
