"""Behaviours that a mutation campaign (stop 22) found untested: each test here fails on a mutant that the rest of
the suite let pass, and checks the code against an independent oracle (the split file, the official formula or rule
restated, a documented constant)."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import h5py
import open_clip
import pytest
import torch
from test_baseline_recipes import few_shot, trace  # the small data sets and the trainer trace, written once
from test_baselines_gda_lpp import GDA_ALPHAS, random_data

from lathadapter.adapter.catalog import create_method
from lathadapter.adapter.options import OptionError
from lathadapter.adapter.recipes import dataset_key
from lathadapter.adapter.trainer import train
from lathadapter.cache.build import build
from lathadapter.cache.store import FewShotData
from lathadapter.cache.subset import export_subset
from lathadapter.cache.templates import ensemble_templates, load_attributes
from lathadapter.experiments.spec import GridSpec, expand, load_spec_file, override
from lathadapter.experiments.tuning import preset_value, select_tuned
from lathadapter.kernels.cone import cone_energy, cone_exterior_angle, safe_arccos, safe_arcsin
from lathadapter.kernels.geometry import safe_sqrt

# ------------------------------------------------------------------------------------------------------ cache


def test_a_subset_of_a_dataset_in_a_subfolder_lists_the_split_files_own_paths(coop_dataset, tiny_clip,
                                                                               tmp_path: Path) -> None:
    """A split file whose paths are relative to a subfolder (CoOp's `oxford_pets/images/`) is stored with that
    prefix; `cache subset` gives the paths back as the split file writes them, and the cache's fingerprint."""
    split = json.loads(coop_dataset.split_file.read_text())
    (tmp_path / "data").symlink_to(coop_dataset.folder, target_is_directory=True)
    split_file = tmp_path / "split.json"  # beside `data/`, whose `images/...` the paths name
    split_file.write_text(json.dumps(split))
    out = tmp_path / "c.h5"
    build(None, f"split:{split_file}", out, model=str(tiny_clip.config), pretrained=str(tiny_clip.checkpoint),
          shots=(2,), seeds=(1,), views=1, batch_size=16, workers=0, device="cpu", progress=False,
          log=lambda message: None)
    with h5py.File(out, "r") as f:  # the prefix is really there: the stored paths name the subfolder
        assert all(p.startswith("data/images/") for p in f["splits/train/paths"].asstr()[()])
        fingerprint = str(f.attrs["fingerprint"])
    exported = export_subset(out, 2, 1)
    random.seed(1)  # Dassl's draw, restated: per class in first-appearance order, `random.sample` of 2, then val

    def draw(items: list[list[object]], k: int) -> list[list[object]]:
        groups: defaultdict[int, list[list[object]]] = defaultdict(list)
        for item in items:
            groups[int(item[1])].append(item)
        return [x for group in groups.values() for x in (random.sample(group, k) if len(group) >= k else group)]

    train, val = draw(split["train"], 2), draw(split["val"], 2)
    assert (exported["train"], exported["val"]) == (train, val)
    assert (exported["image_dir"], exported["cache_fingerprint"]) == ("data", fingerprint)


def test_a_coop_template_that_is_one_of_the_simple_templates_is_stored_once() -> None:
    """The ensemble is the CoOp template, then open_clip's 7 simple templates without it: a template given twice
    would weigh twice in the ensemble's mean."""
    simple = [t("{}") for t in open_clip.SIMPLE_IMAGENET_TEMPLATES]
    assert len(simple) == 7 and "itap of a {}." in simple
    assert ensemble_templates("itap of a {}.") == ["itap of a {}."] + [t for t in simple if t != "itap of a {}."]
    assert len(ensemble_templates("art of the {}.")) == 7


def test_an_attribute_file_of_comments_and_blank_lines_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "attrs.txt"
    empty.write_text("# colours\n\n   # nothing else\n")
    with pytest.raises(ValueError, match=r"attrs.txt has no phrases; write one attribute phrase per line"):
        load_attributes(empty)


# ------------------------------------------------------------------------------------------------ experiments


def test_a_candidate_without_a_val_score_never_wins_over_one_with_a_score() -> None:
    """A diverged candidate records no val score (None, or an empty cell in results.csv): it ranks below every
    scored candidate, whatever its place in the tie-break order."""
    def row(key: str, index: int, score: object) -> dict[str, object]:
        return {"key": key, "tune.group": "g", "tune.index": index, "tune.candidates": 3, "tune.val_accuracy": score}

    for missing in (None, ""):
        rows = select_tuned([row("a", 0, missing), row("b", 1, 0.0), row("c", 2, missing)])
        assert {r["key"]: r["tune.selected"] for r in rows} == {"a": False, "b": True, "c": False}


def test_preset_values_are_the_decimal_products() -> None:
    """A preset's value is the default × the factor as a decimal, and so is an extension's factor (0.1 × 0.1 is
    0.01, not 0.010000000000000002): the run `--set lr=0.003` names, the factor a resumed grid finds again."""
    assert (0.1 * 0.1, 0.0003 * 10.0) != (0.01, 0.003)  # the binary products the rounding removes
    assert (preset_value(0.1, 0.1), preset_value(0.0003, 10.0), preset_value(0.0003, 0.1)) == (0.01, 0.003, 3e-5)
    assert [preset_value(1e-3, f) for f in (1.0, 0.1, 10.0)] == [0.001, 0.0001, 0.01]


def test_an_option_of_a_grid_file_given_again_on_the_command_line_is_named_as_the_command_line_gives_it(
        tmp_path: Path) -> None:
    """`--set lr=...` over a grid file's `options: lr`: an error in the value names `--set lr`, where the user typed
    it, not the file."""
    grid = tmp_path / "g.yaml"
    grid.write_text("methods: [clip-adapter]\noptions:\n  lr: [0.01]\n")
    axes = load_spec_file(grid)
    override(axes, "options", {"lr": ["fast"]})
    with pytest.raises(OptionError) as raised:
        expand(GridSpec(caches=["x.h5"], **axes))
    assert str(raised.value).startswith("--set lr: ") and "grid file" not in str(raised.value)


# -------------------------------------------------------------------------------------------------- baselines


def test_taskres_drops_the_last_partial_batch_once_there_are_256_images() -> None:
    """Dassl's train loader drops the last batch when the set holds at least BATCH_SIZE (256) images: 20 classes ×
    16 shots = 320 images train one batch of 256 an epoch, 200 epochs at 16 shots (adam_lr2e-3_B256_ep200)."""
    data = few_shot("food101", classes=20, shots=16, dim=8)
    assert len(data.train_labels) == 320
    method = create_method("taskres", data)
    seen = trace(method)
    result = train(method, data, seed=1)
    assert (result.steps, set(seen["batches"])) == (200 * (320 // 256), {256})


def _official_gda_classifier(data: FewShotData) -> tuple[torch.Tensor, torch.Tensor]:
    """`main_few_shots.py::run`'s W [D, C] and b [C] (every view, class means, KS-shrunk pinv), in float64."""
    views = data.train_augmented.shape[1]
    vecs = torch.cat([data.train_augmented[:, j] for j in range(views)])
    labels = data.train_labels.repeat(views)
    classes = data.num_classes
    mus = torch.stack([vecs[labels == c].mean(0) for c in range(classes)])
    centred = torch.cat([vecs[labels == c] - mus[c] for c in range(classes)])
    cov = centred.T.cov()
    dim = centred.shape[1]
    precision = dim * torch.linalg.pinv((len(centred) - 1) * cov + cov.trace() * torch.eye(dim, dtype=cov.dtype))
    weight = (mus @ precision).T
    bias = math.log(1 / classes) - 0.5 * ((mus @ precision) * mus).sum(-1)
    return weight, bias


@pytest.mark.parametrize("start", [0.1, 5.0])
def test_gda_keeps_its_starting_alpha_when_no_value_scores_on_val(start: float) -> None:
    """The official search starts from accuracy 0 and keeps the first strictly better α: a val set on which every α
    of the list scores 0 leaves α at its start (the option `alpha`, the official 0.1 by default)."""
    data = random_data(classes=5, shots=4, val_per_class=6, text_signal=1.0, noise=0.9, seed=3)
    weight, bias = _official_gda_classifier(data)
    zero_shot = 100 * data.val_features @ data.text_features.T
    predicted = [set() for _ in range(len(data.val_labels))]
    for alpha in GDA_ALPHAS:
        for row, c in enumerate((zero_shot + alpha * (data.val_features @ weight + bias)).argmax(1).tolist()):
            predicted[row].add(c)
    wrong = [min(set(range(5)) - seen) for seen in predicted]  # a class no α predicts for the row
    data = replace(data, val_labels=torch.tensor(wrong))
    method = create_method("gda", data, search_set="subset", alpha=start)
    chosen = train(method, data, seed=1).chosen
    assert (chosen["alpha"], chosen["val_accuracy"]) == (start, 0.0)


def test_lpp_initial_alpha_is_the_mean_of_the_class_means_when_classes_are_unequal() -> None:
    """`calculate_init_alpha`: 250 · the mean over classes of each class's mean <f_i, t_c> (`compute_centroids_alpha`
    divides by the class's count), not the mean over all images, which differs when classes have unequal counts (a
    class with fewer train images than K is drawn whole)."""
    data = random_data(classes=4, shots=6, text_signal=1.0, seed=4)
    keep = torch.tensor([label != 0 or index % 6 < 2 for index, label in enumerate(data.train_labels.tolist())])
    data = replace(data, train_features=data.train_features[keep], train_augmented=data.train_augmented[keep],
                   train_labels=data.train_labels[keep])  # class 0: 2 images, the others 6
    features = data.train_augmented[:, 0]
    per_class = [float((features[data.train_labels == c] @ data.text_features[c]).mean()) for c in range(4)]
    expected = 250 * sum(per_class) / 4
    pooled = 250 * float((features * data.text_features[data.train_labels]).sum(-1).mean())
    assert abs(expected - pooled) > 1e-3, "the case must tell the two means apart"
    assert create_method("lp++", data).alpha_init == pytest.approx(expected, rel=1e-12)


# The dataset names of Dassl's classes (CoOp's split files) and of the official config files (Tip-Adapter's and
# APE's `configs/fgvc.yaml`), and the key of the official per-dataset tables each one reads.
NAMES = [("Caltech101", "caltech101"), ("OxfordPets", "oxford_pets"), ("StanfordCars", "stanford_cars"),
         ("OxfordFlowers", "oxford_flowers"), ("Food101", "food101"), ("FGVCAircraft", "fgvc_aircraft"),
         ("fgvc", "fgvc_aircraft"), ("SUN397", "sun397"), ("DescribableTextures", "dtd"), ("EuroSAT", "eurosat"),
         ("UCF101", "ucf101"), ("ImageNet", "imagenet"), ("oxford_pets", "oxford_pets"), ("my_set", "my_set")]


@pytest.mark.parametrize(("name", "key"), NAMES)
def test_dataset_names_key_the_official_tables(name: str, key: str) -> None:
    assert dataset_key(name) == key


# ------------------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_pair_apart_by_rounding_only_is_in_the_cone_with_finite_gradients(dtype: torch.dtype) -> None:
    """q one float step from p (|√c p| |√c (q − p)| below eps): Ξ is undefined there, and read as 0, as at q = p, not
    as the π that the rounding of a step towards the origin would give, which would charge a pair that coincides up
    to rounding the largest cone energy."""
    p = torch.tensor([[0.3, 0.4]], dtype=dtype, requires_grad=True)
    q = p.detach().clone()
    q[0, 0] = torch.nextafter(q[0, 0], torch.tensor(0.0, dtype=dtype))  # a step towards the origin
    q.requires_grad_()
    assert not torch.equal(p, q) and float(((p - q).norm() * p.norm()).detach()) < torch.finfo(dtype).eps
    angle, energy = cone_exterior_angle(p, q, 1.0), cone_energy(p, q, 1.0)
    assert float(angle.detach()) == 0.0 and float(energy.detach()) == 0.0
    grads = torch.autograd.grad((angle + energy).sum(), (p, q))
    assert all(torch.isfinite(g).all() for g in grads)


def test_the_safe_arcsin_and_arccos_are_exact_with_finite_gradients_at_plus_and_minus_one() -> None:
    x = torch.tensor([-1.0, 1.0], dtype=torch.float64, requires_grad=True)
    arcsin, arccos = safe_arcsin(x), safe_arccos(x)
    assert arcsin.tolist() == [-math.pi / 2, math.pi / 2] and arccos.tolist() == [math.pi, 0.0]
    for value in (arcsin, arccos):
        (grad,) = torch.autograd.grad(value.sum(), x)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_safe_sqrt_is_linear_below_eps_squared(dtype: torch.dtype) -> None:
    """√z above eps², z / eps below (docs/method.md's stable forms): at z = eps²/4 the value is eps/4 (√z would be
    eps/2) and the slope 1/eps (√z's would grow without bound towards 0); √z itself above."""
    eps = torch.finfo(dtype).eps
    z = torch.tensor([eps * eps / 4, 4 * eps * eps, 0.25], dtype=dtype, requires_grad=True)
    value = safe_sqrt(z)
    torch.testing.assert_close(value, torch.tensor([eps / 4, 2 * eps, 0.5], dtype=dtype), rtol=1e-6, atol=0)
    (grad,) = torch.autograd.grad(value.sum(), z)
    torch.testing.assert_close(grad, torch.tensor([1 / eps, 1 / (4 * eps), 1.0], dtype=dtype), rtol=1e-6, atol=0)
