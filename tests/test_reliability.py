"""Reliability diagrams (Guo et al., 2017, Fig. 1): each run's confidence bins in metrics.json (`reliability`)
against a numpy restatement of the bins from the run's own logits, and the report's figures, a panel per
configuration over its seeds' summed bins, against per-bin accuracy, confidence and ECE worked out here by hand."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import lathadapter
from lathadapter.cache.store import CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments import plots
from lathadapter.experiments.protocols import run_protocol
from lathadapter.experiments.report import write_report

BINS = 15
COLUMNS = ["key", "cache", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select", "target",
           "acc_all", "acc_base", "acc_novel", "ece_all", "ece_base", "ece_novel", "opt.curvature"]


def tallies(filled: dict[int, tuple[int, int, float]]) -> dict[str, list[Any]]:
    """A metrics.json `reliability` part from its non-empty bins: bin → (images, right predictions, confidence sum)."""
    return {"images": [filled.get(b, (0, 0, 0.0))[0] for b in range(BINS)],
            "correct": [filled.get(b, (0, 0, 0.0))[1] for b in range(BINS)],
            "confidence": [filled.get(b, (0, 0, 0.0))[2] for b in range(BINS)]}


# Two seeds of clip-adapter at 4 shots, bins written by hand. Summed: bin 9 (2 images, 1 right, confidences 1.2),
# bin 10 (4, 2, 2.6), bin 13 (10, 7, 8.8), bin 14 (24, 21, 23.3): 40 images, 31 right (77.5 %); per bin accuracy
# 50, 50, 70, 87.5 % against mean confidence 60, 65, 88, 97.083 %; ECE = (0.2 + 0.6 + 1.8 + 2.3) / 40 = 12.25 %.
SEED_1 = tallies({10: (4, 2, 2.6), 13: (6, 4, 5.3), 14: (10, 9, 9.7)})
SEED_2 = tallies({9: (2, 1, 1.2), 13: (4, 3, 3.5), 14: (14, 12, 13.6)})


def run_row(key: str, method: str, seed: int, **values: Any) -> dict[str, Any]:
    return {"key": key, "cache": "caltech101.h5", "dataset": "caltech101", "fingerprint": "fp", "method": method,
            "shots": 4, "seed": seed, "classes": "all", "text": "coop", "select": "last", "target": "", **values}


def write_grid(folder: Path, runs: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> Path:
    """A grid folder written by hand: results.csv of the rows and, per run, a metrics.json holding its
    `reliability` (part → bins; none: a run saved before the bins were recorded)."""
    for row, reliability in runs:
        run = folder / "runs" / row["key"]
        run.mkdir(parents=True)
        metrics = {"accuracy": {"all": row.get("acc_all")}} | ({} if reliability is None
                                                               else {"reliability": reliability})
        (run / "metrics.json").write_text(json.dumps(metrics))
    return helpers.write_rows(folder / "results.csv", [row for row, _ in runs], COLUMNS)


def capture_figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, Figure]:
    """Each figure a report saves, by file name, as it was saved (a copy: the next figure of as many panels is drawn
    on the same one); `plots._save` still writes the file."""
    figures: dict[str, Figure] = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (
        figures.setdefault(path.name, pickle.loads(pickle.dumps(fig))), save(fig, path))[1])
    return figures


def panels(fig: Figure) -> dict[str, dict[str, Any]]:
    """Each panel's first title line → its title, and per drawn bin (its centre, in %) the accuracy bar's height and
    the ends of the gap bar (from the accuracy to the mean confidence)."""
    found = {}
    for ax in fig.axes:
        if not ax.get_title():
            continue  # the free slot holding the legend
        bars = {c.get_label(): c.patches for c in ax.containers}
        found[ax.get_title().split("\n")[0]] = {
            "title": ax.get_title(),
            "accuracy": {round(p.get_x() + p.get_width() / 2, 6): p.get_height() for p in bars["accuracy"]},
            "gap from": {round(p.get_x() + p.get_width() / 2, 6): p.get_y() for p in bars["gap to mean confidence"]},
            "gap to": {round(p.get_x() + p.get_width() / 2, 6): p.get_y() + p.get_height()
                       for p in bars["gap to mean confidence"]}}
    return found


def centre(b: int) -> float:
    return round((b + 0.5) * 100 / BINS, 6)


def test_a_panel_pools_its_seeds_bins_as_worked_out_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Clip-adapter's two seeds make one panel of their summed bins: bars of per-bin accuracy 50, 50, 70, 87.5 % at
    bins 9, 10, 13, 14, gaps up to the mean confidences 60, 65, 88, 97.08 %, ECE 12.25 and accuracy 77.5 in the
    title (see SEED_1). Zero-shot has one seed with bins and one saved before them (1 seed); the linear probe's only
    run lacks them: no panel, and no error."""
    zero = tallies({12: (5, 3, 4.1), 14: (5, 5, 4.9)})  # ECE (|3 − 4.1| + |5 − 4.9|) / 10 = 12 %, accuracy 80 %
    folder = tmp_path / "grid"
    write_grid(folder, [(run_row("a1", "clip-adapter", 1), {"all": SEED_1}),
                        (run_row("a2", "clip-adapter", 2), {"all": SEED_2}),
                        (run_row("z1", "zeroshot", 1), {"all": zero}), (run_row("z2", "zeroshot", 2), None),
                        (run_row("p1", "linear-probe", 1), None)])
    figures = capture_figures(monkeypatch)
    written = write_report(folder)
    assert str(folder / "report" / "reliability_caltech101_4shot.png") in written["plots"]
    assert (folder / "report" / "reliability_caltech101_4shot.png").stat().st_size > 10_000
    drawn = panels(figures["reliability_caltech101_4shot.png"])
    assert list(drawn) == ["zeroshot", "clip-adapter"]  # the catalog's order; the linear probe has no bins
    adapter = drawn["clip-adapter"]
    assert adapter["accuracy"] == pytest.approx({centre(9): 50.0, centre(10): 50.0, centre(13): 70.0,
                                                 centre(14): 87.5})
    assert adapter["gap from"] == adapter["accuracy"]
    assert adapter["gap to"] == pytest.approx({centre(9): 60.0, centre(10): 65.0, centre(13): 88.0,
                                               centre(14): 100 * 23.3 / 24})
    assert "ECE 12.25, accuracy 77.50 (2 seeds pooled)" in adapter["title"]
    assert "ECE 12.00, accuracy 80.00 (1 seed)" in drawn["zeroshot"]["title"]
    assert drawn["zeroshot"]["gap from"] == pytest.approx({centre(12): 60.0, centre(14): 100.0})
    assert drawn["zeroshot"]["gap to"] == pytest.approx({centre(12): 82.0, centre(14): 98.0})
    report = (folder / "report" / "report.md").read_text()
    assert "![reliability_caltech101_4shot](reliability_caltech101_4shot.png)" in report


def test_a_figure_drawn_on_a_reused_frame_is_the_file_a_new_figure_gives(tmp_path: Path) -> None:
    """A report draws a figure of as many panels as one before it on that figure's frame, cleared: the 4-shot
    figure drawn after the 2-shot one (five panels, the legend under them) is byte for byte the one a report of the
    4-shot runs alone draws, so nothing of the 2-shot figure is left on it."""
    methods = ["zeroshot", "linear-probe", "clip-adapter", "tip-adapter", "lathadapter"]
    runs = [(run_row(f"{m}{k}", m, 1, shots=k), {"all": SEED_1 if (i + k) % 2 else SEED_2})
            for i, m in enumerate(methods) for k in (2, 4)]
    write_grid(tmp_path / "both", runs)
    write_grid(tmp_path / "alone", [(row, bins) for row, bins in runs if row["shots"] == 4])
    for name in ("both", "alone"):
        write_report(tmp_path / name)
    drawn = (tmp_path / "both" / "report" / "reliability_caltech101_4shot.png").read_bytes()
    assert drawn == (tmp_path / "alone" / "report" / "reliability_caltech101_4shot.png").read_bytes()
    assert drawn != (tmp_path / "both" / "report" / "reliability_caltech101_2shot.png").read_bytes()


def test_base_to_novel_draws_base_and_novel_figures_and_labels_as_its_table(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Base-to-novel runs: a base and a novel figure; the linear probe, which scores no novel class (its novel bins
    null), has a base panel and no novel one; two curvatures of LatHAdapter are labelled by it, as in the table."""
    base, novel = tallies({13: (4, 3, 3.4)}), tallies({11: (2, 1, 1.5)})
    runs = [(run_row("p1", "linear-probe", 1, classes="base"), {"base": base, "novel": None})]
    runs += [(run_row(f"l{c}", "lathadapter", 1, classes="base", **{"opt.curvature": c}),
              {"base": base, "novel": novel}) for c in (0.5, 1.0)]
    figures = capture_figures(monkeypatch)
    write_report(write_grid(tmp_path / "grid", runs), tmp_path / "report")
    names = ["reliability_base_novel_caltech101_4shot_base.png", "reliability_base_novel_caltech101_4shot_novel.png"]
    assert set(names) <= set(figures)
    assert list(panels(figures[names[0]])) == ["linear-probe", "lathadapter curvature=0.5",
                                               "lathadapter curvature=1.0"]
    novel_panels = panels(figures[names[1]])
    assert list(novel_panels) == ["lathadapter curvature=0.5", "lathadapter curvature=1.0"]
    assert novel_panels["lathadapter curvature=0.5"]["accuracy"] == pytest.approx({centre(11): 50.0})
    assert "ECE 25.00, accuracy 50.00" in novel_panels["lathadapter curvature=0.5"]["title"]


def test_too_many_configurations_leave_the_figure_out_and_name_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `MOST_RELIABILITY_PANELS` configurations the figure is not drawn; report.md names it and its panels."""
    monkeypatch.setattr(plots, "MOST_RELIABILITY_PANELS", 1)
    folder = tmp_path / "grid"
    write_grid(folder, [(run_row("a1", "clip-adapter", 1), {"all": SEED_1}),
                        (run_row("z1", "zeroshot", 1), {"all": SEED_2})])
    written = write_report(folder)
    assert not [p for p in written["plots"] if Path(p).name.startswith("reliability")]
    assert not list((folder / "report").glob("reliability*"))
    report = (folder / "report" / "report.md").read_text()
    assert "Reliability diagrams left out" in report and "reliability_caltech101_4shot (2 panels)" in report


def test_runs_without_bins_or_without_run_directories_give_no_figure(tmp_path: Path) -> None:
    """Runs saved before the bins were recorded, and a results.csv copied away from its run directories: the report
    is written, with no reliability figure."""
    folder = tmp_path / "grid"
    write_grid(folder, [(run_row("a1", "clip-adapter", 1), None), (run_row("z1", "zeroshot", 1), None)])
    assert not [p for p in write_report(folder)["plots"] if "reliability" in p]
    alone = tmp_path / "alone" / "results.csv"
    alone.parent.mkdir()
    alone.write_bytes((folder / "results.csv").read_bytes())
    assert not [p for p in write_report(alone)["plots"] if "reliability" in p]


TARGETS = ["pets", "dtd"]


def write_transfer_grid(folder: Path, runs: list[tuple[str, str, int, dict[str, Any] | None]]) -> Path:
    """A transfer grid written by hand: per run (key, method, seed, its `targets_reliability`: target → bins, None: a
    run saved before they were recorded), a results row per target of `TARGETS` and the source, and its metrics.json."""
    rows = []
    for key, method, seed, bins in runs:
        (folder / "runs" / key).mkdir(parents=True)
        metrics = {"accuracy": {"all": 70.0}, "targets": dict.fromkeys(["source", *TARGETS], 70.0)}
        (folder / "runs" / key / "metrics.json").write_text(json.dumps(
            metrics | ({} if bins is None else {"targets_reliability": bins})))
        rows += [run_row(key, method, seed, target=target, acc_all=70.0) for target in ["source", *TARGETS]]
    return helpers.write_rows(folder / "results.csv", rows, COLUMNS)


def test_transfer_runs_draw_the_source_and_each_target_from_their_recorded_bins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Transfer runs: a figure for the source test set, then one per target, each a panel per configuration over its
    seeds' `targets_reliability` bins; clip-adapter's two seeds pool as SEED_1 worked out. A target no run has bins
    of (the method cannot score its classes: null) and a run saved before the bins (zero-shot) draw nothing."""
    zero = tallies({12: (5, 3, 4.1), 14: (5, 5, 4.9)})  # ECE 12 %, accuracy 80 %
    folder = tmp_path / "grid"
    write_transfer_grid(folder, [("a1", "clip-adapter", 1, {"source": SEED_1, "pets": zero, "dtd": None}),
                                 ("a2", "clip-adapter", 2, {"source": SEED_2, "pets": zero, "dtd": None}),
                                 ("z1", "zeroshot", 1, None)])
    figures = capture_figures(monkeypatch)
    written = write_report(folder)
    names = ["reliability_transfer_caltech101_4shot_source.png", "reliability_transfer_caltech101_4shot_pets.png"]
    assert [Path(p).name for p in written["plots"] if Path(p).name.startswith("reliability")] == names
    for name in names:
        assert (folder / "report" / name).stat().st_size > 10_000
        assert f"![{name[:-4]}]({name})" in (folder / "report" / "report.md").read_text()
    source = panels(figures[names[0]])
    assert list(source) == ["clip-adapter"]
    assert source["clip-adapter"]["accuracy"] == pytest.approx({centre(9): 50.0, centre(10): 50.0,
                                                                centre(13): 70.0, centre(14): 87.5})
    assert "ECE 12.25, accuracy 77.50 (2 seeds pooled)" in source["clip-adapter"]["title"]
    pets = panels(figures[names[1]])["clip-adapter"]
    assert pets["accuracy"] == pytest.approx({centre(12): 60.0, centre(14): 100.0})
    assert pets["gap to"] == pytest.approx({centre(12): 82.0, centre(14): 98.0})
    assert "ECE 12.00, accuracy 80.00 (2 seeds pooled)" in pets["title"]
    assert "Transfer from caltech101, 4 shots, target pets" in figures[names[1]].get_suptitle()


def test_the_same_runs_draw_the_same_bytes(tmp_path: Path) -> None:
    """Drawn twice, a reliability figure is the same file, byte for byte."""
    folder = tmp_path / "grid"
    write_grid(folder, [(run_row("a1", "clip-adapter", 1), {"all": SEED_1}),
                        (run_row("a2", "clip-adapter", 2), {"all": SEED_2})])
    write_report(folder, tmp_path / "one")
    write_report(folder, tmp_path / "two")
    name = "reliability_caltech101_4shot.png"
    assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def restated_bins(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, list[Any]]:
    """The bins restated: each image in bin k when its top-1 probability lies in (k/15, (k+1)/15]; per bin the
    images, the right predictions and the sum of top-1 probabilities."""
    confidence, right = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * BINS).astype(int) - 1, 0, BINS - 1)
    return {"images": np.bincount(index, minlength=BINS).tolist(),
            "correct": np.bincount(index[right], minlength=BINS).tolist(),
            "confidence": np.bincount(index, weights=confidence, minlength=BINS).tolist()}


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def assert_same_bins(recorded: dict[str, list[Any]], expected: dict[str, list[Any]]) -> None:
    assert recorded["images"] == expected["images"] and recorded["correct"] == expected["correct"]
    assert recorded["confidence"] == pytest.approx(expected["confidence"], abs=1e-4)


@pytest.mark.parametrize("method", ["clip-adapter", "lathadapter"])
def test_a_fits_recorded_bins_are_those_of_its_logits(baseline_cache: Path, tmp_path: Path, method: str) -> None:
    """metrics.json's `reliability` of a fit equals the bins restated from the loaded run's logits on the cache's
    test features: their softmax (CLIP-Adapter), or for LatHAdapter's fused scores, a sum of two softmaxes, their
    half (method.md)."""
    options = {"epochs": 2} if method == "clip-adapter" else {"epochs": 2, "min_steps": 0}
    metrics = lathadapter.fit(baseline_cache, method, 4, 1, out=tmp_path, device="cpu", **options)
    recorded = json.loads((Path(metrics["run_dir"]) / "metrics.json").read_text())["reliability"]
    assert list(recorded) == ["all"]
    with CacheReader(baseline_cache) as reader:
        data = reader.load(4, 1)
    with torch.no_grad():
        scores = lathadapter.load(metrics["run_dir"]).logits(data.test_features).double().numpy()
    probabilities = scores / 2 if method == "lathadapter" else softmax(scores)
    expected = restated_bins(probabilities, data.test_labels.numpy())
    assert sum(expected["images"]) == len(data.test_labels) and len(np.flatnonzero(expected["images"])) >= 2
    assert_same_bins(recorded["all"], expected)


def test_base_to_novel_and_transfer_runs_record_bins_per_part_and_target(baseline_cache: Path, tmp_path: Path) -> None:
    """Zero-shot base-to-novel: base and novel bins restated from the cache's features (novel images against the
    novel classes' text); the linear probe's novel bins are null, as its accuracy. A cross-dataset run records its
    bins per target (`targets_reliability`) beside `targets_ece`: zero-shot's on the target restated."""
    base_run = lathadapter.fit(baseline_cache, "zeroshot", 2, 1, classes="base", out=tmp_path / "fit")
    recorded = json.loads((Path(base_run["run_dir"]) / "metrics.json").read_text())["reliability"]
    with CacheReader(baseline_cache) as reader:
        data = reader.load(2, 1)
    features, text, labels = (t.double().numpy() for t in (data.test_features, data.text_features, data.test_labels))
    base, novel = labels < 4, labels >= 4  # 8 classes: 0-3 base, 4-7 novel
    assert_same_bins(recorded["base"], restated_bins(softmax(100 * features[base] @ text[:4].T), labels[base]))
    assert_same_bins(recorded["novel"], restated_bins(softmax(100 * features[novel] @ text[4:].T),
                                                      labels[novel] - 4))
    probe = lathadapter.fit(baseline_cache, "linear-probe", 2, 1, classes="base", out=tmp_path / "fit", epochs=2)
    probe_bins = json.loads((Path(probe["run_dir"]) / "metrics.json").read_text())["reliability"]
    assert probe_bins["novel"] is None and sum(probe_bins["base"]["images"]) == int(base.sum())

    target = write_synthetic_cache(tmp_path / "other.h5", num_classes=6, dim=16, views=2, shots=(2,), seeds=(1,),
                                   seed=7, name="other")
    run_protocol("cross-dataset", [str(baseline_cache)], tmp_path / "g", ["zeroshot"], [1], targets=[str(target)],
                 shots=[2], progress=False)
    (run,) = (tmp_path / "g" / "runs").glob("*/metrics.json")
    metrics = json.loads(run.read_text())
    assert set(metrics["targets_reliability"]) == set(metrics["targets_ece"]) == {"source", "other"}
    other = CacheReader(target).load_test()
    features, text, labels = (t.double().numpy() for t in (other.test_features, other.text_features,
                                                           other.test_labels))
    assert_same_bins(metrics["targets_reliability"]["other"], restated_bins(softmax(100 * features @ text.T), labels))
    assert metrics["targets_reliability"]["source"] == metrics["reliability"]["all"]
