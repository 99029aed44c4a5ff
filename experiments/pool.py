"""The mechanics of local worker processes (`--workers N`, the `local.WorkerProcesses` backend): each worker of a
`ProcessPoolExecutor` (started with "spawn": torch and fork do not mix; one torch thread, OMP_NUM_THREADS=1; on a
GPU, its own CUDA context and `--trainers` trainer threads) trains a chunk (`work_chunk`: `chunks.train_chunk`) and
sends back what saving needs; workers die with their driver (`die_with_parent`) and are killed at once when it stops
(`stop_workers`); `auto_workers` is the default count.

Workers import this module before anything else, so it imports torch and the package's training code only inside
functions: the initializer sets the thread count first.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from lathadapter.progress import relayed, show_warning

if TYPE_CHECKING:
    from lathadapter.experiments.chunks import Elsewhere, Trained
    from lathadapter.experiments.execution import Execution
    from lathadapter.experiments.training import Evaluator, Item

# A worker's start (a fresh interpreter importing torch) takes seconds: the default (`workers=None`) starts one per
# this many pending runs at most, and trains a smaller grid in this process.
MIN_RUNS_PER_WORKER = 4
MAX_CHUNK = 8  # runs per chunk at most; fewer when the grid is small, so every worker gets some


class WorkerError(ValueError):
    """A worker process died (killed, out of memory): the runs it had not sent back are lost."""


def script_hint() -> str:
    """When the driver runs a Python script of the user's (`launch` from Python), the likeliest reason a spawned
    worker died at its start: each worker imports that script, which starts the grid again unless guarded."""
    main = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not main.endswith(".py") or os.path.abspath(main).startswith(package + os.sep):
        return ""
    return (f"; {main} starts worker processes, and each imports it, running its top-level code again: keep the "
            "script's work (fit, launch, run_protocol, ...) under `if __name__ == \"__main__\":` there")


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a Linux process gets when its parent dies
PARENT_POLL_SECONDS = 0.5


def die_with_parent(parent: int) -> None:
    """End this worker when the driver `parent` dies, even by SIGKILL (nothing of the driver runs then): on Linux the
    kernel sends SIGKILL (`prctl(PR_SET_PDEATHSIG)`); everywhere, a daemon thread exits once the parent PID changes.
    Without this, a killed driver left its workers (0.7 GB each) and the resource tracker blocked for good."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    if os.getppid() != parent:  # the driver died before the signal was armed
        os._exit(1)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def init_worker(parent: int | None = None) -> None:
    """In each worker, before torch is imported: one OpenMP thread, one torch thread; Ctrl-C ignored (the driver
    stops the workers); the worker ends with the driver `parent`; its warnings outside a chunk (a chunk's are sent
    back) are one line each, as the command's."""

    warnings.showwarning = show_warning
    os.environ["OMP_NUM_THREADS"] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is not None:
        die_with_parent(parent)
    import torch

    torch.set_num_threads(1)


def _picklable(error: BaseException) -> BaseException:
    """`error` if it crosses back to the driver intact, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 — any failure to round-trip
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def work_chunk(cache: str, items: list[Item], out: str, execution: Execution,
               extra_factory: Callable[[str], Evaluator] | None) -> bytes:
    """In a worker: train one chunk; returns, packed (`pack`), what came of each run trained (or found finished),
    the error that stopped the chunk, if any, so the runs trained before it are still saved, and the warnings it
    raised, which the driver shows once for all workers (`unpack`, `progress.show_relayed`)."""
    from lathadapter.experiments.chunks import train_chunk

    results: list[Trained | Elsewhere | int] = []
    error: BaseException | None = None
    with warnings.catch_warnings(record=True) as caught:
        try:
            for result in train_chunk(cache, items, out, execution, extra_factory):
                results.append(result)
        except Exception as raised:  # noqa: BLE001 — sent back, raised by the driver
            error = _picklable(raised)
    messages = relayed(caught)
    try:
        return pack((results, error, messages))
    except Exception as raised:  # noqa: BLE001 — the runs cannot be sent: the driver says why
        return pack(([], _picklable(raised), messages))


def pack(value: Any) -> bytes:
    """`value` pickled with its tensors' bytes inside: the pool's own pickler (torch's reductions) moves tensors to
    shared memory (/dev/shm, 64 MB in a Docker container by default), where a chunk's weights that did not fit failed
    with a traceback ("unable to allocate shared memory") and lost the chunk."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(packed: bytes) -> tuple[list[Trained | Elsewhere | int], BaseException | None, list[Warning]]:
    """What `work_chunk` sent back: the chunk's results, the error that stopped it, if any, and its warnings."""
    return pickle.loads(packed)


def auto_workers(pending: int, device: str) -> int:
    """The default worker count: on the CPU, the CPUs the load leaves free (`machine.default_threads`), at most one
    per MIN_RUNS_PER_WORKER pending runs (1: this process, every thread); on a GPU, this process and its trainer
    threads (`Execution.trainers`): GPU worker processes are not yet measured against them. Measured on 2 cores
    (benchmarks/grid.py --workers 1,2): 2 processes × 1 thread ran 1.4-1.7× the runs/min of 1 process × 2 threads."""
    from lathadapter.experiments.machine import default_threads

    return max(1, min(default_threads(), pending // MIN_RUNS_PER_WORKER)) if device == "cpu" else 1


# What starting one worker costs, measured on 2 cores (seconds): a spawned interpreter importing torch and the
# package (3.9 s with the machine loaded), then torch._dynamo's one-time import (1.3-2.3 s).
WORKER_START_SECONDS = 5.0


def workers_pay(seconds_left: float, workers: int) -> bool:
    """Whether `workers` worker processes finish sooner than this process alone, which would take `seconds_left`:
    each costs `WORKER_START_SECONDS` to start, so they pay when `seconds_left` > W / (W − 1) starts (2 workers: 10
    s): W workers then take T / W + S against T here."""
    return workers > 1 and seconds_left > WORKER_START_SECONDS * workers / (workers - 1)


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's workers at once (their chunks' unsent runs are lost; a rerun trains them) and cancel the chunks
    not started, so that leaving the pool does not wait for the running ones (Ctrl-C took ~10 s with 2 workers)."""
    processes = getattr(pool, "_processes", None) or {}  # the executor's own map of worker PID to process
    for process in list(processes.values()):
        with contextlib.suppress(OSError, AttributeError):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
