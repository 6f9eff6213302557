"""Every cfg/clap/*.yaml resolves to a valid run; the random ones build their tower; bad settings are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from enclap.clap.configuration import ClapTowerConfig
from enclap.errors import ConfigError
from enclap.jobs.train_clap import load_clap_train_config, tower_config_from

CFG = Path(__file__).resolve().parents[2] / "cfg" / "clap"
PATHS = ["output_dir=x", "data.train_file=t.csv", "data.audio_root=a"]


# what a config leaves to the command line
REQUIRED = {"cnn14_mpnet.yaml": ["model.audio_weights=w.pth"], "dcase2023_baseline.yaml": ["model.audio_weights=w.pth"],
            "dcase2023_tiny.yaml": ["model.text_weights=sbert-dir"]}


# cfg/clap files that are not enclap-train-clap configs (enclap-unsupervised, enclap-train-classifier: tested with them)
NOT_TRAINING = {"unsupervised_demo.yaml", "classifier_esc50.yaml", "classifier_tiny.yaml"}


@pytest.mark.parametrize("name", sorted(p.name for p in CFG.glob("*.yaml") if p.name not in NOT_TRAINING))
def test_configs_resolve(name):
    paths = ["output_dir=x"] if name == "tiny_shards.yaml" else PATHS  # (its shards replace data.train_file)
    config = load_clap_train_config(CFG / name, paths + REQUIRED.get(name, []))
    if config.model.text_encoder == "sentence_transformers":  # the Sentence-BERT's size is known once it is loaded
        tower = tower_config_from(config.model, sentence_transformer=config.model.text_weights, text_embedding_dim=768)
    else:
        tower = tower_config_from(config.model, config.model.text_config or {"model_type": "roberta"})
    assert isinstance(tower, ClapTowerConfig)
    if config.model.init == "random":
        from enclap.clap.modeling import ClapTowerModel

        with torch.device("meta"):  # shapes only
            model = ClapTowerModel(tower)
        assert model.config.projection_dim == config.model.projection_dim


def test_published_shapes():
    laion = load_clap_train_config(CFG / "htsat_roberta.yaml", PATHS).model
    assert (laion.audio_encoder, laion.text_weights, laion.text_pooling, laion.projection) == ("htsat", "roberta-base", "pooler", "mlp")
    assert laion.audio_config["enable_fusion"] and laion.audio_config["depths"] == [2, 2, 6, 2]
    gpt2 = load_clap_train_config(CFG / "htsat_gpt2.yaml", PATHS).model
    assert (gpt2.text_weights, gpt2.text_pooling) == ("gpt2", "last")
    dcase = load_clap_train_config(CFG / "cnn14_mpnet.yaml", PATHS + ["model.audio_weights=w.pth"]).model
    assert (dcase.audio_encoder, dcase.text_pooling, dcase.audio_config["base_channels"]) == ("cnn14", "mean", 64)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.init=pretrained"], "model.init=pretrained needs"),
        (["model.init=random", "model.text_weights=roberta-base"], "takes no model.init_from"),
        (["train.train_batch_size=1"], "negatives"),
        (["train.per_device_train_batch_size=1"], "negatives"),
        (["tokenizer.train_from_captions=false"], "a tokenizer is needed"),
        (["data.train_file="], "data.train_file"),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_clap_train_config(CFG / "tiny.yaml", PATHS + overrides)


def test_missing_audio_is_named(tmp_path):
    from enclap.errors import AudioNotFoundError
    from enclap.training.clap import ClapAudioSource

    manifest = tmp_path / "train.csv"
    manifest.write_text("file_path,caption\ntrain/clip_0001.npy,a beep\n")
    with pytest.raises(AudioNotFoundError, match="clip_0001"):
        ClapAudioSource(manifest, tmp_path / "audio")
