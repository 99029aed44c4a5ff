"""How runs train, as one typed object parsed once at the edge (`Execution.parse`, from the command line's raw
values): the device, torch threads, worker processes, trainer threads, backend (this machine, or a Ray cluster and
its options), runs trained together, stacking and the kernels backend. None of it changes what a run is (its key),
only where and how fast it trains, within float rounding; each run's `config.json` records it under `execution`
(`record`)."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from lathadapter.adapter.batched import STACK_CHOICES, STACK_ENV, stacks_on
from lathadapter.adapter.graphed import GRAPHS_CHOICES, graphs_from_environment, graphs_on
from lathadapter.adapter.options import OptionError, environment_choice
from lathadapter.experiments import machine
from lathadapter.experiments.ray_cluster import check_address, import_ray
from lathadapter.kernels.dispatch import BACKENDS as KERNELS
from lathadapter.kernels.dispatch import get_backend

BACKENDS = ("local", "ray")
DEFAULT_CHUNK_SIZE = 8
DEFAULT_GPUS_PER_CHUNK = 0.25  # four chunk tasks share a GPU


@dataclass(frozen=True)
class RayOptions:
    """How a grid runs on Ray: the cluster (`address`, None: a running one found by Ray, else a local one started
    for the grid), runs per chunk task, the GPU fraction of each chunk task when it trains on a GPU (several chunks
    share a GPU; None: `DEFAULT_GPUS_PER_CHUNK`, settled once connected), how many times the driver resubmits the
    unfinished runs of a chunk whose worker died, and more `ray.init` keywords (tests: num_cpus)."""

    address: str | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    gpus_per_chunk: float | None = None
    retries: int = 1
    init_options: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        check_address(self.address)
        if self.chunk_size < 1:
            raise OptionError(f"--chunk-size {self.chunk_size}: must be at least 1")
        if self.gpus_per_chunk is not None and not 0 < self.gpus_per_chunk <= 1:
            raise OptionError(f"--gpus-per-chunk {self.gpus_per_chunk}: must be in (0, 1]")


def check_workers(workers: int) -> None:
    """`--workers` (worker processes) is at least 1."""
    if workers < 1:
        raise OptionError(f"--workers {workers}: must be at least 1 (1: train in this process)")


def check_trainers(trainers: int) -> None:
    """`--trainers` (trainer threads of each process, each on its own CUDA stream) is at least 1."""
    if trainers < 1:
        raise OptionError(f"--trainers {trainers}: must be at least 1 (1: one thread trains)")


def stack_from_environment() -> str:
    """The default of `Execution.stack`: $LATHADAPTER_STACK (auto, on, off), else auto."""
    return environment_choice(STACK_ENV, STACK_CHOICES)


@dataclass(frozen=True)
class Execution:
    """Where and how runs train. `device` None only on Ray (the cluster's: cuda when it has GPUs); `threads` None:
    torch's as set; `workers`: worker processes (1: this process), None: chosen per grid (`pool.auto_workers`);
    `trainers`: trainer threads in each process that trains, each on its own CUDA stream (`trainers.on_trainers`;
    the command line allows more than one on a GPU only), None: by the device (`machine.auto_trainers`,
    `trainers_on`); `batch_runs` None: by the device (`machine.auto_batch_runs`); `stack`: runs that can stack train
    as one stacked model (auto: on CUDA only; `batched.train_together`); `kernels`: the kernels backend training
    runs under (`kernels.dispatch`); `graphs`: steps that can be captured replay from CUDA graphs (auto: on CUDA
    under the kernels backend auto; `adapter.graphed`). `stack`, `kernels` and `graphs` default to
    $LATHADAPTER_STACK, the kernels backend in force ($LATHADAPTER_KERNELS) and $LATHADAPTER_GRAPHS."""

    device: str | None = "cpu"
    threads: int | None = None
    workers: int | None = 1
    trainers: int | None = None
    backend: str = "local"
    ray: RayOptions = field(default_factory=RayOptions)
    batch_runs: int | None = 1
    stack: str = field(default_factory=stack_from_environment)
    kernels: str = field(default_factory=get_backend)
    graphs: str = field(default_factory=graphs_from_environment)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise OptionError(f"--backend {self.backend}: choose {' or '.join(BACKENDS)}")
        if self.batch_runs is not None and self.batch_runs < 1:
            raise OptionError(f"--batch-runs {self.batch_runs}: must be at least 1 (1: every run alone)")
        if self.backend == "ray" and self.workers not in (None, 1):
            raise OptionError(f"--workers {self.workers}: for the local backend; with --backend ray use --chunk-size")
        if self.backend == "local" and self.workers is not None:
            check_workers(self.workers)
        if self.trainers is not None:
            check_trainers(self.trainers)
        if self.backend == "local" and self.device is None:
            raise OptionError("the local backend trains on a device named in advance (cpu, cuda, cuda:N)")
        if self.stack not in STACK_CHOICES:
            raise OptionError(f"stack={self.stack!r} is not valid; choose one of: {', '.join(STACK_CHOICES)}")
        if self.kernels not in KERNELS:
            raise OptionError(f"kernels={self.kernels!r} is not valid; choose one of: {', '.join(KERNELS)}")
        if self.graphs not in GRAPHS_CHOICES:
            raise OptionError(f"graphs={self.graphs!r} is not valid; choose one of: {', '.join(GRAPHS_CHOICES)}")

    @classmethod
    def parse(cls, device: str | None = None, threads: int | None = None, workers: int | None = None,
              backend: str = "local", address: str | None = None, chunk_size: int | None = None,
              gpus_per_chunk: float | None = None, batch_runs: int | None = None,
              trainers: int | None = None) -> Execution:
        """The execution of a command's raw options (`--device`, `--threads`, ...), every one checked before any
        work; torch's thread count is set here (`machine.use_threads`). Local: the device resolved (None: cuda when
        present), `--batch-runs` and `--trainers` by the device when not given, `--workers` as given (None: chosen
        per grid; 1 with `--threads` on the CPU), clamped to this process's CPUs with a warning. Ray: Ray importable,
        the device and `--batch-runs` left to the cluster when not given, `--trainers` 1 a chunk task unless given
        (several tasks share a GPU: `--gpus-per-chunk`), one driver process."""
        chosen = machine.use_threads(threads)
        if batch_runs is not None and batch_runs < 1:
            raise OptionError(f"--batch-runs {batch_runs}: must be at least 1 (1: every run alone)")
        if backend not in BACKENDS:
            raise OptionError(f"--backend {backend}: choose {' or '.join(BACKENDS)}")
        if backend == "ray":
            if workers not in (None, 1):
                raise OptionError(f"--workers {workers}: for the local backend; with --backend ray use --chunk-size")
            ray = RayOptions(address, chunk_size if chunk_size is not None else DEFAULT_CHUNK_SIZE, gpus_per_chunk)
            if gpus_per_chunk is not None and device == "cpu":
                warnings.warn(f"--gpus-per-chunk {gpus_per_chunk} has no effect with --device cpu: chunk tasks "
                              "train on the CPU", stacklevel=2)
            import_ray()  # after the values are checked: a bad value is a mistake whether or not Ray is installed
            return cls(device, chosen, 1, trainers, backend, ray, batch_runs)
        for option, value in (("--address", address), ("--chunk-size", chunk_size),
                              ("--gpus-per-chunk", gpus_per_chunk)):
            if value is not None:  # ignored without a word before
                raise OptionError(f"{option} {value}: only for --backend ray; add --backend ray, or drop {option}")
        device = machine.resolve_device(device)
        if trainers is not None:
            check_trainers(trainers)
            if trainers > 1 and device == "cpu":  # threads of torch and trainers would share the same cores
                raise OptionError(f"--trainers {trainers}: trainer threads share a GPU; on the CPU use --workers "
                                  "(worker processes) or --threads")
        if workers is None:
            workers = 1 if threads is not None and device == "cpu" else None
        else:
            check_workers(workers)
            cpus = machine.available_cpus()
            if workers > cpus:  # --workers 8 on 2 cores spawned 8 (0.4 GB each) to share 2 CPUs
                warnings.warn(f"--workers {workers}: this process may use {cpus} CPUs; starting {cpus} workers",
                              stacklevel=2)
                workers = cpus
            if workers > 1 and threads is not None:
                warnings.warn(f"--threads {threads} is not used with --workers {workers}: each worker trains with "
                              "one torch thread", stacklevel=2)
        return cls(device, chosen, workers, trainers or machine.auto_trainers(device), backend, RayOptions(),
                   batch_runs or machine.auto_batch_runs(device))

    def trainers_on(self, device: str) -> int:
        """The trainer threads of a process training on `device` (`trainers`, else `machine.auto_trainers`)."""
        return self.trainers or machine.auto_trainers(device)

    def stacks(self, device: str) -> bool:
        """Whether runs that can stack do so on `device` (`stack`, `batched.stacks_on`)."""
        return stacks_on(torch.device(device), self.stack)

    def captures(self, device: str) -> bool:
        """Whether steps that can be captured in CUDA graphs are, on `device` (`graphs`, `graphed.graphs_on`)."""
        return graphs_on(torch.device(device), self.graphs, self.kernels)

    def record(self, device: str, threads: int | None = None, batch_mode: str | None = None) -> dict[str, Any]:
        """What a run's `config.json` keeps under `execution` (provenance only, never in the key): every field as
        resolved for the run, which trained on `device` with `threads` torch threads (None: this process's), stack
        `on` or `off`, and, when known, the `batch_mode` it trained in (alone, lockstep, stacked)."""
        record: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "ray"}
        record.update(device=device, threads=threads if threads is not None else self.threads,
                      trainers=self.trainers_on(device), stack="on" if self.stacks(device) else "off",
                      graphs="on" if self.captures(device) else "off")
        if self.backend == "ray":
            record["ray"] = {"address": self.ray.address, "chunk_size": self.ray.chunk_size,
                             "gpus_per_chunk": self.ray.gpus_per_chunk}
        if batch_mode is not None:
            record["batch_mode"] = batch_mode
        return record
