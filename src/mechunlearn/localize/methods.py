"""``localize``: run one localization method of ``catalog.py`` by name; ``METHODS``: every
registered method as a ``Localizer``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from mechunlearn.facts import FactSet
from mechunlearn.localize.base import FunctionLocalizer, Localization, Localizer
from mechunlearn.localize.catalog import CATALOG, spec_of
from mechunlearn.models.loading import LoadedModel


def localizer(method: str) -> Localizer:
    spec = spec_of(method)
    return FunctionLocalizer(method, spec.description, spec.run, spec.defaults)


class _Methods(Mapping[str, Localizer]):
    """The registered methods (read from ``CATALOG`` at each use), each bound to its function."""

    def __getitem__(self, method: str) -> Localizer:
        if method not in CATALOG:
            raise KeyError(method)
        return localizer(method)

    def __iter__(self) -> Iterator[str]:
        return iter(CATALOG)

    def __len__(self) -> int:
        return len(CATALOG)


METHODS: Mapping[str, Localizer] = _Methods()


def localize(lm: LoadedModel, facts: FactSet, method: str, seed: int = 0, **params) -> Localization:
    """Run one localization method on ``facts`` (the same facts for every method compared)."""
    return localizer(method).localize(lm, facts, seed=seed, **params)
