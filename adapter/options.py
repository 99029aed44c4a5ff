"""Method options: one frozen dataclass per method (training options shared through `TrainOptions`), the one parser
of `--set NAME=VALUE[,VALUE...]` and the conversion of a value to its option's declared type.

Options are parsed once, where they enter (command line, Python call, grid file); from there the typed dataclass
travels unchanged to the method, its loss, the run key and `config.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class OptionError(ValueError):
    """A usage mistake: an unknown option name, a value that does not parse as the option's type or lies outside its
    range, options that conflict. The command line exits with `exit_code`."""

    exit_code = 2  # usage


class StateError(OptionError):
    """A well-formed command that the state of the machine refuses (a finished run in the way, a missing optional
    package, a failed remote build): a runtime failure, so the command line exits 1, as for a bad cache or disk."""

    exit_code = 1  # runtime


def environment_choice(variable: str, choices: tuple[str, ...]) -> str:
    """The value of environment variable `variable`, one of `choices` (unset: the first), or an error naming both:
    the defaults of the execution switches ($LATHADAPTER_STACK, $LATHADAPTER_GRAPHS)."""
    choice = os.environ.get(variable, choices[0])
    if choice not in choices:
        raise ValueError(f"environment variable {variable}={choice!r} is not valid; choose one of: "
                         f"{', '.join(choices)}")
    return choice


def respelled(where: str, value: str, renamed: dict[str, str], say: Callable[[str], None]) -> str:
    """`value` in its current spelling: one renamed since (`renamed`: old → new, still accepted where a user types it)
    becomes the new name, and `say` gets one line naming it, `where` being how the user gave it (`--tune-set`)."""
    if value not in renamed:
        return value
    say(f"note: {where} {value} is now called {renamed[value]}; the old name still works")
    return renamed[value]


_NEW = object()  # `option(before=...)` not given: the option is part of every run key


def option(default: Any, doc: str, *, least: float | None = None, above: float | None = None,
           most: float | None = None, choices: tuple[str, ...] | None = None, before: Any = _NEW) -> Any:
    """A field of an options dataclass with its one-line meaning (`lathadapter list options`) and its valid values:
    `least` ≤ value, `above` < value, value ≤ `most`, or one of `choices`. Numbers must also be finite. `before`:
    for an option added to a method that already has finished runs, the value that trains exactly as the code did
    before the option existed; a run with that value keeps the key it had then (`unkeyed`), so grids resume."""
    check = {"least": least, "above": above, "most": most, "choices": choices}
    metadata = {"doc": doc, **{k: v for k, v in check.items() if v is not None}}
    if before is not _NEW:
        metadata["before"] = before
    return dataclasses.field(default=default, metadata=metadata)


def unkeyed(options: Any) -> set[str]:
    """The fields of `options` at the value they declare as `before` (`option`): left out of run keys and tuning
    group ids, which then stay those of runs trained before the option existed."""
    return {f.name for f in dataclasses.fields(options)
            if "before" in f.metadata and getattr(options, f.name) == f.metadata["before"]}


def before_values(options_class: type) -> dict[str, Any]:
    """The options of `options_class` that declare a `before` value (`option`), with it: how a run saved before such
    an option existed trained."""
    return {f.name: f.metadata["before"] for f in dataclasses.fields(options_class) if "before" in f.metadata}


def valid_values(meta: typing.Mapping[str, Any]) -> str:
    """The valid values a field's metadata allows, in words ('> 0', 'in [0, 1]', 'one of: cone, triplet')."""
    if "choices" in meta:
        return "one of: " + ", ".join(meta["choices"])
    low = f"[{meta['least']}" if "least" in meta else f"({meta['above']}" if "above" in meta else None
    if low is not None and "most" in meta:
        return f"in {low}, {meta['most']}]"
    if low is not None:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    return f"<= {meta['most']}" if "most" in meta else "any finite number"


def check_fields(options: Any, method: str) -> None:
    """Every field of `options` against the range its metadata declares; the error names the option, the value and
    what would be valid."""
    for f in dataclasses.fields(options):
        check_field(f, getattr(options, f.name), method)


def check_field(f: dataclasses.Field, value: Any, method: str) -> None:
    """One value of field `f` against the range its metadata declares (`check_fields`)."""
    meta = f.metadata
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return
    ok = value in meta["choices"] if "choices" in meta else isinstance(value, str) or (
        math.isfinite(value) and ("least" not in meta or value >= meta["least"])
        and ("above" not in meta or value > meta["above"]) and ("most" not in meta or value <= meta["most"]))
    if not ok:
        rule = valid_values(meta)
        if not isinstance(value, str) and not math.isfinite(value) and "finite" not in rule:
            rule = f"finite and {rule}"  # `lr=inf` is > 0: say what it breaks, not a range it satisfies
        raise OptionError(f"option {f.name}={value!r} of {method} is not valid: it must be {rule}"
                          + (f" — {meta['doc']}" if "doc" in meta else ""))


@dataclass(frozen=True)
class TrainOptions:
    """Optimiser and schedule shared by every trained method (docs/method.md, "Training protocol")."""

    epochs: int = option(20, "training epochs (more when min_steps needs them)", least=1)
    min_steps: int = option(300, "never fewer optimiser steps than this, whatever the dataset size", least=0)
    batch_size: int = option(256, "samples per optimiser step", least=1)
    lr: float = option(1e-3, "AdamW learning rate, the peak of the cosine schedule", above=0)
    weight_decay: float = option(1e-4, "AdamW weight decay", least=0)
    eps: float = option(1e-8, "AdamW epsilon", above=0)


RECIPES = ("official", "shared")


@dataclass(frozen=True)
class RecipeOptions:
    """The `recipe` option of the baselines (docs/baselines.md), declared once so that every baseline shares it."""

    recipe: str = option("official", "official: the values and optimiser of the method's own code (docs/baselines.md); "
                         "shared: the one recipe every trained baseline used before (AdamW, cosine)", choices=RECIPES)


# The val images a choice made on val after training reads (`SearchSetOption`): the whole val split, the few-shot
# val subset (CoOp: min(K, 4) a class), or LP++'s own K-shot val set (`sampling.val_shots_indices`).
SEARCH_SETS = ("split", "subset", "shots")
SEARCH_SET_DOC = ("the val images chosen on after training: split, the whole val split; shots, K images a class drawn "
                  "as LP++'s official code draws its val set (both need a cache built with --val split; else the "
                  "few-shot val subset, with a warning where it differs); subset, the few-shot val subset, min(K, 4) "
                  "a class")


# The text of a zero-shot term `100 x Tᵀ` (Tip-Adapter(-F), GDA, LP++, APE(-T): `base_text`,
# `methods.base.zero_shot_base_text`)
ZERO_SHOT_BASE_TEXTS = ("official", "unit")
BASE_TEXT_DOC = ("the zero-shot term's class text: official (on ImageNet the normalised mean of the 7 simple "
                 "templates the official code uses, whatever --text; elsewhere --text's), unit (--text's everywhere)")


@dataclass(frozen=True)
class SearchSetOption:
    """The `search_set` option of the baselines that choose values or an epoch on val after training (Tip-Adapter,
    Tip-Adapter-F, GDA, LP++), declared once so that every one of them shares it (`--set search_set=subset` means the
    same for each; a method may give it another default, as LP++ does)."""

    search_set: str = option(None, SEARCH_SET_DOC + " (default: the recipe's; official split, shared subset)",
                             choices=SEARCH_SETS)


@dataclass(frozen=True)
class SearchSetOptions(SearchSetOption, RecipeOptions):
    """`recipe` and `search_set` of the baselines that search values on val after training (Tip-Adapter,
    Tip-Adapter-F, GDA), and the text of their zero-shot term (`base_text`)."""

    base_text: str = option(None, BASE_TEXT_DOC + " (default: the recipe's; official official, shared unit)",
                            choices=ZERO_SHOT_BASE_TEXTS)


@dataclass(frozen=True)
class RecipeTrainOptions(TrainOptions, RecipeOptions):
    """`TrainOptions` of a baseline with a recipe: each left at None takes the recipe's value (official: the method's
    own, per dataset and shots where its code varies it; shared: `TrainOptions`' defaults); a value set wins.

    Options whose default None means "the recipe's value" keep their plain type as annotation (what `--set` parses
    and `lathadapter list options` prints); the value actually used is recorded in the run's `chosen`."""

    epochs: int = option(None, "training epochs (default: the recipe's, docs/baselines.md)", least=1)
    min_steps: int = option(None, "never fewer optimiser steps than this (default: the recipe's)", least=0)
    batch_size: int = option(None, "samples per optimiser step (default: the recipe's)", least=1)
    lr: float = option(None, "peak learning rate (default: the recipe's)", above=0)
    weight_decay: float = option(None, "weight decay (default: the recipe's)", least=0)
    eps: float = option(None, "Adam/AdamW epsilon, not read by SGD (default: the recipe's)", above=0)


def parse_value(name: str, kind: Any, value: Any) -> Any:
    """Convert `value` (a string from the command line or a grid file, or a Python value) to the option's type."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if not isinstance(value, str):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
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


# an options class's field types, by name (read-only; `typing.get_type_hints` takes 0.3–0.5 ms a call, twice a run
# when a grid expands its runs)
field_types = functools.cache(typing.get_type_hints)


def build_options(cls: type, overrides: dict[str, Any], method: str) -> Any:
    """An instance of the options dataclass `cls` with `overrides` applied and validated (each field's range, then the
    class's own `validate()` for rules across fields, if it has one); unknown names list the valid ones."""
    hints = field_types(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise OptionError(
            f"unknown option(s) {', '.join(unknown)} for method {method!r}; "
            + (f"valid options: {', '.join(valid)}" if valid else f"{method} has no options (it trains nothing)")
        )
    options = cls(**{name: parse_value(name, hints[name], value) for name, value in overrides.items()})
    check_fields(options, method)
    validate = getattr(options, "validate", None)
    if validate is not None:
        validate()
    return options


def changed_fields(options: Any) -> dict[str, Any]:
    """The fields of an options dataclass that differ from their defaults (what a user set), by name."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
            if getattr(options, f.name) != f.default}


def declaring_class(cls: type, name: str) -> type:
    """The class in `cls`'s hierarchy that declares field `name`: two methods share an option's meaning only when
    they inherit it from the same class (every trained method's `lr` is `TrainOptions.lr`)."""
    for klass in reversed(cls.__mro__):
        if name in getattr(klass, "__annotations__", {}):
            return klass
    raise OptionError(f"{cls.__name__} has no option {name!r}")


def split_list(text: str) -> list[str]:
    """`a,b , c` → ['a', 'b', 'c']."""
    return [item.strip() for item in str(text).split(",") if item.strip()]


def parse_assignments(assignments: list[str], flag: str = "--set", once: bool = False) -> dict[str, list[str]]:
    """`--set [METHOD.]NAME=V1[,V2...]` strings → {'[METHOD.]NAME': ['V1', 'V2', ...]} (values stay strings: each
    method converts them to its own option types); each name and each of its values given once. `flag` names the
    option in messages (`--tune`); `once`: a command that takes one value per option (`fit`), whose advice for a name
    given twice is to give it once."""
    parsed: dict[str, list[str]] = {}
    for item in assignments:
        name, sep, values = item.partition("=")
        if not sep or not name.strip() or not split_list(values):
            raise OptionError(f"{flag} expects name=value[,value...], got {item!r}")
        if not all(value.strip() for value in values.split(",")):  # `lr=0.1,,0.2`, `lr=0.1,`: a mistake, as in --shots
            raise OptionError(f"{flag} {item}: an empty item; give comma-separated values, e.g. "
                              f"{name.strip()}=V1,V2")
        if name.strip() in parsed:  # the last one silently won
            advice = "give it once" if once else f"give every value in one {flag} {name.strip()}=V1,V2,..."
            raise OptionError(f"{flag} {item}: {name.strip()} is given twice; {advice}")
        given = split_list(values)
        twice = next((value for index, value in enumerate(given) if value in given[:index]), None)
        if twice is not None:  # one run listed twice
            raise OptionError(f"{flag} {item}: {twice} is given twice; give each value once")
        parsed[name.strip()] = given
    return parsed
