"""Audio the tests generate for themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tone(seconds: float, sample_rate: int, freq: float = 440.0, amplitude: float = 0.5, channels: int = 1) -> np.ndarray:
    """A sine (frames,) or (frames, channels) array; channel c gets frequency ``freq * (c + 1)``."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    cols = [amplitude * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]
    out = np.stack(cols, axis=1).astype(np.float32)
    return out[:, 0] if channels == 1 else out


def write_audio(path: Path, samples: np.ndarray, sample_rate: int, subtype: str | None = None, format: str | None = None) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, sample_rate, subtype=subtype, format=format)
    return path


def write_bad_files(directory: Path) -> dict[str, Path]:
    """Corrupt, empty, truncated and non-audio files with audio extensions."""
    directory.mkdir(parents=True, exist_ok=True)
    bad = {}
    bad["empty"] = directory / "empty.wav"
    bad["empty"].write_bytes(b"")
    bad["text"] = directory / "notes.wav"
    bad["text"].write_text("this is not audio\n" * 50)
    bad["garbage"] = directory / "garbage.flac"
    bad["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    good = write_audio(directory / "_tmp_full.wav", tone(1.0, 16000), 16000, subtype="PCM_16")
    data = good.read_bytes()
    good.unlink()
    bad["truncated"] = directory / "truncated.wav"
    bad["truncated"].write_bytes(data[: len(data) // 2])
    return bad
