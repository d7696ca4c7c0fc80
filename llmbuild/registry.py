"""The backend registry: entry points of group ``llmbuild.backends``, loaded lazily.

Built-in backends register exactly like third-party ones, through their distribution's
entry points. Two distributions registering one name is an error, not a silent override.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from llmbuild.backend import Backend
from llmbuild.errors import UserError

GROUP = "llmbuild.backends"


class RegistryError(UserError):
    """A backend is missing, registered twice, or does not honour the contract."""


class Registry:
    """Name -> backend, resolved from entry points on first use."""

    def __init__(self, group: str = GROUP) -> None:
        self.group = group
        self._points: dict[str, EntryPoint] | None = None
        self._loaded: dict[str, Backend] = {}

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

    def register(self, backend: Backend) -> None:
        """Register a backend object directly (same rules as entry points)."""
        existing = self._loaded.get(backend.name) or (
            backend.name in self._entry_points() and self.get(backend.name)
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


def _checked(backend: object, name: str) -> Backend:
    if not isinstance(backend, Backend):
        raise RegistryError(f"backend {name!r} is not a llmbuild.backend.Backend")
    for attr in ("name", "version", "Config"):
        if not hasattr(backend, attr):
            raise RegistryError(f"backend {name!r} does not declare {attr!r}")
    if backend.name != name:
        raise RegistryError(f"entry point {name!r} loads a backend named {backend.name!r}")
    return backend


_default: Registry | None = None


def default_registry() -> Registry:
    global _default
    if _default is None:
        _default = Registry()
    return _default
