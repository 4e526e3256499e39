"""The scheme registry: a decorator registers, :func:`create` builds by name."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..keys import Key
from ..registry import Registry
from .base import Scheme
from .errors import UnknownSchemeError

__all__ = ["register_scheme", "register_preset", "create", "create_scheme", "list_schemes", "scheme_class",
           "SchemeEntry", "SCHEMES"]


@dataclass(frozen=True)
class SchemeEntry:
    """A registered name: the class it builds and the preset options it passes."""

    name: str
    cls: type[Scheme]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    listed: bool = True

    def __call__(self, key: Key | None = None, **params: Any) -> Scheme:
        """Build the scheme: the class with the preset options, overridden by ``params``."""
        scheme = self.cls(key, **{**self.defaults, **params})
        scheme.registered_name = self.name
        return scheme


def _adopt(name: str, obj: Any) -> SchemeEntry:
    """A plug-in's entry point: a :class:`Scheme` subclass (registered as the entry point's name) or a
    :class:`SchemeEntry` (a module whose import registered its schemes is handled by the registry)."""
    if isinstance(obj, SchemeEntry):
        return SchemeEntry(name, obj.cls, obj.defaults, obj.description, obj.listed)
    if isinstance(obj, type) and issubclass(obj, Scheme):
        return SchemeEntry(name, obj, {}, obj.description)
    raise TypeError(f"a keyveil.schemes entry point must name a Scheme subclass, got {obj!r}")


SCHEMES: Registry[SchemeEntry] = Registry("scheme", group="keyveil.schemes", error=UnknownSchemeError,
                                          adopt=_adopt)
"""The scheme registry (entry-point group ``keyveil.schemes``); see :mod:`keyveil.registry`."""


def _add(entry: SchemeEntry) -> None:
    SCHEMES.add(entry.name, entry, listed=entry.listed)


def register_scheme(cls: type[Scheme] | None = None, *, listed: bool = True) -> Any:
    """Class decorator: register ``cls`` under ``cls.name``.

    ``@register_scheme(listed=False)`` registers a *template*: a class that
    cannot be built without options (``compose`` needs its ``steps``).
    :func:`create` builds it by name, but :func:`list_schemes` leaves it out,
    so code that builds every listed scheme with its defaults never meets it;
    its presets (which supply the options) are listed as usual.
    """

    def add(c: type[Scheme]) -> type[Scheme]:
        if not c.name:
            raise ValueError(f"{c.__name__} has no name to register under")
        _add(SchemeEntry(c.name, c, {}, c.description, listed))
        return c

    return add if cls is None else add(cls)


def register_preset(name: str, cls: type[Scheme], description: str, **defaults: Any) -> None:
    """Register ``name`` as ``cls`` with preset options (user options override them)."""
    _add(SchemeEntry(name, cls, dict(defaults), description))


def entry(name: str) -> SchemeEntry:
    """The registry record of ``name`` (raises :class:`UnknownSchemeError` with a "did you mean")."""
    return SCHEMES.get(name)


def scheme_class(name: str) -> type[Scheme]:
    """The class a registered name builds."""
    return entry(name).cls


def create(name: str, key: Key | None = None, **params: Any) -> Scheme:
    """Build the scheme registered as ``name`` with ``key`` and options.

    Examples:
        >>> import torch
        >>> from keyveil import Key, schemes
        >>> s = schemes.create("pixel", Key.generate())
        >>> x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
        >>> bool((s.decrypt(s.encrypt(x)) == x).all())
        True
    """
    return SCHEMES.create(name, key, **params)


create_scheme = create
"""The same as :func:`create` (the ``create_*`` name the other registries use)."""


def list_schemes(filter: str | Iterable[str] | None = None, *, include_templates: bool = False) -> list[str]:
    """The registered scheme names, sorted; with ``filter``, those matching a shell-style pattern.

    Every listed name builds with ``create(name, key)`` alone; templates
    (registered with ``listed=False``, such as ``compose``) need options and
    appear only with ``include_templates=True``. Third-party schemes of the
    ``keyveil.schemes`` entry-point group are included.

    Examples:
        >>> list_schemes("pixel*")
        ['pixel', 'pixel-np']
    """
    return SCHEMES.names(filter, include_hidden=include_templates)


def describe(name: str) -> str:
    """One line saying what the scheme named ``name`` does."""
    return entry(name).description
