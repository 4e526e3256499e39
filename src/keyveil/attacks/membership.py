"""Membership inference by loss threshold (Yeom et al., CSF 2018) (docs/design.md §5).

A model fits its training records better than unseen ones; whoever can query
it (here: with the records as the server sees them, encrypted) guesses
"member" when the loss is low. The AUC over all thresholds measures the leak:
0.5 is no leak. Encrypting the training data does not change this: the model
still over-fits its (encrypted) training set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.loop import index_batches, train_loop
from .base import Attack, AttackError, AttackResult, Cost, measure, register_attack

__all__ = ["MembershipInference", "auc", "small_cnn", "train_classifier"]


def auc(member_scores: torch.Tensor, nonmember_scores: torch.Tensor) -> float:
    """Area under the ROC curve of "member if score is high" (ties count half).

    Examples:
        >>> auc(torch.tensor([3., 4.]), torch.tensor([1., 2.]))
        1.0
        >>> auc(torch.tensor([1., 2.]), torch.tensor([1., 2.]))
        0.5
    """
    m, n = member_scores.double()[:, None], nonmember_scores.double()[None, :]
    return float(((m > n).double() + 0.5 * (m == n).double()).mean())


def small_cnn(channels: int, classes: int, size: tuple[int, int]) -> nn.Module:
    """A small CNN classifier (two conv blocks, two linear layers)."""
    h, w = size[0] // 4, size[1] // 4
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * h * w, 128), nn.ReLU(), nn.Linear(128, classes),
    )


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, *, classes: int, epochs: int = 20, batch_size: int = 64,
    lr: float = 1e-3, seed: int = 0,
) -> nn.Module:
    """Train :func:`small_cnn` on ``images`` (the target model of the attack)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = _to_float(images)
    net = small_cnn(x.shape[1], classes, tuple(x.shape[-2:]))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    train_loop(net, opt, lambda _: ((x[i], labels[i]) for i in index_batches(len(x), batch_size, generator=gen)),
               epochs=epochs, loss_fn=lambda m, b: (F.cross_entropy(m(b[0]), b[1]), {"n": len(b[1])}))
    return net.eval()


@register_attack
class MembershipInference(Attack):
    """Loss-threshold membership inference; reports AUC and the best advantage.

    Args:
        batch_size: records per model query.

    Examples:
        >>> import torch
        >>> x = torch.rand(40, 1, 8, 8)
        >>> y = torch.randint(0, 2, (40,))
        >>> net = train_classifier(x[:20], y[:20], classes=2, epochs=30)
        >>> r = MembershipInference().run(model=net, members=(x[:20], y[:20]), nonmembers=(x[20:], y[20:]))
        >>> r.metrics["auc"] > 0.7
        True
    """

    name = "membership"
    description = "loss-threshold membership inference (Yeom et al. 2018)"

    def __init__(self, *, batch_size: int = 256) -> None:
        self.batch_size = int(batch_size)

    def _losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                logits = model(_to_float(x[i: i + self.batch_size]))
                out.append(F.cross_entropy(logits, y[i: i + self.batch_size], reduction="none"))
        return torch.cat(out)

    def run(
        self,
        *,
        model: nn.Module,
        members: tuple[torch.Tensor, torch.Tensor],
        nonmembers: tuple[torch.Tensor, torch.Tensor],
    ) -> AttackResult:
        """Score each record by its loss under ``model``.

        Args:
            model: the target classifier (as queried: it takes the records as given).
            members: ``(images, labels)`` of records in its training set; labels are class indices
                ``(N,)`` or class probabilities ``(N, classes)`` (mixed labels, as InstaHide trains on).
            nonmembers: ``(images, labels)`` of records it never saw.

        Returns:
            ``auc``, ``advantage`` and mean losses in ``metrics``; each record's score (its negated
            loss) in ``details["member_scores"]`` / ``details["nonmember_scores"]``.
        """
        if len(members[0]) == 0 or len(nonmembers[0]) == 0:
            raise AttackError("need at least one member and one non-member record")
        cost = Cost()
        with measure(cost):
            lm = self._losses(model, *members)
            ln = self._losses(model, *nonmembers)
            cost.queries = len(lm) + len(ln)
            score_auc = auc(-lm, -ln)
            thresholds = torch.cat([lm, ln]).unique()
            tpr = (lm[None, :] <= thresholds[:, None]).double().mean(1)
            fpr = (ln[None, :] <= thresholds[:, None]).double().mean(1)
            advantage = float((tpr - fpr).max())
        result = AttackResult(self.name, cost=cost)
        result.metrics.update({
            "auc": score_auc, "advantage": advantage,
            "member_loss": float(lm.mean()), "nonmember_loss": float(ln.mean()),
        })
        # per-record scores (higher = "member"), for intervals over the records (metrics.intervals)
        result.details.update({"member_scores": -lm, "nonmember_scores": -ln})
        return result
