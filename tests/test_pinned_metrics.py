"""Every method's metrics on a fixed synthetic cache, pinned before the package was reorganised into `adapter/` and
`experiments/` (commit 9defab1): moving code and typing the options must not change a single prediction, and
LatHAdapter with `radius=kind` (one radius per kind, the method as first built) reproduces them exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

import lathadapter
from lathadapter.cache.synthetic import write_synthetic_cache

FAST = {"epochs": 5, "min_steps": 60}
# LatHAdapter as it was built before the radius per point, with that time's defaults spelled out where the defaults
# studies (benchmarks/lathadapter_study.py) have since changed them: one radius per kind, lr 1e-3, λ_hier 0.1.
KIND = {"radius": "kind", "lr": 1e-3, "lambda_hier": 0.1}
SHARED = {"recipe": "shared"}  # the baselines as they ran before their official recipes (docs/baselines.md)

# (method, classes) → accuracy (%) and HM, measured on 9defab1 with the calls below
PINNED = {
    ("zeroshot", "all"): ({"all": 38.25}, None),
    ("zeroshot", "base"): ({"base": 57.5, "novel": 54.5}, 55.95982142857143),
    ("linear-probe", "all"): ({"all": 42.25}, None),
    ("linear-probe", "base"): ({"base": 61.5, "novel": None}, None),
    ("clip-adapter", "all"): ({"all": 38.0}, None),
    ("clip-adapter", "base"): ({"base": 57.0, "novel": 56.0}, 56.49557522123894),
    ("tip-adapter", "all"): ({"all": 39.25}, None),
    ("tip-adapter", "base"): ({"base": 57.5, "novel": None}, None),
    ("tip-adapter-f", "all"): ({"all": 39.25}, None),
    ("tip-adapter-f", "base"): ({"base": 57.5, "novel": None}, None),
    ("taskres", "all"): ({"all": 40.0}, None),
    ("taskres", "base"): ({"base": 59.5, "novel": 54.5}, 56.89035087719298),
    ("lathadapter", "all"): ({"all": 38.0}, None),
    ("lathadapter", "base"): ({"base": 57.0, "novel": 52.5}, 54.657534246575345),
}
# Tip-Adapter's searched α, β (all classes) and LatHAdapter's last-epoch loss parts with infer=hyper
PINNED_CHOICES = {"tip-adapter": (2.8550000190734863, 0.7900000214576721),
                  "tip-adapter-f": (2.8550000190734863, 0.4104999899864197)}
PINNED_LOSSES = {"cone": (12.780471801757812, 11.478021621704102, 2.230945110321045, 1.8697713613510132),
                 "triplet": (12.598248481750488, 11.478290557861328, 2.231764554977417, 0.04076079651713371)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pinned") / "cache.h5"
    return write_synthetic_cache(path, num_classes=20, dim=32, shots=(1, 4, 16), seeds=(1, 2))


@pytest.mark.parametrize(("method", "classes"), PINNED.keys(), ids=[f"{m}-{c}" for m, c in PINNED])
def test_metrics_equal_those_before_the_move(cache: Path, method: str, classes: str) -> None:
    options = {} if method in ("zeroshot", "tip-adapter") else FAST
    options = {**options, **KIND} if method == "lathadapter" else options
    options = {**options, **SHARED} if method not in ("zeroshot", "lathadapter") else options
    shots, seed = (4, 2) if classes == "all" else (16, 1)
    metrics = lathadapter.fit(cache, method, shots=shots, seed=seed, classes=classes, out=None, device="cpu",
                              **options)
    accuracy, hm = PINNED[(method, classes)]
    assert metrics["accuracy"] == accuracy
    assert metrics["hm"] == pytest.approx(hm)
    if method in PINNED_CHOICES and classes == "all":
        chosen = metrics["chosen"]
        assert (chosen["alpha"], chosen["beta"]) == pytest.approx(PINNED_CHOICES[method], abs=1e-6)


@pytest.mark.parametrize("hier", ["cone", "triplet"])
def test_lathadapter_losses_equal_those_before_the_move(cache: Path, hier: str) -> None:
    metrics = lathadapter.fit(cache, "lathadapter", shots=4, seed=1, out=None, device="cpu", hier=hier,
                              infer="hyper", **FAST, **KIND)
    assert metrics["accuracy"] == {"all": 37.75}
    last = metrics["history"][-1]
    assert (last["loss"], last["ce"], last["hyp"], last["hier"]) == pytest.approx(PINNED_LOSSES[hier], rel=1e-5)
