"""Grids and protocols on worker processes of this machine (`--workers N`): several processes with one torch thread
each instead of one process with every thread.

The pending runs are cut into chunks of one cache each (`chunks.chunk_runs`, as on Ray); each chunk runs in a worker
of a `ProcessPoolExecutor` (started with "spawn": torch and fork do not mix; one torch thread, OMP_NUM_THREADS=1) that
opens its cache once and trains the chunk's runs with the shared `grid.train_run` (`chunks.train_chunk`), sending
back what saving needs. This process alone writes the run directories and `results.csv`, as each chunk comes back:
same keys, same layout, same resume as `grid.run_grid`.

Workers import this module before anything else, so it imports torch and the package's training code only inside
functions: the initializer sets the thread count first.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lathadapter.experiments.chunks import Item, Trained
    from lathadapter.experiments.grid import Evaluator, GridRun, GridSpec

# A worker's start (a fresh interpreter importing torch) takes seconds: the default (`workers=None`) starts one per
# this many pending runs at most, and trains a smaller grid in this process.
MIN_RUNS_PER_WORKER = 4
MAX_CHUNK = 8  # runs per chunk at most; fewer when the grid is small, so every worker gets some


class WorkerError(ValueError):
    """A worker process died (killed, out of memory): the runs it had not sent back are lost."""


def check_workers(workers: int, device: str) -> None:
    """`--workers` is at least 1; more than one trains on the CPU only."""
    from lathadapter.adapter.options import OptionError

    if workers < 1:
        raise OptionError(f"--workers {workers}: must be at least 1 (1: train in this process)")
    if workers > 1 and device != "cpu":
        raise OptionError(f"--workers {workers}: worker processes train on the CPU; use --device cpu, or --workers 1 "
                          f"with --device {device}")


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
    stops the workers); the worker ends with the driver `parent`."""
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


def work_chunk(cache: str, items: list[Item], out: str, device: str,
               extra_factory: Callable[[str], Evaluator] | None, batch_runs: int = 1
               ) -> tuple[list[Trained | int], BaseException | None]:
    """In a worker: train one chunk; returns what came of each run trained (or found finished) and the error that
    stopped the chunk, if any, so the runs trained before it are still saved."""
    from lathadapter.experiments.chunks import train_chunk

    results: list[Trained | int] = []
    try:
        for result in train_chunk(cache, items, out, device, extra_factory, batch_runs):
            results.append(result)
    except Exception as error:  # noqa: BLE001 — sent back, raised by the driver
        return results, _picklable(error)
    return results, None


def auto_workers(pending: int, device: str) -> int:
    """The default worker count: on the CPU, the CPUs the load leaves free (`machine.default_threads`), at most one
    per MIN_RUNS_PER_WORKER pending runs; 1 (this process, every thread) on a GPU or for a small grid. Measured on 2
    cores (benchmarks/grid.py --workers 1,2): 2 processes × 1 thread ran 1.4-1.7× the runs/min of 1 process × 2
    threads."""
    from lathadapter.experiments.machine import default_threads

    return max(1, min(default_threads(), pending // MIN_RUNS_PER_WORKER)) if device == "cpu" else 1


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's workers at once (their chunks' unsent runs are lost; a rerun trains them) and cancel the chunks
    not started, so that leaving the pool does not wait for the running ones (Ctrl-C took ~10 s with 2 workers)."""
    processes = getattr(pool, "_processes", None) or {}  # the executor's own map of worker PID to process
    for process in list(processes.values()):
        with contextlib.suppress(OSError, AttributeError):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def run_in_processes(runs: list[GridRun], out: Path, device: str, workers: int | None, *, progress: bool = True,
                     extra_factory: Callable[[str], Evaluator] | None = None, key_salt: str = "",
                     chunk_size: int | None = None, batch_runs: int = 1) -> list[str]:
    """Run a grid's pending runs on `workers` worker processes (None: `auto_workers`; 1: in this process, as
    `grid.iterate`); returns each run's state ("done", "skipped", "elsewhere") in grid order. `extra_factory(device)`
    builds, in each worker, the evaluator that adds metrics (a protocol's targets). An error in a run stops the grid
    as in one process, after saving every run sent back. `batch_runs` > 1 trains up to that many compatible runs
    together in a worker (`grid.batches`)."""
    from lathadapter.experiments.chunks import Tally, chunk_runs, pending_runs
    from lathadapter.experiments.grid import grid_progress, iterate, prepare, write_results

    if workers is not None:
        check_workers(workers, device)
    out = out.resolve()
    infos, keyed = prepare(runs, out, key_salt)
    pending = pending_runs(keyed, out)
    workers = workers or auto_workers(len(pending), device)
    if workers == 1:
        extra = extra_factory(device) if extra_factory is not None else None
        return [state for _, state in iterate(runs, out, device, progress, extra, key_salt, batch_runs)]
    tally = Tally(out, keyed, infos, pending, device)
    if not pending:
        write_results(out)
        return tally.states
    size = chunk_size or max(1, min(MAX_CHUNK, math.ceil(len(pending) / (4 * workers))))
    size = math.ceil(size / batch_runs) * batch_runs  # whole batches per chunk
    chunks = chunk_runs(pending, size, batch_runs)
    errors: list[BaseException] = []
    context = multiprocessing.get_context("spawn")
    with grid_progress() as bar, ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context,
                                                     initializer=init_worker, initargs=(os.getpid(),)) as pool:
        task = bar.add_task(f"grid ({min(workers, len(chunks))} workers)", total=len(keyed),
                            completed=tally.counts["skipped"], **tally.counts, visible=progress)
        futures = [pool.submit(work_chunk, os.path.abspath(chunk[0][1].run.cache), chunk, str(out), device,
                               extra_factory, batch_runs) for chunk in chunks]
        try:
            for future in as_completed(futures):
                try:
                    results, error = future.result()
                except CancelledError:
                    continue
                except BrokenProcessPool as broken:
                    results, error = [], WorkerError(f"a worker process died ({broken}); the finished runs are "
                                                     "saved, rerun the grid to complete the rest")
                for result in results:
                    tally.take(result)
                    bar.update(task, advance=1, **tally.counts)
                if error is not None:
                    errors.append(error)
                    for other in futures:
                        other.cancel()  # chunks not started; those running finish and are saved
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM raised as it (cli): the runs sent back are saved already
            stop_workers(pool)
            write_results(out)
            raise
    write_results(out)
    if errors:
        raise errors[0]
    return tally.states


def run_grid_in_processes(spec: GridSpec, out: Path, device: str = "cpu", workers: int | None = None,
                          progress: bool = True, batch_runs: int = 1) -> dict[str, Any]:
    """`grid.run_grid` on `workers` worker processes (None: `auto_workers`): the same summary, run folders and
    `results.csv`."""
    from lathadapter.experiments.grid import expand, summarize, with_extensions

    runs = expand(spec)
    start = time.perf_counter()
    runs, states = with_extensions(runs, out, lambda todo: run_in_processes(todo, out, device, workers,
                                                                            progress=progress, batch_runs=batch_runs))
    return summarize(runs, states, time.perf_counter() - start, out)

