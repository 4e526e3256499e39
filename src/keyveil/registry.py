"""One registry pattern for schemes, datasets, attacks and models (timm's ``_registry.py`` shape).

A :class:`Registry` maps names to entries (a class, a builder function, a
preset record): a decorator registers, duplicates raise
:class:`DuplicateNameError`, :meth:`Registry.create` builds by name,
:meth:`Registry.names` lists (optionally through shell-style ``filter``
patterns), and an unknown name raises the registry's error with a "did you
mean" hint and the known names. keyveil keeps four of them, each behind the
public functions of its package:

==========  ==========================  ===================================  ==========================
registry    entry-point group           register / list / create             module
==========  ==========================  ===================================  ==========================
schemes     ``keyveil.schemes``         ``register_scheme`` / ``list_schemes``  :mod:`keyveil.schemes`
                                        / ``create`` (``create_scheme``)
datasets    ``keyveil.datasets``        ``register_dataset`` / ``list_datasets``  :mod:`keyveil.data`
                                        / ``create_dataset``
attacks     ``keyveil.attacks``         ``register_attack`` / ``list_attacks``  :mod:`keyveil.attacks`
                                        / ``create_attack``
models      ``keyveil.models``          ``register_model`` / ``list_models``  :mod:`keyveil.engine`
                                        / ``create_model`` (``build_model``)
==========  ==========================  ===================================  ==========================

**Third-party plug-ins.** A package adds names through an entry point in one
of these groups, e.g. in its ``pyproject.toml``::

    [project.entry-points."keyveil.schemes"]
    my-scheme = "my_package.schemes:MyScheme"

The entry point is loaded lazily (``importlib.metadata``), the first time a
registry lists its names or meets a name it does not know; the loaded object
is registered under the entry point's name (a module whose import registers
its names with the decorators is fine too). A plug-in that fails to load is
reported with a :class:`PluginWarning` and skipped, so one broken package does
not break the others.

Examples:
    >>> from keyveil.registry import Registry
    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(side: int = 2) -> int:
    ...     return side * side
    >>> shapes.create("square", side=3)
    9
    >>> shapes.names(filter="sq*")
    ['square']
    >>> shapes.create("sqare")
    Traceback (most recent call last):
    ...
    keyveil.registry.UnknownNameError: no shape named 'sqare'; did you mean 'square'? Known shapes: square
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata
import types
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from .errors import KeyveilError

__all__ = ["Registry", "RegistryError", "DuplicateNameError", "UnknownNameError", "PluginWarning"]

T = TypeVar("T")


class RegistryError(KeyveilError):
    """Base class of the registries' errors."""


class DuplicateNameError(RegistryError):
    """A name is registered twice in one registry."""


class UnknownNameError(RegistryError, KeyError):
    """No entry is registered under that name (also a ``KeyError``, as a failed lookup)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginWarning(UserWarning):
    """A third-party entry point could not be loaded or registered; it was skipped."""


class Registry(Generic[T]):
    """Names → entries, with duplicate checks, "did you mean" and lazy third-party plug-ins.

    Args:
        kind: what one entry is, singular (``"scheme"``), for messages.
        group: the ``importlib.metadata`` entry-point group plug-ins register
            in (``"keyveil.schemes"``); ``None``: no plug-ins.
        error: the error raised for an unknown name (its message is built
            here); a subclass of :class:`KeyveilError`.
        adopt: turns what a plug-in's entry point loads into an entry, given
            the entry point's name (default: the object itself). Return
            ``None`` when the object needs no registering (a module whose
            import registered its names).
    """

    def __init__(self, kind: str, *, group: str | None = None, error: type[KeyveilError] = UnknownNameError,
                 adopt: Callable[[str, Any], T | None] | None = None) -> None:
        self.kind, self.group, self.error = kind, group, error
        self._adopt = adopt
        self._entries: dict[str, T] = {}
        self._hidden: set[str] = set()
        self._seen_plugins: set[tuple[str, str]] = set()
        self._scanned = False

    # -- registering ------------------------------------------------------------------------------------

    def add(self, name: str, entry: T, *, listed: bool = True) -> T:
        """Register ``entry`` under ``name``; ``listed=False`` keeps it out of :meth:`names`.

        Raises:
            DuplicateNameError: ``name`` is taken.
        """
        if not name:
            raise RegistryError(f"a {self.kind} needs a non-empty name to register under")
        if name in self._entries:
            raise DuplicateNameError(f"a {self.kind} named {name!r} is already registered")
        self._entries[name] = entry
        if not listed:
            self._hidden.add(name)
        return entry

    def register(self, name: str, *, listed: bool = True) -> Callable[[T], T]:
        """Decorator form of :meth:`add`: ``@registry.register("name")``."""

        def deco(entry: T) -> T:
            return self.add(name, entry, listed=listed)

        return deco

    def remove(self, name: str) -> T:
        """Unregister ``name`` (for tests and plug-ins that replace an entry); returns its entry."""
        self._hidden.discard(name)
        try:
            return self._entries.pop(name)
        except KeyError:
            raise self.unknown(name) from None

    # -- looking up ------------------------------------------------------------------------------------

    def get(self, name: str) -> T:
        """The entry registered as ``name`` (plug-ins are scanned again when it is unknown).

        Raises:
            the registry's ``error``: ``name`` is unknown (with a "did you mean").
        """
        if name not in self._entries:
            self.load_plugins(rescan=True)
        try:
            return self._entries[name]
        except KeyError:
            raise self.unknown(name) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the entry registered as ``name`` (a class or a builder) with the arguments."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self, filter: str | Iterable[str] | None = None, *, include_hidden: bool = False) -> list[str]:
        """The registered names, sorted, those matching any shell-style ``filter`` pattern(s) if given."""
        self.load_plugins()
        names = [n for n in self._entries if include_hidden or n not in self._hidden]
        if filter is not None:
            patterns = [filter] if isinstance(filter, str) else list(filter)
            names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        return sorted(names)

    def unknown(self, name: str, *, known: Iterable[str] | None = None, extra: str = "") -> KeyveilError:
        """The error for an unknown ``name``: a "did you mean" hint and the known names."""
        choices = sorted(self._entries) if known is None else list(known)
        close = difflib.get_close_matches(name, choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        plural = f"{self.kind}es" if self.kind.endswith("s") else f"{self.kind}s"
        listed = ", ".join(self.names(include_hidden=True) if known is None else choices)
        return self.error(f"no {self.kind} named {name!r}{hint} Known {plural}: {listed}{extra}")

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, {len(self._entries)} entries)"

    # -- plug-ins --------------------------------------------------------------------------------------

    def load_plugins(self, *, rescan: bool = False) -> None:
        """Load the entry points of :attr:`group` not loaded yet (once, or again with ``rescan``)."""
        if self.group is None or (self._scanned and not rescan):
            return
        self._scanned = True
        try:
            found = importlib.metadata.entry_points(group=self.group)
        except Exception as exc:  # noqa: BLE001 - broken metadata must not break the built-in names
            warnings.warn(f"could not read the {self.group!r} entry points: {exc}", PluginWarning, stacklevel=3)
            return
        for ep in found:
            ident = (ep.name, ep.value)
            if ident in self._seen_plugins:
                continue
            self._seen_plugins.add(ident)
            try:
                obj = ep.load()
                if ep.name in self._entries:  # its import registered it
                    continue
                if isinstance(obj, types.ModuleType):  # a module whose import registered what it holds
                    continue
                entry = obj if self._adopt is None else self._adopt(ep.name, obj)
                if entry is not None:
                    self.add(ep.name, entry)
            except Exception as exc:  # noqa: BLE001 - a broken plug-in is skipped, not fatal
                warnings.warn(f"skipped the {self.kind} plug-in {ep.name!r} ({ep.value}) of entry-point group "
                              f"{self.group!r}: {type(exc).__name__}: {exc}", PluginWarning, stacklevel=3)


def adopt_subclass(base: type, group: str, *, same_name: bool = False) -> Callable[[str, Any], Any]:
    """An ``adopt`` for registries of classes: the entry point must name a subclass of ``base``
    (whose ``name`` equals the entry point's with ``same_name``)."""

    def adopt(name: str, obj: Any) -> Any:
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise TypeError(f"a {group} entry point must name a {base.__name__} subclass, got {obj!r}")
        if same_name and getattr(obj, "name", name) != name:
            raise TypeError(f"entry point {name!r} names {obj.__name__}, whose name is {obj.name!r}: make them equal")
        return obj

    return adopt
