"""cross-modal's official heads and starts side by side: the linear head from the zero-shot text weights (the
default, the official README's command), the linear head from torch's random start (`init=random`, the official
`linear_probe.sh` since ac9077e) and the cross-modal adapter (`classifier=adapter`, `adapter.sh`, its official lr
1e-4; from either start; and at 10× that lr, the linear head's), each at its official recipe otherwise, on worlds of
the defaults study (benchmarks/lathadapter_study.py) at 4 and 16 shots, seeds 1-3, every run keeping its epoch best
on the few-shot val subset (`--select val`, as the official code keeps its best checkpoint on val). Validation
accuracy (that best epoch's, on the few-shot val subset) and test accuracy, mean ± std over seeds, per world and the
mean over worlds.

    python benchmarks/cross_modal_heads.py [--data benchmarks/.data/lpp-val-set] [--out benchmarks/.data/cm-heads]
                                           [--worlds plain-a,attr-a,plain-b] [--jobs 1]
                                           [--save benchmarks/results/cross_modal_heads.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from lathadapter_study import DATA, RESULTS, SEEDS, WORLDS, clip_worlds, emit  # noqa: E402 — the study's worlds

from lathadapter.cache.store import CacheReader  # noqa: E402
from lathadapter.experiments.execution import Execution  # noqa: E402
from lathadapter.experiments.launch import launch, prepare  # noqa: E402
from lathadapter.experiments.spec import GridSpec, expand  # noqa: E402

SHOTS = (4, 16)
VARIANTS = {  # row → cross-modal's options
    "linear, init=zeroshot (default)": {},
    "linear, init=random": {"init": "random"},
    "adapter, init=zeroshot": {"classifier": "adapter"},
    "adapter, init=random": {"classifier": "adapter", "init": "random"},
    "adapter, lr=1e-3 (10× official)": {"classifier": "adapter", "lr": "0.001"},
}


def specs(caches: dict[str, Path], options: dict[str, str]) -> GridSpec:
    """One variant's grid: every world, both shot counts, seeds 1-3, select=val."""
    return GridSpec([str(p) for p in caches.values()], ["cross-modal"], list(SHOTS), SEEDS, ["all"], select=["val"],
                    options={k: [v] for k, v in options.items()})


def cells(caches: dict[str, Path], spec: GridSpec, out: Path) -> dict[str, dict[str, dict[str, list[float]]]]:
    """world → `{4s,16s}` → {val, test, seconds}: per-seed values read from the runs' metrics."""
    names = {str(p): n for n, p in caches.items()}
    _, keyed = prepare(expand(spec), out)
    found: dict[str, dict[str, dict[str, list[float]]]] = {}
    for item in sorted(keyed, key=lambda k: k.run.config.seed):  # each cell's lists in the order of SEEDS
        metrics = json.loads((out / "runs" / item.key / "metrics.json").read_text())
        cell = found.setdefault(names[item.run.cache], {}).setdefault(f"{item.run.config.shots}s", {})
        cell.setdefault("val", []).append(metrics["val_accuracy"])
        cell.setdefault("test", []).append(metrics["accuracy"]["all"])
        cell.setdefault("seconds", []).append(metrics["train_seconds"] + metrics["eval_seconds"])
    return found


def spread(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "lpp-val-set", help="where the worlds are (written once)")
    parser.add_argument("--out", type=Path, default=DATA / "cm-heads", help="the grids' folder (resumable)")
    parser.add_argument("--worlds", default="plain-a,attr-a,plain-b", help=f"of {', '.join(WORLDS)}")
    parser.add_argument("--jobs", type=int, default=1, help="training processes of one thread each")
    parser.add_argument("--save", type=Path, default=RESULTS / "cross_modal_heads.json")
    args = parser.parse_args()
    chosen = args.worlds.split(",")
    if unknown := [w for w in chosen if w not in WORLDS]:
        parser.error(f"--worlds: unknown {', '.join(unknown)}; choose among {', '.join(WORLDS)}")
    torch.set_num_threads(1)
    caches = clip_worlds(args.data, {w: WORLDS[w] for w in chosen}, SHOTS, tuple(SEEDS), "study")
    lines: list[str] = []
    emit(lines, f"# python benchmarks/cross_modal_heads.py --worlds {args.worlds} --jobs {args.jobs}; torch "
                f"{torch.__version__}, {args.jobs} process(es) × 1 thread")
    for name, path in caches.items():
        with CacheReader(path) as reader:
            info = reader.info()
        emit(lines, f"{name}: {path.name}, fingerprint {info.fingerprint}")
    table: dict[str, Any] = {}
    start = time.perf_counter()
    for row, options in VARIANTS.items():
        spec = specs(caches, options)
        launch(spec, args.out, Execution(workers=args.jobs, batch_runs=8), progress=False)
        table[row] = cells(caches, spec, args.out)
    wall = time.perf_counter() - start
    for world in [*caches, "mean over worlds"]:
        emit(lines, f"\n### {world}: accuracy (%), val (the kept epoch, few-shot val subset) / test, mean ± std over "
                    "seeds 1–3" + (" (of the per-seed means over worlds)" if world == "mean over worlds" else ""))
        emit(lines, "\n| cross-modal | val 4s | test 4s | val 16s | test 16s | s a run |")
        emit(lines, "| --- | --- | --- | --- | --- | --- |")
        for row, by_world in table.items():
            texts, seconds = [], []
            for shots in (f"{k}s" for k in SHOTS):
                for split in ("val", "test"):
                    if world == "mean over worlds":  # per seed the mean over worlds, then mean ± std over seeds
                        values = [statistics.fmean(by_world[w][shots][split][i] for w in caches)
                                  for i in range(len(SEEDS))]
                    else:
                        values = by_world[world][shots][split]
                    texts.append(spread(values))
                seconds += [s for w in caches if world in (w, "mean over worlds")
                            for s in by_world[w][shots]["seconds"]]
            emit(lines, f"| {row} | " + " | ".join(texts) + f" | {statistics.fmean(seconds):.1f} |")
    emit(lines, f"\nwall seconds: {wall:.0f} (a rerun resumes)")
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps({"table": table, "seconds": wall}, indent=1) + "\n")
    args.save.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
