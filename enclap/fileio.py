"""Durable file-system operations shared by the crash-safe writers (feature store, training checkpoints)."""

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
