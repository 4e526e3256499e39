"""Every figure of the report with its trial count and 95 % interval, computed once for every section.

:func:`calibrate` reads a finished :class:`~keyveil.attacks.scenarios.Scenario`
— its metrics, its pictures (originals / encrypted / recovered) and the
per-trial values an attack keeps in ``details`` — and returns the section's
figures as :class:`Calibrated` (a :class:`~keyveil.metrics.intervals.Rate` with
its Wilson interval, or a :class:`~keyveil.metrics.intervals.Score` with its
bootstrap interval), so the section functions of :mod:`.runner` need not change:

- fractions of key units recovered: Wilson over the key's units (values, or
  nibbles for LE/ELE; positions for a chain's keyed step, up to their cell);
  images decrypted bit-exactly: Wilson over the test images;
- ciphertext-only on block schemes: Wilson over the key's blocks (the shared-key
  jigsaw) or the test images' nibbles (LE/ELE template matching);
- neighbour / direct accuracy: Wilson over the grid's edges (ciphertext-only)
  or the images' blocks and block edges (jigsaw);
- re-identification: Wilson over the probes (over the recovered clusters for InstaHide);
- SSIM / PSNR: bootstrap over images, from per-image values the scenario's
  pictures give (used only when their mean reproduces the attack's own figure)
  or that the attack kept (``details["per_image"]``);
- membership AUC / advantage: bootstrap over members and non-members
  (``details["member_scores"]`` / ``details["nonmember_scores"]``).

Intervals over one key's units or one image's edges treat them as independent
trials; they say how precisely this run measured the rate, not how it varies
between keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...metrics.intervals import Rate, Score, advantage_interval, auc_interval
from ...metrics.quality import psnr, ssim
from ..base import AttackError
from ..scenarios import Scenario

__all__ = ["Calibrated", "calibrate", "describe", "KEY_SECTIONS"]

KEY_SECTIONS = ("chosen-plaintext", "known-plaintext", "key-from-model")
"""Sections whose figure is the fraction of a fixed key recovered."""


@dataclass(frozen=True)
class Calibrated:
    """One figure of a row: what it counts, its estimate with interval, and its trials' unit."""

    label: str
    estimate: Rate | Score
    unit: str
    digits: int = 3

    @property
    def low(self) -> float:
        return self.estimate.low

    @property
    def high(self) -> float:
        return self.estimate.high

    @property
    def value(self) -> float:
        return self.estimate.value

    def describe(self) -> str:
        e = self.estimate
        body = e.describe(self.unit) if isinstance(e, Rate) else e.describe(self.digits, self.unit)
        return f"{self.label} {body}"


def describe(figures: dict[str, Calibrated]) -> str:
    """The figures of a row, main figure first, ``;``-separated ("" for none)."""
    return "; ".join(c.describe() for c in figures.values())


def _rate(fraction: float, trials: int) -> Rate:
    return Rate.of(int(round(fraction * trials)), trials)


def _score(values: Any) -> Score | None:
    v = np.asarray(torch.as_tensor(values, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    return Score.of(v) if v.size >= 2 else None


def _per_image(fn: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor | None,
               expected: float | None) -> torch.Tensor | None:
    """``fn(x, y)`` per image, kept only if its mean reproduces the attack's own figure ``expected``."""
    if y is None or expected is None or x.shape != y.shape or len(x) < 2:
        return None
    try:
        v = fn(x, y).double()
    except Exception:  # a picture the metric cannot read (channels, sizes): no interval rather than a wrong one
        return None
    return v if abs(float(v.mean()) - expected) <= 1e-3 * max(1.0, abs(expected)) else None


def _key_units(scheme: Any, chw: tuple[int, ...]) -> int | None:
    """How many units (values, or nibbles) a key-recovery fraction is counted over."""
    from ..truth import true_permutation

    try:
        return int(true_permutation(scheme, chw).value_level().index.numel())
    except (AttackError, AttributeError, TypeError, ValueError):
        return None


def _grid_edges(nh: int, nw: int) -> int:
    return nh * (nw - 1) + nw * (nh - 1)


def calibrate(section: str, sc: Scenario, scheme: Any = None) -> dict[str, Calibrated]:
    """The row's figures with trial counts and 95 % intervals, its main figure first (see the module)."""
    m = {**sc.result.metrics, **sc.settings}
    details = sc.result.details
    per = dict(details.get("per_image", {}))
    out: dict[str, Calibrated] = {}
    x, n_img = sc.originals, len(sc.originals)
    if section in KEY_SECTIONS and "fraction_cells_recovered" in m:  # a chain's keyed step, cell by cell
        positions = int(x.shape[-2] * x.shape[-1])
        out["cells"] = Calibrated("positions back in their cell", _rate(m["fraction_cells_recovered"], positions),
                                  "positions")
    elif section in KEY_SECTIONS:
        units = _key_units(scheme, tuple(x.shape[1:])) if scheme is not None else None
        f = m.get("fraction_recovered_with_flips", m.get("fraction_recovered"))
        if units and f is not None:
            out["key"] = Calibrated("key units recovered", _rate(f, units), "units")
        if units and "fraction_determined" in m:
            out["determined"] = Calibrated("determined uniquely", _rate(m["fraction_determined"], units), "units")
        if sc.recovered is not None and sc.recovered.shape == x.shape and n_img and "patch" not in m:
            # (vit+patch's keyed step undone leaves the images in a fresh patch order: no exact decryption)
            exact = (sc.recovered == x).flatten(1).all(1)
            out["decrypted_exactly"] = Calibrated("images decrypted exactly", Rate.of(int(exact.sum()), n_img),
                                                  "images")
    elif section == "ciphertext-only" and "units_correct" in m:  # LE / ELE: the test images' nibbles
        units = int(x[:1].numel()) * (2 if details.get("nibbles", True) else 1) * n_img
        out["units"] = Calibrated("nibbles correct", _rate(m["units_correct"], units), "nibbles")
    elif section == "ciphertext-only" and "direct" in m and "blocks" in m:  # the shared-key jigsaw: one key
        size = int(details.get("block_size") or getattr(scheme, "block_size", 0) or 0)
        out["direct"] = Calibrated("key blocks recovered", _rate(m["direct"], int(m["blocks"])), "blocks")
        if size:
            nh, nw = x.shape[-2] // size, x.shape[-1] // size
            out["neighbour"] = Calibrated("neighbours", _rate(m["neighbour"], _grid_edges(nh, nw)), "edges")
    elif section == "ciphertext-only" and "neighbour_accuracy" in m:
        h, w = x.shape[-2:]
        out["neighbour"] = Calibrated("neighbours", _rate(m["neighbour_accuracy"], _grid_edges(h, w)), "edges")
        per.setdefault("ssim", _per_image(ssim, x, sc.recovered, m.get("ssim_best_symmetry")))
    elif section == "jigsaw" and "neighbour" in m:
        size = details.get("block_size") or getattr(scheme, "block_size", None) or getattr(scheme, "patch_size", None)
        if size:
            nh, nw = x.shape[-2] // int(size), x.shape[-1] // int(size)
            out["neighbour"] = Calibrated("neighbours", _rate(m["neighbour"], n_img * _grid_edges(nh, nw)), "edges")
            out["direct"] = Calibrated("direct", _rate(m["direct"], n_img * nh * nw), "blocks")
    elif section == "learned-inversion" and "ssim" in m:
        got = _per_image(ssim, x, sc.recovered, m["ssim"])
        enc = _per_image(ssim, x, sc.encrypted, m.get("ssim_encrypted"))
        per.setdefault("ssim", got)
        if got is not None and enc is not None:
            per.setdefault("ssim_gain", got - enc)
        per.setdefault("psnr", _per_image(psnr, x, sc.recovered, m.get("psnr")))
    elif section == "membership" and "member_scores" in details:
        a, b = (torch.as_tensor(details[k]).double().cpu().numpy() for k in ("member_scores", "nonmember_scores"))
        auc, (lo, hi) = auc_interval(a, b)
        out["auc"] = Calibrated("AUC", Score(auc, len(a) + len(b), lo, hi), "records")
        adv, (lo, hi) = advantage_interval(a, b)
        out["advantage"] = Calibrated("advantage", Score(adv, len(a) + len(b), lo, hi), "records")
    elif section == "reidentify" and "probes" in m:
        out["worst_top1"] = Calibrated("worst top-1", _rate(m["worst_top1"], int(m["probes"])), "probes")
    elif section == "instahide":
        if "reid_recovered_top1" in m and m.get("clusters"):
            out["reid"] = Calibrated("recovered faces re-identified",
                                     _rate(m["reid_recovered_top1"], int(m["clusters"])), "clusters")
        if "coverage" in m and m.get("private"):
            out["coverage"] = Calibrated("coverage", _rate(m["coverage"], int(m["private"])), "private faces")
    if section == "ciphertext-only" and "decrypted_exactly" in m and n_img:
        out["decrypted_exactly"] = Calibrated("images decrypted exactly", _rate(m["decrypted_exactly"], n_img),
                                              "images")
    names = {"ssim": ("SSIM", "images", 3), "ssim_gain": ("SSIM gain over encrypted", "images", 3),
             "psnr": ("PSNR dB", "images", 1), "recovered_ssim": ("SSIM recovered", "clusters", 3),
             "encoded_ssim": ("SSIM encoded", "encodings", 3)}
    for key, (label, unit, digits) in names.items():
        s = _score(per[key]) if per.get(key) is not None else None
        if s is not None:
            out[key] = Calibrated(label, s, unit, digits)
    if "decrypted_exactly" in out and section == "ciphertext-only":  # vit's two steps: scored on the images
        out = {"decrypted_exactly": out.pop("decrypted_exactly"), **out}
    return out
