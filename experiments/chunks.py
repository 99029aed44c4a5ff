"""A grid's pending runs in chunks, trained away from the process that saves them: the part both such backends share
(worker processes of this machine, `pool`; a Ray cluster, `ray_backend`).

The pending runs (no `metrics.json` yet) are grouped by cache, in grid order, and cut into chunks; a worker trains a
chunk's runs in order with the same `training.train_runs` as the in-process backend, opening the cache once, and
sends each trained run back (`Trained`: configuration, metrics, CPU weights, lifted points). The driver alone writes
run directories (`save_streamed`, under the run's lock as the in-process backend does; `Tally`) and, as each comes
back, `results.csv` (`launch`): same keys, same layout, same resume.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lathadapter.experiments.data import DataCache
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.run import RunConfig, RunOutcome
from lathadapter.experiments.table import file_lock
from lathadapter.experiments.training import Evaluator, Item, Job, KeyedRun, batches, save_trained, train_runs


@dataclass
class Trained:
    """What a worker sends back per run: everything `save_run` needs, on the CPU, and the worker's PID."""

    index: int
    config: RunConfig
    metrics: dict[str, Any]
    weights: dict[str, Any]
    points: Any
    pid: int


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


def chunk_runs(pending: list[Item], size: int, batch_runs: int = 1) -> list[list[Item]]:
    """Pending runs grouped by cache (in grid order), cut into chunks of at most `size`; with `batch_runs` > 1, the
    runs of a cache in the order of `training.batches`, so that a chunk holds runs that train together."""
    by_cache: dict[str, list[Item]] = {}
    for index, item in pending:
        by_cache.setdefault(item.run.cache, []).append((index, item))
    if batch_runs > 1:
        for cache, runs in by_cache.items():
            position = {id(item): (index, item) for index, item in runs}
            by_cache[cache] = [position[id(item)] for batch in batches([item for _, item in runs], batch_runs)
                               for item in batch]
    return [runs[i:i + size] for runs in by_cache.values() for i in range(0, len(runs), size)]


def train_chunk(cache: str, items: list[Item], out: str, execution: Execution,
                extra_factory: Callable[[str], Evaluator] | None) -> Iterator[Trained | int]:
    """On a worker: train a chunk's runs of one cache on `execution.device`, opening the cache once, up to
    `execution.batch_runs` compatible runs together (`training.batches`); yields each trained run, or its index when
    it was finished meanwhile (by another process, or before a resubmission). `extra_factory(device)` builds the
    evaluator that adds metrics (a protocol's targets)."""
    device = execution.device or "cpu"
    data_cache = DataCache(device)
    extra = extra_factory(device) if extra_factory is not None else None
    index_of = {id(item): index for index, item in items}
    try:
        for batch in batches([item for _, item in items], execution.batch_runs or 1):
            todo = []
            for item in batch:
                if (Path(out) / "runs" / item.key / "metrics.json").exists():
                    yield index_of[id(item)]
                else:
                    todo.append(item)
            if not todo:
                continue
            datas = [data_cache.load(cache, i.run.config.shots, i.run.config.seed, i.run.config.text) for i in todo]
            trained = train_runs([i.run for i in todo], datas, execution, extra, [i.group for i in todo])
            for item, (config, outcome) in zip(todo, trained, strict=True):
                weights = {k: v.detach().cpu() for k, v in outcome.method.state_dict().items()}
                yield Trained(index_of[id(item)], config, outcome.metrics, weights, to_cpu(outcome.points),
                              os.getpid())
    finally:
        data_cache.close()


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


class Tally:
    """The driver's side of a chunked round: `take` saves a run sent back (or notes one finished meanwhile) and
    returns its event for the driver; `unfinished` holds the pending runs not yet back (a lost chunk's are
    resubmitted)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.unfinished = {i for i, _ in job.pending}

    def take(self, result: Trained | int) -> list[tuple[int, str]]:
        """Save a trained run (or note a run finished meanwhile, its index); returns [(its index, its state)]."""
        if isinstance(result, int):
            index, state = result, "skipped"
        else:
            index = result.index
            state = save_streamed(self.job, self.job.keyed[index], result)
        self.unfinished.discard(index)
        return [(index, state)]
