r"""A report table as LaTeX: one `table` float a file (`<table>.tex` beside its CSV, for `\input`), needing only the
booktabs package; an `l` column per label column and an `r` per value column, the title as caption, `tab:<table>` as
label and the table's note in small type under it.

Cells read as in the markdown, in LaTeX: `30.33 $\pm$ 1.15` (one seed: `30.33`), `n/a`, `diverged`, `--` (no run),
and `\textsuperscript{n=2}` where the markdown writes `(n=2)` (the same rule, `report_tables.fewer_seeds`), explained
under the table. In a table of configurations (`Table.bold_best`; not an ablation, `_tuned` or hierarchy table) the
best mean of each value column is bold, as papers mark it, averages and HM included (columns like the others): the
highest mean as shown to two decimals (the lowest in an ECE table, `Table.lower_better`), so that cells reading alike
are all bold, and only where two rows or more have a number in the column; n/a, diverged and missing cells never
are. Every text from the data (labels, dataset names, option values, titles, notes) goes through `escape`.
"""

from __future__ import annotations

import re
from pathlib import Path

from lathadapter.experiments.cells import Cell
from lathadapter.experiments.report_tables import Chosen, Table, fewer_seeds
from lathadapter.experiments.run import write_atomic

ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": "$<$", ">": "$>$", "|": "$|$",
    "-": "-{}",  # only before another `-`: `--tune-set` stays two hyphens, not an en dash
    "×": r"$\times$", "±": r"$\pm$", "▲": r"$\uparrow$", "▼": r"$\downarrow$", "—": "--", "–": "--", "−": "$-$",
    "≥": r"$\geq$", "≤": r"$\leq$", "≠": r"$\neq$", "→": r"$\rightarrow$", "…": r"\ldots{}", "Ξ": r"$\Xi$",
    "ψ": r"$\psi$", "ρ": r"$\rho$", "α": r"$\alpha$",
}
_SPECIAL = re.compile("-(?=-)|[" + re.escape("".join(c for c in ESCAPES if c != "-")) + "]")
SEEDS_NOTE = ("n=k: a mean over k seeds, fewer than the table's fullest cell (a run missing, failed or diverged), or "
              "an average or HM of such a cell")


def escape(text: str) -> str:
    """`text` as LaTeX text: its special characters and the report's unicode marks (`ESCAPES`); other characters
    as they are (UTF-8, LaTeX's default input encoding)."""
    return _SPECIAL.sub(lambda match: ESCAPES[match.group()], text)


def _shown_mean(cell: Cell | Chosen) -> float | None:
    """A cell's mean as the table shows it (two decimals), None without one."""
    return float(f"{cell.mean:.2f}") if isinstance(cell, Cell) and cell.mean is not None else None


def _best(column: list[Cell | Chosen], lower: bool = False) -> float | None:
    """The highest shown mean of a column (`lower`: the lowest) where two cells or more have one, else None."""
    means = [m for m in map(_shown_mean, column) if m is not None]
    return (min(means) if lower else max(means)) if len(means) > 1 else None


def _cell(cell: Cell | Chosen, best: float | None, most: int) -> str:
    text = escape(cell.text())
    if best is not None and _shown_mean(cell) == best:
        text = rf"\textbf{{{text}}}"
    seeds = fewer_seeds(cell, most)
    return text + (rf"\textsuperscript{{n={seeds}}}" if seeds is not None else "")


def latex(table: Table, source: str) -> str:
    """`table` as a LaTeX `table` float, its first line a comment naming `source` (the report's results) and the
    package it needs."""
    most = table.most_seeds()
    best = [_best([cells[i] for _, cells in table.rows], table.lower_better) if table.bold_best else None
            for i in range(len(table.columns))]
    rows = [[escape(text) for text in lead] + [_cell(c, b, most) for c, b in zip(cells, best, strict=True)]
            for lead, cells in table.rows]
    notes = [escape(table.note)] if table.note else []
    if any(fewer_seeds(c, most) is not None for _, cells in table.rows for c in cells):
        notes.append(escape(SEEDS_NOTE) + ".")
    origin = " ".join(source.splitlines())
    lines = [f"% lathadapter report of {origin}: table {table.name}; needs \\usepackage{{booktabs}}",
             r"\begin{table}[t]\centering", rf"\caption{{{escape(table.title)}}}", rf"\label{{tab:{table.name}}}",
             rf"\begin{{tabular}}{{{'l' * len(table.lead)}{'r' * len(table.columns)}}}", r"\toprule",
             " & ".join(escape(text) for text in table.lead + table.columns) + r" \\", r"\midrule",
             *(" & ".join(row) + r" \\" for row in rows), r"\bottomrule", r"\end{tabular}",
             *(rf"\par\smallskip{{\footnotesize {note}\par}}" for note in notes), r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_latex(table: Table, folder: Path, source: str) -> Path:
    """Write `latex(table, source)` atomically to `<folder>/<table>.tex`."""
    path = folder / f"{table.name}.tex"
    text = latex(table, source)
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    return path
