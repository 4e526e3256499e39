"""The one error base of keyveil.

Every error keyveil raises on purpose derives from :class:`KeyveilError`, itself a
``ValueError`` (bad input is a value problem), so a caller can catch everything the
library explains with one ``except KeyveilError`` and the command line turns each one
into a one-line message and exit status 2.

Examples:
    >>> from keyveil.errors import KeyveilError
    >>> from keyveil.schemes import SchemeError
    >>> issubclass(SchemeError, KeyveilError) and issubclass(KeyveilError, ValueError)
    True
"""

from __future__ import annotations

__all__ = ["KeyveilError"]


class KeyveilError(ValueError):
    """Base class of every error keyveil raises with an explanation."""
