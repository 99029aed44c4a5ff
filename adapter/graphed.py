"""A training step captured in a CUDA graph: forward, backward and optimiser update replayed as one launch.

A small run's step on a GPU is launch overhead: a LatHAdapter step queues about two hundred kernels whose arithmetic
takes a fraction of the time it takes Python and the driver to launch them. Captured once, the step is replayed with
one call. What capture needs, and how this module provides it:

- fixed shapes and no host reads: the method's loss takes its fixed-shape form (`Method.fixed_shapes`, the form
  stacked runs vmap), which is why only `stackable` methods are captured;
- the batch in place: each step's sample and row indices are copied into the captured index buffers;
- the learning rate in place: the recipe's schedule is computed before training (`schedule_table`, the scheduler
  itself stepped over the run) and each step copies its row into the optimiser's lr tensors; Adam and AdamW take a
  tensor lr and keep their step count on the device (`capturable`), SGD takes a tensor lr in its fused form (one
  kernel for every parameter, the same update as the per-tensor one within float rounding);
- a warm-up: the first step runs uncaptured on a side stream (the optimiser's state and the libraries' workspaces
  are created there); then an epoch's full batches are captured as graphs of up to `MAX_GRAPH_STEPS` consecutive
  steps (the first epoch's steps after the warm-up, up to a chunk's start, from a graph of one step) and its short
  last batch as a graph of one step, each once, on that stream. A replay then costs the host one launch per epoch, not
  one per step: CLIP-Adapter's recipe takes 50 steps of batch 32 an epoch at 16 shots. The capture is
  `torch.cuda.graph`'s without its device-wide synchronisation and release of the allocator's cached blocks (which
  the next allocations then get back from the driver, once per capture of every run of a grid), and in the
  thread-local mode: other threads' runs go on training on their own streams meanwhile
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
# Full steps captured in one graph, replayed with one launch: an epoch's full batches up to this many (longer epochs
# replay a few graphs). Capturing costs the host one eager step's Python per step captured, once a run.
MAX_GRAPH_STEPS = 64


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


class Inner(Protocol):
    """The step a `Graphed` captures (`trainer.Lockstep`, `batched.Stacked`)."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def losses(self, batches: list[tuple[torch.Tensor, torch.Tensor]]
               ) -> tuple[torch.Tensor, list[torch.Tensor], list[dict[str, torch.Tensor]]]: ...

    def sync(self) -> None: ...


Outputs = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


class Graphed:
    """`inner`'s steps with the schedule precomputed and, with `capture`, replayed from CUDA graphs after
    `WARMUP_STEPS` uncaptured steps: `run_epoch` takes an epoch's steps (its full batches from graphs of consecutive
    steps, its short last batch from a graph of one), `take` one step; each returns the members' losses and parts of
    the last step taken.

    A full batch's step reads everything that changes from one step to the next on the device: its indices from the
    epoch's index table (`begin_epoch` writes it once an epoch) at the step's position, its learning rates from the
    schedule table at the step's number, and it advances both counters itself. Consecutive full steps are then one
    graph, and replaying it the host's only work (a short last batch still copies its indices in): an epoch costs the
    host a launch or two, which is what lets several trainer threads share one GPU."""

    def __init__(self, inner: Inner, steps: int, methods: list[Method], capture: bool, batch_size: int) -> None:
        self.inner, self.params, self.capture, self.batch_size = inner, inner.params, capture, batch_size
        for method in methods:
            method.fixed_shapes = True
        device = self.params[0].device
        groups = inner.optimizer.param_groups
        self.table = torch.tensor(schedule_table(inner.optimizer, inner.scheduler, steps), dtype=torch.float32,
                                  device=device)  # [steps, groups]
        self.lrs = [torch.tensor(float(group["lr"]), dtype=torch.float32, device=device) for group in groups]
        for group, lr in zip(groups, self.lrs, strict=True):
            group["lr"] = lr  # the optimiser reads this tensor at every step: each step writes the schedule's value
            if isinstance(inner.optimizer, torch.optim.SGD):
                group["fused"], group["foreach"] = True, False  # the SGD form that reads a tensor lr on the device
            elif device.type == "cuda":
                group["capturable"] = True  # captured or not: the same update kernels
            elif group.get("foreach"):
                group["foreach"] = False  # foreach Adam takes a tensor lr only when capturable (CUDA)
        self.count = 0  # steps taken (the host's count)
        self.number = torch.zeros(1, dtype=torch.long, device=device)  # the step's row of `table` (the device's)
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # the full batch's row of `epoch`
        self.epoch: torch.Tensor | None = None  # [full batches, 2R, batch size]: member r's samples, rows in 2r, 2r + 1
        # by (steps, None): consecutive full steps read from the epoch's table; (1, batch size): a step with its
        # index buffer
        self.graphs: dict[tuple[int, int | None], tuple[torch.cuda.CUDAGraph, torch.Tensor | None, Outputs]] = {}
        self.side = torch.cuda.Stream(device) if capture else None

    def begin_epoch(self, batches: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """Write the epoch's full batches (each member's batches, in step order) into the index table, in place."""
        full = sum(len(batch) == self.batch_size for batch, _ in batches[0])
        if not full:
            return
        table = torch.stack([torch.cat([pair[side] for pair in member[:full]]).view(full, self.batch_size)
                             for member in batches for side in (0, 1)], dim=1)
        if self.epoch is None:
            self.epoch = table
        else:
            self.epoch.copy_(table)
        self.position.zero_()

    def _compute(self, indices: torch.Tensor) -> Outputs:
        """One step on the batches of `indices` [2R, b] at the schedule's next lr: forward, backward and update (the
        grads are None on entry: backward writes them). The losses come back detached: a loss kept until the next
        step would keep its autograd graph, and so its parameters' gradient accumulators, alive across streams."""
        torch._foreach_copy_(self.lrs, list(self.table.index_select(0, self.number)[0].unbind()))
        self.number.add_(1)
        total, losses, parts = self.inner.losses([(indices[r], indices[r + 1]) for r in range(0, len(indices), 2)])
        total.backward()
        self.inner.optimizer.step()
        return [loss.detach() for loss in losses], parts

    def _step(self, indices: torch.Tensor | None) -> Outputs:
        """A step on `indices`, or (None) on the full batch at the epoch's position, which it advances."""
        if indices is None:
            assert self.epoch is not None
            indices = self.epoch.index_select(0, self.position)[0]
            self.position.add_(1)
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

    def _capture(self, indices: torch.Tensor | None, steps: int
                 ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor | None, Outputs]:
        """A graph of `steps` consecutive steps (`_step`): full batches read from the epoch's index table, or (with
        `indices`, one step) a short batch read from the buffer `indices`. Its outputs are the last step's."""
        graph = torch.cuda.CUDAGraph()
        assert self.side is not None
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                for _ in range(steps):
                    for param in self.params:
                        param.grad = None  # each step's backward allocates the grads it writes (not accumulates)
                    outputs = self._step(indices)
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(self.side)
        return graph, indices, outputs

    def _replay(self, steps: int, indices: torch.Tensor | None) -> Outputs:
        """`steps` consecutive steps from their graph (captured on first use: a capture does not run the steps, so
        they are replayed, and the counters they advance with them, once captured), reading a short batch's
        `indices` through the graph's buffer."""
        self.count += steps
        key = (steps, None if indices is None else indices.shape[1])
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(indices, steps)
        elif indices is not None:
            entry[1].copy_(indices)  # one copy into the captured buffer
        entry[0].replay()
        return entry[2]

    def take(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Outputs:
        """One optimiser step on each member's batch (sample indices, row indices): a full batch is read from the
        epoch's index table (the same indices, `begin_epoch`), a short one from `batches`."""
        full = len(batches[0][0]) == self.batch_size and self.epoch is not None
        indices = None if full else torch.stack([t for pair in batches for t in pair])
        if self.capture and self.count >= WARMUP_STEPS:
            return self._replay(1, indices)
        self.count += 1
        return self._eager(indices)

    def run_epoch(self, batches: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> Outputs:
        """An epoch's steps on each member's batches (in step order): the full batches (all but a short last one)
        from graphs of up to `MAX_GRAPH_STEPS` consecutive steps, after the warm-up's uncaptured steps."""
        self.begin_epoch(batches)
        steps = len(batches[0])
        full = sum(len(batch) == self.batch_size for batch, _ in batches[0])
        index = 0
        while index < full:
            if index % MAX_GRAPH_STEPS == 0 and self.capture and self.count >= WARMUP_STEPS:
                chunk = min(full - index, MAX_GRAPH_STEPS)
                outputs = self._replay(chunk, None)
                index += chunk
            else:  # a warm-up step, or one of the first epoch's steps after it: one at a time up to a chunk's start
                outputs = self.take([member[index] for member in batches])
                index += 1
        if full < steps:
            outputs = self.take([member[full] for member in batches])
        return outputs

    def sync(self) -> None:
        self.inner.sync()
