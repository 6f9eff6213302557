"""The captioner training job: learning, exact resume, outputs the pipeline loads, model starts, bad inputs, processes."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from enclap.errors import CheckpointError, ConfigError, InvalidFeaturesError, ManifestError, PretrainedNotFoundError
from enclap.jobs.train_captioner import build_model, load_train_config, main, train_captioner
from enclap.model import EnClapBartEncoder
from enclap.training.checkpoints import list_checkpoints
from enclap.training.loop import NonFiniteLossError
from enclap.training.tracking import read_train_log

from ..conftest import REPO_ROOT, torch_threads
from ..training import caption_for, make_feature_set, random_clip, tiny_overrides, write_store, write_train_csv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG_FILES = ["clotho/base", "clotho/large", "audiocaps/base", "audiocaps/large", "clotho_finetune/base", "clotho_finetune/large"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_feature_set(tmp_path_factory.mktemp("features"))


def run(files, output, **extra):
    return train_captioner(load_train_config(None, tiny_overrides(files, output, **extra)))


@contextmanager
def encoder_hook(action):
    """Call ``action(count)`` at every training forward of the captioner's encoder (count from 1)."""
    count = 0

    def hook(module, args, output):
        nonlocal count
        if isinstance(module, EnClapBartEncoder) and module.training:
            count += 1
            return action(count, output)
        return None

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def sigterm_at(step):
    def action(count, output):
        if count == step:
            os.kill(os.getpid(), signal.SIGTERM)
    return action


def train_losses(output):
    return {e["step"]: (e["loss"], e["lm_loss"], e["mcm_loss"]) for e in read_train_log(output) if e["type"] == "train"}


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    """An uninterrupted run with dropout on: 2 epochs of 8 steps (16 clips x 2 captions, batch 4)."""
    output = tmp_path_factory.mktemp("reference") / "run"
    with torch_threads(1):
        result = run(files, output, **{"model.dropout": 0.1, "model.attention_dropout": 0.1})
    return output, result


# --------------------------------------------------------------------------------------------- training


def test_training_fits_a_small_set_and_the_model_then_says_its_captions(tmp_path):
    rng = np.random.default_rng(5)
    clips = {f"train/c{i}": random_clip(rng, 30) for i in range(4)}
    captions = [caption_for(i) for i in range(4)]
    root = tmp_path / "data"
    rows = [(f"train/c{i}.npy", captions[i]) for i in range(4)] * 4  # 16 examples: 4 steps of 4 per epoch
    files = {"store": write_store(root / "store", clips), "train_csv": write_train_csv(root / "train.csv", rows), "val_csv": ""}
    result = run(files, tmp_path / "run", **{
        "train.num_train_epochs": 10, "data.encodec_masking_prob": 0.0, "train.learning_rate": 1e-2,
        "model.max_position_embeddings": 64, "model.label_smoothing": 0.0, "validation.num_beams": 1,
    })
    losses = train_losses(tmp_path / "run")
    assert result.status == "completed" and len(losses) == 40
    first, last = losses[1][1], losses[40][1]
    assert last < 0.1 * first, f"caption loss {first:.3f} -> {last:.3f}"

    from enclap.features.store import open_feature_store
    from enclap.pipeline import CaptioningPipeline

    pipeline = CaptioningPipeline.from_pretrained(result.final_dir, with_audio_models=False, device="cpu")
    store = open_feature_store(files["store"])
    said = pipeline.caption_features([store[f"train/c{i}"] for i in range(4)])
    assert said == captions


def test_resume_after_sigterm_equals_the_uninterrupted_run(files, reference, tmp_path):
    reference_dir, reference_result = reference
    assert reference_result.total_steps == 16
    output = tmp_path / "run"
    overrides = tiny_overrides(files, output, **{"model.dropout": 0.1, "model.attention_dropout": 0.1})
    with encoder_hook(sigterm_at(11)):  # step 11: the third step of epoch 2
        assert main(overrides) == 143
    assert [step for step, _ in list_checkpoints(output)] == [8, 11]
    assert main(overrides) == 0
    final, expected = load_file(output / "final" / "model.safetensors"), load_file(reference_dir / "final" / "model.safetensors")
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key
    assert train_losses(output) == train_losses(reference_dir)


def test_the_outputs_load_in_the_pipeline_and_caption_features(files, reference):
    from enclap.features.store import open_feature_store
    from enclap.pipeline import CaptioningPipeline

    output, result = reference
    assert result.final_dir == output / "final" and result.best_dir == output / "best"
    pipeline = CaptioningPipeline.from_pretrained(result.final_dir, with_audio_models=False, device="cpu")
    assert (pipeline.settings.encodec, pipeline.settings.clap) == ("tiny/encodec", "tiny/clap")  # from the store
    trained = load_file(output / "checkpoints" / "step_16" / "model.safetensors")
    state = pipeline.model.state_dict()
    for key, value in trained.items():
        assert torch.equal(state[key.removeprefix("captioner.")], value), key
    store = open_feature_store(files["store"])
    captions = pipeline.caption_features([store[f"valid/clip_{i:03d}"] for i in range(4)])
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)
    assert load_train_config(output / "final" / "training_config.yaml").model.d_model == 32
    assert CaptioningPipeline.from_pretrained(result.best_dir, with_audio_models=False, device="cpu").model.config.d_model == 32
    validations = [e for e in read_train_log(output) if e["type"] == "validation"]
    assert [e["step"] for e in validations] == [8, 16] and all(e["val_loss"] > 0 for e in validations)
    assert result.best["step"] in (8, 16)


def test_the_validation_loss_is_the_caption_loss_of_the_clean_validation_clips(files, reference):
    # The run masks training codes (encodec_masking_prob=0.15); validation must judge the captioner on the
    # clean codes it sees at inference. Recomputed here from the manifest and the store, with the model
    # validated at the last step (= final/), one clip at a time, through the model's own caption loss.
    import csv

    from enclap.features.store import open_feature_store
    from enclap.pipeline import CaptioningPipeline

    output, result = reference
    pipeline = CaptioningPipeline.from_pretrained(result.final_dir, with_audio_models=False, device="cpu")
    model, tokenizer = pipeline.model.eval(), pipeline.tokenizer
    max_frames, max_tokens = 48 - 3, 16
    store = open_feature_store(files["store"])
    total, tokens = 0.0, 0
    with open(files["val_csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        clip = store[row["file_path"].removesuffix(".npy")]
        codes = torch.from_numpy(np.asarray(clip.codes, dtype=np.int64)[:max_frames])
        frames = len(codes)
        input_ids = torch.zeros((1, frames + 3, codes.shape[1]), dtype=torch.long)  # CLAP slot and <s>: 0
        input_ids[0, 2 : 2 + frames] = codes
        input_ids[0, 2 + frames] = tokenizer.eos_token_id
        encodec_mask = torch.zeros((1, frames + 3), dtype=torch.long)
        encodec_mask[0, 2 : 2 + frames] = 1
        for caption in (row[key] for key in row if key.startswith("caption_")):
            ids = tokenizer(caption)["input_ids"]
            ids = ids if len(ids) <= max_tokens else ids[: max_tokens - 1] + [tokenizer.eos_token_id]
            with torch.no_grad():
                out = model(input_ids=input_ids, clap_embedding=torch.from_numpy(np.asarray(clip.clap))[None],
                            encodec_mask=encodec_mask, attention_mask=torch.ones((1, frames + 3), dtype=torch.long),
                            labels=torch.tensor([ids]))
            total += float(out.lm_loss) * len(ids)  # the model's mean over this caption's tokens, smoothing included
            tokens += len(ids)
    last = [e for e in read_train_log(output) if e["type"] == "validation" and e["step"] == result.global_step]
    assert len(last) == 1 and model.config.label_smoothing == 0.2
    assert last[0]["val_loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert last[0]["val_loss"] == last[0]["val_lm_loss"]
    assert "val_mcm_loss" not in last[0]  # no MCM figure: validation inputs are not masked


def test_a_nan_loss_stops_with_the_step_and_the_last_checkpoint_intact(files, tmp_path):
    output = tmp_path / "run"

    def poison(count, output_):
        if count == 3:
            output_.last_hidden_state = output_.last_hidden_state * float("nan")
            return output_
        return None

    with encoder_hook(poison), pytest.raises(NonFiniteLossError, match=r"step 3: the loss is not finite"):
        run(files, output, **{"train.checkpointing_steps": 2})
    assert [step for step, _ in list_checkpoints(output)] == [2]
    before = hashlib.sha256((output / "checkpoints" / "step_2" / "model.safetensors").read_bytes()).hexdigest()
    with encoder_hook(poison):
        assert main(tiny_overrides(files, output, **{"train.checkpointing_steps": 2})) == 1  # resumes at 2, fails at 3 again
    assert hashlib.sha256((output / "checkpoints" / "step_2" / "model.safetensors").read_bytes()).hexdigest() == before


# --------------------------------------------------------------------------------------------- model starts


def save_tiny_bart(directory: Path, tokenizer) -> Path:
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(1)
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2,
    )
    BartForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_starting_from_a_bart_copies_its_weights_and_adds_the_enclap_parts(files, reference, tmp_path):
    from transformers import BartForConditionalGeneration

    from enclap.text import load_tokenizer

    tokenizer = load_tokenizer(reference[0] / "tokenizer")
    bart_dir = save_tiny_bart(tmp_path / "bart", tokenizer)
    overrides = {
        "model.init": "pretrained", "model.model_name_or_path": bart_dir, "tokenizer.train_from_captions": "false",
        **{f"model.{k}": "null" for k in ("d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim",
                                            "max_position_embeddings", "dropout", "attention_dropout", "activation_dropout")},
    }
    config = load_train_config(None, tiny_overrides(files, tmp_path / "run", **overrides))
    model = build_model(config, tokenizer, num_codebooks=16, d_clap=16, codebook_size=1024)
    bart = BartForConditionalGeneration.from_pretrained(bart_dir).state_dict()
    state = model.state_dict()
    for key in ("model.shared.weight", "model.encoder.embed_positions.weight", "model.decoder.layers.0.fc1.weight",
                "model.encoder.layers.0.self_attn.k_proj.weight", "model.encoder.layernorm_embedding.weight"):
        assert torch.equal(state[key], bart[key]), key
    assert state["model.encoder.clap_projection.weight"].shape == (32, 16) and len(model.mcm_heads) == 16
    assert model.config.d_clap == 16 and model.config.mcm_loss_scale == 0.7 and model.training
    result = train_captioner(load_train_config(None, tiny_overrides(files, tmp_path / "run", **overrides, **{"train.max_train_steps": 2})))
    assert result.status == "completed" and result.global_step == 2

    # An EnCLAP checkpoint is not a BART to start from, and a path that is not there is an error, never random weights.
    with pytest.raises(ConfigError, match=r"already an EnCLAP captioner: fine-tune it with model.init_from"):
        run(files, tmp_path / "x", **{**overrides, "model.model_name_or_path": reference[1].final_dir})
    with pytest.raises(PretrainedNotFoundError, match=r"'/no/such/bart' does not exist on this machine and is not a model hub id"):
        run(files, tmp_path / "y", **{**overrides, "model.model_name_or_path": "/no/such/bart"})
    with pytest.raises(PretrainedNotFoundError, match=r"Could not load BART model \(model.model_name_or_path\): '/no/such/bart'"):
        run(files, tmp_path / "y", **{**overrides, "model.model_name_or_path": "/no/such/bart", "tokenizer.name_or_path": bart_dir})
    assert not (tmp_path / "y" / "checkpoints").exists()


def test_fine_tuning_an_enclap_checkpoint_starts_from_its_weights(files, reference, tmp_path):
    start = reference[1].final_dir
    overrides = {
        "model.init": "pretrained", "model.init_from": start, "tokenizer.train_from_captions": "false",
        "train.max_train_steps": 2, "model.mcm_loss_scale": 0.5,
        **{f"model.{k}": "null" for k in ("d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim",
                                            "max_position_embeddings", "dropout", "attention_dropout", "activation_dropout")},
    }
    config = load_train_config(None, tiny_overrides(files, tmp_path / "run", **overrides))
    from enclap.jobs.train_captioner import build_tokenizer

    tokenizer = build_tokenizer(config, [], is_main=True)
    assert tokenizer.get_vocab() == __import__("enclap.text", fromlist=["load_tokenizer"]).load_tokenizer(start).get_vocab()
    model = build_model(config, tokenizer, num_codebooks=16, d_clap=16, codebook_size=1024)
    saved = load_file(start / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert model.config.mcm_loss_scale == 0.5
    assert train_captioner(config).global_step == 2
    with pytest.raises(InvalidFeaturesError, match=r"expects 16 codebooks of 1024 codes and d_clap=16, but the training features have 8"):
        build_model(config, tokenizer, num_codebooks=8, d_clap=16, codebook_size=1024)


def test_a_missing_checkpoint_to_fine_tune_is_named_not_the_fallback_tokenizer(files, tmp_path, capsys):
    overrides = {
        "model.init": "pretrained", "model.init_from": tmp_path / "no" / "such" / "ckpt", "tokenizer.train_from_captions": "false",
        **{f"model.{k}": "null" for k in ("d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim",
                                            "max_position_embeddings", "dropout", "attention_dropout", "activation_dropout")},
    }
    assert main(tiny_overrides(files, tmp_path / "run", **overrides)) == 2
    err = capsys.readouterr().err
    assert f"model.init_from: '{tmp_path / 'no' / 'such' / 'ckpt'}' does not exist on this machine" in err
    assert "bart-base" not in err


def test_random_init_takes_the_codec_geometry_from_the_store(tmp_path):
    files = make_feature_set(tmp_path / "data", num_train=4, num_val=1, num_codebooks=8, d_clap=24)
    result = run(files, tmp_path / "run", **{"train.max_train_steps": 1})
    config = load_file(result.final_dir / "model.safetensors")
    assert len([k for k in config if k.startswith("mcm_heads.") and k.endswith(".weight")]) == 8
    assert config["model.encoder.clap_projection.weight"].shape == (32, 24)


# --------------------------------------------------------------------------------------------- bad inputs


def test_configuration_errors_exit_2_naming_the_key(files, tmp_path, capsys):
    assert main(tiny_overrides(files, tmp_path / "run", **{"model.widht": 3})) == 2
    assert "model.widht" in capsys.readouterr().err
    assert main(tiny_overrides(files, tmp_path / "run", **{"model.d_model": "null"})) == 2
    assert "model.init=random needs an explicit shape: set model.d_model" in capsys.readouterr().err
    assert main(tiny_overrides(files, tmp_path / "run", **{"model.init": "pretrained"})) == 2
    err = capsys.readouterr().err
    assert "needs exactly one of model.model_name_or_path" in err and "only apply to model.init=random" in err
    assert main(tiny_overrides(files, tmp_path / "run", **{"train.best_metric": "spider"})) == 2
    assert "train.best_metric='spider' is neither" in capsys.readouterr().err
    assert main(tiny_overrides(files, tmp_path / "run", **{"train.best_metric": "val_mcm_loss"})) == 2
    assert "train.best_metric=val_mcm_loss: validation codes are not masked" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_data_problems_are_found_before_training(files, tmp_path):
    gone = write_train_csv(tmp_path / "gone.csv", [("train/clip_000.npy", "a dog"), ("train/nope.npy", "a bell")])
    with pytest.raises(ManifestError, match=r"(?s)1 of 2 clip\(s\) have no features .*'train/nope'") as info:
        run(files, tmp_path / "run", **{"data.train_file": gone})
    assert str(gone) in str(info.value) and str(files["store"]) in str(info.value)
    empty = tmp_path / "empty.csv"
    empty.write_text("file_path,caption\ntrain/clip_000.npy,a dog\ntrain/clip_001.npy,\n")
    with pytest.raises(ManifestError, match=r"line 3: empty caption"):
        run(files, tmp_path / "run", **{"data.train_file": empty})
    with pytest.raises(ManifestError, match=r"no features for 'valid/x'"):
        bad_val = tmp_path / "valid.csv"
        bad_val.write_text("file_path,caption_1\nvalid/x.npy,a dog\n")
        run(files, tmp_path / "run", **{"data.validation_file": bad_val})
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_checkpoint_of_another_model_shape_is_refused(files, reference, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(reference[0], output)
    before = (output / "training_config.yaml").read_text()
    with pytest.raises(CheckpointError, match=r"task.model.d_model: checkpoint 32, now 64") as info:
        run(files, output, **{"model.d_model": 64, "model.dropout": 0.1, "model.attention_dropout": 0.1})
    assert "task.model.encoder_ffn_dim" not in str(info.value)
    assert (output / "training_config.yaml").read_text() == before  # a refused run changes nothing
    (output / "checkpoints" / "step_16" / "optimizer.bin").write_bytes(b"not a checkpoint")
    assert main(tiny_overrides(files, output, **{"model.dropout": 0.1, "model.attention_dropout": 0.1, "train.num_train_epochs": 3})) == 2


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("seed", -1, "seed must be in [0, 2**32 - 1]"),
        ("model.d_model", 0, "model.d_model must be >= 1"),
        ("model.encoder_layers", -1, "model.encoder_layers must be >= 1"),
        ("model.max_position_embeddings", 3, "model.max_position_embeddings must be >= 4"),
        ("model.dropout", 1.5, "model.dropout must be in [0, 1)"),
        ("model.init_std", -1, "model.init_std must be >= 0"),
    ],
)
def test_out_of_range_model_settings_exit_2_naming_the_key(files, tmp_path, capsys, key, value, message):
    assert main(tiny_overrides(files, tmp_path / "run", **{key: value})) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_captions_longer_than_the_decoder_positions_are_refused_before_training(files, tmp_path, capsys):
    # max_position_embeddings=48: a 49-token caption would index past the decoder's position table mid-run.
    assert main(tiny_overrides(files, tmp_path / "run", **{"data.max_target_length": 49})) == 2
    assert "data.max_target_length=49 exceeds the model's max_position_embeddings=48" in capsys.readouterr().err
    assert main(tiny_overrides(files, tmp_path / "run", **{"validation.val_max_target_length": 50})) == 2
    assert "validation.val_max_target_length=50" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_config_built_in_code_is_checked_with_a_config_error(tmp_path):
    from enclap.jobs.train_captioner import TrainCaptionerConfig

    with pytest.raises(ConfigError, match=r"output_dir is required.*data.train_file is required"):
        train_captioner(TrainCaptionerConfig())


def test_a_fresh_run_trains_its_own_tokenizer_and_a_resume_refuses_another_vocab_size(files, tmp_path):
    from enclap.text import load_tokenizer, train_caption_tokenizer

    output = tmp_path / "run"
    run(files, output, **{"train.max_train_steps": 1})
    # The run is started over in the same directory (its checkpoints deleted, or it was killed before its
    # first one) on other captions: the tokenizer must be trained on these, not reused from the first run.
    shutil.rmtree(output / "checkpoints")
    rows = [(f"train/clip_{i:03d}.npy", f"a xylophone plays quietly {i % 3} times") for i in range(16)]
    other = write_train_csv(tmp_path / "other.csv", rows)
    result = run(files, output, **{"train.max_train_steps": 1, "data.train_file": other})
    expected = train_caption_tokenizer([caption for _, caption in rows], vocab_size=300).get_vocab()
    assert load_tokenizer(output / "tokenizer").get_vocab() == expected
    assert load_tokenizer(result.final_dir).get_vocab() == expected
    # Resuming keeps the saved tokenizer; asking for another vocabulary size then is refused, not ignored.
    with pytest.raises(CheckpointError, match=r"vocab_size: checkpoint 300, now 400"):
        run(files, output, **{"train.max_train_steps": 2, "data.train_file": other, "tokenizer.vocab_size": 400})
    assert load_tokenizer(output / "tokenizer").get_vocab() == expected  # a refused resume changes nothing


# --------------------------------------------------------------------------------------------- configs, entry points


@pytest.mark.parametrize("name", CFG_FILES)
def test_the_reference_recipes_load(name):
    config = load_train_config(REPO_ROOT / "cfg" / f"{name}.yaml")
    large = name.endswith("large")
    assert config.seed == 1115 and config.train.lr_scheduler_type == "inverse_sqrt" and config.train.num_train_epochs == 15
    assert config.data.encodec_masking_prob == 0.15 and config.data.encodec_masking_span == 10
    assert config.data.max_target_length == 128 and config.validation.val_max_target_length == 50
    assert config.train.weight_decay == 0.01 and config.train.max_grad_norm == 1.0
    # Global batches, as the reference's recipes (it used split_batches): no per-device size, nothing forced.
    expected_batch = 16 if name == "audiocaps/base" else 64
    assert config.train.train_batch_size == expected_batch and config.train.per_device_train_batch_size is None
    assert config.train.gradient_accumulation_steps is None and config.train.mixed_precision == "auto"
    assert config.validation.metrics == ["auto"] and config.train.best_metric == "auto" and config.validation.max_clips == 0
    expected_lr = {"clotho/base": 4e-5, "clotho/large": 2.5e-5, "audiocaps/base": 6.5e-5, "audiocaps/large": 3e-5,
                   "clotho_finetune/base": 2e-5, "clotho_finetune/large": 1.25e-5}[name]
    assert config.train.learning_rate == pytest.approx(expected_lr)
    if name.startswith("clotho_finetune"):
        assert config.model.init_from and not config.model.model_name_or_path
        assert config.train.num_warmup_steps == 0 and config.train.time_scale == 1000
    else:
        assert config.model.model_name_or_path == ("facebook/bart-large" if large else "facebook/bart-base")
        assert config.train.num_warmup_steps == (2000 if name.startswith("audiocaps") else 1000)


def test_help_and_print_config(capsys):
    assert main(["--help"]) == 0
    assert "Rerun the same command to resume" in " ".join(capsys.readouterr().out.split())
    assert main([str(REPO_ROOT / "cfg" / "clotho" / "base.yaml"), "train.learning_rate=1e-4", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate: 0.0001" in out and "model_name_or_path: facebook/bart-base" in out
    result = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "accelerate launch" in result.stdout


@pytest.mark.slow
def test_train_sh_takes_overrides_with_or_without_a_config_file():
    env = dict(os.environ, CPU="1", NUM_PROCESSES="1", PORT=str(free_port()), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for args, config in (([], "cfg/clotho/base.yaml"), (["cfg/audiocaps/base.yaml"], "cfg/audiocaps/base.yaml")):
        result = subprocess.run(["bash", str(REPO_ROOT / "train.sh"), *args, "train.learning_rate=1e-4", "--print-config"],
                                capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        expected = load_train_config(REPO_ROOT / config, ["train.learning_rate=1e-4"])
        assert f"output_dir: {expected.output_dir}" in result.stdout and "learning_rate: 0.0001" in result.stdout


# --------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_weights_of_one_with_the_same_global_batch(files, tmp_path):
    # A warm-up then linear decay: a schedule stepped once per process (Accelerate's default) would differ.
    common = {"train.num_train_epochs": 1, "train.checkpointing_steps": 3, "train.lr_scheduler_type": "linear", "train.num_warmup_steps": 3}
    single = run(files, tmp_path / "one", **common)
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(REPO_ROOT / "train.py"), *tiny_overrides(files, tmp_path / "two", **common)],  # the same global batch of 4: 2 per process
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("train: finished") == 1  # only the main process reports
    assert (tmp_path / "two" / "checkpoints" / "step_8" / "random_states_1.pkl").is_file()  # both processes saved
    one, two = load_file(single.final_dir / "model.safetensors"), load_file(tmp_path / "two" / "final" / "model.safetensors")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=key)
    ones, twos = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert ones.keys() == twos.keys() == set(range(1, 9))
    rates = {e["step"]: e["lr"] for e in read_train_log(tmp_path / "two") if e["type"] == "train"}
    assert [rates[s] for s in (1, 3, 8)] == pytest.approx([1e-3, 3e-3, 0.0])  # after step s: warm-up 3, then to 0 at 8
    for step in ones:
        np.testing.assert_allclose(twos[step], ones[step], rtol=1e-5)
    val_one = [e["val_loss"] for e in read_train_log(tmp_path / "one") if e["type"] == "validation"]
    val_two = [e["val_loss"] for e in read_train_log(tmp_path / "two") if e["type"] == "validation"]
    np.testing.assert_allclose(val_two, val_one, rtol=1e-5)  # gathered over processes, no example counted twice


@pytest.mark.slow
def test_the_command_line_run_killed_with_sigterm_resumes_and_evaluates(files, tmp_path):
    output = tmp_path / "run"
    args = [sys.executable, str(REPO_ROOT / "train.py"), *tiny_overrides(files, output, **{"train.num_train_epochs": 40})]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 300
        while not list_checkpoints(output):
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err[-3000:]
    assert "Rerun the same command to resume" in err
    stopped = list_checkpoints(output)[-1][0]
    assert 8 <= stopped < 320
    resumed = subprocess.run(args[:2] + tiny_overrides(files, output, **{"train.num_train_epochs": 40, "train.max_train_steps": stopped + 3}),
                             capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {output / 'checkpoints' / f'step_{stopped}'}" in resumed.stderr
    evaluation = subprocess.run(
        [sys.executable, str(REPO_ROOT / "evaluate.py"), "--ckpt", str(output / "final"), "--features", str(files["store"]),
         "--test_csv", str(files["val_csv"]), "--metrics", "bleu_1", "--device", "cpu"],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "| BLEU-1 |" in evaluation.stdout and "4 candidate(s)" in evaluation.stdout
    assert (output / "final" / "eval" / "valid.predictions.csv").is_file()


@pytest.mark.slow
def test_caption_metric_validation_picks_the_best_model(files, tmp_path):
    result = run(files, tmp_path / "run", **{
        "validation.metrics": "[cider_d]", "train.best_metric": "cider_d", "validation.num_beams": 1, "validation.max_clips": 3,
    })
    validations = [e for e in read_train_log(tmp_path / "run") if e["type"] == "validation"]
    assert [e["step"] for e in validations] == [8, 16] and all("cider_d" in e and "val_loss" in e for e in validations)
    best = max(validations, key=lambda e: e["cider_d"])
    assert result.best["metric"] == "cider_d" and result.best["value"] == best["cider_d"]


@pytest.fixture(scope="module")
def uneven_files(tmp_path_factory):
    """5 validation clips: 3 + 2 over two processes (the padded shard repeats one on the second)."""
    return make_feature_set(tmp_path_factory.mktemp("uneven"), num_val=5)


@pytest.mark.slow
def test_two_processes_gather_the_validation_of_one_resume_onto_one_and_score_as_evaluate(uneven_files, tmp_path):
    import json

    files = uneven_files
    common = {"train.num_train_epochs": 1, "train.checkpointing_steps": 4, "train.eval_steps": 4, "validation.metrics": "[cider_d]",
              "train.best_metric": "cider_d", "validation.num_beams": 1, "validation.batch_size": 2}
    one = run(files, tmp_path / "one", **common)
    assert one.global_step == 8 and one.geometry.per_device == 4
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    two_dir = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(REPO_ROOT / "train.py"), *tiny_overrides(files, two_dir, **{**common, "train.max_train_steps": 4})],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "global batch 4 = 2 process(es) x 2 per device x 1 accumulation step(s)" in result.stderr + result.stdout
    # Validation at step 4 on 2 processes (each clip captioned once, on one of them) = on 1 process.
    val_one = {e["step"]: e for e in read_train_log(tmp_path / "one") if e["type"] == "validation"}
    val_two = {e["step"]: e for e in read_train_log(two_dir) if e["type"] == "validation"}
    assert val_two[4]["cider_d"] == pytest.approx(val_one[4]["cider_d"], abs=1e-6)
    assert val_two[4]["val_loss"] == pytest.approx(val_one[4]["val_loss"], rel=1e-5)
    # The same global batch resumed from 2 processes onto 1 ends with the weights of the 1-process run.
    resumed = run(files, two_dir, **common)
    assert resumed.resumed_from.name == "step_4" and resumed.global_step == 8
    ones, twos = train_losses(tmp_path / "one"), train_losses(two_dir)
    assert ones.keys() == twos.keys() == set(range(1, 9))
    for step in ones:  # steps 1-4 on 2 processes, 5-8 resumed on 1
        np.testing.assert_allclose(twos[step], ones[step], rtol=1e-6)
    a, b = load_file(one.final_dir / "model.safetensors"), load_file(two_dir / "final" / "model.safetensors")
    for key in a:
        # (Adam turns the float-rounding noise of near-zero gradients of unseen embedding rows into
        # lr-scaled differences; at lr 3e-3 they reach ~4e-5 after 8 steps)
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-4, msg=key)
    # The score that picked best/ is the one evaluate.py gives that checkpoint.
    best = one.best
    scores = tmp_path / "scores.json"
    evaluation = subprocess.run(
        [sys.executable, str(REPO_ROOT / "evaluate.py"), "--ckpt", str(one.best_dir), "--features", str(files["store"]),
         "--test_csv", str(files["val_csv"]), "--metrics", "cider_d", "--device", "cpu", "--scores_path", str(scores)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert json.loads(scores.read_text())["scores"]["cider_d"] == pytest.approx(best["value"], abs=1e-9)


def test_the_training_command_sets_the_allocator_policy_for_its_own_process(files, tmp_path, monkeypatch):
    import enclap.allocator
    import enclap.jobs.train_captioner as job

    calls = []
    monkeypatch.setattr(enclap.allocator, "retain_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(job, "train_captioner", lambda config: (_ for _ in ()).throw(ConfigError("stop here")))
    assert main(tiny_overrides(files, tmp_path / "run")) == 2
    assert calls == [1]
