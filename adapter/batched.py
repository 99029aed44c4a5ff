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

import time
from typing import Any

import torch

from lathadapter.adapter.graphed import batch_indices
from lathadapter.adapter.methods.base import Method, warn_no_val_subset
from lathadapter.adapter.options import environment_choice
from lathadapter.adapter.recipes import build_optimizer, build_scheduler
from lathadapter.adapter.trainer import (
    SELECTIONS,
    TRAIN_VIEWS,
    EagerStep,
    Lockstep,
    Member,
    Plan,
    TrainResult,
    finish,
    optimise,
    optimiser_imports,
    synchronize,
    trainable,
    view_count,
)


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


def stacks_on(device: torch.device, choice: str | None = None) -> bool:
    """Whether runs that can stack do so on `device` under `choice` (default $LATHADAPTER_STACK): `on`, `off`, or
    (`auto`) on CUDA, where
    a small run's step is kernel launches and one stacked launch serves every run, and not on the CPU, where
    benchmarks/grid.py measured stacked runs slower than lockstep (vmap's per-op dispatch and batched products cost
    more there than the per-op overhead they save)."""
    choice = environment_choice(STACK_ENV, STACK_CHOICES) if choice is None else choice
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def train_together(members: list[Member], select: str = "last", train_views: str = "augmented",
                   stack: bool | None = None, graphs: bool | None = None) -> list[TrainResult]:
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
        warn_no_val_subset(members[0].method.name, ": the last epoch is kept", stacklevel=2, select_val=True)
    device = members[0].data.train_labels.device
    stack = stacks_on(device) if stack is None else stack
    optimiser_imports()
    synchronize(device)
    start = time.perf_counter()
    results = [TrainResult(batch_runs=len(members)) for _ in members]
    stacked: dict[Any, list[int]] = {}
    for i, member in enumerate(members):
        stacked.setdefault(stack_key(member) if stack else None, []).append(i)
    rest = [i for key, indices in stacked.items() for i in indices if key is None or len(indices) == 1]
    for key, indices in stacked.items():
        if key is not None and len(indices) > 1:
            optimise([members[i] for i in indices], Stacked, select, train_views, [results[i] for i in indices],
                     graphs=graphs)
            for i in indices:
                results[i].batch_mode = "stacked"
    if rest:
        optimise([members[i] for i in rest], Lockstep, select, train_views, [results[i] for i in rest],
                 graphs=graphs)
        for i in rest:
            results[i].batch_mode = "lockstep"
    for member, result in zip(members, results, strict=True):
        finish(member.method, member.data, result)
    synchronize(device)
    seconds = (time.perf_counter() - start) / len(members)
    for result in results:
        result.seconds = seconds
    return results


class LossModule(torch.nn.Module):
    """The method's `loss` as a module's forward, which `torch.func.functional_call` calls."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.method.loss(features, labels)


# The members' training rows are joined into one tensor when it holds at most this many bytes: a batch is then one
# gather for all members, not one per member (on a GPU each is a kernel of the step: 2R + 2 of CLIP-Adapter's ~90
# with 10 runs stacked); larger sets (ImageNet's) are read member by member rather than copied.
JOIN_BYTES = 1 << 30


class Stacked(EagerStep):
    """The members' parameters stacked along a leading run dimension, the loss vmapped over it (batched matrix
    products), one optimiser over the stacked tensors (each element's update is elementwise, so each run's state is
    its own); `sync` writes each run's slice back into its member's method. A batch's features and labels are two
    gathers from the members' rows and labels joined (`JOIN_BYTES`)."""

    def __init__(self, members: list[Member], plan: Plan) -> None:
        from torch.func import functional_call, stack_module_state, vmap

        recipe = members[0].method.train_recipe()
        self.modules = [LossModule(m.method) for m in members]
        self.stacked, self.buffers = stack_module_state(self.modules)  # new leaves [R, ...]; requires_grad as before
        self.params = [p for p in self.stacked.values() if p.requires_grad]
        self.optimizer = build_optimizer([(self.params, recipe)])
        self.scheduler = build_scheduler(self.optimizer, [recipe], plan.epochs, len(plan.starts))
        self.rows = [rows for rows, _ in plan.views]
        self.labels = [m.data.train_labels for m in members]
        self.joined: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if sum(rows.nbytes for rows in self.rows) <= JOIN_BYTES:
            # rows [R·M, D] (member r's at r·M) and labels [R·N] (at r·N), and each member's offsets (samples, rows)
            offsets = torch.arange(len(members), device=plan.device)[:, None, None] * torch.tensor(
                [[len(self.labels[0])], [len(self.rows[0])]], device=plan.device)  # [R, 2, 1]
            self.joined = (torch.cat(self.rows), torch.cat(self.labels), offsets)
        self.loss_of = vmap(lambda p, b, x, y: functional_call(self.modules[0], (p, b), (x, y)))
        # the gradient of each member's loss in their sum: differentiating the losses [R] with it is the sum's
        # backward without the sum and the seed's fill (two kernels of a captured step)
        self.seed = torch.ones(len(members), device=plan.device)

    def losses(self, batches: list[tuple[torch.Tensor, torch.Tensor]]
               ) -> tuple[torch.Tensor, list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        return self.losses_of(batch_indices(batches))

    def indexed(self, draws: torch.Tensor) -> torch.Tensor:
        """The draws [..., R, 2, n] as indices into the joined rows and labels (each member's offsets added, once
        per training rather than at every step), or as drawn when the rows are read member by member."""
        return draws if self.joined is None else draws + self.joined[2]

    def losses_of(self, indices: torch.Tensor
                  ) -> tuple[torch.Tensor, list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """`losses` on the batches of `indices` [2, R, b] (the members' samples, then their rows; as `indexed`
        gives them)."""
        samples, rows = indices[0], indices[1]
        if self.joined is not None:
            joined_rows, joined_labels, _ = self.joined
            features = joined_rows.index_select(0, rows.reshape(-1)).view(*rows.shape, -1)
            targets = joined_labels.index_select(0, samples.reshape(-1)).view(samples.shape)
        else:
            features = torch.stack([r.index_select(0, i) for r, i in zip(self.rows, rows, strict=True)])
            targets = torch.stack([y.index_select(0, i) for y, i in zip(self.labels, samples, strict=True)])
        losses, parts = self.loss_of(self.stacked, self.buffers, features, targets)
        return losses, list(losses), [{k: v[r] for k, v in parts.items()} for r in range(len(self.modules))]

    def backward(self, total: torch.Tensor) -> None:
        """`total` is the members' losses [R]: differentiate their sum."""
        total.backward(self.seed)

    def sync(self) -> None:
        with torch.no_grad():
            for r, module in enumerate(self.modules):
                for name, param in module.named_parameters():
                    param.copy_(self.stacked[name][r])
