"""GDA (Wang et al., "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation", ICLR 2024): Gaussian
discriminant analysis on the few-shot features beside zero-shot CLIP, nothing trained.

Follows the official code, github.com/mrflogs/ICLR24, `main_few_shots.py`, function `run` (parameter estimation,
then the grid search for α):

- the samples are every augmented view of every train image (the official code encodes the train set
  `augment_epoch` = 10 times through the random train transform, the cache's default of 10 views, and keeps every
  view; the clean view is not used); `μ_c` is the mean of class c's views;
- one shared covariance with the KS shrinkage: with `Z` the views centred on their class means (M rows) and
  `S = cov(Z)` (`torch.cov`, unbiased), `Σ⁻¹ = D · pinv((M − 1) S + tr(S) I)`;
- uniform priors `p_c = 1/C`; the linear classifier `w_c = Σ⁻¹ μ_c`, `b_c = log p_c − ½ μ_cᵀ Σ⁻¹ μ_c`;
- `ℓ = 100 x Tᵀ + α (x Wᵀ + b)`, α searched over the official list `1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100`, keeping
  the first strictly better value, starting from accuracy 0 and the option `alpha` (default 0.1, the official
  starting value), which stays when every value scores 0;
- the search reads the whole val split (`val_loader` over `dataset.val`: the official dataset readers sample the
  few-shot train set only), which the cache holds when built with `cache build --val split`. Option `search_set`, as
  Tip-Adapter's: `split` (`recipe=official`, the default) the whole val split, or, on a cache without it, the
  few-shot val subset with a `ProtocolWarning`; `subset` (`recipe=shared`, GDA's search before it had the option)
  the few-shot val subset, `min(K, 4)` images a class. The run records the option under `chosen` as
  `recipe.search_set` and the set searched as `search_set`.

The estimation runs in `after_training` (the trainer calls it once; there is nothing else to train), so that a
run's train time covers it. ImageNet: the official code searches α on the test set there (`val_features =
test_features`). No choice here ever sees the test set: without a val set (neither the whole split nor a few-shot
subset: ImageNet's) α keeps its value (the official starting value 0.1) and a `ProtocolWarning` says so. Novel and
cross-dataset classes are not scored (the official base-to-novel script, `main_base2new.py`, synthesises their
classifiers from the train views nearest their text features, and estimates the base covariance as the mean of
per-class covariances; neither is implemented).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lathadapter.adapter.methods.base import (
    LOGIT_SCALE,
    Method,
    Searched,
    search_set_data,
    warn_no_val_subset,
    zero_shot_base_text,
)
from lathadapter.adapter.options import SearchSetOptions, option
from lathadapter.adapter.recipes import RecipeFacts, fill
from lathadapter.adapter.registry import register
from lathadapter.cache.store import FewShotData

ALPHAS = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)  # the official search list, in its order


@dataclass(frozen=True)
class GDAOptions(SearchSetOptions):
    """`recipe` and `search_set` (shared with Tip-Adapter, `SearchSetOptions`: the recipe only picks the search
    set), and GDA's own options."""

    alpha: float = option(0.1, "weight α of the GDA logits (the value before the search; the official start 0.1)",
                          least=0)
    search: bool = option(True, "search α on the val set (search_set) over the official list 1e-4 … 100")


def class_means(vectors: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The mean of each class's rows, [C, D] (zero for a class without rows)."""
    sums = torch.zeros(num_classes, vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
    sums.index_add_(0, labels, vectors)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(vectors)
    return sums / counts[:, None]


def shrunk_solve(centred: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """`Σ⁻¹ μ_c` for every class mean (rows of the result, float64), with the official KS estimate of the shared
    precision, `Σ⁻¹ = D · pinv((M − 1) S + tr(S) I)`, S = cov(centred rows) (unbiased, about the rows' mean).

    `(M − 1) S` is the scatter of the rows about their mean (≈ 0: every class's rows sum to zero once centred). With
    tr(S) > 0 the matrix is symmetric positive definite, so its pseudo-inverse is its inverse, applied here through a
    Cholesky factor (float64; a tenth of the time of `pinv` at D = 512); otherwise (all rows alike) `pinv` itself.
    """
    rows, dim = centred.shape
    deviations = centred - centred.mean(0, keepdim=True)
    scatter = (deviations.t() @ deviations).double()  # (M − 1) S
    trace = torch.diagonal(scatter).sum() / max(rows - 1, 1)  # tr(S)
    regularised = scatter + trace * torch.eye(dim, dtype=torch.float64, device=centred.device)
    factor, info = torch.linalg.cholesky_ex(regularised)
    if int(info) == 0:
        return dim * torch.cholesky_solve(means.double().t(), factor).t()
    return dim * means.double() @ torch.linalg.pinv(regularised, hermitian=True)


@register("gda", GDAOptions)
class GDA(Searched, Method):
    scores_new_classes = False
    trains = False
    searched = ("alpha",)  # chosen on val by `after_training`

    @classmethod
    def resolve(cls, options: GDAOptions, facts: RecipeFacts) -> GDAOptions:
        return fill(options, {"search_set": "split", "base_text": "official"},
                    {"search_set": "subset", "base_text": "unit"})

    def __init__(self, options: GDAOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        self.search_set = self.options.search_set  # resolved
        text, self.base_kind = zero_shot_base_text(data, self.options.base_text, self.name)
        self.text_features = text.clone()  # the zero-shot term's classifier (`base_text`)
        like = dict(dtype=data.text_features.dtype, device=data.text_features.device)
        # Estimated by `after_training` (so that a run's train time covers the estimation); zero until then.
        self.register_buffer("weight", torch.zeros(data.num_classes, data.text_features.shape[1], **like))  # [C, D]
        self.register_buffer("bias", torch.zeros(data.num_classes, **like))  # [C]
        self.alpha = options.alpha
        self.num_views = 0

    def estimate(self, data: FewShotData) -> None:
        """The class means, the shared shrunk precision and the discriminant's `W`, `b` from the train views."""
        views = data.train_augmented if data.train_augmented.shape[1] > 0 else data.train_features.unsqueeze(1)
        self.num_views = views.shape[1]
        vectors = views.reshape(-1, views.shape[-1])  # image i's view j is row i·V + j
        labels = data.train_labels.repeat_interleave(self.num_views)
        means = class_means(vectors, labels, data.num_classes)
        weight = shrunk_solve(vectors - means[labels], means)  # row c = Σ⁻¹ μ_c (Σ⁻¹ is symmetric)
        bias = math.log(1.0 / data.num_classes) - 0.5 * (weight * means.double()).sum(-1)
        self.weight.copy_(weight)
        self.bias.copy_(bias)

    def gda_logits(self, features: torch.Tensor) -> torch.Tensor:
        """`x Wᵀ + b`, the Gaussian discriminant's linear scores."""
        return torch.addmm(self.bias, features, self.weight.t())

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:
            self._require_new_classes()
        return LOGIT_SCALE * features @ self.text_features.t() + self.alpha * self.gda_logits(features)

    def settings(self) -> dict[str, Any]:
        return {"recipe": self.options.recipe, "recipe.search_set": self.search_set,
                "recipe.base_text": self.base_kind}

    @torch.no_grad()
    def after_training(self, data: FewShotData) -> dict[str, Any]:
        self.estimate(data)
        if not self.options.search:
            return {"alpha": self.alpha, "views": self.num_views, "search": "off"}
        features, labels, where = search_set_data(data, self.search_set, self.name, "α is searched")
        if where == "none":  # ImageNet: the official code searches on the test set, never done here
            warn_no_val_subset(self.name, f", so α is not searched and keeps its value α={self.alpha:g}", stacklevel=2)
            return {"alpha": self.alpha, "views": self.num_views,
                    "search": "skipped: the cache has no val subset"}
        zero_shot = LOGIT_SCALE * features @ self.text_features.t()
        discriminant = self.gda_logits(features)
        best_hits, best_alpha = 0, self.alpha  # the official start: accuracy 0 and α = 0.1 (the default)
        for alpha in ALPHAS:
            hits = int(((zero_shot + alpha * discriminant).argmax(-1) == labels).sum())
            if hits > best_hits:  # the first strictly better value is kept
                best_hits, best_alpha = hits, alpha
        self.alpha = best_alpha
        return {"alpha": self.alpha, "views": self.num_views, "val_accuracy": 100.0 * best_hits / len(labels),
                "search_set": where}
