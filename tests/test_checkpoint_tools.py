"""enclap-ckpt: every checkpoint layout is read, the diff names exactly the groups that changed, bad files are refused."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from enclap.checkpoint_tools import (
    compare_keys,
    check_expectations,
    diff_checkpoints,
    group_of,
    main,
    open_checkpoint,
    strip_prefix,
    summarize,
    under_prefix,
)
from enclap.errors import CheckpointError

from .clap.factories import tiny_tower

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tower():
    torch.set_num_threads(1)
    return tiny_tower(seed=0)


def _state(tower) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tower.state_dict().items()}


def _assert_same_tensors(checkpoint, expected: dict[str, torch.Tensor]) -> None:
    assert checkpoint.keys() == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(checkpoint.tensor(key), value), key
        assert checkpoint.infos[key].shape == tuple(value.shape)
        assert checkpoint.infos[key].dtype == str(value.dtype).removeprefix("torch.")


def test_groups_and_prefixes():
    assert group_of("text_model.encoder.layer.0.attention.self.query.weight", 2) == "text_model.encoder"
    assert group_of("logit_scale", 3) == "logit_scale"
    assert under_prefix("text_model.encoder.x", "text_model") and under_prefix("text_model", "text_model.")
    assert not under_prefix("text_model_extra.x", "text_model")


def test_list_counts_every_tensor_and_parameter(tower, tmp_path, capsys):
    tower.save_pretrained(tmp_path / "tower")
    checkpoint = open_checkpoint(tmp_path / "tower")
    state = _state(tower)
    groups = summarize(checkpoint, depth=1)
    assert [g.group for g in groups] == sorted({k.split(".")[0] for k in state})
    for g in groups:
        members = [v for k, v in state.items() if k.split(".")[0] == g.group]
        assert g.tensors == len(members) and g.parameters == sum(v.numel() for v in members)
        assert sum(g.dtypes.values()) == len(members)
    assert main(["list", str(tmp_path / "tower"), "--depth", "1", "--json", str(tmp_path / "list.json")]) == 0
    printed = capsys.readouterr().out
    assert "audio_model" in printed and f"{sum(v.numel() for v in state.values()):,}" in printed
    payload = json.loads((tmp_path / "list.json").read_text())
    assert payload["total"] == {"tensors": len(state), "parameters": sum(v.numel() for v in state.values())}


def test_diff_reports_exactly_the_groups_a_test_changed(tower, tmp_path, capsys):
    a_state = _state(tower)
    b_state = {k: v.clone() for k, v in a_state.items()}
    # change two groups: one element of the audio projection, a whole matrix of the text encoder
    b_state["audio_projection.linear1.weight"][0, 0] += 0.25
    query = next(k for k in b_state if k.startswith("text_model.encoder.") and k.endswith("query.weight"))
    noise = 0.01 * torch.randn(b_state[query].shape, generator=torch.Generator().manual_seed(3))
    b_state[query] += noise
    save_file(a_state, str(tmp_path / "a.safetensors"))
    save_file(b_state, str(tmp_path / "b.safetensors"))
    a, b = open_checkpoint(tmp_path / "a.safetensors"), open_checkpoint(tmp_path / "b.safetensors")

    diffs = {d.group: d for d in diff_checkpoints(a, b, depth=2)}
    assert {g for g, d in diffs.items() if d.status != "same"} == {"audio_projection.linear1", "text_model.encoder"}
    proj = diffs["audio_projection.linear1"]
    assert proj.changed_keys == ["audio_projection.linear1.weight"] and proj.compared == 2
    assert proj.max_abs_diff == pytest.approx(0.25, rel=1e-6)
    # relative L2 over the group's tensors (weight and bias), by hand
    norm = math.sqrt(sum(float((a_state[k].double() ** 2).sum()) for k in a_state if k.startswith("audio_projection.linear1.")))
    assert proj.relative_l2 == pytest.approx(0.25 / norm, rel=1e-5)
    enc = diffs["text_model.encoder"]
    assert enc.changed_keys == [query]
    assert enc.max_abs_diff == pytest.approx(float(noise.abs().max()), rel=1e-5)
    enc_norm = math.sqrt(sum(float((a_state[k].double() ** 2).sum()) for k in a_state if k.startswith("text_model.encoder.")))
    assert enc.relative_l2 == pytest.approx(float(noise.double().norm()) / enc_norm, rel=1e-4)
    # a tolerance above the noise leaves only the projection changed
    loose = {d.group for d in diff_checkpoints(a, b, depth=2, atol=0.1) if d.status != "same"}
    assert loose == {"audio_projection.linear1"}

    compared = compare_keys(a, b)
    assert check_expectations(compared, depth=2, atol=0.0, expect_same=["audio_model"], expect_changed=["text_model.encoder"]) == []
    failed = check_expectations(compared, depth=2, atol=0.0, expect_same=["text_model"], expect_changed=["text_model"])
    assert len(failed) == 2 and "text_model.encoder" in failed[0] and "text_model.embeddings" in failed[1]
    # at depth 1 the text tower is one group: it changed
    assert check_expectations(compared, depth=1, atol=0.0, expect_changed=["text_model"]) == []

    argv = ["diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    assert main(argv + ["--expect-same", "audio_model", "--expect-changed", "audio_projection.linear1"]) == 0
    assert main(argv + ["--expect-same", "text_model"]) == 1
    err = capsys.readouterr().err
    assert "text_model.encoder" in err and "audio_model" not in err
    assert main(argv + ["--expect-same", "txt_model"]) == 2  # a typo is an error, not a pass
    assert "txt_model" in capsys.readouterr().err
    assert main(argv + ["--json", str(tmp_path / "diff.json")]) == 0
    payload = json.loads((tmp_path / "diff.json").read_text())
    assert {g["group"] for g in payload["groups"] if g["status"] != "same"} == {"audio_projection.linear1", "text_model.encoder"}


def test_diff_reports_missing_keys_shapes_and_dtypes(tower, tmp_path):
    a_state = _state(tower)
    b_state = {k: v.clone() for k, v in a_state.items() if not k.startswith("text_projection.")}
    b_state["audio_projection.linear1.weight"] = torch.zeros(3, 3)
    b_state["logit_scale"] = a_state["logit_scale"].double()
    b_state["extra.head.weight"] = torch.ones(2)
    save_file(a_state, str(tmp_path / "a.safetensors"))
    save_file(b_state, str(tmp_path / "b.safetensors"))
    diffs = {d.group: d for d in diff_checkpoints(open_checkpoint(tmp_path / "a.safetensors"), open_checkpoint(tmp_path / "b.safetensors"), 1)}
    assert diffs["text_projection"].status == "only in A" and len(diffs["text_projection"].only_in_a) == 4
    assert diffs["extra"].status == "only in B" and diffs["extra"].only_in_b == ["extra.head.weight"]
    assert diffs["audio_projection"].status == "differs" and diffs["audio_projection"].shape_mismatches[0].startswith("audio_projection.linear1.weight")
    assert diffs["audio_projection"].changed == 0  # the bias is unchanged, the weight could not be compared
    assert diffs["logit_scale"].status == "differs" and diffs["logit_scale"].max_abs_diff == 0.0
    assert diffs["logit_scale"].dtype_mismatches == ["logit_scale: float32 vs float64"]
    assert diffs["audio_model"].status == "same" and diffs["text_model"].status == "same"


def test_every_layout_is_read(tower, tmp_path):
    state = _state(tower)
    tower.save_pretrained(tmp_path / "single")
    _assert_same_tensors(open_checkpoint(tmp_path / "single"), state)
    tower.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    sharded = open_checkpoint(tmp_path / "sharded")
    assert len(sharded.files) > 2 and "shards" in sharded.layout
    _assert_same_tensors(sharded, state)
    # transformers 4's sharded pickles: pytorch_model-0000k-of-00002.bin + pytorch_model.bin.index.json
    (tmp_path / "bin_shards").mkdir()
    keys = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2], "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :]}
    for name, part in halves.items():
        torch.save({k: state[k] for k in part}, tmp_path / "bin_shards" / name)
    index = {"metadata": {}, "weight_map": {k: name for name, part in halves.items() for k in part}}
    (tmp_path / "bin_shards" / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    _assert_same_tensors(open_checkpoint(tmp_path / "bin_shards"), state)
    (tmp_path / "bin_shards" / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00002.bin', which is missing"):
        open_checkpoint(tmp_path / "bin_shards")
    (tmp_path / "bin").mkdir()
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    _assert_same_tensors(open_checkpoint(tmp_path / "bin"), state)
    _assert_same_tensors(open_checkpoint(tmp_path / "single" / "model.safetensors"), state)
    # LAION's training checkpoint: DDP-prefixed weights under state_dict, beside other entries
    torch.save({"epoch": 45, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "laion.pt")
    laion = open_checkpoint(tmp_path / "laion.pt")
    assert "module." in laion.layout
    _assert_same_tensors(laion, state)
    # PANNs' Cnn14_mAP=0.431.pth: {"model": ..., "iteration": ...}; in the legacy (non-zip) torch format
    audio = {k[len("audio_model."):]: v for k, v in state.items() if k.startswith("audio_model.")}
    torch.save({"model": audio, "iteration": 660000}, tmp_path / "panns.pth", _use_new_zipfile_serialization=False)
    _assert_same_tensors(open_checkpoint(tmp_path / "panns.pth"), audio)
    # nested dicts read as dotted keys
    torch.save({"audio": {"w": torch.ones(2)}, "text": {"w": torch.zeros(1)}}, tmp_path / "nested.bin")
    assert open_checkpoint(tmp_path / "nested.bin").keys() == ["audio.w", "text.w"]


def test_a_training_checkpoint_written_by_accelerate_is_read(tower, tmp_path):
    from accelerate import Accelerator

    from enclap.training.checkpoints import write_loop_state

    class Task(torch.nn.Module):  # the loop's layout: the task's module wraps the tower
        def __init__(self):
            super().__init__()
            self.tower = tower

    accelerator = Accelerator(cpu=True)
    module = accelerator.prepare(Task())
    step = tmp_path / "checkpoints" / "step_2"
    accelerator.save_state(str(step))
    write_loop_state(step, {"global_step": 2, "epoch": 0, "micro_batch": 2, "fingerprint": {}})
    checkpoint = open_checkpoint(step)
    assert checkpoint.layout.startswith("training checkpoint") and checkpoint.files == [step / "model.safetensors"]
    _assert_same_tensors(strip_prefix(checkpoint, "tower"), _state(module.tower))
    tower.save_pretrained(tmp_path / "best")
    stripped = strip_prefix(checkpoint, "tower")
    assert all(d.status == "same" for d in diff_checkpoints(stripped, open_checkpoint(tmp_path / "best")))


def test_corrupt_and_foreign_files_are_refused_with_their_name(tower, tmp_path, capsys):
    state = _state(tower)
    save_file(state, str(tmp_path / "whole.safetensors"))
    data = (tmp_path / "whole.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    torch.save({"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 1.0}]}, tmp_path / "optimizer.bin")
    with open(tmp_path / "code.pkl", "wb") as fh:  # arbitrary pickled objects are never loaded
        pickle.dump({"weights": Path("/etc")}, fh)
    torch.save(torch.ones(3), tmp_path / "bare.pt")
    (tmp_path / "empty_dir").mkdir()
    cases = {
        "truncated.safetensors": "safetensors",
        "notes.pt": "not a checkpoint",
        "garbage.safetensors": "safetensors",
        "optimizer.bin": "not a tensor",
        "code.pkl": "weights-only",
        "bare.pt": "not a state dict",
        "empty_dir": "no weights found",
        "missing.pt": "no such file",
    }
    for name, reason in cases.items():
        with pytest.raises(CheckpointError, match=reason) as info:
            opened = open_checkpoint(tmp_path / name)
            [opened.tensor(k) for k in opened.keys()]  # a damage found only when reading values counts too
        assert str(tmp_path / name) in str(info.value), name
    assert main(["list", str(tmp_path / "notes.pt")]) == 2
    assert "notes.pt" in capsys.readouterr().err
    assert main(["diff", str(tmp_path / "whole.safetensors"), str(tmp_path / "truncated.safetensors")]) == 2
    assert "truncated.safetensors" in capsys.readouterr().err


@pytest.mark.slow
def test_a_frozen_text_tower_stays_frozen_through_the_real_training_job(tmp_path, capsys):
    from enclap.data.synthetic import SyntheticConfig, generate_dataset
    from enclap.jobs.train_clap import load_clap_train_config, train_clap

    torch.set_num_threads(1)
    data = generate_dataset(tmp_path / "data", SyntheticConfig(num_train=16, num_valid=4, num_test=0, seconds=3.0, sample_rate=16000))
    config = load_clap_train_config(REPO / "cfg" / "clap" / "tiny.yaml", [
        f"output_dir={tmp_path / 'run'}", f"data.train_file={data['train']}", f"data.validation_file={data['valid']}",
        f"data.audio_root={data['audio_root']}", "model.clip_seconds=3.0", "model.freeze_text=true",
        "train.train_batch_size=8", "train.max_train_steps=3", "train.checkpointing_steps=1", "train.checkpoints_total_limit=0",
        "train.num_warmup_steps=0", "train.dataloader_num_workers=0", "train.progress=false",
    ])
    result = train_clap(config)
    assert result.status == "completed" and result.global_step == 3
    first, last = tmp_path / "run" / "checkpoints" / "step_1", tmp_path / "run" / "checkpoints" / "step_3"
    a, b = strip_prefix(open_checkpoint(first), "tower"), strip_prefix(open_checkpoint(last), "tower")
    diffs = {d.group: d for d in diff_checkpoints(a, b, depth=2)}
    text = [g for g in diffs if g.startswith("text_model.")]
    assert text and all(diffs[g].status == "same" for g in text)
    # what the optimizer trains moved; the fixed front end did not
    for group in ("audio_model.conv_block1", "audio_projection.linear1", "text_projection.linear1"):
        assert diffs[group].status == "differs" and diffs[group].max_abs_diff > 0, group
    assert diffs["audio_model.spectrogram_extractor"].status == "same"
    argv = ["diff", str(first), str(last), "--strip", "tower"]
    assert main(argv + ["--expect-same", "text_model", "--expect-changed", "audio_projection", "--expect-changed", "text_projection"]) == 0
    assert main(argv + ["--expect-changed", "text_model"]) == 1
    assert "text_model.encoder" in capsys.readouterr().err
    # the exported model is the last checkpoint's tower
    assert main(["diff", str(last), str(result.final_dir), "--strip", "tower", "--expect-same", "audio_model",
                 "--expect-same", "text_model"]) == 0
