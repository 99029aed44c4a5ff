"""APE and APE-T (`ape`, `ape-t`) equal an independent re-statement of the official code (github.com/yangyangyang127/APE
at 70460de: `utils.py` `cal_criterion`, `APE_Training`; `main.py` `APE`, `APE_T`), written here in the official
layout (clip_weights [D, C], one-hot cache values, the loops as written) on float64 features: the criterion and its
channels by hand and by the loops, the training-free logits, the search's val-best cell, APE-T's training with
autograd and torch.optim; and they run through `fit`, grids and the command line."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import lathadapter
from lathadapter.adapter.catalog import create_method, make_options, resolve_options
from lathadapter.adapter.evaluate import evaluate
from lathadapter.adapter.methods import ape as ape_module
from lathadapter.adapter.methods.ape import criterion
from lathadapter.adapter.methods.base import NotApplicable, ProtocolWarning
from lathadapter.adapter.methods.tip_adapter import class_sums
from lathadapter.adapter.recipes import RecipeFacts
from lathadapter.adapter.trainer import train
from lathadapter.cache.store import FewShotData
from lathadapter.cli import app
from lathadapter.experiments.launch import launch
from lathadapter.experiments.spec import GridSpec


def ape_data(classes: int = 4, dim: int = 12, shots: int = 3, views: int = 2, seed: int = 0,
             dataset: str = "dtd") -> FewShotData:
    """Unit float64 features around random class centres, text carrying a share of them (zero-shot imperfect), and
    raw norms of the augmented views (the official keys average raw features)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(centres + 0.8 * torch.randn(classes, dim, generator=g, dtype=torch.float64), dim=-1)

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(classes).repeat_interleave(per_class)
        noise = 0.9 * torch.randn(len(labels), dim, generator=g, dtype=torch.float64)
        return F.normalize(centres[labels] + noise, dim=-1), labels

    train_x, train_y = draw(shots)
    order = torch.randperm(len(train_y), generator=g)  # keys arrive in no class order
    train_x, train_y = train_x[order], train_y[order]
    augmented = F.normalize(train_x[:, None] + 0.5 * torch.randn(len(train_y), views, dim, generator=g,
                                                                  dtype=torch.float64), dim=-1)
    norms = 5 + 4 * torch.rand(len(train_y), views, generator=g, dtype=torch.float64)
    val_x, val_y = draw(6)
    test_x, test_y = draw(8)
    return FewShotData([f"c{i}" for i in range(classes)], text, torch.zeros(0, dim, dtype=torch.float64), train_x,
                       augmented, train_y, val_x, val_y, test_x, test_y, "ape-parity", dataset=dataset,
                       text_raw=text * 8, train_augmented_norms=norms)


def official_keys(data: FewShotData) -> tuple[torch.Tensor, torch.Tensor]:
    """`extract_few_shot_feature`: the mean over the passes of the raw features, normalised, as [D, N] with the
    one-hot values [N, C]; here sorted by label, the [C, K, D] order `APE` reshapes them into."""
    raw = data.train_augmented * data.train_augmented_norms[..., None]
    keys = raw.mean(dim=1)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    order = torch.argsort(data.train_labels, stable=True)
    return keys[order].t(), F.one_hot(data.train_labels[order], data.num_classes).to(keys.dtype)


def official_criterion(clip_weights: torch.Tensor, cache_keys: torch.Tensor, shots: int, w: tuple[float, float],
                       k: int, only_use_txt: bool) -> torch.Tensor:
    """`cal_criterion` as written (cache_keys [N, D], as `APE` passes them): the loops over class pairs (and their
    rows), `torch.var` over the classes, topk."""
    feat_dim, cate_num = clip_weights.shape
    text_feat = clip_weights.t().unsqueeze(1)
    cache_feat = cache_keys.reshape(cate_num, shots, feat_dim)
    feats = text_feat if only_use_txt else torch.cat([text_feat, cache_feat], dim=1)
    sim_sum = torch.zeros(feat_dim, dtype=clip_weights.dtype)
    count = 0
    for i in range(cate_num):
        for j in range(cate_num):
            for m in range(feats.shape[1]):
                for n in range(feats.shape[1]):
                    if i != j:
                        sim_sum += feats[i, m, :] * feats[j, n, :]
                        count += 1
    sim = sim_sum / count
    criterion_ = (-1) * w[0] * sim + w[1] * torch.var(clip_weights, dim=1)
    return torch.topk(criterion_, k=k).indices


def official_ape_logits(features: torch.Tensor, clip_weights: torch.Tensor, cache_keys: torch.Tensor,
                        cache_values: torch.Tensor, indices: torch.Tensor, alpha: float, beta: float,
                        gamma: float) -> torch.Tensor:
    """`APE`'s logits for (α, β, γ), as written (cache_keys [N, D] here, after its reshapes)."""
    new_clip_weights = clip_weights[indices, :]
    new_cache_keys = cache_keys[:, indices]
    new_features = features[:, indices]
    new_clip_weights = new_clip_weights / new_clip_weights.norm(dim=0, keepdim=True)
    new_cache_keys = new_cache_keys / new_cache_keys.norm(dim=-1, keepdim=True)
    new_features = new_features / new_features.norm(dim=-1, keepdim=True)
    R_fW = 100. * features @ clip_weights
    R_fF = new_features @ new_cache_keys.t()
    key_logits = (new_cache_keys @ new_clip_weights).softmax(1)
    cache_div = torch.sum(cache_values * torch.log2((cache_values + 1e-6) / (key_logits + 1e-6)), dim=1)[:, None]
    soft_cache_values = cache_values * (cache_div * gamma).exp()
    cache_logits = ((-1) * (beta - beta * R_fF)).exp() @ soft_cache_values
    return R_fW + cache_logits * alpha


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100 * float((logits.argmax(-1) == labels).double().mean())


# ----------------------------------------------------------------------------------------------- the criterion


def test_the_criterion_by_hand() -> None:
    """Two classes, one key each, D = 3: text rows t0 = (1, 0, 0), t1 = (0, 1, 0), keys k0 = (0.6, 0, 0.8),
    k1 = (0, 0.6, 0.8). Pairs of rows of different classes: (t0|k0) × (t1|k1), both orders, 8 ordered pairs; the
    channel products: t0·t1 = 0, t0·k1 = 0, k0·t1 = 0, k0·k1 = (0, 0, 0.64): sim = (0, 0, 2·0.64/8) = (0, 0, 0.16).
    var over the classes (unbiased, 2 values a, b: (a − b)²/2) of the text: (0.5, 0.5, 0).
    w = (1, 1): J = (0.5, 0.5, −0.16); the text alone: sim = 0, J = (0.5, 0.5, 0)."""
    text = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64)
    keys = torch.tensor([[0.6, 0, 0.8], [0, 0.6, 0.8]], dtype=torch.float64)
    classes = torch.tensor([0, 1])
    with_keys = criterion(text, torch.cat([text, keys]), torch.cat([classes, classes]), 1.0, 1.0)
    torch.testing.assert_close(with_keys, torch.tensor([0.5, 0.5, -0.16], dtype=torch.float64))
    torch.testing.assert_close(criterion(text, text, classes, 1.0, 1.0),
                               torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    # w_sim alone, 3 weighs the similarity: J = −3 sim
    torch.testing.assert_close(criterion(text, torch.cat([text, keys]), torch.cat([classes, classes]), 3.0, 0.0),
                               torch.tensor([0.0, 0.0, -0.48], dtype=torch.float64))


@pytest.mark.parametrize(("method", "seed"), [("ape", 0), ("ape", 1), ("ape-t", 2)])
def test_the_kept_channels_are_the_official_loops(method: str, seed: int) -> None:
    """APE: the text and the cache (`only_use_txt=False`), the dataset's `w_training_free`, Q =
    `training_free_feat_num`; APE-T: the text alone, `w_training`, Q = `training_feat_num` (docs/baselines.md)."""
    data = ape_data(classes=4, dim=1024, shots=2, views=2, seed=seed, dataset="stanford_cars")
    model = create_method(method, data)
    keys, _ = official_keys(data)
    if method == "ape":  # stanford_cars.yaml: training_free_feat_num 500, w_training_free [0.6, 0.4]
        expected = official_criterion(data.text_features.t(), keys.t(), 2, (0.6, 0.4), 500, only_use_txt=False)
    else:  # training_feat_num 800, w_training [0.2, 0.8]
        expected = official_criterion(data.text_features.t(), keys.t(), 2, (0.2, 0.8), 800, only_use_txt=True)
    assert model.channels.tolist() == expected.tolist()


def test_the_channel_share_scales_q_to_the_feature_width() -> None:
    """Q = round(share · D): DTD's 400 of 1024 channels keep 5 of a 12-wide cache; a share set by hand wins."""
    data = ape_data(dim=12)
    assert len(create_method("ape", data).channels) == round(400 / 1024 * 12) == 5
    assert len(create_method("ape-t", data).channels) == round(700 / 1024 * 12) == 8
    assert len(create_method("ape", data, feat_share=1.0).channels) == 12


# ----------------------------------------------------------------------------------------------- APE


@pytest.mark.parametrize(("alpha", "beta", "gamma"), [(3.0, 1.0, 0.1), (0.7, 5.5, 0.9), (2.0, 0.3, 0.0)])
def test_ape_logits_are_the_official_ones(alpha: float, beta: float, gamma: float) -> None:
    data = ape_data(seed=3)
    model = create_method("ape", data, alpha=alpha, beta=beta, gamma=gamma, search=False)
    keys, values = official_keys(data)
    expected = official_ape_logits(data.test_features, data.text_features.t(), keys.t(), values, model.channels,
                                   alpha, beta, gamma)
    train(model, data, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(data.test_features), expected, rtol=1e-10, atol=1e-9)
    # the γ term matters: the same cell with γ = 0 differs wherever γ ≠ 0
    if gamma:
        plain = official_ape_logits(data.test_features, data.text_features.t(), keys.t(), values, model.channels,
                                    alpha, beta, 0.0)
        assert (plain - expected).abs().max() > 1e-3


def official_search(data: FewShotData, channels: torch.Tensor, scale: tuple[float, float, float],
                    steps: tuple[int, int, int]) -> tuple[float, float, float, float]:
    """`APE`'s search loops as written: β, α, γ lists, the first strictly better accuracy from 0."""
    keys, values = official_keys(data)
    best_acc, best = 0.0, (0.0, 0.0, 0.0)
    beta_list = [i * (scale[0] - 0.1) / steps[0] + 0.1 for i in range(steps[0])]
    alpha_list = [i * (scale[1] - 0.1) / steps[1] + 0.1 for i in range(steps[1])]
    gamma_list = [i * scale[2] / steps[2] for i in range(steps[2])]
    for beta in beta_list:
        for alpha in alpha_list:
            for gamma in gamma_list:
                logits = official_ape_logits(data.val_features, data.text_features.t(), keys.t(), values, channels,
                                             alpha, beta, gamma)
                acc = accuracy(logits, data.val_labels)
                if acc > best_acc:
                    best_acc, best = acc, (alpha, beta, gamma)
    return (*best, best_acc)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_ape_search_keeps_the_official_loops_cell(seed: int) -> None:
    """A small grid (6 β, 5 α, 4 γ) on the few-shot val set: the same cell and accuracy as the loops."""
    data = ape_data(classes=5, seed=seed)
    model = create_method("ape", data, search_set="subset", search_beta_max=9.0, search_beta_steps=6,
                          search_alpha_max=6.0, search_alpha_steps=5, search_gamma_max=2.0, search_gamma_steps=4)
    alpha, beta, gamma, best = official_search(data, model.channels, (9.0, 6.0, 2.0), (6, 5, 4))
    result = train(model, data, seed=1)
    chosen = result.chosen
    assert (chosen["alpha"], chosen["beta"], chosen["gamma"]) == pytest.approx((alpha, beta, gamma), rel=1e-6)
    assert chosen["val_accuracy"] == pytest.approx(best, abs=1e-4) and chosen["search_set"] == "subset"
    assert best > accuracy(100 * data.val_features @ data.text_features.t(), data.val_labels)  # the cache helped


def test_ape_search_with_unequal_shots_keeps_the_loops_cell_within_the_chunk_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Classes with 3, 2, 3, 1 and 3 keys (a class with fewer images than K): the keys cannot be reshaped by class,
    and the search sums them per class with an index sum. It picks the loops' cell, and no sum reads more than one
    [β chunk, N, keys] block: the [β chunk, γ values, N, keys] products are G times the chunk budget (gigabytes for
    20 γ values of a whole val split against thousands of keys)."""
    data = ape_data(classes=5, seed=11)
    keep = torch.ones(len(data.train_labels), dtype=torch.bool)
    for label, drop in ((1, 1), (3, 2)):
        keep[torch.nonzero(data.train_labels == label).squeeze(1)[:drop]] = False
    fields = {"train_features": data.train_features[keep], "train_augmented": data.train_augmented[keep],
              "train_labels": data.train_labels[keep], "train_augmented_norms": data.train_augmented_norms[keep]}
    uneven = FewShotData(**{**data.__dict__, **fields})
    model = create_method("ape", uneven, search_set="subset", search_beta_max=9.0, search_beta_steps=6,
                          search_alpha_max=6.0, search_alpha_steps=5, search_gamma_max=2.0, search_gamma_steps=4)
    assert model.shots is None
    largest = []

    def recording(weights: torch.Tensor, *args: object) -> torch.Tensor:
        largest.append(weights.numel())
        return class_sums(weights, *args)

    monkeypatch.setattr(ape_module, "class_sums", recording)
    chosen = train(model, uneven, seed=1).chosen
    alpha, beta, gamma, best = official_search(uneven, model.channels, (9.0, 6.0, 2.0), (6, 5, 4))
    assert (chosen["alpha"], chosen["beta"], chosen["gamma"]) == pytest.approx((alpha, beta, gamma), rel=1e-6)
    assert chosen["val_accuracy"] == pytest.approx(best, abs=1e-4)
    assert 0 < max(largest) <= 6 * len(uneven.val_labels) * len(uneven.train_labels)  # at most all 6 β at once


def test_the_alpha_intervals_by_hand_read_ties_as_misses() -> None:
    """Scores z + α c of three rows, α in (0.5, 1, 2). Row 0 (label 0): z = (1, 1, 0), c = (0.5, 0.5, 0): class 1
    ties the label at every α, never a hit. Row 1 (label 1): z = (0, 1, 0), c = (1, 0, 0): class 0 catches up at
    α = 1 (scores (1, 1, 0)), so a hit at 0.5 only. Row 2 (label 2): z = (0, 0, 2), c = (0, 1, 0): class 1 ties at
    α = 2, hits at 0.5 and 1. A tie is a miss whichever class comes first (the official `cls_acc` reads `topk`,
    whose choice among equal scores torch does not fix)."""
    zero_shot = torch.tensor([[1.0, 1, 0], [0, 1, 0], [0, 0, 2]])
    cache = torch.tensor([[0.5, 0.5, 0], [1, 0, 0], [0, 1, 0]])
    lo, hi = ape_module.alpha_intervals(zero_shot, cache, torch.tensor([0, 1, 2]))
    alphas = torch.tensor([0.5, 1.0, 2.0])
    hits = (alphas > lo[:, None]) & (alphas < hi[:, None])
    assert hits.tolist() == [[False, False, False], [True, False, False], [True, True, False]]


def test_ape_search_that_finds_nothing_keeps_zero() -> None:
    """Every cell at accuracy 0 (a val set of wrong labels): the loops' start, α = β = γ = 0 (zero-shot)."""
    data = ape_data(classes=2, seed=7)
    # every image labelled with the class zero-shot does not pick (the cache's cells are checked by the loops)
    wrong = 1 - (100 * data.val_features @ data.text_features.t()).argmax(-1)
    flipped = FewShotData(**{**data.__dict__, "val_labels": wrong})
    model = create_method("ape", flipped, search_set="subset", search_alpha_max=0.2, search_alpha_steps=1,
                          search_beta_steps=2, search_gamma_steps=2)
    chosen = train(model, flipped, seed=1).chosen
    _, _, _, best = official_search(flipped, model.channels, (7.0, 0.2, 1.0), (2, 1, 2))
    assert best == 0.0 and (chosen["alpha"], chosen["beta"], chosen["gamma"]) == (0.0, 0.0, 0.0)


def test_without_a_val_set_the_values_stay_with_a_warning() -> None:
    data = ape_data(seed=8)
    empty = FewShotData(**{**data.__dict__, "val_features": data.val_features[:0], "val_labels": data.val_labels[:0]})
    for method in ("ape", "ape-t"):
        model = create_method(method, empty, search_set="subset", **({"epochs": 1} if method == "ape-t" else {}))
        with pytest.warns(ProtocolWarning, match="not searched"):
            chosen = train(model, empty, seed=1).chosen
        assert chosen["alpha"] == 3.0 and chosen["beta"] == 1.0 and chosen["search"].startswith("skipped")


# ----------------------------------------------------------------------------------------------- APE-T


def official_ape_t(data: FewShotData, indices: torch.Tensor, epochs: int, lr: float, eps: float, alpha: float,
                   beta: float) -> dict:
    """`APE_T` with `APE_Training`, as written (float64, no .half()), one batch an epoch of every train image (one
    view each: the pass), then its logits on the test set at the initial α, β."""
    keys, cache_values = official_keys(data)
    clip_weights = data.text_features.t()
    feat_dim, cate_num = clip_weights.shape
    shots = keys.shape[1] // cate_num
    cache_keys = keys.t()  # [N, D]
    value_weights = torch.nn.Parameter(torch.ones([cate_num * shots, 1], dtype=torch.float64))
    res = torch.nn.Parameter(torch.zeros([cate_num, len(indices)], dtype=torch.float64))

    def adapter():
        res_keys = res.unsqueeze(1).repeat(1, shots, 1).reshape(-1, len(indices))
        new_cache_keys = cache_keys.clone().reshape(-1, feat_dim)
        new_cache_keys[:, indices] = new_cache_keys[:, indices] + res_keys
        new_clip_weights = clip_weights.clone()
        new_clip_weights[indices, :] = clip_weights[indices, :] + res.t()
        return new_cache_keys, new_clip_weights, cache_values * value_weights

    def logits(features: torch.Tensor) -> torch.Tensor:
        new_cache_keys, new_clip_weights, R_FW = adapter()
        R_fF = features @ new_cache_keys.t()
        cache_logits = ((-1) * (beta - beta * R_fF)).exp() @ R_FW
        return 100. * features @ new_clip_weights + cache_logits * alpha

    optimizer = torch.optim.AdamW([value_weights, res], lr=lr, eps=eps, weight_decay=1e-1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * 1)
    images, target = data.train_augmented[:, 0], data.train_labels
    losses = []
    for _ in range(epochs):
        loss = -(F.one_hot(target, cate_num) * torch.log_softmax(logits(images), dim=-1)).sum(-1).mean()
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    with torch.no_grad():
        return {"losses": losses, "res": res.detach().clone(), "logits": logits(data.test_features),
                "value_weights": value_weights.detach().squeeze(1)}


@pytest.mark.parametrize(("dataset", "seed"), [("caltech101", 0), ("oxford_pets", 1)])
def test_ape_t_equals_the_official_loop(dataset: str, seed: int) -> None:
    """One view per image, fewer than 256 images: each epoch of either loop is one batch of every image. The
    dataset's lr and eps (caltech101 1e-3, 1e-3; oxford_pets 1e-4, 2e-3), weight decay 0.1, cosine per step."""
    data = ape_data(classes=4, dim=16, shots=3, views=1, seed=seed, dataset=dataset)
    model = create_method("ape-t", data, epochs=40, search=False)
    recipe = model.train_recipe()
    lr, eps = {"caltech101": (1e-3, 1e-3), "oxford_pets": (1e-4, 2e-3)}[dataset]
    assert (recipe.lr, recipe.eps, recipe.weight_decay, recipe.optimizer) == (lr, eps, 0.1, "adamw")
    result = train(model, data, seed=1)
    alpha = {"caltech101": 1.0, "oxford_pets": 2.0}[dataset]
    official = official_ape_t(data, model.channels, 40, lr, eps, alpha, 1.0)
    assert [row["loss"] for row in result.history] == pytest.approx(official["losses"], rel=1e-8, abs=1e-10)
    order = torch.argsort(data.train_labels, stable=True)
    torch.testing.assert_close(model.residual.detach(), official["res"], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(model.value_weights.detach(), official["value_weights"], rtol=1e-8, atol=1e-10)
    assert torch.equal(model.key_labels, data.train_labels[order])
    with torch.no_grad():
        torch.testing.assert_close(model.logits(data.test_features), official["logits"], rtol=1e-8, atol=1e-7)
    assert official["res"].abs().max() > 1e-3 and (official["value_weights"] - 1).abs().max() > 1e-3


def test_ape_t_search_is_the_two_dimensional_grid_on_the_trained_model() -> None:
    """After training: β outer, α inner over Tip-Adapter's grids, on the trained keys, text and key weights."""
    data = ape_data(classes=5, dim=16, shots=3, views=1, seed=9, dataset="caltech101")
    model = create_method("ape-t", data, epochs=30, lr=0.01, search_set="subset", search_beta_steps=7,
                          search_alpha_steps=6)
    chosen = train(model, data, seed=1).chosen
    best_acc, best = 0.0, (0.0, 0.0)
    for beta in [i * (7 - 0.1) / 7 + 0.1 for i in range(7)]:  # caltech101.yaml: search_scale [7, 7, 1]
        for alpha in [i * (7 - 0.1) / 6 + 0.1 for i in range(6)]:
            model.alpha, model.beta = alpha, beta
            with torch.no_grad():
                acc = accuracy(model.logits(data.val_features), data.val_labels)
            if acc > best_acc:
                best_acc, best = acc, (alpha, beta)
    assert (chosen["alpha"], chosen["beta"]) == pytest.approx(best, rel=1e-6)
    assert chosen["val_accuracy"] == pytest.approx(best_acc, abs=1e-4)


# ----------------------------------------------------------------------------------------------- recipes


def test_the_official_and_shared_values() -> None:
    """configs/<dataset>.yaml, written out again; food101's eps 0.01 at 1-2 shots (the config's comment); an unknown
    dataset takes imagenet.yaml's."""
    ape = resolve_options("ape", make_options("ape"), RecipeFacts("eurosat", 4))
    assert (ape.alpha, ape.beta, ape.gamma, ape.search_beta_max, ape.search_alpha_max, ape.search_gamma_max,
            ape.search_beta_steps, ape.search_alpha_steps, ape.search_gamma_steps, ape.feat_share, ape.w_sim,
            ape.w_var, ape.criterion_cache, ape.search_set, ape.raw_keys, ape.base_text) == (
        1.0, 1.0, 0.1, 30.0, 5.0, 1.5, 200, 20, 20, 700 / 1024, 0.9, 0.1, True, "split", True, "official")
    other = resolve_options("ape", make_options("ape"), RecipeFacts("my-photos", 4))
    assert (other.alpha, other.search_gamma_max, other.search_gamma_steps, other.feat_share, other.w_sim) == (
        2.0, 0.5, 5, 500 / 1024, 0.7)
    for shots, eps in ((1, 1e-2), (2, 1e-2), (4, 1e-3)):
        t = resolve_options("ape-t", make_options("ape-t"), RecipeFacts("food101", shots))
        assert (t.lr, t.eps, t.weight_decay, t.epochs, t.min_steps, t.batch_size, t.alpha, t.feat_share, t.w_sim,
                t.w_var, t.criterion_cache) == (1e-4, eps, 0.1, 30, 0, 256, 0.8, 900 / 1024, 0.2, 0.8, False)
    # main.py's loader and scheduler: batch 256, the last partial batch kept (`build_data_loader`, drop_last=False),
    # CosineAnnealingLR over epochs × len(loader), stepped after every batch
    recipe = create_method("ape-t", ape_data(dataset="food101")).train_recipe()
    assert (recipe.batch_size, recipe.drop_last, recipe.schedule, recipe.optimizer) == (256, False, "cosine-step",
                                                                                       "adamw")
    assert recipe.steps_per_epoch(600) == 3  # 256 + 256 + 88
    shared = resolve_options("ape-t", make_options("ape-t", {"recipe": "shared"}), RecipeFacts("food101", 1))
    assert (shared.lr, shared.eps, shared.weight_decay, shared.epochs, shared.min_steps, shared.alpha,
            shared.search_alpha_max, shared.search_beta_max, shared.search_set, shared.raw_keys,
            shared.base_text) == (1e-3, 1e-8, 1e-4, 20, 300, 1.0, 3.0, 7.0, "subset", False, "unit")
    assert not hasattr(shared, "gamma") and (shared.w_sim, shared.w_var, shared.feat_share) == (0.2, 0.8, 500 / 1024)
    shared = resolve_options("ape", make_options("ape", {"recipe": "shared"}), RecipeFacts("eurosat", 4))
    assert (shared.alpha, shared.search_gamma_max, shared.search_gamma_steps, shared.feat_share, shared.w_sim,
            shared.w_var, shared.criterion_cache, shared.search_set) == (1.0, 1.0, 20, 500 / 1024, 0.7, 0.3, True,
                                                                         "subset")


def test_novel_classes_are_not_scored() -> None:
    data = ape_data(seed=10)
    for method in ("ape", "ape-t"):
        model = create_method(method, data, **({"epochs": 1} if method == "ape-t" else {}))
        with pytest.raises(NotApplicable):
            model.logits(data.test_features, data.text_features)
        assert evaluate(model, data.test_features, data.test_labels, data.text_features) is None


# ----------------------------------------------------------------------------------------------- end to end


def test_fit_grid_and_base_to_novel(baseline_cache: Path, tmp_path: Path) -> None:
    metrics = lathadapter.fit(baseline_cache, method="ape", shots=4, seed=1, out=tmp_path, device="cpu")
    assert metrics["accuracy"]["all"] > 100 / 8 + 20 and math.isfinite(metrics["chosen"]["gamma"])
    base = lathadapter.fit(baseline_cache, method="ape-t", shots=4, seed=1, classes="base", out=None, device="cpu",
                           epochs=5)
    assert base["accuracy"]["novel"] is None and base["hm"] is None and base["accuracy"]["base"] > 100 / 4
    launch(GridSpec([str(baseline_cache)], ["tip-adapter", "ape", "ape-t"], [2], [1], options={"ape-t.epochs": ["3"]},
                    tune_preset="lr"), tmp_path / "grid", progress=False)
    rows = list(csv.DictReader((tmp_path / "grid" / "results.csv").open()))
    lrs = sorted(float(r["chosen.recipe.lr"]) for r in rows if r["method"] == "ape-t")
    assert lrs == pytest.approx([1e-5, 1e-4, 1e-3])  # the default config's 1e-4 × 0.1, 1, 10
    assert sum(r["method"] == "ape" for r in rows) == 1 and all(float(r["acc_all"]) > 0 for r in rows)


def test_cli_lists_both_and_rejects_a_bad_share(baseline_cache: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["list", "methods"])
    names = [line.split()[0] for line in listed.output.splitlines() if line.strip()]
    assert listed.exit_code == 0 and "ape" in names and "ape-t" in names
    assert "feat_share" in runner.invoke(app, ["list", "options", "ape"]).output
    result = runner.invoke(app, ["fit", "--cache", str(baseline_cache), "--method", "ape", "--shots", "2", "--device",
                                 "cpu", "--set", "feat_share=1.5"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "feat_share" in lines[0] and "1" in lines[0]
