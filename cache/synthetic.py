"""Synthetic feature caches with a latent class hierarchy, shaped like real ones (for tests and benchmarks).

Features are drawn, not encoded: families → classes → images, with attribute directions shared across classes and
a modality gap between image and text features, so zero-shot is well above chance yet imperfect, as with CLIP.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lathadapter.cache.sampling import fewshot_indices
from lathadapter.cache.store import SPLITS, CacheLayout, RawNorms, write_cache


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def write_synthetic_cache(
    path: Path,
    num_classes: int = 20,
    dim: int = 64,
    train_per_class: int = 20,
    val_per_class: int = 6,
    test_per_class: int = 20,
    views: int = 4,
    shots: tuple[int, ...] = (1, 2, 4, 8, 16),
    seeds: tuple[int, ...] = (1, 2, 3),
    families: int = 4,
    num_attributes: int = 32,
    image_noise: float = 0.6,
    text_noise: float = 0.3,
    seed: int = 0,
    test_total: int | None = None,
    keep_classes: list[int] | None = None,
    name: str = "synthetic",
    val_split: bool = True,
) -> Path:
    """Write a complete cache at `path`; `test_total` spreads that many test images over the classes instead.

    `keep_classes` writes only those classes (relabelled in the given order, wnids kept), drawn from the same latent
    classes as a full cache of the same `seed`: a domain-shift target such as ImageNet-A's 200-class subset.
    The cache is schema 2: every vector has a raw norm, drawn in CLIP's ranges (images about 9–12, text about 7–10)
    from a generator of its own, so the features are those of a cache written without norms. `val_split` records
    that the val split written is the whole one (as `cache build --val all`), which it always is here.
    """
    rng = np.random.default_rng(seed)
    family_means = _normalize(rng.standard_normal((families, dim)))
    family_of = np.arange(num_classes) % families
    centres = _normalize(family_means[family_of] + 0.7 * _normalize(rng.standard_normal((num_classes, dim))))
    attributes = _normalize(rng.standard_normal((num_attributes, dim)))
    class_attributes = np.stack([rng.choice(num_attributes, 3, replace=False) for _ in range(num_classes)])
    image_gap, text_gap = 0.5 * _normalize(rng.standard_normal(dim)), 0.5 * _normalize(rng.standard_normal(dim))

    def images(labels: np.ndarray) -> np.ndarray:
        weights = rng.uniform(0.0, 0.6, (len(labels), 3, 1))
        parts = (weights * attributes[class_attributes[labels]]).sum(axis=1)
        noise = image_noise * rng.standard_normal((len(labels), dim)) / np.sqrt(dim) * 3
        return _normalize(centres[labels] + parts + noise + image_gap)

    per_split = {"train": train_per_class, "val": val_per_class}
    labels = {split: np.repeat(np.arange(num_classes), n) for split, n in per_split.items()}
    if test_total is None:
        labels["test"] = np.repeat(np.arange(num_classes), test_per_class)
    else:
        labels["test"] = np.sort(np.arange(test_total) % num_classes)
    features = {split: images(split_labels) for split, split_labels in labels.items()}
    augmented = _normalize(features["train"][:, None, :] + 0.25 * rng.standard_normal(
        (len(labels["train"]), views, dim)) / np.sqrt(dim) * 3)
    text = _normalize(centres + text_noise * rng.standard_normal((num_classes, dim)) / np.sqrt(dim) * 3 + text_gap)
    second = _normalize(text + 0.1 * rng.standard_normal(text.shape) / np.sqrt(dim))
    vocabulary = _normalize(attributes + 0.3 * rng.standard_normal(attributes.shape) / np.sqrt(dim) * 3 + text_gap)
    class_names = [f"class_{c:04d}" for c in range(num_classes)]
    wnids = [f"n{c:08d}" for c in range(num_classes)]
    if keep_classes is not None:
        lookup = {c: i for i, c in enumerate(keep_classes)}
        for split in list(labels):
            keep = np.isin(labels[split], keep_classes)
            if split == "train":
                augmented = augmented[keep]
            features[split] = features[split][keep]
            labels[split] = np.array([lookup[c] for c in labels[split][keep]], dtype=np.int64)
        text, second, class_names = text[keep_classes], second[keep_classes], [class_names[c] for c in keep_classes]
        wnids = [wnids[c] for c in keep_classes]
    scale = np.random.default_rng([seed, 7])  # the norms' own stream: the features above do not depend on it
    norms = RawNorms(
        splits={split: scale.uniform(9.0, 12.0, len(labels[split])) for split in SPLITS},
        augmented=scale.uniform(9.0, 12.0, augmented.shape[:2]),
        text=scale.uniform(7.0, 10.0, (2, len(class_names))),
        attributes=scale.uniform(7.0, 10.0, num_attributes),
    )
    subsets = {
        (k, s): fewshot_indices(labels["train"].tolist(), labels["val"].tolist(), k, s) for k in shots for s in seeds
    }
    layout = CacheLayout(
        fingerprint={"dataset": name, "num_classes": num_classes, "dim": dim, "views": views, "seed": seed,
                     "train_per_class": train_per_class, "test": len(labels["test"]), "model": "synthetic",
                     "keep_classes": keep_classes, "val": "all" if val_split else "subsets"},
        class_names=class_names,
        embed_dim=dim,
        views=views,
        paths={split: [f"{split}/{i:06d}.png" for i in range(len(ls))] for split, ls in labels.items()},
        labels={split: ls.tolist() for split, ls in labels.items()},
        subsets=subsets,
        templates=["a photo of a {}.", "itap of a {}."],
        attribute_phrases=[f"attribute {k}" for k in range(num_attributes)],
        wnids=wnids,
    )
    write_cache(Path(path), layout, features, augmented, np.stack([text, second]), vocabulary, norms)
    return Path(path)
