"""Behaviours that a thirteenth mutation campaign (stop 28) found untested among those campaign 11 left open (trainer
threads, the report's plots, the wait for a Ray cluster's GCS): each test here fails on a mutant that the rest of the
suite let pass, and checks the code against an independent oracle (a documented rule restated, a hand-built input
with a known answer; for plots, what matplotlib was asked to draw)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from matplotlib.figure import Figure
from test_reliability import SEED_1, run_row, write_grid
from test_report import capture_plots, read_table, row, transfer_rows, write_rows

from lathadapter.experiments import plots
from lathadapter.experiments.cells import TARGETS_AVERAGE, Cell
from lathadapter.experiments.records import TUNED, Configuration
from lathadapter.experiments.report import write_report
from lathadapter.experiments.trainers import on_trainers

# ------------------------------------------------------------------------------------------ trainer threads

WAIT = 30.0  # seconds a thread waits for another before the test fails (a mutant that never lets it go on)


def batch(shots: int) -> list[Any]:
    """A batch of one run, as `on_trainers` reads it (its first run's shots order the batches)."""
    return [SimpleNamespace(run=SimpleNamespace(config=SimpleNamespace(shots=shots)))]


def shots_of(runs: list[Any]) -> int:
    return int(runs[0].run.config.shots)


def trained(cut: list[list[Any]], trainers: int, train: Callable[[Any, list[Any]], Any],
            extra: Callable[[str], Any] | None = None) -> list[tuple[int, Any]]:
    """Each batch's shots and result, as `on_trainers` yields them, on the CPU with the torch kernels."""
    return [(shots_of(runs), result) for runs, result in on_trainers(cut, trainers, "cpu", extra, "torch", train)]


def test_one_batch_is_trained_in_the_calling_thread_whatever_the_trainers() -> None:
    """on_trainers: `in this thread with one trainer (or one batch)`: a lone batch starts no thread."""
    caller = threading.current_thread()
    assert trained([batch(4)], 3, lambda trainer, runs: threading.current_thread()) == [(4, caller)]


def test_threads_take_the_batches_of_most_shots_first() -> None:
    """Two threads, four batches given in rising shots: each thread records its batch then waits for the other at a
    barrier, so the first two recorded are the first two taken: 8 and 4 shots, then 2 and 1."""
    barrier, lock, order = threading.Barrier(2, timeout=WAIT), threading.Lock(), []

    def train(trainer: object, runs: list[Any]) -> None:
        with lock:
            order.append(shots_of(runs))
        barrier.wait()

    assert sorted(k for k, _ in trained([batch(k) for k in (1, 2, 4, 8)], 2, train)) == [1, 2, 4, 8]
    assert set(order[:2]) == {8, 4} and set(order[2:]) == {2, 1}


def test_no_more_trainers_than_batches_are_built() -> None:
    """Four trainers asked for, two batches: two threads, each with its own evaluator (one built per trainer)."""
    built, lock = [], threading.Lock()

    def extra(device: str) -> None:
        with lock:
            built.append(device)

    assert sorted(k for k, _ in trained([batch(1), batch(2)], 4, lambda trainer, runs: None, extra)) == [1, 2]
    assert built == ["cpu", "cpu"]


def test_trainer_threads_compute_with_the_caller_s_torch_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """An OpenMP runtime whose count is per thread, as trainers.py's comment has it (this venv's libgomp build hands
    a new thread the count last set, so it is modelled): a new thread starts at the runtime's default (7 here), yet
    each trainer thread computes with the count of the thread that called `on_trainers` (3)."""
    local = threading.local()
    monkeypatch.setattr(torch, "get_num_threads", lambda: getattr(local, "count", 7))
    monkeypatch.setattr(torch, "set_num_threads", lambda count: setattr(local, "count", count))
    torch.set_num_threads(3)
    seen = trained([batch(1), batch(2)], 2, lambda trainer, runs: torch.get_num_threads())
    assert [count for _, count in seen] == [3, 3]


class Failed(RuntimeError):
    """A batch's error, named by the batch."""


def failing_pair() -> tuple[Callable[[object, list[Any]], int], list[int]]:
    """A train function for batches of 8, 4 (and fewer) shots on two threads: 8 shots fails once the 4-shot batch
    has started, and 4 shots fails (if `fail_second`) or returns only once the 8-shot thread has ended, its error
    handed over: the order of events is fixed without timing. Returns it and the shots trained."""
    started, failing, lock = threading.Event(), threading.Event(), threading.Lock()
    threads: list[threading.Thread] = []
    done: list[int] = []

    def train(trainer: object, runs: list[Any]) -> int:
        shots = shots_of(runs)
        with lock:
            done.append(shots)
        if shots == 8:
            threads.append(threading.current_thread())
            failing.set()
            assert started.wait(WAIT)
            raise Failed("8 shots")
        if shots == 4:
            started.set()
            assert failing.wait(WAIT)
            threads[0].join(WAIT)
            assert not threads[0].is_alive()
            if train.fail_second:  # type: ignore[attr-defined]
                raise Failed("4 shots")
        return shots

    train.fail_second = False  # type: ignore[attr-defined]
    return train, done


def test_the_first_error_of_the_threads_is_the_one_raised() -> None:
    """Both threads fail, the 8-shot batch's first: that error is raised once both have stopped, not the later one
    (which may only follow from it)."""
    train, done = failing_pair()
    train.fail_second = True  # type: ignore[attr-defined]
    with pytest.raises(Failed, match="^8 shots$"):
        trained([batch(4), batch(8)], 2, train)
    assert sorted(done) == [4, 8]


def test_an_error_stops_the_other_threads_taking_batches() -> None:
    """The 8-shot batch fails while the 4-shot one trains: that thread finishes its batch and takes no other, so
    the 2- and 1-shot batches never train; the error is raised."""
    train, done = failing_pair()
    with pytest.raises(Failed, match="^8 shots$"):
        trained([batch(k) for k in (1, 2, 4, 8)], 2, train)
    assert sorted(done) == [4, 8]


# ------------------------------------------------------------------------------------------ a Ray cluster's GCS


def test_ray_waits_ten_seconds_for_a_cluster_s_gcs(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/architecture.md: `ray.init` asks the GCS once and waits 10 s for it (`RAY_SETTINGS`, set before Ray is
    imported where the user has not set it; Ray's own wait is 30 s a try)."""
    from lathadapter.experiments.ray_cluster import RayMissingError, import_ray

    name = "RAY_py_gcs_connect_timeout_s"
    monkeypatch.setenv(name, "unset")
    monkeypatch.delenv(name)  # restored (unset) after the test
    with contextlib.suppress(RayMissingError):
        import_ray()
    assert os.environ[name] == "10"


# ------------------------------------------------------------------------------------------ the report's plots


def lines_by_label(ax: Any) -> dict[str, Any]:
    """Each error-bar line of a plot: its label → its data line."""
    return {container.get_label(): container.lines[0] for container in ax.containers}


def test_the_shots_plot_labels_its_axes_and_draws_lathadapter_thicker(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Accuracy against shots: the x axis says shots per class, the y axis top-1 accuracy in %; LatHAdapter's line
    (the method the tool is about) is thicker than every other."""
    rows = [row(method, shots=k, acc_all=40.0 + k + (5 if method == "lathadapter" else 0))
            for method in ("lathadapter", "tip-adapter", "clip-adapter") for k in (1, 4)]
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    ax = figures["accuracy_vs_shots_caltech101.png"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("shots per class", "top-1 accuracy (%)")
    widths = {label: line.get_linewidth() for label, line in lines_by_label(ax).items()}
    assert set(widths) == {"lathadapter", "tip-adapter", "clip-adapter"}
    assert widths["lathadapter"] > max(widths["tip-adapter"], widths["clip-adapter"])


def base_novel_rows(shots: int = 16, base: tuple[float, float] = (70.0, 74.0)) -> list[dict[str, Any]]:
    """Base-to-novel rows of LatHAdapter at curvatures 0.5 and 1 (two seeds each) and Tip-Adapter (base alone)."""
    return [row(shots=shots, seed=s, classes="base", acc_base=b + c, acc_novel=b - 10 * c, **{"opt.curvature": c})
            for c in (0.5, 1.0) for s, b in zip((1, 2), base, strict=True)] + [
        row("tip-adapter", shots=shots, classes="base", acc_base=base[0])]


def test_the_dot_plot_s_rows_run_top_to_bottom_in_the_table_s_order_with_one_legend_entry_a_score(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The base-to-novel plot: its first row (the table's first) at the top, each next one below; the legend names
    base, novel and HM once each, however many rows draw them."""
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", base_novel_rows()), tmp_path / "report")
    ax = figures["base_novel_caltech101.png"]
    order = list(read_table(tmp_path / "report" / "base_to_novel.csv"))
    assert len(order) == 3
    heights = {t.get_text(): ax.transData.transform((0.0, y))[1]  # display y: larger is higher on the page
               for t, y in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True)}
    assert sorted(heights, key=lambda label: -heights[label]) == order
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["base", "novel", "HM"]


def test_a_dot_plot_of_low_accuracies_starts_its_axis_at_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """Accuracies of a few % (a hard dataset at one shot): the accuracy axis starts at 0 %, not at a negative
    accuracy, and still holds every dot's mean ± std."""
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", base_novel_rows(1, (12.0, 14.0))), tmp_path / "report")
    low, high = figures["base_novel_caltech101.png"].get_xlim()
    assert low == 0.0
    novel = [12.0 - 10.0, 14.0 - 10.0]  # curvature 1's novel accuracy: the lowest dot, mean 3
    assert high >= 14.0 + 0.5 and low <= statistics.fmean(novel) - statistics.stdev(novel)


def test_several_shots_of_base_to_novel_runs_get_a_plot_and_an_ablation_each(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Base-to-novel runs at 4 and 16 shots: a dot plot and an ablation plot per number of shots, named
    `_<k>shot` as the tables name them, not one file drawn twice over."""
    figures = capture_plots(monkeypatch)
    written = write_report(write_rows(tmp_path / "results.csv", base_novel_rows(4) + base_novel_rows(16)),
                           tmp_path / "report")
    for k in (4, 16):
        for name in (f"base_novel_caltech101_{k}shot.png", f"ablation_base_novel_caltech101_{k}shot_lathadapter_"
                                                          "curvature.png"):
            assert name in figures and str(tmp_path / "report" / name) in written["plots"]
            assert f"{k} shots" in figures[name].get_title()


def test_a_transfer_plot_is_titled_with_its_source_and_shots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Transfer runs at 4 and 16 shots: a plot each, its title naming the source dataset and its shots."""
    accuracy = {0.5: {"source": [70.0, 72.0], "pets": [40.0, 44.0], "dtd": [30.0, 31.0]}}
    figures = capture_plots(monkeypatch)
    write_report(write_rows(tmp_path / "results.csv", transfer_rows(accuracy, 4) + transfer_rows(accuracy, 16)),
                 tmp_path / "report")
    assert figures["transfer_caltech101_4shot.png"].get_title() == "Transfer from caltech101, 4 shots"
    assert figures["transfer_caltech101_16shot.png"].get_title() == "Transfer from caltech101, 16 shots"


def test_a_transfer_row_says_targets_once_only_where_every_target_reads_alike() -> None:
    """Every target and their average `n/a` (a method scoring no other class set): `targets n/a`, after the other
    columns; targets without numbers for different reasons are each named."""
    targets = ["pets", "dtd"]
    alike = {"source": "diverged", "pets": "n/a", "dtd": "n/a", TARGETS_AVERAGE: "n/a"}
    assert plots._missing_note(alike, targets) == "source diverged, targets n/a"
    mixed = {"pets": "diverged", "dtd": "n/a", TARGETS_AVERAGE: "n/a"}
    assert plots._missing_note(mixed, targets) == f"pets diverged, dtd n/a, {TARGETS_AVERAGE} n/a"


def test_a_tuned_value_is_no_point_of_an_ablation_s_axis() -> None:
    """docs/usage.md: `a tuned value is no point of the plot's axis`: lr 0.01, 0.1 and one configuration that tuned
    lr give one line of two points."""
    configs = [Configuration("clip-adapter", (("opt.lr", lr),)) for lr in ("0.01", "0.1", TUNED)]
    cells = {c: [Cell(50.0 + i, None, 1)] for i, c in enumerate(configs)}
    (line,) = plots._ablation_lines(configs, "opt.lr", [], cells, ["16 shots"])
    assert line.cells == {"0.01": cells[configs[0]][0], "0.1": cells[configs[1]][0]}


@pytest.mark.parametrize("betas", [40, 41])
def test_an_ablation_plot_of_up_to_forty_lines_is_drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        betas: int) -> None:
    """docs/usage.md: `a plot of over 40 lines is left out and named in report.md`: the curvature's ablation at 40
    values of beta (a line each) is drawn; at 41 it is left out and named."""
    rows = [row(seed=1, acc_all=40.0 + b / 10 + c, **{"opt.curvature": c, "opt.lathadapter.beta": b / 100})
            for b in range(betas) for c in (0.5, 1.0)]
    drawn: list[str] = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(path.name) or path)
    monkeypatch.setattr(plots, "plot_accuracy_vs_shots", lambda records, folder: ([], []))
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    name = "ablation_caltech101_lathadapter_curvature"
    report = (tmp_path / "report" / "report.md").read_text()
    assert (f"{name}.png" in drawn) is (betas <= 40)
    assert (f"{name} ({betas} lines)" in report) is (betas > 40)


@pytest.mark.parametrize("configurations", [25, 26])
def test_a_reliability_figure_of_up_to_25_panels_is_drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          configurations: int) -> None:
    """docs/usage.md: `a figure of more than 25 configurations (plots.MOST_RELIABILITY_PANELS) is left out and named
    in report.md`: 25 are drawn, 26 named."""
    drawn: list[str] = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(path.name) or path)
    monkeypatch.setattr(plots, "plot_ablations", lambda records, folder: ([], []))
    folder = tmp_path / "grid"
    write_grid(folder, [(run_row(f"r{i}", "lathadapter", 1, **{"opt.curvature": 0.1 * (i + 1)}), {"all": SEED_1})
                        for i in range(configurations)])
    write_report(folder)
    report = (folder / "report" / "report.md").read_text()
    assert ("reliability_caltech101_4shot.png" in drawn) is (configurations <= 25)
    assert (f"reliability_caltech101_4shot ({configurations} panels)" in report) is (configurations > 25)


def reliability_figure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, panels: int) -> Figure:
    """The figure `inspect --plots` draws of one run scored on `panels` test sets."""
    figures: list[Figure] = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    images = [0] * 15
    images[3], images[12] = 4, 8
    bins = plots.Reliability(tuple(images), tuple(n // 2 for n in images), tuple(0.6 * n for n in images))
    plots.plot_run_reliability([(f"set {i}", bins) for i in range(panels)], "run", tmp_path / "r.png")
    return figures[0]


def test_only_the_outer_reliability_panels_carry_axis_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Seven panels, five a row: a panel with no panel below it (in either row) says its x axis, and the first
    panel of each row its y axis, from the panels' own places in the grid; the others are bare."""
    fig = reliability_figure(monkeypatch, tmp_path, 7)
    drawn = [ax for ax in fig.axes if ax.get_title()]
    assert len(drawn) == 7
    places = {ax: (ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start) for ax in drawn}
    for ax, (row_, column) in places.items():
        below = any(c == column and r > row_ for r, c in places.values())
        assert ax.get_xlabel() == ("" if below else "top-1 confidence (%)")
        assert ax.xaxis.get_tick_params()["labelbottom"] is not below
        assert ax.get_ylabel() == ("accuracy (%)" if column == 0 else "")
        assert ax.yaxis.get_tick_params()["labelleft"] is (column == 0)


def test_the_disk_scales_a_ball_of_curvature_c_to_the_unit_disk() -> None:
    """The ball of curvature −c has radius 1/√c and a point x lies at distance (2/√c)·artanh(√c‖x‖) from the origin;
    on the unit disk (c = 1) the point of that depth, times √c, is at radius tanh(√c·d/2) = √c‖x‖: 0.2 at c = 4 is 0.4
    of the way to the rim, 0.5 at c = 0.25 is 0.25."""
    basis = torch.eye(3, dtype=torch.float64)[:, :2]
    for c, norm in ((4.0, 0.2), (0.25, 0.5)):
        x = torch.tensor([[norm, 0.0, 0.0]], dtype=torch.float64)
        depth = 2 / math.sqrt(c) * math.atanh(math.sqrt(c) * norm)
        radius = float(plots.disk_coordinates(x, c, basis).norm())
        assert radius == pytest.approx(math.tanh(math.sqrt(c) * depth / 2))


def test_the_disk_says_which_run_it_draws(tmp_path: Path) -> None:
    """docs: its cache file, classes, shots, seed and run key, from the run's config.json; without one, the run's
    folder name."""
    run = tmp_path / "k1"
    run.mkdir()
    assert plots.disk_run_label(run) == "run k1"
    config = {"cache": "/data/caches/caltech101.h5", "classes": "base", "shots": 16, "seed": 3, "key": "ab12"}
    (run / "config.json").write_text(json.dumps(config))
    assert plots.disk_run_label(run) == "caltech101.h5, base classes, 16 shots, seed 3, run ab12"

