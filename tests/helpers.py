"""Helpers that several test files share: an oracle restated once, a reader of what a grid writes, and a results
table written by hand for reports."""

from __future__ import annotations

import csv
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
