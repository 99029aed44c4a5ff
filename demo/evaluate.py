"""Zero-shot accuracy of an open_clip model on a CoOp-layout split: all classes, and base and novel halves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from PIL import Image


@torch.no_grad()
def zero_shot_accuracy(model, preprocess, tokenizer, split_file: Path, template: str, part: str = "test") -> dict:
    """Top-1 accuracy over all classes, base test images among base classes and novel among novel classes.

    Returns `{"all", "base", "novel", "hm", "chance", "chance_base", "chance_novel", "images"}`, accuracies in [0, 1].
    """
    split_file = Path(split_file)
    items = json.loads(split_file.read_text())[part]
    names = {label: name for _, label, name in items}
    labels = torch.tensor([label for _, label, _ in items])
    classes = [names[label] for label in range(len(names))]
    images = torch.stack([preprocess(Image.open(split_file.parent / path)) for path, _, _ in items])
    image_features = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
    prompts = tokenizer([template.format(name.replace("_", " ")) for name in classes])
    text_features = torch.nn.functional.normalize(model.encode_text(prompts).float(), dim=-1)
    scores = image_features @ text_features.T

    base = math.ceil(len(classes) / 2)
    is_base = labels < base
    all_accuracy = (scores.argmax(1) == labels).float().mean().item()
    base_accuracy = (scores[is_base][:, :base].argmax(1) == labels[is_base]).float().mean().item()
    novel_accuracy = (scores[~is_base][:, base:].argmax(1) + base == labels[~is_base]).float().mean().item()
    hm = 2 * base_accuracy * novel_accuracy / max(base_accuracy + novel_accuracy, 1e-12)
    return {
        "all": all_accuracy,
        "base": base_accuracy,
        "novel": novel_accuracy,
        "hm": hm,
        "chance": 1 / len(classes),
        "chance_base": 1 / base,
        "chance_novel": 1 / (len(classes) - base),
        "images": len(items),
    }
