"""A report folder: `report.md`, a CSV and a LaTeX file per table and the plots, from a results.csv, a grid folder
or a folder of `fit` runs, or several of them as one table (`write_report`, what `lathadapter report` runs), every
file written atomically and `report.md` last. Its parts, lowest first: `records` (the results read back), `cells`
(cells over seeds, configuration labels), `report_tables` (the tables, markdown and CSV), `report_latex` (each table
as LaTeX), `report_seeds` (the per-seed tables, in a last section of `report.md`) and `plots`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lathadapter.adapter.options import OptionError
from lathadapter.experiments.plots import (
    disk_points,
    plot_ablations,
    plot_accuracy_vs_shots,
    plot_base_novel,
    plot_poincare_disk,
    plot_reliability,
    plot_transfer,
)
from lathadapter.experiments.records import Results, load_results, merged, records, run_reliability
from lathadapter.experiments.report_latex import write_latex
from lathadapter.experiments.report_seeds import seed_tables, seeds_markdown
from lathadapter.experiments.report_tables import report_tables, tables_markdown
from lathadapter.experiments.run import forget_stale, write_atomic


def report_folder(path: Path) -> Path:
    """The default report folder of `path`: `report/` inside a folder, or beside a results.csv."""
    return path / "report" if path.is_dir() else path.parent / "report"


def _disk_run(results: Results) -> Path | None:
    """The run directory of the table's last LatHAdapter run that saved lifted points, if any."""
    for row in reversed(results.rows):
        folder = results.run_dirs.get(row["key"])
        if row.get("tune.selected", "").lower() == "false":
            continue  # a tuning candidate that was not kept
        if row["method"] == "lathadapter" and folder is not None and (folder / "points.pt").is_file():
            return folder
    return None


WRITTEN = ".report_files.json"  # in a report folder: the files its last report wrote (`forget_stale`)


def write_report(source: Path | list[Path], out: Path | None = None, disk_run: Path | None = None
                 ) -> dict[str, Any]:
    """Write `report.md`, a CSV and a LaTeX file per table and the plots into `out` (default:
    `report_folder(source)`) from a results.csv, a grid folder or a folder of run directories, or from several of
    them as one table (`records.merged`: the folders of several protocols, say; then `out` is needed); returns the
    paths and the tables' markdown."""
    sources = [source] if isinstance(source, str | Path) else list(source)
    if not sources:
        raise OptionError("no results to report: give a results.csv, a grid folder or a folder of `fit` runs")
    if len(sources) > 1 and out is None:
        raise OptionError(f"--out: a report of {len(sources)} sources has no default folder; give one, e.g. "
                          "--out report")
    loaded = [load_results(Path(path)) for path in sources]
    if disk_run is not None:
        disk_points(disk_run)  # a wrong --disk-run fails before any file is written
    # a malformed table fails before the folder is made, its error naming its own file and row
    each = [records(results) for results in loaded]
    results = loaded[0] if len(loaded) == 1 else merged(loaded)
    parsed = each[0] if len(loaded) == 1 else records(results)  # configurations alike across the sources' columns
    out = out or report_folder(Path(sources[0]))
    out.mkdir(parents=True, exist_ok=True)
    tables = report_tables(parsed)
    per_seed = seed_tables(parsed)
    shots_plots, crowded_shots = plot_accuracy_vs_shots(parsed, out)
    ablations, crowded = plot_ablations(parsed, out)
    bins = run_reliability(results, (r.key for r in parsed))  # no results column holds them
    reliability, crowded_reliability = plot_reliability(parsed, bins, out)
    plots = shots_plots + plot_base_novel(parsed, out) + plot_transfer(parsed, out) + ablations + reliability
    disk_run = disk_run or _disk_run(results)
    if disk_run is not None:
        plots.append(plot_poincare_disk(disk_run, out))
    markdown = tables_markdown(tables, results)
    csvs = [t.write_csv(out) for t in tables + per_seed]
    latex = [write_latex(t, out, results.label) for t in tables + per_seed]
    origin = ", ".join(f"`{path}`" for path in (results.source, *results.also))
    text = (f"# Results\n\nFrom {origin} ({len(results.rows)} rows). Each table row is one configuration; "
            "cells are mean ± sample std over seeds (one seed: no ±); n/a: not applicable; diverged: no seed's "
            "training stayed finite; —: no run. Each table is also a CSV of numbers (`<table>.csv`) and a LaTeX table "
            "(`<table>.tex`, booktabs; bold: a column's best mean among configurations).\n\n"
            f"{markdown}\n" + "".join(f"![{p.stem}]({p.name})\n" for p in plots)
            + (f"\nAccuracy-against-shots plots left out for having more lines than there are distinct line "
               f"styles (`plots.MOST_SHOTS_LINES`; their tables hold every cell): {', '.join(crowded_shots)}.\n"
               if crowded_shots else "")
            + (f"\nAblation plots left out for their many lines (`plots.MOST_ABLATION_LINES`; their ablation tables "
               f"hold every cell): {', '.join(crowded)}.\n" if crowded else "")
            + (f"\nReliability diagrams left out for their many configurations (`plots.MOST_RELIABILITY_PANELS` "
               f"panels; their ECE tables hold every cell): {', '.join(crowded_reliability)}.\n"
               if crowded_reliability else "")
            + seeds_markdown(per_seed))  # last, after the text it had before it
    write_atomic(out / "report.md", lambda temporary: temporary.write_text(text))  # last: the report is whole
    forget_stale(out, [*csvs, *latex, *plots, out / "report.md"], WRITTEN)
    return {"markdown": markdown, "tables": [str(p) for p in csvs], "latex": [str(p) for p in latex],
            "plots": [str(p) for p in plots], "report": str(out / "report.md")}
