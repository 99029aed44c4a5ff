"""Cross-modal linear probing (`cross-modal`) equals an independent re-statement of its official training
(github.com/linzhiqiu/cross_modal_adaptation at ac9077e: `train.py`'s `main` and `train`, `engine/model/head.py`,
`engine/model/logit.py`, `engine/optimizer/*.py`), written here as the official code runs it — autograd,
`torch.optim.AdamW`, torch's cosine scheduler under the official warm-up, a torch `DataLoader` of the text samples
concatenated to each image batch — on identical float64 features; its batch composition equals a hand-checked
example; and it runs through `fit`, grids with the lr preset, the few-shot protocol and the command line."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

import lathadapter
from lathadapter.adapter.catalog import create_method, make_options, resolve_options
from lathadapter.adapter.evaluate import evaluate
from lathadapter.adapter.methods.base import IMAGENET_TEMPLATES_SELECT, NotApplicable
from lathadapter.adapter.options import OptionError, unkeyed
from lathadapter.adapter.recipes import RecipeFacts
from lathadapter.adapter.trainer import epoch_orders, train
from lathadapter.cache.store import FewShotData
from lathadapter.cli import app
from lathadapter.experiments.launch import launch
from lathadapter.experiments.protocols import run_protocol
from lathadapter.experiments.records import load_results, records
from lathadapter.experiments.spec import GridSpec
from lathadapter.experiments.table import write_results

SELECT = list(IMAGENET_TEMPLATES_SELECT)


def cross_modal_data(classes: int = 6, dim: int = 8, shots: int = 4, templates: int = 1, dataset: str = "dtd",
                     seed: int = 0) -> FewShotData:
    """Unit float64 image features around random class centres, one augmented view each, and `templates` raw text
    features a class (`template_raw`, the CoOp template first) of various norms; with 8 templates named as the cache
    names them (CoOp's, then the 7 select ones), on ImageNet the official samples are the last 7."""
    g = torch.Generator().manual_seed(seed)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)

    centres = unit(torch.randn(classes, dim, generator=g, dtype=torch.float64))
    raw = (centres + 0.9 * torch.randn(templates, classes, dim, generator=g, dtype=torch.float64)) * (
        5 + 5 * torch.rand(templates, classes, 1, generator=g, dtype=torch.float64))

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(classes).repeat_interleave(per_class)
        return unit(centres[labels] + 0.8 * torch.randn(len(labels), dim, generator=g, dtype=torch.float64)), labels

    train_x, train_y = draw(shots)
    augmented = unit(train_x[:, None] + 0.3 * torch.randn(len(train_y), 1, dim, generator=g, dtype=torch.float64))
    val_x, val_y = draw(2)
    test_x, test_y = draw(10)
    names = ["a photo of a {}.", *SELECT][:templates]
    return FewShotData([f"c{i}" for i in range(classes)], unit(raw[0]), torch.zeros(0, dim, dtype=torch.float64),
                       train_x, augmented, train_y, val_x, val_y, test_x, test_y, "cross-modal-parity",
                       dataset=dataset, text_raw=raw[0], templates=names, template_raw=raw)


def official_lrs(lr: float, iters: int, warmup_iter: int = 50, warmup_min_lr: float = 1e-5) -> list[float]:
    """Each iteration's lr under `build_lr_scheduler(optimizer, "cosine", 50, iters, "linear", 1e-5)`: a
    LinearWarmupScheduler around torch's CosineAnnealingLR(T_max=iters), stepped after every optimiser step. The
    wrapper's logic around torch's own scheduler: iteration 0 at the warm-up lr, iteration k ≤ 50 at lr·k/50, then
    the successor stepped from where the warm-up left the lr."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(iters))
    group = optimizer.param_groups[0]
    group["lr"], last_epoch = warmup_min_lr, 0  # the wrapper's initial step
    lrs = []
    for _ in range(iters):
        lrs.append(group["lr"])
        if last_epoch >= warmup_iter:
            with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": no step is taken here
                warnings.simplefilter("ignore", UserWarning)
                successor.step()
        else:
            last_epoch += 1
            group["lr"] = successor.get_last_lr()[0] if last_epoch >= warmup_iter else lr * last_epoch / warmup_iter
    return lrs


class OfficialAdapter(nn.Module):
    """`engine/model/head.py`'s `Adapter(c_in, reduction=4, residual_ratio=0.2)`, restated: two bias-free linear
    layers D → D/4 → D, a ReLU after each, blended with its input 0.2 : 0.8."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim // 4, bias=False), nn.ReLU(),
                                nn.Linear(dim // 4, dim, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.2 * self.fc(x) + (1 - 0.2) * x


def official_cross_modal(text_raw: torch.Tensor, image_batches: list[tuple[torch.Tensor, torch.Tensor]],
                         test: torch.Tensor, lr: float, wd: float, text_batch: int, seed: int,
                         cross_modal: bool = True, head_kind: str = "linear", init: str = "zeroshot") -> dict:
    """`train.py`'s `main` and `train` for one grid point, restated: `text_raw` [C, T, D] the text features of
    `hand_crafted` (one per class and template, class by class, as `extract_text_features` stores them);
    `image_batches` each iteration's image batch (the image loader's); the text loader is a torch DataLoader
    (shuffle, drop_last), iterated anew when exhausted, from the global generator seeded with `seed` once the head
    is built (as `create_method` is called under that seed: the loops draw the same permutations). `head_kind`,
    `init`: `--classifier_head`, `--classifier_init`; the random values (W under `random`, then the adapter's
    layers) are torch's default `nn.Linear` init in float32 drawn under `seed` in `make_classifier_head`'s order
    (the W that `zeroshot` overwrites is not drawn, as in `cross-modal`)."""
    classes, templates, dim = text_raw.shape
    text_features = text_raw.reshape(-1, dim)
    text_labels = torch.arange(classes).repeat_interleave(templates)
    overwritten = nn.Linear(dim, classes, bias=False)  # zeroshot's W, built before the seed: its draws unused
    torch.manual_seed(seed)
    linear = (nn.Linear(dim, classes, bias=False) if init == "random" else overwritten).to(torch.float64)
    adapter = OfficialAdapter(dim).to(torch.float64) if head_kind == "adapter" else None
    if init == "zeroshot":  # get_zero_shot_weights: per class the mean of the raw features, normalised
        linear.weight.data = F.normalize(text_raw.mean(dim=1), dim=1)
    head = linear if adapter is None else nn.Sequential(adapter, linear)
    scale = torch.tensor([4.60517], dtype=torch.float64).exp()  # LogitHead, not learnable

    def logit_head(x: torch.Tensor) -> torch.Tensor:  # LogitHead.forward: normalise, the head, the scale
        return head(F.normalize(x, dim=1)) * scale

    optimizer = torch.optim.AdamW([{"params": head.parameters()}], lr=lr, weight_decay=wd, betas=(0.9, 0.999))
    lrs = official_lrs(lr, len(image_batches))
    text_loader = DataLoader(TensorDataset(text_features, text_labels), batch_size=text_batch, shuffle=True,
                             drop_last=True) if cross_modal else None
    text_iter = iter(text_loader) if text_loader is not None else None
    losses = []
    for i, (image, image_label) in enumerate(image_batches):
        for group in optimizer.param_groups:
            group["lr"] = lrs[i]
        feature, label = image, image_label
        if text_iter is not None:
            try:
                text, text_label = next(text_iter)
            except StopIteration:
                text_iter = iter(text_loader)
                text, text_label = next(text_iter)
            feature, label = torch.cat([image, text], dim=0), torch.cat([image_label, text_label], dim=0)
        loss = torch.nn.CrossEntropyLoss()(logit_head(feature), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        return {"weight": linear.weight.detach().clone(), "losses": losses, "logits": logit_head(test),
                "adapter": None if adapter is None else [adapter.fc[0].weight.detach().clone(),
                                                         adapter.fc[2].weight.detach().clone()]}


def trainer_image_batches(data: FewShotData, seed: int, batch: int, epochs: int) -> list[tuple[torch.Tensor, ...]]:
    """The trainer's image batches (`epoch_orders`: each epoch a random order of the images' one view; the last
    partial batch dropped): the image loader of both loops (not the official sampling, docs/baselines.md)."""
    n = len(data.train_labels)
    draws = epoch_orders(torch.Generator().manual_seed(seed), n, 1, epochs)
    rows = data.train_augmented[:, 0]
    return [(rows[draws[e, 1, s:s + batch]], data.train_labels[draws[e, 0, s:s + batch]])
            for e in range(epochs) for s in range(0, n - batch + 1, batch)]


CASES = [  # dataset, classes, shots, templates, batch (images = texts), lr, weight decay, steps
    ("dtd", 6, 4, 1, 4, 1e-1, 0.0, 120),  # 6 batches an epoch; a text pass is 1 batch (6 // 4), 2 left out
    ("eurosat", 5, 3, 1, 2, 5e-2, 1e-2, 91),  # 7 batches of 2 of 15 images; 2 text batches a pass, 91 steps
    ("imagenet", 4, 2, 8, 4, 1e-3, 1e-4, 64),  # 28 text samples (7 a class), 7 text batches a pass
]


@pytest.mark.parametrize(("dataset", "classes", "shots", "templates", "batch", "lr", "wd", "steps"), CASES)
def test_cross_modal_equals_the_official_loop(dataset: str, classes: int, shots: int, templates: int, batch: int,
                                              lr: float, wd: float, steps: int) -> None:
    data = cross_modal_data(classes=classes, shots=shots, templates=templates, dataset=dataset, seed=classes)
    n = len(data.train_labels)
    torch.manual_seed(7)
    method = create_method("cross-modal", data, batch_size=batch, lr=lr, weight_decay=wd, min_steps=steps)
    result = train(method, data, seed=3)
    epochs = math.ceil(steps / (n // batch))
    assert result.steps == epochs * (n // batch) == steps
    text_raw = data.template_raw[1:] if dataset == "imagenet" else data.template_raw[:1]
    official = official_cross_modal(text_raw.transpose(0, 1), trainer_image_batches(data, 3, batch, epochs),
                                    data.test_features, lr, wd, batch, seed=7)
    per_epoch = official["losses"][n // batch - 1::n // batch]  # the trainer records each epoch's last batch
    assert [row["loss"] for row in result.history] == pytest.approx(per_epoch, rel=1e-8, abs=1e-10)
    torch.testing.assert_close(method.weight.detach(), official["weight"], rtol=1e-8, atol=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(method.logits(data.test_features), official["logits"], rtol=1e-8, atol=1e-7)
    # the oracle's text samples matter: the same loop on the images alone ends elsewhere
    alone = official_cross_modal(text_raw.transpose(0, 1), trainer_image_batches(data, 3, batch, epochs),
                                 data.test_features, lr, wd, batch, seed=7, cross_modal=False)
    assert (alone["weight"] - official["weight"]).abs().max() > 1e-2


def test_a_run_of_whole_epochs_beyond_the_official_iterations_ends_where_the_official_one_ends() -> None:
    """The official run is `max_iter` iterations; the trainer runs whole epochs: 24 images in batches of 4 are 6
    steps an epoch, so 100 iterations take 17 epochs, 102 steps. W after them is the official loop's after exactly
    100 iterations (its cosine over 100), the 2 steps beyond at lr 0 (on ImageNet at 16 shots the same rounding is
    16,000 steps for the official 12,800)."""
    data = cross_modal_data(classes=6, shots=4, seed=6)
    torch.manual_seed(5)
    method = create_method("cross-modal", data, batch_size=4, lr=5e-2, weight_decay=1e-2, min_steps=100)
    result = train(method, data, seed=2)
    assert result.steps == 102
    official = official_cross_modal(data.template_raw[:1].transpose(0, 1),
                                    trainer_image_batches(data, 2, 4, 17)[:100], data.test_features, 5e-2, 1e-2, 4,
                                    seed=5)
    torch.testing.assert_close(method.weight.detach(), official["weight"], rtol=1e-8, atol=1e-8)


def test_text_samples_false_is_the_official_uni_modal_loop() -> None:
    """`text_samples=false`: the whole step is images (`--modality uni_modal`), from the same start."""
    data = cross_modal_data(classes=5, shots=4, seed=2)
    method = create_method("cross-modal", data, batch_size=4, min_steps=60, text_samples=False)
    result = train(method, data, seed=1)
    official = official_cross_modal(data.template_raw[:1].transpose(0, 1), trainer_image_batches(data, 1, 4, 12),
                                    data.test_features, 1e-3, 0.0, 4, seed=0, cross_modal=False)
    assert result.steps == 60 and method.settings()["cross-modal.text_batch"] == 0
    torch.testing.assert_close(method.weight.detach(), official["weight"], rtol=1e-8, atol=1e-8)


HEADS = [  # dataset, classes, dim, shots, templates, batch, lr, weight decay, steps, classifier, init
    ("dtd", 6, 16, 4, 1, 4, 1e-2, 1e-3, 60, "adapter", "zeroshot"),  # 6 batches an epoch, 10 epochs
    ("imagenet", 4, 16, 2, 8, 4, 5e-3, 1e-5, 40, "adapter", "random"),  # 28 text samples, 7 text batches a pass
    ("eurosat", 5, 8, 3, 1, 2, 5e-2, 1e-2, 42, "linear", "random"),  # 7 batches of 2, 6 epochs
]


@pytest.mark.parametrize(("dataset", "classes", "dim", "shots", "templates", "batch", "lr", "wd", "steps",
                          "classifier", "init"), HEADS)
def test_the_adapter_and_the_random_start_equal_the_official_loop(dataset: str, classes: int, dim: int, shots: int,
                                                                   templates: int, batch: int, lr: float, wd: float,
                                                                   steps: int, classifier: str, init: str) -> None:
    """`classifier=adapter` (`--classifier_head adapter`) and `init=random` (`--classifier_init random`) against
    the official loop with its `Adapter` in front of the linear head and torch's default `nn.Linear` start: the
    per-epoch losses, W, the adapter's layers and the test logits, in float64, within 1e-8."""
    data = cross_modal_data(classes=classes, dim=dim, shots=shots, templates=templates, dataset=dataset, seed=dim)
    n = len(data.train_labels)
    torch.manual_seed(11)
    method = create_method("cross-modal", data, batch_size=batch, lr=lr, weight_decay=wd, min_steps=steps,
                           classifier=classifier, init=init)
    result = train(method, data, seed=4)
    epochs = steps // (n // batch)
    assert result.steps == steps
    text_raw = data.template_raw[1:] if dataset == "imagenet" else data.template_raw[:1]
    official = official_cross_modal(text_raw.transpose(0, 1), trainer_image_batches(data, 4, batch, epochs),
                                    data.test_features, lr, wd, batch, seed=11, head_kind=classifier, init=init)
    per_epoch = official["losses"][n // batch - 1::n // batch]
    assert [row["loss"] for row in result.history] == pytest.approx(per_epoch, rel=1e-8, abs=1e-10)
    torch.testing.assert_close(method.weight.detach(), official["weight"], rtol=1e-8, atol=1e-8)
    if classifier == "adapter":
        ours = [method.adapter.net[0].weight.detach(), method.adapter.net[2].weight.detach()]
        for layer, (mine, theirs) in enumerate(zip(ours, official["adapter"], strict=True)):
            torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-8, msg=lambda m, i=layer: f"layer {i}: {m}")
    with torch.no_grad():
        torch.testing.assert_close(method.logits(data.test_features), official["logits"], rtol=1e-8, atol=1e-7)


def test_the_random_start_is_torchs_linear_default_drawn_from_the_run_seed() -> None:
    """`init=random`: W is what `nn.Linear(D, C, bias=False)` draws under the run's seed (U(−1/√D, 1/√D)), then the
    adapter's layers what `nn.Linear(D, D/4)` and `nn.Linear(D/4, D)` draw after it; the same seed draws the same
    start, another seed another; under `recipe=shared` b₀ = 0."""
    data = cross_modal_data(classes=50, dim=64, shots=1)
    bound = 1 / math.sqrt(64)

    def built(seed: int, **options) -> torch.nn.Module:
        torch.manual_seed(seed)
        return create_method("cross-modal", data, **{"init": "random", **options})

    first, again, other = built(3), built(3), built(4)
    w = first.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound  # 3,200 draws: P(all under 0.99 bound) ≈ 1e-14
    assert abs(float(w.mean())) < 0.05 * bound and float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.03)
    assert torch.equal(w, again.weight.detach()) and not torch.equal(w, other.weight.detach())
    torch.manual_seed(3)
    linear, down, up = nn.Linear(64, 50, bias=False), nn.Linear(64, 16, bias=False), nn.Linear(16, 64, bias=False)
    assert torch.equal(w, linear.weight.detach().double())
    adapter = built(3, classifier="adapter")
    assert torch.equal(adapter.weight.detach(), w)
    assert torch.equal(adapter.adapter.net[0].weight.detach(), down.weight.detach().double())
    assert torch.equal(adapter.adapter.net[2].weight.detach(), up.weight.detach().double())
    shared = built(3, recipe="shared")
    assert torch.equal(shared.weight.detach(), w) and torch.equal(shared.bias.detach(), torch.zeros(50).double())


def test_the_adapter_s_logits_by_hand() -> None:
    """`classifier=adapter`: `e^4.60517 (0.8 x̂ + 0.2 relu(relu(x̂ A₁ᵀ) A₂ᵀ)) Wᵀ`, the input normalised before the
    adapter and nothing renormalised after it (`LogitHead`: normalise, then `Sequential(adapter, linear)`), on
    trained weights and inputs of other norms than 1."""
    data = cross_modal_data(classes=5, dim=16, shots=2, seed=3)
    torch.manual_seed(1)
    method = create_method("cross-modal", data, classifier="adapter", lr=1e-2, min_steps=30)
    train(method, data, seed=1)
    a1, a2, w = (method.adapter.net[0].weight.detach(), method.adapter.net[2].weight.detach(),
                 method.weight.detach())
    x = data.test_features * torch.linspace(0.5, 3.0, len(data.test_features), dtype=torch.float64)[:, None]
    unit = x / x.pow(2).sum(1, keepdim=True).sqrt()
    blended = 0.8 * unit + 0.2 * (unit @ a1.t()).clamp(min=0).matmul(a2.t()).clamp(min=0)
    with torch.no_grad():
        got = method.logits(x)
    torch.testing.assert_close(got, math.exp(4.60517) * blended @ w.t(), rtol=1e-12, atol=1e-10)
    renormalised = math.exp(4.60517) * (blended / blended.norm(dim=1, keepdim=True)) @ w.t()
    assert (got - renormalised).abs().max() > 1e-3  # the check tells the two orders apart


def test_the_adapter_takes_its_official_values_and_bad_choices_are_refused() -> None:
    """`classifier=adapter` under `recipe=official`: `HYPER_DICT["adapter"]`'s first values (lr 1e-4, weight decay
    0, batch 8 = 4 images + 4 texts, 12,800 iterations); a value set wins; `recipe=shared` keeps the shared values.
    `init` at its default keeps the run keys of before it existed; other values are refused with the choices."""
    facts = RecipeFacts("dtd", 4)
    adapter = resolve_options("cross-modal", make_options("cross-modal", {"classifier": "adapter"}), facts)
    assert (adapter.lr, adapter.weight_decay, adapter.batch_size, adapter.min_steps, adapter.epochs,
            adapter.init) == (1e-4, 0.0, 4, 12800, 1, "zeroshot")
    assert resolve_options("cross-modal", make_options("cross-modal", {"classifier": "adapter", "lr": "1e-5"}),
                           facts).lr == 1e-5
    assert resolve_options("cross-modal", make_options("cross-modal", {"classifier": "adapter", "recipe": "shared"}),
                           facts).lr == 1e-3
    assert "init" in unkeyed(make_options("cross-modal")) and "init" not in unkeyed(
        make_options("cross-modal", {"init": "random"}))
    refused = (("init", "kaiming", "zeroshot, random"), ("classifier", "mlp", "linear, affine, adapter"))
    for name, value, valid in refused:
        with pytest.raises(OptionError, match=f"option {name}='{value}' of cross-modal is not valid: it must be one "
                                              f"of: {valid}"):
            make_options("cross-modal", {name: value})


def test_the_schedule_is_the_official_warm_up_and_cosine() -> None:
    """The lr of every step of a 12,800-step run (32 images: 8 batches an epoch, 1,600 epochs; a count that does
    not divide 12,800 rounds the run up to whole epochs) against torch's CosineAnnealingLR behind the official
    warm-up."""
    data = cross_modal_data(classes=8, shots=4)
    method = create_method("cross-modal", data)
    recipe = method.train_recipe()
    steps = recipe.epochs_for(32) * recipe.steps_per_epoch(32)
    assert recipe.epochs_for(24) * recipe.steps_per_epoch(24) == 12804  # 2134 epochs of 6: 4 steps at lr 0 (below)
    assert steps == 12800 and recipe.batch_size == 4 and recipe.drop_last
    params = [torch.zeros(1, requires_grad=True)]
    optimizer = method.optimizer(params, recipe)
    scheduler = method.scheduler(optimizer, recipe, recipe.epochs_for(32), recipe.steps_per_epoch(32))
    ours = []
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": no step is taken here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            ours.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    expected = official_lrs(1e-3, 12800)
    assert ours[:3] == pytest.approx([1e-5, 1e-3 / 50, 2e-3 / 50], rel=1e-12)
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # 24 images: 12,804 steps, the official 12,800 and 4 more at lr 0
    scheduler = method.scheduler(optimizer, recipe, recipe.epochs_for(24), recipe.steps_per_epoch(24))
    ours = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(12804):
            ours.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    assert ours[:12800] == pytest.approx(expected, rel=1e-9, abs=1e-15) and ours[12800:] == [0.0] * 4


def test_a_step_s_batch_by_hand() -> None:
    """5 classes, one template: 5 text samples in batches of 2, so a pass is 2 batches of a permutation, its fifth
    sample left out. Under seed 0 the passes are [1 4 | 2 3 | (0 left out)], [2 3 | 4 0 | (1)], then [2 4 ...] (the
    DataLoader's own draws, checked below); the first step is images 0 and 1 (class 0) with the texts of classes 1
    and 4, labels [0, 0, 1, 4], and its loss the mean of those 4 terms."""
    data = cross_modal_data(classes=5, shots=2, seed=4)
    torch.manual_seed(0)
    method = create_method("cross-modal", data, batch_size=2, min_steps=4)
    assert method.text_order.tolist() == [[1, 4], [2, 3], [2, 3], [4, 0], [2, 4]]  # 1 epoch of 5 batches: 5 steps
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.arange(5)), batch_size=2, shuffle=True, drop_last=True)
    passes = [[batch.tolist() for (batch,) in loader] for _ in range(2)]
    assert passes == [[[1, 4], [2, 3]], [[2, 3], [4, 0]]]
    images, labels = data.train_augmented[:2, 0], data.train_labels[:2]
    assert labels.tolist() == [0, 0]
    w = F.normalize(data.template_raw[0], dim=-1)  # W₀ and the text samples: the unit CoOp features
    batch = torch.stack([images[0], images[1], w[1], w[4]])
    with torch.no_grad():
        loss, _ = method.loss(images, labels)
        terms = -torch.log_softmax(math.exp(4.60517) * batch @ w.t(), -1)[torch.arange(4), torch.tensor([0, 0, 1, 4])]
    assert float(loss) == pytest.approx(float(terms.mean()), rel=1e-12)
    assert int(method.text_step) == 1  # the next step reads the next batch of texts
    assert set(method.state_dict()) == {"weight", "text_features"}  # the kept (select=val) states: no text order


def test_imagenet_samples_and_start_are_the_select_templates() -> None:
    """On ImageNet: 7 samples a class (the select templates, not the CoOp one), W₀ their normalised raw mean."""
    data = cross_modal_data(classes=3, templates=8, dataset="imagenet")
    method = create_method("cross-modal", data)
    select = data.template_raw[1:]  # [7, C, D]
    torch.testing.assert_close(method.weight.detach(), F.normalize(select.mean(0), dim=-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(method.text_samples, F.normalize(select.transpose(0, 1), dim=-1).reshape(21, -1))
    assert method.text_labels.tolist() == [c for c in range(3) for _ in range(7)]
    assert method.settings()["recipe.texts"] == "imagenet-select"
    dtd = create_method("cross-modal", cross_modal_data(classes=3, templates=8, dataset="dtd"))
    assert dtd.settings()["recipe.texts"] == "coop" and len(dtd.text_samples) == 3


def test_resolution_shared_recipe_and_novel_classes() -> None:
    official = resolve_options("cross-modal", make_options("cross-modal"), RecipeFacts("imagenet", 16))
    assert (official.lr, official.weight_decay, official.batch_size, official.min_steps, official.epochs,
            official.classifier, official.texts, official.text_samples, official.text_batch) == (
        1e-3, 0.0, 4, 12800, 1, "linear", "hand-crafted", True, 0)
    data = cross_modal_data(classes=4, shots=2, seed=1)
    shared = create_method("cross-modal", data, recipe="shared")
    assert shared.train_recipe().optimizer == "adamw" and shared.train_recipe().schedule == "cosine-step"
    assert shared.settings()["cross-modal.text_batch"] == 4  # the 8 images of a step of 256, texts at most all 4
    torch.testing.assert_close(shared.weight.detach(), data.text_features)
    with torch.no_grad():
        torch.testing.assert_close(shared.logits(data.test_features),
                                   100 * data.test_features @ data.text_features.t())
    with pytest.raises(NotApplicable):
        shared.logits(data.test_features, data.text_features)
    assert evaluate(shared, data.test_features, data.test_labels, data.text_features) is None


# ----------------------------------------------------------------------------------------------- end to end


def test_fit_and_base_to_novel(baseline_cache: Path, tmp_path: Path) -> None:
    metrics = lathadapter.fit(baseline_cache, method="cross-modal", shots=4, seed=1, out=tmp_path, device="cpu",
                              min_steps=400)
    assert metrics["accuracy"]["all"] > 100 / 8 + 20
    assert metrics["chosen"]["recipe.min_steps"] == 400 and metrics["chosen"]["cross-modal.text_batch"] == 4
    base = lathadapter.fit(baseline_cache, method="cross-modal", shots=4, seed=1, classes="base", out=None,
                           device="cpu", min_steps=200)
    assert base["accuracy"]["novel"] is None and base["hm"] is None and base["accuracy"]["base"] > 100 / 4


def test_base_to_novel_text_samples_are_the_base_classes(baseline_cache: Path) -> None:
    from lathadapter.cache.store import CacheReader

    with CacheReader(baseline_cache) as reader:
        data = reader.load(4, 1).select_classes([0, 2, 4, 6])
    method = create_method("cross-modal", data, min_steps=10)
    assert method.text_labels.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(method.text_samples, F.normalize(data.template_raw[0], dim=-1))


def test_grid_with_the_lr_preset_and_the_few_shot_protocol(baseline_cache: Path, tmp_path: Path) -> None:
    launch(GridSpec([str(baseline_cache)], ["cross-modal"], [2], [1], options={"min_steps": ["100"]}, tune_preset="lr"),
           tmp_path / "grid", progress=False)
    rows = list(csv.DictReader((tmp_path / "grid" / "results.csv").open()))
    assert sorted(float(r["chosen.recipe.lr"]) for r in rows) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert sum(r["tune.selected"] == "True" for r in rows) == 1
    run_protocol("few-shot", [str(baseline_cache)], tmp_path / "protocol", ["cross-modal"], [1], shots=[2],
                 options={"min_steps": ["50"], "text_samples": ["false"]}, progress=False)
    (row,) = csv.DictReader((tmp_path / "protocol" / "results.csv").open())
    assert row["method"] == "cross-modal" and float(row["acc_all"]) > 0 and row["opt.text_samples"] == "False"


def test_a_run_saved_before_init_existed_is_read_as_init_zeroshot(baseline_cache: Path, tmp_path: Path) -> None:
    """A default run saved before `init` existed keeps its key (`before="zeroshot"`), so a resumed grid keeps it; its
    config.json has no `init`. The results table reads it as `init=zeroshot`, as it trained: one `opt.init` value
    beside a run saved now, and one configuration in the report, not two."""
    out = tmp_path / "grid"
    launch(GridSpec([str(baseline_cache)], ["cross-modal"], [2, 4], [1], options={"min_steps": ["20"]}), out,
           progress=False)
    earlier = sorted((out / "runs").glob("*/config.json"))[0]
    record = json.loads(earlier.read_text())
    del record["options"]["init"]  # as written before the option existed
    earlier.write_text(json.dumps(record))
    write_results(out)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [row["opt.init"] for row in rows] == ["zeroshot", "zeroshot"]
    assert len({r.config for r in records(load_results(out / "results.csv"))}) == 1


def test_cli_lists_cross_modal_and_rejects_a_bad_text_batch_and_init(baseline_cache: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["list", "methods"])
    assert listed.exit_code == 0 and "cross-modal" in [line.split()[0] for line in listed.output.splitlines()]
    assert "text_samples" in runner.invoke(app, ["list", "options", "cross-modal"]).output
    result = runner.invoke(app, ["fit", "--cache", str(baseline_cache), "--method", "cross-modal", "--shots", "2",
                                 "--device", "cpu", "--set", "text_batch=9"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "text_batch=9" in lines[0] and "1..8" in lines[0]
    result = runner.invoke(app, ["fit", "--cache", str(baseline_cache), "--method", "cross-modal", "--shots", "2",
                                 "--device", "cpu", "--set", "init=kaiming"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "init='kaiming'" in lines[0] and "zeroshot, random" in lines[0]
