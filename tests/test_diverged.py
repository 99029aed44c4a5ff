"""A run whose training diverges (NaN or infinite loss or parameters) has no accuracy: `fit` refuses it (exit 2, in
tests/test_cli_errors.py), a grid keeps it as diverged and goes on, tuning never keeps it over a finite candidate,
runs trained beside it are untouched, and reports leave it out of their tables and list it."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lathadapter.cache.store import CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments.report import write_report
from lathadapter.experiments.report_tables import summary_markdown
from lathadapter.experiments.run import RunConfig, run, run_together

SHORT = {"epochs": 3, "min_steps": 0}
DIVERGING_LR = 1e30  # CLIP-Adapter's residual blows up to NaN within the first epoch (tests/test_cli_errors.py)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("diverged") / "syn.h5", num_classes=6, dim=16, views=2,
                                 shots=(2,), seeds=(1, 2), train_per_class=4, val_per_class=3, test_per_class=4)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def write_rows(path: Path, columns: list[str], rows: list[dict]) -> Path:
    """A results table written by hand: `columns`, empty where a row has no value."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)")


@pytest.mark.parametrize(("stack", "device"), [(False, "cpu"), (True, "cpu"),
                                               pytest.param(True, "cuda", marks=CUDA)],
                         ids=["lockstep", "stacked", "stacked-captured-cuda"])
def test_a_run_that_diverges_beside_others_leaves_them_as_they_train_alone(cache: Path, stack: bool,
                                                                           device: str) -> None:
    """Trained together (lockstep, or one stacked LatHAdapter model: members differ in seed and data only), a run
    whose training images are NaN diverges and has no accuracy; its batchmate's accuracy equals its run alone."""
    with CacheReader(cache) as reader:  # on CUDA the steps are captured as graphs (the default there)
        poisoned, data = reader.load(2, 1, device=device), reader.load(2, 2, device=device)
    poisoned = dataclasses.replace(poisoned, train_features=torch.full_like(poisoned.train_features, math.nan),
                                   train_augmented=torch.full_like(poisoned.train_augmented, math.nan))
    bad, good = (RunConfig.create("lathadapter", 2, seed, overrides=SHORT) for seed in (1, 2))
    together = run_together([bad, good], [poisoned, data], stack=stack)
    alone = run(good, data)
    assert together[0].metrics["diverged"].startswith("lathadapter diverged in training: its loss was nan")
    assert together[0].metrics["accuracy"] == {"all": None} and together[0].points is None
    assert together[1].metrics["diverged"] is None and alone.metrics["diverged"] is None
    assert together[1].metrics["batch_mode"] == ("stacked" if stack else "lockstep")
    if stack:  # one vmapped model: equal within float rounding (docs/architecture.md), which on CUDA may flip one
        # test image's prediction
        image = 100 / len(data.test_labels) if device == "cuda" else 1e-9
        assert together[1].metrics["accuracy"]["all"] == pytest.approx(alone.metrics["accuracy"]["all"], abs=image)
    else:
        assert together[1].metrics["accuracy"] == alone.metrics["accuracy"]
        for name, value in alone.method.state_dict().items():
            assert value.equal(together[1].method.state_dict()[name]), name


def test_a_grid_keeps_a_diverged_run_goes_on_and_lists_it(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid"
    args = ["grid", "--cache", str(cache), "--method", "clip-adapter", "--shots", "2", "--seeds", "1,2",
            "--set", f"lr={DIVERGING_LR:g},0.001", "--set", "epochs=3", "--set", "min_steps=0", "--device", "cpu",
            "--out", str(out)]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    rows = read_rows(out / "results.csv")
    diverged = [r for r in rows if float(r["opt.lr"]) == DIVERGING_LR]
    finite = [r for r in rows if float(r["opt.lr"]) == 0.001]
    assert len(diverged) == len(finite) == 2
    assert all(r["acc_all"] == "" and r["diverged"].startswith("clip-adapter diverged in training") for r in diverged)
    assert all(r["diverged"] == "" and 0 <= float(r["acc_all"]) <= 100 for r in finite)
    assert "### Diverged runs" in first.output and "2 runs diverged in training and are left out" in first.output
    again = invoke(*args)  # a diverged run is finished: a rerun does not train it again
    assert again.exit_code == 0 and "0 done now, 4 already done" in again.output, again.output
    markdown = write_report(out, tmp_path / "report")["markdown"]
    parts = markdown.split("### Few-shot ECE")
    assert len(parts) == 2
    for part in parts:  # the accuracy tables, then the ECE table: alike
        table = [line for line in part.splitlines() if line.startswith("| clip-adapter")]
        assert len(table) == 2  # one row per lr; the diverged configuration's cell says so
        (cell,) = [line for line in table if "lr=1e+30" in line]
        assert cell.rstrip(" |").endswith("| diverged")


def test_tuning_never_keeps_a_diverged_candidate_over_a_finite_one(cache: Path, tmp_path: Path) -> None:
    """The diverged candidate has no val score; the finite one is kept, though the diverged one is given first (the
    tie-break order, which would keep it were a missing score a tie)."""
    out = tmp_path / "tuned"
    result = invoke("grid", "--cache", str(cache), "--method", "clip-adapter", "--shots", "2", "--seeds", "1",
                    "--tune", f"lr={DIVERGING_LR:g},0.001", "--set", "epochs=3", "--set", "min_steps=0",
                    "--device", "cpu", "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = {float(r["opt.lr"]): r for r in read_rows(out / "results.csv")}
    assert rows[DIVERGING_LR]["tune.val_score"] == "" and rows[DIVERGING_LR]["tune.selected"] == "False"
    assert rows[0.001]["tune.selected"] == "True" and math.isfinite(float(rows[0.001]["tune.val_score"]))
    assert "Diverged runs" not in result.output  # a candidate not kept is not reported


def test_a_report_leaves_a_diverged_seed_out_of_its_cell_and_lists_it(tmp_path: Path) -> None:
    """Hand-written results: seed 2 of 3 diverged, so the cell is the mean of seeds 1 and 3 marked (n=2)."""
    columns = ["key", "cache", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select",
               "target", "acc_all", "acc_base", "acc_novel", "hm", "diverged", "opt.lr"]
    common = {"cache": "c.h5", "dataset": "caltech101", "fingerprint": "fp", "method": "clip-adapter", "shots": 4,
              "classes": "all", "text": "coop", "select": "last", "target": "", "opt.lr": 0.001}
    rows = [{**common, "key": "k1", "seed": 1, "acc_all": 70.0}, {**common, "key": "k2", "seed": 2, "acc_all": "",
             "diverged": "clip-adapter diverged in training: its loss was nan at epoch 2 of 3 (lr=0.001)"},
            {**common, "key": "k3", "seed": 3, "acc_all": 74.0},
            {**common, "key": "z1", "method": "zeroshot", "seed": 1, "acc_all": 60.0, "opt.lr": ""},
            {**common, "key": "z2", "method": "zeroshot", "seed": 2, "acc_all": 60.0, "opt.lr": ""},
            {**common, "key": "z3", "method": "zeroshot", "seed": 3, "acc_all": 60.0, "opt.lr": ""}]
    path = write_rows(tmp_path / "results.csv", columns, rows)
    markdown = write_report(path, tmp_path / "report")["markdown"]
    mean, std = (70.0 + 74.0) / 2, math.sqrt(((70.0 - 72.0) ** 2 + (74.0 - 72.0) ** 2) / 1)
    assert f"| {mean:.2f} ± {std:.2f} (n=2) |" in markdown
    assert "1 run diverged in training and is left out of the tables" in markdown
    assert "- clip-adapter, caltech101, 4 shots, seed 2, classes=all (run k2): clip-adapter diverged" in markdown
    other = [{**r, "key": f"{r['key']}b", "fingerprint": "ab12cd34ef"} for r in rows]  # a second cache of one name
    write_rows(path, columns, rows + other)
    listed = [line for line in summary_markdown(path).splitlines() if line.startswith("- ")]
    assert listed == [f"- clip-adapter, caltech101 (fp {fp}), 4 shots, seed 2, classes=all (run {key}): "
                      f"{rows[1]['diverged']}" for fp, key in (("fp", "k2"), ("ab12cd34", "k2b"))]


def test_a_base_to_novel_cell_whose_every_seed_diverged_reads_diverged_in_its_hm_too(tmp_path: Path) -> None:
    """Both seeds of CLIP-Adapter's base-to-novel run diverged: base, novel and HM read `diverged` (the HM once read
    `—`, which the report's legend calls "no run"); zero-shot's row is the HM of its means, 2BN/(B + N)."""
    columns = ["key", "cache", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select",
               "target", "acc_all", "acc_base", "acc_novel", "hm", "diverged"]
    common = {"cache": "c.h5", "dataset": "caltech101", "fingerprint": "fp", "shots": 16, "classes": "base",
              "text": "coop", "select": "last", "target": ""}
    rows = [{**common, "key": f"c{s}", "method": "clip-adapter", "seed": s, "diverged": "clip-adapter diverged"}
            for s in (1, 2)]
    rows += [{**common, "key": f"z{s}", "method": "zeroshot", "seed": s, "acc_base": 80.0, "acc_novel": 60.0}
             for s in (1, 2)]
    path = write_rows(tmp_path / "results.csv", columns, rows)
    markdown = write_report(path, tmp_path / "report")["markdown"]
    assert "| clip-adapter | diverged | diverged | diverged |" in markdown
    assert f"| zeroshot | 80.00 ± 0.00 | 60.00 ± 0.00 | {2 * 80 * 60 / (80 + 60):.2f} |" in markdown


def test_a_run_that_scores_nan_on_val_with_a_finite_training_is_kept_as_diverged(
        cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores that overflow past the test set (R could not reach them with real options, so the fault is injected:
    the val score of lr=0.01 raises NaNScores as `evaluate.checked` does) mark that run diverged, without test
    accuracy, and the grid goes on: the other candidate is kept and the exit code is 0."""
    from lathadapter.adapter.evaluate import NaNScores
    from lathadapter.experiments import training

    honest = training.tune_val_accuracy

    def overflowing(config: RunConfig, method, data):  # noqa: ANN001, ANN202 - the patched function's signature
        if config.options.lr == 0.01:
            raise NaNScores("clip-adapter gave NaN scores at evaluation (injected)")
        return honest(config, method, data)

    monkeypatch.setattr(training, "tune_val_accuracy", overflowing)
    out = tmp_path / "tuned"
    result = invoke("grid", "--cache", str(cache), "--method", "clip-adapter", "--shots", "2", "--seeds", "1",
                    "--tune", "lr=0.01,0.001", "--set", "epochs=3", "--set", "min_steps=0", "--device", "cpu",
                    "--workers", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = {float(r["opt.lr"]): r for r in read_rows(out / "results.csv")}
    assert rows[0.01]["diverged"] == "clip-adapter gave NaN scores at evaluation (injected)"
    assert rows[0.01]["acc_all"] == "" and rows[0.01]["tune.val_score"] == "" and rows[0.01]["tune.selected"] == "False"
    assert rows[0.001]["diverged"] == "" and rows[0.001]["tune.selected"] == "True"
    assert 0 <= float(rows[0.001]["acc_all"]) <= 100


def test_a_pseudo_base_copy_that_scores_nan_gives_its_candidate_no_val_hm(
        cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`val_hm`'s pseudo-base copy scoring NaN on the pseudo-novel classes (injected: the evaluation against novel
    class texts raises NaNScores) leaves that candidate without a score; the run itself keeps its test accuracy and
    the grid ends with exit 0."""
    from lathadapter.adapter.evaluate import NaNScores
    from lathadapter.experiments import run as run_module

    honest = run_module.evaluate

    def overflowing(method, features, labels, text_features=None):  # noqa: ANN001, ANN202
        if text_features is not None:  # only the pseudo-novel half passes class texts in a few-shot grid
            raise NaNScores("lathadapter gave NaN scores at evaluation (injected)")
        return honest(method, features, labels, text_features)

    monkeypatch.setattr(run_module, "evaluate", overflowing)
    out = tmp_path / "hm"
    result = invoke("grid", "--cache", str(cache), "--method", "lathadapter", "--shots", "2", "--seeds", "1",
                    "--tune", "lr=0.01,0.001", "--tune-score", "val_hm", "--set", "epochs=3", "--set", "min_steps=0",
                    "--device", "cpu", "--workers", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = read_rows(out / "results.csv")
    assert len(rows) == 2 and all(r["diverged"] == "" and 0 <= float(r["acc_all"]) <= 100 for r in rows)
    assert all(r["tune.val_score"] == "" for r in rows)


def test_an_average_over_datasets_with_a_diverged_cell_reads_diverged(tmp_path: Path) -> None:
    """CLIP-Adapter's every seed diverged on dtd and trained on caltech101: its dtd cells and the Average columns
    over both datasets read `diverged` (the average once read `—`, "no run"); zero-shot's average is the mean of its
    per-dataset means, its HM that of the mean base and novel."""
    columns = ["key", "cache", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select",
               "target", "acc_all", "acc_base", "acc_novel", "hm", "diverged"]
    rows = []
    for dataset, zero_shot, adapter in (("caltech101", (80.0, 60.0), (85.0, 50.0)), ("dtd", (70.0, 40.0), None)):
        common = {"cache": f"{dataset}.h5", "dataset": dataset, "fingerprint": f"fp{dataset}", "shots": 16,
                  "classes": "base", "text": "coop", "select": "last", "target": ""}
        for seed in (1, 2):
            rows.append({**common, "key": f"z{dataset}{seed}", "method": "zeroshot", "seed": seed,
                         "acc_base": zero_shot[0], "acc_novel": zero_shot[1]})
            rows.append({**common, "key": f"c{dataset}{seed}", "method": "clip-adapter", "seed": seed,
                         **({"diverged": "clip-adapter diverged"} if adapter is None
                            else {"acc_base": adapter[0], "acc_novel": adapter[1]})})
    markdown = write_report(write_rows(tmp_path / "results.csv", columns, rows), tmp_path / "report")["markdown"]
    hm = 2 * 85.0 * 50.0 / (85.0 + 50.0)
    assert (f"| clip-adapter | 85.00 ± 0.00 | 50.00 ± 0.00 | {hm:.2f} | diverged | diverged | diverged | diverged | "
            "diverged | diverged |") in markdown
    base, novel = (80.0 + 70.0) / 2, (60.0 + 40.0) / 2
    assert f"| {base:.2f} | {novel:.2f} | {2 * base * novel / (base + novel):.2f} |" in markdown


def test_select_val_never_keeps_an_epoch_whose_val_scores_are_not_finite() -> None:
    """`select=val`: an epoch whose val scores hold NaN reads class 0 by argmax — here every val label, 100% — yet
    it is never kept as the best epoch (the run would then be tested with a NaN model); the next epoch with finite
    scores is, at its own accuracy (3 of 4 val images scored right: 75%)."""
    from types import SimpleNamespace

    from lathadapter.adapter.trainer import Member, TrainResult, _keep_best

    class Scores:  # a method reduced to what the selection reads: its val scores and its state
        def __init__(self, scores: torch.Tensor) -> None:
            self.scores = scores

        def eval(self) -> None:
            pass

        def logits(self, features: torch.Tensor) -> torch.Tensor:
            return self.scores

        def state_dict(self) -> dict[str, torch.Tensor]:
            return {"scores": self.scores.clone()}

    data = SimpleNamespace(val_labels=torch.zeros(4, dtype=torch.long), val_features=torch.zeros(4, 2))
    nan = torch.tensor([[float("nan"), 0.0]] * 4)
    finite = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    result, best = TrainResult(), [(None, -1.0)]
    _keep_best([Member(Scores(nan), data, 1)], [result], best, epoch=0)  # type: ignore[arg-type]
    assert best[0] == (None, -1.0) and result.selected_epoch is None
    _keep_best([Member(Scores(finite), data, 1)], [result], best, epoch=1)  # type: ignore[arg-type]
    assert best[0][1] == 75.0 and torch.equal(best[0][0]["scores"], finite)
    assert (result.selected_epoch, result.val_accuracy) == (2, 75.0)
