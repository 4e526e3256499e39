"""Reading the ``pixel`` key out of a keyed CNN or keyed detector: its buffers, or probing its first convolution.

The machinery behind :class:`keyveil.attacks.KeyFromModel` for models that
follow the ``pixel`` scheme (``keyveil.models.keyed`` CNNs, and
``keyed_detector``'s dense core). Every function returns the key's input
permutation π (``int64``, encrypted position -> plain position's index as
``pixel.permutation``) and the negative–positive mask of ``pixel-np`` over
encrypted positions (``None`` when the model undoes no flip).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..models.functional import _pair
from ..models.keyed_cnn import PositionFlip
from ..models.layers import DeformableConv2d, PositionPermutation
from ..schemes.functional import invert_permutation
from .base import AttackError, Cost
from .permutation import _digits_needed, _is_permutation
from .tap_layout import layout_from_taps, offsets_to_taps

__all__ = ["resolve_chw", "read_state", "from_modules", "from_state", "probe"]

Found = tuple[torch.Tensor, torch.Tensor | None]


def conv_weight(m: nn.Module) -> torch.Tensor | None:
    w = m._parameters.get("weight")
    return w if isinstance(w, torch.Tensor) and w.dim() == 4 else None


def _channels(source: nn.Module | Mapping[str, torch.Tensor]) -> int:
    """The input channels of the first convolution (0: none found)."""
    if isinstance(source, nn.Module):
        for m in source.modules():
            w = conv_weight(m)
            if w is not None:
                return int(w.shape[1]) * int(getattr(m, "groups", 1))
        return 0
    return next((int(v.shape[1]) for v in source.values() if v.dim() == 4 and v.is_floating_point()), 0)


def resolve_chw(image_size: Any, config: Any, source: nn.Module | Mapping[str, torch.Tensor]) -> tuple[int, int, int]:
    """``(C, H, W)`` of the encrypted images: ``image_size`` checked against the model's recorded size."""
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


def read_state(source: Any) -> tuple[Any, dict[str, torch.Tensor], str, dict[str, Any]]:
    """``(config or None, state dict, what it is, details)`` of a checkpoint file or a state dict."""
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


def _agree(found: list[tuple[str, torch.Tensor]], details: dict[str, Any]) -> torch.Tensor:
    first = found[0][1]
    for name, perm in found[1:]:
        if not torch.equal(perm, first):
            raise AttackError(f"the key buffers disagree ({found[0][0]} vs {name}); this is not one keyed "
                              "model's key material")
    details["sources"] = [name for name, _ in found]
    return first


def from_modules(model: nn.Module, hw: tuple[int, int], what: str, details: dict[str, Any]) -> Found:
    """π (and the flip mask) from a keyed model's modules: permutation buffers, else deformable tap tables."""
    direct: list[tuple[str, torch.Tensor]] = []
    tables: list[tuple[str, torch.Tensor]] = []
    mask = None
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
        elif isinstance(m, PositionFlip) and tuple(m.offset.shape[-2:]) == hw:
            mask = m.offset.detach().reshape(-1).cpu() > 0.5
            details["flip_source"] = f"{name}.offset"
    found = direct or tables
    if not found:
        raise _nothing_found(what, hw, _sizes_found(model))
    return _agree(found, details), mask


def _flip_in_state(state: dict[str, torch.Tensor], hw: tuple[int, int], details: dict[str, Any]) -> torch.Tensor | None:
    """The :class:`PositionFlip` mask: an ``offset`` of shape (1, 1, H, W) whose ``scale`` is ``1 - 2·offset``."""
    for name, v in state.items():
        prefix, _, buf = name.rpartition(".")
        scale = state.get(f"{prefix}.scale")
        if (buf == "offset" and v.is_floating_point() and tuple(v.shape) == (1, 1, *hw) and scale is not None
                and scale.shape == v.shape and torch.allclose(scale.float(), 1 - 2 * v.float())):
            details["flip_source"] = name
            return v.reshape(-1).cpu() > 0.5
    return None


def from_state(state: dict[str, torch.Tensor], hw: tuple[int, int], what: str, details: dict[str, Any]) -> Found:
    """π (and the flip mask) from a state dict's tensors alone (no architecture needed)."""
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
    return _agree(found, details), _flip_in_state(state, hw, details)


# ----------------------------------------------------------------------------------------------- the probe


class _Captured(Exception):
    """Raised by the probe's hook to stop the forward pass once the first convolution has run."""


def probe(model: nn.Module, chw: tuple[int, int, int], base: int, cost: Cost, details: dict[str, Any],
          metrics: dict[str, float]) -> Found:
    """Run the model on digit-plane probe images and solve its first convolution (see ``KeyFromModel``).

    What precedes the first convolution may be a per-channel affine map (a
    detector's normalization) and ``pixel-np``'s flips (``v -> 1 - v`` at
    keyed positions): the first convolution then sees ``± g_c · value`` per
    position; ``g_c`` is read off its input, a negative tap value is a flipped
    position.
    """
    c, h, w = chw
    n = h * w
    digits = _digits_needed(n + 1, base)
    value = torch.arange(1, n + 1, dtype=torch.int64)  # 0 stays free for padding taps
    planes = torch.stack([(value // base**d) % base for d in range(digits)])
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    probes = torch.cat([torch.zeros(1, n, dtype=torch.int64), planes]).view(digits + 1, 1, h, w)
    probes = probes.expand(digits + 1, c, h, w).to(device=device, dtype=dtype).contiguous()
    name, module, inp, out = _first_conv(model, probes, (h, w))
    cost.queries += int(probes.shape[0])
    details["layer"] = name
    weight = conv_weight(module)
    assert weight is not None
    kh, kw = weight.shape[-2:]
    k = kh * kw
    dilation = _pair(getattr(module, "dilation", 1))
    if dilation != (1, 1):
        raise AttackError(f"the first convolution ({name}) is dilated {dilation}; the probe reads windows of "
                          "adjacent taps only")
    gain = _channel_gain(inp, planes, name)
    a = (weight.detach().double() * gain.to(weight.device)[None, :, None, None]).sum(1).reshape(weight.shape[0], k)
    a = a.cpu()
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
    negative = (rounded < 0).any(1)  # (K, Q): a flipped position's digits all come out negated
    if error > 0.25 or bool((rounded.abs() >= base).any()) or bool(((rounded > 0).any(1) & negative).any()):
        raise AttackError(f"the probe's responses do not decode to digits (worst rounding error {error:.3g}): "
                          "the first convolution's weights are too ill-conditioned; try a smaller base")
    weights = torch.tensor([base**d for d in range(digits)], dtype=torch.int64)
    spelled = (rounded.abs().long() * weights[None, :, None]).sum(1)  # (K, Q): position + 1, or 0 for padding
    if bool((spelled > n).any()):
        raise AttackError("the probe decoded positions beyond the map; the first convolution is not a window "
                          "over the input")
    taps = torch.where(spelled == 0, n, spelled - 1).T.contiguous()
    perm = layout_from_taps(taps, (h, w), kernel_size=(kh, kw))
    flipped = torch.zeros(n + 1, dtype=torch.bool)
    flipped[taps.T[negative]] = True
    mask = flipped[:n] if bool(flipped.any()) else None
    if mask is None and torch.equal(perm, torch.arange(n)):
        raise AttackError(f"{type(model).__name__} reads its input in plain order (the recovered permutation "
                          "is the identity): it is not a keyed model, there is no key to recover")
    return perm, mask


def _channel_gain(inp: torch.Tensor, planes: torch.Tensor, name: str) -> torch.Tensor:
    """Per input channel, the factor ``g_c`` with which the first convolution sees the probe's values.

    Checks that each channel's response is the probe's values rearranged, scaled by ``g_c`` and possibly
    negated per position; raises otherwise.
    """
    d1 = inp.shape[0]
    diff = (inp[1:].double() - inp[:1].double()).cpu().reshape(d1 - 1, inp.shape[1], -1)  # (D, C, N)
    flat = planes.double()  # (D, N)
    if diff.shape[-1] != flat.shape[-1]:
        raise AttackError(f"the first convolution ({name}) reads {diff.shape[-1]} positions, not the input's "
                          f"{flat.shape[-1]}; the probe cannot read its taps")
    gain = diff.abs().amax(dim=(0, 2)) / flat.max().clamp_min(1)
    want = torch.sort(flat, dim=1).values
    for ch in range(diff.shape[1]):
        g = float(gain[ch])
        got = torch.sort(diff[:, ch].abs() / max(g, 1e-30), dim=1).values
        if g <= 0 or not torch.allclose(got, want, atol=1e-3 * max(1.0, float(flat.max())), rtol=1e-4):
            raise AttackError(f"the first convolution ({name}) does not receive the probe's values rearranged "
                              "(up to a per-channel scale and per-position flips): something mixes positions "
                              "before it; the probe cannot read its taps")
    return gain


def _first_conv(model: nn.Module, probes: torch.Tensor,
                hw: tuple[int, int]) -> tuple[str, nn.Module, torch.Tensor, torch.Tensor]:
    seen: dict[str, Any] = {}

    def hook(name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        seen.update(name=name, module=module, input=args[0].detach(), output=torch.as_tensor(output).detach())
        raise _Captured

    handles = [m.register_forward_hook(lambda mod, args, out, name=name: hook(name, mod, args, out))
               for name, m in model.named_modules() if conv_weight(m) is not None]
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
