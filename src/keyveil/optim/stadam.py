"""ST-Adam: Adam without bias correction, plus weight decay and step momentum (docs/design.md §3.4).

Our reading of VisualMixer's Sec. IV-E ("Stable Adaptive Moment Estimation"):
the paper keeps Adam's two moment estimates, drops the two bias-correction
steps (the moments are used as they are, not rescaled by ``1/(1-beta**t)``)
and adds weight decay and a momentum term. For every parameter ``theta`` with
gradient ``g``::

    m <- beta1 * m + (1 - beta1) * g
    v <- beta2 * v + (1 - beta2) * g**2
    u  = m / (sqrt(v) + eps)
    b <- momentum * b + u
    theta <- theta - lr * (b + weight_decay * theta)

``momentum=0`` and ``weight_decay=0`` give plain "Adam without bias correction".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["STAdam"]


class STAdam(Optimizer):
    """Stable Adaptive Moment Estimation (VisualMixer's ST-Adam).

    Args:
        params: parameters or parameter groups.
        lr: learning rate ``alpha`` (default 1e-3).
        betas: decay rates ``(beta1, beta2)`` of the first and second moments.
        eps: added to ``sqrt(v)`` to keep the denominator positive.
        weight_decay: ``lambda``, decoupled: the step adds ``lambda * theta``.
        momentum: ``mu``, heavy-ball momentum on the normalized step (0 = off).

    Examples:
        >>> import torch
        >>> from keyveil.optim import STAdam
        >>> w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
        >>> opt = STAdam([w], lr=0.1)
        >>> for _ in range(300):
        ...     opt.zero_grad()
        ...     loss = (w ** 2).sum()
        ...     loss.backward()
        ...     _ = opt.step()
        >>> bool(w.abs().max() < 0.1)
        True
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
    ) -> None:
        problems = []
        if not lr >= 0.0:
            problems.append(f"lr must be >= 0, got {lr!r}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            problems.append(f"betas must lie in [0, 1), got {betas!r}")
        if not eps > 0.0:
            problems.append(f"eps must be > 0, got {eps!r}")
        if not weight_decay >= 0.0:
            problems.append(f"weight_decay must be >= 0, got {weight_decay!r}")
        if not 0.0 <= momentum < 1.0:
            problems.append(f"momentum must lie in [0, 1), got {momentum!r}")
        if problems:
            raise ValueError("invalid STAdam settings: " + "; ".join(problems))
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "momentum": momentum}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Take one optimization step; ``closure`` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            wd, mu = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("STAdam does not support sparse gradients; use a dense layer")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if mu:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                u = m / (v.sqrt() + eps)
                if mu:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.zeros_like(p)
                    u = buf.mul_(mu).add_(u)
                if wd:
                    u = u.add(p, alpha=wd)
                p.add_(u, alpha=-lr)
        return loss
