"""The kinds known to this process, by name."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from longtask.exceptions import KindConfigurationError, UnknownKind
from longtask.kinds.base import Kind


class KindRegistry:
    """The kinds known to this process, by name.

    A resolver answers for every name under its prefix (``task:`` runs any
    django.tasks function), so such kinds need no registration; they are found by
    ``find`` (the engine, pages) but never started by name (``get``: the web, the CLI).
    """

    def __init__(self) -> None:
        self._kinds: dict[str, Kind] = {}
        self._resolvers: dict[str, Callable[[str], Kind | None]] = {}

    def add_resolver(self, prefix: str, resolve: Callable[[str], Kind | None]) -> None:
        """Let ``resolve(name)`` answer for the kind names starting with ``prefix``."""
        self._resolvers[prefix] = resolve

    def register[K: type[Kind]](self, kind_class: K) -> K:
        name = kind_class.name
        if not name:
            raise KindConfigurationError(f"{kind_class.__qualname__} has no name")
        existing = self._kinds.get(name)
        if existing is not None and type(existing).__qualname__ != kind_class.__qualname__:
            raise KindConfigurationError(f"kind name {name!r} is used twice")
        self._kinds[name] = kind_class()
        return kind_class

    def unregister(self, name: str) -> None:
        self._kinds.pop(name, None)

    def get(self, name: str) -> Kind:
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKind(name) from None

    def find(self, name: str) -> Kind | None:
        """Return the kind registered (or resolved) as ``name``, or None (e.g. since removed)."""
        kind = self._kinds.get(name)
        if kind is None:
            for prefix, resolve in self._resolvers.items():
                if name.startswith(prefix):
                    return resolve(name)
        return kind

    def runs_kept_only_under(self, prefix: str) -> bool:
        """Whether only kinds named under ``prefix`` may keep runs: no other resolver, and
        no kind registered with ``keeps_runs`` under another name."""
        return all(other == prefix for other in self._resolvers) and not any(
            kind.keeps_runs and not name.startswith(prefix) for name, kind in self._kinds.items()
        )

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[Kind]:
        return iter(sorted(self._kinds.values(), key=lambda kind: (kind.order, kind.name)))


registry = KindRegistry()


def register[K: type[Kind]](kind_class: K) -> K:
    """Register a kind under its ``name`` (use as a class decorator)."""
    return registry.register(kind_class)
