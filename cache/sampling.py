"""Few-shot subsets exactly as CoOp/Dassl draw them, and the base-to-novel class split."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def _draw(labels: Sequence[int], shots: int, rng: random.Random, repeat: bool = False) -> list[int]:
    """Dassl's `generate_fewshot_dataset` for one list: per label group (first-appearance order), sample `shots`; a
    group with fewer is taken whole, or with `repeat` (Tip-Adapter's and LP++'s copy of it, `repeat=True`) drawn
    with replacement (`random.choices`), so its images repeat."""
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(int(label), []).append(index)
    chosen: list[int] = []
    for indices in groups.values():
        if len(indices) >= shots:
            chosen.extend(rng.sample(indices, shots))
        else:
            chosen.extend(rng.choices(indices, k=shots) if repeat else indices)
    return chosen


def fewshot_indices(train_labels: Sequence[int], val_labels: Sequence[int] | None, shots: int,
                    seed: int) -> tuple[list[int], list[int]]:
    """Indices of CoOp's few-shot train and val subsets for (`shots`, `seed`).

    `random.seed(seed)`, then the train draw (`shots` per class), then from the same stream the val draw
    (`min(shots, 4)` per class). `val_labels=None` (ImageNet) draws no val subset. Order is Dassl's order.
    """
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    rng = random.Random(seed)  # same stream as random.seed(seed) followed by module-level random calls
    train = _draw(train_labels, shots, rng)
    val = _draw(val_labels, min(shots, 4), rng) if val_labels is not None else []
    return train, val


def val_shots_indices(train_labels: Sequence[int], val_labels: Sequence[int], shots: int, seed: int) -> list[int]:
    """Indices into the val split of LP++'s own K-shot val set for (`shots`, `seed`), as its official `main.py`
    draws it: `random.seed(seed)`, the train draw, then `shots` a class from the val split, both with its sampler
    (`repeat=True`). Equal to CoOp's val subset at `shots` ≤ 4 when every class has `shots` train and val images."""
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    rng = random.Random(seed)
    _draw(train_labels, shots, rng, repeat=True)  # only to advance the stream as the official train draw does
    return _draw(val_labels, shots, rng, repeat=True)


def base_novel_classes(labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """CoOp's base-to-novel split of the labels present: sorted, first ceil(n/2) base, the rest novel.

    Position in each returned list is the relabelled class index.
    """
    present = sorted(set(int(label) for label in labels))
    middle = math.ceil(len(present) / 2)
    return present[:middle], present[middle:]
