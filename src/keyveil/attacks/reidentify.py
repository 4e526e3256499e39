"""Re-identification: can someone tell *who* is in a scrambled face? (docs/design.md §7).

The attacker holds a *gallery* of plain photos of every person (AT&T faces:
photos 1–5 of each of the 40 people); the client's other photos (6–10) are the
*probes*, encrypted. The attacker ranks the 40 identities for every probe; the
score is the top-1 / top-5 identification rate, against chance ``1/40``.

Attacker variants (each reported; a setting is as private as its worst):

- ``glance``: recognizers built on the plain gallery, applied to the probe
  after the image processing anyone tries first — Gaussian blur and average
  pooling at several scales (a window shuffle keeps every window's mean, so
  pooling at the window size undoes it). The best view is reported: it is the
  attacker's best guess of which trick works, an upper bound on what one
  attacker reaches.
- ``adapted``: the attacker scrambles its own gallery with the public scheme
  (keyless per-image schemes: anyone can; keyed schemes: only with an
  encryption oracle) and matches or trains in the scrambled domain.
- ``inverted``: a U-Net (:class:`~keyveil.attacks.LearnedInversion`) trained
  on (encrypted, plain) gallery pairs the attacker makes (keyed: leaked
  through the oracle) undoes what it can; the plain-gallery recognizers are
  applied to the reconstructions.
- ``ciphertext-only``: keyed schemes, no oracle: the attacker holds only
  ciphertexts under the victim's key — the encrypted probes plus the other
  encrypted photos (the gallery's shots, encrypted: what a server training on
  everyone's encrypted faces holds), unlabelled and unpaired. The attack that
  fits the scheme (:mod:`keyveil.attacks.chains`) recovers what it can; the
  plain-gallery recognizers are applied to its reconstructions of the probes.
  Not applicable (with the reason) where no ciphertext-only attack exists.
- ``key-recovery``: keyed schemes, once chosen-plaintext
  (:class:`~keyveil.attacks.ChosenPlaintext`) recovered the key: the probes
  are decrypted and recognized as plain photos. Reported as not applicable
  when the oracle's outputs are no fixed permutation (per-image schemes).

Recognizers: ``eigenfaces`` (PCA + 1-nearest neighbour, Turk & Pentland
1991; hand-written because it is twenty lines of batched torch and needs no
extra dependency) and ``cnn`` (a small CNN trained on the gallery, with the
views as training augmentation, so one network serves every view).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.loop import index_batches, train_loop
from ..schemes import GeometryError, Scheme, SchemeError
from .base import Attack, AttackError, AttackResult, Cost, measure, register_attack
from .chains import recover_from_ciphertexts
from .inversion import LearnedInversion
from .permutation import ChosenPlaintext
from .views import View, apply_view, default_views

__all__ = ["Reidentify", "Eigenfaces", "CNNRecognizer", "View", "default_views", "apply_view", "face_split",
           "VARIANTS", "RECOGNIZERS", "encryption_randomness", "fit_geometry"]

PLAIN = View("plain")
VARIANTS = ("glance", "adapted", "inverted", "ciphertext-only", "key-recovery")
RECOGNIZERS = ("eigenfaces", "cnn")


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


# -- recognizers --------------------------------------------------------------------------------------------


def _identity_scores(sim: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Best similarity per identity: ``(probes, gallery)`` -> ``(probes, classes)``."""
    out = torch.full((sim.shape[0], classes), -math.inf, dtype=sim.dtype)
    return out.scatter_reduce(1, labels.expand(sim.shape[0], -1), sim, reduce="amax")


class Eigenfaces:
    """PCA on the gallery, then 1-nearest neighbour in the projected space (Turk & Pentland 1991).

    Args:
        components: principal components kept (at most gallery size - 1).
        view: processing applied to every image before the projection.

    Examples:
        >>> import torch
        >>> g = torch.rand(6, 1, 8, 8); labels = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> rec = Eigenfaces(components=4).fit(g, labels, classes=3)
        >>> rec.scores(g).argmax(1).tolist()
        [0, 0, 1, 1, 2, 2]
    """

    def __init__(self, *, components: int = 60, view: View = PLAIN) -> None:
        self.components, self.view = int(components), view

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        y = apply_view(_to_float(x), self.view)
        if self.view.kind == "blur":  # a blur of sigma s leaves nothing finer than s: subsample (cheaper PCA)
            y = y[..., :: self.view.size, :: self.view.size]
        return y.flatten(1).double()

    def fit(self, gallery: torch.Tensor, labels: torch.Tensor, *, classes: int) -> Eigenfaces:
        f = self._features(gallery)
        self.mean = f.mean(0, keepdim=True)
        centred = f - self.mean
        # eigenvectors of the (N,N) Gram matrix: cheaper than an SVD of (N,D) when D >> N
        evals, evecs = torch.linalg.eigh(centred @ centred.T)
        k = max(1, min(self.components, f.shape[0] - 1))
        evals, evecs = evals.flip(0)[:k].clamp_min(1e-12), evecs.flip(1)[:, :k]
        self.basis = centred.T @ evecs / evals.sqrt()
        self.gallery = centred @ self.basis
        self.labels, self.classes = labels.long(), int(classes)
        return self

    def scores(self, probes: torch.Tensor) -> torch.Tensor:
        """``(probes, classes)``: higher is a better match (minus the nearest gallery distance)."""
        p = (self._features(probes) - self.mean) @ self.basis
        return _identity_scores(-torch.cdist(p, self.gallery), self.labels, self.classes)


class _FaceNet(nn.Module):
    def __init__(self, channels: int, classes: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for w in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d((4, 3)), nn.Flatten(), nn.Dropout(0.3))
        self.head = nn.Linear(cin * 12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CNNRecognizer:
    """A small CNN trained on the gallery; every training batch goes through a random view.

    Images are shrunk to ``input_side`` pixels high first (it is a small CNN on
    a CPU); training uses random shifts and a random choice of ``views``, so
    one network is scored on each view.

    Args:
        views: the views to train on (and to score with).
        epochs: passes over the gallery.
        width: channels of the first layer.
        input_side: height the images are resized to.
        seed: initialization and batching.
    """

    def __init__(self, *, views: Sequence[View] = (View("plain"),), epochs: int = 40, width: int = 16,
                 input_side: int = 56, lr: float = 3e-3, seed: int = 0) -> None:
        self.views, self.epochs, self.width = tuple(views), int(epochs), int(width)
        self.input_side, self.lr, self.seed = int(input_side), float(lr), int(seed)

    def _prepare(self, x: torch.Tensor, view: View) -> torch.Tensor:
        x = _to_float(x)
        h, w = x.shape[-2:]
        size = (self.input_side, max(1, round(w * self.input_side / h)))
        y = apply_view(x, view)
        return F.interpolate(y, size=size, mode="bilinear" if view.kind == "pool" else "area",
                             **({"align_corners": False} if view.kind == "pool" else {}))

    def fit(self, gallery: torch.Tensor | Callable[[], torch.Tensor], labels: torch.Tensor, *,
            classes: int) -> CNNRecognizer:
        """Train; ``gallery`` may be a callable returning a fresh (re-encrypted) gallery every epoch."""
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        first = gallery() if callable(gallery) else gallery
        self.net = _FaceNet(first.shape[1], classes, self.width)
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=1e-3)
        labels = labels.long()
        prepared: list[torch.Tensor] = []

        def batches(epoch: int):
            if epoch == 0 or callable(gallery):  # a re-encrypted gallery every epoch
                x = first if epoch == 0 else gallery()
                prepared[:] = [self._prepare(x, v) for v in self.views]
            for idx in index_batches(len(labels), 32, generator=gen):
                view = int(torch.randint(len(self.views), (1,), generator=gen))
                dy, dx = (int(v) for v in torch.randint(-3, 4, (2,), generator=gen))
                yield torch.roll(prepared[view][idx], (dy, dx), (2, 3)), labels[idx]

        train_loop(self.net, opt, batches, epochs=self.epochs, loss_fn=lambda m, b: (
            F.cross_entropy(m(b[0]), b[1], label_smoothing=0.1), {"n": len(b[1])}))
        self.net.eval()
        return self

    @torch.no_grad()
    def scores(self, probes: torch.Tensor, view: View) -> torch.Tensor:
        return self.net(self._prepare(probes, view)).double()


# -- the attack ---------------------------------------------------------------------------------------------


def face_split(gallery_shots: Sequence[int] = range(1, 6), probe_shots: Sequence[int] = range(6, 11)
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """AT&T faces (40 people, 112x92, uint8): gallery images and ids, probe images and ids (ids 0..39)."""
    from ._data import orl_faces

    x, y = orl_faces(size=(112, 92))
    shot = torch.arange(len(x)) % 10 + 1
    g = torch.isin(shot, torch.tensor(list(gallery_shots)))
    p = torch.isin(shot, torch.tensor(list(probe_shots)))
    if bool((g & p).any()):
        raise AttackError("gallery and probe photos overlap; give disjoint shot numbers (1..10)")
    return x[g], y[g] - 1, x[p], y[p] - 1


def _rates(scores: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    rank = (scores > scores.gather(1, truth[:, None])).sum(1)
    return float((rank < 1).double().mean()), float((rank < 5).double().mean())


def fit_geometry(scheme: Scheme | None, x: torch.Tensor) -> tuple[int, int]:
    """Zero padding (bottom, right) ``x``'s images need before ``scheme`` accepts them (block/patch sizes).

    Examples:
        >>> import torch
        >>> from keyveil import schemes
        >>> fit_geometry(schemes.create("patch", patch_size=16), torch.zeros(1, 1, 112, 92))
        (0, 4)
    """
    if scheme is None:
        return 0, 0
    c, h, w = x.shape[1:]
    for m in range(1, 257):
        ph, pw = (-h) % m, (-w) % m
        try:
            scheme.check_geometry((c, h + ph, w + pw))
            return ph, pw
        except GeometryError:
            continue
    raise AttackError(f"scheme {type(scheme).name!r} accepts no padding of {h}x{w} images to a multiple of <= 256")


def encryption_randomness(scheme: Scheme, seed: int) -> dict[str, Any]:
    """``encrypt`` keywords that make a per-image scheme's randomness reproducible (none for keyed schemes)."""
    return {"generator": torch.Generator().manual_seed(seed)} if scheme.per_image else {}


@register_attack
class Reidentify(Attack):
    """Re-identify people from encrypted face photos (top-1 / top-5 against chance).

    Args:
        variants: attacker variants to run (see the module docstring); those
            that do not apply to a scheme are reported as such.
        recognizers: ``eigenfaces`` and/or ``cnn``.
        views: the image processing tried (default :func:`default_views`).
        components: eigenfaces' principal components.
        cnn_epochs: CNN training epochs.
        adapted_draws: encryptions of every gallery photo the adapted
            eigenfaces attacker matches against (per-image schemes).
        inversion_epochs: U-Net epochs of the ``inverted`` variant.
        chain_seconds: CPU budget of the ``ciphertext-only`` variant's search.
        seed: seed of the encryption randomness and of training.

    Examples:
        >>> import torch
        >>> from keyveil import schemes
        >>> g = torch.randint(0, 256, (1, 1, 16, 16), dtype=torch.uint8).repeat(8, 1, 1, 1)
        >>> g[4:] = 255 - g[4:]; labels = torch.tensor([0] * 4 + [1] * 4)
        >>> r = Reidentify(variants=("glance",), recognizers=("eigenfaces",)).run(
        ...     gallery=g[::2], gallery_labels=labels[::2], probes=g[1::2], probe_labels=labels[1::2],
        ...     scheme=None)
        >>> r.metrics["glance/eigenfaces/top1"], r.metrics["chance"]
        (1.0, 0.5)
    """

    name = "reidentify"
    description = "re-identify people from encrypted face photos: glance, adapted, inverted, after key recovery"

    def __init__(self, *, variants: Sequence[str] = VARIANTS, recognizers: Sequence[str] = RECOGNIZERS,
                 views: Sequence[View] | None = None, components: int = 60, cnn_epochs: int = 40,
                 adapted_draws: int = 3, inversion_epochs: int = 8, chain_seconds: float = 20.0,
                 seed: int = 0) -> None:
        bad = [v for v in variants if v not in VARIANTS] + [r for r in recognizers if r not in RECOGNIZERS]
        if bad or not variants or not recognizers:
            raise AttackError(f"unknown or missing variants/recognizers {bad}; variants: {', '.join(VARIANTS)}; "
                              f"recognizers: {', '.join(RECOGNIZERS)}")
        if cnn_epochs < 1 or adapted_draws < 1 or inversion_epochs < 1 or components < 1:
            raise AttackError("components, cnn_epochs, adapted_draws and inversion_epochs must be >= 1")
        self.variants, self.recognizers = tuple(variants), tuple(recognizers)
        self.views = tuple(views) if views is not None else default_views()
        self.components, self.cnn_epochs = int(components), int(cnn_epochs)
        self.adapted_draws, self.inversion_epochs, self.seed = int(adapted_draws), int(inversion_epochs), int(seed)
        self.chain_seconds = float(chain_seconds)

    def run(self, *, gallery: torch.Tensor, gallery_labels: torch.Tensor, probes: torch.Tensor,
            probe_labels: torch.Tensor, scheme: Scheme | None) -> AttackResult:
        """Encrypt the probes with ``scheme`` (the victim), then attack as every variant.

        Args:
            gallery, gallery_labels: the attacker's plain photos ``(N,C,H,W)`` uint8 and their ids.
            probes, probe_labels: the victim's plain photos and ids (ids only score the attack).
            scheme: the victim's scheme (``None``: no encryption, the baseline). Keyed
                schemes act as the oracle of ``adapted`` / ``inverted`` / ``key-recovery``.

        Returns:
            An :class:`AttackResult`; ``metrics`` holds ``{variant}/{recognizer}/top1`` and
            ``.../top5`` (best view), ``worst_top1`` / ``worst_top5`` over everything that
            applied, ``chance``; ``details["table"]`` every (variant, recognizer, view) rate,
            ``details["not_applicable"]`` the variants skipped and why. ``reconstructions``
            are the inverted probes when ``inverted`` ran.
        """
        gallery_labels, probe_labels = torch.as_tensor(gallery_labels).long(), torch.as_tensor(probe_labels).long()
        classes = int(torch.cat([gallery_labels, probe_labels]).max()) + 1
        ph, pw = fit_geometry(scheme, probes)
        gallery, probes = F.pad(gallery, (0, pw, 0, ph)), F.pad(probes, (0, pw, 0, ph))
        cost = Cost()
        table: list[dict[str, Any]] = []
        skipped: dict[str, str] = {}
        recon = None
        with measure(cost):
            enc = probes if scheme is None else scheme.encrypt(probes, **encryption_randomness(scheme, self.seed))
            plain_rec = self._recognizers(gallery, gallery_labels, classes)
            for variant in self.variants:
                reason = self._not_applicable(variant, scheme)
                if reason:
                    skipped[variant] = reason
                    continue
                if variant == "glance":
                    rows = self._score(plain_rec, enc, probe_labels)
                elif variant == "adapted":
                    rows = self._adapted(scheme, gallery, gallery_labels, enc, probe_labels, classes, cost)
                elif variant == "inverted":
                    recon, rows = self._inverted(scheme, gallery, enc, probe_labels, plain_rec, cost)
                else:
                    rows, why = (self._key_recovery if variant == "key-recovery" else self._ciphertext_only)(
                        scheme, gallery, enc, probe_labels, plain_rec, cost)
                    if why:
                        skipped[variant] = why
                        continue
                table += [{"variant": variant, **r} for r in rows]
        result = AttackResult(self.name, reconstructions=None if recon is None else recon[..., :probes.shape[-2] - ph,
                                                                                          :probes.shape[-1] - pw],
                              cost=cost, details={"table": table, "not_applicable": skipped, "padding": (ph, pw)})
        for variant in dict.fromkeys(r["variant"] for r in table):
            for rec in self.recognizers:
                rows = [r for r in table if r["variant"] == variant and r["recognizer"] == rec]
                if rows:
                    best = max(rows, key=lambda r: (r["top1"], r["top5"]))
                    result.metrics[f"{variant}/{rec}/top1"] = best["top1"]
                    result.metrics[f"{variant}/{rec}/top5"] = max(r["top5"] for r in rows)
                    result.details.setdefault("best_view", {})[f"{variant}/{rec}"] = best["view"]
        result.metrics["worst_top1"] = max((r["top1"] for r in table), default=float("nan"))
        result.metrics["worst_top5"] = max((r["top5"] for r in table), default=float("nan"))
        result.metrics["chance"] = 1.0 / classes
        return result

    # -- pieces -------------------------------------------------------------------------------------------
    def _recognizers(self, gallery: torch.Tensor | Callable[[], torch.Tensor], labels: torch.Tensor, classes: int,
                     draws: int = 1) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "eigenfaces" in self.recognizers:
            g = torch.cat([gallery() for _ in range(draws)]) if callable(gallery) else gallery
            lab = labels.repeat(len(g) // len(labels))
            out["eigenfaces"] = [Eigenfaces(components=self.components, view=v).fit(g, lab, classes=classes)
                                 for v in self.views]
        if "cnn" in self.recognizers:
            out["cnn"] = CNNRecognizer(views=self.views, epochs=self.cnn_epochs, seed=self.seed).fit(
                gallery, labels, classes=classes)
        return out

    def _score(self, recs: dict[str, Any], probes: torch.Tensor, truth: torch.Tensor) -> list[dict[str, Any]]:
        rows = []
        for name, rec in recs.items():
            for i, view in enumerate(self.views):
                s = rec[i].scores(probes) if name == "eigenfaces" else rec.scores(probes, view)
                t1, t5 = _rates(s, truth)
                rows.append({"recognizer": name, "view": view.name, "top1": t1, "top5": t5})
        return rows

    @staticmethod
    def _not_applicable(variant: str, scheme: Scheme | None) -> str:
        if scheme is None and variant != "glance":
            return "no encryption: only glance applies"
        if variant == "key-recovery" and scheme is not None and scheme.key is None:
            return "keyless scheme: there is no key to recover"
        return ""

    def _adapted(self, scheme: Scheme, gallery: torch.Tensor, labels: torch.Tensor, enc: torch.Tensor,
                 truth: torch.Tensor, classes: int, cost: Cost) -> list[dict[str, Any]]:
        gen = torch.Generator().manual_seed(self.seed + 101)

        def scrambled() -> torch.Tensor:
            cost.queries += len(gallery)
            return scheme.encrypt(gallery, generator=gen) if scheme.per_image else scheme.encrypt(gallery)

        draws = self.adapted_draws if scheme.per_image else 1
        return self._score(self._recognizers(scrambled if scheme.per_image else scrambled(), labels, classes,
                                             draws=draws), enc, truth)

    def _inverted(self, scheme: Scheme, gallery: torch.Tensor, enc: torch.Tensor, truth: torch.Tensor,
                  plain_rec: dict[str, Any], cost: Cost) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        inv = LearnedInversion(epochs=self.inversion_epochs, width=8, batch_size=16, seed=self.seed)
        if scheme.per_image:
            gen = torch.Generator().manual_seed(self.seed + 202)
            r = inv.run(encrypt=lambda x: scheme.encrypt(x, generator=gen), train_plain=gallery, test_encrypted=enc)
        else:
            cost.queries += len(gallery)
            r = inv.run(train_encrypted=scheme.encrypt(gallery), train_plain=gallery, test_encrypted=enc)
        cost.pairs += int(r.metrics["pairs"])
        return r.reconstructions, self._score(plain_rec, r.reconstructions, truth)

    def _key_recovery(self, scheme: Scheme, gallery: torch.Tensor, enc: torch.Tensor, truth: torch.Tensor,
                      plain_rec: dict[str, Any], cost: Cost) -> tuple[list[dict[str, Any]], str]:
        c, h, w = enc.shape[1:]
        nibbles = bool(getattr(scheme, "nibbles", False))
        try:
            r = ChosenPlaintext(nibbles=nibbles).run(oracle=scheme.encrypt, image_size=(h, w), channels=c)
        except (AttackError, SchemeError) as exc:  # SchemeError: the oracle refuses the crafted images
            return [], f"chosen-plaintext recovered no fixed permutation ({exc})"
        cost.queries += r.cost.queries
        return self._score(plain_rec, r.decrypt(enc), truth), ""

    def _ciphertext_only(self, scheme: Scheme, gallery: torch.Tensor, enc: torch.Tensor, truth: torch.Tensor,
                         plain_rec: dict[str, Any], cost: Cost) -> tuple[list[dict[str, Any]], str]:
        held = torch.cat([enc, scheme.encrypt(gallery, **encryption_randomness(scheme, self.seed + 303))])
        got = recover_from_ciphertexts(scheme, held, enc, gallery, seconds=self.chain_seconds)
        if isinstance(got, str):
            return [], got
        cost.ciphertexts += len(held)
        return self._score(plain_rec, got[0], truth), ""
