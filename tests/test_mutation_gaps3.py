"""Behaviours that a third mutation campaign (stop 24) found untested: each test here fails on a mutant that the rest
of the suite let pass, and checks the code against an independent oracle (a formula restated in float64, a documented
rule restated, a hand-built input with a known answer).

The Triton cases need the interpreter (TRITON_INTERPRET=1 before triton is first imported), so on a machine without a
GPU `test_triton_cases_in_the_interpreter` reruns them in a child pytest process that has it."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_kernels_radial_loss import SCALARS, make_inputs, oracle

from lathadapter.cache.datasets import DatasetError, read_split_file, split_image_dir
from lathadapter.cache.store import FewShotData
from lathadapter.experiments.records import Configuration, Record, ResultsError, check_one_run_per_seed
from lathadapter.experiments.trained import ClassAccuracy, class_accuracies, ranked
from lathadapter.kernels.radial import radial_distance

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
RUNNABLE = INTERPRETER or torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETER else "cpu"
triton_case = pytest.mark.skipif(not RUNNABLE, reason="runs in the TRITON_INTERPRET=1 child process")

# ------------------------------------------------------------------------------------------------- radial geometry


def test_a_float32_cosine_one_ulp_above_one_is_the_distance_on_the_axis() -> None:
    """Unit vectors' float32 cosines can round past 1: the distance there is that of cos = 1, points on one ray,
    2 |artanh ρ_a − artanh ρ_b| / √c (restated in float64), not the NaN of a negative δ."""
    rho_a, rho_b, c = torch.tensor([0.5, 0.3]), torch.tensor([0.5, 0.7]), 1.7
    cosine = torch.ones(2, 2).nextafter(torch.tensor(2.0))
    assert bool((cosine > 1).all())
    d = radial_distance(rho_a[:, None], rho_b[None, :], cosine, torch.tensor(c))
    expected = [[2 * abs(math.atanh(a) - math.atanh(b)) / math.sqrt(c) for b in (0.5, 0.7)] for a in (0.5, 0.3)]
    torch.testing.assert_close(d.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_the_radius_gradients_at_a_point_on_itself_are_zero_not_nan() -> None:
    """d(p, q) ≥ 0 has its minimum 0 where q = p (equal radii, cosine 1): 0 is a subgradient there, and the radius
    gradients are exactly 0 (the ∂d/∂δ root is clamped at eps; without it they are 0 · ∞)."""
    for shape in ((), (1, 1)):
        rho = torch.full(shape, 0.4, dtype=torch.float64, requires_grad=True)
        other = torch.full(shape, 0.4, dtype=torch.float64, requires_grad=True)
        d = radial_distance(rho, other, torch.ones(1, 1, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
        assert float(d.detach()) == 0.0
        grads = torch.autograd.grad(d.sum(), [rho, other])
        assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


# ------------------------------------------------------------------------------------------- the Triton twin


@pytest.mark.skipif(RUNNABLE, reason="the Triton cases run in this process")
def test_triton_cases_in_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).resolve()),
               "-k", "triton_twin"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1],
                            timeout=600)
    output = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) == 2, output


def _twin_grads(inputs: dict[str, torch.Tensor], labels: torch.Tensor, scalars: dict, scale: float = 1.0) -> list:
    from lathadapter.kernels.triton_radial_loss import radial_loss_triton

    leaves = {name: value.detach().to(DEVICE).requires_grad_() for name, value in inputs.items()}
    loss, _ = radial_loss_triton(*leaves.values(), labels.to(DEVICE), **scalars)
    return [g.double().cpu() for g in torch.autograd.grad(scale * loss, list(leaves.values()))]


@triton_case
def test_triton_twin_scales_its_gradients_by_the_upstream_gradient() -> None:
    """The chain rule: the gradients of 2.5 · loss are 2.5 times those of the loss (float64 `fused_loss` the oracle);
    the suite differentiated the loss alone, whose upstream gradient is 1."""
    inputs, labels = make_inputs(5, 3, 2, seed=1)
    _, _, truth = oracle(inputs, labels, SCALARS)
    for grad, expected in zip(_twin_grads(inputs, labels, SCALARS, scale=2.5), truth, strict=True):
        expected = 2.5 * expected.detach()
        assert float((grad - expected).abs().max()) <= 5e-5 * float(expected.abs().max()) + 1e-12


@triton_case
def test_triton_twin_gives_a_parent_at_the_origin_no_cone_angle() -> None:
    """A category at the origin (ρ = 0) has no cone angle towards its images (Ξ undefined: 0, the documented rule), so
    with κ ψ(0) = π/2 its label edges have no energy: the hierarchy part equals the loss's with those edges' energy
    known to be 0, checked against float64 `fused_loss` (which restates the rule in its own code)."""
    inputs, labels = make_inputs(5, 3, 2, seed=1)
    labels[:] = torch.tensor([0, 0, 1, 2, 0])
    inputs["rho_categories"][0] = 0.0
    inputs["image_class"][0, 0] = -0.9  # an image opposite its category: Ξ would be near π, above κψ = π/2
    scalars = {**SCALARS, "lambda_hyp": 0.0}
    _, true_parts, truth = oracle(inputs, labels, scalars)
    from lathadapter.kernels.triton_radial_loss import radial_loss_triton

    leaves = {name: value.to(DEVICE) for name, value in inputs.items()}
    _, parts = radial_loss_triton(*leaves.values(), labels.to(DEVICE), **scalars)
    assert math.isclose(float(parts[2]), float(true_parts[2]), rel_tol=1e-5)


# ------------------------------------------------------------------------------------------------ trained runs


def test_a_class_without_test_images_has_no_accuracy_and_is_not_ranked() -> None:
    """Per-class accuracy is the confusion matrix's diagonal over its row sums (rows: true class): a class with no
    row has no accuracy (None, not 0 %), and the ranking leaves it out, worst first, ties in label order."""
    matrix = torch.tensor([[3, 1, 0, 0], [0, 0, 0, 0], [1, 0, 3, 0], [0, 0, 2, 2]])
    classes = class_accuracies(matrix, ["a", "b", "c", "d"])
    assert classes == [ClassAccuracy(0, "a", 3, 4), ClassAccuracy(1, "b", 0, 0), ClassAccuracy(2, "c", 3, 4),
                       ClassAccuracy(3, "d", 2, 4)]
    assert [c.accuracy for c in classes] == [75.0, None, 75.0, 50.0]
    assert [c.label for c in ranked(classes)] == [3, 0, 2]


# ---------------------------------------------------------------------------------------------------- records


def _record(key: str, seed: int = 1) -> Record:
    return Record("caltech101", Configuration("tip-adapter", (("text", "coop"),)), 4, "all", "", 80.0, None, None,
                  seed=seed, key=key)


def test_one_run_read_twice_is_one_run_of_its_seed_and_two_runs_are_refused() -> None:
    """A cell takes one run per seed: the same run (one key) met twice is that run, two runs of one seed are
    refused naming both keys."""
    check_one_run_per_seed([_record("k1"), _record("k1"), _record("k2", seed=2)], Path("results.csv"))
    with pytest.raises(ResultsError, match=r"runs k1 and k3 are the same configuration"):
        check_one_run_per_seed([_record("k1"), _record("k3")], Path("results.csv"))


# ------------------------------------------------------------------------------------------------------- cache


def test_the_shots_of_a_few_shot_set_are_its_largest_class() -> None:
    """K is the largest number of train images of one class (a class drawn whole may hold fewer)."""
    empty = torch.zeros(0, 2)
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    data = FewShotData(["a", "b", "c"], torch.zeros(3, 2), empty, torch.zeros(6, 2), torch.zeros(6, 1, 2), labels,
                       empty, torch.zeros(0, dtype=torch.long), empty, torch.zeros(0, dtype=torch.long), "f")
    assert data.shots == 3


def test_a_split_file_label_that_is_a_boolean_is_refused(tmp_path: Path) -> None:
    """JSON `true` is no label (Python reads it as an int, 1)."""
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [["a.jpg", True, "cat"]], "val": [], "test": [["b.jpg", 0, "cat"]]}))
    with pytest.raises(DatasetError, match=r"train\[0\] is \['a.jpg', True, 'cat'\]"):
        read_split_file(split)


def test_the_image_folder_of_a_split_file_is_the_one_subfolder_holding_its_first_image(tmp_path: Path) -> None:
    """The first listed image (train's, else test's for a test-only split) found in exactly one subfolder names it;
    in two, none is chosen ("")."""
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "val": [], "test": [["x/1.jpg", 0, "cat"]]}))
    (tmp_path / "images" / "x").mkdir(parents=True)
    (tmp_path / "images" / "x" / "1.jpg").write_bytes(b"")
    assert split_image_dir(split) == "images"
    (tmp_path / "copy" / "x").mkdir(parents=True)
    (tmp_path / "copy" / "x" / "1.jpg").write_bytes(b"")
    assert split_image_dir(split) == ""
