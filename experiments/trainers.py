"""Trainer threads: a process's batches of runs taken in turn by `trainers` threads, each with its own data cache,
evaluator and, on CUDA, its own stream. A small run's step is a chain of small kernels that leaves most of a GPU idle;
the streams' kernels run side by side. Used in this process (`local.InProcess`) and in each worker process
(`chunks.train_chunk`); each run computes what it computes alone, only the order runs finish in changes."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import TypeVar

import torch

from lathadapter.experiments.data import DataCache
from lathadapter.experiments.training import Evaluator, KeyedRun
from lathadapter.kernels.dispatch import backend as kernels_backend

Result = TypeVar("Result")


class Trainer:
    """One trainer: its data cache, its evaluator and, on CUDA when it is not the main thread, its own stream (made
    current in the thread that builds it)."""

    def __init__(self, device: str, extra_factory: Callable[[str], Evaluator] | None) -> None:
        if threading.current_thread() is not threading.main_thread() and torch.device(device).type == "cuda":
            torch.cuda.set_stream(torch.cuda.Stream(device))
        self.data_cache = DataCache(device)
        self.extra = extra_factory(device) if extra_factory is not None else None

    def close(self) -> None:
        self.data_cache.close()


def on_trainers(cut: list[list[KeyedRun]], trainers: int, device: str,
                extra_factory: Callable[[str], Evaluator] | None, kernels: str,
                train: Callable[[Trainer, list[KeyedRun]], Result]
                ) -> Generator[tuple[list[KeyedRun], Result], None, None]:
    """`train(trainer, batch)` for each batch of `cut`, yielding (batch, its result) as each finishes: in this thread
    with one trainer (or one batch), else on `trainers` threads that take the batches in turn, the most shots first
    (a run's steps grow with its shots, so the last batches to start are short ones). An error in one thread stops
    the others taking batches and is raised once all have stopped; closing the generator (Ctrl-C) lets each thread
    finish the batch it trains. `kernels`: the kernels backend the threads train under (a process-wide selection,
    set once around them)."""
    if trainers == 1 or len(cut) <= 1:
        trainer = Trainer(device, extra_factory)
        try:
            for batch in cut:
                yield batch, train(trainer, batch)
        finally:
            trainer.close()
        return
    todo = iter(sorted(cut, key=lambda batch: -batch[0].run.config.shots))
    finished: queue.Queue[tuple[list[KeyedRun], Result] | BaseException | None] = queue.Queue()
    taking, stop = threading.Lock(), threading.Event()
    threads = torch.get_num_threads()

    def work() -> None:
        trainer = None
        try:
            torch.set_num_threads(threads)  # a new thread starts with OpenMP's default count, not this thread's
            trainer = Trainer(device, extra_factory)
            while not stop.is_set():
                with taking:
                    batch = next(todo, None)
                if batch is None:
                    break
                finished.put((batch, train(trainer, batch)))
        except BaseException as error:  # noqa: BLE001 (handed to the driver, which raises it)
            stop.set()
            finished.put(error)
        finally:
            if trainer is not None:
                trainer.close()
            finished.put(None)  # this thread is done: the driver counts these

    workers = [threading.Thread(target=work, name=f"trainer-{i}", daemon=True)
               for i in range(min(trainers, len(cut)))]
    with kernels_backend(kernels):  # the threads' own settings of it then restore this one
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
                    yield event
        finally:
            stop.set()  # Ctrl-C or an error: no thread takes another batch; each finishes the one it trains
            for thread in workers:
                thread.join()
    if error is not None:
        raise error
