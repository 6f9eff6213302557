"""A tiny tower trained on generated captioned audio beats chance, and plugs into the captioner unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from enclap.clap.embedder import ClapTowerEmbedder
from enclap.clap.evaluation import evaluate_retrieval, evaluate_zero_shot
from enclap.data.synthetic import SyntheticConfig, generate_dataset
from enclap.errors import ConfigError
from enclap.jobs.train_clap import load_clap_train_config, main, train_clap

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "cfg" / "clap" / "tiny.yaml"
TEMPLATES = ("a {label}", "a {label} sounds", "{label} is heard")


def chance_map10(candidates: int) -> float:
    """mAP@10 of a uniformly random ranking of ``candidates`` items with one correct: (1/C) sum_{r<=10} 1/r."""
    return sum(1.0 / r for r in range(1, min(10, candidates) + 1)) / candidates


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("clap")
    data = generate_dataset(root / "data", SyntheticConfig(num_train=128, num_valid=24, num_test=48, seconds=3.0,
                                                           sample_rate=16000, structure_weights=[0.6, 0.4, 0.0, 0.0]))
    overrides = [
        f"output_dir={root / 'run'}", f"data.train_file={data['train']}", f"data.validation_file={data['valid']}",
        f"data.audio_root={data['audio_root']}", "model.clip_seconds=3.0", "train.num_train_epochs=12",
        "train.dataloader_num_workers=0", "train.progress=false", "train.num_warmup_steps=4",
    ]
    config = load_clap_train_config(TINY, overrides)
    torch.set_num_threads(1)
    result = train_clap(config)
    labels = root / "labels.csv"  # the event kind of the test split's single-source clips
    rows = [json.loads(line) for line in (root / "data" / "meta" / "test.jsonl").read_text().splitlines()]
    single = [(r["file_path"].replace(".npy", ".wav"), r["events"][0]["kind"]) for r in rows if r["structure"] == "single"]
    labels.write_text("file,label\n" + "".join(f"{f},{k}\n" for f, k in single))
    return {"root": root, "data": data, "result": result, "labels": labels, "config": config}


@pytest.mark.slow
def test_trained_tower_beats_chance_on_retrieval_and_zero_shot(trained):
    result = trained["result"]
    assert result.status == "completed" and result.best_dir is not None
    log = [json.loads(line) for line in (result.output_dir / "train_log.jsonl").read_text().splitlines()]
    assert any("val_mAP@10" in entry.get("values", entry) for entry in log if "val_mAP@10" in json.dumps(entry))
    embedder = ClapTowerEmbedder.from_pretrained(result.best_dir)
    report = evaluate_retrieval(embedder, trained["data"]["test"], trained["data"]["audio_root"])
    clips = report["clips"]
    metrics = report["metrics"]
    assert metrics["t2a_mAP@10"] > 2.5 * chance_map10(clips), metrics
    assert metrics["a2t_R@5"] > 2.0 * 5 / clips, metrics
    zero_shot = evaluate_zero_shot(embedder, trained["labels"], trained["data"]["audio_root"], TEMPLATES)
    assert zero_shot["metrics"]["top1"] > 2.0 * zero_shot["chance"]["top1"], zero_shot


@pytest.mark.slow
def test_trained_tower_plugs_into_feature_extraction_and_the_pipeline(trained, tmp_path):
    from enclap.audio import load_audio
    from enclap.features.clap_embed import ClapAudioEmbedder
    from enclap.features.extractor import FeatureExtractor
    from enclap.model import EnClapBartForConditionalGeneration
    from enclap.pipeline import CaptioningPipeline, PipelineSettings
    from enclap.text import train_caption_tokenizer

    from ..features.factories import save_tiny_encodec
    from ..pipeline_factory import CAPTIONS, tiny_enclap_config

    tower_dir = trained["result"].final_dir
    embedder = ClapAudioEmbedder.from_pretrained(str(tower_dir))
    assert isinstance(embedder, ClapTowerEmbedder) and embedder.sample_rate == 16000
    wavs = sorted((trained["data"]["audio_root"] / "test").glob("*.wav"))[:5]
    waves = [load_audio(w, embedder.sample_rate)[0] for w in wavs]
    together = embedder.embed(waves)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    # batch independence: a clip's embedding does not depend on the others in its call
    np.testing.assert_array_equal(embedder.embed(waves[2:3])[0], together[2])

    encodec = save_tiny_encodec(tmp_path / "encodec")
    features = FeatureExtractor.from_pretrained(str(encodec), str(tower_dir))
    assert features.d_clap == trained["config"].model.projection_dim
    clip = features.extract_files(wavs[:1])[0]
    np.testing.assert_allclose(clip.clap, together[0], rtol=1e-6, atol=1e-7)

    tokenizer = train_caption_tokenizer(CAPTIONS, vocab_size=300)
    torch.manual_seed(0)
    captioner = EnClapBartForConditionalGeneration(tiny_enclap_config(len(tokenizer), d_clap=features.d_clap))
    checkpoint = tmp_path / "captioner"
    CaptioningPipeline(captioner, tokenizer, None, settings=PipelineSettings(encodec=str(encodec), clap="unused"),
                       device="cpu").save_pretrained(checkpoint)
    pipeline = CaptioningPipeline.from_pretrained(checkpoint, clap=str(tower_dir), device="cpu")
    results = pipeline.caption_files(wavs[:2])
    assert [r.error for r in results] == [None, None] and all(r.caption for r in results)
    # the pipeline's CLAP embeddings are the tower's
    np.testing.assert_allclose(pipeline.features.clap.embed(waves[:1])[0], together[0], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_command_line_resumes_a_finished_run_and_refuses_bad_configs(trained, capsys):
    result = trained["result"]
    cfg = trained["config"]
    args = ["--config", str(TINY), f"output_dir={result.output_dir}", f"data.train_file={cfg.data.train_file}",
            f"data.validation_file={cfg.data.validation_file}", f"data.audio_root={cfg.data.audio_root}",
            "model.clip_seconds=3.0", "train.num_train_epochs=12", "train.dataloader_num_workers=0", "train.progress=false",
            "train.num_warmup_steps=4"]
    assert main(args) == 0  # everything done: resumes at the last step and finishes at once
    assert "finished" in capsys.readouterr().out
    assert main(["--config", str(TINY), "output_dir=x", "model.init=banana"]) == 2
    assert "model.init" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="data.audio_root"):
        load_clap_train_config(TINY, ["data.audio_root="])


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    data = generate_dataset(tmp_path / "data", SyntheticConfig(num_train=24, num_valid=8, num_test=0, seconds=3.0, sample_rate=16000))
    common = [f"data.train_file={data['train']}", f"data.validation_file={data['valid']}", f"data.audio_root={data['audio_root']}",
              "model.clip_seconds=3.0", "train.per_device_train_batch_size=8", "train.dataloader_num_workers=0",
              "train.progress=false", "train.lr_scheduler_type=constant", "train.num_warmup_steps=0",
              "sync_batchnorm=true"]  # one process: SyncBatchNorm computes plain batch norm
    torch.set_num_threads(1)
    whole = train_clap(load_clap_train_config(TINY, common + [f"output_dir={tmp_path / 'a'}", "train.num_train_epochs=2"]))
    first = train_clap(load_clap_train_config(TINY, common + [f"output_dir={tmp_path / 'b'}", "train.num_train_epochs=1"]))
    assert first.global_step == whole.global_step // 2
    resumed = train_clap(load_clap_train_config(TINY, common + [f"output_dir={tmp_path / 'b'}", "train.num_train_epochs=2"]))
    assert resumed.resumed_from is not None and resumed.global_step == whole.global_step
    a = load_file(str(whole.final_dir / "model.safetensors"))
    b = load_file(str(resumed.final_dir / "model.safetensors"))
    assert set(a) == set(b) and any("running_mean" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
