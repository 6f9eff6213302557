"""SHA-256 checks of the files the metrics fetch and then execute (jars) or load (checkpoints).

A file is used only when its SHA-256 equals a pinned value: a truncated download, a tampered mirror or a
file of the right name but the wrong content is refused with the file, the expected and the actual digest
named. Digests are cached per file (path, size, modification time) so a check repeated in one process costs
a ``stat``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Mapping

from ..errors import MetricUnavailableError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DIGEST_CACHE: dict[tuple[str, int, int], str] = {}


class ChecksumMismatchError(MetricUnavailableError):
    """A file's SHA-256 is not the pinned one (or no SHA-256 is pinned for it); names file and both digests."""

    def __init__(self, path: str | os.PathLike, name: str, expected: str | None, actual: str, fix: str) -> None:
        self.path = str(path)
        self.name = name
        self.expected = expected
        self.actual = actual
        if expected is None:
            what = f"no SHA-256 is pinned for {name}, so it cannot be verified (its SHA-256 is {actual})"
        else:
            what = f"SHA-256 mismatch for {name}: expected {expected}, actual {actual}"
        super().__init__(f"{self.path}: {what}; {fix}")


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks (cached while the file's size and mtime stay)."""
    path = Path(path)
    stat = path.stat()
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGEST_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGEST_CACHE[key] = digest.hexdigest()
    return _DIGEST_CACHE[key]


def normalise_pins(pins: Mapping[str, str | None]) -> dict[str, str | None]:
    """``pins`` with lower-case digests; raises ``ValueError`` naming a value that is not a SHA-256."""
    out: dict[str, str | None] = {}
    for name, digest in pins.items():
        if digest is not None:
            digest = digest.strip().lower()
            if not _SHA256.match(digest):
                raise ValueError(f"the SHA-256 given for {name} is not 64 hex digits: {digest!r}")
        out[name] = digest
    return out


def verify_sha256(
    path: str | os.PathLike, name: str, pins: Mapping[str, str | None], fix: str, *, shown: str | None = None
) -> str:
    """Check ``path`` (known as ``name``; ``shown`` in the message, default the path) against ``pins[name]``;
    returns its digest or raises :class:`ChecksumMismatchError` (also when no digest is pinned for ``name``)."""
    actual = sha256_file(path)
    expected = pins.get(name)
    if expected is None or actual != expected:
        raise ChecksumMismatchError(shown or path, name, expected, actual, fix)
    return actual


def parse_pin(text: str) -> tuple[str, str]:
    """``NAME=SHA256`` (the CLI's ``--sha256``) as ``(name, digest)``; ``ValueError`` on anything else."""
    name, sep, digest = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--sha256 expects FILE_NAME=SHA256, got {text!r}")
    (name, digest), = normalise_pins({name.strip(): digest}).items()
    return name, digest  # type: ignore[return-value]
