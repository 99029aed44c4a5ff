"""README's demo table and plots against a demo's report: every cell of the table under "What the demo shows" equal to
the matching cell of `<folder>/report/report.md`, and the three README plots byte-identical to the report's.

    python benchmarks/readme_demo_check.py [demo-output]

Rows are matched by method (README's name → the method id that leads the report's row label); columns 1 / 4 / 16
shots come from the report's "Few-shot accuracy (%) on DemoShapes" table, base / novel / HM from its "Base-to-novel
generalisation (%): 16 shots on base classes" table. Both sides are compared as the README writes them: no `**`
(README's bold best) and no ` ± 0.00` (a cell without spread). Prints a row per cell and plot (README, report,
equal) and exits 1 on any difference, 2 when a file or table is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_HEAD = "| method (lr tuned on val) |"
FEW_SHOT_TITLE = "Few-shot accuracy (%) on DemoShapes"
BASE_NOVEL_TITLE = "Base-to-novel generalisation (%): 16 shots on base classes"
FEW_SHOT_COLUMNS = {"1 shot": "1 shot", "4 shots": "4 shots", "16 shots": "16 shots"}  # README → report
BASE_NOVEL_COLUMNS = {"base": "DemoShapes base", "novel": "DemoShapes novel", "base-to-novel HM": "DemoShapes HM"}
METHODS = {  # README's row name → the method id that leads the report's row label
    "zero-shot": "zeroshot", "linear probe": "linear-probe", "CLIP-Adapter": "clip-adapter",
    "Tip-Adapter (training-free)": "tip-adapter", "Tip-Adapter-F": "tip-adapter-f", "TaskRes": "taskres",
    "GDA (training-free)": "gda", "LP++": "lp++", "CLAP": "clap", "APE (training-free)": "ape", "APE-T": "ape-t",
    "cross-modal linear probe": "cross-modal", "LatHAdapter": "lathadapter",
}
PLOTS = {  # README's copy under benchmarks/results/ → the report's plot
    "demo_accuracy_vs_shots.png": "accuracy_vs_shots_DemoShapes.png",
    "demo_base_novel.png": "base_novel_DemoShapes.png",
    "demo_poincare_disk.png": "poincare_disk.png",
}


class CheckError(Exception):
    """A file, table, row or column the check needs is missing: the comparison cannot be made."""


@dataclass(frozen=True)
class Comparison:
    """One checked item: a table cell (`LatHAdapter / 4 shots`) or a plot, README's and the report's text."""

    item: str
    readme: str
    report: str

    @property
    def equal(self) -> bool:
        return self.readme == self.report


def normalise(cell: str) -> str:
    """A cell as the README writes it: no bold, no ` ± 0.00`."""
    return cell.replace("**", "").replace(" ± 0.00", "").strip()


def _cells(line: str) -> list[str]:
    """A markdown row's cells; an escaped `\\|` (in a report's label) is no border."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def _table(lines: list[str], start: int) -> tuple[list[str], list[list[str]]]:
    """The markdown table whose header is `lines[start]`: its header cells and body rows."""
    header = _cells(lines[start])
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(_cells(line))
    return header, rows


def readme_cells(text: str) -> dict[str, dict[str, str]]:
    """README's demo table: {README method name: {README column: cell}}."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(README_HEAD)]
    if len(starts) != 1:
        raise CheckError(f"README: expected one table headed {README_HEAD!r}, found {len(starts)}")
    header, rows = _table(lines, starts[0])
    return {normalise(row[0]): dict(zip(header[1:], (normalise(c) for c in row[1:]), strict=True)) for row in rows}


def _report_table(lines: list[str], title: str) -> dict[str, dict[str, str]]:
    """The report table titled `title` (or `title (fp …)`): {method id: {column: cell}}, one row per method."""
    found = [i for i, line in enumerate(lines)
             if line == f"### {title}" or line.startswith(f"### {title} (fp ")]
    if len(found) != 1:
        raise CheckError(f"report.md: expected one table titled {title!r}, found {len(found)}")
    start = next((i for i in range(found[0] + 1, len(lines)) if lines[i].startswith("|")), None)
    if start is None:
        raise CheckError(f"report.md: the table {title!r} has no rows")
    header, rows = _table(lines, start)
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        method = row[0].split(" ")[0]
        if method in table:
            raise CheckError(f"report.md: {title!r} has several rows of {method} (one configuration a method needed)")
        table[method] = dict(zip(header[1:], (normalise(c) for c in row[1:]), strict=True))
    return table


def report_cells(text: str) -> dict[str, dict[str, str]]:
    """The report's cells under README's columns: {method id: {README column: cell}}."""
    lines = text.splitlines()
    tables = ((_report_table(lines, FEW_SHOT_TITLE), FEW_SHOT_COLUMNS),
              (_report_table(lines, BASE_NOVEL_TITLE), BASE_NOVEL_COLUMNS))
    cells: dict[str, dict[str, str]] = {}
    for table, columns in tables:
        for method, row in table.items():
            for readme_column, report_column in columns.items():
                if report_column in row:
                    cells.setdefault(method, {})[readme_column] = row[report_column]
    return cells


def compare_tables(readme: dict[str, dict[str, str]], report: dict[str, dict[str, str]]) -> list[Comparison]:
    """Each README cell against the report's (`missing` where the report has no such row or column)."""
    comparisons = []
    for name, row in readme.items():
        if name not in METHODS:
            raise CheckError(f"README: demo table row {name!r} is no known method ({', '.join(METHODS)})")
        theirs = report.get(METHODS[name], {})
        comparisons += [Comparison(f"{name} / {column}", cell, theirs.get(column, "missing"))
                        for column, cell in row.items()]
    return comparisons


def _digest(path: Path) -> str:
    """A file's first 12 hex digits of SHA-256 (equal digests: equal bytes, for the table), `missing` if absent."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "missing"


def compare_plots(root: Path, report_folder: Path) -> list[Comparison]:
    """Each README plot against the report's, by their bytes' digests (`missing` for an absent file)."""
    comparisons = []
    for ours, theirs in PLOTS.items():
        a, b = _digest(root / "benchmarks" / "results" / ours), _digest(report_folder / theirs)
        comparisons.append(Comparison(ours, a, b if a != "missing" or b != "missing" else "missing too"))
    return comparisons


def check(folder: Path, root: Path | None = None) -> list[Comparison]:
    """Every README demo cell and plot against the demo report under `folder`; README and plots of `root` (default:
    this repository)."""
    root = root or ROOT
    report = folder / "report" / "report.md"
    if not report.is_file():
        raise CheckError(f"{report}: no report (run `make demo`, or pass the demo's output folder)")
    cells = compare_tables(readme_cells((root / "README.md").read_text()), report_cells(report.read_text()))
    return cells + compare_plots(root, folder / "report")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=Path("demo-output"),
                        help="the demo's output folder (default demo-output/)")
    args = parser.parse_args(argv)
    try:
        comparisons = check(args.folder)
    except CheckError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    width = max(len(c.item) for c in comparisons)
    print(f"{'cell':{width}}  {'README':>16}  {'report':>16}  equal")
    for c in comparisons:
        print(f"{c.item:{width}}  {c.readme:>16}  {c.report:>16}  {'yes' if c.equal else 'NO'}")
    different = [c.item for c in comparisons if not c.equal]
    print(f"{len(comparisons) - len(different)} of {len(comparisons)} equal"
          + (f"; different: {', '.join(different)}" if different else ""))
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
