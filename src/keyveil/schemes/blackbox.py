"""Any user's scheme as a keyveil :class:`Scheme`: a black box that ``keyveil audit`` can measure.

A researcher's obfuscation needs no registration to be audited. Point keyveil at a
*factory* — ``"my_pkg.module:make_scheme"`` or ``"path/to/file.py:make_scheme"`` — that
returns either a :class:`~keyveil.schemes.Scheme` or any object with

- ``encrypt(x)``: a ``(B,C,H,W)`` uint8 tensor in, the same shape and dtype out;
- optionally ``decrypt(y)`` (then the scheme is invertible);
- optionally ``keyed = True`` (it depends on a secret the attacker lacks) and
  ``per_image = True`` (fresh randomness for every image).

The factory may take a ``key`` argument (a :class:`~keyveil.Key`; keyed schemes derive
their secret from it, so the audit can act as an encryption oracle where a threat model
allows one) and an ``image_size`` keyword (``(H, W)`` of the images it will get).

Examples:
    >>> import torch
    >>> class Negate:
    ...     def encrypt(self, x):
    ...         return 255 - x
    ...     def decrypt(self, y):
    ...         return 255 - y
    >>> s = BlackBoxScheme(Negate(), name="negate")
    >>> x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    >>> bool(torch.equal(s.decrypt(s.encrypt(x)), x)), s.invertible, s.key is None
    (True, True, True)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

import torch

from ..keys import Key
from .base import Scheme
from .errors import SchemeError

__all__ = ["BlackBoxScheme", "load_factory", "make_scheme"]


class BlackBoxScheme(Scheme):
    """Wrap an object with ``encrypt`` (and maybe ``decrypt``) as a scheme (see the module docstring)."""

    name = "blackbox"
    description = "a user's scheme, measured as a black box"
    needs_key = False

    def __init__(self, inner: Any, *, name: str = "blackbox", key: Key | None = None) -> None:
        if not callable(getattr(inner, "encrypt", None)):
            raise SchemeError(f"{name}: the object has no encrypt(x) method; return a keyveil Scheme or an object "
                              "with encrypt(x) (and optionally decrypt(y))")
        super().__init__(key if getattr(inner, "keyed", False) else None)
        self.inner, self.registered_name = inner, name
        self._invertible = callable(getattr(inner, "decrypt", None))
        self._per_image = bool(getattr(inner, "per_image", False))

    @property
    def invertible(self) -> bool:  # type: ignore[override]
        return self._invertible

    @property
    def per_image(self) -> bool:  # type: ignore[override]
        return self._per_image

    def params_dict(self) -> dict[str, Any]:
        return {"object": type(self.inner).__qualname__}

    def key_space_bits(self, shape: Any) -> float:
        return float("nan")  # unknown for a black box

    def not_invertible_reason(self) -> str:
        return f"{self.registered_name} has no decrypt method"

    def _call(self, fn: Any, x: torch.Tensor) -> torch.Tensor:
        u8 = x if x.dtype == torch.uint8 else (x.clamp(0, 1) * 255).round().to(torch.uint8)
        y = torch.as_tensor(fn(u8.clone()))
        if y.shape != x.shape or y.dtype != torch.uint8:
            raise SchemeError(f"{self.registered_name}: encrypt/decrypt must return a uint8 tensor of shape "
                              f"{tuple(x.shape)}, got {y.dtype} {tuple(y.shape)}")
        return y if x.dtype == torch.uint8 else y.to(x.dtype) / 255

    def _encrypt(self, x: torch.Tensor, **kw: Any) -> torch.Tensor:
        return self._call(self.inner.encrypt, x)

    def _decrypt(self, y: torch.Tensor, **kw: Any) -> torch.Tensor:
        return self._call(self.inner.decrypt, y)


def load_factory(spec: str) -> Any:
    """``"pkg.module:attr"`` or ``"path/to/file.py:attr"`` -> the object named ``attr``.

    Raises:
        SchemeError: the spec is malformed, the module or file cannot be imported, or has no such name.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise SchemeError(f"{spec!r} must look like 'package.module:factory' or 'path/to/file.py:factory'")
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise SchemeError(f"{path} does not exist (from {spec!r})")
            name = f"keyveil_user_{path.stem}"
            loader = importlib.util.spec_from_file_location(name, path)
            if loader is None or loader.loader is None:
                raise SchemeError(f"{path} cannot be imported as Python")
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module  # dataclasses and pickling look modules up by name
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except SchemeError:
        raise
    except Exception as exc:  # the user's code can fail in any way: say where
        raise SchemeError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SchemeError(f"{module_name!r} has no {attr!r}") from None


def make_scheme(factory: Any, key: Key | None, *, image_size: tuple[int, int] | None = None,
                name: str | None = None) -> Scheme:
    """Call a scheme factory (passing ``key`` / ``image_size`` if it takes them) and wrap what it returns."""
    if isinstance(factory, Scheme):
        return factory
    kwargs: dict[str, Any] = {}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if "key" in params:
        kwargs["key"] = key
    if "image_size" in params and image_size is not None:
        kwargs["image_size"] = tuple(image_size)
    made = factory(**kwargs) if callable(factory) else factory
    if isinstance(made, Scheme):
        return made
    label = name or getattr(factory, "__name__", type(made).__name__)
    return BlackBoxScheme(made, name=label, key=key)
