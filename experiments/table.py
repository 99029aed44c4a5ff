"""A grid's results table and the files that keep several processes in step: `OUT/results.csv` (one row per run,
every option a column: `opt.NAME`, or `opt.METHOD.NAME` where methods mean different things by a name), rebuilt from
the run directories, atomically and one process at a time (`OUT/.results.lock`); the runs' lock files
(`OUT/runs/<key>.lock`, `file_lock`) and the sweep of what dead processes left (`sweep_stale`)."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lathadapter.adapter.catalog import ambiguous_options, method_class, method_names
from lathadapter.adapter.options import before_values
from lathadapter.experiments.run import TUNE_SETS_BEFORE, write_atomic
from lathadapter.experiments.tuning import select_tuned

RESULTS = "results.csv"


class ResultsError(ValueError):
    """A results table or run directory that is missing, empty or malformed."""


@functools.cache
def _scoped_options() -> frozenset[str]:
    return frozenset(ambiguous_options())


def option_column(method: str, name: str) -> str:
    """The results-table column of an option: `opt.NAME`, or `opt.METHOD.NAME` for a name that several methods
    declare with different meanings (so Tip-Adapter's β and LatHAdapter's β never share a column). Decided over every
    registered method, not a grid's: a column's name never depends on the grid (LP++'s own `epochs` makes every
    method's `opt.METHOD.epochs`, even in a grid without LP++, where `--set epochs=` applies unscoped)."""
    return f"opt.{method}.{name}" if name in _scoped_options() else f"opt.{name}"


def saved_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """A run's options as its config.json holds them, and each option added to the method since (declared with
    `before`) at that value, with which the run trained and kept its key: it reads as the same run saved now."""
    if method not in method_names():
        return options
    return {**before_values(method_class(method).Options), **options}


# The settings' values of a run saved before they existed (what it did: trained on augmented views, a tuning candidate
# scored by val on the few-shot val set), read alike from its folder (`results_row`) and from a table written
# without the column (`records`); the tuning ones are a tuning candidate's only.
SAVED_BEFORE = {"train_views": "augmented", "tune.score": "val", "tune.set": "subset"}


def tune_set_read(value: str) -> str:
    """A stored `tune.set` (metrics.json's `set`, a results table's column) in its current name: `fewshot`, written
    before stop 27, is `subset` (`run.TUNE_SETS_BEFORE`), so old and new rows are one setting."""
    return TUNE_SETS_BEFORE.get(value, value)


def results_row(config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """One results-table row: identity, the method's settings and what its post-training searches chose
    (`chosen.NAME`: a baseline's recipe values `chosen.recipe.NAME`, Tip-Adapter's α and β), the hierarchy
    diagnostics (`hier.NAME`, LatHAdapter), every option (prefixed `opt.`), and the metrics (accuracy `acc_*`, then
    ECE `ece_*` with the same suffixes)."""
    accuracy = metrics.get("accuracy", {})
    ece = metrics.get("ece") or {}  # a run saved before ECE was recorded has none: empty cells
    row = {
        "key": config["key"], "cache": config["cache"], "dataset": config["cache_fields"].get("dataset", ""),
        "fingerprint": config["cache_fingerprint"], "method": config["method"], "shots": config["shots"],
        "seed": config["seed"], "classes": config["classes"], "text": config["text"], "select": config["select"],
        "train_views": config.get("train_views", SAVED_BEFORE["train_views"]),
        "target": metrics.get("target", ""),
        "acc_all": accuracy.get("all"), "acc_base": accuracy.get("base"), "acc_novel": accuracy.get("novel"),
        "ece_all": ece.get("all"), "ece_base": ece.get("base"), "ece_novel": ece.get("novel"),
        "hm": metrics.get("hm"), "train_seconds": metrics.get("train_seconds"),
        "eval_seconds": metrics.get("eval_seconds"), "trained_parameters": metrics.get("trained_parameters"),
        "steps": metrics.get("steps"),
        "batch_runs": metrics.get("batch_runs", 1), "batch_mode": metrics.get("batch_mode", "alone"),
        "cuda_graph": metrics.get("cuda_graph", False),
        "diverged": metrics.get("diverged"),  # why a run diverged (then no accuracy), else empty
    }
    row.update({f"chosen.{k}": v for k, v in sorted((metrics.get("chosen") or {}).items())})
    row.update({f"hier.{k}": v for k, v in (metrics.get("hierarchy") or {}).items()})
    tune = metrics.get("tune")
    if tune:  # a tuning candidate; `tune.selected` is set once its whole group is known (select_tuned)
        extension = tune.get("extension") or {}
        pseudo = metrics.get("tune_pseudo") or {}
        row.update({"tune.group": tune["group"], "tune.names": " ".join(tune["names"]),
                    "tune.values": " ".join(f"{k}={v}" for k, v in tune["values"].items()),
                    "tune.index": tune["index"], "tune.candidates": tune["candidates"],
                    "tune.score": tune.get("score", SAVED_BEFORE["tune.score"]),
                    "tune.set": tune_set_read(tune.get("set", tune.get("val_set", SAVED_BEFORE["tune.set"]))),
                    "tune.val_score": metrics.get("tune_val_score", metrics.get("tune_val_accuracy")),
                    "tune.val_accuracy": metrics.get("tune_val_accuracy"),
                    "tune.pseudo_base": pseudo.get("base"), "tune.pseudo_novel": pseudo.get("novel"),
                    "tune.factor": extension.get("factor"), "tune.step": extension.get("step"),
                    "tune.limit": extension.get("limit"), "tune.origin": extension.get("origin"),
                    "tune.selected": None, "tune.edge": None})
    options = saved_options(config["method"], config["options"])
    row.update({option_column(config["method"], k): v for k, v in sorted(options.items())})
    return row


def finished_runs(folder: Path) -> list[Path]:
    """The run directories directly under `folder` whose `metrics.json` exists (finished runs), sorted by name."""
    return sorted(path.parent for path in folder.glob("*/metrics.json"))


# What to do about a finished run's folder whose files cannot be read (damaged by hand, a crash of the machine)
DAMAGED = ("; the run folder is damaged: delete it and rerun the command that wrote it (a grid trains that run "
           "again)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ResultsError(f"{path}: expected the JSON file of a run directory ({error}){DAMAGED}") from None
    if not isinstance(value, dict):
        raise ResultsError(f"{path}: expected the JSON object of a run directory, not {type(value).__name__}"
                           f"{DAMAGED}")
    return value


# The keys of a run's config.json that its results row and `load` read, each with its JSON type: every version has
# written them all (a key added since, as `train_views`, is read with its `SAVED_BEFORE` value, never required)
CONFIG_TYPES = {"key": str, "cache": str, "cache_fields": dict, "cache_fingerprint": str, "method": str, "shots": int,
                "seed": int, "classes": str, "text": str, "select": str, "options": dict}


def malformed_run(config: dict[str, Any], metrics: dict[str, Any]) -> str | None:
    """What a run's config.json and metrics.json (JSON objects) lack or hold of the wrong type, for an error line
    (a file edited by hand, or written by something else); None when both read as a run's."""
    for key, kind in CONFIG_TYPES.items():
        value = config.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            found = "missing" if key not in config else f"{type(value).__name__}, not {kind.__name__}"
            return f"config.json: {key} is {found}"
    for key in ("accuracy", "ece", "targets"):
        value = metrics.get(key, {})
        if not isinstance(value, dict) and not (value is None and key != "accuracy"):  # null: no ECE, no targets
            return f"metrics.json: {key} is {type(value).__name__}, not an object"
    return None


# Rows already read, per run directory, with the size, mtime and inode of its two files: a grid rewrites results.csv
# after every run or batch, and re-reading every finished run's JSON each time made its rewrites quadratic (1.29 s
# per rewrite at 2,000 runs against 0.14 s with the rows kept; benchmarks/results_table.py).
_ROWS_READ: dict[Path, tuple[tuple[int, ...], list[dict[str, Any]]]] = {}


def _stamp(folder: Path) -> tuple[int, ...]:
    stats = [(folder / name).stat() for name in ("config.json", "metrics.json")]
    return tuple(v for st in stats for v in (st.st_size, st.st_mtime_ns, st.st_ino))


def _rows_of(folder: Path) -> list[dict[str, Any]]:
    """One run directory's rows (one per transfer target, else one), read again only when a file changed."""
    try:
        stamp = _stamp(folder)
    except OSError as error:
        raise ResultsError(f"{folder}: expected the JSON files of a run directory ({error}){DAMAGED}") from None
    known = _ROWS_READ.get(folder)
    if known is None or known[0] != stamp:
        config, metrics = _read_json(folder / "config.json"), _read_json(folder / "metrics.json")
        if problem := malformed_run(config, metrics):
            raise ResultsError(f"{folder}: {problem}{DAMAGED}")
        targets = metrics.get("targets")
        if targets:
            eces = metrics.get("targets_ece") or {}
            rows = [results_row(config, {**metrics, "accuracy": {"all": accuracy}, "ece": {"all": eces.get(name)},
                                         "target": name})
                    for name, accuracy in sorted(targets.items())]
        else:
            rows = [results_row(config, metrics)]
        known = _ROWS_READ[folder] = (stamp, rows)
    return [dict(row) for row in known[1]]


def run_rows(run_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """Results-table rows of run directories (`config.json` and `metrics.json`, as grids and `fit` write them),
    expanding per-target metrics to one row each."""
    return select_tuned([row for folder in run_dirs for row in _rows_of(folder.absolute())])


def collect_rows(out: Path) -> list[dict[str, Any]]:
    """Rows of every finished run of the grid in `out` (its run directories `out/runs/<key>/`, sorted by key)."""
    return run_rows(finished_runs(out / "runs"))


def as_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, str]]]:
    """The columns (in order of first appearance) and the rows as the CSV's strings: a value not applicable or a
    column a row lacks is empty."""
    columns: dict[str, None] = {}  # a dict keeps first-appearance order and finds a column in O(1)
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns), [{k: "" if row.get(k) is None else str(row[k]) for k in columns} for row in rows]


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive `flock` on `path` (created if missing) for the block; with `wait=False` the block gets False
    at once, holding nothing, when another process holds it. Closing the file releases the lock."""
    while True:
        with path.open("a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            if not _same_file(f, path):
                continue  # its holder removed it while we waited: the lock is the file at `path` now
            yield True
            return


def _same_file(f: Any, path: Path) -> bool:
    """True when the open file `f` is still the file at `path`: a lock file removed by its holder (`sweep_stale`, a
    finished run) may still be open in another process, whose lock on it then guards nothing."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def sweep_stale(out: Path) -> None:
    """Remove what killed processes left in `out/runs`: lock files nobody holds (flock locks end with their process)
    and the folders of runs they had not finished (no `metrics.json`; a rerun trains them afresh). Locks held by a
    live process and the folders of finished runs stay."""
    runs = out / "runs"
    names = {p.stem for p in runs.glob("*.lock")} | {p.name for p in runs.iterdir() if p.is_dir()}
    for name in sorted(names):
        lock, folder = runs / f"{name}.lock", runs / name
        if (folder / "metrics.json").exists() and not lock.exists():
            continue
        with file_lock(lock, wait=False) as held:
            if not held:
                continue  # a live process trains or saves this run
            if folder.is_dir() and not (folder / "metrics.json").exists():
                shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)


def write_results(out: Path) -> Path:
    """Rewrite `out/results.csv` from the run directories, atomically and one process at a time: each rewrite reads
    every finished run, so the last one leaves the table complete. A temporary file of an earlier rewrite is removed:
    under the lock no other process writes one, so it was left by a killed rewrite (SIGKILL)."""
    path = out / RESULTS
    with file_lock(out / ".results.lock"):
        for left in out.glob(f".{RESULTS}.*.tmp"):
            left.unlink(missing_ok=True)
        columns, rows = as_table(collect_rows(out))

        def write(temporary: Path) -> None:
            with temporary.open("w", newline="") as f:  # the rows hold every column (`as_table`): plain lists
                writer = csv.writer(f)
                writer.writerow(columns)
                writer.writerows([row[k] for k in columns] for row in rows)

        write_atomic(path, write)
    return path

