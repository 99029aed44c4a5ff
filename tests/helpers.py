"""Helpers that several test files share: an oracle restated once, a reader of what a grid writes, a results
table written by hand for reports, a reader of a report's LaTeX table that checks its structure, and whether a
process still runs."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import torch


@torch.no_grad()
def top1(method: Any, features: torch.Tensor, labels: torch.Tensor, text: torch.Tensor | None = None) -> float:
    """Top-1 accuracy (%) restated, the oracle of the recorded scores: the share of rows whose highest score is their
    label's."""
    method.eval()
    return 100.0 * float((method.logits(features, text).argmax(dim=-1) == labels).double().mean())


def read_rows(out: Path) -> list[dict[str, str]]:
    """The rows of a grid folder's `results.csv`, as text."""
    with (out / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """A results table written by hand, as a report reads it: `columns`, empty where a row has no value, each row
    keyed `k0`, `k1`, ... unless it gives its own `key`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({"key": f"k{i}", **r} for i, r in enumerate(rows))
    return path


def unescaped(char: str, line: str) -> int:
    return len(re.findall(rf"(?<!\\){re.escape(char)}", line))


def braces_balance(text: str) -> bool:
    depth = 0
    for char in re.sub(r"(?<!\\)\\[{}]", "", text):  # `\{` and `\}` are escaped text, not groups
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def read_tex(path: Path) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """The file's lines, its header cells and its rows (label → cells), as `read_tex_rows` checks them."""
    lines, header, rows = read_tex_rows(path)
    return lines, header, {cells[0]: cells[1:] for cells in rows}


def read_tex_rows(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    """The file's lines, its header cells and its rows' cells, checking that braces balance and that every row of
    the tabular has one unescaped `&` fewer than it has columns and ends with `\\`."""
    text = path.read_text(encoding="utf-8")
    assert braces_balance(text), path.name
    lines = text.splitlines()
    spec = re.fullmatch(r"\\begin\{tabular\}\{([lr]+)\}", lines[lines.index(r"\toprule") - 1]).group(1)
    header, *body = [lines[lines.index(r"\toprule") + 1]] + \
        lines[lines.index(r"\midrule") + 1: lines.index(r"\bottomrule")]
    for line in [header, *body]:
        assert line.endswith(r" \\") and unescaped("&", line) == len(spec) - 1, line
    cells = [[c.strip() for c in re.split(r"(?<!\\)&", line.removesuffix(r" \\"))] for line in [header, *body]]
    return lines, cells[0], cells[1:]


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (read from /proc): whether a stopped command's processes outlive
    it."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
