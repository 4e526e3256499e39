"""Image scrambling schemes behind one contract (docs/design.md §3).

Examples:
    >>> from keyveil import Key, schemes
    >>> "pixel" in schemes.list_schemes()
    True
    >>> s = schemes.create("etc", Key.generate())
    >>> s.invertible, s.per_image
    (True, False)
    >>> both = schemes.create("visualmixer-seed+pixel", Key.generate())  # chains: compose, chain()
    >>> [type(step).__name__ for step in both.steps]
    ['VisualMixer', 'PixelShuffle']
"""

from __future__ import annotations

from .base import Scheme
from .errors import GeometryError, NotInvertibleError, PrivacyWarning, SchemeError, UnknownSchemeError
from .registry import (
    SCHEMES,
    create,
    create_scheme,
    describe,
    list_schemes,
    register_preset,
    register_scheme,
    scheme_class,
)

# Importing a scheme module registers its schemes.
from . import pixel, block, hao, per_image_block, visualmixer, compose, baselines  # noqa: E402,F401  isort: skip
from .compose import ComposedScheme, chain  # noqa: E402  isort: skip

__all__ = [
    "Scheme",
    "SchemeError",
    "NotInvertibleError",
    "GeometryError",
    "PrivacyWarning",
    "UnknownSchemeError",
    "create",
    "create_scheme",
    "SCHEMES",
    "describe",
    "list_schemes",
    "register_scheme",
    "register_preset",
    "scheme_class",
    "chain",
    "ComposedScheme",
]
