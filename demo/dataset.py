"""The demo few-shot dataset: twelve shape classes in the CoOp layout, ordered so base and novel span all families.

With classes sorted by label, the first half are base and the second half novel (the field's base-to-novel protocol).
Each family contributes two shapes to each half, and every novel class was seen in the pre-training corpus of the
bundled model only in half of the colours (`HELD_OUT_COLOURS`): its name is known, some of its looks are not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lathadapter.demo.synthetic import COLOURS, write_coop_dataset

DATASET_NAME = "DemoShapes"
SPLIT_FILE = f"split_zhou_{DATASET_NAME}.json"
ATTRIBUTES_FILE = f"attributes_{DATASET_NAME}.json"  # each image's family and attribute values, by relative path
TEMPLATE = "a photo of a {}."
IMAGE_SIZE = 48
COUNTS: tuple[int, int, int] = (32, 8, 40)  # train, val, test images per class
SEED = 2025

# Label order: labels 0-5 are base, 6-11 novel (ceil(12 / 2) = 6); two shapes of each family on each side.
CLASSES: tuple[str, ...] = (
    "circle", "ring", "triangle", "square", "star", "cross",
    "ellipse", "half disc", "pentagon", "hexagon", "plus sign", "arrow",
)
BASE_CLASSES: tuple[str, ...] = CLASSES[: math.ceil(len(CLASSES) / 2)]
NOVEL_CLASSES: tuple[str, ...] = CLASSES[len(BASE_CLASSES):]


def _held_out_colours() -> dict[str, tuple[str, ...]]:
    """Three of the six colours per novel class, rotating so that every colour is held out for three novel classes."""
    colours = sorted(COLOURS)
    return {
        shape: tuple(colours[(i + k) % len(colours)] for k in range(len(colours) // 2))
        for i, shape in enumerate(NOVEL_CLASSES)
    }


HELD_OUT_COLOURS: dict[str, tuple[str, ...]] = _held_out_colours()


def is_held_out(shape: str, colour: str) -> bool:
    """Whether the pre-training corpus never shows `shape` in `colour`."""
    return colour in HELD_OUT_COLOURS.get(shape, ())


def write_demo_dataset(folder: Path) -> Path:
    """Write the demo dataset (all attribute combinations, held-out ones included) to `folder`; return the split file.

    Also writes `ATTRIBUTES_FILE` beside the split. Deterministic: the same folder contents for every call.
    """
    return write_coop_dataset(Path(folder), DATASET_NAME, list(CLASSES), counts=COUNTS, seed=SEED,
                              image_size=IMAGE_SIZE, attributes=True)


def novel_test_subsets(split_file: Path) -> dict[str, set[str]]:
    """Novel-class test images (paths as in the split), by whether the corpus showed their class in their colour."""
    split_file = Path(split_file)
    records = json.loads((split_file.parent / ATTRIBUTES_FILE).read_text())
    novel = [(path, name.replace("_", " ")) for path, _, name in json.loads(split_file.read_text())["test"]
             if name.replace("_", " ") in NOVEL_CLASSES]
    return {
        "novel_held_out_colours": {path for path, shape in novel if is_held_out(shape, records[path]["colour"])},
        "novel_corpus_colours": {path for path, shape in novel if not is_held_out(shape, records[path]["colour"])},
    }
