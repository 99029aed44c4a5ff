"""A training step captured in a CUDA graph: forward, backward and optimiser update replayed as one launch.

A small run's step on a GPU is launch overhead: a LatHAdapter step queues about two hundred kernels whose arithmetic
takes a fraction of the time it takes Python and the driver to launch them. Captured once, the step is replayed with
one call. What capture needs, and how this module provides it:

- fixed shapes and no host reads: the method's loss takes its fixed-shape form (`Method.fixed_shapes`, the form
  stacked runs vmap), which is why only `stackable` methods are captured;
- the batch in place: a full batch's step reads its sample and row indices from the epoch's index table, a short
  last batch's are copied into the captured index buffer;
- the learning rate in place: the recipe's schedule is computed before training (`schedule_table`, the scheduler
  itself stepped over the run) and each step copies its row into the optimiser's lr tensors; Adam and AdamW take a
  tensor lr and keep their step count on the device (`capturable`), SGD takes a tensor lr in its fused form (one
  kernel for every parameter, the same update as the per-tensor one within float rounding);
- a warm-up: the first step runs uncaptured on a side stream (the optimiser's state and the libraries' workspaces
  are created there), then each batch size (a full batch, the last short batch of an epoch) is captured once, on
  that stream. The capture is `torch.cuda.graph`'s without its device-wide synchronisation and release of the
  allocator's cached blocks (which the next allocations then get back from the driver, once per capture of every run
  of a grid), and in the thread-local mode: other threads' runs go on training on their own streams meanwhile
  (`experiments.local.InProcess`).

Every step is the step `trainer` would take (within float rounding: the fixed-shape form sums in another order, the
lr is a float32 tensor); without capture (on the CPU, or `capture=False`) the same code runs eagerly, which is how
the tests check it here.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch

from lathadapter.adapter.methods.base import Method
from lathadapter.adapter.options import environment_choice
from lathadapter.kernels.dispatch import get_backend

GRAPHS_ENV = "LATHADAPTER_GRAPHS"  # auto (captured on CUDA), on (also uncaptured on the CPU), off
GRAPHS_CHOICES = ("auto", "on", "off")
CAPTURABLE_OPTIMIZERS = ("adamw", "adam", "sgd")  # with a tensor lr: Adam(W) capturable, SGD fused
# Uncaptured steps before the first capture: the first step creates the optimiser's state and the libraries' handles
# and workspaces on the side stream (PyTorch's whole-network recipe takes 3; each costs a grid's every batch of runs
# an eager step, and the CUDA tests hold the captured steps to the uncaptured ones with 1)
WARMUP_STEPS = 1


def graphs_from_environment() -> str:
    """$LATHADAPTER_GRAPHS (auto, on, off), else auto."""
    return environment_choice(GRAPHS_ENV, GRAPHS_CHOICES)


def graphs_on(device: torch.device, choice: str | None = None, kernels: str | None = None) -> bool:
    """Whether steps that can be captured are (`Graphed`) under `choice` (default $LATHADAPTER_GRAPHS) and the
    kernels backend `kernels` (default the one in force): `off`; `on` (on the CPU: the same fixed-shape step without
    capture); `auto`: on CUDA under the kernels backend `auto` — a backend named explicitly (`triton`, `torch`) asks
    for that twin of the loss, op by op."""
    choice = graphs_from_environment() if choice is None else choice
    kernels = get_backend() if kernels is None else kernels
    return choice == "on" or (choice == "auto" and device.type == "cuda" and kernels == "auto")


def graphable(methods: list[Method]) -> bool:
    """Whether these methods' steps can be captured: a fixed-shape loss (`stackable`), the trainer's own optimiser
    and schedule, and one of the recipe optimisers (each takes a tensor lr here)."""
    return all(m.stackable and type(m).optimizer is Method.optimizer and type(m).scheduler is Method.scheduler
               and m.train_recipe().optimizer in CAPTURABLE_OPTIMIZERS for m in methods)


def schedule_table(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                   steps: int) -> list[list[float]]:
    """Each parameter group's learning rate at each of `steps` optimiser steps: the scheduler stepped over the whole
    run before training (as the trainer steps it, once after every optimiser step); the groups' lrs are then put
    back to their first values."""
    table = []
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": no optimiser step is taken here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            table.append([float(group["lr"]) for group in optimizer.param_groups])
            scheduler.step()
    for group, lr in zip(optimizer.param_groups, table[0] if table else [], strict=False):
        group["lr"] = lr
    return table


def batch_indices(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The members' batches (sample indices, row indices) as one step's indices [2, R, b]: the samples of every
    member, then their rows (each half contiguous, so a stacked step gathers either in one read)."""
    return torch.stack([samples for samples, _ in batches] + [rows for _, rows in batches]).view(2, len(batches), -1)


class Inner(Protocol):
    """The step a `Graphed` captures (`trainer.Lockstep`, `batched.Stacked`)."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def losses_of(self, indices: torch.Tensor
                  ) -> tuple[torch.Tensor, list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        ...

    def backward(self, total: torch.Tensor) -> None: ...

    def indexed(self, draws: torch.Tensor) -> torch.Tensor: ...

    def sync(self) -> None: ...


Outputs = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


class Graphed:
    """`inner`'s steps with the schedule precomputed and, with `capture`, replayed from CUDA graphs (one per batch
    size) after `WARMUP_STEPS` uncaptured steps. `run_epoch` takes an epoch's steps, `take` one step on given
    batches; each returns the members' losses and parts of the last step taken.

    A full batch's step reads everything that changes from one step to the next on the device: its indices from the
    epoch's index table (written once an epoch, in one copy from the epoch's draws) at the step's position, its
    learning rates from the schedule table at the step's number, and it advances both counters itself. Replaying it
    is then the host's only work (a short last batch still copies its indices in): a captured step costs the host
    one launch, which is what lets several trainer threads share one GPU.

    (Graphs of an epoch's consecutive full steps, one launch an epoch, were measured on an H200 and lost: a graph's
    launch costs the host in proportion to its kernels, and capturing more steps costs more; docs/architecture.md.)"""

    def __init__(self, inner: Inner, steps: int, methods: list[Method], capture: bool, batch_size: int) -> None:
        self.inner, self.params, self.capture, self.batch_size = inner, inner.params, capture, batch_size
        for method in methods:
            method.fixed_shapes = True
        device = self.params[0].device
        groups = inner.optimizer.param_groups
        self.table = torch.tensor(schedule_table(inner.optimizer, inner.scheduler, steps), dtype=torch.float32,
                                  device=device)  # [steps, groups]
        # the step's learning rates [1, groups], one row of `table` written in place at every step; each group reads
        # its element
        self.lrs = torch.tensor([[float(group["lr"]) for group in groups]], dtype=torch.float32, device=device)
        for group, lr in zip(groups, self.lrs[0].unbind(), strict=True):
            group["lr"] = lr  # the optimiser reads this tensor at every step: each step writes the schedule's value
            if isinstance(inner.optimizer, torch.optim.SGD):
                group["fused"], group["foreach"] = True, False  # the SGD form that reads a tensor lr on the device
            elif device.type == "cuda":
                group["capturable"] = True  # captured or not: the same update kernels
            elif group.get("foreach"):
                group["foreach"] = False  # foreach Adam takes a tensor lr only when capturable (CUDA)
        self.count = 0  # steps taken (the host's count)
        # the device's counters: the step's row of `table` and the full batch's row of `epoch` (one tensor: a full
        # batch's step advances both in one kernel)
        self.counters = torch.zeros(2, dtype=torch.long, device=device)
        self.epoch: torch.Tensor | None = None  # [full batches, 2, R, batch size]: the members' samples, then rows
        # by batch size (-1: the full batch read from `epoch`): graph, index buffer, outputs
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor | None, Outputs]] = {}
        self.side = torch.cuda.Stream(device) if capture else None

    def _write_epoch(self, orders: torch.Tensor, full: int) -> None:
        """Write the first `full` batches of the epoch's draws `orders` [R, 2, n] into the index table
        [full, 2, R, batch size] (the members' samples, then their rows), in place: one copy."""
        runs, b = len(orders), self.batch_size
        table = orders[:, :, :full * b].reshape(runs, 2, full, b).permute(2, 1, 0, 3)
        if self.epoch is None:
            self.epoch = table.contiguous()
        else:
            self.epoch.copy_(table)
        self.counters[1:].zero_()

    def _compute(self, indices: torch.Tensor) -> Outputs:
        """One step on the batches of `indices` [2, R, b]: forward, backward and update at the learning rates in
        `lrs` (the grads are None on entry: backward writes them). The losses come back detached: a loss kept until
        the next step would keep its autograd graph, and so its parameters' gradient accumulators, alive across
        streams."""
        total, losses, parts = self.inner.losses_of(indices)
        self.inner.backward(total)
        self.inner.optimizer.step()
        return [loss.detach() for loss in losses], parts

    def _step(self, indices: torch.Tensor | None) -> Outputs:
        """A step on `indices`, or (None) on the full batch at the epoch's position, at the schedule's next learning
        rates; it advances the counters (each read is queued before the add)."""
        torch.index_select(self.table, 0, self.counters[:1], out=self.lrs)  # the step's learning rates
        if indices is None:
            assert self.epoch is not None
            indices = self.epoch.index_select(0, self.counters[1:])[0]
            self.counters.add_(1)
        else:
            self.counters[:1].add_(1)
        return self._compute(indices)

    def _eager(self, indices: torch.Tensor | None) -> Outputs:
        for param in self.params:
            param.grad = None
        if self.side is None:
            return self._step(indices)
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            outputs = self._step(indices)
        torch.cuda.current_stream().wait_stream(self.side)
        return outputs

    def _capture(self, indices: torch.Tensor | None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor | None, Outputs]:
        """A graph of one step (`_step`), reading a short batch's indices from the buffer `indices`."""
        for param in self.params:
            param.grad = None  # backward inside the capture allocates the grads the graph writes
        graph = torch.cuda.CUDAGraph()
        assert self.side is not None
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                outputs = self._step(indices)
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(self.side)
        return graph, indices, outputs

    def _take(self, indices: torch.Tensor | None) -> Outputs:
        """One step: on the full batch at the epoch table's position (None), or on `indices` [2, R, b]."""
        self.count += 1
        key = -1 if indices is None else indices.shape[-1]  # the table's graph, or a graph reading its index buffer
        entry = self.graphs.get(key)
        if entry is None:
            if self.capture and self.count > WARMUP_STEPS:
                # a capture does not run the step: replay it, and the counters it advances, once captured; with
                # its own contiguous index buffer (`indices` may be a view of the run's draws)
                buffer = None if indices is None else indices.clone(memory_format=torch.contiguous_format)
                entry = self.graphs[key] = self._capture(buffer)
            else:
                return self._eager(indices)
        elif indices is not None:
            entry[1].copy_(indices)  # one copy into the captured buffer
        entry[0].replay()
        return entry[2]

    def take(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Outputs:
        """One optimiser step on each member's batch (sample indices, row indices), copied into the step."""
        return self._take(batch_indices(batches))

    def run_epoch(self, orders: torch.Tensor, starts: range) -> Outputs:
        """An epoch's steps on its draws `orders` [R, 2, n] (each member's samples in order and their rows) cut at
        `starts`: the full batches from the epoch's index table, a short last batch (up to n) copied in."""
        n, b = orders.shape[-1], self.batch_size
        full = sum(start + b <= n for start in starts)  # only the last batch can be short
        if full:
            self._write_epoch(orders, full)
        for _ in range(full):
            outputs = self._take(None)
        if full < len(starts):
            start = starts[full]
            outputs = self._take(orders[:, :, start:].transpose(0, 1))
        return outputs

    def indexed(self, draws: torch.Tensor) -> torch.Tensor:
        return self.inner.indexed(draws)

    def sync(self) -> None:
        self.inner.sync()
