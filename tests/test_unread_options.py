"""A training option the run's recipe does not read (as `eps` under SGD) is said so, once, with a warning: the table
of what each optimiser and schedule reads (`recipes.TrainRecipe.reads`) held against what training does. The warning
names the option, not its value: a grid says it in one line whatever values it sweeps (docs/usage.md)."""

from __future__ import annotations

import dataclasses
import warnings
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

UNUSED = "eps has no effect there (SGD reads lr, momentum, weight_decay)"
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


# One line per method and option that changes nothing in the grid's training, whatever values the grid gives it
# (restated from docs/usage.md): at the default λ_hier = 0, LatHAdapter's `hier` and `cone_k`, and clip-adapter's
# `eps` under its official recipe's SGD (LatHAdapter's AdamW reads `eps`).
SWEEP_WARNINGS = sorted([
    "warning: clip-adapter (recipe=official) trains with SGD and the cosine-epoch schedule: " + UNUSED,
    "warning: lathadapter: lambda_hier=0 turns the hierarchy term off, so hier changes nothing in training; set "
    "lambda_hier > 0 to train with it",
    "warning: lathadapter: lambda_hier=0 turns the hierarchy term off, so cone_k changes nothing in training (the "
    "hier.* diagnostics read it); set lambda_hier > 0 to train with it",
])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_grid_says_it_once_an_option_not_once_a_run_or_a_value(cache: Path, tmp_path: Path, workers: str) -> None:
    result = invoke("grid", "--cache", str(cache), "--method", "clip-adapter,lathadapter", "--shots", "2", "--seeds",
                    "1", "--set", "eps=1e-6,1e-7", "--set", "hier=cone,triplet", "--set", "cone_k=0.2,0.3", *QUICK,
                    "--batch-runs", "1", "--workers", workers, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "10 done now" in result.output  # clip-adapter 2 eps; lathadapter 2 eps × 2 hier × 2 cone_k
    warned = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert sorted(warned) == SWEEP_WARNINGS, result.output


# LatHAdapter's options that only its hierarchical regularisation reads (docs/method.md, L_hier: the cone or triplet
# energies over the batch's tree, with the in-batch separation margin), restated here with a value off each default;
# `cone_parent=image` runs under the reference alone.
HIERARCHY_VALUES = [{"hier": "triplet"}, {"cone_k": 0.3}, {"cone_kappa": 0.5}, {"margin": 0.3},
                    {"hier": "triplet", "margin_radial": 0.3}, {"impl": "reference", "cone_parent": "image"}]
TRAINED_PARTS = ("visual_adapter", "text_adapter", "attribute_prompts", "beta", "log_curvature", "log_scales",
                 "log_tau_hyp")


def lathadapter_weights(cache: Path, out: Path, **options) -> dict[str, torch.Tensor]:
    import lathadapter

    metrics = lathadapter.fit(cache, "lathadapter", shots=2, seed=1, device="cpu", out=out, epochs=2, min_steps=4,
                              **options)
    state = torch.load(Path(metrics["run_dir"]) / "weights.pt", map_location="cpu")
    state = state.get("state_dict", state)
    trained = {name: tensor for name, tensor in state.items() if name.startswith(TRAINED_PARTS)}
    assert {name.split(".")[0] for name in trained} == set(TRAINED_PARTS), sorted(state)
    return trained


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("values", HIERARCHY_VALUES, ids=lambda v: ",".join(v))
def test_at_lambda_hier_0_the_hierarchy_options_change_nothing_in_training_and_it_is_said(
        cache: Path, tmp_path: Path, values: dict) -> None:
    impl = {"impl": values["impl"]} if "impl" in values else {}
    set_off = {name: value for name, value in values.items() if name != "impl"}
    with pytest.warns(UserWarning) as said:
        changed = lathadapter_weights(cache, tmp_path / "off-changed", **values)
    default = lathadapter_weights(cache, tmp_path / "off-default", **impl)
    assert same(changed, default), values  # λ_hier = 0: the term and its gradient are zero, whatever its options
    warned = [str(w.message) for w in said if "lambda_hier=0" in str(w.message)]
    assert sorted(warned) == sorted(f"lathadapter: lambda_hier=0 turns the hierarchy term off, so {name} changes "
                                    "nothing in training" + (" (the hier.* diagnostics read it)" if name in
                                                             ("cone_k", "cone_kappa", "cone_parent") else "")
                                    + "; set lambda_hier > 0 to train with it" for name in set_off), warned
    # the options do act once the term is on, and then nothing is said of them
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        on_changed = lathadapter_weights(cache, tmp_path / "on-changed", lambda_hier=0.1, **values)
    assert not [w for w in quiet if "lambda_hier" in str(w.message)]
    assert not same(on_changed, lathadapter_weights(cache, tmp_path / "on-default", lambda_hier=0.1, **impl)), values



# Each form of L_hier with options that only the other form reads (docs/method.md: the cone energy's K and κ, the
# centripetal hinge's m_r, large enough that the hinge acts): (the form, the other form's options set off their
# defaults).
FORM_VALUES = [("cone", {"margin_radial": 3.0}), ("triplet", {"cone_k": 0.3, "cone_kappa": 2.0})]


@pytest.mark.parametrize(("form", "values"), FORM_VALUES, ids=[form for form, _ in FORM_VALUES])
def test_with_the_term_on_the_other_forms_options_change_nothing_in_training_and_it_is_said(
        cache: Path, tmp_path: Path, form: str, values: dict) -> None:
    other = "triplet" if form == "cone" else "cone"
    with pytest.warns(UserWarning) as said:
        changed = lathadapter_weights(cache, tmp_path / "changed", lambda_hier=0.1, hier=form, **values)
    assert same(changed, lathadapter_weights(cache, tmp_path / "default", lambda_hier=0.1, hier=form)), values
    warned = [str(w.message) for w in said if f"only hier={other} reads" in str(w.message)]
    assert sorted(warned) == sorted(f"lathadapter: hier={form!r} trains without {name} (only hier={other} reads it), "
                                    "so it changes nothing in training" + (" (the hier.* diagnostics read it)" if
                                                                           name != "margin_radial" else "")
                                    + f"; set hier={other} to train with it" for name in values), warned
    # under the form that reads them they train another model, and nothing is said
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        read = lathadapter_weights(cache, tmp_path / "read", lambda_hier=0.1, hier=other, **values)
    assert not [w for w in quiet if "nothing in training" in str(w.message)]
    assert not same(read, lathadapter_weights(cache, tmp_path / "read-default", lambda_hier=0.1, hier=other)), values

# A value of each that moves the hierarchy diagnostics where they read it (κ = 50 puts every image inside its cone;
# κ = 0.5 moves no image across at λ_hier = 0, docs/method.md: an image is inside when Ξ ≤ κ ψ).
DIAGNOSTICS_VALUES = [{"hier": "triplet"}, {"cone_k": 0.3}, {"cone_kappa": 50.0}, {"margin": 0.3},
                      {"hier": "triplet", "margin_radial": 0.3}, {"impl": "reference", "cone_parent": "image"}]


def hierarchy_diagnostics(cache: Path, **options) -> tuple[dict, list[str]]:
    """A λ_hier = 0 run's `hierarchy` diagnostics and the warnings its fit raised."""
    import lathadapter

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        metrics = lathadapter.fit(cache, "lathadapter", shots=2, seed=1, device="cpu", out=None, epochs=2, min_steps=4,
                                  **options)
    return metrics["hierarchy"], [str(w.message) for w in said if "lambda_hier=0" in str(w.message)]


@pytest.mark.parametrize("values", DIAGNOSTICS_VALUES, ids=lambda v: ",".join(v))
def test_the_warning_names_as_read_by_the_diagnostics_the_options_that_move_them(cache: Path, values: dict) -> None:
    # trained alike (the test above), so the diagnostics differ only where they read the option itself
    impl = {"impl": values["impl"]} if "impl" in values else {}
    default, _ = hierarchy_diagnostics(cache, **impl)
    changed, warned = hierarchy_diagnostics(cache, **values)
    moved = {key for key in default if default[key] != changed[key]}
    set_off = [name for name in values if name != "impl"]
    assert len(warned) == len(set_off), warned  # a warning an option, each naming it
    for name, text in zip(set_off, warned, strict=True):
        assert f" so {name} changes nothing" in text, (name, text)
        assert ("(the hier.* diagnostics read it)" in text) == bool(moved), (values, moved, text)


def test_fit_names_the_hierarchy_options_that_lambda_hier_0_switches_off(cache: Path, tmp_path: Path) -> None:
    result = invoke("fit", "--cache", str(cache), "--method", "lathadapter", "--shots", "2", "--set", "hier=triplet",
                    "--set", "cone_k=0.3", *QUICK, "--out", str(tmp_path / "off"))
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warned == ["warning: lathadapter: lambda_hier=0 turns the hierarchy term off, so hier changes nothing in "
                      "training; set lambda_hier > 0 to train with it",
                      "warning: lathadapter: lambda_hier=0 turns the hierarchy term off, so cone_k changes nothing in "
                      "training (the hier.* diagnostics read it); set lambda_hier > 0 to train with it"], result.output
    result = invoke("fit", "--cache", str(cache), "--method", "lathadapter", "--shots", "2", "--set", "hier=triplet",
                    "--set", "lambda_hier=0.1", *QUICK, "--out", str(tmp_path / "on"))
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
