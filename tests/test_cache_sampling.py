"""CoOp few-shot subsets against a literal re-implementation of Dassl's sampler, and the base/novel split."""

from __future__ import annotations

import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

import h5py
import pytest
import torch

from lathadapter.cache.build import build
from lathadapter.cache.inspection import summary, verify
from lathadapter.cache.sampling import base_novel_classes, fewshot_indices, val_shots_indices
from lathadapter.cache.store import CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache


def dassl_fewshot(train: list[tuple[str, int]], val: list[tuple[str, int]] | None, shots: int, seed: int):
    """Dassl as CoOp runs it: `random.seed`, then `generate_fewshot_dataset` on train, then on val (min(K, 4))."""
    random.seed(seed)

    def generate(source: list[tuple[str, int]], num_shots: int) -> list[tuple[str, int]]:
        tracker: defaultdict[int, list[tuple[str, int]]] = defaultdict(list)
        for item in source:
            tracker[item[1]].append(item)
        dataset: list[tuple[str, int]] = []
        for items in tracker.values():
            dataset.extend(random.sample(items, num_shots) if len(items) >= num_shots else items)
        return dataset

    sampled_train = generate(train, shots)
    sampled_val = generate(val, min(shots, 4)) if val is not None else []
    return sampled_train, sampled_val


def _items(labels: list[int], split: str) -> list[tuple[str, int]]:
    return [(f"{split}/{i:03d}.jpg", label) for i, label in enumerate(labels)]


@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_subsets_equal_dassl_on_grouped_and_unordered_lists(shots: int, seed: int) -> None:
    rng = random.Random(99)
    grouped = [c for c in range(7) for _ in range(rng.randint(3, 20))]  # split_zhou: grouped by label
    shuffled = grouped[:]
    rng.shuffle(shuffled)  # FGVCAircraft's txt files: labels in file order, groups by first appearance
    val_labels = [c for c in range(7) for _ in range(rng.randint(1, 6))]
    for train_labels in (grouped, shuffled):
        train, val = _items(train_labels, "train"), _items(val_labels, "val")
        expected_train, expected_val = dassl_fewshot(train, val, shots, seed)
        train_rows, val_rows = fewshot_indices(train_labels, val_labels, shots, seed)
        assert [train[i] for i in train_rows] == expected_train
        assert [val[i] for i in val_rows] == expected_val


def lpp_official_val(train: list[tuple[str, int]], val: list[tuple[str, int]], shots: int, seed: int
                     ) -> list[tuple[str, int]]:
    """LP++'s `main.py` for task `seed - 1`: `random.seed(seed)`, `generate_fewshot_dataset_(shots, "train")`, then
    `(shots, "val")`, with its `generate_fewshot_dataset` (`repeat=True`: a class with fewer items than `shots` is
    drawn with `random.choices`)."""
    random.seed(seed)

    def generate(source: list[tuple[str, int]]) -> list[tuple[str, int]]:
        tracker: defaultdict[int, list[tuple[str, int]]] = defaultdict(list)
        for item in source:
            tracker[item[1]].append(item)
        dataset: list[tuple[str, int]] = []
        for items in tracker.values():
            dataset.extend(random.sample(items, shots) if len(items) >= shots else random.choices(items, k=shots))
        return dataset

    generate(train)
    return generate(val)


@pytest.mark.parametrize("shots", [1, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 3])
def test_lpp_val_set_equals_the_official_draw(shots: int, seed: int) -> None:
    rng = random.Random(7)
    # Some classes have fewer than 8 or 16 train or val images: the official sampler repeats them, which also moves
    # the stream for the classes after them.
    train_labels = [c for c in range(6) for _ in range(rng.randint(5, 24))]
    rng.shuffle(train_labels)
    val_labels = [c for c in range(6) for _ in range(rng.randint(3, 20))]
    train, val = _items(train_labels, "train"), _items(val_labels, "val")
    rows = val_shots_indices(train_labels, val_labels, shots, seed)
    assert [val[i] for i in rows] == lpp_official_val(train, val, shots, seed)
    assert len(rows) == 6 * shots
    if shots > 4:
        assert len(set(rows)) < len(rows), "a class with fewer val images than shots repeats some"


@pytest.mark.parametrize("shots", [1, 2, 4])
def test_lpp_val_set_is_coops_val_subset_when_every_class_has_enough(shots: int) -> None:
    """At K ≤ 4, with K train and val images in every class, both samplers draw alike: LP++'s val set is CoOp's."""
    train_labels = [c for c in range(5) for _ in range(12)]
    val_labels = [c for c in range(5) for _ in range(6)]
    for seed in (1, 2, 3):
        assert val_shots_indices(train_labels, val_labels, shots, seed) == \
            fewshot_indices(train_labels, val_labels, shots, seed)[1]


def test_a_val_split_build_stores_lpps_val_set_as_drawn_officially(coop_dataset, tiny_clip, tmp_path: Path) -> None:
    """`cache build --val split` stores, per subset, LP++'s own K-shot val set (`val_shots`): read back with h5py and
    mapped to paths, it is the official draw from the split file (6 val images a class, so at K = 8 some repeat)."""
    split = json.loads(coop_dataset.split_file.read_text())
    train = [(path, label) for path, label, _ in split["train"]]
    val = [(path, label) for path, label, _ in split["val"]]
    out = tmp_path / "all.h5"
    options = dict(model=str(tiny_clip.config), pretrained=str(tiny_clip.checkpoint), shots=(2, 8), seeds=(1, 2),
                   views=1, batch_size=16, workers=0, device="cpu", progress=False, log=lambda message: None)
    build(None, f"split:{coop_dataset.split_file}", out, val="split", **options)
    with h5py.File(out, "r") as f:
        paths = f["splits/val/paths"].asstr()[()].tolist()
        labels = f["splits/val/labels"][()].tolist()
        for shots, seed in ((2, 1), (8, 1), (8, 2)):
            rows = f[f"subsets/shots_{shots}_seed_{seed}/val_shots"][()].tolist()
            assert [(paths[r], labels[r]) for r in rows] == lpp_official_val(train, val, shots, seed)
    assert verify(out) == []
    with CacheReader(out) as reader:
        data = reader.load(8, 2)
    expected = lpp_official_val(train, val, 8, 2)
    assert data.val_shots_labels is not None and data.val_shots_features is not None
    assert sorted(data.val_shots_labels.tolist()) == sorted(label for _, label in expected)
    assert data.val_shots_features.shape == (len(expected), 32)
    assert len(data.val_labels) == 4 * len(set(labels))  # CoOp's val subset: min(K, 4) a class
    assert dict(summary(out))["val"].endswith("· LP++'s K-shot val sets")
    # a --val split cache written before LP++'s val sets were stored: loads without them, and `cache info` says so
    older = tmp_path / "older.h5"
    shutil.copy(out, older)
    with h5py.File(older, "r+") as f:
        for group in f["subsets"].values():
            del group["val_shots"]
    with CacheReader(older) as reader:
        assert reader.load(8, 1).val_shots_features is None
    assert "no LP++ K-shot val sets" in dict(summary(older))["val"] and verify(older) == []
    subsets_only = tmp_path / "subsets.h5"
    build(None, f"split:{coop_dataset.split_file}", subsets_only, **options)
    with h5py.File(subsets_only, "r") as f:
        assert "val_shots" not in f["subsets/shots_8_seed_1"]
    with CacheReader(subsets_only) as reader:
        assert reader.load(8, 1).val_shots_features is None


def test_imagenet_draws_no_val_subset_and_each_shot_count_is_its_own_draw() -> None:
    labels = [c for c in range(5) for _ in range(30)]
    train, val = fewshot_indices(labels, None, 2, 1)
    expected, _ = dassl_fewshot(_items(labels, "train"), None, 2, 1)
    assert val == [] and [_items(labels, "train")[i] for i in train] == expected
    one, _ = fewshot_indices(labels, None, 1, 1)
    assert not set(one) <= set(train)  # the 1-shot draw is not the first element of the 2-shot draw
    with pytest.raises(ValueError, match="shots must be at least 1"):
        fewshot_indices(labels, None, 0, 1)


def test_base_novel_split_by_hand() -> None:
    assert base_novel_classes([0, 1, 2, 3, 4]) == ([0, 1, 2], [3, 4])
    assert base_novel_classes([3, 2, 1, 0, 3, 3]) == ([0, 1], [2, 3])
    assert base_novel_classes([5, 0, 2, 2]) == ([0, 2], [5])
    assert base_novel_classes(list(range(37))) == (list(range(19)), list(range(19, 37)))  # OxfordPets: 19 base


def test_base_and_novel_halves_are_relabelled_from_zero(tmp_path: Path) -> None:
    path = write_synthetic_cache(tmp_path / "s.h5", num_classes=5, dim=16, train_per_class=6, test_per_class=3,
                                 views=2, shots=(4,), seeds=(1,))
    with CacheReader(path) as reader:
        data = reader.load(4, 1)
    base, novel = base_novel_classes(data.test_labels.tolist())
    assert (base, novel) == ([0, 1, 2], [3, 4])
    novel_data = data.select_classes(novel)
    keep = data.test_labels >= 3
    assert novel_data.class_names == data.class_names[3:]
    assert torch.equal(novel_data.test_labels, data.test_labels[keep] - 3)
    assert torch.equal(novel_data.test_features, data.test_features[keep])
    assert torch.equal(novel_data.text_features, data.text_features[3:])
    base_data = data.select_classes(base)
    assert torch.equal(base_data.train_labels, data.train_labels[data.train_labels < 3])
    assert torch.equal(base_data.train_augmented, data.train_augmented[data.train_labels < 3])
    assert sorted(set(base_data.val_labels.tolist())) == [0, 1, 2]
    # every per-sample and per-class field, against rows picked here one by one; [4, 1]: relabelled in the order given
    assert data.text_raw is not None and data.template_raw is not None and data.search_labels is not None
    for classes in (base, novel, [4, 1]):
        picked = data.select_classes(classes)
        for features, labels in (("train_features", "train_labels"), ("train_augmented", "train_labels"),
                                 ("train_augmented_norms", "train_labels"), ("val_features", "val_labels"),
                                 ("test_features", "test_labels"), ("search_features", "search_labels"),
                                 ("val_shots_features", "val_shots_labels")):
            source, source_labels = getattr(data, features), getattr(data, labels).tolist()
            rows = [i for i, label in enumerate(source_labels) if label in classes]
            assert rows, features
            torch.testing.assert_close(getattr(picked, features), source[rows], rtol=0, atol=0, msg=features)
            assert getattr(picked, labels).tolist() == [classes.index(source_labels[i]) for i in rows], labels
        assert picked.class_names == [data.class_names[c] for c in classes]
        assert picked.wnids == [data.wnids[c] for c in classes]
        for name, expected in (("text_features", data.text_features[classes]), ("text_raw", data.text_raw[classes]),
                               ("template_raw", data.template_raw[:, classes])):
            torch.testing.assert_close(getattr(picked, name), expected, rtol=0, atol=0, msg=name)
        assert picked.attribute_features is data.attribute_features and picked.templates == data.templates
