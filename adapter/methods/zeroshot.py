"""Zero-shot CLIP: `ℓ = 100 <x, t_c>`; nothing is trained."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lathadapter.adapter.methods.base import LOGIT_SCALE, Method
from lathadapter.adapter.registry import register


@dataclass(frozen=True)
class ZeroShotOptions:
    """Zero-shot CLIP has no options."""


@register("zeroshot", ZeroShotOptions)
class ZeroShot(Method):
    trains = False

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        text = self.text_features if text_features is None else text_features
        return LOGIT_SCALE * features @ text.t()
