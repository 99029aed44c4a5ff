"""`lathadapter compare`'s two forms as the command prints them: two runs on the same test images, image by image
(`compare.py`), or two configurations across datasets from the recorded accuracies (`compare_grid.py`), with their
CSV and plot. The command parses its options and prints what this module says."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from lathadapter.adapter.options import OptionError
from lathadapter.experiments import compare, compare_grid
from lathadapter.experiments.records import percent, plural, shots_label
from lathadapter.experiments.run import check_replaceable

SHOWN = 5  # two runs: the classes with the largest differences printed, either way

Echo = Callable[[str], None]


def p_value(p: float) -> str:
    return "< 1e-300" if p < 1e-300 else f"= {p:.3g}"


def compare_two_runs(run_a: Path, run_b: Path, cache: Path | None, device: str | None, out: Path | None,
                     echo: Echo, note: Echo) -> None:
    """`compare RUN_A RUN_B`: per part, both accuracies, b and c, the exact McNemar p and its verdict, and the classes
    that differ most; `out` the per-class CSV."""
    if out is not None:
        check_replaceable(out, "--out", ",".join(compare.CSV_COLUMNS[:4]).encode(),
                          f"a per-class comparison CSV (header {','.join(compare.CSV_COLUMNS)})")
    a, b = compare.load_pair(run_a, run_b, cache, device)
    echo(f"A: {compare.run_label(a, b)} · {run_a}")
    echo(f"B: {compare.run_label(b, a)} · {run_b}")
    compared = compare.compare_runs(a, b)
    for part, comparison in compared.items():
        if comparison is None:
            unable = [r.config.method for r in (a, b) if not r.method.scores_new_classes]
            echo(f"{part}: n/a ({' and '.join(dict.fromkeys(unable))} cannot score these classes)")
            continue
        t, p = comparison.table, comparison.table.p
        verdict = f"significant at {compare.ALPHA:g}" if p < compare.ALPHA else f"not significant at {compare.ALPHA:g}"
        echo(f"{part} ({plural(t.images, 'test image')}): A {percent(t.accuracy_a)}, B {percent(t.accuracy_b)}, "
             f"A − B {t.difference or 0:+.2f} points; only A right b = {t.only_a}, only B right c = {t.only_b}; exact "
             f"McNemar p {p_value(p)}: {verdict}")
        differing = sorted((k for k in comparison.classes if k.difference), key=lambda k: (-abs(k.difference), k.label))
        for side, picked in (("A better", [k for k in differing if k.difference > 0]),
                             ("B better", [k for k in differing if k.difference < 0])):
            echo(f"  {side}: " + (", ".join(f"{k.name} {k.difference:+.2f} ({k.correct_a}/{k.count} vs "
                                            f"{k.correct_b}/{k.count})" for k in picked[:SHOWN]) or "no class"))
    if out is not None:
        compare.write_comparison(out, compared)
        note(f"wrote {out}")


def compare_two_configurations(sources: list[Path], a: str | None, b: str | None, out: Path | None,
                               plot: Path | None, echo: Echo, note: Echo) -> None:
    """`compare SOURCE... --a ... --b ...`: per part and shots each dataset's seed means and the summary over
    datasets (`over_datasets`); `out` a row per part, shots, dataset and seed, `plot` A − B per dataset."""
    if out is not None:
        check_replaceable(out, "--out", ",".join(compare_grid.CSV_COLUMNS[:3]).encode(),
                          f"a comparison CSV (header {','.join(compare_grid.CSV_COLUMNS)})")
    if plot is not None:
        check_replaceable(plot, "--plot", b"\x89PNG", "a PNG image")
        if plot.suffix.lower() != ".png":  # the format is the suffix's, and only a PNG is ever replaced
            raise OptionError(f"--plot {plot}: expected a .png file name (the plot is a PNG image)")
        if out is not None and out.resolve() == plot.resolve():  # the plot would replace the CSV just written
            raise OptionError(f"--out {out} and --plot {plot} are the same file; give the CSV and the plot each its "
                              "own (--out cells.csv --plot diff.png)")
    selectors = [None if text is None else compare_grid.Selector.parse(flag, text, note)
                 for flag, text in (("--a", a), ("--b", b))]
    compared = compare_grid.compare_configurations(sources, *selectors)
    for side, labels, text, source in (("A", compared.labels_a, a, sources[0]),
                                       ("B", compared.labels_b, b, sources[-1])):
        echo(f"{side}: {'; '.join(labels) or 'no run'} · {f'--{side.lower()} {text}' if text else source}")
    if compared.only_a or compared.only_b:
        unpaired = [f"{plural(len(runs), 'run')} of {side} alone ({', '.join(runs[:3])}"
                    f"{', ...' if len(runs) > 3 else ''})"
                    for side, runs in (("A", compared.only_a), ("B", compared.only_b)) if runs]
        echo(f"unpaired, left out: {'; '.join(unpaired)}")
    if not compared.parts:
        echo("no dataset, shots and seed where both A and B have a run: nothing to compare")
    for part in compared.parts:
        echo(f"{part.part}, {shots_label(part.shots)}:")
        for d in part.datasets:
            if d.difference is None:
                echo(f"  {d.label}: n/a (A {_accuracies(s.a for s in d.seeds)}, B {_accuracies(s.b for s in d.seeds)})")
                continue
            echo(f"  {d.label}: A {d.mean_a:.2f}, B {d.mean_b:.2f}, A − B {d.shown:+.2f}; seeds A better "
                 f"{d.a_better}, B better {d.b_better} of {len(d.paired)}")
        echo(f"  {over_datasets(part, compare_grid.ALPHA)}")
    if out is not None:
        compare_grid.write_cells(out, compared)
        note(f"wrote {out}")
    if plot is not None:
        from lathadapter.experiments.plots import plot_comparison

        plot_comparison(compared, plot)
        note(f"wrote {plot}")


def _accuracies(values: Iterable[float | None]) -> str:
    """A dataset's seeds' accuracies where A − B has no value: `n/a`, or the values (a side with some seeds)."""
    known = [f"{v:.2f}" for v in values if v is not None]
    return "/".join(known) if known else "n/a"


def over_datasets(part: compare_grid.PartComparison, alpha: float) -> str:
    """The summary line of one part and shots across datasets: mean A − B, wins/ties/losses, the Wilcoxon test."""
    compared = part.compared
    if not compared:
        return "no dataset where both have an accuracy: nothing to test"
    wins, ties, losses = part.wins_ties_losses
    line = f"over {plural(len(compared), 'dataset')}: mean A − B {part.mean_difference:+.2f}; wins/ties/losses of A " \
           f"{wins}/{ties}/{losses}"
    test = part.test
    if test is None:
        return f"{line}; one dataset: no test across datasets (compare RUN_A RUN_B tests a pair of runs image by image)"
    if test.n == 0:
        return f"{line}; every difference is 0.00: the signed-rank test has nothing to rank (p = 1)"
    verdict = f"significant at {alpha:g}" if test.p < alpha else f"not significant at {alpha:g}"
    line += f"; exact Wilcoxon signed-rank p {p_value(test.p)} (n = {test.n}, W+ = {test.w_plus:g}, W− = " \
            f"{test.w_minus:g}): {verdict}"
    if test.smallest_p >= alpha:
        line += f" (with {plural(test.n, 'nonzero difference')} the smallest possible p is " \
                f"{test.smallest_p:.3g}: it can never reach {alpha:g})"
    return line
