"""The study that sets LatHAdapter's defaults, second edition: a forward search over its options on four held-out
CLIP-like worlds and the demo, choosing on validation scores that see unseen classes, comparing configurations by
paired differences over worlds × seeds with an exact sign-flip test; test accuracy is read once, after choosing.

    python benchmarks/lathadapter_study.py [--out benchmarks/.data/lathadapter-study-2] [--jobs 2]
                                           [--save benchmarks/results/lathadapter_study.json]

Worlds: four caches of `cache.synthetic.write_clip_world` (40 classes, D = 128, 5 families; generator seeds 9401–9404,
which no test and no earlier study uses): `plain-a`, `plain-b` (class text = its name part) and `attr-a`, `attr-b`
(name part + its attributes' text directions); and the demo's cache (36 shape classes encoded by the bundled tiny
CLIP, D = 64). Contexts, seeds 1–3:
  - few-shot, 4 and 16 shots, all classes: the score is few-shot val accuracy;
  - base-to-novel, 16 shots: the score is `val_hm` — the base classes split again into pseudo-base and pseudo-novel
    halves, a copy trained on pseudo-base, the HM of both halves' val accuracy (base-class data only).
A configuration's score in one (world, seed) is the mean of its three context scores: 15 paired values.

Search (configurations compared by the mean of their 15 paired differences; a change is taken only when that mean
is positive and the exact two-sided sign-flip test over the 15 pairs gives p < 0.05):
  stage 1: the learning rate alone, around today's defaults;
  stage 2: every other option, one at a time, around the stage-1 centre (today's values otherwise);
  stage 3: forward selection: the options whose stage-2 value beat the centre (p < 0.05) are added one at a time,
           largest gain first, each kept only when it beats the configuration without it (p < 0.05);
  stage 4: the learning rate again, around the stage-3 choice.
Then, once: test accuracy of today's defaults, the chosen configuration, its Euclidean twin (`hyp_metric=euclid`)
and the baselines (zero-shot, CLIP-Adapter, Tip-Adapter-F, TaskRes, GDA, LP++; `--tune-preset lr`, extended at an
edge, chosen by the same scores) on the same worlds, seeds and contexts. Every run goes through the grid machinery
(one results folder, resumable); hierarchy diagnostics come from each run's `metrics.json`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lathadapter.adapter.evaluate import harmonic_mean
from lathadapter.cache.store import CacheReader, FewShotData
from lathadapter.cache.synthetic import write_clip_world
from lathadapter.demo.pipeline import build_demo_cache
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.launch import launch, prepare, train_round
from lathadapter.experiments.run import RunOutcome, tune_val_score
from lathadapter.experiments.spec import GridRun, GridSpec, expand
from lathadapter.experiments.table import collect_rows

DATA = Path(__file__).parent / ".data"
RESULTS = Path(__file__).parent / "results"
SEEDS = [1, 2, 3]
WORLDS = {"plain-a": (9401, False), "attr-a": (9402, True), "plain-b": (9403, False), "attr-b": (9404, True)}
CONTEXTS = (("all", 4), ("all", 16), ("base", 16))  # (classes, shots)
CLASSES = 40
ALPHA = 0.05  # the sign-flip test's level

Config = dict[str, Any]

# Today's defaults of the searched options (the study starts from them, whatever `LatHAdapterOptions` says now, so
# that a rerun repeats it).
TODAY: Config = {"lr": 0.01, "lambda_hyp": 0.5, "lambda_hier": 0.1, "hier": "cone", "radius": "kind",
                 "num_attributes": 16, "lambda_anchor": 0.0, "attr_proto": True, "alpha_v": 0.2, "centre": "none",
                 "cone_k": 0.1, "hyp_metric": "poincare", "cone_parent": "text"}
LEARNING_RATES = [0.0003, 0.001, 0.003]
# Stage 2: the values tried for each other option besides the centre's.
OPTIONS: dict[str, list[Any]] = {
    "lambda_hyp": [0.0, 1.0],
    "lambda_hier": [0.0, 0.5],
    "hier": ["triplet"],
    "radius": ["head", "norm"],
    "num_attributes": [8, 32],
    "lambda_anchor": [0.1, 1.0],
    "attr_proto": [False],
    "alpha_v": [0.5],
    "centre": ["modality"],
    "cone_k": [0.3, 1.0],
    "hyp_metric": ["euclid"],
    "cone_parent": ["image"],
}
# Stage 2 also tries these switches together: the measured ways into the cones (benchmarks/hierarchy_switches.py:
# a wide aperture alone admits about a third of the images, over image-side class centres nearly all).
COMBINATIONS: list[Config] = [{"cone_parent": "image", "cone_k": 1.0}, {"centre": "modality", "cone_k": 1.0}]
BASELINES = ["zeroshot", "clip-adapter", "tip-adapter-f", "taskres", "gda", "lp++"]
DIAGNOSTICS = ("train_in_cone", "train_angle", "aperture", "radius_category", "radius_attribute", "radius_image",
               "radius_order", "euclid_hyper_disagree")


def overrides(config: Config) -> Config:
    """The options a run needs: `cone_parent=image` is implemented by the reference alone."""
    return {**config, "impl": "reference"} if config.get("cone_parent") == "image" else dict(config)


def clip_worlds(folder: Path, worlds: dict[str, tuple[int, bool]], shots: tuple[int, ...], seeds: tuple[int, ...],
                prefix: str, **options: Any) -> dict[str, Path]:
    """CLIP-like caches of 40 classes (`write_clip_world`), one per name: (generator seed, class text carries
    attributes), each written once under `folder`; `options` go to `write_clip_world` as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (seed, text_attributes) in worlds.items():
        path = folder / f"clip-{name}-{seed}.h5"
        if not path.exists():
            write_clip_world(path, num_classes=CLASSES, dim=128, families=5, text_attributes=text_attributes,
                             shots=shots, seeds=seeds, seed=seed, name=f"{prefix}-{name}", **options)
        paths[name] = path
    return paths


def worlds(folder: Path) -> dict[str, Path]:
    """The study's five caches, written once."""
    paths = clip_worlds(folder, WORLDS, (4, 16), tuple(SEEDS), "study")
    demo = folder / "demo.h5"
    if not demo.exists():
        build_demo_cache(folder / "demo-data", demo, shots=(4, 16), seeds=tuple(SEEDS), progress=False)
    paths["demo"] = demo
    return paths


def with_score(grid_run: GridRun, outcome: RunOutcome, data: FewShotData) -> dict[str, Any]:
    """The study's score of a run: few-shot val accuracy, or val_hm for base-to-novel (its own pseudo-base
    training). The grid adds it to the run's metrics."""
    score = "val_hm" if grid_run.config.classes == "base" else "val"
    return {"study_score": tune_val_score(grid_run.config, outcome.method, data, score)}


def config_runs(caches: dict[str, Path], config: Config,
                contexts: tuple[tuple[str, int], ...] = CONTEXTS) -> list[GridRun]:
    """The grid runs of one configuration: worlds × contexts × seeds (45 in the study's three contexts)."""
    options = {f"lathadapter.{k}": [v] for k, v in overrides(config).items()}
    runs = []
    for classes, shots in contexts:
        spec = GridSpec([str(p) for p in caches.values()], ["lathadapter"], [shots], SEEDS, [classes],
                        options=options)
        runs.extend(expand(spec))
    return runs


def _train_part(caches: dict[str, Path], configs: list[Config], out: Path,
                contexts: tuple[tuple[str, int], ...] = CONTEXTS) -> None:
    torch.set_num_threads(1)
    runs = [r for config in configs for r in config_runs(caches, config, contexts)]
    for _ in train_round(runs, out, Execution(), progress=False, extra_factory=lambda device: with_score):
        pass


def train(caches: dict[str, Path], configs: list[Config], out: Path, jobs: int,
          contexts: tuple[tuple[str, int], ...] = CONTEXTS) -> None:
    """Train (or resume) every run of `configs` in `contexts` on `jobs` processes of one thread each (runs are
    locked, so the processes never train one run twice)."""
    if jobs <= 1:
        _train_part(caches, configs, out, contexts)
        return
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_train_part, args=(caches, configs[i::jobs], out, contexts))
                 for i in range(jobs)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a study process failed (exit {process.exitcode})")
    _train_part(caches, configs, out, contexts)  # whatever a process left (nothing, normally)


def records(caches: dict[str, Path], config: Config, out: Path,
            contexts: tuple[tuple[str, int], ...] = CONTEXTS) -> list[dict[str, Any]]:
    """One record per run of `config` in `contexts`: world, context, seed, score and (read only after choosing) test
    metrics."""
    names = {str(p): n for n, p in caches.items()}
    _, keyed = prepare(config_runs(caches, config, contexts), out)
    found = []
    for item in keyed:
        metrics = json.loads((out / "runs" / item.key / "metrics.json").read_text())
        c = item.run.config
        found.append({"world": names[item.run.cache], "classes": c.classes, "shots": c.shots, "seed": c.seed,
                      "score": metrics["study_score"], "metrics": metrics})
    return found


def pairs(found: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """The paired values: per (world, seed), the mean of the three context scores."""
    cells: dict[tuple[str, int], list[float]] = {}
    for r in found:
        cells.setdefault((r["world"], r["seed"]), []).append(r["score"])
    return {k: statistics.fmean(v) for k, v in sorted(cells.items())}


def sign_flip_p(differences: list[float]) -> float:
    """Exact two-sided sign-flip (paired permutation) test of a zero mean difference: the share of the 2^n sign
    patterns whose mean is at least as far from 0 as the observed one."""
    d = np.asarray(differences, dtype=np.float64)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    means = np.abs(signs @ d) / len(d)
    return float(np.mean(means >= abs(d.mean()) - 1e-12))


def compare(a: dict[tuple[str, int], float], b: dict[tuple[str, int], float]) -> tuple[float, float]:
    """(mean paired difference a − b, p of the sign-flip test)."""
    differences = [a[k] - b[k] for k in b]
    return statistics.fmean(differences), sign_flip_p(differences)


def label(config: Config, reference: Config) -> str:
    """The options where `config` differs from `reference`."""
    changed = [f"{k}={v}" for k, v in config.items() if v != reference[k]]
    return ", ".join(changed) or "(same)"


def emit(log: list[str], line: str) -> None:
    """Print a line and keep it for the saved text."""
    print(line, flush=True)
    log.append(line)


def context_means(found: list[dict[str, Any]]) -> dict[str, float]:
    """Mean score per context over worlds and seeds."""
    cells: dict[str, list[float]] = {}
    for r in found:
        key = "b2n val_hm" if r["classes"] == "base" else f"{r['shots']}s val"
        cells.setdefault(key, []).append(r["score"])
    return {k: statistics.fmean(v) for k, v in cells.items()}


def diagnostics(found: list[dict[str, Any]]) -> dict[str, float]:
    """Mean hierarchy diagnostics of the base-to-novel runs (train images; no accuracy)."""
    values: dict[str, list[float]] = {}
    for r in found:
        if r["classes"] != "base":
            continue
        for name in DIAGNOSTICS:
            value = (r["metrics"].get("hierarchy") or {}).get(name)
            if value is not None:
                values.setdefault(name, []).append(float(value))
    return {k: statistics.fmean(v) for k, v in values.items()}


def stage(caches: dict[str, Path], centre: Config, configs: list[Config], out: Path, jobs: int, title: str,
          log: list[str]) -> dict[str, dict[str, Any]]:
    """Train `configs` (the centre first) and print their scores against the centre with the paired test."""
    start = time.perf_counter()
    train(caches, configs, out, jobs)
    emit(log, f"\n## {title}: {len(configs)} configurations × 45 runs, {time.perf_counter() - start:.0f} s "
              "(0 s: resumed)\n")
    emit(log, "Scores (%): few-shot val accuracy at 4 and 16 shots, base-to-novel val_hm, each the mean over 5 worlds "
              "× 3 seeds; Δ: mean of the 15 paired differences (world × seed, mean of the contexts) against the "
              "centre; p: exact sign-flip test. Diagnostics: base-to-novel runs' train images (share inside their "
              "category's cone, exterior angle Ξ against half-aperture ψ in rad, scaled radii category / attribute "
              "/ image, share of runs with category < attribute < image).\n")
    emit(log, "| configuration | 4s val | 16s val | b2n val_hm | Δ | p | in cone | Ξ / ψ | radii c / a / i | order |")
    emit(log, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    centre_pairs = pairs(records(caches, centre, out))
    results = {}
    for config in configs:
        found = records(caches, config, out)
        paired = pairs(found)
        gain, p = compare(paired, centre_pairs) if config != centre else (0.0, 1.0)
        means, diag = context_means(found), diagnostics(found)
        name = "centre" if config == centre else label(config, centre)
        results[name] = {"config": config, "contexts": means, "gain": gain, "p": p, "pairs": list(paired.values()),
                         "diagnostics": diag}
        radii = "/".join(f"{diag.get(k, float('nan')):.2f}" for k in ("radius_category", "radius_attribute",
                                                                         "radius_image"))
        emit(log, f"| {name} | {means['4s val']:.2f} | {means['16s val']:.2f} | {means['b2n val_hm']:.2f} | "
                  f"{gain:+.2f} | {p:.3f} | {diag.get('train_in_cone', float('nan')):.1f} % | "
                  f"{diag.get('train_angle', float('nan')):.2f} / {diag.get('aperture', float('nan')):.2f} | {radii} | "
                  f"{100 * diag.get('radius_order', float('nan')):.0f} % |")
    return results


def test_tables(caches: dict[str, Path], rows: dict[str, Config], baseline_out: Path, out: Path,
                log: list[str], more_baselines: dict[str, Path] | None = None) -> dict[str, Any]:
    """Test accuracy, read once after choosing: one table per world and one of the means over worlds.
    `more_baselines` maps a row suffix to another baselines' folder (its rows are "<method><suffix>")."""
    cells: dict[str, dict[str, dict[str, list[float]]]] = {}  # row → world → column → per-seed values

    def add(row: str, world: str, column: str, value: Any) -> None:
        if value is not None and value != "":
            cells.setdefault(row, {}).setdefault(world, {}).setdefault(column, []).append(float(value))

    for row, config in rows.items():
        for r in records(caches, config, out):
            m = r["metrics"]
            if r["classes"] == "all":
                add(row, r["world"], f"{r['shots']}s", m["accuracy"]["all"])
            else:
                add(row, r["world"], "base", m["accuracy"]["base"])
                add(row, r["world"], "novel", m["accuracy"]["novel"])
    names = {str(p): n for n, p in caches.items()}
    folders = [(baseline_out, ""), *[(folder, suffix) for suffix, folder in (more_baselines or {}).items()]]
    for row, suffix in [(row, suffix) for folder, suffix in folders for row in collect_rows(folder)]:
        if row.get("tune.group") and not row.get("tune.selected"):
            continue
        method, world = f"{row['method']}{suffix}", names[row["cache"]]
        if row["classes"] == "all":
            add(method, world, f"{row['shots']}s", row["acc_all"])
        else:
            add(method, world, "base", row["acc_base"])
            add(method, world, "novel", row["acc_novel"])
    columns = ("4s", "16s", "base", "novel", "HM")
    summary: dict[str, Any] = {}
    for world in [*caches, "mean over worlds"]:
        emit(log, f"\n### Test accuracy (%), {world}: mean ± std over seeds 1–3 (HM of the means)\n")
        emit(log, "| method | " + " | ".join(columns) + " |")
        emit(log, "| --- " * (len(columns) + 1) + "|")
        for row, by_world in cells.items():
            numbers: dict[str, float | None] = {}
            texts = []
            for column in columns:
                if column == "HM":
                    base, novel = numbers.get("base"), numbers.get("novel")
                    value = harmonic_mean(base, novel) if base is not None and novel is not None else None
                    numbers[column] = value
                    texts.append("n/a" if value is None else f"{value:.2f}")
                    continue
                if world == "mean over worlds":
                    means = [statistics.fmean(by_world[w][column]) for w in caches if by_world.get(w, {}).get(column)]
                    numbers[column] = statistics.fmean(means) if len(means) == len(caches) else None
                    texts.append("n/a" if numbers[column] is None else f"{numbers[column]:.2f}")
                    continue
                values = by_world.get(world, {}).get(column, [])
                numbers[column] = statistics.fmean(values) if values else None
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                texts.append("n/a" if not values else f"{numbers[column]:.2f} ± {spread:.2f}")
            summary.setdefault(row, {})[world] = numbers
            emit(log, f"| {row} | " + " | ".join(texts) + " |")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DATA / "lathadapter-study-2")
    parser.add_argument("--jobs", type=int, default=2, help="training processes of one thread each")
    parser.add_argument("--save", type=Path, default=RESULTS / "lathadapter_study.json")
    args = parser.parse_args()
    start = time.perf_counter()
    log: list[str] = []
    emit(log, f"# benchmarks/lathadapter_study.py; torch {torch.__version__}, {args.jobs} process(es) × 1 thread; "
              f"worlds {', '.join(f'{n} (seed {s})' for n, (s, _) in WORLDS.items())}, {CLASSES} classes, D = 128; "
              "and the demo (36 classes, D = 64)")
    caches = worlds(args.out)
    for name, path in caches.items():  # which worlds were read: a cache left in --out from an older pass is reused
        with CacheReader(path) as reader:
            info = reader.info()
        emit(log, f"{name}: {path.name}, fingerprint {info.fingerprint}, {info.counts['val']} val images")
    grid = args.out / "grid"
    today = dict(TODAY)
    emit(log, f"today's defaults: {', '.join(f'{k}={v}' for k, v in today.items())}")
    # stage 1: the learning rate
    configs = [today] + [{**today, "lr": lr} for lr in LEARNING_RATES]
    stage1 = stage(caches, today, configs, grid, args.jobs, "Stage 1: the learning rate around today's defaults",
                   log)
    best_lr = max(stage1.values(), key=lambda s: s["gain"])
    centre = dict(today)
    if best_lr["gain"] > 0 and best_lr["p"] < ALPHA:
        centre["lr"] = best_lr["config"]["lr"]
    emit(log, f"\nStage-1 centre: lr = {centre['lr']}")
    # stage 2: every other option alone around the centre
    configs = [centre] + [{**centre, name: value} for name, values in OPTIONS.items() for value in values] + [
        {**centre, **combination} for combination in COMBINATIONS]
    stage2 = stage(caches, centre, configs, grid, args.jobs, f"Stage 2: one option at a time around lr = "
                   f"{centre['lr']}", log)
    # the best significant change of each option (a combination counts as one change of its own)
    winners: dict[str, tuple[Config, float]] = {}
    for name, result in stage2.items():
        if name == "centre" or result["gain"] <= 0 or result["p"] >= ALPHA:
            continue
        change = {k: v for k, v in result["config"].items() if v != centre[k]}
        option = "+".join(change)
        if option not in winners or result["gain"] > winners[option][1]:
            winners[option] = (change, result["gain"])
    emit(log, "\nStage-2 changes better than the centre (p < 0.05): " + (", ".join(
        f"{label({**centre, **c}, centre)} ({g:+.2f})" for c, g in winners.values()) or "none"))
    # stage 3: forward selection, largest stage-2 gain first
    chosen = dict(centre)
    steps = []
    for change, _ in sorted(winners.values(), key=lambda item: -item[1]):
        candidate = {**chosen, **change}
        if candidate == chosen:
            continue
        train(caches, [chosen, candidate], grid, args.jobs)
        gain, p = compare(pairs(records(caches, candidate, grid)), pairs(records(caches, chosen, grid)))
        kept = gain > 0 and p < ALPHA
        what = label(candidate, chosen)
        steps.append({"change": change, "gain": gain, "p": p, "kept": kept})
        emit(log, f"stage 3: + {what}: {gain:+.2f} (p {p:.3f}) → {'kept' if kept else 'not kept'}")
        if kept:
            chosen = candidate
    # stage 4: the learning rate again, at the chosen configuration (the other options may have moved its optimum)
    configs = [chosen] + [{**chosen, "lr": lr} for lr in [*LEARNING_RATES, TODAY["lr"]] if lr != chosen["lr"]]
    stage4 = stage(caches, chosen, configs, grid, args.jobs, "Stage 4: the learning rate at the stage-3 choice", log)
    best_lr = max(stage4.values(), key=lambda s: s["gain"])
    if best_lr["gain"] > 0 and best_lr["p"] < ALPHA:
        chosen = {**chosen, "lr": best_lr["config"]["lr"]}
    emit(log, f"\nStage-4 learning rate: {chosen['lr']}")
    final = stage(caches, today, [today, chosen], grid, args.jobs, "The chosen configuration against today's "
                  "defaults", log)
    emit(log, f"\nChosen: {label(chosen, today)}")
    # once: test accuracy, the baselines trained and tuned now
    euclid = {**chosen, "hyp_metric": "euclid"}
    train(caches, [euclid], grid, args.jobs)
    baseline_start = time.perf_counter()
    baseline_out = args.out / "baselines"
    for classes, shots in (("all", [4, 16]), ("base", [16])):
        launch(GridSpec([str(p) for p in caches.values()], BASELINES, shots, SEEDS, [classes], tune_preset="lr"),
               baseline_out, Execution(workers=args.jobs, batch_runs=8), progress=False)
    emit(log, f"\nBaselines (--tune-preset lr where they train): {time.perf_counter() - baseline_start:.0f} s")
    rows = {"LatHAdapter, today's defaults": today, f"LatHAdapter, chosen ({label(chosen, today)})": chosen}
    if euclid != chosen:
        rows["LatHAdapter, chosen, Euclidean twin (hyp_metric=euclid)"] = euclid
    tests = test_tables(caches, rows, baseline_out, grid, log)
    emit(log, f"\nStudy wall time: {time.perf_counter() - start:.0f} s")
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps({"worlds": WORLDS, "today": today, "stage1": stage1, "stage2": stage2,
                                     "stage3": steps, "stage4": stage4, "chosen": chosen, "final": final,
                                     "test": tests},
                                    indent=2, default=str))
    args.save.with_suffix(".txt").write_text("\n".join(log) + "\n")


if __name__ == "__main__":
    main()
