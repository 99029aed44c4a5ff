"""What LP++'s val set changes: its epoch chosen on CoOp's few-shot val subset (`search_set=subset`, min(K, 4) images a
class: every run before stop 17), on its own K-shot val set drawn as the official `main.py` draws it (`shots`, the
default) or on the whole val split (`split`). Measured on the worlds of the two studies that report LP++, seeds 1-3,
in their contexts: the defaults study's five (benchmarks/lathadapter_study.py: four CLIP-like synthetic worlds and the
demo's; few-shot 4 and 16 shots, base-to-novel 16 shots) and the baselines study's one (benchmarks/baselines_study.py;
few-shot 1, 4 and 16 shots, base-to-novel 16 shots). Base-to-novel reports base accuracy: LP++ cannot score novel
classes.

    python benchmarks/lpp_val_set.py [--data benchmarks/.data/lpp-val-set] [--save benchmarks/results/lpp_val_set.json]

The synthetic worlds hold 6 val images a class, so at 16 shots the official draw repeats images (its sampler draws a
class with fewer than K with replacement) and weighs each of the 6 by how often it was drawn; the demo's holds 16, so
at 16 shots the draw is its whole val split. At K ≤ 4 the draw is CoOp's val subset itself.
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
from baselines_study import study_world  # noqa: E402 — the studies' worlds, written once
from lathadapter_study import DATA, RESULTS, SEEDS, worlds  # noqa: E402

from lathadapter.cache.store import CacheReader  # noqa: E402
from lathadapter.experiments.run import RunConfig, run  # noqa: E402

SETS = ("subset", "shots", "split")
Table = dict[str, dict[str, dict[str, list[Any]]]]  # context → search_set → world (and world.epoch) → per seed
STUDIES = {"defaults study": (("all", 4), ("all", 16), ("base", 16)),  # (classes, shots) of each study's contexts
           "baselines study": (("all", 1), ("all", 4), ("all", 16), ("base", 16))}


def measure(paths: dict[str, Path], contexts: tuple[tuple[str, int], ...]) -> Table:
    """Test accuracy (%) and the selected epoch of every (context, val set, world), over seeds 1-3."""
    table: Table = {}
    for name, path in paths.items():
        with CacheReader(path) as reader:
            for classes, shots in contexts:
                context = f"{classes}-{shots}"
                for seed in SEEDS:
                    data = reader.load(shots, seed)
                    for search_set in SETS:  # alternated per seed: one load serves the three
                        config = RunConfig.create("lp++", shots, seed, classes, overrides={"search_set": search_set})
                        metrics = run(config, data).metrics
                        accuracy = metrics["accuracy"]["all" if classes == "all" else "base"]
                        cell = table.setdefault(context, {}).setdefault(search_set, {})
                        cell.setdefault(name, []).append(accuracy)
                        cell.setdefault(f"{name}.epoch", []).append(metrics["chosen"]["selected_epoch"])
                        cell.setdefault(f"{name}.set", []).append(metrics["chosen"]["search_set"])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "lpp-val-set",
                        help="where the worlds are written (once; a cache written before LP++'s val set was stored "
                             "lacks it)")
    parser.add_argument("--save", type=Path, default=RESULTS / "lpp_val_set.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    study_worlds = {"defaults study": worlds(args.data),
                    "baselines study": {"study": study_world(args.data / "study-world-40.h5", 40)}}
    lines = [f"torch {torch.__version__}, 1 thread. LP++ test accuracy (%), mean over seeds {SEEDS} per world, then "
             "over the study's worlds; epoch: the mean selected epoch over worlds and seeds"]
    tables = {}
    for study, paths in study_worlds.items():
        table = tables[study] = measure(paths, STUDIES[study])
        lines += ["", f"{study} ({', '.join(paths)}):", "",
                  "| context | " + " | ".join(f"{s} acc | {s} epoch" for s in SETS) + " | shots − subset |",
                  "| --- | " + " | ".join("--- | ---" for _ in SETS) + " | --- |"]
        for context, cells in table.items():
            means = {s: statistics.mean(statistics.mean(cells[s][w]) for w in paths) for s in SETS}
            epochs = {s: statistics.mean(e for w in paths for e in cells[s][f"{w}.epoch"]) for s in SETS}
            lines.append(f"| {context} | " + " | ".join(f"{means[s]:.2f} | {epochs[s]:.0f}" for s in SETS)
                         + f" | {means['shots'] - means['subset']:+.2f} |")
        if len(paths) > 1:
            lines += ["", "Per world (shots − subset, test accuracy points, mean over seeds):", ""]
            for context, cells in table.items():
                lines.append(f"- {context}: " + ", ".join(
                    f"{w} {statistics.mean(cells['shots'][w]) - statistics.mean(cells['subset'][w]):+.2f}"
                    for w in paths))
    lines.append(f"\n{time.perf_counter() - start:.0f} s")
    print("\n".join(lines))
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(tables, indent=1) + "\n")
    args.save.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
