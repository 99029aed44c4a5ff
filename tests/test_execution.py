"""`Execution`: parsed and checked once at the edge, its stacking and kernels defaults read from the environment,
handed to training as arguments, recorded in each run's `config.json` and never part of a run's key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lathadapter import kernels
from lathadapter.adapter.options import OptionError
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments import training
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.launch import launch
from lathadapter.experiments.run import fit
from lathadapter.experiments.spec import GridSpec

QUICK = {"epochs": ["1"], "min_steps": ["2"]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("execution") / "c.h5"
    return write_synthetic_cache(path, num_classes=5, dim=16, views=2, shots=(1,), seeds=(1, 2), train_per_class=4,
                                 test_per_class=4)


@pytest.mark.parametrize(("options", "message"), [
    ({"batch_runs": 0}, "--batch-runs 0: must be at least 1"),
    ({"backend": "gpu"}, "--backend gpu: choose local or ray"),
    ({"address": "head:6379"}, "--address head:6379: only for --backend ray"),
    ({"chunk_size": 4}, "--chunk-size 4: only for --backend ray"),
    ({"gpus_per_chunk": 0.5}, r"--gpus-per-chunk 0.5: only for --backend ray"),
    ({"backend": "ray", "gpus_per_chunk": 0.0}, r"--gpus-per-chunk 0.0: must be in \(0, 1\]"),
    ({"backend": "ray", "chunk_size": 0}, "--chunk-size 0: must be at least 1"),
    ({"workers": 0}, "--workers 0: must be at least 1"),
    ({"device": "tpu"}, "--device 'tpu' is not a device lathadapter trains on"),
])
def test_parse_refuses_bad_options_in_one_line(options: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        Execution.parse(**options)


def test_gpus_per_chunk_with_device_cpu_is_said_to_have_no_effect() -> None:
    pytest.importorskip("ray")
    with pytest.warns(UserWarning, match=r"--gpus-per-chunk 0.5 has no effect with --device cpu: chunk tasks train "
                      "on the CPU"):
        execution = Execution.parse(device="cpu", backend="ray", gpus_per_chunk=0.5)
    assert execution.ray.gpus_per_chunk == 0.5


def test_parse_settles_the_local_defaults() -> None:
    execution = Execution.parse(device="cpu")
    assert (execution.device, execution.backend, execution.workers, execution.batch_runs) == ("cpu", "local", None, 8)
    assert execution.threads == torch.get_num_threads()
    given = Execution.parse(device="cpu", threads=1, batch_runs=3)
    assert (given.threads, given.workers, given.batch_runs) == (1, 1, 3)  # --threads: this process, no workers


def test_the_dataclass_checks_what_python_callers_give() -> None:
    with pytest.raises(OptionError, match="stack='sometimes' is not valid; choose one of: auto, on, off"):
        Execution(stack="sometimes")
    with pytest.raises(OptionError, match="kernels='cuda' is not valid; choose one of: auto, triton, torch"):
        Execution(kernels="cuda")
    with pytest.raises(OptionError, match="--workers 0: must be at least 1"):
        Execution(device="cuda", workers=0)
    with pytest.raises(OptionError, match="--workers 2: for the local backend"):
        Execution(backend="ray", workers=2)


def test_stack_and_kernels_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATHADAPTER_STACK", raising=False)
    monkeypatch.delenv("LATHADAPTER_KERNELS", raising=False)
    assert (Execution().stack, Execution().kernels) == ("auto", "auto")
    monkeypatch.setenv("LATHADAPTER_STACK", "on")
    monkeypatch.setenv("LATHADAPTER_KERNELS", "torch")
    assert (Execution().stack, Execution().kernels) == ("on", "torch")
    with kernels.backend("triton"):  # the kernels backend in force, as `kernels.backend` sets it
        assert Execution().kernels == "triton"
    monkeypatch.setenv("LATHADAPTER_STACK", "sideways")
    with pytest.raises(ValueError, match="environment variable LATHADAPTER_STACK='sideways' is not valid"):
        Execution()


@pytest.mark.parametrize(("stack", "device", "stacks"), [
    ("auto", "cpu", False), ("auto", "cuda", True), ("auto", "cuda:1", True), ("on", "cpu", True),
    ("off", "cuda", False), ("off", "cpu", False),
])
def test_stacking_follows_the_setting_and_the_device(stack: str, device: str, stacks: bool) -> None:
    assert Execution(stack=stack).stacks(device) is stacks


def test_training_receives_kernels_stacking_and_graphs_as_arguments(cache: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, Any, Any]] = []
    real_run, real_together = training.run, training.run_together

    def run(*args: Any, graphs: bool | None = None) -> Any:
        seen.append((kernels.get_backend(), None, graphs))
        return real_run(*args, graphs=graphs)

    def run_together(*args: Any, stack: bool | None = None, graphs: bool | None = None) -> Any:
        seen.append((kernels.get_backend(), stack, graphs))
        return real_together(*args, stack=stack, graphs=graphs)

    monkeypatch.setattr(training, "run", run)
    monkeypatch.setattr(training, "run_together", run_together)
    spec = GridSpec([str(cache)], ["clip-adapter"], [1], [1, 2], options=QUICK)
    with kernels.backend("auto"):
        launch(spec, tmp_path / "alone", Execution(kernels="torch"), progress=False)
        launch(spec, tmp_path / "stacked", Execution(batch_runs=2, stack="on", kernels="torch", graphs="on"),
               progress=False)
        launch(spec, tmp_path / "lockstep", Execution(batch_runs=2, stack="off", kernels="torch", graphs="off"),
               progress=False)
        assert kernels.get_backend() == "auto"  # restored after training
    # graphs auto: on CUDA only (this CPU: off); on: the same fixed-shape step uncaptured on the CPU
    assert seen == [("torch", None, False), ("torch", None, False), ("torch", True, True), ("torch", False, False)]
    for folder in (tmp_path / "stacked" / "runs").iterdir():
        if folder.is_dir():
            assert _config(folder)["execution"]["graphs"] == "on"


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def test_execution_is_recorded_and_changes_no_run_key(cache: Path, tmp_path: Path) -> None:
    spec = GridSpec([str(cache)], ["zeroshot", "clip-adapter"], [1], [1, 2], options=QUICK)
    launch(spec, tmp_path / "a", Execution(), progress=False)
    launch(spec, tmp_path / "b", Execution(batch_runs=2, stack="on", kernels="torch"), progress=False)
    keys = sorted(p.name for p in (tmp_path / "a" / "runs").iterdir())
    assert len(keys) == 4 and keys == sorted(p.name for p in (tmp_path / "b" / "runs").iterdir())
    modes = set()
    for key in keys:
        a, b = _config(tmp_path / "a" / "runs" / key), _config(tmp_path / "b" / "runs" / key)
        assert a["key"] == b["key"] == key
        assert {k: v for k, v in a.items() if k != "execution"} == {k: v for k, v in b.items() if k != "execution"}
        assert a["execution"] == {"device": "cpu", "threads": torch.get_num_threads(), "workers": 1, "trainers": 1,
                                  "backend": "local", "batch_runs": 1, "stack": "off",
                                  "kernels": kernels.get_backend(), "graphs": "off", "batch_mode": "alone"}
        assert {k: b["execution"][k] for k in ("batch_runs", "stack", "kernels")} == {
            "batch_runs": 2, "stack": "on", "kernels": "torch"}
        modes.add((b["method"], b["execution"]["batch_mode"]))
    assert modes == {("zeroshot", "alone"), ("clip-adapter", "stacked")}
    # a grid resumes under other settings: every run is found finished
    again = launch(spec, tmp_path / "a", Execution(batch_runs=2, stack="on"), progress=False)
    assert (again["skipped"], again["done"]) == (4, 0)


def test_fit_records_its_execution(cache: Path, tmp_path: Path) -> None:
    metrics = fit(cache, "clip-adapter", shots=1, seed=1, out=tmp_path, device="cpu", epochs=1, min_steps=2)
    assert _config(Path(metrics["run_dir"]))["execution"] == {
        "device": "cpu", "threads": torch.get_num_threads(), "workers": 1, "trainers": 1, "backend": "local",
        "batch_runs": 1, "stack": "off", "kernels": kernels.get_backend(), "graphs": "off", "batch_mode": "alone"}
