"""Grids and protocols on a Ray cluster (`--backend ray`), an optional extra: `pip install
'lathadapter[ray]'`. Ray is imported here only, when a Ray backend is asked for, never at package import.

A grid's pending runs (those without `metrics.json`) are split into chunks of one cache each, in grid order; each
chunk is one Ray task (a streaming generator, `chunks.train_chunk`, shared with `--workers`) that opens its cache
once and trains its runs in order with the same `grid.train_run` as the local backend, yielding each trained run
(configuration, metrics, CPU weights, lifted points) as soon as it is done. The driver, this process, alone writes the
run directories (`chunks.save_streamed`, under the run's lock as the local backend) and `results.csv`, as each run
streams back: same keys, same layout, same resume.
A worker killed mid-chunk loses only its unfinished runs; the driver resubmits them (`retries` times), and a rerun of
the grid completes whatever is still missing.

Caches and the output folder must be on storage every worker sees (a shared file system): one probe task checks, at
start, that it can open every cache and see the output folder. (`cache build-many` uses `connect` from here; its
tasks live in `cli.py`, which may import the cache builder.)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lathadapter.adapter.options import OptionError, StateError
from lathadapter.cache.store import CacheError, CacheReader
from lathadapter.experiments.chunks import Item, Tally, Trained, chunk_runs, pending_runs, train_chunk
from lathadapter.experiments.grid import (
    Evaluator,
    GridRun,
    GridSpec,
    expand,
    grid_progress,
    prepare,
    summarize,
    with_extensions,
    write_results,
)
from lathadapter.experiments.machine import auto_batch_runs

INSTALL_HINT = "--backend ray needs Ray, which is not installed: pip install 'lathadapter[ray]'"
BACKENDS = ("local", "ray")


class RayMissingError(StateError):
    """`--backend ray` without Ray installed."""


class RayBackendError(ValueError):
    """The Ray cluster cannot run the grid (storage not shared, a chunk lost for good)."""


def import_ray() -> Any:
    """The `ray` module, or RayMissingError with the install hint."""
    # Ray's own INFO and WARNING lines (token auth, GCS retries) drowned the grid's output; read when Ray is imported
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
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
    batch_runs: int | None = None  # runs of a chunk trained together (`grid --batch-runs`); None: by device

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise OptionError(f"--chunk-size {self.chunk_size}: must be at least 1")
        if self.batch_runs is not None and self.batch_runs < 1:
            raise OptionError(f"--batch-runs {self.batch_runs}: must be at least 1 (1: every run alone)")
        if not 0 < self.gpu_fraction <= 1:
            raise OptionError(f"--gpus-per-chunk {self.gpu_fraction}: must be in (0, 1]")


REACH_SECONDS = 10.0  # how long `check_reachable` waits for the cluster's port


def check_reachable(address: str, timeout: float = REACH_SECONDS) -> None:
    """Refuse at once a `--address HOST:PORT` (or ray://HOST:PORT) where nothing listens: Ray itself retried for over
    5 minutes, printing GCS warnings. Other forms (auto, local) are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error)).lower()
        raise RayBackendError(f"--address {address}: cannot reach a Ray cluster there ({reason}); check the head "
                              "node's address (HEAD:6379) and that it runs (`ray start --head`), or leave --address "
                              "out to start a local one") from None


@contextlib.contextmanager
def connect(options: RayOptions) -> Iterator[Any]:
    """Ray, initialised for the block: an existing connection is reused and left open; one made here is closed."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.ERROR,
              **options.init_options}
    if options.address is not None:
        check_reachable(options.address)
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
    pending = pending_runs(keyed, out)
    if not pending:
        write_results(out)
        return ["skipped"] * len(keyed)
    with connect(options) as ray:
        gpus = ray.cluster_resources().get("GPU", 0)
        if device is None:
            device = "cuda" if gpus else "cpu"
        elif device.startswith("cuda") and not gpus:
            raise OptionError(f"--device {device}: the Ray cluster has no GPU; use --device cpu")
        resources = {"num_cpus": 1, "num_gpus": options.gpu_fraction if device.startswith("cuda") else 0}
        batch_runs = options.batch_runs or auto_batch_runs(device)
        check_shared(ray, sorted({os.path.abspath(item.run.cache) for _, item in pending}), out)
        task = ray.remote(train_chunk).options(max_retries=0, **resources)

        def submit(chunk: list[Item]) -> Any:
            return task.remote(os.path.abspath(chunk[0][1].run.cache), chunk, str(out), device, extra_factory,
                               batch_runs)

        chunks = {}
        size = math.ceil(options.chunk_size / batch_runs) * batch_runs  # whole batches per chunk
        for chunk in chunk_runs(pending, size, batch_runs):
            chunks[submit(chunk)] = (chunk, 0)
        tally = Tally(out, keyed, infos, pending, device)
        lost: list[str] = []
        with grid_progress() as bar:
            bar_task = bar.add_task("grid (ray)", total=len(keyed), completed=tally.counts["skipped"],
                                    **tally.counts, visible=progress)
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
                    left = [(i, item) for i, item in chunk if i in tally.unfinished]
                    if left and tries < options.retries:
                        chunks[submit(left)] = (left, tries + 1)
                    elif left:
                        lost.append(f"{len(left)} run(s) of {chunk[0][1].run.cache}: {type(error).__name__}: "
                                    f"{str(error).splitlines()[0] if str(error) else ''}")
                    continue
                tally.take(result)
                bar.update(bar_task, advance=1, **tally.counts)
                if on_saved is not None and not isinstance(result, int):
                    on_saved(result)
    write_results(out)
    if lost:
        raise RayBackendError(f"{len(tally.unfinished)} run(s) were lost with their Ray workers; the finished runs "
                              "are saved, rerun the grid to complete the rest:\n  " + "\n  ".join(lost))
    return tally.states


def run_grid_on_ray(spec: GridSpec, out: Path, device: str | None = None, options: RayOptions | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """`grid.run_grid` on a Ray cluster: the same summary, run folders and `results.csv`."""
    runs = expand(spec)
    start = time.perf_counter()
    runs, states = with_extensions(runs, out, lambda todo: run_on_ray(todo, out, device, options, progress=progress))
    return summarize(runs, states, time.perf_counter() - start, out)

