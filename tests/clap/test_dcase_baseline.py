"""The DCASE 2023 retrieval baseline as a config: frozen Sentence-BERT caption vectors computed once and cached,
InfoNCE at a fixed temperature, the plateau schedule; its validation figure against a hand computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from enclap.clap.embedder import ClapTowerEmbedder
from enclap.clap.loss import ClipLoss
from enclap.clap.modeling import ClapTowerModel
from enclap.clap.random_sentence_bert import save_random_sentence_bert
from enclap.clap.sentence_text import cached_sentence_embeddings, load_sentence_transformer
from enclap.data.manifest import read_manifest
from enclap.data.synthetic import SyntheticConfig, generate_dataset
from enclap.errors import ConfigError, PretrainedNotFoundError
from enclap.jobs.train_clap import load_clap_train_config, train_clap
from enclap.training.clap import ClapAudioDataset, ClapAudioSource
from enclap.training.tracking import read_train_log

from ..conftest import torch_threads

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "cfg" / "clap" / "dcase2023_baseline.yaml"
TINY = REPO / "cfg" / "clap" / "dcase2023_tiny.yaml"


class EncodeCounter:
    """Counts SentenceTransformer.encode calls and the texts they embed (monkeypatched on the class)."""

    def __init__(self, monkeypatch) -> None:
        from sentence_transformers import SentenceTransformer

        self.calls: list[int] = []
        original = SentenceTransformer.encode

        def encode(model, inputs, *args, **kwargs):
            self.calls.append(len(inputs) if isinstance(inputs, list) else 1)
            return original(model, inputs, *args, **kwargs)

        monkeypatch.setattr(SentenceTransformer, "encode", encode)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcase")
    data = generate_dataset(root / "data", SyntheticConfig(num_train=24, num_valid=8, num_test=8, seconds=3.0,
                                                           sample_rate=16000, captions_per_clip=3))
    captions = [c for split in ("train", "valid", "test") for clip in read_manifest(data[split]) for c in clip.captions]
    with torch_threads(1):
        sbert = save_random_sentence_bert(root / "sbert", captions, seed=3, hidden_size=16)
    return {"root": root, "data": data, "sbert": sbert}


def overrides(setup, output: str, **extra) -> list[str]:
    data = setup["data"]
    values = {
        "output_dir": setup["root"] / output, "data.train_file": data["train"], "data.validation_file": data["valid"],
        "data.audio_root": data["audio_root"], "model.text_weights": setup["sbert"],
        "model.text_cache_dir": setup["root"] / "cache", "model.clip_seconds": 3.0,
        "train.train_batch_size": 8, "train.num_train_epochs": 1, "train.dataloader_num_workers": 0,
        "train.progress": "false", "validation_batch_size": 8,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def test_the_configs_hold_the_baselines_settings(setup):
    config = load_clap_train_config(BASELINE, ["model.audio_weights=Cnn14_mAP=0.431.pth", "data.train_file=x.csv",
                                               "data.audio_root=audio"])
    config.validate()
    m, t = config.model, config.train
    assert (m.text_encoder, m.text_weights, m.audio_encoder, m.projection, m.projection_dim) == (
        "sentence_transformers", "sentence-transformers/all-mpnet-base-v2", "cnn14", "linear", 300)
    assert (config.loss.temperature, config.loss.similarity) == (0.07, "cosine")
    assert (t.learning_rate, t.train_batch_size, t.num_train_epochs, t.weight_decay) == (1e-3, 32, 80, 0.0)
    assert (t.lr_scheduler_type, t.plateau_factor, t.plateau_patience, t.plateau_threshold, t.plateau_threshold_mode,
            t.min_lr) == ("reduce_on_plateau", 0.1, 5, 0.005, "abs", 1e-6)
    assert t.best_metric == "val_mAP@10" and t.early_stopping_patience > 0
    tiny = load_clap_train_config(TINY, [f"model.text_weights={setup['sbert']}"])
    tiny.validate()
    assert tiny.model.init == "random" and tiny.train.lr_scheduler_type == "reduce_on_plateau"


def test_bad_sentence_bert_settings_are_refused_clearly(setup, tmp_path):
    with pytest.raises(ConfigError, match="needs model.text_weights"):
        train_clap(load_clap_train_config(TINY, overrides(setup, "bad", **{"model.text_weights": "''"})))
    with pytest.raises(ConfigError, match="takes no model.text_config and no tokenizer"):
        train_clap(load_clap_train_config(TINY, overrides(setup, "bad", **{"tokenizer.train_from_captions": "true"})))
    with pytest.raises(ConfigError, match="loss.temperature"):
        train_clap(load_clap_train_config(TINY, overrides(setup, "bad", **{"loss.temperature": 0.001})))
    missing = tmp_path / "no-such-sbert"
    with pytest.raises(PretrainedNotFoundError, match=str(missing)):
        train_clap(load_clap_train_config(TINY, overrides(setup, "bad", **{"model.text_weights": missing})))


def test_the_cache_is_written_once_and_reused_and_holds_the_models_vectors(setup, tmp_path, monkeypatch):
    with torch_threads(1):
        model = load_sentence_transformer(str(setup["sbert"]))
        texts = ["a dog barks", "rain on a roof", "a dog barks"]
        counter = EncodeCounter(monkeypatch)
        table = cached_sentence_embeddings(model, texts, tmp_path / "cache")
        assert counter.calls == [2] and table.texts == ["a dog barks", "rain on a roof"]
        np.testing.assert_allclose(table.rows(texts), model.encode(texts, convert_to_numpy=True), rtol=0, atol=1e-6)
        again = cached_sentence_embeddings(model, list(reversed(texts)), tmp_path / "cache")
        assert counter.calls == [2, 3]  # (the direct encode above) and nothing for the cached set
        np.testing.assert_array_equal(again.vectors, table.vectors)
        assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
        # another model (one weight changed) gets its own entry
        with torch.no_grad():
            next(model.parameters()).add_(0.1)
        other = cached_sentence_embeddings(model, texts, tmp_path / "cache")
        assert counter.calls == [2, 3, 2] and other.identity != table.identity
        # a damaged entry is recomputed, not trusted
        table.path.write_bytes(b"garbage")
        cached_sentence_embeddings(load_sentence_transformer(str(setup["sbert"])), texts, tmp_path / "cache")
        assert counter.calls == [2, 3, 2, 2]


def test_clip_loss_similarities_against_a_hand_computation():
    gen = torch.Generator().manual_seed(0)
    audio, text = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    scale = torch.tensor(1 / 0.07)

    def infonce(a, t):
        logits = scale * a @ t.T
        labels = torch.arange(5)
        return float((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2)

    assert float(ClipLoss(similarity="dot")(audio, text, scale)) == pytest.approx(infonce(audio, text), rel=1e-6)
    normalised = infonce(F.normalize(audio, dim=-1), F.normalize(text, dim=-1))
    assert float(ClipLoss(similarity="cosine")(audio, text, scale)) == pytest.approx(normalised, rel=1e-6)
    assert infonce(audio, text) != pytest.approx(normalised, rel=1e-3)
    with pytest.raises(ValueError, match="similarity"):
        ClipLoss(similarity="euclid")


def hand_retrieval(tower: ClapTowerModel, source: ClapAudioSource, sbert, seed: int) -> dict[str, float]:
    """t2a/a2t R@k and mAP@10 from the tower's weights and Sentence-BERT vectors computed directly."""
    dataset = ClapAudioDataset(source, tower.config, seed=seed)
    with torch.no_grad():
        # one forward over the 8 clips, as the validation's batch of 8 (see the scores below)
        audio = tower.get_audio_features(torch.stack([torch.from_numpy(dataset[i]["input_features"]) for i in range(len(dataset))]))
        captions = [c for caps in source.captions for c in caps]
        vectors = torch.from_numpy(np.asarray(sbert.encode(captions, convert_to_numpy=True)))
        text = F.normalize(vectors @ tower.text_projection.linear1.weight.T + tower.text_projection.linear1.bias, dim=-1)
    # (clips, captions) cosines; float32 products as the validation takes them: a few-step random tower's clips
    # lie close together, and another summation order would move scores by ~1e-7 against gaps of ~1e-6
    scores = (audio.numpy() @ text.numpy().T).astype(np.float64)
    owner = [i for i, caps in enumerate(source.captions) for _ in caps]
    t2a = []
    for j, clip in enumerate(owner):  # rank of the caption's clip among all clips, ties against it
        t2a.append(1 + sum(scores[k, j] >= scores[clip, j] for k in range(len(source)) if k != clip))
    a2t = []
    for i in range(len(source)):
        mine = [j for j, c in enumerate(owner) if c == i]
        best = max(scores[i, j] for j in mine)
        a2t.append(1 + sum(scores[i, j] >= best for j in range(len(owner)) if owner[j] != i))
    figures = {}
    for name, ranks in (("t2a", t2a), ("a2t", a2t)):
        for k in (1, 5, 10):
            figures[f"{name}_R@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        figures[f"{name}_mAP@10"] = sum(1.0 / r for r in ranks if r <= 10) / len(ranks)
    return figures, text.numpy()


@pytest.mark.slow
def test_the_dcase_config_trains_on_cached_vectors_and_its_metric_equals_a_hand_computation(setup, monkeypatch):
    counter = EncodeCounter(monkeypatch)
    with torch_threads(1):
        config = load_clap_train_config(TINY, overrides(setup, "run"))
        result = train_clap(config)
        assert result.status == "completed" and result.global_step == 3 and result.best_dir is not None
        # one Sentence-BERT pass over the distinct train + validation captions, none per step or per validation
        distinct = {c for split in ("train", "valid") for clip in read_manifest(setup["data"][split]) for c in clip.captions}
        assert counter.calls == [len(distinct)]
        assert len(list((setup["root"] / "cache").glob("*.npy"))) == 1

        # the exported tower: projections and CNN14 only, the logit scale fixed at 1/0.07
        tower = ClapTowerModel.from_pretrained(result.best_dir).eval()
        assert tower.text_model is None and not any(k.startswith("text_model") for k in tower.state_dict())
        assert float(tower.scale().detach()) == pytest.approx(1 / 0.07, rel=1e-6)
        sbert = load_sentence_transformer(str(setup["sbert"]))
        counted = len(counter.calls)
        source = ClapAudioSource(setup["data"]["valid"], setup["data"]["audio_root"])
        figures, hand_text = hand_retrieval(tower, source, sbert, config.seed)
        logged = [e for e in read_train_log(result.output_dir) if e["type"] == "validation" and e["step"] == result.best["step"]][0]
        for name, value in figures.items():
            assert logged[f"val_{name}"] == pytest.approx(value, abs=1e-9), name
        assert result.best["value"] == pytest.approx(figures["t2a_mAP@10"], abs=1e-9)

        # at evaluation time the exported tower embeds queries with the same Sentence-BERT (no table: computed)
        embedder = ClapTowerEmbedder.from_pretrained(str(result.best_dir))
        captions = [c for caps in source.captions for c in caps]
        np.testing.assert_allclose(embedder.embed_texts(captions), hand_text, rtol=0, atol=1e-5)
        assert len(counter.calls) > counted + 1

        # a second run elsewhere and a resumed run (one more epoch) read the cache: no Sentence-BERT pass
        counter.calls.clear()
        train_clap(load_clap_train_config(TINY, overrides(setup, "other")))
        resumed = train_clap(load_clap_train_config(TINY, overrides(setup, "run", **{"train.num_train_epochs": 2})))
        assert counter.calls == [] and resumed.resumed_from is not None and resumed.global_step == 6
        state = json.loads((result.output_dir / "checkpoints" / "step_6" / "loop_state.json").read_text())
        assert state["fingerprint"]["task"]["sentence_encoder"] == tower_identity(setup["sbert"])


def tower_identity(path) -> str:
    from enclap.clap.sentence_text import sentence_encoder_identity

    return sentence_encoder_identity(load_sentence_transformer(str(path)))


class FakeAccelerator:
    """What cached_sentence_embeddings asks of an Accelerator: the process's role and a barrier (counted)."""

    def __init__(self, is_main_process: bool) -> None:
        self.is_main_process, self.num_processes, self.barriers = is_main_process, 2, 0

    def wait_for_everyone(self) -> None:
        self.barriers += 1


def test_only_the_main_process_computes_the_others_wait_and_read(setup, tmp_path, monkeypatch):
    with torch_threads(1):
        model = load_sentence_transformer(str(setup["sbert"]))
        counter = EncodeCounter(monkeypatch)
        texts = ["a bell rings", "a faint hiss"]
        other = FakeAccelerator(is_main_process=False)
        with pytest.raises(ConfigError, match=r"cannot be read here .*shared"):  # the main process wrote nothing
            cached_sentence_embeddings(model, texts, tmp_path / "cache", accelerator=other)
        assert counter.calls == [] and other.barriers == 1
        main = FakeAccelerator(is_main_process=True)
        written = cached_sentence_embeddings(model, texts, tmp_path / "cache", accelerator=main)
        read = cached_sentence_embeddings(model, texts, tmp_path / "cache", accelerator=FakeAccelerator(is_main_process=False))
        assert counter.calls == [2] and main.barriers == 1  # computed once, by the main process
        np.testing.assert_array_equal(read.vectors, written.vectors)
