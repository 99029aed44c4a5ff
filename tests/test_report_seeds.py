"""Per-seed tables (`<table>_seeds`): each cell checked against its run's value read from results.csv with the csv
module, base-to-novel HM and averages restated per seed, the main table's mean ± std checked against numpy over the
per-seed column, and report.md's earlier text checked unchanged by the section appended after it."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments import report
from lathadapter.experiments.launch import launch
from lathadapter.experiments.report import write_report
from lathadapter.experiments.report_tables import summary_markdown
from lathadapter.experiments.spec import GridSpec

DATASETS = ("alpha", "beta")
METHODS = ["zeroshot", "linear-probe", "clip-adapter"]  # the linear probe scores no novel classes: n/a
SHOTS = (1, 2)
SEEDS = (1, 2, 3)
COLUMNS = ["key", "cache", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select", "target",
           "acc_all", "acc_base", "acc_novel", "diverged", "opt.lr", "tune.group", "tune.names", "tune.values",
           "tune.score", "tune.set", "tune.selected"]
FP = "1a2b3c4d5e6f7a8b"


def shots_label(k: int) -> str:
    return f"{k} shot" if k == 1 else f"{k} shots"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def hm(base: float, novel: float) -> float:
    return 2 * base * novel / (base + novel)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]], dict[str, Any]]:
    """A few-shot and base-to-novel grid on two synthetic caches, three seeds, and its report: the grid folder, its
    results.csv's rows and what `write_report` returned."""
    folder = tmp_path_factory.mktemp("seeds")
    common = dict(num_classes=6, dim=16, views=2, shots=SHOTS, seeds=SEEDS, train_per_class=4, val_per_class=2,
                  test_per_class=7)
    caches = [str(write_synthetic_cache(folder / f"{name}.h5", name=name, seed=seed, **common))
              for seed, name in enumerate(DATASETS, 1)]
    out = folder / "grid"
    launch(GridSpec(caches, METHODS, list(SHOTS), list(SEEDS), classes=["all", "base"],
                    options={"clip-adapter.epochs": ["2"]}), out, progress=False)
    return out, helpers.read_rows(out), write_report(out, out / "report")


def test_each_few_shot_cell_is_its_runs_accuracy_and_the_main_cell_their_mean_and_std(grid: tuple) -> None:
    out, results, _ = grid
    folder = out / "report"
    for dataset in DATASETS:
        runs = {(r["method"], r["seed"], shots_label(int(r["shots"]))): r["acc_all"] for r in results
                if r["dataset"] == dataset and r["classes"] == "all" and not r["target"]}
        main = read_csv(folder / f"few_shot_{dataset}.csv")
        seeds = read_csv(folder / f"few_shot_{dataset}_seeds.csv")
        assert list(seeds[0]) == ["method", "seed", *(shots_label(k) for k in SHOTS)]
        # the main table's configurations in its order, each with its seeds ascending
        assert [(r["method"], r["seed"]) for r in seeds] == [(m["method"], str(s)) for m in main for s in SEEDS]
        for line in seeds:
            for k in SHOTS:
                assert float(line[shots_label(k)]) == float(runs[line["method"], line["seed"], shots_label(k)])
        for m in main:
            for k in SHOTS:
                column = [float(r[shots_label(k)]) for r in seeds if r["method"] == m["method"]]
                assert float(m[f"{shots_label(k)} mean"]) == pytest.approx(np.mean(column))
                assert float(m[f"{shots_label(k)} std"]) == pytest.approx(np.std(column, ddof=1), abs=1e-12)
    # no per-seed twin of the average over datasets, the main table of datasets, ablations or ECE tables
    assert {p.name for p in folder.glob("*_seeds.csv")} == {
        *(f"few_shot_{d}_seeds.csv" for d in DATASETS), *(f"base_to_novel_{k}shot_seeds.csv" for k in SHOTS)}
    assert (folder / "few_shot_average.csv").is_file() and (folder / "ece_few_shot_alpha.csv").is_file()


def test_each_base_to_novel_cell_is_its_runs_and_hm_that_seeds_own(grid: tuple) -> None:
    out, results, _ = grid
    folder = out / "report"
    text = (folder / "report.md").read_text()
    for k in SHOTS:
        runs = {(r["method"], r["seed"], r["dataset"]): r for r in results
                if r["classes"] == "base" and int(r["shots"]) == k}
        main = read_csv(folder / f"base_to_novel_{k}shot.csv")
        seeds = read_csv(folder / f"base_to_novel_{k}shot_seeds.csv")
        assert [(r["method"], r["seed"]) for r in seeds] == [(m["method"], str(s)) for m in main for s in SEEDS]
        for line in seeds:
            bases, novels = [], []
            for dataset in DATASETS:
                run = runs[line["method"], line["seed"], dataset]
                assert float(line[f"{dataset} base"]) == float(run["acc_base"])
                bases.append(float(run["acc_base"]))
                if line["method"] == "linear-probe":  # no novel accuracy: n/a, so no HM
                    assert run["acc_novel"] == "" and line[f"{dataset} novel"] == line[f"{dataset} HM"] == ""
                    continue
                base, novel = float(run["acc_base"]), float(run["acc_novel"])
                novels.append(novel)
                assert float(line[f"{dataset} novel"]) == novel
                assert float(line[f"{dataset} HM"]) == pytest.approx(hm(base, novel))
            assert float(line["Average base"]) == pytest.approx(statistics.fmean(bases))
            if novels:
                mean_base, mean_novel = statistics.fmean(bases), statistics.fmean(novels)
                assert float(line["Average novel"]) == pytest.approx(mean_novel)
                assert float(line["Average HM"]) == pytest.approx(hm(mean_base, mean_novel))
            else:
                cells = " | ".join(f"{float(line[f'{d} base']):.2f} | n/a | n/a" for d in DATASETS)
                assert f"| linear-probe | {line['seed']} | {cells} | {statistics.fmean(bases):.2f} | n/a | n/a |" \
                    in text
        for m in main:
            for column in [f"{d} {part}" for d in DATASETS for part in ("base", "novel")]:
                values = [float(r[column]) for r in seeds if r["method"] == m["method"] and r[column]]
                if not values:
                    assert m[f"{column} mean"] == ""
                    continue
                assert float(m[f"{column} mean"]) == pytest.approx(np.mean(values))
                assert float(m[f"{column} std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-12)


def test_the_report_before_the_per_seed_section_is_as_it_was(grid: tuple, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """report.md without the per-seed tables (the report as it was) is the start of report.md with them, which
    goes on with the "Per seed" section alone; every other file is byte for byte the same."""
    out, _, written = grid
    with monkeypatch.context() as patch:
        patch.setattr(report, "seed_tables", lambda parsed: [])
        before = write_report(out, tmp_path / "before")
    old = (tmp_path / "before" / "report.md").read_text()
    new = (out / "report" / "report.md").read_text()
    assert "Per seed" not in old and "per seed" not in old
    assert new.startswith(old) and new[len(old):].startswith("\n## Per seed\n\n")
    section = new[len(old):]
    titles = [line for line in section.splitlines() if line.startswith("### ")]
    assert titles == [f"### Few-shot accuracy (%) on {d}, per seed" for d in DATASETS] + \
        [f"### Base-to-novel generalisation (%): {shots_label(k)} on base classes, per seed" for k in SHOTS]
    old_files = {p.name: p.read_bytes() for p in (tmp_path / "before").iterdir() if p.suffix in (".csv", ".tex")}
    new_files = {p.name: p.read_bytes() for p in (out / "report").iterdir() if p.suffix in (".csv", ".tex")}
    assert {n: b for n, b in new_files.items() if "_seeds." not in n} == old_files
    # what the terminal gets has no per-seed table: `report`'s markdown and `grid`/`protocol`'s summary
    assert written["markdown"] == before["markdown"] == summary_markdown(out)
    assert "per seed" not in written["markdown"]


def test_each_per_seed_latex_table_reads_its_csv_without_bold(grid: tuple) -> None:
    out, _, written = grid
    folder = out / "report"
    tables = sorted(folder.glob("*_seeds.tex"))
    assert {str(p) for p in tables} <= set(written["latex"]) and len(tables) == 4
    for path in tables:
        lines, header, rows = helpers.read_tex_rows(path)
        csv_rows = read_csv(path.with_suffix(".csv"))
        assert lines[3] == rf"\label{{tab:{path.stem}}}" and lines[2].endswith(r", per seed}")
        assert r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}" in lines
        assert header == list(csv_rows[0])  # no text of this grid's headers needs escaping
        assert r"\textbf" not in path.read_text()
        for cells, line in zip(rows, csv_rows, strict=True):
            assert cells == [line["method"], line["seed"]] + [f"{float(v):.2f}" if v else "n/a"
                                                              for v in list(line.values())[2:]]


def row(method: str, seed: int, shots: int = 1, **values: Any) -> dict[str, Any]:
    return {"cache": "caltech101.h5", "dataset": "caltech101", "fingerprint": FP, "method": method, "shots": shots,
            "seed": seed, "classes": "all", "text": "coop", "select": "last", "target": "", **values}


def test_a_diverged_seed_reads_diverged_and_a_seed_without_a_run_has_no_row(tmp_path: Path) -> None:
    accuracy = {1: 50.0, 3: 54.5}  # seed 2 diverged at 1 shot; at 2 shots only seed 1 ran
    rows = [row("lathadapter", seed, acc_all=a) for seed, a in accuracy.items()]
    rows += [row("lathadapter", 2, diverged="loss was nan at epoch 3"), row("lathadapter", 1, 2, acc_all=61.0)]
    rows += [row("zeroshot", 1, acc_all=40.0), row("zeroshot", 1, 2, acc_all=40.0)]
    written = write_report(helpers.write_rows(tmp_path / "results.csv", rows, COLUMNS), tmp_path / "report")
    folder = tmp_path / "report"
    text = (folder / "report.md").read_text()
    section = text[text.index("## Per seed"):]
    assert "\n".join(["| zeroshot | 1 | 40.00 | 40.00 |", "| lathadapter | 1 | 50.00 | 61.00 |",
                      "| lathadapter | 2 | diverged | — |", "| lathadapter | 3 | 54.50 | — |", ""]) in section
    assert "diverged" in written["markdown"]  # the main table's note lists the run; its cell is over seeds 1 and 3
    seeds = read_csv(folder / "few_shot_caltech101_seeds.csv")
    assert [(r["method"], r["seed"], r["1 shot"], r["2 shots"]) for r in seeds] == [
        ("zeroshot", "1", "40.0", "40.0"), ("lathadapter", "1", "50.0", "61.0"), ("lathadapter", "2", "", ""),
        ("lathadapter", "3", "54.5", "")]
    main = {r["method"]: r for r in read_csv(folder / "few_shot_caltech101.csv")}["lathadapter"]
    column = [float(r["1 shot"]) for r in seeds if r["method"] == "lathadapter" and r["1 shot"]]
    assert main["1 shot n"] == "2" and float(main["1 shot mean"]) == pytest.approx(np.mean(column))
    assert float(main["1 shot std"]) == pytest.approx(np.std(column, ddof=1))
    _, _, tex = helpers.read_tex_rows(folder / "few_shot_caltech101_seeds.tex")
    assert tex[2] == ["lathadapter", "2", "diverged", "--"]


def tuned(seed: int, lr: float, base: float, novel: float, selected: bool) -> dict[str, Any]:
    """A base-to-novel CLIP-Adapter tuning candidate of `seed`'s group, kept or not."""
    return row("clip-adapter", seed, 16, classes="base", acc_base=base, acc_novel=novel, key=f"s{seed}lr{lr}",
               **{"opt.lr": lr, "tune.group": f"g{seed}", "tune.names": "lr", "tune.values": f"lr={lr}",
                  "tune.score": "val_hm", "tune.set": "subset", "tune.selected": selected})


def test_a_tuned_grid_shows_each_seeds_kept_run_only(tmp_path: Path) -> None:
    kept = {1: (0.01, 80.0, 60.0), 2: (0.001, 84.0, 66.0)}
    rows = [tuned(seed, lr, base, novel, True) for seed, (lr, base, novel) in kept.items()]
    rows += [tuned(seed, 0.1, 10.0, 12.0, False) for seed in kept]
    write_report(helpers.write_rows(tmp_path / "results.csv", rows, COLUMNS), tmp_path / "report")
    (label,) = [r["method"] for r in read_csv(tmp_path / "report" / "base_to_novel.csv")]
    assert label == "clip-adapter lr=0.001/0.01 (tuned)"  # the main table's label, reused as it is
    seeds = read_csv(tmp_path / "report" / "base_to_novel_seeds.csv")
    assert [(r["method"], r["seed"]) for r in seeds] == [(label, "1"), (label, "2")]
    for line, (_, base, novel) in zip(seeds, kept.values(), strict=True):
        assert (float(line["caltech101 base"]), float(line["caltech101 novel"])) == (base, novel)
        assert float(line["caltech101 HM"]) == pytest.approx(hm(base, novel))
    assert not (tmp_path / "report" / "base_to_novel_tuned_seeds.csv").exists()


def test_transfer_cells_are_each_seeds_source_and_targets_and_their_average(tmp_path: Path) -> None:
    accuracy = {"lathadapter": {"source": [70.0, 72.0], "pets": [40.0, 44.0], "dtd": [30.0, 31.0]},
                "clip-adapter": {"source": [75.0, 71.0], "pets": [50.0, 52.0], "dtd": [20.0, 28.0]}}
    rows = [row(method, seed, 16, target=target, acc_all=a, key=f"{method}{seed}")
            for method, targets in accuracy.items() for target, values in targets.items()
            for seed, a in zip((1, 2), values, strict=True)]
    rows += [row("linear-probe", 1, 16, target="source", acc_all=68.0, key="lp"),
             row("linear-probe", 1, 16, target="pets", key="lp"), row("linear-probe", 1, 16, target="dtd", key="lp")]
    write_report(helpers.write_rows(tmp_path / "results.csv", rows, COLUMNS), tmp_path / "report")
    seeds = read_csv(tmp_path / "report" / "transfer_seeds.csv")
    assert list(seeds[0]) == ["method", "seed", "source", "dtd", "pets", "Average (targets)"]
    assert [(r["method"], r["seed"]) for r in seeds] == [("linear-probe", "1"), ("clip-adapter", "1"),
                                                         ("clip-adapter", "2"), ("lathadapter", "1"),
                                                         ("lathadapter", "2")]
    for line in seeds[1:]:
        targets = accuracy[line["method"]]
        i = int(line["seed"]) - 1
        for target, values in targets.items():
            assert float(line[target]) == values[i]
        assert float(line["Average (targets)"]) == pytest.approx(statistics.fmean([targets["pets"][i],
                                                                                   targets["dtd"][i]]))
    assert [seeds[0][c] for c in ("source", "dtd", "pets", "Average (targets)")] == ["68.0", "", "", ""]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| linear-probe | 1 | 68.00 | n/a | n/a | n/a |" in text[text.index("## Per seed"):]
