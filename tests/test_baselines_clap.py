"""CLAP (`clap`) equals an independent re-statement of its official training (github.com/jusiro/CLAP at dbdf409:
`trainers/adapters.py`, classes `AdapterMethod` and `ADAPTER`; `configs/trainers/SGD_lr1e-1_B256_ep300.yaml`),
written here as the official code runs it, with autograd and `torch.optim.SGD`, on identical float64 features; its
multipliers equal the formula on a hand-made example; and it runs through `fit`, grids, the few-shot protocol and
the lr tuning preset, and the command line."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_baseline_recipes import dassl_epoch_lrs  # Dassl's per-epoch lr, written once for both files
from torch import nn
from typer.testing import CliRunner

import lathadapter
from lathadapter.adapter.catalog import create_method, make_options, resolve_options
from lathadapter.adapter.evaluate import evaluate
from lathadapter.adapter.methods import clap as clap_module
from lathadapter.adapter.methods.base import NotApplicable
from lathadapter.adapter.methods.clap import multipliers
from lathadapter.adapter.recipes import RecipeFacts
from lathadapter.adapter.trainer import epoch_orders, train
from lathadapter.cache.store import FewShotData
from lathadapter.cli import app
from lathadapter.experiments.launch import launch
from lathadapter.experiments.protocols import run_protocol
from lathadapter.experiments.spec import GridSpec


def clap_data(classes: int = 4, dim: int = 8, shots: int = 4, views: int = 1, seed: int = 0) -> FewShotData:
    """Unit float64 features around random class centres, text features that carry a weak share of them (zero-shot
    imperfect, so the multipliers differ by class) and raw text norms (the official base is the raw feature)."""
    g = torch.Generator().manual_seed(seed)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)

    centres = unit(torch.randn(classes, dim, generator=g, dtype=torch.float64))
    text = unit(centres + 0.9 * torch.randn(classes, dim, generator=g, dtype=torch.float64))
    norms = 7 + 3 * torch.rand(classes, generator=g, dtype=torch.float64)

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(classes).repeat_interleave(per_class)
        return unit(centres[labels] + 0.8 * torch.randn(len(labels), dim, generator=g, dtype=torch.float64)), labels

    train_x, train_y = draw(shots)
    augmented = unit(train_x[:, None] + 0.4 * torch.randn(len(train_y), views, dim, generator=g, dtype=torch.float64))
    val_x, val_y = draw(2)
    test_x, test_y = draw(10)
    return FewShotData([f"c{i}" for i in range(classes)], text, torch.zeros(0, dim, dtype=torch.float64), train_x,
                       augmented, train_y, val_x, val_y, test_x, test_y, "clap-parity", dataset="dtd",
                       text_raw=text * norms[:, None])


def official_clap(pool: torch.Tensor, pool_labels: torch.Tensor, base: torch.Tensor, test: torch.Tensor,
                  epoch_batches, epochs: int = 300, lr: float = 0.1, constraint: bool = True) -> dict:
    """`ADAPTER.train` with INIT ZS and CONSTRAINT l2, restated: `pool` is `features_train`, the support features
    the multipliers and the batches are read from (the official 20 augmented passes); `epoch_batches(epoch)` the
    index tensors of that epoch's batches into it; `base` the raw base text (`_get_base_text_features`)."""
    prototypes = nn.Parameter(base.clone())  # AdapterMethod: INIT "ZS" copies the base text features
    base_text_features = base.clone()

    def forward_lp(features: torch.Tensor) -> torch.Tensor:
        image_features_norm = features / features.norm(dim=-1, keepdim=True)
        prototypes_norm = prototypes / prototypes.norm(dim=-1, keepdim=True)
        return image_features_norm @ prototypes_norm.t() * 100.0  # logit_scale.exp(): CLIP's 100

    with torch.no_grad():  # extract_features: logits_zs, the model's (zero-shot) logits of the support features
        logits_ds = forward_lp(pool)
    # init_lagrangian_multipliers, no "balanced", "corrected" or "constant" in "l2"
    labels_one_hot = F.one_hot(pool_labels)
    performance = torch.diag(torch.softmax(logits_ds, -1).t() @ labels_one_hot.to(pool.dtype)) / labels_one_hot.sum(0)
    alpha_constraint = performance.clone()
    # Dassl build_optimizer: SGD, MOMENTUM 0.9, SGD_DAMPNING 0, SGD_NESTEROV False, WEIGHT_DECAY 0.0
    optim = torch.optim.SGD([prototypes], lr=lr, momentum=0.9, weight_decay=0.0, dampening=0, nesterov=False)
    lrs = dassl_epoch_lrs(lr, epochs)  # constant 1e-5 warm-up epoch, then cosine, changed once per epoch
    losses, penalties = [], []
    for epoch in range(epochs):
        for group in optim.param_groups:
            group["lr"] = lrs[epoch]
        for idx in epoch_batches(epoch):  # run_epoch: forward_backward on each batch
            output = forward_lp(pool[idx])
            loss_ce = F.cross_entropy(output, pool_labels[idx])
            disimilitude = (prototypes - base_text_features.clone()).pow(2).sum(-1)  # zero_shot_constraint, l2
            loss_constraint = torch.mean(alpha_constraint * disimilitude)
            loss = loss_ce + loss_constraint if constraint else loss_ce
            optim.zero_grad()  # model_backward_and_update
            loss.backward()
            optim.step()
        losses.append(loss.item())
        penalties.append(loss_constraint.item())
        # no outer_step: "adaptative" is not in "l2"
    with torch.no_grad():
        return {"prototypes": prototypes.detach().clone(), "alpha": alpha_constraint, "losses": losses,
                "penalties": penalties, "logits": forward_lp(test)}


def whole_pool_shuffled(n: int, seed: int):
    """The official batches of a support set smaller than one batch: `len(train_loader_x)` is 1 (Dassl drops no
    partial batch then), so each epoch is one batch, `features[0:256]` of the pool shuffled by numpy."""
    rng = np.random.default_rng(seed)
    return lambda epoch: [torch.from_numpy(rng.random(n).argsort())]


@pytest.mark.parametrize(("classes", "shots", "seed"), [(4, 4, 0), (5, 2, 3), (3, 8, 7)])
def test_clap_equals_the_official_loop(classes: int, shots: int, seed: int) -> None:
    """One augmented view per image (the official pool of one pass) and fewer than 256 images: every epoch of either
    loop is one batch of every view, so the two see the same data without sharing any sampling code."""
    data = clap_data(classes=classes, shots=shots, views=1, seed=seed)
    method = create_method("clap", data)
    result = train(method, data, seed=1)
    pool = data.train_augmented[:, 0]
    official = official_clap(pool, data.train_labels, data.text_raw, data.test_features,
                             whole_pool_shuffled(len(pool), seed))
    torch.testing.assert_close(method.multipliers, official["alpha"], rtol=1e-12, atol=1e-12)
    assert result.steps == 300 and len(result.history) == 300
    assert [row["loss"] for row in result.history] == pytest.approx(official["losses"], rel=1e-8, abs=1e-10)
    assert [row["constraint"] for row in result.history] == pytest.approx(official["penalties"], rel=1e-8,
                                                                         abs=1e-12)
    torch.testing.assert_close(method.weight.detach(), official["prototypes"], rtol=1e-8, atol=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(method.logits(data.test_features), official["logits"], rtol=1e-8, atol=1e-7)
    # the oracle is not ZS-LP's: the same loop without the penalty ends elsewhere
    unconstrained = official_clap(pool, data.train_labels, data.text_raw, data.test_features,
                                  whole_pool_shuffled(len(pool), seed), constraint=False)
    assert (unconstrained["prototypes"] - official["prototypes"]).abs().max() > 1e-2
    assert max(official["penalties"]) > 1e-3


def test_clap_equals_the_official_loop_over_several_views_and_batches() -> None:
    """Several views and batches per epoch: the multipliers read every view (the official pool of passes); the
    batches are the trainer's draws (`epoch_orders`: one view per image, a random order; not the official sampling,
    docs/baselines.md), cut into batches of 8, the last partial one dropped as Dassl's train loader does."""
    data = clap_data(classes=5, shots=4, views=3, seed=11)
    n, views, epochs, batch = len(data.train_labels), 3, 40, 8
    method = create_method("clap", data, batch_size=batch, epochs=epochs)
    result = train(method, data, seed=5)
    pool = data.train_augmented.reshape(n * views, -1)  # image i's view j at row i·V + j
    labels = data.train_labels.repeat_interleave(views)
    draws = epoch_orders(torch.Generator().manual_seed(5), n, views, epochs)  # [epochs, 2, n]: samples, rows

    def batches(epoch: int) -> list[torch.Tensor]:
        rows = draws[epoch, 1]
        return [rows[start:start + batch] for start in range(0, n - batch + 1, batch)]

    official = official_clap(pool, labels, data.text_raw, data.test_features, batches, epochs=epochs)
    torch.testing.assert_close(method.multipliers, official["alpha"], rtol=1e-12, atol=1e-12)
    assert result.steps == epochs * (n // batch)
    assert [row["loss"] for row in result.history] == pytest.approx(official["losses"], rel=1e-8, abs=1e-10)
    torch.testing.assert_close(method.weight.detach(), official["prototypes"], rtol=1e-8, atol=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(method.logits(data.test_features), official["logits"], rtol=1e-8, atol=1e-7)


def test_the_multipliers_by_hand() -> None:
    """Three views of class 0 and two of class 1, zero-shot logits chosen so that the softmax is plain fractions:
    α_0 = mean(3/4, 1/2, 1/4) = 0.5, α_1 = mean(4/5, 3/5) = 0.7; corrected: α · 2 / 1.2; constant: 0.6."""
    ln = math.log
    logits = torch.tensor([[ln(3), 0.0], [0.0, 0.0], [0.0, ln(3)], [0.0, ln(4)], [ln(2), ln(3)]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1])
    alpha = torch.tensor([(3 / 4 + 1 / 2 + 1 / 4) / 3, (4 / 5 + 3 / 5) / 2], dtype=torch.float64)  # [0.5, 0.7]
    torch.testing.assert_close(multipliers(logits, labels, "l2"), alpha, rtol=0, atol=1e-15)
    torch.testing.assert_close(multipliers(logits, labels, "l2-balanced"), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(multipliers(logits, labels, "l2-corrected"), alpha * 2 / 1.2)
    torch.testing.assert_close(multipliers(logits, labels, "l2-constant"), torch.full((2,), 0.6, dtype=torch.float64))


@pytest.mark.parametrize("chunk_rows", [8192, 7])
def test_the_multipliers_read_every_augmented_view_at_the_zero_shot_start(chunk_rows: int,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """α from the start's logits, 100 x̂ T̂ᵀ (W₀ the raw base: its direction is the text's), over every cached
    augmented view; the clean view when the cache has none. The 60 views in one product, or in chunks of 7 (the
    last one short), give the same α."""
    monkeypatch.setattr(clap_module, "CHUNK_ROWS", chunk_rows)
    data = clap_data(classes=4, shots=3, views=5, seed=2)
    method = create_method("clap", data)
    views = data.train_augmented.reshape(-1, data.train_augmented.shape[-1])
    labels = data.train_labels.repeat_interleave(5)
    probability = torch.softmax(100 * views @ data.text_features.t(), -1)[torch.arange(len(labels)), labels]
    expected = torch.stack([probability[labels == c].mean() for c in range(4)])
    torch.testing.assert_close(method.multipliers, expected, rtol=1e-12, atol=1e-12)
    assert 0 < float(method.multipliers.min()) < float(method.multipliers.max()) < 1  # class-adaptive here
    clean = clap_data(classes=4, shots=3, views=1, seed=2)
    clean = dataclasses.replace(clean, train_augmented=clean.train_augmented[:, :0])
    probability = torch.softmax(100 * clean.train_features @ clean.text_features.t(), -1)
    expected = torch.stack([probability[clean.train_labels == c, c].mean() for c in range(4)])
    torch.testing.assert_close(create_method("clap", clean).multipliers, expected, rtol=1e-12, atol=1e-12)


def test_clap_is_zs_lp_with_the_penalty() -> None:
    """The recipe, start and head are the linear probe's; the loss adds `mean_c α_c |W_c − T_c|²`; the run records
    the multipliers; novel classes are not scored."""
    data = clap_data(seed=4)
    clap, probe = create_method("clap", data), create_method("linear-probe", data)
    assert clap.train_recipe() == probe.train_recipe() and clap.train_recipe().optimizer == "sgd"
    torch.testing.assert_close(clap.weight, probe.weight, rtol=0, atol=0)
    assert [name for name, _ in clap.named_parameters()] == ["weight"]
    with torch.no_grad():
        clap.weight.add_(0.1)
    features, labels = data.train_features, data.train_labels
    loss, parts = clap.loss(features, labels)
    penalty = (clap.multipliers * ((clap.weight - data.text_raw) ** 2).sum(-1)).mean()
    torch.testing.assert_close(loss, F.cross_entropy(clap.logits(features), labels) + penalty)
    assert set(parts) == {"ce", "constraint"}
    settings = clap.settings()
    assert settings["recipe"] == "official" and settings["recipe.base_text"] == "coop"
    assert settings["clap.alpha_mean"] == pytest.approx(float(clap.multipliers.mean()))
    with pytest.raises(NotApplicable):
        clap.logits(data.test_features, data.text_features)
    assert evaluate(clap, data.test_features, data.test_labels, data.text_features) is None


def test_clap_resolves_to_the_official_recipe() -> None:
    resolved = resolve_options("clap", make_options("clap"), RecipeFacts("imagenet", 16))
    assert (resolved.lr, resolved.weight_decay, resolved.epochs, resolved.min_steps, resolved.batch_size,
            resolved.head, resolved.base_text, resolved.constraint) == (0.1, 0.0, 300, 0, 256, "cosine", "official",
                                                                        "l2")


# ----------------------------------------------------------------------------------------------- end to end


def test_fit_and_base_to_novel(baseline_cache: Path, tmp_path: Path) -> None:
    metrics = lathadapter.fit(baseline_cache, method="clap", shots=4, seed=1, out=tmp_path, device="cpu", epochs=20)
    assert metrics["accuracy"]["all"] > 100 / 8 + 20
    assert metrics["chosen"]["recipe.epochs"] == 20 and 0 < metrics["chosen"]["clap.alpha_min"] <= 1
    base = lathadapter.fit(baseline_cache, method="clap", shots=4, seed=1, classes="base", out=None, device="cpu",
                           epochs=20)
    assert base["accuracy"]["novel"] is None and base["hm"] is None and base["accuracy"]["base"] > 100 / 4


def test_grid_with_the_lr_preset_and_the_few_shot_protocol(baseline_cache: Path, tmp_path: Path) -> None:
    launch(GridSpec([str(baseline_cache)], ["zeroshot", "linear-probe", "clap"], [2], [1], options={"epochs": ["5"]},
                    tune_preset="lr"), tmp_path / "grid", progress=False)
    rows = list(csv.DictReader((tmp_path / "grid" / "results.csv").open()))
    lrs = sorted(float(r["chosen.recipe.lr"]) for r in rows if r["method"] == "clap")
    assert lrs == pytest.approx([0.01, 0.1, 1.0])  # the official 0.1 × 0.1, 1, 10
    assert sum(r["tune.selected"] == "True" for r in rows if r["method"] == "clap") == 1
    assert {r["opt.constraint"] for r in rows if r["method"] == "clap"} == {"l2"}
    run_protocol("few-shot", [str(baseline_cache)], tmp_path / "protocol", ["clap"], [1], shots=[2],
                 options={"epochs": ["3"]}, progress=False)
    (row,) = csv.DictReader((tmp_path / "protocol" / "results.csv").open())
    assert row["method"] == "clap" and float(row["acc_all"]) > 0 and row["opt.constraint"] == "l2"


def test_cli_lists_clap_and_rejects_a_bad_constraint(baseline_cache: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["list", "methods"])
    assert listed.exit_code == 0 and "clap" in [line.split()[0] for line in listed.output.splitlines()]
    options = runner.invoke(app, ["list", "options", "clap"]).output
    assert "constraint" in options and "l2-balanced" in options
    result = runner.invoke(app, ["fit", "--cache", str(baseline_cache), "--method", "clap", "--shots", "2", "--device",
                                 "cpu", "--set", "constraint=cosine"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "constraint" in lines[0] and "l2" in lines[0]
