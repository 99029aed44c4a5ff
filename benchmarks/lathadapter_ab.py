"""A/B of a LatHAdapter training step between an earlier commit and the working tree, in one process.

    python benchmarks/lathadapter_ab.py --ref REV [--only caltech|imagenet] [--rounds 10] [--clock wall|cpu]

On a shared machine two runs minutes apart can differ by 2x, so comparing separate runs says little about a change.
Here the commit REV is exported (git archive) into a temporary folder as the package `lathadapter_ref`, both versions
train on the same synthetic cache (`benchmarks/fit.py`'s) in one process, and their steps are timed in alternating
blocks, so a slow spell slows both. Prints ms per step (min and median over the blocks) and the ratio. `--clock cpu`
times the process's CPU time instead of the wall clock: on a loaded machine a block then does not count the time the
process waited for a core (with one thread, OMP_NUM_THREADS=1, it is the step's own time; caches are still shared).
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import torch
from fit import cache_for  # benchmarks/ is the script directory

from lathadapter.adapter.trainer import clear_grads  # the working tree's, for both versions alike
from lathadapter.cache.store import CacheReader

REPO = Path(__file__).resolve().parent.parent


def export(ref: str, folder: Path) -> None:
    """The package at `ref`, importable as `lathadapter_ref` from `folder`."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
    target = folder / "lathadapter_ref"
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    for path in target.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"(?<![\w.])lathadapter\.", "lathadapter_ref.", text)  # not methods.lathadapter.
        path.write_text(text.replace("from lathadapter import", "from lathadapter_ref import"))


def time_blocks(steps: dict[str, Callable[[], None]], rounds: int, block: int, clock: Callable[[], float]
                ) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds per call of each step, timed in `rounds` blocks of `block` calls after 5 warm-up calls, the steps
    alternating block by block (so a slow spell slows each alike): the minimum and the median over the blocks."""
    times: dict[str, list[float]] = {key: [] for key in steps}
    for step in steps.values():
        for _ in range(5):
            step()
    for _ in range(rounds):
        for key, step in steps.items():
            start = clock()
            for _ in range(block):
                step()
            times[key].append((clock() - start) / block * 1000)
    return ({key: min(values) for key, values in times.items()},
            {key: statistics.median(values) for key, values in times.items()})


def ratio_text(low: dict[str, float], middle: dict[str, float], new: str, ref: str) -> str:
    """`new/ref 0.950 (min), 0.970 (median)` of minimums `low` and medians `middle`."""
    return (f"{new}/{ref} {low[new] / low[ref]:.3f} (min), {middle[new] / middle[ref]:.3f} (median)")


def stepper(package: str, data, generator_seed: int = 0) -> Callable[[], None]:
    """One LatHAdapter step (forward, backward, fused AdamW) of `package` on a random batch of 256."""
    try:  # the built-in methods' catalog; commits before it kept `create_method` in the registry
        create = importlib.import_module(f"{package}.adapter.catalog").create_method
    except ModuleNotFoundError:
        create = importlib.import_module(f"{package}.adapter.registry").create_method
    torch.manual_seed(0)
    method = create("lathadapter", data)
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, fused=True)  # the first pays torch._dynamo's
    # one-time import, before any step is timed
    generator = torch.Generator().manual_seed(generator_seed)

    def step() -> None:
        batch = torch.randint(len(data.train_labels), (256,), generator=generator)
        loss = method.loss(data.train_features.index_select(0, batch), data.train_labels.index_select(0, batch))[0]
        clear_grads(params)  # as the trainer does
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="the commit to compare the working tree with")
    parser.add_argument("--only", choices=["caltech", "imagenet"], action="append")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time blocks by the wall clock or by the process's CPU time (default: %(default)s)")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; ms per step (batch 256, {args.clock} "
          f"clock); ref = {args.ref}, new = working tree")
    with tempfile.TemporaryDirectory() as folder:
        export(args.ref, Path(folder))
        sys.path.insert(0, folder)
        for name in args.only or ["caltech", "imagenet"]:
            with CacheReader(cache_for(name)) as reader:
                data = reader.load(16, 1)
            steps = {"ref": stepper("lathadapter_ref", data), "new": stepper("lathadapter", data)}
            block = 15 if name == "caltech" else 6
            low, middle = time_blocks(steps, args.rounds, block, clock)
            print(f"{name}-like: ref {low['ref']:.2f} / {middle['ref']:.2f}, new {low['new']:.2f} / "
                  f"{middle['new']:.2f} ms (min / median of {args.rounds} blocks of {block}); "
                  f"{ratio_text(low, middle, 'new', 'ref')}", flush=True)


if __name__ == "__main__":
    main()
