"""Paper-style tables (markdown and CSV) and plots from a results table, a grid folder or a folder of `fit` runs.

A table row is one configuration: a method with its settings (text features, model selection and every option);
a cell is that configuration's mean ± sample std (n − 1) over seeds on one dataset cache at one number of shots.
Configurations are never pooled, and a cell takes one run per seed: two runs of one configuration and seed (another
tuning grid, other transfer targets, e.g. two protocol runs into one folder) are refused, naming both. When
settings vary among one method's rows, each configuration has its own row, labelled by what varies
(`lathadapter curvature=0.5`), and each varied setting gets an ablation table of that method: every configuration,
the setting's value first and the other varied settings beside it, sorted so that consecutive rows with the same
other settings form one ablation. A dataset name with several cache fingerprints is several datasets, labelled
`caltech101 (fp 1a2b3c4d)`. Averages over datasets or targets are means of a configuration's per-dataset means;
base-to-novel HM comes from the mean base and mean novel accuracies, as papers report it. Plots draw one line or bar
group per configuration, with error bars over seeds.

Markdown cells read `30.33 ± 1.15` (one seed: `30.33`), `n/a` (not applicable), `diverged` (every seed's training
diverged, or an average or HM over such a cell: no accuracy; such runs are listed under the tables) or `—` (no
run), with `(n=2)` after a cell over fewer seeds than the fullest cell of its table (a run missing, failed or
diverged), and after an average or HM of such a cell; each CSV has `<column> mean`, `<column> std` and `<column> n`
(seeds) columns, empty where there is no number (an average's or HM's n is empty).

Tuned grids (`tune.*` columns): only each tuning group's kept run (`tune.selected`, chosen on val images only)
enters the tables. A tuned option is not a configuration axis: its value reads `tuned` in the configuration (the
score and val images that chose it, `tune.score` and `tune.set`, are settings: `score=val_hm` in a label where they
vary), and the label names the values chosen (`clip-adapter lr=0.01 (tuned)`; `lr=0.001/0.01 (tuned)` when cells chose
differently); a companion table `<table>_tuned` gives the value chosen in each cell (`lr=0.01`, or each value with
its number of seeds, `lr=0.01 ×2, lr=0.001 ×1`), its title names the score that chose them (`tune.score`: val or
val_hm) and, under it, a note says what the score is; a value still on an edge of a preset's grid after its
extensions, or the highest or lowest of an explicit grid of 3 or more numbers (`tune.edge`), is marked ▲ (highest
tried) or ▼ (lowest tried), explained in the note. Tables of grids
without tuning are as before.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lathadapter.adapter.catalog import method_names  # noqa: E402
from lathadapter.experiments.run import write_atomic  # noqa: E402
from lathadapter.experiments.table import RESULTS, ResultsError, as_table, finished_runs, run_rows  # noqa: E402

# The columns the report reads; `opt.*` columns (every option) are read too.
REQUIRED = ("key", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select", "target",
            "acc_all", "acc_base", "acc_novel")
SETTINGS = ("text", "select", "train_views")  # with the `opt.*` columns: what makes a configuration, besides the method
# A tuned run's score and val images (`--tune-score`, `--tune-set`) are settings too: runs kept by different scores are
# different configurations, never seeds of one (columns a grid without tuning lacks read as empty).
TUNE_SETTINGS = ("tune.score", "tune.set")
TUNED = "tuned"  # a tuned option's value in a configuration: chosen per cell, so not what tells configurations apart
# Marker pairs a kept run's `Choice` carries besides its options (never option names): the score that chose it and,
# when the choice is still on an edge of a preset's grid after its extensions or of an explicit grid, which edge.
SCORE, EDGE = "tune.score", "tune.edge"
EDGE_MARKS = {"high": "▲", "low": "▼"}
SCORE_NOTES = {"val": "val: accuracy on the training classes' few-shot val set",
               "val_hm": "val_hm: the harmonic mean of the pseudo-base and pseudo-novel val accuracy of a copy trained "
                         "on the first half of the training classes (the base classes, for base-to-novel)"}
SPLIT = " on the whole val split"  # a score's suffix when it read the cache's whole val split (`--tune-set split`)
SPLIT_NOTE = ("on the whole val split: the cache's whole val split in place of the few-shot val subset "
              "(--tune-set split)")
EDGE_NOTE = ("▲ / ▼: the highest / lowest value tried (of a --tune-preset grid after it was extended as far as it "
             "may; of a --tune grid of 3 or more numbers, as given); the best value may lie beyond")
EXPECTED = f"expected a {RESULTS} written by `lathadapter grid` or `protocol`"


@dataclass
class Results:
    """A results table's rows (as the CSV's strings), where they were read, and the run directories by run key."""

    source: Path
    rows: list[dict[str, str]]
    run_dirs: dict[str, Path]


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
    """One results row, parsed: the dataset's label, the configuration, shots, class protocol, transfer target and
    accuracies (None: not applicable); rows that differ only in their seed make one cell."""

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


def _number(text: str) -> float | None:
    return None if text == "" else float(text)


def dataset_labels(rows: list[dict[str, str]]) -> dict[tuple[str, str], str]:
    """(dataset, fingerprint) → the dataset's label: its name, with the fingerprint's first 8 hex digits when the
    name has several fingerprints among the rows (different caches are reported apart)."""
    fingerprints: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        fingerprints[row["dataset"]].add(row["fingerprint"])
    return {(name, fp): name if len(fps) == 1 else f"{name} (fp {fp[:8]})"
            for name, fps in fingerprints.items() for fp in fps}


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


def records(results: Results) -> list[Record]:
    """The rows as typed records; a malformed number names its row. Of a tuned grid, only each group's kept run
    (`tune.selected`) is read, its tuned options set to `tuned` in its configuration and kept in `Record.tuned`."""
    present = {c for row in results.rows for c in row}
    columns = list(SETTINGS) + [c for c in TUNE_SETTINGS if c in present] + sorted(
        c for c in present if c.startswith("opt."))
    labels = dataset_labels(results.rows)
    parsed = []
    for i, row in enumerate(results.rows, 1):
        if row.get("tune.selected", "").lower() == "false":
            continue  # a candidate not kept (or a group not finished yet): never in a table
        tuned = _tuned_columns(row, columns)
        settings = tuple((c, TUNED if c in tuned else row.get(c, "")) for c in columns)
        try:
            parsed.append(Record(labels[(row["dataset"], row["fingerprint"])], Configuration(row["method"], settings),
                                 int(row["shots"]), row["classes"], row["target"],
                                 _number(row["acc_all"]), _number(row["acc_base"]), _number(row["acc_novel"]),
                                 _choice(row, tuned), _hierarchy(row), int(row["seed"]), row["key"],
                                 bool(row.get("diverged"))))
        except ValueError as error:
            raise ResultsError(f"{results.source}: row {i}: {error}") from None
    check_one_run_per_seed(parsed, results.source)
    return parsed


def diverged_note(results: Results) -> str:
    """Markdown listing the runs whose training diverged (NaN or infinite loss, parameters or scores; `diverged`
    column), which the tables leave out (a cell over fewer seeds then reads `(n=k)`); a tuning candidate not kept is
    not listed. Empty when there are none."""
    runs = {row["key"]: row for row in results.rows  # a transfer run has a row per target: listed once
            if row.get("diverged") and row.get("tune.selected", "").lower() != "false"}
    if not runs:
        return ""
    labels = dataset_labels(results.rows)  # as the tables name the dataset: `caltech101 (fp 1a2b3c4d)`
    lines = [f"- {row['method']}, {labels[row['dataset'], row['fingerprint']]}, {_shots(int(row['shots']))}, seed "
             f"{row['seed']}, classes="
             f"{row['classes']} (run {key}): {row['diverged']}" for key, row in runs.items()]
    many = len(runs) != 1
    return (f"### Diverged runs\n\n{len(runs)} run{'s' if many else ''} diverged in training and "
            f"{'are' if many else 'is'} left out of the tables:\n\n" + "\n".join(lines) + "\n")


def check_one_run_per_seed(parsed: list[Record], source: Path) -> None:
    """Refuse two runs of one configuration and seed in one cell (dataset, shots, classes, target): a cell is a mean
    over seeds, and a seed counted twice would weigh one draw double and inflate n. Such runs differ in what no
    column shows (another tuning grid, another set of transfer targets, an older scoring), e.g. two protocol runs
    into one folder."""
    seen: dict[tuple[Any, ...], str] = {}
    for r in parsed:
        cell = (r.dataset, r.config, r.shots, r.classes, r.target, r.seed)
        if cell in seen and seen[cell] != r.key:
            where = f"{r.dataset}, {_shots(r.shots)}, classes={r.classes}" + (f", target {r.target}"
                                                                             if r.target else "")
            raise ResultsError(f"{source}: runs {seen[cell]} and {r.key} are the same configuration of "
                               f"{r.config.method} ({where}) with the same seed {r.seed}; a cell takes one run per "
                               "seed. They differ in what the table does not show (another tuning grid, other "
                               "transfer targets, a run from before a version that changed its key): report them from "
                               f"separate folders, or remove the run directory you do not want (runs/{r.key})")
        seen.setdefault(cell, r.key)


@dataclass(frozen=True)
class Cell:
    """A table cell: a mean with its sample std (n − 1) over n seeds (no std for one seed), a derived mean (an
    average or HM: no std, no n, but the fewest seeds of the cells it derives from), not applicable (no mean), or no
    run at all (missing)."""

    mean: float | None = None
    std: float | None = None
    n: int | None = None
    missing: bool = False
    diverged: bool = False  # every seed's run diverged in training (no accuracy)
    fewest: int | None = None  # a derived cell: the fewest seeds of a cell it derives from (`(n=2)` in markdown)

    @property
    def seeds(self) -> int | None:
        """The seeds this cell rests on: its own n, or a derived cell's `fewest`."""
        return self.n if self.n is not None else self.fewest

    @classmethod
    def over_seeds(cls, values: list[float | None], diverged: bool = False) -> Cell:
        """Over the seeds' `values` (None: not applicable); `diverged`: more runs of the cell diverged, with no
        accuracy at all (the cell reads `diverged` when no value is left)."""
        known = [v for v in values if v is not None]
        if not known:
            return cls(diverged=diverged)
        return cls(statistics.fmean(known), statistics.stdev(known) if len(known) > 1 else None, len(known))

    @classmethod
    def mean_of(cls, cells: list[Cell]) -> Cell:
        """The mean of the cells' means (an average over datasets or targets); `—` where a cell has no run, and
        `diverged` where one's every seed diverged (never `—`, which says there is no run)."""
        if not cells or any(c.missing for c in cells):
            return MISSING
        if any(c.diverged for c in cells):
            return cls(diverged=True)
        if any(c.mean is None for c in cells):
            return cls()
        return cls(statistics.fmean(c.mean for c in cells if c.mean is not None), fewest=_fewest(cells))

    @classmethod
    def hm(cls, base: Cell, novel: Cell) -> Cell:
        """The harmonic mean of a mean base and a mean novel accuracy; `diverged` where either side's every seed
        diverged (never `—`, which says there is no run)."""
        if base.missing or novel.missing:
            return MISSING
        if base.diverged or novel.diverged:
            return cls(diverged=True)
        if base.mean is None or novel.mean is None:
            return cls()
        return cls(2 * base.mean * novel.mean / max(base.mean + novel.mean, 1e-12), fewest=_fewest([base, novel]))

    def text(self) -> str:
        if self.missing:
            return "—"
        if self.diverged:
            return "diverged"
        if self.mean is None:
            return "n/a"
        return f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"

    def numbers(self) -> list[str]:
        """Mean, std and n for a CSV, empty where there is none."""
        return ["" if v is None else str(v) for v in (self.mean, self.std, self.n)]


MISSING = Cell(missing=True)


def _fewest(cells: list[Cell]) -> int | None:
    """The fewest seeds any of `cells` rests on (None when none says)."""
    return min((c.seeds for c in cells if c.seeds is not None), default=None)


@dataclass(frozen=True)
class Chosen:
    """A cell of a `_tuned` table: the tuned values the kept runs of a cell chose, over seeds."""

    choices: tuple[Choice, ...] = ()

    def text(self) -> str:
        counts = Counter(" ".join(EDGE_MARKS.get(value, value) if name == EDGE else f"{name}={value}"
                                  for name, value in choice if name != SCORE) for choice in self.choices)
        if not counts:
            return "—"
        if len(counts) == 1:
            return next(iter(counts))
        return ", ".join(f"{text} ×{n}" for text, n in counts.items())

    def numbers(self) -> list[str]:
        return ["" if not self.choices else self.text()]


def _over_seeds(records: list[Record], key: Callable[[Record], tuple], metric: str) -> dict[tuple, Cell]:
    """`metric`'s cell over seeds by `key`; a diverged run has no value and is counted apart (`Cell.over_seeds`)."""
    grouped: dict[tuple, list[float | None]] = defaultdict(list)
    diverged: set[tuple] = set()
    for record in records:
        if record.diverged:
            diverged.add(key(record))
            grouped.setdefault(key(record), [])
        else:
            grouped[key(record)].append(getattr(record, metric))
    return {k: Cell.over_seeds(values, k in diverged) for k, values in grouped.items()}


@dataclass
class Table:
    """A titled table: label columns (`lead`) and value columns of cells, one row per configuration."""

    name: str
    title: str
    lead: list[str]
    columns: list[str]
    rows: list[tuple[list[str], list[Any]]]  # Cell, or Chosen in a `_tuned` table
    parts: tuple[str, ...] = ("mean", "std", "n")  # what each cell is in the CSV
    note: str = ""  # a line under the table (a `_tuned` table: the score and the edge marks)

    def markdown(self) -> str:
        header = self.lead + self.columns
        lines = [f"### {self.title}", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join(" --- " for _ in header) + "|"]
        most = max((c.n for _, cells in self.rows for c in cells if isinstance(c, Cell) and c.n), default=0)
        lines += ["| " + " | ".join(lead + [_shown(c, most) for c in cells]) + " |" for lead, cells in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"

    def write_csv(self, folder: Path) -> Path:
        path = folder / f"{self.name}.csv"

        def write(temporary: Path) -> None:
            with temporary.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(self.lead + [f"{c} {part}" for c in self.columns for part in self.parts])
                writer.writerows(lead + [x for cell in cells for x in cell.numbers()] for lead, cells in self.rows)

        write_atomic(path, write)
        return path


def _shown(cell: Cell | Chosen, most: int) -> str:
    """A markdown cell: its text, and `(n=2)` when it is a mean over fewer seeds than the table's fullest cell (a run
    missing, failed or diverged), or an average or HM of such a cell, so that it does not read as the others do."""
    seeds = cell.seeds if isinstance(cell, Cell) and cell.mean is not None else None
    return cell.text() + (f" (n={seeds})" if seeds is not None and seeds < most else "")


def _slug(text: str) -> str:
    """A label as part of a file name: `caltech101 (fp 1a2b3c4d)` → `caltech101_fp_1a2b3c4d`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _shots(k: int) -> str:
    return f"{k} shot" if k == 1 else f"{k} shots"


def _bare(column: str) -> str:
    """A setting's name in labels: `opt.lathadapter.curvature` → `curvature`, `text` → `text`."""
    return column.rsplit(".", 1)[-1]


def _sortable(value: str) -> tuple[int, float, str]:
    """Numbers by value, before other text."""
    try:
        return 0, float(value), ""
    except ValueError:
        return 1, 0.0, value


def _ordered(configs: Iterable[Configuration]) -> list[Configuration]:
    """Methods in the catalog's order (zero-shot first, LatHAdapter last; unknown names after), then settings."""
    order = method_names()
    return sorted(configs, key=lambda c: (order.index(c.method) if c.method in order else len(order), c.method,
                                          [_sortable(v) for _, v in c.settings]))


def _varied(configs: Iterable[Configuration]) -> dict[str, list[str]]:
    """For each method, the setting columns whose value differs among its configurations."""
    values: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for config in configs:
        for column, value in config.settings:
            values[config.method][column].add(value)
    return {method: [c for c, seen in columns.items() if len(seen) > 1] for method, columns in values.items()}


def _tuned_suffix(choices: Iterable[Choice]) -> str:
    """` lr=0.01 (tuned)`: each tuned option with the values its kept runs chose (`0.001/0.01` when they differ; not
    `|`, which would split a markdown cell); empty for an untuned configuration."""
    values: dict[str, set[str]] = defaultdict(set)
    for choice in choices:
        for name, value in choice:
            if name not in (SCORE, EDGE):
                values[name].add(value)
    if not values:
        return ""
    return " " + " ".join(f"{name}={'/'.join(sorted(seen, key=_sortable))}" for name, seen in values.items()) + \
        " (tuned)"


def _label(config: Configuration, varied: dict[str, list[str]], choices: Iterable[Choice] = ()) -> str:
    """`lathadapter curvature=0.5`: the method and the settings that vary among its configurations, then the tuned
    values chosen (`lr=0.01 (tuned)`), if any."""
    shown = [c for c in varied.get(config.method, []) if config.value(c) != TUNED]
    # an empty cell is an option left to the method's training recipe (`list options` says "recipe"), not a blank
    return " ".join([config.method] + [f"{_bare(c)}={config.value(c) or 'recipe'}" for c in shown]) + \
        _tuned_suffix(choices)


def _config_choices(records: Iterable[Record]) -> dict[Configuration, list[Choice]]:
    """Each configuration's kept tuning choices among `records`."""
    choices: dict[Configuration, list[Choice]] = defaultdict(list)
    for record in records:
        if record.tuned:
            choices[record.config].append(record.tuned)
    return choices


def _choices_by(records: Iterable[Record], key: Callable[[Record], tuple]) -> dict[tuple, tuple[Choice, ...]]:
    grouped: dict[tuple, list[Choice]] = defaultdict(list)
    for record in records:
        if record.tuned:
            grouped[key(record)].append(record.tuned)
    return {k: tuple(v) for k, v in grouped.items()}


def _ablation(name: str, title: str, configs: list[Configuration], setting: str, others: list[str],
              columns: list[str], cells: dict[Configuration, list[Cell]]) -> Table:
    """One method's configurations with `setting` first and the `others` that vary beside it; sorted by the others,
    then the setting, so that consecutive rows differing only in `setting` form one ablation."""
    lead = [setting, *others]
    rows = sorted(configs, key=lambda c: [_sortable(c.value(s)) for s in [*others, setting]])
    # an empty value is the option left to the method's training recipe, as in the labels
    return Table(name, title, [_bare(s) for s in lead], columns,
                 [([c.value(s) or "recipe" for s in lead], cells[c]) for c in rows])


def _tables(name: str, title: str, columns: list[str], cells: dict[Configuration, list[Cell]],
            chosen: dict[Configuration, list[Chosen]] | None = None,
            chosen_columns: list[str] | None = None) -> list[Table]:
    """A block of results as a table with one row per configuration and, for each setting that varies among one
    method's configurations, that method's ablation table of the setting. With tuning (`chosen`: the values the kept
    runs chose, per column of `chosen_columns`, default `columns`), labels name the chosen values and a `_tuned`
    table gives them per cell."""
    configs = _ordered(cells)
    varied = _varied(configs)
    chosen = {c: row for c, row in (chosen or {}).items() if any(cell.choices for cell in row)}
    labels = {c: _label(c, varied, [x for cell in chosen.get(c, []) for x in cell.choices]) for c in configs}
    tables = [Table(name, title, ["method"], columns, [([labels[c]], cells[c]) for c in configs])]
    for method, settings in varied.items():
        own = [c for c in configs if c.method == method]
        for setting in settings:
            tables.append(_ablation(f"{name}_ablation_{_slug(method)}_{_bare(setting)}",
                                    f"{title}: {method}, ablation of {_bare(setting)}", own, setting,
                                    [s for s in settings if s != setting], columns, cells))
    if chosen:
        marks = {(n, v) for row in chosen.values() for cell in row for choice in cell.choices for n, v in choice
                 if n in (SCORE, EDGE)}
        scores = sorted(v for n, v in marks if n == SCORE)
        note = "; ".join(sorted({SCORE_NOTES.get(score.removesuffix(SPLIT), score) for score in scores})
                         + ([SPLIT_NOTE] if any(score.endswith(SPLIT) for score in scores) else []) +
                         ([EDGE_NOTE] if any(n == EDGE for n, _ in marks) else [])) + "."
        where = "val images" if any(score.endswith(SPLIT) for score in scores) else "few-shot val set"
        tables.append(Table(f"{name}_tuned", f"{title}: tuned values, chosen on the training classes' {where} by "
                            f"{'/'.join(scores)}", ["method"], chosen_columns or columns,
                            [([_label(c, varied)], chosen[c]) for c in configs if c in chosen], ("chosen",), note))
    return tables


def _cell_of(record: Record) -> tuple[str, Configuration, int]:
    return record.dataset, record.config, record.shots


def _few_shot(records: list[Record]) -> dict[tuple[str, Configuration, int], Cell]:
    """Few-shot accuracy over seeds by (dataset, configuration, shots): all classes, no transfer targets."""
    return _over_seeds([r for r in records if r.classes == "all" and not r.target], _cell_of, "acc_all")


def _base_novel(records: list[Record]) -> dict[tuple[str, Configuration, int], tuple[Cell, Cell]]:
    """Base and novel accuracy over seeds by (dataset, configuration, shots) of the base-to-novel runs."""
    chosen = [r for r in records if r.classes == "base" and not r.target]
    base, novel = _over_seeds(chosen, _cell_of, "acc_base"), _over_seeds(chosen, _cell_of, "acc_novel")
    return {k: (base[k], novel[k]) for k in base}


def few_shot_tables(records: list[Record]) -> list[Table]:
    """Per dataset: configurations × shots; with several datasets, also the average over datasets."""
    cells = _few_shot(records)
    tuned = _choices_by([r for r in records if r.classes == "all" and not r.target], _cell_of)
    datasets = sorted({d for d, _, _ in cells})
    tables = []
    for dataset in datasets:
        shots = sorted({k for d, _, k in cells if d == dataset})
        rows = {c: [cells.get((dataset, c, k), MISSING) for k in shots] for d, c, _ in cells if d == dataset}
        chosen = {c: [Chosen(tuned.get((dataset, c, k), ())) for k in shots] for c in rows}
        tables += _tables(f"few_shot_{_slug(dataset)}", f"Few-shot accuracy (%) on {dataset}",
                          [_shots(k) for k in shots], rows, chosen)
    if len(datasets) > 1:
        shots = sorted({k for _, _, k in cells})
        rows = {c: [Cell.mean_of([cells.get((d, c, k), MISSING) for d in datasets]) for k in shots]
                for _, c, _ in cells}
        chosen = {c: [Chosen(tuple(x for d in datasets for x in tuned.get((d, c, k), ()))) for k in shots]
                  for c in rows}
        tables += _tables("few_shot_average", f"Few-shot accuracy (%), average over {len(datasets)} datasets",
                          [_shots(k) for k in shots], rows, chosen)
    return tables


def base_to_novel_tables(records: list[Record]) -> list[Table]:
    """Per number of shots: configurations × (dataset × base / novel / HM), with the average over datasets when
    there are several (its HM from the average base and novel)."""
    cells = _base_novel(records)
    tuned = _choices_by([r for r in records if r.classes == "base" and not r.target], _cell_of)
    all_shots = sorted({k for _, _, k in cells})
    tables = []
    for shots in all_shots:
        datasets = sorted({d for d, _, k in cells if k == shots})
        average = ["Average"] if len(datasets) > 1 else []
        rows, chosen = {}, {}
        for config in {c for _, c, k in cells if k == shots}:
            pairs = [cells.get((d, config, shots), (MISSING, MISSING)) for d in datasets]
            if average:
                pairs.append((Cell.mean_of([b for b, _ in pairs]), Cell.mean_of([n for _, n in pairs])))
            rows[config] = [cell for b, n in pairs for cell in (b, n, Cell.hm(b, n))]
            chosen[config] = [Chosen(tuned.get((d, config, shots), ())) for d in datasets]
        name = "base_to_novel" if len(all_shots) == 1 else f"base_to_novel_{shots}shot"
        tables += _tables(name, f"Base-to-novel generalisation (%): {_shots(shots)} on base classes",
                          [f"{d} {part}" for d in datasets + average for part in ("base", "novel", "HM")], rows,
                          chosen, datasets)  # one choice per dataset, made on its base classes
    return tables


def transfer_tables(records: list[Record]) -> list[Table]:
    """Cross-dataset or domain-generalisation results per source dataset and shots: configurations × (source test
    set, each target, the average over targets)."""
    chosen = [r for r in records if r.target]
    cells = _over_seeds(chosen, lambda r: (r.dataset, r.shots, r.config, r.target), "acc_all")
    # one choice per run, the same for all its targets: read from its `source` row
    tuned = _choices_by([r for r in chosen if r.target == "source"], lambda r: (r.dataset, r.shots, r.config))
    blocks = sorted({(d, k) for d, k, _, _ in cells})
    tables = []
    for source, shots in blocks:
        targets = sorted({t for d, k, _, t in cells if (d, k) == (source, shots)} - {"source"})
        rows = {}
        for config in {c for d, k, c, _ in cells if (d, k) == (source, shots)}:
            values = [cells.get((source, shots, config, t), MISSING) for t in targets]
            rows[config] = [cells.get((source, shots, config, "source"), MISSING), *values, Cell.mean_of(values)]
        name = "transfer" if len(blocks) == 1 else f"transfer_{_slug(source)}_{shots}shot"
        title = f"Transfer from {source}, {_shots(shots)} (%): source test set and targets"
        tables += _tables(name, title, ["source", *targets, "Average (targets)"], rows,
                          {c: [Chosen(tuned.get((source, shots, c), ()))] for c in rows}, [source])
    return tables


def hierarchy_tables(records: list[Record]) -> list[Table]:
    """One compact table of the hierarchy diagnostics (docs/method.md): a row per (configuration, dataset, shots,
    classes) of the runs that report them, each cell the mean ± std over seeds."""
    chosen = [r for r in records if r.hierarchy and not r.target]
    if not chosen:
        return []
    grouped: dict[tuple[Configuration, str, int, str], list[Record]] = defaultdict(list)
    for record in chosen:
        grouped[(record.config, record.dataset, record.shots, record.classes)].append(record)
    varied = _varied({c for c, _, _, _ in grouped})
    order = {c: i for i, c in enumerate(_ordered({c for c, _, _, _ in grouped}))}
    rows = []
    for (config, dataset, shots, classes), runs in sorted(grouped.items(), key=lambda item: (
            order[item[0][0]], item[0][1], item[0][2], item[0][3])):
        values = [dict(r.hierarchy) for r in runs]
        rows.append(([_label(config, varied, [r.tuned for r in runs if r.tuned]), dataset,
                      f"{_shots(shots)}, {'base-to-novel' if classes == 'base' else classes}"],
                     [Cell.over_seeds([v[name] for v in values]) for name, _ in HIERARCHY]))
    return [Table("hierarchy", "Hierarchy diagnostics (share of images inside their category's cone, mean exterior "
                  "angle Ξ and half-aperture ψ in rad, mean scaled radii, whether category < attribute < image)",
                  ["method", "dataset", "setting"], [title for _, title in HIERARCHY], rows)]


def report_tables(parsed: list[Record]) -> list[Table]:
    return (few_shot_tables(parsed) + base_to_novel_tables(parsed) + transfer_tables(parsed)
            + hierarchy_tables(parsed))


def _markdown(tables: list[Table]) -> str:
    return "\n".join(t.markdown() for t in tables)


def summary_markdown(path: Path) -> str:
    """The markdown of the report's tables for a results.csv, a grid folder or a folder of run directories; writes
    nothing (what `grid` and `protocol` print when they finish), and the runs that diverged."""
    results = load_results(path)
    return tables_markdown(report_tables(records(results)), results)


def tables_markdown(tables: list[Table], results: Results) -> str:
    """The markdown of the `tables` of `results`, then the list of runs that diverged and are left out of them."""
    note = diverged_note(results)
    return _markdown(tables) + (f"\n{note}" if note else "")


def outside_legend(ax: plt.Axes) -> None:
    """The legend to the right of the axes, so that it never covers the data."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _save(fig: plt.Figure, path: Path) -> Path:
    """Save a plot atomically (a full disk keeps the previous plot whole) and close it."""
    fig.tight_layout()
    try:
        write_atomic(path, lambda temporary: fig.savefig(temporary, format=path.suffix.lstrip("."), dpi=120,
                                                         bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def plot_accuracy_vs_shots(records: list[Record], folder: Path) -> list[Path]:
    """Per dataset with two numbers of shots or more: one line per configuration, error bars the std over seeds."""
    cells = _few_shot(records)
    paths = []
    for dataset in sorted({d for d, _, _ in cells}):
        shots = sorted({k for d, _, k in cells if d == dataset})
        if len(shots) < 2:
            continue
        configs = _ordered({c for d, c, _ in cells if d == dataset})
        varied = _varied(configs)
        choices = _config_choices(r for r in records if r.dataset == dataset and r.classes == "all" and not r.target)
        fig, ax = plt.subplots(figsize=(9, 4))  # the legend sits right of the axes
        for config in configs:
            points = [(k, cells[(dataset, config, k)]) for k in shots if (dataset, config, k) in cells]
            points = [(k, c) for k, c in points if c.mean is not None]
            if points:
                ax.errorbar([k for k, _ in points], [c.mean for _, c in points],
                            yerr=[c.std or 0.0 for _, c in points], marker="o", capsize=3,
                            label=_label(config, varied, choices.get(config, [])),
                            linewidth=2.5 if config.method == "lathadapter" else 1.5)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set(xlabel="shots per class", ylabel="top-1 accuracy (%)", title=f"{dataset}: accuracy vs shots")
        ax.grid(alpha=0.3)
        outside_legend(ax)
        paths.append(_save(fig, folder / f"accuracy_vs_shots_{_slug(dataset)}.png"))
    return paths


def plot_base_novel(records: list[Record], folder: Path) -> list[Path]:
    """Per dataset (and number of shots, when there are several): base, novel and HM bars per configuration, error
    bars the std over seeds."""
    cells = _base_novel(records)
    blocks = sorted({(d, k) for d, _, k in cells})
    several_shots = len({k for _, k in blocks}) > 1
    paths = []
    for dataset, shots in blocks:
        configs = _ordered({c for d, c, k in cells if (d, k) == (dataset, shots)})
        varied = _varied(configs)
        choices = _config_choices(r for r in records if (r.dataset, r.shots, r.classes) == (dataset, shots, "base")
                                  and not r.target)
        fig, ax = plt.subplots(figsize=(1.2 * len(configs) + 3.5, 4))
        width = 0.27
        for i, config in enumerate(configs):
            base, novel = cells[(dataset, config, shots)]
            for j, (cell, colour) in enumerate(((base, "tab:blue"), (novel, "tab:orange"),
                                                (Cell.hm(base, novel), "tab:green"))):
                if cell.mean is not None:
                    ax.bar(i + (j - 1) * width, cell.mean, width, yerr=cell.std, capsize=3, color=colour)
                else:
                    ax.text(i + (j - 1) * width, 1, cell.text(), ha="center", rotation=90, fontsize=7)
        ax.set_xticks(range(len(configs)), [_label(c, varied, choices.get(c, [])) for c in configs], rotation=20,
                      fontsize=8)
        ax.bar(0, 0, color="tab:blue", label="base")
        ax.bar(0, 0, color="tab:orange", label="novel")
        ax.bar(0, 0, color="tab:green", label="HM")
        ax.set(ylabel="top-1 accuracy (%)", title=f"{dataset}: base-to-novel, {_shots(shots)}")
        outside_legend(ax)
        ax.grid(axis="y", alpha=0.3)
        name = f"base_novel_{_slug(dataset)}" + (f"_{shots}shot" if several_shots else "")
        paths.append(_save(fig, folder / f"{name}.png"))
    return paths


def disk_coordinates(points: torch.Tensor, curvature: float, basis: torch.Tensor) -> torch.Tensor:
    """Map ball points to the unit disk: keep each point's distance to the origin exactly (its depth in the
    hierarchy) and take its direction from the projection of its tangent vector at 0 onto a 2-D `basis`."""
    scaled = points * math.sqrt(curvature)  # into the unit ball; radius ∈ [0, 1)
    radius = scaled.norm(dim=-1, keepdim=True)
    direction = torch.nn.functional.normalize(scaled @ basis, dim=-1)
    return radius * direction


def plot_poincare_disk(run_dir: Path, folder: Path) -> Path:
    """A trained LatHAdapter's categories, attribute prompts and sample images of a few classes, on the disk, from
    the lifted points the run saved (`points.pt`)."""
    path = run_dir / "points.pt"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no points.pt; the disk picture needs a lathadapter run directory")
    points = torch.load(path)
    c = points["curvature"]
    categories, attributes, images = points["categories"], points["attributes"], points["images"]
    # The 2-D basis: principal directions of the tangent vectors of the points shown.
    tangent = torch.cat([categories, attributes, images])
    basis = torch.linalg.svd(tangent - tangent.mean(0), full_matrices=False).Vh[:2].t()
    xy = {name: disk_coordinates(p, c, basis) for name, p in
          (("categories", categories), ("attributes", attributes), ("images", images))}
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="black"))
    colours = plt.get_cmap("tab10")
    labels = points["image_labels"]
    names = points["class_names"]
    for i, name in enumerate(names):
        pts = xy["images"][labels == i]
        ax.scatter(pts[:, 0], pts[:, 1], s=14, color=colours(i), alpha=0.6)
        ax.scatter(*xy["categories"][i], s=120, marker="*", color=colours(i), edgecolor="black", alpha=0.85,
                   label=f"{i + 1}: {name}", zorder=3)
        # each star's number at its own angle around it: the numbers stay apart where stars coincide
        angle = 2 * math.pi * i / max(len(names), 1)
        ax.annotate(str(i + 1), xy["categories"][i].tolist(), xytext=(12 * math.cos(angle), 12 * math.sin(angle)),
                    textcoords="offset points", ha="center", va="center", fontsize=8, color=colours(i),
                    fontweight="bold", zorder=4)
        strongest = int(points["strongest_attribute"][i])
        ax.plot([xy["categories"][i, 0], xy["attributes"][strongest, 0]],
                [xy["categories"][i, 1], xy["attributes"][strongest, 1]], color=colours(i), linewidth=0.8)
    ax.scatter(xy["attributes"][:, 0], xy["attributes"][:, 1], s=50, marker="^", color="grey",
               edgecolor="black", label="attribute prompts")
    ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal",
           title=f"LatHAdapter in the Poincaré disk (c = {c:.2f})\n{disk_run_label(run_dir)}")
    ax.axis("off")
    outside_legend(ax)
    fig.text(0.02, 0.02, "radius = exact distance to the origin; angle = PCA of tangent vectors", fontsize=7)
    return _save(fig, folder / "poincare_disk.png")


def disk_run_label(run_dir: Path) -> str:
    """Which run the disk draws: its cache file, classes, shots, seed and run key (from its config.json)."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return f"run {run_dir.name}"
    return (f"{Path(str(config.get('cache', '?'))).name}, {config.get('classes', '?')} classes, "
            f"{config.get('shots', '?')} shots, seed {config.get('seed', '?')}, run {config.get('key', run_dir.name)}")


def report_folder(path: Path) -> Path:
    """The default report folder of `path`: `report/` inside a folder, or beside a results.csv."""
    return path / "report" if path.is_dir() else path.parent / "report"


def _disk_run(results: Results) -> Path | None:
    """The run directory of the table's last LatHAdapter run that saved lifted points, if any."""
    for row in reversed(results.rows):
        folder = results.run_dirs.get(row["key"])
        if row.get("tune.selected", "").lower() == "false":
            continue  # a tuning candidate that was not kept
        if row["method"] == "lathadapter" and folder is not None and (folder / "points.pt").is_file():
            return folder
    return None


def write_report(source: Path, out: Path | None = None, disk_run: Path | None = None) -> dict[str, Any]:
    """Write `report.md`, one CSV per table and the plots into `out` (default: `report_folder(source)`) from a
    results.csv, a grid folder or a folder of run directories; returns the paths and the tables' markdown."""
    results = load_results(source)
    out = out or report_folder(source)
    out.mkdir(parents=True, exist_ok=True)
    parsed = records(results)
    tables = report_tables(parsed)
    plots = plot_accuracy_vs_shots(parsed, out) + plot_base_novel(parsed, out)
    disk_run = disk_run or _disk_run(results)
    if disk_run is not None:
        plots.append(plot_poincare_disk(disk_run, out))
    markdown = tables_markdown(tables, results)
    csvs = [t.write_csv(out) for t in tables]
    text = (f"# Results\n\nFrom `{results.source}` ({len(results.rows)} rows). Each table row is one configuration; "
            "cells are mean ± sample std over seeds (one seed: no ±); n/a: not applicable; diverged: no seed's "
            "training stayed finite; —: no run.\n\n"
            f"{markdown}\n" + "".join(f"![{p.stem}]({p.name})\n" for p in plots))
    write_atomic(out / "report.md", lambda temporary: temporary.write_text(text))  # last: the report is whole
    return {"markdown": markdown, "tables": [str(p) for p in csvs], "plots": [str(p) for p in plots],
            "report": str(out / "report.md")}
