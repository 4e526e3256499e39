"""Layout rules of ``torch.nn`` layers, ``torch`` / ``torch.nn.functional`` functions and ``Tensor`` methods.

One rule per family (see :mod:`keyveil.models.rules`):

* position-wise: activations, dropout, residual arithmetic (modules,
  functions, methods); per channel along axis 1: BatchNorm, GroupNorm, ...;
  over the last axis (position-wise on channels-last maps): LayerNorm, ``Linear``;
* spatial: ``Conv2d`` (1×1 stride-1 unpadded ones are position-wise),
  max/avg/adaptive pooling (global pooling ends the layout), resizes;
* shapes and axes: flatten/reshape/view, indexing, ``cat``/``chunk``/``split``,
  ``transpose``/``permute``, reductions, tensor metadata;

and the conversions of the spatial families (``@conversion_rule``): in
``deformable`` mode, :class:`~keyveil.models.layers.DeformableConv2d`,
:class:`~keyveil.models.layers.DeformablePool2d` and
:class:`~keyveil.models.layers.DeformableResize`; in ``features`` mode the
generic wrapping, except a strided 1×1 convolution
(:class:`~keyveil.models.layers.StridedPointwiseConv2d`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .geometry import is_plain_forward, start_padding
from .layers import DeformableConv2d, DeformablePool2d, DeformableResize, StridedPointwiseConv2d
from .layout import Site
from .rules import conversion_rule, layout_rule
from .steps import Step

__all__ = ["ELEMENTWISE_MODULES", "CHANNEL_MODULES", "POSITIONWISE_MODULES", "SPATIAL_MODULES"]

ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.AlphaDropout, nn.Threshold,
)
CHANNEL_MODULES: tuple[type[nn.Module], ...] = (  # act per channel along axis 1: (B, C, H, W) maps only
    nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm2d, nn.LocalResponseNorm,
    nn.PReLU, nn.Dropout2d,
)
POSITIONWISE_MODULES: tuple[type[nn.Module], ...] = ELEMENTWISE_MODULES + CHANNEL_MODULES
SPATIAL_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)

_TENSOR_METADATA = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"}


# -- modules ------------------------------------------------------------------------
@layout_rule(nn.Conv2d)
def conv2d(step: Step) -> None:
    m = step.module
    if m.kernel_size == (1, 1) and m.stride == (1, 1) and start_padding(m, (1, 1)) == (0, 0):
        if step.scr and step.scr[0][1].channels_last:
            step.reject("a convolution of a channels-last map; permute it back first")
        step.passthrough()  # 1x1, stride 1, no padding: position-wise
        return
    if step.mode == "deformable" and not is_plain_forward(m):
        step.reject(f"a Conv2d subclass with its own forward ({type(m).__module__}); "
                    "deformable mode rebuilds convolutions from their weights; use mode='features'")
    if step.mode == "deformable" and (m.padding_mode != "zeros" or start_padding(m, (8, 8)) is None):
        step.reject("deformable mode supports zero padding only "
                    f"(padding={m.padding!r}, padding_mode={m.padding_mode!r}); use mode='features'")
    step.spatial()


@layout_rule(nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
def adaptive_pool2d(step: Step) -> None:
    out_shape = step.out_shape
    if out_shape is not None and out_shape[-2:] == (1, 1):
        step.set(None)  # global pooling is permutation invariant
        return
    step.spatial()


@layout_rule(nn.MaxPool2d, nn.AvgPool2d)
def pool2d(step: Step) -> None:
    m = step.module
    if getattr(m, "return_indices", False):
        step.reject("return_indices=True exposes spatial positions; not supported")
    if step.mode == "deformable" and not is_plain_forward(m):
        step.reject(f"a pooling subclass with its own forward ({type(m).__module__}); use mode='features'")
    step.spatial()


@layout_rule(nn.Upsample)
def upsample(step: Step) -> None:
    step.resize()


@layout_rule(*ELEMENTWISE_MODULES)
def elementwise_module(step: Step) -> None:
    step.passthrough()


@layout_rule(*CHANNEL_MODULES)
def channel_module(step: Step) -> None:
    if type(step.module).__module__.startswith("timm"):
        step.unknown()  # a timm subclass with a forward of its own (timm's own rules cover the known ones)
        return
    step.channelwise()


@layout_rule(nn.LayerNorm)
def layer_norm(step: Step) -> None:
    step.last_axis(step.module.normalized_shape)


@layout_rule(nn.Flatten)
def flatten_module(step: Step) -> None:
    step.flatten()


@layout_rule(nn.Linear)
def linear(step: Step) -> None:
    if step.fold():
        return
    if step.scr and not step.scr[0][1].channels_last:
        step.reject("a Linear applied to the last (width) axis of a scrambled map "
                    "mixes positions; flatten the map first (or permute it to channels-last)")
    step.last_axis()


# -- functions -----------------------------------------------------------------------
@layout_rule(operator.getitem)
def getitem(step: Step) -> None:
    step.getitem()


@layout_rule(getattr)
def tensor_attribute(step: Step) -> None:
    if step.node.args[1] in _TENSOR_METADATA:
        step.set(None)  # a scrambled map has the plain map's shape, dtype and device
        return
    step.unknown(f"getattr .{step.node.args[1]}")


@layout_rule(
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd, operator.imul,
    operator.isub, operator.itruediv,
    torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid, torch.tanh, torch.clamp,
    torch.abs, torch.exp, torch.sqrt, torch.neg,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.sigmoid, F.tanh, F.softplus, F.dropout,
    names=("stochastic_depth",),
)
def elementwise_function(step: Step) -> None:
    step.passthrough()


@layout_rule(F.batch_norm, F.group_norm, F.instance_norm, F.dropout2d, F.prelu)
def channel_function(step: Step) -> None:
    step.channelwise()


@layout_rule(F.layer_norm)
def layer_norm_function(step: Step) -> None:
    step.last_axis(step.arg(1, "normalized_shape"))


@layout_rule(F.linear)
def linear_function(step: Step) -> None:
    step.last_axis()


@layout_rule(F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest)
def resize_function(step: Step) -> None:
    step.resize()


@layout_rule(torch.flatten, torch.reshape)
def reshape_function(step: Step) -> None:
    step.flatten()


@layout_rule(torch.cat)
def cat(step: Step) -> None:
    step.cat_like(step.arg(1, "dim", 0))


@layout_rule(torch.chunk, torch.split)
def split_function(step: Step) -> None:
    step.cat_like(step.arg(2, "dim", 0))


@layout_rule(torch.transpose, torch.swapaxes)
def transpose_function(step: Step) -> None:
    step.transpose(list(step.node.args[1:]) or [step.node.kwargs.get("dims")], is_permute=False)


@layout_rule(torch.permute)
def permute_function(step: Step) -> None:
    step.transpose(list(step.node.args[1:]) or [step.node.kwargs.get("dims")], is_permute=True)


@layout_rule(torch.mean, torch.sum, torch.amax, torch.amin)
def reduction_function(step: Step) -> None:
    step.reduction(step.arg(1, "dim"))


@layout_rule(names=("adaptive_avg_pool2d", "adaptive_max_pool2d", "max_pool2d", "avg_pool2d", "_max_pool2d",
                    "max_pool2d_with_indices", "adaptive_max_pool2d_with_indices", "boolean_dispatch"))
def functional_pool(step: Step) -> None:
    out = step.out_shape
    if getattr(step.node.target, "__name__", "").startswith("adaptive") and out is not None and out[-2:] == (1, 1):
        step.set(None)  # global pooling is permutation invariant
        return
    if step.scr:
        step.reject("functional pooling over a scrambled map; use the nn.*Pool2d module "
                    "(or global pooling to 1x1, which is supported)")
    step.set(None)


# -- Tensor methods -------------------------------------------------------------------
@layout_rule("size", "dim", "numel")
def metadata_method(step: Step) -> None:
    step.set(None)


@layout_rule(
    "add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "relu", "relu_", "sigmoid", "sigmoid_",
    "tanh", "clamp", "clamp_", "clamp_min", "clamp_max", "abs", "neg", "exp", "sqrt", "pow",
    "contiguous", "clone", "detach", "float", "half", "double", "type_as",
)
def elementwise_method(step: Step) -> None:
    step.passthrough()


@layout_rule("view", "reshape", "flatten")
def reshape_method(step: Step) -> None:
    step.flatten()


@layout_rule("chunk", "split")
def split_method(step: Step) -> None:
    step.cat_like(step.arg(2, "dim", 0))


@layout_rule("transpose", "swapaxes")
def transpose_method(step: Step) -> None:
    step.transpose(list(step.node.args[1:]) or [step.node.kwargs.get("dims")], is_permute=False)


@layout_rule("permute")
def permute_method(step: Step) -> None:
    step.transpose(list(step.node.args[1:]) or [step.node.kwargs.get("dims")], is_permute=True)


@layout_rule("mean", "sum", "amax", "amin")
def reduction_method(step: Step) -> None:
    step.reduction(step.arg(1, "dim"))


# -- keyed layers (conversion) ---------------------------------------------------------
@conversion_rule(nn.Conv2d)
def keyed_conv2d(m: nn.Conv2d, site: Site) -> nn.Module | None:
    if site.mode == "features":
        if m.kernel_size == (1, 1) and is_plain_forward(m) and start_padding(m, site.in_hw) == (0, 0):
            # a strided 1x1 conv: one gather straight from the scrambled input to the scrambled output
            return StridedPointwiseConv2d(m, in_hw=site.in_hw, out_hw=site.out_hw, in_perm=site.in_perm,
                                          out_perm=site.out_perm)
        return None
    return DeformableConv2d(m, in_hw=site.in_hw, out_hw=site.out_hw, in_perm=site.in_perm, out_perm=site.out_perm,
                            kernel=site.kernel, padding=start_padding(m, site.in_hw))


@conversion_rule(nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
def keyed_pool2d(m: nn.Module, site: Site) -> nn.Module | None:
    if site.mode == "features":
        return None
    pad = None if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) else start_padding(m, site.in_hw)
    return DeformablePool2d(m, in_hw=site.in_hw, out_hw=site.out_hw, in_perm=site.in_perm, out_perm=site.out_perm,
                            padding=pad)


@conversion_rule(nn.Upsample, F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest)
def keyed_resize(op: Callable[[torch.Tensor], torch.Tensor], site: Site) -> nn.Module | None:
    if site.mode == "features":
        return None
    return DeformableResize(op, in_hw=site.in_hw, out_hw=site.out_hw, in_perm=site.in_perm, out_perm=site.out_perm,
                            name=type(op).__name__ if isinstance(op, nn.Module) else "interpolate")
