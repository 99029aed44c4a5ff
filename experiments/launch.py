"""The one driver of grids and protocols: `launch(spec, out, execution)` expands the grid, trains its runs in rounds
on the backend the execution names (this process, local worker processes, a Ray cluster: each provides only how a
round's pending runs get trained, `training.Backend`), and keeps the bookkeeping every backend shares: caches and
tuning checked before anything runs, keys, the stale sweep, progress, `results.csv` rewritten as runs are saved, the
tuning extensions' extra rounds (`with_extensions`) and the summary.

Several grid processes may share one output folder: each run is trained by the one process that holds its lock file
(`OUT/runs/<key>.lock`; the others skip it as running elsewhere), and `results.csv` is rewritten by one process at a
time (`OUT/.results.lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lathadapter.adapter.options import OptionError
from lathadapter.cache.store import CacheInfo
from lathadapter.experiments.data import check_caches, check_tuning
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.local import InProcess, WorkerProcesses
from lathadapter.experiments.pool import auto_workers
from lathadapter.experiments.ray_backend import OnRay
from lathadapter.experiments.spec import GridRun, GridSpec, expand, extended
from lathadapter.experiments.table import RESULTS, collect_rows, sweep_stale, write_results
from lathadapter.experiments.training import STATES, Backend, Evaluator, Job, KeyedRun, keyed_run, pending_runs
from lathadapter.experiments.tuning import pending_extensions
from lathadapter.progress import progress_display


def launch(spec: GridSpec, out: Path, execution: Execution | None = None, *, progress: bool = True,
           extra_factory: Callable[[str], Evaluator] | None = None, key_salt: str = "") -> dict[str, Any]:
    """Run (or resume) a grid under `execution` (default: this process, on the CPU, every run alone); returns the
    runs, how many were done, skipped (finished before) and left to another process training them at the same time
    (elsewhere), wall time and the results table's path. `extra_factory(device)` builds, where runs train, the
    evaluator that adds metrics (a protocol's targets); `key_salt` (e.g. the targets' fingerprints) joins each cache
    fingerprint in the run keys, so a changed target set is a different run."""
    execution = execution or Execution()
    runs = expand(spec)
    start = time.perf_counter()

    def train(todo: list[GridRun]) -> list[str]:
        return [state for _, state in train_round(todo, out, execution, progress=progress,
                                                  extra_factory=extra_factory, key_salt=key_salt)]

    runs, states = with_extensions(runs, out, train, key_salt)
    return summarize(runs, states, time.perf_counter() - start, out)


def prepare(runs: list[GridRun], out: Path, key_salt: str = "") -> tuple[dict[str, CacheInfo], list[KeyedRun]]:
    """Check the caches and tuning before anything runs, create `out/runs`, sweep what dead processes left there,
    read the finished runs (a damaged one is refused before any training), and key every run."""
    infos = check_caches(runs)
    check_tuning(runs)
    keyed = [keyed_run(grid_run, infos[grid_run.cache].fingerprint + key_salt) for grid_run in runs]
    check_distinct(keyed)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    sweep_stale(out)
    collect_rows(out)  # a damaged finished run fails here, before any training (its rows are kept for the rewrites)
    return infos, keyed


def check_distinct(keyed: list[KeyedRun]) -> None:
    """Refuse a grid that holds one run twice (a cache, method or value given twice, or two values that mean the
    same, `lr=0.1,0.10`): its second copy would wait on the first's lock and be counted as left to another process."""
    seen: dict[str, GridRun] = {}
    for item in keyed:
        first = seen.setdefault(item.key, item.run)
        if first is not item.run:
            c = item.run.config
            where = item.run.cache if first.cache == item.run.cache else f"{first.cache} and {item.run.cache}"
            raise OptionError(f"the grid holds one run twice ({c.method}, {c.shots}-shot seed {c.seed}, on "
                              f"{where}): a cache, method or value is given twice, or two values mean the same; "
                              "give each once")


# While runs finish, `results.csv` is rewritten at most this often (seconds): each rewrite reads every finished run,
# so rewriting after every batch made a grid of thousands of small runs quadratic. It is rewritten at the end, and
# when the grid is interrupted, whatever the time.
RESULTS_EVERY = 2.0
# ... and never sooner than this many times the last rewrite's own seconds after it: a rewrite grows with the finished
# runs (0.05-0.1 s per 1,000 on 2 cores), so with the fixed interval alone the rewrites took 3.6 s of the 21 s of CPU
# of an 8,000-run grid of cheap runs (benchmarks/grid_overhead.py), a share growing towards half with more runs; so
# they take at most 1/(1 + RESULTS_SPACING) of the grid's time.
RESULTS_SPACING = 9.0


def next_rewrite(started: float, ended: float) -> float:
    """When the next periodic rewrite of `results.csv` is due, after one that ran from `started` to `ended`."""
    return ended + max(RESULTS_EVERY, RESULTS_SPACING * (ended - started))


def choose_backend(execution: Execution, auto: bool = False) -> Backend:
    """The backend `execution` names (its `workers` settled): Ray; this process, or worker processes; either
    training on the execution's trainer threads (on a GPU: each on its own CUDA stream). `auto`: the worker count
    was chosen here, so the workers start only once they pay (`WorkerProcesses.probe`)."""
    if execution.backend == "ray":
        return OnRay()
    workers = execution.workers or 1
    if workers == 1:
        return InProcess(execution.trainers_on(execution.device or "cpu"))
    return WorkerProcesses(workers, probe=auto)


def train_round(runs: list[GridRun], out: Path, execution: Execution, *, progress: bool = True,
                extra_factory: Callable[[str], Evaluator] | None = None, key_salt: str = "",
                backend: Backend | None = None) -> Iterator[tuple[GridRun, str]]:
    """Check the caches, then train each unfinished run, yielding (run, "done" | "skipped" | "elsewhere"): the
    finished ones ("skipped") first, then the others as they are saved. "elsewhere": another process holds the run's
    lock and is training it. `execution.workers` None is settled here by the pending runs (`pool.auto_workers`);
    `backend` (default: the execution's, `choose_backend`) trains them. `results.csv` is rewritten as runs are saved
    (at most every `RESULTS_EVERY` seconds, `next_rewrite`), at the end, and when the round is interrupted."""
    out = out.resolve()
    infos, keyed = prepare(runs, out, key_salt)
    pending = pending_runs(keyed, out)
    waiting = {index for index, _ in pending}
    for index, item in enumerate(keyed):
        if index not in waiting:
            yield item.run, "skipped"
    if not pending:
        write_results(out)
        return
    auto = execution.backend == "local" and execution.workers is None
    if auto:
        execution = dataclasses.replace(execution, workers=auto_workers(len(pending), execution.device or "cpu"))
    backend = backend or choose_backend(execution, auto)
    job = Job(out, keyed, infos, pending, execution, extra_factory)
    counts = dict.fromkeys(STATES, 0)
    counts["skipped"] = len(keyed) - len(pending)
    due = -math.inf  # the first run saved rewrites the table at once
    bar = None
    with contextlib.ExitStack() as shown:
        trained = backend.train(job)
        try:
            for events in trained:
                if bar is None:  # the backend is ready (Ray: connected): the progress display starts
                    bar = shown.enter_context(grid_progress())
                    task = bar.add_task(backend.label(job), total=len(keyed), completed=counts["skipped"],
                                        **counts, visible=progress)
                for _, state in events:
                    counts[state] += 1
                    bar.update(task, advance=1, **counts)
                if any(state == "done" for _, state in events) and time.perf_counter() >= due:
                    started = time.perf_counter()
                    write_results(out)
                    due = next_rewrite(started, time.perf_counter())
                for index, state in events:
                    yield keyed[index].run, state
        finally:  # the end, Ctrl-C or SIGTERM raised as it (cli), an error, or the caller stopping the round early
            trained.close()  # worker processes are killed at once
            write_results(out)  # every run saved so far is in the table


def grid_progress() -> Progress:
    """The grid's progress bar, on stderr (stdout carries the results); plain lines where stderr is not a terminal
    (`progress.LogProgress`)."""
    return progress_display(lambda: Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("done {task.fields[done]} · skipped {task.fields[skipped]} · running elsewhere "
                   "{task.fields[elsewhere]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True)),
        unit="runs", template="done {done} · skipped {skipped} · running elsewhere {elsewhere}")


def with_extensions(runs: list[GridRun], out: Path, train: Callable[[list[GridRun]], list[str]],
                    key_salt: str = "") -> tuple[list[GridRun], list[str]]:
    """Run `runs` with `train` (a round: each run's state, `train_round`), then, while a preset's tuning
    group of this grid has chosen a value on an edge of its grid and may still grow (`pending_extensions`), a round
    of the extension candidates due, until none is. Finished extension candidates are skipped like any run; one
    already tried in this call (left to another process) is not tried again. Returns every run and its state."""
    states = list(train(runs))
    every = list(runs)
    if not any(r.tune is not None and r.tune.extension is not None for r in runs):
        return every, states
    fingerprints = {cache: info.fingerprint + key_salt for cache, info in check_caches(runs).items()}
    known = {keyed_run(r, fingerprints[r.cache]).key: r for r in runs}
    while True:
        due = []
        for (origin, factor, index), pending in pending_extensions(collect_rows(out)):
            root = known.get(origin)
            if root is None or root.tune is None or root.tune.extension is None:
                continue  # a group of another grid sharing the folder
            grid_run = extended(root, origin, factor, index)
            key = keyed_run(grid_run, fingerprints[grid_run.cache]).key
            if key in known:
                continue
            known[key] = grid_run
            if pending:
                due.append(grid_run)
            else:  # finished before (a rerun): counted as the grid's, not trained
                every.append(grid_run)
                states.append("skipped")
        if not due:
            return every, states
        states += train(due)
        every += due


def summarize(runs: list[GridRun], states: list[str], seconds: float, out: Path) -> dict[str, Any]:
    """A grid's summary: the runs, how many were done, skipped and left elsewhere, wall time, the table's path."""
    return {"runs": len(runs), **{state: states.count(state) for state in STATES}, "seconds": seconds,
            "results": str(out / RESULTS)}
