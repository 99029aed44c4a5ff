"""TaskRes (Yu et al.): a learned residual on the class text features, `ℓ = 100 <x, norm(t_c + α R_c)>`.

`recipe=official` follows geekyutao/TaskRes (`trainers/taskres.py`, `configs/trainers/TaskRes/*.yaml`,
`train_regular.sh`): the base `t_c` is the raw (unnormalised) text feature, `t̂_c |t_c|` (the cache's raw norms,
schema 2), α = 0.5 (1.0 on Oxford Flowers), Adam with coupled weight decay 5e-4, lr 2e-3 (2e-4 on ImageNet), batch 256
(the last partial batch dropped), 100 epochs for 1–4 shots and 200 for 8–16, Dassl's cosine per epoch after one epoch
at 1e-5. `recipe=shared`: the unit text feature as base, α = 0.5 and the shared recipe. docs/baselines.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lathadapter.adapter.methods.base import LOGIT_SCALE, Method, normalize
from lathadapter.adapter.options import RecipeTrainOptions, option
from lathadapter.adapter.recipes import (
    RecipeFacts,
    TrainRecipe,
    dataset_key,
    fill,
    recipe_from,
    require_raw,
    training_values,
)
from lathadapter.adapter.registry import register
from lathadapter.cache.store import FewShotData

# train_regular.sh: RESIDUAL_SCALE per dataset (every other dataset 0.5)
OFFICIAL_ALPHA = {"oxford_flowers": 1.0}


@dataclass(frozen=True)
class TaskResOptions(RecipeTrainOptions):
    alpha: float = option(None, "scale α of the task residual added to the class text features (default: the "
                                       "recipe's; official 0.5, 1.0 on Oxford Flowers; shared 0.5)", least=0)
    raw_text: bool = option(None, "the base is the raw (unnormalised) text feature, not the unit one "
                                         "(default: the recipe's; official on, shared off)")


def official_recipe(dataset: str, shots: int) -> TrainRecipe:
    """The TaskRes configs `adam_lr2e-3_B256_ep{100,200}.yaml` (`adam_lr2e-4_*` for ImageNet) as train_regular.sh
    picks them by shots, with Dassl's default weight decay 5e-4."""
    return TrainRecipe(name="official", optimizer="adam", lr=2e-4 if dataset_key(dataset) == "imagenet" else 2e-3,
                       weight_decay=5e-4, eps=1e-8, epochs=100 if shots <= 4 else 200, min_steps=0, batch_size=256,
                       drop_last=True, schedule="cosine-epoch", warmup_epochs=1, warmup_lr=1e-5)


@register("taskres", TaskResOptions)
class TaskRes(Method):
    stackable = True

    @classmethod
    def resolve(cls, options: TaskResOptions, facts: RecipeFacts) -> TaskResOptions:
        official = {**training_values(official_recipe(facts.dataset, facts.shots)),
                    "alpha": OFFICIAL_ALPHA.get(dataset_key(facts.dataset), 0.5), "raw_text": True}
        return fill(options, official, {**training_values(TrainRecipe()), "alpha": 0.5, "raw_text": False})

    def __init__(self, options: TaskResOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        options = self.options  # resolved
        self.alpha, self.raw_text = options.alpha, options.raw_text
        base = require_raw(data.text_raw, self.name, "the raw text features (its base is the unnormalised text "
                           "feature)") if self.raw_text else data.text_features
        self.register_buffer("base_text", base.clone())
        self.residual = nn.Parameter(torch.zeros_like(data.text_features))
        self.recipe = recipe_from(options, official_recipe(data.dataset, data.shots))

    def train_recipe(self) -> TrainRecipe:
        return self.recipe

    def settings(self) -> dict[str, Any]:
        return {**self.recipe.record(), "recipe.alpha": self.alpha, "recipe.raw_text": self.raw_text}

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:  # novel classes have no residual: they fall back to t_c
            return LOGIT_SCALE * features @ text_features.t()
        return LOGIT_SCALE * features @ normalize(self.base_text + self.alpha * self.residual).t()
