"""A saved study table as a picture: per method, test accuracy on each world (a dot) and their mean (a bar), at
4 shots, 16 shots and base-to-novel base accuracy. Reads the JSON that benchmarks/clap_study.py saves (`--save`;
its `table`: method → world → column → accuracy, with a "mean over worlds" entry); trains nothing.

    python benchmarks/study_plot.py [--results benchmarks/results/ape_cross_modal_study.json] [--out FILE.png]

Methods are ordered by their mean 16-shot accuracy; LatHAdapter's bars are drawn darker.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

COLUMNS = {"4s": "4 shots", "16s": "16 shots", "base": "base-to-novel: base"}
MEAN = "mean over worlds"


def value(cell: Any) -> float | None:
    """An accuracy of the saved table: a number, or a {mean, ...} entry; None where not applicable."""
    if isinstance(cell, dict):
        cell = cell.get("mean")
    return None if cell is None else float(cell)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path,
                        default=Path(__file__).parent / "results" / "ape_cross_modal_study.json")
    parser.add_argument("--out", type=Path, default=None, help="the PNG (default: the results file's name, .png)")
    args = parser.parse_args()
    table: dict[str, dict[str, dict[str, Any]]] = json.loads(args.results.read_text())["table"]
    rows = sorted((r for r in table if value(table[r][MEAN].get("16s")) is not None),
                  key=lambda r: -(value(table[r][MEAN]["16s"]) or 0.0))
    worlds = [w for w in table[rows[0]] if w != MEAN]
    figure = Figure(figsize=(5.0 * len(COLUMNS), 0.45 * len(rows) + 1.6))
    for index, (column, title) in enumerate(COLUMNS.items()):
        axes = figure.add_subplot(1, len(COLUMNS), index + 1)
        means = [value(table[r][MEAN].get(column)) for r in rows]
        axes.barh(range(len(rows)), [m or 0.0 for m in means], height=0.6,
                  color=["tab:red" if r.startswith("lathadapter") else "tab:blue" for r in rows], alpha=0.45)
        for i, row in enumerate(rows):
            dots = [v for w in worlds if (v := value(table[row].get(w, {}).get(column))) is not None]
            axes.plot(dots, [i] * len(dots), "k.", markersize=4)
        axes.set_yticks(range(len(rows)), rows if index == 0 else [""] * len(rows), fontsize=8)
        axes.invert_yaxis()
        known = [m for m in means if m is not None]
        axes.set(title=title, xlabel=f"test accuracy (%): bar the mean of {len(worlds)} worlds, dots each world",
                 xlim=(min(known) - 5, 100))
        axes.grid(axis="x", alpha=0.3)
    figure.suptitle(f"{args.results.name}: seeds 1–3, each world's mean over seeds")
    figure.tight_layout()
    out = args.out or args.results.with_suffix(".png")
    figure.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
