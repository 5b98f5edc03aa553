"""Registries by name, for selectors, oracles, teachers, schedules and agents.

A new component is one class plus ``REGISTRY.register("name")``; an unknown name is an error that
lists the known ones and suggests the nearest.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from rlhf_control.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError):
    """A name that is not in a registry or catalogue."""


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """One line: the bad name, the nearest known names and all allowed ones."""
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return f"unknown {kind} {name!r}{hint}; known: {', '.join(sorted(known))}"


class Registry(Generic[T]):
    """Maps names to factories of ``T``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = factory
            return factory

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, self.names())) from None

    def make(self, name: str, *args, **kwargs) -> T:
        return self.get(name)(*args, **kwargs)
