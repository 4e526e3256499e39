"""VisualMixer's window-size bounds (docs/design.md §3.4, paper Sec. IV-B and IV-C).

Public as :mod:`keyveil.metrics.bounds`; it lives here because the scheme
derives ``ws_max`` from :func:`ws_upper`, and schemes never import metrics
(docs/design.md §1).

- :func:`ws_lower` (privacy): the smallest window side ``WS`` whose shuffled
  VFE reaches a target at a given confidence. If a window of side ``WS`` with
  pixel variance ``s2`` is fully shuffled, its pixels are ~i.i.d., each of the
  ``k = 2 WS (WS-1)`` squared differences inside it has mean ``2 s2``, and
  their sum over ``2 s2`` is ~chi-square with ``k`` degrees of freedom. So the
  window's VFE (sum over ``WS**2``) has mean ``4 s2 (WS-1)/WS``
  (:func:`expected_vfe`); confidence bounds use the normal approximation, as
  the paper does, with the exact variance by default (the paper's chi-square
  variance ignores that neighbouring differences share pixels, see
  :func:`vfe_std`).
- :func:`ws_upper` (utility): a Monte-Carlo estimate of the output bias that
  shuffling a window causes in a CNN's first block (3x3 conv with N(0,1)
  weights, then 2x2 max-pool); the largest power of two whose bias at the
  requested confidence stays within ``delta_max``.

Examples:
    >>> from keyveil.schemes.visualmixer.bounds import expected_vfe, ws_lower
    >>> round(expected_vfe(4, 0.05), 4)
    0.15
    >>> ws_lower(0.15, 0.05, confidence=0.5)
    4
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import torch
import torch.nn.functional as F

__all__ = ["expected_vfe", "vfe_std", "ws_lower", "shuffle_bias", "ws_upper"]


def expected_vfe(ws: int | float, sigma2: float) -> float:
    """Mean VFE of a fully shuffled ``ws x ws`` window of pixel variance ``sigma2``: ``4 s2 (WS-1)/WS``."""
    if ws < 1:
        raise ValueError(f"window size must be >= 1, got {ws!r}")
    return 4.0 * sigma2 * (ws - 1) / ws


def vfe_std(ws: int | float, sigma2: float, *, windows: int = 1, method: str = "exact") -> float:
    """Standard deviation of the mean VFE of ``windows`` independent shuffled windows.

    Args:
        ws: window side.
        sigma2: pixel variance.
        windows: how many independent windows are averaged.
        method: ``"exact"`` (default) is the exact variance for i.i.d. pixels:
            the ``E = 2 WS (WS-1)`` squared differences each have variance
            ``8 s2**2``, and two differences that share a pixel have covariance
            ``2 s2**2``. ``"chi2"`` is the paper's chi-square law, which treats
            the differences as independent (variance ``8 s2**2 E``) and so
            underestimates the spread by a factor 1.2 (WS=2) to 1.6 (large WS)
            **(our reading: we keep the paper's normal approximation but with
            the exact variance; tests check it against simulation)**.

    Examples:
        >>> round(vfe_std(8, 0.01, method="exact") / vfe_std(8, 0.01, method="chi2"), 3)
        1.518
    """
    if ws <= 1:
        return 0.0
    edges = 2.0 * ws * (ws - 1)
    var_sum = 8.0 * sigma2**2 * edges
    if method == "exact":
        inner = ws - 2
        pairs = 4 * 1 + 4 * inner * 3 + inner * inner * 6  # sum over pixels of C(degree, 2)
        var_sum += 4.0 * sigma2**2 * pairs
    elif method != "chi2":
        raise ValueError(f"method must be 'exact' or 'chi2', got {method!r}")
    return math.sqrt(var_sum) / ws**2 / math.sqrt(max(1, windows))


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    return float(confidence)


def ws_lower(
    target_vfe: float,
    sigma2: float,
    confidence: float = 0.95,
    *,
    pixels: int | None = None,
    max_ws: int = 1024,
    method: str = "exact",
) -> int:
    """The smallest window side whose shuffled VFE reaches ``target_vfe`` with probability ``confidence``.

    Args:
        target_vfe: the VFE to reach (on the ``[0, 1]`` intensity scale of
            :func:`~keyveil.schemes.visualmixer.vfe.vfe`).
        sigma2: pixel variance on the same scale (e.g. ``x.float().var()``
            for float images in ``[0, 1]``).
        confidence: probability that a shuffled window reaches the target
            (normal approximation of the chi-square law).
        pixels: if given, the bound is for the mean over an image of this many
            pixels (``pixels // WS**2`` independent windows, as the paper's
            Eq. 11-12); by default it holds for every single window.
        max_ws: the largest side to consider.
        method: the variance used, see :func:`vfe_std`.

    Returns:
        The window side (an int >= 2).

    Raises:
        ValueError: if no window up to ``max_ws`` reaches the target (the
            VFE of shuffled windows never exceeds ``4 * sigma2``).

    Examples:
        >>> ws_lower(0.1, 0.05, 0.95)
        7
        >>> ws_lower(0.1, 0.05, 0.95, method="chi2")  # the paper's narrower law
        5
        >>> ws_lower(0.1, 0.05, 0.95, pixels=224 * 224)  # image mean: less spread
        3
    """
    z = NormalDist().inv_cdf(_check_confidence(confidence))
    if sigma2 <= 0:
        raise ValueError(f"sigma2 must be positive, got {sigma2!r}")
    for ws in range(2, max_ws + 1):
        windows = 1 if pixels is None else max(1, pixels // (ws * ws))
        if expected_vfe(ws, sigma2) - z * vfe_std(ws, sigma2, windows=windows, method=method) >= target_vfe:
            return ws
    raise ValueError(
        f"no window up to {max_ws} px reaches VFE {target_vfe} at confidence {confidence} for pixel "
        f"variance {sigma2}: shuffled windows stay below 4*sigma2 = {4 * sigma2:.4g}; lower the target"
    )


def shuffle_bias(ws: int, *, trials: int = 2000, seed: int = 0) -> torch.Tensor:
    """Monte-Carlo samples of the output bias ``d`` that shuffling one window causes.

    Each trial draws an N(0,1) ``ws x ws`` window, a uniform permutation of it,
    and a 3x3 convolution kernel with N(0,1) weights (zero padding 1, so
    ``ws = 2`` works; **our reading**), applies conv + 2x2 max-pool to both,
    and records ``d = max |difference of the outputs|``.

    Returns:
        float64 tensor of ``trials`` samples; the same ``(ws, trials, seed)``
        always gives the same samples.
    """
    if ws < 2:
        raise ValueError(f"ws must be >= 2 to shuffle anything, got {ws!r}")
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(ws))
    x = torch.randn(trials, ws * ws, generator=gen, dtype=torch.float64)
    perm = torch.rand(trials, ws * ws, generator=gen).argsort(dim=1)
    xs = x.gather(1, perm)
    weight = torch.randn(trials, 9, generator=gen, dtype=torch.float64)
    pair = F.pad(torch.stack((x, xs)).view(2, trials, ws, ws), (1, 1, 1, 1))
    out = pair.new_zeros(2, trials, ws, ws)
    for k in range(9):  # 3x3 correlation, one kernel per trial
        dy, dx = divmod(k, 3)
        out += weight[:, k, None, None] * pair[:, :, dy : dy + ws, dx : dx + ws]
    out = F.max_pool2d(out, 2, ceil_mode=True).view(2, trials, -1)
    return (out[0] - out[1]).abs().amax(dim=1)


@lru_cache(maxsize=64)
def _bias_quantile(ws: int, confidence: float, trials: int, seed: int) -> float:
    return float(torch.quantile(shuffle_bias(ws, trials=trials, seed=seed), confidence))


def ws_upper(
    delta_max: float,
    confidence: float = 0.95,
    trials: int = 2000,
    *,
    seed: int = 0,
    max_ws: int = 64,
) -> int:
    """The largest power-of-two window whose shuffle bias stays within ``delta_max``.

    Args:
        delta_max: the largest tolerated output bias ``d`` (in units of the
            N(0,1) inputs, see :func:`shuffle_bias`).
        confidence: the quantile of ``d`` that must stay within ``delta_max``.
        trials: Monte-Carlo trials per window size.
        seed: the simulation seed; the result is deterministic given it.
        max_ws: the largest side to consider.

    Returns:
        The window side, a power of two; 1 (no shuffling) if even 2x2 windows
        exceed ``delta_max``.

    Examples:
        >>> ws_upper(1e-9)  # no tolerance: no shuffling
        1
        >>> ws_upper(100.0, max_ws=16)
        16
    """
    _check_confidence(confidence)
    if trials < 1:
        raise ValueError(f"trials must be a positive int, got {trials!r}")
    best = 1
    ws = 2
    while ws <= max_ws:
        if _bias_quantile(ws, float(confidence), int(trials), int(seed)) > delta_max:
            break
        best = ws
        ws *= 2
    return best
