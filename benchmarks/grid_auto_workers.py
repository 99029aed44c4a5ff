"""The default worker count against one process and against workers alone: `lathadapter grid` as a user runs it, in a
fresh process each time (imports and worker start-ups included), on grids of cheap and of heavier runs.

    python benchmarks/grid_auto_workers.py [--rounds 2] [--grids cheap-100,cheap-500,demo-75]

Variants: `--workers 1` (this process), `--workers 2` (two worker processes; this process only saves), and no
`--workers` (auto: on 2 free CPUs two workers, started once the runs this process trains first show that they pay,
`WorkerProcesses.probe`). Grids: `cheap-N`, N linear-probe runs of one epoch on a 4-class, 8-dim synthetic
cache (a few milliseconds each); `demo-75`, five trained methods × shots 1-16 × seeds 1-3 on the demo's cache (36
classes, 10 views). Each variant runs in a fresh output folder; the variants alternate their order between rounds.
Prints the wall seconds (min over rounds), auto's ratio to each, and how many runs of auto's grid this process
trained (`config.json`'s `execution.workers` 1). Run it with OMP_NUM_THREADS unset on a machine left otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.demo.pipeline import build_demo_cache

VARIANTS = ("1", "2", "auto")
DEMO_METHODS = "linear-probe,clip-adapter,tip-adapter-f,taskres,lathadapter"


def grid_args(name: str, data: Path) -> list[str]:
    """The `lathadapter grid` arguments of grid `name`, its caches written under `data` once."""
    if name.startswith("cheap-"):
        runs = int(name.split("-")[1])
        cache = data / "tiny.h5"
        if not cache.exists():
            write_synthetic_cache(cache, num_classes=4, dim=8, views=1, shots=(1, 2), seeds=tuple(range(1, 11)))
        lrs = ",".join(f"{0.001 * (i + 1):g}" for i in range(runs // 20))
        return ["--cache", str(cache), "--method", "linear-probe", "--shots", "1,2", "--seeds",
                ",".join(map(str, range(1, 11))), "--set", "epochs=1", "--set", "min_steps=0", "--set", f"lr={lrs}"]
    cache = data / "demo.h5"
    if not cache.exists():
        build_demo_cache(data / "demo-data", cache, progress=False)
    return ["--cache", str(cache), "--method", DEMO_METHODS, "--shots", "1,2,4,8,16", "--seeds", "1,2,3"]


def run_grid(args: list[str], workers: str, out: Path) -> float:
    """Wall seconds of one `lathadapter grid` in a fresh process."""
    command = [sys.executable, "-c", "import sys; from lathadapter.cli import main; sys.exit(main())", "grid",
               *args, "--out", str(out), "--device", "cpu", *([] if workers == "auto" else ["--workers", workers])]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def trained_here(out: Path) -> int:
    """Runs of a grid folder whose `config.json` says they trained in the grid's own process."""
    return sum(json.loads(path.read_text())["execution"]["workers"] == 1 for path in out.glob("runs/*/config.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--grids", default="cheap-100,cheap-500,demo-75")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the start; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")
    with tempfile.TemporaryDirectory(prefix="auto-workers-") as scratch:
        data = Path(scratch)
        rows = []
        for name in args.grids.split(","):
            grid = grid_args(name, data)
            seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
            here = 0
            for round_ in range(args.rounds):
                for workers in VARIANTS if round_ % 2 == 0 else reversed(VARIANTS):
                    out = data / f"{name}-{workers}-{round_}"
                    seconds[workers].append(run_grid(grid, workers, out))
                    if workers == "auto":
                        here = trained_here(out)
                    shutil.rmtree(out)
            best = {v: min(s) for v, s in seconds.items()}
            rows.append(f"| {name} | {best['1']:.1f} | {best['2']:.1f} | {best['auto']:.1f} | "
                        f"{best['auto'] / best['1']:.2f} | {best['auto'] / best['2']:.2f} | {here} |")
            print(rows[-1], flush=True)
    print(f"\nload {os.getloadavg()[0]:.1f} at the end; wall seconds, min over {args.rounds} rounds\n")
    print("| grid | --workers 1 | --workers 2 | auto | auto / 1 | auto / 2 | auto: runs trained here |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
