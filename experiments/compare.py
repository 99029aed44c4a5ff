"""Two runs on the same test images compared image by image (`lathadapter compare`): the paired 2×2 table, the exact
McNemar test of whether their accuracies differ (Dietterich 1998), and the per-class accuracies side by side; over
seeds, each seed's pair of runs compared alone and the mean difference."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lathadapter.adapter.methods.base import NotApplicable
from lathadapter.adapter.options import OptionError, StateError
from lathadapter.experiments.run import write_atomic
from lathadapter.experiments.trained import TrainedRun, load, read_run

ALPHA = 0.05  # the level the verdict is stated at


def mcnemar_p(b: int, c: int) -> float:
    """The exact two-sided McNemar p of `b` images only A got right against `c` only B got right: under H0 the
    b + c discordant images split as Binomial(b + c, 1/2), so p = 2 P(X ≤ min(b, c)), capped at 1 (1 when b + c = 0).
    The tail is summed in exact integers (C(n, k) by its recurrence) and divided by 2ⁿ once, correctly rounded, so a
    large n neither overflows nor loses precision; a p below the smallest float rounds to 0."""
    n, tail, term = b + c, 1, 1
    for k in range(min(b, c)):
        term = term * (n - k) // (k + 1)
        tail += term
    return min(1.0, 2 * tail / (1 << n))


@dataclass(frozen=True)
class PairedTable:
    """The test images by which run classified them right: both, only A (McNemar's b), only B (c), neither."""

    both: int
    only_a: int
    only_b: int
    neither: int

    @property
    def images(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @property
    def accuracy_a(self) -> float | None:
        return 100.0 * (self.both + self.only_a) / self.images if self.images else None

    @property
    def accuracy_b(self) -> float | None:
        return 100.0 * (self.both + self.only_b) / self.images if self.images else None

    @property
    def difference(self) -> float | None:
        """A's accuracy minus B's, in points."""
        return 100.0 * (self.only_a - self.only_b) / self.images if self.images else None

    @property
    def p(self) -> float:
        return mcnemar_p(self.only_a, self.only_b)


@dataclass(frozen=True)
class ClassComparison:
    """One class's test images and how many each run classified right (accuracies in %; None: no image)."""

    label: int
    name: str
    count: int
    correct_a: int
    correct_b: int

    @property
    def accuracy_a(self) -> float | None:
        return 100.0 * self.correct_a / self.count if self.count else None

    @property
    def accuracy_b(self) -> float | None:
        return 100.0 * self.correct_b / self.count if self.count else None

    @property
    def difference(self) -> float | None:
        """A's accuracy minus B's, in points."""
        return 100.0 * (self.correct_a - self.correct_b) / self.count if self.count else None


@dataclass(frozen=True)
class Comparison:
    """Two runs on one set of test images: the paired table and each class's accuracies, in label order."""

    table: PairedTable
    classes: tuple[ClassComparison, ...]


def compare(right_a: torch.Tensor, right_b: torch.Tensor, labels: torch.Tensor, names: list[str]) -> Comparison:
    """The comparison of runs A and B from whether each got each test image right (`right_a`, `right_b`: bool [N],
    the same images in the same order) and the images' labels [N] over classes `names`."""
    right_a, right_b, labels = right_a.bool().cpu(), right_b.bool().cpu(), labels.cpu()
    table = PairedTable(*(int(x.sum()) for x in (right_a & right_b, right_a & ~right_b, ~right_a & right_b,
                                                 ~right_a & ~right_b)))
    size = len(names)
    count, a, b = (torch.bincount(labels[mask], minlength=size).tolist()
                   for mask in (torch.ones_like(right_a), right_a, right_b))
    return Comparison(table, tuple(ClassComparison(c, names[c], count[c], a[c], b[c]) for c in range(size)))


@dataclass(frozen=True)
class OverSeeds:
    """Pairs of runs compared seed by seed (seed s of A with seed s of B): each seed's comparison, and the mean of
    their differences (points). The seeds' p-values share the test images, so they are no independent evidence."""

    seeds: dict[int, Comparison]

    @property
    def mean_difference(self) -> float | None:
        differences = [c.table.difference for c in self.seeds.values() if c.table.difference is not None]
        return sum(differences) / len(differences) if differences else None


def check_same_test_images(folder_a: Path, record_a: dict[str, Any], folder_b: Path, record_b: dict[str, Any]
                           ) -> None:
    """Refuse two runs (`config.json` records) whose test images are not the same: other caches or class sets."""
    fingerprints = record_a.get("cache_fingerprint"), record_b.get("cache_fingerprint")
    if fingerprints[0] != fingerprints[1]:
        raise StateError(f"runs {folder_a} and {folder_b} were trained on different caches (fingerprints "
                         f"{fingerprints[0]} and {fingerprints[1]}): their test images differ")
    classes = record_a.get("classes"), record_b.get("classes")
    if classes[0] != classes[1]:
        raise StateError(f"runs {folder_a} (classes {classes[0]}) and {folder_b} (classes {classes[1]}) were scored "
                         "on different class sets: compare runs of one --classes")


def right(run: TrainedRun, part: str) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
    """Whether `run` classifies each test image of `part` right, the images' labels and the part's class names;
    None where the method cannot score that part's classes (novel classes of a linear probe)."""
    features, labels, view = run.test_set(part)
    try:
        predicted = run.predict(features, *run.against(part))
    except NotApplicable:
        return None
    return predicted.cpu() == labels.cpu(), labels.cpu(), view.class_names


def compare_runs(a: TrainedRun, b: TrainedRun) -> dict[str, Comparison | None]:
    """Loaded runs A and B compared on each part they were scored on (`all`, or `base` and `novel`; None: a part one
    of them cannot score)."""
    check_same_test_images(a.folder, a.record, b.folder, b.record)
    compared: dict[str, Comparison | None] = {}
    for part in a.parts:
        scored_a, scored_b = right(a, part), right(b, part)
        if scored_a is None or scored_b is None:
            compared[part] = None
            continue
        if not torch.equal(scored_a[1], scored_b[1]) or scored_a[2] != scored_b[2]:
            raise StateError(f"runs {a.folder} and {b.folder} have different {part} test labels or classes")
        compared[part] = compare(scored_a[0], scored_b[0], scored_a[1], scored_a[2])
    return compared


def load_pair(run_a: str | Path, run_b: str | Path, cache: str | Path | None = None, device: str | None = None
              ) -> tuple[TrainedRun, TrainedRun]:
    """Run directories A and B loaded (`load`; `cache` for both) once their records show the same test images."""
    (record_a, _), (record_b, _) = read_run(Path(run_a)), read_run(Path(run_b))
    check_same_test_images(Path(run_a), record_a, Path(run_b), record_b)
    return load(run_a, cache, device), load(run_b, cache, device)


def over_seeds(pairs: list[tuple[TrainedRun, TrainedRun]], part: str | None = None) -> OverSeeds:
    """Each pair (seed s of A, seed s of B) compared on `part` (default the runs' first), by seed."""
    seeds: dict[int, Comparison] = {}
    for a, b in pairs:
        if a.config.seed != b.config.seed or a.config.seed in seeds:
            raise OptionError(f"runs {a.folder} (seed {a.config.seed}) and {b.folder} (seed {b.config.seed}): pair "
                              "each seed of A with the same seed of B, one pair per seed")
        compared = compare_runs(a, b).get(part or a.parts[0])
        if compared is None:
            raise OptionError(f"class set {part!r}: runs {a.folder} and {b.folder} cannot both score it")
        seeds[a.config.seed] = compared
    return OverSeeds(seeds)


def run_label(run: TrainedRun, other: TrainedRun) -> str:
    """`clip-adapter · 4-shot seed 1 · key 15bc3b638229 · lr=0.01`: the run's method, shots, seed and key, then the
    settings (text, select, train views; options, when both runs are of one method: another method's options of
    the same name need not mean the same) whose value differs from the other run's."""
    c = run.config
    same_method = c.method == other.config.method
    mine, theirs = settings(run.record, same_method), settings(other.record, same_method)
    differing = [f"{name}={value}" for name, value in mine.items() if name in theirs and theirs[name] != value]
    return " · ".join([c.method, f"{c.shots}-shot seed {c.seed}", f"key {run.record.get('key', '?')}", *differing])


def settings(record: dict[str, Any], options: bool = True) -> dict[str, Any]:
    """A run's settings as `config.json` records them: text, select, train views and, with `options`, each option
    (None: the recipe's value)."""
    options = {name: "recipe" if value is None else value
               for name, value in (record.get("options", {}) if options else {}).items()}
    return {name: record[name] for name in ("text", "select", "train_views") if name in record} | options


# `classes`: the class set (`all`, `base`, `novel`); accuracies and difference (A − B) in %, empty without an image
CSV_COLUMNS = ("classes", "label", "class", "count", "correct_a", "correct_b", "accuracy_a", "accuracy_b", "difference")


def write_comparison(path: Path, compared: dict[str, Comparison | None]) -> None:
    """Each compared part's classes (a part one run cannot score left out) as a CSV file (`CSV_COLUMNS`), written
    atomically."""
    def shown(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({"classes": part, "label": k.label, "class": k.name, "count": k.count, "correct_a": k.correct_a,
                      "correct_b": k.correct_b, "accuracy_a": shown(k.accuracy_a), "accuracy_b": shown(k.accuracy_b),
                      "difference": shown(k.difference)}
                     for part, comparison in compared.items() if comparison is not None for k in comparison.classes)
    write_atomic(path, lambda p: p.write_text(text.getvalue()))
