"""``visualmixer`` — VFE-guided adaptive window pixel shuffle (VisualMixer, docs/design.md §3.4).

Every image is cut into a quadtree of square windows (Algorithm 1 of the
paper): tile it with the largest window side, take the median VFE ``m`` of
those tiles, keep a window whole if its VFE is ``<= m`` (flat regions get
large windows) and otherwise split it into four, down to the smallest side.
The pixels inside every window are then permuted uniformly at random; with
``channel_shuffle=True`` every channel gets its own permutation.

Two pure kernels do the work, both batched with no Python loop over pixels or
windows: :func:`quadtree_windows` (image -> :class:`WindowLayout`) and
:func:`shuffle_windows` (image + layout + randomness -> scrambled image). On
CPU both run as compiled loops (numba), on other devices as torch ops; both
paths choose the same windows (for uint8 images) and make the same swaps from
the same random numbers.

Modules:

- :mod:`.windows`: window sides, :class:`WindowLayout`, Algorithm 1
  (:func:`quadtree_windows`) and the z-order geometry of the torch path; the
  readings of the paper (window sides, clipped edge windows, the median).
- :mod:`.shuffle`: :func:`shuffle_windows`, the Fisher–Yates helpers, the
  worker pool.
- :mod:`.scheme`: the :class:`VisualMixer` scheme (options, per-image VFE
  target, chunked batches).
- :mod:`.vfe`: the Visual Feature Entropy kernel (public as :mod:`keyveil.metrics.vfe`).
- :mod:`.bounds`: the window-size bounds ``ws_lower``/``ws_upper`` (public as
  :mod:`keyveil.metrics.bounds`).
- :mod:`._cpu`: the compiled CPU kernels; :mod:`._backend`: the switch between
  them and the torch ops.

The VFE and the bounds live here because the scheme needs them to choose its
windows, and data flows one way: :mod:`keyveil.metrics` imports schemes,
never the reverse (docs/design.md §1).
"""

from __future__ import annotations

from .scheme import VisualMixer
from .shuffle import shuffle_windows
from .windows import WindowLayout, quadtree_windows, window_sizes

__all__ = ["VisualMixer", "WindowLayout", "window_sizes", "quadtree_windows", "shuffle_windows"]
