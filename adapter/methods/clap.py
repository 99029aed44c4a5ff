"""CLAP (Silva-Rodríguez, Hajimiri, Ben Ayed, Dolz, "A Closer Look at the Few-Shot Adaptation of Large
Vision-Language Models", CVPR 2024): ZS-LP (`linear-probe`) plus a class-adaptive penalty that keeps each class's
prototype near its zero-shot start.

Follows the official code, github.com/jusiro/CLAP (read at dbdf409): `trainers/adapters.py`, `train.py` and
`experiments/experiment_CLAP.txt`, which runs every CLAP experiment with `CONSTRAINT l2` (also `train.py`'s default):

- the model, its start, optimiser, schedule, batches and epochs are ZS-LP's (`LinearProbe`, recipe `official`):
  `ℓ = 100 <x̂, Ŵ_c>`, W₀ = the official base text T (raw features), SGD lr 0.1, momentum 0.9, 300 epochs, batch 256;
- before training, the multipliers α_c (`init_lagrangian_multipliers`): the start's logits (zero-shot: W = T) over
  the support set's augmented views (the official code's 20 augmented passes over the train images; here every
  cached augmented view, or the clean view when the cache has none), softmaxed over the classes; α_c = the mean, over
  class c's views, of the probability given to class c. `l2-balanced`: every α_c = 1; `l2-corrected`: α scaled so
  that it sums to C; `l2-constant`: every α_c = the mean of α;
- the loss of every batch (`forward_backward`, `zero_shot_constraint`): cross-entropy + `mean_c α_c |W_c − T_c|²`,
  the squared distance of the raw (unnormalised) prototype to its raw start, weight 1;
- α stays fixed: the augmented-Lagrangian update (`outer_step`) runs only for a constraint containing `adaptative`,
  which no official experiment uses; the last epoch is evaluated (Dassl's `TEST.FINAL_MODEL` `last_step`).

Novel classes are not scored, as for `linear-probe` (the prototypes belong to the training classes). The `head`,
`base_text` and `recipe` options are ZS-LP's; `recipe=shared` is ZS-LP's shared recipe with the same penalty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lathadapter.adapter.methods.linear_probe import LinearProbe, LinearProbeOptions
from lathadapter.adapter.options import option
from lathadapter.adapter.registry import register
from lathadapter.adapter.trainer import training_views
from lathadapter.cache.store import FewShotData

# The official CONSTRAINT values whose dissimilarity is l2 and whose multipliers stay fixed (`init_lagrangian_
# multipliers`' branches): `l2` is the paper's CLAP (every official experiment's), the others its variants.
CONSTRAINTS = ("l2", "l2-balanced", "l2-corrected", "l2-constant")


@dataclass(frozen=True)
class ClapOptions(LinearProbeOptions):
    """ZS-LP's options (`LinearProbeOptions`: the recipe, `head`, `base_text` and the training values) and the kind
    of CLAP's constraint."""

    constraint: str = option("l2", "the penalty mean_c α_c |W_c − T_c|²'s multipliers: l2, the official CLAP's, α_c "
                                   "= class c's mean zero-shot probability of its true class over the support "
                                   "views; l2-balanced, every α_c = 1; l2-corrected, l2's scaled to sum to C; "
                                   "l2-constant, every α_c = the mean of l2's", choices=CONSTRAINTS)


def support_views(data: FewShotData) -> tuple[torch.Tensor, torch.Tensor]:
    """The support set's views the multipliers are computed on, [M, D], and their labels: every cached augmented view
    of every train image (the clean view when the cache has none)."""
    rows, views = training_views(data, "augmented")  # the trainer's rows: image i's view j at row i·V + j
    return rows, data.train_labels.repeat_interleave(views)


CHUNK_ROWS = 8192  # support views per zero-shot product: ImageNet's 160k views × 1000 classes in 33 MB pieces


def true_class_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The softmax probability [M] each view's logits [M, C] give its own class."""
    return logits.softmax(-1).gather(1, labels[:, None]).squeeze(1)


def class_multipliers(true_class: torch.Tensor, labels: torch.Tensor, num_classes: int, kind: str) -> torch.Tensor:
    """The multipliers α [C] of constraint `kind` (`CONSTRAINTS`) from each support view's probability of its own
    class [M] and its label [M]; a class without a view gets α_c = 0 (l2)."""
    if kind == "l2-balanced":
        return torch.ones(num_classes, dtype=true_class.dtype, device=true_class.device)
    sums = torch.zeros(num_classes, dtype=true_class.dtype, device=true_class.device).index_add_(0, labels, true_class)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(true_class.dtype)
    alpha = sums / counts
    if kind == "l2-corrected":
        return alpha * (num_classes / alpha.sum())
    if kind == "l2-constant":
        return alpha.mean().expand(num_classes).clone()
    return alpha


def multipliers(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """The multipliers α [C] of constraint `kind` from the zero-shot logits [M, C] of the support views and their
    labels [M]."""
    return class_multipliers(true_class_probability(logits, labels), labels, logits.shape[1], kind)


@register("clap", ClapOptions)
class Clap(LinearProbe):
    """ZS-LP with the class-adaptive penalty: the start `base` (W₀) and the multipliers are buffers, so that runs
    stacked by `adapter.batched` each keep their own."""

    def __init__(self, options: ClapOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        self.constraint = self.options.constraint
        self.register_buffer("base", self.weight.detach().clone())
        views, labels = support_views(data)
        with torch.no_grad():  # the start's logits (zero-shot: W = T), a chunk of views at a time
            true_class = torch.cat([true_class_probability(self.logits(views[i:i + CHUNK_ROWS]),
                                                           labels[i:i + CHUNK_ROWS])
                                    for i in range(0, len(views), CHUNK_ROWS)])
        self.register_buffer("multipliers", class_multipliers(true_class, labels, self.weight.shape[0],
                                                              self.constraint))

    def penalty(self) -> torch.Tensor:
        """`mean_c α_c |W_c − T_c|²` (`zero_shot_constraint` with the l2 dissimilarity)."""
        return (self.multipliers * (self.weight - self.base).square().sum(-1)).mean()

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce, parts = super().loss(features, labels)
        penalty = self.penalty()
        return ce + penalty, {**parts, "constraint": penalty.detach()}

    def settings(self) -> dict[str, Any]:
        alpha = self.multipliers
        return {**super().settings(), "clap.alpha_min": float(alpha.min()), "clap.alpha_mean": float(alpha.mean()),
                "clap.alpha_max": float(alpha.max())}
