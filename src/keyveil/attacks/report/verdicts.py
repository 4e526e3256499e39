"""The report's verdicts: the thresholds that turn an attack's figures into "broken", "partly" or "holds".

One function per question: :func:`verdict` reads a section's metrics,
:func:`severity` orders verdicts (2 = the attack succeeds, 1 = partly, 0 =
the scheme holds) so the summary table can show the worst per data set.

Examples:
    >>> verdict("chosen-plaintext", {"fraction_recovered": 1.0})
    '**broken**: key fully recovered'
    >>> verdict("membership", {"auc": 0.51}), severity("holds")
    ('no measurable leak', 0)
"""

from __future__ import annotations

from ...metrics.intervals import Rate
from ...metrics.intervals import verdict as rate_verdict
from ...schemes.measured import FRONTIER_PLAIN

__all__ = ["verdict", "severity", "not_measured"]


def severity(verdict: str) -> int:
    """2 for a verdict in bold (the attack succeeds), 1 for "partly", 0 otherwise."""
    return 2 if verdict.startswith("**") else (1 if verdict.startswith("partly") else 0)


def verdict(section: str, m: dict[str, float]) -> str:
    """The verdict of one measured row of ``section`` from its metrics ``m`` ("" for an unknown section)."""
    if section in ("chosen-plaintext", "known-plaintext"):
        if "fraction_cells_recovered" in m:  # a chain: the keyed step, up to the per-image step's cells
            f = m["fraction_cells_recovered"]
            return "**broken**: keyed step undone" if f == 1.0 else (
                "**broken**: most of the keyed step" if f >= 0.9 else ("partly" if f >= 0.3 else "holds"))
        f = m.get("fraction_recovered_with_flips", m["fraction_recovered"])
        return "**broken**: key fully recovered" if f == 1.0 else (
            "**broken**: most of the key" if f >= 0.9 else ("partly" if f >= 0.3 else "holds"))
    if section == "ciphertext-only" and "units_correct" in m:  # LE's nibbles
        f = m["high_correct"]
        return "**broken**: the shared shuffle recovered" if m["units_correct"] == 1.0 else (
            "**broken**: most high nibbles back" if f >= 0.9 else ("partly" if f >= 0.3 else "holds"))
    if section == "ciphertext-only" and "decrypted_exactly" in m:  # vit: two steps, scored on the images
        f = m["decrypted_exactly"]
        return "**broken**: images decrypted exactly" if f >= 0.9 else (
            "partly" if m["ssim"] - m["ssim_encrypted"] >= 0.2 else "holds")
    if section == "ciphertext-only" and "direct" in m:  # block schemes: the shared-key jigsaw
        f = m["direct"]
        return "**broken**: key recovered (up to one global symmetry)" if f == 1.0 else (
            "**broken**: most of the key" if f >= 0.9 else ("partly" if m["neighbour"] >= 0.3 else "holds"))
    if section == "ciphertext-only":
        return "**leaks** layout" if m["neighbour_accuracy"] >= 0.3 else "holds"
    if section == "jigsaw":
        return "**falls** (most edges rejoined)" if m["neighbour"] >= 0.5 else (
            "partly" if m["neighbour"] >= 0.25 else "holds")
    if section == "learned-inversion":
        gain = m["ssim"] - m["ssim_encrypted"]
        return "**structure recovered**" if gain >= 0.2 else ("partly" if gain >= 0.05 else "holds")
    if section == "membership":
        return "**leaks** membership" if m["auc"] >= 0.55 else "no measurable leak"
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
        gain = m["recovered_ssim"] - m["encoded_ssim"]
        reid = m.get("reid_recovered_top1", 0.0)
        return "**broken**: private images recovered" if gain >= 0.2 or reid > 0.10 else (
            "partly" if gain >= 0.05 or reid > 2 * m.get("reid_chance", 0.025) else "holds")
    if section == "key-from-model":
        f = m["fraction_recovered"]
        return "**broken**: the model gives up the key" if f == 1.0 else (
            "**broken**: most of the key" if f >= 0.9 else ("partly" if f >= 0.3 else "holds"))
    return ""


_KEYLESS = ("patch", "mix", "visualmixer", "noise", "instahide")
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
    if section == "key-from-model" and steps[-1] not in _KEYED_MODELS:
        return "not applicable: no keyed model follows this scheme"
    if section == "jigsaw" and not any(s in _WHOLE_BLOCKS for s in steps):
        return "not applicable: no block keeps its pixels together"
    if section == "instahide" and "instahide" not in steps:
        return "not applicable: the scheme does not mix images"
    return "not run"
