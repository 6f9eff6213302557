"""Process memory-allocator policy for CPU training and benchmarks.

glibc's ``malloc`` serves large blocks (activations of a few MB and up) with ``mmap`` and hands them
back to the kernel on ``free``; the next training step asks for the same sizes again and the kernel
zero-fills every page on first touch. On a CPU training step of a BART-base-sized captioner that
is over a million page faults, seconds of system time, and it varies with the history of
allocations (glibc adapts its threshold), which also makes timings noisy. Keeping freed memory in
the heap removes that cost: after the first step the process reuses its own pages. Peak memory is
unchanged; the process simply does not shrink between steps.

**Where it is applied.** The policy is process-wide and cannot be undone, so the library never sets it
on its own: :class:`~enclap.training.loop.Trainer` leaves the allocator as it finds it. The entry points
whose process is ours apply it: the training command (``train.py`` / ``enclap-train``, in
:func:`enclap.jobs.train_captioner.main`) and the benchmarks. A library user who wants it in their own
process calls :func:`retain_freed_memory` before training. ``bench/bench_model.py`` measures one
training step with and without it.

**The opposite need: long inference.** Captioning an hour of audio window by window allocates and
frees thousands of differently sized tensors (a decoder pass per candidate caption and window).
glibc returns freed memory to the kernel only from the top of its heaps, so the holes left between
live blocks stay resident and the peak RSS creeps up with the length of the recording although the
live data stays one window's worth (``bench/bench_inference.py``, windows mode, 60 min of 48 kHz audio:
peaks of 838 to 1123 MiB over three runs without trimming, up to 1.82x a 30 s file; 826 to 858 MiB with
it, at the same speed). :func:`release_freed_memory` (``malloc_trim``)
hands those free pages back; the long-audio paths of :class:`~enclap.pipeline.CaptioningPipeline`
call it every few windows.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_retained = False
_libc: "ctypes.CDLL | None | bool" = None  # None: not looked up yet; False: no glibc here


def _glibc() -> "ctypes.CDLL | None":
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            except OSError:
                pass
    return _libc or None


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no ``mmap`` blocks, no trimming). Idempotent.

    Returns True when the policy is in effect; False where it does not apply (not Linux / not glibc),
    in which case nothing is changed.
    """
    global _retained
    if _retained:
        return True
    libc = _glibc()
    try:
        mallopt = libc.mallopt if libc is not None else None
    except AttributeError:  # musl and other C libraries have no mallopt
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _retained = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
    if _retained:
        logger.debug("glibc malloc: freed memory is kept for reuse (M_MMAP_MAX=0, M_TRIM_THRESHOLD=INT_MAX)")
    return _retained


def release_freed_memory() -> bool:
    """Return the heap's free pages to the kernel (glibc ``malloc_trim(0)``); True when it released any.

    A no-op (False) where there is no glibc, and under :func:`retain_freed_memory`, whose policy is to
    keep freed memory for reuse. Costs a walk over the heap (milliseconds for hundreds of MB): call it
    between units of work, not inside them.
    """
    if _retained:
        return False
    libc = _glibc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))
