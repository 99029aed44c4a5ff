"""A report's plots (matplotlib, PNG, each written atomically): accuracy against shots and base / novel / HM dots, one
line or row per configuration with error bars over seeds, and a LatHAdapter run's Poincaré disk. The only
module that imports matplotlib, so that the tables (`report_tables`, what `grid` and `protocol` print) do without it."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import matplotlib
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from lathadapter.experiments.cells import (
    Cell,
    base_novel_cells,
    config_label,
    few_shot_cells,
    ordered_configs,
    slug,
    varied_settings,
)
from lathadapter.experiments.records import Choice, Configuration, Record, shots_label
from lathadapter.experiments.run import write_atomic


def outside_legend(ax: Axes) -> None:
    """The legend to the right of the axes, so that it never covers the data."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure of its own, outside pyplot: drawing a report neither switches the matplotlib backend of the process
    that asks for it (a notebook's) nor leaves figures open in it."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig: Figure, path: Path) -> Path:
    """Save a plot atomically (a full disk keeps the previous plot whole)."""
    fig.tight_layout()
    write_atomic(path, lambda temporary: fig.savefig(temporary, format=path.suffix.lstrip("."), dpi=120,
                                                     bbox_inches="tight"))
    return path


# Line styles of the accuracy-against-shots plot: the ten tab10 colours, then again with other markers and dashes, so
# that no two configurations of a plot look alike however many there are (a grid of 13 methods had three colours twice)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DASHES = ("-", "--", "-.", ":")


def line_style(index: int) -> dict[str, str]:
    """The colour, marker and line style of a plot's `index`-th line: each pass over the ten colours takes the next
    marker and dash, so the triple is unique for every index below 80."""
    colours = matplotlib.colormaps["tab10"].colors
    cycle = index // len(colours)
    return {"color": matplotlib.colors.to_hex(colours[index % len(colours)]), "marker": MARKERS[cycle % len(MARKERS)],
            "linestyle": DASHES[cycle % len(DASHES)]}


def _config_choices(records: Iterable[Record]) -> dict[Configuration, list[Choice]]:
    """Each configuration's kept tuning choices among `records`."""
    choices: dict[Configuration, list[Choice]] = defaultdict(list)
    for record in records:
        if record.tuned:
            choices[record.config].append(record.tuned)
    return choices


def plot_accuracy_vs_shots(records: list[Record], folder: Path) -> list[Path]:
    """Per dataset with two numbers of shots or more: one line per configuration, error bars the std over seeds."""
    cells = few_shot_cells(records)
    paths = []
    for dataset in sorted({d for d, _, _ in cells}):
        shots = sorted({k for d, _, k in cells if d == dataset})
        if len(shots) < 2:
            continue
        configs = ordered_configs({c for d, c, _ in cells if d == dataset})
        varied = varied_settings(configs)
        choices = _config_choices(r for r in records if r.dataset == dataset and r.classes == "all" and not r.target)
        fig, ax = _figure(9, 4)  # the legend sits right of the axes
        for index, config in enumerate(configs):
            points = [(k, cells[(dataset, config, k)]) for k in shots if (dataset, config, k) in cells]
            points = [(k, c) for k, c in points if c.mean is not None]
            if points:
                ax.errorbar([k for k, _ in points], [c.mean for _, c in points],
                            yerr=[c.std or 0.0 for _, c in points], capsize=3, **line_style(index),
                            label=config_label(config, varied, choices.get(config, [])),
                            linewidth=2.5 if config.method == "lathadapter" else 1.5)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set(xlabel="shots per class", ylabel="top-1 accuracy (%)", title=f"{dataset}: accuracy vs shots")
        ax.grid(alpha=0.3)
        outside_legend(ax)
        paths.append(_save(fig, folder / f"accuracy_vs_shots_{slug(dataset)}.png"))
    return paths


# The base-to-novel plot's three scores: a marker and colour each, drawn as dots on one row per configuration
SCORES = (("base", "o", "tab:blue"), ("novel", "s", "tab:orange"), ("HM", "D", "tab:green"))


def plot_base_novel(records: list[Record], folder: Path) -> list[Path]:
    """Per dataset (and number of shots, when there are several): a row per configuration with its base, novel and
    HM accuracy as dots, error bars the std over seeds; a method that cannot score novel classes says so in its row.
    Dots rather than bars, so that the axis can span the scores alone and their differences stay visible."""
    cells = base_novel_cells(records)
    blocks = sorted({(d, k) for d, _, k in cells})
    several_shots = len({k for _, k in blocks}) > 1
    paths = []
    for dataset, shots in blocks:
        configs = ordered_configs({c for d, c, k in cells if (d, k) == (dataset, shots)})
        varied = varied_settings(configs)
        choices = _config_choices(r for r in records if (r.dataset, r.shots, r.classes) == (dataset, shots, "base")
                                  and not r.target)
        fig, ax = _figure(9, 0.4 * len(configs) + 1.4)
        shown: list[float] = []
        for i, config in enumerate(configs):
            base, novel = cells[(dataset, config, shots)]
            missing = []
            for (score, marker, colour), cell, offset in zip(SCORES, (base, novel, Cell.hm(base, novel)),
                                                             (-0.2, 0.0, 0.2), strict=True):
                if cell.mean is None:
                    missing.append(f"{score} {cell.text()}")
                    continue
                ax.errorbar(cell.mean, i + offset, xerr=cell.std or 0.0, fmt=marker, color=colour, capsize=2,
                            markersize=6, label=score if score not in ax.get_legend_handles_labels()[1] else None)
                shown.append(cell.mean)
            if missing:
                ax.annotate(", ".join(missing), (0.0, i), xycoords=("axes fraction", "data"), xytext=(4, 0),
                            textcoords="offset points", ha="left", va="center", fontsize=7, color="grey")
        ax.set_yticks(range(len(configs)), [config_label(c, varied, choices.get(c, [])) for c in configs], fontsize=8)
        ax.set_ylim(len(configs) - 0.5, -0.5)
        if shown:
            ax.set_xlim(max(0.0, min(shown) - 8), min(100.0, max(shown) + 3))
        ax.set(xlabel="top-1 accuracy (%)", title=f"{dataset}: base-to-novel, {shots_label(shots)}")
        outside_legend(ax)
        ax.grid(axis="x", alpha=0.3)
        name = f"base_novel_{slug(dataset)}" + (f"_{shots}shot" if several_shots else "")
        paths.append(_save(fig, folder / f"{name}.png"))
    return paths


def disk_coordinates(points: torch.Tensor, curvature: float, basis: torch.Tensor) -> torch.Tensor:
    """Map ball points to the unit disk: keep each point's distance to the origin exactly (its depth in the
    hierarchy) and take its direction from the projection of its tangent vector at 0 onto a 2-D `basis`."""
    scaled = points * math.sqrt(curvature)  # into the unit ball; radius ∈ [0, 1)
    radius = scaled.norm(dim=-1, keepdim=True)
    direction = torch.nn.functional.normalize(scaled @ basis, dim=-1)
    return radius * direction


def disk_points(run_dir: Path) -> Path:
    """The lifted points a LatHAdapter run saved (`points.pt`), which the disk picture draws; a ValueError names the
    folder when there are none."""
    path = run_dir / "points.pt"
    if not path.is_file():
        problem = "has no points.pt" if run_dir.is_dir() else "does not exist"
        raise ValueError(f"{run_dir} {problem}; the disk picture needs a lathadapter run directory (one holding "
                         "points.pt)")
    return path


def plot_poincare_disk(run_dir: Path, folder: Path) -> Path:
    """A trained LatHAdapter's categories, attribute prompts and sample images of a few classes, on the disk, from
    the lifted points the run saved (`points.pt`)."""
    points = torch.load(disk_points(run_dir))
    c = points["curvature"]
    categories, attributes, images = points["categories"], points["attributes"], points["images"]
    # The 2-D basis: principal directions of the tangent vectors of the points shown.
    tangent = torch.cat([categories, attributes, images])
    basis = torch.linalg.svd(tangent - tangent.mean(0), full_matrices=False).Vh[:2].t()
    xy = {name: disk_coordinates(p, c, basis) for name, p in
          (("categories", categories), ("attributes", attributes), ("images", images))}
    fig, ax = _figure(6, 6)
    ax.add_patch(Circle((0, 0), 1, fill=False, color="black"))
    colours = matplotlib.colormaps["tab10"]
    labels = points["image_labels"]
    names = points["class_names"]
    for i, name in enumerate(names):
        pts = xy["images"][labels == i]
        ax.scatter(pts[:, 0], pts[:, 1], s=14, color=colours(i), alpha=0.6)
        ax.scatter(*xy["categories"][i], s=120, marker="*", color=colours(i), edgecolor="black", alpha=0.85,
                   label=f"{i + 1}: {name}", zorder=3)
        # each star's number at its own angle around it: the numbers stay apart where stars coincide
        angle = 2 * math.pi * i / max(len(names), 1)
        ax.annotate(str(i + 1), xy["categories"][i].tolist(), xytext=(12 * math.cos(angle), 12 * math.sin(angle)),
                    textcoords="offset points", ha="center", va="center", fontsize=8, color=colours(i),
                    fontweight="bold", zorder=4)
        strongest = int(points["strongest_attribute"][i])
        ax.plot([xy["categories"][i, 0], xy["attributes"][strongest, 0]],
                [xy["categories"][i, 1], xy["attributes"][strongest, 1]], color=colours(i), linewidth=0.8)
    ax.scatter(xy["attributes"][:, 0], xy["attributes"][:, 1], s=50, marker="^", color="grey",
               edgecolor="black", label="attribute prompts")
    ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal",
           title=f"LatHAdapter in the Poincaré disk (c = {c:.2f})\n{disk_run_label(run_dir)}")
    ax.axis("off")
    outside_legend(ax)
    fig.text(0.02, 0.02, "radius = exact distance to the origin; angle = PCA of tangent vectors", fontsize=7)
    return _save(fig, folder / "poincare_disk.png")


def disk_run_label(run_dir: Path) -> str:
    """Which run the disk draws: its cache file, classes, shots, seed and run key (from its config.json)."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return f"run {run_dir.name}"
    return (f"{Path(str(config.get('cache', '?'))).name}, {config.get('classes', '?')} classes, "
            f"{config.get('shots', '?')} shots, seed {config.get('seed', '?')}, run {config.get('key', run_dir.name)}")
