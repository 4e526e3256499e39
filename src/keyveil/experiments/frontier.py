"""The privacy–utility frontier: every scheme's strength knob, each point measured both ways (docs/design.md §7).

Utility: the accuracy of the recipe of ``keyveil experiment schemes`` (small
CNN, or Hao et al.'s invariant ViT for ``patch``/``mix``) trained on encrypted
Fashion-MNIST (zero-padded to 32×32), its drop against the same recipe on
plain images, and — where a keyed model applies (``pixel``, ``…+pixel``) — the
accuracy of a model converted with the key (no retraining). Privacy: the
re-identification attack (:class:`keyveil.attacks.Reidentify`) on AT&T faces
(112×92, gallery photos 1–5, probes 6–10, chance 2.5 %) for every attacker
variant that applies, the worst of them, and the SSIM of the learned
inversion's reconstructions.

``noise`` (σ) and ``instahide`` (k) have no spatial strength. InstaHide is
trained on mixed batches with mixed labels and tested on test images encoded
with partners from the test set, as ``keyveil experiment baselines`` does; its
privacy adds the attack made for it (Carlini et al., variant
``instahide-attack``: the faces recovered from 10 epochs of encodings,
re-identified; SECURITY.md, "instahide") to the re-identification variants.

Strength is given relative to the image's longer side, so one setting means
the same on 32×32 and on 112×92: a window of ``1/4`` is 8 px on Fashion-MNIST
and 28 px on faces.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..attacks.reidentify import Reidentify, face_split
from ..data import EncryptedDataset, ImageDataset, create_dataset
from ..data.encrypted import TEST_NONCE_OFFSET
from ..engine import build_model, fit, seed_everything
from ..keys import Key
from ..metrics import ssim
from ..schemes import Scheme, create, scheme_class
from .common import PaddedDataset, Timer, markdown_table, predict, write_report

__all__ = ["Point", "POINTS", "run_frontier", "pareto_front", "measure_utility", "measure_privacy", "plot_frontier"]


@dataclass(frozen=True)
class Point:
    """One setting of one scheme: ``options(side)`` gives the scheme's options for images of that longer side."""

    scheme: str
    label: str
    strength: float | None
    options: Callable[[int], dict[str, Any]]
    keyed_model: bool = False
    arch: tuple[Any, ...] | None = None  # plain same-architecture baselines only: the model spec they train

    @property
    def is_reference(self) -> bool:
        """The plain small-CNN row every ``drop (points)`` is measured against."""
        return self.scheme == "plain" and self.arch is None

    def make(self, key: Key, side: int) -> Scheme | None:
        if self.scheme == "plain":
            return None
        opts = self.options(side)
        return create(self.scheme, key if _needs_key(self.scheme) else None, **opts)


def _needs_key(name: str) -> bool:
    return bool(scheme_class(name).needs_key)


def _px(fraction: float, side: int, *, multiple: int = 1) -> int:
    return max(multiple, int(round(fraction * side / multiple)) * multiple)


def _window(f: float) -> Callable[[int], dict[str, Any]]:
    return lambda side: {"window": _px(f, side)}


def _quadtree(lo: float, levels: int, **extra: Any) -> Callable[[int], dict[str, Any]]:
    return lambda side: {"ws_min": _px(lo, side), "ws_max": _px(lo, side) * 2 ** levels, **extra}


def _sized(name: str, f: float, **extra: Any) -> Callable[[int], dict[str, Any]]:
    return lambda side: {name: _px(f, side), **extra}


def _mix(f: float, grid: int) -> Callable[[int], dict[str, Any]]:
    return lambda side: {"patch_size": _px(f, side, multiple=grid), "grid": grid}


def _vit_patch(f: float) -> Callable[[int], dict[str, Any]]:
    """``vit+patch`` with both steps' sizes ``f`` of the side (the secret in-patch step, then the patch order)."""
    return lambda side: {"steps": [("vit", {"scramble": False, "block_size": _px(f, side)}),
                                   ("patch", {"patch_size": _px(f, side)})]}


POINTS: tuple[Point, ...] = (
    Point("plain", "no encryption", None, lambda side: {}),
    Point("pixel", "fixed-key pixel shuffle", None, lambda side: {}, keyed_model=True),
    Point("pixel-np", "pixel shuffle + per-position flips", None, lambda side: {}, keyed_model=True),
    Point("visualmixer-seed+pixel", "seed VisualMixer, then keyed pixel", None, lambda side: {}, keyed_model=True),
    Point("visualmixer", "seed default 2..8 px", None, lambda side: {"ws_min": 2, "ws_max": 8}),
    Point("visualmixer", "quadtree 1/16..1/4", 1 / 16, _quadtree(1 / 16, 2)),
    Point("visualmixer", "quadtree 1/8..1/2", 1 / 8, _quadtree(1 / 8, 2)),
    Point("visualmixer", "quadtree 1/16..1/2", 1 / 16, _quadtree(1 / 16, 3)),
    Point("visualmixer", "quadtree 1/16..1/2, target VFE 0.2", 1 / 16, _quadtree(1 / 16, 3, target_vfe=0.2)),
    Point("visualmixer", "window 1/8", 1 / 8, _window(1 / 8)),
    Point("visualmixer", "window 1/4", 1 / 4, _window(1 / 4)),
    Point("visualmixer", "window 1/2", 1 / 2, _window(1 / 2)),
    Point("visualmixer", "window 1 (whole image)", 1.0, _window(1.0)),
    Point("etc", "blocks 1/8", 1 / 8, _sized("block_size", 1 / 8)),
    Point("etc", "blocks 1/4", 1 / 4, _sized("block_size", 1 / 4)),
    Point("etc", "blocks 1/2", 1 / 2, _sized("block_size", 1 / 2)),
    Point("patch", "patches 1/8", 1 / 8, _sized("patch_size", 1 / 8)),
    Point("patch", "patches 1/4", 1 / 4, _sized("patch_size", 1 / 4)),
    Point("patch", "patches 1/2", 1 / 2, _sized("patch_size", 1 / 2)),
    Point("mix", "patches 1/4, 2x2 sub-patches", 1 / 4, _mix(1 / 4, 2)),
    Point("mix", "patches 1/4, 4x4 sub-patches", 1 / 4, _mix(1 / 4, 4)),
    Point("mix", "patches 1/2, 4x4 sub-patches", 1 / 2, _mix(1 / 2, 4)),
    Point("block-per-image", "blocks 1/8, turns + negative-positive", 1 / 8, _sized("block_size", 1 / 8)),
    Point("block-per-image", "blocks 1/4, turns + negative-positive", 1 / 4, _sized("block_size", 1 / 4)),
    Point("vit+patch", "patches 1/8, keyed in-patch + patch order", 1 / 8, _vit_patch(1 / 8), keyed_model=True),
    Point("vit+patch", "patches 1/4, keyed in-patch + patch order", 1 / 4, _vit_patch(1 / 4), keyed_model=True),
    Point("noise", "sigma 0.1", None, lambda side: {"sigma": 0.1}),
    Point("noise", "sigma 0.25", None, lambda side: {"sigma": 0.25}),
    Point("instahide", "k=2", None, lambda side: {"k": 2}),
    Point("instahide", "k=4", None, lambda side: {"k": 4}),
)
"""The default sweep (``keyveil experiment frontier``)."""

FASHION_SIDE = 32  # Fashion-MNIST zero-padded to 32x32, as in ``experiment schemes``


def model_spec(point: Point, scheme: Scheme | None) -> tuple[Any, ...]:
    """The architecture a point trains: ``("smallcnn",)`` or ``("inv-ViT", embedding, patch size, ...)``.

    Points with equal specs train the same architecture; the plain row of a spec is their fair baseline.
    """
    if point.arch is not None:
        return point.arch
    if point.scheme == "patch":
        return ("inv-ViT", "patch", scheme.patch_size)
    if point.scheme == "mix":
        return ("inv-ViT", "mix", scheme.patch_size, scheme.grid)
    if point.scheme == "block-per-image":
        return ("inv-ViT", "block", scheme.block_size, scheme.rotate, scheme.negapos)
    if point.scheme == "vit+patch":
        return ("inv-ViT", "patch", scheme.steps[1].patch_size)
    return ("smallcnn",)


def spec_label(spec: Sequence[Any]) -> str:
    """``smallcnn``, ``inv-ViT(patch, p=4)``, ``inv-ViT(block, p=4, turns, np)``..."""
    if spec[0] == "smallcnn":
        return "smallcnn"
    extra = {"mix": lambda: [f"grid={spec[3]}"],
             "block": lambda: ["turns"] * bool(spec[3]) + ["np"] * bool(spec[4])}.get(spec[1], list)()
    return f"inv-ViT({', '.join([spec[1], f'p={spec[2]}', *extra])})"


def build_spec(spec: Sequence[Any], ds: ImageDataset) -> torch.nn.Module:
    """A fresh model of ``spec`` for ``ds`` (seed first); ViTs are dim 64, depth 4, 4 heads."""
    kw = dict(in_channels=ds.channels, num_classes=ds.num_classes)
    if spec[0] == "smallcnn":
        return build_model("smallcnn", image_size=ds.size, **kw)
    from ..models import block_invariant_vit, mix_invariant_vit, patch_invariant_vit

    vit = dict(image_size=tuple(ds.size), patch_size=spec[2], dim=64, depth=4, heads=4, **kw)
    if spec[1] == "patch":
        return patch_invariant_vit(**vit)
    if spec[1] == "mix":
        return mix_invariant_vit(grid=spec[3], **vit)
    return block_invariant_vit(rotate=spec[3], negapos=spec[4], **vit)


def same_arch_baseline(spec: tuple[Any, ...]) -> Point:
    """The plain-images point that trains ``spec`` (the fair reference of the points that train it)."""
    return Point("plain", f"no encryption, {spec_label(spec)}", None, lambda side: {}, arch=tuple(spec))


def _model(point: Point, scheme: Scheme | None, ds: ImageDataset) -> tuple[torch.nn.Module, str]:
    spec = model_spec(point, scheme)
    return build_spec(spec, ds), spec_label(spec)


def _keyed_step(scheme: Scheme | None) -> tuple[Scheme | None, Any]:
    """(what the model must be trained on, the pixel step a keyed CNN follows), or (scheme, None)."""
    from ..schemes.compose import ComposedScheme, chain
    from ..schemes.pixel import PixelShuffle

    if isinstance(scheme, PixelShuffle):
        return None, scheme
    if isinstance(scheme, ComposedScheme) and isinstance(scheme.steps[-1], PixelShuffle):
        inner = list(scheme.steps[:-1])
        return (inner[0] if len(inner) == 1 else chain(*inner)), scheme.steps[-1]
    return scheme, None


def measure_utility(point: Point, key: Key, train: ImageDataset, test: ImageDataset, *, epochs: int, batch_size: int,
             seed: int, progress: bool, plain_model: torch.nn.Module | None) -> dict[str, Any]:
    """Train the recipe on the encrypted images; for a keyed last ``pixel`` step, the model is trained on what
    comes before it (plain images for ``pixel`` itself) and converted with that step's key."""
    scheme = point.make(key, FASHION_SIDE)
    trained_on, pixel = _keyed_step(scheme) if point.keyed_model else (scheme, None)
    folded = point.keyed_model and pixel is None  # vit+patch: the key folds into the same-arch plain model

    def encrypted(ds: ImageDataset, s: Scheme | None, test_set: bool) -> ImageDataset:
        if s is None:
            return ds
        if test_set:
            return EncryptedDataset(ds, s, randomness="nonce", nonce_offset=TEST_NONCE_OFFSET)
        return EncryptedDataset(ds, s, randomness="fresh")

    out: dict[str, Any] = {}
    if point.scheme == "instahide":  # trained on mixed batches with mixed labels, as `experiment baselines`
        from .baselines import instahide_accuracy, train_instahide

        seed_everything(seed)
        model, arch = _model(point, scheme, train)
        train_instahide(model, scheme, train, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress)
        out.update(accuracy=instahide_accuracy(model, scheme, test), model=arch, trained=model)
        return out
    if (folded or (pixel is not None and trained_on is None)) and plain_model is not None:
        model, arch = plain_model, _model(point, scheme, train)[1]  # the plain model, converted: no retraining
        seed_everything(seed)
        r = fit(_model(point, scheme, train)[0], encrypted(train, scheme, False),
                test_set=encrypted(test, scheme, True), epochs=epochs, batch_size=batch_size, seed=seed,
                progress=progress, device="cpu")  # ... and, beside it, the recipe trained on the ciphertexts
        out["accuracy"] = r.history[-1]["test_accuracy"]
    else:
        seed_everything(seed)
        model, arch = _model(point, trained_on, train)
        r = fit(model, encrypted(train, trained_on, False), test_set=encrypted(test, trained_on, True),
                epochs=epochs, batch_size=batch_size, seed=seed, progress=progress, device="cpu")
        out["accuracy"] = r.history[-1]["test_accuracy"]
    out.update(model=arch, trained=model)
    if folded and plain_model is not None:
        from ..models import keyed

        converted = keyed(plain_model, scheme.key, scheme=scheme)
        out["keyed_accuracy"] = float((predict(converted, encrypted(test, scheme, True)) == test.targets)
                                      .double().mean())
    if pixel is not None:
        from ..models import keyed

        converted = keyed(model, pixel.key, scheme=pixel, input_size=(train.channels, *train.size))
        out["keyed_accuracy"] = float((predict(converted, encrypted(test, scheme, True)) == test.targets)
                                      .double().mean())
    return out


def _worst_without_oracle(keyed: bool, variants: dict[str, float]) -> float:
    """Keyed schemes: adapted, inverted and key recovery need images encrypted under the key (an oracle or
    leaked pairs), so the glance and the ciphertext-only chain remain; keyless schemes are public: every
    variant applies."""
    return max(v for k, v in variants.items() if not keyed or k in ("glance", "ciphertext-only"))


def measure_privacy(point: Point, key: Key, faces: tuple[torch.Tensor, ...], attack: Reidentify) -> dict[str, Any]:
    g, gl, p, pl = faces
    side = max(g.shape[-2:])
    scheme = point.make(key, side)
    r = attack.run(gallery=g, gallery_labels=gl, probes=p, probe_labels=pl, scheme=scheme)
    variants: dict[str, float] = {}
    for k, v in r.metrics.items():
        parts = k.split("/")
        if len(parts) == 3 and parts[2] == "top1":
            variants[parts[0]] = max(variants.get(parts[0], 0.0), v)
    worst = r.metrics["worst_top1"]
    if point.scheme == "instahide":  # the attack made for it: Carlini et al. on 10 epochs of encodings
        variants["instahide-attack"] = _instahide_reid(scheme, faces, attack)
        worst = max(worst, variants["instahide-attack"])
    out = {"reid": variants, "worst_top1": worst, "worst_top5": r.metrics["worst_top5"],
           "worst_top1_no_oracle": _worst_without_oracle(scheme is not None and scheme.key is not None, variants),
           "chance": r.metrics["chance"], "best_view": r.details.get("best_view", {}),
           "not_applicable": r.details["not_applicable"], "options_faces": {} if scheme is None else
           scheme.config["params"], "attack_cpu_s": r.cost.cpu_seconds}
    if r.reconstructions is not None:
        out["inversion_ssim"] = float(ssim(p, r.reconstructions).mean())
    return out


def _instahide_reid(scheme: Scheme, faces: tuple[torch.Tensor, ...], attack: Reidentify) -> float:
    """Top-1 re-identification of the faces Carlini et al.'s attack recovers (SECURITY.md, "instahide")."""
    from ..attacks.instahide import InstaHideAttack, encode_epochs, reidentify_recovered

    g, gl, p, pl = faces
    seed = attack.seed
    enc, members = encode_epochs(scheme, p, epochs=10, batch_size=50, generator=torch.Generator().manual_seed(seed))
    r = InstaHideAttack(clusters=len(p), seed=seed + 1).run(encodings=enc, members=members, private=p, public=g,
                                                            scheme=scheme)
    return reidentify_recovered(r, gallery=g, gallery_labels=gl, private_labels=pl, encodings=enc, members=members,
                                recognizers=attack.recognizers, cnn_epochs=attack.cnn_epochs,
                                seed=seed)["reid_recovered_top1"]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better on both), by x.

    Examples:
        >>> pareto_front([(0, 0.9), (1, 0.5), (2, 0.6), (3, 0.1)])
        [0, 1, 3]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_frontier(rows: list[dict[str, Any]], path: Path, chance: float) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the frontier plot needs matplotlib: pip install 'keyveil[experiments]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 7), dpi=110)
    names = list(dict.fromkeys(r["scheme"] for r in rows))
    palette = plt.get_cmap("tab10").colors
    colours = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    for i, r in enumerate(rows, 1):  # numbered as the table's '#' column: labels would pile up
        x, y = r["drop_points"], 100 * r["worst_top1"]
        audited = r.get("label") == "audited"  # keyveil audit: the user's scheme among the built-ins
        ax.scatter(x, y, color="black" if audited else colours[r["scheme"]], s=220 if audited else 40,
                   marker="*" if audited else "o", zorder=4 if audited else 3,
                   label=r["scheme"] if r is next(q for q in rows if q["scheme"] == r["scheme"]) else None)
        ax.annotate(str(i), (x, y), fontsize=7, xytext=(3, 3 if i % 2 else -9), textcoords="offset points")
    for r in rows:
        if r["worst_top1_no_oracle"] < r["worst_top1"]:  # keyed: the same setting when no oracle is available
            x, y0, y1 = r["drop_points"], 100 * r["worst_top1_no_oracle"], 100 * r["worst_top1"]
            ax.plot([x, x], [y0, y1], color=colours[r["scheme"]], lw=0.8, alpha=0.5, zorder=1)
            ax.scatter(x, y0, facecolors="none", edgecolors=colours[r["scheme"]], s=40, zorder=3)
    xy = [(r["drop_points"], 100 * r["worst_top1"]) for r in rows]
    front = pareto_front(xy)
    ax.step([xy[i][0] for i in front], [xy[i][1] for i in front], "k--", where="post", lw=1,
            label="Pareto front (worst attacker)", zorder=2)
    xy2 = [(r["drop_points"], 100 * r["worst_top1_no_oracle"]) for r in rows]
    front2 = pareto_front(xy2)
    ax.step([xy2[i][0] for i in front2], [xy2[i][1] for i in front2], color="grey", ls="-.", where="post", lw=1,
            label="Pareto front without an encryption oracle (hollow: keyed schemes)", zorder=2)
    ax.axhline(100 * chance, color="grey", lw=1, ls=":", label=f"chance ({100 * chance:.1f} %)")
    ax.axhline(200 * chance, color="red", lw=1, ls=":", label=f"2x chance ({200 * chance:.1f} %)")
    ax.axvline(2.35, color="orange", lw=1, ls=":", label="2.35-point drop (VisualMixer's claim)")
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)  # spreads the crowded 0..5-point corner
    ax.set_xticks([0, 0.5, 1, 2, 3, 5, 10, 20, 30, 50])
    ax.set_xticklabels(["0", "0.5", "1", "2", "3", "5", "10", "20", "30", "50"])
    ax.set_xlim(-0.1, max(60.0, 1.1 * max(r["drop_points"] for r in rows)))
    ax.set_xlabel("accuracy drop on Fashion-MNIST vs plain (points, symlog; keyed model where one applies)")
    ax.set_ylabel("worst-case re-identification top-1 on AT&T faces (%)")
    ax.set_title("Privacy vs utility: every scheme's strength knob (lower left is better; numbers: table rows)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def run_frontier(
    *,
    points: Sequence[Point] = POINTS,
    epochs: int = 2,
    limit: int | None = 10000,
    test_limit: int | None = None,
    batch_size: int = 64,
    faces: tuple[torch.Tensor, ...] | None = None,
    attack: Reidentify | None = None,
    dataset: str = "fashion-mnist",
    seed: int = 0,
    out_dir: str | Path = "results",
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Measure every point; writes ``frontier.md``, ``frontier.json`` and ``frontier.png`` under ``out_dir``.

    Args:
        points: the settings to measure (default :data:`POINTS`); ``plain`` is added when missing.
        epochs, limit, test_limit, batch_size: the utility recipe (Fashion-MNIST training images / test images).
        faces: ``(gallery, gallery_ids, probes, probe_ids)``; default :func:`~keyveil.attacks.reidentify.face_split`.
        attack: the re-identification attack (default: every variant, both recognizers, 30 CNN epochs).
        dataset: the utility dataset (``fashion-mnist``; ``mnist5k`` for quick runs).
        resume: reuse the rows of an earlier ``frontier.json`` in ``out_dir`` measured with the same
            recipe and options (``plain`` is always measured again: it is the reference).
    """
    timer = Timer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(seed)
    points = list(points)
    if not any(p.is_reference for p in points):
        points.insert(0, POINTS[0])
    specs = {model_spec(p, p.make(key, FASHION_SIDE)) for p in points if p.scheme != "plain"}
    have = {p.arch for p in points if p.scheme == "plain"}
    points += [same_arch_baseline(s) for s in sorted(specs, key=repr) if s[0] != "smallcnn" and s not in have]
    points.sort(key=lambda p: (not p.is_reference, p.scheme != "plain"))
    faces = faces if faces is not None else face_split()
    attack = attack if attack is not None else Reidentify(cnn_epochs=30, adapted_draws=2, seed=seed)
    train = PaddedDataset(create_dataset(dataset, "train").limit(limit), 16)
    test = PaddedDataset(create_dataset(dataset, "test").limit(test_limit), 16)
    log(f"utility: {dataset} {len(train)} train / {len(test)} test, padded to {train.size}, {epochs} epochs; "
        f"privacy: {len(faces[0])} gallery / {len(faces[2])} probe faces {tuple(faces[0].shape[-2:])}")
    recipe = {"dataset": dataset, "epochs": epochs, "train_images": len(train), "test_images": len(test),
              "batch_size": batch_size, "seed": seed, "faces": [len(faces[0]), len(faces[2]), *faces[0].shape[-2:]],
              "attack": repr(attack)}
    earlier = _earlier_rows(Path(out_dir) / "frontier.json", recipe) if resume else {}
    rows: list[dict[str, Any]] = []
    plain_acc, plain_rows = None, {}  # plain rows by model spec: the same-architecture references
    for point in points:
        t = Timer()
        spec = model_spec(point, point.make(key, FASHION_SIDE))
        if point.scheme != "plain" and (point.scheme, point.label) in earlier:
            old = earlier[(point.scheme, point.label)]
            made = point.make(key, FASHION_SIDE)
            if old["options_fashion"] == made.config["params"]:
                old.setdefault("worst_top1_no_oracle", _worst_without_oracle(made.key is not None, old["reid"]))
                rows.append({**old, "reused": True, "model_spec": list(spec)})
                log(f"  {point.scheme:<12} {point.label:<30} reused from the earlier frontier.json")
                continue
        base = plain_rows.get(spec)
        u = measure_utility(point, key, train, test, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress,
                            plain_model=None if base is None else base["trained"])
        if point.is_reference:
            plain_acc = u["accuracy"]
        if point.scheme == "plain":  # plain images on a ViT: the reference's privacy, nothing else to measure
            plain_rows[spec] = {"trained": u["trained"], "accuracy": u["accuracy"]}
        q = {**rows[0]} if point.scheme == "plain" and not point.is_reference else None
        q = measure_privacy(point, key, faces, attack) if q is None else {
            k: q[k] for k in ("reid", "worst_top1", "worst_top5", "worst_top1_no_oracle", "chance", "best_view",
                              "not_applicable", "options_faces", "attack_cpu_s")}
        best_acc = max(u["accuracy"], u.get("keyed_accuracy", 0.0))
        row = {"scheme": point.scheme, "label": point.label, "strength": point.strength,
               "options_fashion": {} if point.scheme == "plain" else point.make(key, FASHION_SIDE).config["params"],
               "model": u["model"], "accuracy": u["accuracy"], "keyed_accuracy": u.get("keyed_accuracy"),
               "drop_points": 100 * (plain_acc - best_acc), "model_spec": list(spec), **q, "cpu_s": t.cpu,
               "wall_s": t.wall}
        rows.append(row)
        reid = ", ".join(f"{k} {100 * v:.1f}" for k, v in q["reid"].items())
        log(f"  {point.scheme:<12} {point.label:<30} acc {100 * u['accuracy']:.2f} %"
            + (f" (keyed {100 * u['keyed_accuracy']:.2f} %)" if u.get("keyed_accuracy") is not None else "")
            + f"  drop {row['drop_points']:.2f}  re-id top-1 % [{reid}]  worst {100 * q['worst_top1']:.1f}"
            f"  ({t.cpu:.0f} s CPU)")
    for r in rows:  # the fair utility of ViT-based schemes: against plain images on the same architecture
        base = plain_rows.get(tuple(r["model_spec"]), {"accuracy": plain_acc})["accuracy"]
        best = max(r["accuracy"], r.get("keyed_accuracy") or 0.0)
        r.update(same_arch_plain_accuracy=base, drop_same_arch_points=100 * (base - best))
    front = set(pareto_front([(r["drop_points"], r["worst_top1"]) for r in rows]))
    for i, r in enumerate(rows):
        r["pareto"] = i in front
    out = Path(out_dir)
    chance = rows[0]["chance"]
    plot = plot_frontier(rows, out / "frontier.png", chance)
    data = {"experiment": "frontier", "key_fingerprint": key.fingerprint, "recipe": recipe, "chance": chance,
            "rows": [{k: v for k, v in r.items() if k != "reused"} for r in rows], "wall_s": timer.wall,
            "cpu_s": timer.cpu, "points_cpu_s": sum(r["cpu_s"] for r in rows),
            "reused": sum(1 for r in rows if r.get("reused")), "torch_threads": torch.get_num_threads(),
            "padded_to": list(train.size)}
    md = frontier_markdown(data)
    data["files"] = [str(p) for p in write_report(out, "frontier", md, data)] + [str(plot)]
    return data


def frontier_markdown(data: dict[str, Any]) -> str:
    """The Markdown report of a frontier run, from its JSON ``data`` (what ``frontier.json`` holds)."""
    rows, recipe, chance = data["rows"], data["recipe"], data["chance"]
    variants = ("glance", "adapted", "inverted", "key-recovery", "instahide-attack")
    table = markdown_table(
        ["#", "scheme", "setting", "Fashion-MNIST options", "faces options", "model", "accuracy (%)", "keyed model (%)",
         "drop (points)", "same-arch plain (%)", "drop vs same arch (points)", *[f"re-id {v} (%)" for v in variants], "worst re-id top-1 (%)",
         "worst without an oracle (%)", "inversion SSIM", "Pareto"],
        [[str(i), r["scheme"], r["label"], _opts(r["options_fashion"]), _opts(r["options_faces"]), r["model"],
          f"{100 * r['accuracy']:.2f}", _pct(r["keyed_accuracy"]), f"{r['drop_points']:.2f}",
          _pct(r.get("same_arch_plain_accuracy")),
          "—" if r.get("drop_same_arch_points") is None else f"{r['drop_same_arch_points']:.2f}",
          *[_pct(r["reid"].get(v)) for v in variants], f"**{100 * r['worst_top1']:.1f}**",
          _pct(r["worst_top1_no_oracle"]),
          "—" if r.get("inversion_ssim") is None else f"{r['inversion_ssim']:.3f}", "yes" if r["pareto"] else ""]
         for i, r in enumerate(rows, 1)])
    reused = data.get("reused", 0)
    threads = data.get("torch_threads", "?")
    height, width = data.get("padded_to", (32, 32))
    return (f"# Privacy–utility frontier\n\nCommand: `keyveil experiment frontier` (key {data['key_fingerprint']}, "
            f"a fixed seed). This run: {data['wall_s']:.0f} s wall, {data['cpu_s']:.0f} s CPU, torch threads "
            f"{threads}; all {len(rows)} points together {data['points_cpu_s']:.0f} s CPU"
            + (f" ({reused} reused from an earlier run with `--resume`)" if reused else "") + ".\n\n"
            f"Utility: {recipe['dataset']}, {recipe['train_images']} training / {recipe['test_images']} test images "
            f"padded to {height}x{width}, {recipe['epochs']} epochs, batch {recipe['batch_size']}, Adam "
            "(the `experiment schemes` recipe). 'drop (points)': against plain images on the small CNN (row 1), "
            "using the keyed model's accuracy where one applies (its meaning is unchanged). 'drop vs same arch': "
            "against plain images on the point's own model (the `plain` row of that model): for an exactly "
            "invariant ViT the drop against the CNN is the architecture's cost, not the scheme's. Privacy: re-identification on AT&T faces "
            f"({recipe['faces'][0]} gallery / {recipe['faces'][1]} probe photos, chance {100 * chance:.1f} %), best "
            "top-1 over recognizers (eigenfaces, CNN) and views (blur, pooling) per attacker variant; — = not "
            "applicable. 'Without an oracle': for keyed schemes only the glance attacker (adapted, inverted and "
            "key recovery need images encrypted under the key); keyless schemes are public, so every variant "
            "applies. Strength is relative to the image's longer side.\n\n"
            f"{table}\n\n![frontier](frontier.png)\n")


def _earlier_rows(path: Path, recipe: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    import json

    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if data.get("recipe") != json.loads(json.dumps(recipe)):
        return {}
    return {(r["scheme"], r["label"]): r for r in data.get("rows", [])}


def _opts(o: dict[str, Any]) -> str:
    if "steps" in o:  # a chain: each step's name and its non-default knobs
        return " → ".join(f"{st['scheme']}({_opts(st['params'])})" if _opts(st["params"]) != "—" else st["scheme"]
                          for st in o["steps"])
    return ", ".join(f"{k}={v}" for k, v in o.items() if v is not None and k not in ("confidence", "channel_shuffle",
                                                                                    "mixtures")) or "—"
