"""Behaviours that a second mutation campaign (stop 23) found untested: each test here fails on a mutant that the rest
of the suite let pass, and checks the code against an independent oracle (a formula restated in float64, a documented
rule restated, float64 finite differences)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import shutil
from pathlib import Path
from typing import Any

import helpers
import pytest
import torch
import torch.nn.functional as F
from test_adapter_lathadapter import make_data, oracle_points
from test_cache_build import _build

from lathadapter.adapter.catalog import create_method
from lathadapter.adapter.evaluate import ECE_BINS, Reliability
from lathadapter.adapter.methods.lathadapter.options import LatHAdapterOptions
from lathadapter.adapter.options import OptionError, TrainOptions
from lathadapter.adapter.trainer import TrainResult, divergence, train
from lathadapter.cache.build import BuildError
from lathadapter.cache.store import CacheReader, FewShotData
from lathadapter.experiments.records import load_results, records
from lathadapter.experiments.report_tables import calibration_tables, few_shot_tables
from lathadapter.kernels.radial import radial_distance

# -------------------------------------------------------------------------------------------------------- methods


def test_tip_adapter_cache_with_a_first_class_of_fewer_keys_is_the_one_hot_product() -> None:
    """Keys grouped by class are summed per class by a reshape only when every class has as many keys: with class 0
    holding 1 key and class 1 three (a class drawn whole, short of K), the cache term is still exp(−β(1 − x Fᵀ)) L
    with L the one-hot labels."""
    generator = torch.Generator().manual_seed(8)
    labels = torch.tensor([1, 0, 1, 1])
    train_x = F.normalize(torch.randn(4, 3, generator=generator), dim=-1)
    test_x = F.normalize(torch.randn(5, 3, generator=generator), dim=-1)
    text = F.normalize(torch.randn(2, 3, generator=generator), dim=-1)
    data = FewShotData(["a", "b"], text, torch.zeros(0, 3), train_x, train_x.unsqueeze(1), labels, test_x,
                       torch.zeros(5, dtype=torch.long), test_x, torch.zeros(5, dtype=torch.long), "t")
    method = create_method("tip-adapter", data, alpha=1.5, beta=2.0, search=False, recipe="shared")
    x, keys = test_x.double(), train_x.double()
    expected = 100 * x @ text.double().t() + 1.5 * torch.exp(-2.0 * (1 - x @ keys.t())) @ F.one_hot(labels).double()
    with torch.no_grad():
        torch.testing.assert_close(method.logits(test_x).double(), expected, rtol=1e-5, atol=1e-5)


def test_cross_modal_takes_every_text_sample_in_each_step_and_refuses_one_more() -> None:
    """`text_batch` may be any of 1..L (L text samples: one a class with texts=unit): L itself is valid, L + 1 is
    refused, naming the option and the valid range."""
    classes = 4
    generator = torch.Generator().manual_seed(2)
    text = F.normalize(torch.randn(classes, 8, generator=generator), dim=-1)
    labels = torch.arange(classes).repeat_interleave(2)
    images = F.normalize(text[labels] + 0.5 * torch.randn(len(labels), 8, generator=generator), dim=-1)
    data = FewShotData([str(c) for c in range(classes)], text, torch.zeros(0, 8), images, images.unsqueeze(1),
                       labels, images, labels, images, labels, "t")
    method = create_method("cross-modal", data, recipe="shared", text_batch=classes)
    assert method.settings()["cross-modal.text_batch"] == classes
    with pytest.raises(OptionError, match=rf"text_batch={classes + 1} .*choose 1\.\.{classes}"):
        create_method("cross-modal", data, recipe="shared", text_batch=classes + 1)


def test_lathadapter_inference_adapts_images_with_alpha_v_and_text_with_alpha_t() -> None:
    """docs/method.md, step 1: images take the visual adapter's residual ratio α_v, the text the text adapter's α_t;
    with the two apart, the Euclidean scores 100 <v, p_c> restated in float64 show a swapped one."""
    data = make_data()
    torch.manual_seed(0)
    method = create_method("lathadapter", data, num_attributes=4, alpha_v=0.6, alpha_t=0.1, infer="euclid")
    points = oracle_points(method, data.test_features)
    with torch.no_grad():
        scores = method.logits(data.test_features)
    torch.testing.assert_close(scores.double(), 100 * points["v"] @ points["p"].t(), rtol=1e-4, atol=1e-4)


def _documented(value: str) -> object:
    """A default as docs/method.md's options table writes it: `word`, true/false, or a number."""
    value = value.strip().strip("`")
    if value in ("true", "false"):
        return value == "true"
    try:
        return float(value)
    except ValueError:
        return value


def test_lathadapter_defaults_are_those_docs_method_md_lists() -> None:
    """docs/method.md's table of LatHAdapter's options gives each option's default (lr is documented apart): every
    option of LatHAdapterOptions beyond the shared training options is listed, at the value it defaults to."""
    text = (Path(__file__).parents[1] / "docs" / "method.md").read_text(encoding="utf-8")
    table = text.split("### Options (`LatHAdapterOptions`", 1)[1].split("\n\n")[1]  # the heading, then the table
    documented: dict[str, object] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`(\w+)`", cells[0]) if len(cells) == 3 else []
        values = cells[1].split(", ") if names else []
        if names and len(names) == len(values):
            documented.update(zip(names, map(_documented, values), strict=True))
    shared = {f.name for f in dataclasses.fields(TrainOptions)}
    defaults = {f.name: f.default for f in dataclasses.fields(LatHAdapterOptions) if f.name not in shared}
    assert set(documented) == set(defaults)
    assert documented == defaults


# ------------------------------------------------------------------------------------------- evaluation, training


def test_a_reliability_record_of_other_than_the_ece_bins_is_not_read() -> None:
    """metrics.json's `reliability` is read back only with ECE_BINS (15) bins a tally; any other count (a record of
    another binning) reads as None, never as bins of the wrong width."""
    assert ECE_BINS == 15
    whole = {"images": [2] * 15, "correct": [1] * 15, "confidence": [0.5] * 15}
    assert Reliability.read(whole) == Reliability((2,) * 15, (1,) * 15, (0.5,) * 15)
    for bins in (10, 14, 16):
        assert Reliability.read({k: v[:1] * bins for k, v in whole.items()}) is None


def test_select_val_keeps_the_first_epoch_when_every_epoch_scores_zero_on_val() -> None:
    """`select=val` keeps the first epoch of the best val accuracy, from a start below any accuracy: when every
    epoch scores 0 % (each val label is a class the model never predicts), epoch 1 is kept and its 0 % recorded."""
    generator = torch.Generator().manual_seed(3)
    classes = 3
    text = F.normalize(torch.randn(classes, 8, generator=generator), dim=-1)
    labels = torch.arange(classes).repeat_interleave(2)
    images = F.normalize(text[labels] + 0.3 * torch.randn(len(labels), 8, generator=generator), dim=-1)
    predicted = (images @ text.t()).argmax(1)  # the zero-shot start's predictions, which lr 1e-12 keeps
    wrong = (predicted + 1) % classes
    data = FewShotData([str(c) for c in range(classes)], text, torch.zeros(0, 8), images, images.unsqueeze(1),
                       labels, images, wrong, images, labels, "t")
    method = create_method("linear-probe", data, recipe="shared", lr=1e-12, epochs=3, min_steps=0)
    result = train(method, data, seed=1, select="val")
    with torch.no_grad():
        assert bool((method.logits(images).argmax(1) != wrong).all())  # 0 % on val, as at every epoch
    assert (result.epochs, result.selected_epoch, result.val_accuracy) == (3, 1, 0.0)


@pytest.mark.parametrize(("bad_epoch", "kept", "diverged"), [(3, None, True), (2, 2, True), (3, 2, False)],
                         ids=["last-epoch-kept-by-select-last", "kept-epoch", "after-the-kept-epoch"])
def test_a_non_finite_loss_up_to_and_at_the_kept_epoch_makes_the_run_diverged(bad_epoch: int, kept: int | None,
                                                                               diverged: bool) -> None:
    """A run diverged when a loss recorded at an epoch up to the kept one, that epoch included (the last under
    select=last), is not finite, though its parameters are; one after the kept epoch (select=val kept an earlier
    one) is not held against it."""
    classes = 2
    text = torch.eye(classes, 4)
    labels = torch.arange(classes)
    data = FewShotData(["a", "b"], text, torch.zeros(0, 4), text, text.unsqueeze(1), labels, text, labels, text,
                       labels, "t")
    method = create_method("linear-probe", data, recipe="shared")  # finite parameters
    history = [{"epoch": e, "loss": float("nan") if e == bad_epoch else 0.5} for e in (1, 2, 3)]
    why = divergence(method, TrainResult(epochs=3, selected_epoch=kept, history=history), data)
    if diverged:
        assert why is not None and f"its loss was nan at epoch {bad_epoch} of 3" in why
    else:
        assert why is None


# ----------------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("radii_shape", [(), (6, 1)], ids=["scalar-radii", "broadcast-radii"])
@pytest.mark.parametrize("rho_a", [1e-4, 5e-4])
def test_float32_radius_gradients_just_off_the_origin_are_accurate(radii_shape: tuple[int, ...],
                                                                   rho_a: float) -> None:
    """Below ρ = 1e-3 the radii's gradients take the direct form: the two-reduction form divides by ρ and cancels
    terms of size 1/ρ, which in float32 loses about 1e-7/ρ relatively. Against float64 central differences of the
    distance restated as arcosh(1 + δ), δ = 2W/((1 − ρ_a²)(1 − ρ_b²)), W = (ρ_a − ρ_b)² + 2ρ_aρ_b(1 − cos)."""
    generator = torch.Generator().manual_seed(5)
    cosine = torch.rand(6, 40, generator=generator, dtype=torch.float64) * 1.8 - 0.9
    weights = torch.randn(6, 40, generator=generator, dtype=torch.float64)
    rho_b, c = 0.4, 1.3

    def restated(a: float) -> float:
        w = (a - rho_b) ** 2 + 2 * a * rho_b * (1 - cosine)
        delta = 2 * w / ((1 - a * a) * (1 - rho_b * rho_b))
        return float((weights * torch.log1p(delta + torch.sqrt(delta * (delta + 2))) / math.sqrt(c)).sum())

    h = 1e-8
    expected = (restated(rho_a + h) - restated(rho_a - h)) / (2 * h)
    a = torch.full(radii_shape, rho_a, dtype=torch.float32, requires_grad=True)
    value = (weights.float() * radial_distance(a, torch.tensor(rho_b), cosine.float(), torch.tensor(c))).sum()
    (grad_a,) = torch.autograd.grad(value, a)
    assert float(grad_a.sum()) == pytest.approx(expected, rel=2e-5)


# ------------------------------------------------------------------------------------------------------ reports


ROW = {"cache": "caltech101.h5", "dataset": "caltech101", "fingerprint": "fp", "method": "zeroshot", "shots": 4,
       "text": "coop", "select": "last", "target": ""}


def test_base_to_novel_ece_tables_have_base_and_novel_but_no_hm(tmp_path: Path) -> None:
    """The ECE twin of the base-to-novel table has the accuracy table's base and novel columns and no HM (a
    harmonic mean of two errors means nothing); each cell is the mean of its seeds' ECE."""
    rows = [{**ROW, "key": f"k{s}", "seed": s, "classes": "base", "acc_base": 70.0, "acc_novel": 60.0,
             "ece_base": 4.0 + s, "ece_novel": 8.0 + s} for s in (1, 2)]
    columns = [*ROW, "key", "seed", "classes", "acc_all", "acc_base", "acc_novel", "ece_all", "ece_base", "ece_novel"]
    helpers.write_rows(tmp_path / "results.csv", rows, columns)
    (table,) = [t for t in calibration_tables(records(load_results(tmp_path / "results.csv")))
                if t.name == "ece_base_to_novel"]
    assert table.columns == ["caltech101 base", "caltech101 novel"]
    ((_, (base, novel)),) = table.rows
    assert (base.mean, novel.mean) == (pytest.approx(5.5), pytest.approx(9.5))


def test_runs_that_differ_only_in_their_training_views_are_two_configurations(tmp_path: Path) -> None:
    """`train_views` is a setting, as text and select are: a seed's run on the augmented views and its run on all
    views are two configurations, each row the mean of its own runs, never one cell of two runs a seed."""
    rows = [{**ROW, "key": f"{views}{s}", "seed": s, "classes": "all", "train_views": views,
             "acc_all": accuracy + s} for views, accuracy in (("augmented", 50.0), ("all", 70.0)) for s in (1, 2)]
    columns = [*ROW, "key", "seed", "classes", "train_views", "acc_all", "acc_base", "acc_novel"]
    helpers.write_rows(tmp_path / "results.csv", rows, columns)
    table = few_shot_tables(records(load_results(tmp_path / "results.csv")))[0]
    means = sorted(cells[0].mean for _, cells in table.rows)
    assert means == [pytest.approx(51.5), pytest.approx(71.5)]
    assert all(cells[0].n == 2 for _, cells in table.rows)


# -------------------------------------------------------------------------------------------------------- cache


@pytest.fixture(scope="module")
def built(coop_dataset, tiny_clip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fingerprint") / "shapes.h5"
    assert _build(coop_dataset, tiny_clip, out, shots=(1, 2), seeds=(1, 2)).status == "built"
    return out


def _shipped_phrases() -> list[str]:
    """cache/attributes.txt read by its own header's rule: one phrase a line, text after '#' and blank lines out."""
    text = (Path(__file__).parents[1] / "cache" / "attributes.txt").read_text(encoding="utf-8")
    return [p for p in (line.split("#", 1)[0].strip() for line in text.splitlines()) if p]


def test_the_attribute_vocabulary_is_part_of_the_fingerprint(built: Path, coop_dataset, tiny_clip,
                                                              tmp_path: Path) -> None:
    """A cache records the SHA-256 of its attribute phrases (one a line); a build of it with another `--attributes`
    file differs in that field and is refused without --force, never reported up to date."""
    with CacheReader(built) as reader:
        fields = reader.info().fields
    assert fields["attributes_sha256"] == hashlib.sha256("\n".join(_shipped_phrases()).encode()).hexdigest()
    other = tmp_path / "attrs.txt"
    other.write_text("striped\nspotted\n")
    out = tmp_path / "shapes.h5"
    shutil.copy(built, out)
    with pytest.raises(BuildError, match=r"differs in: attributes_sha256"):
        _build(coop_dataset, tiny_clip, out, shots=(1, 2), seeds=(1, 2), attributes=other)


def test_shots_and_seeds_given_in_another_order_or_twice_name_the_same_cache(built: Path, coop_dataset, tiny_clip,
                                                                             tmp_path: Path) -> None:
    """The fingerprint holds the sets of shots and seeds, so `--shots 2,1 --seeds 2,1,1` finds the cache built with
    `--shots 1,2 --seeds 1,2` up to date instead of refusing it as built differently."""
    out = tmp_path / "shapes.h5"
    shutil.copy(built, out)
    options: dict[str, Any] = {"shots": (2, 1), "seeds": (2, 1, 1)}
    assert _build(coop_dataset, tiny_clip, out, **options).status == "up to date"
