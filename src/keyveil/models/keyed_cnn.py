"""Keyed CNNs: any traceable CNN, unchanged weights, run on ``pixel``-encrypted images (docs/design.md §4.1).

Three modes:

* ``input``: un-scramble once at the input, then the plain model.
* ``features``: every feature map stays scrambled with the key's permutation
  for its size (``feature/{h}x{w}``; the input size uses the pixel scheme's
  π). Each convolution or pooling becomes ``P_out(op(P_in⁻¹ x))``, the
  gathers running over channels-last rows (3-7x faster than plane by plane),
  so the maps are channels-last from the first gather on; a strided
  1×1 conv (ResNet shortcut) reads its input positions with one gather; 1×1 stride-1 unpadded convs,
  BatchNorm, activations, residual additions and channel concatenations act
  position-wise and are left alone (so do ConvNeXt's channels-last
  LayerNorm and ``Linear`` layers); a ``Linear`` fed by a flattened map gets
  the permutation folded into its columns; a resize in a model that returns
  maps is wrapped like a convolution, and every map the model returns is
  un-scrambled once at the end.
* ``deformable``: PrivDL's operator. Every convolution reads the scrambled
  input at precomputed integer offsets and writes the scrambled output
  (:class:`~keyveil.models.layers.DeformableConv2d`), pools gather their taps
  by index, resizes gather theirs with weights
  (:class:`~keyveil.models.layers.DeformableResize`); no feature map is ever
  un-scrambled, except the maps the model returns.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from ..keys import Key
from ..schemes.functional import invert_permutation
from ..schemes.pixel import pixel_permutation
from .analysis import Analysis, _shape, analyze, propagate_shapes, trace
from .errors import UnsupportedModelError
from .layers import (
    DeformableConv2d,
    DeformablePool2d,
    DeformableResize,
    FoldedLinear,
    KeyMaterial,
    PositionPermutation,
    StridedPointwiseConv2d,
)
from .library_layers import is_plain_forward, start_padding

__all__ = ["feature_permutation", "keyed_cnn", "InputUnscrambled", "PositionFlip", "unflip_input", "CNN_MODES"]

CNN_MODES = ("input", "features", "deformable")


def feature_permutation(key: Key, height: int, width: int, *, input_hw: tuple[int, int]) -> torch.Tensor:
    """The permutation ``P`` of a ``height×width`` feature map: scrambled ``[k]`` = plain ``[P[k]]``.

    The input resolution uses the pixel scheme's π, so an encrypted image is
    already a map scrambled the right way; other sizes use the key stream
    ``feature/{h}x{w}``.
    """
    if (height, width) == tuple(input_hw):
        return pixel_permutation(key, height, width)
    return key.permutation(f"feature/{height}x{width}", height * width)


class PositionFlip(KeyMaterial, nn.Module):
    """Undo ``pixel(negapos=True)``'s flips: ``v -> 1 - v`` where the mask is set (same positions per channel).

    Inputs are encrypted images in [0, 1]; the flip is affine (``offset + scale * v``),
    computed in one rounding like the scheme's own flip.
    """

    key_buffers = ("offset", "scale")

    def __init__(self, mask: torch.Tensor, hw: tuple[int, int]) -> None:
        super().__init__()
        m = mask.reshape(1, 1, *hw).float()
        self.register_buffer("offset", m)
        self.register_buffer("scale", 1 - 2 * m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.offset.to(x.dtype), x, self.scale.to(x.dtype))


def unflip_input(model: nn.Module, mask: torch.Tensor, hw: tuple[int, int]) -> nn.Module:
    """Put a :class:`PositionFlip` in front of a keyed CNN (in its graph, or in ``input`` mode's wrapper)."""
    flip = PositionFlip(mask, hw).to(next((b.device for b in model.buffers()), torch.device("cpu")))
    if isinstance(model, InputUnscrambled):
        model.flip = flip
        return model
    placeholder = next(n for n in model.graph.nodes if n.op == "placeholder")
    model.add_submodule("input_unflip", flip)
    with model.graph.inserting_after(placeholder):
        node = model.graph.call_module("input_unflip", (placeholder,))
    placeholder.replace_all_uses_with(node)
    node.args = (placeholder,)
    model.recompile()
    return model


class InputUnscrambled(KeyMaterial, nn.Module):
    """``input`` mode: ``model(unscramble(x))`` — the plain model behind one gather.

    The state dict holds the plain model's entries under ``model.`` plus the
    inverse permutation ``unscramble.index``.
    """

    def __init__(self, model: nn.Module, perm: torch.Tensor, hw: tuple[int, int]) -> None:
        super().__init__()
        self.unscramble = PositionPermutation(invert_permutation(perm), hw, keep_format=True)
        self.model = model
        self.flip: nn.Module | None = None  # set by unflip_input for pixel(negapos=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.unscramble(x if self.flip is None else self.flip(x)))

    def to_plain_state(self, prefix: str, state: dict) -> None:
        for name in list(state):
            if name.startswith(prefix + "model."):
                state[prefix + name[len(prefix) + 6:]] = state.pop(name)


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, (p.dtype if p.dtype.is_floating_point else torch.float32)
    return torch.device("cpu"), torch.float32


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def keyed_cnn(
    model: nn.Module,
    key: Key,
    *,
    mode: str,
    input_size: tuple[int, int, int],
    kernel: str = "gather",
) -> nn.Module:
    """Convert ``model`` (not modified) for ``pixel``-encrypted input of shape ``input_size``.

    Use :func:`keyveil.models.keyed`, which validates, self-checks and
    records the configuration; this function only builds.
    """
    c, h, w = input_size
    model = copy.deepcopy(model)
    perms: dict[tuple[int, int], torch.Tensor] = {}

    def perm(hh: int, ww: int) -> torch.Tensor:
        if (hh, ww) not in perms:
            perms[hh, ww] = feature_permutation(key, hh, ww, input_hw=(h, w))
        return perms[hh, ww]

    device, dtype = _device_dtype(model)
    if mode == "input":
        out = InputUnscrambled(model, perm(h, w), (h, w))
        out.unscramble.to(device)
        return out
    gm = trace(model)
    propagate_shapes(gm, torch.zeros(1, c, h, w, device=device, dtype=dtype))
    result = analyze(gm, mode=mode, unscramble_outputs=True)
    if result.problems:
        raise UnsupportedModelError(
            f"{type(model).__name__} cannot run on scrambled feature maps in mode {mode!r} "
            f"({len(result.problems)} problem(s)); mode='input' works for any model:",
            result.problems,
        )
    _rewrite(gm, result, mode=mode, perm=perm, kernel=kernel, device=device)
    gm.graph.lint()
    gm.recompile()
    return gm


def _rewrite(gm: fx.GraphModule, result: Analysis, *, mode: str, perm, kernel: str, device) -> None:
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
        in_shape, out_shape = _shape(src), _shape(node)
        in_hw, out_hw = (in_shape[2], in_shape[3]), (out_shape[2], out_shape[3])
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if mode == "features" and isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and (
            is_plain_forward(module) and start_padding(module, in_hw) == (0, 0)
        ):  # strided 1x1 conv: one gather straight from the scrambled input to the scrambled output
            in_perm = perm(*in_hw) if in_lay is not None else None
            out_perm = perm(*out_hw) if out_lay is not None else None
            place(node, StridedPointwiseConv2d(module, in_hw=in_hw, out_hw=out_hw, in_perm=in_perm,
                                               out_perm=out_perm))
            continue
        if mode == "features":
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
            continue
        in_perm = perm(*in_hw) if in_lay is not None else None
        out_perm = perm(*out_hw) if out_lay is not None else None
        if module is None or isinstance(module, nn.Upsample):  # a resize: F.interpolate or nn.Upsample
            new = DeformableResize(module if module is not None else _fixed_resize(node, out_hw), in_hw=in_hw,
                                   out_hw=out_hw, in_perm=in_perm, out_perm=out_perm,
                                   name=type(module).__name__ if module is not None else "interpolate")
            if module is None:
                swap(node, new.to(device), src)
            else:
                place(node, new.to(device))
            continue
        if isinstance(module, nn.Conv2d):
            new = DeformableConv2d(module, in_hw=in_hw, out_hw=out_hw, in_perm=in_perm, out_perm=out_perm,
                                   kernel=kernel, padding=start_padding(module, in_hw))
        else:
            pad = None if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) else \
                start_padding(module, in_hw)
            new = DeformablePool2d(module, in_hw=in_hw, out_hw=out_hw, in_perm=in_perm, out_perm=out_perm,
                                   padding=pad)
        place(node, new.to(device))
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
