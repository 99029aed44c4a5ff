"""Tuning by a score that sees unseen classes (`--tune-score val_hm`) and the lr preset extended past its edges."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import read_rows, top1
from typer.testing import CliRunner

from lathadapter.adapter.catalog import create_method
from lathadapter.adapter.options import OptionError
from lathadapter.adapter.trainer import train
from lathadapter.cache.store import CacheReader, FewShotData
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments import data as data_module
from lathadapter.experiments import training
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.launch import launch, prepare
from lathadapter.experiments.report_tables import EDGE_NOTE, summary_markdown
from lathadapter.experiments.run import RunConfig, pseudo_split, tune_val_score
from lathadapter.experiments.spec import GridSpec, expand, load_spec_file
from lathadapter.experiments.tuning import select_tuned

TINY = {"epochs": ["1"], "min_steps": ["2"]}
CLASSES = 7  # base-to-novel: base = the first ceil(7/2) = 4 labels; their pseudo-base half the first 2 of those


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tune_score_caches")
    return write_synthetic_cache(folder / "seven.h5", num_classes=CLASSES, dim=16, views=2, shots=(2,), seeds=(1,),
                                 train_per_class=4, val_per_class=4, test_per_class=5, name="seven")


@pytest.fixture(scope="module")
def data(cache: Path) -> FewShotData:
    with CacheReader(cache) as reader:
        return reader.load(2, 1)


def rows_with(data: FewShotData, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The val features of `classes` (original labels), in cache order, and their labels relabelled by position."""
    keep = torch.isin(data.val_labels, torch.tensor(classes))
    relabel = {c: i for i, c in enumerate(classes)}
    return data.val_features[keep], torch.tensor([relabel[int(v)] for v in data.val_labels[keep]])


def test_the_pseudo_split_halves_the_training_classes_by_the_protocol_rule(data: FewShotData) -> None:
    for classes, pseudo_base, pseudo_novel in (("base", [0, 1], [2, 3]), ("all", [0, 1, 2, 3], [4, 5, 6])):
        config = RunConfig.create("clip-adapter", 2, 1, classes)
        first, second = pseudo_split(config, data), pseudo_split(config, data)
        for part, wanted in zip(first, (pseudo_base, pseudo_novel), strict=True):
            assert part.class_names == [data.class_names[c] for c in wanted]
            features, labels = rows_with(data, wanted)
            assert torch.equal(part.val_features, features) and torch.equal(part.val_labels, labels)
            assert torch.equal(part.text_features, data.text_features[wanted])
            assert set(part.train_labels.tolist()) == set(range(len(wanted)))
            assert len(part.test_labels) == 0 and part.test_features.shape[0] == 0  # the test set is dropped
        for a, b in zip(first, second, strict=True):  # deterministic
            assert a.class_names == b.class_names and torch.equal(a.train_features, b.train_features)
    with pytest.raises(OptionError, match="--tune-score val_hm splits the training classes in two"):
        pseudo_split(RunConfig.create("clip-adapter", 2, 1, "base"), data.select_classes([0, 1]))  # one base class


class Poison(torch.Tensor):
    """A tensor that raises on any use: the test features a tuning score must never read."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        raise AssertionError(f"the test set was read ({getattr(func, '__name__', func)})")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> FewShotData:
    """The world of `cache` with noisy class text: a pseudo-base copy scores its two halves differently, so that their
    HM differs from either (on `data` both are 100%)."""
    path = write_synthetic_cache(tmp_path_factory.mktemp("noisy") / "seven.h5", num_classes=CLASSES, dim=16, views=2,
                                 shots=(2,), seeds=(1,), train_per_class=4, val_per_class=4, test_per_class=5,
                                 name="seven", text_noise=0.6, seed=3)
    with CacheReader(path) as reader:
        return reader.load(2, 1)


def test_val_hm_is_the_hm_of_a_pseudo_base_copy_and_never_reads_the_test_set(noisy: FewShotData) -> None:
    data = noisy
    poisoned = dataclasses.replace(data, test_features=torch.zeros(3, 16).as_subclass(Poison),
                                   test_labels=torch.zeros(3, dtype=torch.long).as_subclass(Poison))
    with pytest.raises(AssertionError, match="the test set was read"):
        len(poisoned.test_labels)  # the poison works
    for method in ("clip-adapter", "lathadapter"):
        config = RunConfig.create(method, 2, 1, "base", overrides={"epochs": 1, "min_steps": 2})
        score = tune_val_score(config, None, poisoned, "val_hm")
        # the oracle: the pseudo-base half (original labels 0, 1) built here, a copy trained on it from the seed
        pseudo_base, pseudo_novel = data.select_classes([0, 1]), data.select_classes([2, 3])
        torch.manual_seed(1)
        copy = create_method(method, pseudo_base, epochs=1, min_steps=2)
        train(copy, pseudo_base, seed=1)
        base = top1(copy, *rows_with(data, [0, 1]))
        novel = top1(copy, *rows_with(data, [2, 3]), pseudo_novel.text_features)
        assert base != novel  # the world tells the HM from either half's accuracy
        assert score is not None and math.isfinite(score)
        assert score == pytest.approx(2 * base * novel / (base + novel))
        assert tune_val_score(config, None, data, "val_hm") == score
        assert math.isfinite(tune_val_score(config, None, poisoned, "val"))
    # a method that cannot score unseen classes has no val_hm
    assert tune_val_score(RunConfig.create("linear-probe", 2, 1, "base"), None, poisoned, "val_hm") is None
    with pytest.raises(OptionError, match="--tune-score foo: choose one of val, val_hm"):
        tune_val_score(RunConfig.create("clip-adapter", 2, 1, "base"), None, data, "foo")


def test_the_default_score_is_val_hm_for_base_to_novel_and_val_elsewhere(cache: Path, tmp_path: Path) -> None:
    spec = GridSpec([str(cache)], ["zeroshot", "clip-adapter", "linear-probe"], [2], [1], ["all", "base"],
                    tune_preset="lr")
    scores = {(r.config.method, r.config.classes, r.tune.score) for r in expand(spec) if r.tune is not None}
    assert scores == {("clip-adapter", "all", "val"), ("clip-adapter", "base", "val_hm"),
                      ("linear-probe", "all", "val"), ("linear-probe", "base", "val")}  # it has no novel accuracy
    val = {(r.config.method, r.config.classes, r.tune.score) for r in
           expand(dataclasses.replace(spec, tune_score="val")) if r.tune is not None}
    assert {s for _, _, s in val} == {"val"}
    # the keys of a `val` group are those of grids before scores existed; a val_hm group's differ
    _, plain = prepare(expand(dataclasses.replace(spec, tune_score="val")), tmp_path)
    _, auto = prepare(expand(spec), tmp_path)
    for a, b in zip(plain, auto, strict=True):
        assert (a.key == b.key) == (b.run.tune is None or b.run.tune.score == "val")
    with pytest.raises(OptionError, match="--tune-score foo: choose one of auto, val, val_hm"):
        expand(dataclasses.replace(spec, tune_score="foo"))
    (tmp_path / "grid.yaml").write_text("tune_score: val_hm\n")
    assert load_spec_file(tmp_path / "grid.yaml")["tune_score"] == "val_hm"
    (tmp_path / "bad.yaml").write_text("tune_score: best\n")
    with pytest.raises(OptionError, match=r"bad\.yaml: tune_score 'best': choose one of auto, val, val_hm"):
        load_spec_file(tmp_path / "bad.yaml")


def test_val_hm_tuning_keeps_the_best_hm_of_the_pseudo_halves(cache: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["grid", "--cache", str(cache), "--method", "zeroshot,clip-adapter,linear-probe", "--shots", "2",
            "--seeds", "1", "--classes", "base", "--set", "epochs=1", "--set", "min_steps=2",
            "--tune", "lr=0.002,0.0002,0.02,0.2", "--tune-score", "val_hm", "--out", str(tmp_path / "g"),
            "--device", "cpu", "--workers", "1", "--batch-runs", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = read_rows(tmp_path / "g")
    for column in ("tune.score", "tune.val_score", "tune.val_accuracy", "tune.pseudo_base", "tune.pseudo_novel",
                   "tune.edge"):
        assert column in rows[0]
    clip = [r for r in rows if r["method"] == "clip-adapter"]
    assert len(clip) == 4 and {r["tune.score"] for r in clip} == {"val_hm"}
    for row in clip:
        base, novel = float(row["tune.pseudo_base"]), float(row["tune.pseudo_novel"])
        assert float(row["tune.val_score"]) == pytest.approx(2 * base * novel / (base + novel))
    best = max(clip, key=lambda r: (float(r["tune.val_score"]), -int(r["tune.index"])))
    assert [r["key"] for r in clip if r["tune.selected"] == "True"] == [best["key"]]
    probe = [r for r in rows if r["method"] == "linear-probe"]  # cannot score novel classes: tuned by val
    assert {r["tune.score"] for r in probe} == {"val"} and {r["tune.pseudo_base"] for r in probe} == {""}
    assert [r for r in probe if r["tune.selected"] == "True"] == [
        max(probe, key=lambda r: (float(r["tune.val_accuracy"]), -int(r["tune.index"])))]
    assert "few-shot val set by val/val_hm" in result.output and "val_hm: the harmonic mean" in result.output
    bad = runner.invoke(app, [*args[:-10], "--tune-score", "foo", "--out", str(tmp_path / "x")])  # given once
    assert bad.exit_code == 2 and bad.output.strip() == "error: --tune-score foo: choose one of auto, val, val_hm"
    assert not (tmp_path / "x").exists()


def test_a_grid_poisoned_with_negated_test_features_scores_alike(cache: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spec = GridSpec([str(cache)], ["clip-adapter"], [2], [1], ["base"], options=TINY, tune={"lr": ["0.002", "0.02"]})
    launch(spec, tmp_path / "clean", progress=False)
    load = data_module.DataCache.load

    def poisoned(self: Any, *args: Any) -> FewShotData:
        data = load(self, *args)
        # negated, not NaN: NaN scores are refused at evaluation (no accuracy is reported for them)
        return dataclasses.replace(data, test_features=-data.test_features)

    monkeypatch.setattr(data_module.DataCache, "load", poisoned)
    # trained in lockstep, pseudo copies alone
    launch(spec, tmp_path / "poisoned", Execution(batch_runs=2), progress=False)
    clean, dirty = read_rows(tmp_path / "clean"), read_rows(tmp_path / "poisoned")
    assert {r["batch_runs"] for r in dirty} == {"2"}
    for a, b in zip(clean, dirty, strict=True):
        assert a["key"] == b["key"]
        for column in ("tune.val_score", "tune.pseudo_base", "tune.pseudo_novel", "tune.selected"):
            assert a[column] == b[column]
        assert b["acc_base"] != a["acc_base"] or b["acc_novel"] != a["acc_novel"]  # the poison reached the test


def peaked(target: float) -> Any:
    """A val score that grows towards `target` lr on a log scale (the grid's extension follows it)."""
    def score(config: RunConfig, method: Any, data: Any) -> float:
        return 100.0 - abs(math.log10(config.options.lr) - math.log10(target))
    return score


def lrs(rows: list[dict[str, str]], method: str) -> dict[float, dict[str, str]]:
    return {float(r["opt.lr"]): r for r in rows if r["method"] == method}


def test_the_lr_preset_extends_past_an_edge_and_keeps_the_optimum(cache: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "tune_val_accuracy", peaked(1.0))  # lathadapter's default is 1e-2: the best is ×100
    spec = GridSpec([str(cache)], ["zeroshot", "lathadapter"], [2], [1], options=TINY, tune_preset="lr")
    summary = launch(spec, tmp_path, progress=False)
    assert summary["runs"] == summary["done"] == 1 + 3 + 2  # ×100 was best on an edge, so ×1000 was tried too
    rows = lrs(read_rows(tmp_path), "lathadapter")
    assert sorted(rows) == pytest.approx([1e-3, 1e-2, 1e-1, 1.0, 10.0])
    assert [lr for lr, r in rows.items() if r["tune.selected"] == "True"] == [1.0]
    assert rows[1.0]["tune.edge"] == ""  # bracketed: 10 was worse
    assert {r["tune.group"] for r in rows.values()} == {rows[1e-2]["tune.group"]}
    assert [float(rows[lr]["tune.factor"]) for lr in (1.0, 10.0)] == [100.0, 1000.0]
    assert rows[1.0]["tune.origin"] == rows[10.0]["tune.origin"] == rows[1e-1]["key"]
    # the originals keep the keys a grid without extensions gives them
    _, keyed = prepare(expand(spec), tmp_path)
    assert {k.key for k in keyed} == {r["key"] for r in read_rows(tmp_path) if r["tune.origin"] == ""}
    again = launch(spec, tmp_path, progress=False)
    assert (again["runs"], again["skipped"], again["done"]) == (6, 6, 0)
    # an explicit --tune list is not extended
    summary = launch(GridSpec([str(cache)], ["lathadapter"], [2], [1], options=TINY,
                                tune={"lr": ["0.001", "0.01"]}), tmp_path / "explicit", progress=False)
    assert summary["runs"] == 2


def test_the_extension_is_bounded_and_marks_the_edge(cache: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "tune_val_accuracy", peaked(1e-12))  # far below every grid
    spec = GridSpec([str(cache)], ["clip-adapter"], [2], [1], options=TINY, tune_preset="lr")
    summary = launch(spec, tmp_path, progress=False)
    assert summary["runs"] == 3 + 2  # two extensions below, no more
    rows = lrs(read_rows(tmp_path), "clip-adapter")
    default = 2e-3  # CLIP-Adapter's official recipe (CoOp's SGD lr), a `Scaled` preset: resolved when it runs
    assert sorted(rows) == pytest.approx([default * f for f in (1e-3, 1e-2, 0.1, 1, 10)])
    (kept,) = [r for r in rows.values() if r["tune.selected"] == "True"]
    assert float(kept["opt.lr"]) == pytest.approx(default * 1e-3) and kept["tune.edge"] == "low"
    assert all(r["tune.edge"] == "" for r in rows.values() if r is not kept)
    markdown = summary_markdown(tmp_path)
    assert f"lr={kept['opt.lr']} ▼" in markdown and EDGE_NOTE in markdown


@pytest.mark.parametrize(("optimum", "kept_lr"), [(1.0, 0.1), (1e-12, 0.001), (0.01, 0.01)])
def test_an_explicit_grid_marks_a_choice_at_its_edge_without_extending(
        cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, optimum: float, kept_lr: float) -> None:
    monkeypatch.setattr(training, "tune_val_accuracy", peaked(optimum))
    grid = ["0.01", "0.001", "0.1"]  # not sorted: the edge is the value's place among the numbers, not in the list
    summary = launch(GridSpec([str(cache)], ["lathadapter"], [2], [1], options=TINY, tune={"lr": grid}), tmp_path,
                     progress=False)
    assert summary["runs"] == summary["done"] == 3  # an explicit grid is never extended
    rows = lrs(read_rows(tmp_path), "lathadapter")
    (kept,) = [r for r in rows.values() if r["tune.selected"] == "True"]
    assert float(kept["opt.lr"]) == pytest.approx(kept_lr)
    values = [float(v) for v in grid]
    expected = "high" if kept_lr == max(values) else "low" if kept_lr == min(values) else ""
    assert kept["tune.edge"] == expected
    assert all(r["tune.edge"] == "" for r in rows.values() if r is not kept)
    markdown = summary_markdown(tmp_path)
    mark = {"high": " ▲", "low": " ▼", "": ""}[expected]
    assert f"| lathadapter | lr={kept['opt.lr']}{mark} |" in markdown
    assert (EDGE_NOTE in markdown) == bool(expected)


def test_only_explicit_grids_of_three_or_more_numbers_over_one_option_mark_an_edge() -> None:
    def group(name: str, names: str, values: list[str], best: int) -> list[dict[str, str]]:
        """A finished group as results.csv holds it (text): candidate `best` has the best val score."""
        return [{"key": f"{name}{i}", "tune.group": name, "tune.index": str(i), "tune.candidates": str(len(values)),
                 "tune.names": names, "tune.values": value, "tune.val_accuracy": "90" if i == best else "50",
                 "tune.step": "", "tune.factor": ""} for i, value in enumerate(values)]

    rows = select_tuned(
        group("three_high", "lr", ["lr=0.01", "lr=0.001", "lr=0.1"], 2)
        + group("three_low", "lr", ["lr=0.01", "lr=0.001", "lr=0.1"], 1)
        + group("three_inner", "lr", ["lr=0.01", "lr=0.001", "lr=0.1"], 0)
        + group("ints", "num_attributes", ["num_attributes=8", "num_attributes=16", "num_attributes=32",
                                                 "num_attributes=4"], 3)
        # two values: each is an edge, so neither is marked (a mark every cell carries says nothing)
        + group("two", "lr", ["lr=0.001", "lr=0.01"], 1)
        # no numbers: no order, no edge
        + group("words", "radius", ["radius=head", "radius=norm", "radius=kind"], 2)
        # two options: a product grid, not one option's range
        + group("two_options", "lr alpha", ["lr=0.1 alpha=0.2", "lr=0.01 alpha=0.2", "lr=0.001 alpha=0.2"], 0))
    edges = {r["tune.group"]: r["tune.edge"] for r in rows if r["tune.selected"]}
    assert edges == {"three_high": "high", "three_low": "low", "three_inner": "", "ints": "low", "two": "",
                     "words": "", "two_options": ""}
    assert all(r["tune.edge"] == "" for r in rows if not r["tune.selected"])


def test_an_interrupted_extension_resumes_without_rerunning_anything(cache: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    score = peaked(1e6)  # above every grid: both extensions are due

    def interrupted(config: RunConfig, method: Any, data: Any) -> float:
        if config.options.lr == pytest.approx(10.0):  # the second extension
            raise KeyboardInterrupt
        return score(config, method, data)

    monkeypatch.setattr(training, "tune_val_accuracy", interrupted)
    spec = GridSpec([str(cache)], ["lathadapter"], [2], [1], options=TINY, tune_preset="lr")
    with pytest.raises(KeyboardInterrupt):
        launch(spec, tmp_path, progress=False)
    rows = read_rows(tmp_path)
    assert len(rows) == 4 and not any(r["tune.selected"] == "True" for r in rows)  # an extension is due: no choice
    trained = []
    monkeypatch.setattr(training, "tune_val_accuracy", lambda c, m, d: trained.append(c.options.lr) or score(c, m, d))
    summary = launch(spec, tmp_path, progress=False)
    assert (summary["runs"], summary["skipped"], summary["done"]) == (5, 4, 1) and trained == [10.0]
    rows = lrs(read_rows(tmp_path), "lathadapter")
    assert rows[10.0]["tune.selected"] == "True" and rows[10.0]["tune.edge"] == "high"


def test_worker_processes_extend_as_this_process_does(cache: Path, tmp_path: Path) -> None:
    spec = GridSpec([str(cache)], ["clip-adapter", "lathadapter"], [2], [1], ["all", "base"], options=TINY,
                    tune_preset="lr")
    local = launch(spec, tmp_path / "local", progress=False)
    pooled = launch(spec, tmp_path / "pool", Execution(workers=2, batch_runs=2), progress=False)
    assert local["runs"] == pooled["runs"] == pooled["done"]
    columns = ("key", "tune.score", "tune.val_score", "tune.origin", "tune.selected", "tune.edge", "acc_all", "hm")
    rows = {name: sorted(tuple(r[c] for c in columns) for r in read_rows(tmp_path / name))
            for name in ("local", "pool")}
    assert rows["local"] == rows["pool"]
    assert any(r["tune.origin"] for r in read_rows(tmp_path / "pool"))  # this grid extends at least one group


def test_tune_set_split_scores_on_the_whole_val_split(cache: Path, tmp_path: Path) -> None:
    spec = GridSpec([str(cache)], ["clip-adapter"], [2], [1], ["all", "base"], options=TINY,
                    tune={"lr": ["0.002", "0.2"]}, tune_set="split")
    launch(spec, tmp_path / "g", progress=False)
    rows = read_rows(tmp_path / "g")
    with CacheReader(cache) as reader:
        data = reader.load(2, 1)
    assert len(data.search_labels) > len(data.val_labels)  # the whole split is larger than the few-shot subset

    def whole(classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole val split's images of `classes` (original labels), relabelled by position."""
        keep = torch.isin(data.search_labels, torch.tensor(classes))
        relabel = {c: i for i, c in enumerate(classes)}
        return data.search_features[keep], torch.tensor([relabel[int(v)] for v in data.search_labels[keep]])

    def trained(classes: list[int], lr: float) -> Any:
        """The oracle: a copy trained here from the seed on `classes`."""
        part = data.select_classes(classes)
        torch.manual_seed(1)
        copy = create_method("clip-adapter", part, epochs=1, min_steps=2, lr=lr)
        train(copy, part, seed=1)
        return copy

    for row in rows:
        assert row["tune.set"] == "split"
        lr = float(row["opt.lr"])
        if row["classes"] == "all":  # val: accuracy on every image of the val split
            expected = top1(trained(list(range(CLASSES)), lr), *whole(list(range(CLASSES))))
            assert float(row["tune.val_score"]) == pytest.approx(expected)
        else:  # val_hm: a pseudo-base copy (labels 0, 1) scored on both halves' images of the whole split
            copy = trained([0, 1], lr)
            base = top1(copy, *whole([0, 1]))
            novel = top1(copy, *whole([2, 3]), data.select_classes([2, 3]).text_features)
            assert float(row["tune.val_score"]) == pytest.approx(2 * base * novel / (base + novel))
    for classes in ("all", "base"):
        group = [r for r in rows if r["classes"] == classes]
        best = max(group, key=lambda r: (float(r["tune.val_score"]), -int(r["tune.index"])))
        assert [r["key"] for r in group if r["tune.selected"] == "True"] == [best["key"]]
    # a split group's keys differ from the few-shot group's
    _, subset = prepare(expand(dataclasses.replace(spec, tune_set="subset")), tmp_path / "h")
    _, split = prepare(expand(spec), tmp_path / "h")
    assert all(a.key != b.key for a, b in zip(subset, split, strict=True))
    with pytest.raises(OptionError, match="--tune-set whole: choose one of subset, split"):
        expand(dataclasses.replace(spec, tune_set="whole"))


def test_cli_tune_set(cache: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["grid", "--cache", str(cache), "--method", "clip-adapter", "--shots", "2", "--seeds", "1",
            "--set", "epochs=1", "--set", "min_steps=2", "--tune", "lr=0.002,0.02", "--device", "cpu",
            "--workers", "1"]
    result = runner.invoke(app, [*args, "--tune-set", "split", "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    assert {r["tune.set"] for r in read_rows(tmp_path / "g")} == {"split"}
    assert "on the whole val split" in result.output
    bad = runner.invoke(app, [*args, "--tune-set", "all", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and bad.output.strip() == "error: --tune-set all: choose one of subset, split"
    assert not (tmp_path / "x").exists()


def test_a_tuning_score_or_set_with_nothing_tuned_is_refused_not_ignored(cache: Path, tmp_path: Path) -> None:
    """`--tune-score val_hm` or `--tune-set split` choose how tuned values are chosen; without `--tune` or
    `--tune-preset` (or a grid file's `tune`) nothing is tuned, so they would change nothing: one usage line naming
    them, before any run. The defaults given explicitly (auto, subset) change nothing and pass."""
    runner = CliRunner()
    grid = ["grid", "--cache", str(cache), "--method", "clip-adapter", "--shots", "2", "--seeds", "1",
            "--set", "epochs=1", "--set", "min_steps=2", "--device", "cpu", "--workers", "1"]
    protocol = ["protocol", "base-to-novel", "--cache", str(cache), "--method", "clip-adapter", "--shots", "2",
                "--seeds", "1", "--set", "epochs=1", "--device", "cpu", "--workers", "1"]
    for args in (grid, protocol):
        for flags, named in ((["--tune-score", "val_hm"], "--tune-score val_hm"),
                             (["--tune-set", "split"], "--tune-set split"),
                             (["--tune-score", "val", "--tune-set", "split"], "--tune-score val and --tune-set split"),
                             (["--tune-preset", "none", "--tune-score", "val_hm"], "--tune-score val_hm")):
            result = runner.invoke(app, [*args, *flags, "--out", str(tmp_path / "x")])
            assert result.exit_code == 2, result.output
            assert result.output.strip().startswith(f"error: {named}: nothing is tuned; add --tune"), result.output
            assert not (tmp_path / "x").exists()
    (tmp_path / "g.yaml").write_text("tune:\n  lr: [0.002, 0.02]\n")
    tuned = runner.invoke(app, [*grid, "--config", str(tmp_path / "g.yaml"), "--tune-score", "val", "--out",
                                str(tmp_path / "g")])
    assert tuned.exit_code == 0, tuned.output
    assert {r["tune.score"] for r in read_rows(tmp_path / "g")} == {"val"}
    plain = runner.invoke(app, [*grid, "--tune-score", "auto", "--tune-set", "subset", "--out", str(tmp_path / "p")])
    assert plain.exit_code == 0, plain.output


def test_the_demo_with_nothing_tuned_refuses_a_tuning_score_or_set(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`demo --tune-preset none` tunes nothing, so a --tune-score or --tune-set beside it would change nothing (it
    was silently unused): one usage line before any work. The demo's own default (--tune-set split) trips nothing."""
    from lathadapter.demo import pipeline

    calls: list[dict[str, Any]] = []

    def recorded(out: Path, **kwargs: Any) -> None:  # the demo's options as passed, then stop before any work
        calls.append(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_demo", recorded)
    runner = CliRunner()
    for flags, named in ((["--tune-score", "val_hm"], "--tune-score val_hm"),
                         (["--tune-set", "split"], "--tune-set split"),
                         (["--tune-set", "subset", "--tune-score", "val"], "--tune-score val and --tune-set subset")):
        result = runner.invoke(app, ["demo", "--tune-preset", "none", *flags, "--out", str(tmp_path / "d")])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (f"error: {named}: nothing is tuned; add --tune-preset lr (the demo's "
                                         f"default), or drop {'them' if ' and ' in named else 'it'}")
    assert not calls and not (tmp_path / "d").exists()
    for flags in ([], ["--tune-preset", "none"], ["--tune-set", "subset", "--tune-score", "val_hm"]):
        runner.invoke(app, ["demo", *flags, "--out", str(tmp_path / "d")])  # reaches the demo (stubbed: stops at once)
    assert [(c["tune"], c["tune_score"], c["tune_set"]) for c in calls] == [
        ("lr", "auto", "split"), (None, "auto", "split"), ("lr", "val_hm", "subset")]


def test_a_grid_files_tuning_score_or_set_with_nothing_tuned_is_refused(cache: Path, tmp_path: Path) -> None:
    """The rule of the flags holds wherever the grid's axes come from: a grid file's `tune_score` or `tune_set`
    without anything tuned, or a `GridSpec` built so in Python, would change nothing and is refused before any run;
    with the file's `tune` it is used. As usage.md says of grid files, the error names the file and the key; a value
    the command line gives over the file's is named as its flag."""
    (tmp_path / "score.yaml").write_text(f"caches: [{cache}]\nmethods: [clip-adapter]\ntune_score: val_hm\n")
    (tmp_path / "set.yaml").write_text(f"caches: [{cache}]\nmethods: [clip-adapter]\ntune_set: split\n")
    runner = CliRunner()
    for name, flags, named in (("score", [], f"grid file {tmp_path / 'score.yaml'}: tune_score val_hm"),
                               ("set", [], f"grid file {tmp_path / 'set.yaml'}: tune_set split"),
                               ("score", ["--tune-score", "val"], "--tune-score val"),
                               ("set", ["--tune-set", "split"], "--tune-set split")):
        result = runner.invoke(app, ["grid", "--config", str(tmp_path / f"{name}.yaml"), "--shots", "2", "--seeds",
                                     "1", "--device", "cpu", *flags, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2, result.output
        fix = "--tune" if flags else "a tune or tune_preset key to the grid file, or --tune"  # where it was given
        assert result.output.strip().startswith(f"error: {named}: nothing is tuned; add {fix}"), result.output
        assert not (tmp_path / "x").exists()
    with pytest.raises(OptionError, match="--tune-score val and --tune-set split: nothing is tuned"):
        expand(GridSpec([str(cache)], ["clip-adapter"], [2], [1], tune_score="val", tune_set="split"))
    tuned = GridSpec([str(cache)], ["clip-adapter"], [2], [1], tune={"lr": ["0.01", "0.1"]}, tune_score="val",
                     tune_set="split")
    assert {run.tune.score for run in expand(tuned)} == {"val"}
