"""``keyed()``: turn a plain model into one that runs on encrypted images (docs/design.md §4).

Examples:
    A small CNN for 28×28 grayscale images, run on ``pixel``-encrypted input:

    >>> import torch
    >>> from torch import nn
    >>> from keyveil import Key, schemes
    >>> from keyveil.models import keyed
    >>> net = nn.Sequential(
    ...     nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
    ...     nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    ...     nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
    ... ).eval()
    >>> key = Key.generate()
    >>> knet = keyed(net, key, input_size=(1, 28, 28))
    >>> x = torch.rand(5, 1, 28, 28)
    >>> y = schemes.create("pixel", key).encrypt(x)
    >>> bool((knet(y) - net(x)).abs().max() < 1e-5)
    True
    >>> knet.keyveil_config.mode, knet.keyveil_config.key_fingerprint == key.fingerprint
    ('features', True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..keys import Key
from ..schemes import Scheme, create
from ..schemes.block import BlockScramble
from ..schemes.pixel import PixelShuffle
from .analyzer import analyze_model
from .errors import KeyedModelError, SelfCheckError, UnsupportedModelError, UnsupportedOp
from .invariant import InvariantViT
from .keyed_cnn import CNN_MODES, keyed_cnn, unflip_input

__all__ = ["keyed", "KeyedConfig", "validate", "self_check", "resolve_input_size"]


@dataclass(frozen=True)
class KeyedConfig:
    """How a keyed model was made; travels with it as ``model.keyveil_config`` (no secret).

    Attributes:
        kind: ``"cnn"``, ``"vit"`` or ``"inv-vit"``.
        scheme: the registered scheme name (``"pixel"``, ``"vit"``, ...).
        scheme_params: the scheme's options.
        mode: ``"input"``, ``"features"`` or ``"deformable"`` (``"fold"`` for ViTs).
        input_size: ``(C, H, W)`` the model was converted for.
        key_fingerprint: the key's public fingerprint.
        kernel: the deformable convolution kernel (``"gather"`` or ``"deform_conv2d"``).
        mean, std: the input normalization a keyed ViT expects (``None``: none).
        arch: the architecture name when known (torchvision's, for the CLI).
    """

    kind: str
    scheme: str
    scheme_params: dict[str, Any]
    mode: str
    input_size: tuple[int, int, int]
    key_fingerprint: str
    kernel: str = "gather"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    arch: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-able) for checkpoints."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeyedConfig:
        d = dict(d)
        d["input_size"] = tuple(d["input_size"])
        for k in ("mean", "std"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def _first_in_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d)):
            return m.in_channels
    return 3


def resolve_input_size(model: nn.Module, input_size: int | Sequence[int] | None) -> tuple[int, int, int]:
    """``(C, H, W)`` from an int, ``(H, W)`` or ``(C, H, W)``; C defaults to the first conv's input channels."""
    if input_size is None:
        raise KeyedModelError(
            "keyed CNNs need the image size their permutations are derived for: pass input_size=(H, W) "
            "or (C, H, W), e.g. input_size=(3, 32, 32)"
        )
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    size = tuple(int(v) for v in input_size)
    if len(size) == 2:
        size = (_first_in_channels(model), *size)
    if len(size) != 3 or min(size) < 1:
        raise KeyedModelError(f"input_size must be H, (H, W) or (C, H, W) with positive entries, got {input_size!r}")
    return size  # type: ignore[return-value]


def _resolve_scheme(scheme: str | Scheme, key: Key, model: nn.Module) -> Scheme:
    if isinstance(scheme, Scheme):
        if scheme.key is not None and scheme.key != key:
            raise KeyedModelError("the scheme instance holds a different key than the one passed to keyed()")
        return scheme
    if not isinstance(scheme, str):
        raise TypeError(f"scheme must be a name or a keyveil Scheme, got {type(scheme).__name__}")
    p = int(getattr(model, "patch_size", 16))
    if scheme == "vit":
        return create("vit", key, block_size=p)
    if scheme == "vit+patch":
        return create("vit+patch", key, steps=[("vit", {"scramble": False, "block_size": p}),
                                               ("patch", {"patch_size": p})])
    return create(scheme, key)


def _is_torchvision_vit(model: nn.Module) -> bool:
    try:
        from torchvision.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, VisionTransformer)


def keyed(
    model: nn.Module,
    key: Key,
    *,
    scheme: str | Scheme = "pixel",
    mode: str = "features",
    input_size: int | Sequence[int] | None = None,
    kernel: str = "gather",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    check: bool = True,
) -> nn.Module:
    """A copy of ``model`` that gives, on encrypted images, the plain model's outputs on plain ones.

    ``model`` itself is not modified and shares no tensors with the result.

    Args:
        model: a plain CNN (any ``torch.fx``-traceable CNN whose spatial
            operators are ``Conv2d`` and max/avg/adaptive pooling: torchvision's
            classifiers incl. ConvNeXt, whose channels-last permutes,
            LayerNorm over channels and ``Linear`` layers act position-wise;
            timm models, with timm's SAME-padded convs/pools,
            ``BatchNormAct2d`` and ``SelectAdaptivePool2d``), a model that
            returns maps (segmentation-style, e.g. torchvision
            ``fcn_resnet50``: its resizes are keyed and the maps it returns,
            also inside dicts, are un-scrambled at the end), or a torchvision
            ``VisionTransformer``, or an :class:`~keyveil.models.InvariantViT`
            with the ``patch`` embedding (a block step folded into it; with the
            chain ``vit+patch`` the per-image patch order is ignored).
        key: the secret key the images are encrypted with.
        scheme: ``"pixel"`` (CNNs) or ``"vit"`` (a ViT; the block preset with
            block size = the ViT's patch size), or a scheme instance made with
            ``key`` (``create("vit+patch", key, ...)`` for an order-invariant ViT).
        mode: for CNNs, ``"input"`` (un-scramble once at the input; works for
            any model), ``"features"`` (feature maps stay scrambled) or
            ``"deformable"`` (PrivDL's deformable operators). Ignored for ViTs
            (the key is folded into the weights).
        input_size: ``(C, H, W)``, ``(H, W)`` or ``H`` of the encrypted images
            (CNNs; a ViT uses its ``image_size``). The keyed CNN only accepts
            this size.
        kernel: deformable mode's convolution: ``"gather"`` (im2col by index
            + one matmul, fast) or ``"deform_conv2d"`` (torchvision's operator,
            the reference; slow on CPU).
        mean, std: ViT only. The per-channel normalization the plain model was
            trained with (``transforms.Normalize(mean, std)`` after
            ``ToTensor``); the keyed ViT then takes *encrypted* images in
            [0, 1] normalized with the same ``Normalize`` (channel ``c`` of the
            encrypted tensor uses ``mean[c]``, ``std[c]``), so the data
            pipeline is ``ToTensor → encrypt → Normalize``. ``None``: no
            normalization. CNNs need neither: a pixel shuffle commutes with
            per-channel normalization.
        check: run the self-check (plain vs keyed on a random image) before
            returning; raises :class:`SelfCheckError` on a mismatch.

    Returns:
        The keyed model (an ``nn.Module``; in ``features``/``deformable`` mode
        a ``torch.fx.GraphModule``; in ``features`` mode its gathers run over
        rows of C contiguous values, so its feature maps are channels-last
        whatever the input's memory format: 3-7x faster gathers than plane by
        plane, and on CPU the faster layout for the convolutions too), with
        ``keyveil_config`` (:class:`KeyedConfig`) set. Its index buffers move
        with ``.to(device)``; it accepts any batch size.

    Raises:
        UnsupportedModelError: the model has operations that cannot run on
            scrambled maps (e.g. Swin's window attention, ``torch.roll``,
            padding, a resize inside a classifier); all of them are listed
            with their module paths. ``mode="input"`` works for any model.
        KeyedModelError: bad arguments (scheme, size, mode).

    Notes:
        **A keyed model is the key.** It holds the key's permutations (index
        buffers; in ``deformable`` mode the integer offsets and tap tables,
        from which the input permutation follows), so whoever holds it can
        decrypt every image encrypted under the key. The attack
        ``key-from-model`` (:class:`keyveil.attacks.KeyFromModel`) measures
        this for keyed CNNs: reading the buffers, or, without reading any, by
        running the model on three probe images and solving its first
        convolution's response, it recovered 100 % of the key in every mode
        (28×28, 96×80 and 3×224×224 small CNNs; at most 0.06 s CPU from the
        buffers, 0.22 s probing, on one core). So nobody who must not read the
        client's images may hold a keyed model: only the key holder, or a
        party already trusted with the plain images. Serving a keyed model
        on an untrusted server gives that server the key; keep it on the
        client side, and hand out checkpoints made by
        :func:`keyveil.models.save_keyed`'s default, which holds the plain
        weights and the key's fingerprint only. Independently of the model,
        a fixed pixel permutation is recoverable from a few chosen
        plaintexts; see SECURITY.md.
    """
    if not isinstance(key, Key):
        raise TypeError(f"key must be a keyveil.Key, got {type(key).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    sch = _resolve_scheme(scheme, key, model)
    name = getattr(sch, "registered_name", sch.name)
    if isinstance(model, InvariantViT):
        from .keyed_invariant import keyed_invariant_vit

        out = keyed_invariant_vit(model, sch, mean=mean, std=std)
        cfg = KeyedConfig("inv-vit", name, sch.params_dict(), "fold", (_first_in_channels(model), *model.image_size),
                          key.fingerprint, mean=None if mean is None else tuple(float(v) for v in mean),
                          std=None if std is None else tuple(float(v) for v in std))
    elif isinstance(sch, BlockScramble):
        if not _is_torchvision_vit(model):
            raise KeyedModelError(
                f"scheme {name!r} (block-wise) folds into a torchvision VisionTransformer only; "
                f"got {type(model).__name__}. Use scheme='pixel' for CNNs."
            )
        from .keyed_vit import keyed_vit

        out = keyed_vit(model, key, sch, mean=mean, std=std)
        size = (int(model.conv_proj.in_channels), model.image_size, model.image_size)
        cfg = KeyedConfig("vit", name, sch.params_dict(), "fold", size, key.fingerprint,
                          mean=None if mean is None else tuple(float(v) for v in mean),
                          std=None if std is None else tuple(float(v) for v in std))
    elif isinstance(sch, PixelShuffle):
        if sch.per_channel:
            raise KeyedModelError(
                "no keyed CNN exists for pixel(per_channel=True): a convolution mixes channels at one "
                "position, so every channel must share the permutation; use per_channel=False"
            )
        if mode not in CNN_MODES:
            raise KeyedModelError(f"mode must be one of {CNN_MODES}, got {mode!r}")
        if kernel not in ("gather", "deform_conv2d"):
            raise KeyedModelError(f"kernel must be 'gather' or 'deform_conv2d', got {kernel!r}")
        size = resolve_input_size(model, input_size)
        out = keyed_cnn(model, key, mode=mode, input_size=size, kernel=kernel)
        if sch.negapos:
            out = unflip_input(out, sch.flip_mask(size[1], size[2]), size[1:])
        cfg = KeyedConfig("cnn", name, sch.params_dict(), mode, size, key.fingerprint, kernel=kernel)
    else:
        raise KeyedModelError(
            f"no keyed model for scheme {name!r}: use 'pixel' (CNNs) or 'vit' (torchvision ViT). "
            "The per-image schemes 'patch' and 'mix' need invariant models instead: "
            "keyveil.models.patch_invariant_vit / mix_invariant_vit"
        )
    out.keyveil_config = cfg
    out.train(model.training)
    if check:
        self_check(model, out, sch, cfg)
    return out


def _normalize(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    if mean is None and std is None:
        return x
    m = torch.as_tensor(mean if mean is not None else [0.0] * x.shape[1], dtype=x.dtype, device=x.device)
    s = torch.as_tensor(std if std is not None else [1.0] * x.shape[1], dtype=x.dtype, device=x.device)
    return (x - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or dicts / lists / tuples of them), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def self_check(
    plain: nn.Module, keyed_model: nn.Module, scheme: Scheme, cfg: KeyedConfig, *, batch: int = 1,
    seed: int = 0,
) -> float:
    """Compare ``keyed_model(encrypt(x))`` with ``plain(x)`` on random images; returns the max abs diff.

    Both models run in eval mode (their modes are restored). Raises
    :class:`SelfCheckError` when the difference exceeds ``1e-4 * max(1, |logits|)``.
    """
    p = next(plain.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.dtype.is_floating_point else torch.float32
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *cfg.input_size, generator=gen).to(device=device, dtype=dtype)
    modes = [(m, m.training) for m in [*plain.modules(), *keyed_model.modules()]]
    plain.eval()
    keyed_model.eval()
    try:
        with torch.no_grad():
            ref = plain(_normalize(x, cfg.mean, cfg.std))
            out = keyed_model(_normalize(scheme.encrypt(x), cfg.mean, cfg.std))
    finally:
        for m, t in modes:
            m.train(t)
    refs, outs = _tensors(ref), _tensors(out)
    if len(refs) != len(outs):
        raise SelfCheckError(f"self-check failed: the keyed model returns {len(outs)} tensors, the plain model "
                             f"{len(refs)}; mode='input' is always exact")
    worst = 0.0
    for r, o in zip(refs, outs):
        if not isinstance(r, torch.Tensor):
            continue
        diff = float((r.float() - o.float()).abs().max()) if r.numel() else 0.0
        scale = max(1.0, float(r.abs().max()) if r.numel() else 0.0)
        if not diff <= 1e-4 * scale:
            raise SelfCheckError(
                f"self-check failed: the keyed model's outputs on encrypted images differ from the plain "
                f"model's by {diff:.3g} (tolerance {1e-4 * scale:.3g}). The model probably uses an operation "
                "the validator does not know; please report it. mode='input' is always exact."
            )
        worst = max(worst, diff)
    return worst


def validate(
    model: nn.Module, input_size: int | Sequence[int], *, mode: str = "features", strict: bool = False,
) -> list[UnsupportedOp]:
    """Every operation of ``model`` that cannot run on scrambled feature maps (Opacus-style).

    Args:
        model: a plain CNN.
        input_size: ``(C, H, W)``, ``(H, W)`` or ``H``.
        mode: ``"features"`` or ``"deformable"`` (``"input"`` supports every model).
        strict: raise :class:`UnsupportedModelError` listing all problems instead of returning them.

    Examples:
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> class Up(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv = nn.Conv2d(3, 4, 3, padding=1)
        ...     def forward(self, x):
        ...         return F.interpolate(self.conv(x), scale_factor=2).mean((2, 3))
        >>> [p.op for p in validate(Up(), (3, 8, 8))]
        ['torch.nn.functional.interpolate']
    """
    if mode == "input":
        return []
    if mode not in CNN_MODES:
        raise KeyedModelError(f"mode must be one of {CNN_MODES}, got {mode!r}")
    c, h, w = resolve_input_size(model, input_size)
    p = next(model.parameters(), None)
    example = torch.zeros(1, c, h, w, device=p.device if p is not None else "cpu")
    problems = analyze_model(model, example, mode=mode).problems
    if strict and problems:
        raise UnsupportedModelError(
            f"{type(model).__name__} is not supported in mode {mode!r} ({len(problems)} problem(s)):", problems
        )
    return problems
