"""Exception types shared by the whole library.

Every error a user can cause names the thing at fault (file, key, model id) and the reason, so that a
message read in a log of a long job is enough to act on.
"""

from __future__ import annotations

from os import PathLike


class EnclapError(Exception):
    """Base class of every error this library raises on purpose."""


class AudioError(EnclapError):
    """A file could not be turned into audio samples."""

    def __init__(self, path: str | PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class AudioNotFoundError(AudioError, FileNotFoundError):
    """The file does not exist or is not a regular file."""


class AudioDecodeError(AudioError):
    """The file exists but is not audio, is corrupt or truncated, or cannot be read."""


class EmptyAudioError(AudioError):
    """The file decodes to zero samples."""


class NonFiniteAudioError(AudioError):
    """The file holds NaN or infinite samples."""


class AudioPathOutsideRootError(AudioError):
    """A manifest entry leads outside its audio root: an absolute path, a '..', or a symbolic link out."""


class ConfigError(EnclapError):
    """A configuration file or override is invalid."""


class ManifestError(EnclapError):
    """A manifest (CSV) is invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, path: str | PathLike, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{self.path}: {len(self.problems)} problem(s):\n{shown}{more}")


class InvalidFeaturesError(EnclapError, ValueError):
    """Precomputed features (codes, CLAP embedding) that the captioner cannot read; names the clip."""


class PretrainedNotFoundError(EnclapError, OSError):
    """A pretrained part (weights, tokenizer, config) could not be found locally nor fetched."""


class CheckpointError(EnclapError):
    """A checkpoint exists but does not fit the model it is loaded into."""


class MetricUnavailableError(EnclapError):
    """A metric cannot run on this machine; the message says why and how to enable it."""
