"""A report's per-seed tables: each few-shot (per dataset), base-to-novel and transfer accuracy table again in long
format, `<table>_seeds`, a row per configuration and seed (the protocol reports results per seed and as mean ± std
over seeds; the main tables give the latter). The same builders make them, each cell holding one seed's run
(`Metric.seed`), so rows, columns, labels and order are those of the main table by construction; an HM is of that
seed's base and novel accuracy, an average over datasets or targets of that seed's values."""

from __future__ import annotations

from dataclasses import dataclass, replace

from lathadapter.experiments.cells import AVERAGE, Cell
from lathadapter.experiments.records import Record
from lathadapter.experiments.report_tables import (
    ACCURACY,
    Table,
    base_to_novel_tables,
    few_shot_tables,
    transfer_tables,
)

SEEDS_NOTE = ("A row per configuration and seed that ran; each cell is that seed's run (an HM: of the seed's base and "
              "novel; an average: of the seed's datasets or targets). Table {name} gives the mean ± std over seeds.")


@dataclass(frozen=True)
class RunValue:
    """A `_seeds` table's cell: one run's value, read as the main tables read a cell of one seed (`n/a`, `diverged`,
    `—`); one number in the CSV."""

    cell: Cell

    def text(self) -> str:
        return self.cell.text()

    def numbers(self) -> list[str]:
        return self.cell.numbers()[:1]


def _accuracy_tables(records: list[Record], seed: int) -> list[Table]:
    """The main accuracy tables that get a per-seed companion, each cell `seed`'s run alone (no ablation, `_tuned`
    or main table of datasets: `companions` off; the few-shot average over datasets left out)."""
    metric = replace(ACCURACY, companions=False, seed=seed)
    few_shot = [t for t in few_shot_tables(records, metric) if t.name != f"few_shot_{AVERAGE}"]
    return few_shot + base_to_novel_tables(records, metric) + transfer_tables(records, metric)


def seed_tables(records: list[Record]) -> list[Table]:
    """The `<table>_seeds` tables in the report's order: per configuration in its table's order, its seeds ascending,
    each a row `[label, seed]` of its run's values; a seed without any run of the configuration in the table has no
    row."""
    seeds = sorted({r.seed for r in records})
    by_seed = [_accuracy_tables(records, seed) for seed in seeds]  # alike but for the cells: the same builders
    tables = []
    for alike in zip(*by_seed, strict=True):
        first = alike[0]
        rows = [([*lead, str(seed)], [RunValue(c) for c in table.rows[i][1]])
                for i, (lead, _) in enumerate(first.rows) for seed, table in zip(seeds, alike, strict=True)
                if not all(c.missing for c in table.rows[i][1])]
        tables.append(Table(f"{first.name}_seeds", f"{first.title}, per seed", [*first.lead, "seed"], first.columns,
                            rows, ("",), SEEDS_NOTE.format(name=first.name)))
    return tables


def seeds_markdown(tables: list[Table]) -> str:
    """`report.md`'s last section, "Per seed": the `tables` of `seed_tables` (empty without any)."""
    if not tables:
        return ""
    return ("\n## Per seed\n\nThe few-shot (per dataset), base-to-novel and transfer tables again, a row per "
            "configuration and seed, each cell that seed's run (`<table>_seeds.csv`: one number per column; "
            "`<table>_seeds.tex`).\n\n" + "\n".join(t.markdown() for t in tables))
