"""The error hierarchy shared by schemes (all under ``ValueError``)."""

from __future__ import annotations

from ..errors import KeyveilError

__all__ = ["SchemeError", "NotInvertibleError", "GeometryError", "UnknownSchemeError", "PrivacyWarning"]


class SchemeError(KeyveilError):
    """Base class of every scheme error."""


class NotInvertibleError(SchemeError):
    """``decrypt`` was called on a scheme that cannot be undone."""


class GeometryError(SchemeError):
    """The image's size or channel count does not fit the scheme."""


class UnknownSchemeError(SchemeError, KeyError):
    """No scheme is registered under that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PrivacyWarning(UserWarning):
    """A setting leaves images more recognizable than keyveil's stated level (see SECURITY.md)."""
