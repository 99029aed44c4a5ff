"""Ablation grids: the cartesian product of run axes, run in one process that loads each cache once, resumable.

Every run is keyed by a hash of its full configuration and its cache's fingerprint and written to
`OUT/runs/<key>/`; a run whose `metrics.json` exists is finished and skipped. `OUT/results.csv` (one row per run,
every option a column: `opt.NAME`, or `opt.METHOD.NAME` where methods mean different things by a name) is rewritten
from the run directories after each run, so it is always complete and consistent.

Several grid processes may share one output folder: each run is trained by the one process that holds its lock file
(`OUT/runs/<key>.lock`; the others skip it as running elsewhere), and `results.csv` is rewritten by one process at a
time (`OUT/.results.lock`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import functools
import itertools
import json
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lathadapter.adapter.catalog import ambiguous_options, make_options, method_names, option_names, option_owner
from lathadapter.adapter.options import OptionError, split_list
from lathadapter.cache.store import CacheError, CacheInfo, CacheReader, FewShotData
from lathadapter.experiments.run import RunConfig, RunOutcome, run, save_run, write_atomic

RESULTS = "results.csv"


class ResultsError(ValueError):
    """A results table or run directory that is missing, empty or malformed."""


@dataclass
class GridSpec:
    """The axes of a grid. `options` maps `method.option` (one method) or `option` (every method of the grid that
    has it, provided they all mean the same thing by it) to the values to try, as strings or Python values: each
    method parses them into its typed options."""

    caches: list[str]
    methods: list[str] = field(default_factory=lambda: ["lathadapter"])
    shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    classes: list[str] = field(default_factory=lambda: ["all"])
    text: list[str] = field(default_factory=lambda: ["coop"])
    select: list[str] = field(default_factory=lambda: ["last"])
    options: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class GridRun:
    """One point of the grid: a cache and a run configuration."""

    cache: str
    config: RunConfig


def load_spec_file(path: Path) -> dict[str, Any]:
    """Read grid axes from a YAML or TOML file (keys as the CLI options: caches, methods, shots, seeds, options...)."""
    if not path.is_file():
        raise OptionError(f"grid file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise OptionError(f"grid file {path}: expected a .yaml, .yml or .toml file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise OptionError(f"grid file {path}: {_parse_error(error)}") from None
    valid = [f.name for f in dataclasses.fields(GridSpec)]
    if data is None:  # an empty YAML file
        data = {}
    if not isinstance(data, dict):
        raise OptionError(f"grid file {path}: the top level must be a mapping with keys {', '.join(valid)}; "
                          f"got a {type(data).__name__}")
    unknown = set(data) - set(valid)
    if unknown:
        raise OptionError(
            f"grid file {path}: unknown keys {', '.join(sorted(unknown))}; valid: {', '.join(sorted(valid))}"
        )
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise OptionError(f"grid file {path}: options must be a mapping of [METHOD.]OPTION to values; "
                          f"got a {type(options).__name__}")
    as_list = lambda v: v if isinstance(v, list) else split_list(v)  # noqa: E731
    spec = {k: as_list(v) for k, v in data.items() if k != "options"}
    spec["options"] = {k: as_list(v) for k, v in options.items()}
    return spec


def _parse_error(error: Exception) -> str:
    """A parser's complaint on one line, with its line and column (TOML's message already has them)."""
    mark = getattr(error, "problem_mark", None)
    if isinstance(error, yaml.YAMLError) and mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {getattr(error, 'problem', error)}"
    return f"invalid {'YAML' if isinstance(error, yaml.YAMLError) else 'TOML'}: {error}"


def _check_option_axes(spec: GridSpec) -> None:
    """Every option axis names a method of the grid that has it; an unscoped name must mean one thing for every
    method of the grid that has it (else the error lists them and how to scope)."""
    for key in spec.options:
        scope, _, name = key.rpartition(".")
        if scope and scope not in spec.methods:
            raise OptionError(f"--set {key}: method {scope!r} is not in the grid's methods ({', '.join(spec.methods)})")
        targets = [scope] if scope else spec.methods
        having = [m for m in targets if name in option_names(m)]
        if not having:
            valid = sorted({o for m in targets for o in option_names(m)})
            raise OptionError(f"--set {key}: no method of the grid has option {name!r}; valid: {', '.join(valid)}")
        if not scope and len({option_owner(m, name) for m in having}) > 1:
            scoped = " or ".join(f"{m}.{name}=..." for m in having)
            raise OptionError(f"--set {key}: {', '.join(having)} each have an option {name!r} of their own, with "
                              f"different meanings; scope it to one method: {scoped}")


def _option_axes(method: str, options: dict[str, list[Any]]) -> list[tuple[str, list[Any]]]:
    """The option axes that apply to `method`: its scoped ones and the unscoped ones it has."""
    names = option_names(method)
    axes = []
    for key, values in sorted(options.items()):
        scope, _, name = key.rpartition(".")
        if (scope == method or not scope) and name in names:
            axes.append((name, values))
    return axes


def expand(spec: GridSpec) -> list[GridRun]:
    """The cartesian product of the axes, each method's options parsed and validated before anything runs."""
    valid_methods = method_names()
    for method in spec.methods:
        if method not in valid_methods:
            raise OptionError(f"unknown method {method!r}; valid methods: {', '.join(valid_methods)}")
    _check_option_axes(spec)
    runs = []
    for cache, method, classes, text, select in itertools.product(spec.caches, spec.methods, spec.classes, spec.text,
                                                                  spec.select):
        axes = _option_axes(method, spec.options)
        for values in itertools.product(*(v for _, v in axes)):
            options = make_options(method, dict(zip((n for n, _ in axes), values, strict=True)))
            for shots, seed in itertools.product(spec.shots, spec.seeds):
                runs.append(GridRun(str(cache), RunConfig(method, int(shots), int(seed), classes, text, select,
                                                          options)))
    return runs


@functools.cache
def _scoped_options() -> frozenset[str]:
    return frozenset(ambiguous_options())


def option_column(method: str, name: str) -> str:
    """The results-table column of an option: `opt.NAME`, or `opt.METHOD.NAME` for a name that several methods
    declare with different meanings (so Tip-Adapter's β and LatHAdapter's β never share a column)."""
    return f"opt.{method}.{name}" if name in _scoped_options() else f"opt.{name}"


def results_row(config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """One results-table row: identity, what post-training searches chose (`chosen.NAME`, e.g. Tip-Adapter's α and
    β), every option (prefixed `opt.`), and the metrics."""
    accuracy = metrics.get("accuracy", {})
    row = {
        "key": config["key"], "cache": config["cache"], "dataset": config["cache_fields"].get("dataset", ""),
        "fingerprint": config["cache_fingerprint"], "method": config["method"], "shots": config["shots"],
        "seed": config["seed"], "classes": config["classes"], "text": config["text"], "select": config["select"],
        "target": metrics.get("target", ""),
        "acc_all": accuracy.get("all"), "acc_base": accuracy.get("base"), "acc_novel": accuracy.get("novel"),
        "hm": metrics.get("hm"), "train_seconds": metrics.get("train_seconds"),
        "eval_seconds": metrics.get("eval_seconds"), "trained_parameters": metrics.get("trained_parameters"),
        "steps": metrics.get("steps"),
    }
    row.update({f"chosen.{k}": v for k, v in sorted((metrics.get("chosen") or {}).items())})
    row.update({option_column(config["method"], k): v for k, v in sorted(config["options"].items())})
    return row


def finished_runs(folder: Path) -> list[Path]:
    """The run directories directly under `folder` whose `metrics.json` exists (finished runs), sorted by name."""
    return sorted(path.parent for path in folder.glob("*/metrics.json"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ResultsError(f"{path}: expected the JSON file of a run directory ({error})") from None


def run_rows(run_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """Results-table rows of run directories (`config.json` and `metrics.json`, as grids and `fit` write them),
    expanding per-target metrics to one row each."""
    rows = []
    for folder in run_dirs:
        config, metrics = _read_json(folder / "config.json"), _read_json(folder / "metrics.json")
        targets = metrics.get("targets")
        if targets:
            for name, accuracy in sorted(targets.items()):
                rows.append(results_row(config, {**metrics, "accuracy": {"all": accuracy}, "target": name}))
        else:
            rows.append(results_row(config, metrics))
    return rows


def collect_rows(out: Path) -> list[dict[str, Any]]:
    """Rows of every finished run of the grid in `out` (its run directories `out/runs/<key>/`, sorted by key)."""
    return run_rows(finished_runs(out / "runs"))


def as_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, str]]]:
    """The columns (in order of first appearance) and the rows as the CSV's strings: a value not applicable or a
    column a row lacks is empty."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return columns, [{k: "" if row.get(k) is None else str(row[k]) for k in columns} for row in rows]


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive `flock` on `path` (created if missing) for the block; with `wait=False` the block gets False
    at once, holding nothing, when another process holds it. Closing the file releases the lock."""
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def write_results(out: Path) -> Path:
    """Rewrite `out/results.csv` from the run directories, atomically and one process at a time: each rewrite reads
    every finished run, so the last one leaves the table complete."""
    path = out / RESULTS
    with file_lock(out / ".results.lock"):
        columns, rows = as_table(collect_rows(out))

        def write(temporary: Path) -> None:
            with temporary.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)

        write_atomic(path, write)
    return path


def _subsets_text(pairs: list[tuple[int, int]]) -> str:
    return ", ".join(f"shots={k} seed={s}" for k, s in pairs)


def check_caches(runs: list[GridRun]) -> dict[str, CacheInfo]:
    """Open each cache of the runs once and check that it holds what they ask for (their (shots, seed) subsets, two
    classes or more for base-to-novel) before anything runs; one error lists every problem. Returns each cache's
    info."""
    wanted: dict[str, set[tuple[int, int]]] = {}
    for grid_run in runs:
        wanted.setdefault(grid_run.cache, set()).add((grid_run.config.shots, grid_run.config.seed))
    base = {r.cache for r in runs if r.config.classes == "base"}
    infos, problems = {}, []
    for cache, pairs in wanted.items():
        try:
            with CacheReader(cache) as reader:
                infos[cache] = info = reader.info()
        except CacheError as error:
            problems.append(str(error))
            continue
        missing = sorted(pairs - set(info.subsets))
        if missing:
            problems.append(f"{cache} holds no few-shot subset for {_subsets_text(missing)} (it holds: "
                            f"{_subsets_text(info.subsets) or 'none'}); rebuild it with `--shots`/`--seeds` that "
                            "include them")
        if cache in base and len(info.class_names) < 2:
            problems.append(f"{cache}: classes=base needs at least 2 classes; it has {len(info.class_names)}")
    if problems:
        raise CacheError("the grid asks for what its caches do not hold:\n  " + "\n  ".join(problems))
    return infos


class DataCache:
    """Loads each cache file once and each (shots, seed, text) few-shot set once per cache."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._path: str | None = None
        self._reader: CacheReader | None = None
        self._sets: dict[tuple[int, int, str], FewShotData] = {}

    def reader(self, path: str) -> CacheReader:
        if path != self._path:
            self.close()
            self._reader, self._path = CacheReader(path), path
        assert self._reader is not None
        return self._reader

    def load(self, path: str, shots: int, seed: int, text: str) -> FewShotData:
        reader = self.reader(path)
        key = (shots, seed, text)
        if key not in self._sets:
            self._sets[key] = reader.load(shots, seed, text=text, device=self.device)
        return self._sets[key]

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader, self._path, self._sets = None, None, {}


def grid_progress() -> Progress:
    """The grid's progress bar, on stderr (stdout carries the results)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("done {task.fields[done]} · skipped {task.fields[skipped]} · running elsewhere "
                               "{task.fields[elsewhere]}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True))


Evaluator = Callable[[GridRun, RunOutcome, FewShotData], dict[str, Any]]
STATES = ("done", "skipped", "elsewhere")


def iterate(runs: list[GridRun], out: Path, device: str, progress: bool = True, extra: Evaluator | None = None,
            key_salt: str = "") -> Iterator[tuple[GridRun, str]]:
    """Check the caches, then run each unfinished run, yielding (run, "done" | "skipped" | "elsewhere").

    "skipped": finished before; "elsewhere": another process holds the run's lock and is training it. `extra` adds
    metrics after training (e.g. transfer targets); `key_salt` (e.g. the targets' fingerprints) joins the cache
    fingerprint in each run's key, so a changed target set is a different run.
    """
    infos = check_caches(runs)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    data_cache = DataCache(device)
    counts = dict.fromkeys(STATES, 0)
    with grid_progress() as bar:
        task = bar.add_task("grid", total=len(runs), **counts, visible=progress)
        try:
            for grid_run in runs:
                info = infos[grid_run.cache]
                key = grid_run.config.key(info.fingerprint + key_salt)
                state = _run_once(grid_run, key, info, out, data_cache, extra)
                if state == "done":
                    write_results(out)
                counts[state] += 1
                bar.update(task, advance=1, **counts)
                yield grid_run, state
        finally:
            data_cache.close()
    write_results(out)


def _run_once(grid_run: GridRun, key: str, info: CacheInfo, out: Path, data_cache: DataCache,
              extra: Evaluator | None) -> str:
    """Train and save one run unless it is finished or another process holds its lock; returns its state."""
    folder = out / "runs" / key
    if (folder / "metrics.json").exists():
        return "skipped"
    lock = out / "runs" / f"{key}.lock"
    with file_lock(lock, wait=False) as held:
        if not held:
            return "elsewhere"
        if (folder / "metrics.json").exists():  # finished by another process since the first look
            return "skipped"
        c = grid_run.config
        data = data_cache.load(grid_run.cache, c.shots, c.seed, c.text)
        start = time.perf_counter()
        outcome = run(c, data)
        if extra is not None:
            outcome.metrics.update(extra(grid_run, outcome, data))
        outcome.metrics["wall_seconds"] = time.perf_counter() - start
        save_run(folder, c, outcome, Path(grid_run.cache), info.fingerprint, info.fields, data_cache.device, key)
        lock.unlink()  # safe while held: a process that opened it before finds metrics.json once it gets the lock
    return "done"


def run_grid(spec: GridSpec, out: Path, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a grid; returns the runs, how many were done, skipped (finished before) and left to another
    process training them at the same time (elsewhere), wall time and the results table's path."""
    runs = expand(spec)
    start = time.perf_counter()
    states = [state for _, state in iterate(runs, out, device, progress)]
    return {"runs": len(runs), **{state: states.count(state) for state in STATES},
            "seconds": time.perf_counter() - start, "results": str(out / RESULTS)}
