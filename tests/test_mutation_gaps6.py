"""Behaviours that a sixth mutation campaign (stop 26) found untested, in modules no earlier campaign covered (the
captured step's rules, the training recipes and their schedules, the shared method machinery, `compare`'s pairing and
labels, augmented views and 16- or 32-bit images, the build's option checks and notes): each test here fails on a
mutant that the rest of the suite let pass, and checks the code against an independent oracle (a documented rule or
formula restated, a hand-built input with a known answer)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from lathadapter.adapter.graphed import batch_indices, graphable
from lathadapter.adapter.methods.base import (
    Adapter,
    ProtocolWarning,
    Searched,
    mix,
    search_set_data,
    warn_no_val_subset,
)
from lathadapter.adapter.options import OptionError
from lathadapter.adapter.recipes import TrainRecipe, build_optimizer, build_scheduler, dataset_key
from lathadapter.cache.store import FewShotData

# ------------------------------------------------------------------------------------------ the captured step


def test_a_step_s_indices_are_every_member_s_samples_then_every_member_s_rows() -> None:
    """`batch_indices`: [2, R, b], the samples of each member in order, then their rows."""
    batches = [(torch.tensor([1, 2]), torch.tensor([10, 20])), (torch.tensor([3, 4]), torch.tensor([30, 40]))]
    assert batch_indices(batches).tolist() == [[[1, 2], [3, 4]], [[10, 20], [30, 40]]]


def test_a_method_with_its_own_scheduler_is_not_captured() -> None:
    """Capture needs the trainer's own optimiser and schedule: a method class overriding either is refused."""
    from lathadapter.adapter.methods.taskres import TaskRes

    class OwnSchedule(TaskRes):
        def scheduler(self, optimizer, recipe, epochs, steps_per_epoch):  # noqa: ANN001, ANN201
            return super().scheduler(optimizer, recipe, epochs, steps_per_epoch)

    class OwnOptimizer(TaskRes):
        def optimizer(self, params, recipe):  # noqa: ANN001, ANN201
            return super().optimizer(params, recipe)

    for kind in (OwnSchedule, OwnOptimizer):
        method = kind.__new__(kind)  # graphable reads the class and its recipe only
        method.train_recipe = lambda: TrainRecipe()
        assert not graphable([method])
    method = TaskRes.__new__(TaskRes)
    method.train_recipe = lambda: TrainRecipe()
    assert graphable([method])


# ------------------------------------------------------------------------------------------ training recipes


def test_the_epochs_run_reach_min_steps_rounding_up() -> None:
    """Epochs run = max(epochs, ⌈min_steps / steps per epoch⌉): 10 steps at 3 a epoch need 4 epochs, not 3."""
    recipe = TrainRecipe(epochs=1, min_steps=10, batch_size=2)
    assert recipe.steps_per_epoch(6) == 3
    assert recipe.epochs_for(6) == math.ceil(10 / 3) == 4


def test_warmup_cosine_reaches_its_peak_after_the_warmup_and_zero_from_the_horizon_on() -> None:
    """`warmup-cosine-step`: step k ≥ warmup at (1 + cos(π (k − warmup) / H)) / 2 of lr, and 0 from step H on."""
    recipe = TrainRecipe(schedule="warmup-cosine-step", warmup_steps=4, lr=0.1, epochs=1, min_steps=10)
    horizon = recipe.horizon(3)
    assert horizon == 10
    assert recipe.lr_factor_at_step(4, horizon) == pytest.approx(1.0)
    assert recipe.lr_factor_at_step(7, horizon) == pytest.approx((1 + math.cos(math.pi * 3 / 10)) / 2)
    assert recipe.lr_factor_at_step(10, horizon) == 0.0 and recipe.lr_factor_at_step(11, horizon) == 0.0


def test_a_recipe_s_record_names_warmup_steps_only_under_the_schedule_that_reads_it() -> None:
    assert "recipe.warmup_steps" not in TrainRecipe(schedule="cosine-epoch").record()
    assert "recipe.warmup_steps" not in TrainRecipe().record()
    assert TrainRecipe(schedule="warmup-cosine-step", warmup_steps=3).record()["recipe.warmup_steps"] == 3


def test_runs_trained_together_must_share_one_optimiser_and_one_schedule() -> None:
    first, second = [torch.nn.Parameter(torch.zeros(2))], [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="one optimiser"):
        build_optimizer([(first, TrainRecipe(optimizer="adamw")), (second, TrainRecipe(optimizer="sgd"))])
    optimizer = build_optimizer([(first, TrainRecipe()), (second, TrainRecipe())])
    with pytest.raises(ValueError, match="one schedule"):
        build_scheduler(optimizer, [TrainRecipe(), TrainRecipe(schedule="cosine-epoch")], 2, 3)


@pytest.mark.parametrize(("name", "key"), [("OxfordFlowers", "oxford_flowers"), ("FGVC", "fgvc_aircraft"),
                                           ("fgvc", "fgvc_aircraft"), ("DescribableTextures", "dtd"),
                                           ("Stanford-Cars", "stanford_cars"), ("MyData", "mydata")])
def test_dataset_names_map_to_the_official_tables_keys_whatever_their_case(name: str, key: str) -> None:
    assert dataset_key(name) == key


# ------------------------------------------------------------------------------------------ shared method machinery


def data(val: int = 4, search: int | None = None, val_shots: int | None = None, shots: int = 8) -> FewShotData:
    """Two classes of `shots` train images each, `val` val images, and optionally a whole val split and a K-shot val
    set of the given sizes."""
    def features(n: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(n)), dim=-1)

    def labels(n: int) -> torch.Tensor:
        return torch.arange(n) % 2

    return FewShotData(["a", "b"], features(2), torch.zeros(0, 3), features(2 * shots),
                       features(2 * shots).unsqueeze(1), labels(2 * shots), features(val), labels(val), features(5),
                       labels(5), "f",
                       search_features=None if search is None else features(search),
                       search_labels=None if search is None else labels(search),
                       val_shots_features=None if val_shots is None else features(val_shots),
                       val_shots_labels=None if val_shots is None else labels(val_shots))


def test_an_empty_whole_val_split_or_k_shot_set_falls_back_to_the_subset_with_a_warning() -> None:
    """A set the cache lacks (here: stored but empty) is replaced by the few-shot subset, and said so."""
    for asked, given in (("split", data(search=0)), ("shots", data(val_shots=0))):
        with pytest.warns(ProtocolWarning, match="few-shot val subset"):
            _, labels, name = search_set_data(given, asked, "m", "α is searched")
        assert (name, len(labels)) == ("subset", 4)
    assert search_set_data(data(search=6), "split", "m", "α")[2] == "split"
    assert search_set_data(data(val_shots=6), "shots", "m", "α")[2] == "shots"


def test_no_val_subset_at_all_reads_none_without_a_rebuild_warning() -> None:
    """Without a few-shot val subset (ImageNet's) the set is `none`; the rebuild warning is for caches that hold one."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert search_set_data(data(val=0), "split", "m", "α")[2] == "none"


def test_the_search_set_warnings_point_at_the_caller_s_line() -> None:
    with pytest.warns(ProtocolWarning) as caught:
        search_set_data(data(), "split", "m", "α")
    assert Path(caught[0].filename) == Path(__file__)

    def method_code() -> None:
        warn_no_val_subset("m", ", so α is not searched", stacklevel=2, select_val=True)

    with pytest.warns(ProtocolWarning, match=r"m: --select val, but the cache has no few-shot val subset") as caught:
        method_code()  # stacklevel 2 from the method's code: this line
    assert Path(caught[0].filename) == Path(__file__)


def test_saved_searched_values_must_match_the_searched_names_in_number() -> None:
    class Two(Searched):
        searched = ("alpha", "beta")

    model = Two()
    model.set_extra_state(torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert (model.alpha, model.beta) == (1.0, 2.0)
    for wrong in ([1.0], [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match="do not match"):
            model.set_extra_state(torch.tensor(wrong, dtype=torch.float64))


def test_an_adapter_reduction_beyond_the_width_is_an_option_error() -> None:
    assert Adapter(4, 4).net[0].weight.shape == (1, 4)
    with pytest.raises(OptionError, match="reduction=5"):
        Adapter(4, 5)


def test_the_blend_with_a_final_relu_is_one_minus_ratio_x_plus_ratio_g_of_x() -> None:
    """(1 − α) x + α relu(relu(x W1ᵀ) W2ᵀ), restated in float64."""
    torch.manual_seed(0)
    adapter, x, ratio = Adapter(6, 2), torch.randn(5, 6), 0.3
    w1, w2, x64 = adapter.net[0].weight.double(), adapter.net[2].weight.double(), x.double()
    expected = (1 - ratio) * x64 + ratio * torch.relu(torch.relu(x64 @ w1.t()) @ w2.t())
    for node in (False, True):
        got = mix(x, adapter, ratio, node=node, final_relu=True)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
