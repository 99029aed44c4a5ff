"""Where a run computes: the device it asks for, checked before any work, and how many CPU threads torch uses."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import torch

from lathadapter.adapter.options import OptionError, StateError


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


BUSY_SAMPLE_SECONDS = 0.2
CPU_BATCH_RUNS = 8
GPU_BATCH_RUNS = 32
# Trainer threads per process on a GPU, each on its own CUDA stream (`trainers`): on the H200 (stop 12, 10-seed
# benchmark grid, one process) 4 threads ran 1,562 runs/min, 6 ran 1,418 and 1 ran 1,146.
GPU_TRAINERS = 4


def cpu_times(stat: Path = Path("/proc/stat")) -> tuple[float, float] | None:
    """(idle, total) CPU time of the whole machine since boot, in clock ticks, from /proc/stat; None elsewhere."""
    try:
        fields = [float(v) for v in stat.read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    except (OSError, ValueError, IndexError):  # a line of fewer than four fields too
        return None
    return idle, sum(fields[:8])  # user … steal (guest time is counted in user and nice already)


def busy_cpus() -> float:
    """CPUs other work keeps busy now: the machine's busy share over a 0.2 s sample of /proc/stat × its CPUs (this
    process sleeps meanwhile); without /proc, the 1-minute load average. The load average lags by a minute: right
    after `pip install` it still counted a busy CPU on an idle 2-core machine, and a demo ran on one core."""
    first = cpu_times()
    if first is not None:
        time.sleep(BUSY_SAMPLE_SECONDS)
        second = cpu_times()
        if second is not None and second[1] > first[1]:
            share = 1 - (second[0] - first[0]) / (second[1] - first[1])
            return max(0.0, share) * (os.cpu_count() or 1)
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def default_threads() -> int:
    """Threads for torch: OMP_NUM_THREADS when set; else the CPUs of the affinity mask less those that other work
    keeps busy now (`busy_cpus`), at least one. Torch's default, every core, made a small fit on a machine whose
    cores were taken 14× slower than one thread (52.8 s against 3.7 s at load 8 on 2 cores)."""
    cpus = available_cpus()
    requested = os.environ.get("OMP_NUM_THREADS", "")
    if requested.isdigit() and int(requested) > 0:
        return min(cpus, int(requested))
    return max(1, min(cpus, round(cpus - busy_cpus())))


def auto_batch_runs(device: str | None) -> int:
    """The default `--batch-runs`. On the CPU, CPU_BATCH_RUNS: benchmarks/grid.py measured runs trained together
    little faster than alone there (a step's matrix products, not its per-op overhead, take most of its time); on a
    GPU (or a Ray cluster that may have them, `device` None), GPU_BATCH_RUNS, where one small run leaves the device
    nearly idle."""
    return CPU_BATCH_RUNS if device == "cpu" else GPU_BATCH_RUNS


def auto_trainers(device: str | None) -> int:
    """The default trainer threads of a process: GPU_TRAINERS on a GPU (or a Ray cluster that may have them, `device`
    None), one on the CPU, where torch's threads already share the cores."""
    return 1 if device == "cpu" else GPU_TRAINERS


def use_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (`threads`, or `default_threads()`); returns the number set."""
    if threads is not None and threads < 1:
        raise OptionError(f"--threads {threads}: must be at least 1 (this process may use {available_cpus()} CPUs)")
    if threads is not None and threads > available_cpus():  # 1000 threads on 2 cores: a 0.07 s fit took 21.5 s
        warnings.warn(f"--threads {threads}: this process may use {available_cpus()} CPUs; using {available_cpus()}",
                      stacklevel=2)
        threads = available_cpus()
    chosen = threads or default_threads()
    torch.set_num_threads(chosen)
    return chosen


def resolve_device(device: str | None) -> str:
    """`device`, checked: `cpu`, `cuda` or `cuda:N` on a machine that has that GPU; None picks cuda when present."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str):  # the Python API's `device=0` failed in str.partition
        raise OptionError(f"device={device!r}: expected 'cpu', 'cuda', 'cuda:N' or None")
    name, _, index = device.partition(":")
    if name == "cpu" and not index:
        return device
    if name != "cuda" or (index and not index.isdigit()):
        raise OptionError(f"--device {device!r} is not a device lathadapter trains on; use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise StateError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu")
    if index and int(index) >= torch.cuda.device_count():
        raise StateError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device
