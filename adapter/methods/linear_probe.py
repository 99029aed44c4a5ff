"""Linear probe initialised from the class text features (ZS-LP).

`recipe=official` follows ZS-LP as CLAP (Silva-Rodriguez et al., jusiro/CLAP: `trainers/adapters.py`, `forward_lp`;
`configs/trainers/SGD_lr1e-1_B256_ep300.yaml`) runs it: a cosine classifier `ℓ = 100 <x, W_c / |W_c|>` without bias,
`W₀` = the official base text (`base_text=official`: CLAP's `_get_base_text_features`, TaskRes's function: raw
features of the CoOp template, on ImageNet averaged with the 7 `IMAGENET_TEMPLATES_SELECT` ones, whatever `--text`;
`methods.base.base_text`), SGD lr 0.1, momentum 0.9, no weight decay, batch 256 (the last partial batch dropped),
300 epochs, Dassl's cosine per epoch after one epoch at 1e-5. `recipe=shared`: the affine head `ℓ = 100 x Wᵀ + b`,
`W₀ = T` (`base_text=unit`), `b₀ = 0`, and the shared recipe. Before stop 14 the official `W₀` was the raw feature of
`--text` (`base_text=raw`); the option changed the keys of linear-probe runs, so earlier ones train again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lathadapter.adapter.methods.base import BASE_TEXTS, LOGIT_SCALE, Method, base_text, cosines
from lathadapter.adapter.options import RecipeTrainOptions, option
from lathadapter.adapter.recipes import RecipeFacts, TrainRecipe, fill, recipe_from, training_values
from lathadapter.adapter.registry import register
from lathadapter.cache.store import FewShotData

HEADS = ("cosine", "affine")
OFFICIAL_RECIPE = TrainRecipe(name="official", optimizer="sgd", lr=0.1, weight_decay=0.0, momentum=0.9, epochs=300,
                              min_steps=0, batch_size=256, drop_last=True, schedule="cosine-epoch", warmup_epochs=1,
                              warmup_lr=1e-5)


@dataclass(frozen=True)
class LinearProbeOptions(RecipeTrainOptions):
    head: str = option(None, "cosine: 100 <x, W_c/|W_c|>, no bias; affine: 100 x Wᵀ + b, b₀ = 0 (default: the "
                                    "recipe's; official cosine, shared affine)", choices=HEADS)
    base_text: str = option(None, "W₀: official (raw features of the official templates, whatever --text: ImageNet "
                                  "the mean of the 7 select and the CoOp template, else the CoOp template), raw (the "
                                  "raw feature of --text), unit (the unit feature of --text) (default: the recipe's; "
                                  "official official, shared unit)", choices=BASE_TEXTS)


@register("linear-probe", LinearProbeOptions)
class LinearProbe(Method):
    stackable = True
    scores_new_classes = False

    @classmethod
    def resolve(cls, options: LinearProbeOptions, facts: RecipeFacts) -> LinearProbeOptions:
        return fill(options, {**training_values(OFFICIAL_RECIPE), "head": "cosine", "base_text": "official"},
                    {**training_values(TrainRecipe()), "head": "affine", "base_text": "unit"})

    def __init__(self, options: LinearProbeOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        options = self.options  # resolved
        self.head = options.head
        start, self.base_kind = base_text(data, options.base_text, self.name)
        self.weight = nn.Parameter(start.clone())
        if self.head == "cosine":
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.zeros(data.num_classes, device=data.text_features.device))
        self.recipe = recipe_from(options, OFFICIAL_RECIPE)

    def train_recipe(self) -> TrainRecipe:
        return self.recipe

    def settings(self) -> dict[str, Any]:
        return {**self.recipe.record(), "recipe.head": self.head, "recipe.base_text": self.base_kind}

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:
            self._require_new_classes()
        if self.bias is None:
            return LOGIT_SCALE * cosines(features, self.weight)
        return LOGIT_SCALE * features @ self.weight.t() + self.bias
