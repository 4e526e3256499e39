"""``keyveil audit``: measure any scheme — a user's own included — as keyveil measures its built-ins.

:func:`audit` takes a registered scheme name, a factory spec (``"pkg.module:make"`` or
``"file.py:make"``, see :mod:`keyveil.schemes.blackbox`) or a scheme object, and runs:

- **utility** — the frontier's recipe (small CNN on Fashion-MNIST zero-padded to 32×32,
  MNIST-5k when Fashion-MNIST is absent), plain and encrypted side by side;
- **privacy** — every attack that applies to the scheme as a black box, each with its
  trial count, 95 % interval and verdict (:mod:`keyveil.metrics.intervals`): face
  re-identification at a glance, by an attacker who scrambles its own photos, on learned
  inversions, after chosen-plaintext key recovery; known-plaintext key recovery
  (rearrangements with flips, nibbles, whole blocks, XOR / additive pads); membership
  inference on the trained model. An attack that does not apply says why.

It writes ``audit.md``, ``audit.json`` and ``frontier.png`` (the scheme placed among the
built-ins of the committed ``results/frontier/frontier.json``) and returns the card.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .attacks.base import AttackError
from .attacks.block_match import BlockKnownPlaintext
from .attacks.permutation import KnownPlaintext
from .attacks.reidentify import Reidentify, face_split
from .attacks.substitution import SubstitutionKnownPlaintext
from .data import EncryptedDataset, create_dataset, dataset_source
from .experiments.common import PaddedDataset, Timer, markdown_table, write_report
from .experiments.frontier import FASHION_SIDE, Point, measure_privacy, measure_utility, plot_frontier
from .keys import Key
from .metrics.intervals import VERDICT_RULES, Rate, Score, auc_interval, verdict
from .schemes import Scheme, list_schemes
from .schemes.blackbox import load_factory, make_scheme

__all__ = ["audit", "AuditSettings", "QUICK", "FULL"]


@dataclass(frozen=True)
class AuditSettings:
    """How much to measure: the utility recipe and the attackers' budgets."""

    limit: int | None
    test_limit: int | None
    epochs: int
    cnn_epochs: int
    adapted_draws: int
    inversion_epochs: int
    known_pairs: int = 8
    membership_records: int = 500
    batch_size: int = 64
    recognizers: tuple[str, ...] = ("eigenfaces", "cnn")


QUICK = AuditSettings(limit=2000, test_limit=500, epochs=2, cnn_epochs=10, adapted_draws=1, inversion_epochs=4)
FULL = AuditSettings(limit=10000, test_limit=None, epochs=2, cnn_epochs=30, adapted_draws=2, inversion_epochs=8)


@dataclass(frozen=True)
class _AuditPoint(Point):
    """A frontier point whose scheme comes from the audited factory."""

    factory: Any = None
    faces_size: tuple[int, int] = (112, 92)

    def make(self, key: Key, side: int) -> Scheme | None:
        if self.scheme == "plain":
            return None
        size = (FASHION_SIDE, FASHION_SIDE) if side == FASHION_SIDE else self.faces_size
        return make_scheme(self.factory, key, image_size=size, name=self.scheme)


def _resolve(scheme: str | Scheme | Callable[..., Any]) -> tuple[str, Any, bool]:
    """(name, factory, keyed-model recipe) for a registered name, a factory spec or an object."""
    if isinstance(scheme, str) and scheme in list_schemes():
        from .schemes import create, scheme_class

        needs = scheme_class(scheme).needs_key

        def factory(key: Key | None = None) -> Scheme:
            return create(scheme, key if needs else None)

        keyed_model = scheme in ("pixel", "pixel-np") or scheme.endswith("+pixel")
        return scheme, factory, keyed_model
    if isinstance(scheme, str):
        return scheme.rpartition(":")[2], load_factory(scheme), False
    name = getattr(scheme, "registered_name", None) or getattr(scheme, "__name__", type(scheme).__name__)
    return str(name), scheme, False


def _rate(rate: float, trials: int) -> Rate:
    return Rate.of(int(round(rate * trials)), trials)


def _known_plaintext(scheme: Scheme, gallery: torch.Tensor, probes: torch.Tensor, pairs: int) -> dict[str, Any]:
    """The strongest known-plaintext attack that fits: what it decrypts of held-out probes, or why none applies."""
    row: dict[str, Any] = {"attack": "known-plaintext", "threat": "holds known (plain, encrypted) pairs"}
    if scheme.key is None:
        return {**row, "applies": False,
                "reason": "keyless scheme: anyone can run it, so adapted / inverted above already hold every pair"}
    if scheme.per_image:
        return {**row, "applies": False, "reason": "fresh randomness per image: there is no fixed key for pairs to reveal"}
    plain = gallery[:pairs]
    enc, held = scheme.encrypt(plain), scheme.encrypt(probes)
    h, w = plain.shape[-2:]
    tries: list[tuple[str, Any]] = [
        ("positions", KnownPlaintext(spatial=True)),
        ("values with flips", KnownPlaintext(spatial=False, flips=True)),
        ("nibbles with flips", KnownPlaintext(spatial=False, flips=True, nibbles=True)),
        ("whole 4-px blocks", BlockKnownPlaintext(block_size=4)) if h % 4 == 0 and w % 4 == 0 else ("", None),
        ("XOR / additive pad", SubstitutionKnownPlaintext()),
    ]
    results, misfits = [], []
    for label, attack in tries:
        if attack is None:
            continue
        try:
            r = attack.run(plain=plain, encrypted=enc)
        except AttackError:
            misfits.append(label)
            continue
        exact = (r.decrypt(held) == probes).flatten(1).double().mean(1)
        results.append((Score.of(exact.tolist()), label))
    tried = ", ".join(label for label, a in tries if a is not None)
    if not results:
        return {**row, "applies": False,
                "reason": f"no model of the key fits {pairs} pairs (tried: {tried})"}
    score, label = max(results, key=lambda t: t[0].value)
    return {**row, "applies": True, "pairs": pairs, "model": label, "tried": tried,
            "figure": f"{score.describe()} of held-out values decrypted exactly ({label}, {pairs} pairs)",
            "value": score.value, "low": score.low, "high": score.high, "trials": score.trials,
            "verdict": "key recovered" if score.low >= 0.99 else ("leaks" if score.value > 0.05 else "holds")}


@torch.no_grad()
def _membership(model: torch.nn.Module, scheme: Scheme | None, train: Any, test: Any, records: int
                ) -> dict[str, Any]:
    """Loss-threshold membership inference (Yeom et al.) on the utility model, AUC with a bootstrap interval."""
    def losses(ds: Any) -> torch.Tensor:
        n = min(records, len(ds))
        data = EncryptedDataset(ds, scheme, randomness="nonce") if scheme is not None else ds
        x, y = data.get_batch(list(range(n)))
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        model.eval()
        return F.cross_entropy(model(x), y, reduction="none")

    members, others = losses(train), losses(test)
    auc, (lo, hi) = auc_interval((-members).tolist(), (-others).tolist())
    return {"attack": "membership", "threat": "holds the trained model and candidate records", "applies": True,
            "figure": f"AUC {auc:.3f} [{lo:.3f}, {hi:.3f}] (n={len(members)}+{len(others)})", "value": auc,
            "low": lo, "high": hi, "trials": len(members) + len(others),
            "verdict": "holds" if hi <= 0.6 else ("leaks" if lo < 0.75 else "members exposed")}


def _dataset(dataset: str | None) -> str:
    if dataset:
        return dataset
    return "fashion-mnist" if dataset_source("fashion-mnist").available().ok else "mnist5k"


def audit(
    scheme: str | Scheme | Callable[..., Any],
    *,
    quick: bool = True,
    settings: AuditSettings | None = None,
    dataset: str | None = None,
    faces: tuple[torch.Tensor, ...] | None = None,
    out_dir: str | Path = "results/audit",
    frontier_json: str | Path | None = "results/frontier/frontier.json",
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Audit ``scheme``; writes ``audit.md``, ``audit.json`` and ``frontier.png`` under ``out_dir/<name>``.

    Args:
        scheme: a registered name, ``"pkg.module:factory"`` / ``"file.py:factory"``, or a scheme/factory object.
        quick: the quick budget (:data:`QUICK`, ≤ 15 min CPU) instead of the frontier's (:data:`FULL`).
        settings: explicit budgets (overrides ``quick``).
        dataset: the utility dataset (default Fashion-MNIST, else MNIST-5k).
        faces: ``(gallery, gallery_ids, probes, probe_ids)`` (default AT&T faces, photos 1–5 / 6–10).
        frontier_json: the built-ins to place the scheme among (skipped when absent).

    Returns:
        The card as a dict (also written as ``audit.json``).
    """
    timer = Timer()
    s = settings or (QUICK if quick else FULL)
    name, factory, keyed_model = _resolve(scheme)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(seed)
    faces = faces if faces is not None else face_split()
    g, gl, p, pl = faces
    point = _AuditPoint(name, "audited", None, lambda side: {}, keyed_model=keyed_model, factory=factory,
                        faces_size=tuple(g.shape[-2:]))
    plain_point = _AuditPoint("plain", "no encryption", None, lambda side: {})
    fashion = _dataset(dataset)
    train = PaddedDataset(create_dataset(fashion, "train").limit(s.limit), 16)
    test = PaddedDataset(create_dataset(fashion, "test").limit(s.test_limit), 16)
    made = point.make(key, max(g.shape[-2:]))
    log(f"auditing {name} ({'keyed' if made.key is not None else 'keyless'}, "
        f"{'invertible' if made.invertible else 'not invertible'}, {'per-image' if made.per_image else 'fixed'}): "
        f"utility on {fashion} {len(train)}/{len(test)}, {s.epochs} epochs; privacy on {len(g)}/{len(p)} faces")
    u_plain = measure_utility(plain_point, key, train, test, epochs=s.epochs, batch_size=s.batch_size, seed=seed,
                              progress=progress, plain_model=None)
    u = measure_utility(point, key, train, test, epochs=s.epochs, batch_size=s.batch_size, seed=seed,
                        progress=progress, plain_model=u_plain["trained"])
    best = max(u["accuracy"], u.get("keyed_accuracy") or 0.0)
    drop = 100 * (u_plain["accuracy"] - best)
    log(f"  utility: plain {100 * u_plain['accuracy']:.2f} %, {name} {100 * u['accuracy']:.2f} %"
        + (f" (keyed model {100 * u['keyed_accuracy']:.2f} %)" if u.get("keyed_accuracy") is not None else "")
        + f", drop {drop:.2f} points")
    attack = Reidentify(cnn_epochs=s.cnn_epochs, adapted_draws=s.adapted_draws, inversion_epochs=s.inversion_epochs,
                        recognizers=s.recognizers, seed=seed)
    q_plain = measure_privacy(plain_point, key, faces, Reidentify(variants=("glance",), cnn_epochs=s.cnn_epochs,
                                                                  recognizers=s.recognizers, seed=seed))
    q = measure_privacy(point, key, faces, attack)
    chance, plain_rate = q["chance"], q_plain["worst_top1"]
    probes = len(p)
    oracle = "holds an encryption oracle" if made.key is not None else "public scheme: anyone can encrypt"
    threats = {"glance": "sees the ciphertext only", "adapted": oracle, "inverted": oracle,
               "key-recovery": "holds an encryption oracle (chosen plaintext)"}
    rows: list[dict[str, Any]] = []
    for variant in ("glance", "adapted", "inverted", "key-recovery"):
        if variant in q["reid"]:
            r = _rate(q["reid"][variant], probes)
            rows.append({"attack": f"re-identification ({variant})", "threat": threats[variant], "applies": True,
                         "figure": f"top-1 {r.describe()}", "value": r.value, "low": r.low, "high": r.high,
                         "trials": r.trials, "verdict": verdict(r, chance=chance, plain=plain_rate)})
        else:
            rows.append({"attack": f"re-identification ({variant})", "threat": threats[variant], "applies": False,
                         "reason": q["not_applicable"].get(variant, "not run")})
    if q.get("inversion_ssim") is not None:
        rows.append({"attack": "learned inversion (SSIM)", "threat": oracle, "applies": True,
                     "figure": f"SSIM {q['inversion_ssim']:.3f} (n={probes})", "value": q["inversion_ssim"],
                     "trials": probes, "verdict": "recovers images" if q["inversion_ssim"] >= 0.5 else "partial"})
    rows.append(_known_plaintext(made, g, p, s.known_pairs))
    fashion_scheme = point.make(key, FASHION_SIDE)
    rows.append(_membership(u["trained"], None if u.get("keyed_accuracy") is not None else fashion_scheme,
                            train, test, s.membership_records))
    if not made.mixes_batch:
        rows.append({"attack": "instahide (Carlini et al.)", "threat": "sees many encodings", "applies": False,
                     "reason": "the scheme does not mix images of a batch"})
    plain_r = _rate(plain_rate, probes)
    card = {
        "experiment": "audit", "scheme": name, "config": made.config,
        "kind": {"keyed": made.key is not None, "invertible": made.invertible, "per_image": made.per_image},
        "recipe": {"dataset": fashion, "train_images": len(train), "test_images": len(test), "epochs": s.epochs,
                   "faces": [len(g), probes, *g.shape[-2:]], "settings": s.__dict__, "seed": seed},
        "utility": {"plain_accuracy": u_plain["accuracy"], "accuracy": u["accuracy"],
                    "keyed_accuracy": u.get("keyed_accuracy"), "drop_points": drop, "model": u["model"]},
        "plain_reidentification": {"figure": plain_r.describe(), "value": plain_r.value},
        "chance": chance, "attacks": rows, "verdict_rules": VERDICT_RULES,
        "worst_top1": q["worst_top1"], "worst_top1_no_oracle": q["worst_top1_no_oracle"],
        "command": f"keyveil audit --scheme {scheme if isinstance(scheme, str) else name}"
                   + (" --quick" if settings is None and quick else "")
                   + (f" --dataset {dataset}" if dataset else "") + (f" --seed {seed}" if seed else ""),
    }
    out = Path(out_dir) / name.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    plot = _place_on_frontier(card, frontier_json, out / "frontier.png")
    card["cpu_s"], card["wall_s"] = timer.cpu, timer.wall
    card["files"] = [str(f) for f in write_report(out, "audit", _markdown(card), card)] + ([str(plot)] if plot else [])
    return card


def _place_on_frontier(card: dict[str, Any], frontier_json: str | Path | None, path: Path) -> Path | None:
    """The built-in frontier rows plus the audited scheme, plotted (``None`` without the committed JSON)."""
    if frontier_json is not None and not Path(frontier_json).is_file():
        beside = Path(__file__).resolve().parents[2] / frontier_json  # a clone's results/, from any folder
        frontier_json = beside if beside.is_file() else frontier_json
    if frontier_json is None or not Path(frontier_json).is_file():
        card["frontier"] = "not plotted: no frontier.json of the built-ins (run keyveil experiment frontier)"
        return None
    rows = json.loads(Path(frontier_json).read_text())["rows"]
    mine = {"scheme": f"audited: {card['scheme']}", "label": "audited", "drop_points": card["utility"]["drop_points"],
            "worst_top1": card["worst_top1"], "worst_top1_no_oracle": card["worst_top1_no_oracle"]}
    card["frontier"] = (f"placed among the {len(rows)} built-in points of {frontier_json} (their recipe: "
                        "10,000 training images; the audited point uses this audit's recipe)")
    return plot_frontier([*rows, mine], path, card["chance"])


def _markdown(card: dict[str, Any]) -> str:
    u = card["utility"]
    kind = card["kind"]
    lines = [f"# keyveil audit: {card['scheme']}", "",
             f"Scheme: `{card['scheme']}` — {'keyed' if kind['keyed'] else 'keyless'}, "
             f"{'invertible' if kind['invertible'] else 'not invertible'}, "
             f"{'fresh randomness per image' if kind['per_image'] else 'the same transform for every image'}. "
             f"Key fingerprint: {card['config'].get('key_fingerprint')}.", "",
             "## Utility", "",
             f"Small CNN, {card['recipe']['dataset']} ({card['recipe']['train_images']} training / "
             f"{card['recipe']['test_images']} test images, {card['recipe']['epochs']} epochs): plain "
             f"{100 * u['plain_accuracy']:.2f} %, on the scheme's images {100 * u['accuracy']:.2f} %"
             + (f", keyed model {100 * u['keyed_accuracy']:.2f} %" if u.get("keyed_accuracy") is not None else "")
             + f": a drop of **{u['drop_points']:.2f} points**.", "",
             "## Privacy", "", card["verdict_rules"], "",
             f"Chance: {100 * card['chance']:.1f} %; plain photos are re-identified at "
             f"{card['plain_reidentification']['figure']}.", ""]
    table = []
    for r in card["attacks"]:
        if r["applies"]:
            table.append([r["attack"], r["threat"], r["figure"], f"**{r['verdict']}**"])
        else:
            table.append([r["attack"], r["threat"], f"not applicable: {r['reason']}", "—"])
    lines += [markdown_table(["attack", "attacker", "result (95 % interval, trials)", "verdict"], table), ""]
    n = card["recipe"]["faces"][1]
    at_chance = Rate.of(int(round(card["chance"] * n)), n)
    lines += [f"With {n} probes a result exactly at chance reads {at_chance.describe()}: its upper bound is above "
              f"2x chance ({200 * card['chance']:.1f} %), so it reads **leaks**; showing that a setting holds needs "
              "more probes or a rate below chance.", ""]
    broken = [r for r in card["attacks"] if r["applies"] and r["verdict"] in (
        "re-identified", "key recovered", "recovers images", "members exposed")]
    holds = [r["attack"] for r in card["attacks"] if r["applies"] and r["verdict"] == "holds"]
    kept = "Accuracy is kept (drop < 5 points), but the" if u["drop_points"] < 5 else "The"
    if broken:
        lines += [f"**{kept} scheme falls to {len(broken)} attacker(s)**: "
                  + "; ".join(f"an attacker who {r['threat']} — {r['attack']}: {r['figure']}" for r in broken)
                  + ".", ""]
    lines += [f"Holds against: {', '.join(holds) if holds else 'none of the attacks that applied'}.", ""]
    lines += [f"Frontier: {card.get('frontier', '')}", "",
              f"Measured by `{card['command']}` in {card['cpu_s']:.0f} s CPU."]
    return "\n".join(lines)
