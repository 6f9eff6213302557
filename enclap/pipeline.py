"""Audio -> captions, batched: the one object that inference, evaluation and the web demo share.

A :class:`CaptioningPipeline` holds the captioner, its tokenizer, generation settings and (optionally)
the feature extractor (EnCodec + CLAP). It captions precomputed features, waveforms or files, in
batches sorted by length, returning captions in input order. There is no other copy of
audio -> caption in the project.

A checkpoint directory written by :meth:`CaptioningPipeline.save_pretrained` holds the model
(``config.json`` + weights), the tokenizer and ``pipeline.json`` (which EnCodec / CLAP produced the
features it was trained on, and the generation settings), so that ``from_pretrained(dir)`` needs
nothing else. The checkpoints released with the EnCLAP paper hold only the model; for them the
tokenizer defaults to ``facebook/bart-base`` and the audio models to the ones the paper used.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .errors import AudioError, ConfigError, InvalidFeaturesError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from .features.extractor import ClipFeatures, FeatureExtractor
    from .model import EnClapBartForConditionalGeneration

logger = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"
DEFAULT_ENCODEC = "facebook/encodec_24khz"
DEFAULT_CLAP = "laion/clap-htsat-fused"
LONG_AUDIO_MODES = ("truncate", "windows")


@dataclass
class GenerationSettings:
    """Beam search settings; the defaults are the reference CLI's (beam 4, no 3-gram repeats, 50 tokens)."""

    num_beams: int = 4
    max_length: int = 50
    no_repeat_ngram_size: int = 3
    early_stopping: bool = True
    length_penalty: float = 1.0

    def to_generate_kwargs(self) -> dict[str, Any]:
        # BART's special-token layout, which both the released checkpoints and our tokenizers use.
        return dict(
            num_beams=self.num_beams,
            max_length=self.max_length,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            early_stopping=self.early_stopping,
            length_penalty=self.length_penalty,
            bos_token_id=0,
            decoder_start_token_id=2,
            eos_token_id=2,
            forced_bos_token_id=0,
            forced_eos_token_id=2,
            pad_token_id=1,
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GenerationSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown generation setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class PipelineSettings:
    """What ``pipeline.json`` stores next to a checkpoint."""

    encodec: str = DEFAULT_ENCODEC
    clap: str = DEFAULT_CLAP
    bandwidth: float = 12.0
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    # How clips longer than the encoder's window (max_position_embeddings - 3 frames) are captioned:
    # "truncate" keeps the first window (the reference's behaviour); "windows" captions overlapping
    # windows and keeps the candidate the model finds most likely across all of them.
    long_audio: str = "truncate"
    window_hop_fraction: float = 0.5

    def validate(self) -> None:
        if self.long_audio not in LONG_AUDIO_MODES:
            raise ConfigError(f"long_audio must be one of {LONG_AUDIO_MODES}, got {self.long_audio!r}")
        if not 0 < self.window_hop_fraction <= 1:
            raise ConfigError(f"window_hop_fraction must be in (0, 1], got {self.window_hop_fraction}")

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "PipelineSettings":
        path = Path(directory) / PIPELINE_FILE
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from err
        generation = GenerationSettings.from_dict(raw.pop("generation", {}))
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {unknown}")
        settings = cls(generation=generation, **raw)
        # Audio-model paths saved relative to the checkpoint travel with it.
        for name in ("encodec", "clap"):
            value = getattr(settings, name)
            if not Path(value).is_absolute() and (Path(directory) / value).exists():
                setattr(settings, name, str(Path(directory) / value))
        settings.validate()
        return settings

    def write(self, directory: str | os.PathLike) -> None:
        Path(directory, PIPELINE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass
class CaptionResult:
    """The caption of one input, or why there is none."""

    source: str
    caption: str | None
    error: str | None = None


def resolve_device(device: str | None) -> "torch.device":
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class CaptioningPipeline:
    """Captioner + tokenizer + generation settings (+ feature extractor for audio input)."""

    def __init__(
        self,
        model: "EnClapBartForConditionalGeneration",
        tokenizer: "PreTrainedTokenizerBase",
        features: "FeatureExtractor | None" = None,
        *,
        settings: PipelineSettings | None = None,
        device: str | None = "auto",
        batch_size: int = 16,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.features = features
        self.settings = settings or PipelineSettings()
        self.settings.validate()
        self.batch_size = batch_size
        self.max_frames = int(self.model.config.max_position_embeddings) - 3
        if features is not None and features.num_codebooks != self.model.config.num_rvq:
            raise ConfigError(
                f"the EnCodec tokenizer gives {features.num_codebooks} codebooks but the captioner expects "
                f"{self.model.config.num_rvq} (set bandwidth accordingly: 12 kbps = 16 codebooks)"
            )

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike,
        *,
        clap: str | None = None,
        encodec: str | None = None,
        tokenizer: str | None = None,
        device: str | None = "auto",
        with_audio_models: bool = True,
        batch_size: int = 16,
        generation: dict[str, Any] | None = None,
        long_audio: str | None = None,
    ) -> "CaptioningPipeline":
        """Load a checkpoint directory; arguments given here override what ``pipeline.json`` says.

        ``with_audio_models=False`` skips EnCodec and CLAP, for captioning precomputed features only.
        """
        from .model import load_enclap_model
        from .text import DEFAULT_TOKENIZER, has_tokenizer_files, load_tokenizer

        checkpoint = Path(checkpoint).expanduser()
        model = load_enclap_model(checkpoint)
        settings = PipelineSettings.read(checkpoint) if checkpoint.is_dir() else PipelineSettings()
        if clap:
            settings.clap = clap
        if encodec:
            settings.encodec = encodec
        if generation:
            settings.generation = GenerationSettings.from_dict({**asdict(settings.generation), **generation})
        if long_audio:
            settings.long_audio = long_audio
        settings.validate()
        if tokenizer is None:
            tokenizer = str(checkpoint) if has_tokenizer_files(checkpoint) else DEFAULT_TOKENIZER
        tok = load_tokenizer(tokenizer)
        features = None
        if with_audio_models:
            from .features.extractor import FeatureExtractor

            features = FeatureExtractor.from_pretrained(
                encodec=settings.encodec, clap=settings.clap, bandwidth=settings.bandwidth, device=str(resolve_device(device))
            )
        return cls(model, tok, features, settings=settings, device=device, batch_size=batch_size)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write model, tokenizer and ``pipeline.json`` so :meth:`from_pretrained` restores this pipeline."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.settings.write(directory)

    # ---------------------------------------------------------------------------------- captions
    def caption_features(
        self,
        clips: Sequence["ClipFeatures"],
        *,
        names: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Captions for precomputed features, in input order. ``progress(n)`` is called after each batch.

        Every clip is checked first; a bad one raises :class:`InvalidFeaturesError` naming it by
        ``names[i]`` (e.g. its manifest path) or by its input position.
        """
        for i, clip in enumerate(clips):
            self._check_features(clip, names[i] if names is not None else f"clip {i}")
        if self.settings.long_audio == "windows":
            return self._caption_long(clips, progress)
        order = sorted(range(len(clips)), key=lambda i: -len(clips[i].codes))
        captions: list[str | None] = [None] * len(clips)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            texts = self._generate([clips[i].codes for i in idx], [clips[i].clap for i in idx])
            for i, text in zip(idx, texts):
                captions[i] = text
            if progress:
                progress(len(idx))
        return captions  # type: ignore[return-value]

    def caption_audio(self, waveforms: Sequence[tuple[np.ndarray, int]]) -> list[str]:
        """Captions for ``(mono samples, sample_rate)`` pairs."""
        return self.caption_features(self._require_features().extract(waveforms))

    def caption_files(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        skip_errors: bool = False,
        max_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[CaptionResult]:
        """Caption audio files. With ``skip_errors`` a bad file gives a result with ``error`` set instead of raising."""
        from .audio import load_audio

        extractor = self._require_features()
        results: list[CaptionResult] = []
        for start in range(0, len(paths), self.batch_size):
            chunk = paths[start : start + self.batch_size]
            good: list[int] = []
            audio: list[tuple[np.ndarray, int]] = []
            batch_results = [CaptionResult(str(p), None) for p in chunk]
            for i, path in enumerate(chunk):
                try:
                    audio.append(load_audio(path, max_seconds=max_seconds))
                    good.append(i)
                except AudioError as err:
                    if not skip_errors:
                        raise
                    batch_results[i].error = err.reason
            if audio:
                for i, text in zip(good, self.caption_features(extractor.extract(audio))):
                    batch_results[i].caption = text
            results.extend(batch_results)
            if progress:
                progress(len(chunk))
        return results

    # ---------------------------------------------------------------------------------- internals
    def _check_features(self, clip: "ClipFeatures", name: str) -> None:
        config = self.model.config
        codes, clap = np.asarray(clip.codes), np.asarray(clip.clap)
        if codes.ndim != 2 or codes.shape[1] != config.num_rvq or codes.shape[0] == 0:
            raise InvalidFeaturesError(
                f"{name}: codes must be (frames >= 1, {config.num_rvq} codebooks), got shape {codes.shape}"
            )
        if not np.issubdtype(codes.dtype, np.integer) or codes.min() < 0 or codes.max() >= config.encodec_vocab_size:
            raise InvalidFeaturesError(
                f"{name}: codes must be integers in [0, {config.encodec_vocab_size}), "
                f"got {codes.dtype} in [{codes.min()}, {codes.max()}]"
            )
        if clap.shape != (config.d_clap,):
            raise InvalidFeaturesError(f"{name}: CLAP embedding must have shape ({config.d_clap},), got {clap.shape}")
        if not np.isfinite(clap).all():
            raise InvalidFeaturesError(f"{name}: CLAP embedding holds NaN or infinite values")

    def _require_features(self) -> "FeatureExtractor":
        if self.features is None:
            raise ConfigError("this pipeline was loaded without audio models; load it with with_audio_models=True to caption audio")
        return self.features

    def _encoder_inputs(self, codes: Sequence[np.ndarray], claps: Sequence[np.ndarray]) -> dict[str, "torch.Tensor"]:
        from .model.inputs import build_encoder_inputs

        batch = build_encoder_inputs(list(codes), np.stack(claps), max_frames=self.max_frames, crop="start")
        return {k: v.to(self.device) for k, v in batch.items()}

    def _generate(self, codes: Sequence[np.ndarray], claps: Sequence[np.ndarray]) -> list[str]:
        import torch

        inputs = self._encoder_inputs(codes, claps)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.settings.generation.to_generate_kwargs())
        # Captions are one line of text: collapse any whitespace run (a stray newline token would
        # otherwise break the CSV/TSV outputs and the metrics' tokenizer).
        return [" ".join(t.split()) for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def _caption_long(self, clips: Sequence["ClipFeatures"], progress: Callable[[int], None] | None) -> list[str]:
        """Caption every window of each clip, then keep the candidate most likely across all its windows.

        A clip that fits in one window is captioned exactly as in "truncate" mode. For a longer clip,
        each window (sharing the clip's CLAP embedding) proposes a caption; every candidate is then
        scored by its mean per-token log-likelihood given each window, and the candidate with the best
        average over windows wins, so the caption reflects the whole recording rather than its start.
        """
        from .model.inputs import split_codes_into_windows

        hop = max(1, int(self.max_frames * self.settings.window_hop_fraction))
        captions: list[str] = []
        for clip in clips:
            windows = split_codes_into_windows(clip.codes, self.max_frames, hop)
            candidates: list[str] = []
            for start in range(0, len(windows), self.batch_size):
                part = windows[start : start + self.batch_size]
                candidates.extend(self._generate(part, [clip.clap] * len(part)))
            unique = list(dict.fromkeys(candidates))
            if len(windows) == 1 or len(unique) == 1:
                captions.append(unique[0])
            else:
                scores = self._mean_log_likelihood(windows, clip.clap, unique)
                captions.append(unique[int(np.argmax(scores))])
            if progress:
                progress(1)
        return captions

    def _mean_log_likelihood(self, windows: Sequence[np.ndarray], clap: np.ndarray, candidates: Sequence[str]) -> np.ndarray:
        """Mean over windows of each candidate's per-token log-likelihood; shape (len(candidates),)."""
        import torch

        labels = self.tokenizer(list(candidates), padding=True, return_tensors="pt")["input_ids"].to(self.device)
        labels = labels.masked_fill(labels == self.tokenizer.pad_token_id, -100)
        totals = np.zeros(len(candidates))
        for window in windows:
            inputs = self._encoder_inputs([window] * len(candidates), [clap] * len(candidates))
            with torch.inference_mode():
                logits = self.model(**inputs, labels=labels).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            mask = labels != -100
            token_lp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
            totals += (token_lp.sum(-1) / mask.sum(-1)).cpu().numpy()
        return totals / len(windows)
