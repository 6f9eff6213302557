"""The CLAP tower: PANNs and LAION layouts load exactly, save/load round trips, transformers export, pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from enclap.clap.configuration import CNN14_DEFAULTS, ClapTowerConfig
from enclap.clap.interop import export_transformers_clap, load_laion_clap_weights
from enclap.clap.modeling import ClapTowerModel, Cnn14, load_panns_cnn14
from enclap.errors import CheckpointError, ConfigError

from .factories import TINY_CNN14, TINY_ROBERTA, tiny_tower


# ------------------------------------------------------------------------------------------- PANNs
def panns_state_dict(base: int, mel_bins: int, n_fft: int, classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with PANNs Cnn14's key names and shapes (pytorch/models.py + torchlibrosa), random values."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    state: dict[str, torch.Tensor] = {}

    def bn(prefix: str, n: int) -> None:
        state.update({f"{prefix}.weight": rand(n), f"{prefix}.bias": rand(n), f"{prefix}.running_mean": rand(n),
                      f"{prefix}.running_var": rand(n).abs() + 0.5, f"{prefix}.num_batches_tracked": torch.tensor(7)})

    bins = n_fft // 2 + 1
    state["spectrogram_extractor.stft.conv_real.weight"] = rand(bins, 1, n_fft)
    state["spectrogram_extractor.stft.conv_imag.weight"] = rand(bins, 1, n_fft)
    state["logmel_extractor.melW"] = rand(bins, mel_bins)
    bn("bn0", mel_bins)
    channels = [1, base, 2 * base, 4 * base, 8 * base, 16 * base, 32 * base]
    for i in range(1, 7):
        state[f"conv_block{i}.conv1.weight"] = rand(channels[i], channels[i - 1], 3, 3)
        state[f"conv_block{i}.conv2.weight"] = rand(channels[i], channels[i], 3, 3)
        bn(f"conv_block{i}.bn1", channels[i])
        bn(f"conv_block{i}.bn2", channels[i])
    state["fc1.weight"], state["fc1.bias"] = rand(32 * base, 32 * base), rand(32 * base)
    state["fc_audioset.weight"], state["fc_audioset.bias"] = rand(classes, 32 * base), rand(classes)
    return state


def test_panns_layout_loads_with_no_missing_or_unexpected_keys():
    tower = tiny_tower("cnn14")
    state = panns_state_dict(TINY_CNN14["base_channels"], TINY_CNN14["mel_bins"], TINY_CNN14["window_size"], TINY_CNN14["classes_num"])
    load_panns_cnn14(tower, {f"module.{k}": v for k, v in state.items()})  # DDP prefix as some releases have
    loaded = tower.audio_model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    with pytest.raises(CheckpointError, match="missing 1 key"):
        load_panns_cnn14(tiny_tower("cnn14"), {k: v for k, v in state.items() if k != "fc1.bias"})
    with pytest.raises(CheckpointError, match="unexpected"):
        load_panns_cnn14(tiny_tower("cnn14"), {**state, "att_block.att.weight": torch.zeros(1)})


def test_published_cnn14_has_the_checkpoints_shapes():
    with torch.device("meta"):
        net = Cnn14(**CNN14_DEFAULTS)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    # Cnn14_mAP=0.431.pth: 64..2048 channels, 64 mels, n_fft 1024, 527 AudioSet classes
    assert shapes["conv_block1.conv1.weight"] == (64, 1, 3, 3)
    assert shapes["conv_block6.conv2.weight"] == (2048, 2048, 3, 3)
    assert shapes["fc1.weight"] == (2048, 2048) and shapes["fc_audioset.weight"] == (527, 2048)
    assert shapes["spectrogram_extractor.stft.conv_real.weight"] == (513, 1, 1024)
    assert shapes["logmel_extractor.melW"] == (513, 64)
    assert shapes["bn0.running_mean"] == (64,)


def test_front_end_kernels_are_torchlibrosas_dft_and_match_torch_stft():
    from scipy.signal import get_window

    tower = tiny_tower("cnn14")
    n_fft = TINY_CNN14["window_size"]
    stft = tower.audio_model.spectrogram_extractor
    # torchlibrosa: W = DFT matrix, kernels = (real|imag)(W[:, :bins] * hann[:, None]).T
    W = np.fft.fft(np.eye(n_fft))
    window = get_window("hann", n_fft, fftbins=True)
    expected = (W[:, : n_fft // 2 + 1] * window[:, None]).T
    np.testing.assert_allclose(stft.stft.conv_real.weight[:, 0].numpy(), expected.real, atol=1e-5)
    np.testing.assert_allclose(stft.stft.conv_imag.weight[:, 0].numpy(), expected.imag, atol=1e-5)
    wave = torch.randn(2, 4000, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(stft(wave), stft.forward_with_kernels(wave), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------- LAION
_BLOCK_TO_LAION = {"layernorm_before.": "norm1.", "layernorm_after.": "norm2.", "attention.output.dense.": "attn.proj.",
                   "attention.self.relative_position_bias_table": "attn.relative_position_bias_table",
                   "attention.self.relative_position_index": "attn.relative_position_index",
                   "intermediate.dense.": "mlp.fc1.", "output.dense.": "mlp.fc2."}


def laion_state_dict(tower: ClapTowerModel) -> dict[str, torch.Tensor]:
    """The tower's weights under laion_clap's names (module. prefix, fused qkv, LAION-only extras)."""
    out: dict[str, torch.Tensor] = {}
    state = tower.state_dict()
    enc = "audio_model.audio_encoder."
    for key, value in state.items():
        if key.startswith(enc + "layers.") and ".blocks." in key:
            head, rest = key[len(enc):].split(".blocks.")
            index, rest = rest.split(".", 1)
            prefix = f"audio_branch.{head}.blocks.{index}."
            if rest.startswith("attention.self.query."):
                part = rest.rsplit(".", 1)[1]
                qkv = [state[key.replace(".query.", f".{n}.")] for n in ("query", "key", "value")]
                out[prefix + f"attn.qkv.{part}"] = torch.cat(qkv)
                continue
            if rest.startswith(("attention.self.key.", "attention.self.value.")):
                continue
            for new, old in _BLOCK_TO_LAION.items():
                if rest.startswith(new):
                    out[prefix + old + rest[len(new):]] = value
                    break
            else:
                raise AssertionError(key)
        elif key.startswith(enc + "batch_norm."):
            out["audio_branch.bn0." + key[len(enc + "batch_norm."):]] = value
        elif key.startswith(enc):
            out["audio_branch." + key[len(enc):]] = value
        elif key.startswith("text_model."):
            out["text_branch." + key[len("text_model."):]] = value
        elif key.startswith(("audio_projection.", "text_projection.")):
            out[key.replace(".linear1.", ".0.").replace(".linear2.", ".2.")] = value
        elif key == "logit_scale":
            out["logit_scale_a"] = value.clone()
            out["logit_scale_t"] = value.clone() + 1.0
        else:
            raise AssertionError(key)
    # what LAION saves and a transformers ClapModel does not have
    out["audio_branch.spectrogram_extractor.stft.conv_real.weight"] = torch.zeros(513, 1, 1024)
    out["audio_branch.logmel_extractor.melW"] = torch.zeros(513, 64)
    out["audio_branch.head.weight"] = torch.zeros(527, 16)
    out["audio_branch.layers.0.blocks.1.attn_mask"] = torch.zeros(1)
    out["text_transform.sequential.0.weight"] = torch.zeros(8, 8)
    return {f"module.{k}": v for k, v in out.items()}


def test_laion_layout_loads_with_no_missing_or_unexpected_keys():
    source = tiny_tower("htsat", seed=1, fusion=True, text_pooling="pooler", projection="mlp")
    target = tiny_tower("htsat", seed=2, fusion=True, text_pooling="pooler", projection="mlp")
    load_laion_clap_weights(target, laion_state_dict(source))
    expected, loaded = source.state_dict(), target.state_dict()
    assert set(expected) == set(loaded)
    for key in expected:
        assert torch.equal(expected[key], loaded[key]), key
    broken = {k: v for k, v in laion_state_dict(source).items() if "text_branch.pooler" not in k}
    with pytest.raises(CheckpointError, match="missing"):
        load_laion_clap_weights(tiny_tower("htsat", fusion=True), broken)


# ------------------------------------------------------------------------------------------- round trips
def _text_audio(tower: ClapTowerModel):
    gen = torch.Generator().manual_seed(5)
    if tower.config.audio_encoder == "cnn14":
        audio = torch.randn(2, 16000, generator=gen)
    else:
        audio = torch.randn(2, 4 if tower.config.enable_fusion else 1, 1001, 64, generator=gen)
    return audio, tower.tokenize(["a loud beep", "rain falls on a roof"])


@pytest.mark.parametrize("encoder", ["cnn14", "htsat"])
def test_save_and_load_round_trip(tmp_path, encoder):
    tower = tiny_tower(encoder)
    tower.save_pretrained(tmp_path)
    again = ClapTowerModel.from_pretrained(tmp_path).eval()
    assert again.tokenizer is not None
    for key, value in tower.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    audio, tokens = _text_audio(tower)
    with torch.no_grad():
        torch.testing.assert_close(again.get_audio_features(audio), tower.get_audio_features(audio), rtol=0, atol=0)
    # (a loaded model may pick another attention kernel than a constructed one: equal to float rounding)
    np.testing.assert_allclose(again.embed_texts(["a bell rings"]), tower.embed_texts(["a bell rings"]), atol=1e-6)


def test_transformers_clap_export_loads_with_transformers_alone(tmp_path):
    from transformers import AutoTokenizer, ClapModel

    tower = tiny_tower("htsat", fusion=True, text_pooling="pooler", projection="mlp")
    export_transformers_clap(tower, tmp_path)
    model = ClapModel.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    audio, _ = _text_audio(tower)
    tokens = tokenizer(["a loud beep", "rain falls on a roof"], padding=True, return_tensors="pt")
    longer = torch.tensor([[True], [False]])
    with torch.no_grad():
        hf_audio = model.get_audio_features(input_features=audio, is_longer=longer)
        hf_text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        hf_audio = getattr(hf_audio, "pooler_output", hf_audio)
        hf_text = getattr(hf_text, "pooler_output", hf_text)
        torch.testing.assert_close(F.normalize(hf_audio, dim=-1), tower.get_audio_features(audio, longer))
        torch.testing.assert_close(F.normalize(hf_text, dim=-1), tower.get_text_features(tokens["input_ids"], tokens["attention_mask"]))
    with pytest.raises(ConfigError, match="only an HTS-AT"):
        export_transformers_clap(tiny_tower("cnn14"), tmp_path / "no")


# ------------------------------------------------------------------------------------------- text towers
def test_gpt2_last_token_pooling():
    text = dict(model_type="gpt2", vocab_size=320, n_embd=16, n_layer=1, n_head=2, n_positions=40)
    tower = tiny_tower("cnn14", text_config=text, text_pooling="last")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        hidden = tower.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = F.normalize(tower.text_projection(torch.stack([hidden[0, 3], hidden[1, 1]])), dim=-1)
        torch.testing.assert_close(tower.get_text_features(ids, mask), expected)


def test_bert_mean_pooling_and_clip_text_tower():
    bert = dict(model_type="bert", vocab_size=320, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    tower = tiny_tower("cnn14", text_config=bert, text_pooling="mean")
    assert tower.text_model.pooler is None  # not read, so not built (DDP refuses weights without gradients)
    ids = torch.tensor([[5, 6, 7], [9, 10, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        hidden = tower.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = torch.stack([hidden[0].mean(0), hidden[1, :2].mean(0)])
        torch.testing.assert_close(tower.get_text_features(ids, mask), F.normalize(tower.text_projection(pooled), dim=-1))
    clip = dict(model_type="clip_text_model", vocab_size=320, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=40, eos_token_id=2)
    tower = tiny_tower("cnn14", text_config=clip, text_pooling="pooler")
    assert tower.get_text_features(ids, mask).shape == (2, 8)


def test_freezing_keeps_a_tower_fixed():
    tower = tiny_tower("cnn14", freeze_audio=True)
    assert not any(p.requires_grad for p in tower.audio_model.parameters())
    assert all(p.requires_grad for p in tower.text_model.parameters())
    tower.train()
    assert not tower.audio_model.training and tower.text_model.training  # batch-norm statistics stay put


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="audio_encoder"):
        ClapTowerConfig(audio_encoder="resnet")
    with pytest.raises(ConfigError, match="text_pooling"):
        ClapTowerConfig(text_pooling="max", text_config=dict(TINY_ROBERTA))
    with pytest.raises(ConfigError, match="unknown CNN14 key"):
        ClapTowerConfig(audio_encoder="cnn14", audio_config={"channels": 3})
