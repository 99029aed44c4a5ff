r"""LaTeX tables of a report: one `<table>.tex` beside each CSV, read back and checked against numbers, bold cells and
escapes worked out here from the rows (statistics.mean / stdev over seeds; the best shown mean of a column of
configurations), never from the code under test."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import helpers

from lathadapter.experiments.report import write_report
from lathadapter.experiments.report_latex import escape

COLUMNS = ["key", "cache", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select", "target",
           "acc_all", "acc_base", "acc_novel", "diverged", "opt.lathadapter.beta", "opt.lr", "tune.group",
           "tune.names", "tune.values", "tune.score", "tune.set", "tune.selected", "tune.edge"]
FP = "1a2b3c4d5e6f7a8b"
# few-shot accuracy on caltech101 by (method, shots) over seeds 1, 2, 3: None marks a diverged seed. At 1 shot
# clip-adapter's and lathadapter's means differ but read 50.00 both (both bold); at 2 shots lathadapter has 2 seeds
# left (n=2), zeroshot has no run (--), tip-adapter's every run diverged at 1 shot and has no score at 2 (n/a); at 4
# shots only lathadapter ran: one number, nothing to compare, no bold
FEW_SHOT: dict[tuple[str, int], list[float | None]] = {
    ("clip-adapter", 1): [50.004, 49.996, 50.010], ("clip-adapter", 2): [60.0, 62.5, 61.0],
    ("lathadapter", 1): [49.0, 51.0, 50.0], ("lathadapter", 2): [63.0, 64.0, None],
    ("lathadapter", 4): [70.0, 72.0, 71.0], ("zeroshot", 1): [45.0], ("tip-adapter", 1): [None, None, None]}
NO_SCORE = [("tip-adapter", 2)]
# base-to-novel at 16 shots: (base, novel) per seed; the linear probe scores no novel classes (n/a)
BASE_NOVEL = {"clip-adapter": [(80.0, 60.0), (82.0, 61.0), (81.0, 65.0)],
              "lathadapter": [(79.0, 70.0), (83.0, 68.0), (80.5, 69.0)], "linear-probe": [(85.0, None)]}


def row(method: str, seed: int = 1, shots: int = 1, **values: Any) -> dict[str, Any]:
    return {"cache": "caltech101.h5", "dataset": "caltech101", "fingerprint": FP, "method": method, "shots": shots,
            "seed": seed, "classes": "all", "text": "coop", "select": "last", "target": "", **values}


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    return helpers.write_rows(path, rows, COLUMNS)


def grid_rows() -> list[dict[str, Any]]:
    rows = [row(method, seed, shots, acc_all=a) if a is not None else
            row(method, seed, shots, diverged="loss was nan at epoch 1")
            for (method, shots), accs in FEW_SHOT.items() for seed, a in enumerate(accs, 1)]
    rows += [row(method, 1, shots) for method, shots in NO_SCORE]
    rows += [row(method, seed, 16, classes="base", acc_base=b, acc_novel="" if n is None else n)
             for method, pairs in BASE_NOVEL.items() for seed, (b, n) in enumerate(pairs, 1)]
    return rows


def expected_cell(values: list[float], bold: bool, most: int) -> str:
    """A cell restated: mean ± sample std to two decimals (one seed: the mean), bold when it is its column's best,
    `n=k` after it when it rests on fewer seeds than the table's fullest cell."""
    mean = statistics.mean(values)
    text = f"{mean:.2f}" + (rf" $\pm$ {statistics.stdev(values):.2f}" if len(values) > 1 else "")
    return (rf"\textbf{{{text}}}" if bold else text) + (rf"\textsuperscript{{n={len(values)}}}" if len(values) < most
                                                         else "")


def best_rows(means: dict[str, float | None]) -> set[str]:
    """The rows whose mean, as shown to two decimals, is the highest of the column, where two rows or more have one."""
    shown = {label: round(m, 2) for label, m in means.items() if m is not None}
    return {label for label, m in shown.items() if m == max(shown.values())} if len(shown) > 1 else set()


def test_each_table_gets_a_latex_file_with_its_cells_and_each_columns_best_mean_bold(tmp_path: Path) -> None:
    written = write_report(write_rows(tmp_path / "results.csv", grid_rows()), tmp_path / "report")
    out = tmp_path / "report"
    assert sorted(written["latex"]) == sorted(str(out / f"{Path(p).stem}.tex") for p in written["tables"])
    assert {p.stem for p in out.glob("*.tex")} == {p.stem for p in out.glob("*.csv")} == {
        "few_shot_caltech101", "base_to_novel", "few_shot_caltech101_seeds", "base_to_novel_seeds"}

    lines, header, rows = helpers.read_tex(out / "few_shot_caltech101.tex")
    assert lines[0].startswith("%") and str(tmp_path / "results.csv") in lines[0] and r"{booktabs}" in lines[0]
    assert lines[1:5] == [r"\begin{table}[t]\centering", r"\caption{Few-shot accuracy (\%) on caltech101}",
                          r"\label{tab:few_shot_caltech101}", r"\begin{tabular}{lrrr}"]
    assert lines[-1] == r"\end{table}" and header == ["method", "1 shot", "2 shots", "4 shots"]
    scores = {(m, k): [a for a in accs if a is not None] for (m, k), accs in FEW_SHOT.items()}
    most = max(len(v) for v in scores.values())
    expected = {}
    for method in {m for m, _ in FEW_SHOT} | {m for m, _ in NO_SCORE}:
        expected[method] = []
        for shots in (1, 2, 4):
            column = {m: statistics.mean(scores[m, shots]) if scores.get((m, shots)) else None
                      for m, k in FEW_SHOT if k == shots}
            values = scores.get((method, shots))
            if values:
                expected[method].append(expected_cell(values, method in best_rows(column), most))
            else:
                expected[method].append("n/a" if (method, shots) in NO_SCORE else
                                        "diverged" if (method, shots) in FEW_SHOT else "--")
    assert rows == expected
    assert sum(r"\textbf" in cell for cells in rows.values() for cell in cells) == 3  # the tie at 1 shot, then 63.50
    assert r"{\footnotesize n=k: a mean over k seeds" in "\n".join(lines)

    _, header, rows = helpers.read_tex(out / "base_to_novel.tex")
    assert header == ["method", "caltech101 base", "caltech101 novel", "caltech101 HM"]
    base = {m: statistics.mean(b for b, _ in pairs) for m, pairs in BASE_NOVEL.items()}
    novel = {m: statistics.mean(n for _, n in pairs) if pairs[0][1] is not None else None
             for m, pairs in BASE_NOVEL.items()}
    hm = {m: 2 * base[m] * novel[m] / (base[m] + novel[m]) if novel[m] is not None else None for m in BASE_NOVEL}
    for method, pairs in BASE_NOVEL.items():
        cells = [expected_cell([b for b, _ in pairs], method in best_rows(base), 3)]
        cells.append(expected_cell([n for _, n in pairs], method in best_rows(novel), 3) if novel[method] else "n/a")
        shown = f"{hm[method]:.2f}" if hm[method] is not None else "n/a"
        cells.append(rf"\textbf{{{shown}}}" if method in best_rows(hm) else shown)
        assert rows[method] == cells, method
    assert best_rows(hm) == {"lathadapter"} and best_rows(base) == {"linear-probe"}  # the data's point, checked


def test_report_md_keeps_its_tables_and_names_the_latex_files(tmp_path: Path) -> None:
    """The markdown path is unchanged: the header sentence gains the files, each table block reads as before."""
    write_report(write_rows(tmp_path / "results.csv", grid_rows()), tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert text.splitlines()[2] == (
        f"From `{tmp_path / 'results.csv'}` ({len(grid_rows())} rows). Each table row is one configuration; cells are "
        "mean ± sample std over seeds (one seed: no ±); n/a: not applicable; diverged: no seed's training stayed "
        "finite; —: no run. Each table is also a CSV of numbers (`<table>.csv`) and a LaTeX table (`<table>.tex`, "
        "booktabs; bold: a column's best mean among configurations).")
    cells = {key: [a for a in accs if a is not None] for key, accs in FEW_SHOT.items()}

    def shown(values: list[float]) -> str:
        mean = statistics.mean(values)
        text = f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"
        return text + (f" (n={len(values)})" if len(values) < 3 else "")

    block = ["### Few-shot accuracy (%) on caltech101", "", "| method | 1 shot | 2 shots | 4 shots |",
             "| --- | --- | --- | --- |", f"| zeroshot | {shown(cells['zeroshot', 1])} | — | — |",
             f"| clip-adapter | {shown(cells['clip-adapter', 1])} | {shown(cells['clip-adapter', 2])} | — |",
             "| tip-adapter | diverged | n/a | — |",
             f"| lathadapter | {' | '.join(shown(cells['lathadapter', k]) for k in (1, 2, 4))} |", ""]
    assert "\n".join(block) in text


def test_escape_maps_latex_specials_and_the_reports_unicode_marks() -> None:
    text = r"a_b % & # $ { } ~ ^ \ × ± ▲ ▼ — ≥ ≠ Ξ ψ ρ --tune-set é"
    assert escape(text) == (r"a\_b \% \& \# \$ \{ \} \textasciitilde{} \textasciicircum{} \textbackslash{} $\times$ "
                            r"$\pm$ $\uparrow$ $\downarrow$ -- $\geq$ $\neq$ $\Xi$ $\psi$ $\rho$ -{}-tune-set é")
    assert escape("lathadapter lr=0.01 (tuned)") == "lathadapter lr=0.01 (tuned)"


def test_data_text_is_escaped_and_ablation_and_tuned_tables_have_no_bold(tmp_path: Path) -> None:
    """A dataset `oxford_pets`, an option value full of specials, a tuned method with an edge mark: every text is
    escaped, rows keep one `&` fewer than columns, braces balance; only the table of configurations is bold."""
    odd = "a_b%&#${}~^\\"
    pets = {"cache": "pets.h5", "dataset": "oxford_pets"}
    rows = [row("lathadapter", 1, 1, acc_all=acc, **pets, **{"opt.lathadapter.beta": beta})
            for beta, acc in (("0.5", 40.0), (odd, 42.0))]
    rows += [row("clip-adapter", seed, 1, acc_all=30.0 + seed, **pets, **{
        "opt.lr": lr, "tune.group": f"g{seed}", "tune.names": "lr", "tune.values": f"lr={lr}", "tune.score": "val",
        "tune.set": "subset", "tune.selected": "true", "tune.edge": edge})
        for seed, lr, edge in ((1, 0.01, "high"), (2, 0.01, "high"), (3, 0.001, ""))]
    write_report(write_rows(tmp_path / "results.csv", rows), tmp_path / "report")
    out = tmp_path / "report"
    tables = {p.stem: helpers.read_tex(p) for p in out.glob("*.tex")}
    assert set(tables) == {"few_shot_oxford_pets", "few_shot_oxford_pets_ablation_lathadapter_beta",
                           "few_shot_oxford_pets_tuned", "few_shot_oxford_pets_seeds"}
    label = r"lathadapter beta=a\_b\%\&\#\$\{\}\textasciitilde{}\textasciicircum{}\textbackslash{}"
    lines, _, main = tables["few_shot_oxford_pets"]
    assert r"\caption{Few-shot accuracy (\%) on oxford\_pets}" in lines
    one = r"\textsuperscript{n=1}"  # one seed where clip-adapter has three
    assert main[label] == [rf"\textbf{{42.00}}{one}"] and main["lathadapter beta=0.5"] == [f"40.00{one}"]
    assert main["clip-adapter lr=0.001/0.01 (tuned)"] == [rf"32.00 $\pm$ {statistics.stdev([31, 32, 33]):.2f}"]
    lines, header, ablation = tables["few_shot_oxford_pets_ablation_lathadapter_beta"]
    assert header == ["beta", "1 shot"] and ablation == {"0.5": ["40.00"], label.split("=", 1)[1]: ["42.00"]}  # no bold
    lines, header, tuned = tables["few_shot_oxford_pets_tuned"]
    assert tuned == {"clip-adapter": [r"lr=0.01 $\uparrow$ $\times$2, lr=0.001 $\times$1"]}
    assert r"\textbf" not in "\n".join(lines)
    note = next(line for line in lines if line.startswith(r"\par\smallskip"))
    assert r"$\uparrow$ / $\downarrow$" in note and "-{}-tune-preset" in note and "▲" not in note
