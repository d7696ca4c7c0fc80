"""The registry of backends (entry point group ``llmbuild.backends``) and node kinds
(group ``llmbuild.kinds``), loaded lazily.

Built-in backends and kinds register exactly like third-party ones, through their
distribution's entry points. Two distributions registering one name, or one table kind,
is an error, not a silent override.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from llmbuild.backend import Backend
from llmbuild.errors import UserError
from llmbuild.kinds import Kind
from llmbuild.spec.tables import TABLES, TAG, Table

GROUP = "llmbuild.backends"
KIND_GROUP = "llmbuild.kinds"


class RegistryError(UserError):
    """A backend is missing, registered twice, or does not honour the contract."""


class Registry:
    """Name -> backend, resolved from entry points on first use."""

    def __init__(self, group: str = GROUP, kind_group: str = KIND_GROUP) -> None:
        self.group, self.kind_group = group, kind_group
        self._points: dict[str, EntryPoint] | None = None
        self._loaded: dict[str, Backend] = {}
        self._kinds: dict[Table, dict[str, Kind]] | None = None
        self._extra_kinds: list[Kind] = []
        self.cache: dict[str, Any] = {}
        """What is built from the registered kinds (the spec model, its adapters)."""

    def _entry_points(self) -> dict[str, EntryPoint]:
        if self._points is None:
            points: dict[str, EntryPoint] = {}
            for ep in entry_points(group=self.group):
                other = points.get(ep.name)
                if other is not None and other.value != ep.value:
                    raise RegistryError(
                        f"backend {ep.name!r} is registered twice: {other.value} and {ep.value}"
                    )
                points[ep.name] = ep
            self._points = points
        return self._points

    def names(self) -> list[str]:
        return sorted(set(self._entry_points()) | set(self._loaded))

    def register(self, backend: Backend, replace: bool = False) -> None:
        """Register a backend object directly (same rules as entry points); ``replace``
        stands it in for a registered one of the same name (test fixtures do)."""
        existing = not replace and (
            self._loaded.get(backend.name)
            or (backend.name in self._entry_points() and self.get(backend.name))
        )
        if existing and existing is not backend:
            raise RegistryError(f"backend {backend.name!r} is already registered")
        self._loaded[backend.name] = _checked(backend, backend.name)

    def get(self, name: str) -> Backend:
        if name in self._loaded:
            return self._loaded[name]
        ep = self._entry_points().get(name)
        if ep is None:
            known = ", ".join(self.names()) or "none"
            raise RegistryError(
                f"no backend named {name!r} (registered: {known}); backends register through "
                f"the {self.group!r} entry point group of an installed distribution"
            )
        obj = ep.load()
        backend = obj() if isinstance(obj, type) else obj
        self._loaded[name] = _checked(backend, name)
        return backend

    # -- kinds ---------------------------------------------------------------------------
    def kinds(self, table: Table) -> dict[str, Kind]:
        """The registered kinds of a table, by tag, in registration order."""
        if self._kinds is None:
            found: dict[Table, dict[str, Kind]] = {t: {} for t in TABLES}
            points = sorted(entry_points(group=self.kind_group), key=lambda ep: ep.name)
            declared: list[tuple[str, Kind]] = []
            for ep in points:
                declared += [(ep.value, k) for k in _kinds_of(ep.load(), ep.value)]
            declared += [("register_kind()", k) for k in self._extra_kinds]
            origin: dict[tuple[str, str], str] = {}
            for where, kind in declared:
                ident = (kind.table, kind.tag)
                if ident in origin and found[kind.table][kind.tag] is not kind:
                    raise RegistryError(
                        f"{kind.table} kind {kind.tag!r} is registered twice: by "
                        f"{origin[ident]} and {where}"
                    )
                origin[ident] = where
                found[kind.table][kind.tag] = kind
            self._kinds = found
        return self._kinds[table]

    def kind(self, table: Table, tag: str) -> Kind:
        kinds = self.kinds(table)
        if tag not in kinds:
            raise RegistryError(
                f"no {table} kind {tag!r} is registered (kinds: {', '.join(kinds) or 'none'})"
            )
        return kinds[tag]

    def kind_of(self, table: Table, item: Any) -> Kind | None:
        """The kind a raw table item is written as; None when its tag is missing or
        unknown (field validation reports that)."""
        tag = item.get(TAG[table]) if isinstance(item, dict) else None
        return self.kinds(table).get(tag) if isinstance(tag, str) else None

    def register_kind(self, kind: Kind) -> None:
        """Register a kind directly (same rules as entry points)."""
        self._extra_kinds.append(kind)
        self._kinds = None
        self.cache.clear()


def _checked(backend: object, name: str) -> Backend:
    if not isinstance(backend, Backend):
        raise RegistryError(f"backend {name!r} is not a llmbuild.backend.Backend")
    for attr in ("name", "version", "Config"):
        if not hasattr(backend, attr):
            raise RegistryError(f"backend {name!r} does not declare {attr!r}")
    if backend.name != name:
        raise RegistryError(f"entry point {name!r} loads a backend named {backend.name!r}")
    return backend


def _kinds_of(obj: Any, where: str) -> list[Kind]:
    items = [obj] if isinstance(obj, Kind) else list(obj) if isinstance(obj, Iterable) else [obj]
    for item in items:
        if not isinstance(item, Kind):
            raise RegistryError(f"entry point {where} gives {item!r}, not a llmbuild.kinds.Kind")
    return items


_default: Registry | None = None


def default_registry() -> Registry:
    global _default
    if _default is None:
        _default = Registry()
    return _default
