"""Student training (SoftCLAP's recipe): the curated / annotated mix and the annotated subset follow the
configuration over many draws (binomial bounds), a resumed student run equals an uninterrupted one, and bad
student settings are refused with the reason."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from enclap.data.synthetic import SyntheticConfig, generate_dataset
from enclap.errors import ConfigError, ManifestError
from enclap.jobs.train_clap import load_clap_train_config, train_clap
from enclap.training.clap import ClapTrainDataset, annotated_subset

from .factories import tiny_tower

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "cfg" / "clap" / "tiny.yaml"


def within_binomial(count: int, trials: int, p: float, sigmas: float = 5.0) -> bool:
    """``count`` successes of ``trials`` Bernoulli(p) within ``sigmas`` standard deviations of the mean."""
    return abs(count - trials * p) <= sigmas * math.sqrt(trials * p * (1 - p)) + 1e-9


class _Source(SimpleNamespace):
    """A ClapAudioSource's fields without audio files (draw() never decodes audio)."""

    def __len__(self) -> int:
        return len(self.keys)


def _source(name: str, clips: int, captions_per_clip: int) -> _Source:
    return _Source(manifest=name, keys=[f"{name}{i}" for i in range(clips)],
                   captions=[[f"{name} {i} caption {k}" for k in range(captions_per_clip)] for i in range(clips)],
                   audio_paths=[f"/nowhere/{name}{i}.wav" for i in range(clips)])


@pytest.fixture(scope="module")
def tower_config():
    return tiny_tower().config


@pytest.mark.parametrize("prob", [0.0, 0.3, 0.75, 1.0])
def test_curation_prob_gives_the_configured_mix(tower_config, prob):
    annotated, curated = _source("a", 50, 2), _source("c", 7, 3)
    dataset = ClapTrainDataset(annotated, tower_config, None, seed=3, curated=curated, curation_prob=prob)
    epochs = 80
    draws = [dataset.draw(epoch, index) for epoch in range(epochs) for index in range(len(dataset))]
    trials = len(draws)
    origins = Counter(d[0] for d in draws)
    assert within_binomial(origins["curated"], trials, prob), (origins, trials * prob)
    # curated items are the manifest's pairs, each pair equally likely (21 pairs)
    pairs = Counter((d[1], d[2]) for d in draws if d[0] == "curated")
    if prob > 0:
        assert set(pairs) == {(c, cap) for c in range(7) for cap in curated.captions[c]}
        for count in pairs.values():
            assert within_binomial(count, origins["curated"], 1 / 21)
    # annotated items are the sampler's clip with one of its own captions
    for (origin, clip, caption, _), index in zip(draws, [i for _ in range(epochs) for i in range(len(dataset))]):
        if origin == "annotated":
            assert clip == index and caption in annotated.captions[clip]
    # pure function of (seed, epoch, index): a second dataset (a resumed run) draws the same
    again = ClapTrainDataset(annotated, tower_config, None, seed=3, curated=curated, curation_prob=prob)
    assert [again.draw(5, i)[:3] for i in range(50)] == [d[:3] for d in draws[5 * 50 : 6 * 50]]


@pytest.mark.parametrize("pct", [10.0, 37.5, 100.0])
def test_subset_pct_keeps_that_share_chosen_at_random(tower_config, pct):
    n = 80
    subset = annotated_subset(n, pct, seed=11)
    assert len(subset) == max(1, round(n * pct / 100)) and subset == sorted(set(subset)) and set(subset) <= set(range(n))
    assert annotated_subset(n, pct, seed=11) == subset  # fixed by the seed
    dataset = ClapTrainDataset(_source("a", n, 1), tower_config, None, seed=11, subset=subset)
    seen = {dataset.draw(e, i)[1] for e in range(3) for i in range(len(dataset))}
    assert seen == set(subset)  # training sees exactly the subset
    # over many seeds every clip is kept with probability keep / n (a uniform choice, not the first clips)
    seeds = 400
    kept = Counter(i for seed in range(seeds) for i in annotated_subset(n, pct, seed))
    share = len(subset) / n
    if pct < 100:
        for clip in range(n):
            assert within_binomial(kept[clip], seeds, share), (clip, kept[clip], seeds * share)
    else:
        assert all(kept[c] == seeds for c in range(n))


def test_bad_mix_settings_are_refused(tower_config, tmp_path):
    for bad in (["data.curation_prob=1.5", "data.curated_file=x.csv"], ["data.curation_prob=-0.1"]):
        with pytest.raises(ConfigError, match=r"data.curation_prob must be in \[0, 1\]"):
            load_clap_train_config(TINY, bad)
    for pct in ("0", "-5", "100.5"):
        with pytest.raises(ConfigError, match=r"data.subset_pct must be in \(0, 100\]"):
            load_clap_train_config(TINY, [f"data.subset_pct={pct}"])
    with pytest.raises(ConfigError, match="needs data.curated_file"):
        load_clap_train_config(TINY, ["data.curation_prob=0.5"])
    with pytest.raises(ConfigError, match=r"loss.softclap_beta must be in \[0, 1\]"):
        load_clap_train_config(TINY, ["loss.softclap_beta=2"])
    with pytest.raises(ConfigError, match="softclap_text=teacher needs loss.softclap_teacher"):
        load_clap_train_config(TINY, ["loss.softclap_beta=0.3"])
    with pytest.raises(ConfigError, match="softclap_text must be one of"):
        load_clap_train_config(TINY, ["loss.softclap_text=banana"])
    with pytest.raises(ConfigError, match="needs curated pairs"):
        ClapTrainDataset(_source("a", 3, 1), tower_config, None, seed=0, curation_prob=0.5)
    # a curated manifest that does not exist: the file is named
    data = generate_dataset(tmp_path / "data", SyntheticConfig(num_train=4, num_valid=0, num_test=0, seconds=3.0, sample_rate=16000))
    missing = tmp_path / "no_such_curated.csv"
    config = load_clap_train_config(TINY, [f"output_dir={tmp_path / 'run'}", f"data.train_file={data['train']}",
                                           "data.validation_file=''", f"data.audio_root={data['audio_root']}",
                                           f"data.curated_file={missing}", "data.curation_prob=0.5"])
    with pytest.raises(ManifestError, match="no_such_curated.csv"):
        train_clap(config)


@pytest.mark.slow
def test_resumed_student_run_equals_uninterrupted_run(tmp_path):
    """Curated + replay mix, a 75% subset, SoftCLAP targets from a frozen teacher: resume is exact."""
    from safetensors.torch import load_file

    data = generate_dataset(tmp_path / "data", SyntheticConfig(num_train=24, num_valid=12, num_test=0, seconds=3.0, sample_rate=16000))
    curated = tmp_path / "curated.csv"  # the validation clips with other clips' captions, as a curation would pair them
    rows = (tmp_path / "data").joinpath("csv", "valid.csv").read_text().splitlines()[1:]
    import csv
    import io

    parsed = list(csv.reader(io.StringIO("\n".join(rows))))
    with curated.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_path", "caption", "similarity"])
        for i, row in enumerate(parsed):
            writer.writerow([row[0], parsed[(i + 1) % len(parsed)][1], f"{0.9 - 0.01 * i:.3f}"])
    teacher = tiny_tower(projection_dim=64)
    teacher.save_pretrained(tmp_path / "teacher", tokenizer=teacher.tokenizer)
    common = [f"data.train_file={data['train']}", "data.validation_file=''", f"data.audio_root={data['audio_root']}",
              f"data.curated_file={curated}", "data.curation_prob=0.4", "data.subset_pct=75",
              "loss.softclap_beta=0.3", "loss.softclap_text=teacher", f"loss.softclap_teacher={tmp_path / 'teacher'}",
              "model.clip_seconds=3.0", "train.train_batch_size=6", "train.dataloader_num_workers=0",
              "train.progress=false", "train.lr_scheduler_type=constant", "train.num_warmup_steps=0"]
    torch.set_num_threads(1)
    whole = train_clap(load_clap_train_config(TINY, common + [f"output_dir={tmp_path / 'a'}", "train.num_train_epochs=2"]))
    assert whole.global_step == 6  # 18 of 24 clips kept, 6 per step
    first = train_clap(load_clap_train_config(TINY, common + [f"output_dir={tmp_path / 'b'}", "train.num_train_epochs=1"]))
    assert first.global_step == 3
    resumed = train_clap(load_clap_train_config(TINY, common + [f"output_dir={tmp_path / 'b'}", "train.num_train_epochs=2"]))
    assert resumed.resumed_from is not None and resumed.global_step == whole.global_step
    a = load_file(str(whole.final_dir / "model.safetensors"))
    b = load_file(str(resumed.final_dir / "model.safetensors"))
    assert set(a) == set(b) and not any(k.startswith("teacher") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the SoftCLAP targets really changed training: beta 0 ends elsewhere
    plain = train_clap(load_clap_train_config(TINY, [c for c in common if "softclap" not in c]
                                              + [f"output_dir={tmp_path / 'c'}", "train.num_train_epochs=2"]))
    c = load_file(str(plain.final_dir / "model.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("with_teacher", [False, True])
def test_loss_module_uses_softclap_targets_from_the_chosen_text_tower(with_teacher):
    from enclap.clap.loss import ClipLoss, softclap_targets
    from enclap.training.clap import ClapCollator, ClapLossModule

    student = tiny_tower(seed=1)
    with torch.no_grad():  # a sharp softmax, so that the targets visibly matter
        student.logit_scale.fill_(math.log(100.0))
    teacher = tiny_tower(seed=2) if with_teacher else None
    captions = ["a loud beep", "a dog barks twice", "rain on a roof", "a bell rings"]
    gen = torch.Generator().manual_seed(0)
    waves = torch.randn(4, 16000, generator=gen) * 0.1
    ids, mask = ClapCollator._pad([student.tokenizer(c)["input_ids"] for c in captions], student.tokenizer.pad_token_id)
    inputs = dict(input_features=waves, input_ids=ids, attention_mask=mask, is_longer=torch.zeros(4, 1, dtype=torch.bool))
    if teacher is not None:
        inputs["teacher_input_ids"], inputs["teacher_attention_mask"] = ids, mask  # same tokenizer in the factory
    module = ClapLossModule(student, ClipLoss(), softclap_beta=0.4, softclap_teacher=teacher)
    student.eval()
    loss = module(**inputs)
    assert not any(n.startswith("_teacher") for n, _ in module.named_parameters())
    out = student(input_features=waves, input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        source = teacher.get_text_features(ids, mask) if teacher is not None else out["text_embeds"]
    expected = ClipLoss()(out["audio_embeds"], out["text_embeds"], out["logit_scale"], targets=softclap_targets(source, 0.4))
    torch.testing.assert_close(loss[0], expected)
    plain = ClipLoss()(out["audio_embeds"], out["text_embeds"], out["logit_scale"])
    assert abs(float(loss[0].detach()) - float(plain.detach())) > 1e-6  # the soft targets are in use
    loss.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    if teacher is not None:
        assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
