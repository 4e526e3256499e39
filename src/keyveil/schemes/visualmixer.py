"""``visualmixer`` — VFE-guided adaptive window pixel shuffle (VisualMixer, DESIGN.md §3.4).

Every image is cut into a quadtree of square windows (Algorithm 1 of the
paper): tile it with the largest window side, take the median VFE ``m`` of
those tiles, keep a window whole if its VFE is ``<= m`` (flat regions get
large windows) and otherwise split it into four, down to the smallest side.
The pixels inside every window are then permuted uniformly at random; with
``channel_shuffle=True`` every channel gets its own permutation.

Two pure kernels do the work, both batched with no Python loop over pixels or
windows: :func:`quadtree_windows` (image -> :class:`WindowLayout`) and
:func:`shuffle_windows` (image + layout + randomness -> scrambled image).
Windows of one size across the whole batch are pulled out with one gather into
a ``(positions, windows)`` array and shuffled there by a Fisher–Yates shuffle
vectorized over all windows (the Python loop runs over the ``WS**2 - 1``
positions, each step a handful of whole-array ops), then written back with
one scatter.

Our readings (DESIGN.md §3.4): window sides are ``ws_min * 2**l`` (the
paper's powers of two when ``ws_min`` is one); a window that does not fit
inside the image at the right/bottom edge is clipped and its pixels are
shuffled among themselves; the median is the lower median of the top-level
windows' channel-mean VFE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch

from ..keys import Key
from ..metrics.bounds import ws_upper
from ..metrics.vfe import gradient_energy, window_sums
from .base import Nonce, Scheme, _fresh_generator, log2_factorial, per_image_uniform
from .convert import to_batch
from .errors import SchemeError
from .registry import register_scheme

__all__ = ["VisualMixer", "WindowLayout", "window_sizes", "quadtree_windows", "shuffle_windows"]


def window_sizes(ws_min: int, ws_max: int) -> tuple[int, ...]:
    """The window sides Algorithm 1 may use: ``ws_min * 2**l <= ws_max``, largest first.

    Examples:
        >>> window_sizes(2, 16)
        (16, 8, 4, 2)
        >>> window_sizes(3, 20)
        (12, 6, 3)
    """
    if ws_min < 1 or ws_max < ws_min:
        raise SchemeError(f"need 1 <= ws_min <= ws_max, got ws_min={ws_min}, ws_max={ws_max}")
    sizes = [ws_min]
    while sizes[-1] * 2 <= ws_max:
        sizes.append(sizes[-1] * 2)
    return tuple(reversed(sizes))


@dataclass(frozen=True)
class WindowLayout:
    """The windows chosen for a batch: one quadtree per image.

    Attributes:
        sizes: window sides, largest first.
        selected: one bool tensor per size, ``(B, ceil(H/s), ceil(W/s))``:
            true where a window of side ``s`` starts at ``(row*s, col*s)``.
        height, width: the image size (edge windows are clipped to it).
    """

    sizes: tuple[int, ...]
    selected: tuple[torch.Tensor, ...]
    height: int
    width: int

    @property
    def batch(self) -> int:
        return self.selected[0].shape[0]

    def counts(self) -> torch.Tensor:
        """``(B, len(sizes))``: how many windows of each size every image has."""
        return torch.stack([s.flatten(1).sum(1) for s in self.selected], dim=1)

    def size_map(self) -> torch.Tensor:
        """``(B, H, W)`` int64: the side of the window every pixel belongs to."""
        out = torch.zeros(self.batch, self.height, self.width, dtype=torch.int64,
                          device=self.selected[0].device)
        for s, sel in zip(self.sizes, self.selected):
            up = sel.repeat_interleave(s, 1).repeat_interleave(s, 2)[:, : self.height, : self.width]
            out += up.to(torch.int64) * s
        return out

    def boxes(self, index: int) -> list[tuple[int, int, int, int]]:
        """Image ``index``'s windows as ``(top, left, height, width)``, clipped to the image."""
        out = []
        for s, sel in zip(self.sizes, self.selected):
            for r, c in sel[index].nonzero().tolist():
                top, left = r * s, c * s
                out.append((top, left, min(s, self.height - top), min(s, self.width - left)))
        return out

    def shuffle_bits(self, channels: int = 1) -> torch.Tensor:
        """``(B,)`` float64: log2 of the number of outputs the shuffle can give each image.

        ``channels`` independent permutations per window (the channel count
        with ``channel_shuffle=True``, else 1).
        """
        total = torch.zeros(self.batch, dtype=torch.float64)
        for s, sel in zip(self.sizes, self.selected):
            areas = _areas(self.height, self.width, s)
            bits = torch.tensor([[log2_factorial(a) for a in row] for row in areas.tolist()],
                                dtype=torch.float64)
            total += (sel.cpu().to(torch.float64) * bits).flatten(1).sum(1)
        return total * channels


def _areas(h: int, w: int, s: int, device: torch.device | None = None) -> torch.Tensor:
    rows = torch.clamp(h - torch.arange(-(-h // s), device=device) * s, max=s)
    cols = torch.clamp(w - torch.arange(-(-w // s), device=device) * s, max=s)
    return rows[:, None] * cols[None, :]


def _planes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-summed squared differences of a batch (float32, any scale)."""
    b, c, h, w = x.shape
    xf = x.to(torch.float32) if x.dtype != torch.float64 else x
    dh, dv = gradient_energy(xf.reshape(b * c, h, w))
    return dh.view(b, c, h, w - 1).sum(1), dv.view(b, c, h - 1, w).sum(1)


def quadtree_windows(
    x: torch.Tensor, sizes: Sequence[int], *, min_level: torch.Tensor | None = None
) -> WindowLayout:
    """Algorithm 1: each image's windows between ``sizes[0]`` and ``sizes[-1]``.

    Args:
        x: ``(B,C,H,W)`` uint8 or float images.
        sizes: window sides, largest first, each half of the previous.
        min_level: optional ``(B,)`` int: image ``b`` never splits below
            ``sizes[min_level[b]]`` (its per-image lower bound).

    Returns:
        The :class:`WindowLayout`. Windows at each level are compared with the
        (lower) median channel-mean VFE of the image's top-level windows.
    """
    b, c, h, w = x.shape
    sizes = tuple(int(s) for s in sizes)
    if any(2 * sizes[i + 1] != sizes[i] for i in range(len(sizes) - 1)):
        raise SchemeError(f"window sizes must halve from level to level, got {sizes}")
    if len(sizes) == 1:
        sel = torch.ones(b, -(-h // sizes[0]), -(-w // sizes[0]), dtype=torch.bool, device=x.device)
        return WindowLayout(sizes, (sel,), h, w)
    dh, dv = _planes(x)
    selected = []
    active = None
    median = None
    for level, s in enumerate(sizes):
        nh, nw = -(-h // s), -(-w // s)
        if active is None:
            active = torch.ones(b, nh, nw, dtype=torch.bool, device=x.device)
        if level == len(sizes) - 1:
            final = active
        else:
            sums, areas = window_sums(dh, dv, s)
            energy = sums / areas  # channel-summed VFE; comparisons ignore the 1/C factor
            if median is None:
                median = energy.flatten(1).median(dim=1).values
            stop = energy <= median[:, None, None]
            if min_level is not None:
                stop |= (min_level.to(x.device) <= level)[:, None, None]
            final = active & stop
            split = active & ~final
            active = split.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, : -(-h // (s // 2)), : -(-w // (s // 2))]
        selected.append(final)
    return WindowLayout(sizes, tuple(selected), h, w)


def _fisher_yates_(d: torch.Tensor, u: torch.Tensor) -> None:
    """Shuffle every column of ``d`` ``(n, cols, g)`` in place along dim 0.

    ``u`` ``(n, cols)`` holds uniforms in [0, 1]: step ``t`` (``n-1`` down to 1)
    swaps row ``t`` with row ``floor(u[t] * (t+1))`` of each column — the
    Fisher–Yates shuffle run on all columns at once.
    """
    n, cols, g = d.shape
    for t in range(n - 1, 0, -1):
        j = (u[t] * (t + 1)).to(torch.int64).clamp_(max=t)
        idx = j.view(1, cols, 1).expand(1, cols, g)
        row = d[t].clone()
        d[t] = d.gather(0, idx)[0]
        d.scatter_(0, idx, row[None])


def _shuffle_valid(d: torch.Tensor, u: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Shuffle only the ``valid`` rows of each column of ``d`` (clipped edge windows)."""
    n = d.shape[0]
    pos = torch.arange(n, device=d.device, dtype=torch.float32)[:, None].expand_as(u)
    src = torch.where(valid, u.float(), 2.0 + pos).argsort(dim=0)  # valid rows, random order first
    dst = torch.where(valid, pos, n + pos).argsort(dim=0)  # valid rows in order first
    sigma = torch.empty_like(src).scatter_(0, dst, src)
    return d.gather(0, sigma[..., None].expand_as(d))


def shuffle_windows(
    x: torch.Tensor,
    layout: WindowLayout,
    *,
    channel_shuffle: bool = True,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Permute the pixels inside every window of ``layout``.

    Args:
        x: ``(B,C,H,W)`` images (any dtype; never modified).
        layout: the windows, e.g. from :func:`quadtree_windows`.
        channel_shuffle: one permutation per channel (else one per window,
            shared by its channels).
        generator: randomness source when ``uniforms`` is not given.
        uniforms: optional ``(B, C', Hp, Wp)`` uniforms in [0, 1] with
            ``C' = C`` (or 1 without ``channel_shuffle``) and ``Hp, Wp`` the
            image size rounded up to a multiple of ``layout.sizes[0]``: every
            image's permutations then depend only on its own uniforms.

    Returns:
        The scrambled batch, same shape, dtype and device.
    """
    b, c, h, w = x.shape
    top = layout.sizes[0]
    hp, wp = -(-h // top) * top, -(-w // top) * top
    if (hp, wp) == (h, w):
        out = x.clone(memory_format=torch.contiguous_format)
    else:
        out = x.new_zeros(b, c, hp, wp)
        out[:, :, :h, :w] = x
    cu = c if channel_shuffle else 1
    if uniforms is not None and tuple(uniforms.shape) != (b, cu, hp, wp):
        raise SchemeError(f"uniforms must have shape {(b, cu, hp, wp)}, got {tuple(uniforms.shape)}")
    gen = generator if generator is not None else (_fresh_generator() if uniforms is None else None)
    for s, sel in zip(layout.sizes, layout.selected):
        if s == 1 or b == 0:
            continue
        nh, nw = hp // s, wp // s
        sel_p = sel.new_zeros(b, nh, nw)
        sel_p[:, : sel.shape[1], : sel.shape[2]] = sel
        inside = torch.zeros(nh, nw, dtype=torch.bool, device=x.device)
        inside[: h // s, : w // s] = True
        blocks = out.view(b, c, nh, s, nw, s).permute(3, 5, 0, 2, 4, 1)  # (s, s, B, nh, nw, C)
        ublocks = None
        if uniforms is not None:
            ublocks = uniforms.reshape(b, cu, nh, s, nw, s).permute(3, 5, 0, 2, 4, 1)
        for clipped, mask in ((False, sel_p & inside), (True, sel_p & ~inside)):
            if not bool(mask.any()):
                continue
            d = blocks[:, :, mask]  # (s, s, K, C)
            k = d.shape[2]
            cols = k * cu
            d = d.reshape(s * s, cols, c // cu)
            if ublocks is not None:
                u = ublocks[:, :, mask].reshape(s * s, cols).to(torch.float32)
            else:
                u = torch.rand(s * s, cols, generator=gen, device=gen.device).to(x.device)
            if not clipped:
                _fisher_yates_(d, u)
            else:
                rows, cols_ = mask.nonzero()[:, 1:].unbind(1)
                dy = torch.arange(s, device=x.device).view(s, 1, 1)
                dx = torch.arange(s, device=x.device).view(1, s, 1)
                valid = ((rows * s + dy) < h) & ((cols_ * s + dx) < w)  # (s, s, K)
                valid = valid.reshape(s * s, k, 1).expand(s * s, k, cu).reshape(s * s, cols)
                d = _shuffle_valid(d, u, valid)
            blocks[:, :, mask] = d.view(s, s, k, c)
    if (hp, wp) != (h, w):
        out = out[:, :, :h, :w].contiguous()
    return out


@register_scheme
class VisualMixer(Scheme):
    """VisualMixer (VIM): per-image random pixel shuffle in VFE-guided windows.

    Args:
        key: optional; with a key, ``encrypt(x, nonce=...)`` is reproducible
            (same key and nonce give the same output, batched or not).
        ws_min: smallest window side (privacy floor, default 2).
        ws_max: largest window side (utility ceiling, default 8; rounded down
            to ``ws_min * 2**l``).
        window: a uniform window side instead of the adaptive quadtree (the
            plain window shuffle of the paper's Fig. 3); excludes the options above.
        target_vfe: per-image privacy target: each image's smallest window is
            raised to :func:`keyveil.metrics.ws_lower` for its own pixel
            variance (at ``confidence``, over the whole image); images that
            cannot reach it get ``ws_max``-sized windows only.
        delta_max: derive ``ws_max`` from :func:`keyveil.metrics.ws_upper`
            (Monte-Carlo, seed 0) instead of giving it.
        confidence: confidence for both bounds (default 0.95).
        channel_shuffle: one permutation per channel (default, as the paper).

    Examples:
        >>> import torch
        >>> from keyveil import Key, schemes
        >>> s = schemes.create("visualmixer", ws_min=2, ws_max=8)
        >>> x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        >>> y = s.encrypt(x)
        >>> y.shape, y.dtype
        (torch.Size([2, 3, 32, 32]), torch.uint8)
        >>> bool(torch.equal(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values))
        True
        >>> keyed = schemes.create("visualmixer", Key.from_seed(1))
        >>> bool(torch.equal(keyed.encrypt(x, nonce=[5, 6]), keyed.encrypt(x, nonce=[5, 6])))
        True
        >>> sorted(set(s.windows(x).sizes))
        [2, 4, 8]

    Notes:
        Shuffling keeps every window's multiset of values, so window
        histograms (and with ``channel_shuffle=False`` whole pixels) stay in
        the clear, and a learned inverse can be trained by anyone on public
        images, since no secret is involved. See SECURITY.md and
        ``keyveil.attacks``.
    """

    name = "visualmixer"
    description = "VFE-guided adaptive window pixel shuffle in space and per channel (VisualMixer)"
    invertible = False
    per_image = True
    needs_key = False

    def __init__(
        self,
        key: Key | None = None,
        *,
        ws_min: int | None = None,
        ws_max: int | None = None,
        window: int | None = None,
        target_vfe: float | None = None,
        delta_max: float | None = None,
        confidence: float = 0.95,
        channel_shuffle: bool = True,
    ) -> None:
        super().__init__(key)
        for label, v in (("ws_min", ws_min), ("ws_max", ws_max), ("window", window)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise SchemeError(f"{label} must be a positive int, got {v!r}")
        if not 0.0 < confidence < 1.0:
            raise SchemeError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
        if window is not None and any(v is not None for v in (ws_min, ws_max, target_vfe, delta_max)):
            raise SchemeError("window=... sets one uniform window size; do not combine it with "
                              "ws_min, ws_max, target_vfe or delta_max")
        if ws_max is not None and delta_max is not None:
            raise SchemeError("give either ws_max or delta_max (which derives ws_max), not both")
        if target_vfe is not None and target_vfe <= 0:
            raise SchemeError(f"target_vfe must be positive, got {target_vfe!r}")
        self.window = window
        self.target_vfe = None if target_vfe is None else float(target_vfe)
        self.delta_max = None if delta_max is None else float(delta_max)
        self.confidence = float(confidence)
        self.channel_shuffle = bool(channel_shuffle)
        if window is not None:
            self.ws_min = self.ws_max = window
        else:
            self.ws_min = 2 if ws_min is None else ws_min
            if ws_max is None:
                ws_max = 8 if delta_max is None else max(1, ws_upper(delta_max, confidence))
            if ws_max < self.ws_min:
                raise SchemeError(f"ws_max ({ws_max}) is below ws_min ({self.ws_min}); "
                                  "lower ws_min or raise ws_max/delta_max")
            self.ws_max = ws_max
        self.sizes = window_sizes(self.ws_min, self.ws_max)

    def params_dict(self) -> dict[str, Any]:
        return {
            "ws_min": self.ws_min,
            "ws_max": self.ws_max,
            "window": self.window,
            "target_vfe": self.target_vfe,
            "delta_max": self.delta_max,
            "confidence": self.confidence,
            "channel_shuffle": self.channel_shuffle,
        }

    def not_invertible_reason(self) -> str:
        return ("visualmixer shuffles with fresh per-image randomness and is used without decryption "
                "(models train on the shuffled images)")

    def _min_level(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per-image lowest level reaching ``target_vfe`` (DESIGN.md §3.4 lower bound)."""
        if self.target_vfe is None or len(self.sizes) == 1:
            return None
        b, c, h, w = x.shape
        xf = x.to(torch.float32) / (255.0 if x.dtype == torch.uint8 else 1.0)
        sigma2 = xf.flatten(2).var(dim=2, unbiased=False).mean(1)  # (B,)
        z = NormalDist().inv_cdf(self.confidence)
        sizes = torch.tensor(self.sizes, dtype=torch.float32, device=x.device)  # largest first
        windows = torch.clamp(torch.tensor([(h * w) // (s * s) for s in self.sizes],
                                           dtype=torch.float32, device=x.device), min=1)
        mean = 4 * sigma2[:, None] * (sizes - 1) / sizes
        std = (2 * sigma2[:, None] / sizes**2) * torch.sqrt(4 * sizes * (sizes - 1)) / windows.sqrt()
        ok = (mean - z * std) >= self.target_vfe  # (B, L), true for the large sizes first
        # the last level (smallest size) that still reaches the target; 0 if none does
        idx = torch.arange(len(self.sizes), device=x.device)
        return torch.where(ok, idx, torch.zeros_like(idx)).amax(dim=1)

    def windows(self, x: Any) -> WindowLayout:
        """The windows :meth:`encrypt` uses for ``x`` (they depend only on the image)."""
        batch, _ = to_batch(x)
        self._check_dtype(batch)
        return quadtree_windows(batch, self.sizes, min_level=self._min_level(batch))

    def _encrypt(self, x: torch.Tensor, *, generator: torch.Generator | None, nonce: Nonce | None) -> torch.Tensor:
        b, c, h, w = x.shape
        layout = quadtree_windows(x, self.sizes, min_level=self._min_level(x))
        uniforms = None
        if nonce is not None:
            top = self.sizes[0]
            hp, wp = -(-h // top) * top, -(-w // top) * top
            cu = c if self.channel_shuffle else 1
            uniforms = per_image_uniform(
                b, cu * hp * wp, label=f"visualmixer/shuffle/{cu}x{hp}x{wp}", key=self.key,
                generator=None, nonce=nonce, device=x.device,
            ).view(b, cu, hp, wp)
        return shuffle_windows(x, layout, channel_shuffle=self.channel_shuffle, generator=generator,
                               uniforms=uniforms)

    def key_space_bits(self, shape: Sequence[int]) -> float:
        """log2 of the shuffles one image can receive, for the smallest windows (a lower bound).

        Larger windows chosen by the quadtree only add to it; use
        ``windows(x).shuffle_bits(C)`` for the exact figure of given images.
        """
        c, h, w = (3, *shape) if len(shape) == 2 else tuple(shape)
        s = self.sizes[-1]
        areas = _areas(h, w, s).flatten().tolist()
        bits = sum(log2_factorial(a) for a in areas)
        return bits * (c if self.channel_shuffle else 1)
