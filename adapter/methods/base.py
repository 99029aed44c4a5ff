"""The interface every method implements: built from a few-shot set, scores images against class text features."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lathadapter.adapter.options import OptionError
from lathadapter.adapter.recipes import TrainRecipe
from lathadapter.cache.store import FewShotData

NORM_EPS = 1e-12  # as F.normalize
LOGIT_SCALE = 100.0  # CLIP's learned temperature, fixed at its converged value


def unit_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x / max(|x|, eps)` over the last dim, and that length (what `normalize_backward` needs)."""
    length = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(NORM_EPS)
    return x / length, length


def normalize_backward(grad: torch.Tensor, unit: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """The two-term backward of a normalisation, `(g − y <g, y>) / |x|` (written into a new tensor)."""
    return torch.addcmul(grad, unit, (grad * unit).sum(-1, keepdim=True), value=-1).div_(length)


class _Normalize(torch.autograd.Function):
    """`x / max(|x|, eps)` over the last dim with the two-term backward `(g − y <g, y>) / |x|` (autograd's own
    backward of F.normalize takes about four times as many passes over the tensor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y, length = unit_rows(x)
        ctx.save_for_backward(y, length)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return normalize_backward(grad, *ctx.saved_tensors)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Unit L2 norm along the last dimension."""
    return _Normalize.apply(x)


class _Cosines(torch.autograd.Function):
    """`normalize(x) @ normalize(y)ᵀ` as `(x @ yᵀ) / (|x| |y|ᵀ)`: no normalised copy of either side is made, which
    saves the passes over [N, D] and [M, D] of two normalisations and their backward passes. With `unit_y` the rows
    of y are taken as unit already: the product is `(x @ yᵀ) / |x|` and y's gradient that of the plain product (the
    normalisation that made y projects it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, unit_y: bool) -> torch.Tensor:
        x_length = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(NORM_EPS)  # [N, 1]
        out = (x @ y.t()).div_(x_length)
        y_length = None
        if not unit_y:
            y_length = torch.linalg.vector_norm(y, dim=-1).clamp_min_(NORM_EPS)  # [M]
            out.div_(y_length)
        ctx.save_for_backward(x, y, x_length, y_length, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # ∂/∂x_i = Σ_j g_ij y_j / (|x_i| |y_j|) − x_i Σ_j g_ij out_ij / |x_i|², symmetrically for y_j
        x, y, x_length, y_length, out = ctx.saved_tensors
        weighted = grad * out
        scaled = grad / x_length
        if y_length is not None:
            scaled.div_(y_length)
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_x = (scaled @ y).addcmul_(x, weighted.sum(1, keepdim=True).div_(x_length.square()), value=-1)
        if ctx.needs_input_grad[1]:
            grad_y = scaled.t() @ x
            if y_length is not None:
                grad_y.addcmul_(y, weighted.sum(0).div_(y_length.square())[:, None], value=-1)
        return grad_x, grad_y, None


def cosines(x: torch.Tensor, y: torch.Tensor, unit_y: bool = False) -> torch.Tensor:
    """Cosines [N, M] of the rows of x [N, D] with the rows of y [M, D]: `normalize(x) @ normalize(y)ᵀ`; `unit_y`
    says y's rows are unit vectors already (made by a normalisation upstream), so their norms are not divided out."""
    return _Cosines.apply(x, y, unit_y)


class ProtocolWarning(UserWarning):
    """A step of the protocol could not run as asked (e.g. a search on a val set the cache does not have)."""


class NotApplicable(RuntimeError):
    """The method cannot score classes it was not trained on (novel or cross-dataset classes)."""


class Method(nn.Module):
    """A few-shot method over cached features.

    `logits(features)` scores the training classes; `logits(features, text_features)` scores another class set
    (novel or cross-dataset classes), or raises `NotApplicable` when `scores_new_classes` is false.
    """

    name: ClassVar[str]
    scores_new_classes: ClassVar[bool] = True
    trains: ClassVar[bool] = True

    def __init__(self, options: Any, data: FewShotData) -> None:
        super().__init__()
        self.options = options
        self.register_buffer("text_features", data.text_features.clone())

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss on a batch and its named parts (for logging); cross-entropy on the logits by default."""
        loss = F.cross_entropy(self.logits(features), labels)
        return loss, {"ce": loss.detach()}

    def after_training(self, data: FewShotData) -> dict[str, Any]:
        """Work done once training ends (e.g. hyper-parameter search on the few-shot val set); returns what it chose."""
        return {}

    def train_recipe(self) -> TrainRecipe:
        """How the trainer optimises this method; by default the shared recipe from its `TrainOptions`."""
        o = self.options
        return TrainRecipe(lr=o.lr, weight_decay=o.weight_decay, eps=o.eps, epochs=o.epochs, min_steps=o.min_steps,
                           batch_size=o.batch_size)

    def optimizer(self, params: list[nn.Parameter], recipe: TrainRecipe) -> torch.optim.Optimizer:
        """The optimiser `recipe` names over `params`."""
        if recipe.optimizer == "adamw":
            # The fused AdamW (one kernel over all parameters) is 4x faster per step than the per-tensor loop on CPU.
            return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, eps=recipe.eps,
                                     fused=params[0].device.type in ("cpu", "cuda"))
        if recipe.optimizer == "adam":
            return torch.optim.Adam(params, lr=recipe.lr, betas=(0.9, 0.999), eps=recipe.eps,
                                    weight_decay=recipe.weight_decay)
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                               dampening=0, nesterov=False)

    def scheduler(self, optimizer: torch.optim.Optimizer, recipe: TrainRecipe, epochs: int, steps_per_epoch: int
                  ) -> torch.optim.lr_scheduler.LRScheduler:
        """The learning-rate schedule `recipe` names, stepped by the trainer after every optimiser step."""
        if recipe.schedule == "cosine-step":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: recipe.lr_at_epoch(step // steps_per_epoch, epochs) / recipe.lr)

    def settings(self) -> dict[str, Any]:
        """The values this run used that its options left to the recipe (per dataset and shots), recorded in the
        run's `chosen`; none by default."""
        return {}

    def lifted_points(self, data: FewShotData) -> dict[str, Any] | None:
        """Points worth drawing, saved with the run (`points.pt`) so that reports never reopen a cache; None when
        the method has none (only LatHAdapter lifts points into a ball)."""
        return None

    def _require_new_classes(self) -> None:
        if not self.scores_new_classes:
            raise NotApplicable(f"{self.name} cannot score classes it was not trained on")


class Adapter(nn.Module):
    """The CLIP-Adapter bottleneck `D → D/r → D` with a ReLU between and no bias."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        hidden = dim // reduction
        if hidden < 1:
            raise OptionError(f"option reduction={reduction} is larger than the feature width {dim}: the adapter "
                              f"D → D/r → D needs 1 <= reduction <= {dim}")
        self.net = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mix_with(x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, ratio: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden layer `relu(x W1ᵀ)` and `(1 − α) x + α relu(x W1ᵀ) W2ᵀ` for rows x and the adapter's weights; the
    second product, both scalings and the sum are one `addmm` (no extra pass over [N, D])."""
    hidden = torch.relu(x @ first.t())
    return hidden, torch.addmm(x, hidden, second.t(), beta=1 - ratio, alpha=ratio)


def mix(x: torch.Tensor, adapter: Adapter, ratio: float) -> torch.Tensor:
    """`(1 − α) x + α g(x)`, the residual blend before its renormalisation."""
    first, _, second = adapter.net
    rows = x.reshape(-1, x.shape[-1])
    return mix_with(rows, first.weight, second.weight, ratio)[1].reshape(x.shape)


def blend(x: torch.Tensor, adapter: Adapter, ratio: float) -> torch.Tensor:
    """Residual blend of a feature with its adapted version, renormalised: `norm((1 − α) x + α g(x))`."""
    return normalize(mix(x, adapter, ratio))
