"""Which path the visualmixer kernels take: the compiled CPU loops or torch ops.

CPU tensors take the compiled loops of :mod:`keyveil.schemes.visualmixer._cpu`
(numba is imported, and the kernels loaded or compiled, on first use); tensors
on other devices take torch ops. Both choose the same windows and make the same
swaps (see :mod:`~keyveil.schemes.visualmixer.windows` and
:mod:`~keyveil.schemes.visualmixer.shuffle`). The switch lives here alone, so
that a test can turn the compiled path off for every module at once.
"""

from __future__ import annotations

from typing import Any

import torch

#: CPU tensors take the compiled kernels (tests turn this off to run the torch ops used on GPUs).
_COMPILED_ON_CPU = True

_KERNELS: Any = None


def _compiled_path(t: torch.Tensor) -> bool:
    return _COMPILED_ON_CPU and t.device.type == "cpu"


def _cpu_kernels() -> Any:
    """The compiled kernels (numba is imported, and the kernels loaded, on first use)."""
    global _KERNELS
    if _KERNELS is None:
        from . import _cpu

        _KERNELS = _cpu
    return _KERNELS
