"""Hao et al.'s invariant ViTs for the per-image ``patch`` and ``mix`` schemes (docs/design.md §4.3).

* **PE-ViT** (for ``patch``): no position embedding; every patch token gets a
  reference-based positional encoding ``x_i + g(x_i - r)`` with a learned
  reference vector ``r`` and ``g = Linear → ReLU → Linear → Sigmoid``. It
  depends on the token's content only, so the class-token output — and the
  logits — are invariant to any permutation of the patches.
* **MI embedding** (for ``mix``): ``Conv2d(kernel = stride = p/s)`` embeds
  every sub-patch, an ``s×s`` average pool takes the mean sub-patch embedding
  of each patch, then GELU and a 1×1 conv. Mixing the sub-patches with a
  doubly-stochastic matrix keeps that mean (the conv is affine and rows and
  columns of the matrix sum to one), so the embedding is invariant to ``mix``.
* **Block-group embedding** (for ``block-per-image``, our reading of the Kiya
  lab's restricted random permutations): ``mean_g act(W·(g x) + b)`` over the
  group ``g`` of the 8 rotations/flips of a patch (and its negative–positive
  ``x -> 1 - x``), then a 1×1 conv. A group average is invariant to every
  element of the group; with the reference positional encoding the logits are
  invariant to the scheme's fresh block order, rotations/flips and signs.

Examples:
    >>> import torch
    >>> from keyveil import schemes
    >>> from keyveil.models import patch_invariant_vit
    >>> net = patch_invariant_vit(image_size=28, patch_size=7, in_channels=1, num_classes=10,
    ...                           dim=32, depth=2, heads=4).eval()
    >>> x = torch.rand(3, 1, 28, 28)
    >>> y = schemes.create("patch", patch_size=7).encrypt(x)
    >>> bool((net(x) - net(y)).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ReferencePositionalEncoding",
    "MixInvariantPatchEmbed",
    "BlockInvariantPatchEmbed",
    "InvariantViT",
    "patch_invariant_vit",
    "mix_invariant_vit",
    "block_invariant_vit",
    "create_invariant_vit",
    "INVARIANT_VIT_CONFIGS",
]


class ReferencePositionalEncoding(nn.Module):
    """``x + g(x - r)``: a positional code computed from each token's content (Hao et al.).

    Args:
        dim: token width.
        hidden: width of ``g``'s hidden layer (default ``dim``).

    Shape:
        ``(B, N, dim)`` -> ``(B, N, dim)``; equivariant to permutations of ``N``.
    """

    def __init__(self, dim: int, *, hidden: int | None = None) -> None:
        super().__init__()
        self.reference = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.reference, std=0.02)
        self.g = nn.Sequential(nn.Linear(dim, hidden or dim), nn.ReLU(), nn.Linear(hidden or dim, dim), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.g(x - self.reference)


class PatchEmbed(nn.Module):
    """``Conv2d(kernel = stride = p)``: one token per p×p patch, ``(B, C, H, W) -> (B, dim, H/p, W/p)``."""

    def __init__(self, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MixInvariantPatchEmbed(nn.Module):
    """Hao et al.'s MI embedding: sub-patch conv → s×s average pool → GELU → 1×1 conv.

    Args:
        patch_size: p.
        grid: s, sub-patches per side (must divide p; the ``mix`` scheme's ``grid``).
        in_channels: image channels.
        dim: output token width.
        hidden: width of the sub-patch embedding (default ``dim``).

    Shape:
        ``(B, C, H, W) -> (B, dim, H/p, W/p)``.

    Examples:
        >>> import torch
        >>> from keyveil import schemes
        >>> emb = MixInvariantPatchEmbed(patch_size=8, grid=4, in_channels=3, dim=16)
        >>> x = torch.rand(2, 3, 16, 16)
        >>> y = schemes.create("mix", patch_size=8, grid=4).encrypt(x)
        >>> bool((emb(x) - emb(y)).abs().max() < 1e-5)
        True
    """

    def __init__(self, *, patch_size: int, grid: int, in_channels: int, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        if grid < 1 or patch_size % grid:
            raise ValueError(f"grid ({grid}) must be a positive divisor of patch_size ({patch_size})")
        q = patch_size // grid
        hidden = hidden or dim
        self.patch_size, self.grid = patch_size, grid
        self.sub = nn.Conv2d(in_channels, hidden, q, stride=q)
        self.pool = nn.AvgPool2d(grid)
        self.act = nn.GELU()
        self.proj = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.pool(self.sub(x))))


class BlockInvariantPatchEmbed(nn.Module):
    """A patch embedding invariant to each patch's rotations/flips and negative–positive transform.

    ``proj(mean_g GELU(conv(g x)))`` over the 8 rotations/flips ``g`` of the
    p×p patch (``rotate``) and, with ``negapos``, over ``x -> 1 - x`` too
    (inputs in [0, 1]). The group acts on the kernel instead of the input:
    ``<W, g x> = <g⁻¹ W, x>``, and ``<W, 1 - x> = ΣW - <W, x>``, so one conv
    with the 8 turned kernels gives every member's pre-activation.

    Shape:
        ``(B, C, H, W) -> (B, dim, H/p, W/p)``.
    """

    def __init__(self, *, patch_size: int, in_channels: int, dim: int, hidden: int | None = None,
                 rotate: bool = True, negapos: bool = True) -> None:
        super().__init__()
        hidden = hidden or dim
        self.patch_size, self.hidden, self.rotate, self.negapos = patch_size, hidden, rotate, negapos
        self.sub = nn.Conv2d(in_channels, hidden, patch_size, stride=patch_size)
        self.act = nn.GELU()
        self.proj = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.sub.weight, self.sub.bias
        turns = range(8) if self.rotate else range(1)
        bank = torch.cat([torch.rot90(w, k % 4, dims=(-2, -1)).flip(-1) if k >= 4 else torch.rot90(w, k, dims=(-2, -1))
                          for k in turns])  # (G*hidden, C, p, p)
        pre = F.conv2d(x, bank, stride=self.patch_size)  # (B, G*hidden, h, w), no bias
        g = len(turns)
        pre = pre.view(x.shape[0], g, self.hidden, *pre.shape[-2:])
        bias = b.view(1, 1, -1, 1, 1)
        acts = self.act(pre + bias)
        if self.negapos:  # <W, 1 - x> + b = sum(W) + b - <W, x>, the same sum for every turn
            acts = torch.cat((acts, self.act(w.sum((1, 2, 3)).view(1, 1, -1, 1, 1) + bias - pre)), dim=1)
        return self.proj(acts.mean(1))


class _Block(nn.Module):
    """Pre-norm transformer block (attention + MLP); permutation-equivariant over tokens."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class InvariantViT(nn.Module):
    """A ViT classifier with a choice of patch embedding and positional encoding.

    Args:
        image_size: side of the (square) input, or ``(H, W)``.
        patch_size: p.
        in_channels: image channels.
        num_classes: classifier outputs.
        dim: token width. depth: blocks. heads: attention heads.
        mlp_dim: MLP hidden width (default ``4*dim``).
        embedding: ``"patch"`` (a conv with kernel = stride = p), ``"mix"``
            (:class:`MixInvariantPatchEmbed`) or ``"block"``
            (:class:`BlockInvariantPatchEmbed`, with rotations/flips and negative–positive).
        grid: s for the ``"mix"`` embedding.
        position: ``"reference"`` (:class:`ReferencePositionalEncoding`,
            patch-order invariant), ``"learned"`` (a learned table, as ViT) or ``None``.
        dropout: dropout rate in attention and MLP.
        block_rotate, block_negapos: the group of the ``"block"`` embedding.

    With ``position="reference"`` (or ``None``) the logits are invariant to any
    permutation of the patches; with ``embedding="mix"`` they are invariant to
    the ``mix`` scheme with the same ``patch_size`` and ``grid``.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int,
        in_channels: int = 3,
        num_classes: int = 1000,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_dim: int | None = None,
        embedding: str = "patch",
        grid: int = 4,
        position: str | None = "reference",
        dropout: float = 0.0,
        block_rotate: bool = True,
        block_negapos: bool = True,
    ) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if h % patch_size or w % patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by patch_size {patch_size}")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if embedding not in ("patch", "mix", "block"):
            raise ValueError(f"embedding must be 'patch', 'mix' or 'block', got {embedding!r}")
        if position not in ("reference", "learned", None):
            raise ValueError(f"position must be 'reference', 'learned' or None, got {position!r}")
        self.image_size, self.patch_size, self.num_classes = (h, w), patch_size, num_classes
        self.embedding, self.position = embedding, position
        n = (h // patch_size) * (w // patch_size)
        if embedding == "patch":
            self.patch_embed: nn.Module = PatchEmbed(patch_size, in_channels, dim)
        elif embedding == "block":
            self.patch_embed = BlockInvariantPatchEmbed(patch_size=patch_size, in_channels=in_channels, dim=dim,
                                                        rotate=block_rotate, negapos=block_negapos)
        else:
            self.patch_embed = MixInvariantPatchEmbed(patch_size=patch_size, grid=grid, in_channels=in_channels,
                                                      dim=dim)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        if position == "reference":
            self.pos: nn.Module | None = ReferencePositionalEncoding(dim)
        else:
            self.pos = None
        self.pos_embedding = nn.Parameter(torch.empty(1, n, dim).normal_(std=0.02)) if position == "learned" else None
        self.blocks = nn.Sequential(*[_Block(dim, heads, mlp_dim or 4 * dim, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"expected {self.image_size[0]}x{self.image_size[1]} images, got {tuple(x.shape[-2:])}")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        if self.pos is not None:
            tokens = self.pos(tokens)
        if self.pos_embedding is not None:
            tokens = tokens + self.pos_embedding
        cls = self.class_token.expand(x.shape[0], -1, -1)
        z = self.blocks(torch.cat((cls, tokens), dim=1))
        return self.head(self.norm(z[:, 0]))


def patch_invariant_vit(**config: Any) -> InvariantViT:
    """PE-ViT: invariant to the ``patch`` scheme (any permutation of the p×p patches).

    Takes :class:`InvariantViT`'s arguments, e.g.
    ``patch_invariant_vit(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=64, depth=4, heads=4)``.
    """
    config.setdefault("embedding", "patch")
    config.setdefault("position", "reference")
    return InvariantViT(**config)


def mix_invariant_vit(**config: Any) -> InvariantViT:
    """A ViT with the MI embedding: invariant to the ``mix`` scheme (same ``patch_size`` and ``grid``).

    Patch positions are not shuffled by ``mix``, so a learned position table
    is used by default; ``position="reference"`` makes it patch-order invariant too.
    """
    config.setdefault("embedding", "mix")
    config.setdefault("position", "learned")
    return InvariantViT(**config)


def block_invariant_vit(*, rotate: bool = True, negapos: bool = True, **config: Any) -> InvariantViT:
    """A ViT invariant to ``block-per-image`` (same ``block_size`` as ``patch_size``, ``rotate``, ``negapos``).

    The block-group embedding (:class:`BlockInvariantPatchEmbed`) and the
    reference positional encoding (no positional order): the logits are the
    same for every per-image key. Takes :class:`InvariantViT`'s arguments.
    """
    config.setdefault("position", "reference")
    return InvariantViT(embedding="block", block_rotate=rotate, block_negapos=negapos, **config)


INVARIANT_VIT_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"dim": 192, "depth": 12, "heads": 3},
    "small": {"dim": 384, "depth": 12, "heads": 6},
    "base": {"dim": 768, "depth": 12, "heads": 12},
    "large": {"dim": 1024, "depth": 24, "heads": 16},
}

_ALIASES = {
    "img_size": "image_size", "in_chans": "in_channels", "embed_dim": "dim", "hidden_dim": "dim",
    "num_layers": "depth", "num_heads": "heads", "mlp_dim": "mlp_dim", "drop_rate": "dropout",
}


def create_invariant_vit(
    config: str | Mapping[str, Any], *, kind: str = "patch", num_classes: int = 1000, **overrides: Any,
) -> InvariantViT:
    """Build an invariant ViT from a size name or a timm/torchvision-style config dict.

    Args:
        config: ``"tiny"``, ``"small"``, ``"base"``, ``"large"`` (ViT widths
            and depths), or a dict with timm keys (``img_size``, ``patch_size``,
            ``in_chans``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``)
            or torchvision keys (``image_size``, ``patch_size``, ``num_layers``,
            ``num_heads``, ``hidden_dim``, ``mlp_dim``).
        kind: ``"patch"`` (PE-ViT) or ``"mix"`` (MI embedding).
        num_classes: classifier outputs.
        overrides: further :class:`InvariantViT` arguments.

    Examples:
        >>> net = create_invariant_vit({"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2,
        ...                             "num_heads": 3, "mlp_ratio": 2.0}, num_classes=10)
        >>> net.head.out_features, len(net.blocks), net.head.in_features
        (10, 2, 48)
    """
    if isinstance(config, str):
        try:
            cfg: dict[str, Any] = {"image_size": 224, "patch_size": 16, **INVARIANT_VIT_CONFIGS[config]}
        except KeyError:
            raise ValueError(f"unknown config {config!r}; known: {', '.join(INVARIANT_VIT_CONFIGS)}") from None
    else:
        cfg = {}
        ratio = None
        for k, v in config.items():
            if k == "mlp_ratio":
                ratio = float(v)
            else:
                cfg[_ALIASES.get(k, k)] = v
        if ratio is not None and "mlp_dim" not in cfg:
            cfg["mlp_dim"] = int(cfg.get("dim", 768) * ratio)
    cfg.update(overrides)
    cfg["num_classes"] = num_classes
    if kind == "patch":
        return patch_invariant_vit(**cfg)
    if kind == "mix":
        return mix_invariant_vit(**cfg)
    raise ValueError(f"kind must be 'patch' or 'mix', got {kind!r}")
