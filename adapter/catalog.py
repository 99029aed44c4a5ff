"""The methods lathadapter knows: importing this module registers the built-ins (in this order), and its functions
build any of them by name. Nothing inside `adapter/methods/` imports it."""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

# This order is the order of tables and of `lathadapter list methods`: zero-shot first, LatHAdapter last (`BUILT_IN`).
# isort: off
from lathadapter.adapter.methods import (  # noqa: F401  (importing registers them)
    zeroshot,
    linear_probe,
    clip_adapter,
    tip_adapter,
    taskres,
    gda,
    lp_plus_plus,
    clap,
    ape,
    cross_modal,
    lathadapter,
)
# isort: on
from lathadapter.adapter.methods.base import Method
from lathadapter.adapter.options import (
    OptionError,
    build_options,
    check_field,
    declaring_class,
    field_types,
    parse_value,
)
from lathadapter.adapter.recipes import RecipeFacts
from lathadapter.adapter.registry import registered
from lathadapter.cache.store import FewShotData

# The method modules the import above binds, in its order: the list stays that one line a method.
BUILT_IN = tuple(value for value in dict(globals()).values()
                 if isinstance(value, ModuleType) and value.__name__.startswith("lathadapter.adapter.methods."))


def _rank(cls: type) -> int:
    """The place of the catalog's module that defines `cls` in `BUILT_IN`; after them all for a method from outside."""
    module = cls.__module__
    return next((i for i, m in enumerate(BUILT_IN) if module == m.__name__ or module.startswith(m.__name__ + ".")),
                len(BUILT_IN))


def method_names() -> list[str]:
    """The registered method names: the catalog's in its order, then any registered from outside the package, in the
    order they registered (a module that registers one may import a built-in first, registering it before the
    catalog does: the order stays the catalog's)."""
    methods = registered()
    return sorted(methods, key=lambda name: _rank(methods[name]))  # stable: a module's own methods keep their order


def method_class(name: str) -> type[Method]:
    methods = registered()
    if not isinstance(name, str) or name not in methods:
        raise OptionError(f"unknown method {name!r}; valid methods: {', '.join(method_names())}")
    return methods[name]


def make_options(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The options dataclass of method `name` with `overrides` (strings or Python values) parsed and validated."""
    return build_options(method_class(name).Options, dict(overrides or {}), name)


def check_value(name: str, option: str, value: Any) -> None:
    """One value of option `option` of method `name`, alone: its type and range, as `make_options` checks them (not
    the rules across options, which need the whole candidate)."""
    cls = method_class(name).Options
    field = next(f for f in dataclasses.fields(cls) if f.name == option)
    check_field(field, parse_value(option, field_types(cls)[option], value), name)


def option_names(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(method_class(name).Options)]


def option_owner(name: str, option: str) -> type:
    """The options class that declares `option` for method `name` (see `options.declaring_class`)."""
    return declaring_class(method_class(name).Options, option)


def ambiguous_options() -> set[str]:
    """Option names that several methods declare separately, with different meanings (Tip-Adapter's β and
    LatHAdapter's β): unscoped, such a name cannot say which it means."""
    owners: dict[str, set[type]] = {}
    for method in method_names():
        for option in option_names(method):
            owners.setdefault(option, set()).add(option_owner(method, option))
    return {option for option, classes in owners.items() if len(classes) > 1}


def _checked(name: str, options: Any) -> type[Method]:
    cls = method_class(name)
    if type(options) is not cls.Options:
        raise OptionError(f"method {name!r} takes {cls.Options.__name__}, not {type(options).__name__}")
    return cls


def resolve_options(name: str, options: Any, facts: RecipeFacts) -> Any:
    """Method `name`'s typed options with every option left to its training recipe (None) set to the value the
    recipe gives for `facts` (`RecipeFacts.of` the run's training view): what the run trains with. Builds nothing."""
    return _checked(name, options).resolve(options, facts)


def build_method(name: str, options: Any, data: FewShotData) -> Method:
    """Method `name` for the classes and few-shot set of `data`, from its typed options."""
    return _checked(name, options)(options, data)


def create_method(name: str, data: FewShotData, **overrides: Any) -> Method:
    """Method `name` for `data`, with option overrides given by name (parsed and validated here)."""
    return build_method(name, make_options(name, overrides), data)
