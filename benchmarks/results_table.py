"""Seconds per rewrite of a grid's results.csv (`table.write_results`, run after every run or batch) with N finished
run directories: the first rewrite in a process (every run's JSON read), a rewrite after one more run finished
(rows of the others kept from earlier rewrites), and that rewrite with nothing kept (as before rows were kept).

    python benchmarks/results_table.py [--runs 500,2000] [--repeats 3]

The run directories are copies of one real run of a small grid (LatHAdapter's metrics, with its loss history), each
with its own key.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments import table
from lathadapter.experiments.launch import launch
from lathadapter.experiments.spec import GridSpec
from lathadapter.experiments.table import write_results


def one_run(folder: Path) -> Path:
    """The run directory of a one-run LatHAdapter grid on a small synthetic cache."""
    cache = write_synthetic_cache(folder / "tiny.h5", num_classes=6, dim=16, views=2, shots=(2,), seeds=(1,))
    launch(GridSpec([str(cache)], ["lathadapter"], [2], [1]), folder / "grid", progress=False)
    return next((folder / "grid" / "runs").glob("*/metrics.json")).parent


def add_runs(out: Path, source: Path, start: int, stop: int) -> None:
    config = json.loads((source / "config.json").read_text())
    for i in range(start, stop):
        folder = out / "runs" / f"{i:012x}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({**config, "key": folder.name}))
        shutil.copy(source / "metrics.json", folder / "metrics.json")


def timed_rewrite(out: Path) -> float:
    start = time.perf_counter()
    write_results(out)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="500,2000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="results-bench-"))
    try:
        source = one_run(work)
        rows = []
        for n in (int(v) for v in args.runs.split(",")):
            first, kept, read_all = [], [], []
            for repeat in range(args.repeats):
                out = work / f"grid-{n}-{repeat}"
                add_runs(out, source, 0, n - 1)
                table._ROWS_READ.clear()
                first.append(timed_rewrite(out))
                add_runs(out, source, n - 1, n)  # one more run finished
                kept.append(timed_rewrite(out))
                table._ROWS_READ.clear()
                read_all.append(timed_rewrite(out))
                shutil.rmtree(out)
            rows.append((n, statistics.median(first), statistics.median(kept), statistics.median(read_all)))
        print(f"results.csv rewrites, median of {args.repeats} (seconds)")
        print(f"{'runs':>6} {'first':>8} {'kept':>8} {'read all':>9} {'read all / kept':>16}")
        for n, first, kept, read_all in rows:
            print(f"{n:6d} {first:8.3f} {kept:8.3f} {read_all:9.3f} {read_all / kept:16.1f}")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
