"""Calibrated figures: 95 % intervals for rates and scores, and verdicts read off the intervals.

A privacy figure without its trial count and interval cannot be compared with chance
or with plain images. Proportions (identification rates, recovered fractions) get the
Wilson score interval; means of per-image scores (SSIM) and AUCs get a bootstrap
interval — both from SciPy (``scipy.stats.binomtest(...).proportion_ci`` and
``scipy.stats.bootstrap``), the implementations the field uses.

Verdicts on a re-identification rate (written once, in :data:`VERDICT_RULES`):

- **holds** — the interval's upper bound is at most twice chance;
- **re-identified** — the lower bound is at least half the rate on plain images;
- **leaks** — anything in between.

With 200 probes and chance at 2.5 %, a result exactly at chance (5 of 200) has an
upper bound of 5.7 % and reads "leaks": 200 probes cannot show that a scheme holds
unless it scores below chance; 600 (three seeds) can.

Examples:
    >>> r = Rate.of(5, 200)
    >>> r.describe()
    '2.5 % [1.1, 5.7] (n=200)'
    >>> verdict(r, chance=0.025, plain=0.93), verdict(Rate.of(15, 600), chance=0.025, plain=0.93)
    ('leaks', 'holds')
    >>> verdict(Rate.of(180, 200), chance=0.025, plain=0.93)
    're-identified'
    >>> verdict(Rate.of(30, 200), chance=0.025, plain=0.93)
    'leaks'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Rate", "Score", "wilson_interval", "bootstrap_interval", "auc_interval", "advantage",
           "advantage_interval", "verdict", "VERDICT_RULES"]

CONFIDENCE = 0.95

VERDICT_RULES = (
    "Every rate is shown with its 95 % interval (Wilson score interval for proportions, bootstrap for "
    "mean SSIM and AUC) and its number of trials. A setting **holds** when the interval's upper bound is at "
    "most twice chance, is **re-identified** when the lower bound is at least half the rate on plain images, "
    "and **leaks** in between."
)


def wilson_interval(successes: int, trials: int, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of ``successes / trials`` (SciPy)."""
    from scipy.stats import binomtest

    if trials <= 0:
        raise ValueError(f"a rate needs at least one trial, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in 0..{trials}, got {successes}")
    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_interval(
    values: Sequence[float] | np.ndarray, *, statistic: Callable[..., float] = np.mean,
    confidence: float = CONFIDENCE, resamples: int = 2000, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over per-trial ``values`` (SciPy)."""
    from scipy.stats import bootstrap

    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 values, got {v.size}")
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    res = bootstrap((v,), statistic, confidence_level=confidence, n_resamples=resamples, method="percentile",
                    random_state=np.random.default_rng(seed), vectorized=False)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _auc(members: np.ndarray, others: np.ndarray) -> float:
    """Probability that a member scores above a non-member (ties count half)."""
    diff = members[:, None] - others[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def _two_sample(statistic: Callable[[np.ndarray, np.ndarray], float], members: Sequence[float],
                others: Sequence[float], confidence: float, resamples: int,
                seed: int) -> tuple[float, tuple[float, float]]:
    """``statistic`` and its percentile bootstrap interval, members and others resampled apart (SciPy)."""
    from scipy.stats import bootstrap

    a, b = np.asarray(members, np.float64), np.asarray(others, np.float64)
    res = bootstrap((a, b), statistic, confidence_level=confidence, n_resamples=resamples, method="percentile",
                    random_state=np.random.default_rng(seed), vectorized=False)
    return statistic(a, b), (float(res.confidence_interval.low), float(res.confidence_interval.high))


def auc_interval(members: Sequence[float], others: Sequence[float], *, confidence: float = CONFIDENCE,
                 resamples: int = 1000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """AUC of "member scores higher" and its bootstrap interval (members and others resampled apart)."""
    return _two_sample(_auc, members, others, confidence, resamples, seed)


def advantage(members: np.ndarray, others: np.ndarray) -> float:
    """The best membership advantage max_t (TPR − FPR) of "member if score ≥ t" over all thresholds t."""
    a, b = np.sort(np.asarray(members, np.float64)), np.sort(np.asarray(others, np.float64))
    t = np.concatenate([a, b])
    tpr = 1 - np.searchsorted(a, t, side="left") / a.size  # fraction of members scoring ≥ t
    fpr = 1 - np.searchsorted(b, t, side="left") / b.size
    return float(max(0.0, (tpr - fpr).max()))


def advantage_interval(members: Sequence[float], others: Sequence[float], *, confidence: float = CONFIDENCE,
                       resamples: int = 1000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """:func:`advantage` and its bootstrap interval (members and others resampled apart)."""
    return _two_sample(advantage, members, others, confidence, resamples, seed)


def _trials(n: int, unit: str) -> str:
    return f"(n={n} {unit})" if unit else f"(n={n})"


@dataclass(frozen=True)
class Rate:
    """A proportion with its trial count and 95 % Wilson interval."""

    successes: int
    trials: int
    low: float
    high: float

    @classmethod
    def of(cls, successes: int, trials: int) -> Rate:
        return cls(int(successes), int(trials), *wilson_interval(successes, trials))

    @property
    def value(self) -> float:
        return self.successes / self.trials

    def describe(self, unit: str = "") -> str:
        """``value % [low, high] (n=trials unit)``; for fractions near 0 or 1 with many trials, two decimals."""
        d = 2 if self.trials >= 1000 and (self.value < 0.01 or self.value > 0.99) else 1
        v, lo, hi = (f"{100 * x:.{d}f}" for x in (self.value, self.low, self.high))
        return f"{v} % [{lo}, {hi}] {_trials(self.trials, unit)}"


@dataclass(frozen=True)
class Score:
    """A mean score (SSIM, AUC...) with its trial count and 95 % bootstrap interval."""

    value: float
    trials: int
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray, *, seed: int = 0) -> Score:
        v = np.asarray(values, dtype=np.float64)
        return cls(float(v.mean()), int(v.size), *bootstrap_interval(v, seed=seed))

    def describe(self, digits: int = 3, unit: str = "") -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] {_trials(self.trials, unit)}"


def verdict(rate: Rate, *, chance: float, plain: float) -> str:
    """``"holds"``, ``"leaks"`` or ``"re-identified"`` by the rules in :data:`VERDICT_RULES`."""
    if rate.high <= 2 * chance:
        return "holds"
    if rate.low >= plain / 2:
        return "re-identified"
    return "leaks"
