"""Two configurations compared across datasets (`lathadapter compare SOURCE ... --a ... --b ...`): their runs read
from results tables as a report reads them, paired by dataset, class protocol, shots, seed and transfer target; per
part and shots each dataset's seed-mean difference, wins/ties/losses, and the exact two-sided Wilcoxon signed-rank
test over the datasets (Demšar 2006, "Statistical comparisons of classifiers over multiple data sets")."""

from __future__ import annotations

import csv
import functools
import io
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lathadapter.adapter.catalog import method_names, option_names
from lathadapter.adapter.evaluate import harmonic_mean
from lathadapter.adapter.options import OptionError, parse_value, respelled
from lathadapter.experiments.cells import config_label, shown_value, sortable, varied_settings
from lathadapter.experiments.records import (
    SETTINGS,
    TUNE_SETTINGS,
    Configuration,
    Record,
    Results,
    dataset_labels,
    load_results,
    records,
    setting_columns,
    shots_label,
)
from lathadapter.experiments.run import TUNE_SETS_BEFORE, write_atomic

ALPHA = 0.05  # the level the verdict is stated at
PARTS = ("all", "base", "novel", "hm", "source", "target")  # few-shot; base-to-novel; a transfer run's source, targets


@dataclass(frozen=True)
class SignedRank:
    """The exact Wilcoxon signed-rank test of paired differences: `n` nonzero differences, the sums of the mid-ranks
    of |difference| of the positive (`w_plus`) and negative (`w_minus`) ones, and the exact two-sided p."""

    n: int
    w_plus: float
    w_minus: float
    p: float

    @property
    def smallest_p(self) -> float:
        """The smallest p any signs of `n` differences can give: every sign alike, 2 of the 2ⁿ assignments."""
        return min(1.0, 2 / (1 << self.n))


def signed_rank(differences: Iterable[float]) -> SignedRank:
    """The exact signed-rank test of `differences`: zeros dropped (Wilcoxon's convention), tied |differences| given
    their mid-rank, and p = 2 P(W ≤ min(W+, W−)) capped at 1 under the null that each sign is + or − with probability
    1/2. The null distribution is counted over the 2ⁿ sign assignments by a DP over the doubled mid-ranks (integers)
    in exact integers, up to min(W+, W−) only, and divided by 2ⁿ once, correctly rounded."""
    nonzero = [d for d in differences if d != 0]
    n = len(nonzero)
    order = sorted(range(n), key=lambda i: abs(nonzero[i]))
    doubled = [0] * n  # twice each mid-rank: a run of ties over ranks i + 1 .. j + 1 gets i + j + 2
    i = 0
    while i < n:
        j = i
        while j + 1 < n and abs(nonzero[order[j + 1]]) == abs(nonzero[order[i]]):
            j += 1
        for k in range(i, j + 1):
            doubled[order[k]] = i + j + 2
        i = j + 1
    plus = sum(r for r, d in zip(doubled, nonzero, strict=True) if d > 0)
    low = min(plus, n * (n + 1) - plus)  # the doubled ranks sum to n(n + 1)
    counts = np.zeros(low + 1, dtype=object)  # counts[s]: sign assignments whose doubled positive sum is s
    counts[0] = 1
    for r in doubled:
        if r <= low:
            counts[r:] = counts[r:] + counts[:low + 1 - r]
    return SignedRank(n, plus / 2, (n * (n + 1) - plus) / 2, min(1.0, 2 * int(counts.sum()) / (1 << n)))


@dataclass(frozen=True)
class Selector:
    """`name=value[,name=value...]` over the results table's configurations: `method`, a setting (`text`, `select`,
    `train_views`, `tune.score`, `tune.set`) or an option as `--set` spells it (`lambda_hier`,
    `lathadapter.lambda_hier`); `flag` names it in messages (`--a`)."""

    flag: str
    conditions: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, flag: str, text: str, say: Callable[[str], None] = lambda _: None) -> Selector:
        """`text` as typed; `tune.set`'s old name (`tune.set=fewshot`, tables read it as `subset`) is read as its new
        one, and `say` gets a line naming it."""
        pairs = [part.partition("=") for part in text.split(",")]
        if not text or any(not name.strip() or not equals for name, equals, _ in pairs):
            raise OptionError(f"{flag} {text!r}: expected name=value[,name=value...], e.g. "
                              "method=lathadapter,lambda_hier=0")
        conditions = [(name.strip(), value.strip()) for name, _, value in pairs]
        return cls(flag, tuple((name, respelled(f"{flag} {name}", value, TUNE_SETS_BEFORE, say)
                                if name == "tune.set" else value) for name, value in conditions))

    @property
    def text(self) -> str:
        return ",".join(f"{name}={value}" for name, value in self.conditions)


@functools.cache
def _options_of(method: str) -> frozenset[str] | None:
    """The option names `method` declares; None for a method the catalog does not know (every option assumed)."""
    return frozenset(option_names(method)) if method in method_names() else None


def _value(name: str, record: Record) -> str | None:
    """`record`'s value of selector name `name`, as labels show it (`recipe`, `untuned`, `tuned`); None where its
    method has no such option (or `name` is `METHOD.OPTION` of another method)."""
    config = record.config
    if name == "method":
        return config.method
    settings = dict(config.settings)
    if name in SETTINGS or name in TUNE_SETTINGS:
        return shown_value(name, settings.get(name, ""))
    method, _, option = name.rpartition(".")
    declared = _options_of(config.method)
    if (method and method != config.method) or (declared is not None and option not in declared):
        return None
    for column in (f"opt.{config.method}.{option}", f"opt.{option}"):
        if column in settings:
            return shown_value(column, settings[column])
    return None


def _same(name: str, given: str, value: str) -> bool:
    """Whether a selector's value names a table value: the same text, number or truth value (a boolean option's
    `True`/`False`, given as `--set` reads it: true/false, yes/no, on/off, 1/0)."""
    if given == value:
        return True
    if value.lower() in ("true", "false"):
        try:
            return parse_value(name, bool, given) == (value.lower() == "true")
        except OptionError:
            return False
    try:
        return float(given) == float(value)
    except ValueError:
        return False


def _names(chosen: Sequence[Record]) -> list[str]:
    """The names a selector may use among `chosen`: method, the settings, each option with a value somewhere."""
    options = {column.rsplit(".", 1)[-1] for r in chosen for column, value in r.config.settings
               if column.startswith("opt.") and value != ""}
    present = {column for r in chosen for column, _ in r.config.settings}
    return ["method", *[c for c in (*SETTINGS, *TUNE_SETTINGS) if c in present], *sorted(options)]


def select(chosen: Sequence[Record], selector: Selector) -> list[Record]:
    """The records whose configuration meets every condition of `selector`; a name no record has, or a condition
    that leaves none, is refused in one line listing the names, or the values the name has among the runs left."""
    names = _names(chosen)
    for i, (name, given) in enumerate(selector.conditions):
        method, _, option = name.rpartition(".")  # `METHOD.NAME`: an option of a method among the runs
        if name not in names and not (option in names and any(r.config.method == method for r in chosen)):
            raise OptionError(f"{selector.flag} {selector.text}: no setting or option {name!r} in the table; choose "
                              f"among {', '.join(names)}")
        left = [r for r in chosen if (value := _value(name, r)) is not None and _same(name, given, value)]
        if not left:
            values = sorted({v for r in chosen if (v := _value(name, r)) is not None}, key=sortable)
            among = f" among the runs with {Selector('', selector.conditions[:i]).text}" if i else ""
            raise OptionError(f"{selector.flag} {selector.text}: {name}={given} matches no run; {name} has the "
                              f"values {', '.join(values) or 'none'}{among}")
        chosen = left
    return list(chosen)


def _pooled(loaded: Sequence[Results]) -> list[list[Record]]:
    """Each source's records (each parsed and checked alone, so that an error names its file and row), their datasets
    labelled over all sources' rows (a dataset name with several fingerprints among them is several datasets) and
    their configurations over all sources' setting columns (a table of other methods, or of an older version, has
    other columns: its runs are still the same configuration, and a run read from two tables counts once)."""
    labels = dataset_labels([row for results in loaded for row in results.rows])
    columns = setting_columns({c for results in loaded for row in results.rows for c in row})
    parsed = []
    for results in loaded:
        own = {label: key for key, label in dataset_labels(results.rows).items()}
        parsed.append([replace(r, dataset=labels[own[r.dataset]]) for r in records(results, columns)])
    return parsed


CellKey = tuple[str, str, int, str]  # (dataset, classes, shots, target): a report cell of one configuration


def _cell(record: Record) -> CellKey:
    return record.dataset, record.classes, record.shots, record.target


def _where(cell: CellKey) -> str:
    dataset, classes, shots, target = cell
    return f"{dataset}, classes={classes}, {shots_label(shots)}" + (f", target {target}" if target else "")


def _labels(side: Sequence[Record], varied: dict[str, list[str]]) -> dict[Configuration, str]:
    """Each configuration of `side` labelled as a report row, with the tuned values its kept runs chose."""
    choices: dict[Configuration, list] = defaultdict(list)
    for r in side:
        choices[r.config] += [r.tuned] if r.tuned else []
    return {c: config_label(c, varied, choices[c]) for c in choices}


def _by_run(side: Sequence[Record], who: str) -> dict[tuple[CellKey, int], Record]:
    """`side`'s runs by (cell, seed), once each cell is checked to hold one configuration and each seed one run; else
    one line naming the configurations (`who`: `--a method=x`, or a source) and what to do."""
    configs: dict[CellKey, set[Configuration]] = defaultdict(set)
    for r in side:
        configs[_cell(r)].add(r.config)
    for cell, found in configs.items():
        if len(found) > 1:
            labels = _labels([r for r in side if r.config in found], varied_settings(found))
            raise OptionError(f"{who} matches {len(found)} configurations at {_where(cell)}: "
                              f"{'; '.join(sorted(labels.values()))}; narrow it to one with name=value (--a, --b)")
    runs: dict[tuple[CellKey, int], Record] = {}
    for r in side:
        other = runs.setdefault((_cell(r), r.seed), r)
        if other is not r:
            raise OptionError(f"{who} holds two runs of one configuration at {_where(_cell(r))}, seed {r.seed} "
                              f"(runs {other.key} and {r.key}, read from two sources); give each run once")
    return runs


@dataclass(frozen=True)
class SeedPair:
    """One seed's accuracy (%) of A and of B (None: not applicable, as novel classes to a linear probe, or
    diverged)."""

    seed: int
    a: float | None
    b: float | None

    @property
    def difference(self) -> float | None:
        return None if self.a is None or self.b is None else self.a - self.b


@dataclass(frozen=True)
class DatasetCell:
    """One dataset (a transfer run's target: source and target) at one part and shots: A's and B's runs paired by
    seed, and their means over the seeds where both have an accuracy."""

    dataset: str
    target: str  # as results.csv's: empty, `source` (a transfer run's own test set) or the target dataset
    seeds: tuple[SeedPair, ...]

    @property
    def label(self) -> str:
        return f"{self.dataset} → {self.target}" if self.target not in ("", "source") else self.dataset

    @property
    def paired(self) -> tuple[SeedPair, ...]:
        return tuple(s for s in self.seeds if s.difference is not None)

    @property
    def mean_a(self) -> float | None:
        return statistics.fmean(s.a for s in self.paired) if self.paired else None  # type: ignore[misc]

    @property
    def mean_b(self) -> float | None:
        return statistics.fmean(s.b for s in self.paired) if self.paired else None  # type: ignore[misc]

    @property
    def difference(self) -> float | None:
        """A's seed mean minus B's, in points (None: no seed where both have an accuracy)."""
        return None if self.mean_a is None or self.mean_b is None else self.mean_a - self.mean_b

    @property
    def shown(self) -> float | None:
        """The difference to 2 decimals, as printed: what wins, ties and the test read (-0.00 is 0)."""
        return None if self.difference is None else round(self.difference, 2) + 0.0

    @property
    def a_better(self) -> int:
        return sum(s.a > s.b for s in self.paired)  # type: ignore[operator]

    @property
    def b_better(self) -> int:
        return sum(s.a < s.b for s in self.paired)  # type: ignore[operator]


@dataclass(frozen=True)
class PartComparison:
    """A and B at one part (`PARTS`) and shots across datasets: each dataset's cell, the mean of their differences,
    wins/ties/losses of A (a tie: equal to 2 decimals) and the signed-rank test over the datasets (none below 2)."""

    part: str
    shots: int
    datasets: tuple[DatasetCell, ...]

    @property
    def compared(self) -> tuple[DatasetCell, ...]:
        return tuple(d for d in self.datasets if d.difference is not None)

    @property
    def mean_difference(self) -> float | None:
        return statistics.fmean(d.difference for d in self.compared) if self.compared else None  # type: ignore[misc]

    @property
    def wins_ties_losses(self) -> tuple[int, int, int]:
        shown = [d.shown for d in self.compared]
        return sum(s > 0 for s in shown), sum(s == 0 for s in shown), sum(s < 0 for s in shown)  # type: ignore

    @property
    def test(self) -> SignedRank | None:
        return signed_rank(d.shown for d in self.compared) if len(self.compared) > 1 else None  # type: ignore


@dataclass(frozen=True)
class GridComparison:
    """Configurations A and B across a grid: their labels (one per configuration a side holds, as report rows), each
    (part, shots) compared across datasets, and the runs of one side that the other has no run to pair with."""

    labels_a: tuple[str, ...]
    labels_b: tuple[str, ...]
    parts: tuple[PartComparison, ...]
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]


def _parts(record: Record) -> list[tuple[str, float | None]]:
    """A run's accuracies by part: few-shot `all`; base-to-novel `base`, `novel` and their `hm` (of this seed's two
    accuracies, as the per-seed tables); a transfer run's `source` or `target` row."""
    if record.target:
        return [("source" if record.target == "source" else "target", record.acc_all)]
    if record.classes == "base":
        base, novel = record.acc_base, record.acc_novel
        return [("base", base), ("novel", novel), ("hm", harmonic_mean(base, novel))]
    return [("all", record.acc_all)]


def _run_name(cell: CellKey, seed: int) -> str:
    """`caltech101 base 4 shots seed 1`, `imagenet all 16 shots seed 1 → dtd`: an unpaired run in one line."""
    dataset, classes, shots, target = cell
    return f"{dataset} {classes} {shots_label(shots)} seed {seed}" + (f" → {target}" if target else "")


def _same_runs(first: Results, second: Results) -> set[str]:
    """The run keys two sources read from the same place: every key when both are one results.csv, else the keys
    whose run directory is one folder in both (a grid folder and its `runs/`)."""
    if first.source.is_file() and first.source.resolve() == second.source.resolve():
        return {row["key"] for row in first.rows}
    return {key for key, folder in first.run_dirs.items()
            if key in second.run_dirs and second.run_dirs[key].resolve() == folder.resolve()}


def compare_configurations(sources: Sequence[Path], a: Selector | None = None, b: Selector | None = None
                           ) -> GridComparison:
    """Configuration A against B over the pooled runs of `sources` (what `report` reads: results.csv, grid folders,
    folders of `fit` runs), from their recorded accuracies: A and B picked by the selectors, or without them A every
    run of the first of two sources and B of the second."""
    loaded = [load_results(Path(source)) for source in sources]
    parsed = _pooled(loaded)
    if a is None and b is None:
        if len(sources) != 2:
            raise OptionError(f"without --a/--b, compare takes two sources (A's runs, then B's), not {len(sources)}: "
                              "pick A and B among the runs with --a NAME=VALUE and --b NAME=VALUE")
        sides = [(parsed[0], f"source {sources[0]}"), (parsed[1], f"source {sources[1]}")]
        same = sorted(_same_runs(*loaded) & {r.key for r in parsed[0]} & {r.key for r in parsed[1]})
        if same:
            raise OptionError(f"source {sources[0]} and source {sources[1]} hold the same {len(same)} runs ("
                              f"{', '.join(same[:3])}{', ...' if len(same) > 3 else ''}): each run would be "
                              "compared with itself. Give two grids (A's, then B's), or pick A and B within one "
                              "with --a NAME=VALUE and --b NAME=VALUE")
    elif a is None or b is None:
        raise OptionError("--a and --b go together: give both, each picking one configuration (NAME=VALUE,...)")
    else:
        pool = list({(r.key, _cell(r), r.seed, r.config): r for side in parsed for r in side}.values())
        sides = [(select(pool, a), f"{a.flag} {a.text}"), (select(pool, b), f"{b.flag} {b.text}")]
        shared = {id(r) for r in sides[0][0]} & {id(r) for r in sides[1][0]}
        if shared:
            raise OptionError(f"{sides[0][1]} and {sides[1][1]} both match {len(shared)} runs; make them pick "
                              "different configurations")
    (side_a, who_a), (side_b, who_b) = sides
    runs_a, runs_b = _by_run(side_a, who_a), _by_run(side_b, who_b)
    varied = varied_settings({r.config for r in (*side_a, *side_b)})
    grouped: dict[tuple[str, int], dict[tuple[str, str], list[SeedPair]]] = defaultdict(lambda: defaultdict(list))
    for key in sorted(runs_a.keys() & runs_b.keys(), key=lambda k: (k[0][0], k[0][3], k[1])):
        (dataset, _, shots, target), seed = key
        for (part, value_a), (_, value_b) in zip(_parts(runs_a[key]), _parts(runs_b[key]), strict=True):
            grouped[(part, shots)][(dataset, target)].append(SeedPair(seed, value_a, value_b))
    parts = tuple(PartComparison(part, shots, tuple(DatasetCell(d, t, tuple(pairs))
                                                    for (d, t), pairs in sorted(grouped[(part, shots)].items())))
                  for part, shots in sorted(grouped, key=lambda k: (PARTS.index(k[0]), k[1])))
    return GridComparison(tuple(sorted(_labels(side_a, varied).values())),
                          tuple(sorted(_labels(side_b, varied).values())), parts,
                          tuple(_run_name(*k) for k in sorted(runs_a.keys() - runs_b.keys(), key=str)),
                          tuple(_run_name(*k) for k in sorted(runs_b.keys() - runs_a.keys(), key=str)))


# One row per part, shots, dataset and seed: A's and B's accuracy (%) and A − B of the seed, then the dataset's seed
# means and their difference (over the seeds where both have an accuracy); empty where not applicable
CSV_COLUMNS = ("part", "shots", "dataset", "target", "seed", "acc_a", "acc_b", "difference", "mean_a", "mean_b",
               "mean_difference")


def write_cells(path: Path, compared: GridComparison) -> None:
    """Every paired seed of every part, shots and dataset as a CSV file (`CSV_COLUMNS`), written atomically."""
    def shown(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({"part": p.part, "shots": p.shots, "dataset": d.dataset, "target": d.target, "seed": s.seed,
                      "acc_a": shown(s.a), "acc_b": shown(s.b), "difference": shown(s.difference),
                      "mean_a": shown(d.mean_a), "mean_b": shown(d.mean_b), "mean_difference": shown(d.difference)}
                     for p in compared.parts for d in p.datasets for s in d.seeds)
    write_atomic(path, lambda p: p.write_text(text.getvalue()))


def is_run_directory(path: Path) -> bool:
    """Whether `path` is meant as one run (`compare RUN_A RUN_B`): a folder with a config.json or metrics.json, or
    a path that does not exist (the two-run form says so)."""
    return not path.exists() or (path.is_dir() and any((path / f).is_file() for f in ("config.json", "metrics.json")))
