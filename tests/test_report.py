"""Reports: one row per configuration (never pooled), numeric CSVs, the inputs a report accepts and its errors.

Most tables here come from results tables written by hand, so every expected number is computed in the test from
the rows (statistics.fmean / stdev over seeds) and none from the code under test.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
import warnings
from pathlib import Path
from typing import Any

import helpers
import pytest
import torch
from matplotlib.axes import Axes

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments import plots
from lathadapter.experiments.report import write_report
from lathadapter.experiments.report_tables import summary_markdown
from lathadapter.experiments.run import fit
from lathadapter.experiments.table import ResultsError

COLUMNS = ["key", "cache", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select", "target",
           "acc_all", "acc_base", "acc_novel", "hm", "opt.epochs", "opt.curvature", "opt.lathadapter.beta"]
FP = "1a2b3c4d5e6f7a8b"


def row(method: str = "lathadapter", seed: int = 1, shots: int = 1, **values: Any) -> dict[str, Any]:
    """A results row: a lathadapter run on caltech101 unless told otherwise; zero-shot has no options."""
    options = {"opt.epochs": 20, "opt.curvature": 1.0, "opt.lathadapter.beta": 0.5} if method == "lathadapter" else {}
    return {"cache": "caltech101.h5", "dataset": "caltech101", "fingerprint": FP, "method": method, "shots": shots,
            "seed": seed, "classes": "all", "text": "coop", "select": "last", "target": "", **options, **values}


def write_rows(path: Path, rows: list[dict[str, Any]], columns: list[str] = COLUMNS) -> Path:
    return helpers.write_rows(path, rows, columns)


def read_table(path: Path, lead: str | list[str] = "method") -> dict[Any, dict[str, str]]:
    with path.open(newline="") as f:
        lines = list(csv.DictReader(f))
    return {(line[lead] if isinstance(lead, str) else tuple(line[c] for c in lead)): line for line in lines}


def capture_plots(monkeypatch: pytest.MonkeyPatch) -> dict[str, Axes]:
    """The axes of each plot a report saves, by file name; `plots._save` still writes the file."""
    figures: dict[str, Axes] = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figures.setdefault(path.name, fig.axes[0]),
                                                           save(fig, path))[1])
    return figures


def drawn_lines(ax: Axes) -> dict[str, list[tuple[float, float, float]]]:
    """Each line of a plot with error bars: its label → (x, y, half the error bar) per point."""
    lines = {}
    for container in ax.containers:
        line, _, (bars,) = container.lines
        halves = [(high - low) / 2 for (_, low), (_, high) in bars.get_segments()]
        lines[container.get_label()] = list(zip(*line.get_data(), halves, strict=True))
    return lines


def seeds_text(values: list[float], most: int = 0) -> str:
    """A markdown cell over `values` (seeds), marked `(n=k)` when its table's fullest cell has `most` > k seeds."""
    mean = statistics.fmean(values)
    text = f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"
    return text + (f" (n={len(values)})" if len(values) < most else "")


def test_a_curvature_grid_is_reported_per_configuration(tmp_path: Path) -> None:
    # the brief's example: three curvatures, one seed each (pooled they would read 30.33 ± 1.15)
    accuracy = {(0.5, 1): 29.0, (1.0, 1): 31.0, (2.0, 1): 31.0, (1.0, 2): 32.5}
    rows = [row(seed=seed, acc_all=a, **{"opt.curvature": c}) for (c, seed), a in accuracy.items()]
    rows += [row("zeroshot", seed=s, acc_all=20.0 + s) for s in (1, 2)]
    rows += [row("zeroshot", seed=1, shots=2, acc_all=24.0)]
    written = write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    markdown = written["markdown"]
    assert "30.33" not in markdown
    for curvature in (0.5, 1.0, 2.0):
        values = [a for (c, _), a in accuracy.items() if c == curvature]
        assert f"| lathadapter curvature={curvature} | {seeds_text(values, 2)} | — |" in markdown
    assert f"| zeroshot | {seeds_text([21.0, 22.0], 2)} | 24.00 (n=1) |" in markdown
    assert "| method | 1 shot | 2 shots |" in markdown  # not "2 shot"
    table = read_table(tmp_path / "report" / "few_shot_caltech101.csv")
    assert list(table) == ["zeroshot", "lathadapter curvature=0.5", "lathadapter curvature=1.0",
                           "lathadapter curvature=2.0"]
    one_seed = table["lathadapter curvature=0.5"]
    assert (float(one_seed["1 shot mean"]), one_seed["1 shot std"], one_seed["1 shot n"]) == (29.0, "", "1")
    two_seeds = table["lathadapter curvature=1.0"]
    assert float(two_seeds["1 shot mean"]) == pytest.approx(statistics.fmean([31.0, 32.5]))
    assert float(two_seeds["1 shot std"]) == pytest.approx(statistics.stdev([31.0, 32.5]))
    assert two_seeds["1 shot n"] == "2"
    assert two_seeds["2 shots mean"] == two_seeds["2 shots std"] == two_seeds["2 shots n"] == ""  # no run
    ablation = read_table(tmp_path / "report" / "few_shot_caltech101_ablation_lathadapter_curvature.csv",
                          "curvature")
    assert list(ablation) == ["0.5", "1.0", "2.0"]
    assert float(ablation["2.0"]["1 shot mean"]) == 31.0


def test_each_varied_setting_labels_rows_and_gets_an_ablation_table(tmp_path: Path) -> None:
    rows, expected = [], {}
    for curvature in (0.5, 1.0):
        for beta in (0.3, 1.0):  # a scoped column (opt.lathadapter.beta) shows its bare name
            values = [40 + 10 * curvature + 5 * beta + seed for seed in (1, 2, 3)]
            expected[(curvature, beta)] = values
            rows += [row(seed=s, acc_all=v, **{"opt.curvature": curvature, "opt.lathadapter.beta": beta})
                     for s, v in zip((1, 2, 3), values, strict=True)]
    rows += [row("zeroshot", acc_all=30.0, text="coop"), row("zeroshot", acc_all=33.0, text="ensemble")]
    markdown = write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")["markdown"]
    for (curvature, beta), values in expected.items():
        assert f"| lathadapter curvature={curvature} beta={beta} | {seeds_text(values)} |" in markdown
    assert "| zeroshot text=coop | 30.00 (n=1) |" in markdown and "| zeroshot text=ensemble | 33.00 (n=1) |" in markdown
    folder = tmp_path / "report"
    ablation = read_table(folder / "few_shot_caltech101_ablation_lathadapter_beta.csv", ["beta", "curvature"])
    # consecutive rows with the same curvature form one ablation of beta
    assert list(ablation) == [("0.3", "0.5"), ("1.0", "0.5"), ("0.3", "1.0"), ("1.0", "1.0")]
    for (beta, curvature), line in ablation.items():
        values = expected[(float(curvature), float(beta))]
        assert float(line["1 shot mean"]) == pytest.approx(statistics.fmean(values))
        assert float(line["1 shot std"]) == pytest.approx(statistics.stdev(values))
    assert (folder / "few_shot_caltech101_ablation_lathadapter_curvature.csv").is_file()
    text = read_table(folder / "few_shot_caltech101_ablation_zeroshot_text.csv", "text")
    assert float(text["ensemble"]["1 shot mean"]) == 33.0


def test_settings_that_vary_together_share_one_ablation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Curvature and beta vary together (0.5 with 0.3, 1.0 with 1.0; as a tuned and an untuned grid's tune.score,
    tune.set and lr do), epochs across them: one ablation table and plot of curvature naming beta, whose columns hold
    both, none of beta; epochs keeps its own."""
    rows, expected = [], {}
    for curvature, beta in ((0.5, 0.3), (1.0, 1.0)):
        for epochs in (10, 20):
            values = [40 + 10 * curvature + epochs / 10 + seed for seed in (1, 2)]
            expected[(curvature, beta, epochs)] = values
            rows += [row(seed=s, acc_all=v, **{"opt.curvature": curvature, "opt.lathadapter.beta": beta,
                                                "opt.epochs": epochs}) for s, v in zip((1, 2), values, strict=True)]
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    folder = tmp_path / "report"
    ablations = sorted(p.name for p in folder.glob("few_shot_caltech101_ablation_*.csv"))
    assert ablations == ["few_shot_caltech101_ablation_lathadapter_curvature.csv",
                         "few_shot_caltech101_ablation_lathadapter_epochs.csv"]
    table = read_table(folder / ablations[0], ["curvature", "beta", "epochs"])
    # sorted by the setting beside the group (epochs), then the group
    assert list(table) == [("0.5", "0.3", "10"), ("1.0", "1.0", "10"), ("0.5", "0.3", "20"), ("1.0", "1.0", "20")]
    for (curvature, beta, epochs), line in table.items():
        values = expected[(float(curvature), float(beta), int(epochs))]
        assert float(line["1 shot mean"]) == pytest.approx(statistics.fmean(values))
    markdown = (folder / "report.md").read_text()
    assert "lathadapter, ablation of curvature (with beta, varying with it)" in markdown
    assert "ablation of beta" not in markdown
    assert sorted(name for name in figures if name.startswith("ablation_")) == [
        "ablation_caltech101_lathadapter_curvature.png", "ablation_caltech101_lathadapter_epochs.png"]
    assert "(with beta, varying with it)" in figures["ablation_caltech101_lathadapter_curvature.png"].get_title()


def test_settings_varying_together_are_led_by_one_no_configuration_tuned(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tuned grids in one folder: one tunes alpha at lr 0.01, the other epochs at lr 0.1 and alpha 0.5. alpha,
    epochs and lr vary together; a tuned value is no point of the axis, so led by alpha (first by name) the plot
    had one point and was left out. Led by lr, the one none tuned: a plot of two points, each its seeds' mean."""
    columns = [*TUNED_COLUMNS, "opt.clip-adapter.alpha", "opt.clip-adapter.epochs"]
    accuracy = {"alpha": (60.0, 62.0), "epochs": (50.0, 54.0)}
    fixed = {"alpha": {"opt.clip-adapter.epochs": 20, "opt.lr": 0.01, "opt.clip-adapter.alpha": 0.2},
             "epochs": {"opt.clip-adapter.epochs": 40, "opt.lr": 0.1, "opt.clip-adapter.alpha": 0.5}}
    rows = [{"key": f"{tuned}{seed}", "cache": "c.h5", "dataset": "caltech101", "fingerprint": FP,
             "method": "clip-adapter", "shots": 16, "seed": seed, "classes": "all", "text": "coop", "select": "last",
             "target": "", "acc_all": value, **fixed[tuned], "tune.group": f"{tuned}{seed}", "tune.names": tuned,
             "tune.values": f"{tuned}={fixed[tuned]['opt.clip-adapter.' + tuned]}", "tune.score": "val",
             "tune.set": "subset", "tune.selected": True}
            for tuned, values in accuracy.items() for seed, value in zip((1, 2), values, strict=True)]
    figures = capture_plots(monkeypatch)
    write_report(helpers.write_rows(tmp_path / "results.csv", rows, columns), tmp_path / "report")
    folder = tmp_path / "report"
    assert [p.name for p in folder.glob("few_shot_caltech101_ablation_*.csv")] == [
        "few_shot_caltech101_ablation_clip-adapter_lr.csv"]
    table = read_table(folder / "few_shot_caltech101_ablation_clip-adapter_lr.csv", ["lr", "alpha", "epochs"])
    assert set(table) == {("0.01", "tuned", "20"), ("0.1", "0.5", "tuned")}
    axes = figures["ablation_caltech101_clip-adapter_lr.png"]
    assert "ablation of lr (with alpha, epochs, varying with it)" in axes.get_title()
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["0.01", "0.1"]
    (line,) = axes.get_lines()[:1]
    assert list(line.get_xdata()) == [0.01, 0.1]
    assert list(line.get_ydata()) == [statistics.fmean(accuracy["alpha"]), statistics.fmean(accuracy["epochs"])]


def test_a_report_into_a_used_folder_leaves_no_file_of_the_earlier_one(tmp_path: Path) -> None:
    """Two datasets reported, then one into the same folder: the other dataset's tables and plots and the average's
    were left looking current (helper V's finding). The folder now holds what a report into an empty folder would,
    and a file of the user's own stays."""
    one = [row(seed=s, shots=k, acc_all=40.0 + s + k) for s in (1, 2) for k in (1, 2)]
    two = one + [{**r, "dataset": "pets", "fingerprint": "9" * 16} for r in one]
    used, fresh = tmp_path / "used", tmp_path / "fresh"
    write_report(write_rows(tmp_path / "two.csv", two), used)
    assert any("pets" in p.name for p in used.iterdir()) and (used / "few_shot_average.csv").is_file()
    (used / "notes.txt").write_text("mine")
    write_report(write_rows(tmp_path / "one.csv", one), used)
    write_report(write_rows(tmp_path / "one.csv", one), fresh)
    assert sorted(p.name for p in used.iterdir()) == sorted([p.name for p in fresh.iterdir()] + ["notes.txt"])
    assert (used / "notes.txt").read_text() == "mine"


def test_a_folders_list_of_written_files_removes_nothing_outside_the_folder(tmp_path: Path) -> None:
    """`forget_stale` (report's and `inspect --plots`') removes only the plain files of the folder its list names:
    a list edited to name a path elsewhere (`../`, absolute, in a subfolder), a folder, or that is no JSON list
    removes nothing but what it names in the folder; the list then holds this command's files."""
    from lathadapter.experiments.run import forget_stale

    folder, sub = tmp_path / "plots", tmp_path / "plots" / "sub"
    sub.mkdir(parents=True)
    kept = [tmp_path / "outside.png", sub / "inner.png", folder / "drawn.png"]
    for path in [*kept, folder / "stale.png"]:
        path.write_text("x")
    listed = ["../outside.png", str(tmp_path / "outside.png"), "sub/inner.png", "sub", "..", "", 3, "stale.png"]
    (folder / "list.json").write_text(json.dumps(listed))
    forget_stale(folder, [folder / "drawn.png"], "list.json")
    assert all(path.is_file() for path in kept) and sub.is_dir() and not (folder / "stale.png").exists()
    assert json.loads((folder / "list.json").read_text()) == ["drawn.png"]
    (folder / "list.json").write_text(json.dumps({"drawn.png": 1}))
    forget_stale(folder, [], "list.json")
    assert (folder / "drawn.png").is_file() and json.loads((folder / "list.json").read_text()) == []


def test_two_caches_of_one_dataset_name_are_reported_apart(tmp_path: Path) -> None:
    other = "9f8e7d6c5b4a3921"
    rows = [row(seed=1, acc_all=40.0), row(seed=2, acc_all=42.0),
            row(seed=1, acc_all=60.0, fingerprint=other), row(seed=2, acc_all=62.0, fingerprint=other),
            row(seed=1, acc_all=70.0, dataset="pets", fingerprint="77" * 8)]
    markdown = write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")["markdown"]
    assert "Few-shot accuracy (%) on caltech101 (fp 1a2b3c4d)" in markdown
    assert "Few-shot accuracy (%) on caltech101 (fp 9f8e7d6c)" in markdown
    assert "Few-shot accuracy (%) on pets\n" in markdown  # one fingerprint: the bare name
    first = read_table(tmp_path / "report" / "few_shot_caltech101_fp_1a2b3c4d.csv")["lathadapter"]
    second = read_table(tmp_path / "report" / "few_shot_caltech101_fp_9f8e7d6c.csv")["lathadapter"]
    assert float(first["1 shot mean"]) == pytest.approx(41.0)
    assert float(second["1 shot mean"]) == pytest.approx(61.0)
    average = read_table(tmp_path / "report" / "few_shot_average.csv")["lathadapter"]
    assert float(average["1 shot mean"]) == pytest.approx(statistics.fmean([41.0, 61.0, 70.0]))
    assert average["1 shot std"] == ""  # an average over datasets has no spread over seeds


def test_several_datasets_get_the_papers_main_table_per_number_of_shots(tmp_path: Path) -> None:
    """Two datasets × two curvatures × 1 and 4 shots × 2 seeds, `pets` missing at 4 shots for curvature 2: per number
    of shots a table of configurations × (each dataset, the average of the dataset means), each cell the mean and
    std over seeds; the average of a configuration missing a dataset is no number; no ablation table of its own (the
    per-dataset tables ablate the same cells)."""
    accuracy = {(d, c, k): [30 + 10 * (d == "pets") + 5 * c + k + s for s in (1, 2)]
                for d in ("caltech101", "pets") for c in (0.5, 2.0) for k in (1, 4)}
    del accuracy[("pets", 2.0, 4)]
    rows = [row(shots=k, seed=s, acc_all=v, dataset=d, **{"opt.curvature": c})
            for (d, c, k), values in accuracy.items() for s, v in zip((1, 2), values, strict=True)]
    markdown = write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")["markdown"]
    assert "### Few-shot accuracy (%), 4 shots: each dataset and their average" in markdown
    for k in (1, 4):
        table = read_table(tmp_path / "report" / f"few_shot_datasets_{k}shot.csv")
        for c in (0.5, 2.0):
            line = table[f"lathadapter curvature={c}"]
            means = []
            for d in ("caltech101", "pets"):
                values = accuracy.get((d, c, k))
                if values is None:
                    assert line[f"{d} mean"] == "" and line["Average mean"] == ""
                    continue
                means.append(statistics.fmean(values))
                assert float(line[f"{d} mean"]) == pytest.approx(means[-1])
                assert float(line[f"{d} std"]) == pytest.approx(statistics.stdev(values))
            if len(means) == 2:
                assert float(line["Average mean"]) == pytest.approx(statistics.fmean(means))
    assert not list((tmp_path / "report").glob("few_shot_datasets_*ablation*"))
    assert (tmp_path / "report" / "few_shot_pets_ablation_lathadapter_curvature.csv").is_file()


def test_base_to_novel_hm_comes_from_each_configurations_mean_base_and_novel(tmp_path: Path) -> None:
    base = {0.5: [70.0, 74.0], 1.0: [80.0, 81.0]}
    novel = {0.5: [60.0, 66.0], 1.0: [50.0, 58.0]}
    rows = [row(shots=16, seed=s, classes="base", acc_base=b, acc_novel=n, **{"opt.curvature": c})
            for c in base for s, b, n in zip((1, 2), base[c], novel[c], strict=True)]
    rows += [row("tip-adapter", shots=16, classes="base", acc_base=75.0)]  # novel not applicable
    markdown = write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")["markdown"]
    table = read_table(tmp_path / "report" / "base_to_novel.csv")
    for c in base:
        mb, mn = statistics.fmean(base[c]), statistics.fmean(novel[c])
        line = table[f"lathadapter curvature={c}"]
        assert float(line["caltech101 base mean"]) == pytest.approx(mb)
        assert float(line["caltech101 novel std"]) == pytest.approx(statistics.stdev(novel[c]))
        assert float(line["caltech101 HM mean"]) == pytest.approx(2 * mb * mn / (mb + mn))
        assert line["caltech101 HM std"] == ""
        assert (f"| lathadapter curvature={c} | {seeds_text(base[c])} | {seeds_text(novel[c])} | "
                f"{2 * mb * mn / (mb + mn):.2f} |") in markdown
    tip = table["tip-adapter"]
    assert float(tip["caltech101 base mean"]) == 75.0
    assert tip["caltech101 novel mean"] == tip["caltech101 HM mean"] == ""
    assert "| tip-adapter | 75.00 (n=1) | n/a | n/a |" in markdown  # one seed where the others have two
    assert "16 shots on base classes" in markdown


def test_the_base_to_novel_plot_puts_each_score_of_each_configuration_at_its_mean(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One row per configuration: its base, novel and HM dots at the means over seeds (HM of the two means), error
    bars the stds over seeds; a method that scores no novel class has its base dot alone and says n/a in its row."""
    base = {0.5: [70.0, 74.0], 1.0: [80.0, 81.0]}
    novel = {0.5: [60.0, 66.0], 1.0: [50.0, 58.0]}
    rows = [row(shots=16, seed=s, classes="base", acc_base=b, acc_novel=n, **{"opt.curvature": c})
            for c in base for s, b, n in zip((1, 2), base[c], novel[c], strict=True)]
    rows += [row("tip-adapter", shots=16, classes="base", acc_base=75.0)]
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    ax = figures["base_novel_caltech101.png"]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    dots: dict[tuple[str, str], tuple[float, float]] = {}  # (row, marker) -> (x, half the error bar)
    for container in ax.containers:
        line, _, (bars,) = container.lines
        ((x,), (y,)) = line.get_data()
        (low, _), (high, _) = bars.get_segments()[0]
        dots[(labels[round(y)], line.get_marker())] = (x, (high - low) / 2)
    for c in base:
        mb, mn = statistics.fmean(base[c]), statistics.fmean(novel[c])
        name = f"lathadapter curvature={c}"
        assert dots[(name, "o")] == pytest.approx((mb, statistics.stdev(base[c])))
        assert dots[(name, "s")] == pytest.approx((mn, statistics.stdev(novel[c])))
        assert dots[(name, "D")][0] == pytest.approx(2 * mb * mn / (mb + mn))
    assert dots[("tip-adapter", "o")] == (75.0, 0.0)
    assert ("tip-adapter", "s") not in dots and ("tip-adapter", "D") not in dots
    assert "novel n/a, HM n/a" in [t.get_text() for t in ax.texts]


def test_the_base_to_novel_plot_shows_every_error_bar_whole_and_no_empty_legend(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeds far apart (base 30 / 90, novel 90 / 30): the axis spans mean ± std of every score, not the means alone;
    a block whose every run diverged draws no dot and no legend (matplotlib warns of an empty one)."""
    rows = [row(shots=16, seed=s, classes="base", acc_base=b, acc_novel=n)
            for s, b, n in ((1, 30.0, 90.0), (2, 90.0, 30.0))]
    plotted = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    low, high = plotted["base_novel_caltech101.png"].get_xlim()
    std = statistics.stdev([30.0, 90.0])
    assert low <= 60.0 - std and high >= 60.0 + std
    columns = [*COLUMNS, "diverged"]
    diverged = [{"key": f"d{s}", **row(shots=16, seed=s, classes="base", acc_base="", acc_novel=""),
                 "diverged": "lathadapter diverged in training: its loss was nan at epoch 1 of 20"} for s in (1, 2)]
    path = tmp_path / "diverged" / "results.csv"
    path.parent.mkdir()
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(diverged)
    plotted.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_report(path, tmp_path / "diverged" / "report")
    assert plotted["base_novel_caltech101.png"].get_legend() is None


def test_few_shot_tables_hold_only_all_class_runs(tmp_path: Path) -> None:
    """A 1-shot few-shot run beside a 16-shot base-to-novel run of another method: the few-shot table has the 1-shot
    column and the few-shot run's row alone; the base-to-novel run is in its own table."""
    rows = [row("zeroshot", shots=1, acc_all=40.0), row("tip-adapter", shots=16, classes="base", acc_base=75.0)]
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    with (tmp_path / "report" / "few_shot_caltech101.csv").open(newline="") as f:
        lines = list(csv.DictReader(f))
    assert [line["method"] for line in lines] == ["zeroshot"]
    assert list(lines[0]) == ["method", "1 shot mean", "1 shot std", "1 shot n"]
    assert float(lines[0]["1 shot mean"]) == 40.0
    assert float(read_table(tmp_path / "report" / "base_to_novel.csv")["tip-adapter"]["caltech101 base mean"]) == 75.0


def test_transfer_table_is_per_configuration(tmp_path: Path) -> None:
    accuracy = {0.5: {"source": [70.0, 72.0], "pets": [40.0, 44.0], "dtd": [30.0, 31.0]},
                1.0: {"source": [75.0, 71.0], "pets": [50.0, 52.0], "dtd": [20.0, 28.0]}}
    rows = [row(shots=16, seed=s, target=t, acc_all=a, **{"opt.curvature": c})
            for c, targets in accuracy.items() for t, values in targets.items()
            for s, a in zip((1, 2), values, strict=True)]
    rows += [row("linear-probe", shots=16, target="source", acc_all=68.0), row("linear-probe", shots=16, target="pets")]
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    table = read_table(tmp_path / "report" / "transfer.csv")
    for c, targets in accuracy.items():
        line = table[f"lathadapter curvature={c}"]
        for target, values in targets.items():
            assert float(line[f"{target} mean"]) == pytest.approx(statistics.fmean(values))
        mean = statistics.fmean([statistics.fmean(targets["pets"]), statistics.fmean(targets["dtd"])])
        assert float(line["Average (targets) mean"]) == pytest.approx(mean)
    assert table["linear-probe"]["pets mean"] == "" and float(table["linear-probe"]["source mean"]) == 68.0


def test_plots_draw_one_line_per_configuration_with_spread_over_seeds(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    accuracy = {(c, k): [30 + 10 * c + k + s * c for s in (1, 2, 3)] for c in (0.5, 2.0) for k in (1, 2)}
    rows = [row(shots=k, seed=s, acc_all=v, **{"opt.curvature": c})
            for (c, k), values in accuracy.items() for s, v in zip((1, 2, 3), values, strict=True)]
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    ax = figures["accuracy_vs_shots_caltech101.png"]  # beside it, the curvature's ablation plot
    lines = {container.get_label(): container for container in ax.containers}
    assert sorted(lines) == ["lathadapter curvature=0.5", "lathadapter curvature=2.0"]
    for c in (0.5, 2.0):
        _, _, (bars,) = lines[f"lathadapter curvature={c}"].lines
        for k, segment in zip((1, 2), bars.get_segments(), strict=True):
            (_, low), (_, high) = segment
            assert (high + low) / 2 == pytest.approx(statistics.fmean(accuracy[(c, k)]))
            assert (high - low) / 2 == pytest.approx(statistics.stdev(accuracy[(c, k)]))


def test_no_two_lines_of_a_plot_look_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grid of 23 configurations (more than the ten tab10 colours, twice over): every line of the accuracy plot has
    its own (colour, marker, line style), so no two configurations can be mistaken for each other."""
    rows = [row(shots=k, seed=1, acc_all=40 + c + k, **{"opt.curvature": 0.1 * (c + 1)})
            for c in range(23) for k in (1, 2)]
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    ax = figures["accuracy_vs_shots_caltech101.png"]  # beside it, the curvature's ablation plot
    styles = set()
    for container in ax.containers:
        line = container.lines[0]
        styles.add((line.get_color(), line.get_marker(), line.get_linestyle()))
    assert len(ax.containers) == 23
    assert len(styles) == 23


def test_the_average_plot_draws_each_configurations_mean_over_datasets_of_its_seed_means(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two datasets × 2 shots × 3 seeds: a line per configuration, each point the mean over the datasets of the
    configuration's mean over seeds, no error bars (an average has no std over seeds); a configuration with no run
    on one dataset at 2 shots has no point there; one dataset: no average plot."""
    accuracy = {(d, c, k): [20 + 10 * c + d * k + s * s for s in (1, 2, 3)]
                for d in (1, 2) for c in (0.5, 2.0) for k in (1, 2)}
    names = {1: "caltech101", 2: "pets"}
    rows = [row(shots=k, seed=s, acc_all=v, dataset=names[d], **{"opt.curvature": c})
            for (d, c, k), values in accuracy.items() for s, v in zip((1, 2, 3), values, strict=True)]
    tip = {("caltech101", 1): [50.0, 54.0], ("pets", 1): [60.0, 61.0], ("caltech101", 2): [70.0, 72.0]}
    rows += [row("tip-adapter", shots=k, seed=s, acc_all=v, dataset=d)
             for (d, k), values in tip.items() for s, v in zip((1, 2), values, strict=True)]
    figures = capture_plots(monkeypatch)
    written = write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    assert str(tmp_path / "report" / "accuracy_vs_shots_average.png") in written["plots"]
    ax = figures["accuracy_vs_shots_average.png"]
    assert "2 datasets" in ax.get_title()
    lines = {container.get_label(): container for container in ax.containers}
    assert sorted(lines) == ["lathadapter curvature=0.5", "lathadapter curvature=2.0", "tip-adapter"]
    for c in (0.5, 2.0):
        expected = [statistics.fmean(statistics.fmean(accuracy[(d, c, k)]) for d in (1, 2)) for k in (1, 2)]
        line = lines[f"lathadapter curvature={c}"]
        assert list(line.lines[0].get_xdata()) == [1, 2]
        assert list(line.lines[0].get_ydata()) == pytest.approx(expected)
        assert not line.has_yerr and line.lines[2] == ()  # no error bars
    (x,), (y,) = lines["tip-adapter"].lines[0].get_data()  # 2 shots: no run on pets, no point
    assert (x, y) == (1, pytest.approx(statistics.fmean([statistics.fmean(tip[("caltech101", 1)]),
                                                         statistics.fmean(tip[("pets", 1)])])))
    figures.clear()
    write_report(write_rows(tmp_path / "one" / "results.csv", [r for r in rows if r["dataset"] == "caltech101"]),
                 tmp_path / "one" / "report")
    assert "accuracy_vs_shots_caltech101.png" in figures and "accuracy_vs_shots_average.png" not in figures


def transfer_rows(accuracy: dict[float, dict[str, list[float]]], shots: int = 16) -> list[dict[str, Any]]:
    """Transfer rows of LatHAdapter at each curvature of `accuracy` (its values by target, one per seed) and a linear
    probe that scores its source alone."""
    rows = [row(shots=shots, seed=s, target=t, acc_all=a, **{"opt.curvature": c})
            for c, targets in accuracy.items() for t, values in targets.items()
            for s, a in zip((1, 2), values, strict=True)]
    return rows + [row("linear-probe", shots=shots, target="source", acc_all=68.0),
                   row("linear-probe", shots=shots, target="pets"), row("linear-probe", shots=shots, target="dtd")]


def test_the_transfer_plot_puts_each_dataset_of_each_configuration_at_its_mean(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row per configuration: a dot at the mean over seeds on the source and each target, error bar the std, and
    one at the mean of the target means without one; a method that scores no target has its source dot alone and
    says n/a in its row; the axis spans every mean ± std. Several shots: a plot per shots. A block whose every run
    diverged draws no dot and no legend."""
    accuracy = {0.5: {"source": [70.0, 72.0], "pets": [40.0, 44.0], "dtd": [30.0, 31.0]},
                1.0: {"source": [75.0, 71.0], "pets": [50.0, 52.0], "dtd": [20.0, 28.0]}}
    figures = capture_plots(monkeypatch)
    written = write_report(write_rows(tmp_path / "results.csv", transfer_rows(accuracy)), tmp_path / "report")
    assert str(tmp_path / "report" / "transfer_caltech101.png") in written["plots"]
    ax = figures["transfer_caltech101.png"]
    handles, names = ax.get_legend_handles_labels()
    column = {(h.lines[0].get_marker(), h.lines[0].get_color()): name for h, name in zip(handles, names, strict=True)}
    assert sorted(column.values()) == ["Average (targets)", "dtd", "pets", "source"]  # a marker and colour each
    labels = [t.get_text() for t in ax.get_yticklabels()]
    dots: dict[tuple[str, str], tuple[float, float | None]] = {}  # (row, column) -> (x, half the error bar)
    for container in ax.containers:
        line, _, bars = container.lines
        ((x,), (y,)) = line.get_data()
        half = None
        if bars:
            (low, _), (high, _) = bars[0].get_segments()[0]
            half = (high - low) / 2
        dots[(labels[round(y)], column[(line.get_marker(), line.get_color())])] = (x, half)
    for c, targets in accuracy.items():
        name = f"lathadapter curvature={c}"
        for target, values in targets.items():
            assert dots[(name, target)] == pytest.approx((statistics.fmean(values), statistics.stdev(values)))
        mean = statistics.fmean([statistics.fmean(targets["pets"]), statistics.fmean(targets["dtd"])])
        assert dots[(name, "Average (targets)")] == (pytest.approx(mean), None)
    assert {k: v for k, v in dots.items() if k[0] == "linear-probe"} == {("linear-probe", "source"): (68.0, None)}
    assert "targets n/a" in [t.get_text() for t in ax.texts]
    low, high = ax.get_xlim()
    for targets in accuracy.values():
        for values in targets.values():
            assert low <= statistics.fmean(values) - statistics.stdev(values)
            assert high >= statistics.fmean(values) + statistics.stdev(values)
    figures.clear()
    rows = transfer_rows(accuracy, 4) + transfer_rows(accuracy, 16)
    write_report(write_rows(tmp_path / "shots" / "results.csv", rows), tmp_path / "shots" / "report")
    assert {"transfer_caltech101_4shot.png", "transfer_caltech101_16shot.png"} <= set(figures)
    figures.clear()  # every run diverged: no dot, no legend (matplotlib warns of an empty one), each cell noted
    diverged = [{**row(shots=16, seed=1, target=t, acc_all=""), "diverged": "loss was nan"} for t in ("source", "pets")]
    path = write_rows(tmp_path / "diverged" / "results.csv", diverged, [*COLUMNS, "diverged"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_report(path, tmp_path / "diverged" / "report")
    ax = figures["transfer_caltech101.png"]
    assert ax.get_legend() is None and not ax.containers
    assert [t.get_text() for t in ax.texts] == ["source diverged, targets diverged"]


def test_an_ablation_plot_draws_accuracy_against_the_setting_a_line_per_number_of_shots(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--set curvature=0.5,1,2` × 2 shots × 3 seeds: accuracy against the curvature, in numeric order on a linear axis
    (2 / 0.5 < 10), a line per number of shots, each point the mean over seeds and its error bar the sample std;
    zero-shot, with one value of everything, gets no ablation plot."""
    accuracy = {(c, k): [30 + 5 * c + 3 * k + s * s * c for s in (1, 2, 3)] for c in (2.0, 0.5, 1.0) for k in (1, 2)}
    rows = [row(shots=k, seed=s, acc_all=v, **{"opt.curvature": c})
            for (c, k), values in accuracy.items() for s, v in zip((1, 2, 3), values, strict=True)]
    rows += [row("zeroshot", shots=k, acc_all=20.0) for k in (1, 2)]
    figures = capture_plots(monkeypatch)
    written = write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    name = "ablation_caltech101_lathadapter_curvature.png"
    assert set(figures) == {"accuracy_vs_shots_caltech101.png", name}
    assert str(tmp_path / "report" / name) in written["plots"]
    assert f"![{Path(name).stem}]({name})" in (tmp_path / "report" / "report.md").read_text()
    ax = figures[name]
    assert ax.get_xscale() == "linear"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "1.0", "2.0"]  # as the tables label them
    assert list(ax.get_xticks()) == [0.5, 1.0, 2.0]
    lines = drawn_lines(ax)
    assert list(lines) == ["1 shot", "2 shots"]
    for k, label in ((1, "1 shot"), (2, "2 shots")):
        assert [x for x, _, _ in lines[label]] == [0.5, 1.0, 2.0]
        for c, (_, y, half) in zip((0.5, 1.0, 2.0), lines[label], strict=True):
            assert y == pytest.approx(statistics.fmean(accuracy[(c, k)]))
            assert half == pytest.approx(statistics.stdev(accuracy[(c, k)]))


def test_an_ablation_plot_of_words_has_a_category_each_in_the_tables_order(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`hier=triplet,cone` and one run left to the recipe (an empty value): evenly spaced categories in the order of
    the ablation table (`recipe` first, then by name), each point at its mean."""
    accuracy = {"triplet": [50.0, 54.0], "cone": [60.0, 61.0], "": [40.0, 46.0]}
    rows = [row(seed=s, acc_all=v, **{"opt.lathadapter.hier": h})
            for h, values in accuracy.items() for s, v in zip((1, 2), values, strict=True)]
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", rows, COLUMNS + ["opt.lathadapter.hier"]), tmp_path / "report")
    ax = figures["ablation_caltech101_lathadapter_hier.png"]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["recipe", "cone", "triplet"]
    table = read_table(tmp_path / "report" / "few_shot_caltech101_ablation_lathadapter_hier.csv", "hier")
    assert list(table) == ticks
    (points,) = drawn_lines(ax).values()
    for i, (value, (x, y, half)) in enumerate(zip(("", "cone", "triplet"), points, strict=True)):
        assert (x, y, half) == pytest.approx((i, statistics.fmean(accuracy[value]), statistics.stdev(accuracy[value])))


def test_an_ablation_over_ten_times_its_smallest_value_has_a_log_axis(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs 5, 20, 50 (50 ≥ 10 × 5): a log axis, ticked at the values run and at no other."""
    rows = [row(seed=1, acc_all=40.0 + e / 10, **{"opt.epochs": e}) for e in (50, 5, 20)]
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    ax = figures["ablation_caltech101_lathadapter_epochs.png"]
    assert ax.get_xscale() == "log"
    assert list(ax.get_xticks()) == [5, 20, 50] and list(ax.get_xticks(minor=True)) == []
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5", "20", "50"]
    (points,) = drawn_lines(ax).values()
    assert points == [(e, 40.0 + e / 10, 0.0) for e in (5, 20, 50)]


def test_a_second_varied_setting_splits_the_ablation_into_a_line_per_combination(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """curvature × beta × 2 shots: the curvature's plot has a line per (shots, beta), the beta's a line per (shots,
    curvature), each labelled by what it holds fixed, in its own style, at the means over seeds."""
    shots_labels = {1: "1 shot", 4: "4 shots"}
    accuracy = {(c, b, k): [20 + 10 * c + 7 * b + 2 * k + s for s in (1, 3)]
                for c in (0.5, 2.0) for b in (0.3, 1.0) for k in (1, 4)}
    rows = [row(shots=k, seed=s, acc_all=v, **{"opt.curvature": c, "opt.lathadapter.beta": b})
            for (c, b, k), values in accuracy.items() for s, v in zip((1, 2), values, strict=True)]
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    curvature = drawn_lines(figures["ablation_caltech101_lathadapter_curvature.png"])
    assert list(curvature) == ["1 shot, beta=0.3", "4 shots, beta=0.3", "1 shot, beta=1.0", "4 shots, beta=1.0"]
    for b in (0.3, 1.0):
        for k in (1, 4):
            points = curvature[f"{shots_labels[k]}, beta={b}"]
            assert [x for x, _, _ in points] == [0.5, 2.0]
            means = [statistics.fmean(accuracy[(c, b, k)]) for c in (0.5, 2.0)]
            assert [y for _, y, _ in points] == pytest.approx(means)
    beta = drawn_lines(figures["ablation_caltech101_lathadapter_beta.png"])
    assert set(beta) == {f"{shots_labels[k]}, curvature={c}" for k in (1, 4) for c in (0.5, 2.0)}
    assert beta["4 shots, curvature=2.0"][0][1] == pytest.approx(statistics.fmean(accuracy[(2.0, 0.3, 4)]))
    for ax in (figures["ablation_caltech101_lathadapter_curvature.png"],
               figures["ablation_caltech101_lathadapter_beta.png"]):
        styles = {c.get_label(): (c.lines[0].get_color(), c.lines[0].get_marker(), c.lines[0].get_linestyle())
                  for c in ax.containers}
        assert len(set(styles.values())) == len(styles) == 4
        # a colour per combination of the other setting, a marker and dash per number of shots
        for a in styles:
            for b in styles:
                same_shots, same_other = a.split(", ")[0] == b.split(", ")[0], a.split(", ")[1] == b.split(", ")[1]
                assert (styles[a][0] == styles[b][0]) == same_other, (a, b)
                assert (styles[a][1:] == styles[b][1:]) == same_shots, (a, b)


def test_a_base_to_novel_ablation_draws_base_novel_and_hm_of_the_means(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Base-to-novel over three curvatures: base, novel and HM lines, HM = 2·b·n / (b + n) of the mean base and mean
    novel (no error bar); a linear probe ablating its epochs scores no novel class: its plot draws base alone and its
    title says novel and HM are n/a."""
    base = {0.5: [70.0, 74.0], 1.0: [80.0, 81.0], 2.0: [78.0, 70.0]}
    novel = {0.5: [60.0, 66.0], 1.0: [50.0, 58.0], 2.0: [62.0, 63.0]}
    rows = [row(shots=16, seed=s, classes="base", acc_base=b, acc_novel=n, **{"opt.curvature": c})
            for c in base for s, b, n in zip((1, 2), base[c], novel[c], strict=True)]
    rows += [row("linear-probe", shots=16, classes="base", acc_base=60.0 + e, **{"opt.epochs": e}) for e in (1, 2)]
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    assert set(figures) == {"base_novel_caltech101.png", "ablation_base_novel_caltech101_lathadapter_curvature.png",
                            "ablation_base_novel_caltech101_linear-probe_epochs.png"}
    lines = drawn_lines(figures["ablation_base_novel_caltech101_lathadapter_curvature.png"])
    assert list(lines) == ["base", "novel", "HM"]
    for i, c in enumerate((0.5, 1.0, 2.0)):
        mb, mn = statistics.fmean(base[c]), statistics.fmean(novel[c])
        assert lines["base"][i] == pytest.approx((c, mb, statistics.stdev(base[c])))
        assert lines["novel"][i] == pytest.approx((c, mn, statistics.stdev(novel[c])))
        assert lines["HM"][i] == pytest.approx((c, 2 * mb * mn / (mb + mn), 0.0))
    probe = figures["ablation_base_novel_caltech101_linear-probe_epochs.png"]
    assert drawn_lines(probe) == {"base": [(1.0, 61.0, 0.0), (2.0, 62.0, 0.0)]}
    assert "novel n/a, HM n/a" in probe.get_title()


def test_a_transfer_ablation_draws_the_source_each_target_and_their_average(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Transfer over two curvatures (what the transfer table's ablation table holds): a line for the source test set,
    each target and the average over targets (the mean of the target means, no error bar), each point the mean over
    seeds with the std as its error bar; the linear probe, one configuration, gets no ablation plot. Several shots: a
    plot per shots, named as the transfer plots are."""
    accuracy = {0.5: {"source": [70.0, 72.0], "pets": [40.0, 44.0], "dtd": [30.0, 31.0]},
                1.0: {"source": [75.0, 71.0], "pets": [50.0, 52.0], "dtd": [20.0, 28.0]}}
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", transfer_rows(accuracy)), tmp_path / "report")
    name = "ablation_transfer_caltech101_lathadapter_curvature.png"
    assert set(figures) == {"transfer_caltech101.png", name}
    lines = drawn_lines(figures[name])
    assert sorted(lines) == ["Average (targets)", "dtd", "pets", "source"]
    for i, (c, targets) in enumerate(sorted(accuracy.items())):
        for target, values in targets.items():
            assert lines[target][i] == pytest.approx((c, statistics.fmean(values), statistics.stdev(values)))
        mean = statistics.fmean([statistics.fmean(targets["pets"]), statistics.fmean(targets["dtd"])])
        assert lines["Average (targets)"][i] == pytest.approx((c, mean, 0.0))
    assert "transfer from caltech101, 16 shots" in figures[name].get_title()
    figures.clear()
    rows = transfer_rows(accuracy, 4) + transfer_rows(accuracy, 16)
    write_report(write_rows(tmp_path / "shots" / "results.csv", rows), tmp_path / "shots" / "report")
    assert {f"ablation_transfer_caltech101_{k}shot_lathadapter_curvature.png" for k in (4, 16)} <= set(figures)


def test_no_ablation_plot_without_two_values_of_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One value of everything, or an option tuned (its values are candidates, not an ablation: it reads `tuned`):
    no ablation plot, as no ablation table."""
    rows = [row(shots=k, seed=s, acc_all=40.0 + s + k) for k in (1, 2) for s in (1, 2)]
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "plain")
    assert set(figures) == {"accuracy_vs_shots_caltech101.png"}
    figures.clear()
    tuned = [tuned_row("a", 1, "val", 0.01, 80.0, 60.0), tuned_row("b", 2, "val", 0.001, 82.0, 61.0),
             tuned_row("x", 1, "val", 0.001, 70.0, 50.0, selected=False),
             tuned_row("y", 2, "val", 0.01, 71.0, 52.0, selected=False)]
    write_report(write_tuned(tmp_path / "results.csv", tuned), tmp_path / "tuned")
    assert set(figures) == {"base_novel_caltech101.png"}
    assert not list((tmp_path / "tuned").glob("*ablation*"))


def test_a_dataset_whose_every_run_diverged_gets_no_empty_accuracy_plot(tmp_path: Path) -> None:
    """caltech101 scored at 1 and 2 shots, dtd's every run diverged: caltech101's plot is drawn, dtd's is not (it would
    be an empty frame), and the average over datasets has no point either."""
    columns = [*COLUMNS, "diverged"]
    rows = [{"key": f"c{k}{s}", **row(shots=k, seed=s, acc_all=50.0 + k + s)} for k in (1, 2) for s in (1, 2)]
    rows += [{"key": f"d{k}{s}", **row(shots=k, seed=s, acc_all=""), "cache": "dtd.h5", "dataset": "dtd",
              "diverged": "lathadapter diverged in training: its loss was nan at epoch 1 of 20"}
             for k in (1, 2) for s in (1, 2)]
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    written = write_report(path, tmp_path / "report")
    names = {Path(p).name for p in written["plots"]}
    assert "accuracy_vs_shots_caltech101.png" in names
    assert "accuracy_vs_shots_dtd.png" not in names and "accuracy_vs_shots_average.png" not in names


def test_a_folder_of_fit_runs_is_reported_like_a_grid(tmp_path: Path) -> None:
    cache = write_synthetic_cache(tmp_path / "shapes.h5", num_classes=6, dim=16, views=2, shots=(1,), seeds=(1, 2),
                                  train_per_class=4, test_per_class=6, name="shapes")
    runs = tmp_path / "runs"
    for seed in (1, 2):
        fit(cache, "zeroshot", 1, seed, device="cpu", out=runs)
        fit(cache, "lathadapter", 1, seed, device="cpu", out=runs, epochs=1, min_steps=0)
    written = write_report(runs)
    assert Path(written["report"]).parent == runs / "report"
    table = read_table(runs / "report" / "few_shot_shapes.csv")
    for method in ("zeroshot", "lathadapter"):
        values = [json.loads(p.read_text())["accuracy"]["all"] for p in runs.glob(f"shapes-{method}-*/metrics.json")]
        assert len(values) == 2
        assert float(table[method]["1 shot mean"]) == pytest.approx(statistics.fmean(values))
        assert float(table[method]["1 shot std"]) == pytest.approx(statistics.stdev(values))
    assert any(Path(p).name == "poincare_disk.png" for p in written["plots"])  # from a run's points.pt
    assert summary_markdown(runs) == written["markdown"]
    one = next(runs.glob("shapes-lathadapter-*"))
    assert "| lathadapter |" in summary_markdown(one)  # one run directory


def test_a_disk_run_without_points_fails_before_the_report_writes_anything(tmp_path: Path) -> None:
    results = write_rows(tmp_path / "results.csv", [row(seed=1, acc_all=50.0), row(seed=2, acc_all=53.0)])
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match=r"run has no points\.pt; the disk picture needs a lathadapter run"):
        write_report(results, tmp_path / "report", tmp_path / "run")
    assert not (tmp_path / "report").exists()  # before: the accuracy plots were written, then the error
    with pytest.raises(ValueError, match=r"typo does not exist; the disk picture needs a lathadapter run"):
        write_report(results, tmp_path / "report", tmp_path / "typo")  # was: "typo has no points.pt"


def test_summary_markdown_writes_nothing(tmp_path: Path) -> None:
    results = write_rows(tmp_path / "results.csv", [row(seed=1, acc_all=50.0), row(seed=2, acc_all=53.0)])
    markdown = summary_markdown(tmp_path)
    assert sorted(tmp_path.iterdir()) == [results]
    assert f"| lathadapter | {seeds_text([50.0, 53.0])} |" in markdown
    assert markdown == summary_markdown(results)


def test_report_errors_name_the_file_and_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text(",".join(COLUMNS) + "\n")
    (tmp_path / "partial.csv").write_text("key,dataset,method\nk0,caltech101,zeroshot\n")
    (tmp_path / "nothing").mkdir()
    cases = {
        tmp_path / "absent": "does not exist; expected a results.csv, a grid folder or a folder of",
        tmp_path / "empty.csv": "is empty; expected a results.csv",
        tmp_path / "header.csv": "has a header but no rows",
        tmp_path / "partial.csv": "lacks the columns fingerprint, shots, seed, classes, text, select, target, "
                                  "acc_all, acc_base, acc_novel",
        tmp_path / "nothing": "holds neither a results.csv nor run directories",
    }
    for path, message in cases.items():
        for read in (summary_markdown, write_report):
            with pytest.raises(ValueError) as raised:
                read(path)
            assert str(raised.value).startswith(str(path)) and message in str(raised.value)
            assert "\n" not in str(raised.value)


def test_a_report_folder_that_cannot_be_written_is_named_also_when_it_is_the_default(tmp_path: Path) -> None:
    """`report GRID` writes GRID/report/: when that cannot be written (a read-only grid folder, here a file in the
    way), the error names GRID/report, the folder written, not GRID as an --out the user never gave."""
    from typer.testing import CliRunner

    from lathadapter.cli import app

    grid = tmp_path / "grid"
    write_rows(grid / "results.csv", [row(seed=1)])
    (grid / "report").write_text("in the way")
    result = CliRunner().invoke(app, ["report", str(grid)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip() == (f"error: --out {grid / 'report'}: cannot write there: a part of the path is a "
                                     "file, not a folder; choose another --out")


def test_hierarchy_diagnostics_get_one_compact_table_of_means_over_seeds(tmp_path: Path) -> None:
    """Rows with `hier.*` columns (LatHAdapter's diagnostics) make a `hierarchy` table: one row per configuration,
    dataset and setting, each value the mean ± std over seeds; `radius_order` as the % of seeds where it holds; runs
    without diagnostics (zero-shot) are not in it."""
    share = {0.5: [10.0, 30.0], 1.0: [0.0, 0.0]}
    order = {0.5: ["True", "False"], 1.0: ["True", "True"]}
    radius = {0.5: [0.2, 0.4], 1.0: [0.3, 0.3]}
    rows = [row(shots=16, seed=s, classes="base", acc_base=80.0, acc_novel=60.0,
                **{"opt.curvature": c, "hier.train_in_cone": t, "hier.radius_order": o, "hier.radius_category": r})
            for c in share for s, t, o, r in zip((1, 2), share[c], order[c], radius[c], strict=True)]
    rows += [row("zeroshot", shots=16, classes="base", acc_base=70.0, acc_novel=65.0)]
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + ["hier.train_in_cone", "hier.radius_order",
                                                         "hier.radius_category"], restval="")
        writer.writeheader()
        writer.writerows({"key": f"k{i}", **r} for i, r in enumerate(rows))
    markdown = write_report(path, tmp_path / "report")["markdown"]
    table = read_table(tmp_path / "report" / "hierarchy.csv")
    assert set(table) == {"lathadapter curvature=0.5", "lathadapter curvature=1.0"}
    for c in share:
        line = table[f"lathadapter curvature={c}"]
        assert line["setting"] == "16 shots, base-to-novel" and line["dataset"] == "caltech101"
        assert float(line["train in cone % mean"]) == pytest.approx(statistics.fmean(share[c]))
        assert float(line["train in cone % std"]) == pytest.approx(statistics.stdev(share[c]))
        assert float(line["ρ' cat mean"]) == pytest.approx(statistics.fmean(radius[c]))
        assert float(line["order holds % mean"]) == pytest.approx(100 * order[c].count("True") / len(order[c]))
        assert line["test in cone % mean"] == ""  # not in the rows: no number
    assert "Hierarchy diagnostics" in markdown


TUNED_COLUMNS = ["key", "cache", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select",
                 "target", "acc_all", "acc_base", "acc_novel", "opt.lr", "tune.group", "tune.names", "tune.values",
                 "tune.score", "tune.set", "tune.selected"]


def tuned_row(key: str, seed: int, score: str, lr: float, base: float, novel: float, selected: bool = True
              ) -> dict[str, Any]:
    """A kept (or not kept) base-to-novel CLIP-Adapter tuning candidate, chosen by `score`."""
    return {"key": key, "cache": "c.h5", "dataset": "caltech101", "fingerprint": FP, "method": "clip-adapter",
            "shots": 16, "seed": seed, "classes": "base", "text": "coop", "select": "last", "target": "",
            "acc_base": base, "acc_novel": novel, "opt.lr": lr, "tune.group": f"{score}{seed}", "tune.names": "lr",
            "tune.values": f"lr={lr}", "tune.score": score, "tune.set": "subset", "tune.selected": selected}


def write_tuned(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TUNED_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_runs_kept_by_different_tuning_scores_are_different_configurations(tmp_path: Path) -> None:
    """Two protocol runs into one folder, one tuned by val and one by val_hm, keep a run per seed each: the report
    shows them as two rows, each a mean over its own two seeds (n = 2), never one row pooling four runs as seeds."""
    base = {"val": [90.0, 86.0], "val_hm": [88.0, 84.0]}
    novel = {"val": [60.0, 64.0], "val_hm": [70.0, 72.0]}
    rows = [tuned_row(f"{score}{seed}", seed, score, 0.01, b, n)
            for score in base for seed, b, n in zip((1, 2), base[score], novel[score], strict=True)]
    rows += [tuned_row(f"x{score}{seed}", seed, score, 0.1, 10.0, 10.0, selected=False)
             for score in base for seed in (1, 2)]
    write_report(write_tuned(tmp_path / "results.csv", rows), tmp_path / "report")
    table = read_table(tmp_path / "report" / "base_to_novel.csv")
    assert set(table) == {"clip-adapter score=val lr=0.01 (tuned)", "clip-adapter score=val_hm lr=0.01 (tuned)"}
    for score in base:
        line = table[f"clip-adapter score={score} lr=0.01 (tuned)"]
        assert line["caltech101 base n"] == line["caltech101 novel n"] == "2"
        assert float(line["caltech101 base mean"]) == pytest.approx(statistics.fmean(base[score]))
        assert float(line["caltech101 novel std"]) == pytest.approx(statistics.stdev(novel[score]))
        mb, mn = statistics.fmean(base[score]), statistics.fmean(novel[score])
        assert float(line["caltech101 HM mean"]) == pytest.approx(2 * mb * mn / (mb + mn))


def test_a_cell_with_one_seed_twice_is_refused_naming_both_runs(tmp_path: Path) -> None:
    """Two kept runs of one configuration and seed (two tuning grids of one score into one folder, other transfer
    targets) would count that seed twice: mean 80 over seeds 1, 1, 2 is not the mean over seeds 1 and 2 (75)."""
    rows = [tuned_row("first", 1, "val", 0.01, 70.0, 60.0), tuned_row("again", 1, "val", 0.01, 90.0, 60.0),
            tuned_row("other", 2, "val", 0.01, 80.0, 60.0)]
    for read in (summary_markdown, write_report):
        with pytest.raises(ValueError) as raised:
            read(write_tuned(tmp_path / "results.csv", rows))
        message = str(raised.value)
        assert message.startswith(str(tmp_path / "results.csv")) and "\n" not in message
        assert "first" in message and "again" in message and "same seed 1" in message
    transfer = [row(shots=16, seed=1, target=t, acc_all=50.0) for t in ("source", "pets")]
    transfer += [{**row(shots=16, seed=1, target="source", acc_all=50.0), "key": "rerun"}]
    path = tmp_path / "transfer.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows([{"key": "k0", **transfer[0]}, {"key": "k0", **transfer[1]}, transfer[2]])
    with pytest.raises(ValueError, match="runs k0 and rerun .* target source"):
        summary_markdown(path)


def test_a_cell_over_fewer_seeds_than_its_table_says_how_many(tmp_path: Path) -> None:
    """One failed or unfinished run leaves a cell over two seeds where the others have three: its markdown says
    `(n=2)`, the full cells say nothing more, and a one-seed cell in a table of one-seed cells stays bare."""
    values = {"zeroshot": [20.0, 20.0, 20.0], "lathadapter": [50.0, 54.0]}
    rows = [row(method, seed=s, acc_all=v) for method, vs in values.items() for s, v in enumerate(vs, 1)]
    markdown = summary_markdown(write_rows(tmp_path / "results.csv", rows))
    assert f"| zeroshot | {statistics.fmean(values['zeroshot']):.2f} ± 0.00 |" in markdown
    mean, std = statistics.fmean(values["lathadapter"]), statistics.stdev(values["lathadapter"])
    assert f"| lathadapter | {mean:.2f} ± {std:.2f} (n=2) |" in markdown
    alone = summary_markdown(write_rows(tmp_path / "one" / "results.csv", [row(acc_all=40.0), row("zeroshot",
                                                                                                    acc_all=30.0)]))
    assert "| lathadapter | 40.00 |" in alone and "| zeroshot | 30.00 |" in alone


def test_a_protocols_tables_restate_from_its_results_csv(tmp_path: Path) -> None:
    """End to end: base-to-novel on two caches, two seeds; every cell of base_to_novel.csv recomputed from
    results.csv by the formulas the docs state: mean and sample std (n − 1) over seeds, HM of the mean base and mean
    novel, the average over datasets the mean of per-dataset means and its HM from the average base and novel; a
    configuration without runs on one dataset has no average (never an average over the datasets it has)."""
    from lathadapter.experiments.protocols import run_protocol

    common = dict(num_classes=6, dim=16, views=2, shots=(16,), seeds=(1, 2), train_per_class=16, val_per_class=2,
                  test_per_class=7)
    caches = [str(write_synthetic_cache(tmp_path / f"{name}.h5", name=name, seed=seed, **common))
              for name, seed in (("alpha", 1), ("beta", 2))]
    out = tmp_path / "b2n"
    run_protocol("base-to-novel", caches, out, ["zeroshot", "clip-adapter"], [1, 2], progress=False,
                 options={"clip-adapter.epochs": ["2"]})
    run_protocol("base-to-novel", caches[:1], out, ["taskres"], [1, 2], progress=False,
                 options={"taskres.epochs": ["2"]})
    with (out / "results.csv").open(newline="") as f:
        results = list(csv.DictReader(f))
    write_report(out, tmp_path / "report")
    table = read_table(tmp_path / "report" / "base_to_novel.csv")
    assert set(table) == {"zeroshot", "clip-adapter", "taskres"}
    for method, line in table.items():
        means = {}
        for dataset in ("alpha", "beta"):
            runs = [r for r in results if r["method"] == method and r["dataset"] == dataset]
            if not runs:
                assert line[f"{dataset} base mean"] == line[f"{dataset} HM mean"] == ""
                continue
            assert sorted(int(r["seed"]) for r in runs) == [1, 2]
            for part in ("base", "novel"):
                values = [float(r[f"acc_{part}"]) for r in runs]
                assert float(line[f"{dataset} {part} mean"]) == pytest.approx(statistics.fmean(values))
                assert float(line[f"{dataset} {part} std"]) == pytest.approx(statistics.stdev(values), abs=1e-9)
                assert line[f"{dataset} {part} n"] == "2"
                means[dataset, part] = statistics.fmean(values)
            b, n = means[dataset, "base"], means[dataset, "novel"]
            assert float(line[f"{dataset} HM mean"]) == pytest.approx(2 * b * n / (b + n))
        if len(means) < 4:  # taskres ran on alpha only
            assert line["Average base mean"] == line["Average HM mean"] == ""
            continue
        b = statistics.fmean([means["alpha", "base"], means["beta", "base"]])
        n = statistics.fmean([means["alpha", "novel"], means["beta", "novel"]])
        assert float(line["Average base mean"]) == pytest.approx(b)
        assert float(line["Average novel mean"]) == pytest.approx(n)
        assert float(line["Average HM mean"]) == pytest.approx(2 * b * n / (b + n))


def test_a_full_disk_while_reporting_keeps_the_previous_report_whole(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every report file is written atomically: a write cut short by a full disk (here, half the bytes, then
    ENOSPC) leaves each earlier file byte for byte as it was and no temporary file; the CLI says so in one line."""
    import errno

    import matplotlib.figure
    from typer.testing import CliRunner

    from lathadapter.cli import app

    rows = [row(seed=s, shots=k, acc_all=30.0 + s + k) for s in (1, 2) for k in (1, 2)]
    results = write_rows(tmp_path / "results.csv", rows)
    out = tmp_path / "report"
    write_report(results, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"report.md", "few_shot_caltech101.csv", "accuracy_vs_shots_caltech101.png"} <= set(before)
    write_rows(results, [row(seed=s, shots=k, acc_all=50.0 + s + k) for s in (1, 2) for k in (1, 2)])

    def half_then_full(figure: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    def text_half_then_full(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        with open(self, "w") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    fresh = tmp_path / "fresh"
    write_report(results, fresh)  # the new report, whole
    for target, name, fake in ((matplotlib.figure.Figure, "savefig", half_then_full),
                               (Path, "write_text", text_half_then_full)):
        with monkeypatch.context() as patch:
            patch.setattr(target, name, fake)
            result = CliRunner().invoke(app, ["report", str(results), "--out", str(out)])
        assert result.exit_code == 1, (result.output, result.exception)
        assert result.output.strip().splitlines()[-1].startswith(f"error: --out {out}: cannot write there: no space")
        assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temporary file left
        for file in out.iterdir():  # each file whole: as it was, or as the new report has it
            assert file.read_bytes() in (before[file.name], (fresh / file.name).read_bytes()), (name, file.name)
        assert (out / "report.md").read_bytes() == before["report.md"]  # written last, so it never ran or failed


def test_an_average_or_hm_of_a_cell_over_fewer_seeds_says_how_many(tmp_path: Path) -> None:
    """Base-to-novel on two datasets, one lathadapter run missing on the second: that dataset's base, novel and HM
    cells, and the average's base, novel and HM, read `(n=2)`; the first dataset's full cells and zero-shot's do not.
    Every number is restated here: mean over seeds, HM of the mean base and mean novel, average of the datasets'
    means."""
    accuracy = {("a", 1): (80.0, 60.0), ("a", 2): (82.0, 62.0), ("a", 3): (84.0, 58.0),
                ("b", 1): (70.0, 50.0), ("b", 2): (74.0, 54.0)}  # ("b", 3) is missing
    rows = [row(seed=seed, classes="base", dataset=d, cache=f"{d}.h5", acc_base=b, acc_novel=n)
            for (d, seed), (b, n) in accuracy.items()]
    rows += [row("zeroshot", seed=s, classes="base", dataset=d, cache=f"{d}.h5", acc_base=60.0, acc_novel=65.0)
             for d in ("a", "b") for s in (1, 2, 3)]
    markdown = summary_markdown(write_rows(tmp_path / "results.csv", rows))

    def hm(b: float, n: float) -> float:
        return 2 * b * n / (b + n)

    base = {d: statistics.fmean(v[0] for (x, _), v in accuracy.items() if x == d) for d in ("a", "b")}
    novel = {d: statistics.fmean(v[1] for (x, _), v in accuracy.items() if x == d) for d in ("a", "b")}
    spread = {d: [statistics.stdev(v[i] for (x, _), v in accuracy.items() if x == d) for i in (0, 1)]
              for d in ("a", "b")}
    average = (statistics.fmean(base.values()), statistics.fmean(novel.values()))
    cells = [f"{base['a']:.2f} ± {spread['a'][0]:.2f}", f"{novel['a']:.2f} ± {spread['a'][1]:.2f}",
             f"{hm(base['a'], novel['a']):.2f}",
             f"{base['b']:.2f} ± {spread['b'][0]:.2f} (n=2)", f"{novel['b']:.2f} ± {spread['b'][1]:.2f} (n=2)",
             f"{hm(base['b'], novel['b']):.2f} (n=2)",
             f"{average[0]:.2f} (n=2)", f"{average[1]:.2f} (n=2)", f"{hm(*average):.2f} (n=2)"]
    assert "| lathadapter | " + " | ".join(cells) + " |" in markdown, markdown
    full = ["60.00 ± 0.00", "65.00 ± 0.00", f"{hm(60.0, 65.0):.2f}"] * 2 + ["60.00", "65.00", f"{hm(60.0, 65.0):.2f}"]
    assert "| zeroshot | " + " | ".join(full) + " |" in markdown, markdown


def test_a_report_leaves_the_callers_matplotlib_backend_alone(tmp_path: Path) -> None:
    """A notebook that draws a report keeps its own backend (plots.py switched every importer to Agg) and is left no
    open pyplot figure."""
    import subprocess
    import sys

    results = write_rows(tmp_path / "results.csv", [row(shots=k, seed=s, acc_all=50.0 + k + s) for k in (1, 4)
                                                    for s in (1, 2)])
    script = ("import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt\n"
              "from pathlib import Path\nfrom lathadapter.experiments.report import write_report\n"
              f"written = write_report(Path({str(results)!r}))\n"
              "print(matplotlib.get_backend(), len(plt.get_fignums()), len(written['plots']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["svg", "0", "1"]


def test_a_one_at_a_time_sweep_draws_each_ablation_without_the_other_settings_lone_points(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """curvature 0.5, 1, 2 at beta 0.5 and beta 0.3, 1.0 at curvature 1 (one setting varied at a time), 2 shots: the
    curvature's plot has a line per number of shots at beta=0.5 through the three curvatures, and none for the beta
    values run at one curvature alone; the beta's plot likewise."""
    configs = [(0.5, 0.5), (1.0, 0.5), (2.0, 0.5), (1.0, 0.3), (1.0, 1.0)]
    accuracy = {(c, b, k): [30 + 10 * c + 5 * b + k + s for s in (1, 2)] for c, b in configs for k in (1, 4)}
    rows = [row(shots=k, seed=s, acc_all=v, **{"opt.curvature": c, "opt.lathadapter.beta": b})
            for (c, b, k), values in accuracy.items() for s, v in zip((1, 2), values, strict=True)]
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    curvature = drawn_lines(figures["ablation_caltech101_lathadapter_curvature.png"])
    assert sorted(curvature) == ["1 shot, beta=0.5", "4 shots, beta=0.5"]
    points = curvature["4 shots, beta=0.5"]
    assert [x for x, _, _ in points] == [0.5, 1.0, 2.0]
    assert [y for _, y, _ in points] == pytest.approx([statistics.fmean(accuracy[(c, 0.5, 4)]) for c in (0.5, 1, 2)])
    beta = drawn_lines(figures["ablation_caltech101_lathadapter_beta.png"])
    assert sorted(beta) == ["1 shot, curvature=1.0", "4 shots, curvature=1.0"]
    assert [x for x, _, _ in beta["1 shot, curvature=1.0"]] == [0.3, 0.5, 1.0]


def test_an_ablation_of_too_many_lines_is_named_in_the_report_not_drawn(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An ablation plot of more lines than `MOST_ABLATION_LINES` (here 3: 2 shots × 2 betas = 4 lines) is not drawn;
    report.md names it with its number of lines, and its ablation table is still written."""
    monkeypatch.setattr(plots, "MOST_ABLATION_LINES", 3)
    rows = [row(shots=k, seed=1, acc_all=40 + c + b + k, **{"opt.curvature": c, "opt.lathadapter.beta": b})
            for c in (0.5, 2.0) for b in (0.3, 1.0) for k in (1, 4)]
    written = write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    assert [Path(p).name for p in written["plots"]] == ["accuracy_vs_shots_caltech101.png"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "ablation_caltech101_lathadapter_curvature (4 lines)" in report
    assert "ablation_caltech101_lathadapter_beta (4 lines)" in report
    assert (tmp_path / "report" / "few_shot_caltech101_ablation_lathadapter_curvature.csv").is_file()


def test_an_accuracy_plot_of_more_configurations_than_line_styles_is_named_not_drawn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More configurations than distinct line styles (`MOST_SHOTS_LINES`, here 2; three curvatures): the accuracy
    plots of the dataset and of the average over datasets are not drawn, report.md names them with their number of
    lines, and the tables keep every configuration; at 3 they are drawn."""
    rows = [row(shots=k, acc_all=40 + c + k, dataset=d, **{"opt.curvature": c})
            for d in ("caltech101", "pets") for c in (0.5, 1.0, 2.0) for k in (1, 4)]
    path = write_rows(tmp_path / "results.csv", rows)
    monkeypatch.setattr(plots, "MOST_SHOTS_LINES", 2)
    written = write_report(path, tmp_path / "report")
    assert not [p for p in written["plots"] if Path(p).name.startswith("accuracy_vs_shots")]
    report = (tmp_path / "report" / "report.md").read_text()
    for name in ("accuracy_vs_shots_caltech101", "accuracy_vs_shots_pets", "accuracy_vs_shots_average"):
        assert f"{name} (3 lines)" in report
    assert len(read_table(tmp_path / "report" / "few_shot_average.csv")) == 3
    monkeypatch.setattr(plots, "MOST_SHOTS_LINES", 3)
    written = write_report(path, tmp_path / "report3")
    assert {Path(p).name for p in written["plots"] if Path(p).name.startswith("accuracy_vs_shots")} == {
        "accuracy_vs_shots_caltech101.png", "accuracy_vs_shots_pets.png", "accuracy_vs_shots_average.png"}
    assert "left out" not in (tmp_path / "report3" / "report.md").read_text()


def test_line_styles_are_distinct_up_to_the_accuracy_plots_limit() -> None:
    """Each of the first `MOST_SHOTS_LINES` lines has its own (colour, marker, dash), so a plot drawn never shows two
    configurations alike."""
    styles = {tuple(plots.line_style(i).values()) for i in range(plots.MOST_SHOTS_LINES)}
    assert len(styles) == plots.MOST_SHOTS_LINES


def test_a_dataset_named_average_keeps_its_files_beside_the_average_over_datasets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Datasets `average` (a `folder:…/average`) and `pets`, 2 shots: the dataset's table and plot are
    `few_shot_average_dataset` and `accuracy_vs_shots_average_dataset.png`, its own numbers; `few_shot_average` and
    `accuracy_vs_shots_average.png` stay the mean over both datasets."""
    accuracy = {(d, k): 30.0 + 20 * (d == "pets") + k for d in ("average", "pets") for k in (1, 2)}
    rows = [row(shots=k, acc_all=a, dataset=d) for (d, k), a in accuracy.items()]
    figures = capture_plots(monkeypatch)
    written = write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    assert {"accuracy_vs_shots_average.png", "accuracy_vs_shots_average_dataset.png",
            "accuracy_vs_shots_pets.png"} <= {Path(p).name for p in written["plots"]}
    own = figures["accuracy_vs_shots_average_dataset.png"]
    assert own.get_title() == "average: accuracy vs shots"
    (line,) = own.containers
    assert list(line.lines[0].get_ydata()) == [accuracy[("average", k)] for k in (1, 2)]
    (line,) = figures["accuracy_vs_shots_average.png"].containers
    means = [statistics.fmean([accuracy[("average", k)], accuracy[("pets", k)]]) for k in (1, 2)]
    assert list(line.lines[0].get_ydata()) == pytest.approx(means)
    table = read_table(tmp_path / "report" / "few_shot_average.csv")["lathadapter"]
    assert [float(table[f"{label} mean"]) for label in ("1 shot", "2 shots")] == pytest.approx(means)
    table = read_table(tmp_path / "report" / "few_shot_average_dataset.csv")["lathadapter"]
    assert [float(table[f"{label} mean"]) for label in ("1 shot", "2 shots")] == [accuracy[("average", k)]
                                                                               for k in (1, 2)]


def test_an_untuned_run_beside_tuned_ones_reads_untuned_not_recipe(tmp_path: Path) -> None:
    """A plain grid and a tuned grid in one folder: the plain run has no tuning score nor val set (empty `tune.score`
    and `tune.set`). Its label and ablation tables say `untuned` there; `recipe` is for an option left to the
    method's training recipe (its lr here), never for how a run was tuned (`score=recipe` read as a score)."""
    plain = {"key": "plain", "cache": "c.h5", "dataset": "caltech101", "fingerprint": FP, "method": "clip-adapter",
             "shots": 16, "seed": 1, "classes": "all", "text": "coop", "select": "last", "target": "",
             "acc_all": 50.0, "opt.lr": ""}
    rows = [plain, {**plain, "key": "plain4", "shots": 4, "acc_all": 45.0}]
    rows += [{**tuned_row(f"t{k}", 1, "val", 0.01, 0.0, 0.0), "classes": "all", "acc_all": 60.0, "acc_base": "",
              "acc_novel": "", "shots": k, "tune.group": f"g{k}"} for k in (4, 16)]
    write_report(write_tuned(tmp_path / "results.csv", rows), tmp_path / "report")
    table = read_table(tmp_path / "report" / "few_shot_caltech101.csv")
    assert set(table) == {"clip-adapter score=untuned set=untuned lr=recipe",
                          "clip-adapter score=val set=subset lr=0.01 (tuned)"}
    # score, set and lr vary together: one ablation table, led by score, with the other two beside it
    assert sorted(p.name for p in (tmp_path / "report").glob("few_shot_caltech101_ablation_*.csv")) == [
        "few_shot_caltech101_ablation_clip-adapter_score.csv"]
    ablation = read_table(tmp_path / "report" / "few_shot_caltech101_ablation_clip-adapter_score.csv",
                          ["score", "set"])
    assert set(ablation) == {("untuned", "untuned"), ("val", "subset")}
    assert ablation[("untuned", "untuned")]["lr"] == "recipe"


def test_a_pipe_in_a_dataset_name_is_escaped_in_the_markdown_tables(tmp_path: Path) -> None:
    """A markdown row's cells are split on unescaped `|`: a dataset named `a|b` keeps the main table's 4 columns."""
    rows = [row(seed=1, acc_all=50.0, dataset="a|b"), row(seed=1, acc_all=40.0, dataset="c")]
    markdown = write_report(write_rows(tmp_path / "results.csv", rows))["markdown"]
    header = next(line for line in markdown.splitlines() if line.startswith("| method | a"))
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", header)[1:-1]]
    assert cells == ["method", r"a\|b", "c", "Average"]


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "150"])
def test_an_accuracy_that_is_no_percentage_is_refused_naming_row_and_column(tmp_path: Path, value: str) -> None:
    """A hand-edited accuracy of NaN, infinity or outside [0, 100] is no cell to average: the report refuses it
    naming the table, the row and the column, instead of failing inside statistics or printing a mean of it."""
    path = write_rows(tmp_path / "results.csv", [row(seed=1, acc_all=50.0), row(seed=2, acc_all=value)])
    with pytest.raises(ResultsError, match=rf"results\.csv: row 2: acc_all is {value}, not a percentage in \[0, 100\]"):
        write_report(path)
    assert not (tmp_path / "report").exists()


def test_a_dollar_sign_in_a_class_name_is_drawn_as_written(tmp_path: Path) -> None:
    """matplotlib reads text between two `$` as mathtext: `a $^$ b` failed to parse and `US$ 5$` lost its signs.
    Every text of a saved plot is drawn as written."""
    names = ["a $^$ b", "US$ 5$ note"]
    captured: list[Axes] = []
    save = plots._save
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "_save", lambda fig, path: (captured.append(fig.axes[0]), save(fig, path))[1])
        plots.plot_confusion(torch.eye(2, dtype=torch.long), names, "US$ 5$", tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").is_file()
    labels = captured[0].get_xticklabels()
    assert [t.get_text() for t in labels] == names and not any(t.get_parse_math() for t in labels)


def test_characters_the_font_lacks_are_one_warning_naming_the_plot(tmp_path: Path) -> None:
    """A CJK class name: matplotlib warned once per character and drawing pass (ten lines for one five-character
    name on one confusion matrix). The plot warns once, naming its file and each character the font has no glyph
    for, as the font's own character map says."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    names = ["日本語の円", "café crème", "cat 🐱 日"]
    charmap = FT2Font(font_manager.findfont("DejaVu Sans")).get_charmap()
    lacking = list(dict.fromkeys(c for name in names for c in name if ord(c) not in charmap))
    assert lacking and "é" not in lacking
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.plot_confusion(torch.eye(3, dtype=torch.long), names, "glyphs", tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").read_bytes().startswith(b"\x89PNG")
    said = [str(w.message) for w in caught]
    assert len(said) == 1, said
    assert said[0].startswith(f"confusion.png: the font (DejaVu Sans) has no glyph for {' '.join(lacking)}, drawn "
                              "as boxes")


def test_other_warnings_of_a_save_keep_their_origin_and_the_filters_in_force(tmp_path: Path) -> None:
    """Only the glyph warnings are gathered: another warning raised while a plot is drawn comes from where it was
    raised (a filter by module still matches it), and a filter that makes it an error stops the save there, leaving
    no file, as the same drawing outside `_save` would."""
    import inspect

    from matplotlib.artist import Artist

    class Warns(Artist):
        def draw(self, renderer: Any) -> None:
            warnings.warn("drawn", RuntimeWarning, stacklevel=1)

    fig, _ = plots._figure(2, 2)
    fig.add_artist(Warns())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots._save(fig, tmp_path / "shown.png")
    draw = inspect.unwrap(Warns.draw)  # matplotlib wraps a subclass's draw
    raised_at = (__file__, draw.__code__.co_firstlineno + 1)  # the line of `warnings.warn` in `draw`
    assert caught and {(str(w.message), w.category, (w.filename, w.lineno)) for w in caught} == {
        ("drawn", RuntimeWarning, raised_at)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="^drawn$"):
            plots._save(fig, tmp_path / "stopped.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shown.png"]


def test_a_long_class_name_is_cut_in_the_disk_legend(tmp_path: Path) -> None:
    """A 200-character class name stretched the Poincaré disk's legend, and so the picture, to 2130 pixels wide
    (and tight_layout gave up, warning); the legend cuts it at `LEGEND_NAME_CHARACTERS`, as the confusion matrix's
    axes cut names."""
    import matplotlib.image

    run = tmp_path / "run"
    run.mkdir()
    long = "x" * 150 + " very long name " + "y" * 50
    torch.save({"curvature": 1.0, "class_names": [long, "b"], "categories": torch.tensor([[0.3, 0.1, 0.0],
                                                                                           [0.0, 0.2, 0.1]]),
                "attributes": torch.tensor([[0.5, 0.0, 0.1], [0.0, 0.5, 0.2]]),
                "images": torch.tensor([[0.8, 0.1, 0.0], [0.7, 0.3, 0.1]]), "image_labels": torch.tensor([0, 1]),
                "strongest_attribute": torch.tensor([0, 1])}, run / "points.pt")
    captured: list[Axes] = []
    save = plots._save
    with warnings.catch_warnings(record=True) as caught, pytest.MonkeyPatch.context() as patch:
        warnings.simplefilter("always")
        patch.setattr(plots, "_save", lambda fig, path: (captured.append(fig.axes[0]), save(fig, path))[1])
        plots.plot_poincare_disk(run, tmp_path)
    legend = [t.get_text() for t in captured[0].get_legend().get_texts()]
    assert legend == ["1: " + "x" * 39 + "…", "2: b", "attribute prompts"]
    assert not [str(w.message) for w in caught]
    height, width, _ = matplotlib.image.imread(tmp_path / "poincare_disk.png").shape
    assert width < 1.5 * height  # the disk (720 px at 6 in) and a legend of short lines beside it


def test_datasets_whose_names_share_a_file_name_are_labelled_apart(tmp_path: Path) -> None:
    """`a b` and `a|b` both slug to `a_b`: each is labelled with its cache's fingerprint, as two caches of one name
    are, so that each has its own table file and plot instead of one overwriting the other."""
    other = "9f8e7d6c5b4a3928"
    rows = [row(seed=1, shots=k, acc_all=50.0 + k, dataset="a b") for k in (1, 2)]
    rows += [row(seed=1, shots=k, acc_all=30.0 + k, dataset="a|b", fingerprint=other) for k in (1, 2)]
    write_report(write_rows(tmp_path / "results.csv", rows))
    report = tmp_path / "report"
    assert read_table(report / f"few_shot_a_b_fp_{FP[:8]}.csv")["lathadapter"]["1 shot mean"] == "51.0"
    assert read_table(report / f"few_shot_a_b_fp_{other[:8]}.csv")["lathadapter"]["1 shot mean"] == "31.0"
    assert {p.name for p in report.glob("accuracy_vs_shots_a_b*.png")} == {
        f"accuracy_vs_shots_a_b_fp_{FP[:8]}.png", f"accuracy_vs_shots_a_b_fp_{other[:8]}.png"}


def test_several_sources_make_the_report_of_one_folder_holding_all_their_runs(tmp_path: Path) -> None:
    """`report A B --out R`: the few-shot grid in A and the base-to-novel grid in B (as two protocols write them)
    give the report that one folder holding both grids' runs gives (the oracle: the one-source report, as the demo
    writes it), file for file and table for table; a run read from two sources (the same grid given twice) counts
    once; several sources without --out are refused in one line."""
    from typer.testing import CliRunner

    from lathadapter.cli import app
    from lathadapter.experiments.execution import Execution
    from lathadapter.experiments.launch import launch
    from lathadapter.experiments.spec import GridSpec

    cache = write_synthetic_cache(tmp_path / "shapes.h5", num_classes=6, dim=16, views=2, shots=(1, 2), seeds=(1, 2),
                                  train_per_class=4, test_per_class=6, name="shapes")
    specs = {"few-shot": GridSpec([str(cache)], ["zeroshot", "lathadapter"], [1, 2], [1, 2], ["all"],
                                  options={"lathadapter.epochs": [1]}),
             "base-to-novel": GridSpec([str(cache)], ["zeroshot", "lathadapter"], [2], [1, 2], ["base"],
                                       options={"lathadapter.epochs": [1]})}
    execution = Execution(device="cpu")
    for name, spec in specs.items():
        launch(spec, tmp_path / name, execution, progress=False)
        launch(spec, tmp_path / "both", execution, progress=False)  # one folder, as the demo runs its two grids
    oracle = write_report(tmp_path / "both", tmp_path / "one")
    pooled = write_report([tmp_path / "few-shot", tmp_path / "base-to-novel"], tmp_path / "two")
    assert pooled["markdown"] == oracle["markdown"]
    assert "base-to-novel" in pooled["markdown"].lower() and "| lathadapter |" in pooled["markdown"]
    names = sorted(Path(p).name for p in oracle["tables"] + oracle["plots"])
    assert sorted(Path(p).name for p in pooled["tables"] + pooled["plots"]) == names
    for table in oracle["tables"]:
        assert (tmp_path / "two" / Path(table).name).read_text() == Path(table).read_text()
    head = (tmp_path / "two" / "report.md").read_text().splitlines()[2]
    assert head.startswith(f"From `{tmp_path / 'few-shot' / 'results.csv'}`, `{tmp_path / 'base-to-novel'}")
    twice = write_report([tmp_path / "few-shot", tmp_path / "few-shot" / "results.csv"], tmp_path / "twice")
    assert twice["markdown"] == write_report(tmp_path / "few-shot", tmp_path / "once")["markdown"]
    refused = CliRunner().invoke(app, ["report", str(tmp_path / "few-shot"), str(tmp_path / "base-to-novel")])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert refused.output.strip() == ("error: --out: a report of 2 sources has no default folder; give one, e.g. "
                                      "--out report")


def test_the_disk_is_drawn_from_the_tables_last_kept_lathadapter_run(tmp_path: Path) -> None:
    """The Poincaré disk of a report without --disk-run is the last LatHAdapter run in the table's row order whose
    group kept it (a tuning candidate not kept is never drawn, even as the last row; a run of another method
    neither): the oracle is the disk drawn directly from that run's folder, byte for byte (the campaign's open
    gap p01–p03)."""
    from lathadapter.experiments.execution import Execution
    from lathadapter.experiments.launch import launch
    from lathadapter.experiments.spec import GridSpec

    cache = write_synthetic_cache(tmp_path / "shapes.h5", num_classes=6, dim=16, views=2, shots=(1,), seeds=(1, 2),
                                  train_per_class=4, test_per_class=6, name="shapes")
    grid = tmp_path / "grid"
    spec = GridSpec([str(cache)], ["lathadapter", "zeroshot"], [1], [1, 2], ["all"],
                    options={"lathadapter.epochs": [1]}, tune={"lathadapter.lr": [1e-3, 1e-2]})
    launch(spec, grid, Execution(device="cpu"), progress=False)
    with (grid / "results.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, list(reader)
    ours = [r for r in rows if r["method"] == "lathadapter"]
    kept = [r for r in ours if r["tune.selected"].lower() == "true"]
    dropped = [r for r in ours if r["tune.selected"].lower() == "false"]
    assert len(kept) == 2 and len(dropped) == 2
    # the order the rule reads: a kept run, then the other kept one, then a dropped candidate, then zero-shot last
    order = [kept[1], kept[0], dropped[0], *[r for r in rows if r["method"] == "zeroshot"]]
    helpers.write_rows(grid / "results.csv", order, columns)
    written = write_report(grid, tmp_path / "report")
    disk = next(Path(p) for p in written["plots"] if Path(p).name == "poincare_disk.png")
    for folder in ("direct", *(r["key"] for r in ours)):
        (tmp_path / folder).mkdir()
    expected = plots.plot_poincare_disk(grid / "runs" / kept[0]["key"], tmp_path / "direct")
    assert disk.read_bytes() == expected.read_bytes()
    for other in (kept[1], dropped[0]):  # the disks the rule does not pick differ from it
        assert plots.plot_poincare_disk(grid / "runs" / other["key"], tmp_path / other["key"]).read_bytes() \
            != expected.read_bytes()
