"""Where `lathadapter report` spends its time on demo-sized results: the demo's grids (13 methods × shots 1, 2, 4, 8,
16 × seeds 1, 2, 3, and the 16-shot base-to-novel runs) on a small synthetic cache, each trained method at 2 epochs
(what is drawn depends on the configurations, not on how long they trained). Per round, each step of a report, in
`write_report`'s order: reading the results and building the tables, and each kind of plot, its `tight_layout` and
`savefig` apart; the reliability diagrams' bins read from the runs' metrics.json apart from their drawing.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/report_plots.py [--rounds 5] [--folder DIR]
        [--variant NAME=PYTHONPATH ...]

`--folder` keeps the grid there (built once, about 2 minutes on 2 cores; reused when it holds one). Each
`--variant` (default: the package this script imports) draws the report in a process of its own with that
PYTHONPATH (another checkout's package, e.g. the code before a change); the variants alternate within each round, so a
slow spell of a shared machine slows each alike. The table gives each step's median seconds over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

METHODS = ("zeroshot,linear-probe,clip-adapter,tip-adapter,tip-adapter-f,taskres,gda,lp++,clap,ape,ape-t,cross-modal,"
           "lathadapter")
TRAINED = ("linear-probe", "clip-adapter", "tip-adapter-f", "taskres", "lp++", "clap", "ape-t", "cross-modal",
           "lathadapter")


def build(folder: Path) -> Path:
    """The demo's two grids on a synthetic cache of 10 classes, into `folder/grid` (kept when already there)."""
    from lathadapter.cache.synthetic import write_synthetic_cache

    grid = folder / "grid"
    if (grid / "results.csv").is_file():
        return grid
    cache = write_synthetic_cache(folder / "demo.h5", num_classes=10, dim=16, views=1, shots=(1, 2, 4, 8, 16),
                                  seeds=(1, 2, 3), train_per_class=16, test_per_class=10, seed=0, name="demoish")
    epochs = [arg for method in TRAINED for arg in ("--set", f"{method}.epochs=2")]
    for shots, classes in (("1,2,4,8,16", "all"), ("16", "base")):
        subprocess.run([sys.executable, "-m", "lathadapter.cli", "grid", "--cache", str(cache), "--method", METHODS,
                        "--shots", shots, "--seeds", "1,2,3", "--classes", classes, *epochs, "--device", "cpu",
                        "--out", str(grid)], check=True, capture_output=True)
    return grid


def one_round(grid: Path, out: Path) -> dict[str, float]:
    """One report's steps, timed; `tight_layout` and `savefig` apart within each kind of plot."""
    from matplotlib.figure import Figure

    from lathadapter.experiments import plots, report
    from lathadapter.experiments.records import load_results, records, run_reliability
    from lathadapter.experiments.report_tables import report_tables

    times: dict[str, float] = defaultdict(float)
    kind = ["other"]
    tight_layout, savefig = Figure.tight_layout, Figure.savefig

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                times[f"{kind[0]}: {name}"] += time.perf_counter() - start
        return wrapper

    def step(name: str, function):
        kind[0] = name
        start = time.perf_counter()
        result = function()
        times[f"{name} (all)"] += time.perf_counter() - start
        return result

    Figure.tight_layout, Figure.savefig = timed("tight_layout", tight_layout), timed("savefig", savefig)
    try:
        results = step("read results, tables", lambda: load_results(grid))
        parsed = step("read results, tables", lambda: records(results))
        step("read results, tables", lambda: report_tables(parsed))
        step("accuracy vs shots", lambda: plots.plot_accuracy_vs_shots(parsed, out))
        step("base-to-novel", lambda: plots.plot_base_novel(parsed, out))
        bins = step("reliability: bins read", lambda: run_reliability(results, (r.key for r in parsed)))
        step("reliability", lambda: plots.plot_reliability(parsed, bins, out))
        step("Poincaré disk", lambda: plots.plot_poincare_disk(report._disk_run(results), out))
    finally:
        Figure.tight_layout, Figure.savefig = tight_layout, savefig
    return dict(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=PYTHONPATH")
    parser.add_argument("--one-round", type=Path, default=None, help=argparse.SUPPRESS)  # a variant's process
    args = parser.parse_args()
    if args.one_round is not None:
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(one_round(args.one_round, Path(out))))
        return
    variants = dict(v.split("=", 1) for v in args.variant) or {"this": os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as name:
        grid = build(args.folder or Path(name))
        rounds: dict[str, list[dict[str, float]]] = defaultdict(list)
        for i in range(args.rounds):
            for variant in (list(variants) if i % 2 == 0 else list(variants)[::-1]):
                done = subprocess.run([sys.executable, __file__, "--one-round", str(grid)], check=True,
                                      capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": variants[variant]})
                rounds[variant].append(json.loads(done.stdout.splitlines()[-1]))
    steps = list(dict.fromkeys(s for runs in rounds.values() for r in runs for s in r))
    medians = {v: {s: statistics.median(r.get(s, 0.0) for r in runs) for s in steps} for v, runs in rounds.items()}
    print(f"# {args.rounds} rounds, variants alternating; median seconds; total = the steps marked (all)")
    print("| step | " + " | ".join(variants) + " |")
    print("| --- |" + " ---: |" * len(variants))
    for s in steps:
        print(f"| {s} | " + " | ".join(f"{medians[v][s]:.3f}" for v in variants) + " |")
    totals = {v: sum(statistics.median(r[s] for r in runs) for s in steps if s.endswith("(all)"))
              for v, runs in rounds.items()}
    print("| total | " + " | ".join(f"{totals[v]:.3f}" for v in variants) + " |")


if __name__ == "__main__":
    main()
