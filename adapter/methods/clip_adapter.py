"""CLIP-Adapter (Gao et al.): a residual bottleneck on the image feature, `ℓ = 100 <norm((1−α)x + α g(x)), t_c>`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lathadapter.adapter.methods.base import LOGIT_SCALE, Adapter, Method, cosines, mix
from lathadapter.adapter.options import TrainOptions, option
from lathadapter.adapter.registry import register
from lathadapter.cache.store import FewShotData


@dataclass(frozen=True)
class ClipAdapterOptions(TrainOptions):
    alpha: float = option(0.2, "residual ratio of the adapted image feature", least=0, most=1)
    reduction: int = option(4, "bottleneck ratio r of the adapter D → D/r → D", least=1)


@register("clip-adapter", ClipAdapterOptions)
class ClipAdapter(Method):
    def __init__(self, options: ClipAdapterOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        self.adapter = Adapter(data.text_features.shape[1], options.reduction).to(data.text_features.device)

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        text = self.text_features if text_features is None else text_features
        return LOGIT_SCALE * cosines(mix(features, self.adapter, self.options.alpha), text)
