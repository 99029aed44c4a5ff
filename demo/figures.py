"""The demo world's headroom figures, measured on a cache of the demo dataset built with the bundled model.

Four numbers say whether the world leaves room for adaptation, as real CLIP does (zero-shot about 65 % over the
field's 11 datasets, a 16-shot linear probe about 78 %): zero-shot over all classes, a linear probe trained on all
training images, the best trained method at 16 shots, and zero-shot on novel classes scored among novel classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

TRAINED_METHODS: tuple[str, ...] = (
    "linear-probe", "clip-adapter", "tip-adapter-f", "taskres", "gda", "lp++", "lathadapter",
)
PROBE_WEIGHT_DECAY = 1e-4  # L2 penalty of the linear probe on L2-normalised features


@dataclass(frozen=True)
class CacheFeatures:
    """Clean, L2-normalised features of a cache's splits and its class text features (the dataset's template)."""

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    text: torch.Tensor


def read_features(cache: Path) -> CacheFeatures:
    """Read the train and test features and the CoOp-template text features of `cache` (skipped rows dropped)."""

    def split(f: h5py.File, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        features = f[f"splits/{name}/features"][()].astype(np.float32)
        labels = f[f"splits/{name}/labels"][()].astype(np.int64)
        kept = np.abs(features).sum(1) > 0  # rows of images left out by --skip-bad are all zeros
        return torch.from_numpy(features[kept]), torch.from_numpy(labels[kept])

    with h5py.File(cache, "r") as f:
        train, train_labels = split(f, "train")
        test, test_labels = split(f, "test")
        text = torch.from_numpy(f["text/features"][0].astype(np.float32))
    return CacheFeatures(train, train_labels, test, test_labels, text)


def zero_shot(features: CacheFeatures) -> tuple[float, float]:
    """Top-1 over all test images and classes, and of novel test images among the novel classes only."""
    scores = features.test @ features.text.T
    labels = features.test_labels
    base = math.ceil(features.text.shape[0] / 2)
    novel = labels >= base
    overall = (scores.argmax(1) == labels).float().mean().item()
    novel_only = (scores[novel][:, base:].argmax(1) + base == labels[novel]).float().mean().item()
    return overall, novel_only


def linear_probe(features: CacheFeatures, weight_decay: float = PROBE_WEIGHT_DECAY, steps: int = 300) -> float:
    """Test top-1 of multinomial logistic regression fitted on all training features (full-batch L-BFGS)."""
    torch.manual_seed(0)
    classes = features.text.shape[0]
    weight = torch.zeros(features.train.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=steps, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = features.train @ weight + bias
        loss = torch.nn.functional.cross_entropy(logits, features.train_labels) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ((features.test @ weight + bias).argmax(1) == features.test_labels).float().mean().item()


def few_shot(cache: Path, methods: Sequence[str] = TRAINED_METHODS, shots: int = 16,
             seeds: Sequence[int] = (1, 2, 3)) -> dict[str, float]:
    """Mean test top-1 (in [0, 1]) over `seeds` of each method trained on the cache's (`shots`, seed) subsets."""
    from lathadapter.experiments.run import fit  # the trainer, only needed here

    return {method: sum(fit(cache, method, shots=shots, seed=seed, device="cpu", out=None)["accuracy"]["all"]
                        for seed in seeds) / (100 * len(seeds))
            for method in methods}
