"""The attack on InstaHide (Carlini et al., "Is private learning possible with instance encoding?", S&P 2021).

An InstaHide encoding is ``σ ⊙ Σ_j λ_j x_j`` (``keyveil.schemes.InstaHide``):
a random ±1 mask on a mixture of k images mapped to [-1, 1]. The attacker
sees many encodings — the realistic setting of the paper: a model trained for
T epochs sees every private image in about k·T encodings (once per epoch as
the image encoded, k−1 times on average as someone else's partner). Steps,
**our reading** of Carlini et al. (they train a comparator network and solve a
graph problem; we use the simplest versions of each step that work here):

1. **Undo the sign flip**: ``|encoding|`` removes the mask exactly.
2. **Similarity**: normalized cross-correlation of the |encodings| (2×2
   average-pooled, the dataset's mean |encoding| removed). Two encodings that
   share a private image correlate; unrelated ones barely do.
3. **Clusters**: every encoding's ``neighbors`` most similar encodings are
   (mostly) encodings that share an image with it; averaging the |encodings|
   of that neighbourhood makes the shared image stand out (the other images'
   contributions average to a flat background). Neighbourhoods are taken in
   order of cohesion (mean similarity to their neighbours); one whose average
   correlates above ``merge_threshold`` with a cluster already taken is the
   same private image and is skipped; at most ``clusters`` are kept.
4. **Recovery**: a cluster's mean |encoding| is an image of its private
   image folded about mid-grey (|2v − 1|) plus a background. The attacker
   undoes that with a per-pixel affine map fitted on *public* images it
   encodes itself with the public scheme and attacks the same way (Carlini et
   al. learn this step with a network). Without public images the recovery is
   the cluster mean rescaled to [0, 1] (the folded image).

Evaluation needs the ground truth (which private images each encoding
mixes, ``members``): each cluster is scored against the private image that
most of its encodings contain (purity = that fraction), by SSIM, next to the
SSIM of the encodings themselves (as images, ``(e + 1) / 2``) against the
image each encodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..metrics.quality import ssim
from ..schemes import Scheme
from ..schemes.baselines import InstaHide, instahide_values
from .base import Attack, AttackError, AttackResult, Cost, measure, register_attack

__all__ = ["InstaHideAttack", "encode_epochs", "similarity", "cluster_encodings", "fit_calibration"]


def encode_epochs(
    scheme: InstaHide, images: torch.Tensor, *, epochs: int, batch_size: int, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """InstaHide-encode ``images`` as ``epochs`` epochs of training would: shuffled batches, one encoding per image each.

    Returns:
        ``(encodings (epochs·N, C,H,W), members (epochs·N, N))``: ``members[e, i]`` is the
        weight of private image ``i`` in encoding ``e`` (0 when absent): its coefficient, divided
        by the private images' share when public partners are mixed in.
    """
    if not isinstance(scheme, InstaHide):
        raise AttackError(f"encode_epochs needs an instahide scheme, got {type(scheme).__name__}")
    n = len(images)
    encs, members = [], []
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            eye = torch.eye(len(idx), dtype=torch.float64)
            # identity one-hots: the mixed "labels" are each encoding's private coefficients
            e, lam = scheme.encrypt_with_labels(images[idx], eye, generator=generator)
            m = torch.zeros(len(idx), n, dtype=torch.float64)
            m[:, idx] = lam
            encs.append(e)
            members.append(m)
    return torch.cat(encs), torch.cat(members)


def _features(a: torch.Tensor, pool: int) -> torch.Tensor:
    f = F.avg_pool2d(a, pool, ceil_mode=True) if pool > 1 else a
    f = f.flatten(1)
    f = f - f.mean(0, keepdim=True)
    f = f - f.mean(1, keepdim=True)
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def similarity(abs_encodings: torch.Tensor, *, pool: int = 2) -> torch.Tensor:
    """``(N, N)`` normalized cross-correlation of |encodings| (pooled, mean |encoding| removed); diagonal −inf."""
    f = _features(abs_encodings.float(), pool)
    s = f @ f.T
    s.fill_diagonal_(-float("inf"))
    return s


def cluster_encodings(
    abs_encodings: torch.Tensor, *, neighbors: int, clusters: int | None, merge_threshold: float, pool: int = 2,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Groups of encodings believed to share one private image, and each group's mean |encoding|.

    Returns:
        ``(groups, means)``: a list of int64 index tensors (the seed encoding first)
        and ``(len(groups), C, H, W)`` float32 mean |encodings|.
    """
    a = abs_encodings.float()
    n = len(a)
    m = min(neighbors, n - 1)
    if m < 1:
        raise AttackError("the attack needs at least 2 encodings")
    s = similarity(a, pool=pool)
    top = s.topk(m, 1)
    hood = torch.cat([torch.arange(n).view(-1, 1), top.indices], 1)  # (N, m+1)
    flat = a.flatten(1)
    candidates = torch.cat([flat[hood[i:i + 256]].mean(1) for i in range(0, n, 256)]).view_as(a)  # neighbourhood means
    f = _features(candidates, pool)
    order = top.values.mean(1).argsort(descending=True)  # most cohesive neighbourhoods first
    taken: list[int] = []
    limit = n if clusters is None else clusters
    for i in order.tolist():
        if len(taken) >= limit:
            break
        if taken and float((f[taken] @ f[i]).max()) >= merge_threshold:
            continue  # the same private image as a cluster already taken
        taken.append(i)
    groups = [hood[i] for i in taken]
    return groups, candidates[taken]


def fit_calibration(means: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel least-squares ``truth ≈ a · mean + b`` over pairs; returns ``(a, b)`` shaped ``(C,H,W)``."""
    x, y = means.double().flatten(1), truth.double().flatten(1)
    xm, ym = x.mean(0), y.mean(0)
    a = ((x - xm) * (y - ym)).sum(0) / ((x - xm) ** 2).sum(0).clamp_min(1e-12)
    return a.view(means.shape[1:]), (ym - a * xm).view(means.shape[1:])


def _ssims(x: torch.Tensor, y: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """SSIM of each pair, in chunks (SSIM's filter stack is large for thousands of images)."""
    return torch.cat([ssim(x[i:i + chunk], y[i:i + chunk], data_range=1.0).double() for i in range(0, len(x), chunk)]
                     + [torch.zeros(0, dtype=torch.float64)])


def _mean_ssim(x: torch.Tensor, y: torch.Tensor, chunk: int = 128) -> float:
    """Mean SSIM over pairs (nan for none)."""
    return float(_ssims(x, y, chunk).mean()) if len(x) else float("nan")


def _as_unit(x: torch.Tensor) -> torch.Tensor:
    return x.double() / 255 if x.dtype == torch.uint8 else x.double()


@register_attack
class InstaHideAttack(Attack):
    """Recover private images from many InstaHide encodings (Carlini et al., S&P 2021).

    Args:
        neighbors: encodings averaged with each one (its most similar ones).
        clusters: at most this many private images to recover (``None``: as many
            as the merge threshold leaves; Carlini et al. assume the private set's size known).
        merge_threshold: correlation above which two neighbourhoods are one image.
        pool: average pooling before the similarity.
        calibration_epochs: epochs of the attacker's own encodings of its public images.
        seed: randomness of the attacker's own encodings.

    Examples:
        >>> import torch
        >>> from keyveil import schemes
        >>> gen = torch.Generator().manual_seed(0)
        >>> private = 0.55 + 0.45 * torch.rand(6, 1, 16, 16, generator=gen)  # bright: |2v - 1| not folded
        >>> s = schemes.create("instahide", k=2)
        >>> enc, members = encode_epochs(s, private, epochs=8, batch_size=6, generator=gen)
        >>> r = InstaHideAttack(neighbors=4, clusters=6).run(encodings=enc, members=members, private=private)
        >>> r.metrics["recovered_ssim"] > r.metrics["encoded_ssim"]
        True
    """

    name = "instahide"
    description = "InstaHide: |encoding| undoes the sign flip, similar encodings are clustered and averaged"

    def __init__(self, *, neighbors: int = 10, clusters: int | None = None, merge_threshold: float = 0.9,
                 pool: int = 2, calibration_epochs: int = 10, seed: int = 0) -> None:
        if neighbors < 1 or pool < 1 or calibration_epochs < 1 or (clusters is not None and clusters < 1):
            raise AttackError("neighbors, pool, calibration_epochs and clusters must be >= 1")
        if not -1 <= merge_threshold <= 1:
            raise AttackError(f"merge_threshold is a correlation in [-1, 1], got {merge_threshold}")
        self.neighbors, self.clusters, self.merge_threshold = int(neighbors), clusters, float(merge_threshold)
        self.pool, self.calibration_epochs, self.seed = int(pool), int(calibration_epochs), int(seed)

    def recover(self, encodings: torch.Tensor, *, public: torch.Tensor | None = None, scheme: Scheme | None = None,
                clusters: int | None = None, batch_size: int = 50) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The attack itself (no ground truth): ``(recovered (G,C,H,W) float in [0,1], groups)``."""
        a = instahide_values(encodings).abs().float()
        groups, means = cluster_encodings(a, neighbors=self.neighbors, clusters=clusters or self.clusters,
                                          merge_threshold=self.merge_threshold, pool=self.pool)
        if public is None:
            lo = means.flatten(1).amin(1).view(-1, 1, 1, 1)
            hi = means.flatten(1).amax(1).view(-1, 1, 1, 1)
            return ((means - lo) / (hi - lo).clamp_min(1e-12)).double(), groups
        if not isinstance(scheme, InstaHide):
            raise AttackError("calibrating on public images needs the public instahide scheme: pass scheme=...")
        gen = torch.Generator().manual_seed(self.seed)
        enc, members = encode_epochs(scheme, public, epochs=self.calibration_epochs, batch_size=batch_size,
                                     generator=gen)
        pa = instahide_values(enc).abs().float()
        # the attacker knows what it encoded: each neighbourhood is paired with its dominant public image
        pg, pm = cluster_encodings(pa, neighbors=self.neighbors, clusters=None, merge_threshold=2.0,
                                   pool=self.pool)
        dominant = torch.stack([_dominant(members, g)[0] for g in pg])
        a_, b_ = fit_calibration(pm, _as_unit(public)[dominant])
        return (a_ * means.double() + b_).clamp(0, 1), groups

    def run(self, *, encodings: torch.Tensor, members: torch.Tensor | None = None,
            private: torch.Tensor | None = None, public: torch.Tensor | None = None, scheme: Scheme | None = None,
            batch_size: int = 50) -> AttackResult:
        """Attack ``encodings``; score against ``private`` when ``members`` says what each encoding mixes.

        Args:
            encodings: InstaHide encodings ``(N,C,H,W)`` (float in [-1,1] or uint8 as the scheme stores them).
            members: ``(N, P)`` ground truth (``encode_epochs``): coefficient of private image ``p`` in encoding ``n``.
            private: the ``P`` private images (uint8 or float in [0,1]), for scoring only.
            public: the attacker's own images for the calibration step (optional).
            scheme: the public InstaHide scheme, to encode ``public``.

        Returns:
            An :class:`AttackResult`; ``reconstructions`` one image per cluster; ``metrics``:
            ``clusters``, and with the ground truth ``purity``, ``coverage`` (fraction of private
            images some cluster recovers), ``recovered_ssim`` (mean over clusters, vs their
            dominant image), ``encoded_ssim`` (encodings vs the image each encodes),
            ``abs_ssim`` (|encoding| rescaled, step 1 alone); ``details["dominant"]``.
        """
        if encodings.dim() != 4 or len(encodings) < 2:
            raise AttackError(f"encodings must be a batch (N,C,H,W) with N >= 2, got shape {tuple(encodings.shape)}")
        if (members is None) != (private is None):
            raise AttackError("scoring needs both members and private (or neither)")
        cost = Cost(ciphertexts=len(encodings))
        with measure(cost):
            recon, groups = self.recover(encodings, public=public, scheme=scheme, batch_size=batch_size)
        result = AttackResult(self.name, reconstructions=recon.float(), cost=cost,
                              details={"groups": [g.tolist() for g in groups], **self.hyperparameters()})
        result.metrics["clusters"] = float(len(groups))
        if members is None or private is None:
            return result
        if members.shape != (len(encodings), len(private)):
            raise AttackError(f"members must be (encodings, private images) = {(len(encodings), len(private))}, "
                              f"got {tuple(members.shape)}")
        truth = _as_unit(private)
        dom, purity = zip(*(_dominant(members, g) for g in groups))
        dominant = torch.stack(dom)
        own = members.argmax(1)  # the image each encoding was made for (largest coefficient)
        values = instahide_values(encodings).float()
        absv = values.abs()
        lo, hi = absv.flatten(1).amin(1).view(-1, 1, 1, 1), absv.flatten(1).amax(1).view(-1, 1, 1, 1)
        absv = (absv - lo) / (hi - lo).clamp_min(1e-12)
        per_image = {"recovered_ssim": _ssims(truth[dominant], recon), "encoded_ssim": _ssims(truth[own], (values + 1) / 2)}
        result.metrics.update({
            "purity": float(torch.tensor(purity).mean()),
            "coverage": float(dominant.unique().numel() / len(private)),
            **{k: float(v.mean()) if len(v) else float("nan") for k, v in per_image.items()},
            "abs_ssim": _mean_ssim(truth[own], absv),
        })
        result.details["per_image"] = per_image  # SSIM per cluster / per encoding, for intervals
        if public is not None:  # the baseline a face-shaped guess reaches with no attack at all
            mean_face = _as_unit(public).mean(0, keepdim=True).expand(len(dominant), *public.shape[1:])
            result.metrics["public_mean_ssim"] = _mean_ssim(truth[dominant], mean_face.contiguous())
        result.details["dominant"] = dominant.tolist()
        return result


def _dominant(members: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The private image most of ``group``'s encodings contain, and that fraction (purity)."""
    present = (members[group] > 0).double()
    counts = present.sum(0)
    best = counts.argmax()
    return best, float(counts[best] / len(group))


def reidentify_recovered(result: AttackResult, *, gallery: torch.Tensor, gallery_labels: torch.Tensor,
                         private_labels: torch.Tensor, encodings: torch.Tensor, members: torch.Tensor,
                         recognizers: Sequence[str] = ("eigenfaces", "cnn"), cnn_epochs: int = 40,
                         seed: int = 0) -> dict[str, float]:
    """Top-1 re-identification of the recovered images and, as the baseline, of the encodings themselves.

    Recognizers (:mod:`keyveil.attacks.reidentify`) are built on the attacker's plain ``gallery``; a
    recovered image is scored against the person of its cluster's dominant private image, an encoding
    (shown as ``(e + 1) / 2``) against the person it was made for. Best over the recognizers and views.
    """
    from .reidentify import CNNRecognizer, Eigenfaces, _rates, default_views

    classes = int(torch.cat([gallery_labels, private_labels]).max()) + 1
    dominant = torch.tensor(result.details["dominant"])
    recovered = result.reconstructions
    shown = ((instahide_values(encodings).float() + 1) / 2).clamp(0, 1)
    own = members.argmax(1)
    views = default_views()
    out = {"reid_recovered_top1": 0.0, "reid_encoded_top1": 0.0}
    scorers = []
    if "eigenfaces" in recognizers:
        for v in views:
            ef = Eigenfaces(components=60, view=v).fit(gallery, gallery_labels, classes=classes)
            scorers.append(ef.scores)
    if "cnn" in recognizers:
        cnn = CNNRecognizer(views=views, epochs=cnn_epochs, seed=seed).fit(gallery, gallery_labels, classes=classes)
        scorers += [lambda x, v=v: cnn.scores(x, v) for v in views]
    for score in scorers:
        out["reid_recovered_top1"] = max(out["reid_recovered_top1"],
                                         _rates(score(recovered), private_labels[dominant])[0])
        out["reid_encoded_top1"] = max(out["reid_encoded_top1"], _rates(score(shown), private_labels[own])[0])
    out["reid_chance"] = 1.0 / classes
    return out
