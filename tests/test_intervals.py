"""Intervals and verdicts, checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keyveil.metrics.intervals import Rate, Score, auc_interval, bootstrap_interval, verdict, wilson_interval


def wilson_by_formula(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 200), (5, 200), (25, 200), (186, 200), (200, 200), (1, 3)])
def test_wilson_matches_the_textbook_formula(k, n):
    lo, hi = wilson_interval(k, n)
    elo, ehi = wilson_by_formula(k, n)
    assert lo == pytest.approx(max(elo, 0.0), abs=1e-9) and hi == pytest.approx(min(ehi, 1.0), abs=1e-9)
    assert lo <= k / n <= hi


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_trials():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.5, 0.1, 20), rng.normal(0.5, 0.1, 2000)
    lo_s, hi_s = bootstrap_interval(small)
    lo_l, hi_l = bootstrap_interval(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4
    # the normal-theory interval of the mean, an independent computation, agrees at n = 2000
    se = large.std(ddof=1) / math.sqrt(large.size)
    assert lo_l == pytest.approx(large.mean() - 1.96 * se, abs=0.2 * se)


def test_auc_and_its_interval():
    members, others = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.1, 0.2, 0.3, 0.65])
    auc, (lo, hi) = auc_interval(members, others)
    assert auc == pytest.approx(15 / 16)  # 15 of 16 pairs ranked right, no ties
    assert lo <= auc <= hi <= 1.0


def test_verdict_thresholds():
    chance, plain = 0.025, 0.93
    assert verdict(Rate.of(3, 200), chance=chance, plain=plain) == "holds"  # 1.5 % [0.5, 4.3]
    assert verdict(Rate.of(5, 200), chance=chance, plain=plain) == "leaks"  # at chance, but 200 trials: [1.1, 5.7]
    assert verdict(Rate.of(15, 600), chance=chance, plain=plain) == "holds"  # at chance with 600 trials: [1.5, 4.1]
    assert verdict(Rate.of(93, 200), chance=chance, plain=plain) == "leaks"  # [39.7, 53.4]: low < 46.5 %
    assert verdict(Rate.of(120, 200), chance=chance, plain=plain) == "re-identified"  # [53.1, 66.5]
    assert Score.of([0.1, 0.2, 0.3]).describe().endswith("(n=3)")


def test_security_report_reidentify_verdicts_are_read_off_the_interval():
    from keyveil.attacks.report.verdicts import not_measured
    from keyveil.attacks.report.verdicts import verdict as report_verdict

    at_chance = {"worst_top1": 0.025, "chance": 0.025, "probes": 200}
    assert report_verdict("reidentify", at_chance) == "partly: leaks"  # 200 probes cannot show 'holds' at chance
    assert report_verdict("reidentify", {**at_chance, "probes": 600}).startswith("holds")
    assert report_verdict("reidentify", {"worst_top1": 0.93, "chance": 0.025, "probes": 200}) == "**re-identified**"
    assert not_measured("key-from-model", "etc").startswith("not applicable")
    assert not_measured("known-plaintext", "visualmixer-seed+pixel").startswith("not run")  # pixel step: a key
    assert not_measured("instahide", "pixel").startswith("not applicable")
