"""The method registry, a leaf: methods register into it with `@register(name, OptionsClass)`; it imports none of
them. `adapter.catalog` loads the built-in methods and is what the rest of the package asks."""

from __future__ import annotations

from collections.abc import Callable

_METHODS: dict[str, type] = {}


def register(name: str, options_cls: type) -> Callable[[type], type]:
    """Class decorator: register a `Method` subclass under `name` with its options dataclass."""

    def wrap(cls: type) -> type:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is registered twice")
        cls.name = name
        cls.Options = options_cls
        _METHODS[name] = cls
        return cls

    return wrap


def registered() -> dict[str, type]:
    """The registered method classes by name, in registration order."""
    return dict(_METHODS)
