"""Tip-Adapter and Tip-Adapter-F (Zhang et al.): a key-value cache of the few-shot features beside zero-shot CLIP.

`ℓ = 100 x Tᵀ + α exp(−β (1 − x Fᵀ)) L`, keys F = normalised mean of each train image's augmented views, values L =
one-hot labels. α and β are searched on the few-shot val set over the original's grid (β in 0.1..β_max, α in
0.1..α_max, first best kept). Tip-Adapter-F also trains F. Both are tied to the training classes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lathadapter.adapter.methods.base import LOGIT_SCALE, Method, ProtocolWarning, normalize
from lathadapter.adapter.options import TrainOptions, option
from lathadapter.adapter.registry import register
from lathadapter.cache.store import FewShotData


@dataclass(frozen=True)
class TipAdapterOptions:
    alpha: float = option(1.0, "weight α of the cache logits (the value before the search)", least=0)
    beta: float = option(1.0, "sharpness β of the affinity (the value before the search)", least=0)
    search: bool = option(True, "search α and β on the few-shot val set after training")
    search_alpha_max: float = option(3.0, "largest α of the search grid", above=0.1)
    search_beta_max: float = option(7.0, "largest β of the search grid", above=0.1)
    search_alpha_steps: int = option(20, "α values in the search grid", least=1)
    search_beta_steps: int = option(200, "β values in the search grid", least=1)


@dataclass(frozen=True)
class TipAdapterFOptions(TrainOptions, TipAdapterOptions):
    """Tip-Adapter-F's own schedule: 20 epochs, AdamW eps 1e-4, no minimum step count."""

    min_steps: int = option(0, "never fewer optimiser steps than this (Tip-Adapter-F: none)", least=0)
    eps: float = option(1e-4, "AdamW epsilon (Tip-Adapter-F's 1e-4)", above=0)


def search_grid(maximum: float, steps: int) -> torch.Tensor:
    """The original code's grid: `i (max − 0.1) / steps + 0.1` for i in 0..steps−1."""
    return torch.arange(steps, dtype=torch.float64).mul((maximum - 0.1) / steps).add(0.1).float()


def cache_logits(affinity: torch.Tensor, beta: float, key_labels: torch.Tensor, num_classes: int,
                 shots: int | None = None) -> torch.Tensor:
    """`exp(−β(1 − affinity)) L` with L the one-hot values (see `class_sums`)."""
    return class_sums(torch.exp((affinity - 1) * beta), key_labels, num_classes, shots)


def class_sums(weights: torch.Tensor, key_labels: torch.Tensor, num_classes: int, shots: int | None) -> torch.Tensor:
    """`weights L` for weights [N, keys] and L the keys' one-hot labels, as a per-class sum over the keys (the product
    with a one-hot matrix costs N × keys × C multiply-adds; the sum, N × keys additions).

    `shots` says that the keys come grouped by class, `shots` keys each (see `group_by_class`): the sum is then a
    reshape and a sum over the last axis, else an index_add.
    """
    if shots is not None:
        return weights.view(len(weights), num_classes, shots).sum(-1)
    cache = torch.zeros(len(weights), num_classes, dtype=weights.dtype, device=weights.device)
    return cache.index_add(1, key_labels, weights)


def group_by_class(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, int | None]:
    """A stable order that groups the keys by class, and the per-class count when every class has the same one."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    shots = int(counts[0]) if len(counts) and bool((counts == counts[0]).all()) and int(counts[0]) > 0 else None
    return order, shots


def argmax_hits(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`scores.argmax(-1) == labels` for scores [..., N, C] (overwritten) and labels [N], from maxima: a CPU argmax over
    a short last axis is about eight times slower than a max. The label's score must exceed every other class's; where
    it ties the best of them, argmax itself settles the row (it returns the first maximum)."""
    index = labels.reshape(-1, 1).expand(*scores.shape[:-1], 1)
    label_scores = scores.gather(-1, index)
    others = scores.scatter_(-1, index, float("-inf")).amax(-1, keepdim=True)
    hits, tied = (label_scores > others).squeeze(-1), (label_scores == others).squeeze(-1)
    if bool(tied.any()):  # rare: ties between float scores
        scores.scatter_(-1, index, label_scores)
        hits[tied] = scores[tied].argmax(-1) == labels.expand_as(tied)[tied]
    return hits


def search_alpha_beta(zero_shot: torch.Tensor, affinity: torch.Tensor, key_labels: torch.Tensor,
                      labels: torch.Tensor, alphas: torch.Tensor, betas: torch.Tensor,
                      shots: int | None = None) -> tuple[float, float, float]:
    """The (α, β) maximising accuracy of `zero_shot + α exp(−β(1 − affinity)) L`; first best in β-then-α order.

    Returns (alpha, beta, accuracy in percent).
    """
    best = (-1.0, float(alphas[0]), float(betas[0]))
    alpha_column = alphas.view(-1, 1, 1).to(zero_shot)
    shifted = affinity - 1  # exp(−β(1 − a)) = exp(β (a − 1)), the same floats
    for beta in betas.tolist():
        cache = class_sums(torch.exp(shifted * beta), key_labels, zero_shot.shape[1], shots)
        scores = torch.addcmul(zero_shot, alpha_column, cache)  # [A, N, C]
        accuracy = argmax_hits(scores, labels).float().mean(-1) * 100  # [A]
        top = int(torch.argmax(accuracy))  # argmax returns the first maximum
        if float(accuracy[top]) > best[0]:
            best = (float(accuracy[top]), float(alphas[top]), beta)
    return best[1], best[2], best[0]


@register("tip-adapter", TipAdapterOptions)
class TipAdapter(Method):
    scores_new_classes = False
    trains = False

    def __init__(self, options: TipAdapterOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        views = data.train_views if data.train_views.shape[1] > 0 else data.train_features.unsqueeze(1)
        order, self.shots = group_by_class(data.train_labels, data.num_classes)  # key order does not change ℓ
        self.keys = nn.Parameter(normalize(views[order].mean(dim=1)), requires_grad=self.trains)
        self.register_buffer("key_labels", data.train_labels[order].clone())  # the one-hot values L, as labels
        self.num_classes = data.num_classes
        self.alpha, self.beta = options.alpha, options.beta

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:
            self._require_new_classes()
        cache = cache_logits(features @ self.keys.t(), self.beta, self.key_labels, self.num_classes, self.shots)
        return LOGIT_SCALE * features @ self.text_features.t() + self.alpha * cache

    def after_training(self, data: FewShotData) -> dict[str, Any]:
        if not self.options.search:
            return {"alpha": self.alpha, "beta": self.beta, "search": "off"}
        if len(data.val_labels) == 0:  # ImageNet has no val subset; the test set is never used for this
            warnings.warn(f"{self.name}: the cache has no few-shot val subset (as ImageNet's), so α and β are not "
                          f"searched and keep their values α={self.alpha:g}, β={self.beta:g}", ProtocolWarning,
                          stacklevel=2)
            return {"alpha": self.alpha, "beta": self.beta, "search": "skipped: the cache has no val subset"}
        with torch.no_grad():
            features = data.val_features
            self.alpha, self.beta, accuracy = search_alpha_beta(
                LOGIT_SCALE * features @ self.text_features.t(),
                features @ self.keys.t(),
                self.key_labels,
                data.val_labels,
                search_grid(self.options.search_alpha_max, self.options.search_alpha_steps),
                search_grid(self.options.search_beta_max, self.options.search_beta_steps),
                self.shots,
            )
        return {"alpha": self.alpha, "beta": self.beta, "val_accuracy": accuracy}


@register("tip-adapter-f", TipAdapterFOptions)
class TipAdapterF(TipAdapter):
    trains = True
