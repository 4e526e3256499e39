"""DP-SGD with Opacus: per-sample clipping, Gaussian noise, Poisson sampling and an ε accountant.

:func:`make_private` turns a model, optimizer and DataLoader into their
differentially private drop-in replacements (Opacus' ``PrivacyEngine``):
BatchNorm, which mixes samples, is first replaced through
``opacus.validators.ModuleValidator.fix`` (GroupNorm) and the result
validated; the loader becomes a Poisson-sampling ``DPDataLoader``; the
optimizer clips every per-sample gradient to ``max_grad_norm`` and adds noise.
Either a target ε is reached after ``epochs`` epochs
(``make_private_with_epsilon``) or a noise multiplier is given
(``make_private``). :func:`fit_private` is :func:`keyveil.engine.fit` with
that in place; it reports the spent ε after every epoch.

Opacus is an optional dependency: ``pip install 'keyveil[privacy]'``.

Notes:
    The guarantee covers the images the model is trained on (plain or
    encrypted: the scheme is applied before sampling and does not change it).
    Not in Opacus' ``secure_mode``: noise comes from torch's seeded generator,
    which is fine for experiments but not a deployment-grade guarantee
    (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016;
    Yousefpour et al., "Opacus", 2021).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import KeyveilError
from .checkpoint import save_checkpoint
from .distributed import init_distributed
from .dp_compat import make_dp_compatible, require_opacus
from .loop import FitResult, classification_loss, evaluate, fit_warmup, train_loop, warmup_cosine
from .optim import make_optimizer

__all__ = ["PrivacyConfig", "PrivacyConfigError", "PrivateTraining", "PrivateFitResult", "make_dp_compatible",
           "make_private", "fit_private", "default_delta", "require_opacus"]


class PrivacyConfigError(KeyveilError):
    """DP-SGD options that do not make sense together (every problem listed, with what to do)."""


def default_delta(n: int) -> float:
    """δ used when none is given: ``min(1e-5, 1/(10·n))``, well below ``1/n`` as DP practice asks."""
    return min(1e-5, 1.0 / (10 * max(int(n), 1)))


@dataclass(frozen=True)
class PrivacyConfig:
    """How private the training is: a target ε *or* a noise multiplier, δ and the clipping norm.

    Args:
        target_epsilon: ε to reach after all epochs (Opacus picks the noise).
        noise_multiplier: σ (noise std / clipping norm) instead of a target ε.
        delta: δ; default :func:`default_delta` of the training-set size.
        max_grad_norm: per-sample gradient clipping norm C.
        accountant: Opacus accountant, ``"rdp"`` (default: Rényi DP, cheap to query
            every few steps), ``"prv"`` (tighter, slower) or ``"gdp"``.

    Raises:
        PrivacyConfigError: from :meth:`validate`, listing every problem.

    Examples:
        >>> PrivacyConfig(target_epsilon=8).validate().max_grad_norm
        1.0
        >>> PrivacyConfig(target_epsilon=-1, noise_multiplier=1.0).validate()
        Traceback (most recent call last):
        ...
        keyveil.engine.dp.PrivacyConfigError: bad DP-SGD options: epsilon must be > 0, got -1; give a target epsilon or a noise multiplier, not both
    """

    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "rdp"

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            out.append(f"epsilon must be > 0, got {self.target_epsilon:g}")
        if self.noise_multiplier is not None and not self.noise_multiplier >= 0:
            out.append(f"noise multiplier must be >= 0, got {self.noise_multiplier:g}")
        if self.target_epsilon is not None and self.noise_multiplier is not None:
            out.append("give a target epsilon or a noise multiplier, not both")
        if self.target_epsilon is None and self.noise_multiplier is None:
            out.append("give a privacy budget: a target epsilon (e.g. 8) or a noise multiplier (e.g. 1.0)")
        if self.delta is not None and not 0 < self.delta < 1:
            out.append(f"delta must be in (0, 1), got {self.delta:g} (usually well below 1/N, e.g. 1e-5)")
        if not self.max_grad_norm > 0 or math.isinf(self.max_grad_norm):
            out.append(f"max grad norm must be a positive finite number, got {self.max_grad_norm:g}")
        if self.accountant not in ("prv", "rdp", "gdp"):
            out.append(f"accountant must be 'prv', 'rdp' or 'gdp', got {self.accountant!r}")
        return out

    def validate(self) -> PrivacyConfig:
        """``self`` if consistent, else :class:`PrivacyConfigError` naming every problem."""
        found = self.problems()
        if found:
            raise PrivacyConfigError("bad DP-SGD options: " + "; ".join(found))
        return self


@dataclass
class PrivateTraining:
    """What :func:`make_private` returns: the wrapped objects and the engine that accounts for them."""

    model: nn.Module  # an opacus GradSampleModule around ``module``
    module: nn.Module  # the (fixed) plain model, for evaluation and checkpoints
    optimizer: torch.optim.Optimizer  # an opacus DPOptimizer
    loader: DataLoader  # Poisson sampling
    engine: Any  # opacus.PrivacyEngine
    config: PrivacyConfig
    delta: float

    _cache: tuple[int, float] = field(default=(0, 0.0), init=False, repr=False)

    def steps(self) -> int:
        """Optimizer steps taken so far (each one a Poisson-sampled batch)."""
        return sum(int(n) for _, _, n in self.engine.accountant.history)

    def epsilon(self) -> float:
        """ε spent so far at :attr:`delta` (0 before the first step; cached per step count)."""
        steps = self.steps()
        if steps and self._cache[0] != steps:
            self._cache = (steps, float(self.engine.get_epsilon(self.delta)))
        return self._cache[1] if steps else 0.0

    def summary(self) -> dict[str, Any]:
        """Plain-type record for checkpoints and JSON reports."""
        return {"mechanism": "DP-SGD (opacus)", "epsilon": self.epsilon(), "delta": self.delta,
                "target_epsilon": self.config.target_epsilon,
                "noise_multiplier": float(self.optimizer.noise_multiplier),
                "max_grad_norm": self.config.max_grad_norm, "accountant": self.config.accountant,
                "sample_rate": float(self.loader.sample_rate), "poisson_sampling": True,
                "steps": self.steps(),
                "module_fix": "opacus.validators.ModuleValidator.fix"}


def make_private(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, *,
                 config: PrivacyConfig, epochs: int) -> PrivateTraining:
    """Wrap ``model``/``optimizer``/``loader`` for DP-SGD with Opacus' ``PrivacyEngine``.

    ``model`` must already be DP-compatible (:func:`make_dp_compatible`) and
    ``optimizer`` built on its parameters. ``loader``'s batch size becomes the
    *expected* batch size of Poisson sampling (rate ``batch_size / len(dataset)``).

    Args:
        config: the privacy budget (validated here).
        epochs: epochs planned (a target ε is spread over them).

    Returns:
        :class:`PrivateTraining`.
    """
    config.validate()
    opacus = require_opacus()
    delta = config.delta if config.delta is not None else default_delta(len(loader.dataset))
    engine = opacus.PrivacyEngine(accountant=config.accountant)
    common = {"module": model, "optimizer": optimizer, "data_loader": loader,
              "max_grad_norm": config.max_grad_norm, "poisson_sampling": True}
    if config.target_epsilon is not None:
        net, opt, dl = engine.make_private_with_epsilon(**common, target_epsilon=config.target_epsilon,
                                                        target_delta=delta, epochs=epochs)
    else:
        net, opt, dl = engine.make_private(**common, noise_multiplier=config.noise_multiplier)
    return PrivateTraining(model=net, module=model, optimizer=opt, loader=dl, engine=engine, config=config,
                           delta=delta)


@dataclass
class PrivateFitResult(FitResult):
    """:class:`~keyveil.engine.FitResult` plus the privacy spent (``privacy["epsilon"]`` at ``privacy["delta"]``)."""

    privacy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model (not JSON)."""
        return {"history": self.history, "epoch": self.epoch, "checkpoint": self.checkpoint,
                "privacy": self.privacy}


def fit_private(
    model: nn.Module,
    train_set: Dataset,
    *,
    privacy: PrivacyConfig,
    test_set: Dataset | None = None,
    epochs: int,
    batch_size: int = 128,
    optimizer: str = "sgd",
    lr: float | None = None,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    num_workers: int = 0,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> PrivateFitResult:
    """Train ``model`` with DP-SGD (see :func:`keyveil.engine.fit` for the shared arguments).

    BatchNorm is replaced (:func:`make_dp_compatible`), so the returned model
    and checkpoint hold the fixed architecture; the checkpoint's ``privacy``
    entry (:meth:`PrivateTraining.summary`) says so and
    :func:`keyveil.engine.model_from_checkpoint` rebuilds it. Every history
    record carries ``epsilon`` (spent so far) and ``delta``. Resuming and
    multi-process (DDP) training are not supported.

    Raises:
        PrivacyConfigError: bad ``privacy``.
        ValueError: run under ``torchrun`` with more than one process.
        ImportError: Opacus is not installed.

    Examples:
        >>> import torch
        >>> from keyveil.data import TensorImageDataset
        >>> from keyveil.engine import build_model, seed_everything
        >>> x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        >>> ds = TensorImageDataset(x, (x.float().mean((1, 2, 3)) > 127).long(), name="toy", split="train",
        ...                         classes=["dark", "bright"])
        >>> seed_everything(0)
        >>> r = fit_private(build_model("smallcnn", in_channels=1, num_classes=2, image_size=(8, 8)), ds,
        ...                 privacy=PrivacyConfig(noise_multiplier=1.0), epochs=1, batch_size=16, progress=False,
        ...                 device="cpu")
        >>> r.privacy["steps"], r.privacy["epsilon"] > 0, r.history[-1]["epsilon"] == r.privacy["epsilon"]
        (4, True, True)
    """
    privacy.validate()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("DP-SGD training does not support multi-process (torchrun/DDP) runs yet: "
                         "run it in a single process")
    info = init_distributed(device)
    dev = info.device
    module = make_dp_compatible(model).to(dev)
    opt = make_optimizer(optimizer, module.parameters(), lr=lr, weight_decay=weight_decay)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    pt = make_private(module, opt, loader, config=privacy, epochs=epochs)
    steps_per_epoch = len(pt.loader)
    if schedule == "cosine":
        sched = warmup_cosine(pt.optimizer, steps_per_epoch * epochs, fit_warmup(steps_per_epoch * epochs))
    elif schedule == "constant":
        sched = None
    else:
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    history: list[dict[str, Any]] = []
    meta = dict(meta or {})
    every = max(1, steps_per_epoch // 5)
    shown = [pt.epsilon()]

    def show_epsilon(step: int, totals: dict[str, float]) -> dict[str, str]:
        if progress and (step + 1) % every == 0:  # the accountant takes a moment: not every step
            shown[0] = pt.epsilon()
        return {"eps": f"{shown[0]:.2f}"}

    def end_epoch(epoch: int, stats: dict[str, float]) -> None:
        n = max(stats["n"], 1)
        seconds = max(stats["seconds"], 1e-9)
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": stats["loss_sum"] / n,
                                  "train_accuracy": stats.get("correct", 0) / n, "images_per_s": stats["n"] / seconds,
                                  "seconds": seconds, "lr": pt.optimizer.param_groups[0]["lr"],
                                  "epsilon": pt.epsilon(), "delta": pt.delta}
        if test_set is not None:
            result = evaluate(module, test_set, device=dev, batch_size=max(batch_size, 256), num_workers=num_workers)
            record.update(test_loss=result.loss, test_accuracy=result.accuracy)
        history.append(record)
        if checkpoint is not None:
            save_checkpoint(checkpoint, {
                **meta, "epoch": epoch + 1, "epochs": epochs, "history": history, "metrics": record,
                "optimizer": optimizer, "hparams": {"lr": opt.defaults["lr"], "weight_decay": weight_decay,
                                                    "batch_size": batch_size, "schedule": schedule,
                                                    "world_size": 1},
                "privacy": pt.summary(),
                "model_state": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                "optimizer_state": None, "scheduler_state": None,
            })
        if on_epoch is not None:
            on_epoch(record)

    # Opacus' wrapped model, DP optimizer and Poisson loader run in the plain loop, as Opacus intends
    train_loop(pt.model, pt.optimizer, pt.loader, epochs=epochs, loss_fn=classification_loss(dev), scheduler=sched,
               on_batch=show_epsilon, on_epoch=end_epoch, progress=progress, desc="DP epoch")
    return PrivateFitResult(model=module, history=history, epoch=epochs,
                            checkpoint=str(checkpoint) if checkpoint is not None else None, privacy=pt.summary())
