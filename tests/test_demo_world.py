"""The demo world leaves room for adaptation, as real CLIP's datasets do: figures measured on a cache of the demo
dataset built here with the bundled model (see demo/assets/MODEL_CARD.md for the full set)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lathadapter.cache.build import build
from lathadapter.demo import bundled_model, write_demo_dataset
from lathadapter.demo.figures import CacheFeatures, few_shot, linear_probe, read_features, zero_shot

SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("world")
    split = write_demo_dataset(folder / "data")
    model = bundled_model()
    return build(None, f"split:{split}", folder / "demo.h5", model=str(model.config),
                 pretrained=str(model.checkpoint), template=model.template, views=0,
                 shots=(16,), seeds=SEEDS, device="cpu", workers=0, full_train=True, progress=False,
                 log=lambda message: None).path


@pytest.fixture(scope="module")
def features(demo_cache: Path) -> CacheFeatures:
    return read_features(demo_cache)


def test_zero_shot_is_fair_but_leaves_headroom(features: CacheFeatures) -> None:
    overall, _ = zero_shot(features)
    assert 0.5 <= overall <= 0.7, f"zero-shot over all classes {overall:.3f}"


def test_a_linear_probe_on_all_training_images_beats_zero_shot_by_twenty_points(features: CacheFeatures) -> None:
    overall, _ = zero_shot(features)
    probe = linear_probe(features)
    assert probe >= overall + 0.2, f"linear probe {probe:.3f}, zero-shot {overall:.3f}"


def test_novel_classes_are_zero_shot_recognisable(features: CacheFeatures) -> None:
    _, novel = zero_shot(features)
    assert novel >= 0.5, f"novel-class zero-shot among novel classes {novel:.3f}"


def test_sixteen_shots_beat_zero_shot_by_ten_points(demo_cache: Path, features: CacheFeatures) -> None:
    overall, _ = zero_shot(features)
    gda = few_shot(demo_cache, ("gda",), shots=16, seeds=SEEDS)["gda"]  # training-free, so fast
    assert gda >= overall + 0.1, f"16-shot GDA {gda:.3f} (mean of seeds {SEEDS}), zero-shot {overall:.3f}"
