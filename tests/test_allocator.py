"""The trainer's malloc setting: on glibc, freed tensors are reused instead of being faulted back in every step."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

STEPS = textwrap.dedent("""
    import resource, sys, torch
    torch.set_num_threads(1)
    from lathadapter.adapter import allocator
    if sys.argv[1] == "tuned":
        assert allocator.reuse_freed_memory() and allocator.reuse_freed_memory()  # idempotent
    else:  # glibc's initial threshold, held fixed (its dynamic one depends on the process's history)
        import ctypes
        assert ctypes.CDLL("libc.so.6").mallopt(allocator.M_MMAP_THRESHOLD, 128 * 1024)
    x = torch.rand(256, 1000)
    def step():  # temporaries of 0.4 to 2 MB, as in a training step
        a = x * 2
        b = torch.log1p(a.abs())
        c = torch.cat([a, b])
        return c.sum(0), (c * 3)[:100]
    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def page_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return int(result.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="the setting applies to glibc's malloc only")
def test_freed_tensors_are_reused_instead_of_faulted_back_in() -> None:
    default, tuned = page_faults("default"), page_faults("tuned")
    assert default > 10_000, "the case must fault with glibc's initial threshold"
    assert tuned < default / 10, (default, tuned)
