"""Grids, protocols and cache builds on a real local Ray cluster (`--backend ray`): the same results table as the
local backend, faults that lose only unfinished runs, the storage probe, and the install hint without Ray."""

from __future__ import annotations

import builtins
import contextlib
import csv
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import alive
from typer.testing import CliRunner

from lathadapter.adapter.options import StateError
from lathadapter.cache.store import CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments.builds import build_many
from lathadapter.experiments.execution import Execution, RayOptions
from lathadapter.experiments.launch import launch, prepare, train_round
from lathadapter.experiments.protocols import run_protocol
from lathadapter.experiments.ray_backend import OnRay
from lathadapter.experiments.spec import GridSpec, expand
from lathadapter.experiments.table import file_lock

# Columns that differ between two trainings of the same run (timings) or between processes
TIMING = {"train_seconds", "eval_seconds", "wall_seconds"}
QUICK = {"epochs": ["1"], "min_steps": ["2"]}
PACKAGE_PARENT = str(Path(__file__).resolve().parents[1].parent)


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ray_caches")
    return write_synthetic_cache(folder / "source.h5", num_classes=6, dim=16, views=2, shots=(1, 2), seeds=(1, 2),
                                 train_per_class=8, test_per_class=6, seed=0, name="source")


def on_ray(device: str | None, options: RayOptions | None = None) -> Execution:
    """The execution of `--backend ray` (runs per chunk trained together: by the device, as by default)."""
    return Execution(device=device, backend="ray", ray=options or RayOptions(), batch_runs=None)


def on_ray_states(runs: list, out: Path, options: RayOptions, on_saved=None, extra_factory=None) -> list[str]:
    """Each run's state after one round on Ray (CPU), `on_saved` called after each run saved."""
    return [state for _, state in train_round(runs, out, on_ray("cpu", options), progress=False,
                                              extra_factory=extra_factory, backend=OnRay(on_saved))]


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def test_ray_grid_writes_the_same_results_as_the_local_backend(cluster, cache: Path, tmp_path: Path) -> None:
    spec = GridSpec([str(cache)], ["zeroshot", "clip-adapter"], [1, 2], [1, 2], options=QUICK)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray task (num_cpus=1): the same float sums
    try:
        local = launch(spec, tmp_path / "local", progress=False)
    finally:
        torch.set_num_threads(threads)
    ray = launch(spec, tmp_path / "ray", on_ray("cpu", RayOptions(chunk_size=3)), progress=False)
    assert (local["runs"], local["done"]) == (ray["runs"], ray["done"]) == (8, 8)
    # On the CPU, Ray tasks train up to 8 runs of one method and shots together, in lockstep (bit for bit as alone):
    # only the batch columns differ
    batch = {"batch_runs", "batch_mode"}
    ray_rows, local_rows = _rows(tmp_path / "ray"), _rows(tmp_path / "local")
    assert [{k: v for k, v in r.items() if k not in batch} for r in ray_rows] == [
        {k: v for k, v in r.items() if k not in batch} for r in local_rows]
    assert {(r["method"], r["batch_mode"]) for r in ray_rows} == {("zeroshot", "alone"), ("clip-adapter", "lockstep")}
    local_dirs = sorted(p.name for p in (tmp_path / "local" / "runs").iterdir())
    ray_dirs = sorted(p.name for p in (tmp_path / "ray" / "runs").iterdir())
    assert ray_dirs == local_dirs  # same keys, no lock files left
    for key in ray_dirs:
        files = sorted(p.name for p in (tmp_path / "ray" / "runs" / key).iterdir())
        assert files == sorted(p.name for p in (tmp_path / "local" / "runs" / key).iterdir())
    recorded = json.loads((tmp_path / "ray" / "runs" / ray_dirs[0] / "config.json").read_text())["execution"]
    assert {k: recorded[k] for k in ("device", "backend", "workers", "trainers", "batch_runs", "threads")} == {
        "device": "cpu", "backend": "ray", "workers": 1, "trainers": 1, "batch_runs": 8, "threads": 1}  # settled
    assert recorded["ray"] == {"address": None, "chunk_size": 3, "gpus_per_chunk": 0.25}
    again = launch(spec, tmp_path / "ray", on_ray(None), progress=False)
    assert (again["done"], again["skipped"]) == (0, 8)


def test_ray_protocol_with_targets_matches_local(cluster, cache: Path, tmp_path: Path) -> None:
    target = write_synthetic_cache(tmp_path / "target.h5", num_classes=5, dim=16, views=2, shots=(1,), seeds=(1,),
                                   train_per_class=4, test_per_class=4, seed=3, name="target")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_protocol("cross-dataset", [str(cache)], tmp_path / "local", ["zeroshot", "clip-adapter"], [1],
                     [str(target)], QUICK, shots=[2], progress=False)
    finally:
        torch.set_num_threads(threads)
    summary = run_protocol("cross-dataset", [str(cache)], tmp_path / "ray", ["zeroshot", "clip-adapter"], [1],
                           [str(target)], QUICK, shots=[2], execution=on_ray(None), progress=False)
    assert summary["done"] == 2
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "local")
    assert {row["target"] for row in _rows(tmp_path / "ray")} == {"source", "target"}



def test_ray_protocol_finds_targets_given_relative_to_the_command(cluster, cache: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A `--target` relative to the command's folder is found by Ray workers started elsewhere (a cluster's nodes:
    here the workers of the cluster this process started before changing folder); it was sent to them as given."""
    write_synthetic_cache(tmp_path / "target.h5", num_classes=5, dim=16, views=2, shots=(1,), seeds=(1,),
                          train_per_class=4, test_per_class=4, seed=3, name="target")
    monkeypatch.chdir(tmp_path)
    summary = run_protocol("cross-dataset", [str(cache)], Path("ray"), ["zeroshot"], [1], ["target.h5"], {},
                           shots=[1], execution=on_ray("cpu"), progress=False)
    assert summary["done"] == 1
    assert {row["target"] for row in _rows(tmp_path / "ray")} == {"source", "target"}


def test_targets_the_workers_cannot_see_fail_clearly_before_training(cluster, cache: Path, tmp_path: Path) -> None:
    """The storage probe opens the protocol's targets too, as the chunk tasks will (`Targets`): a target the workers
    cannot open is refused at start, not reported after the runs as lost with their workers."""
    from lathadapter.experiments.protocols import Targets
    from lathadapter.experiments.ray_backend import check_shared
    from lathadapter.experiments.ray_cluster import RayBackendError

    target = write_synthetic_cache(tmp_path / "target.h5", num_classes=5, dim=16, views=2, shots=(1,), seeds=(1,),
                                   train_per_class=4, test_per_class=4, seed=3, name="target")
    (tmp_path / "out").mkdir()
    check_shared(cluster, [str(cache)], tmp_path / "out", functools.partial(Targets, [str(target)], mapped=False))
    gone = functools.partial(Targets, [str(tmp_path / "gone.h5")], mapped=False)
    with pytest.raises(RayBackendError, match=r"target caches are not visible from the Ray workers: put .*gone\.h5"):
        check_shared(cluster, [str(cache)], tmp_path / "out", gone)

def _slow_spec(cache: Path) -> GridSpec:
    # Each clip-adapter run trains many steps (~0.3-1 s): a chunk of 4 is still training when its first run is back.
    return GridSpec([str(cache)], ["clip-adapter"], [1, 2], [1, 2], options={"epochs": ["1"], "min_steps": ["600"]})


def _check_each_run_once(out: Path, runs: int) -> None:
    rows = _rows(out)
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)) == runs
    folders = [p for p in (out / "runs").iterdir() if p.is_dir()]
    assert sorted(p.name for p in folders) == sorted(keys)
    for folder in folders:
        assert "wall_seconds" in json.loads((folder / "metrics.json").read_text())
    assert not list((out / "runs").glob("*.lock"))


def killer(killed: list[int]):
    """A callback for each saved run that kills (SIGKILL) the worker process of the first one, recording its pid."""

    def kill_first(trained) -> None:
        if not killed:
            killed.append(trained.pid)
            os.kill(trained.pid, signal.SIGKILL)

    return kill_first


def test_a_killed_worker_loses_only_its_unfinished_runs(cluster, cache: Path, tmp_path: Path) -> None:
    from lathadapter.experiments.ray_cluster import RayBackendError

    spec, out = _slow_spec(cache), tmp_path / "grid"
    runs = expand(spec)
    killed: list[int] = []
    kill_first = killer(killed)

    def slow_after_the_first(device: str):  # pickled by value to the worker: its own list there
        evaluated = []

        def evaluate(grid_run, outcome, data):
            if evaluated:  # each run the worker saves after its first takes 2 s more, so the kill sent when the first
                time.sleep(2)  # is saved lands before the chunk ends, however loaded the machine (CI failed once)
            evaluated.append(grid_run)
            return {}
        return evaluate

    with pytest.raises(RayBackendError, match="rerun the grid") as error:
        on_ray_states(runs, out, RayOptions(chunk_size=len(runs), retries=0), kill_first, slow_after_the_first)
    assert killed
    first = [p for p in (out / "runs").iterdir() if (p / "metrics.json").exists()]
    assert 1 <= len(first) < len(runs), str(error.value)
    states = on_ray_states(runs, out, RayOptions(chunk_size=len(runs)))
    # The rerun trains exactly the runs the kill lost: every run trained once in all.
    assert states.count("done") == len(runs) - len(first)
    assert states.count("skipped") == len(first)
    _check_each_run_once(out, len(runs))


def test_the_driver_resubmits_a_killed_chunk(cluster, cache: Path, tmp_path: Path) -> None:
    spec, out = _slow_spec(cache), tmp_path / "grid"
    runs = expand(spec)
    killed: list[int] = []
    kill_first = killer(killed)

    states = on_ray_states(runs, out, RayOptions(chunk_size=len(runs), retries=1), kill_first)
    assert killed and states.count("done") == len(runs)
    _check_each_run_once(out, len(runs))


def test_an_error_raised_in_a_chunk_task_stops_the_grid_with_its_message(cluster, cache: Path, tmp_path: Path) -> None:
    """A chunk task that raises (the code's own error, not a lost worker) ends the grid with that error, as the local
    backend does: it is neither resubmitted nor reported as runs lost with their workers, its message hidden."""
    from lathadapter.experiments.ray_cluster import RayBackendError

    def failing(device: str):  # pickled by value to the workers: a closure
        def evaluate(grid_run, outcome, data):
            raise ValueError("the evaluator failed: target classes do not match")
        return evaluate

    spec = GridSpec([str(cache)], ["zeroshot"], [1], [1, 2])
    with pytest.raises(ValueError) as error:
        launch(spec, tmp_path / "grid", on_ray("cpu", RayOptions(chunk_size=1)), progress=False,
               extra_factory=failing)
    assert not isinstance(error.value, RayBackendError)
    assert str(error.value) == "the evaluator failed: target classes do not match"
    assert not list((tmp_path / "grid" / "runs").glob("*/metrics.json"))

def test_a_round_stopped_early_cancels_its_chunk_tasks(cluster, cache: Path, tmp_path: Path) -> None:
    """A round stopped early on a cluster that outlives it (Ctrl-C in a notebook connected to a cluster) ends its
    chunk tasks: they no longer train runs nobody will save, under locks that kept a rerun off them ("elsewhere")."""
    spec = GridSpec([str(cache)], ["clip-adapter"], [1, 2], [1, 2], options={"epochs": ["1"], "min_steps": ["3000"]})
    runs, out = expand(spec), tmp_path / "grid"
    execution = Execution(device="cpu", backend="ray", ray=RayOptions(chunk_size=len(runs)), batch_runs=1)

    def stop(trained) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(train_round(runs, out, execution, progress=False, backend=OnRay(stop)))
    # no task trains (and so locks) a run any longer: this process takes every unsaved run's lock at once
    keys = [item.key for item in prepare(runs, out)[1] if not (out / "runs" / item.key / "metrics.json").exists()]
    assert len(keys) == len(runs) - 1
    with contextlib.ExitStack() as held:
        assert all(held.enter_context(file_lock(out / "runs" / f"{key}.lock", wait=False)) for key in keys)
    states = [state for _, state in train_round(runs, out, execution, progress=False)]
    assert sorted(states) == ["done"] * (len(runs) - 1) + ["skipped"]
    _check_each_run_once(out, len(runs))

def test_caches_the_workers_cannot_see_fail_clearly(cluster, cache: Path, tmp_path: Path) -> None:
    from lathadapter.experiments.ray_backend import check_shared
    from lathadapter.experiments.ray_cluster import RayBackendError

    (tmp_path / "out").mkdir()
    with pytest.raises(RayBackendError, match="is not visible from the Ray workers: put caches and --out on shared"):
        check_shared(cluster, [str(cache), str(tmp_path / "elsewhere.h5")], tmp_path / "out")
    check_shared(cluster, [str(cache)], tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())  # the probe's token file is gone


def test_build_many_builds_one_cache_per_dataset_on_ray(cluster, coop_dataset, tiny_clip, tmp_path: Path) -> None:
    options = dict(root=None, model=str(tiny_clip.config), pretrained=str(tiny_clip.checkpoint), shots=[1],
                   seeds=[1], views=1, device="cpu", val="subset", workers=0)
    dataset = f"split:{coop_dataset.split_file}"
    lines: list[str] = []
    results = build_many([dataset], tmp_path / "caches", "ray", log=lines.append, **options)
    [(name, path, status)] = results
    assert lines == [f"{dataset}: built (1/1 builds ended)"]  # the driver's progress: a line as each build ends
    # named as `cache build` names it: split_zhou_Shapes.json holds the dataset Shapes
    assert (name, path) == (dataset, str(tmp_path / "caches" / "Shapes.h5"))  # the path as `out` gives it
    with CacheReader(path) as reader:
        assert reader.info().subsets == [(1, 1)]
    # Resumable as `cache build`: the local backend finds it complete.
    [(_, _, again)] = build_many([dataset], tmp_path / "caches", "local", **options)
    assert (status, again) == ("built", "up to date")



def test_build_many_on_ray_finds_paths_given_relative_to_the_command(cluster, coop_dataset, tiny_clip, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A `split:` dataset, a `--model` config and a `--pretrained` checkpoint given relative to the command's folder
    are found by Ray workers started elsewhere (a cluster's nodes: here the workers of the cluster this process
    started before changing folder); they were sent to them as given. The result names the dataset and the cache as
    given (a relative path stays relative, as `cache build` prints it)."""
    monkeypatch.chdir(tmp_path)
    dataset = f"split:{os.path.relpath(coop_dataset.split_file)}"
    options = dict(root=None, model=os.path.relpath(tiny_clip.config), pretrained=os.path.relpath(tiny_clip.checkpoint),
                   shots=[1], seeds=[1], views=1, device="cpu", val="subset", workers=0)
    [(name, path, status)] = build_many([dataset], Path("caches"), "ray", **options)
    assert (name, path, status) == (dataset, "caches/Shapes.h5", "built")
    assert (tmp_path / "caches" / "Shapes.h5").is_file()
    # the same cache as a local build of the same relative arguments: nothing to rebuild
    [(_, _, again)] = build_many([dataset], Path("caches"), "local", **options)
    assert again == "up to date"
    # what a build says on its worker reaches the command (it went to the worker's stderr, late or never)
    said: list[str] = []
    [(_, _, again)] = build_many([dataset], Path("caches"), "ray", **options, log=said.append)
    assert again == "up to date"
    assert said[0] == f"{dataset}: up to date (1/1 builds ended)"
    assert said[1].startswith(f"{tmp_path / 'caches' / 'Shapes.h5'} is up to date (same fingerprint ")


def test_a_build_failing_on_ray_still_says_what_it_said_before(cluster, coop_dataset, tiny_clip,
                                                                tmp_path: Path) -> None:
    """A Ray build that fails (an empty image) after saying a line (a file of a `folder:` tree left out) sends that
    line back with its error, as a local build prints it before failing: the raised error lost it."""
    split = json.loads(coop_dataset.split_file.read_text())
    tree = tmp_path / "tree"
    for part in ("train", "test"):
        for path, _, name in split[part]:
            (tree / part / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(coop_dataset.folder / path, tree / part / name)
    first = split["train"][0][2]
    (tree / "train" / first / "notes.txt").write_text("taken on holiday")
    (tree / "test" / first / "empty.png").write_bytes(b"")
    options = dict(root=None, model=str(tiny_clip.config), pretrained=str(tiny_clip.checkpoint), shots=[1],
                   seeds=[1], views=1, device="cpu", val="subset", workers=0)
    dataset = f"folder:{tree}"
    lines: list[str] = []
    with pytest.raises(StateError, match=r"cache builds failed:\n  folder:.*empty\.png"):
        build_many([dataset], tmp_path / "caches", "ray", log=lines.append, **options)
    assert lines[0] == f"{dataset}: failed (1/1 builds ended)"
    [warned] = [line for line in lines if line.startswith("warning:")]
    assert warned.startswith(f"warning: folder:{tree}: left out 1 file of class folders that are not images: "
                             f"train/{first}/notes.txt (")


def test_backend_ray_without_ray_prints_the_install_hint(cache: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    for command in (["grid", "--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--seeds", "1"],
                    ["protocol", "few-shot", "--cache", str(cache), "--method", "zeroshot", "--seeds", "1"],
                    ["cache", "build-many", "--dataset", "dtd"]):
        result = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "out"), "--backend", "ray"])
        assert result.exit_code == 1, result.output
        assert "pip install 'lathadapter[ray]'" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "runs").exists()


def test_a_ray_grid_says_on_stderr_only_its_own_lines(cache: Path, tmp_path: Path) -> None:
    """A Ray grid's stderr holds the command's lines only: its progress, and its warnings as one `warning: …` line
    each, those of the chunk tasks too (the ignored eps of a run trained on a worker), without Ray's prefix; here
    `--gpus-per-chunk` on a cluster without GPUs, said once. Ray once added a line from each of its processes
    (`Set ray log level …`), and the workers' warnings came as Python's `file:line: ProtocolWarning:` and the
    source line, behind `(train_chunk pid=…)`."""
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", PACKAGE_PARENT), "OMP_NUM_THREADS": "1",
           "RAY_ADDRESS": "", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "lathadapter.cli", "grid", "--cache", str(cache), "--method", "clip-adapter",
               "--shots", "1", "--seeds", "1", "--set", "epochs=1", "--set", "min_steps=2", "--set", "eps=1e-6",
               "--out", str(tmp_path / "grid"), "--backend", "ray", "--gpus-per-chunk", "0.5"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert all(line.startswith(("warning: ", "grid (ray): ")) for line in lines), done.stderr
    warned = [line for line in lines if line.startswith("warning: ")]
    assert warned.count("warning: --gpus-per-chunk 0.5 has no effect: the Ray cluster has no GPU, chunk tasks train "
                        "on the CPU") == 1, done.stderr
    assert any(line.startswith("warning: clip-adapter (recipe=official) trains with SGD") and " eps has no" in line
               for line in warned), done.stderr


def test_a_ray_client_address_is_refused_in_one_line(tmp_path: Path) -> None:
    """Ray Client (`ray://`) cannot carry the chunk tasks' streamed runs: refused before any work, naming the
    address form to give instead, by every command that takes --address."""
    for command in (["grid", "--cache", str(tmp_path / "c.h5"), "--method", "zeroshot", "--shots", "1", "--seeds",
                     "1"], ["cache", "build-many", "--dataset", "dtd"]):
        result = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "out"), "--backend", "ray",
                                          "--address", "ray://head:10001"])
        assert result.exit_code == 2, result.output
        [line] = result.output.strip().splitlines()
        assert line.startswith("error: --address ray://head:10001: Ray Client (ray://) is not supported"), line
        assert "--address HOST:6379" in line
    assert not (tmp_path / "out").exists()


def test_workers_that_cannot_load_lathadapter_fail_in_one_line(cluster, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A task whose worker cannot import its function (there, another lathadapter or none; here a module only
    this process can import) ends in a RayBackendError that says to install the same lathadapter on every node,
    not in Ray's RuntimeError (a traceback)."""
    from lathadapter.experiments.ray_backend import task_error
    from lathadapter.experiments.ray_cluster import RayBackendError

    (tmp_path / "driver_only_tasks.py").write_text("def probe():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import driver_only_tasks

    with pytest.raises(cluster.exceptions.RayTaskError) as raised:
        cluster.get(cluster.remote(driver_only_tasks.probe).remote())
    error = task_error(cluster, raised.value)
    assert isinstance(error, RayBackendError)
    assert "No module named 'driver_only_tasks'" in str(error) and "on every node of the cluster" in str(error)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children, ...), read from /proc."""
    parents: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line for line in status.read_text().splitlines() if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        parents[int(status.parent.name)] = int(ppid.split()[1])
    found, todo = set(), [pid]
    while todo:
        pid = todo.pop()
        below = {child for child, parent in parents.items() if parent == pid} - found
        found |= below
        todo += below
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("how", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stopped_ray_grid_says_so_and_shuts_its_cluster_down(cache: Path, tmp_path: Path, how: str,
                                                                code: int) -> None:
    """SIGTERM (Slurm, `timeout`) or Ctrl-C of `grid --backend ray` mid-grid: one `interrupted:` line, exit 143 or
    130, the local cluster it started gone with it, and a rerun (on the local backend: the same keys) completes the
    grid. Ray's own SIGTERM handler (a stack dump, then abort: exit 134) once replaced the command's."""
    out = tmp_path / "grid"
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", PACKAGE_PARENT), "OMP_NUM_THREADS": "1",
           "RAY_ADDRESS": ""}
    command = [sys.executable, "-m", "lathadapter.cli", "grid", "--cache", str(cache), "--method", "clip-adapter",
               "--shots", "1,2", "--seeds", "1,2", "--set", "epochs=1", "--set", "min_steps=1500", "--device", "cpu",
               "--batch-runs", "1", "--out", str(out)]
    process = subprocess.Popen([*command, "--backend", "ray", "--chunk-size", "1"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(out.glob("runs/*/metrics.json")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no run finished"
        time.sleep(0.1)
    cluster_processes = descendants(process.pid)
    if how == "SIGINT":
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
    else:
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    sent = time.monotonic()
    while any(alive(pid) for pid in cluster_processes) and time.monotonic() - sent < 10:
        time.sleep(0.2)
    left = [pid for pid in cluster_processes if alive(pid)]
    for pid in left:  # leave the machine clean even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert process.returncode == code, stderr
    finished = len(list(out.glob("runs/*/metrics.json")))
    runs = "1 run" if finished == 1 else f"{finished} runs"
    assert stderr.strip().splitlines()[-1] == f"interrupted: {runs} finished, rerun the same command to resume"
    assert "Traceback" not in stderr and "SIGTERM received" not in stderr
    assert not left, f"{how}: Ray processes {left} outlived the command"
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({4 - finished} done now, {finished} already done)" in rerun.stdout
    _check_each_run_once(out, 4)
