"""What a grid spends outside training as it grows, new against an earlier commit, in one process.

    python benchmarks/grid_overhead.py --ref REV [--sizes 100,500,2000] [--workers 1,2] [--workers-sizes 100]
                                       [--rounds 2] [--clock cpu]

A grid of N cheap runs (a linear probe of one epoch on a 4-class, 8-dim synthetic cache: 2 shots × 10 seeds × N/20
learning rates) is timed phase by phase, as `lathadapter grid` runs it: expanding the spec and computing the run keys
(`expand`, `check_caches`, `keyed_run`: keys); the grid itself (`launch`, with `--workers W`: grid), split into the
seconds spent inside the training call (`training.train_runs`; with worker processes, the runs' `wall_seconds`:
train) and all the rest (outside: claiming locks, loading sets, writing each run's files, rewriting results.csv,
worker start-up and transfers), of which the grid's rewrites of results.csv (rewrites, and how many: count); one more
rewrite of results.csv (rewrite); the rerun of the finished grid (trains nothing: resume); and the report (tables and
plots, `write_report`: report). Where the grid runs in this process (1 worker) the times are this process's CPU time
(`--clock cpu`, the default: another process's load moves them less than the wall clock); with worker processes,
whose work is not this process's, the wall clock.
As in `train_ab.py`, the commit REV is exported as the package `lathadapter_ref` and both versions run in the same
process, in alternating order (ref first in odd rounds, new first in even ones), so what differs is the code. Both
grids must give the same run keys and the same results.csv but for its timing columns (checked; a difference stops
the benchmark). Prints seconds per phase, seconds per 1,000 runs outside training (/1k), new/ref (min over the
rounds), and the process's peak RSS (shared by both versions: the higher of the two). Run it with
OMP_NUM_THREADS=1; the defaults take about 3 minutes on 2 cores. The periodic rewrites of results.csv
(`launch.next_rewrite`) matter from a few thousand runs on: `--sizes 100,500,2000,8000` shows them.
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lathadapter_ab import export  # benchmarks/ is the script directory

from lathadapter.cache.synthetic import write_synthetic_cache

PHASES = ("keys", "grid", "train", "outside", "rewrites", "count", "rewrite", "resume", "report")
TIMING_COLUMNS = ("train_seconds", "eval_seconds")  # what differs between two grids of the same runs


def tiny_cache(folder: Path) -> Path:
    """4 classes, 8 dims, one view: the runs cost as little as a run can, so what is timed is the bookkeeping."""
    return write_synthetic_cache(folder / "tiny.h5", num_classes=4, dim=8, train_per_class=4, val_per_class=2,
                                 test_per_class=4, views=1, shots=(1, 2), seeds=tuple(range(1, 11)))


def spec(package: str, cache: Path, runs: int) -> Any:
    """The grid of `runs` runs (a multiple of 20): linear probe, 1 epoch, 2 shots × 10 seeds × runs/20 lrs."""
    grid_spec = importlib.import_module(f"{package}.experiments.spec").GridSpec
    lrs = [f"{0.001 * (i + 1):.4f}" for i in range(runs // 20)]
    return grid_spec([str(cache)], ["linear-probe"], [1, 2], list(range(1, 11)),
                     options={"linear-probe.epochs": ["1"], "min_steps": ["0"], "lr": lrs})


Clock = Callable[[], float]


def timed(call: Callable[[], Any], clock: Clock) -> tuple[float, Any]:
    start = clock()
    value = call()
    return clock() - start, value


def timing(calls: list[float], function: Callable[..., Any], clock: Clock) -> Callable[..., Any]:
    """`function`, each call's seconds appended to `calls`."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return function(*args, **kwargs)
        finally:
            calls.append(clock() - start)
    return wrapper


def measure(package: str, cache: Path, runs: int, workers: int, out: Path, clock: Clock
            ) -> tuple[dict[str, float], list[str]]:
    """Each phase's seconds for `package`'s code on a fresh grid of `runs` runs in `out`, and the run keys. With one
    worker (this process) `train` is the seconds inside the training call (`training.train_runs`, as `local` calls
    it) by `clock`; with worker processes, the runs' `wall_seconds`."""
    module = {name: importlib.import_module(f"{package}.experiments.{name}")
              for name in ("spec", "data", "training", "launch", "execution", "table", "report", "local")}
    write_results = module["table"].write_results
    grid = spec(package, cache, runs)

    def keys() -> list[str]:
        expanded = module["spec"].expand(grid)
        infos = module["data"].check_caches(expanded)
        return [module["training"].keyed_run(r, infos[r.cache].fingerprint).key for r in expanded]

    seconds: dict[str, float] = {}
    seconds["keys"], run_keys = timed(keys, clock)
    chosen = module["execution"].Execution.parse(device="cpu", workers=workers)
    rewrites: list[float] = []
    trainings: list[float] = []
    train_runs = module["local"].train_runs
    module["launch"].write_results = timing(rewrites, write_results, clock)
    module["local"].train_runs = timing(trainings, train_runs, clock)
    try:
        seconds["grid"], summary = timed(lambda: module["launch"].launch(grid, out, chosen, progress=False), clock)
    finally:
        module["launch"].write_results, module["local"].train_runs = write_results, train_runs
    assert summary["done"] == runs, summary
    seconds["rewrites"], seconds["count"] = sum(rewrites), len(rewrites)
    seconds["train"] = sum(trainings) if workers == 1 else sum(
        json.loads(path.read_text())["wall_seconds"] for path in (out / "runs").glob("*/metrics.json"))
    seconds["outside"] = seconds["grid"] - seconds["train"]
    seconds["rewrite"], _ = timed(lambda: write_results(out), clock)
    seconds["resume"], summary = timed(lambda: module["launch"].launch(grid, out, chosen, progress=False), clock)
    assert summary["skipped"] == runs, summary
    seconds["report"], _ = timed(lambda: module["report"].write_report(out, out / "report"), clock)
    # the rows this version keeps for its rewrites would slow the other version's grid (more objects for the garbage
    # collector: the second grid in a process was up to 1.6x slower outside training with the same code)
    module["table"]._ROWS_READ.clear()
    gc.collect()
    return seconds, run_keys


def results_without_timing(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="the commit to compare the working tree with")
    parser.add_argument("--sizes", default="100,500,2000", help="grid sizes (runs, multiples of 20) with 1 worker")
    parser.add_argument("--workers", default="1,2", help="worker counts (1: this process)")
    parser.add_argument("--workers-sizes", default="100",
                        help="grid sizes with more than 1 worker (each pool pays its workers' start-up)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating rounds (2: each version first once)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: this process's CPU time where the grid runs in it (workers 1), less moved by "
                             "other load; wall: the wall clock (always with worker processes)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="grid-overhead-"))
    try:
        export(args.ref, work)
        sys.path.insert(0, str(work))
        cache = tiny_cache(work)
        packages = {"ref": "lathadapter_ref", "new": "lathadapter"}
        for package in packages.values():  # imports, the first optimiser, the first plot: paid once, untimed
            measure(package, cache, 20, 1, work / f"warm-{package}", time.perf_counter)
        print(f"seconds per phase (min of {args.rounds} alternating rounds; {args.clock} clock with 1 worker, wall "
              f"with more); ref = {args.ref}, new = working tree; outside = grid - train; /1k = outside seconds per "
              "1,000 runs")
        print(f"{'workers':>7} {'runs':>6} {'code':>4} " + " ".join(f"{p:>8}" for p in PHASES) + f" {'/1k':>7}")
        cases = [(w, n) for w in (int(v) for v in args.workers.split(","))
                 for n in (int(v) for v in (args.sizes if w == 1 else args.workers_sizes).split(","))]
        for workers, runs in cases:
            best: dict[str, dict[str, float]] = {key: {} for key in packages}
            for round_ in range(args.rounds):
                order = ("ref", "new") if round_ % 2 == 0 else ("new", "ref")
                keys, tables = {}, {}
                for key in order:
                    out = work / f"{key}-{workers}-{runs}-{round_}"
                    clock = time.process_time if args.clock == "cpu" and workers == 1 else time.perf_counter
                    seconds, keys[key] = measure(packages[key], cache, runs, workers, out, clock)
                    tables[key] = results_without_timing(out / "results.csv")
                    shutil.rmtree(out)
                    for phase, value in seconds.items():
                        best[key][phase] = min(value, best[key].get(phase, value))
                if keys["ref"] != keys["new"] or tables["ref"] != tables["new"]:
                    raise SystemExit(f"{workers} workers, {runs} runs: the run keys or results.csv differ between "
                                     "ref and new")
            for key in packages:
                row = best[key]
                print(f"{workers:>7} {runs:>6} {key:>4} " + " ".join(f"{row[p]:8.0f}" if p == "count" else
                                                                     f"{row[p]:8.3f}" for p in PHASES)
                      + f" {row['outside'] / runs * 1000:7.3f}", flush=True)
            ratios = {p: best["new"][p] / best["ref"][p] for p in PHASES if best["ref"][p] > 0}
            print(f"{workers:>7} {runs:>6} {'new/ref':>4} " + " ".join(f"{ratios.get(p, float('nan')):8.3f}"
                                                                        for p in PHASES), flush=True)
        print(f"peak RSS of this process (both versions): {peak_mb():.0f} MB")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
