"""Post-hoc temperature scaling (`adapter.temperature`, `TrainedRun.temperature_scaled`, `inspect`'s line): the
fitted T against a brute-force search of the NLL restated in numpy, the scaled ECE against its bins restated in numpy,
and a softmax method's scaling against its logits divided by T."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lathadapter
from lathadapter.adapter.temperature import T_RANGE, TemperatureScaled, fit_temperature, log_probabilities
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app

BINS = 15


def nll(log_p: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of softmax(log_p / T), restated in float64 numpy."""
    z = log_p / temperature
    top = z.max(axis=1, keepdims=True)
    log_sum = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_sum - z[np.arange(len(labels)), labels]))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ece(probabilities: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> float:
    """ECE (%) over 15 equal-width bins (b/15, (b+1)/15] of the top-1 confidence in float32 (every ECE bins the
    float32 confidence, exactly: a float32 times 15 is exact in float64), restated."""
    confidence = probabilities.max(axis=1).astype(np.float32).astype(np.float64)
    bins = np.clip(np.ceil(confidence * BINS).astype(int) - 1, 0, BINS - 1)
    right = predicted == labels
    return 100.0 * sum(abs(right[bins == b].sum() - confidence[bins == b].sum()) for b in range(BINS)) / len(labels)


@pytest.mark.parametrize("true_temperature", [0.3, 1.0, 4.0])
def test_the_fitted_temperature_minimises_the_nll(true_temperature: float) -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(3000, 12)) * 3
    labels = np.array([rng.choice(12, p=p) for p in softmax(logits / true_temperature)])
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    fitted = fit_temperature(torch.from_numpy(log_p), torch.from_numpy(labels))
    grid = np.exp(np.linspace(math.log(T_RANGE[0]), math.log(T_RANGE[1]), 20001))
    values = np.array([nll(log_p, labels, t) for t in grid])
    best = int(values.argmin())
    assert grid[best - 1] <= fitted <= grid[best + 1]
    assert nll(log_p, labels, fitted) <= values[best] + 1e-12
    assert fitted == pytest.approx(true_temperature, rel=0.15)  # 3,000 labels drawn at that temperature


def test_a_softmax_method_is_scaled_as_its_logits_divided_by_t(baseline_cache: Path, tmp_path: Path) -> None:
    run = lathadapter.load(lathadapter.fit(baseline_cache, "clip-adapter", 4, 1, out=tmp_path, device="cpu",
                                           epochs=2)["run_dir"])
    scores = run.logits(run.data.test_features)
    for temperature in (0.5, 3.0, 40.0):
        scaled = torch.softmax(log_probabilities(run.method, scores) / temperature, dim=-1).numpy()
        assert np.allclose(scaled, softmax(scores.double().numpy() / temperature), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("method", "classes"), [("lathadapter", "all"), ("linear-probe", "all"),
                                                 ("lathadapter", "base")])
def test_the_scaled_ece_restated(baseline_cache: Path, tmp_path: Path, method: str, classes: str) -> None:
    """T fitted on the run's val images (base classes for base-to-novel) and applied to each test set; LatHAdapter's
    fused scores are the sum of two softmaxes, so its probabilities are their half (docs/baselines.md)."""
    options = {"epochs": 2, "min_steps": 0} if method == "lathadapter" else {"epochs": 2}
    run = lathadapter.load(lathadapter.fit(baseline_cache, method, 4, 1, classes=classes, out=tmp_path,
                                           device="cpu", **options)["run_dir"])

    def probabilities(scores: torch.Tensor) -> np.ndarray:
        s = scores.double().numpy()
        return s / 2 if method == "lathadapter" else softmax(s)

    val_log_p = np.log(np.maximum(probabilities(run.logits(run.data.val_features)), 1e-300))
    val_labels = run.data.val_labels.numpy()
    for part in run.parts:
        scaled = run.temperature_scaled(part)
        assert scaled is not None and scaled.val_images == len(val_labels)
        t = scaled.temperature
        assert nll(val_log_p, val_labels, t) <= min(nll(val_log_p, val_labels, t * 1.001),
                                                    nll(val_log_p, val_labels, t / 1.001))
        features, labels, _ = run.test_set(part)
        scores = run.logits(features, *run.against(part))
        log_p = np.log(np.maximum(probabilities(scores), 1e-300))
        expected = ece(softmax(log_p / t), scores.numpy().argmax(axis=1), labels.numpy())
        assert scaled.scores.ece == pytest.approx(expected, abs=1e-9)
        assert scaled.scores.accuracy == run.scores(part).accuracy  # scaling keeps every prediction


def test_inspect_prints_the_scaled_ece_or_says_there_is_no_val_image(baseline_cache: Path, tmp_path: Path) -> None:
    run_dir = lathadapter.fit(baseline_cache, "linear-probe", 4, 1, out=tmp_path / "a", device="cpu",
                              epochs=2)["run_dir"]
    result = CliRunner().invoke(app, ["inspect", str(run_dir)])
    assert result.exit_code == 0, result.output
    scaled = lathadapter.load(run_dir).temperature_scaled()
    line = re.search(r"after temperature scaling: ECE ([\d.]+)% \(T = ([\d.e+-]+), fitted on (\d+) val images\)",
                     result.output)
    assert line is not None, result.output
    assert (float(line[1]), float(line[2]), int(line[3])) == (round(scaled.scores.ece, 2),
                                                             float(f"{scaled.temperature:.3g}"), scaled.val_images)
    no_val = write_synthetic_cache(tmp_path / "no_val.h5", num_classes=4, dim=8, views=1, shots=(4,), seeds=(1,),
                                   val_per_class=0)
    run_dir = lathadapter.fit(no_val, "linear-probe", 4, 1, out=tmp_path / "b", device="cpu", epochs=2)["run_dir"]
    result = CliRunner().invoke(app, ["inspect", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "after temperature scaling: no val image to fit a temperature on" in result.output
    assert lathadapter.load(run_dir).temperature_scaled() is None


def test_a_val_set_that_does_not_bound_t_leaves_it_at_the_edge() -> None:
    """Every val image right: the NLL of softmax(log p / T) falls as T → 0 (each term tends to 0 from above), so the
    fit ends at the range's low end, which `at_edge` says."""
    log_p = np.log(softmax(np.array([[3.0, 1.0, 0.0], [0.5, 2.0, 1.0], [0.0, 0.2, 4.0]])))
    labels = np.array([0, 1, 2])
    grid = np.exp(np.linspace(math.log(T_RANGE[0]), math.log(T_RANGE[1]), 2001))
    assert all(np.diff([nll(log_p, labels, t) for t in grid]) >= 0)  # the restated NLL rises with T
    fitted = fit_temperature(torch.from_numpy(log_p), torch.from_numpy(labels))
    assert fitted == pytest.approx(T_RANGE[0], rel=1e-3)
    assert TemperatureScaled(fitted, 3, None).at_edge  # type: ignore[arg-type]
    assert not TemperatureScaled(1.0, 3, None).at_edge  # type: ignore[arg-type]


def test_nan_or_infinite_scores_fit_no_temperature(baseline_cache: Path, tmp_path: Path) -> None:
    """NaN val scores made every NLL NaN, so the search ran to the top of the range and reported T = 1000 as if the
    val images did not bound it; an infinite score gives NaN probabilities alike. Refused (`NaNScores`), and
    `inspect` says so on the line instead of a T."""
    from lathadapter.adapter.evaluate import NaNScores
    from lathadapter.adapter.temperature import temperature_scaled

    run_dir = lathadapter.fit(baseline_cache, "zeroshot", 4, 1, out=tmp_path, device="cpu")["run_dir"]
    run = lathadapter.load(run_dir, device="cpu")
    val = run.logits(run.data.val_features)
    test, labels, _ = run.test_set()
    test_scores = run.logits(test)
    for spoiled in (float("nan"), float("inf")):
        broken_val, broken_test = val.clone(), test_scores.clone()
        broken_val[0, 0] = broken_test[-1, 1] = spoiled
        for images, args in (("val", (broken_val, run.data.val_labels, test_scores, labels)),
                             ("test", (val, run.data.val_labels, broken_test, labels))):
            with pytest.raises(NaNScores, match=f"gave NaN or infinite scores on its {images} images"):
                temperature_scaled(run.method, *args)


def test_inspect_names_the_classes_whose_val_images_fit_t(baseline_cache: Path, tmp_path: Path) -> None:
    """Base-to-novel: T is fitted on the base classes' val images alone (the novel classes have none a run may see),
    and applied to the novel test set too; the line says so, with the count of base val images (4 a class here)."""
    run_dir = lathadapter.fit(baseline_cache, "zeroshot", 4, 1, classes="base", out=tmp_path, device="cpu")["run_dir"]
    run = lathadapter.load(run_dir)
    result = CliRunner().invoke(app, ["inspect", str(run_dir)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "after temperature scaling" in line]
    base_val = 4 * len(run.class_names)  # CoOp's min(shots, 4) = 4 val images of each base class
    assert len(lines) == 2 and all(line.endswith(f"fitted on {base_val} val images of the base classes)")
                                   for line in lines), result.output


def test_scaled_confidences_are_binned_in_float32_as_every_ece(monkeypatch: pytest.MonkeyPatch) -> None:
    """Five equal logits at T = 1: the scaled confidence is 0.2 in float64, float32's 0.2 (3e-9 above 3/15) when
    binned as every ECE here, so bin 3 of (b/15, (b + 1)/15]; binned in float64, 0.2 × 15 rounds to 3.0 and it went
    one bin low (helper M4's finding)."""
    from types import SimpleNamespace

    from lathadapter.adapter import temperature

    assert float(torch.tensor(0.2, dtype=torch.float32)) > 3 / 15  # the float32 value is above the edge
    monkeypatch.setattr(temperature, "fit_temperature", lambda log_p, labels: 1.0)
    method = SimpleNamespace(name="stub", probabilities=lambda scores: torch.softmax(scores, dim=-1))
    scores, labels = torch.zeros(1, 5), torch.tensor([0])
    scaled = temperature.temperature_scaled(method, scores, labels, scores, labels)  # type: ignore[arg-type]
    assert scaled is not None and scaled.temperature == 1.0
    images = scaled.scores.reliability.images
    assert sum(images) == 1 and images[3] == 1, images
