"""Wall time of a 3-method × 5-shot × 3-seed grid on a Caltech-like synthetic cache (100 classes, D = 512,
10 views), run in one process as `lathadapter grid` runs it.

    python benchmarks/grid.py [--methods zeroshot,tip-adapter-f,lathadapter] [--out benchmarks/results/grid.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments.grid import GridSpec, run_grid

DATA = Path(__file__).parent / ".data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="clip-adapter,tip-adapter-f,lathadapter")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "grid.json")
    args = parser.parse_args()
    cache = DATA / "caltech-grid.h5"
    if not cache.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        write_synthetic_cache(cache, num_classes=100, dim=512, train_per_class=20, val_per_class=6, views=10,
                              test_total=2465, families=10, num_attributes=64)
    methods = args.methods.split(",")
    folder = Path(tempfile.mkdtemp(prefix="grid-bench-"))
    try:
        start = time.perf_counter()
        summary = run_grid(GridSpec([str(cache)], methods, [1, 2, 4, 8, 16], [1, 2, 3]), folder, "cpu")
        seconds = time.perf_counter() - start
        resumed = time.perf_counter()
        again = run_grid(GridSpec([str(cache)], methods, [1, 2, 4, 8, 16], [1, 2, 3]), folder, "cpu", progress=False)
        resume_seconds = time.perf_counter() - resumed
    finally:
        shutil.rmtree(folder)
    row = {"methods": methods, "runs": summary["runs"], "seconds": seconds,
           "runs_per_minute": 60 * summary["runs"] / seconds, "resume_seconds": resume_seconds,
           "resume_skipped": again["skipped"], "threads": torch.get_num_threads()}
    label = f"{' × '.join(methods)} × 5 shots × 3 seeds"
    print(f"{'grid':<{len(label)}} {'runs':>5} {'wall s':>8} {'runs/min':>9} {'resume s':>9}")
    print(f"{label} {row['runs']:5d} {seconds:8.1f} "
          f"{row['runs_per_minute']:9.1f} {resume_seconds:9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
