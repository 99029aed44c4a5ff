"""Wall time of a 3-method × 5-shot × 3-seed grid on a Caltech-like synthetic cache (100 classes, D = 512,
10 views), run in one process as `lathadapter grid` runs it (`--backend local`), on a local Ray cluster of this
machine's CPUs (`--backend ray`: one CPU per chunk task, 8 runs per chunk), or both in the same run (`local,ray`).
`--workers 1,2` runs the local backend once per count: 1 is one process with torch's threads, N > 1 is N worker
processes with one thread each (`lathadapter grid --workers N`); `--batch-runs 1,8` runs each of those once per
batch size (`lathadapter grid --batch-runs N`: up to N compatible runs trained together) and `--stack auto,on,off`
once per stacking choice (`Execution.stack`, as LATHADAPTER_STACK: stacked models, or lockstep; `auto` stacks on
CUDA only); `--repeats R`
alternates the configurations R times. `--device cuda` runs the local backend on the GPU: `--trainers 1,4` runs it
once per number of trainer threads of each process (each on its own CUDA stream; `lathadapter grid --trainers`),
`--workers 1,2` once per number of processes (worker processes, each with its own CUDA context, started and warmed
inside the timed grid, as `grid --workers` pays them). `--warmup` first trains the grid's first shot and seed once,
untimed, in this process (its first CUDA work: context, libraries, kernel loading), so the rows compare
configurations rather than who went first.

    python benchmarks/grid.py [--methods zeroshot,tip-adapter-f,lathadapter] [--backend local,ray] [--workers 1,2]
                              [--batch-runs 1,8] [--stack auto] [--repeats 1] [--shots 1,2,4,8,16] [--seeds 1,2,3]
                              [--device cpu] [--trainers auto] [--out benchmarks/results/grid.json]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import csv
import json
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments.execution import Execution, RayOptions
from lathadapter.experiments.launch import launch
from lathadapter.experiments.spec import GridSpec

DATA = Path(__file__).parent / ".data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="clip-adapter,tip-adapter-f,lathadapter")
    parser.add_argument("--backend", default="local", help="local, ray, or local,ray (both, same grid)")
    parser.add_argument("--workers", default="1", help="local backend: worker process counts, e.g. 1,2")
    parser.add_argument("--batch-runs", default="1", help="runs trained together, e.g. 1,8")
    parser.add_argument("--stack", default="auto", help="LATHADAPTER_STACK values, e.g. auto,on")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trainers", default="auto", help="trainer threads of each process, e.g. 1,4 (a GPU; auto: "
                        "the device's default)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the configurations this many times")
    parser.add_argument("--shots", default="1,2,4,8,16")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--warmup", action="store_true", help="an untimed grid of the first shot and seed first")
    parser.add_argument("--start-at", type=float, default=None, metavar="UNIX_TIME",
                        help="after the warm-up, wait until this time before the timed grids (benchmarks/"
                             "grid_processes.py starts several copies together)")
    parser.add_argument("--profile", type=int, default=0, metavar="LINES",
                        help="print where this process's time went in the last configuration (cProfile of the "
                             "main thread: LINES functions by own time, then the package's by cumulative time)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "grid.json")
    args = parser.parse_args()
    methods = args.methods.split(",")
    shots = [int(v) for v in args.shots.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    # the subsets of seeds 1-3 (the field's), or of 1 to the largest seed asked for
    last_seed = max(3, *seeds)
    cache = DATA / ("caltech-grid.h5" if last_seed == 3 else f"caltech-grid-seeds{last_seed}.h5")
    if not cache.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        write_synthetic_cache(cache, num_classes=100, dim=512, train_per_class=20, val_per_class=6, views=10,
                              test_total=2465, families=10, num_attributes=64, seeds=tuple(range(1, last_seed + 1)))
    spec = GridSpec([str(cache)], methods, shots, seeds)
    configs = [(backend, int(w), None if t == "auto" else int(t), int(b), stack) for backend in args.backend.split(",")
               for w in (args.workers.split(",") if backend == "local" else ["1"])
               for t in args.trainers.split(",")
               for b in args.batch_runs.split(",") for stack in (args.stack.split(",") if b != "1" else ["auto"])]
    rows = []
    if args.warmup:
        folder = Path(tempfile.mkdtemp(prefix="grid-warmup-"))
        try:
            start = time.perf_counter()
            launch(GridSpec([str(cache)], methods, shots[:1], seeds[:1]), folder,
                   Execution(device=args.device, batch_runs=len(methods)), progress=False)
            print(f"  warm-up (untimed): {time.perf_counter() - start:.1f} s", flush=True)
        finally:
            shutil.rmtree(folder)
    if args.start_at is not None:
        time.sleep(max(0.0, args.start_at - time.time()))
    for repeat in range(args.repeats):
        for backend, workers, trainers, batch_runs, stack in configs:
            threads = torch.get_num_threads()
            if backend == "ray":
                options = RayOptions(init_options={"include_dashboard": False, "log_to_driver": False})
                execution = Execution(device=args.device, backend="ray", ray=options, batch_runs=batch_runs,
                                      stack=stack)
                threads = 1
            else:
                execution = Execution(device=args.device, workers=workers, trainers=trainers, batch_runs=batch_runs,
                                      stack=stack)
                threads = 1 if workers > 1 and args.device == "cpu" else threads
            trainers = execution.trainers_on(args.device)
            folder = Path(tempfile.mkdtemp(prefix="grid-bench-"))
            try:
                profile = cProfile.Profile() if args.profile and repeat == args.repeats - 1 \
                    and (backend, workers, execution.trainers, batch_runs, stack) == configs[-1] else None
                started_at, start = time.time(), time.perf_counter()
                with profile or contextlib.nullcontext():
                    summary = launch(spec, folder, execution)
                seconds, ended_at = time.perf_counter() - start, time.time()
                if profile is not None:
                    print_batches(folder / "results.csv")
                    pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
                    pstats.Stats(profile).sort_stats("cumulative").print_stats(r"/(adapter|experiments)/",
                                                                             args.profile)
                resumed = time.perf_counter()
                again = launch(spec, folder, execution, progress=False)
                resume_seconds = time.perf_counter() - resumed
            finally:
                shutil.rmtree(folder)
            rows.append({"backend": backend, "workers": workers, "trainers": trainers, "threads": threads,
                         "batch_runs": batch_runs,
                         "stack": stack,
                         "device": args.device, "repeat": repeat, "methods": methods, "shots": shots, "seeds": seeds,
                         "runs": summary["runs"], "seconds": seconds,
                         "runs_per_minute": 60 * summary["runs"] / seconds, "resume_seconds": resume_seconds,
                         "started_at": started_at, "ended_at": ended_at,
                         "resume_skipped": again["skipped"]})
            print(f"  repeat {repeat}: {backend} {workers} × {threads if args.device == 'cpu' else trainers} batch "
                  f"{batch_runs} stack {stack}: "
                  f"{seconds:.1f} s", flush=True)
    label = f"{' × '.join(methods)} × {len(shots)} shots × {len(seeds)} seeds"
    print(f"torch {torch.__version__}, {args.device}")
    print(f"{'grid':<{len(label)}} {'backend':>7} {'procs×threads':>13} {'batch':>5} {'stack':>5} {'runs':>5} "
          f"{'wall s':>8} {'runs/min':>9} {'resume s':>9}")
    for row in rows:  # on a GPU: `workers` processes × `trainers` trainer threads (each on its own stream)
        shape = (f"{row['workers']} × {row['threads']}" if args.device == "cpu"
                 else f"{row['workers']} × {row['trainers']} str")
        print(f"{label} {row['backend']:>7} {shape:>13} {row['batch_runs']:5d} {row['stack']:>5} {row['runs']:5d} "
              f"{row['seconds']:8.1f} {row['runs_per_minute']:9.1f} {row['resume_seconds']:9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))


def print_batches(results: Path) -> None:
    """Each (method, shots) batch's training wall time (train_seconds is the batch's divided among its runs; it
    includes the post-training search) and its runs' evaluation time: where a grid's critical path lies."""
    with results.open() as f:
        rows = list(csv.DictReader(f))
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], int(row["shots"])), []).append(row)
    print(f"{'method':<16} {'shots':>5} {'runs':>4} {'steps':>6} {'train s':>8} {'eval s':>7}")
    for (method, shots), members in sorted(groups.items()):
        train = sum(float(r["train_seconds"]) for r in members)
        evaluation = sum(float(r["eval_seconds"]) for r in members)
        print(f"{method:<16} {shots:5d} {len(members):4d} {members[0]['steps']:>6} {train:8.3f} {evaluation:7.3f}")


if __name__ == "__main__":
    main()
