"""A report's paper-style tables (markdown and CSV; their LaTeX: `report_latex`) from a results table, a grid folder
or a folder of `fit` runs, and their markdown, which `grid` and `protocol` print (`summary_markdown`).

A table row is one configuration: a method with its settings (text features, model selection and every option);
a cell is that configuration's mean ± sample std (n − 1) over seeds on one dataset cache at one number of shots.
Configurations are never pooled, and a cell takes one run per seed: two runs of one configuration and seed (another
tuning grid, other transfer targets, e.g. two protocol runs into one folder) are refused, naming both. When
settings vary among one method's rows, each configuration has its own row, labelled by what varies
(`lathadapter curvature=0.5`), and each varied setting gets an ablation table of that method: every configuration,
the setting's value first and the other varied settings beside it, sorted so that consecutive rows with the same
other settings form one ablation. A dataset name with several cache fingerprints is several datasets, labelled
`caltech101 (fp 1a2b3c4d)`. Averages over datasets or targets are means of a configuration's per-dataset means;
base-to-novel HM comes from the mean base and mean novel accuracies, as papers report it. After these tables, their
calibration twins (`calibration_tables`, `ece_<table>`): the same cells of ECE, lower is better, from the same builder
of each kind (its `Metric`), without HM, ablation, `_tuned` or main tables. The per-seed companions (`report_seeds`)
come from the same builders too, each cell one seed's run (`Metric.seed`).

Markdown cells read `30.33 ± 1.15` (one seed: `30.33`), `n/a` (not applicable), `diverged` (every seed's training
diverged, or an average or HM over such a cell: no accuracy; such runs are listed under the tables) or `—` (no
run), with `(n=2)` after a cell over fewer seeds than the fullest cell of its table (a run missing, failed or
diverged), and after an average or HM of such a cell; each CSV has `<column> mean`, `<column> std` and `<column> n`
(seeds) columns, empty where there is no number (an average's or HM's n is empty).

Tuned grids (`tune.*` columns): only each tuning group's kept run (`tune.selected`, chosen on val images only)
enters the tables. A tuned option is not a configuration axis: its value reads `tuned` in the configuration (the
score and val images that chose it, `tune.score` and `tune.set`, are settings: `score=val_hm` in a label where they
vary, `score=untuned` for a run of no tuning group beside tuned ones), and the label names the values chosen
(`clip-adapter lr=0.01 (tuned)`; `lr=0.001/0.01 (tuned)` when cells chose differently); a companion table
`<table>_tuned` gives the value chosen in each cell (`lr=0.01`, or each value with its number of seeds, `lr=0.01 ×2,
lr=0.001 ×1`), its title names the score that chose them (`tune.score`: val or val_hm) and, under it, a note says
what the score is; a value still on an edge of a preset's grid after its extensions, or the highest or lowest of an
explicit grid of 3 or more numbers (`tune.edge`), is marked ▲ (highest tried) or ▼ (lowest tried), explained in the
note.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lathadapter.experiments.cells import (
    AVERAGE,
    MISSING,
    TARGETS_AVERAGE,
    Cell,
    Recorded,
    ablation_groups,
    base_novel_cells,
    cell_of,
    config_label,
    covarying,
    dataset_slug,
    few_shot_average,
    few_shot_cells,
    ordered_configs,
    setting_name,
    shown_value,
    slug,
    sortable,
    transfer_cells,
    varied_settings,
)
from lathadapter.experiments.records import (
    EDGE,
    HIERARCHY,
    SCORE,
    SPLIT,
    Choice,
    Configuration,
    Record,
    Results,
    dataset_labels,
    load_results,
    records,
    shots_label,
)
from lathadapter.experiments.run import write_atomic

EDGE_MARKS = {"high": "▲", "low": "▼"}
SCORE_NOTES = {"val": "val: accuracy on the training classes' few-shot val set",
               "val_hm": "val_hm: the harmonic mean of the pseudo-base and pseudo-novel val accuracy of a copy trained "
                         "on the first half of the training classes (the base classes, for base-to-novel)"}
SPLIT_NOTE = ("on the whole val split: the cache's whole val split in place of the few-shot val subset "
              "(--tune-set split)")
EDGE_NOTE = ("▲ / ▼: the highest / lowest value tried (of a --tune-preset grid after it was extended as far as it "
             "may; of a --tune grid of 3 or more numbers, as given); the best value may lie beyond")


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


@dataclass
class Table:
    """A titled table: label columns (`lead`) and value columns of cells, one row per configuration."""

    name: str
    title: str
    lead: list[str]
    columns: list[str]
    rows: list[tuple[list[str], list[Any]]]  # Cell; Chosen in a `_tuned` table, a run's value in a `_seeds` one
    parts: tuple[str, ...] = ("mean", "std", "n")  # what each cell is in the CSV (`""`: one number, the column's name)
    note: str = ""  # a line under the table (a `_tuned` table: the score and the edge marks)
    bold_best: bool = False  # rows are configurations compared column by column: LaTeX bolds each column's best mean
    lower_better: bool = False  # the best mean is the lowest (ECE), not the highest (accuracy)

    def markdown(self) -> str:
        header = self.lead + self.columns
        lines = [f"### {self.title}", "", _markdown_row(header), "|" + "|".join(" --- " for _ in header) + "|"]
        most = self.most_seeds()
        lines += [_markdown_row(lead + [_shown(c, most) for c in cells]) for lead, cells in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"

    def most_seeds(self) -> int:
        """The seeds of the table's fullest cell (0 without any), against which `fewer_seeds` marks a cell."""
        return max((c.n for _, cells in self.rows for c in cells if isinstance(c, Cell) and c.n), default=0)

    def write_csv(self, folder: Path) -> Path:
        path = folder / f"{self.name}.csv"

        def write(temporary: Path) -> None:
            with temporary.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(self.lead + [f"{c} {part}" if part else c for c in self.columns for part in self.parts])
                writer.writerows(lead + [x for cell in cells for x in cell.numbers()] for lead, cells in self.rows)

        write_atomic(path, write)
        return path


def _markdown_row(texts: list[str]) -> str:
    """A markdown table row; a `|` in a text (a dataset or option value) is escaped, not a column border."""
    return "| " + " | ".join(text.replace("|", "\\|") for text in texts) + " |"


def fewer_seeds(cell: Cell | Chosen, most: int) -> int | None:
    """The seeds of a mean over fewer seeds than the table's fullest cell (`most`; a run missing, failed or diverged),
    or of an average or HM of such a cell, so that it does not read as the others do; None for any other cell."""
    seeds = cell.seeds if isinstance(cell, Cell) and cell.mean is not None else None
    return seeds if seeds is not None and seeds < most else None


def _shown(cell: Cell | Chosen, most: int) -> str:
    """A markdown cell: its text, and `(n=2)` after it when it rests on fewer seeds (`fewer_seeds`)."""
    seeds = fewer_seeds(cell, most)
    return cell.text() + (f" (n={seeds})" if seeds is not None else "")


def _choices_by(records: Iterable[Record], key: Callable[[Record], tuple]) -> dict[tuple, tuple[Choice, ...]]:
    grouped: dict[tuple, list[Choice]] = defaultdict(list)
    for record in records:
        if record.tuned:
            grouped[key(record)].append(record.tuned)
    return {k: tuple(v) for k, v in grouped.items()}


def _ablation(name: str, title: str, configs: list[Configuration], group: list[str], others: list[str],
              columns: list[str], cells: dict[Configuration, list[Cell]]) -> Table:
    """One method's configurations with the `group` of settings that vary together first (`ablation_groups`) and the
    `others` that vary beside it; sorted by the others, then the group, so that consecutive rows differing only in
    the group form one ablation."""
    lead = [*group, *others]
    rows = sorted(configs, key=lambda c: [sortable(c.value(s)) for s in [*others, *group]])
    return Table(name, title, [setting_name(s) for s in lead], columns,
                 [([shown_value(s, c.value(s)) for s in lead], cells[c]) for c in rows])


@dataclass(frozen=True)
class Metric:
    """What a table kind reports: accuracy, or ECE in the accuracy tables' twins. One builder per kind takes it, so
    that a twin has its accuracy table's rows, columns and labels by construction."""

    field: str  # the records' `<field>_all`, `<field>_base`, `<field>_novel`
    prefix: str  # before each table's name: `ece_few_shot_caltech101`
    few_shot: str  # the heads of the three kinds' titles
    base_to_novel: str
    transfer: str
    recorded: Recorded = None  # the runs that recorded it (`cells_over_seeds`); None: all
    hm: bool = True  # base-to-novel's HM beside base and novel (of accuracies, as papers report it)
    companions: bool = True  # ablation and `_tuned` tables and the papers' main table (a twin's are its accuracy's)
    lower_better: bool = False  # the best mean is the lowest, bold in LaTeX
    note: str = ""  # a line under each table
    seed: int | None = None  # each cell that seed's run alone (`cells_over_seeds`, the `_seeds` tables); None: all


ACCURACY = Metric("acc", "", "Few-shot accuracy", "Base-to-novel generalisation", "Transfer")


def _tables(name: str, title: str, columns: list[str], cells: dict[Configuration, list[Cell]],
            chosen: dict[Configuration, list[Chosen]], chosen_columns: list[str] | None = None,
            metric: Metric = ACCURACY, ablations: bool = True) -> list[Table]:
    """A block of results as a table with one row per configuration and, with the `metric`'s companions, for each
    setting that varies among one method's configurations, that method's ablation table of the setting (unless
    `ablations` is off: a block whose cells other tables already ablate). With tuning (`chosen`: the values the kept
    runs chose, per column of `chosen_columns`, default `columns`), labels name the chosen values and, with the
    companions, a `_tuned` table gives them per cell."""
    configs = ordered_configs(cells)
    varied = varied_settings(configs)
    chosen = {c: row for c, row in chosen.items() if any(cell.choices for cell in row)}
    labels = _labels(configs, varied, chosen)
    tables = [Table(name, title, ["method"], columns, [([labels[c]], cells[c]) for c in configs], note=metric.note,
                    bold_best=True, lower_better=metric.lower_better)]
    if not metric.companions:
        return tables
    for method, settings in varied.items() if ablations else ():
        own = [c for c in configs if c.method == method]
        for group in ablation_groups(own, settings):
            tables.append(_ablation(f"{name}_ablation_{slug(method)}_{setting_name(group[0])}",
                                    f"{title}: {method}, ablation of {setting_name(group[0])}{covarying(group)}",
                                    own, group, [s for s in settings if s not in group], columns, cells))
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
                            [([config_label(c, varied)], chosen[c]) for c in configs if c in chosen], ("chosen",),
                            note))
    return tables


def _labels(configs: list[Configuration], varied: dict[str, list[str]], chosen: dict[Configuration, list[Chosen]]
            ) -> dict[Configuration, str]:
    """Each configuration's row label, naming the tuned values its kept runs chose (`config_label`)."""
    return {c: config_label(c, varied, [x for cell in chosen.get(c, []) for x in cell.choices]) for c in configs}


def few_shot_tables(records: list[Record], metric: Metric = ACCURACY) -> list[Table]:
    """Per dataset: configurations × shots; with several datasets, also the average over datasets, and (with the
    metric's companions) per number of shots the papers' main table, configurations × (each dataset, their average),
    whose ablations the per-dataset tables already give."""
    cells = few_shot_cells(records, f"{metric.field}_all", metric.recorded, metric.seed)
    tuned = _choices_by([r for r in records if r.classes == "all" and not r.target], cell_of)
    datasets = sorted({d for d, _, _ in cells})
    name, head = f"{metric.prefix}few_shot", metric.few_shot
    tables = []
    for dataset in datasets:
        shots = sorted({k for d, _, k in cells if d == dataset})
        rows = {c: [cells.get((dataset, c, k), MISSING) for k in shots] for d, c, _ in cells if d == dataset}
        chosen = {c: [Chosen(tuned.get((dataset, c, k), ())) for k in shots] for c in rows}
        tables += _tables(f"{name}_{dataset_slug(dataset)}", f"{head} (%) on {dataset}",
                          [shots_label(k) for k in shots], rows, chosen, metric=metric)
    if len(datasets) > 1:
        shots = sorted({k for _, _, k in cells})
        average = few_shot_average(cells)
        rows = {c: [average[(c, k)] for k in shots] for _, c, _ in cells}
        chosen = {c: [Chosen(tuple(x for d in datasets for x in tuned.get((d, c, k), ()))) for k in shots]
                  for c in rows}
        tables += _tables(f"{name}_{AVERAGE}", f"{head} (%), average over {len(datasets)} datasets",
                          [shots_label(k) for k in shots], rows, chosen, metric=metric)
        for k in shots if metric.companions else ():  # the main table: a column per dataset and their average
            rows = {c: [cells.get((d, c, k), MISSING) for d in datasets] + [average[(c, k)]] for _, c, _ in cells}
            chosen = {c: [Chosen(tuned.get((d, c, k), ())) for d in datasets] for c in rows}
            tables += _tables(f"{name}_datasets_{k}shot", f"{head} (%), {shots_label(k)}: each dataset and their "
                              "average", [*datasets, "Average"], rows, chosen, datasets, metric, ablations=False)
    return tables


def base_to_novel_tables(records: list[Record], metric: Metric = ACCURACY) -> list[Table]:
    """Per number of shots: configurations × (dataset × base / novel / HM, no HM without the metric's `hm`), with
    the average over datasets when there are several (its HM from the average base and novel)."""
    cells = base_novel_cells(records, metric.field, metric.recorded, metric.seed)
    tuned = _choices_by([r for r in records if r.classes == "base" and not r.target], cell_of)
    all_shots = sorted({k for _, _, k in cells})
    parts = ("base", "novel", "HM") if metric.hm else ("base", "novel")
    tables = []
    for shots in all_shots:
        datasets = sorted({d for d, _, k in cells if k == shots})
        average = ["Average"] if len(datasets) > 1 else []
        rows, chosen = {}, {}
        for config in {c for _, c, k in cells if k == shots}:
            pairs = [cells.get((d, config, shots), (MISSING, MISSING)) for d in datasets]
            if average:
                pairs.append((Cell.mean_of([b for b, _ in pairs]), Cell.mean_of([n for _, n in pairs])))
            rows[config] = [cell for b, n in pairs for cell in ((b, n, Cell.hm(b, n)) if metric.hm else (b, n))]
            chosen[config] = [Chosen(tuned.get((d, config, shots), ())) for d in datasets]
        name = f"{metric.prefix}base_to_novel" + ("" if len(all_shots) == 1 else f"_{shots}shot")
        tables += _tables(name, f"{metric.base_to_novel} (%): {shots_label(shots)} on base classes",
                          [f"{d} {part}" for d in datasets + average for part in parts], rows,
                          chosen, datasets, metric)  # one choice per dataset, made on its base classes
    return tables


def transfer_tables(records: list[Record], metric: Metric = ACCURACY) -> list[Table]:
    """Cross-dataset or domain-generalisation results per source dataset and shots: configurations × (source test
    set, each target, the average over targets)."""
    # one choice per run, the same for all its targets: read from its `source` row
    tuned = _choices_by([r for r in records if r.target == "source"], lambda r: (r.dataset, r.shots, r.config))
    blocks = transfer_cells(records, f"{metric.field}_all", metric.recorded, metric.seed)
    tables = []
    for (source, shots), (targets, rows) in blocks.items():
        name = f"{metric.prefix}transfer" + ("" if len(blocks) == 1 else f"_{slug(source)}_{shots}shot")
        title = f"{metric.transfer} from {source}, {shots_label(shots)} (%): source test set and targets"
        tables += _tables(name, title, ["source", *targets, TARGETS_AVERAGE], rows,
                          {c: [Chosen(tuned.get((source, shots, c), ()))] for c in rows}, [source], metric)
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
    varied = varied_settings({c for c, _, _, _ in grouped})
    order = {c: i for i, c in enumerate(ordered_configs({c for c, _, _, _ in grouped}))}
    rows = []
    for (config, dataset, shots, classes), runs in sorted(grouped.items(), key=lambda item: (
            order[item[0][0]], item[0][1], item[0][2], item[0][3])):
        values = [dict(r.hierarchy) for r in runs]
        rows.append(([config_label(config, varied, [r.tuned for r in runs if r.tuned]), dataset,
                      f"{shots_label(shots)}, {'base-to-novel' if classes == 'base' else classes}"],
                     [Cell.over_seeds([v[name] for v in values]) for name, _ in HIERARCHY]))
    return [Table("hierarchy", "Hierarchy diagnostics (share of images inside their category's cone, mean exterior "
                  "angle Ξ and half-aperture ψ in rad, mean scaled radii, whether category < attribute < image)",
                  ["method", "dataset", "setting"], [title for _, title in HIERARCHY], rows)]


ECE_NOTE = ("ECE: expected calibration error (%), the test images binned by top-1 confidence (15 equal-width bins), "
            "the image-weighted mean of |accuracy − mean confidence| over the bins; lower is better (bold in LaTeX: "
            "the lowest mean).")
ECE = Metric("ece", "ece_", "Few-shot ECE", "Base-to-novel ECE", "Transfer ECE", Record.ece_recorded, hm=False,
             companions=False, lower_better=True, note=ECE_NOTE)


def calibration_tables(records: list[Record]) -> list[Table]:
    """The few-shot, base-to-novel and transfer tables' ECE twins, `ece_<table>`: the accuracy tables' rows, columns
    and labels, without base-to-novel's HM. A run saved before ECE was recorded has none (`Record.ece_recorded`: a
    cell with no other run reads `—`, and the note counts such runs); a table without any ECE is left out, and so are
    all without any run that recorded it."""
    if all(v is None for r in records for v in (r.ece_all, r.ece_base, r.ece_novel)):
        return []
    unrecorded = len({r.key for r in records if not Record.ece_recorded(r)})
    ece = replace(ECE, note=ECE_NOTE + (f" —: no run, or only runs saved before ECE was recorded ({unrecorded} "
                                        f"run{'s' if unrecorded > 1 else ''} left out)." if unrecorded else ""))
    tables = few_shot_tables(records, ece) + base_to_novel_tables(records, ece) + transfer_tables(records, ece)
    return [t for t in tables if any(not cell.missing for _, cells in t.rows for cell in cells)]


def report_tables(parsed: list[Record]) -> list[Table]:
    """The report's tables in order: few-shot, base-to-novel, transfer, hierarchy, then the calibration (ECE) ones."""
    return (few_shot_tables(parsed) + base_to_novel_tables(parsed) + transfer_tables(parsed)
            + hierarchy_tables(parsed) + calibration_tables(parsed))


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


def diverged_note(results: Results) -> str:
    """Markdown listing the runs whose training diverged (NaN or infinite loss, parameters or scores; `diverged`
    column), which the tables leave out (a cell over fewer seeds then reads `(n=k)`); a tuning candidate not kept is
    not listed. Empty when there are none."""
    runs = {row["key"]: row for row in results.rows  # a transfer run has a row per target: listed once
            if row.get("diverged") and row.get("tune.selected", "").lower() != "false"}
    if not runs:
        return ""
    labels = dataset_labels(results.rows)  # as the tables name the dataset: `caltech101 (fp 1a2b3c4d)`
    lines = [f"- {row['method']}, {labels[row['dataset'], row['fingerprint']]}, {shots_label(int(row['shots']))}, seed "
             f"{row['seed']}, classes="
             f"{row['classes']} (run {key}): {row['diverged']}" for key, row in runs.items()]
    many = len(runs) != 1
    return (f"### Diverged runs\n\n{len(runs)} run{'s' if many else ''} diverged in training and "
            f"{'are' if many else 'is'} left out of the tables:\n\n" + "\n".join(lines) + "\n")
