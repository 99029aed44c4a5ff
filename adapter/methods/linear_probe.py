"""Linear probe initialised from the class text features (ZS-LP).

`recipe=official` follows ZS-LP as CLAP (Silva-Rodriguez et al., jusiro/CLAP: `trainers/adapters.py`, `forward_lp`;
`configs/trainers/SGD_lr1e-1_B256_ep300.yaml`) runs it: a cosine classifier `ℓ = 100 <x, W_c / |W_c|>` without bias,
`W₀` = the raw (unnormalised) class text features (the cache's raw norms, schema 2), SGD lr 0.1, momentum 0.9, no
weight decay, batch 256 (the last partial batch dropped), 300 epochs, Dassl's cosine per epoch after one epoch at
1e-5. `recipe=shared`: the affine head `ℓ = 100 x Wᵀ + b`, `W₀ = T` (unit), `b₀ = 0`, and the shared recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lathadapter.adapter.methods.base import LOGIT_SCALE, Method, cosines
from lathadapter.adapter.options import RecipeTrainOptions, option
from lathadapter.adapter.recipes import RecipeFacts, TrainRecipe, fill, recipe_from, require_raw, training_values
from lathadapter.adapter.registry import register
from lathadapter.cache.store import FewShotData

HEADS = ("cosine", "affine")
OFFICIAL_RECIPE = TrainRecipe(name="official", optimizer="sgd", lr=0.1, weight_decay=0.0, momentum=0.9, epochs=300,
                              min_steps=0, batch_size=256, drop_last=True, schedule="cosine-epoch", warmup_epochs=1,
                              warmup_lr=1e-5)


@dataclass(frozen=True)
class LinearProbeOptions(RecipeTrainOptions):
    head: str = option(None, "cosine: 100 <x, W_c/|W_c|>, no bias, W₀ the raw text features; affine: "
                                    "100 x Wᵀ + b, W₀ the unit text features (default: the recipe's; official "
                                    "cosine, shared affine)", choices=HEADS)


@register("linear-probe", LinearProbeOptions)
class LinearProbe(Method):
    stackable = True
    scores_new_classes = False

    @classmethod
    def resolve(cls, options: LinearProbeOptions, facts: RecipeFacts) -> LinearProbeOptions:
        return fill(options, {**training_values(OFFICIAL_RECIPE), "head": "cosine"},
                    {**training_values(TrainRecipe()), "head": "affine"})

    def __init__(self, options: LinearProbeOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        options = self.options  # resolved
        self.head = options.head
        if self.head == "cosine":
            raw = require_raw(data.text_raw, self.name, "the raw text features (ZS-LP starts from them)")
            self.weight = nn.Parameter(raw.clone())
            self.register_parameter("bias", None)
        else:
            self.weight = nn.Parameter(data.text_features.clone())
            self.bias = nn.Parameter(torch.zeros(data.num_classes, device=data.text_features.device))
        self.recipe = recipe_from(options, OFFICIAL_RECIPE)

    def train_recipe(self) -> TrainRecipe:
        return self.recipe

    def settings(self) -> dict[str, Any]:
        return {**self.recipe.record(), "recipe.head": self.head}

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:
            self._require_new_classes()
        if self.bias is None:
            return LOGIT_SCALE * cosines(features, self.weight)
        return LOGIT_SCALE * features @ self.weight.t() + self.bias
