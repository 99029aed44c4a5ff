"""Several runs of one method trained together: the fast twin of `trainer.train` for grids (`grid --batch-runs`).

Each member keeps everything of its own: its model, its few-shot set, its seed's generator and so its batches, its
recipe's learning rate, weight decay and ε, its optimiser state, its epoch selection and history. Two ways to share
the work of a step:

- **stacked** (members that differ only in seed and few-shot subset, of a method whose loss vmaps:
  `Method.stackable`): the parameters are stacked along a leading run dimension, the loss is `torch.func.vmap`ped
  over it (batched matrix products, one kernel per op for all runs) and one optimiser updates the stacked tensors;
  every update is elementwise, so each run's optimiser state is its own. Equal to training alone within float
  rounding (batched products sum in another order).
- **lockstep** (any other members whose recipes take the same steps: `lockstep_key`; members may differ in any
  option): each member runs its own forward pass; the losses are summed and differentiated in one backward pass,
  one optimiser call updates one parameter group per run, one scheduler call steps every group. The parameters of
  different runs never meet and the sum's backward hands each loss a gradient of exactly 1, so every run equals
  `trainer.train` bit for bit on the CPU.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from lathadapter.adapter.evaluate import accuracy
from lathadapter.adapter.methods.base import Method, ProtocolWarning
from lathadapter.adapter.recipes import TrainRecipe, build_optimizer, build_scheduler
from lathadapter.adapter.trainer import (
    SELECTIONS,
    TRAIN_VIEWS,
    TrainResult,
    clear_grads,
    epoch_batches,
    synchronize,
    trainable,
    training_views,
    view_count,
)
from lathadapter.cache.store import FewShotData


@dataclass
class Member:
    """One run of a batch: its built method, its (training view of the) few-shot set and its seed."""

    method: Method
    data: FewShotData
    seed: int


Best = list[tuple[dict[str, Any] | None, float]]  # per member: the state kept and its val accuracy


def lockstep_key(member: Member, select: str, train_views: str) -> tuple[Any, ...] | None:
    """What runs trained together must share: method, device, samples, views, optimiser and schedule kinds, epochs,
    steps and batch size. None for a run with nothing for the trainer to optimise (it trains alone, at no cost)."""
    method = member.method
    if not method.trains or not trainable(method):
        return None
    if type(method).optimizer is not Method.optimizer or type(method).scheduler is not Method.scheduler:
        return None  # a method with an optimiser of its own is trained alone
    recipe, n = method.train_recipe(), len(member.data.train_labels)
    return (type(method), str(member.data.train_labels.device), n, view_count(member.data, train_views), select,
            train_views, recipe.optimizer,
            recipe.schedule, recipe.epochs_for(n), recipe.steps_per_epoch(n), recipe.batch_size,
            recipe.warmup_epochs)


def _plain_attributes(method: Method) -> dict[str, Any]:
    """A method's attributes other than its parameters, buffers and submodules (its options, what its recipe
    resolved): a stacked model runs one module's code, so its members must agree on all of them."""
    return {k: v for k, v in vars(method).items() if not k.startswith("_") and not isinstance(v, torch.Tensor)}


def stack_key(member: Member) -> tuple[Any, ...] | None:
    """What runs trained as one stacked model must share besides `lockstep_key`: a method whose loss can be vmapped
    (`Method.stackable`), and the same options, recipe and plain attributes (they differ only in seed and subset).
    None when the method does not stack."""
    method = member.method
    if not method.stackable:
        return None
    return (repr(sorted(_plain_attributes(method).items())), method.train_recipe(),
            tuple((k, tuple(v.shape), v.dtype, v.requires_grad) for k, v in method.named_parameters()),
            tuple((k, tuple(v.shape), v.dtype) for k, v in method.named_buffers()))


STACK_ENV = "LATHADAPTER_STACK"  # auto (by device), on, off
STACK_CHOICES = ("auto", "on", "off")


def stacks_on(device: torch.device) -> bool:
    """Whether runs that can stack do so on `device`: $LATHADAPTER_STACK `on` or `off`, else (`auto`) on CUDA, where
    a small run's step is kernel launches and one stacked launch serves every run, and not on the CPU, where
    benchmarks/grid.py measured stacked runs slower than lockstep (vmap's per-op dispatch and batched products cost
    more there than the per-op overhead they save)."""
    choice = os.environ.get(STACK_ENV, "auto")
    if choice not in STACK_CHOICES:
        raise ValueError(f"environment variable {STACK_ENV}={choice!r} is not valid; choose one of: "
                         f"{', '.join(STACK_CHOICES)}")
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def train_together(members: list[Member], select: str = "last", train_views: str = "augmented",
                   stack: bool | None = None) -> list[TrainResult]:
    """Train the members together (their `lockstep_key`s equal; check with `lockstep_key` first) and return each
    one's `TrainResult`, as `trainer.train` would: with `stack` (default: `stacks_on` the device), those with equal
    `stack_key`s as one stacked model, the others in lockstep. `seconds` is the batch's wall time divided among its
    members."""
    if select not in SELECTIONS:
        raise ValueError(f"select={select!r} is not valid; choose one of: {', '.join(SELECTIONS)}")
    if train_views not in TRAIN_VIEWS:
        raise ValueError(f"train_views={train_views!r} is not valid; choose one of: {', '.join(TRAIN_VIEWS)}")
    keys = {lockstep_key(m, select, train_views) for m in members}
    if len(keys) != 1 or None in keys:
        raise ValueError("runs trained together must share method, samples, views and the recipe's steps "
                         "(`lockstep_key`); train the others alone")
    if select == "val" and any(len(m.data.val_labels) == 0 for m in members):
        warnings.warn(f"{members[0].method.name}: --select val, but the cache has no few-shot val subset (as "
                      "ImageNet's): the last epoch is kept", ProtocolWarning, stacklevel=2)
    device = members[0].data.train_labels.device
    stack = stacks_on(device) if stack is None else stack
    synchronize(device)
    start = time.perf_counter()
    results = [TrainResult(batch_runs=len(members)) for _ in members]
    stacked: dict[Any, list[int]] = {}
    for i, member in enumerate(members):
        stacked.setdefault(stack_key(member) if stack else None, []).append(i)
    rest = [i for key, indices in stacked.items() for i in indices if key is None or len(indices) == 1]
    for key, indices in stacked.items():
        if key is not None and len(indices) > 1:
            _optimise_stacked([members[i] for i in indices], select, train_views, [results[i] for i in indices])
            for i in indices:
                results[i].batch_mode = "stacked"
    if rest:
        _optimise_together([members[i] for i in rest], select, train_views, [results[i] for i in rest])
        for i in rest:
            results[i].batch_mode = "lockstep"
    for member, result in zip(members, results, strict=True):
        member.method.eval()
        with torch.no_grad():
            result.chosen = {**member.method.settings(), **member.method.after_training(member.data)}
    synchronize(device)
    seconds = (time.perf_counter() - start) / len(members)
    for result in results:
        result.seconds = seconds
    return results


@dataclass
class _Plan:
    """The steps members share (epochs, batch starts) and what each draws its batches from: its seed's generator and
    its training rows with their view count."""

    n: int
    batch_size: int
    epochs: int
    starts: range
    device: torch.device
    generators: list[torch.Generator]
    views: list[tuple[torch.Tensor, int]]

    @staticmethod
    def of(members: list[Member], recipe: TrainRecipe, train_views: str) -> _Plan:
        data = members[0].data
        n = len(data.train_labels)
        starts = range(0, n, recipe.batch_size)[:recipe.steps_per_epoch(n)]  # drop_last leaves the last one out
        return _Plan(n, recipe.batch_size, recipe.epochs_for(n), starts, data.train_labels.device,
                     [torch.Generator().manual_seed(m.seed) for m in members],
                     [training_views(m.data, train_views) for m in members])

    def batches(self) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Each member's batches of the next epoch, drawn as `trainer.train` draws them."""
        return [epoch_batches(g, self.n, v, self.starts, self.batch_size, self.device)
                for g, (_, v) in zip(self.generators, self.views, strict=True)]


def _optimise_together(members: list[Member], select: str, train_views: str, results: list[TrainResult]) -> None:
    recipes = [m.method.train_recipe() for m in members]
    plan = _Plan.of(members, recipes[0], train_views)
    params = [trainable(m.method) for m in members]
    every = [p for group in params for p in group]
    optimizer = build_optimizer(list(zip(params, recipes, strict=True)))
    scheduler = build_scheduler(optimizer, recipes, plan.epochs, len(plan.starts))
    best: Best = [(None, -1.0)] * len(members)
    for epoch in range(plan.epochs):
        for member in members:
            member.method.train()
        batches = plan.batches()
        for step in range(len(plan.starts)):
            losses, parts = [], []
            for member, (rows, _), run_batches in zip(members, plan.views, batches, strict=True):
                batch, batch_rows = run_batches[step]
                loss, part = member.method.loss(rows.index_select(0, batch_rows),
                                                member.data.train_labels.index_select(0, batch))
                losses.append(loss)
                parts.append(part)
            clear_grads(every)
            sum(losses[1:], losses[0]).backward()  # each run's loss gets a gradient of exactly 1
            optimizer.step()
            scheduler.step()
        _record(results, epoch, len(plan.starts), losses, parts)
        if select == "val":
            _keep_best(members, results, best, epoch)
    _restore_best(members, results, best, plan.epochs)


def _record(results: list[TrainResult], epoch: int, steps: int, losses: list[torch.Tensor],
            parts: list[dict[str, torch.Tensor]]) -> None:
    """An epoch's steps and each member's last-batch loss and its parts, as `trainer.train` records them."""
    for result, loss, part in zip(results, losses, parts, strict=True):
        result.steps += steps
        result.history.append({"epoch": epoch + 1, "loss": float(loss.detach()),
                               **{k: float(v) for k, v in part.items()}})


def _keep_best(members: list[Member], results: list[TrainResult], best: Best, epoch: int) -> None:
    """`select=val` after an epoch: each member with a val set keeps its state when its val accuracy is the best
    so far (the first best epoch kept), as `trainer.train` does."""
    for r, (member, result) in enumerate(zip(members, results, strict=True)):
        if not len(member.data.val_labels):
            continue
        member.method.eval()
        with torch.no_grad():
            val_accuracy = accuracy(member.method.logits(member.data.val_features), member.data.val_labels)
        if val_accuracy > best[r][1]:
            best[r] = (copy.deepcopy(member.method.state_dict()), val_accuracy)
            result.selected_epoch, result.val_accuracy = epoch + 1, val_accuracy


def _restore_best(members: list[Member], results: list[TrainResult], best: Best, epochs: int) -> None:
    """Load each member's kept state (else its last epoch is the one selected)."""
    for (state, _), member, result in zip(best, members, results, strict=True):
        result.epochs = epochs
        if state is not None:
            member.method.load_state_dict(state)
        else:
            result.selected_epoch = epochs


class LossModule(torch.nn.Module):
    """The method's `loss` as a module's forward, which `torch.func.functional_call` calls."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.method.loss(features, labels)


def _optimise_stacked(members: list[Member], select: str, train_views: str, results: list[TrainResult]) -> None:
    """The members' parameters stacked along a leading run dimension, the loss vmapped over it (batched matrix
    products), one optimiser over the stacked tensors (each element's update is elementwise, so each run's state is
    its own), and the trained slices written back into each member's method."""
    from torch.func import functional_call, stack_module_state, vmap

    recipe = members[0].method.train_recipe()
    plan = _Plan.of(members, recipe, train_views)
    modules = [LossModule(m.method) for m in members]
    params, buffers = stack_module_state(modules)  # new leaves [R, ...]; requires_grad as the originals
    trained = [p for p in params.values() if p.requires_grad]
    optimizer = build_optimizer([(trained, recipe)])
    scheduler = build_scheduler(optimizer, [recipe], plan.epochs, len(plan.starts))
    loss_of = vmap(lambda p, b, x, y: functional_call(modules[0], (p, b), (x, y)))
    labels = [m.data.train_labels for m in members]
    best: Best = [(None, -1.0)] * len(members)

    def write_back() -> None:
        with torch.no_grad():
            for r, module in enumerate(modules):
                for name, param in module.named_parameters():
                    param.copy_(params[name][r])

    for epoch in range(plan.epochs):
        batches = plan.batches()
        for step in range(len(plan.starts)):
            features = torch.stack([rows.index_select(0, run_batches[step][1])
                                    for (rows, _), run_batches in zip(plan.views, batches, strict=True)])
            targets = torch.stack([y.index_select(0, run_batches[step][0])
                                   for y, run_batches in zip(labels, batches, strict=True)])
            losses, parts = loss_of(params, buffers, features, targets)
            clear_grads(trained)
            losses.sum().backward()  # each run's loss gets a gradient of exactly 1
            optimizer.step()
            scheduler.step()
        _record(results, epoch, len(plan.starts), list(losses), [{k: v[r] for k, v in parts.items()}
                                                                 for r in range(len(members))])
        if select == "val":
            write_back()
            _keep_best(members, results, best, epoch)
    write_back()
    _restore_best(members, results, best, plan.epochs)
