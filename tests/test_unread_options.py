"""A training option the run's recipe does not read (as `eps` under SGD) is said so, once, with a warning: the table
of what each optimiser and schedule reads (`recipes.TrainRecipe.reads`) held against what training does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from lathadapter.adapter.methods.base import LOGIT_SCALE, Method
from lathadapter.adapter.recipes import OPTIMIZERS, SCHEDULES, TrainRecipe
from lathadapter.adapter.trainer import train
from lathadapter.cache.store import FewShotData
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app

UNUSED = "eps=1e-06 has no effect there (SGD reads lr, momentum, weight_decay)"
QUICK = ["--set", "epochs=1", "--set", "min_steps=2", "--device", "cpu"]

# A recipe whose every field matters where it is read (12 samples: 3 batches of 5 an epoch, 2 without the last), and
# a second value of each field that changes training wherever the field is read.
BASE = TrainRecipe(lr=0.05, weight_decay=0.1, eps=1e-8, momentum=0.5, epochs=2, min_steps=0, batch_size=5,
                   drop_last=False, warmup_epochs=1, warmup_lr=1e-3, warmup_steps=2)
OTHER = {"lr": 0.02, "weight_decay": 0.0, "eps": 1.0, "momentum": 0.9, "epochs": 3, "min_steps": 20, "batch_size": 6,
         "drop_last": True, "warmup_epochs": 0, "warmup_lr": 1e-2, "warmup_steps": 3}


class Head(Method):
    """A linear head started from the class text, trained by the trainer with the recipe it is given."""

    name = "head"

    def __init__(self, recipe: TrainRecipe, data: FewShotData) -> None:
        super().__init__(None, data)
        self.weight = nn.Parameter(data.text_features.clone())
        self.recipe = recipe

    def train_recipe(self) -> TrainRecipe:
        return self.recipe

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return LOGIT_SCALE / 10 * features @ self.weight.t()


def tiny_data() -> FewShotData:
    g = torch.Generator().manual_seed(0)
    classes, shots, views, dim = 4, 3, 2, 8
    labels = torch.arange(classes).repeat_interleave(shots)
    train_x = nn.functional.normalize(torch.randn(len(labels), dim, generator=g), dim=-1)
    augmented = nn.functional.normalize(torch.randn(len(labels), views, dim, generator=g), dim=-1)
    text = nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    empty = torch.zeros(0, dim)
    return FewShotData([f"c{i}" for i in range(classes)], text, empty, train_x, augmented, labels, empty,
                       torch.zeros(0, dtype=torch.long), train_x, labels, "tiny")


def trained(recipe: TrainRecipe, data: FewShotData) -> torch.Tensor:
    head = Head(recipe, data)
    train(head, data, seed=1)
    return head.weight.detach()


def test_the_fields_a_recipe_reads_are_those_that_change_its_training() -> None:
    data = tiny_data()
    assert set(OTHER) == {f.name for f in dataclasses.fields(TrainRecipe)} - {"name", "optimizer", "schedule"}
    for optimizer in OPTIMIZERS:
        for schedule in SCHEDULES:
            recipe = dataclasses.replace(BASE, optimizer=optimizer, schedule=schedule)
            before = trained(recipe, data)
            for name, value in OTHER.items():
                changed = not torch.equal(before, trained(dataclasses.replace(recipe, **{name: value}), data))
                assert changed == (name in recipe.reads()), (optimizer, schedule, name)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("unread") / "c.h5", num_classes=6, dim=16, shots=(2,),
                                 seeds=(1, 2))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_fit_says_once_that_eps_does_nothing_under_sgd(cache: Path, tmp_path: Path) -> None:
    result = invoke("fit", "--cache", str(cache), "--method", "clip-adapter", "--shots", "2", "--set", "eps=1e-6",
                    *QUICK, "--out", str(tmp_path / "sgd"))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if UNUSED in line]
    assert lines == ["warning: clip-adapter (recipe=official) trains with SGD and the cosine-epoch schedule: "
                     + UNUSED], result.output
    result = invoke("fit", "--cache", str(cache), "--method", "lathadapter", "--shots", "2", "--set", "eps=1e-6",
                    *QUICK, "--out", str(tmp_path / "adamw"))
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    result = invoke("fit", "--cache", str(cache), "--method", "clip-adapter", "--shots", "2", "--set", "eps=1e-6",
                    "--set", "recipe=shared", *QUICK, "--out", str(tmp_path / "shared"))
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output  # the shared recipe trains with AdamW


def test_a_grid_says_it_once_not_once_a_run(cache: Path, tmp_path: Path) -> None:
    result = invoke("grid", "--cache", str(cache), "--method", "clip-adapter,lathadapter", "--shots", "2", "--seeds",
                    "1,2", "--set", "eps=1e-6", *QUICK, "--batch-runs", "1", "--workers", "1", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "4 done now" in result.output
    warned = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warned == ["warning: clip-adapter (recipe=official) trains with SGD and the cosine-epoch schedule: "
                      + UNUSED], result.output
