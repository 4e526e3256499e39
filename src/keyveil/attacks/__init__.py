"""Attacks on scrambling schemes behind one interface (docs/design.md §5).

Every attack is created with keyword-only hyperparameters and run with one
call, ``attack.run(**inputs)``, which returns an :class:`AttackResult`
(reconstructions, metrics, measured cost); key-recovery attacks return a
:class:`KeyRecoveryResult` whose ``decrypt(y)`` un-scrambles any image
encrypted under the recovered key.

Examples:
    >>> import torch
    >>> from keyveil import Key, schemes
    >>> from keyveil.attacks import ChosenPlaintext
    >>> scheme = schemes.create("pixel", Key.generate())
    >>> result = ChosenPlaintext().run(oracle=scheme.encrypt, image_size=(224, 224))
    >>> result.cost.queries
    3
    >>> x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    >>> bool(torch.equal(result.decrypt(scheme.encrypt(x)), x))
    True
"""

from __future__ import annotations

from .base import (
    ATTACKS,
    Attack,
    AttackError,
    AttackResult,
    Cost,
    KeyRecoveryResult,
    RecoveredPermutation,
    UnknownAttackError,
    create_attack,
    list_attacks,
    register_attack,
)
from .block_match import BlockKnownPlaintext
from .ciphertext_only import CiphertextOnly
from .instahide import InstaHideAttack
from .inversion import LearnedInversion, UNet
from .jigsaw import JigsawSolver, block_comparison
from .jigsaw_shared import SharedKeyJigsaw
from .membership import MembershipInference, auc, train_classifier
from .model_key import KeyFromModel, layout_from_taps, offsets_to_taps
from .nibble_layout import NibbleLayout
from .permutation import ChosenPlaintext, KnownPlaintext, crafted_images
from .reidentify import CNNRecognizer, Eigenfaces, Reidentify, View, face_split
from .substitution import SubstitutionKnownPlaintext

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackError",
    "UnknownAttackError",
    "AttackResult",
    "Cost",
    "KeyRecoveryResult",
    "RecoveredPermutation",
    "create_attack",
    "list_attacks",
    "register_attack",
    "BlockKnownPlaintext",
    "SubstitutionKnownPlaintext",
    "ChosenPlaintext",
    "CiphertextOnly",
    "NibbleLayout",
    "JigsawSolver",
    "SharedKeyJigsaw",
    "InstaHideAttack",
    "LearnedInversion",
    "UNet",
    "MembershipInference",
    "auc",
    "train_classifier",
    "block_comparison",
    "KnownPlaintext",
    "crafted_images",
    "Reidentify",
    "Eigenfaces",
    "CNNRecognizer",
    "View",
    "face_split",
    "KeyFromModel",
    "layout_from_taps",
    "offsets_to_taps",
]
