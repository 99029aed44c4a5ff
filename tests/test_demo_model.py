"""The bundled tiny CLIP recognises the demo test set zero-shot; the demo dataset and corpus are deterministic."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from lathadapter.demo import bundled_model, write_demo_dataset
from lathadapter.demo.corpus import caption, corpus_sample, write_corpus
from lathadapter.demo.dataset import (
    ATTRIBUTES_FILE,
    BASE_CLASSES,
    CLASS_ATTRIBUTES,
    CLASSES,
    IMAGE_SIZE,
    NOVEL_CLASSES,
    SPLIT_FILE,
)
from lathadapter.demo.evaluate import zero_shot_accuracy
from lathadapter.demo.synthetic import FAMILY_OF, SHAPES, Sample


@pytest.fixture(scope="module")
def demo_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("demo"))


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@torch.no_grad()
def _accuracies(model, preprocess, tokenizer, split_file: Path, template: str) -> tuple[float, float]:
    """Top-1 over all test images and classes, and over novel test images among novel classes only."""
    items = json.loads(split_file.read_text())["test"]
    labels = torch.tensor([label for _, label, _ in items])
    classes = sorted({(label, name) for _, label, name in items})
    images = torch.stack([preprocess(Image.open(split_file.parent / path)) for path, _, _ in items])
    prompts = tokenizer([template.format(name.replace("_", " ")) for _, name in classes])
    image_features = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
    text_features = torch.nn.functional.normalize(model.encode_text(prompts).float(), dim=-1)
    scores = image_features @ text_features.T
    base = math.ceil(len(classes) / 2)
    novel = labels >= base
    overall = (scores.argmax(1) == labels).float().mean().item()
    novel_only = (scores[novel][:, base:].argmax(1) + base == labels[novel]).float().mean().item()
    return overall, novel_only


def test_bundled_model_zero_shot_is_far_above_chance(demo_split: Path) -> None:
    bundled = bundled_model()
    assert bundled.checkpoint.stat().st_size < 20 * 2**20, "the committed checkpoint should stay a few MB"
    open_clip.add_model_config(bundled.config)
    model, _, preprocess = open_clip.create_model_and_transforms(bundled.name, pretrained=str(bundled.checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer(bundled.name)
    overall, novel = _accuracies(model, preprocess, tokenizer, demo_split, bundled.template)
    chance, novel_chance = 1 / len(CLASSES), 1 / len(NOVEL_CLASSES)
    # The card reports far higher numbers; the margin keeps this a statement about alignment, not about a number.
    assert overall >= 3 * chance + 0.15, f"zero-shot accuracy {overall:.3f} (chance {chance:.3f})"
    assert novel >= 2 * novel_chance, f"novel-class zero-shot accuracy {novel:.3f} (chance {novel_chance:.3f})"

    # Control: the same architecture with random weights is near chance, so the accuracy comes from pre-training.
    torch.manual_seed(0)
    untrained = open_clip.create_model(bundled.name).eval()
    untrained_overall, _ = _accuracies(untrained, preprocess, tokenizer, demo_split, bundled.template)
    assert untrained_overall < 2 * chance, f"untrained model scored {untrained_overall:.3f}"


def test_demo_dataset_is_deterministic_and_in_coop_layout(demo_split: Path, tmp_path: Path) -> None:
    again = write_demo_dataset(tmp_path)
    assert again.name == demo_split.name == SPLIT_FILE
    assert _folder_bytes(tmp_path) == _folder_bytes(demo_split.parent)

    split = json.loads(demo_split.read_text())
    for part, minimum in (("train", 16), ("val", 4), ("test", 24)):
        labels = [label for _, label, _ in split[part]]
        assert labels == sorted(labels), f"{part} items are grouped by class in label order"
        assert all(labels.count(label) >= minimum for label in range(len(CLASSES)))
    first_item = split["test"][0]
    assert first_item[2] == CLASSES[0].replace(" ", "_")
    assert Image.open(demo_split.parent / first_item[0]).size == (IMAGE_SIZE, IMAGE_SIZE)


def test_demo_dataset_records_each_images_attributes(demo_split: Path) -> None:
    split = json.loads(demo_split.read_text())
    records = json.loads((demo_split.parent / ATTRIBUTES_FILE).read_text())
    assert set(records) == {path for part in split.values() for path, _, _ in part}
    for path, label, name in split["test"]:
        colour, texture, shape = CLASS_ATTRIBUTES[label]
        record = records[path]
        assert name == CLASSES[label].replace(" ", "_") == f"{colour}_{texture}_{shape.replace(' ', '_')}"
        assert (record["colour"], record["texture"], record["shape"]) == (colour, texture, shape)
        assert record["family"] == FAMILY_OF[shape]


class _FeaturesAsIs(torch.nn.Module):
    """A stand-in model whose image and text features are its inputs, so scores can be set by hand."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens


def test_zero_shot_accuracy_scores_base_and_novel_within_their_halves(tmp_path: Path) -> None:
    # Four classes (base a, b; novel c, d), one test image each; image i's features are FEATURES[i].
    features = torch.tensor([[1.0, 0, 0, 0], [0, 0.1, 0, 0.9], [0.9, 0, 0.5, 0], [0, 0, 1, 0.2]])
    items = []
    for label, name in enumerate("abcd"):
        Image.new("RGB", (1, 1), (label, 0, 0)).save(tmp_path / f"{name}.png")
        items.append([f"{name}.png", label, name])
    split_file = tmp_path / "split_zhou_Toy.json"
    split_file.write_text(json.dumps({"train": [], "val": [], "test": items}))
    result = zero_shot_accuracy(_FeaturesAsIs(), lambda image: features[image.getpixel((0, 0))[0]],
                                lambda prompts: torch.eye(len(prompts)), split_file, "{}",
                                subsets={"first_novel": {"c.png"}})
    # All classes: only image a is right. Within halves: a, b (base) and c (novel) are right, d is not.
    assert result["all"] == pytest.approx(0.25) and result["base"] == 1.0 and result["novel"] == 0.5
    assert result["hm"] == pytest.approx(2 / 3) and result["first_novel"] == 1.0 and result["chance_novel"] == 0.5


def test_classes_are_fine_grained_and_share_their_words_across_base_and_novel() -> None:
    assert len(BASE_CLASSES) == math.ceil(len(CLASSES) / 2) and len(set(CLASSES)) == len(CLASSES)
    assert all(CLASSES[label] == " ".join(attributes) for label, attributes in enumerate(CLASS_ATTRIBUTES))
    assert {shape for _, _, shape in CLASS_ATTRIBUTES} == set(SHAPES)
    for position in range(3):  # every colour, texture and shape word names base and novel classes alike
        words = {attributes[position] for attributes in CLASS_ATTRIBUTES}
        base = {attributes[position] for attributes in CLASS_ATTRIBUTES[: len(BASE_CLASSES)]}
        novel = {attributes[position] for attributes in CLASS_ATTRIBUTES[len(BASE_CLASSES):]}
        assert base == novel == words
    # Fine-grained: some classes differ only in texture, so colour and shape alone do not name them.
    assert len({(colour, shape) for colour, _, shape in CLASS_ATTRIBUTES}) < len(CLASSES)


def test_corpus_captions_name_every_class_by_its_full_name() -> None:
    rng = random.Random(3)
    for colour, texture, shape in CLASS_ATTRIBUTES:
        sample = Sample(shape, colour, texture, "small", "light")
        captions = [caption(sample, rng) for _ in range(40)]
        assert sum(f"{colour} {texture} {shape}" in text for text in captions) >= 10
    assert {corpus_sample("star", rng).colour for _ in range(300)} == {c for c, _, _ in CLASS_ATTRIBUTES}


def test_corpus_is_deterministic_and_names_every_class(tmp_path: Path) -> None:
    def read(folder: Path) -> tuple[list[str], list[bytes]]:
        with (folder / "corpus.tsv").open(newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        return [row["title"] for row in rows], [Path(row["filepath"]).read_bytes() for row in rows]

    write_corpus(tmp_path / "a", size=48, seed=5)
    write_corpus(tmp_path / "b", size=48, seed=5)
    write_corpus(tmp_path / "c", size=48, seed=6)
    titles, images = read(tmp_path / "a")
    assert (titles, images) == read(tmp_path / "b")
    assert read(tmp_path / "c")[1] != images
    assert all(SHAPES[index % len(SHAPES)] in title for index, title in enumerate(titles))
