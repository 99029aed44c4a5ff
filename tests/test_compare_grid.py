"""`lathadapter compare SOURCE ... --a ... --b ...`: the exact signed-rank p against every sign assignment enumerated
here (mid-ranks restated by counting) and against scipy's exact test; the pairing of two configurations' runs, the
seed means, wins/ties/losses and the test over datasets restated from results tables written by hand; n/a cells;
the refusals in one line; the CSV and the plot."""

from __future__ import annotations

import csv
import itertools
import statistics
from fractions import Fraction
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
from scipy.stats import wilcoxon
from typer.testing import CliRunner

import lathadapter
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments.compare_grid import Selector, compare_configurations, signed_rank

COLUMNS = ["key", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select", "target",
           "acc_all", "acc_base", "acc_novel", "opt.lambda_hier", "opt.lr"]


def brute_force_p(differences: list[float]) -> float:
    """The two-sided signed-rank p by definition: zeros dropped, each |d| ranked by counting (a tie: the mean of the
    ranks it spans), and the share of the 2ⁿ sign assignments whose W+ is at least as far from its null mean n(n+1)/4
    as the observed one."""
    nonzero = [Fraction(d) for d in differences if d != 0]
    sizes = [abs(d) for d in nonzero]
    ranks = [sum(s < x for s in sizes) + Fraction(sum(s == x for s in sizes) + 1, 2) for x in sizes]
    n = len(nonzero)
    centre = Fraction(n * (n + 1), 4)
    observed = abs(sum(r for r, d in zip(ranks, nonzero, strict=True) if d > 0) - centre)
    extreme = sum(abs(sum(r for r, s in zip(ranks, signs, strict=True) if s) - centre) >= observed
                  for signs in itertools.product((True, False), repeat=n))
    return float(Fraction(extreme, 2 ** n))


@pytest.mark.parametrize("differences", [
    [1.5], [-2.0, 3.0], [0.4, -0.1, 2.2, 1.7, 0.9],  # n ≤ 5: never below 0.05
    [1.1, 2.3, 0.7, 3.9, 2.8, 1.6],  # every sign alike: 2/64
    [0.5, -0.5, 1.0, 1.0, 1.0, -2.0, 3.0, 0.5],  # tied |d|: mid-ranks
    [0.0, 1.2, 0.0, -0.3, 2.5, 2.5, -2.5, 0.8, 0.0],  # zeros dropped, ties
    [0.0, 0.0],  # nothing to rank
    [0.31, -1.2, 2.05, 0.44, 1.2, 1.2, -0.31, 3.3, 0.9, 1.75, -0.44, 2.6],  # n = 12 with ties
    [0.1 * k for k in range(1, 13)],  # n = 12, all positive
])
def test_the_signed_rank_p_is_the_share_of_sign_assignments_as_extreme(differences: list[float]) -> None:
    assert signed_rank(differences).p == pytest.approx(brute_force_p(differences), rel=1e-12, abs=0)


@pytest.mark.parametrize("n", [1, 4, 6, 11, 25, 60, 300])
def test_the_signed_rank_test_of_untied_differences_is_scipys_exact_test(n: int) -> None:
    differences = np.random.default_rng(n).normal(0.2, 1.0, n)
    expected = wilcoxon(differences, method="exact")
    result = signed_rank(differences.tolist())
    assert result.p == pytest.approx(expected.pvalue, rel=1e-9)
    assert min(result.w_plus, result.w_minus) == expected.statistic
    assert result.w_plus + result.w_minus == n * (n + 1) / 2 and result.n == n


def test_the_smallest_p_is_two_of_the_sign_assignments() -> None:
    for n in range(1, 9):
        alike = [float(k) for k in range(1, n + 1)]  # every difference positive: the most extreme assignment
        assert signed_rank(alike).smallest_p == pytest.approx(min(1.0, brute_force_p(alike)))
    assert signed_rank([1.0] * 5).smallest_p == pytest.approx(brute_force_p([1.0] * 5)) == 2 / 32


def row(dataset: str, seed: int, acc: float | str, lam: str = "0.1", method: str = "lathadapter", shots: int = 4,
        **values: Any) -> dict[str, Any]:
    """A few-shot results row: LatHAdapter at lambda_hier `lam` unless told otherwise (a linear probe has no
    lambda_hier); its key names it, as a run's key would."""
    options = {"opt.lambda_hier": lam, "opt.lr": "0.001"} if method == "lathadapter" else {"opt.lr": "0.001"}
    fields = {"dataset": dataset, "fingerprint": f"fp-{dataset}", "method": method, "shots": shots, "seed": seed,
              "classes": "all", "text": "coop", "select": "last", "target": "", "acc_all": acc, **options, **values}
    fields["key"] = "-".join(str(fields[c]) for c in ("dataset", "fingerprint", "method", "shots", "seed", "classes",
                                                       "target", "opt.lambda_hier" if method == "lathadapter"
                                                       else "method"))
    return fields


# Accuracies of A (lambda_hier=0) and B (0.1) by dataset, one per seed: two datasets with tied |mean difference|
# (+1 and −1), one tie (equal seed means), one where B is better on every seed
GRID = {"caltech101": ([70.0, 72.0, 74.0], [69.0, 71.0, 73.0]), "dtd": ([50.0, 52.0, 51.0], [51.0, 53.0, 52.0]),
        "eurosat": ([80.0, 82.0, 84.0], [82.0, 80.0, 84.0]), "pets": ([90.5, 91.25, 89.0], [88.0, 88.5, 87.75]),
        "food101": ([60.0, 61.0, 62.0], [63.5, 64.0, 63.0]), "flowers": ([95.0, 94.0, 96.5], [92.0, 93.0, 91.5]),
        "cars": ([66.0, 67.5, 68.0], [64.0, 66.0, 65.5])}


def grid_rows(grid: dict[str, tuple[list[float], list[float]]] = GRID) -> list[dict[str, Any]]:
    return [row(dataset, seed, value, lam)
            for dataset, sides in grid.items() for lam, values in zip(("0.0", "0.1"), sides, strict=True)
            for seed, value in enumerate(values, 1)]


def transfer_rows(accuracy: dict[str, tuple[float, float]]) -> list[dict[str, Any]]:
    """ImageNet's 16-shot seed-1 transfer rows: each target's (or the source's) accuracy at lambda_hier 0 and 0.1."""
    return [row("imagenet", 1, value, lam, shots=16, target=target)
            for target, sides in accuracy.items() for lam, value in zip(("0.0", "0.1"), sides, strict=True)]


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    return helpers.write_rows(path, rows, COLUMNS)


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, ["compare", *map(str, args)])


def one_error_line(result: Any, code: int) -> str:
    """The single `error:` line of a refused command (no traceback) with exit code `code`."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_each_dataset_is_the_seed_means_and_the_test_runs_over_datasets(tmp_path: Path) -> None:
    table = write(tmp_path / "results.csv", grid_rows())
    compared = compare_configurations([table], Selector.parse("--a", "lambda_hier=0"),
                                      Selector.parse("--b", "lambda_hier=0.1"))
    assert compared.labels_a == ("lathadapter lambda_hier=0.0",) and compared.labels_b == (
        "lathadapter lambda_hier=0.1",)
    (part,) = compared.parts
    assert (part.part, part.shots) == ("all", 4)
    expected = {d: statistics.fmean(a) - statistics.fmean(b) for d, (a, b) in GRID.items()}
    assert {d.dataset: d.difference for d in part.datasets} == pytest.approx(expected)
    assert {d.dataset: (d.a_better, d.b_better) for d in part.datasets} == {
        d: (sum(x > y for x, y in zip(a, b, strict=True)), sum(x < y for x, y in zip(a, b, strict=True)))
        for d, (a, b) in GRID.items()}
    shown = [round(v, 2) for v in expected.values()]
    assert part.wins_ties_losses == (sum(v > 0 for v in shown), sum(v == 0 for v in shown),
                                     sum(v < 0 for v in shown)) == (4, 1, 2)
    assert part.mean_difference == pytest.approx(statistics.fmean(expected.values()))
    assert part.test is not None and part.test.n == 6
    assert part.test.p == pytest.approx(brute_force_p(shown), rel=1e-12)

    result = invoke(table, "--a", "lambda_hier=0", "--b", "lambda_hier=0.1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:3] == ["A: lathadapter lambda_hier=0.0 · --a lambda_hier=0",
                         "B: lathadapter lambda_hier=0.1 · --b lambda_hier=0.1", "all, 4 shots:"]
    assert "  dtd: A 51.00, B 52.00, A − B -1.00; seeds A better 0, B better 3 of 3" in lines
    assert "  eurosat: A 82.00, B 82.00, A − B +0.00; seeds A better 1, B better 1 of 3" in lines
    assert f"wins/ties/losses of A 4/1/2; exact Wilcoxon signed-rank p = {brute_force_p(shown):.3g} (n = 6" in \
        result.output


def test_runs_one_side_lacks_are_counted_and_the_rest_paired(tmp_path: Path) -> None:
    rows = [r for r in grid_rows() if not (r["dataset"] == "dtd" and r["seed"] == 3 and r["opt.lambda_hier"] == "0.1")]
    rows.append(row("svhn", 1, 40.0, "0.0"))  # a dataset B never ran
    result = invoke(write(tmp_path / "results.csv", rows), "--a", "lambda_hier=0", "--b", "lambda_hier=0.1")
    assert result.exit_code == 0, result.output
    assert "unpaired, left out: 2 runs of A alone (dtd all 4 shots seed 3, svhn all 4 shots seed 1)" in result.output
    a, b = GRID["dtd"]
    assert (f"  dtd: A {statistics.fmean(a[:2]):.2f}, B {statistics.fmean(b[:2]):.2f}, A − B -1.00; seeds A better 0, "
            "B better 2 of 2") in result.output
    assert "svhn:" not in result.output


def test_a_side_of_two_configurations_at_one_cell_is_refused_naming_both(tmp_path: Path) -> None:
    table = write(tmp_path / "results.csv", grid_rows() + [row(d, 1, 50.0, method="linear-probe") for d in GRID])
    line = one_error_line(invoke(table, "--a", "method=lathadapter", "--b", "method=linear-probe"), 2)
    assert "--a method=lathadapter matches 2 configurations at caltech101, classes=all, 4 shots" in line
    assert "lathadapter lambda_hier=0.0; lathadapter lambda_hier=0.1" in line and "narrow" in line


def test_a_selector_that_matches_nothing_lists_what_the_table_has(tmp_path: Path) -> None:
    table = write(tmp_path / "results.csv", grid_rows())
    line = one_error_line(invoke(table, "--a", "lambda_hier=5", "--b", "lambda_hier=0.1"), 2)
    assert line == "error: --a lambda_hier=5: lambda_hier=5 matches no run; lambda_hier has the values 0.0, 0.1"
    line = one_error_line(invoke(table, "--a", "method=lathadapter,lambda_hier=2", "--b", "lambda_hier=0.1"), 2)
    assert line.endswith("lambda_hier has the values 0.0, 0.1 among the runs with method=lathadapter")
    line = one_error_line(invoke(table, "--a", "beta=1", "--b", "lambda_hier=0.1"), 2)
    assert "no setting or option 'beta'" in line and "method, text, select" in line and "lambda_hier, lr" in line
    line = one_error_line(invoke(table, "--a", "clip-adapter.lambda_hier=0", "--b", "lambda_hier=0.1"), 2)
    assert "no setting or option 'clip-adapter.lambda_hier'" in line
    line = one_error_line(invoke(table, "--a", "tune.lr=0.001", "--b", "lambda_hier=0.1"), 2)
    assert "no setting or option 'tune.lr'" in line
    scoped = compare_configurations([table], Selector.parse("--a", "lathadapter.lambda_hier=0.00"),
                                    Selector.parse("--b", "method=lathadapter,lambda_hier=1e-1"))
    assert (scoped.labels_a, scoped.labels_b) == (("lathadapter lambda_hier=0.0",), ("lathadapter lambda_hier=0.1",))
    line = one_error_line(invoke(table, "--a", "method", "--b", "lambda_hier=0.1"), 2)
    assert "--a 'method': expected name=value" in line


def test_novel_classes_a_method_cannot_score_are_na_never_zero(tmp_path: Path) -> None:
    rows = [row(d, s, "", lam="0.0", classes="base", acc_base=80.0 + s + i, acc_novel=70.0 + s)
            for i, d in enumerate(GRID) for s in (1, 2)]
    rows += [row(d, s, "", method="linear-probe", classes="base", acc_base=79.0 + s, acc_novel="")
             for d in GRID for s in (1, 2)]
    table = write(tmp_path / "results.csv", rows)
    out = tmp_path / "cells.csv"
    result = invoke(table, "--a", "method=lathadapter", "--b", "method=linear-probe", "--out", out)
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.endswith(":")] == [
        "base, 4 shots:", "novel, 4 shots:", "hm, 4 shots:"]
    assert "  caltech101: n/a (A 71.00/72.00, B n/a)" in result.output
    assert result.output.count("no dataset where both have an accuracy: nothing to test") == 2
    base = [i + 1 for i in range(len(GRID))]  # A − B of each dataset's base accuracy, every seed alike
    assert f"exact Wilcoxon signed-rank p {'=':s} {brute_force_p(base):.3g} (n = 7" in result.output
    with out.open(newline="") as f:
        written = list(csv.DictReader(f))
    novel = [w for w in written if w["part"] in ("novel", "hm")]
    assert len(novel) == 2 * 2 * len(GRID) and all(w["acc_b"] == w["difference"] == w["mean_difference"] == ""
                                                   for w in novel)


def test_the_csv_holds_each_seed_restated_from_the_table(tmp_path: Path) -> None:
    out = tmp_path / "cells.csv"
    result = invoke(write(tmp_path / "results.csv", grid_rows()), "--a", "lambda_hier=0", "--b", "lambda_hier=0.1",
                    "--out", out)
    assert result.exit_code == 0, result.output
    with out.open(newline="") as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == ["part", "shots", "dataset", "target", "seed", "acc_a", "acc_b", "difference",
                                "mean_a", "mean_b", "mean_difference"]
    expected = {(d, seed): (a[seed - 1], b[seed - 1], statistics.fmean(a), statistics.fmean(b))
                for d, (a, b) in GRID.items() for seed in (1, 2, 3)}
    assert len(written) == len(expected)
    for w in written:
        a, b, mean_a, mean_b = expected[(w["dataset"], int(w["seed"]))]
        assert (w["part"], w["shots"], w["target"]) == ("all", "4", "")
        numbers = [float(w[c]) for c in ("acc_a", "acc_b", "difference", "mean_a", "mean_b", "mean_difference")]
        assert numbers == pytest.approx([a, b, a - b, mean_a, mean_b, mean_a - mean_b], abs=1e-4)


def test_two_sources_compare_every_run_of_the_first_with_the_second(tmp_path: Path) -> None:
    first = write(tmp_path / "a" / "results.csv", [r for r in grid_rows() if r["opt.lambda_hier"] == "0.0"])
    second = [r for r in grid_rows() if r["opt.lambda_hier"] == "0.1"]
    second = [r | {"fingerprint": "other"} if r["dataset"] == "cars" else r for r in second]  # another cache
    result = invoke(first, write(tmp_path / "b" / "results.csv", second))
    assert result.exit_code == 0, result.output
    assert "unpaired, left out: 3 runs of A alone (cars (fp fp-cars) all 4 shots seed 1, " in result.output
    assert "3 runs of B alone (cars (fp other) all 4 shots seed 1, " in result.output
    assert "over 6 datasets:" in result.output and "  cars" not in result.output


def test_a_table_given_twice_counts_each_run_once(tmp_path: Path) -> None:
    table = write(tmp_path / "results.csv", grid_rows())
    once, twice = (invoke(*tables, "--a", "lambda_hier=0", "--b", "lambda_hier=0.1")
                   for tables in ([table], [table, tmp_path]))
    assert once.exit_code == twice.exit_code == 0 and once.output == twice.output


def test_transfer_targets_are_the_datasets_of_the_target_part(tmp_path: Path) -> None:
    accuracy = {"source": (70.0, 69.0), "dtd": (45.0, 44.0), "pets": (88.0, 88.5)}
    result = invoke(write(tmp_path / "results.csv", transfer_rows(accuracy)), "--a", "lambda_hier=0", "--b",
                    "lambda_hier=0.1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("target, 16 shots:")
    assert lines[start + 1: start + 3] == [
        "  imagenet → dtd: A 45.00, B 44.00, A − B +1.00; seeds A better 1, B better 0 of 1",
        "  imagenet → pets: A 88.00, B 88.50, A − B -0.50; seeds A better 0, B better 1 of 1"]
    assert lines[lines.index("source, 16 shots:") + 2].endswith(
        "one dataset: no test across datasets (compare RUN_A RUN_B tests a pair of runs image by image)")
    assert "with 2 nonzero differences the smallest possible p is 0.5: it can never reach 0.05" in result.output


def test_the_plot_is_written(tmp_path: Path) -> None:
    plot = tmp_path / "figures" / "diff.png"
    plot.parent.mkdir()
    result = invoke(write(tmp_path / "results.csv", grid_rows()), "--a", "lambda_hier=0", "--b", "lambda_hier=0.1",
                    "--plot", plot)
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_refusals_are_one_line_with_the_exit_code_of_their_kind(tmp_path: Path) -> None:
    table = write(tmp_path / "results.csv", grid_rows())
    (tmp_path / "run_a").mkdir()
    (tmp_path / "run_b").mkdir()
    for directory in ("run_a", "run_b"):
        (tmp_path / directory / "config.json").write_text("{}")
    (tmp_path / "bad.csv").write_text("key,dataset\n1,2\n")
    for args, fragment, code in (
            ([table, "--a", "lambda_hier=0"], "--a and --b go together", 2),
            ([table], "without --a/--b, compare takes two sources (A's runs, then B's), not 1", 2),
            ([table, "--a", "lambda_hier=0", "--b", "lambda_hier=0.0"], "both match 21 runs", 2),
            ([table, "--a", "lambda_hier=0", "--b", "lambda_hier=0.1", "--device", "cpu"], "--device: only for two "
             "run directories", 2),
            ([tmp_path / "run_a", tmp_path / "run_b", "--plot", tmp_path / "p.png"], "--plot draws a comparison", 2),
            ([table, "--a", "lambda_hier=0", "--b", "lambda_hier=0.1", "--plot", tmp_path / "diff.pdf"],
             f"--plot {tmp_path / 'diff.pdf'}: expected a .png file name", 2),
            ([table, "--a", "lambda_hier=0", "--b", "lambda_hier=0.1", "--plot", tmp_path],
             f"--plot {tmp_path}: cannot write there: it is a folder", 2),
            ([table, tmp_path / "nowhere.csv", "--a", "lambda_hier=0", "--b", "lambda_hier=0.1"], "does not exist",
             1),
            ([tmp_path / "bad.csv", table], "lacks the columns", 1),
            ([table, "--a", "lambda_hier=0", "--a", "lambda_hier=0.1", "--b", "lr=0.001"], "--a given twice", 2)):
        assert fragment in one_error_line(invoke(*args), code)


def test_two_folders_of_fit_runs_compare_across_their_datasets(tmp_path: Path) -> None:
    """Folders of `fit` runs are sources (as `report` reads them): zero-shot against CLIP-Adapter on two caches,
    where two run directories would be compared image by image."""
    caches = [write_synthetic_cache(tmp_path / f"{name}.h5", num_classes=6, dim=16, views=2, shots=(2,), seeds=(1,),
                                    seed=i) for i, name in enumerate(("one", "two"))]
    folders = {method: tmp_path / method for method in ("zeroshot", "clip-adapter")}
    metrics = {(method, cache.name): lathadapter.fit(cache, method, 2, 1, out=folder, device="cpu",
                                                     **({"epochs": 2, "min_steps": 0} if method != "zeroshot" else {}))
               for method, folder in folders.items() for cache in caches}
    result = invoke(folders["zeroshot"], folders["clip-adapter"], "--out", tmp_path / "cells.csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:2] == [f"A: zeroshot · {folders['zeroshot']}",
                                              f"B: clip-adapter · {folders['clip-adapter']}"]
    with (tmp_path / "cells.csv").open(newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 2
    expected = sorted(metrics[("zeroshot", c.name)]["accuracy"]["all"] - metrics[("clip-adapter", c.name)]
                      ["accuracy"]["all"] for c in caches)
    assert sorted(float(w["difference"]) for w in written) == pytest.approx(expected, abs=1e-4)


def test_an_output_that_is_another_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """`--out` and `--plot` given a grid's results.csv (or a run's metrics.json) by mistake replaced it; such a file
    is refused and its bytes kept, while an empty file, or one the option wrote before, is written again."""
    table = write(tmp_path / "results.csv", grid_rows())
    before = table.read_bytes()
    selectors = ("--a", "lambda_hier=0", "--b", "lambda_hier=0.1")
    for flag in ("--out", "--plot"):
        line = one_error_line(invoke(table, *selectors, flag, table), 2)
        assert f"{flag} {table}: the file exists and is not" in line
        assert table.read_bytes() == before
    out, plot = tmp_path / "cells.csv", tmp_path / "diff.png"
    out.touch()
    for _ in range(2):  # empty, then its own
        assert invoke(table, *selectors, "--out", out, "--plot", plot).exit_code == 0
    assert out.read_text().startswith("part,shots,dataset,") and plot.read_bytes()[:4] == b"\x89PNG"


def test_the_hm_part_is_each_seeds_harmonic_mean_of_base_and_novel(tmp_path: Path) -> None:
    """Base-to-novel: `hm` pairs each seed's 2BN / (B + N) of A with B's, restated here."""
    accuracy = {("caltech101", 1): ((80.0, 60.0), (78.0, 66.0)), ("caltech101", 2): ((82.0, 58.0), (79.0, 64.0)),
                ("dtd", 1): ((55.0, 0.0), (50.0, 40.0)), ("dtd", 2): ((0.0, 0.0), (52.0, 41.0))}
    rows = [row(d, s, "", lam=lam, classes="base", acc_base=base, acc_novel=novel)
            for (d, s), sides in accuracy.items() for lam, (base, novel) in zip(("0.0", "0.1"), sides, strict=True)]
    compared = compare_configurations([write(tmp_path / "results.csv", rows)], Selector.parse("--a", "lambda_hier=0"),
                                      Selector.parse("--b", "lambda_hier=0.1"))
    (hm,) = [p for p in compared.parts if p.part == "hm"]

    def harmonic(base: float, novel: float) -> float:
        return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)

    found = {(d.dataset, s.seed, side): value for d in hm.datasets for s in d.seeds
             for side, value in (("a", s.a), ("b", s.b))}
    assert found == pytest.approx({(*key, side): harmonic(*sides[i]) for key, sides in accuracy.items()
                                   for i, side in enumerate("ab")})


@pytest.mark.parametrize(("on", "off"), [("true", "false"), ("1", "0"), ("on", "off"), ("Yes", "no")])
def test_a_boolean_option_is_selected_by_any_spelling_set_takes(tmp_path: Path, on: str, off: str) -> None:
    """results.csv writes a boolean option as Python's True/False; a selector's value is read as `--set` reads it
    (true/false, yes/no, on/off, 1/0), so `attr_proto=0` picks the runs `--set attr_proto=0` trained."""
    rows = [row(d, s, 70.0 + s + flag, lam="0.1") | {"opt.attr_proto": str(flag == 1)}
            for d in ("caltech101", "dtd") for s in (1, 2) for flag in (1, 0)]
    for r in rows:
        r["key"] += r["opt.attr_proto"]
    table = helpers.write_rows(tmp_path / "results.csv", rows, [*COLUMNS, "opt.attr_proto"])
    compared = compare_configurations([table], Selector.parse("--a", f"attr_proto={on}"),
                                      Selector.parse("--b", f"attr_proto={off}"))
    assert (compared.labels_a, compared.labels_b) == (("lathadapter attr_proto=True",),
                                                      ("lathadapter attr_proto=False",))
    assert [d.difference for p in compared.parts for d in p.datasets] == [1.0, 1.0]
    line = one_error_line(invoke(table, "--a", "attr_proto=2", "--b", f"attr_proto={off}"), 2)
    assert line.endswith("attr_proto=2 matches no run; attr_proto has the values False, True")


def test_tables_of_other_columns_read_one_configuration_and_each_run_once(tmp_path: Path) -> None:
    """An older table (no `train_views` column: its runs trained on the augmented views) pooled with a newer one that
    also has another method's option column: LatHAdapter's runs in both are one configuration per lambda_hier, and the
    runs both tables hold (caltech101, eurosat) count once; each dataset's difference is GRID's, restated."""
    rows = grid_rows()
    old = write(tmp_path / "old" / "results.csv", [r for r in rows if r["dataset"] in ("caltech101", "dtd", "eurosat")])
    new = helpers.write_rows(tmp_path / "new" / "results.csv",
                             [r | {"train_views": "augmented"} for r in rows if r["dataset"] != "dtd"],
                             [*COLUMNS, "train_views", "opt.clip-adapter.alpha"])
    compared = compare_configurations([old, new], Selector.parse("--a", "lambda_hier=0"),
                                      Selector.parse("--b", "lambda_hier=0.1"))
    assert (compared.labels_a, compared.labels_b) == (("lathadapter lambda_hier=0.0",),
                                                      ("lathadapter lambda_hier=0.1",))
    (part,) = compared.parts
    assert {d.dataset: [s.seed for s in d.seeds] for d in part.datasets} == {d: [1, 2, 3] for d in GRID}
    assert {d.dataset: d.difference for d in part.datasets} == pytest.approx(
        {d: statistics.fmean(a) - statistics.fmean(b) for d, (a, b) in GRID.items()})
    result = invoke(old, new, "--a", "method=lathadapter,lambda_hier=0", "--b", "lambda_hier=0.1")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("A: lathadapter lambda_hier=0.0 · --a")


@pytest.mark.parametrize("spelled", ["subset", "fewshot"])
def test_a_tuned_table_from_before_tune_score_is_the_configuration_tuned_by_val(tmp_path: Path, spelled: str) -> None:
    """A tuned table written before `tune.score` and `tune.set` were columns chose by val on the few-shot val set:
    pooled with a newer tuned table, its kept runs are the same configuration as the newer ones', whether that
    table names the few-shot val subset `subset` or `fewshot` (its name before stop 27)."""
    def tuned(dataset: str, seed: int, acc: float, lr: str, kept: bool, **extra: str) -> dict[str, Any]:
        return row(dataset, seed, acc, **{"opt.lr": lr, "tune.group": f"{dataset}-{seed}", "tune.names": "lr",
                                          "tune.selected": str(kept), **extra}) | {"key": f"{dataset}-{seed}-{lr}"}

    tune = ["tune.group", "tune.names", "tune.selected"]
    old = helpers.write_rows(tmp_path / "old.csv", [tuned(d, s, 70.0 + s, lr, lr == "0.01") for d in ("dtd", "pets")
                                                    for s in (1, 2) for lr in ("0.01", "0.1")], [*COLUMNS, *tune])
    new = helpers.write_rows(tmp_path / "new.csv",
                             [tuned(d, s, 60.0 + s, lr, lr == "0.1", **{"tune.score": "val", "tune.set": spelled})
                              for d in ("eurosat", "cars") for s in (1, 2) for lr in ("0.01", "0.1")],
                             [*COLUMNS, *tune, "tune.score", "tune.set"])
    untuned = write(tmp_path / "untuned.csv", [row(d, s, 65.0, method="linear-probe")
                                               for d in ("dtd", "pets", "eurosat", "cars") for s in (1, 2)])
    compared = compare_configurations([old, new, untuned], Selector.parse("--a", "method=lathadapter"),
                                      Selector.parse("--b", "method=linear-probe"))
    assert compared.labels_a == ("lathadapter lr=0.01/0.1 (tuned)",)
    (part,) = compared.parts
    assert {d.dataset: d.difference for d in part.datasets} == pytest.approx(
        {"dtd": 71.5 - 65, "pets": 71.5 - 65, "eurosat": 61.5 - 65, "cars": 61.5 - 65})


def test_one_grid_given_as_both_sources_is_refused(tmp_path: Path) -> None:
    """Without --a/--b, a grid against itself (the folder twice, or the folder and its results.csv or runs/) paired
    each run with itself: every difference 0 and p = 1, as if A and B were equal. Refused in one line, exit 2; two
    grids holding runs of the same key are still compared (the same configuration, trained by another version)."""
    caches = [write_synthetic_cache(tmp_path / f"{name}.h5", num_classes=6, dim=16, views=2, shots=(1,), seeds=(1,),
                                    seed=i) for i, name in enumerate(("one", "two"))]
    for folder in ("first", "second"):
        for cache in caches:
            lathadapter.fit(cache, "zeroshot", 1, 1, out=tmp_path / folder / "runs", device="cpu")
    grid = tmp_path / "first"
    for second in (grid, grid / "runs", grid / "runs" / ".." / "runs"):
        line = one_error_line(invoke(grid, second), 2)
        assert f"source {grid} and source {second} hold the same 2 runs" in line and "--a NAME=VALUE" in line
    result = invoke(grid, tmp_path / "second")
    assert result.exit_code == 0, result.output
    assert "over 2 datasets: mean A − B +0.00" in result.output


def test_an_output_folder_or_one_file_for_both_outputs_is_refused_before_any_work(tmp_path: Path) -> None:
    """`--out .` (or `--out ''`, which reads as `.`) failed with an internal message after the comparison printed;
    `--out x.png --plot x.png` kept only the plot. Both refused first, in one line, exit 2, nothing written."""
    table = write(tmp_path / "results.csv", grid_rows())
    selectors = ("--a", "lambda_hier=0", "--b", "lambda_hier=0.1")
    for flag, value in (("--out", tmp_path), ("--out", ""), ("--plot", tmp_path / "figures.png")):
        (tmp_path / "figures.png").mkdir(exist_ok=True)
        line = one_error_line(invoke(table, *selectors, flag, value), 2)
        assert "it is a folder, where a file is written" in line and line.startswith(f"error: {flag} ")
    line = one_error_line(invoke(table, *selectors, "--out", tmp_path / "x.png", "--plot", tmp_path / "x.png"), 2)
    assert "are the same file" in line
    assert not (tmp_path / "x.png").exists()


def test_one_nonzero_difference_is_named_in_the_singular(tmp_path: Path) -> None:
    """Two targets, one tied: n = 1 after the zero is dropped, and two sign assignments make the smallest p 1."""
    accuracy = {"source": (70.0, 69.0), "dtd": (45.0, 45.0), "pets": (88.0, 88.5)}
    result = invoke(write(tmp_path / "results.csv", transfer_rows(accuracy)), "--a", "lambda_hier=0", "--b",
                    "lambda_hier=0.1")
    assert result.exit_code == 0, result.output
    assert "with 1 nonzero difference the smallest possible p is 1: it can never reach 0.05" in result.output


def test_tune_set_fewshot_selects_the_subset_runs_of_an_old_table_with_one_note(tmp_path: Path) -> None:
    """`--a tune.set=fewshot`, the few-shot val subset's name before stop 27, picks the runs a table written then
    records as `fewshot` (read as `subset`), with one note giving the new name."""
    def tuned(dataset: str, seed: int, acc: float, tune_set: str) -> dict[str, Any]:
        group = f"{dataset}-{seed}-{tune_set}"
        return row(dataset, seed, acc, **{"tune.group": group, "tune.names": "lr", "tune.selected": "True",
                                          "tune.score": "val", "tune.set": tune_set}) | {"key": group}

    table = helpers.write_rows(tmp_path / "old.csv", [tuned(d, s, base + s, tune_set) for d in ("dtd", "pets")
                                                      for s in (1, 2)
                                                      for tune_set, base in (("fewshot", 70.0), ("split", 60.0))],
                               [*COLUMNS, "tune.group", "tune.names", "tune.selected", "tune.score", "tune.set"])
    result = invoke(table, "--a", "tune.set=fewshot", "--b", "tune.set=split")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == ["note: --a tune.set fewshot is now called subset; the old name still works"]
    assert "over 2 datasets: mean A − B +10.00" in result.stdout
