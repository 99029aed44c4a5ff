"""Faults around local worker processes (`--workers N`): what a worker sends back never goes through shared memory
(a container's small /dev/shm), a save that fails in the driver (a full disk) stops the workers at once, and a
chunk's warnings reach the driver without costing its runs."""

from __future__ import annotations

import errno
import functools
import os
import warnings
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest
import torch
import torch.multiprocessing  # noqa: F401 — registers torch's reducers with the pool's pickler

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments import chunks
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.launch import launch, prepare, train_round
from lathadapter.experiments.local import WorkerProcesses
from lathadapter.experiments.pool import unpack, work_chunk
from lathadapter.experiments.spec import GridSpec, expand
from lathadapter.experiments.training import pending_runs

QUICK = {"epochs": ["1"], "min_steps": ["2"]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("faults") / "c.h5", num_classes=6, dim=16, views=2,
                                 shots=(1, 2), seeds=(1, 2, 3), train_per_class=8, test_per_class=6, seed=0)


def test_a_chunk_is_sent_back_without_shared_memory(cache: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With /dev/shm full (torch's storage sharing fails, as in a Docker container's 64 MB), the pool's pickler
    still sends a chunk's runs back, and their weights are those the same run saves when trained in one process."""
    spec = GridSpec([str(cache)], ["clip-adapter"], [1], [1], options=QUICK)
    alone = tmp_path / "alone"
    launch(spec, alone, Execution(workers=1, batch_runs=1), progress=False)
    [saved] = list((alone / "runs").iterdir())
    expected = torch.load(saved / "weights.pt")

    out = tmp_path / "worker"
    infos, keyed = prepare(expand(spec), out)
    packed = work_chunk(str(cache), pending_runs(keyed, out), str(out), Execution(workers=1, batch_runs=1), None)

    def full(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unable to allocate shared memory(shm): No space left on device (28)")

    # torch's reducers for the pool's pickler (`torch.multiprocessing`) move tensors to /dev/shm: here it is full
    reducers = {kind: full if kind.__module__.startswith("torch") else reduce
                for kind, reduce in ForkingPickler._extra_reducers.items()}
    assert torch.Tensor in reducers
    monkeypatch.setattr(ForkingPickler, "_extra_reducers", reducers)
    sent = bytes(ForkingPickler.dumps(packed))
    results, error, _ = unpack(ForkingPickler.loads(sent))
    assert error is None and len(results) == 1
    assert saved.name == keyed[0].key
    assert results[0].weights.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(results[0].weights[name], value), name


def marking_evaluator(folder: str, device: str):  # noqa: ANN201 — an Evaluator
    """Builds, in a worker, an evaluator that leaves one file per run trained (how many runs the workers trained)."""

    def mark(grid_run, outcome, data) -> dict:  # noqa: ANN001
        Path(folder, f"{os.getpid()}-{grid_run.config.method}-{grid_run.config.shots}-{grid_run.config.seed}").touch()
        return {}

    return mark


def test_a_full_disk_in_the_driver_stops_the_workers_at_once(cache: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The first save fails (ENOSPC): the error reaches the caller without the workers training the other chunks
    first (they trained all 12 runs, then the error came, the work thrown away)."""
    trained = tmp_path / "trained"
    trained.mkdir()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunks, "save_trained", full)
    spec = GridSpec([str(cache)], ["clip-adapter", "lathadapter"], [1, 2], [1, 2, 3], options={"epochs": ["30"]})
    with pytest.raises(OSError, match="No space left"):
        list(train_round(expand(spec), tmp_path / "out", Execution(workers=1, batch_runs=1), progress=False,
                         extra_factory=functools.partial(marking_evaluator, str(trained)),
                         backend=WorkerProcesses(1, chunk_size=1)))  # one worker, a run a chunk
    assert len(list(trained.iterdir())) <= 4  # the chunk saved, the one running, those queued: not all 12
    assert not list((tmp_path / "out" / "runs").glob("*/metrics.json"))


def test_two_worker_grids_on_one_folder_train_each_run_once(cache: Path, tmp_path: Path) -> None:
    """Two grid processes with worker processes share one folder: a worker trains a run only under its lock, as one
    process does, so each run is saved once and trained once but in a narrow race (at most 2 retrainings here;
    before, both trained every run and one of them threw its copy away), and the table is that of one grid."""
    import threading

    trained = tmp_path / "trained"
    trained.mkdir()
    spec = GridSpec([str(cache)], ["clip-adapter", "lathadapter"], [1, 2], [1, 2, 3], options={"epochs": ["20"]})
    out = tmp_path / "shared"
    summaries: list[dict] = []

    def grid() -> None:
        rounds = train_round(expand(spec), out, Execution(workers=2, batch_runs=1), progress=False,
                             extra_factory=functools.partial(marking_evaluator, str(trained)),
                             backend=WorkerProcesses(2, chunk_size=1))
        states = [state for _, state in rounds]
        summaries.append({state: states.count(state) for state in ("done", "skipped", "elsewhere")})

    threads = [threading.Thread(target=grid) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(s["done"] for s in summaries) == 12, summaries
    markers = sorted(p.name.split("-", 1)[1] for p in trained.iterdir())  # method-shots-seed of each training
    assert len(markers) - len(set(markers)) <= 2, markers  # a run is trained again only in the instant between a
    assert len(set(markers)) == 12  # worker letting its lock go and the driver saving it
    assert len(list((out / "runs").glob("*/metrics.json"))) == 12


class OddWarning(UserWarning):
    """A warning whose constructor takes other arguments than its text: it pickles, but cannot be rebuilt from its
    pickle (`BaseException.__reduce__` gives back the text alone)."""

    def __init__(self, name: str, value: float) -> None:
        super().__init__(f"{name}={value} is odd")


def warning_evaluator(warning: str, device: str):  # noqa: ANN201 — an Evaluator
    """Builds, in a worker, an evaluator that warns once per run: a plain UserWarning or an `OddWarning`, or a plain
    one and then fails (`failing`)."""

    def warn(grid_run, outcome, data) -> dict:  # noqa: ANN001
        warnings.warn(OddWarning("lr", 0.5) if warning == "odd" else UserWarning(f"{grid_run.config.method} scored"),
                      stacklevel=1)
        if warning == "failing":
            raise RuntimeError("scoring failed")
        return {}

    return warn


def test_a_warning_that_cannot_be_rebuilt_comes_back_as_its_built_in_category_with_the_runs(cache: Path,
                                                                                           tmp_path: Path) -> None:
    """A chunk whose runs raise a warning the driver could not unpickle sends it back as its nearest built-in
    category with the same text; before, unpickling the chunk failed in the driver and its runs were lost."""
    out = tmp_path / "worker"
    _, keyed = prepare(expand(GridSpec([str(cache)], ["clip-adapter"], [1], [1], options=QUICK)), out)
    packed = work_chunk(str(cache), pending_runs(keyed, out), str(out), Execution(workers=1, batch_runs=1),
                        functools.partial(warning_evaluator, "odd"))
    results, error, messages = unpack(packed)
    assert error is None and len(results) == 1
    assert [(type(m), str(m)) for m in messages] == [(UserWarning, "lr=0.5 is odd")]


def test_a_workers_warning_the_command_makes_an_error_is_raised_once_its_runs_are_saved(cache: Path,
                                                                                       tmp_path: Path) -> None:
    """Under a filter that makes warnings errors in the command (set by a program, which spawned workers do not
    inherit), a warning sent back with a chunk is raised after the chunk's runs are saved, not before."""
    spec = GridSpec([str(cache)], ["clip-adapter"], [1, 2], [1], options=QUICK)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="clip-adapter scored"):
            list(train_round(expand(spec), tmp_path / "out", Execution(workers=1, batch_runs=1), progress=False,
                             extra_factory=functools.partial(warning_evaluator, "plain"),
                             backend=WorkerProcesses(1, chunk_size=2)))  # one chunk of both runs
    assert len(list((tmp_path / "out" / "runs").glob("*/metrics.json"))) == 2


def test_a_warning_before_an_error_in_the_runs_trained_here_is_still_shown(cache: Path, tmp_path: Path) -> None:
    """The automatic worker count trains a first batch in the driver, its warnings caught to be shown once a grid: a
    run that warns, then fails, shows its warning before the error, as in one process (it was dropped)."""
    spec = GridSpec([str(cache)], ["clip-adapter"], [1, 2], [1], options=QUICK)
    with pytest.warns(UserWarning, match="clip-adapter scored"), pytest.raises(RuntimeError, match="scoring failed"):
        list(train_round(expand(spec), tmp_path / "out", Execution(workers=1, batch_runs=1), progress=False,
                         extra_factory=functools.partial(warning_evaluator, "failing"),
                         backend=WorkerProcesses(2, probe=True)))  # fails in the first batch, trained here
