"""The scheme registry: a decorator registers, :func:`create` builds by name."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from ..keys import Key
from .base import Scheme
from .errors import UnknownSchemeError

__all__ = ["register_scheme", "register_preset", "create", "list_schemes", "scheme_class", "SchemeEntry"]


@dataclass(frozen=True)
class SchemeEntry:
    """A registered name: the class it builds and the preset options it passes."""

    name: str
    cls: type[Scheme]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    listed: bool = True


_REGISTRY: dict[str, SchemeEntry] = {}


def _add(entry: SchemeEntry) -> None:
    if entry.name in _REGISTRY:
        raise ValueError(f"a scheme named {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry


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
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownSchemeError(
            f"no scheme named {name!r}{hint} Known schemes: {', '.join(list_schemes(include_templates=True))}"
        ) from None


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
    e = entry(name)
    options = {**e.defaults, **params}
    scheme = e.cls(key, **options)
    scheme.registered_name = name
    return scheme


def list_schemes(*, include_templates: bool = False) -> list[str]:
    """The registered scheme names, sorted.

    Every listed name builds with ``create(name, key)`` alone; templates
    (registered with ``listed=False``, such as ``compose``) need options and
    appear only with ``include_templates=True``.
    """
    return sorted(n for n, e in _REGISTRY.items() if include_templates or e.listed)


def describe(name: str) -> str:
    """One line saying what the scheme named ``name`` does."""
    return entry(name).description
