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
    gather_linear2d,
    gather_pool2d,
    linear_taps,
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
    "DeformableResize",
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


def _symmetric_padding(
    in_hw: tuple[int, int], out_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
    start: tuple[int, int], dilation: tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int]]:
    """A symmetric padding for ``deform_conv2d`` that reads every tap, and the output grid it gives.

    ``start`` when the padding is symmetric; for asymmetric ("same") padding
    one more, whose grid may have one extra row or column (cropped after).
    """
    pads, grid = [], []
    for n, o, k, s, p, d in zip(in_hw, out_hw, kernel, stride, start, dilation):
        q = next(q for q in (p, p + 1) if (n + 2 * q - d * (k - 1) - 1) // s + 1 >= o)
        pads.append(q)
        grid.append((n + 2 * q - d * (k - 1) - 1) // s + 1)
    return (pads[0], pads[1]), (grid[0], grid[1])


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
        padding: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if kernel not in ("gather", "deform_conv2d"):
            raise ValueError(f"kernel must be 'gather' or 'deform_conv2d', got {kernel!r}")
        self.weight = conv.weight
        self.bias = conv.bias
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = _pair(conv.kernel_size)
        self.stride, self.dilation = _pair(conv.stride), _pair(conv.dilation)
        self.padding = _pair(conv.padding) if padding is None else _pair(padding)  # before the first row/column
        self.groups = conv.groups
        self.in_hw, self.out_hw = tuple(in_hw), tuple(out_hw)
        self.kernel = kernel
        rows = conv_window(in_hw[0], out_hw[0], self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0])
        cols = conv_window(in_hw[1], out_hw[1], self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1])
        taps = window_taps(rows, cols, self.in_hw, in_perm=in_perm, out_perm=out_perm)
        # deform_conv2d pads symmetrically: with asymmetric padding it runs on a grid one row/column larger
        # (offsets are relative to its sampling points, so the taps read are the same) and is cropped
        self.dc_padding, self.dc_grid = _symmetric_padding(self.in_hw, self.out_hw, self.kernel_size, self.stride,
                                                           self.padding, self.dilation)
        grid_taps = taps
        if self.dc_grid != self.out_hw:
            q = torch.arange(out_hw[0] * out_hw[1])
            cell = (q // out_hw[1]) * self.dc_grid[1] + q % out_hw[1]
            grid_taps = torch.full((self.dc_grid[0] * self.dc_grid[1], taps.shape[1]), in_hw[0] * in_hw[1])
            grid_taps[cell] = taps
        offset = taps_to_offsets(grid_taps, self.in_hw, self.dc_grid, self.kernel_size, self.stride,
                                 self.dc_padding, self.dilation)
        device = conv.weight.device
        self.register_buffer("taps", taps.to(device))
        self.register_buffer("offset", offset.to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_hw(x, self.in_hw, f"DeformableConv2d({self.in_channels}, {self.out_channels})")
        if self.kernel == "deform_conv2d":
            from torchvision.ops import deform_conv2d

            off = self.offset.expand(x.shape[0], -1, -1, -1)
            out = deform_conv2d(x, off.to(x.dtype), self.weight, self.bias, stride=self.stride,
                                padding=self.dc_padding, dilation=self.dilation)
            return out[..., : self.out_hw[0], : self.out_hw[1]]
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
        padding: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.in_hw, self.out_hw = tuple(in_hw), tuple(out_hw)
        self.pool_type = type(pool).__name__
        if isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            rows = adaptive_window(in_hw[0], out_hw[0])
            cols = adaptive_window(in_hw[1], out_hw[1])
        else:
            k, s = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
            p = _pair(pool.padding) if padding is None else _pair(padding)  # before the first row/column
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


class DeformableResize(KeyMaterial, nn.Module):
    """A resize (``F.interpolate`` / ``nn.Upsample``) from a scrambled map to a scrambled (or plain) map.

    A resize is a fixed linear map of positions, the same for every
    channel: each output cell is a weighted sum of a few input cells (4 for
    bilinear). Its taps and weights are read off the operator once
    (:func:`~keyveil.models.functional.linear_taps`), then re-indexed for the
    input's and output's permutations, so no map is un-scrambled.

    Args:
        op: the resize with its arguments fixed, ``(1, n, H, W) -> (1, n, Hout, Wout)``.
        in_hw, out_hw: the map sizes.
        in_perm, out_perm: the permutations of the input and output (``None``: plain order).
    """

    key_buffers = ("taps", "weights")

    def __init__(
        self, op, *, in_hw: tuple[int, int], out_hw: tuple[int, int], in_perm: torch.Tensor | None,
        out_perm: torch.Tensor | None, name: str = "resize",
    ) -> None:
        super().__init__()
        self.in_hw, self.out_hw, self.name = tuple(in_hw), tuple(out_hw), name
        taps, weights = linear_taps(op, self.in_hw, self.out_hw)
        n = in_hw[0] * in_hw[1]
        if out_perm is not None:  # scrambled output cell q is plain cell out_perm[q]
            taps, weights = taps[out_perm.cpu()], weights[out_perm.cpu()]
        if in_perm is not None:  # plain input position p is stored at inv[p]
            inv = torch.empty(n + 1, dtype=torch.long)
            inv[in_perm.cpu()] = torch.arange(n)
            inv[n] = n
            taps = inv[taps]
        self.register_buffer("taps", taps)
        self.register_buffer("weights", weights.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_hw(x, self.in_hw, f"DeformableResize({self.name})")
        return gather_linear2d(x, self.taps, self.weights, out_hw=self.out_hw)

    def extra_repr(self) -> str:
        return f"{self.name}, in_hw={self.in_hw}, out_hw={self.out_hw}, taps={self.taps.shape[1]}"
