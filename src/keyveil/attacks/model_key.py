"""A keyed model is the key: recover the ``pixel`` key from a keyed CNN (docs/design.md §4.1, §7).

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

:class:`KeyFromModel` reads them (``method="buffers"``), or recovers the same
tap table without reading any buffer by running the model (``method="probe"``).
A checkpoint saved with ``include_key_material=True`` holds the same buffers;
one saved with :func:`keyveil.models.save_keyed`'s default holds the plain
weights only, and the attack says it found nothing.

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

from ..models.functional import _pair
from ..models.layers import DeformableConv2d, PositionPermutation
from ..schemes import Scheme
from ..schemes.functional import invert_permutation
from .base import Attack, AttackError, Cost, KeyRecoveryResult, RecoveredPermutation, measure, register_attack
from .permutation import _digits_needed, _is_permutation
from .tap_layout import layout_from_taps, offsets_to_taps
from .truth import score_permutation, true_permutation

__all__ = ["KeyFromModel", "layout_from_taps", "offsets_to_taps"]

METHODS = ("buffers", "probe")


# ----------------------------------------------------------------------------------------------- helpers


def _conv_weight(m: nn.Module) -> torch.Tensor | None:
    w = m._parameters.get("weight")
    return w if isinstance(w, torch.Tensor) and w.dim() == 4 else None


def _channels(source: nn.Module | Mapping[str, torch.Tensor]) -> int:
    """The input channels of the first convolution (0: none found)."""
    if isinstance(source, nn.Module):
        for m in source.modules():
            w = _conv_weight(m)
            if w is not None:
                return int(w.shape[1]) * int(getattr(m, "groups", 1))
        return 0
    return next((int(v.shape[1]) for v in source.values() if v.dim() == 4 and v.is_floating_point()), 0)


def _resolve_chw(image_size: Any, config: Any, source: nn.Module | Mapping[str, torch.Tensor]) -> tuple[int, int, int]:
    known = None if config is None else tuple(int(v) for v in config.input_size)
    if image_size is None:
        if known is None:
            raise AttackError("pass image_size=(H, W) or (C, H, W): the model records no input size")
        return known  # type: ignore[return-value]
    size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if len(size) == 2:
        if known is not None:
            c = known[0]
        else:
            c = _channels(source)
            if not c:
                raise AttackError("cannot tell the number of channels: pass image_size=(C, H, W)")
        size = (c, *size)
    if len(size) != 3 or min(size) < 1:
        raise AttackError(f"image_size must be (H, W) or (C, H, W) with positive entries, got {image_size!r}")
    if known is not None and size[1:] != known[1:]:
        raise AttackError(f"this keyed model was converted for {known[1]}x{known[2]} images "
                          f"(keyveil_config.input_size), not {size[1]}x{size[2]}: its buffers hold the key for "
                          "that size only")
    return size  # type: ignore[return-value]


def _direction(attr: str) -> str | None:
    """keyveil names the modules that un-scramble ``unscramble`` / ``keyveil_unscramble_*``."""
    if attr == "unscramble" or attr.startswith("keyveil_unscramble"):
        return "inverse"
    if attr.startswith("keyveil_scramble"):
        return "forward"
    return None


def _sizes_found(model: nn.Module) -> list[str]:
    sizes = set()
    for m in model.modules():
        if isinstance(m, PositionPermutation):
            sizes.add(m.hw)
        elif isinstance(m, DeformableConv2d):
            sizes.add(m.in_hw)
    return [f"{a}x{b}" for a, b in sorted(sizes)]


def _nothing_found(what: str, hw: tuple[int, int], sizes: list[str]) -> AttackError:
    if sizes:
        return AttackError(f"{what} holds key buffers for {', '.join(sizes)} maps but none for the "
                           f"{hw[0]}x{hw[1]} input: pass the image size it was converted for")
    return AttackError(f"found no key material in {what}: it has no index buffers (no un-scramble permutation, no "
                       f"deformable tap table) for a {hw[0]}x{hw[1]} input. A plain model, or a keyed "
                       "checkpoint saved without key material (save_keyed's default), does not hold the key")


# ----------------------------------------------------------------------------------------------- the attack


class _Captured(Exception):
    """Raised by the probe's hook to stop the forward pass once the first convolution has run."""


@register_attack
class KeyFromModel(Attack):
    """Recover the ``pixel`` key from a keyed CNN or a keyed checkpoint saved with key material.

    ``method="buffers"`` reads the key-derived buffers (any mode; also from a
    checkpoint file or state dict): the input-size permutation buffer of the
    ``input``/``features`` modes, else the first deformable convolution's tap
    table (or its integer offsets when no table is kept), turned into π by
    :func:`layout_from_taps`.

    ``method="probe"`` reads no buffer. It runs the model, with a forward hook
    on the first convolution that reads the full-size input, on ⌈log_base(H·W+1)⌉
    probe images plus one black image. Probe image ``d`` holds, at every
    scrambled position ``L`` and in every channel, digit ``d`` of ``L + 1``
    (Jolfaei et al.'s chosen-plaintext trick, in the scrambled domain). The
    convolution is linear: an output cell's response minus the black image's is
    ``Σ_t W_t · value(tap t)``, with ``W_t`` the tap's weight column summed over
    input channels. The weights are ordinary parameters of the keyed model (the
    plain ones, unchanged), so with at least kh·kw independent output channels
    a least-squares solve gives every tap's value, i.e. its scrambled position
    (0: padding): the tap table, then π as above. The same runs in all three
    modes, and it uses only what running the model exposes: in
    ``input``/``features`` mode the first convolution's input is already the
    un-scrambled probe; in ``deformable`` mode no un-scrambled map ever exists,
    and the table still comes out. Three forward passes suffice up to 65,535
    positions (224×224 and beyond). Trained weights are no obstacle: on a small
    CNN trained on Fashion-MNIST (86 % test accuracy, tap matrix condition
    number 2.1) the probe recovered the whole key in all three modes, every
    digit within 1e-4 of an integer.

    A purely black-box attacker that sees only logits (a remote prediction
    API) is not covered: logits are ``f(π⁻¹ y)`` for a plain model ``f`` the
    attacker does not know separately, and we claim no recovery from them.
    Everyone who *holds* the model, file or object, has its parameters and can
    run it, and the probe above needs no more.

    Args:
        method: ``"buffers"`` or ``"probe"``.
        base: the probe's digit base (2..256); a smaller base needs more probe
            images but tolerates worse-conditioned weights.

    Raises:
        AttackError: from :meth:`run` when nothing can be recovered, with a sentence why.
    """

    name = "key-from-model"
    description = "read the key from a keyed CNN: its buffers, or probing its first convolution"

    def __init__(self, *, method: str = "buffers", base: int = 256) -> None:
        if method not in METHODS:
            raise AttackError(f"method must be one of {METHODS}, got {method!r}")
        if not 2 <= int(base) <= 256:
            raise AttackError(f"base must be between 2 and 256, got {base!r}")
        self.method = method
        self.base = int(base)

    def run(
        self,
        *,
        model: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike[str],
        image_size: int | Sequence[int] | None = None,
        reference: Scheme | None = None,
        ciphertexts: torch.Tensor | None = None,
    ) -> KeyRecoveryResult:
        """Recover the key's input permutation from ``model``.

        Args:
            model: a keyed CNN (made by :func:`keyveil.models.keyed` or loaded
                by :func:`keyveil.models.load_keyed`); for ``method="buffers"``
                also a keyed checkpoint file or a state dict.
            image_size: ``(H, W)`` or ``(C, H, W)`` of the encrypted images;
                default: the model's (or checkpoint's) recorded input size.
            reference: the attacked ``pixel`` scheme, only to score
                (adds ``fraction_recovered``).
            ciphertexts: images encrypted under the key, ``(B,C,H,W)``; when
                given, their decryptions are the ``reconstructions``.

        Returns:
            A :class:`KeyRecoveryResult` whose ``recovered`` is a spatial
            :class:`RecoveredPermutation` (``decrypt`` un-scrambles ``pixel``
            ciphertexts bit-exactly).
        """
        cost = Cost()
        details: dict[str, Any] = {"method": self.method}
        metrics: dict[str, float] = {}
        with measure(cost):
            if isinstance(model, nn.Module):
                config, state, what = getattr(model, "keyveil_config", None), {}, type(model).__name__
            elif self.method == "probe":
                raise AttackError("the probe runs the model: pass an nn.Module (load a checkpoint with "
                                  "keyveil.models.load_keyed), or use method='buffers' to read a file")
            else:
                config, state, what, extra = self._read_state(model)
                details.update(extra)
            if config is not None and getattr(config, "kind", "cnn") != "cnn":
                raise AttackError(f"key-from-model reads keyed CNNs (pixel scheme); this is a keyed "
                                  f"{config.kind} (scheme {config.scheme!r})")
            if config is not None:
                details["mode"] = config.mode
            chw = _resolve_chw(image_size, config, model if isinstance(model, nn.Module) else state)
            hw = (chw[1], chw[2])
            if self.method == "probe":
                perm = self._probe(model, chw, cost, details, metrics)
            elif isinstance(model, nn.Module):
                perm = self._from_modules(model, hw, what, details)
            else:
                perm = self._from_state(state, hw, what, details)
            recovered = RecoveredPermutation(chw, perm, spatial=True)
            recon = None
            if ciphertexts is not None:
                ciphertexts = torch.as_tensor(ciphertexts)
                recon = recovered.decrypt(ciphertexts)
                cost.ciphertexts = int(ciphertexts.shape[0]) if ciphertexts.dim() == 4 else 1
        metrics["positions"] = float(hw[0] * hw[1])
        if self.method == "probe":
            metrics["queries"] = float(cost.queries)
        result = KeyRecoveryResult(self.name, reconstructions=recon, metrics=metrics, cost=cost, details=details,
                                   recovered=recovered)
        if reference is not None:
            result.metrics.update(score_permutation(recovered, true_permutation(reference, chw)))
        return result

    # -- buffers ---------------------------------------------------------------------------------------

    @staticmethod
    def _read_state(source: Any) -> tuple[Any, dict[str, torch.Tensor], str, dict[str, Any]]:
        if isinstance(source, Mapping):
            return None, dict(source), "the state dict", {}
        from ..models.checkpoint import read_checkpoint
        from ..models.errors import KeyedModelError
        from ..models.keyed import KeyedConfig

        try:
            payload = read_checkpoint(source)
        except KeyedModelError as exc:
            raise AttackError(str(exc)) from None
        config = KeyedConfig.from_dict(payload["config"])
        flag = bool(payload.get("contains_key_material"))
        what = f"checkpoint {os.fspath(source)}"
        if not flag:
            what += " (saved without key material: plain weights and the key's fingerprint only)"
        return config, dict(payload["state_dict"]), what, {"checkpoint_says_key_material": flag}

    @staticmethod
    def _agree(found: list[tuple[str, torch.Tensor]], details: dict[str, Any]) -> torch.Tensor:
        first = found[0][1]
        for name, perm in found[1:]:
            if not torch.equal(perm, first):
                raise AttackError(f"the key buffers disagree ({found[0][0]} vs {name}); this is not one keyed "
                                  "model's key material")
        details["sources"] = [name for name, _ in found]
        return first

    def _from_modules(self, model: nn.Module, hw: tuple[int, int], what: str,
                      details: dict[str, Any]) -> torch.Tensor:
        direct: list[tuple[str, torch.Tensor]] = []
        tables: list[tuple[str, torch.Tensor]] = []
        for name, m in model.named_modules():
            if isinstance(m, PositionPermutation) and m.hw == hw:
                way = _direction(name.rpartition(".")[2])
                if way is not None:
                    idx = m.index.detach().long().cpu()
                    direct.append((f"{name}.index", invert_permutation(idx) if way == "inverse" else idx))
            elif isinstance(m, DeformableConv2d) and m.in_hw == hw:
                if m.dilation != (1, 1):
                    continue
                taps = m._buffers.get("taps")
                label = f"{name}.taps"
                if taps is None:
                    taps = offsets_to_taps(m.offset, hw, kernel_size=m.kernel_size, stride=m.stride,
                                           padding=m.padding, dilation=m.dilation)
                    label = f"{name}.offset"
                tables.append((label, layout_from_taps(taps, hw, kernel_size=m.kernel_size)))
        found = direct or tables
        if not found:
            raise _nothing_found(what, hw, _sizes_found(model))
        return self._agree(found, details)

    def _from_state(self, state: dict[str, torch.Tensor], hw: tuple[int, int], what: str,
                    details: dict[str, Any]) -> torch.Tensor:
        n = hw[0] * hw[1]
        direct: list[tuple[str, torch.Tensor]] = []
        tables: list[tuple[str, torch.Tensor]] = []
        for name, v in state.items():
            prefix, _, buf = name.rpartition(".")
            attr = prefix.rpartition(".")[2]
            if buf == "index" and v.dim() == 1 and v.numel() == n and not v.is_floating_point():
                way = _direction(attr)
                idx = v.long().cpu()
                if way is not None and _is_permutation(idx):
                    direct.append((name, invert_permutation(idx) if way == "inverse" else idx))
            elif buf == "taps" and v.dim() == 2 and not v.is_floating_point():
                weight = state.get(f"{prefix}.weight")
                taps = v.long().cpu()
                inside = taps[(taps >= 0) & (taps < n)]
                if weight is None or weight.dim() != 4 or weight.shape[-2] * weight.shape[-1] != taps.shape[1]:
                    continue  # a pooling table: no weight to tell its window's shape
                if int(taps.max()) > n or not bool((torch.bincount(inside, minlength=n) > 0).all()):
                    continue  # the table of a smaller map
                try:
                    tables.append((name, layout_from_taps(taps, hw, kernel_size=tuple(weight.shape[-2:]))))
                except AttackError:
                    continue  # dilated or otherwise not a plain window: no layout from this one
        found = direct or tables
        if not found:
            raise _nothing_found(what, hw, [])
        return self._agree(found, details)

    # -- probe -----------------------------------------------------------------------------------------

    def _probe(self, model: nn.Module, chw: tuple[int, int, int], cost: Cost, details: dict[str, Any],
               metrics: dict[str, float]) -> torch.Tensor:
        c, h, w = chw
        n = h * w
        base = self.base
        digits = _digits_needed(n + 1, base)
        value = torch.arange(1, n + 1, dtype=torch.int64)  # 0 stays free for padding taps
        planes = torch.stack([(value // base**d) % base for d in range(digits)])
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
        probes = torch.cat([torch.zeros(1, n, dtype=torch.int64), planes]).view(digits + 1, 1, h, w)
        probes = probes.expand(digits + 1, c, h, w).to(device=device, dtype=dtype).contiguous()
        name, module, inp, out = self._first_conv(model, probes, (h, w))
        cost.queries += int(probes.shape[0])
        details["layer"] = name
        weight = _conv_weight(module)
        assert weight is not None
        kh, kw = weight.shape[-2:]
        k = kh * kw
        dilation = _pair(getattr(module, "dilation", 1))
        if dilation != (1, 1):
            raise AttackError(f"the first convolution ({name}) is dilated {dilation}; the probe reads windows of "
                              "adjacent taps only")
        flat = probes.reshape(digits + 1, -1)
        if not torch.equal(torch.sort(inp.reshape(digits + 1, -1), dim=1).values, torch.sort(flat, dim=1).values):
            raise AttackError(f"the first convolution ({name}) does not receive the probe's values rearranged "
                              "(something position-wise precedes it); the probe cannot read its taps")
        a = weight.detach().double().sum(1).reshape(weight.shape[0], k).cpu()
        if int(torch.linalg.matrix_rank(a)) < k:
            raise AttackError(f"the first convolution ({name}) has {weight.shape[0]} output channels with "
                              f"dependent tap weights for its {k} taps; the probe cannot separate them "
                              "(method='buffers' still reads the key if you hold the file)")
        q = out.shape[-2] * out.shape[-1]
        delta = (out[1:].double() - out[:1].double()).cpu().reshape(digits, weight.shape[0], q)
        vals = torch.linalg.pinv(a) @ delta.permute(1, 0, 2).reshape(weight.shape[0], digits * q)
        vals = vals.reshape(k, digits, q)
        rounded = vals.round()
        error = float((vals - rounded).abs().max()) if vals.numel() else 0.0
        metrics["max_rounding_error"] = error
        if error > 0.25 or bool((rounded < 0).any()) or bool((rounded >= base).any()):
            raise AttackError(f"the probe's responses do not decode to digits (worst rounding error {error:.3g}): "
                              "the first convolution's weights are too ill-conditioned; try a smaller base")
        weights = torch.tensor([base**d for d in range(digits)], dtype=torch.int64)
        spelled = (rounded.long() * weights[None, :, None]).sum(1)  # (K, Q): position + 1, or 0 for padding
        if bool((spelled > n).any()):
            raise AttackError("the probe decoded positions beyond the map; the first convolution is not a window "
                              "over the input")
        taps = torch.where(spelled == 0, n, spelled - 1).T.contiguous()
        perm = layout_from_taps(taps, (h, w), kernel_size=(kh, kw))
        if torch.equal(perm, torch.arange(n)):
            raise AttackError(f"{type(model).__name__} reads its input in plain order (the recovered permutation "
                              "is the identity): it is not a keyed model, there is no key to recover")
        return perm

    @staticmethod
    def _first_conv(model: nn.Module, probes: torch.Tensor,
                    hw: tuple[int, int]) -> tuple[str, nn.Module, torch.Tensor, torch.Tensor]:
        seen: dict[str, Any] = {}

        def hook(name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            seen.update(name=name, module=module, input=args[0].detach(), output=torch.as_tensor(output).detach())
            raise _Captured

        handles = [m.register_forward_hook(lambda mod, args, out, name=name: hook(name, mod, args, out))
                   for name, m in model.named_modules() if _conv_weight(m) is not None]
        states = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                model(probes)
        except _Captured:
            pass
        except (RuntimeError, ValueError) as exc:
            raise AttackError(f"the model does not run on {tuple(probes.shape[1:])} images: {exc}") from None
        finally:
            for hnd in handles:
                hnd.remove()
            for m, t in states:
                m.train(t)
        if not seen:
            raise AttackError(f"{type(model).__name__} ran without any convolution; the probe has nothing to read")
        inp = seen["input"]
        if not isinstance(inp, torch.Tensor) or inp.dim() != 4 or tuple(inp.shape[-2:]) != hw:
            raise AttackError(f"the first convolution ({seen['name']}) reads a map of shape "
                              f"{tuple(getattr(inp, 'shape', ()))}, not the {hw[0]}x{hw[1]} input; the probe reads "
                              "the first layer's taps over the input only")
        return seen["name"], seen["module"], inp, seen["output"]
