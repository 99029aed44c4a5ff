"""One registry of methods: `create_method(name, data, **options)` builds any of them by name."""

from __future__ import annotations

import dataclasses
from typing import Any

from lathadapter.adapter.options import OptionError, build_options
from lathadapter.cache.store import FewShotData

_METHODS: dict[str, tuple[type, type]] = {}


def register(name: str, options_cls: type):
    """Class decorator: register a `Method` subclass under `name` with its options dataclass."""

    def wrap(cls: type) -> type:
        cls.name = name
        cls.Options = options_cls
        _METHODS[name] = (cls, options_cls)
        return cls

    return wrap


def _load() -> None:
    import lathadapter.adapter.methods  # noqa: F401  (importing registers every method)


def method_names() -> list[str]:
    """The registered method names, in registration order."""
    _load()
    return list(_METHODS)


def method_class(name: str) -> type:
    _load()
    if name not in _METHODS:
        raise OptionError(f"unknown method {name!r}; valid methods: {', '.join(_METHODS)}")
    return _METHODS[name][0]


def make_options(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The options dataclass of method `name` with `overrides` applied (validated)."""
    cls = method_class(name)
    return build_options(cls.Options, dict(overrides or {}), name)


def option_names(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(method_class(name).Options)]


def create_method(name: str, data: FewShotData, **options: Any):
    """Build method `name` for the classes and few-shot set of `data`, with its options."""
    return method_class(name)(make_options(name, options), data)
