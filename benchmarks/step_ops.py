"""What one stacked, captured-form training step launches: the operations (after autograd, views left out) of one
step of R runs stacked (`adapter.batched.Stacked` under `adapter.graphed.Graphed`, the fixed-shape losses), counted
on the CPU with a dispatch mode. On a GPU each is a kernel of the captured graph, and a small step's time is about
the count times a few microseconds (stop 12: CLIP-Adapter's step of about 70 kernels took about 0.2 ms on an H200),
so the count is the CPU's view of what a GPU step costs.

    python benchmarks/step_ops.py [--methods clip-adapter,tip-adapter-f,lathadapter] [--runs 3,10] [--shots 16]

Uses benchmarks/grid.py's 10-seed Caltech-like cache (made when missing). Prints a table: method, runs stacked,
operations, and the most frequent ones.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lathadapter.adapter.batched import Stacked
from lathadapter.adapter.catalog import build_method, make_options
from lathadapter.adapter.graphed import Graphed
from lathadapter.adapter.trainer import Member, Plan
from lathadapter.cache.store import CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache

CACHE = Path(__file__).parent / ".data" / "caltech-grid-seeds10.h5"
# no kernel: views, allocations, host scalars
NOT_KERNELS = {"view", "as_strided", "_unsafe_view", "_reshape_alias", "expand", "t", "transpose", "permute",
               "unsqueeze", "squeeze", "select", "slice", "detach", "alias", "empty", "empty_strided", "empty_like",
               "unbind", "split", "split_with_sizes", "reshape", "resolve_conj", "resolve_neg", "lift_fresh",
               "_record_function_enter_new", "_record_function_exit"}


class Count(TorchDispatchMode):
    """Counts the operations dispatched below autograd, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.names: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[1]
        if name not in NOT_KERNELS:
            self.names[name] += 1
        return func(*args, **(kwargs or {}))


def step_operations(method: str, runs: int, shots: int) -> collections.Counter[str]:
    """The operations of one full-batch step of `runs` stacked runs of `method` (after one epoch of warm-up)."""
    with CacheReader(CACHE) as reader:
        datas = [reader.load(shots, seed) for seed in range(1, runs + 1)]
    members = []
    for seed, data in enumerate(datas, start=1):
        torch.manual_seed(seed)
        members.append(Member(build_method(method, make_options(method, {}), data), data, seed))
    plan = Plan.of(members, "augmented")
    step = Graphed(Stacked(members, plan), plan.epochs * len(plan.starts), [m.method for m in members],
                   capture=False, batch_size=plan.batch_size)
    draws = step.indexed(plan.draws())
    step.run_epoch(draws[0], plan.starts)  # the optimiser's state exists, as when a step is captured
    count = Count()
    if plan.n >= plan.batch_size:  # a full batch's step, read from the epoch's index table
        step.run_epoch(draws[1][:, :, :plan.batch_size], range(0, plan.batch_size, plan.batch_size))
        with count:
            step._take(None)
    else:  # the epoch's one short batch, copied in
        with count:
            step.run_epoch(draws[1], plan.starts)
    return count.names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="clip-adapter,tip-adapter-f,lathadapter")
    parser.add_argument("--runs", default="3,10")
    parser.add_argument("--shots", type=int, default=16)
    args = parser.parse_args()
    if not CACHE.exists():
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_cache(CACHE, num_classes=100, dim=512, train_per_class=20, val_per_class=6, views=10,
                              test_total=2465, families=10, num_attributes=64, seeds=tuple(range(1, 11)))
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}; one step of R runs stacked, {args.shots} shots, Caltech-like (100 classes, "
          "D = 512); operations below autograd, views left out")
    print(f"{'method':<14} {'runs':>4} {'ops':>5}  most frequent")
    for method in args.methods.split(","):
        for runs in (int(v) for v in args.runs.split(",")):
            names = step_operations(method, runs, args.shots)
            common = ", ".join(f"{name} {n}" for name, n in names.most_common(8))
            print(f"{method:<14} {runs:4d} {sum(names.values()):5d}  {common}", flush=True)


if __name__ == "__main__":
    main()
