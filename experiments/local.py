"""The backends of this machine: runs trained in this process (`InProcess`), or on worker processes of one torch
thread each (`WorkerProcesses`, `--workers N`; the pool's mechanics are `pool`'s).

In this process, each batch of runs trains while this process holds their lock files (`OUT/runs/<key>.lock`; a run
another process holds is left to it, "elsewhere") and is saved before the locks are let go. On workers, the pending
runs are cut into chunks of one cache (`chunks.chunk_runs`, as on Ray); each chunk trains in a worker with the shared
`training.train_runs` (`chunks.train_chunk`) and sends its runs back; this process alone saves them, under their
locks: same keys, same layout, same resume.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import queue
import threading
from collections.abc import Generator
from concurrent.futures import CancelledError, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import torch

from lathadapter.experiments.chunks import Item, Tally, chunk_runs
from lathadapter.experiments.data import DataCache
from lathadapter.experiments.pool import MAX_CHUNK, WorkerError, init_worker, stop_workers, work_chunk
from lathadapter.experiments.table import file_lock
from lathadapter.experiments.training import Evaluator, Events, Job, KeyedRun, batches, save_trained, train_runs
from lathadapter.kernels.dispatch import backend as kernels_backend


class InProcess:
    """Train in this process, a batch of up to `execution.batch_runs` compatible runs at a time (`training.batches`),
    each cache opened once and each few-shot set loaded once (`data.DataCache`). With `trainers` > 1 (on a GPU:
    `--workers N --device cuda`), that many threads take the batches in turn, each with its own data cache and, on
    CUDA, its own stream: a small run's step is a chain of small kernels that leaves most of the GPU idle, and the
    streams' kernels run side by side. Each run computes what it computes alone; only the order runs finish in
    changes."""

    def __init__(self, trainers: int = 1) -> None:
        self.trainers = trainers

    def label(self, job: Job) -> str:
        return "grid" if self.trainers == 1 else f"grid ({self.trainers} trainers)"

    def train(self, job: Job) -> Generator[Events, None, None]:
        index_of = {id(item): index for index, item in job.pending}
        cut = batches([item for _, item in job.pending], job.execution.batch_runs or 1)
        yield []
        if self.trainers == 1 or len(cut) == 1:
            trainer = Trainer(job)
            try:
                for batch in cut:
                    states = trainer.train(batch)
                    yield [(index_of[id(item)], state) for item, state in zip(batch, states, strict=True)]
            finally:
                trainer.close()
            return
        # the longest first (a run's steps grow with its shots), so the last batches to start are short ones
        cut.sort(key=lambda batch: -batch[0].run.config.shots)
        finished: queue.Queue[tuple[list[KeyedRun], list[str]] | BaseException | None] = queue.Queue()
        todo = iter(cut)
        taking, stop = threading.Lock(), threading.Event()
        threads = torch.get_num_threads()

        def work() -> None:
            trainer = None
            try:
                torch.set_num_threads(threads)  # a new thread starts with OpenMP's default count, not this thread's
                trainer = Trainer(job)
                while not stop.is_set():
                    with taking:
                        batch = next(todo, None)
                    if batch is None:
                        break
                    finished.put((batch, trainer.train(batch)))
            except BaseException as error:  # noqa: BLE001 (handed to the driver, which raises it)
                stop.set()
                finished.put(error)
            finally:
                if trainer is not None:
                    trainer.close()
                finished.put(None)  # this thread is done: the driver counts these

        workers = [threading.Thread(target=work, name=f"trainer-{i}", daemon=True)
                   for i in range(min(self.trainers, len(cut)))]
        with kernels_backend(job.execution.kernels):  # the threads' own settings of it then restore this one
            for thread in workers:
                thread.start()
            running, error = len(workers), None
            try:
                while running:
                    event = finished.get()
                    if event is None:
                        running -= 1
                    elif isinstance(event, BaseException):
                        error = error or event
                    else:
                        batch, states = event
                        yield [(index_of[id(item)], state) for item, state in zip(batch, states, strict=True)]
            finally:
                stop.set()  # Ctrl-C or an error: no thread takes another batch; each saves the one it trains
                for thread in workers:
                    thread.join()
        if error is not None:
            raise error


class Trainer:
    """One trainer of `InProcess`: its data cache, its evaluator and, on CUDA when it is one of several threads, its
    own stream (made current in the thread that builds it)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        device = job.execution.device or "cpu"
        if threading.current_thread() is not threading.main_thread() and torch.device(device).type == "cuda":
            torch.cuda.set_stream(torch.cuda.Stream(device))
        self.data_cache = DataCache(device)
        self.extra = job.extra_factory(device) if job.extra_factory is not None else None

    def train(self, batch: list[KeyedRun]) -> list[str]:
        return train_batch(batch, self.job, self.data_cache, self.extra)

    def close(self) -> None:
        self.data_cache.close()


def train_batch(batch: list[KeyedRun], job: Job, data_cache: DataCache, extra: Evaluator | None) -> list[str]:
    """Train and save a batch's runs, each unless it is finished or another process holds its lock; returns each
    run's state. The locks of the runs trained are held until each is saved (its metrics written last)."""
    runs = job.out / "runs"
    states = ["skipped"] * len(batch)
    todo = []
    with contextlib.ExitStack() as stack:
        for i, item in enumerate(batch):
            folder = runs / item.key
            if (folder / "metrics.json").exists():
                continue
            if not stack.enter_context(file_lock(runs / f"{item.key}.lock", wait=False)):
                states[i] = "elsewhere"
                continue
            if (folder / "metrics.json").exists():  # finished by another process since the first look
                (runs / f"{item.key}.lock").unlink(missing_ok=True)  # safe while held (`table.file_lock`)
                continue
            todo.append(i)
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
    """Train on `workers` spawned worker processes of one torch thread each (CPU only), chunks of at most
    `chunk_size` runs of one cache (None: a few chunks per worker, at most `pool.MAX_CHUNK` runs), whole batches of
    `execution.batch_runs` each. An error in a run stops the grid as in one process, after saving every run sent
    back; Ctrl-C kills the workers at once."""

    def __init__(self, workers: int, chunk_size: int | None = None) -> None:
        self.workers = workers
        self.chunk_size = chunk_size

    def chunks(self, job: Job) -> list[list[Item]]:
        batch_runs = job.execution.batch_runs or 1
        size = self.chunk_size or max(1, min(MAX_CHUNK, math.ceil(len(job.pending) / (4 * self.workers))))
        size = math.ceil(size / batch_runs) * batch_runs  # whole batches per chunk
        return chunk_runs(job.pending, size, batch_runs)

    def label(self, job: Job) -> str:
        return f"grid ({min(self.workers, len(self.chunks(job)))} workers)"

    def train(self, job: Job) -> Generator[Events, None, None]:
        chunks = self.chunks(job)
        tally = Tally(job)
        errors: list[BaseException] = []
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(self.workers, len(chunks)), mp_context=context, initializer=init_worker,
                                 initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(work_chunk, os.path.abspath(chunk[0][1].run.cache), chunk, str(job.out),
                                   job.execution, job.extra_factory) for chunk in chunks]
            try:
                yield []
                for future in as_completed(futures):
                    try:
                        results, error = future.result()
                    except CancelledError:
                        continue
                    except BrokenProcessPool as broken:
                        results, error = [], WorkerError(f"a worker process died ({broken}); the finished runs are "
                                                         "saved, rerun the grid to complete the rest")
                    for result in results:
                        yield tally.take(result)
                    if error is not None:
                        errors.append(error)
                        for other in futures:
                            other.cancel()  # chunks not started; those running finish and are saved
            except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C, SIGTERM raised as it (cli), or the round abandoned
                stop_workers(pool)
                raise
        if errors:
            raise errors[0]
