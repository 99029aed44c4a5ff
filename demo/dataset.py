"""The demo few-shot dataset: 36 fine-grained shape classes in the CoOp layout, seen through a shifted camera.

A class is a colour, a texture and a shape, named like a fine-grained species ("red striped star", "blue solid
ring"): classes share attribute words, and shapes form families (round, polygon, spiky). Every class name appears in
the pre-training corpus of the bundled model, so every class, novel ones included, is zero-shot recognisable.

The images are shifted away from the corpus (see `SHIFT`): a colour cast of the new camera (every hue turned),
colour jitter, pixel noise, and shapes of other sizes and positions, on the corpus's plain backgrounds (backgrounds it
never showed, noise, gradients or clutter, broke the small image tower's features in trials). Zero-shot suffers from
the shift while the features still separate the classes, so adaptation from a few labelled images has much to gain.

With classes sorted by label, the first half are base and the second half novel (the field's base-to-novel protocol);
every shape, colour and texture occurs on both sides.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from lathadapter.demo.synthetic import COLOURS, FAMILY_OF, SHAPES, Sample, Shift, render_shifted

DATASET_NAME = "DemoShapes"
SPLIT_FILE = f"split_zhou_{DATASET_NAME}.json"
ATTRIBUTES_FILE = f"attributes_{DATASET_NAME}.json"  # each image's family and attribute values, by relative path
TEMPLATE = "a photo of a {}."
IMAGE_SIZE = 48
COUNTS: tuple[int, int, int] = (24, 4, 24)  # train, val, test images per class
# More val images per class, drawn after all the others from a generator of their own (so every image of version 2
# is unchanged): tuning scores the whole val split, 16 images a class, so that one image does not decide a choice.
EXTRA_VAL = 12
SEED = 2025
# The demo world's version: raised whenever the dataset or the bundled model changes. It names the demo's folders, so
# the outputs of an earlier world are left as they were and never mix with this one's (version 1: 12 shape classes).
WORLD_VERSION = 3  # version 3: EXTRA_VAL more val images a class
# Augmented training views that suit these images (random resized crop, then a horizontal flip with this chance):
# the shapes keep clear of the borders, so crops of most of the area keep them whole, but a mirror image turns the
# stripes and the arrows the other way, which the corpus never shows, and zero-shot on flipped views collapses.
# Chosen on few-shot val accuracy by benchmarks/demo_views.py (results/demo_views.txt).
VIEW_CROP_SCALE: tuple[float, float] = (0.9, 1.0)
VIEW_CROP_RATIO: tuple[float, float] = (0.9, 1.1)
VIEW_FLIP: float = 0.0
SHIFT = Shift(backgrounds=("light", "dark"), radius=(0.16, 0.35), colour_jitter=0.1, pixel_noise=7.0, hue=30.0)


def _class_attributes() -> list[tuple[str, str, str]]:
    """(colour, texture, shape) of every class: three per shape, two sharing a colour and differing in texture."""
    colours = sorted(COLOURS)
    combos = []
    for index, shape in enumerate(SHAPES):
        first, second = colours[index % len(colours)], colours[(index + 3) % len(colours)]
        combos += [(first, "striped", shape), (first, "dotted", shape), (second, "solid", shape)]
    return combos[0::2] + combos[1::2]  # alternate classes go to the base and the novel half


CLASS_ATTRIBUTES: tuple[tuple[str, str, str], ...] = tuple(_class_attributes())
CLASSES: tuple[str, ...] = tuple(" ".join(attributes) for attributes in CLASS_ATTRIBUTES)
BASE_CLASSES: tuple[str, ...] = CLASSES[: math.ceil(len(CLASSES) / 2)]
NOVEL_CLASSES: tuple[str, ...] = CLASSES[len(BASE_CLASSES):]


def write_demo_dataset(folder: Path) -> Path:
    """Write the demo dataset to `folder` (`images/<class>/*.png`, the split file); return the split file's path.

    Also writes `ATTRIBUTES_FILE` beside the split. Deterministic: the same folder contents for every call.
    """
    folder = Path(folder)
    rng = random.Random(SEED)
    split: dict[str, list[list[object]]] = {"train": [], "val": [], "test": []}
    records: dict[str, dict[str, str]] = {}
    for label, (colour, texture, shape) in enumerate(CLASS_ATTRIBUTES):
        name = CLASSES[label].replace(" ", "_")
        (folder / "images" / name).mkdir(parents=True, exist_ok=True)
        index = 0
        for part, count in zip(("train", "val", "test"), COUNTS, strict=True):
            for _ in range(count):
                relative = f"images/{name}/{name}_{index:04d}.png"
                sample = Sample(shape, colour, texture, "varied", rng.choice(SHIFT.backgrounds))
                render_shifted(sample, rng, SHIFT, IMAGE_SIZE).save(folder / relative)
                split[part].append([relative, label, name])
                records[relative] = {"family": FAMILY_OF[shape], "shape": shape, "colour": colour,
                                     "texture": texture, "background": sample.background}
                index += 1
    extra = random.Random(SEED + 1)
    for label, (colour, texture, shape) in enumerate(CLASS_ATTRIBUTES):
        name = CLASSES[label].replace(" ", "_")
        for index in range(sum(COUNTS), sum(COUNTS) + EXTRA_VAL):
            relative = f"images/{name}/{name}_{index:04d}.png"
            sample = Sample(shape, colour, texture, "varied", extra.choice(SHIFT.backgrounds))
            render_shifted(sample, extra, SHIFT, IMAGE_SIZE).save(folder / relative)
            split["val"].append([relative, label, name])
            records[relative] = {"family": FAMILY_OF[shape], "shape": shape, "colour": colour,
                                 "texture": texture, "background": sample.background}
    split["val"].sort(key=lambda item: item[1])  # grouped by class in label order, as the split files are
    (folder / ATTRIBUTES_FILE).write_text(json.dumps(records))
    path = folder / SPLIT_FILE  # last: a split file says the images and attributes are there
    path.write_text(json.dumps(split))
    return path
