"""Audio front end: any file soundfile reads -> mono float32 at the rate a model wants.

Downmixing averages all channels (the reference implementation kept channel 0 only, which loses a
source panned to the right). Resampling uses soxr at high quality. Nothing is clipped or cut without
saying so: samples beyond full scale are kept as they are, and a truncation is logged.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import (
    AudioDecodeError,
    AudioError,
    AudioNotFoundError,
    EmptyAudioError,
    NonFiniteAudioError,
)

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64")


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, read from its header without decoding it."""

    path: str
    sample_rate: int
    frames: int
    channels: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioNotFoundError(path, "no such file")
    if not path.is_file():
        raise AudioNotFoundError(path, "not a regular file")
    if not os.access(path, os.R_OK):
        raise AudioDecodeError(path, "file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise EmptyAudioError(path, "file is empty (0 bytes)")


def _wav_declared_data_bytes(path: Path) -> tuple[int, int] | None:
    """(declared, present) byte counts of a RIFF/WAVE ``data`` chunk, or None when not a plain WAV.

    libsndfile quietly shortens a WAV whose data chunk is cut off, so truncation is checked here from
    the header itself.
    """
    with open(path, "rb") as fh:
        return _wav_data_chunk(fh, path.stat().st_size)


def _wav_data_chunk(fh, size: int) -> tuple[int, int] | None:
    """``_wav_declared_data_bytes`` of an open binary file object of ``size`` bytes (a file or a buffer)."""
    import struct

    fh.seek(0)
    head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= size:
        fh.seek(pos)
        chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
        if chunk_id == b"data":
            if chunk_size == 0xFFFFFFFF:  # streaming writers leave the size open
                return None
            return chunk_size, size - pos - 8
        pos += 8 + chunk_size + (chunk_size & 1)
    return None


def _open(path: Path):
    import soundfile as sf

    _check_file(path)
    declared = _wav_declared_data_bytes(path) if path.suffix.lower() in (".wav", ".wave") else None
    if declared and declared[1] < declared[0]:
        raise AudioDecodeError(
            path, f"truncated audio data: the header declares {declared[0]} bytes of samples, the file holds {declared[1]}"
        )
    try:
        return sf.SoundFile(str(path))
    except sf.LibsndfileError as err:
        raise AudioDecodeError(path, f"not a readable audio file ({err.error_string})") from err
    except (RuntimeError, TypeError, ValueError) as err:
        raise AudioDecodeError(path, f"not a readable audio file ({err})") from err


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header information of an audio file; raises :class:`AudioError` for anything that is not audio."""
    path = Path(path)
    with _open(path) as f:
        return AudioInfo(str(path), f.samplerate, f.frames, f.channels, f.format, f.subtype)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: (frames, channels) -> (frames,). A 1-d array is returned as it is."""
    if samples.ndim == 1:
        return samples
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono float signal with soxr (VHQ). Returns float32; a no-op when rates match."""
    samples = np.asarray(samples, dtype=np.float32)
    if orig_sr == target_sr:
        return samples
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    import soxr

    return soxr.resample(samples, orig_sr, target_sr, quality="VHQ").astype(np.float32, copy=False)


def check_waveform(waveform: np.ndarray, index: int) -> np.ndarray:
    """A model input: mono, non-empty, finite; returned as contiguous float32. ``index`` names it in errors."""
    array = np.asarray(waveform)
    if array.ndim != 1:
        raise ValueError(f"waveform {index}: expected a mono 1-D array, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"waveform {index}: is empty (0 samples)")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"waveform {index}: holds NaN or infinite samples")
    return np.ascontiguousarray(array)


def _validate_samples(path: Path, samples: np.ndarray) -> None:
    if samples.size == 0:
        raise EmptyAudioError(path, "audio has zero samples")
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).sum())
        raise NonFiniteAudioError(path, f"{bad} sample(s) are NaN or infinite")


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    *,
    max_seconds: float | None = None,
) -> tuple[np.ndarray, int]:
    """Read ``path`` as mono float32, resampled to ``sample_rate`` (the file's own rate when None).

    Returns ``(samples, rate)``. ``max_seconds`` reads at most that much from the start and logs that
    the rest was not read. Raises a subclass of :class:`AudioError` naming the file and the reason for a
    missing, unreadable, corrupt, empty, non-audio or non-finite file.
    """
    path = Path(path)
    mono, native_sr = _read_mono(path, max_seconds, log_level=logging.WARNING)
    target = native_sr if sample_rate is None else int(sample_rate)
    return resample(mono, native_sr, target), target


def load_audio_bytes(data: bytes, sample_rate: int | None = None, *, name: str) -> tuple[np.ndarray, int]:
    """:func:`load_audio` of a file held in memory (e.g. a member of a webdataset shard).

    ``data`` is the whole encoded file (wav, flac, ogg, mp3...: soundfile reads the format from its
    header); ``name`` says what it is in errors (``shard.tar:key.flac``). The same checks as for a
    file: empty, not audio, truncated (a WAV's data chunk shorter than its header declares, or fewer
    frames decoded than declared), zero samples, NaN / infinite samples raise :class:`AudioError`.
    """
    import io

    import soundfile as sf

    if not data:
        raise EmptyAudioError(name, "audio data is empty (0 bytes)")
    buffer = io.BytesIO(data)
    declared = _wav_data_chunk(buffer, len(data))
    if declared and declared[1] < declared[0]:
        raise AudioDecodeError(
            name, f"truncated audio data: the header declares {declared[0]} bytes of samples, the data holds {declared[1]}"
        )
    buffer.seek(0)
    try:
        with sf.SoundFile(buffer) as f:
            native_sr, total = f.samplerate, f.frames
            samples = f.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as err:
        raise AudioDecodeError(name, f"not readable audio data ({err.error_string})") from err
    except (RuntimeError, TypeError, ValueError) as err:
        raise AudioDecodeError(name, f"not readable audio data ({err})") from err
    if 0 < total and samples.shape[0] < total:
        raise AudioDecodeError(name, f"truncated audio data: header promises {total} frames, only {samples.shape[0]} decoded")
    mono = to_mono(samples)
    _validate_samples(name, mono)
    target = native_sr if sample_rate is None else int(sample_rate)
    return resample(mono, native_sr, target), target


def _read_mono(path: Path, max_seconds: float | None, *, log_level: int) -> tuple[np.ndarray, int]:
    """The first ``max_seconds`` (all when None) of ``path``, mono float32 at its own rate, checked."""
    import soundfile as sf

    with _open(path) as f:
        native_sr = f.samplerate
        total = f.frames
        limit = total
        if max_seconds is not None and total > 0:
            limit = min(total, int(math.ceil(max_seconds * native_sr)))
            if limit < total:
                logger.log(
                    log_level, "%s: read the first %.2f s of %.2f s (max_seconds=%s)",
                    path, limit / native_sr, total / native_sr, max_seconds,
                )
        try:
            samples = f.read(frames=limit if limit > 0 else -1, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioDecodeError(path, f"corrupt or truncated audio data ({err})") from err
    if 0 < total and samples.shape[0] < min(limit, total):
        # libsndfile stops early on a truncated data chunk instead of failing: say so rather than
        # return a shorter clip as if it were whole.
        raise AudioDecodeError(
            path, f"truncated audio data: header promises {min(limit, total)} frames, only {samples.shape[0]} decoded"
        )
    mono = to_mono(samples)
    _validate_samples(path, mono)
    peak = float(np.abs(mono).max())
    if peak > 1.0:
        logger.warning("%s: peak %.3f exceeds full scale; samples are kept as they are, not clipped", path, peak)
    return mono, native_sr


def stream_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    *,
    block_seconds: float = 10.0,
) -> Iterator[np.ndarray]:
    """Yield consecutive mono float32 blocks of ``path`` at ``sample_rate`` in bounded memory.

    The blocks concatenate to what :func:`load_audio` returns (up to resampler rounding at the very
    end), so an hour-long recording can be processed without holding it in memory.
    """
    import soxr

    path = Path(path)
    with _open(path) as f:
        native_sr = f.samplerate
        target = native_sr if sample_rate is None else int(sample_rate)
        block = max(1, int(block_seconds * native_sr))
        resampler = soxr.ResampleStream(native_sr, target, 1, dtype="float32", quality="VHQ") if target != native_sr else None
        seen = 0
        for chunk in f.blocks(blocksize=block, dtype="float32", always_2d=True):
            mono = to_mono(chunk)
            if not np.isfinite(mono).all():
                first = seen + int(np.argmax(~np.isfinite(mono)))
                raise NonFiniteAudioError(path, f"NaN or infinite samples from {first / native_sr:.2f} s")
            seen += mono.shape[0]
            out = resampler.resample_chunk(mono, last=False) if resampler else mono
            if out.size:
                yield out
        if seen == 0:
            raise EmptyAudioError(path, "audio has zero samples")
        if resampler:
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                yield tail


@dataclass(frozen=True)
class Window:
    """One window of a longer recording: where it starts and its samples."""

    start: float
    end: float
    samples: np.ndarray


def split_windows(
    samples: np.ndarray,
    sample_rate: int,
    window_seconds: float,
    hop_seconds: float | None = None,
) -> list[Window]:
    """Cut a recording into windows of ``window_seconds`` every ``hop_seconds`` (overlap when hop < window).

    The last window is aligned to the end of the recording so that no audio is dropped and no window
    is mostly padding; a recording shorter than one window is returned whole.
    """
    hop_seconds = window_seconds if hop_seconds is None else hop_seconds
    if window_seconds <= 0 or hop_seconds <= 0:
        raise ValueError(f"window and hop must be positive, got {window_seconds}, {hop_seconds}")
    win = int(round(window_seconds * sample_rate))
    hop = int(round(hop_seconds * sample_rate))
    n = len(samples)
    if n <= win:
        return [Window(0.0, n / sample_rate, samples)]
    starts = list(range(0, n - win + 1, hop))
    if starts[-1] + win < n:
        starts.append(n - win)
    return [Window(s / sample_rate, (s + win) / sample_rate, samples[s : s + win]) for s in starts]


def window_count(num_samples: int, window_samples: int, hop_samples: int) -> int:
    """How many windows :func:`split_windows` / :func:`stream_windows` cut from ``num_samples`` samples."""
    if num_samples <= window_samples:
        return 1
    regular = (num_samples - window_samples) // hop_samples + 1
    return regular + (1 if (regular - 1) * hop_samples + window_samples < num_samples else 0)


def stream_windows(
    blocks: Iterable[np.ndarray], window_samples: int, hop_samples: int
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start sample, samples)`` of the windows :func:`split_windows` cuts, from consecutive blocks.

    The same windows as ``split_windows(np.concatenate(blocks), ...)`` (a window every hop, the last one
    aligned to the end, a recording shorter than a window given whole), but holding only about one
    window plus one block at a time, so a recording of any length streams through in bounded memory.
    """
    if window_samples < 1 or hop_samples < 1:
        raise ValueError(f"window and hop must be at least one sample, got {window_samples}, {hop_samples}")
    buffer = np.zeros(0, dtype=np.float32)
    buffer_start = 0  # sample index of buffer[0] in the recording
    total = 0
    next_start = 0
    last_end = 0
    for block in blocks:
        buffer = np.concatenate([buffer, np.asarray(block, dtype=np.float32)])
        total += len(block)
        while next_start + window_samples <= total:
            offset = next_start - buffer_start
            yield next_start, buffer[offset : offset + window_samples].copy()
            last_end = next_start + window_samples
            next_start += hop_samples
        # Keep what a later window can still need: the next regular window, or the end-aligned last one.
        keep_from = max(buffer_start, min(next_start, total - window_samples))
        buffer = buffer[keep_from - buffer_start :]
        buffer_start = keep_from
    if total == 0:
        return
    if last_end == 0:  # shorter than one window: the whole recording
        yield 0, buffer.copy()
    elif last_end < total:
        start = total - window_samples
        yield start, buffer[start - buffer_start :].copy()


@dataclass
class AudioSource:
    """A recording to read from the start or stream block by block: a file, or samples already in memory.

    ``frames`` is the length at ``sample_rate`` (the file's own rate) as the header declares it.
    """

    name: str
    sample_rate: int
    frames: int
    path: Path | None = None
    samples: np.ndarray | None = None

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def read(self, max_seconds: float | None = None) -> np.ndarray:
        """The first ``max_seconds`` (everything when None), mono float32 at :attr:`sample_rate`."""
        if self.samples is not None:
            if max_seconds is None:
                return self.samples
            return self.samples[: int(math.ceil(max_seconds * self.sample_rate))]
        # Reading only the start of a longer recording is what the caller asked for: not a warning.
        return _read_mono(self.path, max_seconds, log_level=logging.DEBUG)[0]

    def blocks(self, block_seconds: float = 10.0) -> Iterator[np.ndarray]:
        """Consecutive mono float32 blocks at :attr:`sample_rate` (see :func:`stream_audio`)."""
        if self.samples is not None:
            step = max(1, int(block_seconds * self.sample_rate))
            return (self.samples[i : i + step] for i in range(0, len(self.samples), step))
        return stream_audio(self.path, None, block_seconds=block_seconds)


def open_source(source: "str | os.PathLike | tuple[np.ndarray, int]", index: int = 0) -> AudioSource:
    """An :class:`AudioSource` for a file path or a ``(mono samples, sample_rate)`` pair.

    Reads only the header of a file. Raises :class:`AudioError` naming the file (or ``waveform
    {index}`` for samples) and the reason when the input is not usable audio.
    """
    if isinstance(source, tuple):
        name = f"waveform {index}"
        try:
            samples, rate = source
        except (TypeError, ValueError):
            raise AudioError(name, "expected a (samples, sample_rate) pair") from None
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise AudioError(name, f"expected mono 1-D samples, got shape {samples.shape}")
        samples = samples.astype(np.float32, copy=False)
        if int(rate) <= 0:
            raise AudioError(name, f"sample rate must be positive, got {rate}")
        _validate_samples(name, samples)
        return AudioSource(name, int(rate), len(samples), samples=samples)
    path = Path(source)
    info = audio_info(path)
    if info.frames == 0:
        raise EmptyAudioError(path, "audio has zero samples")
    return AudioSource(str(path), info.sample_rate, info.frames, path=path)


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """Every file below ``root`` with an audio extension, sorted for a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise AudioNotFoundError(root, "not a directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioError",
    "AudioInfo",
    "AudioSource",
    "Window",
    "audio_info",
    "check_waveform",
    "find_audio_files",
    "load_audio",
    "load_audio_bytes",
    "open_source",
    "resample",
    "split_windows",
    "stream_audio",
    "stream_windows",
    "to_mono",
    "window_count",
]
