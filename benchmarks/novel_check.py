"""Do the options the defaults study found "did nothing" or "hurt" do so on novel classes too? Around today's
defaults, each of those options' values is trained base-to-novel and compared on validation (the study's val_hm)
and, read once for reporting, on test base, novel and HM accuracy; the defaults are not chosen here.

    OMP_NUM_THREADS=1 python benchmarks/novel_check.py [--out benchmarks/.data/novel-check]
                                                       [--save benchmarks/results/novel_check.json]

Worlds: the defaults study's five (benchmarks/lathadapter_study.py: four held-out CLIP-like worlds and the demo),
base-to-novel at 16 shots, seeds 1–3: 15 (world, seed) pairs per configuration. The centre: today's
`LatHAdapterOptions` for the study's searched options (lr 1e-2, λ_hier 0); each option value of docs/method.md's
"did nothing" and "hurt" lists is changed alone from it. Per configuration: the mean over the 15 pairs of val_hm
(pseudo-base / pseudo-novel halves of the base classes' val split, as the study scores it) and of test base, novel
and HM (each run's HM of its base and novel accuracy), and against the centre the mean paired difference Δ with the
study's exact two-sided sign-flip p. A configuration that raises test novel accuracy (Δ > 0, p < 0.05) is also
trained few-shot at 4 and 16 shots (all classes), to say what it costs there: val and test accuracy, the same test.
One process of one thread; runs resume (the grid machinery). Also draws `novel_check.png`: per configuration the 15
paired Δ of test novel accuracy and of val_hm.
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
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).parent))
from lathadapter_study import (  # noqa: E402 — the defaults study's worlds, runs, records and paired test
    DATA,
    RESULTS,
    SEEDS,
    TODAY,
    WORLDS,
    Config,
    compare,
    emit,
    label,
    pairs,
    records,
    train,
    worlds,
)
from lathadapter_study_plot import COLOURS, draw_stage, pair_worlds  # noqa: E402 — the study plot's rows of paired Δ

from lathadapter.adapter.methods.lathadapter.options import LatHAdapterOptions  # noqa: E402
from lathadapter.cache.store import CacheReader  # noqa: E402

CONTEXT = (("base", 16),)  # base-to-novel, 16 shots
FEW_SHOT = (("all", 4), ("all", 16))  # the study's few-shot contexts, for what a novel-class gain costs there
DEFAULTS: Config = {**TODAY, "lambda_hier": 0.0}  # today's `LatHAdapterOptions` for the study's searched options
# docs/method.md, "The defaults study": the option values it lists as "did nothing, within the noise" and "hurt"
# (K is `num_attributes`, the number of attribute prompts).
CLAIMS: dict[str, list[Config]] = {
    "did nothing": [{"lambda_hyp": 1.0}, {"radius": "norm"}, {"num_attributes": 8}, {"num_attributes": 32},
                    {"lambda_anchor": 0.1}, {"lambda_anchor": 1.0}, {"attr_proto": False}, {"centre": "modality"}],
    "hurt": [{"alpha_v": 0.5}, {"lambda_hyp": 0.0}, {"lambda_hier": 0.5}, {"lr": 0.0003}],
}
# What a run scores: the study's val_hm, then test accuracy (metrics.json) read once for reporting.
SCORES = {"val_hm": lambda m: m["study_score"], "test base": lambda m: m["accuracy"]["base"],
          "test novel": lambda m: m["accuracy"]["novel"], "test HM": lambda m: m["hm"]}
ALPHA = 0.05


def few_shot(caches: dict[str, Path], name: str, config: Config, out: Path, log: list[str]) -> dict[str, Any]:
    """Few-shot val and test accuracy of `config` at 4 and 16 shots against the centre's (trained here, resumable):
    the mean over the 15 pairs, Δ and p per context and split."""
    train(caches, [DEFAULTS, config], out, 1, FEW_SHOT)
    found: dict[str, Any] = {}
    cells = []
    for context in FEW_SHOT:
        for split, read in (("val", lambda m: m["study_score"]), ("test", lambda m: m["accuracy"]["all"])):
            a, b = ([{**r, "score": float(read(r["metrics"]))} for r in records(caches, c, out, (context,))]
                    for c in (config, DEFAULTS))
            gain, p = compare(pairs(a), pairs(b))
            column = f"{context[1]}s {split}"
            found[column] = {"mean": statistics.fmean(pairs(a).values()), "centre": statistics.fmean(
                pairs(b).values()), "gain": gain, "p": p}
            cells.append(f"{found[column]['centre']:.2f} → {found[column]['mean']:.2f} | {gain:+.2f} | {p:.3f}")
    emit(log, f"| {name} | " + " | ".join(cells) + " |")
    return found


def scored(found: list[dict[str, Any]], score: str) -> dict[tuple[str, int], float]:
    """The 15 paired values of one score: per (world, seed), the run's `score` (percent)."""
    return pairs([{**r, "score": float(SCORES[score](r["metrics"]))} for r in found])


def measure(caches: dict[str, Path], configs: dict[str, Config], out: Path) -> dict[str, Any]:
    """Per configuration and score: the mean over the pairs, the paired Δ against the centre, its p, the pairs."""
    centre = {s: scored(records(caches, DEFAULTS, out, CONTEXT), s) for s in SCORES}
    results: dict[str, Any] = {}
    for name, config in configs.items():
        found = records(caches, config, out, CONTEXT)
        results[name] = {"config": config, "scores": {}}
        for score in SCORES:
            paired = scored(found, score)
            gain, p = compare(paired, centre[score]) if config != DEFAULTS else (0.0, 1.0)
            results[name]["scores"][score] = {"mean": statistics.fmean(paired.values()), "gain": gain, "p": p,
                                              "pairs": list(paired.values())}
    return results


def table(results: dict[str, Any], claims: dict[str, str], log: list[str]) -> None:
    """The table: per configuration and score, the mean over worlds × seeds, Δ against the centre and p."""
    emit(log, "\nScores (%): mean over 5 worlds × 3 seeds; Δ: mean of the 15 paired differences (world, seed) "
              "against the centre; p: exact two-sided sign-flip test. val_hm as the study scores it; test HM: "
              "each run's HM of its test base and novel accuracy.\n")
    emit(log, "| configuration | docs said | " + " | ".join(f"{s} | Δ | p" for s in SCORES) + " |")
    emit(log, "| --- " * (2 + 3 * len(SCORES)) + "|")
    for name, result in results.items():
        cells = [f"{c['mean']:.2f} | {c['gain']:+.2f} | {c['p']:.3f}" for c in result["scores"].values()]
        emit(log, f"| {name} | {claims.get(name, '—')} | " + " | ".join(cells) + " |")


def plot(results: dict[str, Any], claims: dict[str, str], path: Path) -> None:
    """Per configuration, the 15 paired Δ of test novel accuracy (left) and of val_hm (right): dots coloured by world,
    the mean a diamond, filled where p < 0.05 (the study plot's rows)."""
    rows = [name for name in results if name != "centre"]
    figure = Figure(figsize=(12.0, 0.32 * len(rows) + 1.8))
    worlds_of_pairs = pair_worlds({"worlds": WORLDS}, len(SEEDS) * (len(WORLDS) + 1))
    panels = (("test novel", "test novel accuracy (read once; the defaults are not chosen on it)"),
              ("val_hm", "val_hm (the study's base-to-novel score)"))
    for index, (score, title) in enumerate(panels):
        axes = figure.add_subplot(1, 2, index + 1)
        stage = {name: {**results[name]["scores"][score]} for name in ["centre", *rows]}
        draw_stage(axes, stage, title, worlds_of_pairs)
        axes.set_yticks(range(len(rows)), [f"{r} (val: {claims[r]})" for r in rows] if index == 0 else [""] * len(rows),
                        fontsize=8)
        axes.set_xlabel("paired Δ against today's defaults (points; diamond: mean, filled at p < 0.05)", fontsize=8)
    names = sorted(set(worlds_of_pairs or []))
    handles = [figure.axes[0].scatter([], [], s=12, c=COLOURS[i % len(COLOURS)]) for i in range(len(names))]
    figure.legend(handles, names, loc="upper center", ncol=len(names), fontsize=7, frameon=False,
                  bbox_to_anchor=(0.5, 1 - 0.3 / figure.get_figheight()))
    figure.suptitle("novel_check: base-to-novel, 16 shots, seeds 1–3, each option changed alone from today's defaults",
                    fontsize=10)
    figure.subplots_adjust(left=0.2, right=0.9, wspace=0.45, top=1 - 0.75 / figure.get_figheight(),
                           bottom=0.6 / figure.get_figheight())
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DATA / "novel-check", help="worlds and runs (resumable)")
    parser.add_argument("--save", type=Path, default=RESULTS / "novel_check.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    command = " ".join(["python benchmarks/novel_check.py", *sys.argv[1:]])
    log: list[str] = []
    emit(log, f"# {command}")
    emit(log, f"# torch {torch.__version__}, 1 process × 1 thread; base-to-novel, 16 shots, seeds "
              f"{SEEDS[0]}–{SEEDS[-1]}")
    caches = worlds(args.out)
    for name, path in caches.items():  # which worlds were read: a cache left in --out from an older pass is reused
        with CacheReader(path) as reader:
            info = reader.info()
        emit(log, f"{name}: {path.name}, fingerprint {info.fingerprint}, {info.counts['val']} val images")
    today = LatHAdapterOptions()
    moved = [f"{k}={getattr(today, k)!r} (here {v!r})" for k, v in DEFAULTS.items() if getattr(today, k) != v]
    emit(log, f"centre: {', '.join(f'{k}={v}' for k, v in DEFAULTS.items())}"
              + (f"; today's LatHAdapterOptions differ: {', '.join(moved)}" if moved else
                 " (today's LatHAdapterOptions)"))
    configs = {"centre": DEFAULTS}
    claims: dict[str, str] = {}
    for claim, changes in CLAIMS.items():
        for change in changes:
            name = label({**DEFAULTS, **change}, DEFAULTS)
            configs[name] = {**DEFAULTS, **change}
            claims[name] = claim
    grid = args.out / "grid"
    train(caches, list(configs.values()), grid, 1, CONTEXT)
    emit(log, f"\n{len(configs)} configurations × {len(caches) * len(SEEDS)} runs: "
              f"{time.perf_counter() - start:.0f} s (0 s: resumed)")
    results = measure(caches, configs, grid)
    table(results, claims, log)
    helped = [n for n, r in results.items() if r["scores"]["test novel"]["gain"] > 0
              and r["scores"]["test novel"]["p"] < ALPHA]
    costs: dict[str, Any] = {}
    if helped:
        emit(log, "\nWhat a novel-class gain costs few-shot (all classes): the centre → the configuration, mean over "
                  "the 15 pairs; Δ and p as above.\n")
        emit(log, "| configuration | " + " | ".join(f"{s}s {split} | Δ | p" for _, s in FEW_SHOT
                                                 for split in ("val", "test")) + " |")
        emit(log, "| --- " * (1 + 3 * 2 * len(FEW_SHOT)) + "|")
        costs = {name: few_shot(caches, name, configs[name], grid, log) for name in helped}
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps({"command": command, "worlds": WORLDS, "centre": DEFAULTS, "claims": claims,
                                     "results": results, "few_shot": costs}, indent=2, default=str) + "\n")
    args.save.with_suffix(".txt").write_text("\n".join(log) + "\n")
    plot(results, claims, args.save.with_suffix(".png"))
    print(f"saved: {args.save}, {args.save.with_suffix('.txt')}, {args.save.with_suffix('.png')}")


if __name__ == "__main__":
    main()
