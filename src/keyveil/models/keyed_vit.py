"""Keyed ViT: a block-wise key folded into a torchvision ``VisionTransformer`` (docs/design.md §4.2).

With block size = patch size, a block scheme whose in-block steps are the same
for every block (shared in-block shuffle K5, shared negative–positive mask K3)
is, on every patch, one invertible affine map of the flattened patch; it folds
into the patch embedding ``conv_proj`` (weights and bias, input normalization
included). Block scrambling K1 permutes the patch tokens, which folds into a
permutation of the rows of ``encoder.pos_embedding`` (the class token keeps
row 0); the encoder is permutation-equivariant, so the logits equal the
plain model's.

The fold is derived from the scheme's own ``BlockParams`` (``index`` and
``mask``) and checked to be the same on every block, so any block scheme that
satisfies this works, and one that does not (per-block rotation K2, per-block
channel shuffle K4, per-block masks, LE nibbles) gets a clear error.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..keys import Key
from ..schemes.block import BlockScramble
from .errors import KeyedModelError

__all__ = ["block_fold", "fold_patch_conv", "keyed_vit", "vit_plain_state"]


def block_fold(scheme: BlockScramble, chw: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-patch form of a block scheme's encryption.

    Returns:
        ``(order, src, flip)``: block ``n`` of the encrypted image holds block
        ``order[n]`` of the plain image; inside a block, encrypted element
        ``j`` (flattened ``(C, M, M)``) is plain element ``src[j]``, flipped
        (``v -> 1 - v``) where ``flip[j]``.

    Raises:
        KeyedModelError: the scheme does not act the same way on every block.
    """
    c, h, w = chw
    p = scheme.block_size
    if scheme.nibbles:
        raise KeyedModelError("nibble-splitting schemes (le, ele) are not affine on pixels and cannot be folded")
    params = scheme.params(chw)
    nw = w // p

    def split(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ch, rest = flat // (h * w), flat % (h * w)
        r, col = rest // w, rest % w
        return (r // p) * nw + col // p, ch * p * p + (r % p) * p + col % p

    nj, lj = split(torch.arange(c * h * w))
    ni, li = split(params.index.cpu())
    order = torch.zeros((h // p) * nw, dtype=torch.long)
    order[nj] = ni
    src = torch.zeros(c * p * p, dtype=torch.long)
    src[lj] = li
    flip = torch.zeros(c * p * p, dtype=torch.bool)
    mask = params.mask.cpu() if params.mask is not None else torch.zeros(c * h * w, dtype=torch.bool)
    flip[lj] = mask
    if not (torch.equal(order[nj], ni) and torch.equal(src[lj], li) and torch.equal(flip[lj], mask)):
        raise KeyedModelError(
            "this block scheme does not apply the same in-block transform to every block (per-block "
            "rotation, channel shuffle, shuffle or mask), so it cannot be folded into a patch embedding; "
            "use the 'vit' preset (block scramble + shared shuffle + shared mask)"
        )
    return order, src, flip


def _stats(v: Sequence[float] | None, c: int, default: float) -> torch.Tensor:
    if v is None:
        return torch.full((c,), default, dtype=torch.float64)
    t = torch.as_tensor(list(v), dtype=torch.float64).flatten()
    if t.numel() == 1:
        t = t.expand(c)
    if t.numel() != c:
        raise KeyedModelError(f"mean/std need {c} values (one per channel), got {t.numel()}")
    return t.clone()


def fold_patch_conv(conv: nn.Conv2d, src: torch.Tensor, flip: torch.Tensor, *, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold one in-patch transform (``src``, ``flip`` of :func:`block_fold`) into a patch-embedding conv, in place.

    ``conv`` (kernel = stride = p) then gives on encrypted patches (normalized
    with ``mean``/``std`` per encrypted channel) what it gave on plain ones.
    Returns ``(scale, shift)``: encrypted element ``j`` is ``plain[src[j]] * scale[j] + shift[j]``
    in normalized units, inverted by :func:`vit_plain_state`.
    """
    c, p = conv.in_channels, conv.kernel_size[0]
    m, s = _stats(mean, c, 0.0), _stats(std, c, 1.0)
    d = c * p * p
    cj = torch.arange(d) // (p * p)
    ci = src // (p * p)
    sign = torch.where(flip, -1.0, 1.0).double()
    f = flip.double()
    scale = sign * s[cj] / s[ci]
    shift = (sign * (m[cj] - f) - m[ci]) / s[ci]
    weight = conv.weight.detach().double().reshape(conv.out_channels, d)
    new_w = weight[:, src] * scale[None, :].to(weight.device)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels,
                                                                                 dtype=torch.float64)
    new_b = bias + weight[:, src] @ shift.to(weight.device)
    with torch.no_grad():
        conv.weight.copy_(new_w.reshape_as(conv.weight).to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(new_b.to(conv.weight.dtype))
        else:
            conv.bias.copy_(new_b.to(conv.weight.dtype))
    return scale, shift


def keyed_vit(
    model: nn.Module, key: Key, scheme: BlockScramble, *, mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """A copy of a torchvision ``VisionTransformer`` with ``scheme`` folded in (see the module docstring)."""
    conv = getattr(model, "conv_proj", None)
    p = int(model.patch_size)
    if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (p, p) or conv.stride != (p, p):
        raise KeyedModelError("the ViT must embed patches with conv_proj = Conv2d(kernel=stride=patch_size) "
                              "(conv stems are not supported)")
    if scheme.block_size != p:
        raise KeyedModelError(f"the scheme's block size {scheme.block_size} must equal the ViT's patch size {p}; "
                              f"create it with block_size={p}")
    c = conv.in_channels
    size = int(model.image_size)
    order, src, flip = block_fold(scheme, (c, size, size))
    out = copy.deepcopy(model)
    scale, shift = fold_patch_conv(out.conv_proj, src, flip, mean=mean, std=std)
    with torch.no_grad():
        pos = out.encoder.pos_embedding
        rows = torch.cat((torch.zeros(1, dtype=torch.long), 1 + order)).to(pos.device)
        pos.copy_(pos[:, rows])
    dev = conv.weight.device
    out.register_buffer("keyveil_token_order", order.to(dev))
    out.register_buffer("keyveil_fold_src", src.to(dev))
    out.register_buffer("keyveil_fold_scale", scale.to(dev))
    out.register_buffer("keyveil_fold_shift", shift.to(dev))
    out.keyveil_had_bias = conv.bias is not None
    return out


VIT_KEY_BUFFERS = ("keyveil_token_order", "keyveil_fold_src", "keyveil_fold_scale", "keyveil_fold_shift")


def vit_plain_state(model: nn.Module, state: dict[str, Any], prefix: str = "") -> None:
    """Turn a keyed ViT's state dict entries back into the plain ViT's (drops the key material).

    Permutations are undone exactly; with a normalization whose std differs
    between channels, or a negative–positive mask, weights and bias come back
    to within float rounding (one division / subtraction in float64).
    """
    src = state.pop(prefix + "keyveil_fold_src")
    scale = state.pop(prefix + "keyveil_fold_scale").double()
    shift = state.pop(prefix + "keyveil_fold_shift").double()
    order = state.pop(prefix + "keyveil_token_order")
    w_key = state[prefix + "conv_proj.weight"]
    e = w_key.shape[0]
    wk = w_key.double().reshape(e, -1) / scale[None, :].to(w_key.device)
    plain = torch.empty_like(wk)
    plain[:, src.to(w_key.device)] = wk
    state[prefix + "conv_proj.weight"] = plain.reshape_as(w_key).to(w_key.dtype)
    bkey = prefix + "conv_proj.bias"
    if bkey in state:
        b = state[bkey].double() - wk @ shift.to(wk.device)
        if getattr(model, "keyveil_had_bias", True):
            state[bkey] = b.to(w_key.dtype)
        else:
            state.pop(bkey)
    pkey = prefix + "encoder.pos_embedding"
    pos = state[pkey]
    plain_pos = pos.clone()
    plain_pos[:, 1 + order.to(pos.device)] = pos[:, 1:]
    state[pkey] = plain_pos
