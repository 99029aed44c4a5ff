"""Calibration beside accuracy: every method at its defaults (untuned; the baselines at their official recipes) on the
demo cache, 4 and 16 shots, seeds 1–3; test accuracy, ECE (15 bins, as every run records it) and the mean top-1
confidence, in percent, mean ± std over seeds. Confidence above accuracy: over-confident; below: under-confident.

    OMP_NUM_THREADS=1 python benchmarks/calibration.py [--cache demo-output/caches/demo_shapes_v3.h5]
        [--out benchmarks/.data/calibration] [--workers 2] [--save benchmarks/results/calibration.txt]

The demo cache is the one `lathadapter demo` (`make demo`) writes. The grid resumes: a rerun skips finished runs.
The mean confidence is not a run's record: it is added here to each run's metrics.json (`confidence`) by the grid's
evaluator hook, with the probabilities the ECE bins (`Method.probabilities`).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from lathadapter.adapter.catalog import method_names
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.launch import launch
from lathadapter.experiments.run import RunOutcome
from lathadapter.experiments.spec import GridRun, GridSpec

DATA = Path(__file__).parent / ".data"
SHOTS = [4, 16]
SEEDS = [1, 2, 3]


@torch.no_grad()
def add_confidence(grid_run: GridRun, outcome: RunOutcome, data: Any) -> dict[str, Any]:
    """The run's mean top-1 confidence (%) on its test set (None for a diverged run)."""
    if outcome.metrics["diverged"] is not None:
        return {"confidence": None}
    method = outcome.method.eval()
    scores = method.logits(data.test_features)
    return {"confidence": 100.0 * float(method.probabilities(scores.float()).amax(dim=-1).double().mean())}


def confidence_evaluator(device: str) -> Any:
    return add_confidence


def spread(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else \
        f"{values[0]:.2f}"


def table(out: Path) -> str:
    """Method × shots: accuracy, ECE, mean confidence and confidence − accuracy, mean ± std over seeds."""
    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    cells: dict[tuple[str, int], dict[str, list[float]]] = {}
    for row in rows:
        metrics = json.loads((out / "runs" / row["key"] / "metrics.json").read_text())
        if row["acc_all"] == "":
            continue
        cell = cells.setdefault((row["method"], int(row["shots"])), {"acc": [], "ece": [], "conf": [], "gap": []})
        cell["acc"].append(float(row["acc_all"]))
        cell["ece"].append(float(row["ece_all"]))
        cell["conf"].append(metrics["confidence"])
        cell["gap"].append(metrics["confidence"] - float(row["acc_all"]))
    lines = ["| method | shots | accuracy | ECE | mean confidence | confidence − accuracy |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    order = method_names()
    for (method, shots), cell in sorted(cells.items(), key=lambda item: (order.index(item[0][0]), item[0][1])):
        lines.append(f"| {method} | {shots} | " + " | ".join(spread(cell[k]) for k in ("acc", "ece", "conf", "gap"))
                     + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("demo-output/caches/demo_shapes_v3.h5"))
    parser.add_argument("--out", type=Path, default=DATA / "calibration")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--save", type=Path, default=None, help="also write the table (and its header) here")
    args = parser.parse_args()
    if not args.cache.is_file():
        parser.error(f"--cache {args.cache}: no such file; `lathadapter demo` (make demo) writes the demo cache")
    torch.set_num_threads(1)  # the driver; each worker process trains with one thread
    execution = Execution.parse("cpu", workers=args.workers)
    start = time.perf_counter()
    summary = launch(GridSpec([str(args.cache)], method_names(), SHOTS, SEEDS), args.out, execution,
                     progress=False, extra_factory=confidence_evaluator)
    header = (f"# torch {torch.__version__}, CPU, {args.workers} worker processes of 1 thread; {args.cache.name}; "
              f"every method at its defaults (untuned), shots {SHOTS}, seeds {SEEDS}: {summary['runs']} runs "
              f"({summary['done']} trained now) in {time.perf_counter() - start:.0f} s\n"
              "# percent, mean ± std over seeds; ECE over 15 equal-width bins of the top-1 confidence; confidence − "
              "accuracy > 0: over-confident\n")
    text = header + "\n" + table(args.out)
    print(text, end="")
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text)


if __name__ == "__main__":
    main()
