"""Optimizers by name: ``sgd``, ``adam`` and VisualMixer's ``stadam``."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["make_optimizer", "OPTIMIZERS", "DEFAULT_LR"]

OPTIMIZERS = ("sgd", "adam", "stadam")
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "stadam": 1e-3}


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], *, lr: float | None = None,
                   weight_decay: float = 0.0, momentum: float = 0.9) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params``.

    Args:
        name: ``"sgd"`` (with Nesterov momentum), ``"adam"``, or ``"stadam"``
            (:class:`keyveil.optim.STAdam`, VisualMixer's Adam without bias
            correction, docs/design.md §3.4).
        lr: learning rate; default per optimizer (:data:`DEFAULT_LR`).
        weight_decay: L2 penalty (decoupled for ST-Adam, as it defines it).
        momentum: SGD momentum.

    Examples:
        >>> import torch
        >>> opt = make_optimizer("adam", torch.nn.Linear(2, 2).parameters())
        >>> type(opt).__name__, opt.param_groups[0]["lr"]
        ('Adam', 0.001)
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    lr = DEFAULT_LR[name] if lr is None else float(lr)
    if lr <= 0:
        raise ValueError(f"the learning rate must be positive, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    try:
        from ..optim import STAdam
    except ImportError as exc:
        raise ValueError(f"the stadam optimizer is not available in this keyveil ({exc}); use adam or sgd") from None
    return STAdam(params, lr=lr, weight_decay=weight_decay)
