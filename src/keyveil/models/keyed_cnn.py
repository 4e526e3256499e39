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
from torch import nn

from ..keys import Key
from ..schemes.functional import invert_permutation
from ..schemes.pixel import pixel_permutation
from .analyzer import analyze_model
from .convert import rewrite
from .errors import UnsupportedModelError
from .layers import KeyMaterial, PositionPermutation

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
    result = analyze_model(model, torch.zeros(1, c, h, w, device=device, dtype=dtype), mode=mode)
    gm = result.gm
    if result.problems:
        raise UnsupportedModelError(
            f"{type(model).__name__} cannot run on scrambled feature maps in mode {mode!r} "
            f"({len(result.problems)} problem(s)); mode='input' works for any model:",
            result.problems,
        )
    rewrite(gm, result, mode=mode, perm=perm, kernel=kernel, device=device)
    gm.graph.lint()
    gm.recompile()
    return gm
