"""Behaviours that a ninth mutation campaign (stop 27) found untested, in the baselines' own modules (zero-shot,
linear probe, CLIP-Adapter, Tip-Adapter and Tip-Adapter-F, TaskRes, GDA, LP++, CLAP, cross-modal, the registry):
each test here fails on a mutant that the rest of the suite let pass, and checks the code against an independent
oracle (an official value or rule restated from docs/baselines.md or the official code, a hand-built input with a
known answer)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_baseline_recipes import dassl_epoch_lrs, few_shot, step_cosine_lrs, trace

from lathadapter.adapter.catalog import create_method, make_options, resolve_options
from lathadapter.adapter.recipes import RecipeFacts
from lathadapter.adapter.trainer import train

# ------------------------------------------------------------------------------------------ the batches of an epoch


def test_tip_adapter_f_steps_every_batch_and_its_cosine_over_steps() -> None:
    """Tip-Adapter-F (`main.py`, `run_tip_adapter_F`): a loader of batch 256 that keeps its last partial batch, and a
    CosineAnnealingLR over `train_epoch × len(train_loader_F)` steps: with 300 images, 2 steps an epoch (256 + 44)
    and the cosine over 40 steps, not one per epoch."""
    data = few_shot("caltech101", classes=20, shots=15)  # 300 images
    method = create_method("tip-adapter-f", data)
    seen = trace(method)
    result = train(method, data, seed=1)
    steps = 20 * math.ceil(300 / 256)
    assert result.steps == steps and seen["batches"] == [256, 44] * 20
    assert seen["lrs"] == pytest.approx(step_cosine_lrs(1e-3, steps), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(("method", "lr", "epochs"), [("linear-probe", 0.1, 300), ("taskres", 2e-3, 200)])
def test_dassl_trained_methods_drop_the_last_partial_batch(method: str, lr: float, epochs: int) -> None:
    """ZS-LP and TaskRes under Dassl (`build_data_loader`: `drop_last = is_train and len(data) >= batch_size`): 300
    images and batch 256 give one batch of 256 an epoch, at Dassl's per-epoch cosine after one warm-up epoch (ZS-LP:
    lr 0.1, 300 epochs; TaskRes at 15 shots: lr 2e-3, 200 epochs)."""
    data = few_shot("dtd", classes=20, shots=15)
    model = create_method(method, data)
    seen = trace(model)
    result = train(model, data, seed=1)
    assert result.steps == epochs and set(seen["batches"]) == {256}
    assert seen["lrs"] == pytest.approx(dassl_epoch_lrs(lr, epochs), rel=1e-6, abs=1e-12)


# ------------------------------------------------------------------------------------------ official values


@pytest.mark.parametrize("method", ["tip-adapter", "tip-adapter-f"])
def test_tip_adapter_on_a_dataset_without_a_config_takes_imagenet_yaml(method: str) -> None:
    """docs/baselines.md: a dataset outside the official configs gets `configs/imagenet.yaml`'s values (search scale
    [7, 3], init_alpha 1.17, train_epoch 20)."""
    resolved = resolve_options(method, make_options(method), RecipeFacts("my_leaves", 4))
    assert (resolved.search_beta_max, resolved.search_alpha_max, resolved.alpha, resolved.beta) == (7.0, 3.0, 1.17, 1.0)
    if method == "tip-adapter-f":
        assert resolved.epochs == 20


# ------------------------------------------------------------------------------------------ the logits' scale


def test_taskres_novel_classes_get_zero_shot_clip_s_logits() -> None:
    """Classes without a residual fall back to zero-shot CLIP: `100 <x, t_c>`, the logit scale included."""
    data = few_shot("caltech101", dim=4)
    method = create_method("taskres", data)
    x = torch.tensor([[0.6, 0.8, 0.0, 0.0]])
    text = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(method.logits(x, text), torch.tensor([[60.0, 80.0, 0.0]]))


# ------------------------------------------------------------------------------------------ GDA's search


def no_val_hits_data():
    """Two classes along e0 and e1 (text, train views), and a val split of e0-like images all labelled class 1: the
    zero-shot and the Gaussian scores both put every val image in class 0, so no α of the list scores a hit."""
    data = few_shot("caltech101", classes=2, dim=4, shots=4, views=3)
    g = torch.Generator().manual_seed(3)
    eye = torch.eye(4)
    train = eye[data.train_labels][:, None] + 0.05 * torch.randn(len(data.train_labels), 3, 4, generator=g)
    train = train / train.norm(dim=-1, keepdim=True)
    val = eye[torch.zeros(6, dtype=torch.long)] + 0.05 * torch.randn(6, 4, generator=g)
    return dataclasses.replace(data, text_features=eye[:2], text_raw=8 * eye[:2], train_augmented=train,
                               train_features=train[:, 0], train_augmented_norms=None,
                               search_features=val / val.norm(dim=-1, keepdim=True),
                               search_labels=torch.ones(6, dtype=torch.long))


@pytest.mark.parametrize("alpha", [None, 2.5])
def test_gda_keeps_its_starting_alpha_when_no_value_scores(alpha: float | None) -> None:
    """`run`'s search starts from accuracy 0 and the configured α (official 0.1) and keeps the first strictly better
    value: when every value of the list scores 0, α is the starting one."""
    data = no_val_hits_data()
    method = create_method("gda", data, **({} if alpha is None else {"alpha": alpha}))
    chosen = method.after_training(data)
    assert chosen["val_accuracy"] == 0.0
    assert chosen["alpha"] == method.alpha == (0.1 if alpha is None else alpha)
