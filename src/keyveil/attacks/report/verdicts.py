"""The report's verdicts: the thresholds that turn an attack's figures into "broken", "partly" or "holds".

One function per question: :func:`verdict` reads a section's figures — off
their 95 % intervals (:mod:`.calibrate`) where it has them, so a verdict
claims only what the interval shows — and :func:`severity` orders verdicts
(2 = the attack succeeds, 1 = partly, 0 = the scheme holds) so the summary
table can show the worst per data set. :data:`THRESHOLDS` holds every
threshold, and :func:`threshold_text` writes them once in the report's header.

Examples:
    >>> verdict("chosen-plaintext", {"fraction_recovered": 1.0})
    '**broken**: key fully recovered'
    >>> verdict("membership", {"auc": 0.5}), severity("no measurable leak")
    ('no measurable leak', 0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...metrics.intervals import VERDICT_RULES, Rate
from ...metrics.intervals import verdict as rate_verdict
from ...schemes.measured import FRONTIER_PLAIN
from ..patch_view import KEYED_PATCH_REASONS

__all__ = ["verdict", "severity", "not_measured", "THRESHOLDS", "threshold_text"]

THRESHOLDS: dict[str, tuple[str, float, float]] = {
    "chosen-plaintext": ("fraction of the key's units recovered", 0.9, 0.3),
    "known-plaintext": ("fraction of the key's units recovered", 0.9, 0.3),
    "key-from-model": ("fraction of the key's units recovered", 0.9, 0.3),
    "ciphertext-only": ("fraction of grid neighbours rejoined", 0.3, 0.1),
    "ciphertext-only key": ("fraction of the key's blocks or nibbles, or of the images, recovered exactly",
                            0.9, 0.3),
    "jigsaw": ("fraction of block edges rejoined", 0.5, 0.25),
    "learned-inversion": ("mean SSIM gain over the encrypted image (or over the data set's mean image, when that "
                          "is closer)", 0.2, 0.05),
    "membership": ("AUC of the loss-threshold attack", 0.55, 0.5),
    "instahide": ("SSIM gain of the recovered faces over the encodings", 0.2, 0.05),
}
"""Section -> (what is compared, the bound the interval's lower end must reach for the bold verdict, the bound
below which its upper end must stay for "holds"); membership reads "no measurable leak" off the lower end."""

INSTAHIDE_REID = 0.10
"""InstaHide is also broken when the recovered faces' re-identification lower bound exceeds this."""


class _Point:
    """A figure without an interval (an older report's row, a doctest): low = high = value."""

    def __init__(self, v: float) -> None:
        self.value = self.low = self.high = float(v)


class _Shifted:
    """An interval moved by ``by``."""

    def __init__(self, iv: Any, by: float) -> None:
        self.value, self.low, self.high = iv.value + by, iv.low + by, iv.high + by


def _interval(cal: Mapping[str, Any] | None, key: str, value: float) -> Any:
    return cal[key] if cal and key in cal else _Point(value)


def _graded(section: str, iv: Any) -> int:
    """2 when the interval's lower end reaches the section's bold threshold, 0 when its upper end stays below
    the "holds" threshold, 1 otherwise."""
    _, bold, holds = THRESHOLDS[section]
    return 2 if iv.low >= bold else (0 if iv.high < holds else 1)


def _word(g: int, bold: str) -> str:
    """The verdict for grade ``g`` of :func:`_graded`: ``bold``, "partly" or "holds"."""
    return (bold, "partly", "holds")[2 - g]


def threshold_text() -> list[str]:
    """The verdict rules, once, for the report's header (Markdown lines)."""
    t = THRESHOLDS
    pct = lambda v: f"{100 * v:.0f} %"  # noqa: E731
    key = t["chosen-plaintext"]
    out = [VERDICT_RULES + " Every other verdict, too, is read off the interval of the row's main figure "
           "(95 %; the interval column gives each figure with its trials):", ""]
    out.append(f"- chosen-plaintext, known-plaintext, key-from-model ({key[0]}): **broken** when the lower "
               f"bound ≥ {pct(key[1])} (\"key fully recovered\" when every unit is), holds when the upper bound "
               f"< {pct(key[2])}, partly between.")
    for sec, words in (("ciphertext-only", "**leaks** layout"),
                       ("ciphertext-only key", "**broken** (on block schemes and LE/ELE)"), ("jigsaw", "**falls**"),
                       ("learned-inversion", "**structure recovered**")):
        what, bold, holds = t[sec]
        fmt = pct if sec != "learned-inversion" else (lambda v: f"{v:.2f}")
        out.append(f"- {sec} ({what}): {words} when the lower bound ≥ {fmt(bold)}, holds when the upper bound "
                   f"< {fmt(holds)}, partly between.")
    what, bold, chance = t["membership"]
    out.append(f"- membership ({what}, bootstrap over members and non-members): **leaks** when the lower bound "
               f"≥ {bold:.2f}, no measurable leak when it is ≤ {chance:.2f} (chance), partly (a small leak) between.")
    what, bold, holds = t["instahide"]
    out.append(f"- instahide ({what}, or top-1 re-identification of the recovered faces): **broken** when the "
               f"gain's lower bound ≥ {bold:.2f} or the re-identification's lower bound > {pct(INSTAHIDE_REID)}; "
               f"holds when the gain's upper bound < {holds:.2f} and the re-identification's upper bound ≤ 2× "
               "chance; partly otherwise.")
    return out + [""]


def severity(verdict: str) -> int:
    """2 for a verdict in bold (the attack succeeds), 1 for "partly", 0 otherwise."""
    return 2 if verdict.startswith("**") else (1 if verdict.startswith("partly") else 0)


def verdict(section: str, m: Mapping[str, float], cal: Mapping[str, Any] | None = None) -> str:
    """The verdict of one row of ``section`` from its metrics ``m`` and, where measured, the calibrated figures
    ``cal`` of :func:`~keyveil.attacks.report.calibrate.calibrate` ("" for an unknown section)."""
    if section in ("chosen-plaintext", "known-plaintext", "key-from-model"):
        if "fraction_cells_recovered" in m:  # a chain: the keyed step, up to the per-image step's cells
            f = m["fraction_cells_recovered"]
            return _word(_graded(section, _interval(cal, "cells", f)),
                         "**broken**: keyed step undone" if f == 1.0 else "**broken**: most of the keyed step")
        f = m.get("fraction_recovered_with_flips", m["fraction_recovered"])
        bold = ("**broken**: key fully recovered" if f == 1.0 else "**broken**: most of the key") \
            if section != "key-from-model" or f < 1.0 else "**broken**: the model gives up the key"
        return _word(_graded(section, _interval(cal, "key", f)), bold)
    if section == "ciphertext-only" and "units_correct" in m:  # LE / ELE: the shared shuffle's nibbles
        bold = "**broken**: the shared shuffle recovered" if m["units_correct"] == 1.0 else \
            "**broken**: most nibbles back"
        return _word(_graded("ciphertext-only key", _interval(cal, "units", m["units_correct"])), bold)
    if section == "ciphertext-only" and "decrypted_exactly" in m:  # vit: two steps, scored on the images
        g = _graded("ciphertext-only key", _interval(cal, "decrypted_exactly", m["decrypted_exactly"]))
        return _word(g, "**broken**: images decrypted exactly")
    if section == "ciphertext-only" and "direct" in m and "blocks" in m:  # block schemes: the shared-key jigsaw
        bold = "**broken**: key recovered (up to one global symmetry)" if m["direct"] == 1.0 else \
            "**broken**: most of the key"
        return _word(_graded("ciphertext-only key", _interval(cal, "direct", m["direct"])), bold)
    if section == "ciphertext-only":
        return _word(_graded(section, _interval(cal, "neighbour", m["neighbour_accuracy"])), "**leaks** layout")
    if section == "jigsaw":
        return _word(_graded(section, _interval(cal, "neighbour", m["neighbour"])), "**falls** (most edges rejoined)")
    if section == "learned-inversion":
        prior = m.get("ssim_prior", float("-inf"))
        if prior > m["ssim_encrypted"]:  # the data set's mean image already looks more alike: the gain over it
            iv = _interval(cal, "ssim", m["ssim"])
            g = _graded(section, _Shifted(iv, -prior))
        else:
            g = _graded(section, _interval(cal, "ssim_gain", m["ssim"] - m["ssim_encrypted"]))
        return _word(g, "**structure recovered**")
    if section == "membership":
        iv = _interval(cal, "auc", m["auc"])
        _, bold, chance = THRESHOLDS[section]
        return "**leaks** membership" if iv.low >= bold else (
            "no measurable leak" if iv.low <= chance else "partly: a small leak")
    if section == "reidentify":
        w, chance = m["worst_top1"], m["chance"]
        if "probes" in m:  # calibrated: read off the 95 % Wilson interval (metrics.intervals.VERDICT_RULES)
            rate = Rate.of(int(round(w * m["probes"])), int(m["probes"]))
            v = rate_verdict(rate, chance=chance, plain=m.get("plain_top1", FRONTIER_PLAIN.glance / 100))
            return {"holds": "holds (95 % upper bound ≤ 2× chance)", "leaks": "partly: leaks",
                    "re-identified": "**re-identified**"}[v]
        return "holds (≤ 2× chance)" if w <= 2 * chance else (
            "partly (≤ 10 %)" if w <= 0.10 else "**re-identified**")
    if section == "instahide":
        rec, enc = _interval(cal, "recovered_ssim", m["recovered_ssim"]), _interval(cal, "encoded_ssim", m["encoded_ssim"])
        reid = _interval(cal, "reid", m.get("reid_recovered_top1", 0.0))
        _, bold, holds = THRESHOLDS[section]
        if rec.low - enc.high >= bold or reid.low > INSTAHIDE_REID:
            return "**broken**: private images recovered"
        return "holds" if rec.high - enc.low < holds and reid.high <= 2 * m.get("reid_chance", 0.025) else "partly"
    return ""


_KEYLESS = ("patch", "mix", "visualmixer", "noise", "instahide", "block-per-image")
_KEYED_MODELS = ("pixel", "pixel-np", "vit")  # schemes a keyed model follows exactly (CNNs, the ViT)
_WHOLE_BLOCKS = ("etc", "patch")  # block schemes whose blocks keep their pixels together


def not_measured(section: str, scheme: str) -> str:
    """What a summary cell says when ``section`` has no row for ``scheme``: why it cannot apply, or that it
    was not run (a hole in the evidence, never a silent dash).

    Examples:
        >>> not_measured("chosen-plaintext", "visualmixer")
        'not applicable: keyless, fresh randomness per image (no key to recover)'
        >>> not_measured("membership", "etc")
        'not run'
    """
    base = scheme.split(" ")[0]
    steps = base.split("+")
    keyless = all(any(s.startswith(k) for k in _KEYLESS) for s in steps)
    if scheme == "plain":
        return "not applicable: no encryption"
    if section in ("chosen-plaintext", "known-plaintext", "ciphertext-only") and keyless:
        return "not applicable: keyless, fresh randomness per image (no key to recover)"
    if base == "vit+patch" and section in KEYED_PATCH_REASONS:
        return KEYED_PATCH_REASONS[section]
    if section == "key-from-model" and steps[-1] not in _KEYED_MODELS:
        return "not applicable: no keyed model follows this scheme"
    if section == "jigsaw" and not any(s in _WHOLE_BLOCKS for s in steps):
        return "not applicable: no block keeps its pixels together"
    if section == "instahide" and "instahide" not in steps:
        return "not applicable: the scheme does not mix images"
    return "not run"
