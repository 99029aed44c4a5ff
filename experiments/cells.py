"""A report's cells and how it names configurations, shared by its tables and plots: a configuration's mean ±
sample std (n − 1) over seeds on one dataset at one number of shots (`Cell`; the records' few-shot cells and their
average over datasets, base-to-novel and transfer cells: `few_shot_cells`, `few_shot_average`, `base_novel_cells`,
`transfer_cells`), the configurations in the catalog's order (`ordered_configs`) and their labels, which name the
settings that vary among one method's configurations and the tuned values chosen (`config_label`:
`lathadapter curvature=0.5`, `clip-adapter lr=0.01 (tuned)`)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lathadapter.adapter.catalog import method_names
from lathadapter.experiments.records import EDGE, SCORE, TUNE_SETTINGS, TUNED, Choice, Configuration, Record, slug


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


Recorded = Callable[[Record], bool] | None  # whether a run recorded the metric (`Record.ece_recorded`); None: all did


def cells_over_seeds(records: list[Record], key: Callable[[Record], tuple], metric: str, recorded: Recorded = None,
                     seed: int | None = None) -> dict[tuple, Cell]:
    """`metric`'s cell over seeds by `key`; a diverged run has no value and is counted apart (`Cell.over_seeds`). A
    run that did not record the metric (`recorded`) has no value either: a cell of such runs alone is `—`, so that
    the table keeps the accuracy table's rows and columns. With `seed`, each cell over all seeds holds that seed's
    run alone (`—` where it has none), so that a seed's table has the rows and columns of the table over seeds."""
    if seed is not None:  # the cells over all seeds are those of the keys of all runs
        alone = cells_over_seeds([r for r in records if r.seed == seed], key, metric, recorded)
        return {k: alone.get(k, MISSING) for k in dict.fromkeys(map(key, records))}
    grouped: dict[tuple, list[float | None]] = defaultdict(list)
    diverged: set[tuple] = set()
    unrecorded: set[tuple] = set()
    for record in records:
        if recorded is not None and not recorded(record):
            unrecorded.add(key(record))
        elif record.diverged:
            diverged.add(key(record))
            grouped.setdefault(key(record), [])
        else:
            grouped[key(record)].append(getattr(record, metric))
    cells = {k: Cell.over_seeds(values, k in diverged) for k, values in grouped.items()}
    return {**dict.fromkeys(unrecorded - cells.keys(), MISSING), **cells}


def cell_of(record: Record) -> tuple[str, Configuration, int]:
    """The cell a record falls in: (dataset, configuration, shots)."""
    return record.dataset, record.config, record.shots


def few_shot_cells(records: list[Record], metric: str = "acc_all", recorded: Recorded = None, seed: int | None = None
                   ) -> dict[tuple[str, Configuration, int], Cell]:
    """Few-shot accuracy (or `metric`: `ece_all`, of the runs `recorded`) over seeds (or of one `seed`'s run,
    `cells_over_seeds`) by (dataset, configuration, shots): all classes, no transfer targets."""
    return cells_over_seeds([r for r in records if r.classes == "all" and not r.target], cell_of, metric, recorded,
                            seed)


def few_shot_average(cells: dict[tuple[str, Configuration, int], Cell]) -> dict[tuple[Configuration, int], Cell]:
    """The average over the datasets of `few_shot_cells` by (configuration, shots), at every number of shots of any
    dataset: the mean of the configuration's per-dataset means (`Cell.mean_of`; `—` where a dataset has no run)."""
    datasets = sorted({d for d, _, _ in cells})
    shots = sorted({k for _, _, k in cells})
    return {(c, k): Cell.mean_of([cells.get((d, c, k), MISSING) for d in datasets]) for _, c, _ in cells
            for k in shots}


def base_novel_cells(records: list[Record], metric: str = "acc", recorded: Recorded = None, seed: int | None = None
                     ) -> dict[tuple[str, Configuration, int], tuple[Cell, Cell]]:
    """Base and novel accuracy (or `metric`: `ece`, of the runs `recorded`) over seeds (or of one `seed`'s run) by
    (dataset, configuration, shots) of the base-to-novel runs."""
    chosen = [r for r in records if r.classes == "base" and not r.target]
    base = cells_over_seeds(chosen, cell_of, f"{metric}_base", recorded, seed)
    novel = cells_over_seeds(chosen, cell_of, f"{metric}_novel", recorded, seed)
    return {k: (base[k], novel[k]) for k in base}


TARGETS_AVERAGE = "Average (targets)"  # the transfer table's last column, its plot's last dot


def transfer_cells(records: list[Record], metric: str = "acc_all", recorded: Recorded = None, seed: int | None = None
                   ) -> dict[tuple[str, int], tuple[list[str], dict[Configuration, list[Cell]]]]:
    """Per (source dataset, shots) of the transfer runs: the targets, and each configuration's cells over seeds (or
    of one `seed`'s run) of accuracy (or `metric`: `ece_all`, of the runs `recorded`) on the source test set, each
    target and the average over targets (`Cell.mean_of`)."""
    cells = cells_over_seeds([r for r in records if r.target], lambda r: (r.dataset, r.shots, r.config, r.target),
                             metric, recorded, seed)
    blocks = {}
    for source, shots in sorted({(d, k) for d, k, _, _ in cells}):
        targets = sorted({t for d, k, _, t in cells if (d, k) == (source, shots)} - {"source"})
        rows = {}
        for config in {c for d, k, c, _ in cells if (d, k) == (source, shots)}:
            values = [cells.get((source, shots, config, t), MISSING) for t in targets]
            rows[config] = [cells.get((source, shots, config, "source"), MISSING), *values, Cell.mean_of(values)]
        blocks[(source, shots)] = (targets, rows)
    return blocks


AVERAGE = "average"  # the few-shot average over datasets in file names: few_shot_average, accuracy_vs_shots_average


def dataset_slug(dataset: str) -> str:
    """`slug(dataset)` for a file of one dataset beside the average over datasets: a dataset named `average` (a
    `folder:…/average`) is `average_dataset`, so that neither file overwrites the other."""
    name = slug(dataset)
    return f"{name}_dataset" if name.lower() == AVERAGE else name


def setting_name(column: str) -> str:
    """A setting's name in labels: `opt.lathadapter.curvature` → `curvature`, `text` → `text`."""
    return column.rsplit(".", 1)[-1]


UNTUNED = "untuned"  # an empty `tune.score` or `tune.set`: a run of no tuning group, shown beside tuned ones


def shown_value(column: str, value: str) -> str:
    """A setting's value as labels, ablation tables and plots show it: an empty option is left to the method's
    training recipe (`recipe`, as `list options` says); an empty tuning score or val set is an untuned run."""
    if value:
        return value
    return UNTUNED if column in TUNE_SETTINGS else "recipe"


def sortable(value: str) -> tuple[int, float, str]:
    """Numbers by value, before other text."""
    try:
        return 0, float(value), ""
    except ValueError:
        return 1, 0.0, value


def ordered_configs(configs: Iterable[Configuration]) -> list[Configuration]:
    """Methods in the catalog's order (zero-shot first, LatHAdapter last; unknown names after), then settings."""
    order = method_names()
    return sorted(configs, key=lambda c: (order.index(c.method) if c.method in order else len(order), c.method,
                                          [sortable(v) for _, v in c.settings]))


def varied_settings(configs: Iterable[Configuration]) -> dict[str, list[str]]:
    """For each method, the setting columns whose value differs among its configurations."""
    values: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for config in configs:
        for column, value in config.settings:
            values[config.method][column].add(value)
    return {method: [c for c, seen in columns.items() if len(seen) > 1] for method, columns in values.items()}


def ablation_groups(configs: Iterable[Configuration], settings: list[str]) -> list[list[str]]:
    """One method's varied `settings` grouped where they vary together (each one's values fix the others' over
    `configs`, as a tuned and an untuned grid's `tune.score`, `tune.set` and `lr`), in `settings`' order: each group
    is one ablation, whose table and plot would otherwise be repeated per setting. It is led by its first setting
    that no configuration tuned: a tuned value is no point of a plot's axis, and a lead tuned in one of two
    configurations would leave the plot one point, where a companion has two."""
    configs = list(configs)
    groups: dict[tuple[int, ...], list[str]] = {}
    for setting in settings:
        first: dict[str, int] = {}  # the partition of the configurations by the setting's value, as a key
        groups.setdefault(tuple(first.setdefault(c.value(setting), len(first)) for c in configs), []).append(setting)
    return [sorted(group, key=lambda s: any(c.value(s) == TUNED for c in configs)) for group in groups.values()]


def covarying(group: list[str]) -> str:
    """An ablation title's note of the settings that vary with its lead (`ablation_groups`); empty for none."""
    return f" (with {', '.join(setting_name(s) for s in group[1:])}, varying with it)" if len(group) > 1 else ""


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
    return " " + " ".join(f"{name}={'/'.join(sorted(seen, key=sortable))}" for name, seen in values.items()) + \
        " (tuned)"


def config_label(config: Configuration, varied: dict[str, list[str]], choices: Iterable[Choice] = ()) -> str:
    """`lathadapter curvature=0.5`: the method and the settings that vary among its configurations, then the tuned
    values chosen (`lr=0.01 (tuned)`), if any."""
    shown = [c for c in varied.get(config.method, []) if config.value(c) != TUNED]
    return " ".join([config.method] + [f"{setting_name(c)}={shown_value(c, config.value(c))}" for c in shown]) + \
        _tuned_suffix(choices)
