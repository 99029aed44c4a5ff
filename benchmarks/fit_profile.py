"""Where one LatHAdapter fit's time goes: the Caltech-like cache of `benchmarks/fit.py` (16 shots), trained once to
warm the device up, then again under cProfile; prints the fit's seconds and the functions of the package and of
torch's optimiser and graph code by cumulative time.

    python benchmarks/fit_profile.py [--device cpu|cuda] [--lines 35]
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
    args = parser.parse_args()
    with CacheReader(cache_for("caltech")) as reader:
        data = reader.load(16, 1, device=args.device)
    device = torch.device(args.device)
    seconds = []
    for attempt in range(3):
        method = create_method("lathadapter", data)
        profiler = cProfile.Profile() if attempt == 2 else None
        synchronize(device)
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        result = train(method, data, seed=1)
        synchronize(device)
        if profiler is not None:
            profiler.disable()
        seconds.append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, {args.device}: fit seconds {', '.join(f'{s:.3f}' for s in seconds)} "
          f"(the last under cProfile); {result.steps} steps, captured {result.cuda_graph}")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumtime").print_stats(r"lathadapter|optim|graphs", args.lines)
    print(text.getvalue())


if __name__ == "__main__":
    main()
