"""How the demo's training views are made and drawn, chosen on few-shot validation accuracy: the crop of the cached
augmented views (the field's scale 0.5–1, gentler crops, no crop) × what training draws (`train_views`: augmented,
all), for the trained methods at 4 and 16 shots, seeds 1–3, each method's own recipe.

    python benchmarks/demo_views.py [--out benchmarks/results/demo_views.json]

The choice (best mean few-shot val accuracy over methods and shots) is made before test accuracy is read; test
accuracy is then printed once, for every setting, to show what the choice was worth. `demo/pipeline.py`'s
`DEMO_AUGMENTATION` and `DEMO_TRAIN_VIEWS` hold the chosen values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lathadapter.cache.encode import Augmentation
from lathadapter.cache.store import CacheReader
from lathadapter.demo.pipeline import build_demo_cache
from lathadapter.experiments.run import RunConfig, run, tune_val_accuracy

CROPS: dict[str, Augmentation] = {
    "scale 0.5-1, flip 0.5 (the field's)": Augmentation(),
    "scale 0.8-1, flip 0.5": Augmentation(crop_scale=(0.8, 1.0)),
    "scale 0.8-1, no flip": Augmentation(crop_scale=(0.8, 1.0), flip=0.0),
    "scale 0.9-1, ratio 0.9-1.1, no flip": Augmentation(crop_scale=(0.9, 1.0), crop_ratio=(0.9, 1.1), flip=0.0),
}
TRAIN_VIEWS = ("augmented", "all")
METHODS = ("clip-adapter", "tip-adapter-f", "taskres", "lathadapter")
SHOTS = (4, 16)
SEEDS = (1, 2, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo_views.json")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; demo dataset and bundled model; methods "
          f"{', '.join(METHODS)}; shots {SHOTS}; seeds {SEEDS}; each method's own recipe")
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for crop, augmentation in CROPS.items():
            cache = Path(folder) / f"demo-{len(rows)}.h5"
            build_demo_cache(Path(folder) / "data", cache, augmentation=augmentation, shots=SHOTS, seeds=SEEDS,
                             device="cpu", progress=False, log=lambda message: None)
            with CacheReader(cache) as reader:
                for shots in SHOTS:
                    for seed in SEEDS:
                        data = reader.load(shots, seed)
                        for method in METHODS:
                            for train_views in TRAIN_VIEWS:
                                config = RunConfig.create(method, shots, seed, train_views=train_views)
                                outcome = run(config, data)
                                rows.append({"crop": crop, "train_views": train_views, "method": method,
                                             "shots": shots, "seed": seed,
                                             "val": tune_val_accuracy(config, outcome.method, data),
                                             "test": outcome.metrics["accuracy"]["all"]})
    settings = [(crop, views) for crop in CROPS for views in TRAIN_VIEWS]

    def mean(crop: str, views: str, column: str, method: str | None = None) -> float:
        return statistics.mean(r[column] for r in rows if r["crop"] == crop and r["train_views"] == views
                               and (method is None or r["method"] == method))

    chosen = max(settings, key=lambda s: mean(*s, "val"))  # the first best on val; test is not read here
    print(f"\n{len(rows)} runs in {time.perf_counter() - started:.0f} s\n")
    print("| crop of the cached views | train_views | val (mean of all) | " + " | ".join(
        f"{m} val" for m in METHODS) + " | test (mean of all) |")
    print("|---|---|---:|" + "---:|" * len(METHODS) + "---:|")
    for crop, views in settings:
        mark = " **(chosen)**" if (crop, views) == chosen else ""
        print(f"| {crop}{mark} | {views} | {mean(crop, views, 'val'):.2f} | " + " | ".join(
            f"{mean(crop, views, 'val', m):.2f}" for m in METHODS) + f" | {mean(crop, views, 'test'):.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"chosen": {"crop": chosen[0], "train_views": chosen[1]}, "rows": rows},
                                   indent=1))
    print(f"\nchosen on val: crop {chosen[0]}, train_views {chosen[1]}; rows → {args.out}")


if __name__ == "__main__":
    main()
