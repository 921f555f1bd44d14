"""Lazy re-exports for the package ``__init__`` files, so that importing a light module (and the
command line's ``--help``) does not pull torch and transformers through an eager ``__init__``.
``from mechunlearn.x import Y`` still works: it imports Y's module on first use."""

from __future__ import annotations

import sys
import types
from importlib import import_module


class _LazyPackage(types.ModuleType):
    """A package whose re-exported names are imported on first access. As with an eager
    ``from .m import m``, a re-exported name that is also a sub-module's name (``lm_loss``,
    ``hooks``) stays the re-exported object once that sub-module is imported."""

    _lazy_exports: dict[str, str]

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        module = self._lazy_exports.get(name)
        if module is not None:
            value = getattr(import_module(module), name)
        else:
            try:
                value = import_module(f"{self.__name__}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{self.__name__}.{name}":
                    raise
                raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None
        setattr(self, name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        # the import system sets each imported sub-module on its package: keep the re-export
        if (isinstance(value, types.ModuleType) and name in self._lazy_exports
                and value.__name__ == f"{self.__name__}.{name}" and hasattr(value, name)):
            value = getattr(value, name)
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._lazy_exports})


def lazy_package(name: str, exports: dict[str, str]) -> None:
    """Make the package ``name`` (call with ``__name__`` in its ``__init__``) re-export each name
    of ``exports`` from the module it maps to, imported on first access; any other missing
    attribute is tried as a sub-module."""
    module = sys.modules[name]
    object.__setattr__(module, "_lazy_exports", dict(exports))
    module.__class__ = _LazyPackage


def exports_of(*groups: tuple[str, tuple[str, ...]]) -> dict[str, str]:
    """``{name: module}`` from ``(module, names)`` pairs."""
    return {n: module for module, names in groups for n in names}
