"""Train seconds per run of each trained method, R runs (seeds 1..R of one shots) trained alone one after another,
together in lockstep, and together as one stacked model (`adapter.batched`), alternated in one process on the
Caltech-like grid cache of benchmarks/grid.py; with the largest test-accuracy difference from training alone.

    python benchmarks/batched.py [--methods linear-probe,clip-adapter,taskres,tip-adapter-f,lathadapter]
                                 [--shots 4] [--runs 3] [--repeats 1] [--threads 1] [--device cpu|cuda]
                                 [--out benchmarks/results/batched.json]

Times are wall seconds of the training (the trainer synchronises a GPU before reading its clock) divided by R; the
table gives the fastest of --repeats and the ratios alone / together.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lathadapter.adapter.batched import Member, train_together
from lathadapter.adapter.catalog import build_method, make_options
from lathadapter.adapter.evaluate import evaluate
from lathadapter.adapter.trainer import train
from lathadapter.cache.store import CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache

CACHE = Path(__file__).parent / ".data" / "caltech-grid.h5"
MODES = ("alone", "lockstep", "stacked")


def grid_cache() -> Path:
    """The cache of benchmarks/grid.py (100 classes, D = 512, 10 views, shots 1-16, seeds 1-3)."""
    if not CACHE.exists():
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_cache(CACHE, num_classes=100, dim=512, train_per_class=20, val_per_class=6, views=10,
                              test_total=2465, families=10, num_attributes=64)
    return CACHE


def timed(method: str, datas: list, mode: str, device: str) -> tuple[float, list[float]]:
    """Seconds per run and each run's test accuracy, training the runs as `mode` says."""
    models = []
    for seed, data in enumerate(datas, start=1):
        torch.manual_seed(seed)
        models.append(build_method(method, make_options(method), data))
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    if mode == "alone":
        for seed, (model, data) in enumerate(zip(models, datas, strict=True), start=1):
            train(model, data, seed=seed)
    else:
        members = [Member(model, data, seed) for seed, (model, data) in enumerate(zip(models, datas, strict=True),
                                                                                 start=1)]
        results = train_together(members, stack=mode == "stacked")
        assert {r.batch_mode for r in results} == {mode}, (method, mode, {r.batch_mode for r in results})
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / len(datas)
    return seconds, [evaluate(m, d.test_features, d.test_labels).accuracy for m, d in zip(models, datas, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="linear-probe,clip-adapter,taskres,tip-adapter-f,lathadapter")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="runs trained together (seeds 1..R; at most 3)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "batched.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with CacheReader(grid_cache()) as reader:
        datas = [reader.load(args.shots, seed, device=args.device) for seed in range(1, args.runs + 1)]
    rows = []
    for method in args.methods.split(","):
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        accuracy: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for mode in MODES:  # alternated, so a slow spell slows every mode alike
                value, accuracy[mode] = timed(method, datas, mode, args.device)
                seconds[mode].append(value)
        best = {mode: min(values) for mode, values in seconds.items()}
        rows.append({"method": method, "shots": args.shots, "runs": args.runs, "threads": args.threads,
                     "device": args.device, "seconds": seconds, "best": best,
                     "max_accuracy_difference": {mode: max(abs(a - b) for a, b in zip(accuracy[mode],
                                                                                         accuracy["alone"],
                                                                                         strict=True))
                                                 for mode in MODES[1:]}})
        print(f"  {method}: " + ", ".join(f"{mode} {best[mode]:.2f} s" for mode in MODES), flush=True)
    print(f"torch {torch.__version__}, {args.device}, {args.threads} thread(s), {args.shots} shots, "
          f"{args.runs} runs per batch; s/run = fastest of {args.repeats}")
    print(f"{'method':<14} {'alone s/run':>11} {'lockstep':>9} {'stacked':>8} {'× lockstep':>10} {'× stacked':>9} "
          f"{'max Δacc lockstep':>17} {'stacked':>8}")
    for row in rows:
        b, d = row["best"], row["max_accuracy_difference"]
        print(f"{row['method']:<14} {b['alone']:11.3f} {b['lockstep']:9.3f} {b['stacked']:8.3f} "
              f"{b['alone'] / b['lockstep']:10.2f} {b['alone'] / b['stacked']:9.2f} {d['lockstep']:17.3f} "
              f"{d['stacked']:8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
