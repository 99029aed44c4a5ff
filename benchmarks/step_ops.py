"""What one stacked, captured-form training step launches: the operations (after autograd, views left out) of one
step of R runs stacked (`adapter.batched.Stacked` under `adapter.graphed.Graphed`, the fixed-shape losses), counted
on the CPU with a dispatch mode. On a GPU each is a kernel of the captured graph, and a small step's time is about
the count times a few microseconds (stop 12: CLIP-Adapter's step of about 70 kernels took about 0.2 ms on an H200),
so the count is the CPU's view of what a GPU step costs.

    python benchmarks/step_ops.py [--methods clip-adapter,tip-adapter-f,lathadapter] [--runs 3,10] [--shots 16]
                                  [--grid 1,2,4,8,16]

Uses benchmarks/grid.py's 10-seed Caltech-like cache (made when missing). Prints a table: method, runs stacked,
operations, and the most frequent ones. `--grid SHOTS` adds the kernels of benchmarks/grid.py's stacked batches
(each method at each shot count: steps × operations per step, full and short batches apart), whose total is the
CPU's estimate of the GPU work of one grid (a batch's kernels do not grow with its runs).
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


def run_operations(method: str, runs: int, shots: int
                   ) -> tuple[collections.Counter[str] | None, collections.Counter[str] | None, int, int]:
    """The operations of one full-batch step and of one short-batch step of `runs` stacked runs of `method` (after
    one epoch of warm-up; None where an epoch has no such step), and how many of each a training takes."""
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
    b = plan.batch_size
    full = sum(start + b <= plan.n for start in plan.starts)
    full_ops = short_ops = None
    if full:  # a full batch's step, read from the epoch's index table
        step._write_epoch(draws[1], full)
        with Count() as full_ops:
            step._take(None)
    if full < len(plan.starts):  # the epoch's short last batch, copied in
        with Count() as short_ops:
            step._take(draws[1][:, :, plan.starts[full]:].transpose(0, 1))
    return (full_ops.names if full_ops else None, short_ops.names if short_ops else None, plan.epochs * full,
            plan.epochs * (len(plan.starts) - full))


def step_operations(method: str, runs: int, shots: int) -> collections.Counter[str]:
    """The operations of one step of `runs` stacked runs of `method`: a full batch's, else the short batch's."""
    full, short, _, _ = run_operations(method, runs, shots)
    result = full if full is not None else short
    assert result is not None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="clip-adapter,tip-adapter-f,lathadapter")
    parser.add_argument("--runs", default="3,10")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--grid", default="", metavar="SHOTS",
                        help="also the kernels of benchmarks/grid.py's batches at these shots (e.g. 1,2,4,8,16): "
                             "steps × operations per method and shot count, counted on 3 runs stacked (the count "
                             "does not depend on the runs)")
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
    if args.grid:
        print("\nkernels of one stacked batch of the grid (each step's operations; a batch's kernels do not grow "
              "with its runs)")
        print(f"{'method':<14} {'shots':>5} {'steps':>6} {'ops/step':>9} {'kernels':>9}")
        total = 0
        for method in args.methods.split(","):
            for shots in (int(v) for v in args.grid.split(",")):
                full, short, full_steps, short_steps = run_operations(method, 3, shots)
                kernels = full_steps * sum((full or {}).values()) + short_steps * sum((short or {}).values())
                per_step = "/".join(str(sum(c.values())) for c in (full, short) if c is not None)
                total += kernels
                print(f"{method:<14} {shots:5d} {full_steps + short_steps:6d} {per_step:>9} {kernels:9d}",
                      flush=True)
        print(f"{'total':<14} {'':>5} {'':>6} {'':>9} {total:9d}")


if __name__ == "__main__":
    main()
