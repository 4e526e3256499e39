"""What keyed CNNs know about layers of model libraries (timm) beyond ``torch.nn``.

timm marks some of its layers as not traceable by :mod:`torch.fx` (its
"no-trace" registry: TF-style ``SAME``-padded convolutions and pools whose
padding depends on the input size, norm + activation layers, ...). The
keyed-CNN tracer keeps them as leaf modules, so that

* the layers handled here are converted like their ``torch.nn`` parents:
  ``Conv2dSame`` and ``MaxPool2dSame`` / ``AvgPool2dSame`` are convolutions
  and pools with asymmetric ("same") padding, ``BatchNormAct2d`` and friends
  are position-wise when their activation is;
* every other no-trace layer is reported by its module path (one clear
  :class:`~keyveil.models.UnsupportedModelError`) instead of a tracing
  failure.

timm is optional: nothing here imports it unless a model already did.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from torch import nn

__all__ = ["timm_layers", "leaf_module_types", "autowrap_functions", "same_padding", "start_padding",
           "is_plain_forward", "positionwise_leaf"]


_FOUND: dict[str, Any] = {}  # filled once timm is imported


def timm_layers() -> dict[str, Any]:
    """timm's layer classes keyed CNNs handle, by name (empty when timm was not imported)."""
    if "timm" not in sys.modules:
        return {}
    if _FOUND:
        return _FOUND
    import importlib

    where = {"conv2d_same": ("Conv2dSame",), "pool2d_same": ("MaxPool2dSame", "AvgPool2dSame"),
             "norm_act": ("BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d"),
             "std_conv": ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")}
    found: dict[str, Any] = {}
    for module, names in where.items():
        try:
            mod = importlib.import_module(f"timm.layers.{module}")
        except ImportError:  # pragma: no cover - another timm layout
            continue
        found.update({n: getattr(mod, n) for n in names if hasattr(mod, n)})
    _FOUND.update(found)
    return found


def leaf_module_types() -> tuple[type[nn.Module], ...]:
    """Module classes traced as leaves besides ``torch.nn``'s: timm's no-trace registry."""
    if "timm" not in sys.modules:
        return ()
    try:
        from timm.layers import get_notrace_modules
    except ImportError:  # pragma: no cover
        return ()
    return tuple(get_notrace_modules())


def autowrap_functions() -> tuple[Any, ...]:
    """Functions recorded as single graph nodes (timm's no-trace functions)."""
    if "timm" not in sys.modules:
        return ()
    try:
        from timm.layers import get_notrace_functions
    except ImportError:  # pragma: no cover
        return ()
    return tuple(f for f in get_notrace_functions() if callable(f) and hasattr(f, "__globals__"))


def _is(m: nn.Module, *names: str) -> bool:
    classes = timm_layers()
    return any(n in classes and isinstance(m, classes[n]) for n in names)


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's ``SAME`` padding of one axis as ``(before, after)`` (timm's ``get_same_padding``)."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def start_padding(m: nn.Module, in_hw: tuple[int, int]) -> tuple[int, int] | None:
    """The padding before the first row and column that a conv or pool ``m`` applies to an ``in_hw`` map.

    Handles numeric padding, ``padding="same"`` / ``"valid"`` and timm's
    dynamic ``SAME`` layers; ``None`` for anything else.
    """
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    d = _pair(getattr(m, "dilation", 1))
    if _is(m, "Conv2dSame", "StdConv2dSame", "ScaledStdConv2dSame", "MaxPool2dSame", "AvgPool2dSame"):
        return same_padding(in_hw[0], k[0], s[0], d[0])[0], same_padding(in_hw[1], k[1], s[1], d[1])[0]
    p = m.padding
    if p == "valid":
        return (0, 0)
    if p == "same":  # torch.nn: stride 1, the extra padding goes after
        return (d[0] * (k[0] - 1)) // 2, (d[1] * (k[1] - 1)) // 2
    if isinstance(p, str):
        return None
    return _pair(p)


def is_plain_forward(m: nn.Module) -> bool:
    """Whether ``m`` computes what its ``torch.nn`` conv/pool class computes (timm's SAME layers included)."""
    for base in (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d):
        if isinstance(m, base):
            return type(m).forward is base.forward or _is(m, "Conv2dSame", "MaxPool2dSame", "AvgPool2dSame")
    return False


def positionwise_leaf(m: nn.Module, positionwise: tuple[type[nn.Module], ...]) -> bool:
    """timm's norm + activation leaves whose activation and dropout act position by position.

    ``positionwise``: the ``torch.nn`` classes known to act position by position
    (``analysis.POSITIONWISE_MODULES``; passed in, so this module imports nothing from the analysis).
    """
    if not _is(m, "BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d"):
        return False

    def ok(child: nn.Module) -> bool:
        return isinstance(child, positionwise) or type(child).__module__.startswith(
            ("timm.layers.activations", "timm.layers.create_act"))

    return all(ok(c) for c in m.children())
