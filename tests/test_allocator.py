"""enclap.allocator: the glibc policy is applied (where it applies) and really stops page-faulting reused memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Run in a fresh interpreter: the policy is process-wide and must not change the test worker.
_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from enclap.allocator import retain_freed_memory

    def faults_of_reallocation():
        np.ones(64 << 20, dtype=np.uint8)  # 64 MiB: far above glibc's mmap threshold
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            np.ones(64 << 20, dtype=np.uint8)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    default = faults_of_reallocation()
    applied = retain_freed_memory()
    again = retain_freed_memory()
    faults_of_reallocation()  # the first allocation under the policy grows the heap once
    retained = faults_of_reallocation()
    print(applied, again, default, retained)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc policy")
def test_retain_freed_memory_stops_page_faults():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    applied, again, default, retained = out[0] == "True", out[1] == "True", int(out[2]), int(out[3])
    if not applied:
        pytest.skip("not glibc")
    assert again
    # By default every 64 MiB block is fresh memory from the kernel (hundreds of faults each, fewer
    # than 16k pages where numpy asks for huge pages); afterwards the heap's own pages are reused.
    assert default > 1_000
    assert retained < default / 20


_TRIM_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from enclap import allocator

    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    # 2000 blocks of 100 kB (below glibc's mmap threshold: served from the heap), every 10th kept alive:
    # the freed ones are holes between live blocks, which glibc does not return to the kernel by itself.
    blocks = [np.ones(100_000, dtype=np.uint8) for _ in range(2000)]
    kept = blocks[::10]
    del blocks
    before = rss_mib()
    released = allocator.release_freed_memory()
    after = rss_mib()
    allocator._retained = True  # under the keep-freed-memory policy it must not trim
    print(released, before, after, allocator.release_freed_memory(), len(kept))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_release_freed_memory_returns_heap_holes():
    out = subprocess.run([sys.executable, "-c", _TRIM_SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    released, before, after, under_policy = out[0] == "True", float(out[1]), float(out[2]), out[3] == "True"
    if not released and before - after < 1:
        pytest.skip("not glibc")
    # 180 MB of freed 100 kB blocks were resident before the trim and are gone after it
    assert before - after > 150, (before, after)
    assert not under_policy
