"""Grids and protocols on a Ray cluster (`--backend ray`, the `OnRay` backend), an optional extra: `pip install
'lathadapter[ray]'` (reached through `ray_cluster`).

A grid's pending runs (those without `metrics.json`) are split into chunks of one cache each, in grid order; each
chunk is one Ray task (a streaming generator, `chunks.train_chunk`, shared with `--workers`) that opens its cache
once and trains its runs in order with the same `training.train_runs` as the local backends, yielding each trained
run (configuration, metrics, CPU weights, lifted points) as soon as it is done. The driver, this process, alone writes
the run directories (`chunks.save_streamed`, under the run's lock as the local backends) and `results.csv`, as each
run streams back: same keys, same layout, same resume. Warnings a chunk task raises stream back too (`Warned`), shown
by the driver as its own.
A worker killed mid-chunk loses only its unfinished runs; the driver resubmits them (`RayOptions.retries` times), and
a rerun of the grid completes whatever is still missing. An error a chunk task raises stops the grid with it, as on the
local backend; a round stopped early (Ctrl-C, an error) cancels its chunk tasks, also on a cluster that outlives it.

Caches and the output folder must be on storage every worker sees (a shared file system): one probe task checks, at
start, that it can open every cache (a protocol's targets too) and see the output folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import warnings
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

from lathadapter.adapter.options import OptionError
from lathadapter.cache.store import CacheError, CacheReader
from lathadapter.experiments.chunks import Collector, Elsewhere, Item, Trained, chunk_runs, train_chunk
from lathadapter.experiments.execution import DEFAULT_GPUS_PER_CHUNK, Execution
from lathadapter.experiments.machine import auto_batch_runs
from lathadapter.experiments.ray_cluster import RayBackendError, connect
from lathadapter.experiments.training import Evaluator, Events, Job
from lathadapter.progress import relayed, show_relayed
from lathadapter.version import __version__


def _probe(caches: list[str], out: str, token: str, extra_factory: Callable[[str], Evaluator] | None) -> list[str]:
    """On a worker: the caches it cannot open, whether it sees the output folder (the token file the driver wrote),
    and whether it can build the evaluator that adds metrics (a protocol's targets, opened as the chunk tasks will)."""
    problems = []
    for path in caches:
        try:
            with CacheReader(path) as reader:
                reader.info()
        except (CacheError, OSError) as error:
            problems.append(f"cache {path} is not visible from the Ray workers: put caches and --out on shared "
                            f"storage ({error})")
    if not (Path(out) / token).is_file():
        problems.append(f"--out {out} is not visible from the Ray workers: put caches and --out on shared storage")
    if extra_factory is not None:
        try:
            extra_factory("cpu")
        except (CacheError, OSError) as error:
            problems.append("the protocol's target caches are not visible from the Ray workers: put caches and --out "
                            f"on shared storage ({error})")
    return problems


@dataclasses.dataclass(frozen=True)
class Warned:
    """Warnings a chunk task caught on its worker, sent back between its runs (`progress.relayed`)."""

    messages: list[Warning]


def _chunk_task(cache: str, items: list[Item], out: str, execution: Execution,
                extra_factory: Callable[[str], Evaluator] | None) -> Iterator[Trained | Elsewhere | int | Warned]:
    """A chunk task: `chunks.train_chunk` on a Ray worker, the warnings it raises sent back before each result."""
    with warnings.catch_warnings(record=True) as caught:
        for result in train_chunk(cache, items, out, execution, extra_factory):
            if caught:
                yield Warned(relayed(caught))
            yield result
        if caught:
            yield Warned(relayed(caught))


def check_shared(ray: Any, caches: list[str], out: Path,
                 extra_factory: Callable[[str], Evaluator] | None = None) -> None:
    """Fail clearly unless a Ray worker can open every cache, see `out` and build `extra_factory`'s evaluator (one
    probe task)."""
    token = f".ray-probe-{secrets.token_hex(6)}"
    (out / token).write_text(str(os.getpid()))
    try:
        problems = ray.get(ray.remote(_probe).options(num_cpus=0).remote(caches, str(out), token, extra_factory))
    except ray.exceptions.RayTaskError as error:
        raise task_error(ray, error) from None
    finally:
        (out / token).unlink(missing_ok=True)
    if problems:
        raise RayBackendError("\n  ".join(problems))


# Ray's account of a task whose worker could not load its function (lathadapter missing there, or another version)
IMPORT_FAILED = "failed to import on the worker"


def task_error(ray: Any, error: Any) -> Exception:
    """The exception a task raised (`RayTaskError.cause`), as the local backend would raise it; a RayBackendError
    when its worker could not load lathadapter's code, or when the exception did not come back (Ray could not pickle
    it), with Ray's account of it."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, RuntimeError) and IMPORT_FAILED in str(cause):
        reason = str(cause).strip().splitlines()[-1]
        return RayBackendError(f"the Ray workers cannot load lathadapter's tasks ({reason}); install lathadapter "
                               f"{__version__}, as here, on every node of the cluster")
    if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
        return cause
    return RayBackendError(f"a Ray chunk task failed: {error}")


# How long a round stopped early waits for its cancelled chunk tasks to end (`end_tasks`)
END_SECONDS = 30.0


def end_tasks(ray: Any, generators: list[Any]) -> None:
    """Cancel the chunk tasks of a round stopped early and wait (at most `END_SECONDS`) until they have ended: on a
    cluster that outlives the round (a notebook's) they trained on, holding run locks, for results nobody saves."""
    for generator in generators:
        ray.cancel(generator, force=True)
    if generators:
        ray.wait([generator.completed() for generator in generators], num_returns=len(generators),
                 timeout=END_SECONDS)


class OnRay:
    """Train on a Ray cluster (`execution.ray`: its address, runs per chunk task, GPU share of a task, retries),
    chunks of one cache each; the device (None: cuda when the cluster has GPUs) and `batch_runs` (None: by that
    device) are settled once connected. `on_saved` is called after each run is saved (tests use it to kill a
    worker)."""

    def __init__(self, on_saved: Callable[[Trained], None] | None = None) -> None:
        self.on_saved = on_saved

    def label(self, job: Job) -> str:
        return "grid (ray)"

    def train(self, job: Job) -> Generator[Events, None, None]:
        options = job.execution.ray
        lost: list[str] = []
        shown: set[str] = set()  # the texts of the warnings the tasks sent back, each shown once
        with connect(options.address, options.init_options) as ray:
            gpus = ray.cluster_resources().get("GPU", 0)
            device = job.execution.device
            if device is None:
                device = "cuda" if gpus else "cpu"
            elif device.startswith("cuda") and not gpus:
                raise OptionError(f"--device {device}: the Ray cluster has no GPU; use --device cpu")
            if options.gpus_per_chunk is not None and not gpus and job.execution.device is None:
                warnings.warn(f"--gpus-per-chunk {options.gpus_per_chunk} has no effect: the Ray cluster has no GPU, "
                              "chunk tasks train on the CPU", stacklevel=2)
            options = dataclasses.replace(options, gpus_per_chunk=options.gpus_per_chunk or DEFAULT_GPUS_PER_CHUNK)
            # one trainer thread per chunk task unless --trainers says otherwise: several tasks share a GPU already
            execution = dataclasses.replace(job.execution, device=device, trainers=job.execution.trainers or 1,
                                            batch_runs=job.execution.batch_runs or auto_batch_runs(device),
                                            ray=options)
            job = dataclasses.replace(job, execution=execution)
            resources = {"num_cpus": 1, "num_gpus": options.gpus_per_chunk if device.startswith("cuda") else 0}
            check_shared(ray, sorted({os.path.abspath(item.run.cache) for _, item in job.pending}), job.out,
                         job.extra_factory)
            task = ray.remote(_chunk_task).options(max_retries=0, **resources)

            def submit(chunk: list[Item]) -> Any:
                return task.remote(os.path.abspath(chunk[0][1].run.cache), chunk, str(job.out), execution,
                                   job.extra_factory)

            batch_runs = execution.batch_runs or 1
            size = math.ceil(options.chunk_size / batch_runs) * batch_runs  # whole batches per chunk
            chunks = {submit(chunk): (chunk, 0) for chunk in chunk_runs(job.pending, size, batch_runs)}
            collector = Collector(job)
            try:
                yield []
                while chunks:
                    ready, _ = ray.wait(list(chunks), num_returns=1)
                    generator = ready[0]
                    chunk, tries = chunks[generator]
                    try:
                        result = ray.get(next(generator))
                    except StopIteration:
                        del chunks[generator]
                        continue
                    except ray.exceptions.RayTaskError as error:  # the task's code raised: the grid stops, as locally
                        raise task_error(ray, error) from None
                    except ray.exceptions.RayError as error:  # the worker or its node died: resubmitted
                        del chunks[generator]
                        left = [(i, item) for i, item in chunk if i in collector.unfinished]
                        if left and tries < options.retries:
                            chunks[submit(left)] = (left, tries + 1)
                        elif left:
                            lost.append(f"{len(left)} run(s) of {chunk[0][1].run.cache}: {type(error).__name__}: "
                                        f"{str(error).splitlines()[0] if str(error) else ''}")
                        continue
                    if isinstance(result, Warned):
                        show_relayed(result.messages, shown)
                        continue
                    yield collector.take(result)
                    if self.on_saved is not None and not isinstance(result, int):
                        self.on_saved(result)
            finally:  # stopped early (Ctrl-C, an error): its tasks end with it
                end_tasks(ray, list(chunks))
        if lost:
            raise RayBackendError(f"{len(collector.unfinished)} run(s) were lost with their Ray workers; the finished "
                                  "runs are saved, rerun the grid to complete the rest:\n  " + "\n  ".join(lost))
