"""Method options: one dataclass per method (training options shared through `TrainOptions`), set by name."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any


@dataclass
class TrainOptions:
    """Optimiser and schedule shared by every trained method (METHOD.md, "Training and evaluation protocol")."""

    epochs: int = 20
    min_steps: int = 300  # never fewer optimiser steps than this, whatever the dataset size
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    eps: float = 1e-8


class OptionError(ValueError):
    """An unknown option name, or a value that does not parse as the option's type."""


def _parse(name: str, kind: Any, value: Any) -> Any:
    """Convert `value` (a string from the command line, or a Python value) to the option's declared type."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if not isinstance(value, str):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, kind):
            return value
        raise OptionError(f"option {name}={value!r}: expected {kind.__name__}")
    text = value.strip()
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return kind(text)
    except ValueError:
        valid = "true/false" if kind is bool else kind.__name__
        raise OptionError(f"option {name}={value!r} is not a valid {valid}") from None


def build_options(cls: type, overrides: dict[str, Any], method: str) -> Any:
    """An instance of the options dataclass `cls` with `overrides` applied; unknown names list the valid ones."""
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise OptionError(
            f"unknown option(s) {', '.join(unknown)} for method {method!r}; valid options: {', '.join(valid)}"
        )
    values = {name: _parse(name, hints[name], value) for name, value in overrides.items()}
    options = cls(**values)
    validate = getattr(options, "validate", None)
    if validate is not None:
        validate()
    return options


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    """Parse `--set name=value` strings into a mapping (values stay strings; types are applied per method)."""
    parsed: dict[str, str] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise OptionError(f"--set expects name=value, got {item!r}")
        parsed[name.strip()] = value.strip()
    return parsed


def choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    """Raise a clear error when a string option is not one of `valid`."""
    if value not in valid:
        raise OptionError(f"option {name}={value!r} is not valid; choose one of: {', '.join(valid)}")
