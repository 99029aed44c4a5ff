"""Behaviours that a fourth mutation campaign (stop 25) found untested, in the code stop 24 added (`compare --a/--b`,
temperature scaling, `check_replaceable`, a cache's open failures, a `folder:` tree's loops, a failed Ray build) and
the Triton compile check: each test here fails on a mutant that the rest of the suite let pass, and checks the code
against an independent oracle (scipy's exact test, every sign assignment enumerated, the NLL restated in numpy and
searched by brute force or by scipy, a documented rule restated, a hand-built input with a known answer)."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import warnings
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import helpers
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.optimize import minimize_scalar
from scipy.stats import wilcoxon
from typer.testing import CliRunner

from lathadapter.adapter.temperature import TemperatureScaled, fit_temperature, log_probabilities, temperature_scaled
from lathadapter.cache.datasets import load_dataset
from lathadapter.cli import app
from lathadapter.experiments import builds
from lathadapter.experiments.compare_grid import Selector, compare_configurations, signed_rank

# ------------------------------------------------------------------------------------------ compare --a/--b

COLUMNS = ["key", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select", "target",
           "acc_all", "acc_base", "acc_novel", "opt.lambda_hier", "opt.lr"]


def row(dataset: str, seed: int, lam: str, classes: str = "all", **accuracies: Any) -> dict[str, Any]:
    """A LatHAdapter results row at lambda_hier `lam`; its key names the run."""
    fields = {"dataset": dataset, "fingerprint": f"fp-{dataset}", "method": "lathadapter", "shots": 4, "seed": seed,
              "classes": classes, "text": "coop", "select": "last", "target": "", "acc_all": "", "acc_base": "",
              "acc_novel": "", "opt.lambda_hier": lam, "opt.lr": "0.001", **accuracies}
    fields["key"] = f"{dataset}-{seed}-{classes}-{lam}"
    return fields


def compared(path: Path, rows: list[dict[str, Any]]) -> Any:
    table = helpers.write_rows(path, rows, COLUMNS)
    return compare_configurations([table], Selector.parse("--a", "lambda_hier=0"),
                                  Selector.parse("--b", "lambda_hier=0.1"))


def enumerated_p(differences: list[float]) -> float:
    """Two-sided signed-rank p by definition: zeros dropped, |d| ranked by counting with ties at their mean rank,
    the share of the 2ⁿ sign assignments whose W+ lies as far from n(n+1)/4 as the observed one."""
    nonzero = [Fraction(d) for d in differences if d != 0]
    sizes = [abs(d) for d in nonzero]
    ranks = [sum(s < x for s in sizes) + Fraction(sum(s == x for s in sizes) + 1, 2) for x in sizes]
    centre = Fraction(len(nonzero) * (len(nonzero) + 1), 4)
    observed = abs(sum(r for r, d in zip(ranks, nonzero, strict=True) if d > 0) - centre)
    extreme = sum(abs(sum(r for r, s in zip(ranks, signs, strict=True) if s) - centre) >= observed
                  for signs in itertools.product((True, False), repeat=len(nonzero)))
    return float(Fraction(extreme, 2 ** len(nonzero)))


def test_w_plus_is_the_rank_sum_of_the_positive_differences() -> None:
    """W+ (A better) and W− are not interchangeable in the printed line: scipy's one-sided statistic is W+."""
    differences = [1.0, -2.0, 3.0, 4.0, -0.5, 6.0]
    result = signed_rank(differences)
    assert result.w_plus == wilcoxon(differences, alternative="greater", method="exact").statistic == 17
    assert result.w_minus == wilcoxon([-d for d in differences], alternative="greater", method="exact").statistic == 4


def test_wins_ties_and_the_test_read_each_difference_rounded_to_two_decimals(tmp_path: Path) -> None:
    """A dataset's difference counts as printed (2 decimals): +0.003 is a tie (dropped from the test), +0.04 a win,
    +1.004 and −0.996 tie in |d|. The rule restated: round, then count and enumerate."""
    sides = {"caltech101": (71.004, 70.0), "dtd": (50.004, 51.0), "eurosat": (80.003, 80.0), "pets": (90.04, 90.0),
             "food101": (62.5, 60.0), "flowers": (93.12, 90.0)}
    rows = [row(d, 1, lam, acc_all=value) for d, pair in sides.items() for lam, value in zip(("0.0", "0.1"), pair,
                                                                                             strict=True)]
    (part,) = compared(tmp_path / "results.csv", rows).parts
    shown = [round(a - b, 2) for a, b in sides.values()]
    assert sorted(shown) == [-1.0, 0.0, 0.04, 1.0, 2.5, 3.12]
    assert part.wins_ties_losses == (sum(s > 0 for s in shown), sum(s == 0 for s in shown),
                                     sum(s < 0 for s in shown)) == (4, 1, 1)
    assert part.test is not None and part.test.n == 5
    assert part.test.p == pytest.approx(enumerated_p(shown), rel=1e-12)
    assert part.test.p != pytest.approx(enumerated_p([a - b for a, b in sides.values()]), rel=1e-6)


def test_a_few_shot_and_a_base_to_novel_run_of_one_seed_are_paired_apart(tmp_path: Path) -> None:
    """One dataset, shots and seed with both an `all` run and a `base` run on each side: two cells, not one."""
    rows = []
    for seed in (1, 2):
        rows += [row("dtd", seed, "0.0", acc_all=60.0 + seed), row("dtd", seed, "0.1", acc_all=58.0),
                 row("dtd", seed, "0.0", "base", acc_base=80.0, acc_novel=70.0 + seed),
                 row("dtd", seed, "0.1", "base", acc_base=81.0, acc_novel=69.0)]
    result = compared(tmp_path / "results.csv", rows)
    found = {p.part: [(s.seed, s.a, s.b) for d in p.datasets for s in d.seeds] for p in result.parts}
    assert found == {"all": [(1, 61.0, 58.0), (2, 62.0, 58.0)], "base": [(1, 80.0, 81.0), (2, 80.0, 81.0)],
                     "novel": [(1, 71.0, 69.0), (2, 72.0, 69.0)],
                     "hm": [(s, pytest.approx(2 * 80 * (70 + s) / (150 + s)), pytest.approx(2 * 81 * 69 / 150))
                            for s in (1, 2)]}
    assert result.only_a == result.only_b == ()


def test_a_datasets_means_are_over_the_seeds_where_both_sides_have_an_accuracy(tmp_path: Path) -> None:
    """B diverged on seed 2 (no accuracy): A's seed 2 is left out of A's mean too, as the docstring says."""
    rows = [row("dtd", 1, "0.0", acc_all=60.0), row("dtd", 2, "0.0", acc_all=70.0),
            row("dtd", 1, "0.1", acc_all=55.0), row("dtd", 2, "0.1", acc_all="")]
    (part,) = compared(tmp_path / "results.csv", rows).parts
    (cell,) = part.datasets
    assert (cell.mean_a, cell.mean_b, cell.difference) == (60.0, 55.0, 5.0)


def test_an_out_file_that_shares_only_the_start_of_the_header_is_refused(tmp_path: Path) -> None:
    """`--out` replaces a comparison CSV only (its header `part,shots,dataset,...`): another CSV whose header starts
    with `part` is someone's file, refused in one line and kept."""
    rows = [row(d, s, lam, acc_all=60.0 + s + (lam == "0.0")) for d in ("dtd", "pets") for s in (1, 2)
            for lam in ("0.0", "0.1")]
    table = helpers.write_rows(tmp_path / "results.csv", rows, COLUMNS)
    other = tmp_path / "parts.csv"
    other.write_text("part,model,price\nbolt,M6,0.10\n")
    result = CliRunner().invoke(app, ["compare", str(table), "--a", "lambda_hier=0", "--b", "lambda_hier=0.1",
                                      "--out", str(other)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: --out {other}: the file exists and is not a comparison CSV")
    assert other.read_text() == "part,model,price\nbolt,M6,0.10\n"


# ------------------------------------------------------------------------------------------ temperature scaling

def np_nll(log_p: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of softmax(log_p / T), restated in float64 numpy."""
    z = log_p / temperature
    top = z.max(axis=1, keepdims=True)
    return float(np.mean(top[:, 0] + np.log(np.exp(z - top).sum(axis=1)) - z[np.arange(len(labels)), labels]))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))


def drawn(temperature: float, n: int = 2000, classes: int = 10, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * 3
    p = np.exp(log_softmax(logits / temperature))
    return logits, np.array([rng.choice(classes, p=q) for q in p])


def test_the_fitted_temperature_is_the_nll_minimum_to_a_millionth_of_log_t() -> None:
    """The search runs until the bracket is far below float64 resolution of log T: it agrees with scipy's bounded
    Brent search of the restated NLL over log T in [ln 1e-3, ln 1e3] to 1e-6."""
    logits, labels = drawn(2.5)
    log_p = log_softmax(logits)
    best = minimize_scalar(lambda x: np_nll(log_p, labels, math.exp(x)), bounds=(math.log(1e-3), math.log(1e3)),
                           method="bounded", options={"xatol": 1e-10})
    fitted = fit_temperature(torch.from_numpy(log_p), torch.from_numpy(labels))
    assert abs(math.log(fitted) - best.x) < 1e-6


@pytest.mark.parametrize(("right", "end"), [(True, 1e-3), (False, 1e3)])
def test_a_val_set_that_does_not_bound_t_ends_at_the_documented_range(right: bool, end: float) -> None:
    """T is searched in [1e-3, 1e3]: every val image right drives it to 1e-3, every one wrong (two classes) to 1e3,
    and `at_edge` says so at either end (the restated NLL falls monotonically towards that end)."""
    log_p = np.log(np.array([[0.7, 0.3], [0.2, 0.8], [0.9, 0.1], [0.4, 0.6]]))
    labels = log_p.argmax(axis=1) if right else log_p.argmin(axis=1)
    grid = np.exp(np.linspace(math.log(1e-3), math.log(1e3), 2001))
    steps = np.diff([np_nll(log_p, labels, t) for t in grid])
    assert all(steps >= 0) if right else all(steps <= 0)
    fitted = fit_temperature(torch.from_numpy(log_p), torch.from_numpy(labels))
    assert fitted == pytest.approx(end, rel=1e-3)
    assert TemperatureScaled(fitted, 4, None).at_edge  # type: ignore[arg-type]


def test_a_temperature_fitted_just_inside_the_range_is_not_at_its_edge() -> None:
    """Log probabilities of logits shrunk by 1.3e-3 put the NLL minimum near 1.3e-3 (within 15 %), inside the range:
    the brute-force minimum of the restated NLL, and no edge."""
    logits, labels = drawn(1.0)
    log_p = log_softmax(logits * 1.3e-3)
    grid = np.exp(np.linspace(math.log(1e-3), math.log(3e-3), 4001))
    best = int(np.argmin([np_nll(log_p, labels, t) for t in grid]))
    assert 0 < best < len(grid) - 1
    fitted = fit_temperature(torch.from_numpy(log_p), torch.from_numpy(labels))
    assert grid[best - 1] <= fitted <= grid[best + 1] and fitted < 1.5e-3
    assert not TemperatureScaled(fitted, len(labels), None).at_edge  # type: ignore[arg-type]


def test_a_label_of_probability_zero_is_floored_not_infinite() -> None:
    """A method that gives a val image's class probability exactly 0: its log is floored at 1e-300, so the NLL stays
    finite and the fit is the brute-force minimum of the floored NLL (restated; inside the range, near T = 11), not
    the range's end an infinite NLL everywhere would leave."""
    probabilities = np.array([[1.0, 0.0]] + [[0.9, 0.1]] * 1000 + [[0.1, 0.9]] * 250)
    labels = np.array([1] + [0] * 1250)
    method = SimpleNamespace(probabilities=lambda scores: scores)
    log_p = log_probabilities(method, torch.from_numpy(probabilities))  # type: ignore[arg-type]
    floored = np.log(np.maximum(probabilities, 1e-300))
    grid = np.exp(np.linspace(math.log(1e-3), math.log(1e3), 4001))
    best = int(np.argmin([np_nll(floored, labels, t) for t in grid]))
    assert 0 < best < len(grid) - 1
    fitted = fit_temperature(log_p, torch.from_numpy(labels))
    assert grid[best - 1] <= fitted <= grid[best + 1]


def test_no_test_image_gives_no_scaled_scores() -> None:
    """Documented: None without val or test images (a set with none cannot be binned)."""
    method = SimpleNamespace(name="softmax", probabilities=lambda scores: torch.softmax(scores, dim=-1))
    val, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5]]), torch.tensor([0, 1, 1])
    empty_scores, empty_labels = torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)
    assert temperature_scaled(method, val, labels, empty_scores, empty_labels) is None  # type: ignore[arg-type]
    assert temperature_scaled(method, empty_scores, empty_labels, val, labels) is None  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ folder: trees

def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)


def _tree(root: Path) -> None:
    for part in ("train", "test"):
        for cls in ("cat", "dog"):
            _image(root / part / cls / "top.png")


def test_a_link_to_a_folder_whose_name_starts_the_trees_is_followed(tmp_path: Path) -> None:
    """`pets` is no folder above `pets_tree` though its path starts that one's: a link to it is an ordinary linked
    folder, read as torchvision's ImageFolder reads it (the oracle), with no loop warning."""
    from torchvision.datasets import ImageFolder

    tree, beside = tmp_path / "pets_tree", tmp_path / "pets"
    _tree(tree)
    _image(beside / "extra.png")
    (tree / "train" / "cat" / "more").symlink_to(beside, target_is_directory=True)
    data = load_dataset(None, f"folder:{tree}")
    oracle = ImageFolder(str(tree / "train")).samples
    assert [(path, label) for path, label, _ in data.train] == [
        (Path(path).relative_to(tree).as_posix(), label) for path, label in oracle]
    assert "train/cat/more/extra.png" in [path for path, _, _ in data.train]
    assert not any("loop" in note for note in data.notes)


def test_a_loop_through_a_linked_folder_outside_the_tree_is_cut(tmp_path: Path) -> None:
    """cat/out links to a folder outside the tree, which links back to cat: the link back is a loop (cat is on the
    way down to it), not followed and named; the outside folder's image is read once."""
    tree, outside = tmp_path / "pets", tmp_path / "elsewhere"
    _tree(tree)
    _image(outside / "far.png")
    cat = tree / "train" / "cat"
    (cat / "out").symlink_to(outside, target_is_directory=True)
    (outside / "back").symlink_to(cat, target_is_directory=True)
    data = load_dataset(None, f"folder:{tree}")
    assert sorted(path for path, _, _ in data.train) == ["train/cat/out/far.png", "train/cat/top.png",
                                                         "train/dog/top.png"]
    assert f"warning: folder:{tree}: did not follow 1 link to a folder that holds it (a loop): " \
           "train/cat/out/back/" in data.notes


# ------------------------------------------------------------------------------------------ Ray builds

def test_a_failed_ray_build_returns_its_lines_warnings_and_error_whatever_it_raised(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Ray task's function itself (no cluster): a build that said a line, raised a warning and then failed with
    an OSError (not a ValueError) returns all three, for the command to print."""
    def failing(dataset: str, options: dict) -> tuple[str, str, str]:
        options["log"]("left out 1 file")
        warnings.warn("a broken image was skipped", UserWarning, stacklevel=1)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(builds, "_build_one", failing)
    path, status, messages, lines, error = builds._build_on_ray("dtd", {})
    assert (path, status, lines, error) == ("", "", ["left out 1 file"], "[Errno 28] No space left on device")
    assert [(type(m), str(m)) for m in messages] == [(UserWarning, "a broken image was skipped")]


# ------------------------------------------------------------------------------------------ Triton compile

def _compilable() -> bool:
    try:
        import triton
    except ImportError:
        return False
    return triton.__version__.startswith("3.8.") and os.environ.get("TRITON_INTERPRET") != "1"


compile_case = pytest.mark.skipif(not _compilable(), reason="needs triton 3.8 imported without TRITON_INTERPRET=1")

PTXAS_REPORT = ("ptxas info    : 0 bytes gmem\nptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
                "ptxas info    : Function properties for k\n    96 bytes stack frame, 40 bytes spill stores, "
                "24 bytes spill loads\nptxas info    : Used 255 registers, used 1 barriers, 392 bytes cmem[0]\n")


@compile_case
def test_ptxas_resources_read_registers_and_each_spill_from_its_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ptxas -v report of a kernel that spills (in ptxas 12.9's format): 255 registers, 40 bytes stored, 24
    loaded."""
    from lathadapter.kernels import triton_compile

    def ptxas(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(command, 0, "", PTXAS_REPORT)

    monkeypatch.setattr(triton_compile.subprocess, "run", ptxas)
    assert triton_compile.ptxas_resources("// ptx", 90) == (255, 40, 24)


@compile_case
def test_the_kernels_are_restored_when_the_block_raises() -> None:
    """`compiling_launches` stands in for the kernels inside the block only, also when the block fails."""
    import triton

    from lathadapter.kernels import triton_compile, triton_radial_loss

    names = [name for name in dir(triton_radial_loss) if name.endswith("_kernel")]
    before = {name: getattr(triton_radial_loss, name) for name in names}
    assert names and all(isinstance(kernel, triton.runtime.jit.JITFunction) for kernel in before.values())
    with pytest.raises(RuntimeError, match="stop"), triton_compile.compiling_launches("sm_90"):
        assert all(getattr(triton_radial_loss, name) is not before[name] for name in names)
        raise RuntimeError("stop")
    assert {name: getattr(triton_radial_loss, name) for name in names} == before
