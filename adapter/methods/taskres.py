"""TaskRes (Yu et al.): a learned residual on the class text features, `ℓ = 100 <x, norm(t_c + α R_c)>`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lathadapter.adapter.methods.base import LOGIT_SCALE, Method, normalize
from lathadapter.adapter.options import TrainOptions, option
from lathadapter.adapter.registry import register
from lathadapter.cache.store import FewShotData


@dataclass(frozen=True)
class TaskResOptions(TrainOptions):
    alpha: float = option(0.5, "scale α of the task residual added to the class text features", least=0)


@register("taskres", TaskResOptions)
class TaskRes(Method):
    def __init__(self, options: TaskResOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        self.residual = nn.Parameter(torch.zeros_like(data.text_features))

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:  # novel classes have no residual: they fall back to t_c
            return LOGIT_SCALE * features @ text_features.t()
        return LOGIT_SCALE * features @ normalize(self.text_features + self.options.alpha * self.residual).t()
