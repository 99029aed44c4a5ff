"""The training loop over cached features: one random augmented view per sample per epoch, with the optimiser and
learning-rate schedule the method's `TrainRecipe` names (the shared recipe: AdamW, cosine stepped every step).

No DataLoader and no encoder: every tensor is already on the device. Deterministic for a given seed and device.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._dynamo  # noqa: F401  (see below)

from lathadapter.adapter.evaluate import accuracy
from lathadapter.adapter.methods.base import Method, ProtocolWarning
from lathadapter.cache.store import FewShotData

# The first torch optimiser built in a process imports torch._dynamo (about 1.3 s on a 2-core CPU). Importing it with
# this module keeps that one-time cost out of the first run's train_seconds, so a grid's runs are timed alike.

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


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a CUDA device (a no-op elsewhere): timers read around it measure finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clear_grads(params: list[torch.nn.Parameter]) -> None:
    """`optimizer.zero_grad(set_to_none=True)` without its wrappers, which cost about 0.2 ms a step on a CPU."""
    for param in params:
        param.grad = None


def view_count(data: FewShotData, train_views: str = "augmented") -> int:
    """V of `training_views` without building its rows."""
    augmented = data.train_views.shape[1]
    return 1 if augmented == 0 else augmented + (train_views == "all")


def trainable(method: Method) -> list[torch.nn.Parameter]:
    """The parameters the trainer optimises."""
    return [p for p in method.parameters() if p.requires_grad]


def training_views(data: FewShotData, train_views: str = "augmented") -> tuple[torch.Tensor, int]:
    """The rows training draws from, `[N·V, D]` (sample i's view j is row i·V + j, so a batch is one index_select),
    and V: the augmented views (the clean view when the cache has none); `train_views="all"` puts the clean view
    first."""
    augmented = data.train_views
    if augmented.shape[1] == 0:
        stacked = data.train_features.unsqueeze(1)
    elif train_views == "all":
        stacked = torch.cat([data.train_features.unsqueeze(1).to(augmented.dtype), augmented], dim=1)
    else:
        stacked = augmented
    return stacked.reshape(-1, stacked.shape[-1]), stacked.shape[1]


def epoch_batches(generator: torch.Generator, n: int, num_views: int, starts: range, batch_size: int,
                  device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's batches: a random view per sample and a random order, drawn from `generator` (view first), cut
    at `starts`; each batch as (sample indices, row indices into `training_views`' rows)."""
    view = torch.randint(num_views, (n,), generator=generator).to(device)  # one random view per sample
    order = torch.randperm(n, generator=generator).to(device)
    order_rows = order * num_views + view[order]
    return [(order[start:start + batch_size], order_rows[start:start + batch_size]) for start in starts]


def train(method: Method, data: FewShotData, seed: int, select: str = "last", progress=None,
          train_views: str = "augmented") -> TrainResult:
    """Train `method` on `data`'s few-shot train set; `select="val"` keeps the epoch best on the few-shot val set;
    `train_views="all"` draws each sample's view among its augmented views and its clean view."""
    if select not in SELECTIONS:
        raise ValueError(f"select={select!r} is not valid; choose one of: {', '.join(SELECTIONS)}")
    if train_views not in TRAIN_VIEWS:
        raise ValueError(f"train_views={train_views!r} is not valid; choose one of: {', '.join(TRAIN_VIEWS)}")
    device = data.train_labels.device
    synchronize(device)
    start = time.perf_counter()
    result = TrainResult()
    params = trainable(method)
    if select == "val" and len(data.val_labels) == 0 and method.trains:
        warnings.warn(f"{method.name}: --select val, but the cache has no few-shot val subset (as ImageNet's): the "
                      "last epoch is kept", ProtocolWarning, stacklevel=2)
    if method.trains and params:
        _optimise(method, data, params, seed, select, result, progress, train_views)
    method.eval()
    with torch.no_grad():
        result.chosen = {**method.settings(), **method.after_training(data)}
    synchronize(device)  # the seconds cover finished work on an asynchronous device
    result.seconds = time.perf_counter() - start
    return result


def _optimise(method: Method, data: FewShotData, params: list[torch.nn.Parameter], seed: int, select: str,
              result: TrainResult, progress, train_views: str = "augmented") -> None:
    recipe = method.train_recipe()
    device = data.train_labels.device
    generator = torch.Generator().manual_seed(seed)  # CPU generator: the same draws on every device
    n = len(data.train_labels)
    if n == 0:
        raise ValueError("the few-shot train set is empty")
    rows, num_views = training_views(data, train_views)
    batch_size = recipe.batch_size
    steps_per_epoch = recipe.steps_per_epoch(n)
    epochs = recipe.epochs_for(n)
    starts = range(0, n, batch_size)[:steps_per_epoch]  # with drop_last, the last partial batch is left out
    optimizer = method.optimizer(params, recipe)
    scheduler = method.scheduler(optimizer, recipe, epochs, steps_per_epoch)
    best_state, best_accuracy = None, -1.0
    task = progress.add_task(f"train {method.name}", total=epochs) if progress is not None else None
    for epoch in range(epochs):
        method.train()
        for batch, batch_rows in epoch_batches(generator, n, num_views, starts, batch_size, device):
            features = rows.index_select(0, batch_rows)
            loss, parts = method.loss(features, data.train_labels.index_select(0, batch))
            clear_grads(params)
            loss.backward()
            optimizer.step()
            scheduler.step()
            result.steps += 1
        last = {"epoch": epoch + 1, "loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
        result.history.append(last)
        if select == "val" and len(data.val_labels):
            method.eval()
            with torch.no_grad():
                val_accuracy = accuracy(method.logits(data.val_features), data.val_labels)
            if val_accuracy > best_accuracy:  # first best epoch kept
                best_state, best_accuracy = copy.deepcopy(method.state_dict()), val_accuracy
                result.selected_epoch, result.val_accuracy = epoch + 1, val_accuracy
        if task is not None:
            progress.update(task, advance=1)
    result.epochs = epochs
    if best_state is not None:
        method.load_state_dict(best_state)
    else:
        result.selected_epoch = epochs
