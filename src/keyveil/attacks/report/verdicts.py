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

__all__ = ["verdict", "severity"]


def severity(verdict: str) -> int:
    """2 for a verdict in bold (the attack succeeds), 1 for "partly", 0 otherwise."""
    return 2 if verdict.startswith("**") else (1 if verdict.startswith("partly") else 0)


def verdict(section: str, m: dict[str, float]) -> str:
    """The verdict of one measured row of ``section`` from its metrics ``m`` ("" for an unknown section)."""
    if section in ("chosen-plaintext", "known-plaintext"):
        f = m.get("fraction_recovered_with_flips", m["fraction_recovered"])
        return "**broken**: key fully recovered" if f == 1.0 else (
            "**broken**: most of the key" if f >= 0.9 else ("partly" if f >= 0.3 else "holds"))
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
