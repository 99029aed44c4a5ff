"""LP++ (Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024): a linear probe
whose class scores blend visual prototypes with the class text features through learned per-class factors α_c.

Follows the official code, github.com/FereshteShakeri/FewShot-CLIP-Strong-Baseline, `methods/linear_probe_p2.py`
(class `LinearProbe_P2.forward` and the helpers `calculate_lr_w`, `calculate_init_alpha`, `calculate_lr_alpha`),
`methods/utils.py` (`compute_centroids`, `compute_centroids_alpha`) and `configs/base.yaml` (`train_epoch: 300`):

- the train set is encoded once through the random train transform, one augmented view per image (here: cached
  view 0, or the clean view when the cache has none); F [N, D] those features, T [C, D] the text features;
- scores `ℓ = F Wᵀ + b + α ⊙ (F Tᵀ)` (α_c scales column c; no logit scale);
- initialisation: W₀ = the per-class sums of the features (`compute_centroids` does not divide by the count), b₀
  the default `nn.Linear(D, C)` bias (drawn from the global generator, which the run seeds), every α_c equal to
  `250 · mean_c mean_{i ∈ c} <f_i, t_c>` (`calculate_init_alpha`: 250/shots · shots · the class means);
- data-driven step sizes: `lr_w = 4N / λ_max(FᵀF)` (`calculate_lr_w`) and
  `lr_α = N / (4 max_c Σ_i <f_i, t_c>²)` (`calculate_lr_alpha`);
- full-batch optimisation for 300 epochs: each epoch one cross-entropy gradient on all N samples, an SGD step
  (momentum 0.9) on W and b, and every 10th epoch a plain gradient step on α, `α ← α − lr_α · g_α`, where g_α is
  the α gradient summed over every epoch so far (the official loop never zeroes it: `optimizer.zero_grad()` clears
  W and b only);
- after each epoch, accuracy on a val set; the parameters of the last epoch whose accuracy is at least the best so
  far are kept (the official `acc_val >= best_acc`, from 0). The official `main.py` draws its own val set, K images
  a class from the val split (`generate_fewshot_dataset_(shots, split="val")`, right after the train draw from the
  same stream, with a sampler that repeats the images of a class that has fewer than K). Option `search_set`:
  `shots` (default) is that set, drawn the same way at build time (`cache.sampling.val_shots_indices`) and stored
  by `cache build --val split`; on a cache without it the run's few-shot val subset (`min(K, 4)` a class, the same
  draw at K ≤ 4) is used, with a `ProtocolWarning` at K > 4. `subset` and `split` (the whole val split) are there
  to measure the difference; the set read is recorded as `search_set`.

The gradients are written out (`softmax − onehot` over N) instead of taken by autograd; the tests hold them against
the official loop run with autograd and `torch.optim.SGD`. The official loop runs in CLIP's float16; this one runs in
the features' dtype. Without a few-shot val subset (ImageNet; the official ImageNet script draws its own val set from
the train split) the last epoch is kept and a `ProtocolWarning` says so. Novel classes are not scored.

The trainer's own loop is not used: W, b and α are parameters that do not require gradients while the trainer looks
for some, the official loop runs in `after_training`, and they are then marked trainable so that the run counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lathadapter.adapter.methods.base import Method, search_set_data, warn_no_val_subset, zero_shot_base_text
from lathadapter.adapter.options import (
    BASE_TEXT_DOC,
    SEARCH_SET_DOC,
    SEARCH_SETS,
    ZERO_SHOT_BASE_TEXTS,
    SearchSetOption,
    option,
)
from lathadapter.adapter.registry import register
from lathadapter.cache.store import FewShotData

MOMENTUM = 0.9  # the official SGD's momentum
ALPHA_EVERY = 10  # α takes a step every this many epochs
ALPHA_INIT_SCALE = 250.0  # `calculate_init_alpha`'s constant


@dataclass(frozen=True)
class LPPlusPlusOptions(SearchSetOption):
    epochs: int = option(300, "full-batch epochs of the official loop (its train_epoch 300)", least=1)
    base_text: str = option("official", BASE_TEXT_DOC, choices=ZERO_SHOT_BASE_TEXTS)
    # `SearchSetOption`'s option (one meaning for every method), with the official code's set as default
    search_set: str = option("shots", SEARCH_SET_DOC + " (default: shots, the official code's)", choices=SEARCH_SETS)


def train_rows(data: FewShotData) -> torch.Tensor:
    """One augmented view per train image, as one pass of the official train loader gives (view 0; the clean view
    when the cache has no augmented views)."""
    return data.train_augmented[:, 0].contiguous() if data.train_augmented.shape[1] > 0 else data.train_features


def class_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class sums of the rows, [C, D] (the official `compute_centroids`)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    return sums.index_add_(0, labels, features)


def initial_alpha(text_logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """`250 · mean_c mean_{i ∈ c} <f_i, t_c>` for text_logits = F Tᵀ (classes without samples left out)."""
    own = text_logits.gather(1, labels[:, None]).squeeze(1).double()
    sums = torch.zeros(num_classes, dtype=torch.float64, device=own.device).index_add_(0, labels, own)
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    return float(ALPHA_INIT_SCALE * (sums[present] / counts[present]).mean())


def step_sizes(features: torch.Tensor, text_logits: torch.Tensor) -> tuple[float, float]:
    """`lr_w = 4N / λ_max(FᵀF)` and `lr_α = N / (4 max_c Σ_i <f_i, t_c>²)`, in float64."""
    n = len(features)
    gram = features.double().t() @ features.double()
    lr_w = 4 * n / float(torch.linalg.eigvalsh(gram)[-1])
    lr_alpha = n / (4 * float(text_logits.double().square().sum(0).max()))
    return lr_w, lr_alpha


@register("lp++", LPPlusPlusOptions)
class LPPlusPlus(Method):
    scores_new_classes = False
    trains = True  # by its own full-batch loop in `after_training` (see the module's docstring)

    def __init__(self, options: LPPlusPlusOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        text, self.base_kind = zero_shot_base_text(data, self.options.base_text, self.name)
        self.text_features = text.clone()  # the text classifier T (`base_text`)
        features = train_rows(data)
        dim, num_classes = features.shape[1], data.num_classes
        like = dict(dtype=features.dtype, device=features.device)
        # The official classifier is an nn.Linear(D, C) whose weight is then replaced: its bias keeps the default
        # initialisation, drawn here the same way (weight first, then bias, from the global generator, in float32).
        linear = nn.Linear(dim, num_classes)
        self.weight = nn.Parameter(class_sums(features, data.train_labels, num_classes), requires_grad=False)
        self.bias = nn.Parameter(linear.bias.detach().to(**like), requires_grad=False)
        self.alpha_init = initial_alpha(features @ self.text_features.t(), data.train_labels, num_classes)
        self.alpha = nn.Parameter(torch.full((num_classes,), self.alpha_init, **like), requires_grad=False)

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:
            self._require_new_classes()
        scores = torch.addmm(self.bias, features, self.weight.t())
        return scores.addcmul_(features @ self.text_features.t(), self.alpha)

    def settings(self) -> dict[str, Any]:
        return {"recipe.base_text": self.base_kind}

    def after_training(self, data: FewShotData) -> dict[str, Any]:
        features, labels = train_rows(data), data.train_labels
        n = len(labels)
        if n == 0:
            raise ValueError("the few-shot train set is empty")
        text_logits = features @ self.text_features.t()  # [N, C], fixed
        lr_w, lr_alpha = step_sizes(features, text_logits)
        val_features, val_labels, search_set = search_set_data(data, self.options.search_set, self.name,
                                                               "the epoch is chosen")
        has_val = search_set != "none"
        if not has_val:
            warn_no_val_subset(self.name, f", so no epoch is chosen on it: the last of {self.options.epochs} is kept",
                               stacklevel=2)
        val_text = val_features @ self.text_features.t() if has_val else None
        weight, bias, alpha = (p.detach().clone() for p in (self.weight, self.bias, self.alpha))
        rows = torch.arange(n, device=labels.device)
        alpha_grad = torch.zeros_like(alpha)  # accumulated over every epoch, as the official loop's α.grad
        weight_buffer = bias_buffer = None
        best_hits, best_epoch, best = -1, self.options.epochs, None
        for epoch in range(1, self.options.epochs + 1):
            # Cross-entropy (mean over N) of ℓ = F Wᵀ + b + α ⊙ F Tᵀ, and its gradient G = (softmax(ℓ) − Y) / N.
            scores = torch.addmm(bias, features, weight.t()).addcmul_(text_logits, alpha)
            grad = torch.softmax(scores, dim=1)
            grad[rows, labels] -= 1
            grad.div_(n)
            weight_grad, bias_grad = grad.t() @ features, grad.sum(0)
            alpha_grad.add_((grad * text_logits).sum(0))
            if weight_buffer is None:  # torch.optim.SGD: the first buffer is the gradient itself
                weight_buffer, bias_buffer = weight_grad, bias_grad
            else:
                weight_buffer.mul_(MOMENTUM).add_(weight_grad)
                bias_buffer.mul_(MOMENTUM).add_(bias_grad)
            # New tensors, not in-place updates: the best epoch's values are kept by reference, without copies.
            weight, bias = weight.add(weight_buffer, alpha=-lr_w), bias.add(bias_buffer, alpha=-lr_w)
            if epoch % ALPHA_EVERY == 0:
                alpha = alpha.add(alpha_grad, alpha=-lr_alpha)
            if has_val:
                val_scores = torch.addmm(bias, val_features, weight.t()).addcmul_(val_text, alpha)
                hits = int((val_scores.argmax(1) == val_labels).sum())
                if hits >= best_hits:  # the last best epoch is kept
                    best_hits, best_epoch, best = hits, epoch, (weight, bias, alpha)
        with torch.no_grad():
            for param, value in zip((self.weight, self.bias, self.alpha), best or (weight, bias, alpha), strict=True):
                param.copy_(value)
        for param in (self.weight, self.bias, self.alpha):
            param.requires_grad_(True)  # trained (by the loop above): counted as such by the run
        return {
            "epochs": self.options.epochs,
            "selected_epoch": best_epoch,
            "val_accuracy": 100.0 * best_hits / len(val_labels) if has_val else None,
            "search_set": search_set,
            "lr_w": lr_w,
            "lr_alpha": lr_alpha,
            "alpha_init": self.alpha_init,
            "alpha_mean": float(self.alpha.mean()),
        }
