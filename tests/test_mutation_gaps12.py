"""Behaviours that a twelfth mutation campaign (stop 28) found untested, in modules no earlier campaign ran (the
execution settings, the demo world, `compare --plot`): each test here fails on a mutant that the rest of the suite let
pass, and checks the code against an independent oracle (a documented rule restated, a hand-built input with a known
answer; for plots, what matplotlib was asked to draw)."""

from __future__ import annotations

import warnings

import pytest

from lathadapter.adapter.options import OptionError
from lathadapter.experiments import machine
from lathadapter.experiments.execution import Execution, RayOptions

# ------------------------------------------------------------------------------------------ the execution settings


@pytest.mark.parametrize(("options", "message"), [
    ({"trainers": 0}, "--trainers 0: must be at least 1"),
    ({"batch_runs": 0}, "--batch-runs 0: must be at least 1"),
    ({"device": None}, "the local backend trains on a device named in advance"),
    ({"graphs": "maybe"}, "graphs='maybe' is not valid"),
])
def test_the_dataclass_refuses_what_the_command_line_would(options: dict, message: str) -> None:
    """A Python caller's `Execution(...)` is checked as the command line is: no trainer threads, no runs a batch, the
    local backend without a device, a graphs value outside auto/on/off."""
    with pytest.raises(OptionError, match=message):
        Execution(**options)


def test_a_whole_gpu_per_chunk_task_is_allowed() -> None:
    """`--gpus-per-chunk` is in (0, 1]: 1 (a GPU a chunk task) is valid, above 1 is not."""
    assert RayOptions(gpus_per_chunk=1.0).gpus_per_chunk == 1.0
    with pytest.raises(OptionError, match=r"--gpus-per-chunk 1.5: must be in \(0, 1\]"):
        RayOptions(gpus_per_chunk=1.5)


@pytest.mark.parametrize(("option", "value"), [("chunk_size", 0), ("gpus_per_chunk", 0.0)])
def test_a_ray_option_of_zero_on_the_local_backend_is_refused_not_ignored(option: str, value: float) -> None:
    """`--chunk-size 0` or `--gpus-per-chunk 0` without `--backend ray` is a Ray option given to the local backend:
    refused like any other value, not let through as if it were absent."""
    with pytest.raises(OptionError, match="only for --backend ray"):
        Execution.parse(device="cpu", **{option: value})


def test_the_cpu_refuses_more_than_one_trainer_thread() -> None:
    """Trainer threads share a GPU; on the CPU, `--trainers 2` is refused (threads and workers share the cores)."""
    with pytest.raises(OptionError, match="--trainers 2: trainer threads share a GPU"):
        Execution.parse(device="cpu", trainers=2)


def test_workers_up_to_the_cpus_are_kept_and_beyond_are_lowered_with_a_warning(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    """docs/usage.md: `--workers` above the process's CPUs is lowered to them, with a warning; as many as the CPUs is
    no warning; one worker with `--threads` uses those threads, so says nothing either."""
    monkeypatch.setattr(machine, "available_cpus", lambda: 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Execution.parse(device="cpu", workers=4).workers == 4
        assert Execution.parse(device="cpu", workers=1, threads=2).workers == 1
    with pytest.warns(UserWarning, match="--workers 5: this process may use 4 CPUs; starting 4 workers"):
        assert Execution.parse(device="cpu", workers=5).workers == 4


def test_ray_defaults_are_one_driver_process_and_chunks_of_eight() -> None:
    """docs/usage.md, "Grids on a Ray cluster": one driver process, chunks of 8 runs unless `--chunk-size` says; the
    record of a run names the cluster's options."""
    execution = Execution.parse(device="cpu", backend="ray")
    assert execution.workers == 1 and execution.ray.chunk_size == 8
    record = Execution.parse(device="cpu", backend="ray", chunk_size=3).record("cpu")
    assert record["ray"] == {"address": None, "chunk_size": 3, "gpus_per_chunk": None}


def test_a_gpu_trains_on_four_trainer_threads_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/usage.md, "On a GPU": each process trains on `--trainers T` threads, default 4; given, T is kept."""
    monkeypatch.setattr(machine, "resolve_device", lambda device: "cuda")
    assert Execution.parse().trainers == 4
    assert Execution(trainers=2).trainers_on("cuda") == 2


def test_the_record_keeps_stacking_and_graphs_apart_and_a_batch_mode_only_when_known() -> None:
    """`stack` and `graphs` are recorded each as its own choice resolved on the device (`on` forces either on the CPU
    too), and `batch_mode` only when the run's is known."""
    record = Execution(stack="on", graphs="off").record("cpu")
    assert (record["stack"], record["graphs"]) == ("on", "off")
    assert "batch_mode" not in record and Execution().record("cpu", batch_mode="lockstep")["batch_mode"] == "lockstep"
