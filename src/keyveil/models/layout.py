"""Layouts: where the positions of a scrambled feature map sit in a traced value.

Every value of a traced CNN gets a *layout*: ``None`` (no spatial content, or
a 1×1 map), ``Scrambled(h, w)`` (a ``(B, C, h, w)`` map stored in the key's
order for its size), ``Scrambled(h, w, channels_last=True)`` (such a map
permuted to ``(B, h, w, C)``, as ConvNeXt blocks do) or
``Scrambled(h, w, flat=C)`` (a map flattened to ``(B, C*h*w)``). This module
holds the layout type, the result of an analysis, and the small graph
helpers (shapes, module paths) the rules read nodes with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata

from .errors import UnsupportedOp

__all__ = ["Scrambled", "Analysis", "Site", "shape_of", "spatial_layout", "module_path", "tensor_leaves", "op_name"]


@dataclass(frozen=True)
class Scrambled:
    """A value holding a map of size ``h×w`` in the key's order (flattened if ``flat``).

    ``channels_last``: the map is ``(..., h, w, C)`` (spatial axes -3 and -2)
    instead of ``(..., C, h, w)``.
    """

    h: int
    w: int
    flat: int | None = None  # channel count when flattened to (B, C*h*w)
    channels_last: bool = False

    def spatial_axes(self, ndim: int) -> tuple[int, ...]:
        """The axes (of an ``ndim``-D value with this layout) that index positions."""
        if self.flat is not None:
            return (ndim - 1,)
        return (ndim - 3, ndim - 2) if self.channels_last else (ndim - 2, ndim - 1)


@dataclass
class Analysis:
    """The result of :func:`keyveil.models.analyzer.analyze`: layouts, actions and problems per node."""

    gm: fx.GraphModule
    layouts: dict[fx.Node, Scrambled | None] = field(default_factory=dict)
    spatial: list[fx.Node] = field(default_factory=list)  # conv / pool / resize nodes to wrap
    folds: list[fx.Node] = field(default_factory=list)  # Linear nodes fed by a flat scrambled map
    outputs: list[fx.Node] = field(default_factory=list)  # scrambled maps the model returns
    problems: list[UnsupportedOp] = field(default_factory=list)


@dataclass(frozen=True)
class Site:
    """Where a spatial node sits, as its conversion sees it.

    Attributes:
        mode: ``"features"`` or ``"deformable"``.
        in_hw, out_hw: the input and output map sizes.
        in_perm, out_perm: the key's permutations of the input and output maps
            (``None``: that map is in plain order, e.g. a 1×1 output or a map
            the model returns).
        kernel: deformable mode's convolution kernel (``"gather"`` or ``"deform_conv2d"``).
    """

    mode: str
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    in_perm: torch.Tensor | None
    out_perm: torch.Tensor | None
    kernel: str = "gather"


def op_name(target: Any) -> str:
    """A readable name of a graph node's target (``"torch.nn.functional.interpolate"``)."""
    if isinstance(target, str):
        return target
    mod = getattr(target, "__module__", None) or ""
    return f"{mod}.{getattr(target, '__name__', repr(target))}".lstrip(".")


def shape_of(node: Any) -> tuple[int, ...] | None:
    """The output shape shape propagation recorded for ``node`` (``None`` for non-tensors)."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, TensorMetadata):
        return tuple(meta.shape)
    return None


def spatial_layout(shape: tuple[int, ...] | None) -> Scrambled | None:
    """The layout a freshly computed 4-D map gets: scrambled unless it is 1×1."""
    if shape is None or len(shape) != 4 or shape[2] * shape[3] <= 1:
        return None
    return Scrambled(shape[2], shape[3])


def module_path(node: fx.Node) -> str | None:
    """The innermost module a traced function or method call came from (``"features.1.0.attn"``)."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = next(reversed(stack))
        return str(path) or None
    return None


def tensor_leaves(value: Any) -> list[fx.Node]:
    """The graph nodes inside ``value`` (args / kwargs, nested in tuples and dicts), in order."""
    out: list[fx.Node] = []
    fx.node.map_arg(value, lambda n: out.append(n) or n)
    return out
