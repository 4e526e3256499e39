"""A keyed model is the key: recover the key from a keyed CNN, keyed detector or keyed ViT (docs/design.md §4, §7).

A keyed CNN (:func:`keyveil.models.keyed`) runs the plain weights on
scrambled maps, so it must know where every pixel went: its index buffers
*are* the key's permutation π, written three ways.

* ``input`` mode: ``unscramble.index`` is π⁻¹.
* ``features`` mode: ``keyveil_unscramble_*.index`` (π⁻¹) and
  ``keyveil_scramble_*.index`` (π) at the input size (the input resolution
  uses the pixel scheme's π itself).
* ``deformable`` mode: no permutation is stored, but the first convolution's
  tap table (``taps``, and the integer ``offset`` of PrivDL's
  ``deform_conv2d``) says, for every output cell, which scrambled positions
  form its k×k window. Taps side by side in one window are plain neighbours,
  so the tables give every position's left and upper neighbour; ranking those
  chains (pointer jumping, ⌈log2 W⌉ batched steps) gives every position's
  plain row and column, i.e. π (:func:`layout_from_taps`).

``pixel-np`` adds a :class:`~keyveil.models.keyed_cnn.PositionFlip` in front
(its ``offset`` buffer is the flip mask). The keyed detector
(:func:`~keyveil.models.keyed_detection.keyed_detector`) is a keyed CNN
core behind a per-channel normalization: the same buffers, the same probe.
A keyed ViT (``vit`` block scheme) folds the key into its patch embedding
and position embedding and keeps the fold as buffers
(:mod:`keyveil.attacks.model_key_vit`).

:class:`KeyFromModel` reads the buffers (``method="buffers"``), recovers a
CNN's tap table without reading any buffer by running the model
(``method="probe"``), or recovers a ViT's fold from the smoothness of its
weights (``method="weights"``). A checkpoint saved with
``include_key_material=True`` holds the same buffers; one saved with
:func:`keyveil.models.save_keyed`'s default holds the plain weights only,
and the attack says it found nothing.

Examples:
    >>> import torch, warnings
    >>> from torch import nn
    >>> from keyveil import Key, schemes
    >>> from keyveil.models import keyed
    >>> net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    ...                     nn.Flatten(), nn.Linear(16 * 6 * 5, 3)).eval()
    >>> key = Key.generate()
    >>> knet = keyed(net, key, mode="deformable", input_size=(1, 12, 10))
    >>> pixel = schemes.create("pixel", key)
    >>> r = KeyFromModel(method="probe").run(model=knet, reference=pixel)
    >>> r.metrics["fraction_recovered"], r.cost.queries
    (1.0, 2)
    >>> x = torch.randint(0, 256, (4, 1, 12, 10), dtype=torch.uint8)
    >>> bool(torch.equal(r.decrypt(pixel.encrypt(x)), x))
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..schemes import Scheme
from . import model_key_cnn as cnn
from . import model_key_vit as vit
from .base import Attack, AttackError, Cost, KeyRecoveryResult, RecoveredPermutation, measure, register_attack
from .tap_layout import layout_from_taps, offsets_to_taps
from .truth import score_permutation, true_permutation

__all__ = ["KeyFromModel", "layout_from_taps", "offsets_to_taps"]

METHODS = ("buffers", "probe", "weights")


def _is_vit_state(state: Mapping[str, torch.Tensor]) -> bool:
    return "conv_proj.weight" in state and "encoder.pos_embedding" in state


@register_attack
class KeyFromModel(Attack):
    """Recover the key from a keyed model (CNN, detector: ``pixel``/``pixel-np``; ViT: ``vit``) or its checkpoint.

    ``method="buffers"`` reads the key-derived buffers (any mode; also from a
    checkpoint file or state dict): the input-size permutation buffer of the
    ``input``/``features`` modes, else the first deformable convolution's tap
    table (or its integer offsets when no table is kept), turned into π by
    :func:`layout_from_taps`; the ``pixel-np`` flip mask; a keyed ViT's fold
    buffers.

    ``method="probe"`` (CNNs and detectors) reads no buffer. It runs the
    model, with a forward hook on the first convolution that reads the
    full-size input, on ⌈log_base(H·W+1)⌉ probe images plus one black image.
    Probe image ``d`` holds, at every scrambled position ``L`` and in every
    channel, digit ``d`` of ``L + 1`` (Jolfaei et al.'s chosen-plaintext
    trick, in the scrambled domain). The convolution is linear: an output
    cell's response minus the black image's is ``Σ_t W_t · value(tap t)``,
    with ``W_t`` the tap's weight column summed over input channels (each
    scaled by the gain a normalization before it applies, read off the
    convolution's input). The weights are ordinary parameters of the keyed
    model (the plain ones, unchanged), so with at least kh·kw independent
    output channels a least-squares solve gives every tap's value, i.e. its
    scrambled position (0: padding; negated: a ``pixel-np`` flip): the tap
    table, then π as above. Three forward passes suffice up to 65,535
    positions (224×224 and beyond). Trained weights are no obstacle: on a small
    CNN trained on Fashion-MNIST (86 % test accuracy, tap matrix condition
    number 2.1) the probe recovered the whole key in all three modes, every
    digit within 1e-4 of an integer.

    ``method="weights"`` (keyed ViTs) reads no buffer: it lays out the patch
    embedding's columns and the position embedding's rows by their
    similarity (trained weights are smooth in space) and, given public
    images (``plain``), picks among the grid symmetries by running the model
    (:mod:`keyveil.attacks.model_key_vit`). On a default checkpoint (plain
    weights) it finds the plain order and says there is no key.

    A purely black-box attacker that sees only logits (a remote prediction
    API) is not covered: logits are ``f(π⁻¹ y)`` for a plain model ``f`` the
    attacker does not know separately, and we claim no recovery from them.

    Args:
        method: ``"buffers"``, ``"probe"`` or ``"weights"``.
        base: the probe's digit base (2..256); a smaller base needs more probe
            images but tolerates worse-conditioned weights.
        seconds: ``weights``: CPU seconds of layout annealing.
        seed: ``weights``: the annealing's seed.

    Raises:
        AttackError: from :meth:`run` when nothing can be recovered, with a sentence why.
    """

    name = "key-from-model"
    description = "read the key from a keyed model: its buffers, probing its first convolution, or its weights"

    def __init__(self, *, method: str = "buffers", base: int = 256, seconds: float = 4.0, seed: int = 0) -> None:
        if method not in METHODS:
            raise AttackError(f"method must be one of {METHODS}, got {method!r}")
        if not 2 <= int(base) <= 256:
            raise AttackError(f"base must be between 2 and 256, got {base!r}")
        self.method = method
        self.base = int(base)
        self.seconds = float(seconds)
        self.seed = int(seed)

    def run(
        self,
        *,
        model: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike[str],
        image_size: int | Sequence[int] | None = None,
        reference: Scheme | None = None,
        ciphertexts: torch.Tensor | None = None,
        plain: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> KeyRecoveryResult:
        """Recover the key from ``model``.

        Args:
            model: a keyed model (made by :func:`keyveil.models.keyed`,
                :func:`~keyveil.models.keyed_detection.keyed_detector` or
                loaded by :func:`keyveil.models.load_keyed`); for
                ``method="buffers"``/``"weights"`` also a keyed checkpoint file
                or a state dict.
            image_size: ``(H, W)`` or ``(C, H, W)`` of the encrypted images;
                default: the model's (or checkpoint's) recorded input size.
            reference: the attacked scheme (``pixel``, ``pixel-np`` or a block
                scheme such as ``vit``), only to score (adds ``fraction_recovered``).
            ciphertexts: images encrypted under the key, ``(B,C,H,W)``; when
                given, their decryptions are the ``reconstructions``.
            plain, labels: ``weights``: public images (and their labels) of the
                model's task, to choose among the grid symmetries; without
                them the first candidate is returned.

        Returns:
            A :class:`KeyRecoveryResult` whose ``recovered`` is a
            :class:`RecoveredPermutation` (spatial for ``pixel``, value-level
            for a ViT's block scheme); ``decrypt`` un-scrambles ciphertexts
            bit-exactly when the whole key was recovered.
        """
        cost = Cost()
        details: dict[str, Any] = {"method": self.method}
        metrics: dict[str, float] = {}
        candidates: list[vit.VitFold] = []
        with measure(cost):
            if isinstance(model, nn.Module):
                config, state, what = getattr(model, "keyveil_config", None), {}, type(model).__name__
            elif self.method == "probe":
                raise AttackError("the probe runs the model: pass an nn.Module (load a checkpoint with "
                                  "keyveil.models.load_keyed), or use method='buffers' to read a file")
            else:
                config, state, what, extra = cnn.read_state(model)
                details.update(extra)
            kind = getattr(config, "kind", None)
            if kind is None:
                is_vit = _is_vit_state(model.state_dict() if isinstance(model, nn.Module) else state)
                kind = "vit" if is_vit else "cnn"
            details["kind"] = kind
            if config is not None:
                details["mode"] = config.mode
            if kind == "vit":
                recovered, candidates = self._vit(model, state, config, image_size, what, details, plain, labels)
            else:
                if self.method == "weights":
                    raise AttackError("method='weights' reads a keyed ViT's folded weights; a keyed CNN or "
                                      "detector keeps the plain weights: use 'buffers' or 'probe'")
                chw = cnn.resolve_chw(image_size, config, model if isinstance(model, nn.Module) else state)
                hw = (chw[1], chw[2])
                if self.method == "probe":
                    assert isinstance(model, nn.Module)
                    perm, mask = cnn.probe(model, chw, self.base, cost, details, metrics)
                elif isinstance(model, nn.Module):
                    perm, mask = cnn.from_modules(model, hw, what, details)
                else:
                    perm, mask = cnn.from_state(state, hw, what, details)
                recovered = RecoveredPermutation(chw, perm, mask, spatial=True)
            recon = None
            if ciphertexts is not None:
                ciphertexts = torch.as_tensor(ciphertexts)
                recon = recovered.decrypt(ciphertexts)
                cost.ciphertexts = int(ciphertexts.shape[0]) if ciphertexts.dim() == 4 else 1
        chw = recovered.shape
        metrics["positions"] = float(chw[1] * chw[2])
        if self.method == "probe":
            metrics["queries"] = float(cost.queries)
        result = KeyRecoveryResult(self.name, reconstructions=recon, metrics=metrics, cost=cost, details=details,
                                   recovered=recovered)
        if reference is not None:
            truth = true_permutation(reference, chw)
            result.metrics.update(score_permutation(recovered, truth))
            if candidates:  # evaluation only: how close the best of the symmetries came
                p = int(details["patch_size"])
                scores = [score_permutation(vit.fold_to_permutation(c, chw, p), truth) for c in candidates]
                key = "fraction_recovered_with_flips" if truth.mask is not None else "fraction_recovered"
                result.metrics["fraction_recovered_best_candidate"] = max(s.get(key, 0.0) for s in scores)
            if "fold" in details:
                result.metrics.update(_fold_parts(details["fold"], reference, chw))
        details.pop("fold", None)
        return result

    def _vit(self, model: Any, state: dict[str, torch.Tensor], config: Any, image_size: Any, what: str,
             details: dict[str, Any], plain: Any, labels: Any) -> tuple[RecoveredPermutation, list[vit.VitFold]]:
        if self.method == "probe":
            raise AttackError("a keyed ViT folds the key into its weights (no tap table to probe): use "
                              "method='buffers' (its fold buffers) or 'weights' (the weights' smoothness)")
        if isinstance(model, nn.Module):
            state = dict(model.state_dict())
        weight = state["conv_proj.weight"]
        p = int(weight.shape[-1])
        chw = cnn.resolve_chw(image_size, config, state)
        if chw[1] % p or chw[2] % p:
            raise AttackError(f"the ViT's {p}-px patches do not tile {chw[1]}x{chw[2]} images")
        details["patch_size"] = p
        candidates: list[vit.VitFold] = []
        if self.method == "buffers":
            fold = vit.fold_from_buffers(state, what)
            details["sources"] = ["keyveil_token_order", "keyveil_fold_src", "keyveil_fold_scale"]
        else:
            grid = (chw[1] // p, chw[2] // p)
            candidates = vit.fold_from_weights(weight, state["encoder.pos_embedding"], grid, seconds=self.seconds,
                                               seed=self.seed)
            ident = torch.arange(grid[0] * grid[1]), torch.arange(p * p)
            if any(torch.equal(o, ident[0]) and torch.equal(s, ident[1]) for o, s, _ in candidates):
                raise AttackError(f"{what}'s weights are laid out in plain order (the smoothest layout is a "
                                  "symmetry of the identity): they hold no key. A checkpoint saved without key "
                                  "material (save_keyed's default) keeps the plain weights")
            pick = 0
            if plain is not None and isinstance(model, nn.Module):
                pick, losses = vit.best_candidate(model, candidates, chw, p, plain, labels,
                                                  getattr(config, "mean", None), getattr(config, "std", None))
                details["chosen_by"] = f"the model's loss on {len(plain)} public images"
                details["loss_chosen"], details["loss_worst"] = losses[pick], max(losses)
            else:
                details["chosen_by"] = "none (the first of 128 symmetric candidates; pass plain= and the model)"
            fold = candidates[pick]
        details["fold"] = fold
        return vit.fold_to_permutation(fold, chw, p), candidates


def _fold_parts(fold: vit.VitFold, reference: Scheme, chw: tuple[int, int, int]) -> dict[str, float]:
    """Evaluation only: the recovered block order, in-block order and flips, each against the truth."""
    from ..models.keyed_vit import block_fold
    from ..schemes.block import BlockScramble

    if not isinstance(reference, BlockScramble):
        return {}
    order, src, flip = block_fold(reference, chw)
    return {"block_order_recovered": float((fold[0] == order).double().mean()),
            "in_block_recovered": float((fold[1] == src).double().mean()),
            "flips_recovered": float((fold[2] == flip).double().mean())}
