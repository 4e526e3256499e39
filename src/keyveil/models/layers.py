"""The modules a keyed CNN is made of: thin wrappers around :mod:`.functional`.

Every module that holds key-derived index tensors lists their names in
``key_buffers``; they are registered buffers, so ``.to(device)`` moves them
and ``state_dict`` carries them (see :func:`keyveil.models.save_keyed` to
save without them).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .functional import (
    _pair,
    adaptive_window,
    conv_window,
    gather_conv2d,
    gather_pool2d,
    permute_positions,
    pool_divisor,
    taps_to_offsets,
    window_taps,
)

__all__ = [
    "KeyMaterial",
    "PositionPermutation",
    "FoldedLinear",
    "StridedPointwiseConv2d",
    "DeformableConv2d",
    "DeformablePool2d",
]


class KeyMaterial:
    """Mixin: the module holds key-derived tensors named in ``key_buffers``."""

    key_buffers: ClassVar[tuple[str, ...]] = ()

    def to_plain_state(self, prefix: str, state: dict[str, Any]) -> None:
        """Turn this module's entries of ``state`` into the plain model's (drop key material)."""
        for name in self.key_buffers:
            state.pop(prefix + name, None)


def _check_hw(x: torch.Tensor, hw: tuple[int, int], what: str) -> None:
    if tuple(x.shape[-2:]) != hw:
        raise ValueError(
            f"{what} was built for {hw[0]}x{hw[1]} feature maps but got {x.shape[-2]}x{x.shape[-1]}: "
            "a keyed model works at the input_size it was converted for; convert again for another size"
        )


class PositionPermutation(KeyMaterial, nn.Module):
    """``y.flatten(-2)[..., k] = x.flatten(-2)[..., index[k]]``: scramble or unscramble a map.

    Args:
        index: the permutation of the ``h*w`` positions.
        hw: the map size it applies to.
        keep_format: return the input's memory format (else channels-last).
            Channels-last input is gathered by rows of C contiguous values (fastest).
    """

    key_buffers = ("index",)

    def __init__(self, index: torch.Tensor, hw: tuple[int, int], *, keep_format: bool = True) -> None:
        super().__init__()
        self.register_buffer("index", index.clone().long())
        self.hw = (int(hw[0]), int(hw[1]))
        self.keep_format = keep_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_hw(x, self.hw, "this keyed model")
        return permute_positions(x, self.index, keep_format=self.keep_format)

    def extra_repr(self) -> str:
        return f"hw={self.hw}"


class FoldedLinear(KeyMaterial, nn.Linear):
    """A ``Linear`` fed by a flattened scrambled map, with the permutation in its columns.

    ``weight[:, m] = plain_weight[:, column_index[m]]``, so
    ``folded(flatten(scrambled)) == plain(flatten(map))``.
    """

    key_buffers = ("column_index",)

    @classmethod
    def fold(cls, linear: nn.Linear, perm: torch.Tensor, channels: int) -> FoldedLinear:
        """Fold the map permutation ``perm`` (of ``h*w``) into ``linear``'s columns."""
        hw = perm.numel()
        if linear.in_features != channels * hw:
            raise ValueError(f"Linear expects {linear.in_features} features, the map has {channels}x{hw}")
        column = (torch.arange(channels)[:, None] * hw + perm.cpu()[None, :]).reshape(-1)
        new = torch.nn.utils.skip_init(cls, linear.in_features, linear.out_features, bias=linear.bias is not None,
                                       device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(linear.weight[:, column.to(linear.weight.device)])
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        new.register_buffer("column_index", column.to(linear.weight.device))
        new.train(linear.training)
        return new

    def to_plain_state(self, prefix: str, state: dict[str, Any]) -> None:
        w = state[prefix + "weight"]
        plain = torch.empty_like(w)
        plain[:, self.column_index.to(w.device)] = w
        state[prefix + "weight"] = plain
        super().to_plain_state(prefix, state)


class StridedPointwiseConv2d(KeyMaterial, nn.Module):
    """A 1×1 unpadded convolution with stride > 1 on scrambled maps: one gather, then a 1×1 conv.

    Such a convolution reads one input position per output position, so the
    un-scramble, the subsampling and the output scramble compose into a
    single gather of the (smaller) output grid; the ``features`` mode uses it
    for ResNet-style downsampling shortcuts. The parameters keep the plain
    ``Conv2d``'s names and shapes.
    """

    key_buffers = ("index",)

    def __init__(
        self, conv: nn.Conv2d, *, in_hw: tuple[int, int], out_hw: tuple[int, int], in_perm: torch.Tensor | None,
        out_perm: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.groups = conv.groups
        self.in_hw, self.out_hw = tuple(in_hw), tuple(out_hw)
        s = _pair(conv.stride)
        rows = conv_window(in_hw[0], out_hw[0], 1, s[0], 0, 1)
        cols = conv_window(in_hw[1], out_hw[1], 1, s[1], 0, 1)
        index = window_taps(rows, cols, self.in_hw, in_perm=in_perm, out_perm=out_perm)[:, 0]
        self.register_buffer("index", index.to(conv.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_hw(x, self.in_hw, "StridedPointwiseConv2d")
        sub = permute_positions(x, self.index, out_hw=self.out_hw)  # channels-last rows
        return torch.nn.functional.conv2d(sub, self.weight, self.bias, groups=self.groups)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, in_hw={self.in_hw}, out_hw={self.out_hw}"


class DeformableConv2d(KeyMaterial, nn.Module):
    """PrivDL's operator: a convolution that reads a scrambled map and writes a scrambled map.

    Equivalent to ``torchvision.ops.deform_conv2d`` with integer offsets (the
    ``offset`` buffer, batch dimension 1, expanded per call); by default it
    runs as a gather of the taps (``taps``) followed by one matmul, which is
    equal and much faster on CPU. ``kernel="deform_conv2d"`` runs torchvision's
    operator instead.

    The parameters keep the plain ``Conv2d``'s names and shapes.
    """

    key_buffers = ("taps", "offset")

    def __init__(
        self,
        conv: nn.Conv2d,
        *,
        in_hw: tuple[int, int],
        out_hw: tuple[int, int],
        in_perm: torch.Tensor | None,
        out_perm: torch.Tensor | None,
        kernel: str = "gather",
    ) -> None:
        super().__init__()
        if kernel not in ("gather", "deform_conv2d"):
            raise ValueError(f"kernel must be 'gather' or 'deform_conv2d', got {kernel!r}")
        self.weight = conv.weight
        self.bias = conv.bias
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = _pair(conv.kernel_size)
        self.stride, self.padding, self.dilation = _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation)
        self.groups = conv.groups
        self.in_hw, self.out_hw = tuple(in_hw), tuple(out_hw)
        self.kernel = kernel
        rows = conv_window(in_hw[0], out_hw[0], self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0])
        cols = conv_window(in_hw[1], out_hw[1], self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1])
        taps = window_taps(rows, cols, self.in_hw, in_perm=in_perm, out_perm=out_perm)
        offset = taps_to_offsets(taps, self.in_hw, self.out_hw, self.kernel_size, self.stride, self.padding,
                                 self.dilation)
        device = conv.weight.device
        self.register_buffer("taps", taps.to(device))
        self.register_buffer("offset", offset.to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_hw(x, self.in_hw, f"DeformableConv2d({self.in_channels}, {self.out_channels})")
        if self.kernel == "deform_conv2d":
            from torchvision.ops import deform_conv2d

            off = self.offset.expand(x.shape[0], -1, -1, -1)
            return deform_conv2d(x, off.to(x.dtype), self.weight, self.bias, stride=self.stride,
                                 padding=self.padding, dilation=self.dilation)
        return gather_conv2d(x, self.taps, self.weight, self.bias, out_hw=self.out_hw, groups=self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"in_hw={self.in_hw}, out_hw={self.out_hw}, kernel={self.kernel!r}")


class DeformablePool2d(KeyMaterial, nn.Module):
    """Max / average pooling (plain or adaptive) over a scrambled map, by index gather.

    Padding taps read ``-inf`` for max pooling and 0 for average pooling,
    whose divisors (``divisor`` buffer) reproduce PyTorch's for every window.
    """

    key_buffers = ("taps", "divisor")

    def __init__(
        self,
        pool: nn.Module,
        *,
        in_hw: tuple[int, int],
        out_hw: tuple[int, int],
        in_perm: torch.Tensor | None,
        out_perm: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.in_hw, self.out_hw = tuple(in_hw), tuple(out_hw)
        self.pool_type = type(pool).__name__
        if isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            rows = adaptive_window(in_hw[0], out_hw[0])
            cols = adaptive_window(in_hw[1], out_hw[1])
        else:
            k, s, p = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
            d = _pair(getattr(pool, "dilation", 1))
            rows = conv_window(in_hw[0], out_hw[0], k[0], s[0], p[0], d[0])
            cols = conv_window(in_hw[1], out_hw[1], k[1], s[1], p[1], d[1])
        taps = window_taps(rows, cols, self.in_hw, in_perm=in_perm, out_perm=out_perm)
        self.reduce = "max" if isinstance(pool, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) else "avg"
        self.register_buffer("taps", taps)
        divisor = None
        if self.reduce == "avg":
            count = (taps < in_hw[0] * in_hw[1]).sum(1)
            if isinstance(pool, nn.AvgPool2d):
                divisor = pool_divisor(pool, self.in_hw, out_perm, count)
            else:
                divisor = count.float()[:, None]
        self.register_buffer("divisor", divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_hw(x, self.in_hw, f"DeformablePool2d({self.pool_type})")
        return gather_pool2d(x, self.taps, out_hw=self.out_hw, reduce=self.reduce, divisor=self.divisor)

    def extra_repr(self) -> str:
        return f"{self.pool_type}, reduce={self.reduce!r}, in_hw={self.in_hw}, out_hw={self.out_hw}"
