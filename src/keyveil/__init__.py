"""keyveil: privacy-preserving deep learning on scrambled images.

Examples:
    >>> import torch
    >>> import keyveil
    >>> key = keyveil.Key.generate()
    >>> scheme = keyveil.schemes.create("pixel", key)
    >>> x = torch.rand(1, 3, 32, 32)
    >>> bool(torch.equal(scheme.decrypt(scheme.encrypt(x)), x))
    True
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import schemes
from .keys import InsecureKeyWarning, Key, KeyFileError

try:
    __version__ = version("keyveil")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["Key", "KeyFileError", "InsecureKeyWarning", "schemes", "__version__"]
