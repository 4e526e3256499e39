"""Which operations of a traced CNN commute with a spatial permutation (the validator's core).

A model is traced with :mod:`torch.fx` (timm's no-trace layers kept as leaf
modules, see :mod:`.library_layers`), shapes are propagated on an example
input, and every value gets a *layout*: ``None`` (no spatial content, or a
1×1 map), ``Scrambled(h, w)`` (a ``(B, C, h, w)`` map stored in the key's order
for its size), ``Scrambled(h, w, channels_last=True)`` (such a map permuted to
``(B, h, w, C)``, as ConvNeXt blocks do) or ``Scrambled(h, w, flat=C)`` (a map
flattened to ``(B, C*h*w)``). Every node is then classified:

* position-wise (BatchNorm, activations, residual ``+``, channel ``cat``,
  dropout, 1×1 stride-1 unpadded convs, channel reshapes; on a channels-last
  map LayerNorm over channels and ``Linear``): the layout passes through;
* layout changes: ``permute(0, 2, 3, 1)`` / ``permute(0, 3, 1, 2)`` switch
  between channels-first and channels-last (the positions keep their order);
* spatial (``Conv2d`` incl. timm's SAME-padded ones, max/avg/adaptive
  pooling; resizes in models that return a map): wrapped or made deformable;
* permutation-invariant reductions (global pooling, ``mean`` over H and W): layout ends;
* ``Linear`` on a flattened scrambled map: its columns are permuted;
* a scrambled ``(B, C, h, w)`` map the model returns (segmentation-style
  output, with ``unscramble_outputs``): un-scrambled before it is returned;
* anything else touching a scrambled map: an :class:`UnsupportedOp` naming
  its module path.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from .errors import UnsupportedModelError, UnsupportedOp
from .library_layers import (
    autowrap_functions,
    is_plain_forward,
    leaf_module_types,
    positionwise_leaf,
    start_padding,
)

__all__ = ["Scrambled", "Analysis", "trace", "analyze", "SPATIAL_MODULES"]


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
    """The result of :func:`analyze`: layouts, actions and problems per node."""

    gm: fx.GraphModule
    layouts: dict[fx.Node, Scrambled | None] = field(default_factory=dict)
    spatial: list[fx.Node] = field(default_factory=list)  # conv / pool / resize nodes to wrap
    folds: list[fx.Node] = field(default_factory=list)  # Linear nodes fed by a flat scrambled map
    outputs: list[fx.Node] = field(default_factory=list)  # scrambled maps the model returns
    problems: list[UnsupportedOp] = field(default_factory=list)


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

_ELEMENTWISE_FUNCTIONS: set[Any] = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd, operator.imul,
    operator.isub, operator.itruediv,
    torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid, torch.tanh, torch.clamp,
    torch.abs, torch.exp, torch.sqrt, torch.neg,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.sigmoid, F.tanh, F.softplus, F.dropout,
}
_CHANNEL_FUNCTIONS: set[Any] = {F.batch_norm, F.group_norm, F.instance_norm, F.dropout2d, F.prelu}
_LAST_AXIS_FUNCTIONS: set[Any] = {F.layer_norm, F.linear}  # position-wise on channels-last maps
_RESIZE_FUNCTIONS: set[Any] = {F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest}
_TENSOR_METADATA = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"}
_ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "relu", "relu_", "sigmoid", "sigmoid_",
    "tanh", "clamp", "clamp_", "clamp_min", "clamp_max", "abs", "neg", "exp", "sqrt", "pow",
    "contiguous", "clone", "detach", "float", "half", "double", "type_as",
}
_RESHAPE = {"view", "reshape", "flatten"}
_FUNCTIONAL_POOLS = {
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "max_pool2d", "avg_pool2d", "_max_pool2d",
    "max_pool2d_with_indices", "adaptive_max_pool2d_with_indices", "boolean_dispatch",
}
_REDUCTIONS = {"mean", "sum", "amax", "amin"}
_SPATIAL_FUNCTION_HINTS = {
    "interpolate": "resizes the map (interpolation mixes neighbours); resize the input before encrypting instead "
                   "(a resize in a model that returns a map, e.g. a segmentation head, is supported)",
    "upsample": "resizes the map; resize the input before encrypting instead (a resize in a model that returns "
                "a map, e.g. a segmentation head, is supported)",
    "grid_sample": "samples at spatial coordinates",
    "pad": "pads the map at its borders",
    "pixel_shuffle": "moves values between positions",
    "pixel_unshuffle": "moves values between positions",
    "roll": "shifts positions (Swin-style windows)",
    "unfold": "extracts spatial windows",
    "fold": "assembles spatial windows",
    "conv2d": "functional convolution; use an nn.Conv2d module",
    "window_attention": "window attention (Swin): cuts the map into windows of tokens and shifts them, which moves "
                        "the spatial axes and mixes tokens by position",
}


def _name(target: Any) -> str:
    if isinstance(target, str):
        return target
    mod = getattr(target, "__module__", None) or ""
    return f"{mod}.{getattr(target, '__name__', repr(target))}".lstrip(".")


class _InplaceProxy(fx.Proxy):
    """A proxy that records ``a += b`` as the in-place ``operator.iadd`` (fx's own falls back to ``a = a + b``).

    So a traced ResNet/ConvNeXt block adds its shortcut in place, as the
    eager model does, instead of allocating a new map (about 5 % of a
    ConvNeXt forward on CPU).
    """

    def __iadd__(self, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.iadd, (self, other), {})

    def __isub__(self, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.isub, (self, other), {})

    def __imul__(self, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.imul, (self, other), {})

    def __itruediv__(self, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.itruediv, (self, other), {})


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer with timm's no-trace layers as leaf modules and its no-trace functions wrapped."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=autowrap_functions())
        self.extra_leaves = leaf_module_types()

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _InplaceProxy(node, self)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.extra_leaves and isinstance(m, self.extra_leaves):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` with :mod:`torch.fx` (timm's no-trace layers kept whole), with a clear error when it cannot."""
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # fx raises many kinds of errors
        raise UnsupportedModelError(
            f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}); keyed modes "
            "'features' and 'deformable' need a traceable model (no data-dependent Python control flow). "
            "mode='input' works for any model."
        ) from exc


def _run_shape_prop(gm: fx.GraphModule, example: torch.Tensor) -> None:
    with torch.no_grad():
        ShapeProp(gm).propagate(example)


def _propagate_on_meta(gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Shape propagation with every parameter and buffer swapped for a meta tensor (no arithmetic)."""
    saved: list[tuple[dict, str, torch.Tensor]] = []
    try:
        for mod in gm.modules():
            for table in (mod._parameters, mod._buffers):
                for name, t in list(table.items()):
                    if t is not None:
                        saved.append((table, name, t))
                        meta = torch.empty_like(t, device="meta")
                        table[name] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
        _run_shape_prop(gm, torch.empty_like(example, device="meta"))
    finally:
        for table, name, t in saved:
            table[name] = t


def propagate_shapes(gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Record every node's output shape in ``node.meta['tensor_meta']`` (eval mode, no grad).

    Runs on meta tensors (no arithmetic, fast) and falls back to a real
    forward of ``example`` when an operation has no meta implementation.
    """
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        try:
            _propagate_on_meta(gm, example)
        except Exception:
            _run_shape_prop(gm, example)
    except Exception as exc:
        raise UnsupportedModelError(
            f"running the traced model on a {tuple(example.shape)} input failed ({type(exc).__name__}: {exc}); "
            "check input_size (and the number of input channels)"
        ) from exc
    finally:
        for m, t in modes.items():
            m.train(t)


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, TensorMetadata):
        return tuple(meta.shape)
    return None


def _spatial_layout(shape: tuple[int, ...] | None) -> Scrambled | None:
    """The layout a freshly computed 4-D map gets: scrambled unless it is 1×1."""
    if shape is None or len(shape) != 4 or shape[2] * shape[3] <= 1:
        return None
    return Scrambled(shape[2], shape[3])


def _module_path(node: fx.Node) -> str | None:
    """The innermost module a traced function or method call came from (``"features.1.0.attn"``)."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = next(reversed(stack))
        return str(path) or None
    return None


def _tensor_leaves(value: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(value, lambda n: out.append(n) or n)
    return out


class _Analyzer:
    def __init__(self, gm: fx.GraphModule, mode: str, unscramble_outputs: bool) -> None:
        self.gm = gm
        self.mode = mode
        self.unscramble_outputs = unscramble_outputs
        self.modules = dict(gm.named_modules())
        self.result = Analysis(gm)
        self.layouts = self.result.layouts
        out = next((n for n in gm.graph.nodes if n.op == "output"), None)
        shapes = [_shape(n) for n in _tensor_leaves(out.args)] if out is not None else []
        self.dense = any(s is not None and len(s) == 4 and s[2] * s[3] > 1 for s in shapes)  # returns a map

    # -- helpers ------------------------------------------------------------
    def problem(self, node: fx.Node, op: str, reason: str) -> None:
        if node.op == "call_module":
            where = str(node.target)
        else:
            path = _module_path(node)
            where = f"{path} ({node.name})" if path else node.name
        self.result.problems.append(UnsupportedOp(where, op, reason))

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        return _tensor_leaves((node.args, node.kwargs))

    def scrambled_inputs(self, node: fx.Node) -> list[tuple[fx.Node, Scrambled]]:
        return [(n, lay) for n in self.tensor_inputs(node) if (lay := self.layouts.get(n)) is not None]

    def single(self, node: fx.Node, scr, op: str) -> Scrambled | None:
        """The one layout of the scrambled operands (``None`` if none); a problem if they disagree."""
        layouts = {lay for _, lay in scr}
        if len(layouts) > 1:
            self.problem(node, op, "combines maps of different layouts " + ", ".join(map(str, layouts)))
            raise _Stop
        return layouts.pop() if layouts else None

    # -- classification -----------------------------------------------------
    def run(self) -> Analysis:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        failed: set[fx.Node] = set()
        for node in self.gm.graph.nodes:
            if any(n in failed for n in self.tensor_inputs(node)):
                failed.add(node)  # already reported upstream
                continue
            try:
                self.visit(node, placeholders)
            except _Stop:
                failed.add(node)
        return self.result

    def visit(self, node: fx.Node, placeholders: list[fx.Node]) -> None:
        if node.op == "placeholder":
            if node is placeholders[0]:
                self.layouts[node] = _spatial_layout(_shape(node))
            else:
                self.layouts[node] = None
                if not node.args:  # no default value
                    self.problem(node, "input", "keyed models take one image tensor; extra inputs are not supported")
            return
        if node.op == "get_attr":
            self.layouts[node] = None
            return
        if node.op == "output":
            self.output(node)
            return
        scr = self.scrambled_inputs(node)
        if node.op == "call_module":
            self.visit_module(node, self.modules[node.target], scr)
        elif node.op == "call_function":
            self.visit_function(node, node.target, scr)
        elif node.op == "call_method":
            self.visit_method(node, node.target, scr)

    def output(self, node: fx.Node) -> None:
        for n, lay in self.scrambled_inputs(node):
            if not self.unscramble_outputs:
                self.problem(node, "output", f"the model returns a {lay.h}x{lay.w} feature map; keyed() "
                             "supports models whose outputs have no spatial dimensions (classifiers)")
            elif lay.flat is not None or lay.channels_last or len(_shape(n) or ()) != 4:
                self.problem(node, "output", f"the model returns a scrambled {lay.h}x{lay.w} map as {_shape(n)}; "
                             "only (B, C, H, W) output maps can be un-scrambled")
            elif n not in self.result.outputs:
                self.result.outputs.append(n)

    def passthrough(self, node: fx.Node, scr: list[tuple[fx.Node, Scrambled]], op: str) -> None:
        """Position-wise op: every operand with spatial content must carry the same layout."""
        lay = self.single(node, scr, op)
        if lay is None:
            self.layouts[node] = None
            return
        out_shape = _shape(node)
        ndim = len(out_shape) if out_shape is not None else 4
        from_right = [a - ndim for a in lay.spatial_axes(ndim)]  # e.g. (-2, -1)
        for n in self.tensor_inputs(node):
            if self.layouts.get(n) is None:
                s = _shape(n)
                if not s:
                    continue
                if any(len(s) >= -a and s[a] > 1 for a in from_right):
                    self.problem(node, op, f"combines a scrambled map with the unscrambled tensor {n.name} "
                                 f"of shape {s} (a spatial constant?)")
                    raise _Stop
        if out_shape is not None:
            if lay.flat is not None:
                ok = out_shape[-1] == lay.flat * lay.h * lay.w
            else:
                ok = len(out_shape) >= 3 and tuple(out_shape[a] for a in from_right) == (lay.h, lay.w)
            if not ok:
                self.problem(node, op, f"changes the spatial shape of a scrambled map to {out_shape}")
                raise _Stop
        self.layouts[node] = lay

    def channelwise(self, node: fx.Node, scr, op: str) -> None:
        """Acts per channel along axis 1: position-wise on ``(B, C, H, W)`` maps only."""
        lay = self.single(node, scr, op)
        if lay is not None and (lay.flat is not None or lay.channels_last):
            where = "a flattened map (its features are positions)" if lay.flat is not None else \
                "a channels-last map (axis 1 is a spatial axis there)"
            self.problem(node, op, f"normalizes or scales along axis 1 of {where}")
            raise _Stop
        self.passthrough(node, scr, op)

    def last_axis(self, node: fx.Node, scr, op: str, normalized: Any = None) -> None:
        """LayerNorm / Linear over the last axis: position-wise on channels-last maps."""
        lay = self.single(node, scr, op)
        if lay is None:
            self.layouts[node] = None
            return
        if normalized is not None and len(tuple(normalized) if isinstance(normalized, (tuple, list, torch.Size))
                                         else (normalized,)) != 1:
            self.problem(node, op, f"normalizes over the axes {tuple(normalized)}, which include positions")
            raise _Stop
        if not lay.channels_last:
            self.problem(node, op, "acts on the last axis, which is the width of a (B, C, H, W) map; permute "
                         "the map to channels-last (0, 2, 3, 1) first, as ConvNeXt does")
            raise _Stop
        self.passthrough(node, scr, op)

    def visit_module(self, node: fx.Node, m: nn.Module, scr: list[tuple[fx.Node, Scrambled]]) -> None:
        op = type(m).__name__
        in_shape, out_shape = _shape(node.args[0]) if node.args else None, _shape(node)
        if isinstance(m, nn.Conv2d):
            if m.kernel_size == (1, 1) and m.stride == (1, 1) and start_padding(m, (1, 1)) == (0, 0):
                if scr and scr[0][1].channels_last:
                    self.problem(node, op, "a convolution of a channels-last map; permute it back first")
                    raise _Stop
                self.passthrough(node, scr, op)  # 1x1, stride 1, no padding: position-wise
                return
            if self.mode == "deformable" and not is_plain_forward(m):
                self.problem(node, op, f"a Conv2d subclass with its own forward ({type(m).__module__}); "
                             "deformable mode rebuilds convolutions from their weights; use mode='features'")
                raise _Stop
            if self.mode == "deformable" and (m.padding_mode != "zeros" or start_padding(m, (8, 8)) is None):
                self.problem(node, op, "deformable mode supports zero padding only "
                             f"(padding={m.padding!r}, padding_mode={m.padding_mode!r}); use mode='features'")
                raise _Stop
            self.spatial(node, scr, in_shape, out_shape, op)
            return
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            if out_shape is not None and out_shape[-2:] == (1, 1):
                self.layouts[node] = None  # global pooling is permutation invariant
                return
            self.spatial(node, scr, in_shape, out_shape, op)
            return
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            if getattr(m, "return_indices", False):
                self.problem(node, op, "return_indices=True exposes spatial positions; not supported")
                raise _Stop
            if self.mode == "deformable" and not is_plain_forward(m):
                self.problem(node, op, f"a pooling subclass with its own forward ({type(m).__module__}); "
                             "use mode='features'")
                raise _Stop
            self.spatial(node, scr, in_shape, out_shape, op)
            return
        if isinstance(m, nn.Upsample):
            self.resize(node, scr, in_shape, out_shape, op)
            return
        if isinstance(m, ELEMENTWISE_MODULES):
            self.passthrough(node, scr, op)
            return
        if isinstance(m, CHANNEL_MODULES) or positionwise_leaf(m, POSITIONWISE_MODULES):
            if (isinstance(m, CHANNEL_MODULES) and type(m).__module__.startswith("timm")
                    and not positionwise_leaf(m, POSITIONWISE_MODULES)):
                self.unknown(node, op, scr)  # a timm subclass with a forward of its own
                return
            self.channelwise(node, scr, op)
            return
        if isinstance(m, nn.LayerNorm):
            self.last_axis(node, scr, op, m.normalized_shape)
            return
        if isinstance(m, nn.Flatten):
            self.flatten(node, scr, op, m.start_dim, m.end_dim)
            return
        if isinstance(m, nn.Linear):
            if scr and scr[0][1].flat is not None and len(scr) == 1:
                self.result.folds.append(node)
                self.layouts[node] = None
                return
            if scr and not scr[0][1].channels_last:
                self.problem(node, op, "a Linear applied to the last (width) axis of a scrambled map "
                             "mixes positions; flatten the map first (or permute it to channels-last)")
                raise _Stop
            self.last_axis(node, scr, op)
            return
        self.unknown(node, op, scr)

    def spatial(self, node, scr, in_shape, out_shape, op) -> None:
        if in_shape is None or out_shape is None or len(in_shape) != 4:
            self.problem(node, op, "expects a (B,C,H,W) input")
            raise _Stop
        if scr and (scr[0][1].flat is not None or scr[0][1].channels_last):
            self.problem(node, op, "applied to a flattened or channels-last map")
            raise _Stop
        self.result.spatial.append(node)
        lay = _spatial_layout(out_shape)
        if lay is not None and self.unscramble_outputs and node.users and all(u.op == "output" for u in node.users):
            lay = None  # the model returns this map: compute it in plain order straight away
        self.layouts[node] = lay

    def resize(self, node: fx.Node, scr, in_shape, out_shape, op: str) -> None:
        """A resize (interpolation) is a fixed linear map of positions: spatial, in models that return a map."""
        if not scr:
            self.layouts[node] = None
            return
        if not self.dense:
            self.unknown(node, op, scr)
            return
        if node.op == "call_function":
            extra = _tensor_leaves((node.args[2:], {k: v for k, v in node.kwargs.items() if k != "size"}))
            if extra or "input" in node.kwargs or not node.args:
                self.problem(node, op, "a resize whose arguments other than the input and its size are computed "
                             "in the graph; pass them as constants")
                raise _Stop
        self.spatial(node, scr, in_shape, out_shape, op)

    def unknown(self, node: fx.Node, op: str, scr) -> None:
        if scr:
            hint = next((v for k, v in _SPATIAL_FUNCTION_HINTS.items() if op.lower().endswith(k)), None)
            self.problem(node, op, hint or "is not known to commute with a permutation of positions; "
                         "keyed models support convolutions, max/avg/adaptive pooling and position-wise ops")
            raise _Stop
        self.layouts[node] = None

    def flatten(self, node: fx.Node, scr, op: str, start: int, end: int) -> None:
        if not scr:
            self.layouts[node] = None
            return
        lay = scr[0][1]
        in_shape, out_shape = _shape(node.args[0]), _shape(node)
        if in_shape is not None and out_shape is not None:
            if lay.flat is None and not lay.channels_last:
                if len(in_shape) == 4 and out_shape == (in_shape[0], in_shape[1] * in_shape[2] * in_shape[3]):
                    self.layouts[node] = Scrambled(lay.h, lay.w, flat=in_shape[1])
                    return
                if len(out_shape) >= 2 and out_shape[-2:] == in_shape[-2:] == (lay.h, lay.w):
                    self.layouts[node] = lay  # reshaping leading (batch/channel) axes only
                    return
            if lay.channels_last and len(out_shape) >= 3 and out_shape[-3:] == in_shape[-3:]:
                self.layouts[node] = lay  # leading axes only
                return
            if lay.flat is not None and out_shape == in_shape:
                self.layouts[node] = lay
                return
        self.problem(node, op, f"reshapes a scrambled map {in_shape} -> {out_shape} in a way that mixes "
                     "positions with other axes; only (B,C,h,w) -> (B,C*h*w) or channel-only reshapes work")
        raise _Stop

    def visit_function(self, node: fx.Node, fn: Callable, scr) -> None:
        op = _name(fn)
        if fn is operator.getitem:
            self.getitem(node, scr)
            return
        if fn is getattr:
            if node.args[1] in _TENSOR_METADATA:
                self.layouts[node] = None  # a scrambled map has the plain map's shape, dtype and device
                return
            self.unknown(node, f"getattr .{node.args[1]}", scr)
            return
        if fn in _ELEMENTWISE_FUNCTIONS or getattr(fn, "__name__", "") == "stochastic_depth":
            self.passthrough(node, scr, op)
            return
        if fn in _CHANNEL_FUNCTIONS:
            self.channelwise(node, scr, op)
            return
        if fn in _LAST_AXIS_FUNCTIONS:
            normalized = (node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")) \
                if fn is F.layer_norm else None
            self.last_axis(node, scr, op, normalized)
            return
        if fn in _RESIZE_FUNCTIONS:
            self.resize(node, scr, _shape(node.args[0]) if node.args else None, _shape(node), op)
            return
        if fn is torch.flatten:
            self.flatten(node, scr, op, 0, -1)
            return
        if fn is torch.cat:
            self.cat_like(node, scr, op, node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0))
            return
        if fn in (torch.chunk, torch.split):
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
            self.cat_like(node, scr, op, dim)
            return
        if fn in (torch.transpose, torch.permute, torch.swapaxes):
            dims = list(node.args[1:]) or [node.kwargs.get("dims")]
            self.transpose(node, scr, op, dims, fn is torch.permute)
            return
        if fn in (torch.reshape,):
            self.flatten(node, scr, op, 0, -1)
            return
        if fn in (torch.mean, torch.sum, torch.amax, torch.amin):
            self.reduction(node, scr, op, node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"))
            return
        fname = getattr(fn, "__name__", "")
        if fname in _FUNCTIONAL_POOLS:
            out = _shape(node)
            if fname.startswith("adaptive") and out is not None and out[-2:] == (1, 1):
                self.layouts[node] = None  # global pooling is permutation invariant
                return
            if scr:
                self.problem(node, op, "functional pooling over a scrambled map; use the nn.*Pool2d module "
                             "(or global pooling to 1x1, which is supported)")
                raise _Stop
            self.layouts[node] = None
            return
        self.unknown(node, op, scr)

    def visit_method(self, node: fx.Node, name: str, scr) -> None:
        op = f"Tensor.{name}"
        if name in ("size", "dim", "numel"):
            self.layouts[node] = None
            return
        if name in _ELEMENTWISE_METHODS:
            self.passthrough(node, scr, op)
            return
        if name in _RESHAPE:
            self.flatten(node, scr, op, 0, -1)
            return
        if name in ("chunk", "split"):
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
            self.cat_like(node, scr, op, dim)
            return
        if name in ("transpose", "permute", "swapaxes"):
            dims = list(node.args[1:]) or [node.kwargs.get("dims")]
            self.transpose(node, scr, op, dims, name == "permute")
            return
        if name in _REDUCTIONS:
            self.reduction(node, scr, op, node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"))
            return
        self.unknown(node, op, scr)

    def getitem(self, node: fx.Node, scr) -> None:
        src = node.args[0]
        if not scr:
            self.layouts[node] = None
            return
        lay = scr[0][1]
        shape = _shape(src)
        if shape is None:  # an element of a chunk/split result
            self.layouts[node] = lay
            return
        idx = node.args[1]
        idx = idx if isinstance(idx, tuple) else (idx,)
        ndim = len(shape)
        ok = lay.flat is None and None not in idx and sum(i is Ellipsis for i in idx) <= 1 and all(
            isinstance(i, (int, slice)) or i is Ellipsis for i in idx)
        if ok:  # spell the index out axis by axis; the spatial axes must be taken whole
            if Ellipsis in idx:
                k = idx.index(Ellipsis)
                idx = idx[:k] + (slice(None),) * (ndim - len(idx) + 1) + idx[k + 1:]
            idx = idx + (slice(None),) * (ndim - len(idx))
            ok = len(idx) == ndim and all(idx[a] == slice(None) for a in lay.spatial_axes(ndim))
        if ok:
            self.layouts[node] = lay
            return
        self.problem(node, "getitem", f"indexes a scrambled map with {node.args[1]!r}; only indexing of "
                     "batch/channel axes is supported")
        raise _Stop

    def cat_like(self, node: fx.Node, scr, op: str, dim: Any) -> None:
        if not scr:
            self.layouts[node] = None
            return
        lay = scr[0][1]
        ref = _shape(scr[0][0])
        ndim = len(ref) if ref is not None else 4
        d = dim + ndim if isinstance(dim, int) and dim < 0 else dim
        if not isinstance(d, int) or d in lay.spatial_axes(ndim) or (lay.flat is not None and d >= ndim - 1):
            self.problem(node, op, f"joins or splits a scrambled map along a spatial axis (dim={dim})")
            raise _Stop
        layouts = {lay2 for _, lay2 in scr}
        n_tensors = sum(1 for n in self.tensor_inputs(node) if _shape(n) is not None)
        if len(layouts) > 1 or len(scr) != n_tensors:
            self.problem(node, op, "joins maps of different layouts (scrambled and not, or different sizes)")
            raise _Stop
        self.layouts[node] = lay

    def transpose(self, node: fx.Node, scr, op: str, dims: list, is_permute: bool) -> None:
        """Axis moves: kept when the positions stay on the last two axes, or go channels-last and back."""
        if not scr:
            self.layouts[node] = None
            return
        lay = scr[0][1]
        ndim = len(_shape(node.args[0]) or ())
        if is_permute and len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = list(dims[0])
        norm = [d + ndim if isinstance(d, int) and d < 0 else d for d in dims]
        order: list[int] | None = None
        if all(isinstance(d, int) for d in norm):
            if is_permute and sorted(norm) == list(range(ndim)):
                order = norm
            elif not is_permute and len(norm) == 2:
                order = list(range(ndim))
                order[norm[0]], order[norm[1]] = order[norm[1]], order[norm[0]]
        if lay.flat is None and order is not None and ndim >= 3:
            hi, wi = lay.spatial_axes(ndim)
            where = (order.index(hi), order.index(wi))
            if where == (ndim - 2, ndim - 1):
                self.layouts[node] = Scrambled(lay.h, lay.w)
                return
            if where == (ndim - 3, ndim - 2):
                self.layouts[node] = Scrambled(lay.h, lay.w, channels_last=True)
                return
        self.problem(node, op, f"moves the spatial axes of a scrambled map (dims={dims})")
        raise _Stop

    def reduction(self, node: fx.Node, scr, op: str, dim: Any) -> None:
        if not scr:
            self.layouts[node] = None
            return
        lay = scr[0][1]
        ndim = len(_shape(node.args[0]) or ())
        if dim is None:
            self.layouts[node] = None  # reduces everything
            return
        dims = {d + ndim if d < 0 else d for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        spatial = set(lay.spatial_axes(ndim))
        if spatial <= dims:
            self.layouts[node] = None  # a reduction over all positions ignores their order
            return
        if not (spatial & dims):
            keepdim = node.kwargs.get("keepdim", len(node.args) > 2 and node.args[2])
            if keepdim or not any(d > max(spatial) for d in dims):
                self.passthrough(node, scr, op)  # positions stay where they were, counted from the right
                return
            if lay.channels_last and dims == {ndim - 1} and len(_shape(node) or ()) == ndim - 1:
                self.layouts[node] = Scrambled(lay.h, lay.w)  # (B, h, w, C) -> (B, h, w)
                return
        self.problem(node, op, f"reduces over only part of the spatial axes, or moves them (dim={dim})")
        raise _Stop


class _Stop(Exception):
    """Stops classifying one node after its problem was recorded."""


def analyze(gm: fx.GraphModule, *, mode: str, unscramble_outputs: bool = False) -> Analysis:
    """Classify every node of a traced, shape-propagated graph (see the module docstring).

    Args:
        gm: the traced model, shapes propagated (:func:`propagate_shapes`).
        mode: ``"features"`` or ``"deformable"``.
        unscramble_outputs: accept scrambled ``(B, C, H, W)`` maps among the
            outputs (listed in :attr:`Analysis.outputs`, to be un-scrambled
            before they are returned); otherwise each is a problem.
    """
    return _Analyzer(gm, mode, unscramble_outputs).run()
