"""Training and evaluation: plain PyTorch loops, DDP-ready, with checkpoints that never hold a secret.

Examples:
    >>> from keyveil.engine import build_model, make_optimizer
    >>> model = build_model("smallcnn", in_channels=1, num_classes=10, image_size=(28, 28))
    >>> type(make_optimizer("sgd", model.parameters())).__name__
    'SGD'
"""

from __future__ import annotations

from .checkpoint import (
    CheckpointError,
    ResumeError,
    check_resumable,
    load_checkpoint,
    model_from_checkpoint,
    model_skeleton,
    save_checkpoint,
)
from .distributed import DistInfo, init_distributed, is_main_process
from .dp import (
    PrivacyConfig,
    PrivacyConfigError,
    PrivateFitResult,
    fit_private,
    make_dp_compatible,
    make_private,
)
from .loop import (
    EvalResult,
    FitResult,
    classification_loss,
    evaluate,
    fit,
    make_loader,
    optimizer_step,
    seed_everything,
    to_input,
    train_epoch,
    train_loop,
    train_step,
    warmup_cosine,
)
from .models import (
    MODELS,
    SEED_FAMILIES,
    UnknownModelError,
    adapt_torchvision,
    build_model,
    create_model,
    list_models,
    load_weights,
    register_model,
    small_cnn,
    torchvision_model,
)
from .optim import DEFAULT_LR, OPTIMIZERS, make_optimizer

__all__ = [
    "build_model",
    "create_model",
    "MODELS",
    "UnknownModelError",
    "small_cnn",
    "adapt_torchvision",
    "torchvision_model",
    "load_weights",
    "SEED_FAMILIES",
    "list_models",
    "register_model",
    "make_optimizer",
    "OPTIMIZERS",
    "DEFAULT_LR",
    "fit",
    "evaluate",
    "train_loop",
    "train_epoch",
    "train_step",
    "classification_loss",
    "optimizer_step",
    "warmup_cosine",
    "make_loader",
    "to_input",
    "seed_everything",
    "EvalResult",
    "FitResult",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "CheckpointError",
    "ResumeError",
    "check_resumable",
    "model_skeleton",
    "DistInfo",
    "init_distributed",
    "is_main_process",
    "PrivacyConfig",
    "PrivacyConfigError",
    "PrivateFitResult",
    "fit_private",
    "make_private",
    "make_dp_compatible",
]
