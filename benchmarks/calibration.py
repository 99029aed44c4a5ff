"""Calibration beside accuracy: every method at its defaults (untuned; the baselines at their official recipes) on the
demo cache, 4 and 16 shots, seeds 1–3; test accuracy, ECE (15 bins, as every run records it), the test ECE after
temperature scaling (Guo et al. 2017: one T per run, fitted by NLL on its few-shot val subset) with that T, and the
mean top-1 confidence, in percent, mean ± std over seeds. Confidence above accuracy: over-confident; below:
under-confident. ECE after scaling tells what a method's calibration is beyond one temperature.

    OMP_NUM_THREADS=1 python benchmarks/calibration.py [--cache demo-output/caches/demo_shapes_v3.h5]
        [--out benchmarks/.data/calibration] [--workers 2] [--save benchmarks/results/calibration.txt]
    OMP_NUM_THREADS=1 python benchmarks/calibration.py --worlds [--out benchmarks/.data/calibration-worlds]
        [--workers 2] [--save benchmarks/results/calibration_worlds.txt]

The demo cache is the one `lathadapter demo` (`make demo`) writes. The grid resumes: a rerun skips finished runs.
The mean confidence and the temperature-scaled ECE are not a run's record: the grid's evaluator hook adds them here to
each run's metrics.json (`confidence`, `ts_ece`, `temperature`), with the probabilities the ECE bins
(`Method.probabilities`); the scaling (`adapter.temperature`, as `lathadapter inspect` prints it) divides their
logarithm by T, which for a softmax is its logits divided by T.

`--worlds`: the same on eight worlds instead of the demo, the defaults study's four held-out CLIP-like worlds
(benchmarks/lathadapter_study.py, zero-shot over-confident) and the four whose zero-shot is calibrated
(benchmarks/calibrated_worlds.py), each written once where its study writes it; every method at its defaults
(untuned), seeds 1–2 (`WORLD_SEEDS`), and LatHAdapter also with `infer=euclid` and `infer=hyper` (the same training,
scored by one softmax; at the default `radius=kind` the same predictions). A table per world, then per method its
mean ECE over each group of four worlds and its rank there; `--save` also writes the cells as JSON beside the text.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from calibrated_worlds import calibrated_worlds  # noqa: E402 — the four calibrated worlds, written once
from lathadapter_study import WORLDS, clip_worlds  # noqa: E402 — the defaults study's held-out worlds

from lathadapter.adapter.catalog import method_names  # noqa: E402
from lathadapter.adapter.temperature import temperature_scaled  # noqa: E402
from lathadapter.experiments.execution import Execution  # noqa: E402
from lathadapter.experiments.launch import launch, prepare  # noqa: E402
from lathadapter.experiments.run import RunOutcome  # noqa: E402
from lathadapter.experiments.spec import GridRun, GridSpec, expand  # noqa: E402

DATA = Path(__file__).parent / ".data"
SHOTS = [4, 16]
SEEDS = [1, 2, 3]
# `--worlds`: seeds 1–2, 480 runs in 512 s on two one-thread workers of a shared 2-core machine; seeds 1–3 (720 runs,
# about 13 minutes) did not fit the study's 12-minute budget: `--seeds 1 2 3` adds the third.
WORLD_SEEDS = [1, 2]
INFERS = ["euclid", "hyper"]  # LatHAdapter's single-softmax scorings, beside its default `infer=fused`
GROUPS = ("uncalibrated", "calibrated")  # the worlds' zero-shot: over-confident (the defaults study's) or calibrated


@torch.no_grad()
def add_confidence(grid_run: GridRun, outcome: RunOutcome, data: Any) -> dict[str, Any]:
    """The run's mean top-1 confidence (%) on its test set, and its test ECE (%) after temperature scaling fitted on
    its few-shot val subset with the temperature T (all None for a diverged run or a cache without val images)."""
    if outcome.metrics["diverged"] is not None:
        return {"confidence": None, "ts_ece": None, "temperature": None}
    method = outcome.method.eval()
    scores = method.logits(data.test_features)
    found: dict[str, Any] = {
        "confidence": 100.0 * float(method.probabilities(scores.float()).amax(dim=-1).double().mean()),
        "ts_ece": None, "temperature": None}
    scaled = temperature_scaled(method, method.logits(data.val_features), data.val_labels, scores, data.test_labels)
    if scaled is not None:
        found |= {"ts_ece": scaled.scores.ece, "temperature": scaled.temperature}
    return found


def confidence_evaluator(device: str) -> Any:
    return add_confidence


def spread(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else \
        f"{values[0]:.2f}"


def table(out: Path) -> str:
    """Method × shots: accuracy, ECE, ECE after temperature scaling on val and its T, mean confidence and
    confidence − accuracy, mean ± std over seeds."""
    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    cells: dict[tuple[str, int], dict[str, list[float]]] = {}
    for row in rows:
        metrics = json.loads((out / "runs" / row["key"] / "metrics.json").read_text())
        if row["acc_all"] == "":
            continue
        cell = cells.setdefault((row["method"], int(row["shots"])),
                                {"acc": [], "ece": [], "ts": [], "t": [], "conf": [], "gap": []})
        cell["acc"].append(float(row["acc_all"]))
        cell["ece"].append(float(row["ece_all"]))
        cell["ts"].append(metrics["ts_ece"])
        cell["t"].append(metrics["temperature"])
        cell["conf"].append(metrics["confidence"])
        cell["gap"].append(metrics["confidence"] - float(row["acc_all"]))
    lines = ["| method | shots | accuracy | ECE | ECE after TS | T | mean confidence | confidence − accuracy |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    order = method_names()
    for (method, shots), cell in sorted(cells.items(), key=lambda item: (order.index(item[0][0]), item[0][1])):
        lines.append(f"| {method} | {shots} | "
                     + " | ".join(spread(cell[k]) for k in ("acc", "ece", "ts", "t", "conf", "gap")) + " |")
    return "\n".join(lines) + "\n"


def eight_worlds() -> dict[str, tuple[str, Path]]:
    """The eight worlds by name: (group, cache), each written once where its study writes it (and reused there)."""
    study = clip_worlds(DATA / "lathadapter-study-2", WORLDS, tuple(SHOTS), tuple(SEEDS), "study")
    calibrated = calibrated_worlds(DATA / "calibrated-worlds")
    return {**{n: ("uncalibrated", p) for n, p in study.items()},
            **{n: ("calibrated", p) for n, p in calibrated.items()}}


def worlds_spec(worlds: dict[str, tuple[str, Path]], seeds: list[int]) -> GridSpec:
    """Every method at its defaults on the worlds, LatHAdapter at each `infer` (fused, the default, first)."""
    return GridSpec([str(p) for _, p in worlds.values()], method_names(), SHOTS, seeds,
                    options={"lathadapter.infer": ["fused", *INFERS]})


def row_name(method: str, options: Any) -> str:
    """A table row: the method, or LatHAdapter's non-default `infer`."""
    return f"{method} infer={options.infer}" if method == "lathadapter" and options.infer != "fused" else method


def world_cells(worlds: dict[str, tuple[str, Path]], spec: GridSpec, out: Path
                ) -> dict[tuple[str, str, int], dict[str, list[float]]]:
    """(world, row, shots) → accuracy, ECE, ECE after temperature scaling, mean confidence and confidence − accuracy
    of each seed's run (a diverged run has none and is left out)."""
    names = {str(p): n for n, (_, p) in worlds.items()}
    _, keyed = prepare(expand(spec), out)
    cells: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    for item in keyed:
        metrics = json.loads((out / "runs" / item.key / "metrics.json").read_text())
        c = item.run.config
        cell = cells.setdefault((names[item.run.cache], row_name(c.method, c.options), c.shots),
                                {"acc": [], "ece": [], "ts": [], "conf": [], "gap": []})
        if metrics["accuracy"]["all"] is None:
            continue
        cell["acc"].append(metrics["accuracy"]["all"])
        cell["ece"].append(metrics["ece"]["all"])
        cell["ts"].append(metrics["ts_ece"])
        cell["conf"].append(metrics["confidence"])
        cell["gap"].append(metrics["confidence"] - metrics["accuracy"]["all"])
    return cells


def rows() -> list[str]:
    """The table rows in the registry's order, LatHAdapter's `infer` variants after it."""
    return [*method_names(), *(f"lathadapter infer={i}" for i in INFERS)]


def world_tables(worlds: dict[str, tuple[str, Path]], cells: dict[tuple[str, str, int], dict[str, list[float]]]
                 ) -> str:
    """One table a world: rows × shots, accuracy, ECE, ECE after temperature scaling and confidence − accuracy, mean
    ± std over seeds."""
    heads = [f"{s}s {k}" for s in SHOTS for k in ("accuracy", "ECE", "ECE after TS", "conf − acc")]
    text = []
    for world, (group, path) in worlds.items():
        text += [f"\n## {world} ({group} zero-shot; {path.name})\n",
                 "| method | " + " | ".join(heads) + " |", "| --- |" + " ---: |" * len(heads)]
        for row in rows():
            text.append(f"| {row} | " + " | ".join(spread(cells[world, row, s][k]) if cells[world, row, s][k] else "—"
                                                  for s in SHOTS for k in ("acc", "ece", "ts", "gap")) + " |")
    return "\n".join(text) + "\n"


def mean_ece(worlds: list[str], row: str, shots: int, cells: dict[tuple[str, str, int], dict[str, list[float]]],
             key: str = "ece") -> float:
    """`row`'s ECE (`key="ts"`: after temperature scaling) at `shots`, the mean over `worlds` of each world's mean
    over seeds."""
    return statistics.fmean(statistics.fmean(cells[w, row, shots][key]) for w in worlds)


def summary_table(worlds: dict[str, tuple[str, Path]], cells: dict[tuple[str, str, int], dict[str, list[float]]]
            ) -> tuple[str, dict[str, Any]]:
    """Per row and group of worlds × shots: the mean ECE over the group's four worlds, its rank among the methods
    (an `infer` variant ranked in LatHAdapter's place), on how many of the worlds its ECE is the lowest of the
    methods, and on how many its mean confidence is above its accuracy (over-confident); then the same mean, rank
    and lowest of the ECE after temperature scaling on val."""
    groups = {g: [w for w, (group, _) in worlds.items() if group == g] for g in GROUPS}
    columns = [(g, s) for g in GROUPS for s in SHOTS]
    others = [m for m in method_names() if m != "lathadapter"]
    found: dict[str, Any] = {}
    for row in rows():
        rivals = [*others, row if row.startswith("lathadapter") else "lathadapter"]
        found[row] = {}
        for g, s in columns:
            cell: dict[str, Any] = {}
            for key, prefix in (("ece", ""), ("ts", "ts_")):
                ece = {r: mean_ece(groups[g], r, s, cells, key) for r in rivals}
                lowest = sum(min(rivals, key=lambda r, w=w: statistics.fmean(cells[w, r, s][key])) == row
                             for w in groups[g])
                cell |= {f"{prefix}ece": ece[row], f"{prefix}rank": sorted(ece.values()).index(ece[row]) + 1,
                         f"{prefix}lowest": lowest}
            cell["over"] = sum(statistics.fmean(cells[w, row, s]["gap"]) > 0 for w in groups[g])
            found[row][f"{g} {s}s"] = cell
    heads = [f"{g} {s}s" for g, s in columns]
    lines = ["\n## Summary: mean ECE over each group's four worlds (rank among the 13 methods; worlds where it is the "
             "lowest; worlds where it is over-confident)\n",
             "| method | " + " | ".join(heads) + " |", "| --- |" + " ---: |" * len(heads)]
    for row, cols in found.items():
        lines.append(f"| {row} | " + " | ".join(f"{c['ece']:.2f} (#{c['rank']}; {c['lowest']}/4; {c['over']}/4)"
                                               for c in cols.values()) + " |")
    lines += ["\n## Summary after temperature scaling (T fitted per run on its few-shot val subset): mean ECE over "
              "each group's four worlds (rank among the 13 methods; worlds where it is the lowest)\n",
              "| method | " + " | ".join(heads) + " |", "| --- |" + " ---: |" * len(heads)]
    for row, cols in found.items():
        lines.append(f"| {row} | " + " | ".join(f"{c['ts_ece']:.2f} (#{c['ts_rank']}; {c['ts_lowest']}/4)"
                                               for c in cols.values()) + " |")
    return "\n".join(lines) + "\n", found


def run_worlds(args: argparse.Namespace) -> None:
    """`--worlds`: the eight worlds' tables and summary, printed and (`--save`) written with their JSON."""
    start = time.perf_counter()
    worlds = eight_worlds()
    spec = worlds_spec(worlds, args.seeds)
    out = args.out or DATA / "calibration-worlds"
    launched = launch(spec, out, Execution.parse("cpu", workers=args.workers), progress=False,
                      extra_factory=confidence_evaluator)
    cells = world_cells(worlds, spec, out)
    text_summary, found = summary_table(worlds, cells)
    header = (f"# torch {torch.__version__}, CPU, {args.workers} worker processes of 1 thread; eight worlds, 40 "
              f"classes, D = 128: the defaults study's held-out {', '.join(WORLDS)} (uncalibrated zero-shot) and "
              f"{', '.join(w for w, (g, _) in worlds.items() if g == 'calibrated')} (calibrated zero-shot); every "
              f"method at its defaults (untuned), LatHAdapter also infer={' and infer='.join(INFERS)}; shots {SHOTS}, "
              f"seeds {args.seeds}: {launched['runs']} runs ({launched['done']} trained now) in "
              f"{time.perf_counter() - start:.0f} s\n"
              "# percent, mean ± std over seeds; ECE over 15 equal-width bins of the top-1 confidence; confidence − "
              "accuracy > 0: over-confident\n")
    text = header + text_summary + world_tables(worlds, cells)
    print(text, end="")
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text)
        args.save.with_suffix(".json").write_text(json.dumps(
            {"worlds": {w: {"group": g, "cache": p.name} for w, (g, p) in worlds.items()}, "shots": SHOTS,
             "seeds": args.seeds, "summary": found,
             "cells": [{"world": w, "method": r, "shots": s, **cell} for (w, r, s), cell in cells.items()]},
            indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("demo-output/caches/demo_shapes_v3.h5"))
    parser.add_argument("--worlds", action="store_true", help="the eight worlds of the defaults studies instead of "
                        "the demo cache (--cache is not read)")
    parser.add_argument("--seeds", type=int, nargs="+", default=WORLD_SEEDS, help="with --worlds (the demo's are "
                        "1 2 3)")
    parser.add_argument("--out", type=Path, default=None, help="the grid's folder (default: benchmarks/.data/"
                        "calibration, with --worlds calibration-worlds)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--save", type=Path, default=None, help="also write the table (and its header) here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the driver; each worker process trains with one thread
    if args.worlds:
        run_worlds(args)
        return
    if not args.cache.is_file():
        parser.error(f"--cache {args.cache}: no such file; `lathadapter demo` (make demo) writes the demo cache")
    args.out = args.out or DATA / "calibration"
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
