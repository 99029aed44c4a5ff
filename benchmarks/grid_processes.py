"""Several processes training grids on one GPU at once: P copies of `benchmarks/grid.py` (each its own process, with
its own trainer threads, its own output folder), started together after each one's warm-up; the aggregate rate is
P × runs over the span from the first start to the last end. Answers whether processes (each with its own Python
interpreter, so its own GIL) add throughput on one GPU that threads of one process do not. (Stop 12's question, which
`lathadapter grid --workers N` on a GPU now answers inside one command: `benchmarks/grid.py --workers 2,4`; this
script times the copies after their warm-up, so without the processes' start.)

    python benchmarks/grid_processes.py [--processes 1,2,4] [--lead 20] [--timeout 120] -- GRID_ARGS...

GRID_ARGS go to every copy (give one configuration: one --trainers value, one --batch-runs value). Prints a line per
count and writes benchmarks/results/grid_processes.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--lead", type=float, default=20.0,
                        help="seconds from the copies' launch to their common start: each one's imports, CUDA "
                             "context and warm-up grid end before it")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a count's copies may take in all")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "grid_processes.json")
    parser.add_argument("grid_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    grid_args = [a for a in args.grid_args if a != "--"]
    script = Path(__file__).parent / "grid.py"
    rows = []
    for count in (int(v) for v in args.processes.split(",")):
        with tempfile.TemporaryDirectory(prefix="grid-processes-") as folder:
            start_at = time.time() + args.lead
            outs = [Path(folder) / f"copy{i}.json" for i in range(count)]
            children = [subprocess.Popen([sys.executable, str(script), *grid_args, "--warmup", "--start-at",
                                          str(start_at), "--out", str(out)], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True) for out in outs]
            failed = []
            for i, child in enumerate(children):
                try:
                    output, _ = child.communicate(timeout=max(1.0, start_at + args.timeout - time.time()))
                except subprocess.TimeoutExpired:
                    child.kill()
                    output, _ = child.communicate()
                    failed.append(f"copy {i} ran out of time")
                if child.returncode != 0 and not failed:
                    failed.append(f"copy {i} exited {child.returncode}: {output[-1500:]}")
            if failed:
                print(f"{count} processes: " + "; ".join(failed), flush=True)
                continue
            copies = [json.loads(out.read_text()) for out in outs]
        late = max(c["started_at"] for c in copies) - start_at
        span = max(c["ended_at"] for c in copies) - min(c["started_at"] for c in copies)
        runs = sum(c["runs"] for c in copies)
        row = {"processes": count, "runs": runs, "span_seconds": span, "runs_per_minute": 60 * runs / span,
               "latest_start_seconds": late, "copies": copies}
        rows.append(row)
        each = ", ".join(f"{c['seconds']:.1f}" for c in copies)
        print(f"{count} processes × {copies[0]['trainers']} trainer threads: {runs} runs in {span:.1f} s = "
              f"{row['runs_per_minute']:.0f} runs/min (each copy {each} s; the last started {late:.1f} s late)",
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
