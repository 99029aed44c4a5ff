"""What calibrating the worlds' zero-shot does to each method, as a picture: test accuracy (mean over the four worlds)
of every method on benchmarks/calibrated_worlds.py's calibrated worlds beside their uncalibrated twins (the same
images; `--twins`), at 4 and 16 shots and base-to-novel base accuracy.

    python benchmarks/calibrated_worlds_plot.py [--results benchmarks/results]
                                                [--out benchmarks/results/calibrated_worlds.png]

Reads `calibrated_worlds.json` and `calibrated_worlds_twins.json` (the two runs' saved tables); trains nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

COLUMNS = {"4s": "4 shots", "16s": "16 shots", "base": "base-to-novel: base"}
ROWS = {"zeroshot": "zero-shot", "LatHAdapter, today's defaults": "LatHAdapter",
        "LatHAdapter, (d) hyp_metric=euclid (Euclidean twin)": "LatHAdapter, Euclidean twin", "gda": "GDA",
        "linear-probe": "ZS-LP", "clip-adapter": "CLIP-Adapter", "taskres": "TaskRes", "lp++": "LP++",
        "tip-adapter-f": "Tip-Adapter-F", "clap": "CLAP", "ape": "APE", "ape-t": "APE-T",
        "cross-modal": "cross-modal LP"}


def means(path: Path) -> dict[str, dict[str, float]]:
    """row → column → test accuracy, mean over worlds, from a saved `calibrated_worlds` table."""
    return {row: cells["mean over worlds"] for row, cells in json.loads(path.read_text())["test"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibrated_worlds.png")
    args = parser.parse_args()
    runs = {"uncalibrated twins (ECE 19–31)": means(args.results / "calibrated_worlds_twins.json"),
            "calibrated (text_signal, ECE 3–5)": means(args.results / "calibrated_worlds.json")}
    figure = Figure(figsize=(5.0 * len(COLUMNS), 4.8))
    for index, (column, title) in enumerate(COLUMNS.items()):
        axes = figure.add_subplot(1, len(COLUMNS), index + 1)
        width = 0.8 / len(runs)
        for offset, (label, table) in enumerate(runs.items()):
            values = [table[row][column] for row in ROWS]
            axes.barh([i + offset * width for i in range(len(ROWS))], values, height=width, label=label)
        axes.set_yticks([i + width / 2 for i in range(len(ROWS))], list(ROWS.values()), fontsize=8)
        axes.invert_yaxis()
        low = min(table[row][column] for table in runs.values() for row in ROWS)
        axes.set(title=title, xlabel="test accuracy (%), mean over the four worlds", xlim=(low - 3, 100))
        axes.grid(axis="x", alpha=0.3)
        if index == 0:
            axes.legend(fontsize=8, loc="upper right")  # beside the short zero-shot bars
    figure.suptitle("benchmarks/calibrated_worlds.py: the same images, zero-shot calibrated or not (seeds 1–3)")
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
