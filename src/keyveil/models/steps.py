"""One node under analysis, and the layout transfers the rules apply to it.

A :class:`Step` is what a layout rule (:mod:`keyveil.models.rules`) gets:
the graph node, its module (for ``call_module`` nodes), the layouts of its
scrambled inputs, and the recorded shapes. A rule answers with one transfer:

* :meth:`Step.passthrough` — position-wise (activations, residual ``+``):
  the layout passes through; :meth:`Step.channelwise` (BatchNorm: along
  axis 1 of ``(B, C, H, W)`` maps only) and :meth:`Step.last_axis`
  (LayerNorm / ``Linear`` on channels-last maps) are the restricted kinds;
* :meth:`Step.spatial` — a convolution or pooling, wrapped by the keyed
  conversion; :meth:`Step.resize` — an interpolation, spatial in models that
  return maps; :meth:`Step.fold` — a ``Linear`` fed by a flattened map;
* :meth:`Step.flatten`, :meth:`Step.getitem`, :meth:`Step.cat_like`,
  :meth:`Step.transpose`, :meth:`Step.reduction` — reshapes, indexing,
  joins and splits, axis moves and reductions, kept when the positions stay
  whole and in order;
* :meth:`Step.set` — a layout decided by the rule (``None``: no spatial content);
* :meth:`Step.unknown` / :meth:`Step.reject` — a problem (the first only if a
  scrambled map comes in). Both record it and stop this node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from torch import fx, nn

from .errors import UnsupportedOp
from .layout import Analysis, Scrambled, module_path, shape_of, spatial_layout, tensor_leaves

__all__ = ["Step", "Rejected", "record_problem", "SPATIAL_FUNCTION_HINTS"]

SPATIAL_FUNCTION_HINTS = {
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


class Rejected(Exception):
    """Stops classifying one node after its problem was recorded."""


def record_problem(result: Analysis, node: fx.Node, op: str, reason: str) -> None:
    """Add an :class:`UnsupportedOp` for ``node``, named by its module path."""
    if node.op == "call_module":
        where = str(node.target)
    else:
        path = module_path(node)
        where = f"{path} ({node.name})" if path else node.name
    result.problems.append(UnsupportedOp(where, op, reason))


@dataclass
class Step:
    """One graph node under analysis (see the module docstring).

    Attributes:
        node: the node.
        module: the module a ``call_module`` node calls (``None`` otherwise).
        op: what it is, for messages (``"Conv2d"``, ``"torch.cat"``, ``"Tensor.view"``).
        scr: the node's scrambled inputs with their layouts.
        result: the analysis so far (layouts of earlier nodes, problems).
        mode: ``"features"`` or ``"deformable"``.
        dense: the model returns a map (resizes are then keyed).
        unscramble_outputs: maps the model returns are un-scrambled at the end.
    """

    node: fx.Node
    module: nn.Module | None
    op: str
    scr: list[tuple[fx.Node, Scrambled]]
    result: Analysis
    mode: str
    dense: bool
    unscramble_outputs: bool

    # -- reading the node ------------------------------------------------------
    @property
    def in_shape(self) -> tuple[int, ...] | None:
        return shape_of(self.node.args[0]) if self.node.args else None

    @property
    def out_shape(self) -> tuple[int, ...] | None:
        return shape_of(self.node)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """The node's argument at ``index`` or keyword ``name``."""
        args = self.node.args
        return args[index] if len(args) > index else self.node.kwargs.get(name, default)

    def tensor_inputs(self) -> list[fx.Node]:
        return tensor_leaves((self.node.args, self.node.kwargs))

    # -- outcomes ----------------------------------------------------------------
    def set(self, layout: Scrambled | None) -> None:
        """Give the node's value ``layout``."""
        self.result.layouts[self.node] = layout

    def reject(self, reason: str, *, op: str | None = None) -> NoReturn:
        """Record that this node cannot run on a scrambled map, and why; stops the node."""
        record_problem(self.result, self.node, self.op if op is None else op, reason)
        raise Rejected

    def unknown(self, op: str | None = None) -> None:
        """No rule knows this operation: a problem if a scrambled map comes in, else no layout."""
        if self.scr:
            op = self.op if op is None else op
            hint = next((v for k, v in SPATIAL_FUNCTION_HINTS.items() if op.lower().endswith(k)), None)
            self.reject(hint or "is not known to commute with a permutation of positions; "
                        "keyed models support convolutions, max/avg/adaptive pooling and position-wise ops", op=op)
        self.set(None)

    def single(self) -> Scrambled | None:
        """The one layout of the scrambled operands (``None`` if none); a problem if they disagree."""
        layouts = {lay for _, lay in self.scr}
        if len(layouts) > 1:
            self.reject("combines maps of different layouts " + ", ".join(map(str, layouts)))
        return layouts.pop() if layouts else None

    # -- position-wise -----------------------------------------------------------
    def passthrough(self) -> None:
        """Position-wise op: every operand with spatial content must carry the same layout."""
        lay = self.single()
        if lay is None:
            self.set(None)
            return
        out_shape = self.out_shape
        ndim = len(out_shape) if out_shape is not None else 4
        from_right = [a - ndim for a in lay.spatial_axes(ndim)]  # e.g. (-2, -1)
        for n in self.tensor_inputs():
            if self.result.layouts.get(n) is None:
                s = shape_of(n)
                if not s:
                    continue
                if any(len(s) >= -a and s[a] > 1 for a in from_right):
                    self.reject(f"combines a scrambled map with the unscrambled tensor {n.name} "
                                f"of shape {s} (a spatial constant?)")
        if out_shape is not None:
            if lay.flat is not None:
                ok = out_shape[-1] == lay.flat * lay.h * lay.w
            else:
                ok = len(out_shape) >= 3 and tuple(out_shape[a] for a in from_right) == (lay.h, lay.w)
            if not ok:
                self.reject(f"changes the spatial shape of a scrambled map to {out_shape}")
        self.set(lay)

    def channelwise(self) -> None:
        """Acts per channel along axis 1: position-wise on ``(B, C, H, W)`` maps only."""
        lay = self.single()
        if lay is not None and (lay.flat is not None or lay.channels_last):
            where = "a flattened map (its features are positions)" if lay.flat is not None else \
                "a channels-last map (axis 1 is a spatial axis there)"
            self.reject(f"normalizes or scales along axis 1 of {where}")
        self.passthrough()

    def last_axis(self, normalized: Any = None) -> None:
        """LayerNorm / Linear over the last axis: position-wise on channels-last maps."""
        lay = self.single()
        if lay is None:
            self.set(None)
            return
        if normalized is not None and len(tuple(normalized) if isinstance(normalized, (tuple, list, torch.Size))
                                         else (normalized,)) != 1:
            self.reject(f"normalizes over the axes {tuple(normalized)}, which include positions")
        if not lay.channels_last:
            self.reject("acts on the last axis, which is the width of a (B, C, H, W) map; permute "
                        "the map to channels-last (0, 2, 3, 1) first, as ConvNeXt does")
        self.passthrough()

    # -- spatial -------------------------------------------------------------------
    def spatial(self) -> None:
        """A convolution, pooling or resize: the keyed conversion wraps it (or makes it deformable)."""
        in_shape, out_shape = self.in_shape, self.out_shape
        if in_shape is None or out_shape is None or len(in_shape) != 4:
            self.reject("expects a (B,C,H,W) input")
        if self.scr and (self.scr[0][1].flat is not None or self.scr[0][1].channels_last):
            self.reject("applied to a flattened or channels-last map")
        self.result.spatial.append(self.node)
        lay = spatial_layout(out_shape)
        users = self.node.users
        if lay is not None and self.unscramble_outputs and users and all(u.op == "output" for u in users):
            lay = None  # the model returns this map: compute it in plain order straight away
        self.set(lay)

    def resize(self) -> None:
        """A resize (interpolation) is a fixed linear map of positions: spatial, in models that return a map."""
        if not self.scr:
            self.set(None)
            return
        if not self.dense:
            self.unknown()
            return
        node = self.node
        if node.op == "call_function":
            extra = tensor_leaves((node.args[2:], {k: v for k, v in node.kwargs.items() if k != "size"}))
            if extra or "input" in node.kwargs or not node.args:
                self.reject("a resize whose arguments other than the input and its size are computed "
                            "in the graph; pass them as constants")
        self.spatial()

    def fold(self) -> bool:
        """A ``Linear`` fed by one flattened scrambled map: the permutation folds into its columns.

        Returns whether it applied (``False``: the input is not such a map).
        """
        if self.scr and self.scr[0][1].flat is not None and len(self.scr) == 1:
            self.result.folds.append(self.node)
            self.set(None)
            return True
        return False

    # -- shapes and axes -------------------------------------------------------------
    def flatten(self) -> None:
        """A reshape: kept for ``(B, C, h, w) -> (B, C*h*w)`` and reshapes of the leading axes."""
        if not self.scr:
            self.set(None)
            return
        lay = self.scr[0][1]
        in_shape, out_shape = shape_of(self.node.args[0]), self.out_shape
        if in_shape is not None and out_shape is not None:
            if lay.flat is None and not lay.channels_last:
                if len(in_shape) == 4 and out_shape == (in_shape[0], in_shape[1] * in_shape[2] * in_shape[3]):
                    self.set(Scrambled(lay.h, lay.w, flat=in_shape[1]))
                    return
                if len(out_shape) >= 2 and out_shape[-2:] == in_shape[-2:] == (lay.h, lay.w):
                    self.set(lay)  # reshaping leading (batch/channel) axes only
                    return
            if lay.channels_last and len(out_shape) >= 3 and out_shape[-3:] == in_shape[-3:]:
                self.set(lay)  # leading axes only
                return
            if lay.flat is not None and out_shape == in_shape:
                self.set(lay)
                return
        self.reject(f"reshapes a scrambled map {in_shape} -> {out_shape} in a way that mixes "
                    "positions with other axes; only (B,C,h,w) -> (B,C*h*w) or channel-only reshapes work")

    def getitem(self) -> None:
        """Indexing: kept when the spatial axes are taken whole."""
        node = self.node
        if not self.scr:
            self.set(None)
            return
        lay = self.scr[0][1]
        shape = shape_of(node.args[0])
        if shape is None:  # an element of a chunk/split result
            self.set(lay)
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
            self.set(lay)
            return
        self.reject(f"indexes a scrambled map with {node.args[1]!r}; only indexing of "
                    "batch/channel axes is supported", op="getitem")

    def cat_like(self, dim: Any) -> None:
        """Joins (``cat``) or splits (``chunk``, ``split``) along ``dim``: kept off the spatial axes."""
        if not self.scr:
            self.set(None)
            return
        lay = self.scr[0][1]
        ref = shape_of(self.scr[0][0])
        ndim = len(ref) if ref is not None else 4
        d = dim + ndim if isinstance(dim, int) and dim < 0 else dim
        if not isinstance(d, int) or d in lay.spatial_axes(ndim) or (lay.flat is not None and d >= ndim - 1):
            self.reject(f"joins or splits a scrambled map along a spatial axis (dim={dim})")
        layouts = {lay2 for _, lay2 in self.scr}
        n_tensors = sum(1 for n in self.tensor_inputs() if shape_of(n) is not None)
        if len(layouts) > 1 or len(self.scr) != n_tensors:
            self.reject("joins maps of different layouts (scrambled and not, or different sizes)")
        self.set(lay)

    def transpose(self, dims: list, is_permute: bool) -> None:
        """Axis moves: kept when the positions stay on the last two axes, or go channels-last and back."""
        if not self.scr:
            self.set(None)
            return
        lay = self.scr[0][1]
        ndim = len(shape_of(self.node.args[0]) or ())
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
                self.set(Scrambled(lay.h, lay.w))
                return
            if where == (ndim - 3, ndim - 2):
                self.set(Scrambled(lay.h, lay.w, channels_last=True))
                return
        self.reject(f"moves the spatial axes of a scrambled map (dims={dims})")

    def reduction(self, dim: Any) -> None:
        """``mean``/``sum``/...: over all positions ends the layout; over other axes keeps it."""
        if not self.scr:
            self.set(None)
            return
        lay = self.scr[0][1]
        ndim = len(shape_of(self.node.args[0]) or ())
        if dim is None:
            self.set(None)  # reduces everything
            return
        dims = {d + ndim if d < 0 else d for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        spatial = set(lay.spatial_axes(ndim))
        if spatial <= dims:
            self.set(None)  # a reduction over all positions ignores their order
            return
        if not (spatial & dims):
            keepdim = self.node.kwargs.get("keepdim", len(self.node.args) > 2 and self.node.args[2])
            if keepdim or not any(d > max(spatial) for d in dims):
                self.passthrough()  # positions stay where they were, counted from the right
                return
            if lay.channels_last and dims == {ndim - 1} and len(self.out_shape or ()) == ndim - 1:
                self.set(Scrambled(lay.h, lay.w))  # (B, h, w, C) -> (B, h, w)
                return
        self.reject(f"reduces over only part of the spatial axes, or moves them (dim={dim})")
