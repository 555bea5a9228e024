"""``Registry``: names for pluggable parts (tasks, rewards, controllers, token-pruning rules).

The shape of Opacus' accountant registry: a user extends dp-gym by registering a name (or by
naming an object by import path, ``"package.module:attribute"``), never by editing a dict inside
the package. Every error names the kind, the name and the allowed values.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object for one kind of pluggable part.

    Args:
        kind: what is registered, for messages (``"task"``, ``"reward"``, ...).
        check: optional ``check(name, obj)`` that raises ``ValueError`` for an object of the wrong
            kind; run on registration and on objects resolved by import path.
        callable_only: refuse objects that are not callable (functions, factories).
    """

    def __init__(self, kind: str, check: Callable[[str, T], None] | None = None, callable_only: bool = False):
        self.kind = kind
        self._user_check = check
        self._callable_only = callable_only
        self._entries: dict[str, T] = {}

    def _check(self, name: str, obj: T) -> None:
        if self._callable_only and not callable(obj):
            raise ValueError(f"{self.kind} {name!r} must be callable, got {obj!r}")
        if self._user_check is not None:
            self._user_check(name, obj)

    def register(self, name: str, obj: T, force: bool = False) -> T:
        """Register ``obj`` under ``name``; a different object under a taken name raises unless ``force``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if ":" in name:
            raise ValueError(f"a {self.kind} name must not contain ':' (that form is an import path), got {name!r}")
        self._check(name, obj)
        if not force and name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"a {self.kind} named {name!r} is already registered ({self._describe(self._entries[name])})")
        self._entries[name] = obj
        return obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """The object registered as ``name``, or imported from ``"module:attribute"``.

        Raises:
            ValueError: naming the registered values when the name is unknown or does not import.
        """
        if name in self._entries:
            return self._entries[name]
        if isinstance(name, str) and ":" in name:
            module_name, _, attribute = name.partition(":")
            try:
                obj = getattr(importlib.import_module(module_name), attribute)
            except (ImportError, AttributeError) as error:
                raise ValueError(f"{self.kind} {name!r} does not import: {error}") from None
            self._check(name, obj)
            return obj
        raise ValueError(f"unknown {self.kind} {name!r}; registered: {self.names()} or 'module:attribute'")

    @staticmethod
    def _describe(obj: object) -> str:
        return getattr(obj, "__qualname__", type(obj).__qualname__)
