"""A synthetic captioned sound-scene data set, generated deterministically from a seed.

No public registry carries audio with captions, so the demo and the end-to-end tests use this one. Each
clip is a small scene of procedural sources -- beeps, chirps, sirens, noise bursts, steady hiss, ticking,
knocks, bells, electrical hum -- that vary in kind, number of repetitions, pitch, loudness, speed, timing,
order ("followed by") and overlap ("while"). Every clip gets several reference captions, paraphrased from
templates with synonyms, and every paraphrase states the same audible facts: which sources, in which order,
what overlaps, and each source's loudness (when loud or faint), pitch, speed, direction or count. The
captions therefore depend on the audio, and a captioner that ignores the audio scores clearly lower
(``tests/data/test_synthetic.py`` measures this with a nearest-neighbour retrieval baseline).

Output, in EnCLAP's manifest format so the same CSVs serve audio and features::

    <out>/audio/{train,valid,test}/clip_0001.wav
    <out>/csv/train.csv      file_path,caption                (one row per caption)
    <out>/csv/{valid,test}.csv  file_path,caption_1..caption_N (one row per clip)
    <out>/meta/{split}.jsonl the scene behind every clip (sources, times, attributes)
    <out>/labels/{split}.csv file,label: the source kind of every single-source clip (for zero-shot
                             classification; ``file`` like ``test/clip_0003.wav``, relative to ``audio/``)

with ``file_path`` like ``train/clip_0001.npy``. Each clip is drawn from its own random stream seeded by
``(seed, split, index)``, so the same config gives byte-identical files, and growing a split keeps the
clips it already had. Files whose content is already right are not rewritten.

Command line: ``python -m enclap.data.synthetic OUT_DIR [key=value ...]``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .manifest import CaptionedClip, write_eval_manifest, write_train_manifest

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_SPLIT_STREAM = {"train": 0, "valid": 1, "test": 2}

# Sources that make a scene's main events, and those that can run underneath them all clip long.
FOREGROUND_KINDS = ("beep", "chirp", "siren", "burst", "knock", "bell", "ticking")
BACKGROUND_KINDS = ("hum", "hiss", "ticking")
SOURCE_KINDS = tuple(dict.fromkeys(FOREGROUND_KINDS + BACKGROUND_KINDS))
STRUCTURES = ("single", "sequence", "overlap", "sequence_over_background")

# Class names of the source kinds in the label CSVs (the words the captions use for them), for
# zero-shot classification: "This is the sound of {label}".
KIND_LABELS = {
    "beep": "beeping", "chirp": "chirp", "siren": "siren", "burst": "burst of noise", "knock": "knocking",
    "bell": "bell", "ticking": "clock ticking", "hum": "electrical hum", "hiss": "steady hiss",
}

# Peak level ranges of the loudness classes; far enough apart that "loud" and "faint" are unmistakable.
_PEAK = {"loud": (0.55, 0.7), "normal": (0.18, 0.26), "faint": (0.03, 0.045)}


@dataclass
class SyntheticConfig:
    """Size and rendering of the synthetic data set (a structured config: every field has a plain type)."""

    num_train: int = 240
    num_valid: int = 40
    num_test: int = 40
    seconds: float = 5.0  # length of every clip
    sample_rate: int = 24000  # EnCodec's rate, so extraction resamples only for CLAP
    captions_per_clip: int = 5
    seed: int = 0
    subtype: str = "PCM_16"  # WAV sample format (soundfile subtype)
    structure_weights: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25, 0.25])  # order of STRUCTURES

    def validate(self) -> None:
        for name in ("num_train", "num_valid", "num_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_train + self.num_valid + self.num_test == 0:
            raise ValueError("the data set would be empty: num_train + num_valid + num_test is 0")
        if not 3.0 <= self.seconds <= 60.0:
            raise ValueError(f"seconds must be in [3, 60] (scenes need room for two events), got {self.seconds}")
        if not 8000 <= self.sample_rate <= 96000:
            raise ValueError(f"sample_rate must be in [8000, 96000], got {self.sample_rate}")
        if self.captions_per_clip < 1:
            raise ValueError(f"captions_per_clip must be >= 1, got {self.captions_per_clip}")
        if len(self.structure_weights) != len(STRUCTURES) or min(self.structure_weights) < 0 or sum(self.structure_weights) <= 0:
            raise ValueError(
                f"structure_weights must be {len(STRUCTURES)} non-negative weights (for {', '.join(STRUCTURES)}) "
                f"with a positive sum, got {list(self.structure_weights)}"
            )


# ------------------------------------------------------------------------------------------------ scenes


@dataclass(frozen=True)
class SoundEvent:
    """One source in a scene: what it is, when it sounds, and the attributes a caption states."""

    kind: str
    start: float  # seconds
    end: float
    loudness: str  # "loud" | "normal" | "faint"
    pitch: str | None = None  # "high" | "low": beep, bell
    rate: str | None = None  # "rapid" | "slow": ticking
    direction: str | None = None  # "rising" | "falling": chirp
    count: int | None = None  # beeps, knocks
    background: bool = False


@dataclass(frozen=True)
class Scene:
    """The events of a clip; ``events`` are in time order with the background (if any) last."""

    structure: str
    events: tuple[SoundEvent, ...]

    @property
    def foreground(self) -> tuple[SoundEvent, ...]:
        return tuple(e for e in self.events if not e.background)

    @property
    def background(self) -> SoundEvent | None:
        return next((e for e in self.events if e.background), None)


def _pick(rng: np.random.Generator, options: Sequence, p: Sequence[float] | None = None):
    return options[int(rng.choice(len(options), p=p))]


def _natural_duration(kind: str, rng: np.random.Generator, count: int | None) -> float:
    """How long a source of this kind lasts when nothing constrains it (seconds)."""
    if kind == "beep":
        return count * 0.2 + (count - 1) * 0.2
    if kind == "knock":
        return count * 0.24
    low, high = {
        "chirp": (0.5, 1.2), "siren": (1.5, 2.3), "burst": (0.25, 0.6), "bell": (1.3, 2.0),
        "ticking": (1.5, 2.3), "hum": (2.5, 4.0), "hiss": (2.5, 4.0),
    }[kind]
    return float(rng.uniform(low, high))


def _attributes(kind: str, rng: np.random.Generator) -> dict:
    if kind == "beep":
        return {"pitch": _pick(rng, ("high", "low")), "count": int(rng.integers(1, 4))}
    if kind == "bell":
        return {"pitch": _pick(rng, ("high", "low"))}
    if kind == "ticking":
        return {"rate": _pick(rng, ("rapid", "slow"))}
    if kind == "chirp":
        return {"direction": _pick(rng, ("rising", "falling"))}
    if kind == "knock":
        return {"count": int(rng.integers(2, 5))}
    return {}


def _event_in(kind: str, rng: np.random.Generator, lo: float, hi: float, loudness: str, background: bool = False) -> SoundEvent:
    """An event of ``kind`` placed at a random time inside [lo, hi] (shortened to fit when needed)."""
    attrs = _attributes(kind, rng)
    duration = min(_natural_duration(kind, rng, attrs.get("count")), hi - lo)
    start = lo + float(rng.uniform(0.0, max(0.0, hi - lo - duration)))
    return SoundEvent(kind, round(start, 4), round(start + duration, 4), loudness, background=background, **attrs)


def sample_scene(rng: np.random.Generator, seconds: float, structure_weights: Sequence[float] | None = None) -> Scene:
    """Draw a scene for a clip of ``seconds``: its structure, sources, attributes and timing."""
    weights = np.asarray(structure_weights if structure_weights is not None else [1.0] * len(STRUCTURES), dtype=float)
    structure = _pick(rng, STRUCTURES, weights / weights.sum())
    margin, gap = 0.15, 0.25
    fg_loudness = ("loud", "normal", "faint"), [0.3, 0.45, 0.25]
    if structure == "single":
        kind = _pick(rng, SOURCE_KINDS)
        return Scene(structure, (_event_in(kind, rng, margin, seconds - margin, _pick(rng, *fg_loudness)),))
    if structure == "sequence":
        first, second = rng.choice(len(FOREGROUND_KINDS), size=2, replace=False)
        half = seconds / 2
        events = (
            _event_in(FOREGROUND_KINDS[first], rng, margin, half - gap / 2, _pick(rng, *fg_loudness)),
            _event_in(FOREGROUND_KINDS[second], rng, half + gap / 2, seconds - margin, _pick(rng, *fg_loudness)),
        )
        return Scene(structure, events)
    # Both remaining structures run a background source nearly the whole clip, so it is heard alone at
    # the start and the end, and keep it at normal or faint level so the foreground stays audible.
    bg_kind = _pick(rng, BACKGROUND_KINDS)
    bg_start, bg_end = float(rng.uniform(0.0, 0.3)), float(seconds - rng.uniform(0.0, 0.3))
    bg_attrs = _attributes(bg_kind, rng)
    background = SoundEvent(
        bg_kind, round(bg_start, 4), round(bg_end, 4), _pick(rng, ("normal", "faint"), [0.6, 0.4]), background=True, **bg_attrs
    )
    # A noise burst over hiss or ticking over ticking would be the same sound twice.
    allowed = [k for k in FOREGROUND_KINDS if k != bg_kind and not (bg_kind == "hiss" and k == "burst")]
    fg_over_bg = ("loud", "normal"), [0.4, 0.6]
    inner_lo, inner_hi = 0.7, seconds - 0.7
    if structure == "overlap":
        kind = _pick(rng, allowed)
        return Scene(structure, (_event_in(kind, rng, inner_lo, inner_hi, _pick(rng, *fg_over_bg)), background))
    first, second = rng.choice(len(allowed), size=2, replace=False)
    mid = (inner_lo + inner_hi) / 2
    events = (
        _event_in(allowed[first], rng, inner_lo, mid - gap / 2, _pick(rng, *fg_over_bg)),
        _event_in(allowed[second], rng, mid + gap / 2, inner_hi, _pick(rng, *fg_over_bg)),
        background,
    )
    return Scene(structure, events)


# --------------------------------------------------------------------------------------------- rendering


def _fade(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    """Raised-cosine attack and release so that no source starts or stops with a click of its own."""
    env = np.ones(n)
    a, r = min(n // 2, int(attack * sr)), min(n // 2, int(release * sr))
    if a > 0:
        env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    if r > 0:
        env[n - r :] = 0.5 + 0.5 * np.cos(np.pi * np.arange(1, r + 1) / r)
    return env


def _place(out: np.ndarray, signal: np.ndarray, at: int) -> None:
    end = min(len(out), at + len(signal))
    if end > at >= 0:
        out[at:end] += signal[: end - at]


def _damped(sr: int, freq: float, tau: float, length: float) -> np.ndarray:
    t = np.arange(int(length * sr)) / sr
    return np.sin(2 * np.pi * freq * t) * np.exp(-t / tau)


def _lowpass(x: np.ndarray, sr: int, cutoff: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    return sosfilt(butter(2, min(cutoff, 0.45 * sr), btype="low", fs=sr, output="sos"), x)


def _bandpass(x: np.ndarray, sr: int, low: float, high: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    return sosfilt(butter(2, [low, min(high, 0.45 * sr)], btype="band", fs=sr, output="sos"), x)


def _render_event(event: SoundEvent, sr: int, rng: np.random.Generator) -> np.ndarray:
    """The source alone, peak-normalised to 1, lasting ``end - start`` seconds."""
    n = max(1, int(round((event.end - event.start) * sr)))
    t = np.arange(n) / sr
    kind = event.kind
    if kind == "beep":
        freq = rng.uniform(1400, 2200) if event.pitch == "high" else rng.uniform(220, 380)
        count = event.count or 1
        slot = n / count
        beep_len = int(min(0.2 * sr, slot * 0.55))
        out = np.zeros(n)
        tb = np.arange(beep_len) / sr
        tone = (np.sin(2 * np.pi * freq * tb) + 0.25 * np.sin(4 * np.pi * freq * tb)) * _fade(beep_len, sr, 0.006, 0.006)
        for i in range(count):
            _place(out, tone, int(i * slot))
    elif kind == "chirp":
        f0, f1 = rng.uniform(300, 500), rng.uniform(1800, 3000)
        if event.direction == "falling":
            f0, f1 = f1, f0
        duration = n / sr
        k = math.log(f1 / f0)
        phase = 2 * np.pi * f0 * duration / k * (np.exp(t / duration * k) - 1)
        out = np.sin(phase) * _fade(n, sr, 0.01, 0.02)
    elif kind == "siren":
        centre, depth, rate = rng.uniform(650, 950), rng.uniform(180, 280), rng.uniform(0.6, 1.0)
        inst = centre + depth * np.sin(2 * np.pi * rate * t - np.pi / 2)
        phase = 2 * np.pi * np.cumsum(inst) / sr
        out = sum(np.sin(h * phase) / h for h in (1, 2, 3)) * _fade(n, sr, 0.08, 0.15)
    elif kind == "burst":
        noise = rng.standard_normal(n)
        low = rng.uniform(300, 1200)
        noise = _bandpass(noise, sr, low, low * rng.uniform(4, 8))
        out = noise * np.exp(-t / (n / sr / 3)) * _fade(n, sr, 0.004, 0.03)
    elif kind == "hiss":
        out = _lowpass(rng.standard_normal(n), sr, rng.uniform(3000, 6000)) * _fade(n, sr, 0.25, 0.25)
    elif kind == "ticking":
        rate = rng.uniform(7.0, 10.0) if event.rate == "rapid" else rng.uniform(1.6, 2.4)
        freq = rng.uniform(2500, 4000)
        tick = _damped(sr, freq, 0.0025, 0.02)
        out = np.zeros(n)
        period = 1.0 / rate
        for i in range(int((n / sr) * rate) + 1):
            at = i * period + rng.uniform(-0.08, 0.08) * period
            _place(out, tick, int(max(0.0, at) * sr))
    elif kind == "knock":
        count = event.count or 2
        slot = n / count
        out = np.zeros(n)
        for i in range(count):
            freq = rng.uniform(90, 170)
            body = _damped(sr, freq, 0.03, 0.15)
            click = _lowpass(rng.standard_normal(len(body)), sr, 2500) * np.exp(-np.arange(len(body)) / (0.004 * sr))
            _place(out, body + 0.4 * click, int(i * slot))
    elif kind == "bell":
        f0 = rng.uniform(900, 1300) if event.pitch == "high" else rng.uniform(200, 330)
        tau = (n / sr) / 3.5
        out = np.zeros(n)
        # Inharmonic partials with faster decay higher up: what makes a struck bar or bell sound struck.
        for ratio, amp, k in ((1.0, 1.0, 1.0), (2.0, 0.6, 1.4), (2.76, 0.4, 1.8), (5.4, 0.25, 2.6), (8.93, 0.15, 3.4)):
            if f0 * ratio < 0.45 * sr:
                out += amp * np.sin(2 * np.pi * f0 * ratio * t + rng.uniform(0, 2 * np.pi)) * np.exp(-t * k / tau)
        out *= _fade(n, sr, 0.002, 0.05)
    elif kind == "hum":
        f0 = _pick(rng, (50.0, 60.0))
        out = sum(
            a * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi))
            for h, a in ((1, 1.0), (2, 0.5), (3, 0.7), (4, 0.3), (5, 0.3), (6, 0.15), (7, 0.12))
        )
        out = out * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 0.5) * t)) * _fade(n, sr, 0.2, 0.2)
    else:
        raise ValueError(f"unknown source kind '{kind}' (known: {', '.join(SOURCE_KINDS)})")
    peak = float(np.abs(out).max())
    return out / peak if peak > 0 else out


def render_scene(scene: Scene, seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Mix the events of ``scene`` into a mono float32 clip of ``seconds`` at ``sample_rate``."""
    mix = np.zeros(int(round(seconds * sample_rate)))
    for event in scene.events:
        signal = _render_event(event, sample_rate, rng) * rng.uniform(*_PEAK[event.loudness])
        _place(mix, signal, int(round(event.start * sample_rate)))
    peak = float(np.abs(mix).max())
    if peak > 0.95:  # overlapping loud sources: scale the whole clip rather than clip it
        mix *= 0.95 / peak
    return mix.astype(np.float32)


# ---------------------------------------------------------------------------------------------- captions

_NUMBER = {2: "two", 3: "three", 4: "four"}
_TIMES = {1: "once", 2: "twice", 3: "three times", 4: "four times"}
_LOUD_ADJ = {"loud": ("loud",), "faint": ("faint", "quiet", "soft"), "normal": ("",)}
_LOUD_ADV = {"loud": ("loudly",), "faint": ("faintly", "quietly", "softly"), "normal": ("",)}
_PITCH_ADJ = {"high": ("high-pitched", "high"), "low": ("low-pitched", "low", "deep")}
_BELL_PITCH = {"high": ("high-pitched", "high"), "low": ("low", "deep")}
_RATE_ADJ = {"rapid": ("rapid", "fast"), "slow": ("slow",)}
_RATE_ADV = {"rapid": ("rapidly", "quickly"), "slow": ("slowly",)}
_DIRECTION_ADJ = {"rising": ("rising", "upward"), "falling": ("falling", "downward")}
_DIRECTION_VP = {"rising": ("rises in pitch", "sweeps upward"), "falling": ("falls in pitch", "sweeps downward")}


def _words(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _a(phrase: str) -> str:
    """Indefinite article + phrase ("an electrical hum", "a loud siren")."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


@dataclass(frozen=True)
class _NounPhrase:
    text: str
    plural: bool = False

    @property
    def be(self) -> str:
        return "are" if self.plural else "is"


def _phrases(e: SoundEvent) -> tuple[list[_NounPhrase], list[str]]:
    """(noun phrases, clauses) that each state every attribute of ``e``; paraphrases of one another."""
    nps: list[_NounPhrase] = []
    cls: list[str] = []
    for adj in _LOUD_ADJ[e.loudness]:
        for adv in _LOUD_ADV[e.loudness]:
            if e.kind == "beep":
                for p in _PITCH_ADJ[e.pitch]:
                    if e.count == 1:
                        nps += [_NounPhrase(_a(_words(adj, p, "beep"))), _NounPhrase(_a(_words(adj, p, "tone")))]
                        cls += [_a(_words(adj, p, "tone")) + " beeps", _a(_words(adj, p, "beep")) + " sounds"]
                    else:
                        nps += [_NounPhrase(_words(_NUMBER[e.count], adj, p, "beeps"), True)]
                        cls += [_words(_a(_words(adj, p, "tone")), "beeps", _TIMES[e.count]),
                                _words(_NUMBER[e.count], adj, p, "beeps sound")]
            elif e.kind == "chirp":
                for d in _DIRECTION_ADJ[e.direction]:
                    nps += [_NounPhrase(_a(_words(adj, d, "chirp"))), _NounPhrase(_a(_words(adj, d, "sweep")))]
                for vp in _DIRECTION_VP[e.direction]:
                    cls += [_words(_a(_words(adj, "chirp")), vp), _words(_a(_words(adj, "tone")), vp)]
            elif e.kind == "siren":
                nps += [_NounPhrase(_a(_words(adj, "siren"))), _NounPhrase(_a(_words(adj, "wailing siren")))]
                cls += [_a(_words(adj, "siren")) + " wails", _words("a siren wails", adv)]
            elif e.kind == "burst":
                for noun in ("burst of noise", "burst of static", "noise burst"):
                    nps.append(_NounPhrase(_a(_words(adj, noun))))
                    cls.append(_a(_words(adj, noun)) + " sounds")
            elif e.kind == "hiss":
                nps += [_NounPhrase(_a(_words(adj, "steady hiss"))), _NounPhrase(_words(adj, "static")),
                        _NounPhrase(_words(adj, "white noise"))]
                cls += [_words(adj, "static hisses"), _words("noise hisses", adv), _a(_words(adj, "steady hiss")) + " plays"]
            elif e.kind == "ticking":
                for r in _RATE_ADJ[e.rate]:
                    nps.append(_NounPhrase(_words(adj, r, "ticking")))
                    cls.append(_words(adj, r, "ticking is heard"))
                for r in _RATE_ADV[e.rate]:
                    nps.append(_NounPhrase(_a(_words(adj, "clock ticking", r))))
                    cls.append(_words(_a(_words(adj, "clock")), "ticks", r))
            elif e.kind == "knock":
                nps += [_NounPhrase(_words(_NUMBER[e.count], adj, "knocks"), True),
                        _NounPhrase(_words(_NUMBER[e.count], adj, "knocks on a door"), True)]
                cls += [_words("someone knocks", adv, _TIMES[e.count]), _words(_a(_words(adj, "knock")), "sounds", _TIMES[e.count])]
            elif e.kind == "bell":
                for p in _BELL_PITCH[e.pitch]:
                    nps += [_NounPhrase(_a(_words(adj, p, "bell"))), _NounPhrase(_a(_words(adj, p, "chime")))]
                    cls += [_a(_words(adj, p, "bell")) + " rings", _a(_words(adj, p, "chime")) + " rings"]
            elif e.kind == "hum":
                nps += [_NounPhrase(_a(_words(adj, "electrical hum"))), _NounPhrase(_a(_words(adj, "low hum")))]
                cls += [_a(_words(adj, "motor")) + " hums", _words("electricity hums", adv), _a(_words(adj, "machine")) + " hums"]
            else:
                raise ValueError(f"unknown source kind '{e.kind}'")
    return list(dict.fromkeys(nps)), list(dict.fromkeys(cls))


def _templates(scene: Scene) -> list[list[str]]:
    """For each sentence template, every caption it yields for ``scene`` (all true of the audio)."""
    fg = scene.foreground
    bg = scene.background
    if scene.structure == "single":
        nps, cls = _phrases(fg[0])
        return [cls, [f"{n.text} {n.be} heard" for n in nps], [f"{n.text} can be heard" for n in nps]]
    if scene.structure == "sequence":
        (na, ca), (nb, cb) = _phrases(fg[0]), _phrases(fg[1])
        return [
            [f"{a}, followed by {b.text}" for a in ca for b in nb],
            [f"{a}, then {b}" for a in ca for b in cb],
            [f"{a.text} and then {b.text}" for a in na for b in nb],
            [f"first {a}, then {b}" for a in ca for b in cb],
            [f"{b} after {a.text}" for a in na for b in cb],
        ]
    ng, cg = _phrases(bg)
    if scene.structure == "overlap":
        nf, cf = _phrases(fg[0])
        return [
            [f"{f} while {g}" for f in cf for g in cg],
            [f"{f.text} over {g.text}" for f in nf for g in ng],
            [f"{f} as {g}" for f in cf for g in cg],
            [f"{f.text} with {g.text} in the background" for f in nf for g in ng],
            [f"{g} while {f}" for f in cf for g in cg],
        ]
    (na, ca), (nb, cb) = _phrases(fg[0]), _phrases(fg[1])
    return [
        [f"{a}, followed by {b.text}, while {g}" for a in ca for b in nb for g in cg],
        [f"{a.text} and then {b.text} over {g.text}" for a in na for b in nb for g in ng],
        [f"{a}, then {b}, while {g}" for a in ca for b in cb for g in cg],
        [f"{g} as {a.text} {a.be} followed by {b.text}" for a in na for b in nb for g in cg],
        [f"first {a}, then {b}, with {g.text} in the background" for a in ca for b in cb for g in ng],
    ]


def _sentence(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text[:1].upper() + text[1:]


def describe_scene(scene: Scene, num_captions: int, rng: np.random.Generator) -> tuple[str, ...]:
    """``num_captions`` distinct paraphrases of what is audible in ``scene``, cycling through templates."""
    pools = [sorted({_sentence(c) for c in pool}) for pool in _templates(scene)]
    order = [int(i) for i in rng.permutation(len(pools))]
    chosen: list[str] = []
    for i in range(num_captions):
        pool = pools[order[i % len(order)]]
        # Prefer an unused sentence of this template, then any unused one; repeat only when all are used.
        fresh = [c for c in pool if c not in chosen] or [c for p in pools for c in p if c not in chosen] or pool
        chosen.append(fresh[int(rng.integers(len(fresh)))])
    return tuple(chosen)


# --------------------------------------------------------------------------------------------- data set


@dataclass(frozen=True)
class SyntheticClip:
    """One generated clip: where it goes, its samples, its captions and the scene behind them."""

    file_path: str
    audio: np.ndarray
    captions: tuple[str, ...]
    scene: Scene


def clip_name(split: str, index: int, total: int) -> str:
    """``'train/clip_0001'``: 1-based, zero-padded to at least 4 digits."""
    return f"{split}/clip_{index + 1:0{max(4, len(str(total)))}d}"


def make_clip(config: SyntheticConfig, split: str, index: int) -> SyntheticClip:
    """Clip ``index`` of ``split``: a pure function of (seed, split, index) and the rendering settings."""
    if split not in _SPLIT_STREAM:
        raise ValueError(f"unknown split '{split}' (expected one of {', '.join(SPLITS)})")
    rng = np.random.default_rng([config.seed, _SPLIT_STREAM[split], index])
    scene = sample_scene(rng, config.seconds, config.structure_weights)
    audio = render_scene(scene, config.seconds, config.sample_rate, rng)
    captions = describe_scene(scene, config.captions_per_clip, rng)
    total = {"train": config.num_train, "valid": config.num_valid, "test": config.num_test}[split]
    return SyntheticClip(clip_name(split, index, total) + ".npy", audio, captions, scene)


def _wav_bytes(audio: np.ndarray, sample_rate: int, subtype: str) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, subtype=subtype, format="WAV")
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless the file already holds exactly it; True when written."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def generate_dataset(out_dir: str | os.PathLike, config: SyntheticConfig | None = None) -> dict[str, Path]:
    """Write the synthetic data set under ``out_dir``; returns ``{'train', 'valid', 'test': csv, 'audio_root': dir}``.

    Deterministic: the same config writes byte-identical files. Rerunning into the same directory rewrites
    only files whose content differs and removes ``clip_*.wav`` files of a larger earlier run, so the
    directory always matches the config.
    """
    config = config or SyntheticConfig()
    config.validate()
    out = Path(out_dir)
    audio_root, csv_root, meta_root = out / "audio", out / "csv", out / "meta"
    result: dict[str, Path] = {}
    written = kept = 0
    for split, count in (("train", config.num_train), ("valid", config.num_valid), ("test", config.num_test)):
        clips = [make_clip(config, split, i) for i in range(count)]
        expected: set[str] = set()
        for clip in clips:
            wav = audio_root / (clip.file_path[: -len(".npy")] + ".wav")
            expected.add(wav.name)
            if _write_if_changed(wav, _wav_bytes(clip.audio, config.sample_rate, config.subtype)):
                written += 1
            else:
                kept += 1
        split_dir = audio_root / split
        if split_dir.is_dir():
            for stale in split_dir.glob("clip_*.wav"):
                if stale.name not in expected and re.fullmatch(r"clip_\d+\.wav", stale.name):
                    stale.unlink()
        csv_path = csv_root / f"{split}.csv"
        if split == "train":
            write_train_manifest(csv_path, ((c.file_path, cap) for c in clips for cap in c.captions))
        else:
            write_eval_manifest(csv_path, (CaptionedClip(c.file_path, c.captions) for c in clips), config.captions_per_clip)
        lines = [
            json.dumps({"file_path": c.file_path, "structure": c.scene.structure, "events": [asdict(e) for e in c.scene.events]},
                       sort_keys=True)
            for c in clips
        ]
        _write_if_changed(meta_root / f"{split}.jsonl", ("\n".join(lines) + "\n" if lines else "").encode())
        _write_if_changed(out / "labels" / f"{split}.csv", _labels_csv(clips))
        result[split] = csv_path
    _write_if_changed(out / "config.json", (json.dumps(asdict(config), indent=2, sort_keys=True) + "\n").encode())
    result["audio_root"] = audio_root
    logger.info("synthetic data set in %s: %d audio files written, %d already up to date", out, written, kept)
    return result


def clip_label(scene: Scene) -> str | None:
    """The class of a single-source clip (:data:`KIND_LABELS`), None for scenes of several sources."""
    return KIND_LABELS[scene.events[0].kind] if scene.structure == "single" else None


def _labels_csv(clips: Sequence[SyntheticClip]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "label"])
    for clip in clips:
        label = clip_label(clip.scene)
        if label is not None:
            writer.writerow([clip.file_path[: -len(".npy")] + ".wav", label])
    return buf.getvalue().encode("utf-8")


def read_scenes(meta_jsonl: str | os.PathLike) -> dict[str, Scene]:
    """The scenes written next to a generated data set, by ``file_path``."""
    scenes = {}
    for line in Path(meta_jsonl).read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            scenes[item["file_path"]] = Scene(item["structure"], tuple(SoundEvent(**e) for e in item["events"]))
    return scenes


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m enclap.data.synthetic OUT_DIR [--config YAML] [key=value ...]``: write the demo data set."""
    from ..config import load_config
    from ..errors import EnclapError

    parser = argparse.ArgumentParser(prog="python -m enclap.data.synthetic", description=main.__doc__)
    parser.add_argument("out_dir", help="directory to write audio/, csv/ and meta/ into")
    parser.add_argument("--config", help="YAML file with SyntheticConfig fields")
    parser.add_argument("overrides", nargs="*", help="settings such as num_train=100 seconds=4.0 seed=1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        config = load_config(SyntheticConfig, args.config, args.overrides)
        paths = generate_dataset(args.out_dir, config)
    except EnclapError as err:
        print(f"error: {err}")
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


__all__ = [
    "BACKGROUND_KINDS",
    "FOREGROUND_KINDS",
    "KIND_LABELS",
    "SOURCE_KINDS",
    "SPLITS",
    "STRUCTURES",
    "Scene",
    "SoundEvent",
    "SyntheticClip",
    "SyntheticConfig",
    "clip_label",
    "describe_scene",
    "generate_dataset",
    "make_clip",
    "read_scenes",
    "render_scene",
    "sample_scene",
]

if __name__ == "__main__":
    raise SystemExit(main())
