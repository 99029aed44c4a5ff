"""The backends of this machine: runs trained in this process (`InProcess`), or on worker processes of one torch
thread each (`WorkerProcesses`, `--workers N`; the pool's mechanics are `pool`'s).

In this process, each batch of runs trains while this process holds their lock files (`OUT/runs/<key>.lock`; a run
another process holds is left to it, "elsewhere") and is saved before the locks are let go. On workers, the pending
runs are cut into chunks of one cache (`chunks.chunk_runs`, as on Ray); each chunk trains in a worker with the shared
`training.train_runs` (`chunks.train_chunk`, each run under its lock file, so another grid process leaves it alone)
and sends its runs back; this process alone saves them, under their locks: same keys, same layout, same resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import os
import time
import warnings
from collections import deque
from collections.abc import Generator
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import torch

from lathadapter.adapter.trainer import optimiser_imports
from lathadapter.experiments.chunks import Collector, Item, chunk_batches, chunk_runs
from lathadapter.experiments.data import DataCache
from lathadapter.experiments.pool import (
    MAX_CHUNK,
    WorkerError,
    init_worker,
    script_hint,
    stop_workers,
    unpack,
    work_chunk,
    workers_pay,
)
from lathadapter.experiments.trainers import Trainer, on_trainers
from lathadapter.experiments.training import (
    Evaluator,
    Events,
    Job,
    KeyedRun,
    batches,
    claim_runs,
    save_trained,
    train_runs,
)
from lathadapter.progress import relayed, show_relayed


class InProcess:
    """Train in this process, a batch of up to `execution.batch_runs` compatible runs at a time (`training.batches`),
    each cache opened once and each few-shot set loaded once (`data.DataCache`); with `trainers` > 1 (on a GPU, the
    default `pool.GPU_TRAINERS`), on that many trainer threads, each on its own CUDA stream (`trainers.on_trainers`).
    Each run computes what it computes alone; only the order runs finish in changes."""

    def __init__(self, trainers: int = 1) -> None:
        self.trainers = trainers

    def label(self, job: Job) -> str:
        return "grid" if self.trainers == 1 else f"grid ({self.trainers} trainers)"

    def train(self, job: Job) -> Generator[Events, None, None]:
        index_of = {id(item): index for index, item in job.pending}
        cut = batches([item for _, item in job.pending], job.execution.batch_runs or 1)
        yield []
        for batch, states in on_trainers(cut, self.trainers, job.execution.device or "cpu", job.extra_factory,
                                         job.execution.kernels,
                                         lambda trainer, batch: train_batch(batch, job, trainer.data_cache,
                                                                            trainer.extra)):
            yield [(index_of[id(item)], state) for item, state in zip(batch, states, strict=True)]


def train_batch(batch: list[KeyedRun], job: Job, data_cache: DataCache, extra: Evaluator | None) -> list[str]:
    """Train and save a batch's runs, each unless it is finished or another process holds its lock; returns each
    run's state. The locks of the runs trained are held until each is saved (its metrics written last)."""
    runs = job.out / "runs"
    with contextlib.ExitStack() as held:
        claimed = claim_runs(batch, runs, held)
        states = [state or "skipped" for state in claimed]  # "done" once saved
        todo = [i for i, state in enumerate(claimed) if state is None]
        if not todo:
            return states
        items = [batch[i] for i in todo]
        datas = [data_cache.load(item.run.cache, item.run.config.shots, item.run.config.seed, item.run.config.text)
                 for item in items]
        trained = train_runs([item.run for item in items], datas, job.execution, extra, [item.group for item in items])
        for i, item, (config, outcome) in zip(todo, items, trained, strict=True):
            save_trained(job.out, item, job.infos[item.run.cache], config, outcome, job.execution)
            # safe while held: a process that opened it before finds metrics.json once it gets the lock
            (runs / f"{item.key}.lock").unlink()
            states[i] = "done"
    return states


class WorkerProcesses:
    """Train on `workers` spawned worker processes of one torch thread each, chunks of at most `chunk_size` runs of
    one cache (None: a few chunks per worker, at most `pool.MAX_CHUNK` runs), whole batches of `execution.batch_runs`
    each. On a GPU each worker has its own CUDA context; with several trainer threads (the execution's), a chunk is as
    many whole batches as a worker has trainers, the most shots first (`chunks.chunk_batches`). An error in a run stops
    the grid as in one process, after saving every run sent back; Ctrl-C, SIGTERM or a failed save (a full disk)
    kills the workers at once.

    `probe` (the automatic worker count): this process trains batches itself, from both ends of the grid, and
    starts the workers only once the runs left would take it longer than their start (`pool.workers_pay`, from the
    seconds its runs took, on one thread as in each worker); they train the rest. A grid of cheap runs never starts
    one (100 runs of a few milliseconds: 4.0 s, against 5.9 s on 2 workers from the start and 3.9 s in one process;
    benchmarks/grid_auto_workers.py)."""

    def __init__(self, workers: int, chunk_size: int | None = None, probe: bool = False) -> None:
        self.workers = workers
        self.chunk_size = chunk_size
        self.probe = probe

    def chunks(self, job: Job) -> list[list[Item]]:
        batch_runs = job.execution.batch_runs or 1
        trainers = job.execution.trainers_on(job.execution.device or "cpu")
        if trainers > 1 and self.chunk_size is None:
            return chunk_batches(job.pending, batch_runs, trainers)
        size = self.chunk_size or max(1, min(MAX_CHUNK, math.ceil(len(job.pending) / (4 * self.workers))))
        size = math.ceil(size / batch_runs) * batch_runs  # whole batches per chunk
        return chunk_runs(job.pending, size, batch_runs)

    def label(self, job: Job) -> str:
        workers = min(self.workers, len(self.chunks(job)))
        return f"grid ({workers} worker{'s' if workers != 1 else ''})"

    def train(self, job: Job) -> Generator[Events, None, None]:
        todo = deque(self.chunks(job))
        collector = Collector(job)
        errors: list[BaseException] = []
        shown: set[str] = set()  # the warnings' texts shown: each once, whichever process raised it
        yield []
        if self.probe:
            yield from _until_workers_pay(job, todo, self.workers, shown)
            if not todo:
                return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(self.workers, len(todo)), mp_context=context, initializer=init_worker,
                                 initargs=(os.getpid(),)) as pool:
            futures = [_submit(pool, job, chunk) for chunk in todo]
            try:
                for future in as_completed(futures):
                    yield from _sent_back(future, collector, errors, shown)
                    if errors:
                        for other in futures:
                            other.cancel()  # chunks not started; those running finish and are saved
            except BaseException:  # Ctrl-C, SIGTERM raised as it (cli), the round abandoned, or saving failed (a
                stop_workers(pool)  # full disk): the workers stop now, not after training every chunk left
                raise
        if errors:
            raise errors[0]


def _until_workers_pay(job: Job, todo: deque[list[Item]], workers: int, shown: set[str]
                       ) -> Generator[Events, None, None]:
    """Train here, batch by batch, until the runs left would take longer here than `workers` workers need to start
    (`pool.workers_pay`, from the seconds the runs trained here took, this process's one-time imports done first);
    returns with the chunks left, none when workers never paid. The batches come from both ends of the grid in turn,
    so that the estimate sees its cheap and its costly runs early (a grid's methods, and shots, come in order;
    results do not depend on the order runs train in). Warnings are shown as the workers' are, each text once
    (`shown`)."""
    optimiser_imports()
    trainer = Trainer(job.execution.device or "cpu", job.extra_factory)
    runs, seconds, back = 0, 0.0, False
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: a run's float sums, so its results, do not depend on where it trained
    try:
        while todo:
            start = time.perf_counter()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    events = _train_here(job, todo, trainer, back)
            finally:  # also those raised before a run's error, which come before it as they did
                show_relayed(relayed(caught), shown)
            runs, seconds, back = runs + len(events), seconds + time.perf_counter() - start, not back
            yield events
            if workers_pay(sum(len(chunk) for chunk in todo) * seconds / max(runs, 1), workers):
                return
    finally:
        torch.set_num_threads(threads)
        trainer.close()


def _submit(pool: ProcessPoolExecutor, job: Job, chunk: list[Item]) -> Future[bytes]:
    return pool.submit(work_chunk, os.path.abspath(chunk[0][1].run.cache), chunk, str(job.out), job.execution,
                       job.extra_factory)


def _sent_back(future: Future[bytes], collector: Collector, errors: list[BaseException], shown: set[str]
               ) -> Generator[Events, None, None]:
    """Save the runs a finished chunk sent back, yielding their events, then show its warnings (each text once:
    `shown`; after the runs are saved, which a warning the command's filters make an error must not lose); its error
    (or a dead worker's) is added to `errors`."""
    try:
        results, error, messages = unpack(future.result())
    except CancelledError:
        return
    except BrokenProcessPool as broken:
        results, error, messages = [], WorkerError(f"a worker process died ({broken}); the finished runs are saved, "
                                                   "rerun the grid to complete the rest" + script_hint()), []
    for result in results:
        yield collector.take(result)
    show_relayed(messages, shown)
    if error is not None:
        errors.append(error)


def _train_here(job: Job, todo: deque[list[Item]], trainer: Trainer, back: bool = False) -> Events:
    """Train and save in this process the first batch of the next chunk, or of the last with `back` (its runs'
    `config.json` record `workers` 1, where they trained); the chunk's other runs go back where it was. Returns the
    batch's events."""
    chunk = todo.pop() if back else todo.popleft()
    index_of = {id(item): index for index, item in chunk}
    batch, *rest = batches([item for _, item in chunk], job.execution.batch_runs or 1)
    if rest:
        left = [(index_of[id(item)], item) for part in rest for item in part]
        if back:
            todo.append(left)
        else:
            todo.appendleft(left)
    here = dataclasses.replace(job, execution=dataclasses.replace(job.execution, workers=1))
    states = train_batch(batch, here, trainer.data_cache, trainer.extra)
    return [(index_of[id(item)], state) for item, state in zip(batch, states, strict=True)]
