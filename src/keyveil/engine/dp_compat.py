"""Models Opacus can train: BatchNorm replaced, in-place residual adds made out-of-place.

:func:`make_dp_compatible` is all a DP-SGD checkpoint needs to rebuild its
model, so it lives apart from the training code in :mod:`keyveil.engine.dp`.
Opacus is an optional dependency: ``pip install 'keyveil[privacy]'``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import mobilenetv3, resnet

__all__ = ["make_dp_compatible", "require_opacus", "INSTALL_HINT", "BasicBlockDP", "BottleneckDP",
           "InvertedResidualDP"]

INSTALL_HINT = "DP-SGD needs Opacus: pip install 'keyveil[privacy]' (or pip install opacus)"


def require_opacus() -> Any:
    """Import and return the ``opacus`` module, or raise ImportError saying how to install it."""
    try:
        import opacus
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return opacus


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """``model`` with BatchNorm replaced (``ModuleValidator.fix``: GroupNorm), validated for DP-SGD.

    In-place activations are made out-of-place (Opacus' hooks need their
    inputs). Deterministic: the same architecture always becomes the same
    fixed one, so a checkpoint can rebuild it. Returns a new module; the
    input is left alone.

    Raises:
        ImportError: Opacus is not installed.
        ValueError: the fixed model still has layers Opacus cannot train privately.
    """
    require_opacus()
    from opacus.validators import ModuleValidator

    fixed = ModuleValidator.fix(model)  # a copy
    for m in fixed.modules():  # in-place activations and residual adds break Opacus' backward hooks
        if getattr(m, "inplace", False) is True:
            m.inplace = False
        out_of_place = _OUT_OF_PLACE.get(type(m))
        if out_of_place is not None:
            m.__class__ = out_of_place  # same parameters and state_dict keys, ``x + y`` instead of ``x += y``
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise ValueError(f"{type(model).__name__} cannot be trained with DP-SGD even after "
                         f"ModuleValidator.fix: {'; '.join(map(str, errors))}. Use another --model (e.g. smallcnn)")
    return fixed


# torchvision residual blocks that add in place (``out += identity``), each with an out-of-place twin:
# Opacus' full backward hooks return a layer's output as a view, which an in-place add may not modify
# ("Output 0 of BackwardHookFunction is a view and is being modified inplace"). Same parameters, same
# state_dict keys; the class is swapped by make_dp_compatible.
class BasicBlockDP(resnet.BasicBlock):
    """``resnet.BasicBlock`` with ``out + identity`` instead of ``out += identity``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class BottleneckDP(resnet.Bottleneck):
    """``resnet.Bottleneck`` with ``out + identity`` instead of ``out += identity``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class InvertedResidualDP(mobilenetv3.InvertedResidual):
    """``mobilenetv3.InvertedResidual`` with ``result + input`` instead of ``result += input``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        result = self.block(input)
        return result + input if self.use_res_connect else result


_OUT_OF_PLACE: dict[type, type] = {resnet.BasicBlock: BasicBlockDP, resnet.Bottleneck: BottleneckDP,
                                   mobilenetv3.InvertedResidual: InvertedResidualDP}
