"""Named parts of one kind (objectives, attacks, localization methods), each registered once and
kept in the order registered; ``bind`` names a part's function without importing it (torch) yet."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Generic, TypeVar

from mechunlearn.errors import MechunlearnError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, item: T) -> T:
        if item.name in self:
            raise MechunlearnError(f"{self.kind} {item.name!r} is registered twice")
        self[item.name] = item
        return item

    def find(self, name: str) -> T:
        if name not in self:
            raise MechunlearnError(f"unknown {self.kind} {name!r}: use one of {', '.join(self)}")
        return self[name]


def bind(target: str) -> Callable:
    """The function ``"module:function"``, imported on its first call."""
    module, name = target.split(":")

    def call(*args, **kwargs):
        return getattr(import_module(module), name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = name
    return call
