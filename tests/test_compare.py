"""`lathadapter compare`: the exact McNemar p against scipy's binomial test, the paired table and per-class numbers
against counts restated in numpy from two loaded runs' predictions, the command end to end, and its refusals."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binomtest
from typer.testing import CliRunner

import lathadapter
from lathadapter.adapter.options import OptionError, StateError
from lathadapter.cache.store import CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments.compare import compare, compare_runs, mcnemar_p, over_seeds

FAST = {"epochs": 2, "min_steps": 0}
SEEDS = (1, 2)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 5), (5, 0), (1, 1), (7, 7), (3, 20), (20, 3), (12, 30),
                                      (200, 1_500),  # p about 1e-246: near the bottom of the float range
                                      (24_000, 25_000), (25_000, 24_999),  # C(49,000, k) overflows a float
                                      (100, 30_000)])  # p below the smallest float: 0
def test_the_exact_mcnemar_p_is_the_two_sided_binomial_test_at_one_half(b: int, c: int) -> None:
    expected = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    assert mcnemar_p(b, c) == pytest.approx(expected, rel=1e-9, abs=0)


def test_the_paired_table_and_classes_count_images_by_which_run_got_them_right() -> None:
    right_a = torch.tensor([True, True, False, False, True, True])
    right_b = torch.tensor([True, False, True, False, False, True])
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    result = compare(right_a, right_b, labels, ["cat", "dog", "owl", "eel"])
    t = result.table
    assert (t.both, t.only_a, t.only_b, t.neither, t.images) == (2, 2, 1, 1, 6)
    assert (t.accuracy_a, t.accuracy_b, t.difference) == pytest.approx((400 / 6, 300 / 6, 100 / 6))
    assert [(k.label, k.name, k.count, k.correct_a, k.correct_b) for k in result.classes] == [
        (0, "cat", 2, 2, 1), (1, "dog", 3, 1, 1), (2, "owl", 1, 1, 1), (3, "eel", 0, 0, 0)]
    assert result.classes[0].difference == pytest.approx(50.0) and result.classes[3].accuracy_a is None


@pytest.fixture(scope="module")
def seeded_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic cache of 8 classes with few-shot sets of 4 shots at seeds 1 and 2."""
    return write_synthetic_cache(tmp_path_factory.mktemp("compare") / "synthetic.h5", num_classes=8, dim=16, views=3,
                                 shots=(4,), seeds=SEEDS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, seeded_cache: Path) -> dict[tuple[str, int], dict]:
    """Zero-shot and CLIP-Adapter (two epochs) at each seed: metrics by (method, seed)."""
    out = tmp_path_factory.mktemp("runs")
    return {(method, seed): lathadapter.fit(seeded_cache, method, 4, seed, out=out, device="cpu",
                                            **(FAST if method == "clip-adapter" else {}))
            for method in ("zeroshot", "clip-adapter") for seed in SEEDS}


def restated(cache: Path, run_a: dict, run_b: dict) -> dict:
    """The paired counts of two runs on the cache's test images, from each loaded run's predictions, in numpy."""
    with CacheReader(cache) as reader:
        data = reader.load(4, 1)
    features, labels = data.test_features, data.test_labels.numpy()
    right_a, right_b = (lathadapter.load(r["run_dir"], device="cpu").predict(features).numpy() == labels
                        for r in (run_a, run_b))
    classes = len(data.class_names)
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    return {"both": int(np.sum(right_a & right_b)), "b": b, "c": c, "neither": int(np.sum(~right_a & ~right_b)),
            "images": len(labels), "accuracy_a": 100.0 * right_a.mean(), "accuracy_b": 100.0 * right_b.mean(),
            "p": binomtest(b, b + c, 0.5).pvalue if b + c else 1.0, "names": data.class_names,
            "count": np.bincount(labels, minlength=classes),
            "correct_a": np.bincount(labels[right_a], minlength=classes),
            "correct_b": np.bincount(labels[right_b], minlength=classes)}


def test_two_loaded_runs_compare_as_their_predictions_count(seeded_cache: Path, runs: dict) -> None:
    a, b = runs[("clip-adapter", 1)], runs[("zeroshot", 1)]
    oracle = restated(seeded_cache, a, b)
    assert oracle["b"] + oracle["c"] > 0  # the two runs disagree on some image: the test can tell b from c
    compared = compare_runs(lathadapter.load(a["run_dir"], device="cpu"), lathadapter.load(b["run_dir"], device="cpu"))
    assert list(compared) == ["all"]
    t = compared["all"].table
    assert (t.both, t.only_a, t.only_b, t.neither, t.images) == tuple(
        oracle[k] for k in ("both", "b", "c", "neither", "images"))
    assert t.accuracy_a == pytest.approx(a["accuracy"]["all"], abs=1e-9)  # the accuracies metrics.json records
    assert t.accuracy_b == pytest.approx(b["accuracy"]["all"], abs=1e-9)
    assert t.difference == pytest.approx(a["accuracy"]["all"] - b["accuracy"]["all"], abs=1e-9)
    assert t.p == pytest.approx(oracle["p"], rel=1e-9)
    assert [(k.name, k.count, k.correct_a, k.correct_b) for k in compared["all"].classes] == [
        (oracle["names"][i], int(oracle["count"][i]), int(oracle["correct_a"][i]), int(oracle["correct_b"][i]))
        for i in range(len(oracle["names"]))]


def test_seed_pairs_are_compared_alone_with_their_mean_difference(runs: dict) -> None:
    loaded = {key: lathadapter.load(m["run_dir"], device="cpu") for key, m in runs.items()}
    summary = over_seeds([(loaded[("clip-adapter", s)], loaded[("zeroshot", s)]) for s in SEEDS])
    assert list(summary.seeds) == list(SEEDS)
    differences = [runs[("clip-adapter", s)]["accuracy"]["all"] - runs[("zeroshot", s)]["accuracy"]["all"]
                   for s in SEEDS]
    for seed, difference in zip(SEEDS, differences, strict=True):
        assert summary.seeds[seed].table.difference == pytest.approx(difference, abs=1e-9)
    assert summary.mean_difference == pytest.approx(sum(differences) / len(differences), abs=1e-9)
    with pytest.raises(OptionError, match="pair each seed of A with the same seed of B"):
        over_seeds([(loaded[("clip-adapter", 1)], loaded[("zeroshot", 2)])])


def test_base_to_novel_compares_each_part_and_leaves_novel_to_methods_that_score_it(baseline_cache: Path,
                                                                                    tmp_path: Path) -> None:
    probe, adapter, zeroshot = (lathadapter.fit(baseline_cache, method, 4, 1, classes="base", out=tmp_path,
                                                device="cpu", **(FAST if method == "clip-adapter" else {}))
                                for method in ("linear-probe", "clip-adapter", "zeroshot"))
    loaded = {m["method"]: lathadapter.load(m["run_dir"], device="cpu") for m in (probe, adapter, zeroshot)}
    with_probe = compare_runs(loaded["linear-probe"], loaded["clip-adapter"])
    assert list(with_probe) == ["base", "novel"] and with_probe["novel"] is None
    assert with_probe["base"].table.accuracy_a == pytest.approx(probe["accuracy"]["base"], abs=1e-9)
    both = compare_runs(loaded["clip-adapter"], loaded["zeroshot"])
    for part in ("base", "novel"):
        assert both[part].table.accuracy_a == pytest.approx(adapter["accuracy"][part], abs=1e-9)
        assert both[part].table.accuracy_b == pytest.approx(zeroshot["accuracy"][part], abs=1e-9)
    with pytest.raises(StateError, match="different class sets"):
        compare_runs(loaded["zeroshot"], lathadapter.load(
            lathadapter.fit(baseline_cache, "zeroshot", 4, 1, out=tmp_path, device="cpu")["run_dir"], device="cpu"))


def test_compare_prints_the_paired_test_and_writes_the_per_class_csv(seeded_cache: Path, runs: dict,
                                                                     tmp_path: Path) -> None:
    a, b = runs[("clip-adapter", 1)], runs[("zeroshot", 1)]
    oracle = restated(seeded_cache, a, b)
    out = tmp_path / "per_class.csv"
    result = CliRunner().invoke(app, ["compare", a["run_dir"], b["run_dir"], "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("A: clip-adapter · 4-shot seed 1 · key ") and lines[1].startswith("B: zeroshot · ")
    line = next(line for line in lines if line.startswith("all ("))
    numbers = re.fullmatch(r"all \((\d+) test images\): A ([\d.]+)%, B ([\d.]+)%, A − B ([+-][\d.]+) points; only A "
                           r"right b = (\d+), only B right c = (\d+); exact McNemar p = ([\d.e+-]+): (.*)", line)
    assert numbers, line
    images, acc_a, acc_b, difference, b_count, c_count, p, verdict = numbers.groups()
    assert (int(images), int(b_count), int(c_count)) == (oracle["images"], oracle["b"], oracle["c"])
    shown = pytest.approx  # printed to 2 decimals: within half of the last one (a tie rounds either way)
    assert float(acc_a) == shown(oracle["accuracy_a"], abs=0.005 + 1e-9)
    assert float(acc_b) == shown(oracle["accuracy_b"], abs=0.005 + 1e-9)
    assert float(difference) == shown(oracle["accuracy_a"] - oracle["accuracy_b"], abs=0.005 + 1e-9)
    assert float(p) == pytest.approx(oracle["p"], rel=1e-2)
    assert verdict == ("significant at 0.05" if oracle["p"] < 0.05 else "not significant at 0.05")
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["classes", "label", "class", "count", "correct_a", "correct_b", "accuracy_a",
                             "accuracy_b", "difference"]
    assert [row["class"] for row in rows] == oracle["names"] and {row["classes"] for row in rows} == {"all"}
    assert sum(int(row["count"]) for row in rows) == oracle["images"]
    assert sum(int(row["correct_a"]) for row in rows) == oracle["both"] + oracle["b"]
    assert sum(int(row["correct_b"]) for row in rows) == oracle["both"] + oracle["c"]
    for row in rows:
        assert float(row["accuracy_a"]) == pytest.approx(100 * int(row["correct_a"]) / int(row["count"]), abs=1e-4)
        assert float(row["difference"]) == pytest.approx(float(row["accuracy_a"]) - float(row["accuracy_b"]),
                                                         abs=2e-4)


def test_a_run_compared_with_itself_differs_nowhere(runs: dict) -> None:
    run = runs[("clip-adapter", 2)]["run_dir"]
    result = CliRunner().invoke(app, ["compare", run, run, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "only A right b = 0, only B right c = 0; exact McNemar p = 1: not significant at 0.05" in result.output
    assert "  A better: no class" in result.output and "  B better: no class" in result.output


def test_compare_refuses_other_test_images_and_missing_runs_in_one_line(runs: dict, tmp_path: Path) -> None:
    other = write_synthetic_cache(tmp_path / "other.h5", num_classes=8, dim=16, views=3, shots=(4,), seeds=(1,),
                                  seed=7)
    elsewhere = lathadapter.fit(other, "zeroshot", 4, 1, out=tmp_path, device="cpu")["run_dir"]
    run = runs[("zeroshot", 1)]["run_dir"]
    for args, fragment, code in ((["compare", run, elsewhere], "were trained on different caches", 1),
                                 (["compare", run, str(tmp_path / "nowhere")], "does not exist", 1),
                                 (["compare", run, run, "--device", "tpu"], "--device 'tpu'", 2)):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == code, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output


def test_the_per_class_csv_never_replaces_another_file(runs: dict) -> None:
    """`--out RUN_A/metrics.json` replaced the run's record with the per-class CSV; it is refused, the file kept."""
    a, b = runs[("clip-adapter", 1)], runs[("zeroshot", 1)]
    metrics = Path(a["run_dir"]) / "metrics.json"
    before = metrics.read_bytes()
    result = CliRunner().invoke(app, ["compare", a["run_dir"], b["run_dir"], "--out", str(metrics)])
    assert result.exit_code == 2 and metrics.read_bytes() == before
    assert result.output.startswith(f"error: --out {metrics}: the file exists and is not a per-class comparison CSV")
