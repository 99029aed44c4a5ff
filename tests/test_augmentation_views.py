"""The cache build's augmentation options and the trainer's `train_views` choice.

Oracles: torchvision's own RandomResizedCrop and RandomHorizontalFlip under the same seed; the layout of the rows a
trainer draws from, written out by hand; the run key as it was computed before `train_views` existed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from lathadapter.adapter.trainer import training_views
from lathadapter.cache.build import build
from lathadapter.cache.encode import Augmentation, augmented_views, view_seed
from lathadapter.cache.inspection import verify
from lathadapter.cache.store import CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments.run import RunConfig, fit

GENTLE = Augmentation(crop_scale=(0.8, 1.0), crop_ratio=(0.9, 1.1), flip=0.0)


def _build(coop_dataset, tiny_clip, out: Path, augmentation: Augmentation | None):
    return build(None, f"split:{coop_dataset.split_file}", out, model=str(tiny_clip.config),
                 pretrained=str(tiny_clip.checkpoint), shots=(1,), seeds=(1,), views=2, batch_size=8, workers=0,
                 device="cpu", progress=False, log=lambda message: None, augmentation=augmentation)


def test_views_equal_torchvision_with_the_chosen_scale_ratio_and_flip(coop_dataset, tiny_clip) -> None:
    normalize = tiny_clip.preprocess.transforms[-1]
    for augmentation in (GENTLE, Augmentation(crop_scale=(0.2, 0.4), crop_ratio=(0.5, 2.0), flip=1.0)):
        pipeline = T.Compose([
            T.RandomResizedCrop(32, scale=augmentation.crop_scale, ratio=augmentation.crop_ratio,
                                interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(augmentation.flip), T.ToTensor(), normalize])
        for path, _, _ in json.loads(coop_dataset.split_file.read_text())["train"][:6]:
            image = Image.open(coop_dataset.folder / path).convert("RGB")
            with torch.random.fork_rng():
                torch.manual_seed(view_seed(0, path))
                expected = torch.stack([pipeline(image) for _ in range(3)])
            ours = augmented_views(image, 3, view_seed(0, path), (32, 32), normalize.mean, normalize.std, augmentation)
            assert torch.equal(ours, expected)


def test_augmentation_is_in_the_fingerprint_and_the_default_fingerprint_is_unchanged(coop_dataset, tiny_clip,
                                                                                       tmp_path: Path) -> None:
    default = _build(coop_dataset, tiny_clip, tmp_path / "default.h5", None).path
    gentle = _build(coop_dataset, tiny_clip, tmp_path / "gentle.h5", GENTLE).path
    with h5py.File(default, "r") as f:
        fields = json.loads(f.attrs["fingerprint_json"])
        default_views = f["splits/train/augmented"][()]
    with h5py.File(gentle, "r") as f:
        gentle_fields = json.loads(f.attrs["fingerprint_json"])
        gentle_views = f["splits/train/augmented"][()]
    # the entry caches built before the option existed hold, written out
    assert fields["augmentation"] == {"crop_scale": [0.5, 1.0], "crop_ratio": [0.75, 4 / 3],
                                      "interpolation": "bicubic", "hflip": 0.5}
    assert gentle_fields["augmentation"] == {"crop_scale": [0.8, 1.0], "crop_ratio": [0.9, 1.1],
                                             "interpolation": "bicubic", "hflip": 0.0}
    assert {k: v for k, v in fields.items() if k != "augmentation"} == \
        {k: v for k, v in gentle_fields.items() if k != "augmentation"}
    assert not np.allclose(default_views, gentle_views, atol=1e-2)
    # the gentle views stay closer to the clean view than the field's crops of these small shapes
    with CacheReader(default) as a, CacheReader(gentle) as b:
        near = [float((d.train_augmented * d.train_features[:, None]).sum(-1).mean())
                for d in (a.load(1, 1), b.load(1, 1))]
    assert near[1] > near[0]


def test_a_build_without_augmented_views_trains_on_the_clean_view(coop_dataset, tiny_clip, tmp_path: Path) -> None:
    # h5py cannot select 20 rows or more at once from a dataset with an empty dimension: batches of 32 do
    out = build(None, f"split:{coop_dataset.split_file}", tmp_path / "clean.h5", model=str(tiny_clip.config),
                pretrained=str(tiny_clip.checkpoint), shots=(1, 2), seeds=(1, 2), views=0, workers=0, device="cpu",
                batch_size=32, full_train=True, progress=False, log=lambda message: None).path
    with CacheReader(out) as reader:
        data = reader.load(1, 1)
    assert data.train_augmented.shape == (len(data.train_labels), 0, data.train_features.shape[1])
    rows, count = training_views(data, "augmented")
    assert count == 1 and torch.equal(rows, data.train_features)
    assert verify(out) == []


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--crop-scale", "0.5", "expected two comma-separated numbers"),
    ("--crop-scale", "0,1", "0 < low ≤ high ≤ 1"),
    ("--crop-scale", "0.9,0.5", "0 < low ≤ high ≤ 1"),
    ("--crop-ratio", "-1,2", "0 < low ≤ high"),
    ("--flip", "1.5", "a probability"),
    ("--crop-scale", "abc", "expected two comma-separated numbers"),
])
def test_bad_augmentation_options_fail_clearly(flag: str, value: str, message: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "lathadapter.cli", "cache", "build", "--dataset", "split:nowhere.json",
               "--out", str(tmp_path / "c.h5"), flag, value]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2  # a usage mistake
    assert flag in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("views") / "synthetic.h5", num_classes=8, dim=16,
                                 shots=(4,), seeds=(1,))


def test_views_all_puts_the_clean_view_first_among_each_samples_views(cache: Path) -> None:
    with CacheReader(cache) as reader:
        data = reader.load(4, 1)
    n, v, d = data.train_augmented.shape
    rows, count = training_views(data, "all")
    assert count == v + 1 and rows.shape == (n * (v + 1), d)
    for i in range(n):
        assert torch.equal(rows[i * (v + 1)], data.train_features[i].to(rows.dtype))
        for j in range(v):
            assert torch.equal(rows[i * (v + 1) + 1 + j], data.train_augmented[i, j])
    rows, count = training_views(data, "augmented")
    assert count == v and torch.equal(rows, data.train_augmented.reshape(n * v, d))


def test_views_is_recorded_per_run_and_the_default_keeps_earlier_keys(cache: Path, tmp_path: Path) -> None:
    augmented = fit(cache, "clip-adapter", 4, 1, device="cpu", out=tmp_path, recipe="shared", epochs=3)
    every = fit(cache, "clip-adapter", 4, 1, device="cpu", out=tmp_path, recipe="shared", epochs=3, train_views="all")
    assert augmented["accuracy"] != every["accuracy"] or augmented["history"] != every["history"]
    for metrics, train_views in ((augmented, "augmented"), (every, "all")):
        config = json.loads((Path(metrics["run_dir"]) / "config.json").read_text())
        assert config["train_views"] == train_views
    # the key of a default run is the hash runs had before `train_views` existed: the identity without it
    config = RunConfig.create("clip-adapter", 4, 1, overrides={"recipe": "shared", "epochs": 3})
    with CacheReader(cache) as reader:
        fingerprint = reader.info().fingerprint
    identity = {"method": "clip-adapter", "shots": 4, "seed": 1, "classes": "all", "text": "coop", "select": "last",
                "options": dataclasses.asdict(config.options), "fingerprint": fingerprint}
    expected = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert config.key(fingerprint) == expected
    assert RunConfig.create("clip-adapter", 4, 1, overrides={"recipe": "shared", "epochs": 3},
                            train_views="all").key(fingerprint) != expected


def test_an_unknown_views_choice_is_refused(cache: Path) -> None:
    with pytest.raises(ValueError, match="train_views='clean' is not valid; choose one of: augmented, all"):
        RunConfig.create("zeroshot", 4, 1, train_views="clean")
