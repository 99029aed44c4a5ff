"""Zero-shot accuracy of an open_clip model on a CoOp-layout split: all classes, and base and novel halves."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Set
from pathlib import Path

import torch
from PIL import Image


@torch.no_grad()
def zero_shot_accuracy(model, preprocess, tokenizer, split_file: Path, template: str, part: str = "test",
                       subsets: Mapping[str, Set[str]] | None = None) -> dict:
    """Top-1 accuracy over all classes, and of base test images among base classes and novel among novel classes.

    Returns `{"all", "base", "novel", "hm", "chance", "chance_base", "chance_novel", "images"}` (accuracies in
    [0, 1]) and, for each named subset of image paths, the base/novel-protocol accuracy over those images.
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
    within_half = torch.where(is_base[:, None], scores[:, :base].argmax(1, keepdim=True),
                              scores[:, base:].argmax(1, keepdim=True) + base)[:, 0]
    half_correct = (within_half == labels).float()
    base_accuracy, novel_accuracy = half_correct[is_base].mean().item(), half_correct[~is_base].mean().item()
    result = {
        "all": (scores.argmax(1) == labels).float().mean().item(),
        "base": base_accuracy,
        "novel": novel_accuracy,
        "hm": 2 * base_accuracy * novel_accuracy / max(base_accuracy + novel_accuracy, 1e-12),
        "chance": 1 / len(classes),
        "chance_base": 1 / base,
        "chance_novel": 1 / (len(classes) - base),
        "images": len(items),
    }
    for name, paths in (subsets or {}).items():
        mask = torch.tensor([path in paths for path, _, _ in items])
        if not mask.any():
            raise ValueError(f"subset {name!r} holds none of the {part} images of {split_file}")
        result[name] = half_correct[mask].mean().item()
    return result
