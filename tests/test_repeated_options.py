"""A single-valued option given twice with different values is a usage error naming it and both values (click kept
the last one silently: `grid --method a --method b` ran b alone), in every command; options meant to repeat
(`--set`, `--cache`) accumulate, and the same value twice is harmless."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments.table import option_column


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("repeats") / "c.h5", num_classes=4, dim=8, shots=(1, 2),
                                 seeds=(1,))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_usage_line(result, expected: str) -> None:
    """Exit 2 and one line, the expected one, with no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines() == [f"error: {expected}"], result.output


LIST_ADVICE = "give several values comma-separated"
REPEATS = [
    (["grid", "--method", "lathadapter", "--method", "tip-adapter-f"],
     f"--method given twice (lathadapter, tip-adapter-f): {LIST_ADVICE}, --method lathadapter,tip-adapter-f"),
    (["grid", "--shots=4", "--shots", "16", "--shots=1"],
     f"--shots given 3 times (4, 16, 1): {LIST_ADVICE}, --shots 4,16,1"),
    (["grid", "--select", "val", "--select", "last", "--select", "val"],
     f"--select given 3 times (val, last): {LIST_ADVICE}, --select val,last"),
    (["protocol", "few-shot", "--cache", "{cache}", "--seeds", "1", "--seeds", "2"],
     f"--seeds given twice (1, 2): {LIST_ADVICE}, --seeds 1,2"),
    (["demo", "--method", "zeroshot", "--method", "gda"],
     f"--method given twice (zeroshot, gda): {LIST_ADVICE}, --method zeroshot,gda"),
    (["cache", "build", "--shots", "1,2", "--shots", "2,4"],  # the values' items merged, each once
     f"--shots given twice (1,2, 2,4): {LIST_ADVICE}, --shots 1,2,4"),
    (["fit", "--cache", "{cache}", "--device", "cpu", "--device", "cuda"],
     "--device given twice (cpu, cuda): give it once"),
    (["fit", "--cache", "{cache}", "--shots", "1", "--shots", "2"], "--shots given twice (1, 2): give it once"),
    (["cache", "build", "--dataset", "caltech101", "--dataset=dtd"],
     "--dataset given twice (caltech101, dtd): give it once"),
    (["cache", "build-many", "--dataset", "dtd", "--out", "a", "--out", "b"], "--out given twice (a, b): give it once"),
    (["cache", "subset", "{cache}", "--shots", "1", "--seed", "1", "--shots", "2"],
     "--shots given twice (1, 2): give it once"),
    (["report", "{cache}", "--out", "a", "--out", "b"], "--out given twice (a, b): give it once"),
    (["inspect", "{cache}", "--device", "cpu", "--device=cuda"], "--device given twice (cpu, cuda): give it once"),
    (["cache", "build", "--quick-gelu", "--no-quick-gelu"], "--quick-gelu and --no-quick-gelu both given: give one"),
    (["cache", "build", "--no-progress", "--dataset", "dtd", "--progress"],
     "--progress and --no-progress both given: give one"),
]


@pytest.mark.parametrize(("args", "expected"), REPEATS, ids=[" ".join(args[:3]) for args, _ in REPEATS])
def test_a_single_valued_option_given_twice_is_a_usage_error_naming_both_values(
        cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], expected: str) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written: the command stops before any work
    assert_usage_line(invoke(*(arg.replace("{cache}", str(cache)) for arg in args)), expected)
    assert list(tmp_path.iterdir()) == []


def test_the_same_value_again_is_harmless_and_what_follows_double_dash_is_not_an_option(cache: Path) -> None:
    result = invoke("cache", "subset", str(cache), "--shots", "2", "--seed", "1", "--shots=2", "--seed=1")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["train"]) == 2 * 4  # 2 shots of each of the 4 classes
    # after `--` an option's name is an argument: `list` refuses it as a list's name, not as a repeated option
    result = invoke("list", "--", "--out")
    assert result.exit_code == 2 and "given twice" not in result.output


def test_repeatable_options_accumulate(cache: Path, tmp_path: Path) -> None:
    """Two `--set` axes expand to their product, as before: 1 × 2 values of lathadapter's options, one shot, one
    seed."""
    out = tmp_path / "grid"
    result = invoke("grid", "--cache", str(cache), "--method", "lathadapter", "--shots", "1", "--seeds", "1",
                    "--set", "epochs=1", "--set", "min_steps=1,2", "--device", "cpu", "--workers", "1", "--out",
                    str(out))
    assert result.exit_code == 0, result.output
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [option_column("lathadapter", name) for name in ("epochs", "min_steps")]
    assert sorted(tuple(row[column] for column in columns) for row in rows) == [("1", "1"), ("1", "2")]
