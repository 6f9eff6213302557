"""Durable file-system operations shared by the crash-safe writers (feature store, training checkpoints, curation)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a directory's entries, so that a rename into it survives a crash.

    Not every platform lets a directory be opened or synced; there the call does nothing.
    """
    try:
        fd = os.open(Path(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """``data`` into ``path`` through a temporary file, fsync and a rename (readers see the old or the new file)."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}.{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
