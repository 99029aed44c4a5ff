"""TaskRes (Yu et al.): a learned residual on the class text features, `ℓ = 100 <x, norm(t_c + α R_c)>`.

`recipe=official` follows geekyutao/TaskRes (`trainers/taskres.py`, `configs/trainers/TaskRes/*.yaml`,
`train_regular.sh`): the base `t_c` is the official base text (`base_text=official`), α = 0.5 (1.0 on Oxford
Flowers), Adam with coupled weight decay 5e-4, lr 2e-3 (2e-4 on ImageNet), batch 256 (the last partial batch
dropped), 100 epochs for 1–4 shots and 200 for 8–16, Dassl's cosine per epoch after one epoch at 1e-5.
`recipe=shared`: the unit text feature of the run's `--text` as base, α = 0.5 and the shared recipe.
docs/baselines.md.

The official base text (`_get_base_text_features`) is made of raw (unnormalised) text features, whatever the run's
`--text` (which the zero-shot fallback of novel classes still follows): on ImageNet the mean of the raw features of
the 7 `IMAGENET_TEMPLATES_SELECT` templates and the CoOp template ("a photo of a {}."), in that order; on every other
dataset the raw feature of the dataset's CoOp template alone. The cache stores all of them (`text/templates`: the
CoOp template, then open_clip's 7 simple templates, the same 7; raw norms in schema 2), read as
`FewShotData.templates`/`template_raw`. A cache that lacks one of the 7 (a synthetic one) gives ImageNet the CoOp
template alone, with a `ProtocolWarning`; data built by hand without `template_raw` takes `text_raw` as the CoOp
template's. `base_text=raw` is the raw feature of `--text` (the official recipe's base before stop 14, kept so that
earlier results can be reproduced), `unit` its unit feature. The run records the base under `chosen` as
`recipe.base_text`: `coop` (the CoOp template's raw feature), `imagenet-select+coop` (the 8-template mean), `raw` or
`unit`. The option replaced stop 13's `raw_text`, so TaskRes runs of earlier grids have other keys and train again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lathadapter.adapter.methods.base import BASE_TEXTS, LOGIT_SCALE, Method, base_text, normalize
from lathadapter.adapter.options import RecipeTrainOptions, option
from lathadapter.adapter.recipes import (
    RecipeFacts,
    TrainRecipe,
    dataset_key,
    fill,
    recipe_from,
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
    base_text: str = option(None, "the base t_c: official (raw features of the official templates, whatever --text: "
                                  "ImageNet the mean of the 7 select and the CoOp template, else the CoOp template), "
                                  "raw (the raw feature of --text), unit (the unit feature of --text) (default: the "
                                  "recipe's; official official, shared unit)", choices=BASE_TEXTS)


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
                    "alpha": OFFICIAL_ALPHA.get(dataset_key(facts.dataset), 0.5), "base_text": "official"}
        return fill(options, official, {**training_values(TrainRecipe()), "alpha": 0.5, "base_text": "unit"})

    def __init__(self, options: TaskResOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        options = self.options  # resolved
        self.alpha = options.alpha
        base, self.base_kind = base_text(data, options.base_text, self.name)
        self.register_buffer("base_text", base.clone())
        self.residual = nn.Parameter(torch.zeros_like(data.text_features))
        self.recipe = recipe_from(options, official_recipe(data.dataset, data.shots))

    def train_recipe(self) -> TrainRecipe:
        return self.recipe

    def settings(self) -> dict[str, Any]:
        return {**self.recipe.record(), "recipe.alpha": self.alpha, "recipe.base_text": self.base_kind}

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:  # novel classes have no residual: they fall back to t_c
            return LOGIT_SCALE * features @ text_features.t()
        return LOGIT_SCALE * features @ normalize(self.base_text + self.alpha * self.residual).t()
