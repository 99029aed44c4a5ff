"""The synthetic feature worlds of `cache/synthetic.py`: the CLIP-like generator's structure (same-class image
similarity well above different-class, a modality gap, class text that carries its attributes in the `attr`
variant), its determinism, and the default generator's output, pinned before the CLIP-like worlds were added."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from lathadapter.cache.store import CacheReader, FewShotData
from lathadapter.cache.synthetic import ATTRIBUTE_WORDS, FAMILIES, write_clip_world, write_synthetic_cache

# Real CLIP ViT-B/16 on Caltech or Pets: same-class image cosine about 0.75–0.85, different-class about 0.45–0.6.
MARGIN = 0.15


def load(path: Path, shots: int = 4, seed: int = 1) -> FewShotData:
    with CacheReader(path) as reader:
        return reader.load(shots, seed)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FewShotData]:
    """A plain and an attributes-in-text world of 20 classes (generator seeds 11 and 12; the study uses 9401–9404)."""
    folder = tmp_path_factory.mktemp("worlds")
    return {name: load(write_clip_world(folder / f"{name}.h5", num_classes=20, dim=96, families=4,
                                        text_attributes=name == "attr", shots=(4,), seeds=(1,), seed=seed))
            for name, seed in (("plain", 11), ("attr", 12))}


def similarities(features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cosine of the pairs of distinct images of one class, and of the pairs of images of different classes."""
    cosine = features @ features.T
    same = (labels[:, None] == labels[None]) & ~torch.eye(len(labels), dtype=torch.bool)
    return float(cosine[same].mean()), float(cosine[labels[:, None] != labels[None]].mean())


@pytest.mark.parametrize("name", ["plain", "attr"])
def test_same_class_images_are_much_closer_than_different_classes(worlds: dict[str, FewShotData],
                                                                  name: str) -> None:
    data = worlds[name]
    same, different = similarities(data.test_features, data.test_labels)
    assert same - different >= MARGIN
    assert 0.65 <= same <= 0.9 and 0.35 <= different <= 0.65  # CLIP's ranges, not the old generator's 0.3 vs 0.1


@pytest.mark.parametrize("name", ["plain", "attr"])
def test_modality_gap_and_zero_shot_with_headroom(worlds: dict[str, FewShotData], name: str) -> None:
    data = worlds[name]
    cosine = data.test_features @ data.text_features.T
    own = float(cosine[torch.arange(len(data.test_labels)), data.test_labels].mean())
    same, _ = similarities(data.test_features, data.test_labels)
    assert 0.15 <= own <= 0.45 < same  # an image is far nearer its class's images than its class's text
    zero_shot = float((cosine.argmax(1) == data.test_labels).float().mean())
    assert 1 / data.num_classes * 5 < zero_shot < 0.95


def test_the_old_generator_is_the_one_without_image_structure(tmp_path: Path) -> None:
    """Why the CLIP-like worlds exist: the default generator's same-class image cosine is about 0.3."""
    data = load(write_synthetic_cache(tmp_path / "old.h5", num_classes=20, dim=96, shots=(4,), seeds=(1,)))
    same, _ = similarities(data.test_features, data.test_labels)
    assert same < 0.5


def attribute_gaps(data: FewShotData) -> list[float]:
    """Per class: mean cosine of its text with its own attributes' vocabulary vectors (the attribute words its name
    holds) minus the mean cosine with the other attributes'."""
    cosine = data.text_features @ data.attribute_features.T
    gaps = []
    for c, name in enumerate(data.class_names):
        own = torch.tensor([word in name.split() for word in ATTRIBUTE_WORDS])
        assert int(own.sum()) == 3, name  # a colour, a pattern and a shape
        gaps.append(float(cosine[c, own].mean() - cosine[c, ~own].mean()))
    return gaps


def test_class_text_carries_its_attributes_only_in_the_attr_variant(worlds: dict[str, FewShotData]) -> None:
    attr, plain = attribute_gaps(worlds["attr"]), attribute_gaps(worlds["plain"])
    assert min(attr) > 0.02  # every class's text is nearer its own attributes' vocabulary than the others'
    assert float(np.mean(attr)) > 0.07
    assert abs(float(np.mean(plain))) < 0.03  # the name part alone: no nearer its attributes than any others


def test_names_and_phrases_read_as_words(worlds: dict[str, FewShotData]) -> None:
    data = worlds["attr"]
    assert len(set(data.class_names)) == data.num_classes
    assert all(len(name.split()) >= 4 for name in data.class_names)  # "red spotted glossy finch"
    nouns = {noun for _, family in FAMILIES for noun in family}
    assert all(any(name.endswith(noun) for noun in nouns) for name in data.class_names)


def digest(path: Path) -> str:
    """A hash of everything a fit reads from a cache: features, views, labels, norms, text, attributes, names."""
    data = load(path, 4, 2)
    h = hashlib.sha256()
    for t in (data.text_features, data.attribute_features, data.train_features, data.train_augmented,
              data.train_labels, data.val_features, data.val_labels, data.test_features, data.test_labels,
              data.text_raw, data.train_augmented_norms):
        assert t is not None
        h.update(t.numpy().astype(np.float32 if t.is_floating_point() else np.int64).tobytes())
    h.update("|".join(data.class_names).encode())
    return h.hexdigest()


def test_clip_world_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def write(name: str, seed: int) -> Path:
        return write_clip_world(tmp_path / f"{name}.h5", num_classes=8, dim=32, families=2, shots=(4,),
                                seeds=(2,), seed=seed)

    assert digest(write("a", 5)) == digest(write("b", 5))
    assert digest(write("a2", 5)) != digest(write("c", 6))


# Measured on the default generator before `write_clip_world` was added: its bytes must never change (tests pin
# metrics computed on it).
PINNED_DEFAULT = {
    "default": "2c9b5bd7d0a054ff555b2d23e4293cb97d0f70b69d459893914fec66ecf125a4",
    "small": "25ae2763874b1bd3a7f6e3280ecbf6581a869a4c98e8e1b96fb4ce96d06c0bb3",
}


def test_default_generator_output_is_unchanged(tmp_path: Path) -> None:
    default = write_synthetic_cache(tmp_path / "default.h5")
    small = write_synthetic_cache(tmp_path / "small.h5", num_classes=12, dim=32, seed=5, test_total=50, shots=(4,),
                                  seeds=(2,))
    assert digest(default) == PINNED_DEFAULT["default"]
    assert digest(small) == PINNED_DEFAULT["small"]
    data = load(default, 4, 2)
    assert float(data.train_features[0, 0]) == -0.1329345703125
    assert float(data.test_features[-1, -1]) == -0.149658203125


# `write_clip_world` at its defaults, measured before `text_signal` was added: a default call must write the same
# features, views, labels, norms, text, attributes and names.
PINNED_CLIP = {
    "plain": "20e8f56cb8e678f54a3f8b720cbd3823af14e5598ce39bfd11381d9cb21d27cf",
    "attr": "6911f3ab8a2fe8e427685d492e473451cb39cbfff8a6be2425b331dc3ee797e2",
}


def test_clip_world_default_output_is_unchanged(tmp_path: Path) -> None:
    for name, seed in (("plain", 5), ("attr", 6)):
        path = write_clip_world(tmp_path / f"{name}.h5", num_classes=8, dim=32, families=2, shots=(4,), seeds=(2,),
                                seed=seed, text_attributes=name == "attr")
        assert digest(path) == PINNED_CLIP[name]


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE restated: images grouped by the bin ((k/bins, (k+1)/bins]) of their top-1 softmax probability, the
    image-weighted mean of |accuracy − mean confidence| over the groups."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    confidence = (shifted / shifted.sum(axis=1, keepdims=True)).max(axis=1)
    correct = logits.argmax(axis=1) == labels
    group = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return sum(abs(correct[group == k].mean() - confidence[group == k].mean()) * np.mean(group == k)
               for k in np.unique(group))


def zero_shot(data: FewShotData) -> tuple[float, float]:
    """(accuracy, ECE) of zero-shot at CLIP's logit scale 100 on the test split, in numpy from the cached features."""
    images = data.test_features.double().numpy()
    text = data.text_features.double().numpy()
    images, text = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (images, text))
    logits, labels = 100 * images @ text.T, data.test_labels.numpy()
    return float(np.mean(logits.argmax(axis=1) == labels)), expected_calibration_error(logits, labels)


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FewShotData]:
    """A 40-class plain and attr world as the calibrated-worlds study writes them (generator seeds 31 and 32), each
    at text_signal None and at the study's value."""
    folder = tmp_path_factory.mktemp("twins")
    found = {}
    for kind, seed, signal in (("plain", 31, 0.04), ("attr", 32, 0.05)):
        for value in (None, signal):
            path = write_clip_world(folder / f"{kind}-{value}.h5", num_classes=40, dim=128, families=5,
                                    text_attributes=kind == "attr", test_per_class=50, shots=(4,), seeds=(1,),
                                    seed=seed, text_signal=value)
            found[f"{kind}-{'calibrated' if value else 'default'}"] = load(path)
    return found


@pytest.mark.parametrize("kind", ["plain", "attr"])
def test_text_signal_calibrates_zero_shot_and_keeps_the_images(twins: dict[str, FewShotData], kind: str) -> None:
    default, calibrated = twins[f"{kind}-default"], twins[f"{kind}-calibrated"]
    for name in ("train_features", "train_augmented", "val_features", "test_features", "test_labels"):
        assert torch.equal(getattr(default, name), getattr(calibrated, name)), name  # only the text changes
    accuracy, ece = zero_shot(default)
    accuracy_calibrated, ece_calibrated = zero_shot(calibrated)
    assert ece > 0.15  # the default world: far more confident than right
    # measured over generator seeds 31–42 at the study's values (2,000 test images): ECE 4.4–8.1 points (plain),
    # 1.5–5.9 (attr)
    assert ece_calibrated < 0.09 and ece_calibrated < ece / 3
    assert 0.5 < accuracy_calibrated < 0.75 and abs(accuracy_calibrated - accuracy) < 0.02
    cosine = calibrated.test_features @ calibrated.text_features.T
    own = float(cosine[torch.arange(len(calibrated.test_labels)), calibrated.test_labels].mean())
    assert 0.15 <= own <= 0.45  # the modality gap stays: an image is far from its class's text


def test_text_signal_keeps_the_attribute_structure(twins: dict[str, FewShotData]) -> None:
    """Text's own part shrinks as a whole: attr class text is still nearer its own attributes' words, plain not."""
    attr, plain = attribute_gaps(twins["attr-calibrated"]), attribute_gaps(twins["plain-calibrated"])
    assert min(attr) > 0
    assert float(np.mean(attr)) > 5 * abs(float(np.mean(plain)))


def test_text_signal_is_recorded_and_checked(tmp_path: Path) -> None:
    path = write_clip_world(tmp_path / "w.h5", num_classes=8, dim=32, families=2, shots=(4,), seeds=(1,),
                            text_signal=0.1)
    with CacheReader(path) as reader:
        assert reader.info().fields["text_signal"] == 0.1
    for value in (0.0, 1.5):
        with pytest.raises(ValueError) as raised:
            write_clip_world(tmp_path / "x.h5", num_classes=8, dim=32, families=2, text_signal=value)
        assert str(raised.value) == (f"text_signal={value} is not valid; give a share in (0, 1] (None: the original "
                                     "0.45)")
