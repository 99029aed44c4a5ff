"""Fair tuning: every tuned value is a run, the best on the few-shot val set is kept, the test set never chooses."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import read_rows, top1
from typer.testing import CliRunner

from lathadapter.adapter.catalog import create_method, make_options
from lathadapter.adapter.options import OptionError
from lathadapter.cache.store import CacheError, CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments import training
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.launch import launch, train_round
from lathadapter.experiments.protocols import run_protocol
from lathadapter.experiments.report import write_report
from lathadapter.experiments.report_tables import summary_markdown
from lathadapter.experiments.spec import GridSpec, expand, load_spec_file
from lathadapter.experiments.tuning import select_tuned

TINY = {"epochs": ["1"], "min_steps": ["2"]}
LRS = ["0.01", "0.0001", "0.1"]  # not sorted: ties keep the first given


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tuning_caches")
    return write_synthetic_cache(folder / "tiny.h5", num_classes=6, dim=16, views=2, shots=(1, 2), seeds=(1, 2),
                                 train_per_class=4, val_per_class=4, test_per_class=6, name="tiny")


def run_files(out: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(config.json, metrics.json) of every finished run of a grid folder."""
    return [(json.loads((d / "config.json").read_text()), json.loads((d / "metrics.json").read_text()))
            for d in sorted((out / "runs").iterdir()) if (d / "metrics.json").is_file()]


def val_best(candidates: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """The key the rule keeps, computed here from the runs' metrics: best val accuracy, ties the first value given."""
    best = max(candidates, key=lambda cm: (cm[1]["tune_val_accuracy"], -cm[1]["tune"]["index"]))
    return best[0]["key"]


def groups_of(out: Path) -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    groups = defaultdict(list)
    for config, metrics in run_files(out):
        if "tune" in metrics:
            groups[metrics["tune"]["group"]].append((config, metrics))
    return groups


@pytest.fixture(scope="module")
def tuned_grid(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tuned_grid")
    spec = GridSpec([str(cache)], ["zeroshot", "clip-adapter", "lathadapter"], [1, 2], [1, 2], options=TINY,
                    tune={"lr": LRS})
    summary = launch(spec, out, progress=False)
    assert summary["runs"] == 4 + 2 * 4 * 3  # zeroshot once per cell; each trained method three times
    return out


def test_the_kept_candidate_is_the_best_on_val_of_its_group(cache: Path, tuned_grid: Path) -> None:
    groups = groups_of(tuned_grid)
    assert len(groups) == 2 * 2 * 2  # (clip-adapter, lathadapter) × shots × seeds
    rows = read_rows(tuned_grid)
    selected = {r["key"] for r in rows if r.get("tune.selected") == "True"}
    for candidates in groups.values():
        assert len(candidates) == 3
        assert len({(c["method"], c["shots"], c["seed"]) for c, _ in candidates}) == 1  # one cell per group
        assert sorted(c["options"]["lr"] for c, _ in candidates) == sorted(float(v) for v in LRS)
        assert [m["tune"]["index"] for _, m in sorted(candidates, key=lambda cm: cm[0]["options"]["lr"])] == [1, 0, 2]
        keys = {c["key"] for c, _ in candidates}
        assert keys & selected == {val_best(candidates)}
    assert len(selected) == len(groups)
    for row in rows:
        if row["method"] == "zeroshot":  # untuned: no tuning columns' values, always reported
            assert row["tune.selected"] == row["tune.group"] == ""
        else:
            assert row["tune.values"] == f"lr={row['opt.lr']}" and row["tune.candidates"] == "3"
    # the recorded val accuracy is the final model's accuracy on the subset's val images, recomputed here
    config, metrics = next(cm for cm in run_files(tuned_grid) if cm[0]["method"] == "clip-adapter")
    data = CacheReader(cache).load(config["shots"], config["seed"])
    method = create_method("clip-adapter", data, **config["overrides"])
    method.load_state_dict(torch.load(tuned_grid / "runs" / config["key"] / "weights.pt"))
    assert metrics["tune_val_accuracy"] == pytest.approx(top1(method, data.val_features, data.val_labels))
    assert metrics["accuracy"]["all"] == pytest.approx(top1(method, data.test_features, data.test_labels))


def test_the_test_set_never_decides(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # make the val accuracy the opposite of the test accuracy: the kept run must be the worst on test
    def inverted(config: Any, method: Any, data: Any) -> float:
        return 100.0 - top1(method, data.test_features, data.test_labels)

    monkeypatch.setattr(training, "tune_val_accuracy", inverted)
    spec = GridSpec([str(cache)], ["clip-adapter", "lathadapter"], [1, 2], [1], options=TINY,
                    tune={"lr": ["0.0001", "0.1", "3"]})
    launch(spec, tmp_path, progress=False)
    rows = {r["key"]: r for r in read_rows(tmp_path)}
    differs = 0
    for candidates in groups_of(tmp_path).values():
        kept = [c["key"] for c, _ in candidates if rows[c["key"]]["tune.selected"] == "True"]
        assert kept == [val_best(candidates)]
        tests = {c["key"]: m["accuracy"]["all"] for c, m in candidates}
        assert tests[kept[0]] == min(tests.values())
        differs += max(tests.values()) > tests[kept[0]]  # the test-best candidate was not kept
    assert differs >= 1


def test_selection_reads_only_val_accuracy_ties_keep_the_first_value_and_waits_for_the_whole_group() -> None:
    def row(key: str, index: int, val: float, test: float, group: str = "g") -> dict[str, Any]:
        return {"key": key, "acc_all": test, "tune.group": group, "tune.index": index, "tune.candidates": 3,
                "tune.val_accuracy": val}

    rows = select_tuned([row("a", 0, 50.0, 10.0), row("b", 1, 60.0, 20.0), row("c", 2, 60.0, 99.0),
                         row("x", 0, 70.0, 90.0, "h"), row("y", 1, 80.0, 10.0, "h"),  # h: one candidate unfinished
                         {"key": "z", "acc_all": 1.0}])
    assert {r["key"]: r.get("tune.selected") for r in rows} == {"a": False, "b": True, "c": False, "x": False,
                                                                "y": False, "z": None}


def test_the_report_shows_only_the_kept_runs_and_names_the_chosen_values(tuned_grid: Path) -> None:
    rows = read_rows(tuned_grid)
    written = write_report(tuned_grid, tuned_grid / "report")
    folder = tuned_grid / "report"
    with (folder / "few_shot_tiny.csv").open(newline="") as f:
        table = {line["method"]: line for line in csv.DictReader(f)}
    assert len(table) == 3  # one row per method, not one per learning rate
    assert not list(folder.glob("*ablation*lr*"))  # the tuned option is not a configuration axis
    for method in ("clip-adapter", "lathadapter"):
        kept = [r for r in rows if r["method"] == method and r["tune.selected"] == "True"]
        chosen = sorted({r["opt.lr"] for r in kept}, key=float)
        label = f"{method} lr={'/'.join(chosen)} (tuned)"
        assert label in table, list(table)
        for shots in (1, 2):
            values = [float(r["acc_all"]) for r in kept if r["shots"] == str(shots)]
            column = "1 shot" if shots == 1 else f"{shots} shots"
            assert float(table[label][f"{column} mean"]) == pytest.approx(statistics.fmean(values))
            assert table[label][f"{column} n"] == "2"
        assert f"| {label} |" in written["markdown"]
    assert "zeroshot" in table
    with (folder / "few_shot_tiny_tuned.csv").open(newline="") as f:
        chosen_table = {line["method"]: line for line in csv.DictReader(f)}
    assert set(chosen_table) == {"clip-adapter", "lathadapter"}  # untuned methods have no choices

    def shown(lr: str) -> str:
        """A kept lr as the table shows it: marked ▲ / ▼ when it is the largest / smallest of the 3-value grid."""
        edge = " ▲" if float(lr) == max(map(float, LRS)) else " ▼" if float(lr) == min(map(float, LRS)) else ""
        return f"lr={lr}{edge}"

    for method, line in chosen_table.items():
        for shots in (1, 2):
            kept = [r["opt.lr"] for r in rows if r["method"] == method and r["tune.selected"] == "True"
                    and r["shots"] == str(shots)]
            text = line["1 shot chosen" if shots == 1 else f"{shots} shots chosen"]
            assert (text == shown(kept[0])) if len(set(kept)) == 1 else all(f"{shown(v)} ×1" in text for v in kept)
    assert summary_markdown(tuned_grid) == written["markdown"]


def test_a_table_with_cells_that_chose_differently_names_every_choice(tmp_path: Path) -> None:
    columns = ["key", "cache", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select",
               "target", "acc_all", "acc_base", "acc_novel", "tune.group", "tune.names", "tune.index",
               "tune.selected", "opt.lr", "opt.epochs"]
    common = {"cache": "c.h5", "dataset": "pets", "fingerprint": "ab" * 8, "method": "lathadapter", "shots": 1,
              "classes": "all", "text": "coop", "select": "last", "target": "", "tune.names": "lr", "opt.epochs": 1}
    rows = []
    for seed, kept_lr in ((1, "0.001"), (2, "0.01")):
        for index, lr in enumerate(("0.001", "0.01")):
            selected = lr == kept_lr
            rows.append({**common, "key": f"s{seed}i{index}", "seed": seed, "opt.lr": lr, "tune.index": index,
                         "tune.group": f"g{seed}", "tune.selected": selected,
                         "acc_all": 40.0 + 10 * seed if selected else 99.0})  # a test-best never kept
    with (tmp_path / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    markdown = summary_markdown(tmp_path)
    assert "| lathadapter lr=0.001/0.01 (tuned) | 55.00 ± 7.07 |" in markdown
    assert "| lathadapter | lr=0.001 ×1, lr=0.01 ×1 |" in markdown
    assert "99" not in markdown


def test_base_to_novel_chooses_on_the_base_classes_val_set_only(cache: Path, tmp_path: Path) -> None:
    summary = run_protocol("base-to-novel", [str(cache)], tmp_path, ["zeroshot", "clip-adapter"], [1],
                           options=TINY, shots=[2], tune={"lr": LRS}, progress=False, tune_score="val")
    assert summary["runs"] == 1 + 3
    base, _ = CacheReader(cache).load(2, 1).base_novel()
    assert set(base.val_labels.tolist()) == {0, 1, 2} and len(base.val_labels) == 3 * 2  # min(K, 4) per base class
    (candidates,) = groups_of(tmp_path).values()
    for config, metrics in candidates:
        method = create_method("clip-adapter", base, **config["overrides"])
        method.load_state_dict(torch.load(tmp_path / "runs" / config["key"] / "weights.pt"))
        assert metrics["tune_val_accuracy"] == pytest.approx(top1(method, base.val_features, base.val_labels))
    rows = read_rows(tmp_path)
    (kept,) = [r for r in rows if r["tune.selected"] == "True"]
    assert kept["key"] == val_best(candidates)
    markdown = summary_markdown(tmp_path)
    assert f"| clip-adapter lr={kept['opt.lr']} (tuned) | {float(kept['acc_base']):.2f} |" in markdown
    assert "tuned values, chosen on the training classes' few-shot val set by val" in markdown


def test_an_unscoped_tune_name_that_methods_mean_differently_is_refused(cache: Path, tmp_path: Path) -> None:
    caches = [str(cache)]
    with pytest.raises(OptionError, match=r"--tune beta: tip-adapter, lathadapter each have an option 'beta' of "
                                          r"their own.*tip-adapter\.beta=\.\.\. or lathadapter\.beta=\.\.\."):
        expand(GridSpec(caches, ["tip-adapter", "lathadapter"], [1], [1], tune={"beta": ["0.5", "1"]}))
    runs = expand(GridSpec(caches, ["tip-adapter", "lathadapter"], [1], [1], tune={"lathadapter.beta": ["0.5", "1"]}))
    assert [(r.config.method, r.tune is not None) for r in runs] == [("tip-adapter", False), ("lathadapter", True),
                                                                     ("lathadapter", True)]
    refusals = {
        "not in the grid's methods": GridSpec(caches, ["zeroshot"], tune={"clip-adapter.lr": ["1"]}),
        "--tune curvature: no method of the grid has option": GridSpec(caches, ["clip-adapter"],
                                                                       tune={"curvature": ["1"]}),
        r"option lr of lathadapter is both a --set axis \(--set lr\) and tuned \(--tune lr\)": GridSpec(
            caches, ["lathadapter"], options={"lr": ["0.1"]}, tune={"lr": ["0.1", "1"]}),
        r"option lr of lathadapter is both a --set axis \(--set lathadapter\.lr\) and tuned \(--tune-preset lr\)":
            GridSpec(caches, ["lathadapter"], options={"lathadapter.lr": ["0.1"]}, tune_preset="lr"),
        r"are the same candidate": GridSpec(caches, ["lathadapter"], tune={"lr": ["0.01", "1e-2"]}),
        r"--tune lr and --tune lathadapter\.lr both tune lr": GridSpec(caches, ["lathadapter"],
                                                                       tune={"lr": ["1", "3"],
                                                                             "lathadapter.lr": ["2", "4"]}),
        r"--tune-preset lr tunes lr of lathadapter already": GridSpec(caches, ["lathadapter"],
                                                                       tune={"lr": ["1", "3"]}, tune_preset="lr"),
        r"--tune lr: one value \(1\) leaves nothing to choose": GridSpec(caches, ["lathadapter"], tune={"lr": ["1"]}),
        "unknown preset": GridSpec(caches, ["lathadapter"], tune_preset="everything"),
    }
    for message, spec in refusals.items():
        with pytest.raises(OptionError, match=message):
            expand(spec)
    # from a grid file, both are named by the file and its keys (usage.md: errors name the file and the key)
    config = tmp_path / "both.yaml"
    config.write_text(f"caches: [{cache}]\nmethods: [lathadapter]\noptions:\n  lr: [0.1]\ntune_preset: lr\n")
    with pytest.raises(OptionError, match=rf"a --set axis \(grid file {config}: options lr\) and tuned \(grid file "
                                          rf"{config}: tune_preset lr\); give it one role"):
        expand(GridSpec(**load_spec_file(config)))
    # a preset given on the command line over the file's is named as its flag
    config.write_text(f"caches: [{cache}]\nmethods: [lathadapter]\ntune:\n  lr: [0.1, 1]\ntune_preset: lr\n")
    result = CliRunner().invoke(app, ["grid", "--config", str(config), "--tune-preset", "lr", "--out",
                                      str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: --tune-preset lr tunes lr of lathadapter already; drop grid file {config}: tune lr or the preset")
    result = CliRunner().invoke(app, ["grid", "--cache", str(cache), "--method", "tip-adapter,lathadapter",
                                      "--tune", "beta=0.5,1", "--out", "unused", "--device", "cpu"])
    assert result.exit_code == 2 and "tip-adapter, lathadapter each have an option 'beta'" in result.output


def test_the_lr_preset_gives_each_trained_method_three_lrs_around_its_own_default(cache: Path,
                                                                                   tmp_path: Path) -> None:
    methods = ["zeroshot", "tip-adapter", "clip-adapter", "taskres", "lathadapter"]
    launch(GridSpec([str(cache)], methods, [1], [1], options=TINY), tmp_path / "plain", progress=False)
    plain = {r["method"]: r for r in read_rows(tmp_path / "plain")}
    summary = launch(GridSpec([str(cache)], methods, [1], [1], options=TINY, tune_preset="lr"), tmp_path / "tuned",
                       progress=False)
    assert summary["runs"] == 2 + 3 * 3
    rows = read_rows(tmp_path / "tuned")
    for method in methods:
        own = sorted((r for r in rows if r["method"] == method), key=lambda r: int(r["tune.index"] or 0))
        if method in ("zeroshot", "tip-adapter"):  # no lr: run once, exactly the untuned run
            assert [r["key"] for r in own] == [plain[method]["key"]] and own[0]["tune.group"] == ""
            continue
        # its own default: the lr its untuned run trained with (a recipe's, recorded in `chosen`, or the option)
        default = float(plain[method].get("chosen.recipe.lr") or plain[method]["opt.lr"])
        assert [float(r["opt.lr"]) for r in own] == pytest.approx([default, default / 10, default * 10])
        # the untuned run's config.json holds the lr it trained with: the option's, or the one its recipe filled
        config = json.loads((tmp_path / "plain" / "runs" / plain[method]["key"] / "config.json").read_text())
        assert (config["options"]["lr"] or config["resolved"]["lr"]) == default
        for r in own:  # a candidate's lr is set (the resolved value scaled): the recipe filled the rest
            config = json.loads((tmp_path / "tuned" / "runs" / r["key"] / "config.json").read_text())
            assert config["options"]["lr"] == float(r["opt.lr"]) and "lr" not in config["resolved"]
        assert len({r["tune.group"] for r in own}) == 1
        assert sum(r["tune.selected"] == "True" for r in own) == 1
    defaults = {m: make_options(m).lr for m in ("clip-adapter", "lathadapter")}
    assert defaults["lathadapter"] == 1e-2  # a number (LatHAdapter's default lr): scaled at expansion
    lath = [r.config.options.lr for r in expand(GridSpec([str(cache)], ["lathadapter"], [1], [1], tune_preset="lr"))]
    assert lath == [1e-2, 1e-3, 1e-1]


def test_a_rerun_skips_every_finished_candidate(cache: Path, tmp_path: Path) -> None:
    spec = GridSpec([str(cache)], ["zeroshot", "lathadapter"], [1], [1, 2], options=TINY, tune={"lr": LRS})
    runs = expand(spec)
    assert len(runs) == 2 + 2 * 3
    interrupted = train_round(runs, tmp_path, Execution(), progress=False)
    for _ in range(4):  # zeroshot's two seeds, then two of the three candidates of (lathadapter, seed 1)
        next(interrupted)
    interrupted.close()
    rows = read_rows(tmp_path)
    assert sorted(r["tune.selected"] for r in rows) == ["", "", "False", "False"]  # an unfinished group keeps none
    assert "lathadapter" not in summary_markdown(tmp_path)
    summary = launch(spec, tmp_path, progress=False)
    assert (summary["runs"], summary["skipped"], summary["done"]) == (8, 4, 4)
    again = launch(spec, tmp_path, progress=False)
    assert (again["skipped"], again["done"]) == (8, 0)
    rows = read_rows(tmp_path)
    assert len(rows) == 8 and sum(r["tune.selected"] == "True" for r in rows) == 2


def test_tuning_refuses_a_cache_without_val_images_before_any_run(tmp_path: Path) -> None:
    no_val = write_synthetic_cache(tmp_path / "no_val.h5", num_classes=4, dim=16, views=2, shots=(1,), seeds=(1,),
                                   train_per_class=2, val_per_class=0, test_per_class=2, name="no_val")
    for call in (lambda: launch(GridSpec([str(no_val)], ["lathadapter"], [1], [1], options=TINY,
                                           tune={"lr": LRS}), tmp_path / "g", progress=False),
                 lambda: run_protocol("few-shot", [str(no_val)], tmp_path / "g", ["zeroshot", "lathadapter"], [1],
                                      options=TINY, shots=[1], tune_preset="lr", progress=False)):
        with pytest.raises(CacheError, match=rf"{no_val} holds no few-shot val images for shots=1 seed=1"):
            call()
        assert not (tmp_path / "g").exists()  # nothing ran
    # without tuning the same grid runs (zeroshot has nothing to tune, so the preset leaves it alone)
    summary = run_protocol("few-shot", [str(no_val)], tmp_path / "g", ["zeroshot"], [1], shots=[1], tune_preset="lr",
                           progress=False)
    assert summary["done"] == 1


def test_command_line_and_grid_files_take_tuning(cache: Path, tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text("methods: [lathadapter]\ntune:\n  lr: [0.01, 0.0001]\ntune_preset: lr\n")
    (tmp_path / "grid.toml").write_text('methods = ["lathadapter"]\ntune_preset = "lr"\n[tune]\nlr = "0.01,0.0001"\n')
    for name in ("grid.yaml", "grid.toml"):
        spec = load_spec_file(tmp_path / name)
        assert [str(v) for v in spec["tune"]["lr"]] == ["0.01", "0.0001"] and spec["tune_preset"] == "lr"
    (tmp_path / "bad.yaml").write_text("tune: [lr]\n")
    with pytest.raises(OptionError, match=r"bad\.yaml: tune must be a mapping"):
        load_spec_file(tmp_path / "bad.yaml")
    (tmp_path / "tuned.yaml").write_text("tune:\n  lr: [0.01, 0.0001]\n")
    runner = CliRunner()
    args = ["grid", "--cache", str(cache), "--method", "zeroshot,lathadapter", "--shots", "1", "--seeds", "1",
            "--set", "epochs=1", "--set", "min_steps=2", "--config", str(tmp_path / "tuned.yaml"),
            "--tune", "lathadapter.curvature=0.5,1", "--out", str(tmp_path / "g"), "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "5 runs (5 done now, 0 already done)" in result.output  # zeroshot + 2 lrs × 2 curvatures
    assert "(tuned)" in result.output and "tuned values, chosen" in result.output
    rows = read_rows(tmp_path / "g")
    assert {r["tune.names"] for r in rows if r["method"] == "lathadapter"} == {"lr curvature"}
    assert "5 runs (0 done now, 5 already done)" in runner.invoke(app, args).output
    result = runner.invoke(app, ["protocol", "few-shot", "--cache", str(cache), "--method", "lathadapter",
                                 "--seeds", "1", "--shots", "1", "--set", "epochs=1", "--set", "min_steps=2",
                                 "--tune-preset", "lr", "--out", str(tmp_path / "p"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "3 runs (3 done now, 0 already done)" in result.output and "(tuned)" in result.output
    bad = runner.invoke(app, ["grid", "--cache", str(cache), "--tune", "lr", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--tune expects name=value" in bad.output
