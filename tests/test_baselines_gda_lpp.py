"""GDA and LP++ equal independent re-statements of their official computations (written here step by step as the
official scripts write them, in float64), never look at the test set, and run end to end through `fit` and grids.

Official code: GDA, github.com/mrflogs/ICLR24 `main_few_shots.py::run`; LP++, github.com/FereshteShakeri/
FewShot-CLIP-Strong-Baseline `methods/linear_probe_p2.py::LinearProbe_P2.forward` with `methods/utils.py`.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lathadapter
from lathadapter.adapter.catalog import create_method, make_options, resolve_options
from lathadapter.adapter.evaluate import evaluate
from lathadapter.adapter.methods.base import NotApplicable, ProtocolWarning
from lathadapter.adapter.recipes import RecipeFacts
from lathadapter.adapter.trainer import train
from lathadapter.cache.store import FewShotData
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments.launch import launch
from lathadapter.experiments.spec import GridSpec

GDA_ALPHAS = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]


def random_data(classes: int = 5, dim: int = 8, shots: int = 4, views: int = 3, val_per_class: int = 6,
                test_per_class: int = 5, text_signal: float = 0.3, noise: float = 0.9, seed: int = 0,
                val_split: bool = False) -> FewShotData:
    """Unit-norm float64 features around random class centres; the text features carry a weak share of the centres,
    so that zero-shot is imperfect and the few-shot term matters.

    The val draws (`val_per_class` a class) are the val set; with `val_split` they are the whole val split instead
    (`search_features`, as a cache built with `--val split` holds it) and the val set is the few-shot val subset drawn
    from it, as CoOp's sampling does: the first `min(shots, 4)` images of each class."""
    g = torch.Generator().manual_seed(seed)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)

    centres = unit(torch.randn(classes, dim, generator=g, dtype=torch.float64))
    common = unit(torch.randn(dim, generator=g, dtype=torch.float64))
    text = unit(common + text_signal * centres + 0.2 * torch.randn(classes, dim, generator=g, dtype=torch.float64))

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(classes).repeat_interleave(per_class)
        return unit(centres[labels] + noise * torch.randn(len(labels), dim, generator=g, dtype=torch.float64)), labels

    train_x, train_y = draw(shots)
    train_augmented = unit(train_x[:, None] + 0.4 * torch.randn(len(train_y), views, dim, generator=g,
                                                            dtype=torch.float64))
    val_x, val_y = draw(val_per_class)
    test_x, test_y = draw(test_per_class)
    split_x = split_y = None
    if val_split:
        split_x, split_y = val_x, val_y
        keep = (torch.arange(len(val_y)) % val_per_class) < min(shots, 4)  # rows are grouped by class
        val_x, val_y = split_x[keep], split_y[keep]
    return FewShotData([f"c{i}" for i in range(classes)], text, torch.zeros(0, dim, dtype=torch.float64), train_x,
                       train_augmented, train_y, val_x, val_y, test_x, test_y, "parity", search_features=split_x,
                       search_labels=split_y)


def official_cls_acc(output: torch.Tensor, target: torch.Tensor) -> float:
    """The official `cls_acc` (top-1, in percent)."""
    pred = output.topk(1, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return 100 * float(correct[:1].reshape(-1).float().sum(0, keepdim=True).numpy()[0]) / target.shape[0]


# ---------------------------------------------------------------------------------------------------------- GDA


def official_gda(data: FewShotData, val: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """`main_few_shots.py::run`, step by step: every augmented view (the official `augment_epoch` passes over the
    train loader, pass-major), class means, the KS-shrunk shared precision, W and b, the α search on val.

    The official `val_features` are `pre_load_features` of `val_loader` over `dataset.val`: the whole val split (the
    dataset readers sample train only), here `data.search_features`; `val` replaces it (features, labels)."""
    val_features, val_labels = val if val is not None else (data.search_features, data.search_labels)
    assert val_features is not None, "the official search reads the whole val split"
    clip_weights = data.text_features.t()  # [D, C], as the official `clip_classifier` returns it
    num_views = data.train_augmented.shape[1]
    vecs = torch.cat([data.train_augmented[:, j] for j in range(num_views)])
    labels = torch.cat([data.train_labels for _ in range(num_views)])
    mus = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(clip_weights.shape[1])])
    center_vecs = torch.cat([vecs[labels == i] - mus[i].unsqueeze(0) for i in range(clip_weights.shape[1])])
    cov_inv = center_vecs.shape[1] * torch.linalg.pinv(
        (center_vecs.shape[0] - 1) * center_vecs.T.cov()
        + center_vecs.T.cov().trace() * torch.eye(center_vecs.shape[1], dtype=vecs.dtype))
    ps = torch.ones(clip_weights.shape[1], dtype=vecs.dtype) * 1.0 / clip_weights.shape[1]
    W = torch.einsum("nd, dc -> cn", mus, cov_inv)
    b = ps.log() - torch.einsum("nd, dc, nc -> n", mus, cov_inv, mus) / 2
    best_val_acc, best_alpha, accuracies = 0, 0.1, []
    for alpha in GDA_ALPHAS:
        val_logits = 100.0 * val_features @ clip_weights + alpha * (val_features @ W + b)
        acc = official_cls_acc(val_logits, val_labels)
        accuracies.append(acc)
        if acc > best_val_acc:
            best_val_acc, best_alpha = acc, alpha
    test_logits = 100.0 * data.test_features @ clip_weights + best_alpha * (data.test_features @ W + b)
    return {"W": W, "b": b, "alpha": best_alpha, "val_acc": best_val_acc, "accuracies": accuracies,
            "test_logits": test_logits}


@pytest.mark.parametrize(("text_signal", "noise", "shots", "seed", "alpha"), [
    (2.0, 0.9, 2, 0, 0.1),  # 0.1 and 1 tie: the first is kept
    (1.0, 1.2, 2, 0, 10.0),
    (1.0, 0.9, 4, 0, 100.0),
    (2.0, 1.2, 2, 1, 0.0001),
])
def test_gda_equals_the_official_estimate_search_and_logits(text_signal: float, noise: float, shots: int, seed: int,
                                                            alpha: float) -> None:
    data = random_data(shots=shots, val_per_class=20, text_signal=text_signal, noise=noise, seed=seed, val_split=True)
    official = official_gda(data)  # searched on the whole val split, as the official code does
    assert len(set(official["accuracies"])) > 1 and official["alpha"] == alpha, "the case must make α matter"
    method = create_method("gda", data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProtocolWarning)  # the whole val split is there: nothing to warn about
        chosen = train(method, data, seed=1).chosen
    assert (chosen["search_set"], chosen["recipe.search_set"], chosen["recipe"]) == ("split", "split", "official")
    torch.testing.assert_close(method.weight, official["W"].t(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(method.bias, official["b"], rtol=1e-9, atol=1e-9)
    assert chosen["alpha"] == official["alpha"] and chosen["views"] == data.train_augmented.shape[1]
    assert chosen["val_accuracy"] == pytest.approx(official["val_acc"])
    torch.testing.assert_close(method.logits(data.test_features), official["test_logits"], rtol=1e-9, atol=1e-7)


def test_gda_without_val_keeps_the_official_start_and_warns() -> None:
    data = random_data()  # no whole val split, and (below) no few-shot val subset either: ImageNet's case
    data = replace(data, val_features=data.val_features[:0], val_labels=data.val_labels[:0])
    method = create_method("gda", data)
    with pytest.warns(ProtocolWarning, match="no few-shot val subset"):
        chosen = train(method, data, seed=1).chosen
    assert chosen["alpha"] == 0.1 and method.alpha == 0.1
    whole = random_data()
    official = official_gda(whole, val=(whole.val_features, whole.val_labels))  # W and b do not depend on val
    torch.testing.assert_close(method.weight, official["W"].t(), rtol=1e-9, atol=1e-9)


def test_gda_without_augmented_views_uses_the_clean_view() -> None:
    data = random_data(val_split=True)
    clean = replace(data, train_augmented=data.train_features.unsqueeze(1))
    no_views = replace(data, train_augmented=torch.zeros(len(data.train_labels), 0, 8, dtype=torch.float64))
    expected, actual = create_method("gda", clean), create_method("gda", no_views)
    train(expected, clean, seed=1), train(actual, no_views, seed=1)
    torch.testing.assert_close(actual.weight, expected.weight)
    assert actual.alpha == expected.alpha


@pytest.mark.parametrize(("shots", "seed", "text_signal", "split_alpha", "subset_alpha"), [
    (1, 0, 1.0, 1.0, 0.0001),  # one val image a class in the subset
    (2, 1, 2.0, 0.0001, 100.0),
])
def test_gda_searches_the_whole_val_split_by_default_and_falls_back_to_the_subset(
        shots: int, seed: int, text_signal: float, split_alpha: float, subset_alpha: float) -> None:
    data = random_data(shots=shots, val_per_class=20, text_signal=text_signal, noise=0.9, seed=seed, val_split=True)
    subset = (data.val_features, data.val_labels)
    assert (len(data.val_labels), len(data.search_labels)) == (5 * min(shots, 4), 5 * 20)
    official, on_subset = official_gda(data), official_gda(data, val=subset)
    assert (official["alpha"], on_subset["alpha"]) == (split_alpha, subset_alpha), "the set searched must matter"
    # resolved before the run, as Tip-Adapter's: official (the default) the whole split, shared the subset
    assert resolve_options("gda", make_options("gda"), RecipeFacts("caltech101", shots)).search_set == "split"
    assert resolve_options("gda", make_options("gda", {"recipe": "shared"}),
                           RecipeFacts("caltech101", shots)).search_set == "subset"

    def search(case: FewShotData, **options) -> dict:
        method = create_method("gda", case, **options)
        chosen = train(method, case, seed=1).chosen
        torch.testing.assert_close(method.logits(case.test_features),
                                   100.0 * case.test_features @ case.text_features.t()
                                   + chosen["alpha"] * (case.test_features @ official["W"] + official["b"]),
                                   rtol=1e-9, atol=1e-7)
        return chosen

    with warnings.catch_warnings():
        warnings.simplefilter("error", ProtocolWarning)
        chosen = search(data)
        assert (chosen["alpha"], chosen["search_set"], chosen["recipe.search_set"]) == (split_alpha, "split", "split")
        assert chosen["val_accuracy"] == pytest.approx(official["val_acc"])
        for options in ({"recipe": "shared"}, {"search_set": "subset"}):  # the few-shot val subset, asked for
            chosen = search(data, **options)
            assert (chosen["alpha"], chosen["search_set"], chosen["recipe.search_set"]) == (subset_alpha, "subset",
                                                                                           "subset")
            assert chosen["val_accuracy"] == pytest.approx(on_subset["val_acc"])
    # a cache without the whole val split (built with --val subset): the subset, with Tip-Adapter's warning
    no_split = replace(data, search_features=None, search_labels=None)
    with pytest.warns(ProtocolWarning, match=r"whole val split.*few-shot val subset.*--val split --force") as caught:
        chosen = search(no_split)
    assert (chosen["alpha"], chosen["search_set"], chosen["recipe.search_set"]) == (subset_alpha, "subset", "split")
    with pytest.warns(ProtocolWarning) as tip_caught:  # raw_keys off: random_data has no raw norms
        train(create_method("tip-adapter", no_split, raw_keys=False), no_split, seed=1)
    (gda_message,), (tip_message,) = [str(w.message) for w in caught], [str(w.message) for w in tip_caught]
    assert gda_message.replace("gda: ", "", 1).replace("α is searched", "SEARCHED") == \
        tip_message.replace("tip-adapter: ", "", 1).replace("α and β are searched", "SEARCHED")


# ---------------------------------------------------------------------------------------------------------- LP++


def official_lpp(data: FewShotData, shots: int, seed: int, epochs: int = 300) -> dict:
    """`LinearProbe_P2.forward` and its helpers, step by step, with autograd and torch.optim.SGD. The train features
    are one pass of the augmented train loader (the cache's view 0); the one-hot matrices, float16 in the official
    code (0/1, exact), are in the features' dtype because `bmm` needs one dtype."""
    features, labels = data.train_augmented[:, 0], data.train_labels
    text_weights = data.text_features.t()  # [D, C]
    val_features, val_labels = data.val_features, data.val_labels
    test_features = data.test_features
    num_classes = labels.unique().size(0)

    def get_one_hot(y_s: torch.Tensor) -> torch.Tensor:
        one_hot = torch.zeros(list(y_s.size()) + [num_classes], dtype=features.dtype)
        return one_hot.scatter_(-1, y_s.unsqueeze(-1), 1)

    def compute_centroids(z_s: torch.Tensor, y_s: torch.Tensor) -> torch.Tensor:
        return get_one_hot(y_s).transpose(1, 2).bmm(z_s)  # sums: the official division is commented out

    def compute_centroids_alpha(z_s: torch.Tensor, y_s: torch.Tensor) -> torch.Tensor:
        one_hot = get_one_hot(y_s)
        return (one_hot * z_s / one_hot.sum(-2, keepdim=True)).sum(1)

    torch.manual_seed(seed)
    centroids = compute_centroids(features.unsqueeze(0), labels.unsqueeze(0))
    classifier = nn.Linear(features.shape[1], int(features.shape[0] / shots), bias=True).to(features.dtype)
    classifier.weight.data = centroids[0]
    # calculate_lr_w (scipy.linalg.eigh in the official code; numpy's LAPACK eigh here)
    w, _ = np.linalg.eigh((features.T @ features).numpy())
    lr_temp = (4 * features.shape[0]) / max(w)
    # calculate_init_alpha
    alpha_tilde = compute_centroids_alpha((features @ text_weights).unsqueeze(0), labels.unsqueeze(0))[0]
    alpha_tilde = alpha_tilde.double() * shots
    final_init_alpha_mean = torch.mean(250 / shots * alpha_tilde)
    alpha_vec = (final_init_alpha_mean * torch.ones(1, int(features.shape[0] / shots), dtype=features.dtype)
                 ).requires_grad_(True)
    # calculate_lr_alpha
    lr_alpha = features.shape[0] / (max(torch.sum(torch.pow(features @ text_weights, 2), dim=0)) * 4)
    optimizer = torch.optim.SGD(classifier.parameters(), lr_temp, momentum=0.9)
    best_acc, best_epoch, history = 0.0, 0, []
    for epoch in range(epochs):
        vision_logits = classifier(features)
        text_logits = features @ text_weights
        logits = vision_logits + torch.ones(features.shape[0], 1, dtype=features.dtype) @ alpha_vec * text_logits
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            alpha_vec.data -= lr_alpha * alpha_vec.grad.data
        with torch.no_grad():
            logits_val = classifier(val_features) + torch.ones(val_features.shape[0], 1, dtype=features.dtype) \
                @ alpha_vec * (val_features @ text_weights)
            acc_val = np.mean(logits_val.argmax(dim=1).numpy() == val_labels.numpy()) * 100.0
            history.append(acc_val)
            if acc_val >= best_acc:
                best_acc, best_epoch = acc_val, epoch
                kept = (classifier.weight.detach().clone(), classifier.bias.detach().clone(),
                        alpha_vec.detach()[0].clone())
                logits_test = classifier(test_features) + torch.ones(test_features.shape[0], 1, dtype=features.dtype) \
                    @ alpha_vec * (test_features @ text_weights)
    last = (classifier.weight.detach(), classifier.bias.detach(), alpha_vec.detach()[0])
    return {"weight": kept[0], "bias": kept[1], "alpha": kept[2], "best_epoch": best_epoch, "val_acc": best_acc,
            "lr_w": lr_temp, "lr_alpha": float(lr_alpha), "alpha_init": float(final_init_alpha_mean),
            "test_logits": logits_test, "history": history, "last": last}


@pytest.mark.parametrize(("classes", "dim", "shots", "noise", "seed", "after_alpha_steps"), [
    (5, 8, 4, 0.9, 0, False),  # the epoch kept comes before α's first step (epoch 10)
    (5, 8, 4, 1.2, 0, True),
    (6, 32, 8, 1.2, 2, True),
    (6, 32, 8, 0.9, 2, True),
])
def test_lpp_equals_the_official_loop(classes: int, dim: int, shots: int, noise: float, seed: int,
                                      after_alpha_steps: bool) -> None:
    data = random_data(classes=classes, dim=dim, shots=shots, val_per_class=10, text_signal=1.0, noise=noise,
                       seed=seed)
    official = official_lpp(data, shots, seed=seed + 5)
    assert len(set(official["history"])) > 2, "the val accuracy must change over the epochs"
    assert (official["best_epoch"] + 1 > 10) == after_alpha_steps
    torch.manual_seed(seed + 5)  # as `run` seeds before it builds the method: the bias' default init
    method = create_method("lp++", data)
    chosen = train(method, data, seed=1).chosen
    assert chosen["selected_epoch"] == official["best_epoch"] + 1 and chosen["epochs"] == 300
    assert chosen["val_accuracy"] == pytest.approx(official["val_acc"])
    assert chosen["lr_w"] == pytest.approx(official["lr_w"], rel=1e-10)
    assert chosen["lr_alpha"] == pytest.approx(official["lr_alpha"], rel=1e-10)
    assert chosen["alpha_init"] == pytest.approx(official["alpha_init"], rel=1e-10)
    assert (official["last"][2] - official["alpha_init"]).abs().max() > 1e-3, "the α steps must matter"
    torch.testing.assert_close(method.weight, official["weight"], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(method.bias, official["bias"], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(method.alpha, official["alpha"], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(method.logits(data.test_features), official["test_logits"], rtol=1e-8, atol=1e-6)
    # the probabilities the ECE bins: the softmax of the official test logits, with no scale or temperature added
    torch.testing.assert_close(method.probabilities(method.logits(data.test_features)),
                               torch.softmax(official["test_logits"], dim=1), rtol=1e-8, atol=1e-8)


def test_lpp_chooses_its_epoch_on_its_own_k_shot_val_set() -> None:
    """The official `main.py` chooses on K val images a class (its own draw, `val_shots`), not on CoOp's min(K, 4):
    each `search_set` equals the official loop run with that val set."""
    data = random_data(classes=6, dim=32, shots=8, val_per_class=10, noise=1.2, seed=0, val_split=True)
    assert data.search_labels is not None and data.search_features is not None
    # LP++'s own val set: 8 of each class's 10 split images, one of them twice (as its sampler repeats images)
    rows = torch.tensor([10 * c + i for c in range(6) for i in (1, 2, 3, 5, 6, 8, 9, 9)])
    data = replace(data, val_shots_features=data.search_features[rows], val_shots_labels=data.search_labels[rows])
    sets = {"shots": (data.val_shots_features, data.val_shots_labels), "subset": (data.val_features, data.val_labels),
            "split": (data.search_features, data.search_labels)}
    epochs = set()
    for search_set, (val_x, val_y) in sets.items():
        official = official_lpp(replace(data, val_features=val_x, val_labels=val_y), 8, seed=7)
        epochs.add(official["best_epoch"])
        torch.manual_seed(7)
        method = create_method("lp++", data, **({} if search_set == "shots" else {"search_set": search_set}))
        with warnings.catch_warnings():
            warnings.simplefilter("error", ProtocolWarning)
            chosen = train(method, data, seed=1).chosen
        assert (chosen["search_set"], chosen["selected_epoch"]) == (search_set, official["best_epoch"] + 1)
        assert chosen["val_accuracy"] == pytest.approx(official["val_acc"])
        torch.testing.assert_close(method.logits(data.test_features), official["test_logits"], rtol=1e-8, atol=1e-6)
    assert len(epochs) == 3, "the three val sets must choose different epochs for this test to tell them apart"


@pytest.mark.parametrize("shots", [4, 8])
def test_lpp_without_its_val_set_chooses_on_the_subset_and_warns_where_that_differs(shots: int) -> None:
    data = random_data(classes=5, dim=16, shots=shots, val_per_class=6, seed=5)
    assert data.val_shots_features is None
    official = official_lpp(data, shots, seed=3, epochs=40)
    torch.manual_seed(3)
    method = create_method("lp++", data, epochs=40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = train(method, data, seed=1).chosen
    said = [str(w.message) for w in caught if issubclass(w.category, ProtocolWarning)]
    if shots <= 4:  # the few-shot val subset is the official draw itself: no warning
        assert said == []
    else:
        assert len(said) == 1 and "8 val images a class" in said[0] and "--val split --force" in said[0]
    assert (chosen["search_set"], chosen["selected_epoch"]) == ("subset", official["best_epoch"] + 1)


def test_lpp_without_val_keeps_the_last_epoch_and_warns() -> None:
    data = random_data(seed=3)
    official = official_lpp(data, 4, seed=9, epochs=25)
    no_val = replace(data, val_features=data.val_features[:0], val_labels=data.val_labels[:0])
    torch.manual_seed(9)
    method = create_method("lp++", no_val, epochs=25)
    with pytest.warns(ProtocolWarning, match="no few-shot val subset"):
        chosen = train(method, no_val, seed=1).chosen
    assert chosen["selected_epoch"] == 25 and chosen["val_accuracy"] is None
    for ours, theirs in zip((method.weight, method.bias, method.alpha), official["last"], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-8)


def test_lpp_counts_its_trained_parameters_and_cannot_score_new_classes() -> None:
    data = random_data()
    method = create_method("lp++", data)
    assert not any(p.requires_grad for p in method.parameters())  # the shared trainer finds nothing to train
    result = train(method, data, seed=1)
    assert result.steps == 0 and result.chosen["epochs"] == 300
    assert sum(p.numel() for p in method.parameters() if p.requires_grad) == 5 * 8 + 5 + 5
    with pytest.raises(NotApplicable):
        method.logits(data.test_features, data.text_features)
    assert evaluate(method, data.test_features, data.test_labels, data.text_features) is None


@pytest.mark.parametrize("name", ["gda", "lp++"])
def test_no_choice_sees_the_test_set(name: str) -> None:
    data = random_data(seed=4, val_split=True)
    poisoned = replace(data, test_features=torch.full_like(data.test_features, float("nan")),
                       test_labels=torch.zeros_like(data.test_labels))
    chosen = []
    for case in (data, poisoned):
        torch.manual_seed(1)
        method = create_method(name, case)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ProtocolWarning)  # a val set is there: no protocol warning either
            chosen.append(train(method, case, seed=1).chosen)
    assert chosen[0] == chosen[1]


# ----------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gda_lpp") / "synthetic.h5"
    return write_synthetic_cache(path, num_classes=12, dim=32, views=4, shots=(4, 16), seeds=(1,))


@pytest.mark.parametrize("name", ["gda", "lp++"])
def test_fit_end_to_end_base_to_novel(cache: Path, tmp_path: Path, name: str) -> None:
    metrics = lathadapter.fit(cache, method=name, shots=16, seed=1, classes="base", out=tmp_path, device="cpu")
    assert metrics["accuracy"]["novel"] is None and metrics["hm"] is None
    assert metrics["accuracy"]["base"] > 100 / 6 + 30  # 6 base classes: well above chance
    stored = json.loads((Path(metrics["run_dir"]) / "metrics.json").read_text())
    assert stored["accuracy"]["novel"] is None and stored["chosen"] == metrics["chosen"]
    weights = torch.load(Path(metrics["run_dir"]) / "weights.pt")
    assert {"weight", "bias"} <= set(weights)
    trained = 6 * 32 + 6 + 6 if name == "lp++" else 0
    assert metrics["trained_parameters"] == trained
    if name == "gda":  # the synthetic cache holds the whole val split: the official search set, recorded
        assert (metrics["chosen"]["search_set"], metrics["chosen"]["recipe.search_set"]) == ("split", "split")
        config = json.loads((Path(metrics["run_dir"]) / "config.json").read_text())
        assert config["options"]["search_set"] is None
        assert config["resolved"] == {"search_set": "split", "base_text": "official"}


def test_grid_runs_both(cache: Path, tmp_path: Path) -> None:
    summary = launch(GridSpec([str(cache)], ["zeroshot", "gda", "lp++"], [4], [1]), tmp_path, progress=False)
    assert summary["runs"] == 3
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "results.csv").open())}
    assert set(rows) == {"zeroshot", "gda", "lp++"}
    for name in ("gda", "lp++"):
        assert float(rows[name]["acc_all"]) > 100 / 12 + 20
    assert float(rows["gda"]["chosen.alpha"]) in GDA_ALPHAS
    assert int(rows["lp++"]["chosen.selected_epoch"]) >= 1
