"""A results table read back for a report: a results.csv, a grid folder or run directories (`load_results`), its
rows parsed into typed records (`Record`: a configuration, i.e. a method with its settings, on one dataset at one
number of shots and seed), of a tuned grid only each group's kept run; two runs of one configuration and seed in one
cell are refused, naming both (`check_one_run_per_seed`). A dataset name with several cache fingerprints is several
datasets, labelled `caltech101 (fp 1a2b3c4d)` (`dataset_labels`). The reliability diagrams' bins, which no results
column holds, are read from the run directories' metrics.json (`run_reliability`)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lathadapter.adapter.evaluate import Reliability
from lathadapter.experiments.table import (
    RESULTS,
    SAVED_BEFORE,
    ResultsError,
    as_table,
    finished_runs,
    run_rows,
    tune_set_read,
)

# The columns the report reads; `opt.*` columns (every option) are read too.
REQUIRED = ("key", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select", "target",
            "acc_all", "acc_base", "acc_novel")
ECE = ("ece_all", "ece_base", "ece_novel")  # read where present: a table from before ECE was recorded lacks them
SETTINGS = ("text", "select", "train_views")  # with the `opt.*` columns: what makes a configuration, besides the method
# A tuned run's score and val images (`--tune-score`, `--tune-set`) are settings too: runs kept by different scores are
# different configurations, never seeds of one (columns a grid without tuning lacks read as empty).
TUNE_SETTINGS = ("tune.score", "tune.set")
TUNED = "tuned"  # a tuned option's value in a configuration: chosen per cell, so not what tells configurations apart
# Marker pairs a kept run's `Choice` carries besides its options (never option names): the score that chose it and,
# when the choice is still on an edge of a preset's grid after its extensions or of an explicit grid, which edge.
SCORE, EDGE = "tune.score", "tune.edge"
SPLIT = " on the whole val split"  # a score's suffix when it read the cache's whole val split (`--tune-set split`)
EXPECTED = f"expected a {RESULTS} written by `lathadapter grid` or `protocol`"


@dataclass
class Results:
    """A results table's rows (as the CSV's strings), where they were read (`source`, and `also` for the further
    sources of a `merged` table), and the run directories by run key."""

    source: Path
    rows: list[dict[str, str]]
    run_dirs: dict[str, Path]
    also: tuple[Path, ...] = ()

    @property
    def label(self) -> str:
        """Where the rows were read, as messages and reports name it: `grids/few-shot`, or `a, b` for several."""
        return ", ".join(str(path) for path in (self.source, *self.also))


def merged(loaded: list[Results]) -> Results:
    """Several sources as one table (`report A B`): their rows in order, a run read from two of them (its key and
    target) once, and their run directories. Their columns may differ (other methods, an older version): `records`
    reads a column a row lacks as the value its run had."""
    seen: set[tuple[str, str]] = set()
    rows = []
    for results in loaded:
        for row in results.rows:
            run = (row["key"], row.get("target", ""))  # a transfer run has a row per target
            if run not in seen:
                seen.add(run)
                rows.append(row)
    run_dirs = {key: folder for results in loaded for key, folder in results.run_dirs.items()}
    return Results(loaded[0].source, rows, run_dirs, tuple(r.source for r in loaded[1:]))


def load_results(path: Path) -> Results:
    """Read a results.csv, a grid folder's results.csv, or run directories (one, a folder of them as `fit --out`
    writes, or a grid folder's `runs/`), whose rows are built as a grid builds them."""
    if not path.exists():
        raise ResultsError(f"{path} does not exist; expected a {RESULTS}, a grid folder or a folder of "
                           "`lathadapter fit` run directories")
    if path.is_dir() and not (path / RESULTS).is_file():
        dirs = [path] if (path / "metrics.json").is_file() else finished_runs(path) or finished_runs(path / "runs")
        if not dirs:
            raise ResultsError(f"{path} holds neither a {RESULTS} nor run directories (folders with config.json and "
                               "metrics.json)")
        # a grid's run directory is named by its key; `fit` ends the name with `-<key>`
        return Results(path, as_table(run_rows(dirs))[1], {d.name.rsplit("-", 1)[-1]: d for d in dirs})
    table = path / RESULTS if path.is_dir() else path
    try:
        with table.open(newline="") as f:
            reader = csv.DictReader(f, restval="")
            rows = list(reader)
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as error:
        raise ResultsError(f"{table} is not a CSV file ({error}); {EXPECTED}") from None
    if not columns:
        raise ResultsError(f"{table} is empty; {EXPECTED}")
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ResultsError(f"{table} lacks the columns {', '.join(missing)}; {EXPECTED}")
    if not rows:
        raise ResultsError(f"{table} has a header but no rows; {EXPECTED}")
    for row in rows:  # a table written before stop 27 says `fewshot`: one setting with the new rows' `subset`
        if row.get("tune.set"):
            row["tune.set"] = tune_set_read(row["tune.set"])
    return Results(table, rows, {d.name: d for d in finished_runs(table.parent / "runs")})


@dataclass(frozen=True)
class Configuration:
    """What a table row stands for: a method and its settings, (column, value) for text, select and every option
    column of the table (empty where the method has no such option). Seeds vary within it."""

    method: str
    settings: tuple[tuple[str, str], ...]

    def value(self, column: str) -> str:
        return dict(self.settings)[column]


Choice = tuple[tuple[str, str], ...]  # a kept candidate's (option, value) pairs, then SCORE/EDGE; () if untuned


@dataclass(frozen=True)
class Record:
    """One results row, parsed: the dataset's label, the configuration, shots, class protocol, transfer target,
    accuracies and ECEs (None: not applicable, or an ECE not recorded); rows that differ only in their seed make one
    cell."""

    dataset: str
    config: Configuration
    shots: int
    classes: str
    target: str
    acc_all: float | None
    acc_base: float | None
    acc_novel: float | None
    tuned: Choice = ()
    hierarchy: tuple[tuple[str, float | None], ...] = ()  # the run's `hier.*` diagnostics (LatHAdapter), by name
    seed: int = 0
    key: str = ""  # the run's key (its run directory)
    diverged: bool = False  # training diverged: no accuracy; its cell is over the other seeds (`diverged_note`)
    ece_all: float | None = None
    ece_base: float | None = None
    ece_novel: float | None = None

    def ece_recorded(self) -> bool:
        """Whether the run's ECE is known: recorded, or not applicable as its accuracy is (none), or diverged. A run
        saved before ECE was recorded has an accuracy and no ECE: no calibration cell counts it."""
        return (self.diverged or any(v is not None for v in (self.ece_all, self.ece_base, self.ece_novel))
                or all(v is None for v in (self.acc_all, self.acc_base, self.acc_novel)))


def _number(text: str) -> float | None:
    return None if text == "" else float(text)


def _percent(row: dict[str, str], column: str) -> float | None:
    """An accuracy or ECE column's number: empty (none), else a finite percentage in [0, 100]; a NaN, infinite or
    out-of-range value (a table edited by hand) is a ValueError naming the column, not a cell computed from it."""
    value = _number(row.get(column, ""))
    if value is not None and not 0.0 <= value <= 100.0:  # NaN fails both comparisons
        raise ValueError(f"{column} is {row[column]}, not a percentage in [0, 100] (a run that diverged has it empty "
                         "and its reason in the diverged column)")
    return value


def dataset_labels(rows: list[dict[str, str]]) -> dict[tuple[str, str], str]:
    """(dataset, fingerprint) → the dataset's label: its name, with the fingerprint's first 8 hex digits when the
    name has several fingerprints among the rows (different caches are reported apart) or shares its `slug` with
    another name (so that neither's tables and plots overwrite the other's files)."""
    fingerprints: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        fingerprints[row["dataset"]].add(row["fingerprint"])
    slugs: dict[str, set[str]] = defaultdict(set)  # names that would share a file name (`a b`, `a|b`): labelled apart
    for name in fingerprints:
        slugs[slug(name)].add(name)
    return {(name, fp): name if len(fps) == 1 and len(slugs[slug(name)]) == 1 else f"{name} (fp {fp[:8]})"
            for name, fps in fingerprints.items() for fp in fps}


def slug(text: str) -> str:
    """A label as part of a file name: `caltech101 (fp 1a2b3c4d)` → `caltech101_fp_1a2b3c4d`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def distinct_slugs(names: Iterable[str]) -> dict[str, str]:
    """Each name's `slug`, those of names that share one (targets `a b` and `a|b` → `a_b`) followed by the first 6
    hex digits of the name's SHA-1, so that neither's file overwrites the other's (stable from run to run)."""
    names = list(dict.fromkeys(names))
    shared = defaultdict(list)
    for name in names:
        shared[slug(name)].append(name)
    return {name: slug(name) if len(shared[slug(name)]) == 1 else
            f"{slug(name)}_{hashlib.sha1(name.encode()).hexdigest()[:6]}" for name in names}


def _tuned_columns(row: dict[str, str], columns: list[str]) -> dict[str, str]:
    """A tuning candidate's tuned option columns (`opt.NAME` or `opt.METHOD.NAME`) → option name."""
    found = {}
    for name in row.get("tune.names", "").split():
        for column in (f"opt.{row['method']}.{name}", f"opt.{name}"):
            if column in columns and row.get(column, "") != "":
                found[column] = name
                break
    return found


def _choice(row: dict[str, str], tuned: dict[str, str]) -> Choice:
    """A kept candidate's tuned (option, value) pairs, the score that chose it and its edge mark, if any."""
    if not tuned:
        return ()
    score = row.get("tune.score") or "val"
    if row.get("tune.set") == "split":
        score += SPLIT
    marks = ((SCORE, score),) + (((EDGE, row["tune.edge"]),) if row.get("tune.edge") else ())
    return tuple((name, row[c]) for c, name in tuned.items()) + marks


# The hierarchy diagnostics the report shows (`hier.NAME` columns) and their headings; shares in %, angles in rad.
HIERARCHY = (("train_in_cone", "train in cone %"), ("test_in_cone", "test in cone %"), ("train_angle", "Ξ train"),
             ("aperture", "ψ"), ("radius_category", "ρ' cat"), ("radius_attribute", "ρ' attr"),
             ("radius_image", "ρ' img"), ("radius_order", "order holds %"),
             ("euclid_hyper_disagree", "euclid ≠ hyper %"))


def _hierarchy(row: dict[str, str]) -> tuple[tuple[str, float | None], ...]:
    """A row's shown diagnostics as numbers (`radius_order`: 100 when it holds, else 0); () without any."""
    if not any(row.get(f"hier.{name}", "") != "" for name, _ in HIERARCHY):
        return ()
    flags = {"true": 100.0, "false": 0.0}
    return tuple((name, flags.get(row.get(f"hier.{name}", "").lower()) if name == "radius_order"
                  else _number(row.get(f"hier.{name}", ""))) for name, _ in HIERARCHY)


def setting_columns(present: Iterable[str]) -> list[str]:
    """The columns besides the method that make a configuration, among the columns `present`: the settings, the
    tuning settings a table has, then every option column."""
    present = set(present)
    return list(SETTINGS) + [c for c in TUNE_SETTINGS if c in present] + sorted(
        c for c in present if c.startswith("opt."))


def _setting(row: dict[str, str], column: str) -> str:
    """A row's value of setting `column`; where its table lacks the column (written before the setting existed, or
    read beside tables of other methods), the value its run had (`table.SAVED_BEFORE`; a tuning setting a tuning
    candidate's only), an option the table has no column for none."""
    if column in row:
        return row[column]
    if column == "train_views" or column in TUNE_SETTINGS and row.get("tune.group"):
        return SAVED_BEFORE[column]
    return ""


def records(results: Results, columns: list[str] | None = None) -> list[Record]:
    """The rows as typed records; a malformed number names its row. Of a tuned grid, only each group's kept run
    (`tune.selected`) is read, its tuned options set to `tuned` in its configuration and kept in `Record.tuned`.
    `columns`: the setting columns of every configuration (`setting_columns`; default the table's own), so that
    tables with other columns (other methods, an older version) read one configuration alike."""
    if columns is None:
        columns = setting_columns({c for row in results.rows for c in row})
    labels = dataset_labels(results.rows)
    parsed = []
    for i, row in enumerate(results.rows, 1):
        if row.get("tune.selected", "").lower() == "false":
            continue  # a candidate not kept (or a group not finished yet): never in a table
        tuned = _tuned_columns(row, columns)
        settings = tuple((c, TUNED if c in tuned else _setting(row, c)) for c in columns)
        try:
            parsed.append(Record(labels[(row["dataset"], row["fingerprint"])], Configuration(row["method"], settings),
                                 int(row["shots"]), row["classes"], row["target"],
                                 *(_percent(row, c) for c in ("acc_all", "acc_base", "acc_novel")),
                                 _choice(row, tuned), _hierarchy(row), int(row["seed"]), row["key"],
                                 bool(row.get("diverged")), *(_percent(row, c) for c in ECE)))
        except ValueError as error:
            raise ResultsError(f"{results.label}: row {i}: {error}") from None
    check_one_run_per_seed(parsed, results.label)
    return parsed


def check_one_run_per_seed(parsed: list[Record], source: Path | str) -> None:
    """Refuse two runs of one configuration and seed in one cell (dataset, shots, classes, target): a cell is a mean
    over seeds, and a seed counted twice would weigh one draw double and inflate n. Such runs differ in what no
    column shows (another tuning grid, another set of transfer targets, an older scoring), e.g. two protocol runs
    into one folder."""
    seen: dict[tuple[Any, ...], str] = {}
    for r in parsed:
        cell = (r.dataset, r.config, r.shots, r.classes, r.target, r.seed)
        if cell in seen and seen[cell] != r.key:
            where = f"{r.dataset}, {shots_label(r.shots)}, classes={r.classes}" + (f", target {r.target}"
                                                                                  if r.target else "")
            raise ResultsError(f"{source}: runs {seen[cell]} and {r.key} are the same configuration of "
                               f"{r.config.method} ({where}) with the same seed {r.seed}; a cell takes one run per "
                               "seed. They differ in what the table does not show (another tuning grid, other "
                               "transfer targets, a run from before a version that changed its key): report them from "
                               f"separate folders, or remove the run directory you do not want (runs/{r.key})")
        seen.setdefault(cell, r.key)


def shots_label(k: int) -> str:
    """`1 shot`, `4 shots`: a number of shots in titles, labels and messages."""
    return plural(k, "shot")


def plural(count: int, noun: str) -> str:
    """`1 run`, `12 val images`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def percent(value: float | None) -> str:
    """An accuracy as the commands print it: `81.25%`, or `n/a`."""
    return "n/a" if value is None else f"{value:.2f}%"


def run_reliability(results: Results, keys: Iterable[str]) -> dict[str, dict[str, Reliability]]:
    """Run key → part → the test set's confidence bins, from metrics.json of each of the runs `keys` whose directory
    is known: `reliability`'s parts (`all`, `base`, `novel`), or for a transfer run `targets_reliability`'s (`source`
    and each target: its results rows' `target`). A run saved before the bins were recorded, a part not applicable, a
    diverged run and an unreadable metrics.json give none: the reliability diagrams leave them out (the tables read
    the results table alone)."""
    found: dict[str, dict[str, Reliability]] = {}
    for key in sorted(set(keys)):
        folder = results.run_dirs.get(key)
        if folder is None:
            continue
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
            recorded = metrics.get("targets_reliability") if metrics.get("targets") else metrics.get("reliability")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(recorded, dict):
            parts = {part: Reliability.read(bins) for part, bins in recorded.items()}
            found[key] = {part: bins for part, bins in parts.items() if bins is not None}
    return found
