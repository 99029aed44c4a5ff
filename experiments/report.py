"""Paper-style tables (markdown and CSV) and plots from a results table.

Every number in a table is the mean ± std (sample std, n − 1) over seeds of the results table's rows with the same
dataset, method and setting; the Average column or row is the mean of the per-dataset means. Base-to-novel HM is
computed from the mean base and mean novel accuracies, as papers report it.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lathadapter.adapter.catalog import method_names  # noqa: E402


def read_results(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"results table {path} does not exist; run `lathadapter grid` or a protocol first")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _value(text: str) -> float | None:
    return None if text in ("", None) else float(text)


@dataclass(frozen=True)
class Cell:
    """Mean ± std over seeds of one table cell (None: not applicable)."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def text(self) -> str:
        if self.mean is None:
            return "n/a"
        return f"{self.mean:.2f} ± {self.std:.2f}" if len(self.values) > 1 else f"{self.mean:.2f}"


def _ordered(methods: set[str]) -> list[str]:
    """Methods in the catalog's order (zero-shot first, LatHAdapter last), unknown names after them."""
    order = method_names()
    return sorted(methods, key=lambda m: (order.index(m) if m in order else len(order), m))


def _cells(rows: list[dict[str, str]], key: tuple[str, ...], metric: str) -> dict[tuple[str, ...], Cell]:
    grouped: dict[tuple[str, ...], list[float]] = defaultdict(list)
    present: set[tuple[str, ...]] = set()
    for row in rows:
        k = tuple(row[c] for c in key)
        present.add(k)
        value = _value(row[metric])
        if value is not None:
            grouped[k].append(value)
    return {k: Cell(tuple(grouped.get(k, []))) for k in present}


@dataclass
class Table:
    """A titled table: header and rows of strings (markdown) plus the numeric means (CSV)."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join(" --- " for _ in self.header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def write_csv(self, folder: Path) -> Path:
        path = folder / f"{self.name}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.header)
            writer.writerows(self.rows)
        return path


def _mean_text(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return "n/a" if len(known) < len(values) or not known else f"{statistics.fmean(known):.2f}"


def few_shot_tables(rows: list[dict[str, str]]) -> list[Table]:
    """Per dataset: methods × shots; plus, with several datasets, the average over datasets."""
    rows = [r for r in rows if r["classes"] == "all" and not r.get("target")]
    if not rows:
        return []
    cells = _cells(rows, ("dataset", "method", "shots"), "acc_all")
    datasets = sorted({r["dataset"] for r in rows})
    shots = sorted({int(r["shots"]) for r in rows})
    methods = _ordered({r["method"] for r in rows})
    tables = []
    for dataset in datasets:
        body = [[m] + [cells[(dataset, m, str(k))].text() if (dataset, m, str(k)) in cells else "—" for k in shots]
                for m in methods]
        tables.append(Table(f"few_shot_{dataset}", f"Few-shot accuracy (%) on {dataset}", ["method"] +
                            [f"{k} shot" for k in shots], body))
    if len(datasets) > 1:
        body = [[m] + [_mean_text([cells[(d, m, str(k))].mean if (d, m, str(k)) in cells else None for d in datasets])
                       for k in shots] for m in methods]
        tables.append(Table("few_shot_average", f"Few-shot accuracy (%), average over {len(datasets)} datasets",
                            ["method"] + [f"{k} shot" for k in shots], body))
    return tables


def base_to_novel_table(rows: list[dict[str, str]]) -> list[Table]:
    """Methods × (dataset × base / novel / HM), with an average when there are several datasets."""
    rows = [r for r in rows if r["classes"] == "base"]
    if not rows:
        return []
    base, novel = _cells(rows, ("dataset", "method"), "acc_base"), _cells(rows, ("dataset", "method"), "acc_novel")
    datasets = sorted({r["dataset"] for r in rows})
    methods = _ordered({r["method"] for r in rows})
    header = ["method"]
    for d in datasets + (["Average"] if len(datasets) > 1 else []):
        header += [f"{d} base", f"{d} novel", f"{d} HM"]
    body = []
    for m in methods:
        line, means = [m], []
        for d in datasets:
            b, n = base[(d, m)], novel[(d, m)]
            hm = None if b.mean is None or n.mean is None else 2 * b.mean * n.mean / max(b.mean + n.mean, 1e-12)
            line += [b.text(), n.text(), "n/a" if hm is None else f"{hm:.2f}"]
            means.append((b.mean, n.mean))
        if len(datasets) > 1:
            mb = _mean_text([x for x, _ in means])
            mn = _mean_text([y for _, y in means])
            hm = "n/a" if "n/a" in (mb, mn) else f"{2 * float(mb) * float(mn) / (float(mb) + float(mn)):.2f}"
            line += [mb, mn, hm]
        body.append(line)
    return [Table("base_to_novel", "Base-to-novel generalisation (%): 16 shots on base classes", header, body)]


def transfer_table(rows: list[dict[str, str]]) -> list[Table]:
    """Cross-dataset or domain-generalisation results: methods × targets, plus the average over targets."""
    rows = [r for r in rows if r.get("target")]
    if not rows:
        return []
    cells = _cells(rows, ("method", "target"), "acc_all")
    targets = ["source"] + sorted({r["target"] for r in rows} - {"source"})
    methods = _ordered({r["method"] for r in rows})
    body = []
    for m in methods:
        values = [cells.get((m, t), Cell(())) for t in targets]
        body.append([m] + [v.text() for v in values] + [_mean_text([v.mean for v in values[1:]])])
    source = sorted({r["dataset"] for r in rows})
    return [Table("transfer", f"Transfer from {', '.join(source)} (%): source test set and targets",
                  ["method"] + targets + ["Average (targets)"], body)]


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_vs_shots(rows: list[dict[str, str]], folder: Path) -> list[Path]:
    rows = [r for r in rows if r["classes"] == "all" and not r.get("target")]
    cells = _cells(rows, ("dataset", "method", "shots"), "acc_all")
    paths = []
    for dataset in sorted({r["dataset"] for r in rows}):
        shots = sorted({int(r["shots"]) for r in rows if r["dataset"] == dataset})
        if len(shots) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for method in _ordered({r["method"] for r in rows if r["dataset"] == dataset}):
            points = [(k, cells[(dataset, method, str(k))]) for k in shots if (dataset, method, str(k)) in cells]
            points = [(k, c) for k, c in points if c.mean is not None]
            if points:
                ax.errorbar([k for k, _ in points], [c.mean for _, c in points], yerr=[c.std for _, c in points],
                            marker="o", capsize=3, label=method, linewidth=2.5 if method == "lathadapter" else 1.5)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set(xlabel="shots per class", ylabel="top-1 accuracy (%)", title=f"{dataset}: accuracy vs shots")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, folder / f"accuracy_vs_shots_{dataset}.png"))
    return paths


def plot_base_novel(rows: list[dict[str, str]], folder: Path) -> list[Path]:
    rows = [r for r in rows if r["classes"] == "base"]
    paths = []
    for dataset in sorted({r["dataset"] for r in rows}):
        subset = [r for r in rows if r["dataset"] == dataset]
        methods = _ordered({r["method"] for r in subset})
        base, novel = _cells(subset, ("method",), "acc_base"), _cells(subset, ("method",), "acc_novel")
        fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2.5, 4))
        width = 0.27
        for i, m in enumerate(methods):
            b, n = base[(m,)].mean, novel[(m,)].mean
            hm = 2 * b * n / (b + n) if b is not None and n is not None and b + n > 0 else None
            for j, (value, colour) in enumerate(((b, "tab:blue"), (n, "tab:orange"), (hm, "tab:green"))):
                if value is not None:
                    ax.bar(i + (j - 1) * width, value, width, color=colour)
                else:
                    ax.text(i + (j - 1) * width, 1, "n/a", ha="center", rotation=90, fontsize=7)
        ax.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
        ax.bar(0, 0, color="tab:blue", label="base")
        ax.bar(0, 0, color="tab:orange", label="novel")
        ax.bar(0, 0, color="tab:green", label="HM")
        ax.set(ylabel="top-1 accuracy (%)", title=f"{dataset}: base-to-novel")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        paths.append(_save(fig, folder / f"base_novel_{dataset}.png"))
    return paths


def disk_coordinates(points: torch.Tensor, curvature: float, basis: torch.Tensor) -> torch.Tensor:
    """Map ball points to the unit disk: keep each point's distance to the origin exactly (its depth in the
    hierarchy) and take its direction from the projection of its tangent vector at 0 onto a 2-D `basis`."""
    scaled = points * math.sqrt(curvature)  # into the unit ball; radius ∈ [0, 1)
    radius = scaled.norm(dim=-1, keepdim=True)
    direction = torch.nn.functional.normalize(scaled @ basis, dim=-1)
    return radius * direction


def plot_poincare_disk(run_dir: Path, folder: Path) -> Path:
    """A trained LatHAdapter's categories, attribute prompts and sample images of a few classes, on the disk, from
    the lifted points the run saved (`points.pt`)."""
    path = run_dir / "points.pt"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no points.pt; the disk picture needs a lathadapter run directory")
    points = torch.load(path)
    c = points["curvature"]
    categories, attributes, images = points["categories"], points["attributes"], points["images"]
    # The 2-D basis: principal directions of the tangent vectors of the points shown.
    tangent = torch.cat([categories, attributes, images])
    basis = torch.linalg.svd(tangent - tangent.mean(0), full_matrices=False).Vh[:2].t()
    xy = {name: disk_coordinates(p, c, basis) for name, p in
          (("categories", categories), ("attributes", attributes), ("images", images))}
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="black"))
    colours = plt.get_cmap("tab10")
    labels = points["image_labels"]
    for i, name in enumerate(points["class_names"]):
        pts = xy["images"][labels == i]
        ax.scatter(pts[:, 0], pts[:, 1], s=14, color=colours(i), alpha=0.6)
        ax.scatter(*xy["categories"][i], s=180, marker="*", color=colours(i), edgecolor="black", label=name)
        strongest = int(points["strongest_attribute"][i])
        ax.plot([xy["categories"][i, 0], xy["attributes"][strongest, 0]],
                [xy["categories"][i, 1], xy["attributes"][strongest, 1]], color=colours(i), linewidth=0.8)
    ax.scatter(xy["attributes"][:, 0], xy["attributes"][:, 1], s=50, marker="^", color="grey",
               edgecolor="black", label="attribute prompts")
    ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal",
           title=f"LatHAdapter in the Poincaré disk (c = {c:.2f})")
    ax.axis("off")
    ax.legend(fontsize=7, loc="lower right")
    fig.text(0.02, 0.02, "radius = exact distance to the origin; angle = PCA of tangent vectors", fontsize=7)
    return _save(fig, folder / "poincare_disk.png")


def write_report(results: Path, out: Path, disk_run: Path | None = None) -> dict[str, Any]:
    """Write `report.md`, one CSV per table and the plots into `out`; returns the paths and the markdown."""
    rows = read_results(results)
    out.mkdir(parents=True, exist_ok=True)
    tables = few_shot_tables(rows) + base_to_novel_table(rows) + transfer_table(rows)
    plots = plot_accuracy_vs_shots(rows, out) + plot_base_novel(rows, out)
    if disk_run is None:
        lath = [r for r in rows if r["method"] == "lathadapter"]
        candidate = results.parent / "runs" / lath[-1]["key"] if lath else None
        disk_run = candidate if candidate is not None and (candidate / "points.pt").exists() else None
    if disk_run is not None:
        plots.append(plot_poincare_disk(disk_run, out))
    markdown = "\n".join(t.markdown() for t in tables)
    (out / "report.md").write_text(
        f"# Results\n\nFrom `{results}` ({len(rows)} rows). Cells are mean ± std over seeds.\n\n{markdown}\n"
        + "".join(f"![{p.stem}]({p.name})\n" for p in plots)
    )
    csvs = [t.write_csv(out) for t in tables]
    return {"markdown": markdown, "tables": [str(p) for p in csvs], "plots": [str(p) for p in plots],
            "report": str(out / "report.md")}
