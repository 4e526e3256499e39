"""Visual Feature Entropy (VFE), VisualMixer's visual-privacy metric (docs/design.md §3.4).

The kernel of :mod:`keyveil.metrics.vfe` (its public home): it lives here
because Algorithm 1 (:mod:`~keyveil.schemes.visualmixer.windows`) compares the
windows' :func:`window_sums`, and schemes never import metrics (docs/design.md §1).

For one channel ``I`` of a region ``R`` the gradient energy at a pixel is
``D(i,j) = (I(i,j+1) - I(i,j))**2 + (I(i+1,j) - I(i,j))**2``, where a
difference whose second pixel lies outside ``R`` counts as zero. ``VFE(R)`` is
the mean of ``D`` over the pixels of ``R``. The VFE of an image is
``beta`` times the mean of ``VFE(R)`` over its ``window x window`` regions
(stride = window) and over its channels.

Values are on the ``[0, 1]`` intensity scale: uint8 images are divided by 255
first, so an image and ``image.float() / 255`` have the same VFE.

Differences from the public VisualMixer code **(our reading)**: the public
code zero-pads each window before taking differences, which adds an artificial
edge term ``I(last)**2`` at every window border and makes the VFE of a flat
bright image large. Here differences are taken inside the region only, so a
flat image has VFE 0 and a fully shuffled window of i.i.d. pixels with
variance ``s2`` has expected VFE ``4 * s2 * (WS - 1) / WS`` (see
:func:`~keyveil.schemes.visualmixer.bounds.expected_vfe`). Windows at the
right and bottom edges that do not fit whole are clipped to the image and
averaged over their own area; every window weighs the same in the image mean.

Examples:
    >>> import torch
    >>> from keyveil.schemes.visualmixer.vfe import vfe, vfe_map
    >>> flat = torch.full((3, 28, 28), 200, dtype=torch.uint8)
    >>> vfe(flat).tolist()
    [0.0]
    >>> x = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # one 2x2 checkerboard channel
    >>> vfe_map(x, 2)  # 4 unit differences over 4 pixels
    tensor([[[1.]]])
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["vfe", "vfe_map", "gradient_energy", "window_sums"]


def _as_batch(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    x = torch.as_tensor(x)
    if x.dim() == 3:
        return x[None], True
    if x.dim() != 4:
        raise ValueError(f"expected an image (C,H,W) or a batch (B,C,H,W), got shape {tuple(x.shape)}")
    return x, False


def _to_float(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if x.dtype.is_floating_point:
        return x if x.dtype in (torch.float32, torch.float64) else x.float()
    raise ValueError(f"images must be uint8 (0..255) or floating (0..1), got {x.dtype}")


def _check_window(window: int) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int (pixels per side), got {window!r}")
    return window


def gradient_energy(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared horizontal and vertical neighbour differences of float planes.

    Args:
        x: float ``(N, H, W)``.

    Returns:
        ``(dh, dv)`` of shapes ``(N, H, W-1)`` and ``(N, H-1, W)``:
        ``dh[n,i,j] = (x[n,i,j+1] - x[n,i,j])**2``, ``dv[n,i,j] = (x[n,i+1,j] - x[n,i,j])**2``.
    """
    return (x[:, :, 1:] - x[:, :, :-1]).square_(), (x[:, 1:, :] - x[:, :-1, :]).square_()


def window_sums(dh: torch.Tensor, dv: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum ``D`` over every ``window x window`` region, dropping differences that leave it.

    Args:
        dh, dv: the outputs of :func:`gradient_energy` for ``(N, H, W)`` planes.
        window: region side; regions at the right/bottom edges are clipped.

    Returns:
        ``(sums, areas)``: ``sums`` of shape ``(N, ceil(H/window), ceil(W/window))``
        and the pixel count of every region, ``areas``, of shape
        ``(ceil(H/window), ceil(W/window))``.
    """
    n, h, w1 = dh.shape
    w = w1 + 1
    s = window
    nh, nw = -(-h // s), -(-w // s)
    keep_col, keep_row, areas = _window_constants(h, w, s, dh.dtype, dh.device)
    total = dh.new_empty(n, nh * s, nw * s)
    if dh.requires_grad:  # out= does not take part in autograd
        total[:, :h, :w1] = dh * keep_col
    else:
        torch.mul(dh, keep_col, out=total[:, :h, :w1])
    total[:, :h, w1:] = 0
    total[:, h:] = 0
    total[:, : h - 1, :w].addcmul_(dv, keep_row)
    sums = F.avg_pool2d(total[:, None], s, s, divisor_override=1)[:, 0]
    return sums, areas


@functools.lru_cache(maxsize=64)
def _window_constants(
    h: int, w: int, s: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks of the differences that stay inside their region, and every region's pixel count."""
    # A difference at in-region offset s-1 crosses into the next region: weight 0.
    keep_col = (torch.arange(1, w, device=device) % s != 0).to(dtype)
    keep_row = (torch.arange(1, h, device=device) % s != 0).to(dtype)[:, None]
    rows = torch.clamp(h - torch.arange(-(-h // s), device=device) * s, max=s)
    cols = torch.clamp(w - torch.arange(-(-w // s), device=device) * s, max=s)
    return keep_col, keep_row, (rows[:, None] * cols[None, :]).to(dtype)


def vfe_map(x: torch.Tensor, window: int = 14) -> torch.Tensor:
    """The VFE of every ``window x window`` region of every channel.

    Args:
        x: uint8 or float images ``(C,H,W)`` or ``(B,C,H,W)``.
        window: region side in pixels (stride = window); edge regions are clipped.

    Returns:
        ``(C, nh, nw)`` or ``(B, C, nh, nw)`` with ``nh = ceil(H/window)``,
        ``nw = ceil(W/window)``; float64 for float64 input, float32 otherwise.

    Examples:
        >>> import torch
        >>> vfe_map(torch.rand(2, 3, 28, 28), 14).shape
        torch.Size([2, 3, 2, 2])
    """
    window = _check_window(window)
    xb, single = _as_batch(x)
    _to_float(xb[:0])  # validates the dtype
    b, c, h, w = xb.shape
    dtype = torch.float64 if xb.dtype == torch.float64 else torch.float32
    if b * c == 0:
        out = torch.zeros(b, c, -(-h // window), -(-w // window), dtype=dtype, device=xb.device)
        return out[0] if single else out
    planes = xb.reshape(b * c, h, w)
    # ~1M values at a time: temporaries stay in cache and below the allocator's
    # mmap threshold, which is 3-5x faster on CPU than one pass over a large batch
    step = max(1, (1 << 20) // (h * w))
    parts = []
    for i in range(0, b * c, step):
        sums, areas = window_sums(*gradient_energy(_to_float(planes[i : i + step])), window)
        parts.append(sums / areas)
    out = torch.cat(parts).view(b, c, *areas.shape)
    return out[0] if single else out


def vfe(x: torch.Tensor, *, window: int = 14, beta: float = 1.0) -> torch.Tensor:
    """Visual Feature Entropy of each image: ``beta`` x mean VFE over windows and channels.

    Args:
        x: uint8 (0..255) or float (0..1) images ``(C,H,W)`` or ``(B,C,H,W)``.
        window: region side in pixels (default 14, as the paper).
        beta: the paper's scaling constant (default 1).

    Returns:
        A 1-D tensor with one value per image (length 1 for a single image).

    Examples:
        >>> import torch
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> x[..., ::2, ::2] = 1.0  # isolated bright pixels
        >>> vfe(x, window=4)  # 12 unit differences over 16 pixels
        tensor([0.7500])
        >>> bool(vfe(x.flip(-1), window=4) == vfe(x, window=4))
        True
    """
    m = vfe_map(x, window)
    m = m[None] if m.dim() == 3 else m
    return beta * m.flatten(1).mean(dim=1)
