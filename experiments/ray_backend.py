"""Grids and protocols on a Ray cluster (`--backend ray`), an optional extra: `pip install
'lathadapter[ray]'`. Ray is imported here only, when a Ray backend is asked for, never at package import.

A grid's pending runs (those without `metrics.json`) are split into chunks of one cache each, in grid order; each
chunk is one Ray task (a streaming generator) that opens its cache once and trains its runs in order with the same
`grid.train_run` as the local backend, yielding each trained run (configuration, metrics, CPU weights, lifted points)
as soon as it is done. The driver, this process, alone writes the run directories (`grid.save_trained`, under the
run's lock as the local backend) and `results.csv`, as each run streams back: same keys, same layout, same resume.
A worker killed mid-chunk loses only its unfinished runs; the driver resubmits them (`retries` times), and a rerun of
the grid completes whatever is still missing.

Caches and the output folder must be on storage every worker sees (a shared file system): one probe task checks, at
start, that it can open every cache and see the output folder. (`cache build-many` uses `connect` from here; its
tasks live in `cli.py`, which may import the cache builder.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lathadapter.adapter.options import OptionError
from lathadapter.cache.store import CacheError, CacheReader
from lathadapter.experiments.grid import (
    DataCache,
    Evaluator,
    GridRun,
    GridSpec,
    KeyedRun,
    expand,
    file_lock,
    grid_progress,
    prepare,
    save_trained,
    summarize,
    train_run,
    write_results,
)
from lathadapter.experiments.run import RunConfig, RunOutcome

INSTALL_HINT = "--backend ray needs Ray, which is not installed: pip install 'lathadapter[ray]'"
BACKENDS = ("local", "ray")


class RayMissingError(OptionError):
    """`--backend ray` without Ray installed."""


class RayBackendError(ValueError):
    """The Ray cluster cannot run the grid (storage not shared, a chunk lost for good)."""


def import_ray() -> Any:
    """The `ray` module, or RayMissingError with the install hint."""
    try:
        import ray
    except ImportError:
        raise RayMissingError(INSTALL_HINT) from None
    return ray


@dataclass
class RayOptions:
    """How a grid runs on Ray: the cluster (`address`, None: a running one found by Ray, else a local one started
    for the grid), runs per chunk task, the GPU fraction of each chunk task when the cluster has GPUs (several
    chunks share a GPU), and how many times the driver resubmits the unfinished runs of a chunk whose worker died."""

    address: str | None = None
    chunk_size: int = 8
    gpu_fraction: float = 0.25
    retries: int = 1
    init_options: dict[str, Any] = field(default_factory=dict)  # more ray.init keywords (tests: num_cpus)

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise OptionError(f"--chunk-size {self.chunk_size}: must be at least 1")
        if not 0 < self.gpu_fraction <= 1:
            raise OptionError(f"--gpus-per-chunk {self.gpu_fraction}: must be in (0, 1]")


@dataclass
class Trained:
    """What a chunk task sends back per run: everything `save_run` needs, on the CPU, and the worker's PID."""

    index: int
    config: RunConfig
    metrics: dict[str, Any]
    weights: dict[str, Any]
    points: Any
    pid: int


class _Weights:
    """Stands in for the trained method when the driver saves a run: `save_run` reads only its `state_dict()`."""

    def __init__(self, weights: dict[str, Any]) -> None:
        self._weights = weights

    def state_dict(self) -> dict[str, Any]:
        return self._weights


def _to_cpu(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


@contextlib.contextmanager
def connect(options: RayOptions) -> Iterator[Any]:
    """Ray, initialised for the block: an existing connection is reused and left open; one made here is closed."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs = {"include_dashboard": False, "log_to_driver": True, **options.init_options}
    if options.address is not None:
        kwargs["address"] = options.address
        kwargs.pop("num_cpus", None)
        kwargs.pop("num_gpus", None)
    try:
        ray.init(**kwargs)
    except ConnectionError as error:
        raise RayBackendError(f"cannot connect to the Ray cluster at {options.address}: {error}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _probe(caches: list[str], out: str, token: str) -> list[str]:
    """On a worker: the caches it cannot open and whether it sees the output folder (the token file the driver
    wrote)."""
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
    return problems


def check_shared(ray: Any, caches: list[str], out: Path) -> None:
    """Fail clearly unless a Ray worker can open every cache and see `out` (one probe task)."""
    token = f".ray-probe-{secrets.token_hex(6)}"
    (out / token).write_text(str(os.getpid()))
    try:
        problems = ray.get(ray.remote(_probe).options(num_cpus=0).remote(caches, str(out), token))
    finally:
        (out / token).unlink(missing_ok=True)
    if problems:
        raise RayBackendError("\n  ".join(problems))


def _train_chunk(cache: str, items: list[tuple[int, KeyedRun]], out: str, device: str,
                 extra_factory: Callable[[str], Evaluator] | None) -> Iterator[Trained | int]:
    """On a worker: train a chunk's runs of one cache in order, opening the cache once; yields each trained run, or
    its index when it was finished meanwhile (by another process, or before a resubmission)."""
    data_cache = DataCache(device)
    extra = extra_factory(device) if extra_factory is not None else None
    try:
        for index, item in items:
            if (Path(out) / "runs" / item.key / "metrics.json").exists():
                yield index
                continue
            c = item.run.config
            data = data_cache.load(cache, c.shots, c.seed, c.text)
            config, outcome = train_run(item.run, data, extra, item.group)
            weights = {k: v.detach().cpu() for k, v in outcome.method.state_dict().items()}
            yield Trained(index, config, outcome.metrics, weights, _to_cpu(outcome.points), os.getpid())
    finally:
        data_cache.close()


def _chunks(pending: list[tuple[int, KeyedRun]], size: int) -> list[list[tuple[int, KeyedRun]]]:
    """Pending runs grouped by cache (in grid order), cut into chunks of at most `size`."""
    by_cache: dict[str, list[tuple[int, KeyedRun]]] = {}
    for index, item in pending:
        by_cache.setdefault(item.run.cache, []).append((index, item))
    return [runs[i:i + size] for runs in by_cache.values() for i in range(0, len(runs), size)]


def run_on_ray(runs: list[GridRun], out: Path, device: str | None, options: RayOptions | None = None, *,
               progress: bool = True, extra_factory: Callable[[str], Evaluator] | None = None, key_salt: str = "",
               on_saved: Callable[[Trained], None] | None = None) -> list[str]:
    """Run a grid's pending runs on Ray; returns each run's state ("done", "skipped", "elsewhere") in grid order.
    `extra_factory(device)` builds, on each worker, the evaluator that adds metrics (a protocol's targets);
    `on_saved` is called after each run is saved (tests use it to kill a worker)."""
    options = options or RayOptions()
    import_ray()
    out = out.resolve()
    infos, keyed = prepare(runs, out, key_salt)
    states = ["skipped"] * len(keyed)
    pending = [(i, item) for i, item in enumerate(keyed) if not (out / "runs" / item.key / "metrics.json").exists()]
    if not pending:
        write_results(out)
        return states
    with connect(options) as ray:
        gpus = ray.cluster_resources().get("GPU", 0)
        if device is None:
            device = "cuda" if gpus else "cpu"
        elif device.startswith("cuda") and not gpus:
            raise OptionError(f"--device {device}: the Ray cluster has no GPU; use --device cpu")
        resources = {"num_cpus": 1, "num_gpus": options.gpu_fraction if device.startswith("cuda") else 0}
        check_shared(ray, sorted({os.path.abspath(item.run.cache) for _, item in pending}), out)
        task = ray.remote(_train_chunk).options(max_retries=0, **resources)

        def submit(chunk: list[tuple[int, KeyedRun]]) -> Any:
            return task.remote(os.path.abspath(chunk[0][1].run.cache), chunk, str(out), device, extra_factory)

        chunks = {}
        for chunk in _chunks(pending, options.chunk_size):
            chunks[submit(chunk)] = (chunk, 0)
        unfinished = {i for i, _ in pending}
        lost: list[str] = []
        counts = {"done": 0, "skipped": len(keyed) - len(pending), "elsewhere": 0}
        with grid_progress() as bar:
            bar_task = bar.add_task("grid (ray)", total=len(keyed), completed=counts["skipped"], **counts,
                                    visible=progress)
            while chunks:
                ready, _ = ray.wait(list(chunks), num_returns=1)
                generator = ready[0]
                chunk, tries = chunks[generator]
                try:
                    result = ray.get(next(generator))
                except StopIteration:
                    del chunks[generator]
                    continue
                except ray.exceptions.RayError as error:
                    del chunks[generator]
                    left = [(i, item) for i, item in chunk if i in unfinished]
                    if left and tries < options.retries:
                        chunks[submit(left)] = (left, tries + 1)
                    elif left:
                        lost.append(f"{len(left)} run(s) of {chunk[0][1].run.cache}: {type(error).__name__}: "
                                    f"{str(error).splitlines()[0] if str(error) else ''}")
                    continue
                if isinstance(result, int):
                    index, state = result, "skipped"
                else:
                    index = result.index
                    state = _save(out, keyed[index], infos[keyed[index].run.cache], result, device)
                unfinished.discard(index)
                states[index] = state
                counts[state] += 1
                if state == "done":
                    write_results(out)
                bar.update(bar_task, advance=1, **counts)
                if on_saved is not None and not isinstance(result, int):
                    on_saved(result)
    write_results(out)
    if lost:
        raise RayBackendError(f"{len(unfinished)} run(s) were lost with their Ray workers; the finished runs are "
                              "saved, rerun the grid to complete the rest:\n  " + "\n  ".join(lost))
    return states


def run_grid_on_ray(spec: GridSpec, out: Path, device: str | None = None, options: RayOptions | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """`grid.run_grid` on a Ray cluster: the same summary, run folders and `results.csv`."""
    runs = expand(spec)
    start = time.perf_counter()
    states = run_on_ray(runs, out, device, options, progress=progress)
    return summarize(runs, states, time.perf_counter() - start, out)


def _save(out: Path, item: KeyedRun, info: Any, trained: Trained, device: str) -> str:
    """Write a run streamed back from a worker, under its lock as the local backend: "elsewhere" when another process
    holds the lock, "skipped" when it was finished meanwhile."""
    folder = out / "runs" / item.key
    lock = out / "runs" / f"{item.key}.lock"
    with file_lock(lock, wait=False) as held:
        if not held:
            return "elsewhere"
        if (folder / "metrics.json").exists():
            return "skipped"
        outcome = RunOutcome(_Weights(trained.weights), trained.metrics, None, trained.points)  # type: ignore[arg-type]
        save_trained(out, item, info, trained.config, outcome, device)
        lock.unlink()
    return "done"
