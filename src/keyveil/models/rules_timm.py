"""timm's layers in the keyed-CNN rule table (loaded once a model has imported timm).

timm marks some of its layers as not traceable by :mod:`torch.fx` (its
"no-trace" registry: TF-style ``SAME``-padded convolutions and pools whose
padding depends on the input size, norm + activation layers, ...). The
loader below registers them with :mod:`keyveil.models.rules`:

* every no-trace layer is traced as a leaf module (and timm's no-trace
  functions as single nodes), so one it has no rule for is reported by its
  module path in one clear :class:`~keyveil.models.UnsupportedModelError`
  instead of a tracing failure;
* ``Conv2dSame`` and ``MaxPool2dSame`` / ``AvgPool2dSame`` are convolutions
  and pools with asymmetric ("same") padding (the ``torch.nn`` parents' rules
  apply), as are the ``Std``/``ScaledStd`` convolutions, which standardize
  their weights (so ``features`` mode only);
* ``BatchNormAct2d`` and friends are position-wise when their activation is.

Nothing here imports timm unless a model already did.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from .rules import (
    layout_rule,
    library_rules,
    register_autowrap_functions,
    register_leaf_modules,
    register_same_padded,
)
from .rules_torch import POSITIONWISE_MODULES
from .steps import Step

__all__ = ["load_timm_rules"]

_WHERE = {"conv2d_same": ("Conv2dSame",), "pool2d_same": ("MaxPool2dSame", "AvgPool2dSame"),
          "norm_act": ("BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d"),
          "std_conv": ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")}


def _classes() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for module, names in _WHERE.items():
        try:
            mod = importlib.import_module(f"timm.layers.{module}")
        except ImportError:  # pragma: no cover - another timm layout
            continue
        found.update({n: getattr(mod, n) for n in names if hasattr(mod, n)})
    return found


def _positionwise_child(child: nn.Module) -> bool:
    return isinstance(child, POSITIONWISE_MODULES) or type(child).__module__.startswith(
        ("timm.layers.activations", "timm.layers.create_act"))


def norm_act(step: Step) -> None:
    """timm's norm + activation layers: per channel when every child acts position by position."""
    if all(_positionwise_child(c) for c in step.module.children()):
        step.channelwise()
    else:
        step.unknown()


@library_rules("timm")
def load_timm_rules() -> None:
    """Register timm's leaves, no-trace functions, SAME-padded layers and norm + activation rules."""
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:  # pragma: no cover
        return
    register_leaf_modules(get_notrace_modules)  # asked at every trace: timm may register more
    register_autowrap_functions(get_notrace_functions)
    classes = _classes()
    register_same_padded(*(classes[n] for n in ("Conv2dSame", "MaxPool2dSame", "AvgPool2dSame") if n in classes),
                         plain_forward=True)
    register_same_padded(*(classes[n] for n in ("StdConv2dSame", "ScaledStdConv2dSame") if n in classes),
                         plain_forward=False)
    layout_rule(*(classes[n] for n in ("BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d")
                  if n in classes))(norm_act)
