"""The training loop over cached features: one random augmented view per sample per epoch, with the optimiser and
learning-rate schedule the method's `TrainRecipe` names (the shared recipe: AdamW, cosine stepped every step).

No DataLoader and no encoder: every tensor is already on the device. Deterministic for a given seed and device.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from lathadapter.adapter.evaluate import accuracy
from lathadapter.adapter.graphed import Graphed, graphable, graphs_on
from lathadapter.adapter.methods.base import Method, warn_no_val_subset
from lathadapter.adapter.options import OptionError
from lathadapter.adapter.recipes import RecipeFacts, build_optimizer, build_scheduler
from lathadapter.cache.store import FewShotData

if TYPE_CHECKING:
    from rich.progress import Progress


def optimiser_imports() -> None:
    """Import what the first torch optimiser built in a process imports (torch._dynamo, 1.3-2.3 s on a 2-core CPU)
    before a training's clock starts, so that a grid's first run is timed as the others are; a process that trains
    nothing (a report, the rerun of a finished grid) never pays it. Ctrl-C and SIGTERM wait for the import's end
    (`signals_deferred`)."""
    if "torch._dynamo" in sys.modules:
        return
    with signals_deferred(signal.SIGINT, signal.SIGTERM):
        import torch._dynamo  # noqa: F401


@contextlib.contextmanager
def signals_deferred(*signums: int) -> Iterator[None]:
    """Hold the signals `signums` while the block runs, then deliver them (in the main thread; elsewhere, as they
    come). A Ctrl-C inside torch._dynamo's import broke it half-way: `fit` then ended in a RuntimeError traceback
    ("Error calling __set_name__ ..."), was killed by the signal after saying it was interrupted, or trained on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)  # its own handler runs now, as if it had come just after the block


SELECTIONS = ("last", "val")
# The views training draws from: the cached augmented views (Tip-Adapter's and the field's habit), or those and the
# clean view together (for worlds where augmentation loses what the class is).
TRAIN_VIEWS = ("augmented", "all")


@dataclass
class TrainResult:
    """What training did: steps, epochs, wall time, the epoch kept, and what `after_training` chose."""

    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    selected_epoch: int | None = None
    val_accuracy: float | None = None
    chosen: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    batch_runs: int = 1  # runs trained together with this one, itself included (`adapter.batched`)
    batch_mode: str = "alone"  # alone, lockstep (one loop, own forward passes) or stacked (one vmapped model)
    cuda_graph: bool = False  # whether its steps were replayed from captured CUDA graphs (`adapter.graphed`)
    diverged: str | None = None  # why the run diverged (`divergence`), else None: it then has no accuracy


class DivergedError(OptionError):
    """Training left a run's loss or parameters NaN or infinite: its accuracy would be a broken model's (argmax of
    NaN scores is class 0), so `fit` stops with a usage error naming the options it was trained with (a grid keeps
    the run as diverged instead, `TrainResult.diverged`)."""


def divergence(method: Method, result: TrainResult, data: FewShotData) -> str | None:
    """Why `method` (trained on `data`) diverged, when a trained parameter or a loss `result` recorded up to the kept
    epoch (`select=val` may keep one from before a divergence) is not finite; else None."""
    kept = [row for row in result.history if row["epoch"] <= (result.selected_epoch or result.epochs)]
    bad = next((row for row in kept if not all(map(math.isfinite, row.values()))), None)
    if bad is None and all(bool(torch.isfinite(p).all()) for p in trainable(method)):
        return None
    where = (f"its loss was {bad['loss']:g} at epoch {bad['epoch']} of {result.epochs}" if bad is not None
             else "its trained parameters hold NaN or infinite values")
    return (f"{method.name} diverged in training: {where} ({described_options(method, RecipeFacts.of(data))}); a "
            "smaller lr, or milder values of the options named, keeps it finite")


def described_options(method: Method, facts: RecipeFacts) -> str:
    """`lr=…` and the options `method` was given away from what its defaults resolve to for `facts` (under its
    `recipe`): what the user set, training values included; the values a recipe filled in are left out. For a
    message about a run."""
    options = method.options
    defaults = type(options)()
    recipe = {"recipe": options.recipe} if hasattr(options, "recipe") else {}
    own = type(method).resolve(dataclasses.replace(defaults, **recipe), facts)
    given = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
             if f.name != "lr" and getattr(options, f.name) != getattr(defaults if f.name == "recipe" else own, f.name)}
    return ", ".join(f"{k}={v!r}" for k, v in {"lr": getattr(options, "lr", None), **given}.items() if v is not None)


def finish(method: Method, data: FewShotData, result: TrainResult) -> None:
    """After training: `method` in eval mode, and `result.chosen` its settings and what its post-training searches
    chose (`after_training`), which a diverged run skips (they would score NaN)."""
    method.eval()
    with torch.no_grad():
        result.chosen = {**method.settings(), **({} if result.diverged else method.after_training(data))}


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on this thread's current CUDA stream (a no-op elsewhere): timers read around it
    measure finished work. Not the whole device: other threads' runs train on their own streams meanwhile
    (`experiments.local.InProcess`), and one of them may be capturing a graph."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def clear_grads(params: list[torch.nn.Parameter]) -> None:
    """`optimizer.zero_grad(set_to_none=True)` without its wrappers, which cost about 0.2 ms a step on a CPU."""
    for param in params:
        param.grad = None


def view_count(data: FewShotData, train_views: str = "augmented") -> int:
    """V of `training_views` without building its rows."""
    augmented = data.train_augmented.shape[1]
    return 1 if augmented == 0 else augmented + (train_views == "all")


def trainable(method: Method) -> list[torch.nn.Parameter]:
    """The parameters the trainer optimises."""
    return [p for p in method.parameters() if p.requires_grad]


def training_views(data: FewShotData, train_views: str = "augmented") -> tuple[torch.Tensor, int]:
    """The rows training draws from, `[N·V, D]` (sample i's view j is row i·V + j, so a batch is one index_select),
    and V: the augmented views (the clean view when the cache has none); `train_views="all"` puts the clean view
    first."""
    augmented = data.train_augmented
    if augmented.shape[1] == 0:
        stacked = data.train_features.unsqueeze(1)
    elif train_views == "all":
        stacked = torch.cat([data.train_features.unsqueeze(1).to(augmented.dtype), augmented], dim=1)
    else:
        stacked = augmented
    return stacked.reshape(-1, stacked.shape[-1]), stacked.shape[1]


def epoch_orders(generator: torch.Generator, n: int, num_views: int, epochs: int) -> torch.Tensor:
    """Every epoch's draws, on the CPU: each epoch a random view per sample, then a random order, drawn from
    `generator` (view first); returns [epochs, 2, n]: each epoch's samples in order, and their rows in
    `training_views`' rows. Drawn before training (nothing else draws from the run's generator), the arithmetic
    once for all epochs."""
    views, orders = [], []
    for _ in range(epochs):
        views.append(torch.randint(num_views, (n,), generator=generator))  # one random view per sample
        orders.append(torch.randperm(n, generator=generator))
    view, order = torch.stack(views), torch.stack(orders)
    return torch.stack([order, order * num_views + view.gather(1, order)], dim=1)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`; to CUDA through pinned memory without waiting: a copy from ordinary memory makes the
    host wait for the device's queued work, which on a captured run's short steps was most of a grid's wall time."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass
class Member:
    """One run of a batch: its built method, its (training view of the) few-shot set and its seed."""

    method: Method
    data: FewShotData
    seed: int


class Step(Protocol):
    """How a batch of members takes its optimiser steps: `indexed` turns the draws (`Plan.draws`: every member's
    samples in order and their rows) into the indices the step reads, once per training; `run_epoch` takes an
    epoch's steps on them cut at `starts`, and returns each member's loss and its parts at the last step; `sync`
    leaves each member's method holding its trained values (before a val evaluation and at the end)."""

    def indexed(self, draws: torch.Tensor) -> torch.Tensor: ...

    def run_epoch(self, orders: torch.Tensor, starts: range
                  ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]: ...

    def sync(self) -> None: ...


class EagerStep:
    """A step taken op by op: the members' summed loss (`losses`, what is differentiated), its backward, one
    optimiser call and one scheduler call."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def losses(self, batches: list[tuple[torch.Tensor, torch.Tensor]]
               ) -> tuple[torch.Tensor, list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """What `backward` differentiates (the members' losses on their batches, summed or as one vector), each
        member's loss, its parts."""
        raise NotImplementedError

    def backward(self, total: torch.Tensor) -> None:
        """Differentiate the sum of the members' losses, given `total` as `losses` returns it (here their sum)."""
        total.backward()

    def indexed(self, draws: torch.Tensor) -> torch.Tensor:
        """The draws [..., R, 2, n] as the step's indices: here as drawn (each member's own samples and rows)."""
        return draws

    def losses_of(self, indices: torch.Tensor
                  ) -> tuple[torch.Tensor, list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """`losses` on the batches of `indices` [2, R, b]: the members' samples in `indices[0]`, their rows in
        `indices[1]`."""
        return self.losses(list(zip(indices[0], indices[1], strict=True)))

    def run_epoch(self, orders: torch.Tensor, starts: range
                  ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """A step (`take`) on each batch of the epoch's draws `orders` [R, 2, n] in turn: member r's batch at `start`
        is its samples `orders[r, 0, start:start + b]` and their rows `orders[r, 1, start:start + b]`."""
        b = starts.step  # the batch size: starts is range(0, n, b), cut at the epoch's steps
        for start in starts:
            outputs = self.take([(order[0, start:start + b], order[1, start:start + b]) for order in orders])
        return outputs

    def take(self, batches: list[tuple[torch.Tensor, torch.Tensor]]
             ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        total, losses, parts = self.losses(batches)
        clear_grads(self.params)
        self.backward(total)
        self.optimizer.step()
        self.scheduler.step()
        return losses, parts


class Lockstep(EagerStep):
    """Each member runs its own forward pass on its own method; the losses are summed and differentiated in one
    backward pass (the sum hands each loss a gradient of exactly 1), one optimiser call updates one parameter group
    per member. A batch of one is `train`'s step, with the method's own optimiser and schedule."""

    def __init__(self, members: list[Member], plan: Plan) -> None:
        self.members = members
        self.rows = [rows for rows, _ in plan.views]
        groups = [trainable(m.method) for m in members]
        self.params = [p for group in groups for p in group]
        recipes = [m.method.train_recipe() for m in members]
        steps_per_epoch = len(plan.starts)
        if len(members) == 1:
            method = members[0].method
            self.optimizer = method.optimizer(groups[0], recipes[0])
            self.scheduler = method.scheduler(self.optimizer, recipes[0], plan.epochs, steps_per_epoch)
        else:
            self.optimizer = build_optimizer(list(zip(groups, recipes, strict=True)))
            self.scheduler = build_scheduler(self.optimizer, recipes, plan.epochs, steps_per_epoch)

    def losses(self, batches: list[tuple[torch.Tensor, torch.Tensor]]
               ) -> tuple[torch.Tensor, list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        losses, parts = [], []
        for member, rows, (batch, batch_rows) in zip(self.members, self.rows, batches, strict=True):
            loss, part = member.method.loss(rows.index_select(0, batch_rows),
                                            member.data.train_labels.index_select(0, batch))
            losses.append(loss)
            parts.append(part)
        return sum(losses[1:], losses[0]), losses, parts

    def sync(self) -> None:
        """The members' methods are what the optimiser updates: nothing to write back."""


@dataclass
class Plan:
    """The steps a batch's members share (epochs, batch starts) and what each draws its batches from: its seed's
    generator and its training rows with their view count."""

    n: int
    batch_size: int
    epochs: int
    starts: range
    device: torch.device
    generators: list[torch.Generator]
    views: list[tuple[torch.Tensor, int]]

    @staticmethod
    def of(members: list[Member], train_views: str) -> Plan:
        data = members[0].data
        recipe = members[0].method.train_recipe()
        n = len(data.train_labels)
        if n == 0:
            raise ValueError("the few-shot train set is empty")
        starts = range(0, n, recipe.batch_size)[:recipe.steps_per_epoch(n)]  # drop_last leaves the last one out
        return Plan(n, recipe.batch_size, recipe.epochs_for(n), starts, data.train_labels.device,
                    [torch.Generator().manual_seed(m.seed) for m in members],  # CPU: the same draws on every device
                    [training_views(m.data, train_views) for m in members])

    def draws(self) -> torch.Tensor:
        """Every epoch's draws [epochs, R, 2, n]: each member's from its own generator (`epoch_orders`), all in one
        copy to the device; a step cuts an epoch's batches at `starts`."""
        return to_device(torch.stack([epoch_orders(g, self.n, v, self.epochs)
                                      for g, (_, v) in zip(self.generators, self.views, strict=True)], dim=1),
                         self.device)


def optimise(members: list[Member], make_step: Callable[[list[Member], Plan], EagerStep], select: str,
             train_views: str, results: list[TrainResult], progress: Progress | None = None,
             graphs: bool | None = None) -> None:
    """The training loop, for one run (a batch of one) or several trained together: every member's batches of every
    epoch are drawn first, each from its own generator (`Plan.draws`); each epoch takes the steps `make_step` builds
    (`Lockstep`, or `batched.Stacked`; with `graphs`, default `graphed.graphs_on` the device, replayed from CUDA
    graphs when the methods allow it), records each member's last-batch loss and its parts, and under
    `select="val"` keeps each member's first best epoch on its few-shot val set; the kept states are loaded at the
    end."""
    plan = Plan.of(members, train_views)
    eager = make_step(members, plan)
    methods = [m.method for m in members]
    captured = (graphs_on(plan.device) if graphs is None else graphs) and graphable(methods)
    step: Step = Graphed(eager, plan.epochs * len(plan.starts), methods, plan.device.type == "cuda",
                         plan.batch_size) if captured else eager
    steps_per_epoch = len(plan.starts)
    best: list[tuple[dict[str, Any] | None, float]] = [(None, -1.0)] * len(members)
    task = (progress.add_task(f"train {members[0].method.name}", total=plan.epochs)
            if progress is not None else None)
    recorded: list[torch.Tensor] = []  # each epoch's members' losses and parts, one row: read back after training
    names: list[list[str]] = []
    for member in members:
        member.method.train()
    draws = step.indexed(plan.draws())
    for epoch in range(plan.epochs):
        losses, parts = step.run_epoch(draws[epoch], plan.starts)
        # a copy (a captured step's outputs are overwritten by the next replay), kept on the device: reading it
        # now would make the host wait for the device every epoch
        names = names or [list(part) for part in parts]
        recorded.append(torch.stack([value.detach() for loss, part in zip(losses, parts, strict=True)
                                     for value in (loss, *part.values())]).to(torch.float64))
        for result in results:
            result.steps += steps_per_epoch
        if select == "val":
            step.sync()
            _keep_best(members, results, best, epoch)
            for member in members:
                member.method.train()  # the evaluation left it in eval mode
        if task is not None:
            progress.update(task, advance=1)
    step.sync()
    for epoch, row in enumerate(torch.stack(recorded).tolist() if recorded else []):
        values = iter(row)
        for result, keys in zip(results, names, strict=True):
            loss = next(values)
            result.history.append({"epoch": epoch + 1, "loss": loss, **{k: next(values) for k in keys}})
    for (state, _), member, result in zip(best, members, results, strict=True):
        result.epochs = plan.epochs
        result.cuda_graph = isinstance(step, Graphed) and bool(step.graphs)
        if state is not None:
            member.method.load_state_dict(state)
        else:
            result.selected_epoch = plan.epochs
        result.diverged = divergence(member.method, result, member.data)


def _keep_best(members: list[Member], results: list[TrainResult], best: list[tuple[dict[str, Any] | None, float]],
               epoch: int) -> None:
    """`select=val` after an epoch: each member with a val set keeps its state when its val accuracy is the best
    so far (the first best epoch kept). An epoch whose val scores are not all finite is never kept: their argmax
    reads class 0, a chance-level accuracy that could beat earlier epochs and leave a NaN model to be tested."""
    for r, (member, result) in enumerate(zip(members, results, strict=True)):
        if not len(member.data.val_labels):
            continue
        member.method.eval()
        with torch.no_grad():
            scores = member.method.logits(member.data.val_features)
        if not bool(torch.isfinite(scores).all()):
            continue
        val_accuracy = accuracy(scores, member.data.val_labels)
        if val_accuracy > best[r][1]:
            best[r] = (copy.deepcopy(member.method.state_dict()), val_accuracy)
            result.selected_epoch, result.val_accuracy = epoch + 1, val_accuracy


def train(method: Method, data: FewShotData, seed: int, select: str = "last", progress: Progress | None = None,
          train_views: str = "augmented", graphs: bool | None = None) -> TrainResult:
    """Train `method` on `data`'s few-shot train set (`optimise` over a batch of one); `select="val"` keeps the epoch
    best on the few-shot val set; `train_views="all"` draws each sample's view among its augmented views and its
    clean view."""
    if select not in SELECTIONS:
        raise ValueError(f"select={select!r} is not valid; choose one of: {', '.join(SELECTIONS)}")
    if train_views not in TRAIN_VIEWS:
        raise ValueError(f"train_views={train_views!r} is not valid; choose one of: {', '.join(TRAIN_VIEWS)}")
    device = data.train_labels.device
    optimiser_imports()
    synchronize(device)
    start = time.perf_counter()
    result = TrainResult()
    if select == "val" and len(data.val_labels) == 0 and method.trains:
        warn_no_val_subset(method.name, ": the last epoch is kept", stacklevel=2, select_val=True)
    if method.trains and trainable(method):
        optimise([Member(method, data, seed)], Lockstep, select, train_views, [result], progress, graphs)
    finish(method, data, result)
    synchronize(device)  # the seconds cover finished work on an asynchronous device
    result.seconds = time.perf_counter() - start
    return result
