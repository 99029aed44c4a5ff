"""Behaviours that a sixth mutation campaign (stop 26) found untested, in modules no earlier campaign covered (the
captured step's rules, the training recipes and their schedules, the shared method machinery, `compare`'s pairing and
labels, augmented views and 16- or 32-bit images, the build's option checks and notes): each test here fails on a
mutant that the rest of the suite let pass, and checks the code against an independent oracle (a documented rule or
formula restated, a hand-built input with a known answer)."""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lathadapter.adapter.graphed import batch_indices, graphable
from lathadapter.adapter.methods.base import (
    Adapter,
    ProtocolWarning,
    Searched,
    mix,
    search_set_data,
    warn_no_val_subset,
)
from lathadapter.adapter.options import OptionError, StateError
from lathadapter.adapter.recipes import TrainRecipe, build_optimizer, build_scheduler, dataset_key
from lathadapter.cache.build import BuildOptionError, check_options, overlap_notes, shortfall_notes
from lathadapter.cache.datasets import DatasetSplits
from lathadapter.cache.encode import Augmentation, AugmentationError, as_rgb, augmented_views, crop_params
from lathadapter.cache.store import FewShotData
from lathadapter.experiments.compare import (
    Comparison,
    OverSeeds,
    PairedTable,
    compare_runs,
    over_seeds,
    run_label,
    settings,
)

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
        line = inspect.currentframe().f_lineno + 1
        method_code()  # stacklevel 2 from the method's code: this line, not the method's
    assert (Path(caught[0].filename), caught[0].lineno) == (Path(__file__), line)


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


# ------------------------------------------------------------------------------------------ compare


def fake_run(seed: int, right: dict[str, list[bool]], labels: dict[str, list[int]] | None = None,
             method: str = "tip-adapter", options: dict | None = None, folder: str = "A") -> SimpleNamespace:
    """A loaded run as `compare` reads it: on each part, which test images (labels 0/1) it classifies right."""
    labels = labels or {part: [i % 2 for i in range(len(r))] for part, r in right.items()}

    def test_set(part: str) -> tuple[torch.Tensor, torch.Tensor, SimpleNamespace]:
        return torch.tensor([[float(i)] for i in range(len(labels[part]))]), torch.tensor(labels[part]), \
            SimpleNamespace(class_names=["a", "b"])

    def predict(features: torch.Tensor, part: str) -> torch.Tensor:
        truth = torch.tensor(labels[part])
        return torch.where(torch.tensor(right[part]), truth, 1 - truth)

    record = {"cache_fingerprint": "f", "classes": "base", "key": f"key{seed}", "options": options or {}}
    return SimpleNamespace(folder=Path(folder), record=record, parts=list(right), test_set=test_set,
                           against=lambda part: (part,), predict=predict,
                           config=SimpleNamespace(seed=seed, method=method, shots=4))


def test_over_seeds_refuses_one_seed_paired_twice() -> None:
    a, b = fake_run(1, {"base": [True, False]}), fake_run(1, {"base": [True, True]}, folder="B")
    with pytest.raises(OptionError, match="one pair per seed"):
        over_seeds([(a, b), (a, b)])


def test_over_seeds_compares_the_part_asked_for() -> None:
    right = {"base": [True, True, True, True], "novel": [True, False, False, False]}
    other = {"base": [True, True, True, True], "novel": [True, True, True, True]}
    compared = over_seeds([(fake_run(1, right), fake_run(1, other, folder="B"))], part="novel")
    assert compared.mean_difference == pytest.approx(100.0 * (0 - 3) / 4)


def test_the_mean_difference_over_seeds_leaves_out_seeds_without_images() -> None:
    empty, half = Comparison(PairedTable(0, 0, 0, 0), ()), Comparison(PairedTable(1, 1, 0, 0), ())
    assert OverSeeds({1: empty, 2: half}).mean_difference == pytest.approx(50.0)
    assert OverSeeds({1: empty}).mean_difference is None


def test_runs_with_the_same_classes_but_other_test_labels_are_refused() -> None:
    a = fake_run(1, {"base": [True, True]}, labels={"base": [0, 1]})
    b = fake_run(1, {"base": [True, True]}, labels={"base": [1, 0]}, folder="B")
    with pytest.raises(StateError, match="different base test labels"):
        compare_runs(a, b)


def test_a_run_label_lists_the_settings_both_runs_have_that_differ() -> None:
    """Options compared only between runs of one method, only where both runs name them; None reads `recipe`."""
    assert settings({"text": "coop", "options": {"lr": None, "alpha": 1}}) == {"text": "coop", "lr": "recipe",
                                                                              "alpha": 1}
    a = fake_run(1, {"base": [True]}, options={"lr": None, "alpha": 1, "beta": 2})
    b = fake_run(1, {"base": [True]}, options={"lr": 0.1, "alpha": 1}, folder="B")
    assert run_label(a, b) == "tip-adapter · 4-shot seed 1 · key key1 · lr=recipe"
    c = fake_run(1, {"base": [True]}, method="clip-adapter", options={"lr": 0.1}, folder="C")
    assert run_label(a, c) == "tip-adapter · 4-shot seed 1 · key key1"


# ------------------------------------------------------------------------------------------ augmented views


@pytest.mark.parametrize(("scale", "ratio"), [((0.5, 1.5), (0.75, 4 / 3)), ((0.5, 1.0), (0.75, math.inf))])
def test_a_crop_scale_above_one_or_an_infinite_ratio_is_refused(scale: tuple, ratio: tuple) -> None:
    with pytest.raises(AugmentationError):
        Augmentation(crop_scale=scale, crop_ratio=ratio)


@pytest.mark.parametrize(("width", "height", "expected"), [
    (1000, 10, (0, (1000 - round(10 * 4 / 3)) // 2, 10, round(10 * 4 / 3))),  # too wide: the widest ratio's crop
    (10, 1000, ((1000 - round(10 / (3 / 4))) // 2, 0, round(10 / (3 / 4)), 10)),  # too tall: the narrowest's
])
def test_a_crop_that_fails_every_draw_is_the_central_crop_at_the_nearest_ratio(width: int, height: int,
                                                                               expected: tuple) -> None:
    """torchvision's RandomResizedCrop fallback: a centred crop (i, j, h, w) clamped to the ratio range; with a
    scale of at least 0.9 no 10-try draw fits a 100:1 image, so the fallback is always taken."""
    augmentation = Augmentation(crop_scale=(0.9, 1.0))
    assert crop_params(width, height, torch.Generator().manual_seed(0), augmentation) == expected


def test_no_views_is_an_empty_stack() -> None:
    image = Image.new("RGB", (8, 8))
    assert augmented_views(image, 0, 0, (4, 4), (0.5,) * 3, (0.5,) * 3).shape == (0, 3, 4, 4)


def test_32_bit_images_of_8_bit_values_keep_them_and_16_bit_ones_keep_their_high_byte() -> None:
    eight = Image.fromarray(np.full((2, 2), 255, dtype=np.int32), mode="I")
    assert np.asarray(as_rgb(eight))[0, 0].tolist() == [255, 255, 255]
    sixteen = Image.fromarray(np.array([[65535, 512]], dtype=np.int32), mode="I")
    assert np.asarray(as_rgb(sixteen))[0].tolist() == [[255] * 3, [2] * 3]


# ------------------------------------------------------------------------------------------ the build's checks


@pytest.mark.parametrize(("shots", "batch_size", "option"), [([0], 1, "--shots"), ([1], 0, "--batch-size")])
def test_shots_and_batch_size_below_one_are_refused(shots: list[int], batch_size: int, option: str) -> None:
    with pytest.raises(BuildOptionError, match=option):
        check_options(shots, [1], views=0, batch_size=batch_size, workers=0)


def splits(train: list[tuple[str, int, str]], val: list | None = None, test: list | None = None) -> DatasetSplits:
    return DatasetSplits("d", "folder", Path("."), "", ["a", "b", "c"], "a photo of a {}.", train, val or [],
                         test or [], "0")


def test_a_shortfall_note_is_for_classes_below_k_and_names_the_poorest_lowest_label() -> None:
    """Class 0 and 2 hold 2 train images, class 1 holds 3: no note at K=2; at K=3, two short classes, the poorest
    named being the lower label of the tie (class 'a')."""
    train = [(f"{c}{i}", c, "abc"[c]) for c, n in enumerate((2, 3, 2)) for i in range(n)]
    assert shortfall_notes(splits(train), [2]) == []
    (note,) = shortfall_notes(splits(train), [3])
    assert "2 of 3 classes have fewer than 3" in note and "class 'a' has 2" in note


def test_an_image_in_both_train_and_val_is_noted() -> None:
    (note,) = overlap_notes(splits([("x", 0, "a")], val=[("x", 0, "a")], test=[("y", 0, "a")]))
    assert "both the train and the val split" in note
