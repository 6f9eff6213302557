"""Audio -> captions, batched: the one object that inference, evaluation and the web demo share.

A :class:`CaptioningPipeline` holds the captioner, its tokenizer, generation settings and (optionally)
the feature extractor (EnCodec + CLAP). It captions precomputed features, waveforms or files, in
batches sorted by length, returning captions in input order. There is no other copy of
audio -> caption in the project.

Recordings of any length are read in bounded memory (:class:`PipelineSettings` says what each tower
sees of a long one). :meth:`CaptioningPipeline.caption_timed` captions a recording window by window as
it streams through, each window with its start and end (:class:`TimedCaptionResult`), plus one caption
for the whole recording; :mod:`enclap.caption_formats` writes these as TSV, CSV, JSON, SRT or WebVTT.

A checkpoint directory written by :meth:`CaptioningPipeline.save_pretrained` holds the model
(``config.json`` + weights), the tokenizer and ``pipeline.json`` (which EnCodec / CLAP produced the
features it was trained on, and the generation settings), so that ``from_pretrained(dir)`` needs
nothing else. The checkpoints released with the EnCLAP paper hold only the model; for them the
tokenizer defaults to ``facebook/bart-base`` and the audio models to the ones the paper used.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from .allocator import release_freed_memory
from .audio import open_source
from .errors import AudioError, ConfigError, InvalidFeaturesError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from .audio import AudioSource
    from .features.extractor import ClipFeatures, FeatureExtractor
    from .model import EnClapBartForConditionalGeneration

logger = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"
DEFAULT_ENCODEC = "facebook/encodec_24khz"
DEFAULT_CLAP = "laion/clap-htsat-fused"
LONG_AUDIO_MODES = ("truncate", "windows")
# The whole-recording choice scores every candidate against every window: hand the decoder passes' freed
# memory back to the kernel this often (a heap walk costs milliseconds; a window's scoring, seconds).
TRIM_EVERY_WINDOWS = 8


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
    # Recordings up to this long are read whole, so both towers see all of it exactly as the feature
    # extraction (and the reference) does: the CLAP embedding of a 30 s Clotho clip stays that of the
    # whole clip. Longer recordings are never held in memory: "truncate" reads only their first
    # max(whole_clip_seconds, encoder window) seconds, "windows" streams them window by window.
    whole_clip_seconds: float = 30.0

    def validate(self) -> None:
        if self.long_audio not in LONG_AUDIO_MODES:
            raise ConfigError(f"long_audio must be one of {LONG_AUDIO_MODES}, got {self.long_audio!r}")
        if not 0 < self.window_hop_fraction <= 1:
            raise ConfigError(f"window_hop_fraction must be in (0, 1], got {self.window_hop_fraction}")
        if not self.whole_clip_seconds >= 0:
            raise ConfigError(f"whole_clip_seconds must be >= 0, got {self.whole_clip_seconds}")

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


@dataclass
class WindowCaption:
    """The caption of one window of a recording; ``start`` and ``end`` in seconds from its beginning."""

    start: float
    end: float
    caption: str


@dataclass
class TimedCaptionResult:
    """Captions of one recording, window by window, and the one caption chosen for all of it.

    ``caption`` is the window caption the model finds most likely across all windows (as
    ``long_audio="windows"`` chooses); ``duration`` is the recording's length in seconds. When the
    input could not be read, ``error`` says why; windows captioned before a fault part-way through
    the file are kept.
    """

    source: str
    caption: str | None
    windows: list[WindowCaption]
    duration: float | None
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

    @property
    def window_seconds(self) -> float:
        """The encoder's window in seconds: the longest stretch one caption hears (13.6 s for EnCLAP's models)."""
        return self.max_frames / self._require_features().codec.frame_rate

    def caption_audio(self, waveforms: Sequence[tuple[np.ndarray, int]]) -> list[str]:
        """Captions for ``(mono samples, sample_rate)`` pairs, exactly as :meth:`caption_files` captions files.

        Raises :class:`~enclap.errors.AudioError` naming ``waveform {i}`` for an input that is not usable audio.
        """
        return [r.caption for r in self._caption_sources(list(waveforms), skip_errors=False)]  # type: ignore[misc]

    def caption_files(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        skip_errors: bool = False,
        max_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[CaptionResult]:
        """Caption audio files. With ``skip_errors`` a bad file gives a result with ``error`` set instead of raising.

        Memory does not grow with a file's length: a recording longer than ``whole_clip_seconds`` is
        never read whole (see :class:`PipelineSettings`). ``max_seconds`` captions only each file's start.
        """
        return self._caption_sources(list(paths), skip_errors=skip_errors, max_seconds=max_seconds, progress=progress)

    def caption_timed(
        self,
        sources: Sequence[str | os.PathLike | tuple[np.ndarray, int]],
        window: float | None = None,
        hop: float | None = None,
        progress: bool = False,
    ) -> list[TimedCaptionResult]:
        """Caption every window of each recording (files or ``(samples, rate)`` pairs) as it streams through.

        Windows are ``window`` seconds long (default: the encoder's window, :attr:`window_seconds`) and
        start every ``hop`` seconds (default: ``window``, so they tile the recording); the last one is
        aligned to the end of the recording, and a recording shorter than a window is one window. Each
        window gets its own EnCodec codes, CLAP embedding and caption: the window's caption is exactly
        that of the window cut out and captioned alone. The recording's ``caption`` is the window
        caption with the best mean log-likelihood across all windows. Only one batch of windows of audio
        is held at a time (plus each window's codes and embedding, a few kB), so memory does not grow
        with the recording. Recordings are captioned one after another and never batched together, so a
        recording's captions do not depend on the others. A bad input gives a result with ``error`` set
        (never an exception); ``progress`` shows a progress bar per recording of more than one window.
        """
        window_s, hop_s = self._window_and_hop(window, hop)
        results = []
        for index, item in enumerate(sources):
            name = f"waveform {index}" if isinstance(item, tuple) else str(item)
            result = TimedCaptionResult(name, None, [], None)
            try:
                self._caption_stream(open_source(item, index), window_s, hop_s, result, progress=progress)
            except AudioError as err:
                result.error = err.reason
            results.append(result)
        return results

    def _window_and_hop(self, window: float | None, hop: float | None) -> tuple[float, float]:
        window_s = self.window_seconds if window is None else float(window)
        hop_s = window_s if hop is None else float(hop)
        if not (window_s > 0 and hop_s > 0 and np.isfinite(window_s) and np.isfinite(hop_s)):
            raise ConfigError(f"window and hop must be positive numbers of seconds, got {window} and {hop}")
        if window_s > self.window_seconds + 1e-6:
            logger.warning(
                "window %.2f s is longer than the encoder's %.2f s: each window's caption hears its codes' first %.2f s "
                "(its CLAP embedding all of it)", window_s, self.window_seconds, self.window_seconds,
            )
        return window_s, hop_s

    def _caption_sources(
        self,
        sources: list,
        *,
        skip_errors: bool,
        max_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[CaptionResult]:
        """Captions of files or ``(samples, rate)`` pairs in the pipeline's ``long_audio`` mode, in input order.

        Recordings up to ``whole_clip_seconds`` (after ``max_seconds``) are read whole and batched. A
        longer one is read only as far as "truncate" uses it, or streamed window by window by "windows".
        """
        extractor = self._require_features()
        window_s = self.window_seconds
        # What truncate mode reads of a long recording: whatever CLAP's context is, never less than the
        # encoder's window (plus a second, so the codec's last kept frames do not see an artificial end).
        truncate_seconds = max(self.settings.whole_clip_seconds, window_s + 1.0)
        if max_seconds is not None:
            truncate_seconds = min(truncate_seconds, max_seconds)
        results: list[CaptionResult] = []
        for start in range(0, len(sources), self.batch_size):
            chunk = sources[start : start + self.batch_size]
            batch_results = [
                CaptionResult(f"waveform {start + i}" if isinstance(item, tuple) else str(item), None)
                for i, item in enumerate(chunk)
            ]
            whole: list[int] = []
            audio: list[tuple[np.ndarray, int]] = []
            for i, item in enumerate(chunk):
                try:
                    source = open_source(item, start + i)
                    duration = source.duration if max_seconds is None else min(source.duration, max_seconds)
                    if self.settings.long_audio == "windows" and duration > self.settings.whole_clip_seconds:
                        timed = TimedCaptionResult(source.name, None, [], None)
                        hop_s = window_s * self.settings.window_hop_fraction
                        self._caption_stream(source, window_s, hop_s, timed, max_seconds=max_seconds)
                        batch_results[i].caption = timed.caption
                        continue
                    limit = truncate_seconds if self.settings.long_audio == "truncate" else max_seconds
                    audio.append((source.read(limit if duration > (limit or np.inf) else None), source.sample_rate))
                    whole.append(i)
                except AudioError as err:
                    if not skip_errors:
                        raise
                    batch_results[i].error = err.reason
            if audio:
                for i, text in zip(whole, self.caption_features(extractor.extract(audio))):
                    batch_results[i].caption = text
            results.extend(batch_results)
            if progress:
                progress(len(chunk))
        return results

    def _caption_stream(
        self,
        source: "AudioSource",
        window_s: float,
        hop_s: float,
        result: TimedCaptionResult,
        *,
        progress: bool = False,
        max_seconds: float | None = None,
    ) -> None:
        """Fill ``result`` with the window captions of ``source`` and its most likely caption, streaming it.

        Windows are appended as they are captioned, so a fault part-way through the file (raised as
        :class:`AudioError`) leaves the windows before it in ``result``.
        """
        import sys

        from tqdm import tqdm

        from .audio import stream_windows, window_count

        extractor = self._require_features()
        rate = source.sample_rate
        win = max(1, int(round(window_s * rate)))
        hop = max(1, int(round(hop_s * rate)))
        frames = source.frames if max_seconds is None else min(source.frames, int(math.ceil(max_seconds * rate)))
        blocks = source.blocks()
        if max_seconds is not None:
            blocks = _first_samples(blocks, frames)
        expected = window_count(frames, win, hop)
        features: list["ClipFeatures"] = []  # codes + CLAP embedding of each window: a few kB, not its audio
        pending: list[tuple[int, np.ndarray]] = []
        end = 0
        bar = tqdm(
            total=expected, desc=Path(source.name).name, unit="window", leave=False, file=sys.stderr,
            disable=not progress or expected < 2,
        )

        # The audio models' activations grow with the audio they are given at once: extract at most
        # whole_clip_seconds of windows per call (what a whole clip costs), and batch only the generation.
        per_extract = max(1, int(self.settings.whole_clip_seconds // max(window_s, 1e-9)))

        def caption_pending() -> None:
            clips = []
            for first in range(0, len(pending), per_extract):
                clips.extend(extractor.extract([(samples, rate) for _, samples in pending[first : first + per_extract]]))
            texts = self._generate([c.codes for c in clips], [c.clap for c in clips])
            for (first, samples), clip, text in zip(pending, clips, texts):
                result.windows.append(WindowCaption(first / rate, (first + len(samples)) / rate, text))
                features.append(clip)
            bar.update(len(pending))
            pending.clear()
            release_freed_memory()  # see enclap/allocator.py: otherwise the peak creeps up with the file's length

        with bar:
            for first, samples in stream_windows(blocks, win, hop):
                pending.append((first, samples))
                end = max(end, first + len(samples))
                if len(pending) == self.batch_size:
                    caption_pending()
            if pending:
                caption_pending()
        result.duration = end / rate
        result.caption = self._most_likely_caption(
            [c.codes for c in features], [c.clap for c in features], [w.caption for w in result.windows]
        )

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
            captions.append(self._most_likely_caption(windows, [clip.clap] * len(windows), candidates))
            if progress:
                progress(1)
        return captions

    def _most_likely_caption(
        self, codes: Sequence[np.ndarray], claps: Sequence[np.ndarray], candidates: Sequence[str]
    ) -> str:
        """Of the windows' own captions, the one with the best mean log-likelihood over all windows."""
        unique = list(dict.fromkeys(candidates))
        if len(unique) == 1:
            return unique[0]
        return unique[int(np.argmax(self._mean_log_likelihood(codes, claps, unique)))]

    def _mean_log_likelihood(
        self, windows: Sequence[np.ndarray], claps: Sequence[np.ndarray], candidates: Sequence[str]
    ) -> np.ndarray:
        """Mean over windows of each candidate's mean per-token log-likelihood given that window's codes
        and CLAP embedding; shape (len(candidates),).

        Each window is encoded once; the candidates are decoded against it ``batch_size`` at a time, so
        memory stays at one batch of logits however many windows and candidates there are.
        """
        import torch

        labels = self.tokenizer(list(candidates), padding=True, return_tensors="pt")["input_ids"].to(self.device)
        labels = labels.masked_fill(labels == self.tokenizer.pad_token_id, -100)
        totals = np.zeros(len(candidates))
        for done, (window, clap) in enumerate(zip(windows, claps)):
            if done and done % TRIM_EVERY_WINDOWS == 0:
                release_freed_memory()  # thousands of decoder passes leave free holes resident (enclap/allocator.py)
            inputs = self._encoder_inputs([window], [clap])
            with torch.inference_mode():
                encoded = self.model.get_encoder()(
                    input_ids=inputs["input_ids"], clap_embedding=inputs["clap_embedding"],
                    encodec_mask=inputs["encodec_mask"], attention_mask=inputs["attention_mask"],
                ).last_hidden_state
                for start in range(0, len(candidates), self.batch_size):
                    part = labels[start : start + self.batch_size]
                    count = part.shape[0]
                    logits = self.model(
                        attention_mask=inputs["attention_mask"].expand(count, -1),
                        encoder_outputs=(encoded.expand(count, -1, -1),),
                        labels=part,
                    ).logits
                    logp = torch.log_softmax(logits.float(), dim=-1)
                    mask = part != -100
                    token_lp = logp.gather(-1, part.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
                    totals[start : start + count] += (token_lp.sum(-1) / mask.sum(-1)).cpu().numpy()
        return totals / len(windows)


def _first_samples(blocks: Iterator[np.ndarray], count: int) -> Iterator[np.ndarray]:
    """The blocks cut off after ``count`` samples in all."""
    seen = 0
    for block in blocks:
        if seen >= count:
            return
        yield block[: count - seen]
        seen += len(block)
