"""Pure, batched kernels of keyed CNNs (no key handling here).

A feature map "scrambled with P" stores the value of original position
``P[k]`` at position ``k`` of the flattened ``(h, w)`` grid:
``y[b, c].flatten()[k] = x[b, c].flatten()[P[k]]``. Every kernel here takes the
index tables derived once at conversion and applies them with one gather
(``index_select`` over rows of ``C`` contiguous values, i.e. channels-last
memory) for the whole batch.

Examples:
    >>> import torch
    >>> x = torch.arange(8.0).view(1, 2, 2, 2)
    >>> p = torch.tensor([3, 0, 1, 2])
    >>> y = permute_positions(x, p)
    >>> y[0, 0].flatten().tolist()
    [3.0, 0.0, 1.0, 2.0]
    >>> inv = torch.argsort(p)
    >>> bool(torch.equal(permute_positions(y, inv), x))
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "permute_positions",
    "window_taps",
    "conv_window",
    "adaptive_window",
    "taps_to_offsets",
    "batch_rows_index",
    "gather_conv2d",
    "gather_pool2d",
    "pool_divisor",
    "linear_taps",
    "gather_linear2d",
]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``(B,C,H,W)`` -> ``(B*H*W, C)`` (a view when ``x`` is channels-last)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b * h * w, c)


def _from_rows(rows: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """``(B*H*W, C)`` -> a channels-last ``(B,C,H,W)`` view."""
    return rows.view(b, h, w, rows.shape[-1]).permute(0, 3, 1, 2)


def batch_rows_index(index: torch.Tensor, batch: int, rows_per_image: int, pad: int | None = None) -> torch.Tensor:
    """Flat row indices into ``(batch*rows_per_image [+1], C)`` for a per-image ``index``.

    ``index`` holds row numbers in ``[0, rows_per_image]``; the value
    ``rows_per_image`` (the padding tap) is mapped to ``pad`` (the extra last
    row) when ``pad`` is given.
    """
    offsets = torch.arange(batch, device=index.device).mul_(rows_per_image)
    flat = index.reshape(1, -1) + offsets[:, None]
    if pad is not None:
        flat = torch.where(index.reshape(1, -1) == rows_per_image, pad, flat)
    return flat.reshape(-1)


def permute_positions(
    x: torch.Tensor, index: torch.Tensor, *, keep_format: bool = False, out_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``y[b, c].flatten()[k] = x[b, c].flatten()[index[k]]`` for ``(B,C,H,W)`` maps.

    The gather runs over rows of ``C`` contiguous values (channels-last
    memory) and returns a channels-last tensor, unless ``keep_format`` asks
    for the input's memory format back (then a contiguous input is gathered
    plane by plane). ``index`` may also pick fewer positions than it has
    (a subsampling), arranged as ``out_hw``.

    Shape:
        x: ``(B, C, H, W)``; index: ``(Hout*Wout,)`` int64 (default ``(H*W,)``);
        returns ``(B, C, Hout, Wout)``.
    """
    b, c, h, w = x.shape
    hout, wout = (h, w) if out_hw is None else out_hw
    if keep_format and x.is_contiguous() and c > 1:
        return x.reshape(b * c, h * w).index_select(1, index).view(b, c, hout, wout)
    flat = batch_rows_index(index, b, h * w)
    return _from_rows(_rows(x).index_select(0, flat), b, hout, wout)


def conv_window(
    size_in: int, size_out: int, kernel: int, stride: int, padding: int, dilation: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input coordinates ``(size_out, kernel)`` read by a sliding window along one axis, and their validity."""
    pos = torch.arange(size_out)[:, None] * stride - padding + torch.arange(kernel)[None, :] * dilation
    return pos, (pos >= 0) & (pos < size_in)


def adaptive_window(size_in: int, size_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of adaptive pooling along one axis (PyTorch's start/end rule)."""
    i = torch.arange(size_out)
    start = (i * size_in) // size_out
    end = ((i + 1) * size_in + size_out - 1) // size_out
    k = int((end - start).max())
    pos = start[:, None] + torch.arange(k)[None, :]
    return pos, pos < end[:, None]


def window_taps(
    rows: tuple[torch.Tensor, torch.Tensor],
    cols: tuple[torch.Tensor, torch.Tensor],
    in_hw: tuple[int, int],
    *,
    in_perm: torch.Tensor | None,
    out_perm: torch.Tensor | None,
) -> torch.Tensor:
    """Where each tap of each scrambled output cell sits in the scrambled input.

    Args:
        rows: ``(Hout, Kh)`` input row of every window tap and its validity
            (from :func:`conv_window` or :func:`adaptive_window`); same for
            ``cols`` with ``(Wout, Kw)``.
        in_hw: the input map's ``(H, W)``.
        in_perm: the input's scrambling permutation (``None``: not scrambled).
        out_perm: the output's scrambling permutation (``None``: not scrambled).

    Returns:
        ``(Hout*Wout, Kh*Kw)`` int64: for output cell ``q`` (scrambled order)
        and tap ``t`` (row-major over the kernel), the flat position in the
        scrambled input, or ``H*W`` for a padding tap.
    """
    r, rv = rows
    c, cv = cols
    hout, wout = r.shape[0], c.shape[0]
    hin, win = in_hw
    o = torch.arange(hout * wout) if out_perm is None else out_perm.cpu()
    oi, oj = o // wout, o % wout
    rr, rrv = r[oi][:, :, None], rv[oi][:, :, None]  # (Q, Kh, 1)
    cc, ccv = c[oj][:, None, :], cv[oj][:, None, :]  # (Q, 1, Kw)
    inside = rrv & ccv
    flat = rr.clamp(0, hin - 1) * win + cc.clamp(0, win - 1)
    if in_perm is not None:
        inv = torch.empty_like(in_perm.cpu())
        inv[in_perm.cpu()] = torch.arange(hin * win)
        flat = inv[flat]
    return torch.where(inside, flat, hin * win).reshape(hout * wout, -1)


def taps_to_offsets(
    taps: torch.Tensor,
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """The integer offsets that make ``torchvision.ops.deform_conv2d`` read ``taps``.

    The regular sampling point of tap ``(u, v)`` for output cell ``(i, j)`` is
    ``(i*s - p + u*d, j*s - p + v*d)``; the offset moves it to the tap's
    location in the scrambled input, or far outside the map (sampled as 0)
    for a padding tap.

    Returns:
        ``(1, 2*Kh*Kw, Hout, Wout)`` float32, ``(dy, dx)`` pairs per tap.
    """
    hin, win = in_hw
    hout, wout = out_hw
    kh, kw = kernel
    q = torch.arange(hout * wout)
    qi, qj = q // wout, q % wout
    u = torch.arange(kh).repeat_interleave(kw) * dilation[0]
    v = torch.arange(kw).repeat(kh) * dilation[1]
    reg_y = qi[:, None] * stride[0] - padding[0] + u[None, :]
    reg_x = qj[:, None] * stride[1] - padding[1] + v[None, :]
    taps = taps.cpu()
    pad = taps == hin * win
    ty = torch.where(pad, -4 - max(hin, win), taps // win)
    tx = torch.where(pad, -4 - max(hin, win), taps % win)
    off = torch.stack((ty - reg_y, tx - reg_x), dim=-1)  # (Q, K, 2)
    return off.reshape(hout, wout, -1).permute(2, 0, 1).unsqueeze(0).float().contiguous()


def _padded_rows(x: torch.Tensor, fill: float) -> torch.Tensor:
    """Channels-last rows of ``x`` with one extra row of ``fill`` at the end."""
    rows = _rows(x)
    out = rows.new_empty(rows.shape[0] + 1, rows.shape[1])
    out[:-1] = rows
    out[-1] = fill
    return out


def gather_conv2d(
    x: torch.Tensor,
    taps: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    out_hw: tuple[int, int],
    groups: int = 1,
    chunk_rows: int = 1 << 22,
) -> torch.Tensor:
    """A convolution whose taps are read by index: im2col by gather, then one matmul.

    Equals ``torchvision.ops.deform_conv2d`` with the integer offsets of
    :func:`taps_to_offsets` (tested), and runs much faster on CPU.

    Shape:
        x: ``(B, Cin, H, W)``; taps: ``(Hout*Wout, Kh*Kw)`` from
        :func:`window_taps`; weight: ``(Cout, Cin/groups, Kh, Kw)``; returns a
        channels-last ``(B, Cout, Hout, Wout)``.
    """
    b, cin, h, w = x.shape
    hout, wout = out_hw
    q, k = taps.shape
    cout = weight.shape[0]
    cg, og = cin // groups, cout // groups
    rows = _padded_rows(x, 0.0)
    index = batch_rows_index(taps, b, h * w, pad=b * h * w)
    out = x.new_empty(b * q, cout)
    if groups == 1:
        wmat = weight.permute(0, 2, 3, 1).reshape(cout, k * cin).t()
    elif cg == 1 and og == 1:
        wmat = weight.reshape(cout, k).t()  # depthwise: (K, C)
    else:
        wmat = weight.view(groups, og, cg, k).permute(0, 3, 2, 1).reshape(groups, k * cg, og)
    step = max(1, chunk_rows // max(1, k * cin))  # output rows per chunk
    for start in range(0, b * q, step):
        stop = min(b * q, start + step)
        cols = rows.index_select(0, index[start * k : stop * k])  # ((stop-start)*K, Cin)
        n = stop - start
        if groups == 1:
            res = cols.view(n, k * cin).matmul(wmat)
        elif cg == 1 and og == 1:
            res = (cols.view(n, k, cin) * wmat).sum(1)
        else:
            g = cols.view(n, k, groups, cg).permute(2, 0, 1, 3).reshape(groups, n, k * cg)
            res = torch.bmm(g, wmat).permute(1, 0, 2).reshape(n, cout)
        if bias is not None:
            res = res.add_(bias)
        out[start:stop] = res
    return _from_rows(out, b, hout, wout)


def gather_pool2d(
    x: torch.Tensor,
    taps: torch.Tensor,
    *,
    out_hw: tuple[int, int],
    reduce: str,
    divisor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Max or average pooling whose window taps are read by index.

    Padding taps read ``-inf`` for ``reduce="max"`` and 0 for ``"avg"``;
    average sums are divided by ``divisor`` (``(Hout*Wout, 1)``, PyTorch's
    own divisor per window, padding and ceil mode included).

    Shape:
        x: ``(B, C, H, W)``; taps: ``(Hout*Wout, K)``; returns a channels-last
        ``(B, C, Hout, Wout)``.
    """
    b, c, h, w = x.shape
    hout, wout = out_hw
    q, k = taps.shape
    rows = _padded_rows(x, float("-inf") if reduce == "max" else 0.0)
    index = batch_rows_index(taps, b, h * w, pad=b * h * w)
    g = rows.index_select(0, index).view(b * q, k, c)
    if reduce == "max":
        out = g.amax(1)
    else:
        out = g.sum(1).view(b, q, c).div_(divisor).view(b * q, c)
    return _from_rows(out, b, hout, wout)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(a) for a in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def pool_divisor(
    pool: torch.nn.AvgPool2d, in_hw: tuple[int, int], out_perm: torch.Tensor | None, count: torch.Tensor,
) -> torch.Tensor:
    """PyTorch's divisor for every (scrambled) output window of an ``AvgPool2d``.

    Found by pooling a map of ones with ``pool`` itself: the result is
    ``count / divisor``, with ``count`` the number of taps inside the map, so
    padding (timm's dynamic SAME padding too), ceil mode and
    ``divisor_override`` are all honoured.
    """
    ones = torch.ones(1, 1, *in_hw, dtype=torch.float64)
    ratio = pool(ones).flatten()  # the module itself: timm's SAME-padded pools pad their own way
    if out_perm is not None:
        ratio = ratio[out_perm.cpu()]
    div = torch.where(ratio > 0, count.double() / ratio.clamp_min(1e-300), 1.0).round()
    return div.float()[:, None]


def linear_taps(
    op, in_hw: tuple[int, int], out_hw: tuple[int, int], *, chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The taps and weights of a spatial op that is linear and the same for every channel (a resize).

    ``op`` maps ``(1, n, H, W)`` to ``(1, n, Hout, Wout)`` channel by channel
    (``F.interpolate`` with fixed arguments, ``nn.Upsample``); it is probed
    in float64 with one-hot maps, ``chunk`` input positions at a time, so
    every mode (nearest, bilinear, bicubic, area, antialiasing) is read off
    the operator itself.

    Returns:
        ``taps`` ``(Hout*Wout, K)`` int64 (input positions, ``H*W`` = no tap)
        and ``weights`` ``(Hout*Wout, K)`` float64, in plain (unscrambled)
        order: ``op(x)[o] = sum_k weights[o, k] * x[taps[o, k]]``.
    """
    h, w = in_hw
    q = out_hw[0] * out_hw[1]
    src, dst, val = [], [], []
    for start in range(0, h * w, chunk):
        n = min(chunk, h * w - start)
        probe = torch.zeros(1, n, h * w, dtype=torch.float64)
        probe[0, torch.arange(n), start + torch.arange(n)] = 1.0
        out = op(probe.view(1, n, h, w))
        if tuple(out.shape[-2:]) != tuple(out_hw):
            raise ValueError(f"the resize gives {tuple(out.shape[-2:])} maps on its probe, expected {out_hw}")
        res = out.reshape(n, q)
        i, o = res.nonzero(as_tuple=True)
        src.append(i + start)
        dst.append(o)
        val.append(res[i, o])
    src_t, dst_t, val_t = torch.cat(src), torch.cat(dst), torch.cat(val)
    order = torch.argsort(dst_t, stable=True)
    src_t, dst_t, val_t = src_t[order], dst_t[order], val_t[order]
    counts = torch.bincount(dst_t, minlength=q)
    k = max(1, int(counts.max()))
    slot = torch.arange(dst_t.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    taps = torch.full((q, k), h * w, dtype=torch.long)
    weights = torch.zeros(q, k, dtype=torch.float64)
    taps[dst_t, slot] = src_t
    weights[dst_t, slot] = val_t
    return taps, weights


def gather_linear2d(
    x: torch.Tensor, taps: torch.Tensor, weights: torch.Tensor, *, out_hw: tuple[int, int],
    chunk_rows: int = 1 << 22,
) -> torch.Tensor:
    """``y[b, c, q] = sum_k weights[q, k] * x[b, c, taps[q, k]]``: a resize read by index.

    Shape:
        x: ``(B, C, H, W)``; taps, weights: ``(Hout*Wout, K)`` (a tap equal to
        ``H*W`` reads 0); returns a channels-last ``(B, C, Hout, Wout)``.
    """
    b, c, h, w = x.shape
    q, k = taps.shape
    rows = _padded_rows(x, 0.0)
    index = batch_rows_index(taps, b, h * w, pad=b * h * w)
    wts = weights.to(x.dtype).unsqueeze(-1)  # (Q, K, 1)
    out = x.new_empty(b * q, c)
    step = max(1, chunk_rows // max(1, k * c))  # output rows per chunk
    for start in range(0, b * q, step):
        stop = min(b * q, start + step)
        cols = rows.index_select(0, index[start * k: stop * k]).view(stop - start, k, c)
        cell = torch.arange(start, stop, device=x.device) % q
        out[start:stop] = (cols * wts[cell]).sum(1)
    return _from_rows(out, b, *out_hw)
