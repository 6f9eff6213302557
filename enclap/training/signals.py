"""Stopping a run cleanly: SIGINT / SIGTERM become a flag the loop checks at step boundaries.

The loop saves a checkpoint at the next step boundary and returns ``"interrupted"``; a second signal
aborts at once (``KeyboardInterrupt``). DataLoader workers ignore both signals, so that a terminal's
Ctrl-C (sent to the whole process group) does not kill them while the main process is still saving.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

logger = logging.getLogger(__name__)


def ignore_signals_in_worker(_worker_id: int) -> None:
    """``worker_init_fn`` of the loop's DataLoaders: workers keep serving batches until the checkpoint is saved."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StopSignals:
    """SIGINT / SIGTERM -> :attr:`requested` (the signal's name); a second signal aborts at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; the caller handles stopping
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt(f"second {name}: stopping without saving")
        self.requested = name
        logger.warning("%s received: saving a checkpoint at the end of this step, then stopping (again to abort)", name)


__all__ = ["StopSignals", "ignore_signals_in_worker"]
