"""What a grid spends outside training as it grows: the periodic rewrites of `results.csv` stay a bounded share of
its time however many runs finish, and the table's layout is the one the rows give."""

from __future__ import annotations

import csv
import io
from collections.abc import Generator
from pathlib import Path

import pytest

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments import launch as launch_module
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.spec import GridSpec, expand
from lathadapter.experiments.table import as_table, collect_rows
from lathadapter.experiments.training import Job

TRAIN_SECONDS = 0.01  # each simulated run's training
REWRITE_SECONDS_PER_RUN = 1e-4  # a rewrite reads every finished run: 0.1 s per 1,000 runs, as measured on 2 cores
RUNS = 20_000


class Clock:
    """A simulated `time.perf_counter`: training and rewrites advance it by what they would take."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ManyRuns:
    """A backend that reports RUNS runs done, one at a time, each after TRAIN_SECONDS of simulated training."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.finished = 0

    def label(self, job: Job) -> str:
        return "simulated"

    def train(self, job: Job) -> Generator[list[tuple[int, str]], None, None]:
        yield []
        for _ in range(RUNS):
            self.clock.now += TRAIN_SECONDS
            self.finished += 1
            yield [(0, "done")]


def test_periodic_rewrites_stay_a_bounded_share_of_a_big_grids_time(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrite costs time in proportion to the finished runs; with a fixed 2 s interval the rewrites of a
    20,000-run grid of 10 ms runs took 33 % of its time (each 2 s at the end, every 2 s). Spaced by their own cost,
    their share stays under 1/(1 + RESULTS_SPACING) = 10 %, and the last rewrite still comes at the end."""
    cache = write_synthetic_cache(tmp_path / "tiny.h5", num_classes=3, dim=8, views=1, shots=(1,), seeds=(1,))
    runs = expand(GridSpec([str(cache)], ["zeroshot"], [1], [1]))
    clock = Clock()
    backend = ManyRuns(clock)
    rewrites: list[tuple[int, float]] = []  # (runs finished, seconds the rewrite took)

    def rewrite(out: Path) -> Path:
        cost = REWRITE_SECONDS_PER_RUN * backend.finished
        clock.now += cost
        rewrites.append((backend.finished, cost))
        return out / "results.csv"

    monkeypatch.setattr(launch_module.time, "perf_counter", clock)
    monkeypatch.setattr(launch_module, "write_results", rewrite)
    states = [state for _, state in launch_module.train_round(runs, tmp_path / "grid", Execution(), progress=False,
                                                              backend=backend)]
    assert states.count("done") == RUNS
    assert rewrites[0][0] == 1  # the first run saved is in the table at once
    assert rewrites[-1][0] == RUNS  # the table is complete at the end
    periodic = sum(cost for _, cost in rewrites[:-1])
    assert periodic / (RUNS * TRAIN_SECONDS + periodic) < 0.1 + 1e-9
    # spaced by at least 2 s of the clock: no more rewrites than the training time allows
    assert len(rewrites) - 1 <= RUNS * TRAIN_SECONDS / 2.0 + 1


def test_table_columns_in_order_of_first_appearance() -> None:
    """`as_table`: columns in the order rows first name them, a value a row lacks or holds as None empty; restated
    here with a plain loop over the rows."""
    rows = [{"key": "a", "acc": 1.5, "opt.lr": None}, {"key": "b", "hier.x": 2, "acc": 3},
            {"opt.lr": 0.1, "key": "c", "tune.group": "g"}]
    columns, table = as_table(rows)
    assert columns == ["key", "acc", "opt.lr", "hier.x", "tune.group"]
    assert table == [{"key": "a", "acc": "1.5", "opt.lr": "", "hier.x": "", "tune.group": ""},
                     {"key": "b", "acc": "3", "opt.lr": "", "hier.x": "2", "tune.group": ""},
                     {"key": "c", "acc": "", "opt.lr": "0.1", "hier.x": "", "tune.group": "g"}]


def test_results_csv_is_what_csv_dictwriter_writes_of_the_rows(tmp_path: Path) -> None:
    """`write_results` writes plain lists; the bytes are those the standard library's `csv.DictWriter` (what it used
    before) writes of the same columns and rows."""
    cache = write_synthetic_cache(tmp_path / "tiny.h5", num_classes=3, dim=8, views=1, shots=(1, 2), seeds=(1, 2))
    out = tmp_path / "grid"
    launch_module.launch(GridSpec([str(cache)], ["zeroshot", "linear-probe"], [1, 2], [1, 2],
                                  options={"linear-probe.epochs": ["1"], "min_steps": ["0"]}), out, progress=False)
    columns, rows = as_table(collect_rows(out))
    expected = io.StringIO(newline="")
    writer = csv.DictWriter(expected, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    assert (out / "results.csv").read_bytes() == expected.getvalue().encode()
    assert len(rows) == 8  # 2 methods × 2 shots × 2 seeds
