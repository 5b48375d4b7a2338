"""A registry of things chosen by name (loaders, segmenters, validators, ...): a dict plus a decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    """``name → item``; ``@registry.register("name")`` adds the decorated function under ``name``."""

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self:
                raise ValueError(f"{name!r} is registered twice")
            self[name] = item
            return item

        return add
