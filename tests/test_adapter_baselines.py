"""Each baseline's scores equal docs/method.md's formulas on small hand-checkable cases (`recipe=shared`, the form
that page describes; tests/test_baseline_recipes.py holds the official recipes); Tip-Adapter's search is optimal."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lathadapter.adapter import evaluate as evaluate_module
from lathadapter.adapter.catalog import ambiguous_options, create_method, make_options, method_names
from lathadapter.adapter.evaluate import evaluate, evaluate_mapped
from lathadapter.adapter.methods import tip_adapter
from lathadapter.adapter.methods.base import NotApplicable
from lathadapter.adapter.methods.tip_adapter import argmax_hits, search_grid
from lathadapter.adapter.options import OptionError
from lathadapter.adapter.trainer import train
from lathadapter.cache.store import FewShotData

SHARED = {"recipe": "shared"}


def few_shot(dim: int = 2, classes: int = 2, views: int = 2, seed: int = 0) -> FewShotData:
    """Two well-separated classes on the unit circle, two train images each, with their augmented views."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.eye(classes, dim)
    labels = torch.arange(classes).repeat_interleave(2)
    train = F.normalize(text[labels] + 0.3 * torch.randn(len(labels), dim, generator=generator), dim=-1)
    train_augmented = F.normalize(train.unsqueeze(1) + 0.1 * torch.randn(len(labels), views, dim, generator=generator),
                              dim=-1)
    test = F.normalize(text[labels] + 0.5 * torch.randn(len(labels), dim, generator=generator), dim=-1)
    return FewShotData(
        class_names=[f"c{i}" for i in range(classes)], text_features=text, attribute_features=torch.zeros(0, dim),
        train_features=train, train_augmented=train_augmented, train_labels=labels, val_features=test,
        val_labels=labels, test_features=test, test_labels=labels, fingerprint="test",
    )


def test_registry_lists_every_method_and_rejects_unknown_names() -> None:
    assert set(method_names()) == {"zeroshot", "linear-probe", "clip-adapter", "tip-adapter", "tip-adapter-f",
                                   "taskres", "gda", "lp++", "clap", "ape", "ape-t", "cross-modal", "lathadapter"}
    with pytest.raises(OptionError, match="valid methods: .*zeroshot"):
        create_method("coop", few_shot())
    with pytest.raises(OptionError, match="valid options: .*alpha"):
        create_method("taskres", few_shot(), alpha=0.5, gamma=1.0)
    with pytest.raises(OptionError, match="not a valid float"):
        create_method("taskres", few_shot(), alpha="big")


@pytest.mark.parametrize(("method", "assignment", "rule"), [
    ("taskres", "lr=inf", "finite and > 0"), ("lathadapter", "weight_decay=inf", "finite and >= 0"),
    ("lathadapter", "alpha_v=nan", "finite and in [0, 1]"), ("lathadapter", "beta=-inf", "any finite number")])
def test_a_value_that_is_not_finite_is_refused_as_not_finite(method: str, assignment: str, rule: str) -> None:
    """`lr=inf` is > 0: the message must name what it breaks (finiteness), not a range it satisfies."""
    name, value = assignment.split("=")
    with pytest.raises(OptionError, match=re.escape(f"option {name}={float(value)!r} of {method} is not valid: it "
                                                    f"must be {rule} — ")):
        make_options(method, {name: value})


def test_the_always_scoped_option_names_are_the_ones_the_usage_page_names() -> None:
    """The option names that several registered methods declare separately, whose results columns are always
    `opt.METHOD.NAME`: docs/usage.md lists them. A new method declaring a name that one method alone declared before
    renames that method's column (`opt.NAME` → `opt.METHOD.NAME`) in every results.csv written afterwards, so it must
    show here and in docs/usage.md (docs/architecture.md, 'Adding a method')."""
    usage = (Path(__file__).parents[1] / "docs" / "usage.md").read_text()
    named = re.search(r"depend on the grid: (.*?) are always scoped", usage, re.S)
    assert named is not None
    assert ambiguous_options() == set(re.findall(r"`([a-z_+]+)`", named.group(1)))


def test_zeroshot_is_100_times_the_cosine() -> None:
    data = few_shot()
    method = create_method("zeroshot", data)
    x = torch.tensor([[0.6, 0.8]])
    assert torch.allclose(method.logits(x), torch.tensor([[60.0, 80.0]]))
    novel_text = torch.tensor([[0.0, -1.0]])
    assert torch.allclose(method.logits(x, novel_text), torch.tensor([[-80.0]]))


def test_clip_adapter_blends_the_adapted_feature() -> None:
    data = few_shot()
    method = create_method("clip-adapter", data, alpha=0.5, reduction=2)
    first, second = method.adapter.net[0], method.adapter.net[2]
    with torch.no_grad():  # g(x) = [[0, 1], [1, 0]] relu([x0 + x1]) ... written out by hand below
        first.weight.copy_(torch.tensor([[1.0, 1.0]]))
        second.weight.copy_(torch.tensor([[0.0], [2.0]]))
    x = torch.tensor([[1.0, 0.0]])
    # g(x) = [0, 2]; (1 − α) x + α g(x) = [0.5, 1.0]; normalised = [1, 2] / sqrt(5)
    expected = 100 * torch.tensor([[1.0, 2.0]]) / math.sqrt(5)
    assert torch.allclose(method.logits(x), expected, atol=1e-5)


def test_taskres_adds_a_scaled_residual_and_novel_classes_fall_back() -> None:
    data = few_shot()
    method = create_method("taskres", data, alpha=0.5, **SHARED)
    with torch.no_grad():
        method.residual.copy_(torch.tensor([[0.0, 2.0], [0.0, 0.0]]))
    x = torch.tensor([[0.0, 1.0]])
    # t'_0 = [1, 0] + 0.5 [0, 2] = [1, 1] → <x, norm> = 1/sqrt(2); t'_1 = [0, 1] → 1
    assert torch.allclose(method.logits(x), torch.tensor([[100 / math.sqrt(2), 100.0]]), atol=1e-4)
    assert torch.allclose(method.logits(x, torch.tensor([[1.0, 0.0]])), torch.tensor([[0.0]]))


def test_linear_probe_starts_at_zero_shot_and_cannot_score_new_classes() -> None:
    data = few_shot()
    method = create_method("linear-probe", data, **SHARED)
    x = data.test_features
    assert torch.allclose(method.logits(x), create_method("zeroshot", data).logits(x))
    with pytest.raises(NotApplicable):
        method.logits(x, data.text_features)
    assert evaluate(method, x, data.test_labels, data.text_features) is None


def test_accuracy_over_several_chunks_is_the_share_of_rows_whose_top_score_is_their_label(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`evaluate` and `evaluate_mapped` score the test rows in chunks (`CHUNK`); with chunks of 3 rows over 10 rows
    (the last one partial), the accuracy is still that of every row: 100 × the share of rows whose highest zero-shot
    score 100 <x, t_c> (over all classes, or over the mapped `columns`) is their label's, restated here."""
    generator = torch.Generator().manual_seed(4)
    text = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    x = F.normalize(torch.randn(10, 8, generator=generator), dim=-1)
    data = dataclasses.replace(few_shot(dim=8, classes=5), text_features=text)
    method = create_method("zeroshot", data)
    monkeypatch.setattr(evaluate_module, "CHUNK", 3)
    top = (x @ text.t()).argmax(-1)
    # rows 1, 5 and 8 wrong (70 %); row 9, alone in the last chunk, right: a chunk left out or misread shows
    labels = torch.where(torch.isin(torch.arange(10), torch.tensor([1, 5, 8])), (top + 1) % 5, top)
    assert evaluate(method, x, labels).accuracy == pytest.approx(100.0 * float((top == labels).double().mean()))
    assert evaluate(method, x, labels).accuracy == pytest.approx(70.0)
    columns = [3, 0, 4]  # target class j is training class columns[j]
    mapped_top = (x @ text[columns].t()).argmax(-1)
    wrong = torch.isin(torch.arange(10), torch.tensor([0, 3, 6]))  # 70 %, row 9 right
    mapped_labels = torch.where(wrong, (mapped_top + 1) % 3, mapped_top)
    assert evaluate_mapped(method, x, mapped_labels, columns).accuracy == pytest.approx(70.0)


def test_tip_adapter_logits_follow_the_formula() -> None:
    data = few_shot(views=3)
    method = create_method("tip-adapter", data, alpha=2.0, beta=3.0, search=False, **SHARED)
    keys = F.normalize(data.train_augmented.mean(dim=1), dim=-1)
    values = F.one_hot(data.train_labels, 2).float()
    x = data.test_features
    expected = 100 * x @ data.text_features.t() + 2.0 * torch.exp(-3.0 * (1 - x @ keys.t())) @ values
    assert torch.allclose(method.logits(x), expected, atol=1e-5)
    assert sum(p.numel() for p in method.parameters() if p.requires_grad) == 0


def test_search_grid_is_the_original_one() -> None:
    grid = search_grid(7.0, 200)
    assert len(grid) == 200 and grid[0] == pytest.approx(0.1) and grid[-1] == pytest.approx(0.1 + 199 * 6.9 / 200)


def test_argmax_hits_equal_argmax_with_ties() -> None:
    """The search's hit test equals `argmax == label`, ties included (argmax keeps the first maximum)."""
    generator = torch.Generator().manual_seed(6)
    scores = torch.randint(0, 4, (3, 200, 5), generator=generator).float()  # small integers: many ties
    labels = torch.randint(0, 5, (200,), generator=generator)
    expected = scores.argmax(-1) == labels
    best = scores.amax(-1)
    label_ties_best = best == scores.gather(-1, labels.expand(3, -1).unsqueeze(-1)).squeeze(-1)
    assert bool((label_ties_best & ((scores == best.unsqueeze(-1)).sum(-1) > 1)).any()), "the case must have ties"
    torch.testing.assert_close(argmax_hits(scores.clone(), labels), expected)
    untied = torch.randn(3, 200, 5, generator=generator)
    torch.testing.assert_close(argmax_hits(untied.clone(), labels), untied.argmax(-1) == labels)


@pytest.mark.parametrize("chunk", [None, 3 * 384, 1], ids=["one-chunk", "chunks-of-3-betas", "one-beta-a-chunk"])
def test_tip_adapter_search_picks_the_val_optimal_pair(chunk: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The searched (α, β) and accuracy are the plain double loop's, whether the β values go in one chunk, in
    chunks of 3 (10 β values: 3, 3, 3, 1; a β's largest tensor here is 6 α × 16 images × 4 classes) or one at a
    time."""
    if chunk is not None:
        monkeypatch.setitem(tip_adapter.SEARCH_CHUNK, "cpu", chunk)
    generator = torch.Generator().manual_seed(3)
    classes, dim = 4, 8
    centres = F.normalize(torch.randn(classes, dim, generator=generator), dim=-1)
    # Text features nearly alike, so that zero-shot alone is weak and the cache term decides.
    text = F.normalize(torch.ones(classes, dim) + 0.03 * centres, dim=-1)
    labels = torch.arange(classes).repeat_interleave(3)
    keys_x = F.normalize(centres[labels] + 0.8 * torch.randn(len(labels), dim, generator=generator), dim=-1)
    val_labels = torch.arange(classes).repeat_interleave(4)
    val = F.normalize(centres[val_labels] + 0.9 * torch.randn(len(val_labels), dim, generator=generator), dim=-1)
    data = FewShotData([str(i) for i in range(classes)], text, torch.zeros(0, dim), keys_x, keys_x.unsqueeze(1),
                       labels, val, val_labels, val, val_labels, "t")
    options = dict(search_alpha_max=3.0, search_beta_max=7.0, search_alpha_steps=6, search_beta_steps=10, **SHARED)
    method = create_method("tip-adapter", data, **options)
    chosen = train(method, data, seed=1).chosen
    # Oracle: a plain double loop over the original grid, keeping the first strictly better pair.
    best, seen = (-1.0, None, None), set()
    for beta, alpha in itertools.product(search_grid(7.0, 10).tolist(), search_grid(3.0, 6).tolist()):
        scores = 100 * val @ text.t() + alpha * torch.exp(-beta * (1 - val @ keys_x.t())) @ F.one_hot(labels).float()
        accuracy = float((scores.argmax(1) == val_labels).float().mean() * 100)
        seen.add(accuracy)
        if accuracy > best[0]:
            best = (accuracy, alpha, beta)
    assert len(seen) > 2, "the case must make the choice matter"
    assert chosen["val_accuracy"] == pytest.approx(best[0])
    assert (chosen["alpha"], chosen["beta"]) == pytest.approx((best[1], best[2]))
    assert (method.alpha, method.beta) == (chosen["alpha"], chosen["beta"])


def test_tip_adapter_f_trains_its_keys_then_searches() -> None:
    data = few_shot(views=3)
    data.text_features = F.normalize(torch.tensor([[1.0, 0.02], [1.0, -0.02]]), dim=-1)  # zero-shot is weak here
    method = create_method("tip-adapter-f", data, epochs=3, batch_size=2, **SHARED)
    initial = method.keys.detach().clone()
    result = train(method, data, seed=1)
    assert result.steps == 3 * 2  # 20 epochs default replaced by 3; no minimum step count for Tip-Adapter-F
    assert not torch.allclose(method.keys, initial)
    assert {"alpha", "beta", "val_accuracy", "search_set"} <= set(result.chosen)
    assert (result.chosen["recipe"], result.chosen["recipe.epochs"], result.chosen["search_set"]) == ("shared", 3,
                                                                                                      "subset")


@pytest.mark.parametrize("labels", [[1, 0, 1, 0], [1, 0, 0, 0, 1, 0]], ids=["shuffled", "unequal-counts"])
def test_tip_adapter_cache_is_the_one_hot_product_for_any_key_order(labels: list[int]) -> None:
    generator = torch.Generator().manual_seed(5)
    labels_t = torch.tensor(labels)
    train_x = F.normalize(torch.randn(len(labels), 3, generator=generator), dim=-1)
    test_x = F.normalize(torch.randn(5, 3, generator=generator), dim=-1)
    text = F.normalize(torch.randn(2, 3, generator=generator), dim=-1)
    data = FewShotData(["a", "b"], text, torch.zeros(0, 3), train_x, train_x.unsqueeze(1), labels_t, test_x,
                       torch.zeros(5, dtype=torch.long), test_x, torch.zeros(5, dtype=torch.long), "t")
    method = create_method("tip-adapter", data, alpha=1.5, beta=2.0, search=False, **SHARED)
    values = F.one_hot(labels_t).float()
    expected = 100 * test_x @ text.t() + 1.5 * torch.exp(-2.0 * (1 - test_x @ train_x.t())) @ values
    assert torch.allclose(method.logits(test_x), expected, atol=1e-5)


def test_normalize_and_mix_match_the_plain_formulas_in_value_and_gradient() -> None:
    from lathadapter.adapter.methods.base import Adapter, mix, normalize

    x = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_()
    assert torch.autograd.gradcheck(normalize, (x,))
    adapter = Adapter(8, 2).double()
    plain = F.normalize(0.7 * x + 0.3 * adapter(x), dim=-1)
    ours = normalize(mix(x, adapter, 0.3))  # the renormalised blend, as CLIP-Adapter and LatHAdapter use it
    torch.testing.assert_close(ours, plain)
    weights = torch.randn(6, 8, dtype=torch.float64)
    expected = torch.autograd.grad((weights * plain).sum(), [x, *adapter.parameters()])
    actual = torch.autograd.grad((weights * ours).sum(), [x, *adapter.parameters()])
    for e, a in zip(expected, actual, strict=True):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("final_relu", [False, True], ids=["blend", "final-relu"])
def test_the_fixed_shape_adapter_blend_is_the_plain_formula_and_vmaps(final_relu: bool) -> None:
    """`adapter_mix` (stacked runs, captured steps) against the blend written out, (1 − α) x + α g(x) with
    g(x) = relu(x W1ᵀ) W2ᵀ, or relu of it (CLIP-Adapter's final ReLU), in float64: the value, the gradients w.r.t. x,
    W1 and W2, gradcheck; and vmapped over 3 stacked runs, each run's gradients are its own."""
    from torch.func import vmap

    from lathadapter.adapter.methods.base import adapter_mix

    generator = torch.Generator().manual_seed(5)
    x = torch.randn(6, 8, dtype=torch.float64, generator=generator).requires_grad_()
    first = torch.randn(3, 8, dtype=torch.float64, generator=generator).requires_grad_()
    second = torch.randn(8, 3, dtype=torch.float64, generator=generator).requires_grad_()
    alpha = 0.3

    def written_out(x, first, second):
        adapted = torch.relu(x @ first.t()) @ second.t()
        return (1 - alpha) * x + alpha * (torch.relu(adapted) if final_relu else adapted)

    weights = torch.randn(6, 8, dtype=torch.float64, generator=generator)
    expected, actual = written_out(x, first, second), adapter_mix(x, first, second, alpha, final_relu)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    for e, a in zip(torch.autograd.grad((weights * expected).sum(), (x, first, second)),
                    torch.autograd.grad((weights * actual).sum(), (x, first, second)), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *t: adapter_mix(*t, alpha, final_relu), (x, first, second))
    xs, firsts, seconds = (torch.stack([t.detach() * (1 + r) for r in range(3)]).requires_grad_()
                           for t in (x, first, second))
    stacked = vmap(lambda *t: adapter_mix(*t, alpha, final_relu))(xs, firsts, seconds)
    got = torch.autograd.grad((weights * stacked).sum(), (xs, firsts, seconds))
    for r in range(3):
        want = torch.autograd.grad((weights * written_out(xs[r], firsts[r], seconds[r])).sum(), (xs, firsts, seconds))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g[r], w[r], rtol=1e-12, atol=1e-12)


def test_cosines_equal_the_product_of_normalised_rows_with_their_gradients() -> None:
    from lathadapter.adapter.methods.base import cosines

    generator = torch.Generator().manual_seed(4)
    x = (3 * torch.randn(7, 8, dtype=torch.float64, generator=generator)).requires_grad_()
    y = (0.5 * torch.randn(5, 8, dtype=torch.float64, generator=generator)).requires_grad_()
    torch.testing.assert_close(cosines(x, y), F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).t())
    assert torch.autograd.gradcheck(cosines, (x, y))
    # unit_y: y's rows are unit already, so the product is normalize(x) @ yᵀ, and so is its gradient w.r.t. y
    unit = F.normalize(y.detach(), dim=-1).requires_grad_()
    weights = torch.randn(7, 5, dtype=torch.float64, generator=generator)
    expected = torch.autograd.grad((weights * (F.normalize(x, dim=-1) @ unit.t())).sum(), [x, unit])
    actual = torch.autograd.grad((weights * cosines(x, unit, unit_y=True)).sum(), [x, unit])
    for e, a in zip(expected, actual, strict=True):
        torch.testing.assert_close(a, e)
    assert torch.autograd.gradcheck(lambda a, b: cosines(a, b, unit_y=True), (x, unit))
