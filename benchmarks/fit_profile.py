"""Where one LatHAdapter fit's time goes: the Caltech-like cache of `benchmarks/fit.py` (16 shots), trained once to
warm the device up, then again under cProfile; prints the fit's seconds and the functions of the package and of
torch's optimiser and graph code by cumulative time. `--first` profiles the process's first fit instead (on a GPU:
what a fresh process's fit pays once: kernel loading, workspaces, captures).

    python benchmarks/fit_profile.py [--device cpu|cuda] [--lines 35] [--first]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch
from fit import cache_for  # benchmarks/ is the script directory

from lathadapter.adapter.catalog import create_method
from lathadapter.adapter.trainer import synchronize, train
from lathadapter.cache.store import CacheReader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--lines", type=int, default=35)
    parser.add_argument("--first", action="store_true", help="profile the first fit, not the third")
    args = parser.parse_args()
    with CacheReader(cache_for("caltech")) as reader:
        data = reader.load(16, 1, device=args.device)
    device = torch.device(args.device)
    seconds = []
    profiler = cProfile.Profile()
    for attempt in range(3):
        method = create_method("lathadapter", data)
        profiled = attempt == (0 if args.first else 2)
        synchronize(device)
        start = time.perf_counter()
        if profiled:
            profiler.enable()
        result = train(method, data, seed=1)
        synchronize(device)
        if profiled:
            profiler.disable()
        seconds.append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, {args.device}: fit seconds {', '.join(f'{s:.3f}' for s in seconds)} "
          f"(the {'first' if args.first else 'last'} under cProfile); {result.steps} steps, captured "
          f"{result.cuda_graph}")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumtime").print_stats(r"lathadapter|optim|graphs", args.lines)
    print(text.getvalue())


if __name__ == "__main__":
    main()
