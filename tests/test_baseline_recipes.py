"""Each baseline under `recipe=official` equals an independent re-statement of its official code (docs/baselines.md),
on identical small features: logits, searched choices, optimiser, learning rate at every step, epochs and batches.
`recipe=shared` keeps the recipe every trained baseline used before (tests/test_pinned_metrics.py pins its metrics).
The cache's schema 2 (raw norms, `--val split`) is checked on a real build with the tiny model, and a schema-1 cache
still loads while a method that needs its missing norms names the rebuild command."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import lathadapter
from lathadapter.adapter.catalog import build_method, create_method, make_options, method_names, resolve_options
from lathadapter.adapter.methods.base import ProtocolWarning
from lathadapter.adapter.recipes import RecipeFacts
from lathadapter.adapter.trainer import train
from lathadapter.cache.build import BuildError, build
from lathadapter.cache.encode import augmented_views, view_seed
from lathadapter.cache.inspection import summary, verify
from lathadapter.cache.store import CacheError, CacheReader, FewShotData, fingerprint_of
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cache.templates import ensemble_templates
from lathadapter.cli import app
from lathadapter.experiments.run import RunConfig, option_in_effect

# ----------------------------------------------------------------------------------------------------------------
# The official values, written out again from the official repositories (not imported from the package).

# gaopengcuhk/Tip-Adapter configs/<dataset>.yaml: search_scale [β_max, α_max], init_alpha, train_epoch
TIP_YAML = {"caltech101": (12, 5, 3, 20), "oxford_flowers": (50, 50, 10, 20), "fgvc_aircraft": (30, 30, 5, 20),
            "stanford_cars": (20, 10, 3, 20), "eurosat": (12, 10, 2, 100), "imagenet": (7, 3, 1.17, 20),
            "dtd": (13, 13, 2, 20), "food101": (10, 10, 1.17, 20), "oxford_pets": (7, 3, 1.17, 20),
            "sun397": (12, 10, 1.17, 20), "ucf101": (7, 3, 3, 20)}


def few_shot(dataset: str = "caltech101", classes: int = 4, dim: int = 8, shots: int = 4, views: int = 3,
             val_split: bool = True, norms: bool = True, seed: int = 0) -> FewShotData:
    """A small few-shot set with everything a schema-2 cache gives: unit features and their raw norms."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    text = F.normalize(centres + 0.6 * torch.randn(classes, dim, generator=g), dim=-1)
    text_norms = 7 + 3 * torch.rand(classes, generator=g)
    labels = torch.arange(classes).repeat_interleave(shots)

    def images(of: torch.Tensor, noise: float) -> torch.Tensor:
        return F.normalize(centres[of] + noise * torch.randn(len(of), dim, generator=g), dim=-1)

    train_x = images(labels, 0.8)
    noise = 0.4 * torch.randn(len(labels), views, dim, generator=g)
    train_augmented = F.normalize(train_x.unsqueeze(1) + noise, dim=-1)
    view_norms = 9 + 3 * torch.rand(len(labels), views, generator=g)
    val_labels = torch.arange(classes).repeat_interleave(min(shots, 4))
    split_labels = torch.arange(classes).repeat_interleave(12)
    test_labels = torch.arange(classes).repeat_interleave(10)
    split_x = images(split_labels, 1.0)
    return FewShotData(
        [f"c{i}" for i in range(classes)], text, torch.zeros(0, dim), train_x, train_augmented, labels,
        images(val_labels, 1.0), val_labels, images(test_labels, 1.0), test_labels, "test",
        dataset=dataset,
        text_raw=text * text_norms[:, None] if norms else None,
        train_augmented_norms=view_norms if norms else None,
        search_features=split_x if val_split else None,
        search_labels=split_labels if val_split else None,
    )


def dassl_epoch_lrs(base_lr: float, max_epoch: int, warmup_epoch: int = 1, cons_lr: float = 1e-5) -> list[float]:
    """The lr of each epoch under Dassl's `build_lr_scheduler` with LR_SCHEDULER cosine, WARMUP_TYPE constant and
    WARMUP_RECOUNT true: a ConstantWarmupScheduler around CosineAnnealingLR(T_max=MAX_EPOCH), stepped once at the end
    of every epoch (`update_lr`). Emulates the wrapper's logic around torch's own cosine scheduler."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(max_epoch))
    last_epoch = 0  # the wrapper's counter after its initial step, which set the constant warm-up lr
    optimizer.param_groups[0]["lr"] = cons_lr if warmup_epoch > 0 else base_lr
    lrs = []
    for _ in range(max_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # the epoch's steps (no gradients here: only the schedule is followed)
        if last_epoch >= warmup_epoch:
            successor.step()
        else:
            last_epoch += 1
            optimizer.param_groups[0]["lr"] = successor.get_last_lr()[0] if last_epoch >= warmup_epoch else cons_lr
    return lrs


def step_cosine_lrs(base_lr: float, total_steps: int) -> list[float]:
    """Tip-Adapter-F's lr at each step: torch's CosineAnnealingLR(T_max=total_steps) stepped after every step."""
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def trace(method) -> dict:
    """Record what the trainer does with `method`: its optimiser, the lr of every step and every batch's size."""
    seen: dict = {"lrs": [], "batches": []}
    build_optimizer, loss = method.optimizer, method.loss

    def optimizer(params, recipe):
        built = build_optimizer(params, recipe)
        seen["optimizer"] = built
        built.register_step_pre_hook(lambda opt, args, kwargs: seen["lrs"].append(opt.param_groups[0]["lr"]))
        return built

    def recorded_loss(features, labels):
        seen["batches"].append(len(labels))
        return loss(features, labels)

    method.optimizer, method.loss = optimizer, recorded_loss
    return seen


def per_step(epoch_lrs: list[float], steps_per_epoch: int) -> list[float]:
    return [lr for lr in epoch_lrs for _ in range(steps_per_epoch)]


# ----------------------------------------------------------------------------------------------------------------
# zero-shot CLIP


def test_zeroshot_is_clips_own_zero_shot_classifier() -> None:
    data = few_shot()
    x = data.test_features * 3.0  # CLIP normalises both sides: logit_scale.exp() · x̂ t̂ᵀ, logit_scale.exp() = 100
    expected = 100 * F.normalize(x, dim=-1) @ F.normalize(data.text_raw, dim=-1).t()
    torch.testing.assert_close(create_method("zeroshot", data).logits(data.test_features), expected)


# ----------------------------------------------------------------------------------------------------------------
# CLIP-Adapter (gaopengcuhk/CLIP-Adapter clip_adapter.py; CoOp's configs and commands)


def official_clip_adapter_logits(method, data: FewShotData, raw_scale: torch.Tensor) -> torch.Tensor:
    """clip_adapter.py's CustomCLIP.forward on the raw image feature: Adapter = Linear, ReLU, Linear, ReLU (no bias),
    ratio 0.2, `ratio * x + (1 - ratio) * image_features`, both sides normalised, logit_scale.exp() = 100."""
    dim = data.text_features.shape[1]
    adapter = torch.nn.Sequential(torch.nn.Linear(dim, dim // 4, bias=False), torch.nn.ReLU(),
                                  torch.nn.Linear(dim // 4, dim, bias=False), torch.nn.ReLU())
    with torch.no_grad():
        adapter[0].weight.copy_(method.adapter.net[0].weight)
        adapter[2].weight.copy_(method.adapter.net[2].weight)
        image = data.test_features * raw_scale[:, None]  # what the image encoder gives
        x = adapter(image)
        image = 0.2 * x + (1 - 0.2) * image
        image = image / image.norm(dim=-1, keepdim=True)
        text = data.text_features / data.text_features.norm(dim=-1, keepdim=True)
        return 100 * image @ text.t()


def test_clip_adapter_official_forward_has_the_final_relu_and_ignores_the_raw_scale() -> None:
    data = few_shot(dim=16)
    torch.manual_seed(0)
    method = create_method("clip-adapter", data)
    torch.nn.init.normal_(method.adapter.net[2].weight)  # outputs of both signs: the final ReLU matters
    raw_scale = 5 + 10 * torch.rand(len(data.test_labels))
    with torch.no_grad():
        ours = method.logits(data.test_features)
    torch.testing.assert_close(ours, official_clip_adapter_logits(method, data, raw_scale), atol=1e-4, rtol=1e-5)
    shared = create_method("clip-adapter", data, recipe="shared")
    shared.load_state_dict(method.state_dict())
    with torch.no_grad():
        assert not torch.allclose(shared.logits(data.test_features), ours, atol=1e-3), "shared has no final ReLU"


@pytest.mark.parametrize(("dataset", "shots", "epochs"), [("caltech101", 1, 50), ("caltech101", 2, 100),
                                                          ("dtd", 4, 100), ("dtd", 8, 200), ("eurosat", 16, 200),
                                                          ("imagenet", 16, 50), ("Caltech101", 16, 200)])
def test_clip_adapter_epochs_follow_coops_commands(dataset: str, shots: int, epochs: int) -> None:
    # COOP.md: rn50_ep50 for 1 shot, rn50_ep100 for 2 and 4, rn50 (200) for 8 and 16; ImageNet *_ep50 always
    recipe = create_method("clip-adapter", few_shot(dataset, shots=shots)).train_recipe()
    assert recipe.epochs == epochs


def test_clip_adapter_trains_with_sgd_and_dassls_schedule() -> None:
    data = few_shot("oxford_pets", classes=5, shots=8, dim=16)  # 40 images: one batch of 32 an epoch, 8 dropped
    method = create_method("clip-adapter", data)
    seen = trace(method)
    result = train(method, data, seed=1)
    optimizer = seen["optimizer"]
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["dampening"], group["nesterov"]) == (0.9, 5e-4, 0, False)
    # CoOp rn50.yaml (8 shots): SGD lr 0.002, 200 epochs, batch 32, cosine, 1 constant warm-up epoch at 1e-5;
    # Dassl's train loader drops the last batch when there are at least BATCH_SIZE images
    assert result.steps == 200 and set(seen["batches"]) == {32}
    assert seen["lrs"] == pytest.approx(dassl_epoch_lrs(2e-3, 200), rel=1e-6, abs=1e-12)
    assert result.chosen["recipe"] == "official" and result.chosen["recipe.final_relu"] is True


# ----------------------------------------------------------------------------------------------------------------
# TaskRes (geekyutao/TaskRes trainers/taskres.py, configs/trainers/TaskRes/*.yaml, train_regular.sh)


@pytest.mark.parametrize(("dataset", "alpha"), [("caltech101", 0.5), ("oxford_flowers", 1.0), ("imagenet", 0.5)])
def test_taskres_logits_start_from_the_raw_text_feature(dataset: str, alpha: float) -> None:
    data = few_shot(dataset)
    method = create_method("taskres", data)
    residual = torch.randn(data.text_features.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        method.residual.copy_(residual)
        ours = method.logits(data.test_features)
    # TaskResLearner: base_text_features + alpha * residuals (base: the raw encode_text output); CustomCLIP normalises
    raw = data.text_features * data.text_raw.norm(dim=-1, keepdim=True)
    text = raw + alpha * residual
    expected = 100 * data.test_features @ (text / text.norm(dim=-1, keepdim=True)).t()
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-5)
    shared = create_method("taskres", data, recipe="shared")
    with torch.no_grad():
        shared.residual.copy_(residual)
        plain = 100 * data.test_features @ F.normalize(data.text_features + 0.5 * residual, dim=-1).t()
        torch.testing.assert_close(shared.logits(data.test_features), plain, atol=1e-4, rtol=1e-5)
    raw_base = create_method("taskres", data, base_text="raw")  # the raw feature of --text (stop 13's official base)
    torch.testing.assert_close(raw_base.base_text, raw, atol=1e-5, rtol=1e-5)
    assert raw_base.settings()["recipe.base_text"] == "raw"


@pytest.mark.parametrize(("dataset", "shots", "lr", "epochs"), [("dtd", 1, 2e-3, 100), ("dtd", 4, 2e-3, 100),
                                                                ("ucf101", 8, 2e-3, 200), ("imagenet", 2, 2e-4, 100),
                                                                ("imagenet", 16, 2e-4, 200)])
def test_taskres_recipe_is_the_configs_train_regular_sh_picks(dataset: str, shots: int, lr: float,
                                                              epochs: int) -> None:
    recipe = create_method("taskres", few_shot(dataset, shots=shots)).train_recipe()
    assert (recipe.optimizer, recipe.lr, recipe.epochs, recipe.batch_size, recipe.weight_decay) == \
        ("adam", lr, epochs, 256, 5e-4)


def test_taskres_trains_with_coupled_adam_and_dassls_schedule() -> None:
    data = few_shot("food101", shots=2)  # 2 shots: adam_lr2e-3_B256_ep100
    method = create_method("taskres", data)
    seen = trace(method)
    result = train(method, data, seed=1)
    optimizer = seen["optimizer"]
    assert type(optimizer) is torch.optim.Adam  # Dassl's "adam": weight decay added to the gradient (coupled)
    group = optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"], group["amsgrad"]) == ((0.9, 0.999), 1e-8, 5e-4,
                                                                                       False)
    assert result.steps == 100 and set(seen["batches"]) == {8}  # fewer than 256 images: one batch of all
    assert seen["lrs"] == pytest.approx(dassl_epoch_lrs(2e-3, 100), rel=1e-6, abs=1e-12)
    assert (result.chosen["recipe.alpha"], result.chosen["recipe.base_text"]) == (0.5, "coop")


# trainers/imagenet_templates.py IMAGENET_TEMPLATES_SELECT and trainers/taskres.py CUSTOM_TEMPLATES, written out again
TASKRES_SELECT = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                  "a {} in a video game.", "art of the {}.", "a photo of the small {}."]
TASKRES_CUSTOM = {"ImageNet": "a photo of a {}.", "Caltech101": "a photo of a {}."}
# what `cache build` stores for ImageNet (and Caltech101: the same CoOp template): CoOp's template, then the 7
STORED_TEMPLATES = ("a photo of a {}.", "itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                    "a photo of the large {}.", "a {} in a video game.", "art of the {}.", "a photo of the small {}.")


def official_taskres_base(path: Path, dataset: str) -> torch.Tensor:
    """`_get_base_text_features`, from the cache file itself: the raw `text_encoder` output of a template is its
    stored unit feature times its stored norm; ImageNet's TEMPLATES are IMAGENET_TEMPLATES_SELECT + [the custom
    template], every other dataset's the custom template alone; `torch.stack(text_embeddings).mean(1)`."""
    with h5py.File(path, "r") as f:
        names = [t.decode() if isinstance(t, bytes) else str(t) for t in f["text/templates"][()]]
        unit = torch.from_numpy(f["text/features"][()].astype(np.float32))
        norms = torch.from_numpy(f["text/norms"][()].astype(np.float32))
    encoded = {name: unit[i] * norms[i][:, None] for i, name in enumerate(names)}  # [C, D] per template
    templates = (list(TASKRES_SELECT) if dataset == "ImageNet" else []) + [TASKRES_CUSTOM[dataset]]
    per_class = [torch.stack([encoded[t][c] for t in templates]) for c in range(unit.shape[1])]  # [T, D] each
    return torch.stack(per_class).mean(1)


def loads_by_text(path: Path) -> list[tuple[str, FewShotData]]:
    """The 2-shot seed-1 set of `path` under each `--text`."""
    loads = []
    for text in ("coop", "ensemble"):
        with CacheReader(path) as reader:
            loads.append((text, reader.load(2, 1, text=text)))
    return loads


def test_a_built_cache_stores_the_templates_of_taskres_imagenet_base() -> None:
    assert ensemble_templates("a photo of a {}.") == list(STORED_TEMPLATES)
    assert set(TASKRES_SELECT) <= set(STORED_TEMPLATES) and TASKRES_CUSTOM["ImageNet"] == STORED_TEMPLATES[0]


@pytest.mark.parametrize(("dataset", "official_name", "kind"), [("imagenet", "ImageNet", "imagenet-select+coop"),
                                                                 ("caltech101", "Caltech101", "coop")])
def test_taskres_official_base_is_the_official_templates_whatever_the_text(tmp_path: Path, dataset: str,
                                                                           official_name: str, kind: str) -> None:
    path = write_synthetic_cache(tmp_path / f"{dataset}.h5", num_classes=6, dim=16, shots=(2,), seeds=(1,),
                                 name=dataset, templates=STORED_TEMPLATES)
    expected = official_taskres_base(path, official_name)
    for text, data in loads_by_text(path):
        if (dataset, text) in (("imagenet", "coop"), ("caltech101", "ensemble")):  # where --text alone was wrong
            assert (expected - data.text_raw).abs().max() > 1e-2
        with warnings.catch_warnings():
            warnings.simplefilter("error", ProtocolWarning)  # every template is stored: nothing to warn about
            method = create_method("taskres", data)
        torch.testing.assert_close(method.base_text, expected, rtol=1e-5, atol=1e-5)
        with torch.no_grad():  # R = 0: CustomCLIP's logits with the base alone, normalised
            torch.testing.assert_close(method.logits(data.test_features),
                                       100 * data.test_features @ (expected / expected.norm(dim=-1, keepdim=True)).t(),
                                       rtol=1e-4, atol=1e-4)
        assert method.settings()["recipe.base_text"] == kind
        shared = create_method("taskres", data, recipe="shared")  # the unit text feature of --text, as before
        torch.testing.assert_close(shared.base_text, data.text_features, rtol=0, atol=0)
        assert shared.settings()["recipe.base_text"] == "unit"
    metrics = lathadapter.fit(path, "taskres", shots=2, seed=1, text="ensemble", out=None, device="cpu", epochs=1)
    assert metrics["chosen"]["recipe.base_text"] == kind


@pytest.mark.parametrize(("dataset", "official_name", "kind"), [("imagenet", "ImageNet", "imagenet-select+coop"),
                                                                 ("caltech101", "Caltech101", "coop")])
def test_zs_lp_starts_from_clap_s_base_text_whatever_the_text(tmp_path: Path, dataset: str, official_name: str,
                                                              kind: str) -> None:
    """CLAP's ZS-LP (`AdapterMethod`, INIT "ZS") starts its prototypes from `_get_base_text_features`, the same
    function as TaskRes's: the official base whatever --text; `base_text=raw` the raw feature of --text (the
    official start before stop 14), the shared recipe the unit feature."""
    path = write_synthetic_cache(tmp_path / f"{dataset}.h5", num_classes=6, dim=16, shots=(2,), seeds=(1,),
                                 name=dataset, templates=STORED_TEMPLATES)
    expected = official_taskres_base(path, official_name)
    for _, data in loads_by_text(path):
        method = create_method("linear-probe", data)
        torch.testing.assert_close(method.weight.detach(), expected, rtol=1e-5, atol=1e-5)
        assert method.bias is None and method.settings()["recipe.base_text"] == kind
        raw = create_method("linear-probe", data, base_text="raw")
        torch.testing.assert_close(raw.weight.detach(), data.text_raw, rtol=0, atol=0)
        shared = create_method("linear-probe", data, recipe="shared")
        torch.testing.assert_close(shared.weight.detach(), data.text_features, rtol=0, atol=0)
        assert shared.settings()["recipe.base_text"] == "unit"


def official_tip_classifier(path: Path) -> torch.Tensor:
    """Tip-Adapter's `clip_classifier` over its ImageNet `imagenet_templates` (the 7 simple templates; ICLR24's GDA
    and LP++ reuse it), from the cache file: each template's stored unit feature, their mean, normalised."""
    with h5py.File(path, "r") as f:
        names = [t.decode() if isinstance(t, bytes) else str(t) for t in f["text/templates"][()]]
        unit = torch.from_numpy(f["text/features"][()].astype(np.float32))
    embeddings = torch.stack([unit[names.index(t)] for t in TASKRES_SELECT])  # [7, C, D]
    mean = embeddings.mean(dim=0)
    return mean / mean.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("method", ["tip-adapter", "tip-adapter-f", "gda", "lp++"])
def test_the_zero_shot_term_on_imagenet_is_the_official_classifier_whatever_the_text(tmp_path: Path,
                                                                                      method: str) -> None:
    """On ImageNet the official code scores zero-shot with the 7 simple templates alone (no CoOp template), whatever
    --text; elsewhere its one template is CoOp's, so --text's features are kept; `base_text=unit` keeps them
    everywhere."""
    imagenet = write_synthetic_cache(tmp_path / "imagenet.h5", num_classes=6, dim=16, shots=(2,), seeds=(1,),
                                     name="imagenet", templates=STORED_TEMPLATES)
    caltech = write_synthetic_cache(tmp_path / "caltech101.h5", num_classes=6, dim=16, shots=(2,), seeds=(1,),
                                    name="caltech101", templates=STORED_TEMPLATES)
    expected = official_tip_classifier(imagenet)
    for text, data in loads_by_text(imagenet):
        assert (expected - data.text_features).abs().max() > 1e-3  # neither --text gives it (tolerance below: 1e-5)
        built = create_method(method, data)
        torch.testing.assert_close(built.text_features, expected, rtol=1e-4, atol=1e-5)  # via the raw features
        assert built.settings()["recipe.base_text"] == "imagenet-select", text
        unit = create_method(method, data, base_text="unit")
        torch.testing.assert_close(unit.text_features, data.text_features, rtol=0, atol=0)
    for _, data in loads_by_text(caltech):
        built = create_method(method, data)
        torch.testing.assert_close(built.text_features, data.text_features, rtol=0, atol=0)
        assert built.settings()["recipe.base_text"] == "unit"


def test_taskres_imagenet_base_without_the_select_templates_is_the_coop_template_with_a_warning(tmp_path: Path) -> None:
    path = write_synthetic_cache(tmp_path / "imagenet.h5", num_classes=6, dim=16, shots=(2,), seeds=(1,),
                                 name="imagenet")  # stores "a photo of a {}." and "itap of a {}." only
    with CacheReader(path) as reader:
        data = reader.load(2, 1, text="ensemble")
    with pytest.warns(ProtocolWarning, match=r"IMAGENET_TEMPLATES_SELECT.*'a bad photo of the \{\}\.'"):
        method = create_method("taskres", data)
    torch.testing.assert_close(method.base_text, official_taskres_base(path, "Caltech101"), rtol=0, atol=0)
    assert method.settings()["recipe.base_text"] == "coop"


# ----------------------------------------------------------------------------------------------------------------
# Tip-Adapter and Tip-Adapter-F (gaopengcuhk/Tip-Adapter main.py, utils.py, configs/*.yaml)


def official_keys(data: FewShotData) -> torch.Tensor:
    """utils.py build_cache_model: the raw encode_image outputs of every augment epoch, averaged, then normalised."""
    raw = data.train_augmented * data.train_augmented_norms.unsqueeze(-1)
    keys = raw.mean(dim=1)
    return keys / keys.norm(dim=-1, keepdim=True)


def official_search(config: tuple, keys: torch.Tensor, key_labels: torch.Tensor, features: torch.Tensor,
                    labels: torch.Tensor, text: torch.Tensor) -> tuple[float, float]:
    """utils.py search_hp: β over 200 steps of search_scale[0], α over 20 of search_scale[1], the first strictly
    better pair kept (from best_acc = 0)."""
    beta_max, alpha_max = config[0], config[1]
    beta_list = [i * (beta_max - 0.1) / 200 + 0.1 for i in range(200)]
    alpha_list = [i * (alpha_max - 0.1) / 20 + 0.1 for i in range(20)]
    values = F.one_hot(key_labels).float()
    affinity = features @ keys.t()
    clip_logits = 100.0 * features @ text.t()
    best_acc, best = 0.0, (0.0, 0.0)
    for beta in beta_list:
        cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
        for alpha in alpha_list:
            acc = float((clip_logits + cache_logits * alpha).argmax(1).eq(labels).float().mean()) * 100
            if acc > best_acc:
                best_acc, best = acc, (beta, alpha)
    return best


@pytest.mark.parametrize("dataset", ["caltech101", "oxford_flowers", "stanford_cars"])
def test_tip_adapter_searches_the_dataset_grid_on_the_whole_val_split(dataset: str) -> None:
    data = few_shot(dataset, classes=5, dim=8, seed=3)
    data.text_features = F.normalize(torch.ones(5, 8) + 0.2 * data.text_features, dim=-1)  # weak zero-shot
    method = create_method("tip-adapter", data)
    torch.testing.assert_close(method.keys.detach(), official_keys(data)[torch.argsort(data.train_labels,
                                                                                        stable=True)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProtocolWarning)  # the cache holds the val split: nothing to warn about
        chosen = train(method, data, seed=1).chosen
    beta, alpha = official_search(TIP_YAML[dataset], official_keys(data), data.train_labels, data.search_features,
                                  data.search_labels, data.text_features)
    assert (chosen["alpha"], chosen["beta"]) == pytest.approx((alpha, beta), rel=1e-6)
    assert chosen["search_set"] == "split"
    assert (chosen["recipe.search_beta_max"], chosen["recipe.search_alpha_max"]) == TIP_YAML[dataset][:2]
    expected = (100 * data.test_features @ data.text_features.t()
                + alpha * torch.exp(-beta * (1 - data.test_features @ official_keys(data).t()))
                @ F.one_hot(data.train_labels).float())
    with torch.no_grad():
        torch.testing.assert_close(method.logits(data.test_features), expected, atol=1e-3, rtol=1e-5)


def test_tip_adapter_keeps_zero_alpha_and_beta_when_no_pair_scores() -> None:
    """search_hp starts from best_acc = 0 with best_beta = best_alpha = 0 and keeps a pair only when it is strictly
    better: on val images that every pair misclassifies it returns α = β = 0 (zero-shot CLIP), not the grid's first
    pair."""
    data = few_shot("caltech101", classes=2)
    data.text_features = torch.eye(2, 8)
    data.train_augmented = F.normalize(torch.eye(2, 8)[data.train_labels][:, None] + 0.05 * data.train_augmented,
                                       dim=-1)  # every key near its class's text
    data.search_features, data.search_labels = torch.eye(2, 8), torch.tensor([1, 0])  # each labelled as the other
    beta, alpha = official_search(TIP_YAML["caltech101"], official_keys(data), data.train_labels,
                                  data.search_features, data.search_labels, data.text_features)
    assert (alpha, beta) == (0.0, 0.0)
    for name in ("tip-adapter", "tip-adapter-f"):
        method = create_method(name, data)
        chosen = train(method, data, seed=1).chosen
        assert (chosen["alpha"], chosen["beta"], chosen["val_accuracy"]) == (0.0, 0.0, 0.0), name
        with torch.no_grad():  # the cache term weighs 0: zero-shot CLIP's logits
            zero_shot = 100 * data.test_features @ torch.eye(2, 8).t()
            torch.testing.assert_close(method.logits(data.test_features), zero_shot)


@pytest.mark.parametrize("dataset", sorted(TIP_YAML))
def test_tip_adapter_takes_each_datasets_official_config(dataset: str) -> None:
    """Each of the eleven configs/<dataset>.yaml: the search ranges, init_alpha (init_beta 1) and, for Tip-Adapter-F,
    train_epoch."""
    beta_max, alpha_max, init_alpha, epochs = TIP_YAML[dataset]
    data = few_shot(dataset)
    tip = create_method("tip-adapter", data)
    assert (tip.beta_max, tip.alpha_max, tip.init_alpha, tip.init_beta) == (beta_max, alpha_max, init_alpha, 1.0)
    assert create_method("tip-adapter-f", data).recipe.epochs == epochs


def test_tip_adapter_without_the_val_split_searches_the_subset_and_warns() -> None:
    data = few_shot("fgvc_aircraft", val_split=False)
    with pytest.warns(ProtocolWarning, match=r"whole val split.*few-shot val subset.*--val split --force"):
        chosen = train(create_method("tip-adapter", data), data, seed=1).chosen
    assert chosen["search_set"] == "subset"
    no_val = few_shot("imagenet", val_split=False)
    no_val.val_features, no_val.val_labels = no_val.val_features[:0], no_val.val_labels[:0]
    with pytest.warns(ProtocolWarning, match="not searched"):
        chosen = train(create_method("tip-adapter", no_val), no_val, seed=1).chosen
    assert (chosen["alpha"], chosen["beta"]) == (1.17, 1.0)  # configs/imagenet.yaml: init_alpha 1.17, init_beta 1


@pytest.mark.parametrize("dataset", ["caltech101", "eurosat"])
def test_tip_adapter_f_trains_with_the_official_adamw_and_schedule(dataset: str) -> None:
    data = few_shot(dataset, classes=5, shots=4)
    method = create_method("tip-adapter-f", data)
    beta_max, alpha_max, init_alpha, epochs = TIP_YAML[dataset]
    assert (method.alpha, method.beta) == (init_alpha, 1.0)  # the loss during training uses init_alpha, init_beta
    seen = trace(method)
    result = train(method, data, seed=1)
    optimizer = seen["optimizer"]
    assert type(optimizer) is torch.optim.AdamW
    group = optimizer.param_groups[0]
    assert (group["eps"], group["weight_decay"], group["betas"]) == (1e-4, 0.01, (0.9, 0.999))  # AdamW's default
    steps = epochs * math.ceil(20 / 256)  # drop_last=False: every image every epoch
    assert result.steps == steps and set(seen["batches"]) == {20}
    assert seen["lrs"] == pytest.approx(step_cosine_lrs(1e-3, steps), rel=1e-6, abs=1e-12)
    assert result.chosen["search_set"] == "split"


# ----------------------------------------------------------------------------------------------------------------
# Linear probe, as ZS-LP (jusiro/CLAP trainers/adapters.py, configs/trainers/SGD_lr1e-1_B256_ep300.yaml)


def test_linear_probe_is_clap_zs_lp() -> None:
    data = few_shot("dtd")
    method = create_method("linear-probe", data)
    assert [name for name, _ in method.named_parameters()] == ["weight"]  # no bias
    torch.testing.assert_close(method.weight.detach(), data.text_raw)  # prototypes = the raw base text features
    with torch.no_grad():
        method.weight.mul_(torch.rand(len(data.class_names), 1) + 0.5)
        ours = method.logits(data.test_features * 1.0)
    # forward_lp: both sides normalised, times logit_scale.exp() = 100
    expected = 100 * F.normalize(data.test_features, dim=-1) @ F.normalize(method.weight.detach(), dim=-1).t()
    torch.testing.assert_close(ours, expected)
    seen = trace(method)
    result = train(method, data, seed=1)
    optimizer = seen["optimizer"]
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.9, 0.0, False)
    assert result.steps == 300
    assert seen["lrs"] == pytest.approx(dassl_epoch_lrs(0.1, 300), rel=1e-6, abs=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Overrides, the shared recipe, what a run records


def test_a_value_set_wins_over_the_recipe_and_every_value_used_is_recorded() -> None:
    data = few_shot("oxford_flowers")
    method = create_method("taskres", data, alpha=0.3, lr=0.01, epochs=3)
    recipe = method.train_recipe()
    assert (method.alpha, recipe.lr, recipe.epochs, recipe.optimizer) == (0.3, 0.01, 3, "adam")
    tip = create_method("tip-adapter", data, search_alpha_max=4.0, alpha=2.0)
    assert (tip.alpha_max, tip.beta_max, tip.init_alpha) == (4.0, 50.0, 2.0)
    shared = create_method("tip-adapter-f", data, recipe="shared")
    recipe = shared.train_recipe()
    assert (recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.eps, recipe.epochs, recipe.min_steps,
            recipe.schedule) == ("adamw", 1e-3, 1e-4, 1e-4, 20, 0, "cosine-step")
    assert (shared.init_alpha, shared.alpha_max, shared.beta_max, shared.raw_keys) == (1.0, 3.0, 7.0, False)
    for name in ("clip-adapter", "taskres", "linear-probe"):
        recipe = create_method(name, data, recipe="shared").train_recipe()
        assert (recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.eps, recipe.epochs, recipe.min_steps,
                recipe.batch_size, recipe.drop_last) == ("adamw", 1e-3, 1e-4, 1e-8, 20, 300, 256, False)


def test_fit_records_the_per_dataset_values_it_used(tmp_path: Path) -> None:
    cache = write_synthetic_cache(tmp_path / "flowers.h5", num_classes=6, dim=16, shots=(2,), seeds=(1,),
                                  name="oxford_flowers")
    metrics = lathadapter.fit(cache, "taskres", shots=2, seed=1, out=tmp_path / "runs", device="cpu", epochs=2)
    assert metrics["chosen"]["recipe.alpha"] == 1.0 and metrics["chosen"]["recipe.lr"] == 2e-3
    assert metrics["chosen"]["recipe.epochs"] == 2 and metrics["chosen"]["recipe"] == "official"
    config = json.loads((Path(metrics["run_dir"]) / "config.json").read_text())
    assert config["options"]["recipe"] == "official" and config["options"]["alpha"] is None
    # config.json holds the requested options (the key's) and the values the recipe filled, concrete
    assert config["options"]["lr"] is None and config["options"]["epochs"] == 2
    assert config["resolved"] == {"alpha": 1.0, "base_text": "official", "lr": 2e-3, "weight_decay": 5e-4, "eps": 1e-8,
                                  "min_steps": 0, "batch_size": 256}
    assert "resolved" not in json.loads((Path(metrics["run_dir"]) / "metrics.json").read_text())
    tip = lathadapter.fit(cache, "tip-adapter", shots=2, seed=1, out=None, device="cpu")
    assert tip["chosen"]["search_set"] == "split" and tip["chosen"]["recipe.search_beta_max"] == 50


# ----------------------------------------------------------------------------------------------------------------
# Resolution before the run: every option left to the recipe gets the official table's value, no method built

# (method, dataset, shots) → the official values, written out again from docs/baselines.md's tables
OFFICIAL_RESOLVED = {
    ("taskres", "imagenet", 16): {"lr": 2e-4, "weight_decay": 5e-4, "eps": 1e-8, "epochs": 200, "min_steps": 0,
                                  "batch_size": 256, "alpha": 0.5, "base_text": "official"},
    ("taskres", "oxford_flowers", 2): {"lr": 2e-3, "weight_decay": 5e-4, "eps": 1e-8, "epochs": 100, "min_steps": 0,
                                       "batch_size": 256, "alpha": 1.0, "base_text": "official"},
    ("clip-adapter", "caltech101", 1): {"lr": 2e-3, "weight_decay": 5e-4, "epochs": 50, "min_steps": 0,
                                        "batch_size": 32, "final_relu": True},
    ("clip-adapter", "dtd", 8): {"lr": 2e-3, "weight_decay": 5e-4, "epochs": 200, "min_steps": 0, "batch_size": 32,
                                 "final_relu": True},
    ("linear-probe", "dtd", 1): {"lr": 0.1, "weight_decay": 0.0, "epochs": 300, "min_steps": 0, "batch_size": 256,
                                 "head": "cosine", "base_text": "official"},
    ("linear-probe", "imagenet", 16): {"lr": 0.1, "weight_decay": 0.0, "epochs": 300, "min_steps": 0,
                                       "batch_size": 256, "head": "cosine", "base_text": "official"},
    ("clap", "caltech101", 4): {"lr": 0.1, "weight_decay": 0.0, "epochs": 300, "min_steps": 0, "batch_size": 256,
                                "head": "cosine", "base_text": "official", "constraint": "l2"},
    ("cross-modal", "eurosat", 2): {"lr": 1e-3, "weight_decay": 0.0, "eps": 1e-8, "epochs": 1, "min_steps": 12800,
                                    "batch_size": 4, "classifier": "linear", "texts": "hand-crafted"},
    ("tip-adapter", "caltech101", 4): {"alpha": 3.0, "beta": 1.0, "search_beta_max": 12.0, "search_alpha_max": 5.0,
                                       "search_set": "split", "raw_keys": True},
    ("tip-adapter", "oxford_flowers", 16): {"alpha": 10.0, "beta": 1.0, "search_beta_max": 50.0,
                                            "search_alpha_max": 50.0, "search_set": "split", "raw_keys": True},
    ("tip-adapter-f", "eurosat", 4): {"lr": 1e-3, "weight_decay": 0.01, "eps": 1e-4, "epochs": 100, "min_steps": 0,
                                      "batch_size": 256, "alpha": 2.0, "search_beta_max": 12.0,
                                      "search_alpha_max": 10.0},
    ("tip-adapter-f", "fgvc_aircraft", 16): {"lr": 1e-3, "weight_decay": 0.01, "eps": 1e-4, "epochs": 20,
                                             "min_steps": 0, "batch_size": 256, "alpha": 5.0,
                                             "search_beta_max": 30.0, "search_alpha_max": 30.0},
}
# recipe=shared: AdamW lr 1e-3, weight decay 1e-4, eps 1e-8, 20 epochs, ≥ 300 steps, batch 256 (Tip-Adapter-F: eps
# 1e-4, no minimum), with the forms of method.md's table
SHARED_TRAINING = {"lr": 1e-3, "weight_decay": 1e-4, "eps": 1e-8, "epochs": 20, "min_steps": 300, "batch_size": 256}
SHARED_RESOLVED = {
    "taskres": {**SHARED_TRAINING, "alpha": 0.5, "base_text": "unit"},
    "clip-adapter": {**SHARED_TRAINING, "final_relu": False},
    "linear-probe": {**SHARED_TRAINING, "head": "affine", "base_text": "unit"},
    "clap": {**SHARED_TRAINING, "head": "affine", "base_text": "unit", "constraint": "l2"},
    "cross-modal": {**SHARED_TRAINING, "classifier": "affine", "texts": "unit"},
    "tip-adapter": {"alpha": 1.0, "beta": 1.0, "search_beta_max": 7.0, "search_alpha_max": 3.0,
                    "search_set": "subset", "raw_keys": False},
    "tip-adapter-f": {**SHARED_TRAINING, "eps": 1e-4, "min_steps": 0, "alpha": 1.0, "beta": 1.0,
                      "search_beta_max": 7.0, "search_alpha_max": 3.0, "search_set": "subset", "raw_keys": False},
}


def unset(options) -> list[str]:
    return [name for name, value in dataclasses.asdict(options).items() if value is None]


@pytest.mark.parametrize(("method", "dataset", "shots"), sorted(OFFICIAL_RESOLVED))
def test_resolution_gives_the_official_tables_values(method: str, dataset: str, shots: int) -> None:
    resolved = resolve_options(method, make_options(method), RecipeFacts(dataset, shots))
    expected = OFFICIAL_RESOLVED[(method, dataset, shots)]
    assert {name: getattr(resolved, name) for name in expected} == expected
    assert unset(resolved) == []  # nothing is left to the method
    for name in expected:  # typed as if set on the command line: 3.0, not 3
        assert type(getattr(resolved, name)) is type(expected[name])
    assert resolve_options(method, resolved, RecipeFacts("imagenet", 1)) == resolved  # set values stay
    shared = resolve_options(method, make_options(method, {"recipe": "shared"}), RecipeFacts(dataset, shots))
    assert {name: getattr(shared, name) for name in SHARED_RESOLVED[method]} == SHARED_RESOLVED[method]
    assert unset(shared) == []


@pytest.mark.parametrize(("method", "dataset", "shots"), sorted(OFFICIAL_RESOLVED))
def test_a_method_built_from_resolved_options_trains_as_from_the_recipe(method: str, dataset: str,
                                                                        shots: int) -> None:
    data = few_shot(dataset, shots=shots)
    for recipe in ("official", "shared"):
        name, value = ("beta", 2.5) if method == "tip-adapter" else ("lr", 0.05)  # Tip-Adapter has no lr
        requested = make_options(method, {"recipe": recipe, name: value})
        resolved = resolve_options(method, requested, RecipeFacts.of(data))
        assert getattr(resolved, name) == value  # a value set is never replaced
        direct, from_resolved = build_method(method, requested, data), build_method(method, resolved, data)
        assert direct.options == from_resolved.options == resolved
        assert direct.settings() == from_resolved.settings()
        if direct.trains:
            assert direct.train_recipe() == from_resolved.train_recipe()


def test_a_run_builds_its_method_from_resolved_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import lathadapter.experiments.run as run_module

    built = []

    def recording(name, options, data):
        built.append(options)
        return build_method(name, options, data)

    monkeypatch.setattr(run_module, "build_method", recording)
    data = few_shot("eurosat", shots=2)
    outcome = run_module.run(RunConfig.create("tip-adapter-f", 2, 1, overrides={"epochs": 1}), data)
    (options,) = built
    assert unset(options) == [] and options.epochs == 1 and options.alpha == 2.0  # EuroSAT's init_alpha
    assert outcome.metrics["resolved"]["alpha"] == 2.0 and "epochs" not in outcome.metrics["resolved"]


def test_methods_without_a_recipe_resolve_to_their_own_options() -> None:
    for method in method_names():
        options = make_options(method)
        if "recipe" not in dataclasses.asdict(options):
            assert resolve_options(method, options, RecipeFacts("imagenet", 16)) is options
            assert unset(options) == []


def test_tuning_reads_the_resolved_value_without_building_a_method(monkeypatch: pytest.MonkeyPatch) -> None:
    import lathadapter.experiments.run as run_module

    def refuse(*args, **kwargs):
        raise AssertionError("option_in_effect built a method")

    monkeypatch.setattr(run_module, "build_method", refuse)
    data = few_shot("imagenet", classes=4, shots=8)
    assert option_in_effect(RunConfig.create("taskres", 8, 1), data, "lr") == 2e-4  # TaskRes: ImageNet's lr
    assert option_in_effect(RunConfig.create("taskres", 8, 1, overrides={"lr": 0.3}), data, "lr") == 0.3
    # base-to-novel: the training view's shots (K of the base classes) and dataset decide
    assert option_in_effect(RunConfig.create("clip-adapter", 8, 1, classes="base"), few_shot("dtd", shots=2),
                            "epochs") == 100


# ----------------------------------------------------------------------------------------------------------------
# Cache schema 2: raw norms and the whole val split, on a real build with the tiny model


def _build_args(coop_dataset, tiny_clip, out: Path, *extra: str) -> list[str]:
    return ["cache", "build", "--dataset", f"split:{coop_dataset.split_file}", "--model", str(tiny_clip.config),
            "--pretrained", str(tiny_clip.checkpoint), "--out", str(out), "--shots", "1,2", "--seeds", "1",
            "--views", "2", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress", *extra]


@pytest.fixture(scope="module")
def val_all(coop_dataset, tiny_clip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("schema2") / "shapes.h5"
    result = CliRunner().invoke(app, _build_args(coop_dataset, tiny_clip, out, "--val", "split"))
    assert result.exit_code == 0, result.output
    return out


def _raw(tiny_clip, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return tiny_clip.model.encode_image(pixels)


def test_norms_equal_those_of_the_models_unnormalised_features(val_all: Path, coop_dataset, tiny_clip) -> None:
    with h5py.File(val_all, "r") as f:
        assert int(f.attrs["schema_version"]) == 2
        for split in ("train", "val", "test"):
            paths = f[f"splits/{split}/paths"].asstr()[()]
            pixels = torch.stack([tiny_clip.preprocess(Image.open(coop_dataset.folder / p).convert("RGB"))
                                  for p in paths])
            np.testing.assert_allclose(f[f"splits/{split}/norms"][()], _raw(tiny_clip, pixels).norm(dim=-1).numpy(),
                                       rtol=1e-5)
        paths = f["splits/train/paths"].asstr()[()]
        normalize = tiny_clip.preprocess.transforms[-1]
        for row in range(0, len(paths), 7):
            image = Image.open(coop_dataset.folder / paths[row]).convert("RGB")
            views = augmented_views(image, 2, view_seed(0, paths[row]), (32, 32), normalize.mean, normalize.std)
            np.testing.assert_allclose(f["splits/train/augmented_norms"][row],
                                       _raw(tiny_clip, views).norm(dim=-1).numpy(), rtol=1e-5)
        templates = list(f["text/templates"].asstr()[()])
        with torch.no_grad():
            for t, template in enumerate(templates):
                tokens = tiny_clip.tokenizer([template.format(c) for c in coop_dataset.classes])
                raw = tiny_clip.model.encode_text(tokens)
                np.testing.assert_allclose(f["text/norms"][t], raw.norm(dim=-1).numpy(), rtol=1e-5)
            phrases = list(f["attributes/phrases"].asstr()[()])
            raw = tiny_clip.model.encode_text(tiny_clip.tokenizer(phrases))
            np.testing.assert_allclose(f["attributes/norms"][()], raw.norm(dim=-1).numpy(), rtol=1e-5)
    assert verify(val_all) == []


def test_verify_names_a_bad_raw_norm(val_all: Path, tmp_path: Path) -> None:
    for name, row in (("text/norms", (0, 3)), ("splits/train/augmented_norms", (2, 1)), ("splits/val/norms", 4)):
        broken = tmp_path / f"{name.replace('/', '_')}.h5"
        shutil.copy(val_all, broken)
        with h5py.File(broken, "r+") as f:
            f[name][row] = -1.0
        position = row[1] if name == "text/norms" else row[0] if isinstance(row, tuple) else row  # text: per class
        assert f"{name}: row {position} holds a raw norm that is not a positive finite number" in verify(broken)


def test_val_all_holds_the_whole_val_split_as_the_search_set(val_all: Path, coop_dataset, tiny_clip,
                                                             tmp_path: Path) -> None:
    split = json.loads(coop_dataset.split_file.read_text())
    with CacheReader(val_all) as reader:
        info = reader.info()
        assert info.fields["val"] == "all" and info.val_split and info.schema_version == 2
        assert reader.file["splits/val/paths"].asstr()[()].tolist() == [p for p, _, _ in split["val"]]
        data = reader.load(2, 1)
        ensemble = reader.load(2, 1, text="ensemble")
        unit = torch.from_numpy(reader.file["text/features"][()].astype(np.float32))
        norms = torch.from_numpy(reader.file["text/norms"][()])
    assert data.dataset == "Shapes" and data.search_features.shape == (len(split["val"]), 32)
    assert data.search_labels.tolist() == [label for _, label, _ in split["val"]]
    torch.testing.assert_close(data.text_raw, unit[0] * norms[0][:, None])
    torch.testing.assert_close(ensemble.text_raw, (unit * norms[..., None]).mean(dim=0))
    assert data.train_augmented_norms.shape == data.train_augmented.shape[:2]
    # the few-shot val subset is the one a default build holds: same images, same order
    default = tmp_path / "default.h5"
    build(None, f"split:{coop_dataset.split_file}", default, model=str(tiny_clip.config),
          pretrained=str(tiny_clip.checkpoint), shots=(1, 2), seeds=(1,), views=2, batch_size=8, workers=0,
          device="cpu", progress=False, log=lambda message: None)
    with CacheReader(default) as reader:
        plain = reader.load(2, 1)
        assert not reader.info().val_split and reader.info().fields["val"] == "subsets"
    assert plain.search_features is None
    torch.testing.assert_close(plain.val_features, data.val_features)
    assert plain.val_labels.tolist() == data.val_labels.tolist()
    base, _ = data.base_novel()
    assert set(base.search_labels.tolist()) == {0, 1, 2, 3} and len(base.search_labels) == len(split["val"]) // 2
    rows = dict(summary(val_all))
    assert rows["val"].startswith("split: the whole val split") and rows["schema"].startswith("2")
    bad = CliRunner().invoke(app, _build_args(coop_dataset, tiny_clip, tmp_path / "x.h5", "--val", "some"))
    assert bad.exit_code == 2 and "--val 'some' is not valid" in bad.output


def _as_schema_1(source: Path, target: Path) -> Path:
    """What a cache written before schema 2 holds: the same file without the norms, marked version 1."""
    shutil.copy(source, target)
    with h5py.File(target, "r+") as f:
        for name in ("splits/train/norms", "splits/val/norms", "splits/test/norms", "splits/train/augmented_norms",
                     "text/norms", "attributes/norms"):
            del f[name]
        fields = json.loads(f.attrs["fingerprint_json"])
        del fields["val"]
        f.attrs["fingerprint_json"] = json.dumps(fields, sort_keys=True)
        f.attrs["fingerprint"] = fingerprint_of(fields)
        f.attrs["schema_version"] = 1
    return target


def test_a_schema_1_cache_loads_and_a_method_needing_norms_names_the_rebuild(val_all: Path, coop_dataset, tiny_clip,
                                                                             tmp_path: Path) -> None:
    old = _as_schema_1(val_all, tmp_path / "old.h5")
    assert verify(old) == []
    with CacheReader(old) as reader:
        data = reader.load(2, 1)
        assert reader.info().schema_version == 1 and not reader.holds_norms
    assert data.text_raw is None and data.train_augmented_norms is None and data.search_features is None
    assert lathadapter.fit(old, "zeroshot", shots=2, seed=1, out=None, device="cpu")["accuracy"]["all"] is not None
    for method in ("taskres", "tip-adapter", "linear-probe"):
        short = {} if method == "tip-adapter" else {"epochs": 1}
        with pytest.raises(CacheError, match=r"recipe=official needs .*schema-1.*`lathadapter cache build \.\.\. "
                                             r"--force`.*recipe=shared"):
            lathadapter.fit(old, method, shots=2, seed=1, out=None, device="cpu", **short)
        lathadapter.fit(old, method, shots=2, seed=1, out=None, device="cpu", recipe="shared", **short)
    clip_adapter = lathadapter.fit(old, "clip-adapter", shots=2, seed=1, out=None, device="cpu", epochs=1)
    assert clip_adapter["chosen"]["recipe.final_relu"] is True  # needs no norms (the adapter is homogeneous)
    with pytest.raises(BuildError, match="schema version 1.*--force to rebuild it as schema 2"):
        build(None, f"split:{coop_dataset.split_file}", old, model=str(tiny_clip.config),
              pretrained=str(tiny_clip.checkpoint), shots=(1, 2), seeds=(1,), views=2, batch_size=8, workers=0,
              device="cpu", progress=False, log=lambda message: None, val="all")  # `split` before stop 27
    rows = dict(summary(old))
    assert "lathadapter cache build ... --force" in rows["schema"]
