"""Tip-Adapter and Tip-Adapter-F (Zhang et al.): a key-value cache of the few-shot features beside zero-shot CLIP.

`ℓ = 100 x Tᵀ + α exp(−β (1 − x Fᵀ)) L`, keys F = normalised mean of each train image's augmented views, values L =
one-hot labels. α and β are searched after training over the original's grid (β in 0.1..β_max, α in 0.1..α_max,
first best kept; α = β = 0 when no pair scores, as the original's search starts). Tip-Adapter-F also trains F.
Both are tied to the training classes.

`recipe=official` follows gaopengcuhk/Tip-Adapter (`configs/<dataset>.yaml`, `main.py`, `utils.py`): the dataset's
search ranges and initial α (β starts at 1), keys from the mean of the views' raw (unnormalised) features (the
cache's raw norms, schema 2), the search on the whole val split (a cache built with `--val split`; otherwise the
few-shot val subset, with a `ProtocolWarning`), and for Tip-Adapter-F AdamW (lr 1e-3, eps 1e-4, PyTorch's default weight
decay 0.01), batch 256, 20 epochs (100 on EuroSAT), cosine over every step. `recipe=shared`: α = β = 1, the 7/3 grid,
keys from the unit views, the few-shot val subset, and the shared AdamW recipe with eps 1e-4 and no minimum steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lathadapter.adapter.methods.base import (
    LOGIT_SCALE,
    Method,
    Searched,
    normalize,
    search_set_data,
    warn_no_val_subset,
    zero_shot_base_text,
)
from lathadapter.adapter.options import RecipeTrainOptions, SearchSetOptions, option
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


@dataclass(frozen=True)
class TipConfig:
    """One `configs/<dataset>.yaml` of the official code: `search_scale` = [β_max, α_max], `init_alpha`,
    `train_epoch` (every config has `search_step` [200, 20], `init_beta` 1, `lr` 0.001, `augment_epoch` 10)."""

    beta_max: float
    alpha_max: float
    init_alpha: float
    epochs: int


OFFICIAL_CONFIGS = {
    "caltech101": TipConfig(12, 5, 3, 20),
    "dtd": TipConfig(13, 13, 2, 20),
    "eurosat": TipConfig(12, 10, 2, 100),
    "fgvc_aircraft": TipConfig(30, 30, 5, 20),  # configs/fgvc.yaml
    "food101": TipConfig(10, 10, 1.17, 20),
    "imagenet": TipConfig(7, 3, 1.17, 20),
    "oxford_flowers": TipConfig(50, 50, 10, 20),
    "oxford_pets": TipConfig(7, 3, 1.17, 20),
    "stanford_cars": TipConfig(20, 10, 3, 20),
    "sun397": TipConfig(12, 10, 1.17, 20),
    "ucf101": TipConfig(7, 3, 3, 20),
}
DEFAULT_CONFIG = OFFICIAL_CONFIGS["imagenet"]  # any other dataset: configs/imagenet.yaml's values


def official_config(dataset: str) -> TipConfig:
    return OFFICIAL_CONFIGS.get(dataset_key(dataset), DEFAULT_CONFIG)


@dataclass(frozen=True)
class TipAdapterOptions(SearchSetOptions):
    """`recipe` and `search_set` (shared with GDA, `SearchSetOptions`), and Tip-Adapter's own options."""

    alpha: float = option(None, "weight α of the cache logits before the search (default: the recipe's; "
                                       "official the dataset's init_alpha, shared 1.0)", least=0)
    beta: float = option(None, "sharpness β of the affinity before the search (default: 1.0)", least=0)
    search: bool = option(True, "search α and β on the val set after training")
    search_alpha_max: float = option(None, "largest α of the search grid (default: the recipe's; official "
                                                  "the dataset's, shared 3)", above=0.1)
    search_beta_max: float = option(None, "largest β of the search grid (default: the recipe's; official "
                                                 "the dataset's, shared 7)", above=0.1)
    search_alpha_steps: int = option(20, "α values in the search grid", least=1)
    search_beta_steps: int = option(200, "β values in the search grid", least=1)
    raw_keys: bool = option(None, "keys from the mean of the views' raw features, as the official cache model "
                                         "(off: the mean of the unit views; default: the recipe's, official on)")


@dataclass(frozen=True)
class TipAdapterFOptions(RecipeTrainOptions, TipAdapterOptions):
    """Tip-Adapter's options and the training options (default: the recipe's)."""


SHARED_F_RECIPE = TrainRecipe(min_steps=0, eps=1e-4)  # the shared recipe as Tip-Adapter-F ran it before


def official_f_recipe(dataset: str) -> TrainRecipe:
    """main.py's `run_tip_adapter_F`: AdamW(lr, eps=1e-4) with PyTorch's default weight decay 0.01, a
    CosineAnnealingLR over `train_epoch × len(train_loader_F)` steps, batch 256 without dropping the last batch."""
    return TrainRecipe(name="official", optimizer="adamw", lr=1e-3, weight_decay=0.01, eps=1e-4,
                       epochs=official_config(dataset).epochs, min_steps=0, batch_size=256, drop_last=False,
                       schedule="cosine-step")


def search_grid(maximum: float, steps: int) -> torch.Tensor:
    """The original code's grid: `i (max − 0.1) / steps + 0.1` for i in 0..steps−1."""
    return torch.arange(steps, dtype=torch.float64).mul((maximum - 0.1) / steps).add(0.1).float()


def cache_keys(data: FewShotData, raw_keys: bool, method: str) -> torch.Tensor:
    """The cache keys [N, D], in the train set's order: each image's views averaged and normalised; `raw_keys`, the
    mean of the views' raw features, as the official `build_cache_model` (Tip-Adapter) and `extract_few_shot_feature`
    (APE) make them (needs the cache's raw norms); else the mean of the unit views. No augmented views: the clean
    view."""
    views = data.train_augmented if data.train_augmented.shape[1] > 0 else data.train_features.unsqueeze(1)
    if raw_keys and data.train_augmented.shape[1] > 0:  # the official keys average the raw view features
        norms = require_raw(data.train_augmented_norms, method, "the raw norms of the augmented views (its keys "
                            "are the normalised mean of the views' raw features)")
        views = views * norms.unsqueeze(-1)
    return normalize(views.mean(dim=1))


def cache_logits(affinity: torch.Tensor, beta: float, key_labels: torch.Tensor, num_classes: int,
                 shots: int | None = None) -> torch.Tensor:
    """`exp(−β(1 − affinity)) L` with L the one-hot values (see `class_sums`)."""
    return class_sums(torch.exp((affinity - 1) * beta), key_labels, num_classes, shots)


def class_sums(weights: torch.Tensor, key_labels: torch.Tensor, num_classes: int, shots: int | None) -> torch.Tensor:
    """`weights L` for weights [..., N, keys] and L the keys' one-hot labels, as a per-class sum over the keys (the
    product with a one-hot matrix costs N × keys × C multiply-adds; the sum, N × keys additions).

    `shots` says that the keys come grouped by class, `shots` keys each (see `group_by_class`): the sum is then a
    reshape and a sum over the last axis, else an index_add.
    """
    if shots is not None:
        return weights.view(*weights.shape[:-1], num_classes, shots).sum(-1)
    cache = torch.zeros(*weights.shape[:-1], num_classes, dtype=weights.dtype, device=weights.device)
    return cache.index_add(-1, key_labels, weights)


def group_by_class(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, int | None]:
    """A stable order that groups the keys by class, and the per-class count when every class has the same one."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    shots = int(counts[0]) if len(counts) and bool((counts == counts[0]).all()) and int(counts[0]) > 0 else None
    return order, shots


def argmax_hits(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`scores.argmax(-1) == labels` for scores [..., N, C] (overwritten) and labels [N], from maxima: a CPU argmax over
    a short last axis is about eight times slower than a max. The label's score must exceed every other class's; where
    it ties the best of them, argmax itself settles the row (it returns the first maximum)."""
    if scores.is_cuda:  # argmax is fast there, and settles ties without the host reading `tied`
        return scores.argmax(-1) == labels
    index = labels.reshape(-1, 1).expand(*scores.shape[:-1], 1)
    label_scores = scores.gather(-1, index)
    others = scores.scatter_(-1, index, float("-inf")).amax(-1, keepdim=True)
    hits, tied = (label_scores > others).squeeze(-1), (label_scores == others).squeeze(-1)
    if bool(tied.any()):  # rare: ties between float scores
        scores.scatter_(-1, index, label_scores)
        hits[tied] = scores[tied].argmax(-1) == labels.expand_as(tied)[tied]
    return hits


# Elements of the largest tensor of one chunk of β values in `search_alpha_beta`: on a GPU 128 MB of float32, so
# that the search takes a few chunks, not a handful of kernel launches for each of 200 β values; on a CPU 4 MB, which
# stays in cache (a chunk of 16 MB took 1.1x as long as one β at a time, one of 4 MB 0.97x: Caltech-like, 1 thread)
SEARCH_CHUNK = {"cuda": 1 << 25, "cpu": 1 << 20}


def search_alpha_beta(zero_shot: torch.Tensor, affinity: torch.Tensor, key_labels: torch.Tensor,
                      labels: torch.Tensor, alphas: torch.Tensor, betas: torch.Tensor,
                      shots: int | None = None) -> tuple[float, float, float]:
    """The (α, β) maximising accuracy of `zero_shot + α exp(−β(1 − affinity)) L`; first best in β-then-α order,
    from the official start (accuracy 0 at α = β = 0, which stay when no pair scores: zero-shot CLIP). The β values
    go in chunks of the grid, every (β, α) of a chunk at once (each score is the same float arithmetic as one β at a
    time).

    Returns (alpha, beta, accuracy in percent).
    """
    (n, keys), num_classes = affinity.shape, zero_shot.shape[1]
    alpha_column = alphas.view(-1, 1, 1).to(zero_shot)  # [A, 1, 1]
    beta_column = betas.view(-1, 1, 1).to(zero_shot)  # [B, 1, 1]
    shifted = affinity - 1  # exp(−β(1 − a)) = exp(β (a − 1)), the same floats
    budget = SEARCH_CHUNK["cuda" if zero_shot.is_cuda else "cpu"]
    chunk = max(1, budget // max(n * keys, len(alphas) * n * num_classes))
    accuracies = []
    for start in range(0, len(betas), chunk):
        cache = class_sums(torch.exp(shifted * beta_column[start:start + chunk]), key_labels, num_classes, shots)
        scores = torch.addcmul(zero_shot, alpha_column, cache.unsqueeze(1))  # [Bc, A, N, C]
        accuracies.append(argmax_hits(scores, labels).float().mean(-1) * 100)  # [Bc, A]
    # [B × A], β-major, read once: a read per β made the host wait for the device
    flat = torch.cat(accuracies).view(-1).tolist()
    best = flat.index(max(flat))  # the first best in β-then-α order
    if flat[best] <= 0:  # no pair beats search_hp's start (accuracy 0, α = β = 0): it stays
        return 0.0, 0.0, 0.0
    b, a = divmod(best, len(alphas))
    return float(alphas[a]), float(betas[b]), flat[best]


@register("tip-adapter", TipAdapterOptions)
class TipAdapter(Searched, Method):
    scores_new_classes = False
    trains = False
    searched = ("alpha", "beta")  # chosen on val by `after_training`

    @classmethod
    def resolve(cls, options: TipAdapterOptions, facts: RecipeFacts) -> TipAdapterOptions:
        config = official_config(facts.dataset)
        official = {"alpha": config.init_alpha, "beta": 1.0, "search_alpha_max": config.alpha_max,
                    "search_beta_max": config.beta_max, "search_set": "split", "raw_keys": True,
                    "base_text": "official"}
        shared = {"alpha": 1.0, "beta": 1.0, "search_alpha_max": 3.0, "search_beta_max": 7.0, "search_set": "subset",
                  "raw_keys": False, "base_text": "unit"}
        if cls.trains:  # Tip-Adapter-F
            official.update(training_values(official_f_recipe(facts.dataset)))
            shared.update(training_values(SHARED_F_RECIPE))
        return fill(options, official, shared)

    def __init__(self, options: TipAdapterOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        options = self.options  # resolved
        self.init_alpha, self.init_beta = options.alpha, options.beta
        self.alpha_max, self.beta_max = options.search_alpha_max, options.search_beta_max
        self.search_set, self.raw_keys = options.search_set, options.raw_keys
        text, self.base_kind = zero_shot_base_text(data, options.base_text, self.name)
        self.text_features = text.clone()  # the zero-shot term's classifier (`base_text`)
        order, self.shots = group_by_class(data.train_labels, data.num_classes)  # key order does not change ℓ
        self.keys = nn.Parameter(cache_keys(data, self.raw_keys, self.name)[order], requires_grad=self.trains)
        self.register_buffer("key_labels", data.train_labels[order].clone())  # the one-hot values L, as labels
        self.num_classes = data.num_classes
        self.alpha, self.beta = self.init_alpha, self.init_beta
        if self.trains:
            self.recipe = recipe_from(options, official_f_recipe(data.dataset), SHARED_F_RECIPE)

    def train_recipe(self) -> TrainRecipe:
        return self.recipe

    def settings(self) -> dict[str, Any]:
        return {**(self.recipe.record() if self.trains else {"recipe": self.options.recipe}),
                "recipe.alpha": self.init_alpha, "recipe.beta": self.init_beta,
                "recipe.search_alpha_max": self.alpha_max, "recipe.search_beta_max": self.beta_max,
                "recipe.search_set": self.search_set, "recipe.raw_keys": self.raw_keys,
                "recipe.base_text": self.base_kind}

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:
            self._require_new_classes()
        cache = cache_logits(features @ self.keys.t(), self.beta, self.key_labels, self.num_classes, self.shots)
        return LOGIT_SCALE * features @ self.text_features.t() + self.alpha * cache

    def after_training(self, data: FewShotData) -> dict[str, Any]:
        if not self.options.search:
            return {"alpha": self.alpha, "beta": self.beta, "search": "off"}
        features, labels, where = search_set_data(data, self.search_set, self.name, "α and β are searched")
        if where == "none":  # ImageNet has no val set; the test set is never used for this
            warn_no_val_subset(self.name, f", so α and β are not searched and keep their values α={self.alpha:g}, "
                               f"β={self.beta:g}", stacklevel=2)
            return {"alpha": self.alpha, "beta": self.beta, "search": "skipped: the cache has no val subset"}
        with torch.no_grad():
            self.alpha, self.beta, accuracy = search_alpha_beta(
                LOGIT_SCALE * features @ self.text_features.t(),
                features @ self.keys.t(),
                self.key_labels,
                labels,
                search_grid(self.alpha_max, self.options.search_alpha_steps),
                search_grid(self.beta_max, self.options.search_beta_steps),
                self.shots,
            )
        return {"alpha": self.alpha, "beta": self.beta, "val_accuracy": accuracy, "search_set": where}


@register("tip-adapter-f", TipAdapterFOptions)
class TipAdapterF(TipAdapter):
    trains = True
    stackable = True
