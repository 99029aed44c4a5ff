"""Behaviours that a third mutation campaign (stop 24) found untested: each test here fails on a mutant that the rest
of the suite let pass, and checks the code against an independent oracle (a formula restated in float64, a documented
rule restated, a hand-built input with a known answer).

The Triton cases need the interpreter (TRITON_INTERPRET=1 before triton is first imported), so on a machine without a
GPU `test_triton_cases_in_the_interpreter` reruns them in a child pytest process that has it."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from test_kernels_radial_loss import SCALARS, make_inputs, oracle
from typer.testing import CliRunner

import lathadapter
from lathadapter.adapter import batched
from lathadapter.adapter.batched import Member, lockstep_key, train_together
from lathadapter.adapter.catalog import build_method, make_options
from lathadapter.cache.datasets import DatasetError, load_dataset, read_split_file, split_image_dir
from lathadapter.cache.store import CacheError, CacheReader, FewShotData
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments.launch import launch
from lathadapter.experiments.protocols import Targets, targets_salt
from lathadapter.experiments.records import Configuration, Record, ResultsError, check_one_run_per_seed
from lathadapter.experiments.spec import GridSpec
from lathadapter.experiments.trained import ClassAccuracy, class_accuracies, per_class_rows, ranked
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


# ------------------------------------------------------------------------------------------ M2: wider survivors


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes, D = 8, 2 views, 4 shots (16 train rows), seeds 1 and 2."""
    return write_synthetic_cache(tmp_path_factory.mktemp("gaps3") / "small.h5", num_classes=4, dim=8, views=2,
                                 shots=(4,), seeds=(1, 2))


def _few_shot(cache: Path) -> FewShotData:
    with CacheReader(cache) as reader:
        return reader.load(4, 1)


def test_runs_of_other_batch_sizes_and_equal_steps_are_not_trained_together(small_cache: Path) -> None:
    """Lockstep members share the batch size (`lockstep_key`'s rule): on 16 rows, batches of 6 and of 7 both take 2
    steps an epoch (drop_last), yet draw other rows, so the batch takes one size for all and would train one wrong."""
    data = _few_shot(small_cache)
    members = [Member(build_method("clip-adapter", make_options("clip-adapter", {
        "epochs": "2", "min_steps": "0", "batch_size": size}), data), data, 1) for size in ("6", "7")]
    assert [m.method.train_recipe().steps_per_epoch(16) for m in members] == [2, 2]
    assert lockstep_key(members[0], "last", "augmented") != lockstep_key(members[1], "last", "augmented")
    with pytest.raises(ValueError, match="train the others alone"):
        train_together(members)


def test_a_run_with_nothing_to_train_is_refused_by_train_together(small_cache: Path) -> None:
    """`lockstep_key` is None for a method the trainer has nothing to optimise: it trains alone, even by itself."""
    data = _few_shot(small_cache)
    member = Member(build_method("zeroshot", make_options("zeroshot", {}), data), data, 1)
    assert lockstep_key(member, "last", "augmented") is None
    with pytest.raises(ValueError, match="train the others alone"):
        train_together([member])


def test_a_batch_s_wall_time_is_divided_among_its_members(small_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each member's `seconds` is the batch's wall time over its number of members (a fake clock: 6 s for 3)."""
    data = _few_shot(small_cache)
    clock = itertools.chain([10.0], itertools.repeat(16.0))
    monkeypatch.setattr(batched, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    members = [Member(build_method("clip-adapter", make_options("clip-adapter", {"epochs": "1", "min_steps": "0"}),
                                   data), data, seed) for seed in (1, 2, 3)]
    assert [r.seconds for r in train_together(members, stack=False)] == [2.0, 2.0, 2.0]


def test_a_domain_and_a_cross_dataset_run_over_one_target_are_different_runs(small_cache: Path) -> None:
    """The targets' salt of a run key records whether classes are mapped (domain) or not (cross-dataset)."""
    assert targets_salt([str(small_cache)], True) != targets_salt([str(small_cache)], False)


def test_a_target_loaded_for_a_second_text_has_that_text_s_class_features(small_cache: Path) -> None:
    """A cross-dataset target loaded for `coop` then `ensemble` shares its test features; its class features are
    each text's: the first template, or the normalised mean of the normalised templates (restated from the file)."""
    with h5py.File(small_cache, "r") as f:
        templates = torch.from_numpy(f["text/features"][()].astype(np.float64))
    unit = templates / templates.norm(dim=-1, keepdim=True)
    mean = unit.mean(dim=0)
    expected = {"coop": unit[0], "ensemble": mean / mean.norm(dim=-1, keepdim=True)}
    targets = Targets([str(small_cache)], "cpu", mapped=False, texts=("coop", "ensemble"))
    for text, features in expected.items():
        torch.testing.assert_close(targets.target(str(small_cache), text).text_features.double(), features,
                                   rtol=0, atol=1e-6)


def test_a_transfer_run_records_its_source_ece_as_its_ece() -> None:
    """`targets_ece`'s `source` is the run's own test-set ECE, `targets`' its accuracy (no target: the source only)."""
    outcome = SimpleNamespace(method=None, metrics={"diverged": None, "accuracy": {"all": 81.25}, "ece": {"all": 4.5},
                                                    "reliability": {"all": None}})
    scored = Targets([], "cpu", mapped=False)(SimpleNamespace(config=SimpleNamespace(text="coop")), outcome, None)
    assert (scored["targets"], scored["targets_ece"]) == ({"source": 81.25}, {"source": 4.5})


def test_a_loaded_run_scores_no_rows_as_an_empty_matrix(baseline_cache: Path, tmp_path: Path) -> None:
    """Zero feature rows give zero score rows over the run's classes (8), and no prediction."""
    run = lathadapter.load(lathadapter.fit(baseline_cache, "zeroshot", 2, 1, out=tmp_path, device="cpu")["run_dir"])
    assert run.logits(torch.zeros(0, 16)).shape == (0, 8)
    assert run.predict(torch.zeros(0, 16)).shape == (0,)


def test_the_per_class_csv_keeps_the_accuracy_to_within_a_ten_thousandth() -> None:
    """The CSV's accuracy is 100 · correct / count (1 of 3: 33.33…%) to 1e-4, finer than the 2 decimals printed."""
    [row] = per_class_rows({("all", ""): [ClassAccuracy(0, "a", 1, 3)]})
    assert abs(float(row["accuracy"]) - 100 / 3) <= 1e-4


def _edited(cache: Path, tmp_path: Path, name: str, value: np.ndarray) -> Path:
    """A copy of `cache` with dataset `name` replaced by `value`."""
    copy = tmp_path / cache.name
    copy.write_bytes(cache.read_bytes())
    with h5py.File(copy, "r+") as f:
        dtype = h5py.string_dtype() if value.dtype.kind in "OSU" else value.dtype
        del f[name]
        f.create_dataset(name, data=value, dtype=dtype)
    return copy


def test_a_negative_subset_row_is_refused_not_read_from_the_end(small_cache: Path, tmp_path: Path) -> None:
    """Row −1 is no row of the split (numpy would read the last one): the file is damaged, named in one error."""
    with h5py.File(small_cache, "r") as f:
        rows = f["subsets/shots_4_seed_1/train"][()]
    rows[1] = -1
    broken = _edited(small_cache, tmp_path, "subsets/shots_4_seed_1/train", rows)
    with CacheReader(broken) as reader, pytest.raises(CacheError, match=r"holds row -1, outside splits/train"):
        reader.load(4, 1)


def test_the_search_set_leaves_out_the_val_images_skipped_as_bad(small_cache: Path, tmp_path: Path) -> None:
    """`--val split`'s search set is the whole val split less the images `--skip-bad` left out (by path)."""
    with h5py.File(small_cache, "r") as f:
        paths = f["splits/val/paths"].asstr()[()]
        features = f["splits/val/features"][()].astype(np.float32)
    copy = _edited(small_cache, tmp_path, "skipped", np.array([paths[2]], dtype=object))
    with CacheReader(copy) as reader:
        data = reader.load(4, 1)
    kept = [i for i in range(len(paths)) if i != 2]
    assert data.search_features is not None and len(data.search_features) == len(paths) - 1
    assert torch.equal(data.search_features, torch.from_numpy(features[kept]))


def test_the_warning_on_files_that_are_not_images_names_three_then_dots(tmp_path: Path) -> None:
    """Four such files are counted, the first three (sorted) named, the rest `...`."""
    tree = tmp_path / "tree"
    for part in ("train", "test"):
        for cls in ("cat", "dog"):
            (tree / part / cls).mkdir(parents=True)
            (tree / part / cls / "0.png").write_bytes(b"")
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (tree / "train" / "cat" / name).write_text("not an image")
    [warning] = [note for note in load_dataset(None, f"folder:{tree}").notes if note.startswith("warning:")]
    assert warning.startswith(f"warning: folder:{tree}: left out 4 files of class folders that are not images: "
                              "train/cat/a.txt, train/cat/b.txt, train/cat/c.txt ... (")


# -------------------------------------------------------------------------------------------------- grid driver


def _zeroshot_grid(cache: Path, seeds: list[int]) -> GridSpec:
    return GridSpec([str(cache)], ["zeroshot"], [4], seeds)


def test_a_changed_key_salt_makes_the_same_grid_new_runs(small_cache: Path, tmp_path: Path) -> None:
    """`key_salt` (a protocol's targets) joins each cache fingerprint in the run keys: another salt, other runs."""
    first = launch(_zeroshot_grid(small_cache, [1]), tmp_path, progress=False, key_salt="|a")
    again = launch(_zeroshot_grid(small_cache, [1]), tmp_path, progress=False, key_salt="|b")
    assert (first["done"], again["done"], again["skipped"]) == (1, 1, 0)
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_a_grid_with_every_run_finished_writes_its_results_table_again(small_cache: Path, tmp_path: Path) -> None:
    """A resumed grid that has nothing left to train still writes `results.csv` (here deleted in between)."""
    launch(_zeroshot_grid(small_cache, [1]), tmp_path, progress=False)
    (tmp_path / "results.csv").unlink()
    assert launch(_zeroshot_grid(small_cache, [1]), tmp_path, progress=False)["skipped"] == 1
    with (tmp_path / "results.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 1


def test_a_resumed_grid_s_progress_counts_its_finished_runs_as_skipped(small_cache: Path, tmp_path: Path) -> None:
    """Progress lines (stderr not a terminal) start at the runs finished before, counted as skipped."""
    def grid(seeds: str) -> list[str]:
        result = CliRunner().invoke(app, ["grid", "--cache", str(small_cache), "--method", "zeroshot", "--shots", "4",
                                          "--seeds", seeds, "--device", "cpu", "--out", str(tmp_path / "g")])
        assert result.exit_code == 0, result.output
        return [line for line in result.output.splitlines() if line.startswith("grid: ") and "/2 runs (" in line]

    grid("1")
    lines = grid("1,2")
    assert lines[0].startswith("grid: 1/2 runs (50%) · done 0 · skipped 1 · running elsewhere 0")
    assert lines[-1].startswith("grid: 2/2 runs (100%) · done 1 · skipped 1")


def test_worker_chunks_are_a_few_per_worker_and_whole_batches(small_cache: Path, tmp_path: Path) -> None:
    """Without a chunk size, a chunk is ⌈pending / (4 workers)⌉ runs of one cache (4 chunks a worker), rounded up to
    whole batches of `batch_runs` (runs trained together stay in one chunk). 16 taskres runs (8 lr × seeds 1, 2)."""
    from lathadapter.experiments.execution import Execution
    from lathadapter.experiments.launch import prepare
    from lathadapter.experiments.local import WorkerProcesses
    from lathadapter.experiments.spec import expand
    from lathadapter.experiments.training import Job, pending_runs

    lrs = [str(0.001 * (i + 1)) for i in range(8)]
    spec = GridSpec([str(small_cache)], ["taskres"], [4], [1, 2], options={"taskres.lr": lrs})
    infos, keyed = prepare(expand(spec), tmp_path)
    pending = pending_runs(keyed, tmp_path)
    assert len(pending) == 16
    for batch_runs, sizes in ((1, [2] * 8), (3, [3] * 5 + [1])):
        job = Job(tmp_path, keyed, infos, pending, Execution(workers=2, batch_runs=batch_runs))
        assert [len(chunk) for chunk in WorkerProcesses(2).chunks(job)] == sizes


def test_the_worker_count_probe_trains_batches_from_both_ends_of_the_grid(small_cache: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Before workers start (`--workers` automatic), this process trains batches from the grid's front and back in
    turn, so its estimate sees the cheap and the costly runs early: here the first run, then the last."""
    from collections import deque

    from lathadapter.experiments import local
    from lathadapter.experiments.execution import Execution
    from lathadapter.experiments.launch import prepare
    from lathadapter.experiments.spec import expand
    from lathadapter.experiments.training import Job, pending_runs

    spec = GridSpec([str(small_cache)], ["zeroshot", "tip-adapter"], [4], [1, 2])
    infos, keyed = prepare(expand(spec), tmp_path)
    job = Job(tmp_path, keyed, infos, pending_runs(keyed, tmp_path), Execution(workers=2))
    todo = deque(local.WorkerProcesses(2).chunks(job))
    answers = iter([False, True])
    monkeypatch.setattr(local, "workers_pay", lambda seconds_left, workers: next(answers))
    trained = [index for events in local._until_workers_pay(job, todo, 2, set()) for index, _ in events]
    assert trained == [0, 3]
