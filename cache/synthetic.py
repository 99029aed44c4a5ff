"""Synthetic feature caches with a latent class hierarchy, shaped like real ones (for tests and benchmarks).

Features are drawn, not encoded: families → classes → images, with attribute directions shared across classes and
a modality gap between image and text features, so zero-shot is well above chance yet imperfect, as with CLIP.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lathadapter.cache.sampling import fewshot_indices, val_shots_indices
from lathadapter.cache.store import FINGERPRINT_VAL, SPLITS, CacheLayout, RawNorms, write_cache

SYNTHETIC_TEMPLATES = ("a photo of a {}.", "itap of a {}.")  # what `write_synthetic_cache` stores by default


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
    templates: tuple[str, ...] = SYNTHETIC_TEMPLATES,
) -> Path:
    """Write a complete cache at `path`; `test_total` spreads that many test images over the classes instead.

    `keep_classes` writes only those classes (relabelled in the given order, wnids kept), drawn from the same latent
    classes as a full cache of the same `seed`: a domain-shift target such as ImageNet-A's 200-class subset.
    The cache is schema 2: every vector has a raw norm, drawn in CLIP's ranges (images about 9–12, text about 7–10)
    from a generator of its own, so the features are those of a cache written without norms. `val_split` records
    that the val split written is the whole one (as `cache build --val split`), which it always is here. `templates`
    names the stored text templates (`[0]` the CoOp template): the first two get the features and norms they always
    had, any further one a perturbed copy of the first from a generator of its own (so the rest of the cache does
    not change), as a built cache stores CoOp's template and the 7 of `cache.templates.ensemble_templates`.
    """
    if len(templates) < 2:
        raise ValueError("write_synthetic_cache stores at least two templates")
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
    extra = np.random.default_rng([seed, 8])  # the further templates' own stream
    more = [_normalize(text + 0.1 * extra.standard_normal(text.shape) / np.sqrt(dim)) for _ in templates[2:]]
    more_norms = [extra.uniform(7.0, 10.0, num_classes) for _ in templates[2:]]
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
        more, more_norms = [m[keep_classes] for m in more], [n[keep_classes] for n in more_norms]
        wnids = [wnids[c] for c in keep_classes]
    scale = np.random.default_rng([seed, 7])  # the norms' own stream: the features above do not depend on it
    norms = _raw_norms(scale, labels, augmented, len(class_names), num_attributes, more_norms)
    layout = _layout(
        {"dataset": name, "num_classes": num_classes, "dim": dim, "views": views, "seed": seed,
         "train_per_class": train_per_class, "test": len(labels["test"]), "model": "synthetic",
         "keep_classes": keep_classes, "val": FINGERPRINT_VAL["split" if val_split else "subset"],
         **({} if tuple(templates) == SYNTHETIC_TEMPLATES else {"templates": list(templates)})},
        class_names, dim, views, labels, shots, seeds, list(templates),
        [f"attribute {k}" for k in range(num_attributes)], wnids, val_split)
    write_cache(Path(path), layout, features, augmented, np.stack([text, second, *more]), vocabulary, norms)
    return Path(path)


def _raw_norms(scale: np.random.Generator, labels: dict[str, np.ndarray], augmented: np.ndarray, num_classes: int,
               num_attributes: int, more_text: list[np.ndarray] | None = None) -> RawNorms:
    """Raw norms in CLIP's ranges (images 9–12, text 7–10) drawn from `scale`, a generator of their own: each split's
    images, the augmented views, the first two templates' text, the attributes; further templates' text as given."""
    return RawNorms(
        splits={split: scale.uniform(9.0, 12.0, len(labels[split])) for split in SPLITS},
        augmented=scale.uniform(9.0, 12.0, augmented.shape[:2]),
        text=np.concatenate([scale.uniform(7.0, 10.0, (2, num_classes)),
                             np.reshape(more_text or [], (-1, num_classes))]),
        attributes=scale.uniform(7.0, 10.0, num_attributes),
    )


def _layout(fingerprint: dict[str, object], class_names: list[str], dim: int, views: int,
            labels: dict[str, np.ndarray], shots: tuple[int, ...], seeds: tuple[int, ...], templates: list[str],
            attribute_phrases: list[str], wnids: list[str], val_split: bool) -> CacheLayout:
    """A synthetic cache's layout: placeholder image paths, CoOp's few-shot subset of every (shots, seed) drawn as a
    built cache draws them and, with `val_split` (the whole val split written), LP++'s K-shot val set of each."""
    subsets = {
        (k, s): fewshot_indices(labels["train"].tolist(), labels["val"].tolist(), k, s) for k in shots for s in seeds
    }
    val_shots = ({key: val_shots_indices(labels["train"].tolist(), labels["val"].tolist(), *key) for key in subsets}
                 if val_split else {})
    return CacheLayout(
        fingerprint=fingerprint,
        class_names=class_names,
        embed_dim=dim,
        views=views,
        paths={split: [f"{split}/{i:06d}.png" for i in range(len(ls))] for split, ls in labels.items()},
        labels={split: ls.tolist() for split, ls in labels.items()},
        subsets=subsets,
        templates=templates,
        attribute_phrases=attribute_phrases,
        wnids=wnids,
        val_shots=val_shots,
    )


# The CLIP-like worlds (`write_clip_world`): families with the nouns that end their class names, and the attribute
# words shared by every family. A class name is "<colour> <pattern> <shape> <noun>", e.g. "red spotted glossy finch".
FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bird", ("finch", "warbler", "jay", "tanager", "wren")),
    ("butterfly", ("swallowtail", "skipper", "admiral", "fritillary", "hairstreak")),
    ("flower", ("lily", "orchid", "poppy", "iris", "aster")),
    ("beetle", ("weevil", "ladybird", "longhorn", "scarab", "chafer")),
    ("fish", ("wrasse", "tetra", "cichlid", "goby", "damselfish")),
    ("mushroom", ("bolete", "milkcap", "webcap", "puffball", "chanterelle")),
    ("snake", ("racer", "kingsnake", "viper", "boa", "garter snake")),
    ("frog", ("tree frog", "poison frog", "reed frog", "toad", "leopard frog")),
)
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "black", "white")
PATTERNS = ("striped", "spotted", "banded", "mottled", "plain", "speckled")
SHAPES = ("slender", "stout", "glossy", "hairy", "ridged", "rounded")
ATTRIBUTE_WORDS: tuple[str, ...] = COLOURS + PATTERNS + SHAPES
# Squared shares of an image feature's norm before normalisation (the common direction, the family, the class, its
# attributes, nuisance shared by all classes, isotropic noise), and the ambiguity weights: the std of an image's
# random weight on each class of its family and on each attribute direction. Chosen so that, at D = 128 and 40
# classes, same-class image cosine is about 0.75, different-class about 0.5, and a 16-shot nearest class mean
# reaches about 85 % (zero-shot 50–70 %).
COMMON_SHARE, FAMILY_SHARE, CLASS_SHARE, ATTRIBUTE_SHARE, NUISANCE_SHARE, NOISE_SHARE = 0.55, 0.2, 0.1, 0.05, 0.06, 0.03
LEAK_CLASS, LEAK_ATTRIBUTE = 0.15, 0.035


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return _normalize(rng.standard_normal(shape))


def _partner(rng: np.random.Generator, directions: np.ndarray, agreement: np.ndarray | float) -> np.ndarray:
    """The other modality's version of each direction: cosine about `agreement` with it, the rest a private part."""
    agreement = np.asarray(agreement, dtype=np.float64).reshape(-1, 1) if np.ndim(agreement) else agreement
    private = _unit(rng, *directions.shape)
    private = _normalize(private - (private * directions).sum(-1, keepdims=True) * directions)
    return _normalize(agreement * directions + np.sqrt(1 - np.square(agreement)) * private)


TEXT_SIGNAL = 0.45  # `write_clip_world`'s share of a text feature that is its own: 0.35 name or word, 0.1 noise


def _text_weights(text_signal: float | None) -> tuple[float, float, float, float]:
    """Weights of a text feature's common direction, its name (or word) part and its noise, and the second
    template's perturbation: the own parts share `text_signal` in their original 0.35 : 0.1 ratio, and the second
    template moves the own part as much relative to its size (None: the original weights, bit for bit)."""
    if text_signal is None:
        return float(np.sqrt(0.55)), float(np.sqrt(0.35)), float(np.sqrt(0.1)), 0.3
    shrink = text_signal / TEXT_SIGNAL
    return (float(np.sqrt(1 - text_signal)), float(np.sqrt(0.35 * shrink)), float(np.sqrt(0.1 * shrink)),
            0.3 * float(np.sqrt(shrink)))


def write_clip_world(
    path: Path,
    num_classes: int = 40,
    dim: int = 128,
    families: int = 5,
    text_attributes: bool = False,
    train_per_class: int = 20,
    val_per_class: int = 6,
    test_per_class: int = 20,
    views: int = 4,
    shots: tuple[int, ...] = (1, 2, 4, 8, 16),
    seeds: tuple[int, ...] = (1, 2, 3),
    seed: int = 0,
    name: str = "clipworld",
    text_signal: float | None = None,
) -> Path:
    """Write a synthetic cache shaped like CLIP ViT-B/16 features of a fine-grained dataset, at `path`.

    Why a second generator: `write_synthetic_cache` (kept unchanged, since tests pin metrics computed on it) puts
    images of one class only about 0.3 apart in cosine from 0.1 for other classes, so a key–value cache such as
    Tip-Adapter's sees almost no structure. Here, as measured on real CLIP, every image shares a large common
    component (different-class cosine about 0.5, same-class about 0.8), text features share another one (the
    modality gap: matching image–text cosine about 0.3), and zero-shot is well above chance with headroom.

    Structure: families → classes; every class has one colour, one pattern and one shape attribute (its name says
    them: "red spotted glossy finch"), drawn so that attributes are shared across classes and families. An image
    is the image-side common direction + its family + its class + its class's attribute directions (weights varying
    per image) + nuisance directions shared by all classes (background, light) + noise. Text lives in its own
    modality: every concept has a text direction that agrees only partly with its image direction, and with
    `text_attributes` a class's text is its name part plus its attributes' text directions (as fine-grained names
    carry attribute words), otherwise the name part alone. The attribute vocabulary holds the attribute words' text
    features (phrases "red", "spotted", …), so LatHAdapter's attribute prompts start from them.

    `text_signal` is the share of a text feature's squared norm that is its own (name, attributes, noise), the
    common text direction holding the rest: None keeps the original 0.45, whose image–text cosines differ between
    classes by so much that CLIP's logit scale 100 makes zero-shot far more confident than right (ECE 19–35 points);
    a smaller share shrinks every such difference alike (the argmax barely moves), e.g. 0.05 for a CLIP-like ECE.
    """
    if families < 1 or families > len(FAMILIES):
        raise ValueError(f"families must be 1..{len(FAMILIES)}")
    if text_signal is not None and not 0 < text_signal <= 1:
        raise ValueError(f"text_signal={text_signal!r} is not valid; give a share in (0, 1] (None: the original 0.45)")
    rng = np.random.default_rng([seed, 1801])
    family_of = np.arange(num_classes) % families
    # Attribute triplets (colour, pattern, shape): distinct within a family, so every class name is unique.
    triplets: list[tuple[int, int, int]] = []
    nouns: list[str] = []
    used: set[tuple[int, int, int, int]] = set()
    for c in range(num_classes):
        family = int(family_of[c])
        while True:
            triplet = (int(rng.integers(len(COLOURS))), int(rng.integers(len(PATTERNS))),
                       int(rng.integers(len(SHAPES))))
            if (family, *triplet) not in used:
                used.add((family, *triplet))
                break
        triplets.append(triplet)
        options = FAMILIES[family][1]
        nouns.append(options[int(rng.integers(len(options)))])
    class_attributes = np.array([[t[0], len(COLOURS) + t[1], len(COLOURS) + len(PATTERNS) + t[2]] for t in triplets])
    class_names = [f"{COLOURS[t[0]]} {PATTERNS[t[1]]} {SHAPES[t[2]]} {noun}" for t, noun in zip(triplets, nouns,
                                                                                              strict=True)]
    num_attributes = len(ATTRIBUTE_WORDS)

    # Image side: unit directions of every concept (weighted by the shares above).
    common_image = _unit(rng, dim)
    family_dirs = _unit(rng, families, dim)
    class_dirs = _unit(rng, num_classes, dim)
    attribute_dirs = _unit(rng, num_attributes, dim)
    nuisance_dirs = _unit(rng, 8, dim)
    # Text side: its own common direction (the modality gap) and partial agreement with each concept's image side.
    common_text = _partner(rng, common_image[None], 0.2)[0]
    family_text = _partner(rng, family_dirs, 0.7)
    class_text = _partner(rng, class_dirs, rng.uniform(0.7, 1.0, num_classes))
    attribute_text = _partner(rng, attribute_dirs, 0.75)

    same_family = (family_of[:, None] == family_of[None]).astype(np.float64)

    def images(labels: np.ndarray) -> np.ndarray:
        n = len(labels)
        # Ambiguity, the within-class variance that confuses classes: random weights on the other classes of the
        # family and on every attribute, on top of the class's own attributes (weights varying per image).
        attribute_weights = rng.uniform(0.3, 1.7, (n, 3, 1)) * np.sqrt(ATTRIBUTE_SHARE / 3)
        parts = (attribute_weights * attribute_dirs[class_attributes[labels]]).sum(axis=1)
        parts += rng.standard_normal((n, num_attributes)) @ attribute_dirs * LEAK_ATTRIBUTE
        confusion = rng.standard_normal((n, num_classes)) * same_family[labels] * LEAK_CLASS
        nuisance = rng.standard_normal((n, len(nuisance_dirs))) @ nuisance_dirs * np.sqrt(NUISANCE_SHARE / 8)
        noise = rng.standard_normal((n, dim)) / np.sqrt(dim) * np.sqrt(NOISE_SHARE)
        return _normalize(np.sqrt(COMMON_SHARE) * common_image + np.sqrt(FAMILY_SHARE) * family_dirs[family_of[labels]]
                          + np.sqrt(CLASS_SHARE) * class_dirs[labels] + confusion @ class_dirs + parts + nuisance
                          + noise)

    per_split = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    labels = {split: np.repeat(np.arange(num_classes), n) for split, n in per_split.items()}
    features = {split: images(split_labels) for split, split_labels in labels.items()}
    # Augmented views: crops and flips move a feature a little (cosine to the clean view about 0.9).
    augmented = _normalize(features["train"][:, None, :] + rng.standard_normal(
        (len(labels["train"]), views, dim)) / np.sqrt(dim) * 0.45)

    semantic = 0.3 * family_text[family_of] + class_text
    if text_attributes:
        semantic = semantic + 0.4 * attribute_text[class_attributes].sum(axis=1)
    text_noise = rng.standard_normal((2, num_classes, dim)) / np.sqrt(dim)
    common, own, own_noise, template_noise = _text_weights(text_signal)
    text = _normalize(common * common_text + own * _normalize(semantic) + own_noise * text_noise[0])
    second = _normalize(text + template_noise * text_noise[1])
    vocabulary = _normalize(common * common_text + own * attribute_text
                            + own_noise * rng.standard_normal((num_attributes, dim)) / np.sqrt(dim))

    scale = np.random.default_rng([seed, 1802])
    norms = _raw_norms(scale, labels, augmented, num_classes, num_attributes)
    layout = _layout(
        {"dataset": name, "num_classes": num_classes, "dim": dim, "views": views, "seed": seed,
         "families": families, "text_attributes": text_attributes, "train_per_class": train_per_class,
         "test": len(labels["test"]), "model": "synthetic-clip", "val": FINGERPRINT_VAL["split"],
         **({} if text_signal is None else {"text_signal": text_signal})},
        class_names, dim, views, labels, shots, seeds, ["a photo of a {}.", "itap of a {}."], list(ATTRIBUTE_WORDS),
        [f"s{c:08d}" for c in range(num_classes)], val_split=True)
    write_cache(Path(path), layout, features, augmented, np.stack([text, second]), vocabulary, norms)
    return Path(path)
