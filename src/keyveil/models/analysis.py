"""Which operations of a traced CNN commute with a spatial permutation (the validator's core).

A model is traced with :mod:`torch.fx`, shapes are propagated on an example
input, and every value gets a *layout*: ``None`` (no spatial content, or a
1×1 map), ``Scrambled(h, w)`` (a map stored in the key's order for its size)
or ``Scrambled(h, w, flat=C)`` (such a map flattened to ``(B, C*h*w)``).
Every node is then classified:

* position-wise (BatchNorm, activations, residual ``+``, channel ``cat``,
  dropout, 1×1 stride-1 unpadded convs, channel reshapes): the layout passes through;
* spatial (``Conv2d``, max/avg pooling, adaptive pooling): wrapped or made deformable;
* permutation-invariant reductions (global pooling, ``mean`` over H and W): layout ends;
* ``Linear`` on a flattened scrambled map: its columns are permuted;
* anything else touching a scrambled map: an :class:`UnsupportedOp`.
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

__all__ = ["Scrambled", "Analysis", "trace", "analyze", "SPATIAL_MODULES"]


@dataclass(frozen=True)
class Scrambled:
    """A value holding a map of size ``h×w`` in the key's order (flattened if ``flat``)."""

    h: int
    w: int
    flat: int | None = None  # channel count when flattened to (B, C*h*w)


@dataclass
class Analysis:
    """The result of :func:`analyze`: layouts, actions and problems per node."""

    gm: fx.GraphModule
    layouts: dict[fx.Node, Scrambled | None] = field(default_factory=dict)
    spatial: list[fx.Node] = field(default_factory=list)  # conv / pool nodes to wrap
    folds: list[fx.Node] = field(default_factory=list)  # Linear nodes fed by a flat scrambled map
    problems: list[UnsupportedOp] = field(default_factory=list)


POSITIONWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm2d, nn.LocalResponseNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Threshold,
)
SPATIAL_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)

_ELEMENTWISE_FUNCTIONS: set[Any] = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd, operator.imul,
    torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid, torch.tanh, torch.clamp,
    torch.abs, torch.exp, torch.sqrt, torch.neg,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.sigmoid, F.tanh, F.softplus, F.dropout, F.dropout2d, F.batch_norm, F.group_norm,
}
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
    "interpolate": "resizes the map (interpolation mixes neighbours); resize the input before encrypting instead",
    "upsample": "resizes the map; resize the input before encrypting instead",
    "grid_sample": "samples at spatial coordinates",
    "pad": "pads the map at its borders",
    "pixel_shuffle": "moves values between positions",
    "pixel_unshuffle": "moves values between positions",
    "roll": "shifts positions (Swin-style windows)",
    "unfold": "extracts spatial windows",
    "fold": "assembles spatial windows",
    "conv2d": "functional convolution; use an nn.Conv2d module",
}


def _name(target: Any) -> str:
    if isinstance(target, str):
        return target
    mod = getattr(target, "__module__", None) or ""
    return f"{mod}.{getattr(target, '__name__', repr(target))}".lstrip(".")


def trace(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` with :func:`torch.fx.symbolic_trace`, with a clear error when it cannot."""
    try:
        return fx.symbolic_trace(model)
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


class _Analyzer:
    def __init__(self, gm: fx.GraphModule, mode: str) -> None:
        self.gm = gm
        self.mode = mode
        self.modules = dict(gm.named_modules())
        self.result = Analysis(gm)
        self.layouts = self.result.layouts

    # -- helpers ------------------------------------------------------------
    def problem(self, node: fx.Node, op: str, reason: str) -> None:
        self.result.problems.append(UnsupportedOp(str(node.target if node.op == "call_module" else node.name),
                                                  op, reason))

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        out: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n) or n)
        return out

    def scrambled_inputs(self, node: fx.Node) -> list[tuple[fx.Node, Scrambled]]:
        return [(n, lay) for n in self.tensor_inputs(node) if (lay := self.layouts.get(n)) is not None]

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
            for _n, lay in self.scrambled_inputs(node):
                self.problem(node, "output", f"the model returns a {lay.h}x{lay.w} feature map; keyed() "
                             "supports models whose outputs have no spatial dimensions (classifiers)")
            return
        scr = self.scrambled_inputs(node)
        if node.op == "call_module":
            self.visit_module(node, self.modules[node.target], scr)
        elif node.op == "call_function":
            self.visit_function(node, node.target, scr)
        elif node.op == "call_method":
            self.visit_method(node, node.target, scr)

    def passthrough(self, node: fx.Node, scr: list[tuple[fx.Node, Scrambled]], op: str) -> None:
        """Position-wise op: every operand with spatial content must carry the same layout."""
        layouts = {lay for _, lay in scr}
        if len(layouts) > 1:
            self.problem(node, op, "combines maps of different layouts " + ", ".join(map(str, layouts)))
            raise _Stop
        lay = layouts.pop() if layouts else None
        if lay is None:
            self.layouts[node] = None
            return
        out_shape = _shape(node)
        for n in self.tensor_inputs(node):
            if self.layouts.get(n) is None:
                s = _shape(n)
                if s is None or len(s) == 0:
                    continue
                if (lay.flat is None and len(s) >= 2 and s[-1] * s[-2] > 1) or (lay.flat is not None and s[-1] > 1):
                    self.problem(node, op, f"combines a scrambled map with the unscrambled tensor {n.name} "
                                 f"of shape {s} (a spatial constant?)")
                    raise _Stop
        if out_shape is not None:
            ok = out_shape[-2:] == (lay.h, lay.w) if lay.flat is None else out_shape[-1] == lay.flat * lay.h * lay.w
            if not ok:
                self.problem(node, op, f"changes the spatial shape of a scrambled map to {out_shape}")
                raise _Stop
        self.layouts[node] = lay

    def visit_module(self, node: fx.Node, m: nn.Module, scr: list[tuple[fx.Node, Scrambled]]) -> None:
        op = type(m).__name__
        in_shape, out_shape = _shape(node.args[0]) if node.args else None, _shape(node)
        if isinstance(m, nn.Conv2d):
            if m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding in ((0, 0), "valid"):
                self.passthrough(node, scr, op)
                return
            if self.mode == "deformable" and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
                self.problem(node, op, "deformable mode supports zero padding given as numbers only "
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
            self.spatial(node, scr, in_shape, out_shape, op)
            return
        if isinstance(m, POSITIONWISE_MODULES):
            self.passthrough(node, scr, op)
            return
        if isinstance(m, nn.Flatten):
            self.flatten(node, scr, op, m.start_dim, m.end_dim)
            return
        if isinstance(m, nn.Linear):
            if scr and scr[0][1].flat is not None and len(scr) == 1:
                self.result.folds.append(node)
                self.layouts[node] = None
                return
            if scr:
                self.problem(node, op, "a Linear applied to the last (width) axis of a scrambled map "
                             "mixes positions; flatten the map first")
                raise _Stop
            self.layouts[node] = None
            return
        self.unknown(node, op, scr)

    def spatial(self, node, scr, in_shape, out_shape, op) -> None:
        if in_shape is None or out_shape is None or len(in_shape) != 4:
            self.problem(node, op, "expects a (B,C,H,W) input")
            raise _Stop
        if scr and scr[0][1].flat is not None:
            self.problem(node, op, "applied to a flattened map")
            raise _Stop
        self.result.spatial.append(node)
        self.layouts[node] = _spatial_layout(out_shape)

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
        if lay.flat is None and in_shape is not None and out_shape is not None:
            if len(in_shape) == 4 and out_shape == (in_shape[0], in_shape[1] * in_shape[2] * in_shape[3]):
                self.layouts[node] = Scrambled(lay.h, lay.w, flat=in_shape[1])
                return
            if len(out_shape) >= 2 and out_shape[-2:] == in_shape[-2:] == (lay.h, lay.w):
                self.layouts[node] = lay  # reshaping leading (batch/channel) axes only
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
        if fn in _ELEMENTWISE_FUNCTIONS or getattr(fn, "__name__", "") == "stochastic_depth":
            self.passthrough(node, scr, op)
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
            self.transpose(node, scr, op, list(node.args[1:]), fn is torch.permute)
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
            self.transpose(node, scr, op, list(node.args[1:]), name == "permute")
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
        if _shape(src) is None:  # an element of a chunk/split result
            self.layouts[node] = lay
            return
        idx = node.args[1]
        idx = idx if isinstance(idx, tuple) else (idx,)
        ndim = len(_shape(src))
        keep = lay.flat is None and Ellipsis not in idx and None not in idx and len(idx) <= ndim - 2 and all(
            isinstance(i, (int, slice)) for i in idx
        )
        if keep:
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
        bad = not isinstance(d, int) or (d >= ndim - 2 if lay.flat is None else d >= ndim - 1)
        if bad:
            self.problem(node, op, f"joins or splits a scrambled map along a spatial axis (dim={dim})")
            raise _Stop
        layouts = {lay2 for _, lay2 in scr}
        n_tensors = sum(1 for n in self.tensor_inputs(node) if _shape(n) is not None)
        if len(layouts) > 1 or len(scr) != n_tensors:
            self.problem(node, op, "joins maps of different layouts (scrambled and not, or different sizes)")
            raise _Stop
        self.layouts[node] = lay

    def transpose(self, node: fx.Node, scr, op: str, dims: list, is_permute: bool) -> None:
        if not scr:
            self.layouts[node] = None
            return
        lay = scr[0][1]
        ndim = len(_shape(node.args[0]) or ())
        if is_permute and len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = list(dims[0])
        norm = [d + ndim if isinstance(d, int) and d < 0 else d for d in dims]
        if lay.flat is None and ndim >= 2:
            ok = (norm[-2:] == [ndim - 2, ndim - 1]) if is_permute else all(
                isinstance(d, int) and d < ndim - 2 for d in norm
            )
            if ok:
                self.layouts[node] = lay
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
        spatial = {ndim - 1} if lay.flat is not None else {ndim - 2, ndim - 1}
        if spatial <= dims:
            self.layouts[node] = None  # a reduction over all positions ignores their order
            return
        if not (spatial & dims):
            self.passthrough(node, scr, op)
            return
        self.problem(node, op, f"reduces over only part of the spatial axes (dim={dim})")
        raise _Stop


class _Stop(Exception):
    """Stops classifying one node after its problem was recorded."""


def analyze(gm: fx.GraphModule, *, mode: str) -> Analysis:
    """Classify every node of a traced, shape-propagated graph (see the module docstring)."""
    return _Analyzer(gm, mode).run()
