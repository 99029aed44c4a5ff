"""benchmarks/readme_demo_check.py: README's demo cells read against a report.md written by hand in the report's format
(`### title`, `| method | … |`, `mean ± std`, tuned labels), equal cells passing and a changed one named."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from lathadapter.adapter.catalog import method_names

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("readme_demo_check", ROOT / "benchmarks" / "readme_demo_check.py")
checker = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = checker  # dataclasses look their module up there
spec.loader.exec_module(checker)

README = """### What the demo shows

| method (lr tuned on val) | 1 shot | 4 shots | 16 shots | base | novel | base-to-novel HM |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
| zero-shot | 59.26 | 59.26 | 59.26 | 69.68 | 63.43 | 66.40 |
| TaskRes | 68.44 ± 2.17 | 76.85 ± 1.97 | 84.38 ± 0.99 | 86.11 ± 1.41 | 63.43 | 73.05 |
| GDA (training-free) | 61.77 ± 0.29 | **85.61 ± 0.87** | 82.79 ± 0.35 | 85.03 ± 0.27 | n/a | n/a |

The report's plots …
"""

REPORT = """# Report

### Few-shot accuracy (%) on DemoShapes

| method | 1 shot | 2 shots | 4 shots | 8 shots | 16 shots |
| --- | --- | --- | --- | --- | --- |
| gda | 61.77 ± 0.29 | 70.00 ± 1.00 | 85.61 ± 0.87 | 84.00 ± 0.50 | 82.79 ± 0.35 |
| taskres lr=0.0001/0.001 (tuned) | 68.44 ± 2.17 | 72.00 ± 1.00 | 76.85 ± 1.97 | 80.00 ± 1.00 | 84.38 ± 0.99 |
| zeroshot | 59.26 ± 0.00 | 59.26 ± 0.00 | 59.26 ± 0.00 | 59.26 ± 0.00 | 59.26 ± 0.00 |

### Few-shot accuracy (%) on DemoShapes: tuned values, chosen on the training classes' val images by val

| method | 1 shot | 2 shots | 4 shots | 8 shots | 16 shots |
| --- | --- | --- | --- | --- | --- |
| taskres | lr=0.001 | lr=0.001 | lr=0.001 | lr=0.001 | lr=0.0001 |

### Base-to-novel generalisation (%): 16 shots on base classes

| method | DemoShapes base | DemoShapes novel | DemoShapes HM |
| --- | --- | --- | --- |
| gda | 85.03 ± 0.27 | n/a | n/a |
| taskres lr=0.001 (tuned) | 86.11 ± 1.41 | 63.43 ± 0.00 | 73.05 |
| zeroshot | 69.68 ± 0.00 | 63.43 ± 0.00 | 66.40 |
"""


def test_equal_cells_pass() -> None:
    comparisons = checker.compare_tables(checker.readme_cells(README), checker.report_cells(REPORT))
    assert len(comparisons) == 3 * 6
    assert all(c.equal for c in comparisons), [c for c in comparisons if not c.equal]
    cell = next(c for c in comparisons if c.item == "GDA (training-free) / 4 shots")
    assert (cell.readme, cell.report) == ("85.61 ± 0.87", "85.61 ± 0.87")  # README's bold stripped
    cell = next(c for c in comparisons if c.item == "TaskRes / novel")
    assert (cell.readme, cell.report) == ("63.43", "63.43")  # the report's `± 0.00` stripped


def test_a_changed_cell_fails_and_is_named() -> None:
    report = REPORT.replace("| 86.11 ± 1.41 | 63.43 ± 0.00 | 73.05 |", "| 86.11 ± 1.41 | 63.43 ± 0.00 | 73.06 |")
    different = [c for c in checker.compare_tables(checker.readme_cells(README), checker.report_cells(report))
                 if not c.equal]
    assert [(c.item, c.readme, c.report) for c in different] == [("TaskRes / base-to-novel HM", "73.05", "73.06")]


def test_a_row_missing_from_the_report_is_named() -> None:
    report = REPORT.replace("| gda | 61.77 ± 0.29 | 70.00 ± 1.00 | 85.61 ± 0.87 | 84.00 ± 0.50 | 82.79 ± 0.35 |\n", "")
    different = [c.item for c in checker.compare_tables(checker.readme_cells(README), checker.report_cells(report))
                 if not c.equal]
    assert different == ["GDA (training-free) / 1 shot", "GDA (training-free) / 4 shots",
                         "GDA (training-free) / 16 shots"]


def test_the_real_readme_table_reads_as_13_methods_by_6_columns() -> None:
    cells = checker.readme_cells((ROOT / "README.md").read_text())
    assert list(cells) == list(checker.METHODS)
    # each README row is read from the report's row of a method the catalog has, one row a method, in its order
    assert list(checker.METHODS.values()) == method_names()
    assert all(list(row) == ["1 shot", "4 shots", "16 shots", "base", "novel", "base-to-novel HM"]
               for row in cells.values())


def test_plots_compared_by_bytes_and_the_command_exits_1_naming_the_difference(tmp_path: Path, capsys) -> None:
    root, folder = tmp_path / "repo", tmp_path / "demo-output"
    (root / "benchmarks" / "results").mkdir(parents=True)
    (folder / "report").mkdir(parents=True)
    (root / "README.md").write_text(README)
    (folder / "report" / "report.md").write_text(REPORT)
    for i, (ours, theirs) in enumerate(checker.PLOTS.items()):
        (root / "benchmarks" / "results" / ours).write_bytes(b"png %d" % i)
        (folder / "report" / theirs).write_bytes(b"png %d" % i)
    assert all(c.equal for c in checker.check(folder, root))
    (folder / "report" / "poincare_disk.png").write_bytes(b"another png")
    different = [c.item for c in checker.check(folder, root) if not c.equal]
    assert different == ["demo_poincare_disk.png"]
    checker.ROOT = root
    try:
        assert checker.main([str(folder)]) == 1
    finally:
        checker.ROOT = ROOT
    assert "different: demo_poincare_disk.png" in capsys.readouterr().out


def test_a_missing_table_is_a_one_line_error() -> None:
    with pytest.raises(checker.CheckError, match="Base-to-novel generalisation"):
        checker.report_cells(REPORT.split("### Base-to-novel")[0])
