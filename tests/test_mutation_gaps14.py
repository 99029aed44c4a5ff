"""Behaviours that a fourteenth mutation campaign (stop 28), the first to mutate the Ray backend
(`experiments/ray_backend.py`), found untested: each test here fails on a mutant that the rest of the suite, its
Ray tests included, let pass, and checks the code against an independent oracle (docs/usage.md's "Grids on a Ray
cluster" restated: chunks of whole batches, a quarter of a GPU a task, one resubmission of a lost chunk's unfinished
runs, each warning text shown once). No Ray is started: `OnRay` drives a fake cluster whose chunk tasks send back
scripted results, as tests/test_mutation_gaps11.py drives `ray_cluster` with fakes."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lathadapter.adapter.options import OptionError
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments import ray_backend
from lathadapter.experiments.execution import Execution, RayOptions
from lathadapter.experiments.launch import train_round
from lathadapter.experiments.ray_backend import END_SECONDS, OnRay, Warned, end_tasks
from lathadapter.experiments.ray_cluster import RayBackendError
from lathadapter.experiments.spec import GridSpec, expand


class RayError(Exception):
    """A fake `ray.exceptions.RayError`: a worker or its node died."""


class RayTaskError(RayError):
    """A fake `ray.exceptions.RayTaskError`: the task's own code raised."""


class Exceptions:
    RayError = RayError
    RayTaskError = RayTaskError


class Ref:
    """A fake object reference: its value, or the error `ray.get` raises for it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class Stream:
    """A fake chunk task (a Ray streaming generator): the results its script sends, then its end."""

    def __init__(self, results: list[Any]) -> None:
        self.results = iter(results)

    def __next__(self) -> Ref:
        return Ref(next(self.results))

    def completed(self) -> str:
        return f"completed {id(self)}"


class FakeRay:
    """A cluster of `gpus` GPUs whose chunk tasks send back `script(chunk, attempt)`: the submissions (the chunk's
    run indices, its cache, the task's options) are recorded; the storage probe runs here."""

    exceptions = Exceptions

    def __init__(self, script: Callable[[list[int], int], list[Any]], gpus: int = 0) -> None:
        self.script, self.gpus = script, gpus
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[Stream] = []

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0, **({"GPU": float(self.gpus)} if self.gpus else {})}

    def remote(self, function: Callable[..., Any]) -> Any:
        ray = self

        class Task:
            def options(self, **options: Any) -> Any:
                class Submit:
                    def remote(self, *args: Any) -> Any:
                        if function is not ray_backend._chunk_task:
                            return Ref(function(*args))  # the storage probe
                        indices = [index for index, _ in args[1]]
                        ray.submitted.append({"indices": indices, "cache": args[0], "execution": args[3], **options})
                        return Stream(ray.script(indices, len(ray.submitted) - 1))
                return Submit()
        return Task()

    def get(self, ref: Ref) -> Any:
        if isinstance(ref.value, BaseException):
            raise ref.value
        return ref.value

    def wait(self, refs: list[Any], num_returns: int, timeout: float | None = None) -> tuple[list[Any], list[Any]]:
        return refs[:num_returns], refs[num_returns:]

    def cancel(self, stream: Stream, force: bool) -> None:
        self.cancelled.append(stream)


def each_run_back(indices: list[int], attempt: int) -> list[Any]:
    """A chunk task that finds each of its runs finished meanwhile (its index sent back, "skipped")."""
    return list(indices)


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    return write_synthetic_cache(tmp_path / "source.h5", num_classes=4, dim=8, views=1, shots=(1, 2), seeds=(1, 2),
                                 train_per_class=4, test_per_class=2, seed=0, name="source")


def on_fake(monkeypatch: pytest.MonkeyPatch, ray: FakeRay, cache: Path, out: Path, execution: Execution,
            methods: tuple[str, ...] = ("clip-adapter",)) -> list[str]:
    """Each run's state after a round of a grid (methods x shots 1, 2 x seeds 1, 2 on `cache`) on the fake cluster."""

    @contextlib.contextmanager
    def connect(address: str | None, init_options: dict[str, Any]) -> Iterator[FakeRay]:
        yield ray

    monkeypatch.setattr(ray_backend, "connect", connect)
    runs = expand(GridSpec([str(cache)], list(methods), [1, 2], [1, 2]))
    return [state for _, state in train_round(runs, out, execution, progress=False, backend=OnRay())]


def on_ray(device: str | None = "cpu", **options: Any) -> Execution:
    return Execution(device=device, backend="ray", ray=RayOptions(**options), batch_runs=None)


# ------------------------------------------------------------------------------------------ chunks and resources

def test_a_chunk_holds_whole_batches_of_runs(monkeypatch: pytest.MonkeyPatch, cache: Path, tmp_path: Path) -> None:
    """`--chunk-size` is rounded up to whole `--batch-runs` batches: on the CPU (batches of 8), `--chunk-size 3` gives
    a task the grid's 4 runs of one method, not 3 and then 1; with `--batch-runs 1`, chunks of 3 and 1."""
    ray = FakeRay(each_run_back)
    states = on_fake(monkeypatch, ray, cache, tmp_path / "out", on_ray(chunk_size=3))
    assert states == ["skipped"] * 4
    assert [sorted(s["indices"]) for s in ray.submitted] == [[0, 1, 2, 3]]
    ray = FakeRay(each_run_back)
    single = Execution(device="cpu", backend="ray", ray=RayOptions(chunk_size=3), batch_runs=1)
    on_fake(monkeypatch, ray, cache, tmp_path / "out1", single)
    assert sorted(len(s["indices"]) for s in ray.submitted) == [1, 3]


def test_chunk_tasks_take_a_quarter_gpu_on_a_gpu_cluster_and_none_on_the_cpu(
        monkeypatch: pytest.MonkeyPatch, cache: Path, tmp_path: Path) -> None:
    """Each chunk task takes one CPU, and a quarter of a GPU (`--gpus-per-chunk`) and one trainer thread when it
    trains on one; no GPU on a cluster without GPUs, where it would never be scheduled. Its cache goes to it as an
    absolute path (workers start in other folders), and Ray itself retries no task (the driver resubmits a lost
    chunk's unfinished runs)."""
    monkeypatch.chdir(cache.parent)
    relative = Path(cache.name)
    ray = FakeRay(each_run_back, gpus=1)
    on_fake(monkeypatch, ray, relative, tmp_path / "gpu", on_ray(None))
    task = ray.submitted[0]
    assert (task["num_cpus"], task["num_gpus"], task["max_retries"]) == (1, 0.25, 0)
    assert task["execution"].device == "cuda" and task["cache"] == str(cache)
    assert task["execution"].trainers == 1  # several tasks share a GPU already: one trainer thread each
    ray = FakeRay(each_run_back, gpus=1)
    on_fake(monkeypatch, ray, relative, tmp_path / "half", on_ray(None, gpus_per_chunk=0.5))
    assert ray.submitted[0]["num_gpus"] == 0.5
    ray = FakeRay(each_run_back)
    on_fake(monkeypatch, ray, relative, tmp_path / "cpu", on_ray(None))
    assert (ray.submitted[0]["num_gpus"], ray.submitted[0]["execution"].device) == (0, "cpu")


def test_cuda_on_a_cluster_without_gpus_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch, cache: Path,
                                                                tmp_path: Path) -> None:
    ray = FakeRay(each_run_back)
    with pytest.raises(OptionError, match=r"^--device cuda: the Ray cluster has no GPU; use --device cpu$"):
        on_fake(monkeypatch, ray, cache, tmp_path / "out", on_ray("cuda"))
    assert not ray.submitted


# ------------------------------------------------------------------------------------------ lost workers

def dies_after_one(indices: list[int], attempt: int) -> list[Any]:
    """A chunk task whose worker dies once it has sent back its first run."""
    return [indices[0], RayError("the worker died")]


def test_a_lost_chunk_is_resubmitted_once_with_its_unfinished_runs(monkeypatch: pytest.MonkeyPatch, cache: Path,
                                                                  tmp_path: Path) -> None:
    """A chunk whose worker dies is resubmitted `retries` times (default once) with only the runs not yet back; the
    runs still missing then are counted in the error, which tells to rerun the grid."""
    ray = FakeRay(dies_after_one)
    with pytest.raises(RayBackendError, match=r"^2 run\(s\) were lost with their Ray workers; .*rerun the grid"):
        on_fake(monkeypatch, ray, cache, tmp_path / "out", on_ray())
    first, again = ray.submitted
    assert len(first["indices"]) == 4
    assert again["indices"] == first["indices"][1:]
    ray = FakeRay(dies_after_one)
    with pytest.raises(RayBackendError, match=r"^3 run\(s\) were lost"):
        on_fake(monkeypatch, ray, cache, tmp_path / "none", on_ray(retries=0))
    assert len(ray.submitted) == 1


# ------------------------------------------------------------------------------------------ warnings

def test_a_chunk_task_sends_its_warnings_before_the_run_that_raised_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A warning a run raises on the worker is caught there and sent back (`Warned`) ahead of that run, so it is shown
    even when the worker dies before the chunk ends; the runs themselves go back unchanged, in order."""

    def train_chunk(cache, items, out, execution, extra_factory):
        for index, _ in items:
            warnings.warn(f"run {index} warned", UserWarning, stacklevel=1)
            yield index

    monkeypatch.setattr(ray_backend, "train_chunk", train_chunk)
    with warnings.catch_warnings(record=True) as here:
        warnings.simplefilter("always")
        sent = list(ray_backend._chunk_task("c.h5", [(3, None), (5, None)], "out", on_ray(), None))
    assert not here  # all sent back, none shown on the worker
    assert [type(s).__name__ if isinstance(s, Warned) else s for s in sent] == ["Warned", 3, "Warned", 5]
    assert [[str(m) for m in s.messages] for s in sent if isinstance(s, Warned)] == [["run 3 warned"],
                                                                                    ["run 5 warned"]]


def test_a_warning_sent_by_several_chunks_is_shown_once(monkeypatch: pytest.MonkeyPatch, cache: Path,
                                                         tmp_path: Path) -> None:
    """Each warning text is one line of the command, whichever task sent it back (here two chunks of 4 runs)."""

    def warn_first(indices: list[int], attempt: int) -> list[Any]:
        return [Warned([UserWarning("the cache has few images")]), *indices]

    ray = FakeRay(warn_first)
    apart = Execution(device="cpu", backend="ray", ray=RayOptions(chunk_size=4), batch_runs=1)
    with pytest.warns(UserWarning) as shown:
        states = on_fake(monkeypatch, ray, cache, tmp_path / "out", apart, ("zeroshot", "clip-adapter"))
    assert len(ray.submitted) == 2 and states == ["skipped"] * 8
    assert [str(w.message) for w in shown] == ["the cache has few images"]


# ------------------------------------------------------------------------------------------ a round stopped early

def test_a_round_stopped_early_waits_for_all_its_cancelled_tasks() -> None:
    """`end_tasks` cancels every chunk task (forced: a task training a run does not see a soft cancel) and waits
    for all of them to end, at most END_SECONDS, not for the first one alone."""
    calls: list[tuple[Any, ...]] = []

    class Cluster:
        def cancel(self, stream, force):
            calls.append(("cancel", stream, force))

        def wait(self, refs, num_returns, timeout):
            calls.append(("wait", refs, num_returns, timeout))

    streams = [Stream([]), Stream([]), Stream([])]
    end_tasks(Cluster(), streams)
    assert calls[:3] == [("cancel", stream, True) for stream in streams]
    assert calls[3:] == [("wait", [stream.completed() for stream in streams], 3, END_SECONDS)]
