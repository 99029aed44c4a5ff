"""The study that sets LatHAdapter's defaults: a coordinate search over its options on CLIP-like synthetic worlds,
choosing on few-shot validation accuracy only, with test accuracy reported once, after choosing.

    python benchmarks/lathadapter_study.py [--out benchmarks/.data/lathadapter-study]
                                           [--save benchmarks/results/lathadapter_study.json]

Worlds: two caches written by `cache.synthetic.write_clip_world` (40 classes, D = 128, 5 families; generator seeds
7001 and 7002, which no test uses): `plain` (class text = its name part) and `attr` (class text = name part + its
attributes' text directions). Contexts: few-shot with 4 and 16 shots (all classes; score: val accuracy) and
base-to-novel with 16 shots (score: base val accuracy), seeds 1–3: 2 worlds × 3 contexts × 3 seeds = 18 runs per
configuration. A configuration's score is the mean of those 18 val accuracies; its noise is the sample std over
seeds of the per-seed means (each over the 6 world × context cells).

Search (a full factorial is too big for a 2-core CPU):
  pass 1: one option at a time around today's defaults (`OPTIONS` lists the values tried);
  pass 2: a new centre, today's defaults with every option that moved in pass 1 (best value better than the
          default by more than the noise) at its best value; each moved option is varied again around that centre.
The choice, option by option, at the pass-2 centre: a moved option takes its best pass-2 value only when that value
beats today's default (both with the other options at the centre) by more than the noise; otherwise it keeps today's
default. The chosen configuration (today's defaults with those values) is then trained, and its val accuracy shown.
Then, once, test accuracy of the chosen configuration, of today's defaults and of the tuned baselines
(Tip-Adapter-F, TaskRes, GDA, LP++ and zero-shot, `--tune-preset lr` where they train, as
benchmarks/baselines_study.py runs them) on the same worlds, seeds and contexts.

Every run goes through the grid machinery (`experiments.grid`): one results folder, resumable (a rerun skips
finished runs); a run's few-shot val accuracy (`tune_val_accuracy`, base classes only for base-to-novel) is added to
its metrics as `study_val_accuracy`. Test accuracy is never read before the choice is made.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from lathadapter.adapter.evaluate import harmonic_mean
from lathadapter.cache.store import FewShotData
from lathadapter.cache.synthetic import write_clip_world
from lathadapter.experiments.grid import GridRun, GridSpec, collect_rows, expand, iterate, prepare, run_grid
from lathadapter.experiments.run import RunOutcome, tune_val_accuracy

DATA = Path(__file__).parent / ".data"
RESULTS = Path(__file__).parent / "results"
SEEDS = [1, 2, 3]
WORLDS = {"plain": (7001, False), "attr": (7002, True)}  # name: (generator seed, class text carries attributes)
CONTEXTS = (("all", 4), ("all", 16), ("base", 16))  # (classes, shots)
CLASSES = 40
# The options searched and the values tried besides today's default (which is always tried too).
OPTIONS: dict[str, list[Any]] = {
    "lr": [0.003, 0.01],
    "radius": ["norm", "kind"],
    "lambda_hyp": [0.0, 1.0],
    "lambda_hier": [0.0, 0.5],
    "hier": ["triplet"],
    "attr_proto": [False],
    "num_attributes": [4, 8],
    "lambda_anchor": [0.1, 1.0],
}
BASELINES = ["zeroshot", "tip-adapter-f", "taskres", "gda", "lp++"]

Config = dict[str, Any]


# The searched options' defaults before this study chose new ones (the study starts from them, whatever
# `LatHAdapterOptions` says now, so that a rerun repeats it). Every other option is at its dataclass default.
STARTING_DEFAULTS: Config = {"lr": 0.001, "radius": "head", "lambda_hyp": 0.5, "lambda_hier": 0.1, "hier": "cone",
                             "attr_proto": True, "num_attributes": 16, "lambda_anchor": 0.0}


def defaults() -> Config:
    """The defaults the study starts from, "today's" in its tables: the values before the study."""
    return dict(STARTING_DEFAULTS)


def worlds(folder: Path) -> dict[str, Path]:
    """The study's two caches, written once (seeds 7001, 7002: no test uses them)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (seed, text_attributes) in WORLDS.items():
        path = folder / f"clip-{name}-{CLASSES}.h5"
        if not path.exists():
            write_clip_world(path, num_classes=CLASSES, dim=128, families=5, text_attributes=text_attributes,
                             shots=(4, 16), seeds=tuple(SEEDS), seed=seed, name=f"study-{name}")
        paths[name] = path
    return paths


def with_val(grid_run: GridRun, outcome: RunOutcome, data: FewShotData) -> dict[str, Any]:
    """The grid's `extra` metrics of every study run: its final model's few-shot val accuracy (base classes only for
    base-to-novel), what the study chooses by."""
    return {"study_val_accuracy": tune_val_accuracy(grid_run.config, outcome.method, data)}


def config_runs(caches: dict[str, Path], config: Config) -> list[GridRun]:
    """The 18 grid runs of one LatHAdapter configuration: worlds × contexts × seeds."""
    options = {f"lathadapter.{k}": [v] for k, v in config.items()}
    runs = []
    for classes, shots in CONTEXTS:
        spec = GridSpec([str(p) for p in caches.values()], ["lathadapter"], [shots], SEEDS, [classes],
                        options=options)
        runs.extend(expand(spec))
    return runs


def train(caches: dict[str, Path], configs: list[Config], out: Path) -> None:
    """Train (or resume) every run of `configs` in the study's grid folder, one process, one after another."""
    runs = [r for config in configs for r in config_runs(caches, config)]
    for _ in iterate(runs, out, "cpu", progress=False, extra=with_val):
        pass


def metrics_of(caches: dict[str, Path], config: Config, out: Path) -> list[dict[str, Any]]:
    """One record per run of `config`: world, context, seed, val accuracy and (read only after choosing) test."""
    names = {str(p): n for n, p in caches.items()}
    _, keyed = prepare(config_runs(caches, config), out)
    records = []
    for item in keyed:
        metrics = json.loads((out / "runs" / item.key / "metrics.json").read_text())
        c = item.run.config
        records.append({"world": names[item.run.cache], "classes": c.classes, "shots": c.shots, "seed": c.seed,
                        "val": metrics["study_val_accuracy"], "accuracy": metrics["accuracy"], "hm": metrics["hm"],
                        "seconds": metrics.get("wall_seconds")})
    return records


def cell(record: dict[str, Any]) -> str:
    """A (world, context) column name."""
    context = "b2n" if record["classes"] == "base" else f"{record['shots']}s"
    return f"{record['world']}/{context}"


def score(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean val accuracy per cell and overall; the noise: sample std over seeds of the per-seed means."""
    cells: dict[str, list[float]] = {}
    per_seed: dict[int, list[float]] = {}
    for r in records:
        cells.setdefault(cell(r), []).append(r["val"])
        per_seed.setdefault(r["seed"], []).append(r["val"])
    seed_means = [statistics.fmean(v) for v in per_seed.values()]
    return {"cells": {k: statistics.fmean(v) for k, v in cells.items()}, "mean": statistics.fmean(seed_means),
            "std": statistics.stdev(seed_means)}


def label(config: Config, centre: Config) -> str:
    """The options where `config` differs from `centre` (the centre itself: `centre`)."""
    changed = [f"{k}={v}" for k, v in config.items() if v != centre[k]]
    return ", ".join(changed) or "centre"


def search_pass(caches: dict[str, Path], centre: Config, names: list[str], out: Path, title: str,
                log: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Vary each option of `names` alone around `centre`; print the val table. Returns (scores by label, the best
    value of each option with its gain over the centre and the noise)."""
    configs = [dict(centre)]
    for name in names:
        values = [defaults()[name], *OPTIONS[name]]  # today's default too, where the centre has moved away from it
        configs += [{**centre, name: v} for i, v in enumerate(values) if v != centre[name] and v not in values[:i]]
    start = time.perf_counter()
    train(caches, configs, out)
    emit(log, f"\n## {title}: {len(configs)} configurations × 18 runs, {time.perf_counter() - start:.0f} s "
              "(0 s: resumed)\n")
    scores = {label(c, centre): {"config": c, **score(metrics_of(caches, c, out))} for c in configs}
    columns = list(next(iter(scores.values()))["cells"])
    emit(log, "Few-shot val accuracy (%) used for choosing (b2n: base val), mean over seeds 1–3; `mean ± std`: the "
              "mean of the 18 runs ± the std over seeds of the per-seed means; Δ: against the centre.\n")
    emit(log, "| configuration | " + " | ".join(columns) + " | mean ± std | Δ |")
    emit(log, "| --- " * (len(columns) + 3) + "|")
    base = scores["centre"]["mean"]
    for key, s in scores.items():
        emit(log, f"| {key} | " + " | ".join(f"{s['cells'][c]:.2f}" for c in columns)
             + f" | {s['mean']:.2f} ± {s['std']:.2f} | {s['mean'] - base:+.2f} |")
    best = {}
    for name in names:
        candidates = {k: s for k, s in scores.items() if k == "centre" or k.startswith(f"{name}=")}
        winner = max(candidates, key=lambda k: candidates[k]["mean"])
        w = candidates[winner]
        noise = max(w["std"], scores["centre"]["std"])
        best[name] = {"value": w["config"][name], "gain": w["mean"] - base, "noise": noise,
                      "moved": winner != "centre" and w["mean"] - base > noise}
    return scores, best


def emit(log: list[str], line: str) -> None:
    """Print a line and keep it for the saved text."""
    print(line, flush=True)
    log.append(line)


def test_table(caches: dict[str, Path], configs: dict[str, Config], baseline_out: Path, out: Path,
               log: list[str]) -> dict[str, Any]:
    """Test accuracy, read once after choosing: LatHAdapter configurations and the tuned baselines."""
    table: dict[str, dict[str, list[float]]] = {}
    names = {str(p): n for n, p in caches.items()}

    def add(row: str, world: str, key: str, value: float | None) -> None:
        values = table.setdefault(row, {}).setdefault(f"{world}/{key}", [])
        if value is not None and value != "":
            values.append(float(value))

    for row, config in configs.items():
        for r in metrics_of(caches, config, out):
            if r["classes"] == "all":
                add(row, r["world"], f"{r['shots']}s", r["accuracy"]["all"])
            else:
                add(row, r["world"], "base", r["accuracy"]["base"])
                add(row, r["world"], "novel", r["accuracy"]["novel"])
    for row in collect_rows(baseline_out):
        if row.get("tune.group") and not row.get("tune.selected"):
            continue
        method, world = row["method"], names[row["cache"]]
        if row["classes"] == "all":
            add(method, world, f"{row['shots']}s", row["acc_all"])
        else:
            add(method, world, "base", row["acc_base"])
            add(method, world, "novel", row["acc_novel"])
    columns = [f"{w}/{k}" for w in caches for k in ("4s", "16s", "base", "novel", "HM")]
    emit(log, "\n## Test accuracy (%), read once after choosing: mean ± std over seeds 1–3 (HM of the means)\n")
    emit(log, "| method | " + " | ".join(columns) + " |")
    emit(log, "| --- " * (len(columns) + 1) + "|")
    summary: dict[str, Any] = {}
    for row, cells in table.items():
        texts, numbers = [], {}
        for column in columns:
            world, key = column.split("/")
            if key == "HM":
                base, novel = numbers.get(f"{world}/base"), numbers.get(f"{world}/novel")
                value = harmonic_mean(base, novel) if base is not None and novel is not None else None
                numbers[column] = value
                texts.append("n/a" if value is None else f"{value:.2f}")
                continue
            values = cells.get(column, [])
            if not values:
                numbers[column] = None
                texts.append("n/a")
                continue
            numbers[column] = statistics.fmean(values)
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            texts.append(f"{numbers[column]:.2f} ± {spread:.2f}")
        summary[row] = numbers
        emit(log, f"| {row} | " + " | ".join(texts) + " |")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DATA / "lathadapter-study")
    parser.add_argument("--save", type=Path, default=RESULTS / "lathadapter_study.json")
    args = parser.parse_args()
    start = time.perf_counter()
    log: list[str] = []
    emit(log, f"# benchmarks/lathadapter_study.py; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
              f"worlds {', '.join(f'{n} (seed {s})' for n, (s, _) in WORLDS.items())}, {CLASSES} classes, D = 128")
    caches = worlds(args.out)
    grid = args.out / "grid"
    old = defaults()
    emit(log, f"today's defaults: {', '.join(f'{k}={v}' for k, v in old.items())}")
    scores1, best1 = search_pass(caches, old, list(OPTIONS), grid, "Pass 1: one option at a time around today's "
                                 "defaults", log)
    moved = [name for name, b in best1.items() if b["moved"]]
    emit(log, "\nPass 1 best values: " + "; ".join(
        f"{n}={b['value']} ({b['gain']:+.2f}, noise {b['noise']:.2f}{', moved' if b['moved'] else ''})"
        for n, b in best1.items()))
    centre = {**old, **{name: best1[name]["value"] for name in moved}}
    scores2: dict[str, Any] = {}
    best2: dict[str, Any] = {}
    chosen = dict(old)
    pass2_best = dict(centre)
    decisions: dict[str, Any] = {}
    if moved:
        scores2, best2 = search_pass(caches, centre, moved, grid, "Pass 2: the moved options around the new centre "
                                     f"({label(centre, old)})", log)
        pass2_best.update({n: b["value"] for n, b in best2.items() if b["moved"]})
        emit(log, "\nPass 2 decisions: each moved option's best value at the centre against today's default, both "
                  "with the other options at the centre (kept only when better by more than the noise)\n")
        emit(log, "| option | today | best at the centre | val today | val best | gain | noise | default becomes |")
        emit(log, "| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in moved:
            value = best2[name]["value"]
            at_old = scores2[label({**centre, name: old[name]}, centre)]
            at_best = scores2[label({**centre, name: value}, centre)]
            gain, noise = at_best["mean"] - at_old["mean"], max(at_best["std"], at_old["std"])
            keep = value != old[name] and gain > noise
            chosen[name] = value if keep else old[name]
            decisions[name] = {"best": value, "gain": gain, "noise": noise, "default": chosen[name]}
            emit(log, f"| {name} | {old[name]} | {value} | {at_old['mean']:.2f} ± {at_old['std']:.2f} | "
                      f"{at_best['mean']:.2f} ± {at_best['std']:.2f} | {gain:+.2f} | {noise:.2f} | {chosen[name]} |")
    train(caches, [chosen], grid)  # a combination pass 2 may not have trained yet
    final = {"config": chosen, **score(metrics_of(caches, chosen, grid))}
    best_point = {"config": pass2_best, **score(metrics_of(caches, pass2_best, grid))}
    emit(log, f"\nBest single point of pass 2 (not the choice: it keeps moves within the noise): "
              f"{label(pass2_best, old)}; val {best_point['mean']:.2f} ± {best_point['std']:.2f}")
    reference = score(metrics_of(caches, old, grid))
    what = label(chosen, old) if chosen != old else "today's defaults"
    emit(log, f"\nChosen: {what}; val {final['mean']:.2f} ± {final['std']:.2f} "
              f"against today's defaults {reference['mean']:.2f} ± {reference['std']:.2f}")
    baseline_start = time.perf_counter()
    baseline_out = args.out / "baselines"
    for classes, shots in (("all", [4, 16]), ("base", [16])):
        run_grid(GridSpec([str(p) for p in caches.values()], BASELINES, shots, SEEDS, [classes], tune_preset="lr"),
                 baseline_out, "cpu", progress=False)
    emit(log, f"\nBaselines (tune-preset lr where they train): {time.perf_counter() - baseline_start:.0f} s")
    rows = {"lathadapter (today's defaults)": old, f"lathadapter (chosen: {label(chosen, old)})": chosen}
    if chosen == old:
        rows = {"lathadapter (today's defaults = chosen)": old}
    if pass2_best not in (chosen, old):
        rows[f"lathadapter (pass-2 best point, not chosen: {label(pass2_best, old)})"] = pass2_best
    tests = test_table(caches, rows, baseline_out, grid, log)
    emit(log, f"\nStudy wall time: {time.perf_counter() - start:.0f} s")
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps({"worlds": {n: {"seed": s, "text_attributes": t} for n, (s, t) in WORLDS.items()},
                                     "old_defaults": old, "pass1": scores1, "best1": best1, "pass2": scores2,
                                     "best2": best2, "decisions": decisions, "chosen": chosen,
                                     "chosen_val": final, "pass2_best": best_point,
                                     "old_val": reference, "test": tests}, indent=2, default=str))
    args.save.with_suffix(".txt").write_text("\n".join(log) + "\n")


if __name__ == "__main__":
    main()
