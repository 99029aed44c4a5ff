"""What each switch of item 3 (issue 25) does to LatHAdapter's hierarchy: base val accuracy and the hierarchy
diagnostics (docs/method.md, "Hierarchy diagnostics") of the default and of each switch.

    python benchmarks/hierarchy_switches.py [--data benchmarks/.data/hierarchy-switches]
                                            [--save benchmarks/results/hierarchy_switches]

Worlds: two caches from `cache.synthetic.write_clip_world` (40 classes, D = 128, 5 families), generator seeds 9101
(`plain`: class text = its name part) and 9102 (`attr`: name part + its attributes' text directions), which no test
or other study uses. Runs: base-to-novel, 16 shots on the 20 base classes, seeds 1–2, lr 1e-3, lambda_hier 0.1 (the
default when benchmarks/results/hierarchy_switches.txt was made; the default is 0 since, which would leave the cone
switches nothing to change in training), every other option at its default; 2 worlds × 2 seeds per configuration,
one after another on one thread.

Printed per configuration (mean over worlds × seeds, and per world): base val accuracy (the base classes' few-shot
val images) and the diagnostics on the train images. The only number kept from a test split is the diagnostics' test
in-cone share (the test images of the base classes); test accuracy, the test angle and the euclid/hyper disagreement
(test images) are neither printed nor saved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from lathadapter_study import clip_worlds  # benchmarks/ is the script directory

from lathadapter.cache.store import CacheReader
from lathadapter.experiments.run import RunConfig, run, tune_val_accuracy

HERE = Path(__file__).parent
WORLDS = {"plain": (9101, False), "attr": (9102, True)}  # name: (generator seed, class text carries attributes)
SEEDS = (1, 2)
SHOTS = 16
BASE = {"lr": 1e-3, "lambda_hier": 0.1}
# label: options on top of BASE
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "centre=modality": {"centre": "modality"},
    "cone_k=0.3": {"cone_k": 0.3},
    "cone_k=1.0": {"cone_k": 1.0},
    "cone_parent=image": {"cone_parent": "image", "impl": "reference"},
    "hyp_metric=euclid": {"hyp_metric": "euclid"},
    "centre=modality cone_k=1.0": {"centre": "modality", "cone_k": 1.0},
    "centre=modality cone_k=1.0 cone_kappa=2": {"centre": "modality", "cone_k": 1.0, "cone_kappa": 2.0},
    "cone_parent=image cone_k=1.0": {"cone_parent": "image", "impl": "reference", "cone_k": 1.0},
    "radius=head": {"radius": "head"},
    "radius=head cone_k=1.0": {"radius": "head", "cone_k": 1.0},
}
COLUMNS = [("val", "base val %"), ("train_in_cone", "train in cone %"), ("test_in_cone", "test in cone %"),
           ("train_angle", "Ξ train"), ("aperture", "ψ"), ("radius_category", "ρ' cat"),
           ("radius_attribute", "ρ' attr"), ("radius_image", "ρ' img"), ("radius_order", "order")]
# the diagnostics read from a test split: only the test in-cone share is kept (test accuracy is never read here)
TEST_KEYS_DROPPED = ("test_angle", "euclid_hyper_disagree")


def worlds(folder: Path) -> dict[str, Path]:
    """The two caches, written once."""
    return clip_worlds(folder, WORLDS, (SHOTS,), SEEDS, "switches")


def measure(paths: dict[str, Path]) -> list[dict[str, Any]]:
    """One record per (configuration, world, seed): base val accuracy and the diagnostics (never test accuracy)."""
    records = []
    for world, path in paths.items():
        with CacheReader(path) as reader:
            datas = {seed: reader.load(SHOTS, seed, device="cpu") for seed in SEEDS}
        for label, options in CONFIGS.items():
            for seed in SEEDS:
                config = RunConfig.create("lathadapter", SHOTS, seed, classes="base", overrides={**BASE, **options})
                start = time.perf_counter()
                outcome = run(config, datas[seed])
                diagnostics = {k: v for k, v in outcome.metrics["hierarchy"].items() if k not in TEST_KEYS_DROPPED}
                records.append({"config": label, "world": world, "seed": seed,
                                "val": tune_val_accuracy(config, outcome.method, datas[seed]), **diagnostics,
                                "seconds": time.perf_counter() - start})
    return records


def mean_of(records: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(float(r[key]) for r in records)


def cell(records: list[dict[str, Any]], key: str) -> str:
    if key == "radius_order":
        return f"{sum(bool(r[key]) for r in records)}/{len(records)}"
    value = mean_of(records, key)
    return f"{value:.1f}" if key in ("val", "train_in_cone", "test_in_cone") else f"{value:.2f}"


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per configuration over both worlds, then one per (configuration, world)."""
    header = ["configuration", "world"] + [title for _, title in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for world in (None, *WORLDS):
        for label in CONFIGS:
            chosen = [r for r in records if r["config"] == label and world in (None, r["world"])]
            lines.append("| " + " | ".join([label, world or "both"] + [cell(chosen, k) for k, _ in COLUMNS]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / ".data" / "hierarchy-switches")
    parser.add_argument("--save", type=Path, default=HERE / "results" / "hierarchy_switches")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    records = measure(worlds(args.data))
    seconds = time.perf_counter() - start
    text = (f"LatHAdapter's hierarchy switches: base-to-novel, {SHOTS} shots, seeds {SEEDS}, lr {BASE['lr']}, "
            f"lambda_hier {BASE['lambda_hier']}, worlds "
            f"{', '.join(f'{n} (seed {s})' for n, (s, _) in WORLDS.items())}; means over worlds × seeds.\n"
            "Shares in %, angles in radians (Ξ: mean exterior angle of the category → image edges; ψ: mean "
            "half-aperture), ρ': mean scaled radius; order: runs with ρ' cat < attr < img. Train: clean views of the "
            "few-shot images; test: the base classes' test images (only their in-cone share is read).\n\n"
            f"{table(records)}\n\n{len(records)} runs, {seconds:.0f} s on 1 thread.\n")
    print(text)
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.with_suffix(".txt").write_text(text)
    args.save.with_suffix(".json").write_text(json.dumps({"configs": CONFIGS, "base": BASE, "records": records,
                                                          "seconds": seconds}, indent=1) + "\n")


if __name__ == "__main__":
    main()
