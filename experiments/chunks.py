"""A grid's pending runs in chunks, trained away from the process that saves them: the part both such backends share
(worker processes of this machine, `pool`; a Ray cluster, `ray_backend`).

The pending runs (no `metrics.json` yet) are grouped by cache, in grid order, and cut into chunks; a worker trains a
chunk's runs in order with the same `training.train_runs` as the in-process backend, opening the cache once, and
sends each trained run back (`Trained`: configuration, metrics, CPU weights, lifted points). The driver alone writes
run directories (`save_streamed`, under the run's lock as the in-process backend does; `Collector`) and, as each
comes back, `results.csv` (`launch`): same keys, same layout, same resume.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lathadapter.experiments.execution import Execution
from lathadapter.experiments.run import RunConfig, RunOutcome
from lathadapter.experiments.table import file_lock
from lathadapter.experiments.trainers import Trainer, on_trainers
from lathadapter.experiments.training import (
    Evaluator,
    Item,
    Job,
    KeyedRun,
    batches,
    claim_runs,
    save_trained,
    train_runs,
)


@dataclass
class Trained:
    """What a worker sends back per run: everything `save_run` needs, on the CPU, and the worker's PID."""

    index: int
    config: RunConfig
    metrics: dict[str, Any]
    weights: dict[str, Any]
    points: Any
    pid: int


@dataclass(frozen=True)
class Elsewhere:
    """What a worker sends back for a run another process holds the lock of (it trains it): its index."""

    index: int


class Weights:
    """Stands in for the trained method when the driver saves a run: `save_run` reads only its `state_dict()`."""

    def __init__(self, weights: dict[str, Any]) -> None:
        self._weights = weights

    def state_dict(self) -> dict[str, Any]:
        return self._weights


def to_cpu(value: Any) -> Any:
    """Tensors (also inside dicts, lists, tuples) detached and on the CPU; anything else as it is."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    return value


def cache_batches(pending: list[Item], batch_runs: int) -> list[list[list[Item]]]:
    """Each cache's pending runs (caches in grid order) cut into the batches that train together
    (`training.batches`; with `batch_runs` 1, every run alone in grid order), each run with its index."""
    by_cache: dict[str, list[Item]] = {}
    for index, item in pending:
        by_cache.setdefault(item.run.cache, []).append((index, item))
    cut = []
    for runs in by_cache.values():
        position = {id(item): (index, item) for index, item in runs}
        cut.append([[position[id(item)] for item in batch] for batch in batches([item for _, item in runs],
                                                                                  batch_runs)])
    return cut


def chunk_runs(pending: list[Item], size: int, batch_runs: int = 1) -> list[list[Item]]:
    """Pending runs grouped by cache (in grid order), cut into chunks of at most `size`; with `batch_runs` > 1, the
    runs of a cache in the order of `training.batches`, so that a chunk holds runs that train together."""
    per_cache = [[item for batch in cut for item in batch] for cut in cache_batches(pending, batch_runs)]
    return [runs[i:i + size] for runs in per_cache for i in range(0, len(runs), size)]


def chunk_batches(pending: list[Item], batch_runs: int, per_chunk: int) -> list[list[Item]]:
    """Pending runs cut into batches of one cache (`training.batches`), `per_chunk` whole batches a chunk, the
    batches with most shots first, so that the chunks handed out last are short (a run's steps grow with its shots):
    the chunks of worker processes with several trainer threads, each thread training one batch at a time."""
    chunks = []
    for cut in cache_batches(pending, batch_runs):
        cut = sorted(cut, key=lambda batch: -batch[0][1].run.config.shots)
        chunks += [[item for batch in cut[i:i + per_chunk] for item in batch] for i in range(0, len(cut), per_chunk)]
    return sorted(chunks, key=lambda chunk: -chunk[0][1].run.config.shots)


def train_chunk(cache: str, items: list[Item], out: str, execution: Execution,
                extra_factory: Callable[[str], Evaluator] | None) -> Iterator[Trained | Elsewhere | int]:
    """On a worker: train a chunk's runs of one cache on `execution.device`, up to `execution.batch_runs` compatible
    runs together (`training.batches`), on the execution's trainer threads (`trainers.on_trainers`), each
    opening the cache once; each run trains under its lock file, as in one process; yields each trained run, its
    index when it was finished meanwhile (by another process, or before a resubmission), or `Elsewhere` when another
    process holds its lock. `extra_factory(device)` builds the evaluator that adds metrics (a protocol's
    targets)."""
    index_of = {id(item): index for index, item in items}
    runs = Path(out) / "runs"

    def train(trainer: Trainer, batch: list[KeyedRun]) -> list[Trained | Elsewhere | int]:
        # each run trains under its lock, as in one process; the driver saves it under the lock again once this
        # batch has let them go
        with contextlib.ExitStack() as held:
            claimed = claim_runs(batch, runs, held)
            sent: list[Trained | Elsewhere | int] = [
                Elsewhere(index_of[id(item)]) if state == "elsewhere" else index_of[id(item)]
                for item, state in zip(batch, claimed, strict=True) if state is not None]
            todo = [item for item, state in zip(batch, claimed, strict=True) if state is None]
            if not todo:
                return sent
            datas = [trainer.data_cache.load(cache, i.run.config.shots, i.run.config.seed, i.run.config.text)
                     for i in todo]
            trained = train_runs([i.run for i in todo], datas, execution, trainer.extra, [i.group for i in todo])
        for item, (config, outcome) in zip(todo, trained, strict=True):
            weights = {k: v.detach().cpu() for k, v in outcome.method.state_dict().items()}
            sent.append(Trained(index_of[id(item)], config, outcome.metrics, weights, to_cpu(outcome.points),
                                os.getpid()))
        return sent

    device = execution.device or "cpu"
    cut = batches([item for _, item in items], execution.batch_runs or 1)
    for _, results in on_trainers(cut, execution.trainers_on(device), device, extra_factory, execution.kernels,
                                  train):
        # not `yield from`: Ray drives the generator with send(), which a list's iterator lacks
        for result in results:  # noqa: UP028
            yield result


def save_streamed(job: Job, item: KeyedRun, trained: Trained) -> str:
    """Write a run sent back by a worker, under its lock as the in-process backend: "elsewhere" when another process
    holds the lock, "skipped" when it was finished meanwhile, else "done"."""
    folder = job.out / "runs" / item.key
    lock = job.out / "runs" / f"{item.key}.lock"
    with file_lock(lock, wait=False) as held:
        if not held:
            return "elsewhere"
        if (folder / "metrics.json").exists():
            lock.unlink(missing_ok=True)  # safe while held (`table.file_lock`); else left stale
            return "skipped"
        outcome = RunOutcome(Weights(trained.weights), trained.metrics, None, trained.points)  # type: ignore[arg-type]
        save_trained(job.out, item, job.infos[item.run.cache], trained.config, outcome, job.execution)
        lock.unlink()
    return "done"


class Collector:
    """The driver's side of a chunked round: `take` saves a run sent back (or notes one finished meanwhile) and
    returns its event for the driver; `unfinished` holds the pending runs not yet back (a lost chunk's are
    resubmitted)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.unfinished = {i for i, _ in job.pending}

    def take(self, result: Trained | Elsewhere | int) -> list[tuple[int, str]]:
        """Save a trained run (or note a run finished meanwhile, its index, or one another process trains);
        returns [(its index, its state)]."""
        if isinstance(result, int):
            index, state = result, "skipped"
        elif isinstance(result, Elsewhere):
            index, state = result.index, "elsewhere"
        else:
            index = result.index
            state = save_streamed(self.job, self.job.keyed[index], result)
        self.unfinished.discard(index)
        return [(index, state)]
