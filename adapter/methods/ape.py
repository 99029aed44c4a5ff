"""APE and APE-T (Zhu, Zhang, He, Zhou, Wang, Zhao, Gao, "Not All Features Matter: Enhancing Few-shot CLIP with
Adaptive Prior Refinement", ICCV 2023): Tip-Adapter's cache of the few-shot features, read on the Q feature channels
that a prior-refinement criterion keeps.

Follows the official code, github.com/yangyangyang127/APE (read at 70460de): `utils.py` (`cal_criterion`,
`APE_Training`), `main.py` (`APE`, `APE_T`), `extract_features.py` and `configs/<dataset>.yaml`:

- keys K: each train image's views' raw features averaged, then normalised (`extract_few_shot_feature`; Tip-Adapter's
  raw keys, `raw_keys`), values L the one-hot labels, grouped by class;
- the criterion (`cal_criterion`): over the rows of T (the unit class text) and, with `criterion_cache`, the keys,
  `sim_d` = the mean over pairs of rows of different classes of the product of their channel d;
  `J_d = −w_sim · sim_d + w_var · var_c(T_cd)` (unbiased variance over the classes); the Q channels of largest J are
  kept, Q = round(`feat_share` × D) (the official configs give Q of RN50's D = 1024);
- APE, training-free (`APE`): `ℓ = 100 x Tᵀ + α exp(−β (1 − x' K'ᵀ)) (L ⊙ exp(γ d))`, x', K' the Q channels
  renormalised, `d_k = Σ_c L_kc log₂((L_kc + 1e-6) / (p_kc + 1e-6))` with `p_k = softmax_c(K'_k · T'_c)` (no logit
  scale; T' the Q channels renormalised per class): keys that zero-shot misreads weigh more. β, α, γ are searched on
  val over `β_i = 0.1 + i(β_max − 0.1)/n_β`, `α_i` likewise, `γ_i = i γ_max / n_γ` (β outer, γ inner; the first
  strictly better cell from accuracy 0 kept, (0, 0, 0) when none scores);
- APE-T, trained (`APE_T`, `APE_Training`): a residual R [C, Q] (start 0) added on the kept channels to both the
  keys of class c and T_c, without renormalising, and a weight per key v (start 1):
  `ℓ = 100 x (T + R)ᵀ + α exp(−β (1 − x (K + R)ᵀ)) (L ⊙ v)` on all D channels, at the initial α, β; cross-entropy,
  AdamW (the dataset's lr and eps, weight decay 0.1), cosine over every step, batch 256, the dataset's epochs; then
  β, α searched on val as Tip-Adapter's (the 2-D grid).

Not reproduced (docs/baselines.md): the official text is the mean of the template(s) and the CuPL GPT-3 prompts
(`extract_text_feature`), which the cache does not hold: here the zero-shot text of Tip-Adapter (`base_text`). APE-T's
official call (`cal_criterion(cfg, clip_weights, cache_keys)`) keeps `training_free_feat_num` channels while R has
`training_feat_num` columns (a shape error wherever they differ); here Q is `training_feat_num`, the criterion the
text's alone (the call's `only_use_txt=True`) with `w_training`. The official APE-T keeps its epoch best on val (on
ImageNet, on the test set); here the trainer's `--select` decides, as for Tip-Adapter-F. Float32 here, float16 there.
Both are tied to the training classes: novel classes are not scored (n/a), as for Tip-Adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
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
from lathadapter.adapter.methods.tip_adapter import (
    SEARCH_CHUNK,
    TipAdapterOptions,
    cache_keys,
    class_sums,
    group_by_class,
    search_grid,
)
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

OFFICIAL_WIDTH = 1024  # RN50's feature width, which every official config's channel counts are of
KL_EPS = 1e-6  # main.py's `cache_div`: log2((L + 1e-6) / (p + 1e-6))


@dataclass(frozen=True)
class ApeConfig:
    """One `configs/<dataset>.yaml`: `search_scale` [β_max, α_max, γ_max], `search_step`'s γ steps (β 200, α 20 in
    every config), `init_alpha`, `eps` (APE-T; `eps_few` at 1-2 shots, the config's comment), `training_feat_num`,
    `training_free_feat_num`, `w_training_free` (`w_training` is [0.2, 0.8] in every config), `lr`, `train_epoch`
    (every config has `init_beta` 1, `init_gamma` 0.1)."""

    beta_max: float
    alpha_max: float
    gamma_max: float
    gamma_steps: int
    init_alpha: float
    eps: float
    feat_train: int
    feat_free: int
    w_free: tuple[float, float]
    lr: float
    epochs: int
    eps_few: float | None = None


OFFICIAL_CONFIGS = {
    "caltech101": ApeConfig(7, 7, 1, 20, 1, 1e-3, 900, 800, (0.5, 0.5), 1e-3, 30),
    "dtd": ApeConfig(7, 7, 1, 20, 3, 1e-3, 700, 400, (0.5, 0.5), 1e-3, 20),
    "eurosat": ApeConfig(30, 5, 1.5, 20, 1, 1e-3, 900, 700, (0.9, 0.1), 1e-3, 200),
    "fgvc_aircraft": ApeConfig(20, 10, 1, 20, 5, 1e-3, 900, 800, (0.1, 0.9), 1e-3, 30),  # configs/fgvc.yaml
    "food101": ApeConfig(7, 7, 1, 20, 0.8, 1e-3, 900, 700, (0.3, 0.7), 1e-4, 30, eps_few=1e-2),
    "imagenet": ApeConfig(7, 7, 0.5, 5, 2, 1e-3, 500, 500, (0.7, 0.3), 1e-4, 20),
    "oxford_flowers": ApeConfig(7, 7, 1, 20, 3, 1e-3, 800, 700, (0.4, 0.6), 1e-3, 60),
    "oxford_pets": ApeConfig(7, 7, 1, 20, 2, 2e-3, 800, 800, (0.7, 0.3), 1e-4, 30),
    "stanford_cars": ApeConfig(10, 7, 1, 20, 1, 5e-3, 800, 500, (0.6, 0.4), 1e-3, 30),
    "sun397": ApeConfig(10, 7, 1, 20, 1, 1e-3, 800, 800, (0.7, 0.3), 1e-4, 30),
    "ucf101": ApeConfig(10, 7, 1.5, 20, 2, 2e-3, 800, 700, (0.3, 0.7), 1e-3, 30),
}
DEFAULT_CONFIG = OFFICIAL_CONFIGS["imagenet"]  # any other dataset: configs/imagenet.yaml's values
W_TRAINING = (0.2, 0.8)  # every config's `w_training`
# recipe=shared: Tip-Adapter's shared α = β = 1 and 7/3 grid, the most common γ grid (γ_max 1, 20 steps); with the
# default config's (imagenet.yaml's) channel share 500/1024 and criterion weights, whatever the dataset
SHARED = {"alpha": 1.0, "beta": 1.0, "search_alpha_max": 3.0, "search_beta_max": 7.0, "search_gamma_max": 1.0,
          "search_gamma_steps": 20, "search_set": "subset", "raw_keys": False, "base_text": "unit"}


def official_config(dataset: str) -> ApeConfig:
    return OFFICIAL_CONFIGS.get(dataset_key(dataset), DEFAULT_CONFIG)


def official_t_recipe(facts: RecipeFacts) -> TrainRecipe:
    """main.py's `APE_T`: AdamW(lr, eps, weight_decay=0.1), CosineAnnealingLR over `train_epoch × len(loader)`
    steps, batch 256 without dropping the last batch (`build_data_loader`)."""
    config = official_config(facts.dataset)
    eps = config.eps_few if config.eps_few is not None and facts.shots <= 2 else config.eps
    return TrainRecipe(name="official", optimizer="adamw", lr=config.lr, weight_decay=0.1, eps=eps,
                       epochs=config.epochs, min_steps=0, batch_size=256, drop_last=False, schedule="cosine-step")


@dataclass(frozen=True)
class ApeCommonOptions(TipAdapterOptions):
    """Tip-Adapter's options (α, β, their search grid, `raw_keys`, `recipe`, `search_set`, `base_text`: the same
    meanings) and the prior refinement's."""

    feat_share: float = option(None, "share Q/D of the feature channels kept by the criterion (default: the "
                                     "recipe's; official the dataset's channel count over RN50's 1024, shared "
                                     "500/1024)", above=0, most=1)
    w_sim: float = option(None, "weight of the inter-class similarity in the criterion (default: the method's; APE "
                                "the dataset's w_training_free[0], APE-T 0.2)", least=0)
    w_var: float = option(None, "weight of the inter-class variance in the criterion (default: the method's; APE "
                                "the dataset's w_training_free[1], APE-T 0.8)", least=0)
    criterion_cache: bool = option(None, "the criterion's similarity reads the cache keys with the text (default: "
                                         "the method's; APE on, APE-T off, as their official calls)")


@dataclass(frozen=True)
class ApeOptions(ApeCommonOptions):
    """APE's options: the common ones and the trilateral affinity's γ with its search grid."""

    gamma: float = option(0.1, "sharpness γ of the key weights exp(γ d) before the search", least=0)
    search_gamma_max: float = option(None, "end of the γ grid i γ_max / steps (default: the recipe's; official the "
                                           "dataset's, shared 1)", above=0)
    search_gamma_steps: int = option(None, "γ values in the search grid (default: the recipe's; official the "
                                           "dataset's, 20 or ImageNet's 5; shared 20)", least=1)


@dataclass(frozen=True)
class ApeTOptions(RecipeTrainOptions, ApeCommonOptions):
    """APE's common options and the training options (default: the recipe's)."""


def criterion(text: torch.Tensor, rows: torch.Tensor, row_labels: torch.Tensor, w_sim: float, w_var: float
              ) -> torch.Tensor:
    """`cal_criterion`'s J [D]: `−w_sim · sim + w_var · var_c(text)`, sim the mean over pairs of `rows` [M, D] of
    different classes (`row_labels`) of their channel-wise product (from the class sums S_c:
    `(Σ_c S_c)² − Σ_c S_c²` over `M² − Σ_c n_c²` pairs)."""
    num_classes = text.shape[0]
    sums = torch.zeros(num_classes, rows.shape[1], dtype=rows.dtype, device=rows.device).index_add_(0, row_labels, rows)
    counts = torch.bincount(row_labels, minlength=num_classes).to(rows.dtype)
    pairs = counts.sum().square() - counts.square().sum()
    sim = (sums.sum(0).square() - sums.square().sum(0)) / pairs
    return -w_sim * sim + w_var * text.var(dim=0)


def refined_channels(text: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, share: float, w_sim: float,
                     w_var: float, with_keys: bool) -> torch.Tensor:
    """The Q = round(share · D) channels (at least 1) of largest criterion, as `torch.topk` orders them."""
    num_classes, dim = text.shape
    classes = torch.arange(num_classes, device=text.device)
    rows, labels = (torch.cat([text, keys]), torch.cat([classes, key_labels])) if with_keys else (text, classes)
    count = min(dim, max(1, round(share * dim)))
    return torch.topk(criterion(text, rows, labels, w_sim, w_var), k=count).indices


def key_divergence(keys: torch.Tensor, key_labels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """`cache_div` [keys] for one-hot values: `log₂((1 + 1e-6) / (p_k,y_k + 1e-6))`, p_k = softmax_c(K'_k · T'_c) over
    the refined (renormalised) channels (the other classes' terms are 0 · log₂(...) = 0)."""
    probabilities = (keys @ text.t()).softmax(-1).gather(1, key_labels[:, None]).squeeze(1)
    return torch.log2((1 + KL_EPS) / (probabilities + KL_EPS))


def gamma_grid(maximum: float, steps: int) -> torch.Tensor:
    """main.py's γ grid: `i γ_max / steps` for i in 0..steps−1 (it starts at 0, unlike the α and β grids)."""
    return torch.arange(steps, dtype=torch.float64).mul(maximum / steps).float()


def weighted_class_sums(sharp: torch.Tensor, key_weights: torch.Tensor, key_labels: torch.Tensor, num_classes: int,
                        shots: int | None) -> torch.Tensor:
    """`sharp (L ⊙ w_g)` for sharp [B, N, keys] and every row w_g of key_weights [G, keys]: [B, G, N, C]. With the
    keys grouped by class (`shots`), one batched product per class, [B·N, shots] @ [shots, G]; else one index sum per
    row w_g. Neither builds the [B, G, N, keys] products (G times the search's chunk budget: 20 γ values of a whole
    val split read against thousands of keys are gigabytes)."""
    if shots is None:
        return torch.stack([class_sums(sharp * weights, key_labels, num_classes, None) for weights in key_weights], 1)
    b, n, _ = sharp.shape
    per_class = sharp.reshape(b * n, num_classes, shots).transpose(0, 1)  # [C, B·N, shots]
    weights = key_weights.t().reshape(num_classes, shots, -1)  # [C, shots, G]
    return torch.bmm(per_class, weights).view(num_classes, b, n, -1).permute(1, 3, 2, 0).contiguous()  # [B, G, N, C]


def alpha_intervals(zero_shot: torch.Tensor, cache: torch.Tensor, labels: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row n of `zero_shot + α cache` (cache [..., N, C]) the open interval (lo, hi) of α > 0 in which its
    label's score exceeds every other class's: class j bounds α by −u_j / v_j, u = z_y − z_j, v = c_y − c_j (below
    where v_j > 0, above where v_j < 0; never a hit where v_j = 0 and u_j ≤ 0). Ties between scores, where argmax
    picks the first class, are read as misses."""
    index = labels[:, None]
    # u; +inf in the label's own column (where v = 0), which then bounds nothing: −inf / 0 = −inf
    margin = (zero_shot.gather(1, index) - zero_shot).scatter_(1, index, float("inf"))  # [N, C]
    slope = cache.gather(-1, index.expand(*cache.shape[:-1], 1)) - cache  # v [..., N, C]
    bound = -margin / slope
    lo = bound.masked_fill(slope <= 0, float("-inf")).amax(-1)
    hi = bound.masked_fill_(slope >= 0, float("inf")).amin(-1)
    never = ((slope == 0) & (margin <= 0)).any(-1)
    return lo, torch.where(never, float("-inf"), hi)


def search_cells(zero_shot: torch.Tensor, affinity: torch.Tensor, key_weights: torch.Tensor, key_labels: torch.Tensor,
                 labels: torch.Tensor, alphas: torch.Tensor, betas: torch.Tensor, shots: int | None
                 ) -> tuple[int, int, int, float]:
    """The cell maximising accuracy of `zero_shot + α exp(−β(1 − affinity)) (L ⊙ w_g)` over β (outer), α, then the
    rows g of `key_weights` [G, keys] (inner), first strictly better from accuracy 0, as main.py's loops: the indices
    (β, α, g), or (-1, -1, -1) when no cell scores, and the accuracy (%). Each (β, g) gives every row the interval
    of α where it is right (`alpha_intervals`), so the α values cost a comparison each, not a pass over [N, C]; the
    β values go in chunks."""
    (n, keys), num_classes = affinity.shape, zero_shot.shape[1]
    alpha_row = alphas.to(zero_shot)
    beta_column = betas.view(-1, 1, 1).to(zero_shot)  # [B, 1, 1]
    weights = key_weights.to(zero_shot)
    shifted = affinity - 1
    budget = SEARCH_CHUNK["cuda" if zero_shot.is_cuda else "cpu"]
    chunk = max(1, budget // max(n * keys, len(weights) * n * max(num_classes, len(alphas))))
    accuracies = []
    for start in range(0, len(betas), chunk):
        sharp = torch.exp(shifted * beta_column[start:start + chunk])  # [Bc, N, keys]
        cache = weighted_class_sums(sharp, weights, key_labels, num_classes, shots)  # [Bc, G, N, C]
        lo, hi = alpha_intervals(zero_shot, cache, labels)  # [Bc, G, N]
        hits = (alpha_row > lo[..., None]) & (alpha_row < hi[..., None])  # [Bc, G, N, A]
        accuracies.append(hits.float().mean(-2).transpose(1, 2) * 100)  # [Bc, A, G]
    flat = torch.cat(accuracies).reshape(-1).tolist()  # β-major, then α, then g
    best = max(flat)
    if best <= 0:
        return -1, -1, -1, 0.0
    b, rest = divmod(flat.index(best), len(alphas) * len(weights))
    a, g = divmod(rest, len(weights))
    return b, a, g, best


class ApeBase(Searched, Method):
    """What APE and APE-T share: the cache (keys grouped by class), the zero-shot text, the refined channels."""

    scores_new_classes = False

    @classmethod
    def resolve(cls, options: Any, facts: RecipeFacts) -> Any:
        config = official_config(facts.dataset)

        def weights(source: ApeConfig) -> dict[str, Any]:  # APE-T's `w_training` is every config's
            w_sim, w_var = W_TRAINING if cls.trains else source.w_free
            return {"w_sim": w_sim, "w_var": w_var, "criterion_cache": not cls.trains}

        feat = config.feat_train if cls.trains else config.feat_free
        official = {**weights(config), "alpha": config.init_alpha, "beta": 1.0, "search_alpha_max": config.alpha_max,
                    "search_beta_max": config.beta_max, "search_set": "split", "raw_keys": True,
                    "base_text": "official", "feat_share": feat / OFFICIAL_WIDTH}
        shared = {**weights(DEFAULT_CONFIG), **SHARED, "feat_share": DEFAULT_CONFIG.feat_train / OFFICIAL_WIDTH}
        if cls.trains:
            official.update(training_values(official_t_recipe(facts)))
            shared.update(training_values(TrainRecipe()))
        else:
            official.update(search_gamma_max=config.gamma_max, search_gamma_steps=config.gamma_steps)
        return fill(options, official, {k: v for k, v in shared.items() if hasattr(options, k)})

    def __init__(self, options: Any, data: FewShotData) -> None:
        super().__init__(options, data)
        options = self.options  # resolved
        self.alpha, self.beta = options.alpha, options.beta
        text, self.base_kind = zero_shot_base_text(data, options.base_text, self.name)
        self.text_features = text.clone()
        order, self.shots = group_by_class(data.train_labels, data.num_classes)
        self.register_buffer("keys", cache_keys(data, options.raw_keys, self.name)[order].clone())
        self.register_buffer("key_labels", data.train_labels[order].clone())
        self.num_classes = data.num_classes
        self.register_buffer("channels", refined_channels(text, self.keys, self.key_labels, options.feat_share,
                                                          options.w_sim, options.w_var, options.criterion_cache))

    def common_settings(self) -> dict[str, Any]:
        o = self.options
        return {"recipe.alpha": o.alpha, "recipe.beta": o.beta, "recipe.search_alpha_max": o.search_alpha_max,
                "recipe.search_beta_max": o.search_beta_max, "recipe.search_set": o.search_set,
                "recipe.raw_keys": o.raw_keys, "recipe.base_text": self.base_kind, "recipe.feat_share": o.feat_share,
                "recipe.feat_num": len(self.channels), "recipe.w_sim": o.w_sim, "recipe.w_var": o.w_var,
                "recipe.criterion_cache": o.criterion_cache}

    def search_data(self, data: FewShotData) -> tuple[torch.Tensor, torch.Tensor, str] | None:
        """The val images the search reads (`search_set`), or None with a `ProtocolWarning` when there are none."""
        features, labels, where = search_set_data(data, self.options.search_set, self.name,
                                                  "the hyper-parameters are searched")
        if where == "none":  # ImageNet has no val set; the test set is never used for this
            warn_no_val_subset(self.name, f", so its hyper-parameters are not searched and keep their values "
                               f"α={self.alpha:g}, β={self.beta:g}", stacklevel=3)
            return None
        return features, labels, where


@register("ape", ApeOptions)
class Ape(ApeBase):
    trains = False
    searched = ("alpha", "beta", "gamma")  # chosen on val by `after_training`

    def __init__(self, options: ApeOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        self.gamma = self.options.gamma
        self.register_buffer("refined_keys", normalize(self.keys[:, self.channels]))
        refined_text = normalize(self.text_features[:, self.channels])
        self.register_buffer("divergence", key_divergence(self.refined_keys, self.key_labels, refined_text))

    def settings(self) -> dict[str, Any]:
        o = self.options
        return {"recipe": o.recipe, **self.common_settings(), "recipe.gamma": o.gamma,
                "recipe.search_gamma_max": o.search_gamma_max, "recipe.search_gamma_steps": o.search_gamma_steps}

    def refined_affinity(self, features: torch.Tensor) -> torch.Tensor:
        """`x' K'ᵀ`: cosines of the images and the keys over the refined channels."""
        return normalize(features[:, self.channels]) @ self.refined_keys.t()

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:
            self._require_new_classes()
        weights = torch.exp((self.refined_affinity(features) - 1) * self.beta) * torch.exp(self.gamma * self.divergence)
        cache = class_sums(weights, self.key_labels, self.num_classes, self.shots)
        return LOGIT_SCALE * features @ self.text_features.t() + self.alpha * cache

    def after_training(self, data: FewShotData) -> dict[str, Any]:
        chosen = {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma}
        if not self.options.search:
            return {**chosen, "search": "off"}
        found = self.search_data(data)
        if found is None:
            return {**chosen, "search": "skipped: the cache has no val subset"}
        features, labels, where = found
        o = self.options
        alphas, betas = search_grid(o.search_alpha_max, o.search_alpha_steps), search_grid(o.search_beta_max,
                                                                                           o.search_beta_steps)
        gammas = gamma_grid(o.search_gamma_max, o.search_gamma_steps)
        with torch.no_grad():
            b, a, g, accuracy = search_cells(LOGIT_SCALE * features @ self.text_features.t(),
                                             self.refined_affinity(features),
                                             torch.exp(gammas.to(self.divergence)[:, None] * self.divergence),
                                             self.key_labels, labels, alphas, betas, self.shots)
        self.alpha, self.beta, self.gamma = (0.0, 0.0, 0.0) if b < 0 else (float(alphas[a]), float(betas[b]),
                                                                           float(gammas[g]))
        return {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma, "val_accuracy": accuracy,
                "search_set": where}


@register("ape-t", ApeTOptions)
class ApeT(ApeBase):
    stackable = True
    searched = ("alpha", "beta")  # chosen on val by `after_training`

    def __init__(self, options: ApeTOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        dim = self.keys.shape[1]
        # channel d's column in the residual padded with a zero column (Q for a channel not kept): a gather, which
        # vmap and captured steps take, puts R on the kept channels
        position = torch.full((dim,), len(self.channels), dtype=torch.long, device=self.keys.device)
        position[self.channels] = torch.arange(len(self.channels), device=self.keys.device)
        self.register_buffer("position", position)
        self.residual = nn.Parameter(torch.zeros(self.num_classes, len(self.channels), dtype=self.keys.dtype,
                                                 device=self.keys.device))
        self.value_weights = nn.Parameter(torch.ones(len(self.key_labels), dtype=self.keys.dtype,
                                                     device=self.keys.device))
        self.recipe = recipe_from(self.options, official_t_recipe(RecipeFacts.of(data)))

    def train_recipe(self) -> TrainRecipe:
        return self.recipe

    def settings(self) -> dict[str, Any]:
        return {**self.recipe.record(), **self.common_settings()}

    def adapted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`APE_Training.forward`: the keys and the class text with R added on the kept channels (not renormalised)."""
        full = F.pad(self.residual, (0, 1)).index_select(-1, self.position)  # [C, D], 0 off the kept channels
        return self.keys + full.index_select(0, self.key_labels), self.text_features + full

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:
            self._require_new_classes()
        keys, text = self.adapted()
        weights = torch.exp((features @ keys.t() - 1) * self.beta) * self.value_weights
        cache = class_sums(weights, self.key_labels, self.num_classes, self.shots)
        return LOGIT_SCALE * features @ text.t() + self.alpha * cache

    def after_training(self, data: FewShotData) -> dict[str, Any]:
        if not self.options.search:
            return {"alpha": self.alpha, "beta": self.beta, "search": "off"}
        found = self.search_data(data)
        if found is None:
            return {"alpha": self.alpha, "beta": self.beta, "search": "skipped: the cache has no val subset"}
        features, labels, where = found
        o = self.options
        alphas, betas = search_grid(o.search_alpha_max, o.search_alpha_steps), search_grid(o.search_beta_max,
                                                                                           o.search_beta_steps)
        with torch.no_grad():
            keys, text = self.adapted()
            b, a, _, accuracy = search_cells(LOGIT_SCALE * features @ text.t(), features @ keys.t(),
                                             self.value_weights[None], self.key_labels, labels, alphas, betas,
                                             self.shots)
        self.alpha, self.beta = (0.0, 0.0) if b < 0 else (float(alphas[a]), float(betas[b]))
        return {"alpha": self.alpha, "beta": self.beta, "val_accuracy": accuracy, "search_set": where}
