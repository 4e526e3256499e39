"""Rewriting an analysed CNN graph so that it runs on scrambled feature maps (keyed ``features``/``deformable``).

Given the analysis (:func:`keyveil.models.analyzer.analyze`) and the key's
permutation for every map size, :func:`rewrite` edits the traced graph in place:

* every spatial node is replaced by the keyed layer its family's conversion
  (:func:`keyveil.models.rules.conversion_rule`) builds: in ``deformable``
  mode convolutions, pools and resizes that read and write scrambled maps by
  index; in ``features`` mode a strided 1×1 convolution that reads its input
  positions with one gather;
* otherwise (``features`` mode) the node reads an un-scrambled copy of its
  input (one gather, shared by the node's spatial consumers) and its output
  is scrambled again;
* both: a ``Linear`` fed by a flattened map gets the permutation folded into
  its columns, and every scrambled map the model returns is un-scrambled once
  before the output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx, nn

from ..schemes.functional import invert_permutation
from .errors import KeyedModelError
from .layers import FoldedLinear, PositionPermutation
from .layout import Analysis, Site, shape_of
from .rules import conversion_for

__all__ = ["rewrite"]

Permutation = Callable[[int, int], torch.Tensor]  # (h, w) -> the key's permutation of an h×w map


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def rewrite(gm: fx.GraphModule, result: Analysis, *, mode: str, perm: Permutation, kernel: str,
            device: torch.device) -> None:
    """Convert the spatial nodes, folds and outputs of ``result`` in ``gm`` (in place; see the module docstring)."""
    graph = gm.graph
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    serial = 0
    plain_copies: dict[fx.Node, fx.Node] = {}

    def new_name(stem: str) -> str:
        nonlocal serial
        serial += 1
        return f"keyveil_{stem}_{serial}"

    def place(node: fx.Node, module: nn.Module) -> None:
        if counts[node.target] > 1:  # a module called at several places gets one copy per call
            node.target = new_name(node.target.replace(".", "_"))
            gm.add_submodule(node.target, module)
        else:
            _set_module(gm, node.target, module)

    scrambled_of: dict[fx.Node, fx.Node] = {}  # features mode: a spatial node -> its scrambled output

    def swap(node: fx.Node, module: nn.Module, src: fx.Node) -> None:
        """Replace a call_function node by a call of ``module`` on ``src``."""
        name = new_name(str(node.name))
        gm.add_submodule(name, module)
        with graph.inserting_after(node):
            new = graph.call_module(name, (src,))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)

    for node in result.spatial:
        src = node.args[0]
        in_lay, out_lay = result.layouts.get(src), result.layouts.get(node)
        in_shape, out_shape = shape_of(src), shape_of(node)
        in_hw, out_hw = (in_shape[2], in_shape[3]), (out_shape[2], out_shape[3])
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        site = Site(mode, in_hw, out_hw, perm(*in_hw) if in_lay is not None else None,
                    perm(*out_hw) if out_lay is not None else None, kernel)
        convert = conversion_for(module if module is not None else node.target)
        new = None if convert is None else convert(module if module is not None else _fixed_resize(node, out_hw), site)
        if new is not None:
            if module is None:
                swap(node, new.to(device), src)
            else:
                place(node, new.to(device))
            continue
        if mode != "features":
            raise KeyedModelError(f"no {mode} conversion is registered for {node.format_node()} "
                                  "(keyveil.models.rules.conversion_rule); use mode='features'")
        if in_lay is not None:
            u = plain_copies.get(src)
            if u is None:  # one un-scrambled copy per scrambled map, shared by its spatial consumers
                name = new_name("unscramble")
                gm.add_submodule(name, PositionPermutation(invert_permutation(perm(*in_hw)), in_hw,
                                                          keep_format=False).to(device))
                with graph.inserting_after(src):
                    u = plain_copies[src] = graph.call_module(name, (src,))
                u.meta = dict(src.meta)
            node.replace_input_with(src, u)
        if out_lay is not None:
            name = new_name("scramble")
            gm.add_submodule(name, PositionPermutation(perm(*out_hw), out_hw, keep_format=False).to(device))
            with graph.inserting_after(node):
                s = graph.call_module(name, (node,))
            s.meta = dict(node.meta)
            result.layouts[s] = out_lay
            node.replace_all_uses_with(s, delete_user_cb=lambda user, s=s: user is not s)
            scrambled_of[node] = s
    for node in result.folds:
        lay = result.layouts[node.args[0]]
        place(node, FoldedLinear.fold(gm.get_submodule(node.target), perm(lay.h, lay.w), lay.flat))
    out_node = next((n for n in graph.nodes if n.op == "output"), None)
    for node in result.outputs:  # a map the model returns: un-scrambled once, at the end
        lay = result.layouts[node]
        name = new_name("output_unscramble")
        gm.add_submodule(name, PositionPermutation(invert_permutation(perm(lay.h, lay.w)), (lay.h, lay.w),
                                                      keep_format=False).to(device))
        value = scrambled_of.get(node, node)
        with graph.inserting_before(out_node):
            u = graph.call_module(name, (value,))
        u.meta = dict(node.meta)
        out_node.replace_input_with(value, u)


def _fixed_resize(node: fx.Node, out_hw: tuple[int, int]):
    """``F.interpolate``-like call of ``node`` as a function of its input alone (a computed size is fixed)."""
    fn = node.target
    args = list(node.args[1:])
    kwargs = dict(node.kwargs)
    if args and isinstance(args[0], fx.Node):
        args[0] = tuple(out_hw)
    if isinstance(kwargs.get("size"), fx.Node):
        kwargs["size"] = tuple(out_hw)

    def op(t: torch.Tensor) -> torch.Tensor:
        return fn(t, *args, **kwargs)

    return op
