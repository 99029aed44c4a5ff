"""Training recipes: how the trainer optimises a method (optimiser, schedule, epochs, batches), the shared recipe,
and the helpers that resolve a baseline's official per-dataset values (docs/baselines.md)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from lathadapter.adapter.options import TrainOptions, field_types, parse_value
from lathadapter.cache.store import REBUILD, CacheError, FewShotData

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine-step", "cosine-epoch", "warmup-cosine-step")
SHARED_TRAINING = {f.name: f.default for f in dataclasses.fields(TrainOptions)}  # the shared recipe's values


@dataclass(frozen=True)
class TrainRecipe:
    """How the trainer optimises a method: optimiser, its settings, schedule, epochs and batches.

    - `adamw`: `torch.optim.AdamW(lr, weight_decay, eps)` (decoupled decay); `adam`: `torch.optim.Adam(lr,
      weight_decay, eps)` with the decay coupled to the gradient (L2), as Dassl builds it; `sgd`:
      `torch.optim.SGD(lr, momentum, weight_decay)` (coupled, no dampening, no Nesterov), as Dassl builds it.
    - `cosine-step`: `CosineAnnealingLR` stepped after every optimiser step over the whole run (Tip-Adapter-F; the
      shared recipe). `cosine-epoch`: Dassl's schedule, a constant `warmup_lr` for the first `warmup_epochs` epochs,
      then `lr (1 + cos(π (e − warmup_epochs) / epochs)) / 2` for epoch e, changed once per epoch.
      `warmup-cosine-step` (cross-modal's official `build_lr_scheduler`): step 0 at `warmup_lr`, step k < `warmup_steps`
      at `lr k / warmup_steps`, then `lr (1 + cos(π (k − warmup_steps) / H)) / 2` over the horizon H =
      `max(min_steps, epochs × steps per epoch)` (the official run's `max_iter` iterations), and 0 from step H on:
      the steps that whole epochs add beyond H leave the parameters as they are (AdamW at lr 0), so the run ends
      where the official one, of exactly `max_iter` iterations, ends.
    - Epochs run = `max(epochs, ceil(min_steps / steps per epoch))`. Steps per epoch: `ceil(N / batch_size)`, or with
      `drop_last` (Dassl's train loader) `N // batch_size` when `N >= batch_size`, else one batch of all N.
    """

    name: str = "shared"
    optimizer: str = "adamw"
    lr: float = SHARED_TRAINING["lr"]
    weight_decay: float = SHARED_TRAINING["weight_decay"]
    eps: float = SHARED_TRAINING["eps"]
    momentum: float = 0.0
    epochs: int = SHARED_TRAINING["epochs"]
    min_steps: int = SHARED_TRAINING["min_steps"]
    batch_size: int = SHARED_TRAINING["batch_size"]
    drop_last: bool = False
    schedule: str = "cosine-step"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    warmup_steps: int = 0  # read by `warmup-cosine-step` only

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS or self.schedule not in SCHEDULES:
            raise ValueError(f"unknown optimiser {self.optimizer!r} or schedule {self.schedule!r}")

    def steps_per_epoch(self, n: int) -> int:
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def epochs_for(self, n: int) -> int:
        return max(self.epochs, math.ceil(self.min_steps / self.steps_per_epoch(n)))

    def lr_at_epoch(self, epoch: int, epochs: int) -> float:
        """The learning rate of (0-based) `epoch` under `cosine-epoch`."""
        if epoch < self.warmup_epochs:
            return self.warmup_lr
        return self.lr * (1 + math.cos(math.pi * (epoch - self.warmup_epochs) / epochs)) / 2

    def horizon(self, steps_per_epoch: int) -> int:
        """The steps `warmup-cosine-step` spans: `max(min_steps, epochs × steps_per_epoch)`, the official run's
        iteration count, which the trainer's whole epochs may exceed."""
        return max(self.min_steps, self.epochs * steps_per_epoch)

    def lr_factor_at_step(self, step: int, horizon: int) -> float:
        """The learning rate of (0-based) optimiser `step` under `warmup-cosine-step` over `horizon` steps (`horizon`),
        over `lr`; 0 from step `horizon` on."""
        if step >= horizon:
            return 0.0
        if step < self.warmup_steps:
            return self.warmup_lr / self.lr if step == 0 else step / self.warmup_steps
        return (1 + math.cos(math.pi * (step - self.warmup_steps) / horizon)) / 2

    def reads(self) -> set[str]:
        """The fields its training reads (`RECIPE_READS`, `OPTIMIZER_READS`, `SCHEDULE_READS`); the others change
        nothing in it."""
        return {*RECIPE_READS, *OPTIMIZER_READS[self.optimizer], *SCHEDULE_READS[self.schedule]}

    def record(self) -> dict[str, Any]:
        """The recipe as flat values for a run's `chosen` (`recipe.NAME`); `warmup_steps` only for the schedule that
        reads it (the other recipes' records stay as they were)."""
        values = {f"recipe.{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "name" and (f.name != "warmup_steps" or self.schedule == "warmup-cosine-step")}
        return {"recipe": self.name, **values}


# The recipe fields training reads, restated from the code: every recipe's from the trainer's plan (`epochs_for`,
# `steps_per_epoch`); each optimiser's from `build_optimizer`; each schedule's from `build_scheduler` (`cosine-step`
# decays from the optimiser's lr over the plan's steps and reads nothing more). A field outside a recipe's three sets
# (`TrainRecipe.reads`) changes nothing in its training: `tests/test_unread_options.py` trains with two values of each.
RECIPE_READS = ("epochs", "min_steps", "batch_size", "drop_last")
OPTIMIZER_READS = {"adamw": ("lr", "weight_decay", "eps"), "adam": ("lr", "weight_decay", "eps"),
                   "sgd": ("lr", "momentum", "weight_decay")}
SCHEDULE_READS = {"cosine-step": (), "cosine-epoch": ("lr", "warmup_epochs", "warmup_lr"),
                  "warmup-cosine-step": ("lr", "epochs", "min_steps", "warmup_steps", "warmup_lr")}
OPTIMIZER_NAMES = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}


def unread_options(given: dict[str, Any], recipe: TrainRecipe) -> list[str]:
    """What to say, a sentence per option, of the training options the user set (`given`, by name) that `recipe` does
    not read: they change the run's key and its records but not its training. Each names the option, not its value,
    so that a grid says it once whatever values it sweeps. Of the training options (`TRAINING_NAMES`) only `eps` is
    read by some optimisers and not others; every schedule reads those it reads."""
    optimizer = OPTIMIZER_NAMES[recipe.optimizer]
    return [f"trains with {optimizer} and the {recipe.schedule} schedule: {name} has no effect there ({optimizer} "
            f"reads {', '.join(OPTIMIZER_READS[recipe.optimizer])})"
            for name in given if name in TRAINING_NAMES and name not in recipe.reads()]


def build_optimizer(groups: list[tuple[list[torch.nn.Parameter], TrainRecipe]]) -> torch.optim.Optimizer:
    """One optimiser over several runs' parameters, one parameter group per run with that run's settings (every
    recipe names the same optimiser); a single group is one run's optimiser. Each group's update is the one it would
    get alone: the optimisers update each tensor from its own state."""
    kind = groups[0][1].optimizer
    if any(recipe.optimizer != kind for _, recipe in groups):
        raise ValueError("runs trained together must use one optimiser; got "
                         f"{', '.join(sorted({recipe.optimizer for _, recipe in groups}))}")
    device = groups[0][0][0].device
    if kind == "adamw":
        # The fused AdamW (one kernel over all parameters) is 4x faster per step than the per-tensor loop on CPU.
        return torch.optim.AdamW([{"params": p, "lr": r.lr, "weight_decay": r.weight_decay, "eps": r.eps}
                                  for p, r in groups], fused=device.type in ("cpu", "cuda"))
    # foreach: one call per group for all its tensors instead of a Python loop over them (torch picks it on CUDA
    # only); on the CPU its updates equal the loop's bit for bit.
    if kind == "adam":
        return torch.optim.Adam([{"params": p, "lr": r.lr, "weight_decay": r.weight_decay, "eps": r.eps}
                                 for p, r in groups], betas=(0.9, 0.999), foreach=True)
    return torch.optim.SGD([{"params": p, "lr": r.lr, "momentum": r.momentum, "weight_decay": r.weight_decay}
                            for p, r in groups], dampening=0, nesterov=False, foreach=True)


def build_scheduler(optimizer: torch.optim.Optimizer, recipes: list[TrainRecipe], epochs: int, steps_per_epoch: int
                    ) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule the recipes name (one per parameter group, one kind), stepped after every optimiser
    step: `CosineAnnealingLR` decays each group from its own lr; `cosine-epoch` and `warmup-cosine-step` are a
    `LambdaLR` per group."""
    kinds = {recipe.schedule for recipe in recipes}
    if len(kinds) > 1:
        raise ValueError(f"runs trained together must use one schedule; got {', '.join(sorted(kinds))}")
    if recipes[0].schedule == "cosine-step":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    if recipes[0].schedule == "warmup-cosine-step":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, [lambda step, r=r: r.lr_factor_at_step(step, r.horizon(steps_per_epoch)) for r in recipes])
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda step, r=r: r.lr_at_epoch(step // steps_per_epoch, epochs) / r.lr for r in recipes])


def dataset_key(name: str) -> str:
    """The key of a cache's dataset name in the official per-dataset tables: `caltech101`, `oxford_flowers`, ...
    (the names of `cache build --dataset`); CoOp's class names of split files (`Caltech101`, `OxfordFlowers`,
    `DescribableTextures`, `FGVCAircraft`) map to the same keys; any other name is returned lower-cased."""
    squashed = re.sub(r"[^a-z0-9]", "", name.lower())
    return _DATASET_KEYS.get(squashed, name.lower())


_DATASET_KEYS = {
    "imagenet": "imagenet", "caltech101": "caltech101", "oxfordpets": "oxford_pets", "stanfordcars": "stanford_cars",
    "oxfordflowers": "oxford_flowers", "food101": "food101", "fgvcaircraft": "fgvc_aircraft", "fgvc": "fgvc_aircraft",
    "sun397": "sun397", "dtd": "dtd", "describabletextures": "dtd", "eurosat": "eurosat", "ucf101": "ucf101",
}


@dataclass(frozen=True)
class RecipeFacts:
    """What the official recipes vary by: the cache's dataset name (keys the per-dataset tables through `dataset_key`)
    and the few-shot subset's K of the run's training view (`FewShotData.shots`)."""

    dataset: str
    shots: int

    @classmethod
    def of(cls, data: FewShotData) -> RecipeFacts:
        return cls(data.dataset, data.shots)


TRAINING_NAMES = ("epochs", "min_steps", "batch_size", "lr", "weight_decay", "eps")  # TrainOptions' fields


def training_values(recipe: TrainRecipe) -> dict[str, Any]:
    """A recipe's values of the training options (`TrainOptions`' fields), by option name."""
    return {name: getattr(recipe, name) for name in TRAINING_NAMES}


def fill(options: Any, official: dict[str, Any], shared: dict[str, Any]) -> Any:
    """`options` with every option left at None set to the value of the recipe `options.recipe` names (`official` or
    `shared`, by option name), converted to the option's declared type; values set stay. Resolved options fill
    nothing."""
    values = official if options.recipe == "official" else shared
    missing = [name for name in values if getattr(options, name) is None]
    if not missing:
        return options
    hints = field_types(type(options))
    return dataclasses.replace(options, **{name: parse_value(name, hints[name], values[name]) for name in missing})


def filled_by_recipe(requested: Any, resolved: Any) -> dict[str, Any]:
    """The options a recipe filled: those left at None in `requested` and their values in `resolved`, by name."""
    return {f.name: getattr(resolved, f.name) for f in dataclasses.fields(requested)
            if getattr(requested, f.name) is None and getattr(resolved, f.name) is not None}


def recipe_from(options: Any, official: TrainRecipe, shared: TrainRecipe | None = None) -> TrainRecipe:
    """The recipe `options.recipe` names (`official`, or `shared`: today's AdamW and cosine), with every training
    option that is set (not None; all of them once resolved) replacing the recipe's value."""
    base = official if options.recipe == "official" else (shared or TrainRecipe())
    return dataclasses.replace(base, **{n: getattr(options, n) for n in TRAINING_NAMES
                                        if getattr(options, n) is not None})


def require_raw(value: torch.Tensor | None, method: str, what: str) -> torch.Tensor:
    """`value`, or a CacheError saying that the cache (schema 1) lacks the raw norms the official recipe needs."""
    if value is None:
        raise CacheError(f"{method} with recipe=official needs {what}, which this cache does not store (a schema-1 "
                         f"cache keeps only unit vectors). Rebuild the cache with `{REBUILD}` (schema 2 stores the "
                         "raw norms), or pass --set recipe=shared")
    return value
