"""A/B of a stacked step's host time between an earlier commit and the working tree, in one process, on the CPU.

    python benchmarks/stacked_step_ab.py --ref REV [--methods clip-adapter,tip-adapter-f,lathadapter] [--runs 10]
                                         [--shots 16] [--rounds 5] [--clock cpu|wall]

On a tiny synthetic cache (10 classes, D = 64, 4 views) a step's arithmetic is negligible, so its time is the host's:
Python and the dispatch of each operation. Two forms of a step of R stacked runs (`adapter.batched.Stacked`, each
method's defaults, benchmarks/grid.py's batch of seeds 1..R):

- `stacked`: trained uncaptured (CPU `--stack on`, CUDA with `LATHADAPTER_GRAPHS=off`): the host pays this at every
  step;
- `captured form`: the step a CUDA graph captures (`adapter.graphed.Graphed`), run uncaptured: on a GPU the host
  pays this only when it captures (a warm-up step and one capture per batch size), then replays.

Commit REV is exported as the package `lathadapter_ref`; both versions take a whole epoch of steps, alternating (ref
first in odd rounds). Prints milliseconds per step (min and median over the rounds) and new/ref; run it with
OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from lathadapter_ab import export, ratio_text  # benchmarks/ is the script directory

from lathadapter.cache.synthetic import write_synthetic_cache

CACHE = Path(__file__).parent / ".data" / "tiny-grid-seeds10.h5"


def epoch_of(package: str, method: str, runs: int, shots: int, captured_form: bool) -> tuple[Callable[[], None], int]:
    """An epoch of steps of `runs` stacked runs of `method` by `package`'s code, and its step count."""
    reader_class = importlib.import_module(f"{package}.cache.store").CacheReader
    catalog = importlib.import_module(f"{package}.adapter.catalog")
    trainer = importlib.import_module(f"{package}.adapter.trainer")
    stacked = importlib.import_module(f"{package}.adapter.batched").Stacked
    graphed = importlib.import_module(f"{package}.adapter.graphed").Graphed
    with reader_class(CACHE) as reader:
        datas = [reader.load(shots, seed) for seed in range(1, runs + 1)]
    members = []
    for seed, data in enumerate(datas, start=1):
        torch.manual_seed(seed)
        members.append(trainer.Member(catalog.build_method(method, catalog.make_options(method, {}), data), data,
                                      seed))
    plan = trainer.Plan.of(members, "augmented")
    step = stacked(members, plan)
    if captured_form:
        step = graphed(step, plan.epochs * len(plan.starts), [m.method for m in members], capture=False,
                       batch_size=plan.batch_size)
    draws = plan.draws()
    if hasattr(step, "indexed"):  # commits before stop 13 read the draws as drawn
        draws = step.indexed(draws)
    epoch = [0]

    def run() -> None:
        step.run_epoch(draws[epoch[0] % plan.epochs], plan.starts)
        epoch[0] += 1

    return run, len(plan.starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="the commit to compare the working tree with")
    parser.add_argument("--methods", default="clip-adapter,tip-adapter-f,lathadapter")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    if not CACHE.exists():
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_cache(CACHE, num_classes=10, dim=64, train_per_class=20, val_per_class=6, test_per_class=10,
                              views=4, seeds=tuple(range(1, 11)))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; {args.runs} runs stacked, "
          f"{args.shots} shots, tiny cache; ms per step ({args.clock} clock, min / median of {args.rounds} alternating "
          f"rounds of an epoch); ref = {args.ref}, new = working tree")
    with tempfile.TemporaryDirectory() as folder:
        export(args.ref, Path(folder))
        sys.path.insert(0, folder)
        for method in args.methods.split(","):
            for captured_form in (False, True):
                epochs = {key: epoch_of(package, method, args.runs, args.shots, captured_form)
                          for key, package in (("ref", "lathadapter_ref"), ("new", "lathadapter"))}
                for run, _ in epochs.values():
                    run()  # warm-up: the optimiser's state
                times: dict[str, list[float]] = {key: [] for key in epochs}
                for round_ in range(args.rounds):
                    for key in ("ref", "new") if round_ % 2 == 0 else ("new", "ref"):
                        run, steps = epochs[key]
                        start = clock()
                        run()
                        times[key].append(1e3 * (clock() - start) / steps)
                low = {key: min(values) for key, values in times.items()}
                middle = {key: statistics.median(values) for key, values in times.items()}
                form = "captured form" if captured_form else "stacked"
                print(f"{method:<14} {form:<14} ref {low['ref']:.2f} / {middle['ref']:.2f} ms, new {low['new']:.2f} "
                      f"/ {middle['new']:.2f} ms; {ratio_text(low, middle, 'new', 'ref')}", flush=True)


if __name__ == "__main__":
    main()
