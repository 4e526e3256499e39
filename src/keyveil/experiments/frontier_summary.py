"""The frontier read with its uncertainty: several seeds pooled, intervals, and the target checked per threat.

``keyveil experiment frontier --seed N`` measures every point once, with the key
``Key.from_seed(N)`` and seed ``N`` for training and attacks. This module joins
the ``frontier.json`` files of several seeds point by point:

- **utility**: the accuracy drop of every seed (each against that seed's plain
  model), shown as the mean and the range over the seeds;
- **privacy**: each attacker's re-identification successes pooled over the
  seeds (``probes × seeds`` trials; the same 200 faces under different keys and
  attack seeds, so the trials are not fully independent and the Wilson
  interval is somewhat too narrow), with its 95 % Wilson interval;
- **the target** — at most :data:`TARGET_DROP` points of accuracy and every
  applicable attacker at most :data:`TARGET_RATE` (2× chance) — checked for
  each threat (:data:`THREATS`): *met* when the mean drop is within the target
  and every attacker's upper bound is at most 5 %, *met at the estimate only*
  when the rates are but their intervals reach above, *not met* otherwise.

Examples:
    >>> runs = [{"recipe": {"seed": s, "faces": [200, 200, 112, 92]}, "chance": 0.025, "rows": [
    ...     {"scheme": "plain", "label": "no encryption", "accuracy": 0.9, "keyed_accuracy": None,
    ...      "drop_points": 0.0, "reid": {"glance": 0.93}},
    ...     {"scheme": "pixel", "label": "shuffle", "accuracy": 0.88, "keyed_accuracy": 0.9,
    ...      "drop_points": 0.0, "reid": {"glance": 0.02, "adapted": 0.9}}]} for s in (0, 1, 2)]
    >>> s = summarize_frontier(runs)
    >>> p = s["points"][1]
    >>> p["seeds"], p["reid"]["glance"].describe()
    ([0, 1, 2], '2.0 % [1.1, 3.5] (n=600)')
    >>> p["target"]["no oracle"], p["target"]["oracle"]
    ('met', 'not met')
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..metrics.intervals import Rate
from .common import markdown_table

__all__ = ["TARGET_DROP", "TARGET_RATE", "THREATS", "summarize_frontier", "summary_markdown", "load_runs", "main_summary"]

TARGET_DROP = 2.35
"""Points of accuracy a setting may lose (VisualMixer's reported average drop)."""
TARGET_RATE = 0.05
"""Re-identification top-1 every applicable attacker must stay under (2× chance on AT&T faces)."""

THREATS: dict[str, str] = {
    "no oracle": "the server holds ciphertexts only: a glance, plus the ciphertext-only chain where one exists; "
                 "keyless schemes are public, so every attacker applies",
    "oracle": "the attacker can have images encrypted under the key or knows pairs (or the scheme is public): "
              "every attacker",
}

_NO_ORACLE_KEYED = ("glance", "ciphertext-only")


def _keyed(row: dict[str, Any]) -> bool:
    """Whether the point's scheme has a key (the registered scheme says; ``plain`` has none)."""
    from ..schemes import scheme_class

    if "keyed" in row:
        return bool(row["keyed"])
    return row["scheme"] != "plain" and bool(scheme_class(row["scheme"]).needs_key)


def _applicable(row: dict[str, Any], threat: str) -> list[str]:
    variants = list(row.get("reid", {}))
    if threat == "no oracle" and _keyed(row):
        return [v for v in variants if v in _NO_ORACLE_KEYED]
    return variants


def load_runs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The ``frontier.json`` files at ``paths`` (a folder means its ``frontier.json``)."""
    runs = []
    for p in paths:
        path = Path(p)
        path = path / "frontier.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no frontier.json at {path}: run `keyveil experiment frontier -o FOLDER` first")
        runs.append(json.loads(path.read_text()))
    return runs


def summarize_frontier(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Join frontier runs (one per seed) point by point; see the module docstring for what each figure means."""
    if not runs:
        raise ValueError("no frontier runs to summarize")
    probes = int(runs[0]["recipe"]["faces"][1])
    chance = float(runs[0]["chance"])
    order: list[tuple[str, str]] = []
    by_point: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
    for run in runs:
        for row in run["rows"]:
            k = (row["scheme"], row["label"])
            if k not in by_point:
                order.append(k)
            by_point.setdefault(k, []).append((int(run["recipe"]["seed"]), row))
    points = []
    for k in order:
        seeded = _one_row_per_seed(by_point[k])
        rows = [r for _, r in seeded]
        drops = [float(r["drop_points"]) for r in rows]
        accs = [max(float(r["accuracy"]), float(r.get("keyed_accuracy") or 0.0)) for r in rows]
        variants = list(dict.fromkeys(v for r in rows for v in r.get("reid", {})))
        reid = {}
        for v in variants:
            got = [r["reid"][v] for r in rows if v in r.get("reid", {})]
            reid[v] = Rate.of(sum(round(x * probes) for x in got), probes * len(got))
        point = {"scheme": k[0], "label": k[1], "seeds": [s for s, _ in seeded], "accuracy": accs,
                 "drop": drops, "drop_mean": sum(drops) / len(drops), "reid": reid, "keyed": _keyed(rows[0])}
        point["target"] = {t: _target(point, rows[0], t) for t in THREATS}
        points.append(point)
    return {"points": points, "probes": probes, "chance": chance,
            "seeds": sorted({int(r["recipe"]["seed"]) for r in runs}), "recipe": runs[0]["recipe"]}


def _one_row_per_seed(rows: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
    """Runs of the same seed (a full run, then one of extra attackers) join: the first run's figures, plus the
    attackers only a later run measured."""
    out: dict[int, dict[str, Any]] = {}
    for seed, row in rows:
        if seed in out:
            out[seed] = {**out[seed], "reid": {**row.get("reid", {}), **out[seed].get("reid", {})}}
        else:
            out[seed] = row
    return sorted(out.items())


def _target(point: dict[str, Any], row: dict[str, Any], threat: str) -> str:
    rates = [point["reid"][v] for v in _applicable(row, threat) if v in point["reid"]]
    if not rates:
        return "not measured"
    if point["drop_mean"] > TARGET_DROP or any(r.value > TARGET_RATE for r in rates):
        return "not met"
    return "met" if all(r.high <= TARGET_RATE for r in rates) else "met at the estimate only"


def _drop(p: dict[str, Any]) -> str:
    d = p["drop"]
    return f"{p['drop_mean']:.2f}" if len(d) == 1 else f"{p['drop_mean']:.2f} [{min(d):.2f}, {max(d):.2f}]"


def _worst(p: dict[str, Any], threat: str, row: dict[str, Any]) -> str:
    rates = [p["reid"][v] for v in _applicable(row, threat) if v in p["reid"]]
    return max(rates, key=lambda r: r.value).describe() if rates else "—"


def summary_markdown(summary: dict[str, Any], *, variants: Sequence[str] = (
        "glance", "ciphertext-only", "adapted", "inverted", "key-recovery", "instahide-attack")) -> str:
    """One table: every point's drop (mean [range] over seeds), each attacker's pooled rate with its interval,
    and the target per threat."""
    points = summary["points"]
    shown = [v for v in variants if any(v in p["reid"] for p in points)]
    table = markdown_table(
        ["#", "scheme", "setting", "seeds", "drop (points)", *[f"{v} top-1" for v in shown],
         *[f"target, {t}" for t in THREATS]],
        [[str(i), p["scheme"], p["label"], ", ".join(map(str, p["seeds"])), _drop(p),
          *[p["reid"][v].describe() if v in p["reid"] else "—" for v in shown],
          *[p["target"][t] for t in THREATS]]
         for i, p in enumerate(points, 1)])
    threats = "; ".join(f"*{t}*: {why}" for t, why in THREATS.items())
    return (f"Target: at most {TARGET_DROP} points of accuracy drop (mean over seeds) and every applicable attacker "
            f"at most {100 * TARGET_RATE:.0f} % top-1 (2× chance, {100 * summary['chance']:.1f} %), read off the "
            f"95 % Wilson interval: *met* when every upper bound is at most {100 * TARGET_RATE:.0f} %, *met at the "
            "estimate only* when the rates are but an interval reaches above, *not met* otherwise. Threats: "
            f"{threats}. Re-identification successes are pooled over the seeds ({summary['probes']} probes each). "
            f"Drop: mean [min, max] over the seeds.\n\n{table}\n")


def main_summary(paths: Sequence[str | Path], out: str | Path | None = None) -> str:
    """Summarize the frontier runs at ``paths``; write ``frontier-seeds.md``/``.json`` to ``out`` if given."""
    summary = summarize_frontier(load_runs(paths))
    md = summary_markdown(summary)
    if out is not None:
        from .common import write_report

        data = {"experiment": "frontier-seeds", "sources": [str(p) for p in paths], "seeds": summary["seeds"],
                "points": [{**p, "reid": {v: vars(r) for v, r in p["reid"].items()}} for p in summary["points"]]}
        write_report(Path(out), "frontier-seeds", "# Privacy–utility frontier over seeds\n\n" + md, data)
    return md
