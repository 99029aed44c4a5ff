"""Grids on local worker processes (`--workers N`): the same results table as one process, resume, and the CLI's
checks of the option."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments import local
from lathadapter.experiments.chunks import chunk_batches
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.launch import choose_backend, launch, train_round
from lathadapter.experiments.local import InProcess, WorkerProcesses
from lathadapter.experiments.machine import GPU_TRAINERS
from lathadapter.experiments.pool import WORKER_START_SECONDS, auto_workers, workers_pay
from lathadapter.experiments.protocols import run_protocol
from lathadapter.experiments.spec import GridSpec, expand
from lathadapter.experiments.training import keyed_run

# Columns that differ between two trainings of the same run
TIMING = {"train_seconds", "eval_seconds", "wall_seconds"}
QUICK = {"epochs": ["1"], "min_steps": ["2"]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("worker_caches")
    return write_synthetic_cache(folder / "source.h5", num_classes=6, dim=16, views=2, shots=(1, 2), seeds=(1, 2),
                                 train_per_class=8, test_per_class=6, seed=0, name="source")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("worker_targets") / "other.h5", num_classes=5, dim=16,
                                 views=2, shots=(1,), seeds=(1,), train_per_class=4, test_per_class=6, seed=7,
                                 name="other")


@pytest.fixture(scope="module")
def spec(cache: Path) -> GridSpec:
    return GridSpec([str(cache)], ["zeroshot", "clip-adapter", "lathadapter"], [1, 2], [1, 2], options=QUICK)


@pytest.fixture(scope="module")
def grids(spec: GridSpec, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same grid in one process (one torch thread, as each worker: the same float sums) and on two workers."""
    folder = tmp_path_factory.mktemp("worker_grids")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = launch(spec, folder / "one", progress=False)
    finally:
        torch.set_num_threads(threads)
    two = launch(spec, folder / "two", Execution(workers=2), progress=False)
    assert (one["runs"], one["done"]) == (two["runs"], two["done"]) == (12, 12)
    return {"one": folder / "one", "two": folder / "two"}


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def test_two_workers_write_the_same_results_as_one_process(grids: dict[str, Path]) -> None:
    rows = _rows(grids["two"])
    assert rows == _rows(grids["one"])
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)) == 12
    assert sorted(p.name for p in (grids["two"] / "runs").iterdir()) == sorted(keys)  # no lock left behind
    with (grids["two"] / "results.csv").open() as f:
        assert csv.DictReader(f).fieldnames == csv.DictReader((grids["one"] / "results.csv").open()).fieldnames


def test_workers_record_the_values_the_recipe_filled_as_one_process(grids: dict[str, Path]) -> None:
    for folder in sorted((grids["one"] / "runs").iterdir()):
        one = json.loads((folder / "config.json").read_text())
        two = json.loads((grids["two"] / "runs" / folder.name / "config.json").read_text())
        assert two["resolved"] == one["resolved"]
        if one["method"] == "clip-adapter":  # CoOp's lr with Dassl's defaults, concrete (the option is None)
            assert one["options"]["lr"] is None and one["resolved"]["lr"] == 2e-3


def test_a_resumed_worker_grid_trains_only_the_missing_runs(spec: GridSpec, grids: dict[str, Path],
                                                            tmp_path: Path) -> None:
    out = tmp_path / "grid"
    shutil.copytree(grids["two"], out)
    assert launch(spec, out, Execution(workers=2), progress=False)["skipped"] == 12  # no worker started
    removed = sorted((out / "runs").iterdir())[:3]
    for folder in removed:
        shutil.rmtree(folder)
    states = [state for _, state in train_round(expand(spec), out, Execution(workers=2), progress=False,
                                                backend=WorkerProcesses(2, chunk_size=1))]
    assert states.count("done") == 3 and states.count("skipped") == 9
    assert _rows(out) == _rows(grids["one"])


def test_runs_trained_together_on_workers_write_the_same_results_as_one_process(spec: GridSpec,
                                                                                 grids: dict[str, Path],
                                                                                 tmp_path: Path) -> None:
    """`--batch-runs 2` on two workers: each worker trains a chunk's runs of one method and shots two at a time, in
    lockstep on the CPU (bit for bit as alone); only the batch columns differ from the one-process grid's."""
    summary = launch(spec, tmp_path / "batched", Execution(workers=2, batch_runs=2), progress=False)
    assert summary["done"] == 12
    batch = {"batch_runs", "batch_mode"}
    rows = _rows(tmp_path / "batched")
    assert [{k: v for k, v in r.items() if k not in batch} for r in rows] == [
        {k: v for k, v in r.items() if k not in batch} for r in _rows(grids["one"])]
    modes = {(r["method"], r["batch_runs"], r["batch_mode"]) for r in rows}
    assert modes == {("zeroshot", "1", "alone"), ("clip-adapter", "2", "lockstep"), ("lathadapter", "2", "lockstep")}


def test_worker_processes_with_trainer_threads_write_the_same_results_as_one_process(
        spec: GridSpec, grids: dict[str, Path], tmp_path: Path) -> None:
    """`--workers 2 --trainers 2` (what fills a GPU from several processes; here on the CPU): each worker trains
    chunks of two whole batches on two threads; every run as in the one-process grid, saved once by the driver."""
    summary = launch(spec, tmp_path / "grid", Execution(workers=2, trainers=2, batch_runs=2), progress=False)
    assert summary["done"] == 12
    batch = {"batch_runs", "batch_mode"}
    assert [{k: v for k, v in r.items() if k not in batch} for r in _rows(tmp_path / "grid")] == [
        {k: v for k, v in r.items() if k not in batch} for r in _rows(grids["one"])]
    assert sorted(p.name for p in (tmp_path / "grid" / "runs").iterdir()) == sorted(
        r["key"] for r in _rows(grids["one"]))
    execution = json.loads(next((tmp_path / "grid" / "runs").glob("*/config.json")).read_text())["execution"]
    assert (execution["workers"], execution["trainers"], execution["batch_runs"]) == (2, 2, 2)


def test_worker_chunks_for_trainer_threads_are_whole_batches_longest_first(spec: GridSpec, cache: Path,
                                                                          tmp_path: Path) -> None:
    """Two caches, 3 methods × 2 shots × 2 seeds each, batches of two runs: chunks of two whole batches of one
    cache, the chunks with the most shots first, every run once."""
    other = tmp_path / "copy.h5"
    shutil.copyfile(cache, other)
    runs = expand(GridSpec([str(cache), str(other)], spec.methods, spec.shots, spec.seeds, options=QUICK))
    pending = [(i, keyed_run(r, "f")) for i, r in enumerate(runs)]
    chunks = chunk_batches(pending, batch_runs=2, per_chunk=2)
    assert sorted(i for chunk in chunks for i, _ in chunk) == list(range(len(runs)))
    for chunk in chunks:
        assert len({item.run.cache for _, item in chunk}) == 1 and len(chunk) <= 4
        # whole batches: each (method, shots) pair of a chunk holds both of its seeds
        pairs = [(item.run.config.method, item.run.config.shots) for _, item in chunk]
        assert all(pairs.count(pair) == 2 for pair in pairs)
    most = [max(item.run.config.shots for _, item in chunk) for chunk in chunks]
    firsts = [chunk[0][1].run.config.shots for chunk in chunks]
    assert most == firsts and firsts == sorted(firsts, reverse=True)
    assert len(chunks) == 6  # 12 batches of two seeds, two a chunk


def test_the_backend_follows_workers_and_trainers() -> None:
    """One worker: this process, on the device's trainer threads (4 on a GPU, 1 on the CPU); more: processes."""
    gpu = choose_backend(Execution(device="cuda", workers=1))
    assert isinstance(gpu, InProcess) and gpu.trainers == GPU_TRAINERS == 4
    assert choose_backend(Execution(device="cuda", workers=1, trainers=2)).trainers == 2
    assert isinstance(choose_backend(Execution(device="cuda", workers=3)), WorkerProcesses)
    cpu = choose_backend(Execution(device="cpu", workers=1))
    assert isinstance(cpu, InProcess) and cpu.trainers == 1
    record = Execution(device="cuda", workers=2).record("cuda")
    assert (record["workers"], record["trainers"]) == (2, GPU_TRAINERS)
    assert Execution(device="cpu").record("cpu")["trainers"] == 1


def _threaded_round(spec: GridSpec, out: Path, trainers: int, batch_runs: int = 1) -> list[str]:
    """A grid round on `trainers` trainer threads of this process (what `--trainers N` is on a GPU), here on the
    CPU with one torch thread, as the one-process grid."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [state for _, state in train_round(expand(spec), out, Execution(batch_runs=batch_runs),
                                                  progress=False, backend=InProcess(trainers))]
    finally:
        torch.set_num_threads(threads)


def test_trainer_threads_write_the_same_results_as_one_process(spec: GridSpec, grids: dict[str, Path],
                                                              tmp_path: Path) -> None:
    """Three trainer threads take the batches in turn (longest first): every run as in the one-process grid, each
    saved once, no lock left behind; a second round skips them all."""
    assert _threaded_round(spec, tmp_path / "three", 3) == ["done"] * 12
    assert _rows(tmp_path / "three") == _rows(grids["one"])
    assert sorted(p.name for p in (tmp_path / "three" / "runs").iterdir()) == sorted(
        r["key"] for r in _rows(grids["one"]))
    assert _threaded_round(spec, tmp_path / "three", 3) == ["skipped"] * 12
    batched = tmp_path / "batched"
    assert _threaded_round(spec, batched, 2, batch_runs=2) == ["done"] * 12
    batch = {"batch_runs", "batch_mode"}
    assert [{k: v for k, v in r.items() if k not in batch} for r in _rows(batched)] == [
        {k: v for k, v in r.items() if k not in batch} for r in _rows(grids["one"])]


def test_an_error_in_one_trainer_thread_stops_the_round_after_saving_the_others(
        spec: GridSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that fails in one thread: the round raises its error once every thread has saved the batch it was
    training, and no thread takes another batch; a rerun trains what is missing."""
    train_batch = local.train_batch

    def failing(batch, job, data_cache, extra):  # noqa: ANN001, ANN202
        if batch[0].run.config.method == "clip-adapter" and batch[0].run.config.shots == 2:
            raise ValueError("this run fails")
        return train_batch(batch, job, data_cache, extra)

    monkeypatch.setattr(local, "train_batch", failing)
    with pytest.raises(ValueError, match="this run fails"):
        _threaded_round(spec, tmp_path / "grid", 2)
    saved = {p.parent.name for p in (tmp_path / "grid" / "runs").glob("*/metrics.json")}
    assert 1 <= len(saved) < 12
    assert not list((tmp_path / "grid" / "runs").glob("*.lock"))
    monkeypatch.setattr(local, "train_batch", train_batch)
    states = _threaded_round(spec, tmp_path / "grid", 2)
    assert states.count("skipped") == len(saved) and states.count("done") == 12 - len(saved)


def test_cli_refuses_bad_worker_counts(cache: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["grid", "--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--seeds", "1", "--device", "cpu",
            "--out", str(tmp_path / "grid")]
    result = runner.invoke(app, [*base, "--workers", "0"])
    assert result.exit_code == 2
    assert "error: --workers 0: must be at least 1" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["protocol", "few-shot", "--cache", str(cache), "--method", "zeroshot", "--seeds", "1",
                                 "--shots", "1", "--device", "cpu", "--out", str(tmp_path / "p"), "--workers", "-1"])
    assert result.exit_code == 2 and "error: --workers -1: must be at least 1" in result.output
    assert not (tmp_path / "grid").exists() and not (tmp_path / "p").exists()
    result = runner.invoke(app, [*base, "--trainers", "2"])  # threads sharing the cores with torch's
    assert result.exit_code == 2 and "error: --trainers 2: trainer threads share a GPU" in result.output
    result = runner.invoke(app, [*base, "--trainers", "0"])
    assert result.exit_code == 2 and "error: --trainers 0: must be at least 1" in result.output
    result = runner.invoke(app, [*base, "--workers", "1"])  # one worker: this process, as without the option
    assert result.exit_code == 0, result.output
    assert "1 run (1 done now, 0 already done)" in result.output


def test_a_cross_dataset_protocol_on_workers_scores_the_targets_as_one_process(cache: Path, target: Path,
                                                                                tmp_path: Path) -> None:
    args = ("cross-dataset", [str(cache)])
    kwargs = dict(methods=["zeroshot", "clip-adapter"], seeds=[1, 2], targets=[str(target)], options=QUICK,
                  shots=[1, 2], progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run_protocol(*args, tmp_path / "one", **kwargs)
    finally:
        torch.set_num_threads(threads)
    two = run_protocol(*args, tmp_path / "two", execution=Execution(workers=2), **kwargs)
    assert one["done"] == two["done"] == 8
    rows = _rows(tmp_path / "two")
    assert rows == _rows(tmp_path / "one") and {r["target"] for r in rows} == {"source", "other"}


def test_the_default_worker_count_follows_the_grid_and_the_device() -> None:
    assert auto_workers(0, "cpu") == auto_workers(3, "cpu") == 1  # a small grid: this process, no worker to start
    assert auto_workers(1000, "cuda") == auto_workers(2, "cuda") == 1  # this process, with its trainer threads
    assert 1 <= auto_workers(1000, "cpu") <= (os.cpu_count() or 1)


def test_an_unguarded_script_whose_workers_die_is_told_to_guard_its_grid(cache: Path, tmp_path: Path) -> None:
    """A script that calls `launch` on worker processes at its top level: each spawned worker imports it and dies
    starting the grid again; the driver's one error says which script and that `if __name__ == "__main__":` is the
    fix (the same script guarded trains every run)."""
    import subprocess
    import sys

    body = (f"from pathlib import Path\nfrom lathadapter.experiments.execution import Execution\n"
            f"from lathadapter.experiments.launch import launch\nfrom lathadapter.experiments.spec import GridSpec\n"
            f"spec = GridSpec([{str(cache)!r}], ['zeroshot'], [1, 2], [1, 2])\n")
    run = "launch(spec, Path({out!r}), Execution(workers=2), progress=False)\n"
    script = tmp_path / "unguarded.py"
    script.write_text(body + run.format(out=str(tmp_path / "a")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    failed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert "a worker process died" in last and f"{script} starts worker processes" in last, last
    assert 'if __name__ == "__main__":' in last and "top-level code" in last, last
    guarded = tmp_path / "guarded.py"
    guarded.write_text(body + "if __name__ == '__main__':\n    " + run.format(out=str(tmp_path / "b")))
    done = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "b" / "runs").glob("*/metrics.json"))) == 4


def _auto_grid(spec: GridSpec, out: Path, monkeypatch: pytest.MonkeyPatch, pay: bool) -> list[dict]:
    """The grid with its worker count chosen automatically (two, as on 2 free CPUs) and `workers_pay` answering
    `pay`, from a process of two torch threads; every run done; each run's recorded execution."""
    import lathadapter.experiments.launch as launch_module

    monkeypatch.setattr(launch_module, "auto_workers", lambda pending, device: 2)
    monkeypatch.setattr(local, "workers_pay", lambda seconds_left, workers: pay)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # this process's; each run trains on one thread wherever it trains
    try:
        summary = launch(spec, out, Execution(workers=None), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert (summary["runs"], summary["done"]) == (12, 12)
    return [json.loads(p.read_text())["execution"] for p in out.glob("runs/*/config.json")]


def test_the_automatic_worker_count_on_real_processes_trains_every_run_once(
        spec: GridSpec, grids: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two spawned workers chosen automatically, paying after the first batch: this process trains that batch, the
    workers the rest; every run saved once, no lock left, the one-process table, and no worker left running."""
    recorded = _auto_grid(spec, tmp_path / "auto", monkeypatch, pay=True)
    assert _rows(tmp_path / "auto") == _rows(grids["one"])
    assert sorted(e["workers"] for e in recorded) == [1] + [2] * 11  # the first batch (one run) here, the rest on
    assert {e["threads"] for e in recorded} == {1}  # workers; one thread each, as the one-process table's
    assert not list((tmp_path / "auto" / "runs").glob("*.lock"))
    deadline = time.monotonic() + 30  # killed at the round's end; the kernel reaps them a moment later
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()


def test_workers_pay_when_the_runs_left_outlast_their_start() -> None:
    """W workers, each S seconds to start, finish sooner than this process alone (T seconds) when
    T / W + S < T, i.e. T > S · W / (W − 1)."""
    for workers in (2, 4, 8):
        bound = WORKER_START_SECONDS * workers / (workers - 1)
        assert workers_pay(bound * 1.01, workers) and not workers_pay(bound * 0.99, workers)
    assert not workers_pay(1e6, 1)


def test_a_grid_whose_workers_would_not_pay_never_starts_them(spec: GridSpec, grids: dict[str, Path],
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = []
    monkeypatch.setattr(local, "ProcessPoolExecutor", lambda *args, **kwargs: started.append(args))
    recorded = _auto_grid(spec, tmp_path / "here", monkeypatch, pay=False)
    assert started == []
    assert _rows(tmp_path / "here") == _rows(grids["one"])
    assert {(e["workers"], e["threads"]) for e in recorded} == {(1, 1)}


def test_a_workers_warning_is_one_line_as_the_commands(cache: Path, tmp_path: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    """A warning raised in worker processes (here `eps` under CLIP-Adapter's SGD, said where each run is built) is one
    `warning: …` line on stderr, once for all workers, as the command's own warnings are, not Python's `file:line:
    ProtocolWarning:` and the source line of the call."""
    result = CliRunner().invoke(app, ["grid", "--cache", str(cache), "--method", "clip-adapter", "--shots", "1,2",
                                      "--seeds", "1,2", "--set", "epochs=1", "--set", "min_steps=2", "--set",
                                      "eps=1e-6", "--device", "cpu", "--workers", "2", "--batch-runs", "1",
                                      "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    # the workers' own stderr is the process's, which the runner does not capture: the warning must not be there
    err = result.output + capfd.readouterr().err
    said = [line for line in err.splitlines() if "eps has no effect" in line]
    assert len(said) == 1 and said[0].startswith("warning: clip-adapter (recipe=official) trains with SGD")
    assert "ProtocolWarning" not in err and "warnings.warn(" not in err


def test_a_warning_every_worker_raises_is_shown_once(cache: Path, tmp_path: Path, capfd: pytest.CaptureFixture,
                                                     recwarn: pytest.WarningsRecorder) -> None:
    # each run asks for more k-means attribute phrases than the cache holds: every worker's runs warn; each worker
    # printed its own line, so a grid on N workers said it N times
    spec = GridSpec([str(cache)], ["lathadapter"], [1, 2], [1, 2],
                    options={**QUICK, "attr_init": ["kmeans"], "num_attributes": ["64"]})
    result = launch(spec, tmp_path / "grid", Execution(workers=2, batch_runs=1), progress=False)
    assert (result["runs"], result["done"]) == (4, 4)
    shown = [str(w.message) for w in recwarn if "attr_init=kmeans" in str(w.message)]
    assert len(shown) == 1 and "num_attributes=64" in shown[0]
    assert "attr_init=kmeans" not in capfd.readouterr().err  # no worker printed it itself
