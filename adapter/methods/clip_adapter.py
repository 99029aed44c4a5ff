"""CLIP-Adapter (Gao et al.): a residual bottleneck on the image feature, `ℓ = 100 <norm((1−α)x + α g(x)), t_c>`.

`recipe=official` follows gaopengcuhk/CLIP-Adapter (`clip_adapter.py`): g = Linear, ReLU, Linear, ReLU (no bias), α =
0.2, r = 4, trained as its README says, with CoOp's commands and configs (SGD, Dassl's cosine schedule with one warm-up
epoch, batch 32, epochs by shots); docs/baselines.md lists the values and their files. g is positively homogeneous
(bias-free linear maps and ReLUs), so blending the unnormalised feature, as the official code does, gives the same
logits as blending the unit feature. `recipe=shared`: g without the final ReLU and the shared recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lathadapter.adapter.methods.base import LOGIT_SCALE, Adapter, Method, cosines, mix, normalize
from lathadapter.adapter.options import RecipeTrainOptions, option
from lathadapter.adapter.recipes import RecipeFacts, TrainRecipe, dataset_key, fill, recipe_from, training_values
from lathadapter.adapter.registry import register
from lathadapter.cache.store import FewShotData


@dataclass(frozen=True)
class ClipAdapterOptions(RecipeTrainOptions):
    alpha: float = option(0.2, "residual ratio of the adapted image feature", least=0, most=1)
    reduction: int = option(4, "bottleneck ratio r of the adapter D → D/r → D", least=1)
    final_relu: bool = option(None, "a ReLU after the adapter's second layer (default: the recipe's; official "
                                           "on, shared off)")


def coop_epochs(dataset: str, shots: int) -> int:
    """CoOp's epochs (COOP.md: rn50_ep50 for 1 shot, rn50_ep100 for 2 and 4, rn50 for 8 and 16; ImageNet always
    *_ep50): 50, 100 or 200."""
    if dataset_key(dataset) == "imagenet" or shots <= 1:
        return 50
    return 100 if shots <= 4 else 200


def official_recipe(dataset: str, shots: int) -> TrainRecipe:
    """CoOp's rn50*.yaml with Dassl's defaults: SGD lr 0.002, momentum 0.9, weight decay 5e-4, batch 32 (the last
    partial batch dropped), cosine per epoch after one epoch at a constant 1e-5."""
    return TrainRecipe(name="official", optimizer="sgd", lr=2e-3, weight_decay=5e-4, momentum=0.9,
                       epochs=coop_epochs(dataset, shots), min_steps=0, batch_size=32, drop_last=True,
                       schedule="cosine-epoch", warmup_epochs=1, warmup_lr=1e-5)


@register("clip-adapter", ClipAdapterOptions)
class ClipAdapter(Method):
    stackable = True

    @classmethod
    def resolve(cls, options: ClipAdapterOptions, facts: RecipeFacts) -> ClipAdapterOptions:
        official = {**training_values(official_recipe(facts.dataset, facts.shots)), "final_relu": True}
        return fill(options, official, {**training_values(TrainRecipe()), "final_relu": False})

    def __init__(self, options: ClipAdapterOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        options = self.options  # resolved
        self.adapter = Adapter(data.text_features.shape[1], options.reduction).to(data.text_features.device)
        self.final_relu = options.final_relu
        self.recipe = recipe_from(options, official_recipe(data.dataset, data.shots))
        # the class text features normalised once (as the official code does before training), which the
        # fixed-shape form reads: its steps then take no norm of them (two kernels of a captured step); not saved
        self.register_buffer("text_unit", normalize(self.text_features), persistent=False)

    def train_recipe(self) -> TrainRecipe:
        return self.recipe

    def settings(self) -> dict[str, Any]:
        return {**self.recipe.record(), "recipe.final_relu": self.final_relu}

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is None and self.fixed_form():  # stacked runs, captured steps: the text normalised once
            return LOGIT_SCALE * cosines(self.blended(features), self.text_unit, unit_y=True)
        return LOGIT_SCALE * cosines(self.blended(features), self.text_features if text_features is None
                                     else text_features)

    def blended(self, features: torch.Tensor) -> torch.Tensor:
        """`(1 − α) x + α g(x)`, with the official code's ReLU after the second layer under `final_relu`; in a
        captured step as one node (`base.adapter_mix`: fewer kernels, more host time per call)."""
        return mix(features, self.adapter, self.options.alpha, node=self.fixed_shapes, final_relu=self.final_relu)
