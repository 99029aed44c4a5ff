"""Where stderr is not a terminal (Slurm, nohup, CI), progress is plain lines: one when a task starts, then one when
both 30 s have passed and 5 % of the total is done since the last line, and one at the end; never a cut rich bar."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.progress import LogProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines_of(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(("total", "seconds_per_item"), [(1000, 1.0), (40, 20.0), (7, 100.0)])
def test_a_line_at_most_every_30_s_and_every_5_percent(capsys: pytest.CaptureFixture[str], total: int,
                                                       seconds_per_item: float) -> None:
    clock = Clock()
    with LogProgress("runs", "done {done}", clock=clock) as progress:
        task = progress.add_task("grid", total=total, done=0)
        for i in range(1, total + 1):
            clock.now += seconds_per_item
            progress.update(task, advance=1, done=i)
    lines = lines_of(capsys)
    # the rule, restated: after the start line, a line is due once 30 s and 5 % of the total (at least 1) have passed
    expected, last_time, last_done = [0], 0.0, 0
    for i in range(1, total + 1):
        now = i * seconds_per_item
        if i == total or (now - last_time >= 30 and i - last_done >= max(0.05 * total, 1)):
            expected.append(i)
            last_time, last_done = now, i
    assert [int(line.split(": ")[1].split("/")[0]) for line in lines] == expected
    assert lines[0].startswith(f"grid: 0/{total} runs (0%) · done 0 · elapsed 0:00:00")
    assert lines[-1].startswith(f"grid: {total}/{total} runs (100%) · done {total} · elapsed ")
    middle = lines[len(lines) // 2]
    if 0 < len(lines) // 2 < len(lines) - 1:
        done = int(middle.split(": ")[1].split("/")[0])
        eta = (total - done) * seconds_per_item  # a constant rate: the ETA is exact
        assert f"ETA {int(eta) // 3600}:{int(eta) % 3600 // 60:02d}:{int(eta) % 60:02d}" in middle


def test_an_unfinished_task_prints_its_last_state_and_hidden_tasks_print_nothing(
        capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    with LogProgress(clock=clock) as progress:
        task = progress.add_task("grid", total=100)
        hidden = progress.add_task("hidden", total=10, visible=False)
        clock.now += 1
        progress.update(task, advance=3)
        progress.update(hidden, advance=10)
    lines = lines_of(capsys)
    assert [line.split(" · ")[0] for line in lines] == ["grid: 0/100 (0%)", "grid: 3/100 (3%)"]


def test_a_grid_logged_to_a_file_prints_plain_lines(tmp_path: Path) -> None:
    cache = write_synthetic_cache(tmp_path / "c.h5", num_classes=4, dim=8, shots=(1,), seeds=(1, 2))
    result = CliRunner().invoke(app, ["grid", "--cache", str(cache), "--method", "zeroshot", "--shots", "1",
                                      "--seeds", "1,2", "--device", "cpu", "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    assert "━" not in result.output and "…" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("grid: ") and "/2 runs" in line]
    assert lines[0].startswith("grid: 0/2 runs (0%) · done 0 · skipped 0 · running elsewhere 0")
    assert lines[-1].startswith("grid: 2/2 runs (100%) · done 2 · skipped 0")
