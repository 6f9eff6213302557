"""The captioning pipeline: loading, batching invariants, bad files, long audio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from enclap.errors import ConfigError, PretrainedNotFoundError
from enclap.pipeline import CaptioningPipeline, GenerationSettings, PipelineSettings

from .audio_helpers import tone, write_audio, write_bad_files
from .pipeline_factory import build_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def pipeline(checkpoint):
    return CaptioningPipeline.from_pretrained(checkpoint, device="cpu", batch_size=3)




def _clips(tmp_path, n=5):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        seconds = 0.4 + 0.3 * i
        x = tone(seconds, 16000, freq=200.0 + 150 * i, amplitude=0.3)
        x = x + 0.05 * rng.standard_normal(len(x)).astype(np.float32)
        paths.append(write_audio(tmp_path / f"clip{i}.wav", x.astype(np.float32), 16000, subtype="FLOAT"))
    return paths


def test_checkpoint_round_trip_restores_settings(checkpoint, pipeline):
    saved = json.loads((checkpoint / "pipeline.json").read_text())
    assert saved["encodec"] == "encodec" and saved["generation"]["num_beams"] == 4
    # relative audio-model paths are resolved against the checkpoint directory
    assert pipeline.settings.encodec == str(checkpoint / "encodec")
    assert pipeline.settings.generation == GenerationSettings()
    assert pipeline.max_frames == 125
    kwargs = pipeline.settings.generation.to_generate_kwargs()
    assert (kwargs["num_beams"], kwargs["no_repeat_ngram_size"], kwargs["max_length"]) == (4, 3, 50)
    assert (kwargs["forced_bos_token_id"], kwargs["forced_eos_token_id"], kwargs["early_stopping"]) == (0, 2, True)


def test_files_audio_and_features_give_the_same_captions(pipeline, tmp_path):
    from enclap.audio import load_audio

    paths = _clips(tmp_path)
    from_files = [r.caption for r in pipeline.caption_files(paths)]
    from_audio = pipeline.caption_audio([load_audio(p) for p in paths])
    from_features = pipeline.caption_features(pipeline.features.extract_files(paths))
    assert from_files == from_audio == from_features
    assert all(isinstance(c, str) and c == " ".join(c.split()) for c in from_files)
    assert len(set(from_files)) > 1, "a random model with distinct inputs should not give one caption for all"


def test_captions_do_not_depend_on_batching_or_order(pipeline, tmp_path):
    paths = _clips(tmp_path)
    features = pipeline.features.extract_files(paths)
    batched = pipeline.caption_features(features)
    alone = [pipeline.caption_features([f])[0] for f in features]
    reversed_order = pipeline.caption_features(features[::-1])[::-1]
    assert batched == alone == reversed_order


def test_generation_matches_a_direct_model_call(pipeline, tmp_path):
    """The pipeline adds batching and decoding only: one clip through model.generate gives the same text."""
    from enclap.model import build_encoder_inputs

    feats = pipeline.features.extract_files(_clips(tmp_path, 2))[1]
    inputs = build_encoder_inputs([feats.codes], feats.clap[None], max_frames=pipeline.max_frames)
    with torch.no_grad():
        out = pipeline.model.generate(**inputs, num_beams=4, no_repeat_ngram_size=3, max_length=50, early_stopping=True)
    expected = " ".join(pipeline.tokenizer.decode(out[0], skip_special_tokens=True).split())
    assert pipeline.caption_features([feats]) == [expected]


def test_bad_files_are_reported_not_fatal_when_asked(pipeline, tmp_path):
    good = _clips(tmp_path, 2)
    bad = write_bad_files(tmp_path / "bad")
    paths = [good[0], bad["text"], good[1], bad["truncated"], tmp_path / "missing.wav"]
    results = pipeline.caption_files(paths, skip_errors=True)
    assert [r.error is None for r in results] == [True, False, True, False, False]
    assert "not a readable audio file" in results[1].error and "truncated" in results[3].error
    assert results[0].caption == pipeline.caption_files([good[0]])[0].caption
    with pytest.raises(Exception, match="notes.wav"):
        pipeline.caption_files([bad["text"]])


def independent_mean_log_likelihood(pipeline, codes, claps, candidates) -> np.ndarray:
    """Mean over windows of each candidate's mean token log-probability, by a direct teacher-forced forward
    of the BART model: one window and one candidate at a time, no padding, the decoder input written out
    (decoder start token, then the caption's tokens but the last), log-softmax in float64."""
    from enclap.model import build_encoder_inputs

    totals = np.zeros(len(candidates))
    for window, clap in zip(codes, claps):
        inputs = build_encoder_inputs([window], np.asarray(clap)[None], max_frames=pipeline.max_frames)
        for j, text in enumerate(candidates):
            target = torch.tensor([pipeline.tokenizer(text)["input_ids"]])
            decoder_input = torch.cat([torch.tensor([[pipeline.model.config.decoder_start_token_id]]), target[:, :-1]], 1)
            with torch.no_grad():
                logits = pipeline.model(**inputs, decoder_input_ids=decoder_input).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)[torch.arange(target.shape[1]), target[0]]
            totals[j] += float(logp.mean())
    return totals / len(codes)


def test_long_audio_windows_mode(checkpoint, tmp_path):
    """Short clips caption exactly as in truncate mode; long ones pick the best candidate across windows."""
    windows = CaptioningPipeline.from_pretrained(checkpoint, device="cpu", long_audio="windows")
    truncate = CaptioningPipeline.from_pretrained(checkpoint, device="cpu")
    short = write_audio(tmp_path / "short.wav", tone(0.8, 16000), 16000)
    assert windows.caption_files([short])[0].caption == truncate.caption_files([short])[0].caption

    # A tone, noise, then a higher tone: windows that propose different captions (checked below).
    rng = np.random.default_rng(3)
    long_audio = np.concatenate([
        tone(1.5, 16000, 300.0), 0.3 * rng.standard_normal(16000 * 2).astype(np.float32), tone(1.5, 16000, 1700.0, 0.2),
    ])
    feats = windows.features.extract([(long_audio, 16000)])[0]
    assert len(feats.codes) > windows.max_frames
    from enclap.model import split_codes_into_windows

    parts = split_codes_into_windows(feats.codes, windows.max_frames, windows.max_frames // 2)
    assert len(parts) >= 3
    candidates = list(dict.fromkeys(truncate.caption_features(
        [type(feats)(codes=p, clap=feats.clap) for p in parts])))
    assert len(candidates) > 1, "the windows must propose different captions for the choice to be tested"
    expected = independent_mean_log_likelihood(windows, parts, [feats.clap] * len(parts), candidates)
    best = np.sort(expected)[::-1]
    assert best[0] - best[1] > 1e-3, "a near-tie would make the choice depend on rounding"
    np.testing.assert_allclose(windows._mean_log_likelihood(parts, [feats.clap] * len(parts), candidates), expected, atol=1e-4)
    assert windows.caption_features([feats])[0] == candidates[int(np.argmax(expected))]


def test_loading_errors_are_clear(tmp_path, checkpoint):
    with pytest.raises(PretrainedNotFoundError, match="EnCLAP captioner"):
        CaptioningPipeline.from_pretrained(tmp_path / "nope")
    with pytest.raises(ConfigError, match="long_audio"):
        CaptioningPipeline.from_pretrained(checkpoint, long_audio="middle", with_audio_models=False)
    with pytest.raises(ConfigError, match="unknown generation"):
        CaptioningPipeline.from_pretrained(checkpoint, generation={"beams": 2}, with_audio_models=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoint.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "pipeline.json").write_text(json.dumps({"encodec": "x", "colour": "red"}))
    with pytest.raises(ConfigError, match="colour"):
        CaptioningPipeline.from_pretrained(broken, with_audio_models=False)
    no_audio = CaptioningPipeline.from_pretrained(checkpoint, with_audio_models=False)
    with pytest.raises(ConfigError, match="without audio models"):
        no_audio.caption_audio([(np.zeros(100, np.float32), 16000)])


def test_settings_defaults_are_the_reference_cli():
    assert PipelineSettings().long_audio == "truncate"
    assert PipelineSettings().encodec == "facebook/encodec_24khz"
