"""A/B of whole trainings (`adapter.trainer.train`) between an earlier commit and the working tree, in one process.

    python benchmarks/train_ab.py --ref REV [--methods linear-probe,lathadapter:lambda_hier=0.1] [--rounds 8]
                                  [--clock cpu|wall]

`benchmarks/fit.py --against REV` compares fits run in separate processes, whose times on a shared 2-core machine
scatter by ±40 % from one run to the next. Here, as in `lathadapter_ab.py`, the commit REV is exported as the package
`lathadapter_ref`, both versions train each method on the Caltech-like cache of `benchmarks/fit.py` (16 shots, seed 1)
in the same process, in alternating order (ref first in odd rounds, new first in even ones), and each training is
timed by the process's CPU time (default; `--clock wall` for the wall clock), so what differs is the code. A method
takes options as in fit.py, METHOD:NAME=VALUE+NAME=VALUE. Prints the seconds of a training (min and median over the
rounds) and new/ref; run it with OMP_NUM_THREADS=1.
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
from fit import cache_for  # benchmarks/ is the script directory
from lathadapter_ab import export, ratio_text


def loaded(package: str, cache: Path):
    """The 16-shot seed-1 set of `cache` as `package`'s code loads it (its `FewShotData`, whose fields may differ)."""
    with importlib.import_module(f"{package}.cache.store").CacheReader(cache) as reader:
        return reader.load(16, 1)


def trainer(package: str, data, method: str, clock: Callable[[], float]) -> Callable[[], tuple[float, int]]:
    """A training of `method` (with its options) by `package`'s code: returns its seconds and steps."""
    train = importlib.import_module(f"{package}.adapter.trainer").train
    create = importlib.import_module(f"{package}.adapter.catalog").create_method
    name, _, assignments = method.partition(":")
    overrides = dict(item.split("=", 1) for item in assignments.split("+") if item)

    def run() -> tuple[float, int]:
        torch.manual_seed(1)
        built = create(name, data, **overrides)
        start = clock()
        result = train(built, data, seed=1)
        return clock() - start, result.steps

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="the commit to compare the working tree with")
    parser.add_argument("--methods", default="linear-probe,taskres,tip-adapter-f,lathadapter",
                        help="comma-separated methods, METHOD:NAME=VALUE+NAME=VALUE for options (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; seconds per training ({args.clock} "
          f"clock, min / median of {args.rounds} alternating rounds); ref = {args.ref}, new = working tree")
    cache = cache_for("caltech")
    with tempfile.TemporaryDirectory() as folder:
        export(args.ref, Path(folder))
        sys.path.insert(0, folder)
        packages = {"ref": "lathadapter_ref", "new": "lathadapter"}
        data = {key: loaded(package, cache) for key, package in packages.items()}
        for method in args.methods.split(","):
            runs = {key: trainer(package, data[key], method, clock) for key, package in packages.items()}
            times: dict[str, list[float]] = {key: [] for key in runs}
            steps = {key: run()[1] for key, run in runs.items()}  # warm-up
            for round_ in range(args.rounds):
                for key in ("ref", "new") if round_ % 2 == 0 else ("new", "ref"):
                    times[key].append(runs[key]()[0])
            low = {key: min(values) for key, values in times.items()}
            middle = {key: statistics.median(values) for key, values in times.items()}
            print(f"{method:<30} steps {steps['ref']}/{steps['new']}: ref {low['ref']:.3f} / {middle['ref']:.3f}, "
                  f"new {low['new']:.3f} / {middle['new']:.3f} s; {ratio_text(low, middle, 'new', 'ref')}",
                  flush=True)


if __name__ == "__main__":
    main()
