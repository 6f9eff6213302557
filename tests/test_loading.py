"""The loading rule: local path, else hub id, else one clear error; weights-only checkpoint reading."""

from __future__ import annotations

import pickle

import pytest
import torch

from enclap.errors import CheckpointError, PretrainedNotFoundError
from enclap.loading import load_pretrained, load_state_dict, looks_like_hub_id


def test_local_path_is_passed_to_the_loader(tmp_path):
    (tmp_path / "m").mkdir()
    assert load_pretrained(lambda p: p, tmp_path / "m", what="thing") == str(tmp_path / "m")


def test_missing_local_path_fails_without_asking_the_hub(tmp_path):
    called = []
    with pytest.raises(PretrainedNotFoundError) as info:
        load_pretrained(called.append, str(tmp_path / "missing" / "model"), what="EnCodec model", how_to_get="Pass --encodec DIR.")
    assert not called
    msg = str(info.value)
    assert "EnCodec model" in msg and "does not exist" in msg and "--encodec" in msg


def test_unreachable_hub_id_names_the_id_and_the_remedy():
    from transformers import AutoConfig

    with pytest.raises(PretrainedNotFoundError) as info:
        load_pretrained(AutoConfig.from_pretrained, "facebook/encodec_24khz", what="EnCodec model")
    msg = str(info.value)
    assert "'facebook/encodec_24khz'" in msg and "--local-dir" in msg and "HF_HUB_OFFLINE" in msg


def test_hub_id_heuristic():
    assert looks_like_hub_id("facebook/bart-base") and looks_like_hub_id("gpt2")
    for local in ("./ckpt", "/abs/dir", "~/x", "630k-audioset-fusion-best.pt", "a/b/c"):
        assert not looks_like_hub_id(local)


def test_state_dict_round_trips_and_unwraps(tmp_path):
    sd = {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pt")
    loaded = load_state_dict(tmp_path / "ckpt.pt")
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
    from safetensors.torch import save_file

    (tmp_path / "dir").mkdir()
    save_file(sd, str(tmp_path / "dir" / "model.safetensors"))
    assert torch.equal(load_state_dict(tmp_path / "dir")["a.weight"], sd["a.weight"])


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_state_dict(path)
    with pytest.raises(PretrainedNotFoundError):
        load_state_dict(tmp_path / "none.bin")
