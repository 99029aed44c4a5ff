"""Linear probe initialised from the class text features (ZS-LP): `ℓ = 100 x Wᵀ + b`, W₀ = T, b₀ = 0."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lathadapter.adapter.methods.base import LOGIT_SCALE, Method
from lathadapter.adapter.options import TrainOptions
from lathadapter.adapter.registry import register
from lathadapter.cache.store import FewShotData


@dataclass(frozen=True)
class LinearProbeOptions(TrainOptions):
    """Only the shared training options."""


@register("linear-probe", LinearProbeOptions)
class LinearProbe(Method):
    scores_new_classes = False

    def __init__(self, options: LinearProbeOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        self.weight = nn.Parameter(data.text_features.clone())
        self.bias = nn.Parameter(torch.zeros(data.num_classes, device=data.text_features.device))

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:
            self._require_new_classes()
        return LOGIT_SCALE * features @ self.weight.t() + self.bias
