"""The ``visualmixer`` scheme: VFE-guided adaptive window pixel shuffle (VisualMixer, docs/design.md §3.4).

:class:`VisualMixer` chooses every image's windows with
:func:`~keyveil.schemes.visualmixer.windows.quadtree_windows` (optionally
raising each image's smallest window to a VFE target) and shuffles the pixels
inside them with :func:`~keyveil.schemes.visualmixer.shuffle.shuffle_windows`,
from a generator or from keyed per-image uniforms (``nonce``).

A batch of 256K values or more is cut into an even number (at least two) of
balanced chunks of at most ~2M values (they stay in cache); on CPU the chunks
run on a lasting pool of ``torch.get_num_threads()`` threads (the kernels
release the GIL), each chunk with its own generator seeded in order, so the
output for a given generator does not depend on the thread count.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import torch

from ...keys import Key
from ..base import Nonce, Scheme, _fresh_generator, log2_factorial, per_image_uniform
from ..convert import to_batch
from ..errors import PrivacyWarning, SchemeError
from ..measured import VISUALMIXER_WEAK_WINDOWS
from ..registry import register_preset, register_scheme
from ._backend import _compiled_path
from .bounds import ws_upper
from .shuffle import _child_generator, _worker_pool, shuffle_windows
from .windows import WindowLayout, _areas, quadtree_windows, window_sizes

DEFAULT_WINDOW_FRACTION = 1.0
"""Default window side relative to the image's longer side: the only VisualMixer setting that kept
re-identification of AT&T faces by the glance attacker at or under 10 % (``keyveil experiment frontier``)."""

_CHUNK_VALUES = 1 << 21
_PARALLEL_VALUES = 1 << 18

__all__ = ["VisualMixer"]


@register_scheme
class VisualMixer(Scheme):
    """VisualMixer (VIM): per-image random pixel shuffle in VFE-guided windows.

    Args:
        key: optional; with a key, ``encrypt(x, nonce=...)`` is reproducible
            (same key and nonce give the same output, batched or not).
        ws_min: smallest window side in pixels (privacy floor; 2 when only
            ``ws_max``, ``target_vfe`` or ``delta_max`` is given).
        ws_max: largest window side (utility ceiling; rounded down to
            ``ws_min * 2**l``; 8 with ``ws_min`` alone, as the seed; with
            ``target_vfe`` alone it follows the image up to its longer side).
        window: a uniform window side instead of the adaptive quadtree (the
            plain window shuffle of the paper's Fig. 3); excludes the options above.
        target_vfe: per-image privacy target: each image's smallest window is
            raised to :func:`keyveil.metrics.ws_lower` for its own pixel
            variance (at ``confidence``, over the whole image); images that
            cannot reach it get ``ws_max``-sized windows only.
        delta_max: derive ``ws_max`` from :func:`keyveil.metrics.ws_upper`
            (Monte-Carlo, seed 0) instead of giving it.
        window_fraction: uniform windows of this fraction of the image's longer
            side (``ceil``), so one setting means the same at every resolution.
            **The default** when no size option is given is ``1.0``: one window
            over the whole image — the only setting that held re-identification
            of faces at or under 10 % (see Notes).
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
        **What the default buys, measured** (AT&T faces 112×92, 40 people,
        chance 2.5 %, plain photos 93.0 %; Fashion-MNIST small-CNN recipe):
        one window over the whole image is re-identified 9.5 % top-1 at a glance
        and 14.0 % by the worst attacker (``keyveil security-report``), but it drops
        Fashion-MNIST accuracy by 53.68 points (34.92 % against 88.60 %).
        Every smaller window keeps more accuracy and more identity: 1/2 of
        the side 13.5 % glance / 52.5 % adapted for a 23.91-point drop, 1/8
        87.5 % / 90.5 % for 5.75 points, the seed's 2..8 px (``visualmixer-seed``)
        93.0 % / 93.0 % for 3.62 points (``keyveil experiment frontier``,
        RESULTS.md). So **no VisualMixer setting both hides faces (≤ 10 %) and
        costs ≤ 10 points**; such settings raise :class:`~keyveil.schemes.PrivacyWarning`.
        A shuffle keeps every window's values, so window means (undone by
        pooling at the window size), histograms and with
        ``channel_shuffle=False`` whole pixels stay in the clear, and anyone
        can train a learned inverse on public images, since no secret is
        involved. See SECURITY.md and ``keyveil.attacks``.
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
        window_fraction: float | None = None,
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
        sized = any(v is not None for v in (ws_min, ws_max, window, target_vfe, delta_max))
        if window_fraction is not None:
            if sized:
                raise SchemeError("window_fraction=... sets uniform windows relative to the image; do not "
                                  "combine it with ws_min, ws_max, window, target_vfe or delta_max")
            if isinstance(window_fraction, bool) or not 0.0 < float(window_fraction) <= 1.0:
                raise SchemeError(f"window_fraction must be in (0, 1] (of the image's longer side), "
                                  f"got {window_fraction!r}")
        elif not sized:
            window_fraction = DEFAULT_WINDOW_FRACTION
        self.window_fraction = None if window_fraction is None else float(window_fraction)
        self._warned: set[tuple[int, int]] = set()
        self.window = window
        self.target_vfe = None if target_vfe is None else float(target_vfe)
        self.delta_max = None if delta_max is None else float(delta_max)
        self.confidence = float(confidence)
        self.channel_shuffle = bool(channel_shuffle)
        self.ws_min: int | None
        self.ws_max: int | None
        if self.window_fraction is not None:
            self.ws_min = self.ws_max = None
        elif window is not None:
            self.ws_min = self.ws_max = window
        else:
            self.ws_min = 2 if ws_min is None else ws_min
            if ws_max is None and delta_max is not None:
                ws_max = max(1, ws_upper(delta_max, confidence))
            elif ws_max is None and target_vfe is None:
                ws_max = 8
            if ws_max is not None and ws_max < self.ws_min:
                raise SchemeError(f"ws_max ({ws_max}) is below ws_min ({self.ws_min}); "
                                  "lower ws_min or raise ws_max/delta_max")
            self.ws_max = ws_max  # None: follows the image (target_vfe alone), up to its longer side
        self.sizes: tuple[int, ...] | None = (
            None if self.ws_min is None or self.ws_max is None else window_sizes(self.ws_min, self.ws_max))

    def sizes_for(self, h: int, w: int) -> tuple[int, ...]:
        """The window sides (largest first) used on ``h`` x ``w`` images.

        Examples:
            >>> from keyveil import schemes
            >>> schemes.create("visualmixer").sizes_for(112, 92)   # default: one window, the whole image
            (112,)
            >>> schemes.create("visualmixer", window_fraction=0.25).sizes_for(28, 28)
            (7,)
            >>> schemes.create("visualmixer", target_vfe=0.01).sizes_for(32, 32)
            (32, 16, 8, 4, 2)
        """
        if self.sizes is not None:
            return self.sizes
        side = max(int(h), int(w))
        if self.window_fraction is not None:
            return (max(1, math.ceil(self.window_fraction * side)),)
        levels = max(0, int(math.floor(math.log2(max(1, side // self.ws_min)))))
        return window_sizes(self.ws_min, self.ws_min * 2 ** levels)

    def _warn_if_weak(self, h: int, w: int, sizes: tuple[int, ...]) -> None:
        """Warn once per geometry when the smallest window is below the image side (faces stay recognizable)."""
        side = max(h, w)
        if sizes[-1] >= side or (h, w) in self._warned:
            return
        self._warned.add((h, w))
        warnings.warn(
            f"visualmixer: windows of {sizes[-1]} px on {h}x{w} images ({sizes[-1] / side:.2f} of the longer side) "
            f"leave people re-identifiable; {VISUALMIXER_WEAK_WINDOWS} Whole-image windows (the default, "
            "window_fraction=1) are the only setting that held it to <= 10 %.", PrivacyWarning, stacklevel=4)

    def params_dict(self) -> dict[str, Any]:
        return {
            "ws_min": self.ws_min,
            "ws_max": self.ws_max,
            "window": self.window,
            "target_vfe": self.target_vfe,
            "delta_max": self.delta_max,
            "window_fraction": self.window_fraction,
            "confidence": self.confidence,
            "channel_shuffle": self.channel_shuffle,
        }

    def not_invertible_reason(self) -> str:
        return ("visualmixer shuffles with fresh per-image randomness and is used without decryption "
                "(models train on the shuffled images)")

    def _min_level(self, x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor | None:
        """Per-image lowest level reaching ``target_vfe`` (docs/design.md §3.4 lower bound)."""
        if self.target_vfe is None or len(sizes) == 1:
            return None
        b, c, h, w = x.shape
        xf = x.to(torch.float32) / (255.0 if x.dtype == torch.uint8 else 1.0)
        sigma2 = xf.flatten(2).var(dim=2, unbiased=False).mean(1)  # (B,)
        z = NormalDist().inv_cdf(self.confidence)
        windows = torch.clamp(torch.tensor([(h * w) // (s * s) for s in sizes],
                                           dtype=torch.float32, device=x.device), min=1)
        side = torch.tensor(sizes, dtype=torch.float32, device=x.device)  # largest first
        mean = 4 * sigma2[:, None] * (side - 1) / side
        std = (2 * sigma2[:, None] / side**2) * torch.sqrt(4 * side * (side - 1)) / windows.sqrt()
        ok = (mean - z * std) >= self.target_vfe  # (B, L), true for the large sizes first
        # the last level (smallest size) that still reaches the target; 0 if none does
        idx = torch.arange(len(sizes), device=x.device)
        return torch.where(ok, idx, torch.zeros_like(idx)).amax(dim=1)

    def prepare(self, dtype: torch.dtype = torch.uint8) -> None:
        """Load (the first time: compile, ~4-8 s) the CPU kernels for ``dtype`` images."""
        side = 2 * (self.sizes or (8,))[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PrivacyWarning)
            self.encrypt(torch.zeros(1, 1, side, side, dtype=dtype), generator=torch.Generator().manual_seed(0))
        self._warned.discard((side, side))

    def windows(self, x: Any) -> WindowLayout:
        """The windows :meth:`encrypt` uses for ``x`` (they depend only on the image)."""
        batch, _ = to_batch(x)
        self._check_dtype(batch)
        sizes = self.sizes_for(*batch.shape[-2:])
        return quadtree_windows(batch, sizes, min_level=self._min_level(batch, sizes))

    def _encrypt(self, x: torch.Tensor, *, generator: torch.Generator | None, nonce: Nonce | None) -> torch.Tensor:
        x = x.detach()
        b, c, h, w = x.shape
        sizes = self.sizes_for(h, w)
        self._warn_if_weak(h, w, sizes)
        top = sizes[0]
        hp, wp = -(-h // top) * top, -(-w // top) * top
        cu = c if self.channel_shuffle else 1
        uniforms = None
        if nonce is not None:
            uniforms = per_image_uniform(
                b, cu * hp * wp, label=f"visualmixer/shuffle/{cu}x{hp}x{wp}", key=self.key,
                generator=None, nonce=nonce, device=x.device,
            ).view(b, cu, hp * wp)
        if generator is None and uniforms is None:
            generator = _fresh_generator()
        # Work in balanced chunks of at most ~2M values (the torch path's temporaries
        # stay small). From ~256K values on, the count is even (at least two), so
        # two cores share the work equally. The split depends only on the shape.
        values = b * c * hp * wp
        if values < _PARALLEL_VALUES or b == 1:
            return self._encrypt_chunk(x, sizes, generator, uniforms)
        chunks = max(2, -(-values // _CHUNK_VALUES))
        step = -(-b // min(b, chunks + chunks % 2))
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        starts = range(0, b, step)
        # Every chunk gets its own generator, seeded in order from ``generator``,
        # so the output does not depend on how the chunks are scheduled.
        gens = [None if uniforms is not None else _child_generator(generator) for _ in starts]

        def run(i: int, gen: torch.Generator | None) -> None:
            part = None if uniforms is None else uniforms[i : i + step]
            out[i : i + step] = self._encrypt_chunk(x[i : i + step], sizes, gen, part)

        workers = min(torch.get_num_threads(), len(starts)) if _compiled_path(x) else 1
        if workers > 1:
            list(_worker_pool(workers).map(run, starts, gens))
        else:
            for i, gen in zip(starts, gens):
                run(i, gen)
        return out

    def _encrypt_chunk(self, x: torch.Tensor, sizes: tuple[int, ...], generator: torch.Generator | None,
                       uniforms: torch.Tensor | None) -> torch.Tensor:
        layout = quadtree_windows(x, sizes, min_level=self._min_level(x, sizes))
        return shuffle_windows(x, layout, channel_shuffle=self.channel_shuffle, generator=generator,
                               uniforms=uniforms)

    def key_space_bits(self, shape: Sequence[int]) -> float:
        """log2 of the shuffles one image can receive, for the smallest windows (a lower bound).

        Larger windows chosen by the quadtree only add to it; use
        ``windows(x).shuffle_bits(C)`` for the exact figure of given images.
        """
        c, h, w = (3, *shape) if len(shape) == 2 else tuple(shape)
        s = self.sizes_for(h, w)[-1]
        areas = _areas(h, w, s).flatten().tolist()
        bits = sum(log2_factorial(a) for a in areas)
        return bits * (c if self.channel_shuffle else 1)


register_preset("visualmixer-seed", VisualMixer, "VisualMixer with the seed's fixed 2..8 px windows (faces stay "
                "recognizable: see keyveil schemes and SECURITY.md)", ws_min=2, ws_max=8)
