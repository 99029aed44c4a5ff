"""LatHAdapter's radius options compared on the project's synthetic hierarchy caches (`cache/synthetic.py`):
base, novel and HM of base-to-novel (16 shots on the base half), mean ± std over seeds 1–3, for `radius = head,
norm, kind`, and the share of test images on which `infer=euclid` and `infer=hyper` predict different classes; every
other option at LatHAdapter's defaults of 2026-11-30, when it ran (lr 1e-3, λ_hier 0.1: `THEN`).

    python benchmarks/radius_study.py [--worlds 2] [--classes 40] [--out benchmarks/results/radius_study.json]

No default is chosen here and nothing looks at test accuracy to choose: this is a measurement, reported once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from lathadapter.adapter.evaluate import harmonic_mean
from lathadapter.cache.store import CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments.run import RunConfig, run

DATA = Path(__file__).parent / ".data"
RADII = ("head", "norm", "kind")
SEEDS = (1, 2, 3)
# LatHAdapter's defaults of 2026-11-30, when the study ran (before the defaults study), given to every run whatever
# `LatHAdapterOptions` says now, so that a rerun repeats the table.
THEN = {"lr": 1e-3, "lambda_hier": 0.1}


def world(index: int, classes: int) -> Path:
    """A synthetic cache with a family → class → image hierarchy; world i uses generator seed 100 + i."""
    path = DATA / f"radius-world{index}-{classes}.h5"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        write_synthetic_cache(path, num_classes=classes, dim=128, shots=(16,), seeds=SEEDS,
                              families=max(4, classes // 8), seed=100 + index, name=f"world{index}")
    return path


def disagreement(outcome, data) -> float:
    """% of the novel test images whose top class differs between infer=euclid and infer=hyper."""
    method = outcome.method
    _, novel = data.base_novel()
    predictions = []
    for infer in ("euclid", "hyper"):
        method.options = dataclasses.replace(method.options, infer=infer)
        with torch.no_grad():
            predictions.append(method.logits(novel.test_features, novel.text_features).argmax(-1))
    return float((predictions[0] != predictions[1]).float().mean() * 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, default=2)
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "radius_study.json")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; base-to-novel, 16 shots, seeds "
          f"{','.join(map(str, SEEDS))}, {args.classes} classes, D = 128; LatHAdapter's defaults of 2026-11-30 "
          f"({', '.join(f'{k}={v}' for k, v in THEN.items())}, the rest as today) except radius")
    rows = []
    for index in range(args.worlds):
        path = world(index, args.classes)
        with CacheReader(path) as reader:
            sets = {seed: reader.load(16, seed) for seed in SEEDS}
        for radius in RADII:
            runs = []
            for seed in SEEDS:
                start = time.perf_counter()
                config = RunConfig.create("lathadapter", 16, seed, "base", overrides={**THEN, "radius": radius})
                outcome = run(config, sets[seed])
                accuracy = outcome.metrics["accuracy"]
                runs.append({"seed": seed, "base": accuracy["base"], "novel": accuracy["novel"],
                             "hm": outcome.metrics["hm"], "disagree": disagreement(outcome, sets[seed]),
                             "seconds": time.perf_counter() - start})
                print(f"  world{index} radius={radius} seed {seed}: base {accuracy['base']:.2f} novel "
                      f"{accuracy['novel']:.2f} ({runs[-1]['seconds']:.1f} s)", flush=True)
            rows.append({"world": index, "radius": radius, "runs": runs})
    print(f"\n{'world':<7} {'radius':<7} {'base':>14} {'novel':>14} {'HM of means':>12} {'euclid≠hyper %':>15}")
    for row in rows:
        cells = {k: [r[k] for r in row["runs"]] for k in ("base", "novel", "disagree")}
        text = {k: f"{statistics.fmean(v):6.2f} ± {statistics.stdev(v):5.2f}" for k, v in cells.items()}
        hm = harmonic_mean(statistics.fmean(cells["base"]), statistics.fmean(cells["novel"]))
        print(f"world{row['world']:<2} {row['radius']:<7} {text['base']:>14} {text['novel']:>14} {hm:12.2f} "
              f"{statistics.fmean(cells['disagree']):15.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
