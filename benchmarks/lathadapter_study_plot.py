"""LatHAdapter's defaults study as a picture: for each stage, every configuration's paired differences against that
stage's centre (a dot per world × seed, coloured by world) and their mean Δ (a diamond, filled where the exact
sign-flip test gives p < 0.05), with p and the share of base-to-novel train images inside their category's cone.
Reads the JSON that benchmarks/lathadapter_study.py saves; trains nothing.

    python benchmarks/lathadapter_study_plot.py [--results benchmarks/results/lathadapter_study.json] [--out FILE.png]

The score of a pair is the mean of its three validation contexts (4-shot and 16-shot few-shot val accuracy,
base-to-novel val_hm), as the study scores it; no test accuracy is drawn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

ALPHA = 0.05  # the study's significance level
STAGES = {"stage1": "stage 1: the learning rate around the defaults of the time",
          "stage2": "stage 2: one option at a time",
          "stage4": "stage 4: the learning rate at the chosen configuration",
          "final": "the chosen configuration against the defaults of the time"}
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def pair_worlds(study: dict[str, Any], count: int) -> list[str] | None:
    """The world of each pair, in the study's order (sorted by world, then seed), where the count allows it: the
    saved synthetic worlds and the demo, 3 seeds each; None when the pairs cannot be attributed."""
    worlds = sorted([*study.get("worlds", {}), "demo"])
    seeds, rest = divmod(count, len(worlds))
    return None if rest else [w for w in worlds for _ in range(seeds)]


def draw_stage(axes: Any, stage: dict[str, Any], title: str, worlds: list[str] | None) -> None:
    """One stage: a row per configuration other than the centre, its pairs' differences and their mean."""
    centre = stage["centre"]["pairs"]
    rows = [name for name in stage if name != "centre"]
    for i, name in enumerate(rows):
        result = stage[name]
        differences = [a - b for a, b in zip(result["pairs"], centre, strict=True)]
        colours = ([COLOURS[sorted(set(worlds)).index(w) % len(COLOURS)] for w in worlds] if worlds
                   else ["black"] * len(differences))
        axes.scatter(differences, [i] * len(differences), s=9, c=colours, alpha=0.7, linewidths=0)
        significant = result["p"] < ALPHA
        colour = "tab:green" if result["gain"] > 0 else "tab:red"
        axes.plot([result["gain"]], [i], "D", markersize=7, markeredgecolor=colour,
                  markerfacecolor=colour if significant else "white")
        in_cone = result.get("diagnostics", {}).get("train_in_cone")
        note = f"Δ {result['gain']:+.2f}  p {'< 0.001' if result['p'] < 0.001 else format(result['p'], '.3f')}"
        if in_cone is not None:
            note += f"  in cone {in_cone:.0f} %"
        axes.annotate(note, (1.0, i), xycoords=("axes fraction", "data"), xytext=(6, 0),
                      textcoords="offset points", va="center", fontsize=7)
    axes.axvline(0.0, color="grey", linewidth=0.8)
    axes.set_yticks(range(len(rows)), rows, fontsize=8)
    axes.set_ylim(len(rows) - 0.5, -0.5)
    axes.set_title(title, fontsize=9, loc="left")
    axes.grid(axis="x", alpha=0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "lathadapter_study.json")
    parser.add_argument("--out", type=Path, default=None, help="the PNG (default: the results file's name, .png)")
    args = parser.parse_args()
    study = json.loads(args.results.read_text())
    stages = [key for key in STAGES if isinstance(study.get(key), dict) and len(study[key]) > 1]
    if not stages:
        raise SystemExit(f"error: {args.results}: no stage with configurations to draw (a lathadapter_study.py JSON "
                         f"holds {', '.join(STAGES)})")
    heights = [len(study[key]) - 1 for key in stages]
    figure = Figure(figsize=(9.0, 0.3 * sum(heights) + 1.2 * len(stages) + 0.8))
    grid = figure.add_gridspec(len(stages), 1, height_ratios=[h + 2 for h in heights])
    first = study[stages[0]]["centre"]["pairs"]
    worlds = pair_worlds(study, len(first))
    axes_list = []
    for index, key in enumerate(stages):
        axes = figure.add_subplot(grid[index], sharex=axes_list[0] if axes_list else None)
        draw_stage(axes, study[key], STAGES[key], worlds)
        axes_list.append(axes)
    axes_list[-1].set_xlabel("paired difference against the stage's centre (percentage points of the mean val score; "
                             "diamond: mean Δ, filled at p < 0.05)", fontsize=8)
    chosen = ", ".join(f"{k}={v}" for k, v in study.get("chosen", {}).items() if study.get("today", {}).get(k) != v)
    figure.suptitle(f"{args.results.name}: the defaults study's validation scores"
                    + (f"; chosen: {chosen}" if chosen else ""), fontsize=10)
    if worlds:
        names = sorted(set(worlds))
        handles = [axes_list[0].scatter([], [], s=12, c=COLOURS[i % len(COLOURS)]) for i in range(len(names))]
        figure.legend(handles, names, loc="upper center", bbox_to_anchor=(0.43, 0.985 - 0.25 / figure.get_figheight()),
                      ncol=len(names), fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, 0, 0.86, 1 - 0.45 / figure.get_figheight()))
    out = args.out or args.results.with_suffix(".png")
    figure.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
