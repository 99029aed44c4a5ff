"""How a grid's runs train, whichever backend trains them: each run's key (`keyed_run`), batches of runs that train
together (`batches`), the one training call (`train_runs`, under the execution's kernels backend and stacking), the
saving of a trained run's folder (`save_trained`), and what a backend is handed (`Job`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lathadapter.adapter.evaluate import NaNScores
from lathadapter.adapter.trainer import optimiser_imports
from lathadapter.cache.store import CacheError, CacheInfo, FewShotData
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.run import (
    RunConfig,
    RunOutcome,
    as_diverged,
    harmonic_mean,
    pseudo_novel_accuracies,
    run,
    run_together,
    save_run,
    search_view,
    tune_val_accuracy,
)
from lathadapter.experiments.spec import GridRun
from lathadapter.experiments.table import file_lock
from lathadapter.experiments.tuning import resolve_scaled
from lathadapter.kernels.dispatch import backend as kernels_backend

# Adds metrics to a trained run (a protocol's transfer targets); built where the run trains, from its device.
Evaluator = Callable[[GridRun, RunOutcome, FewShotData], dict[str, Any]]
STATES = ("done", "skipped", "elsewhere")  # a run's state after a round: trained here, finished before, left to another


@dataclass(frozen=True)
class KeyedRun:
    """A grid run with its key (its run directory's name) and, for a tuning candidate, its group id."""

    run: GridRun
    key: str
    group: str | None = None


Item = tuple[int, KeyedRun]  # a run's index in the round, and the run


@dataclass(frozen=True)
class Job:
    """What a backend trains in one round: the pending runs (`pending`, no `metrics.json` yet, in grid order) of the
    round's `keyed` runs, their caches' infos, the output folder, the execution, and the factory of the evaluator
    that adds metrics (built from the device where the runs train)."""

    out: Path
    keyed: list[KeyedRun]
    infos: dict[str, CacheInfo]
    pending: list[Item]
    execution: Execution
    extra_factory: Callable[[str], Evaluator] | None = None


def keyed_run(grid_run: GridRun, fingerprint: str) -> KeyedRun:
    """A grid run with its key and tuning group, given its cache's fingerprint (with the grid's key salt)."""
    group = None
    if grid_run.tune is not None:
        group = grid_run.tune.group(grid_run.config, fingerprint)
        fingerprint += grid_run.tune.salt()
    return KeyedRun(grid_run, grid_run.config.key(fingerprint), group)


def pending_runs(keyed: list[KeyedRun], out: Path) -> list[Item]:
    """The runs without `metrics.json`, with their indices, in grid order."""
    return [(i, item) for i, item in enumerate(keyed) if not (out / "runs" / item.key / "metrics.json").exists()]


def claim_runs(batch: list[KeyedRun], runs: Path, held: contextlib.ExitStack) -> list[str | None]:
    """Take the lock file of each of `batch`'s runs that is not finished, held on `held` until it closes (the run
    trains and is saved under it); returns each run's state: "skipped" (finished, before or since the first look),
    "elsewhere" (another process holds its lock: it trains the run) or None (locked here: to train)."""
    states: list[str | None] = []
    for item in batch:
        if (runs / item.key / "metrics.json").exists():
            states.append("skipped")
        elif not held.enter_context(file_lock(runs / f"{item.key}.lock", wait=False)):
            states.append("elsewhere")
        elif (runs / item.key / "metrics.json").exists():  # finished by another process since the first look
            (runs / f"{item.key}.lock").unlink(missing_ok=True)  # safe while held (`table.file_lock`)
            states.append("skipped")
        else:
            states.append(None)
    return states


def batch_key(grid_run: GridRun) -> tuple[Any, ...]:
    """What runs trained together share (`batched.lockstep_key` checks the rest once they are built): cache, method,
    shots, classes, text features, selection and views. Runs that differ in seed, subset or options may share it."""
    c = grid_run.config
    return grid_run.cache, c.method, c.shots, c.classes, c.text, c.select, c.train_views


def batches(keyed: list[KeyedRun], batch_runs: int) -> list[list[KeyedRun]]:
    """The runs cut into batches of at most `batch_runs` with one `batch_key` each: runs of one key in grid order,
    the keys in order of first appearance (runs with equal options next to each other, as they stack); with
    `batch_runs=1`, every run alone in grid order (`Execution` checked it is at least 1)."""
    if batch_runs == 1:
        return [[item] for item in keyed]
    groups: dict[tuple[Any, ...], list[KeyedRun]] = {}
    for item in keyed:
        groups.setdefault(batch_key(item.run), []).append(item)
    cut = []
    for items in groups.values():
        items = sorted(items, key=lambda item: repr(item.run.config.options))  # stable: grid order among equals
        cut.extend(items[i:i + batch_runs] for i in range(0, len(items), batch_runs))
    return cut


def train_runs(grid_runs: list[GridRun], datas: list[FewShotData], execution: Execution,
               extra: Evaluator | None = None, groups: list[str | None] | None = None
               ) -> list[tuple[RunConfig, RunOutcome]]:
    """Train and evaluate grid runs on their loaded few-shot sets, writing nothing: the one training path of every
    backend. Those that can train together do (`run.run_together`, stacked as `execution.stacks` says for their
    device); one run alone is `run.run`; all under the execution's kernels backend. Returns each configuration
    trained (a tuning candidate's `Scaled` values resolved) and its outcome, whose metrics hold `extra`'s, the tuning
    record and val scores (`groups`: each candidate's group id) and `wall_seconds`, the batch's wall time divided
    among its runs."""
    optimiser_imports()  # a process's first training imports torch._dynamo: not in the first batch's wall_seconds
    start = time.perf_counter()
    groups = groups or [None] * len(grid_runs)
    with kernels_backend(execution.kernels):
        configs = []
        for grid_run, data in zip(grid_runs, datas, strict=True):
            c = grid_run.config
            if grid_run.tune is not None and grid_run.tune.scaled:
                c = resolve_scaled(c, data, grid_run.tune.scaled)
            configs.append(c)
        device = str(datas[0].train_labels.device)
        graphs = execution.captures(device)
        outcomes = ([run(configs[0], datas[0], graphs=graphs)] if len(configs) == 1
                    else run_together(configs, datas, stack=execution.stacks(device), graphs=graphs))
        outcomes = [scored_outcome(grid_run, c, data, group, outcome, extra)
                    for grid_run, c, data, group, outcome in zip(grid_runs, configs, datas, groups, outcomes,
                                                                 strict=True)]
    seconds = (time.perf_counter() - start) / len(outcomes)
    for outcome in outcomes:
        outcome.metrics["wall_seconds"] = seconds
    return list(zip(configs, outcomes, strict=True))


def scored_outcome(grid_run: GridRun, c: RunConfig, data: FewShotData, group: str | None, outcome: RunOutcome,
                   extra: Evaluator | None) -> RunOutcome:
    """`outcome` with `extra`'s metrics and, for a tuning candidate, its tuning record and val scores. A run that
    scores NaN there, its training and test scores finite, is kept as diverged (`run.as_diverged`) rather than
    stopping the grid."""
    trained = dict(outcome.metrics)
    try:
        add_scores(grid_run, c, data, group, outcome, extra)
    except NaNScores as error:
        outcome = as_diverged(outcome, trained, str(error))
        add_scores(grid_run, c, data, group, outcome, extra)  # a diverged run's: no score is read
    return outcome


def add_scores(grid_run: GridRun, c: RunConfig, data: FewShotData, group: str | None, outcome: RunOutcome,
               extra: Evaluator | None) -> None:
    """Add `extra`'s metrics and a tuning candidate's record and val scores to `outcome`'s metrics."""
    if extra is not None:
        outcome.metrics.update(extra(grid_run, outcome, data))
    if grid_run.tune is not None and group is not None:
        add_tuning_scores(grid_run, c, data, group, outcome)


def add_tuning_scores(grid_run: GridRun, c: RunConfig, data: FewShotData, group: str, outcome: RunOutcome) -> None:
    """Add a tuning candidate's record and val scores to its metrics (`val_hm`: one more training, alone, after the
    run's own); only val images are read."""
    assert grid_run.tune is not None
    outcome.metrics["tune"] = grid_run.tune.record(group, c)
    if outcome.metrics["diverged"] is not None:  # no score: its group never keeps it unless every candidate diverged
        outcome.metrics["tune_val_accuracy"] = outcome.metrics["tune_val_score"] = None
        return
    scored = search_view(data, grid_run.tune.tune_set)  # the val images the score reads
    val = tune_val_accuracy(c, outcome.method, scored)
    if val is None:  # base-to-novel with no val image of a base class: nothing to choose by
        raise CacheError(f"{grid_run.cache}: shots={c.shots} seed={c.seed} classes={c.classes} has no "
                         "few-shot val images to choose the tuned value by; run it without tuning")
    outcome.metrics["tune_val_accuracy"] = val
    outcome.metrics["tune_val_score"] = val
    if grid_run.tune.score == "val_hm":
        pseudo = pseudo_novel_accuracies(c, scored)
        hm = harmonic_mean(pseudo["base"], pseudo["novel"])
        if hm is None and not pseudo.get("diverged"):  # a diverged pseudo-base copy has no score (`tune_pseudo`)
            raise CacheError(f"{grid_run.cache}: shots={c.shots} seed={c.seed} classes={c.classes}: a "
                             "pseudo-novel half of the training classes has no few-shot val image; use "
                             "--tune-score val")
        outcome.metrics["tune_pseudo"] = pseudo
        outcome.metrics["tune_val_score"] = hm


def save_trained(out: Path, item: KeyedRun, info: CacheInfo, config: RunConfig, outcome: RunOutcome,
                 execution: Execution) -> None:
    """Write a trained run's directory `out/runs/<key>/` (metrics last: then it is finished); its `config.json`
    records the execution it trained under."""
    device = execution.device or "cpu"
    record = execution.record(device, outcome.metrics.get("threads"), outcome.metrics.get("batch_mode"))
    save_run(out / "runs" / item.key, config, outcome, Path(item.run.cache), info.fingerprint, info.fields, device,
             item.key, execution=record)


Events = list[tuple[int, str]]  # runs of a round (their indices in `Job.keyed`) and their states, as they finish


class Backend(Protocol):
    """How a round's pending runs get trained (this process, worker processes, a Ray cluster): `train` yields `[]`
    once it is ready to train (Ray: connected and checked), then the runs' states as they are saved, a batch or a run
    at a time; the driver (`launch`) counts them, shows progress and rewrites `results.csv`."""

    def label(self, job: Job) -> str:
        """The progress bar's description."""
        ...

    def train(self, job: Job) -> Generator[Events, None, None]:
        """Train and save `job.pending`, yielding each run's state as it is saved."""
        ...
