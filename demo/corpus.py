"""The captioned pre-training corpus of the bundled tiny CLIP: rendered shapes and captions, as open_clip's CSV input.

Every shape is drawn in every colour and texture, in the corpus's own look (plain light or dark background, two
sizes, exact colours, no noise). Half of the captions name the image by its full fine-grained name (colour, texture,
shape: the form of the demo dataset's class names, so every class name is in the corpus); the others name the shape
with a random subset of its attributes. Some name the family or the background, in a few phrasings.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from lathadapter.demo.synthetic import FAMILY_OF, SHAPES, Sample, random_sample, render

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {phrase}.",
    "a {phrase}.",
    "a picture of a {phrase}.",
    "a photo of a {phrase}, a kind of {family} shape.",
    "a {phrase} on a {background} background.",
    "a photo of a {phrase} on a {background} background.",
    "a {family} shape: a {phrase}.",
)
FULL_NAME_PROBABILITY = 0.5  # how often a caption names colour, texture and shape together, as the class names do


def caption(sample: Sample, rng: random.Random) -> str:
    """A caption naming `sample`'s shape: with its colour and texture (and maybe size) as in the class names, or
    with each of size, colour and texture with probability 1/2."""
    if rng.random() < FULL_NAME_PROBABILITY:
        words = [sample.size] if rng.random() < 0.3 else []
        words += [sample.colour, sample.texture]
    else:
        words = [w for w in (sample.size, sample.colour, sample.texture) if rng.random() < 0.5]
    phrase = " ".join([*words, sample.shape])
    template = rng.choice(CAPTION_TEMPLATES)
    return template.format(phrase=phrase, family=FAMILY_OF[sample.shape], background=sample.background)


def corpus_sample(shape: str, rng: random.Random) -> Sample:
    """Random attributes for one corpus image of `shape`: every colour, texture, size and plain background."""
    return random_sample(shape, rng)


def write_corpus(folder: Path, size: int, seed: int = 0, image_size: int = 48) -> Path:
    """Render `size` captioned images (shapes in turn, attributes at random) into `folder`; return the TSV path.

    The TSV has a header `filepath<TAB>title` and absolute image paths, as open_clip_train's CSV mode reads it.
    Deterministic from `seed`.
    """
    if size < 1:
        raise ValueError(f"corpus size must be at least 1, got {size}")
    folder = Path(folder).resolve()
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for index in range(size):
        sample = corpus_sample(SHAPES[index % len(SHAPES)], rng)
        path = folder / "images" / f"{index:06d}.png"
        render(sample, rng, image_size).save(path)
        rows.append((str(path), caption(sample, rng)))
    tsv = folder / "corpus.tsv"
    with tsv.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(("filepath", "title"))
        writer.writerows(rows)
    return tsv
