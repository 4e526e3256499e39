"""Model builders: a tiny fast CNN, a small ViT and torchvision architectures adapted to small or grayscale inputs.

:func:`build_model` is the one entry point, :func:`load_weights` loads user-supplied weights. The models take float images in
``[0, 1]`` of shape ``(B, C, H, W)`` (the engine divides uint8 images by 255).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ..errors import KeyveilError
from ..registry import Registry

__all__ = ["build_model", "create_model", "list_models", "register_model", "small_cnn", "adapt_torchvision",
           "torchvision_model", "load_weights", "SEED_FAMILIES", "MODELS", "UnknownModelError"]


class UnknownModelError(KeyveilError, KeyError):
    """No keyveil builder and no torchvision classification model has that name (also a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _adopt(name: str, obj: Any) -> Callable[..., nn.Module]:
    """A plug-in's entry point: a builder ``f(*, in_channels, num_classes, image_size, small_input, **kw)``."""
    if not callable(obj):
        raise TypeError(f"a keyveil.models entry point must name a model builder function, got {obj!r}")
    return obj


MODELS: Registry[Callable[..., nn.Module]] = Registry("model", group="keyveil.models", error=UnknownModelError,
                                                      adopt=_adopt)
"""keyveil's own model builders and plug-ins (group ``keyveil.models``); torchvision's come on top."""


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder ``f(*, in_channels, num_classes, image_size, small_input, **kw) -> nn.Module``.

    The builder receives every keyword :func:`create_model` gets; duplicates raise.
    """
    return MODELS.register(name)


def small_cnn(*, in_channels: int = 1, num_classes: int = 10, image_size: tuple[int, int] = (28, 28),
              width: int = 32, hidden: int = 128) -> nn.Sequential:
    """A small, fast CNN built only from Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten and Linear.

    Stages of 3×3 conv → BN → ReLU → 2×2 max-pool (widths ``width``, ``2·width``,
    ``2·width``, …) until the map is at most 8 pixels on its short side (at
    least two pools), then one more conv stage without pooling, flatten,
    ``Linear(hidden)`` → ReLU → ``Linear(num_classes)``. On Fashion-MNIST it
    reaches about 91–92 % test accuracy after 3 epochs of Adam (a few minutes
    on 2 CPU cores). Using only these modules lets
    ``keyveil.models.keyed`` convert it to run on pixel-shuffled input.

    Examples:
        >>> import torch
        >>> m = small_cnn(in_channels=1, num_classes=10, image_size=(28, 28))
        >>> m(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> small_cnn(in_channels=1, num_classes=40, image_size=(112, 92))(torch.rand(1, 1, 112, 92)).shape
        torch.Size([1, 40])
    """
    h, w = image_size
    layers: list[nn.Module] = []
    c_in, c_out, pools = in_channels, width, 0
    while pools < 2 or min(h, w) > 8:
        if min(h, w) < 2:
            break
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        h, w, pools = h // 2, w // 2, pools + 1
        c_in, c_out = c_out, 2 * width
    layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
               nn.Flatten(), nn.Linear(c_out * h * w, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


@register_model("smallcnn")
def _smallcnn(*, in_channels: int, num_classes: int, image_size: tuple[int, int], small_input: bool = True,
              **kw: Any) -> nn.Module:
    return small_cnn(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kw)


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr, module
    raise ValueError(f"{type(model).__name__} has no Conv2d to adapt")


def adapt_torchvision(model: nn.Module, *, in_channels: int, small_input: bool) -> nn.Module:
    """Adapt a torchvision classifier (built with ``weights=None``) to ``in_channels`` and small images.

    - The first convolution is rebuilt for ``in_channels`` input channels.
    - With ``small_input`` (28–64 px images such as MNIST or CIFAR), the first
      convolution gets stride 1 (ResNets: a 3×3 stride-1 stem, as is usual for
      CIFAR, and no stem max-pool); VGGs drop their last max-pool and pool
      globally, so 28 px inputs keep a 1×1 map.
    - With ``small_input``, BatchNorm layers with a momentum below PyTorch's
      default 0.1 (MobileNetV3: 0.01, tuned for long ImageNet runs) get 0.1:
      with 0.01 the running statistics of a short training on a small dataset
      stay near their initial values, and the model scores chance in eval mode
      (measured: MobileNetV3-small, 2 epochs on 2000 Fashion-MNIST images, 10 %).

    Returns the same model, modified in place.
    """
    parent, attr, conv = _first_conv(model)
    if small_input and hasattr(model, "layer1") and hasattr(model, "maxpool"):  # ResNet family
        conv = nn.Conv2d(in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        stride = 1 if small_input else conv.stride
        conv = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=stride, padding=conv.padding,
                         dilation=conv.dilation, groups=1 if conv.groups == conv.in_channels else conv.groups,
                         bias=conv.bias is not None)
    setattr(parent, attr, conv)
    if small_input:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None and m.momentum < 0.1:
                m.momentum = 0.1
    if small_input and hasattr(model, "features") and hasattr(model, "classifier") and hasattr(model, "avgpool"):
        feats = model.features
        if isinstance(feats, nn.Sequential) and isinstance(feats[-1], nn.MaxPool2d):
            model.features = nn.Sequential(*list(feats)[:-1])
        if isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and model.avgpool.output_size in ((7, 7), 7):
            last = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)][-1]
            convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
            model.avgpool = nn.AdaptiveAvgPool2d(1)
            model.classifier = nn.Linear(convs[-1].out_channels, last.out_features)
    return model


SEED_FAMILIES = ("resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "vgg11_bn", "vit_mini", "swin_t")
"""One architecture of each family the seeds report (VGG, ResNet, MobileNet, ShuffleNet, ViT, Swin)."""

TRANSFORMER_PATCH = 4
"""Patch side of ViTs and Swins built for small inputs (a 32-px image gives 8×8 tokens)."""

SWIN_WINDOW = 4
"""Attention window of Swins built for small inputs (Swin-T's 7 fits 56-px token maps, not 8-px ones)."""

_VIT_CONFIGS = {  # name: (layers, heads, hidden, mlp), torchvision's (vision_transformer.py)
    "vit_b_16": (12, 12, 768, 3072), "vit_b_32": (12, 12, 768, 3072), "vit_l_16": (24, 16, 1024, 4096),
    "vit_l_32": (24, 16, 1024, 4096), "vit_h_14": (32, 16, 1280, 5120),
}
_SWIN_CONFIGS = {  # name: (embed_dim, depths, heads, stochastic depth), torchvision's (swin_transformer.py)
    "swin_t": (96, [2, 2, 6, 2], [3, 6, 12, 24], 0.2), "swin_s": (96, [2, 2, 18, 2], [3, 6, 12, 24], 0.3),
    "swin_b": (128, [2, 2, 18, 2], [4, 8, 16, 32], 0.5), "swin_v2_t": (96, [2, 2, 6, 2], [3, 6, 12, 24], 0.2),
    "swin_v2_s": (96, [2, 2, 18, 2], [3, 6, 12, 24], 0.3), "swin_v2_b": (128, [2, 2, 18, 2], [4, 8, 16, 32], 0.5),
}


def _vit(*, layers: int, heads: int, hidden: int, mlp: int, in_channels: int, num_classes: int,
         image_size: tuple[int, int], patch_size: int) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    h, w = image_size
    if h != w:
        raise ValueError(f"torchvision's VisionTransformer needs square images, got {h}x{w}: pad them to a "
                         f"square (e.g. {max(h, w)}x{max(h, w)}) or use a CNN")
    if h % patch_size:
        raise ValueError(f"a ViT with {patch_size}-px patches needs a side divisible by {patch_size}, got {h}: "
                         "pad the images (keyveil.experiments.PaddedDataset) or choose another size")
    model = VisionTransformer(image_size=h, patch_size=patch_size, num_layers=layers, num_heads=heads,
                              hidden_dim=hidden, mlp_dim=mlp, num_classes=num_classes)
    if in_channels != 3:
        conv = nn.Conv2d(in_channels, hidden, patch_size, stride=patch_size)
        nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / (in_channels * patch_size**2)))
        nn.init.zeros_(conv.bias)
        model.conv_proj = conv
    return model


def _swin(arch: str, *, in_channels: int, num_classes: int, patch_size: int, window: int) -> nn.Module:
    from torchvision.models import swin_transformer as st

    dim, depths, heads, drop = _SWIN_CONFIGS[arch]
    v2 = {"block": st.SwinTransformerBlockV2, "downsample_layer": st.PatchMergingV2} if "_v2_" in arch else {}
    model = st.SwinTransformer(patch_size=[patch_size, patch_size], embed_dim=dim, depths=depths, num_heads=heads,
                               window_size=[window, window], stochastic_depth_prob=drop, num_classes=num_classes,
                               **v2)
    if in_channels != 3:
        model.features[0][0] = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
    return model


@register_model("vit_mini")
def _vit_mini(*, in_channels: int, num_classes: int, image_size: tuple[int, int], small_input: bool = True,
              **kw: Any) -> nn.Module:
    """A small torchvision ViT: 6 layers, width 192, 3 heads, MLP 768 (DeiT-Tiny's width at half its depth)."""
    return _vit(layers=6, heads=3, hidden=192, mlp=768, in_channels=in_channels, num_classes=num_classes,
                image_size=image_size, patch_size=TRANSFORMER_PATCH if small_input else 16)


def torchvision_model(arch: str, *, in_channels: int, num_classes: int, image_size: tuple[int, int],
                      small_input: bool, **kwargs: Any) -> nn.Module:
    """A torchvision classifier with random weights, adapted to ``in_channels`` and, if ``small_input``, small images.

    This is the one place where the seeds' families are fitted to 28–64 px
    images (MNIST, Fashion-MNIST, CIFAR); with ``small_input=False`` every
    model keeps torchvision's layout (only the first layer's input channels
    change).

    =====================  ==========================================================
    family                 small-input adaptation
    =====================  ==========================================================
    ResNet / ResNeXt       3×3 stride-1 stem, no stem max-pool (the usual CIFAR ResNet)
    VGG (``vgg11_bn`` …)   last max-pool dropped, global average pool, one ``Linear``
    MobileNet, ShuffleNet, first convolution at stride 1 (a 32-px image is then seen
    EfficientNet, others   as a 64-px one); BatchNorm momentum at least 0.1
    ViT (``vit_b_16`` …)   same depth and width, ``TRANSFORMER_PATCH``-px patches
                           (4: 8×8 tokens at 32 px), square images only
    Swin (``swin_t`` …)    same depths and widths, ``TRANSFORMER_PATCH``-px patches,
                           ``SWIN_WINDOW``-token windows (4)
    =====================  ==========================================================

    Args:
        arch: a torchvision classification model name (``torchvision.models.list_models()``).
        kwargs: passed to torchvision's builder (not for the rebuilt ViTs / Swins).

    Raises:
        ValueError: an unknown name (the error lists the choices), a ViT on
            non-square images or on a side its patch does not divide.

    Examples:
        >>> import torch
        >>> m = torchvision_model("swin_t", in_channels=1, num_classes=10, image_size=(28, 28), small_input=True)
        >>> m(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    from torchvision import models as tvm

    if arch not in tvm.list_models(module=tvm):
        raise _unknown(arch)
    if small_input and arch in _VIT_CONFIGS and not kwargs:
        layers, heads, hidden, mlp = _VIT_CONFIGS[arch]
        return _vit(layers=layers, heads=heads, hidden=hidden, mlp=mlp, in_channels=in_channels,
                    num_classes=num_classes, image_size=image_size, patch_size=TRANSFORMER_PATCH)
    if small_input and arch in _SWIN_CONFIGS and not kwargs:
        return _swin(arch, in_channels=in_channels, num_classes=num_classes, patch_size=TRANSFORMER_PATCH,
                     window=SWIN_WINDOW)
    if small_input and arch.startswith("vgg"):
        return adapt_torchvision(_vgg_without_classifier_init(arch, num_classes, **kwargs), in_channels=in_channels,
                                 small_input=True)
    model = tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    return adapt_torchvision(model, in_channels=in_channels, small_input=small_input)


def _vgg_without_classifier_init(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """A torchvision VGG whose 120M-parameter classifier (replaced for small inputs) is never initialized.

    Built on the meta device, then its convolutional ``features`` are
    materialized and initialized as torchvision's ``VGG._initialize_weights``
    does; this saves seconds per build.
    """
    import torch
    from torchvision import models as tvm

    with torch.device("meta"):
        model = tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    model.features = model.features.to_empty(device="cpu")
    for m in model.features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
    return model


def _unknown(arch: str) -> UnknownModelError:
    import difflib

    from torchvision import models as tvm

    close = difflib.get_close_matches(arch, list_models(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UnknownModelError(
        f"no model named {arch!r}{hint} Choose keyveil's {', '.join(MODELS.names())}, one of the seeds' "
        f"families ({', '.join(SEED_FAMILIES)}), or any torchvision classification model: "
        f"{', '.join(sorted(tvm.list_models(module=tvm)))}")


def build_model(arch: str, *, in_channels: int = 3, num_classes: int = 10, image_size: tuple[int, int] = (32, 32),
                small_input: bool | None = None, weights: str | os.PathLike[str] | None = None,
                **kwargs: Any) -> nn.Module:
    """Build ``arch`` for images with ``in_channels`` channels and ``num_classes`` classes.

    Args:
        arch: ``"smallcnn"`` (see :func:`small_cnn`), ``"vit_mini"`` (a small
            torchvision ViT) or any torchvision classification model name
            (``"resnet18"``, ``"vgg11_bn"``, ``"swin_t"``, …), always with random
            weights (nothing is downloaded), adapted by :func:`torchvision_model`.
            :data:`SEED_FAMILIES` names one model per family the seeds report.
        in_channels: 1 for grayscale, 3 for RGB.
        num_classes: size of the output.
        image_size: ``(H, W)`` of the inputs (the small CNN sizes its classifier from it).
        small_input: adapt the stem to small images; default: ``True`` when the
            short side is below 96 px.
        weights: a state_dict file (``torch.save(model.state_dict(), path)``, or
            a keyveil checkpoint) loaded by :func:`load_weights` into the built model.
        **kwargs: passed to the builder (e.g. ``width`` for ``smallcnn``).

    Examples:
        >>> import torch
        >>> m = build_model("resnet18", in_channels=1, num_classes=10, image_size=(28, 28))
        >>> m(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> build_model("smallcnn", in_channels=3, num_classes=10, image_size=(32, 32))(torch.rand(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    if small_input is None:
        small_input = min(image_size) < 96
    MODELS.load_plugins()  # once: torchvision names are not in the registry, so a miss is no reason to rescan
    if arch in MODELS:
        model = MODELS.get(arch)(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                                small_input=small_input, **kwargs)
    else:
        model = torchvision_model(arch, in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                                  small_input=small_input, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load the user's weights from ``path`` into ``model`` (in place); every key and shape must match.

    ``path`` holds a state_dict (``torch.save(model.state_dict(), path)``),
    ``{"state_dict": ...}``, or a keyveil checkpoint (its ``model_state``);
    a ``module.`` prefix (from ``DistributedDataParallel``) is dropped. It is
    read with ``weights_only=True``: no code in the file runs.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a state_dict, or keys / shapes that do not match the
            model (the error lists them and says how to build a matching model).

    Examples:
        >>> import tempfile, torch
        >>> a, b = build_model("smallcnn", in_channels=1), build_model("smallcnn", in_channels=1)
        >>> path = tempfile.mkdtemp() + "/w.pt"
        >>> torch.save(a.state_dict(), path)
        >>> x = torch.rand(2, 1, 32, 32)
        >>> bool(torch.equal(load_weights(b, path).eval()(x), a.eval()(x)))
        True
    """
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a state_dict file"
        raise ValueError(f"weights file {path} is not a PyTorch state_dict saved with torch.save ({exc})") from None
    if isinstance(state, dict):
        for inner in ("model_state", "state_dict"):
            if isinstance(state.get(inner), dict):
                state = state[inner]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state_dict (a dict of tensors); save one with "
                         "torch.save(model.state_dict(), path)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:

        def few(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        problems = [f"{label}: {few(items)}" for label, items in
                    (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", shapes)) if items]
        raise ValueError(f"weights file {path} does not fit this {type(model).__name__}: " + "; ".join(problems)
                         + ". Build the model the weights were saved from: the same --model, input channels, "
                         "number of classes and image size (small-input adaptation)")
    model.load_state_dict(state)
    return model


create_model = build_model
"""The same as :func:`build_model` (timm's ``create_model`` name)."""


def list_models(filter: str | Iterable[str] | None = None) -> list[str]:
    """keyveil's own builders (``smallcnn``, ``vit_mini``, plug-ins), then the torchvision classification models.

    With ``filter``, only the names matching a shell-style pattern (or any of several).

    Examples:
        >>> list_models("vit_[bm]*")
        ['vit_mini', 'vit_b_16', 'vit_b_32']
    """
    import fnmatch

    from torchvision import models as tvm

    own = MODELS.names()
    names = own + sorted(n for n in tvm.list_models(module=tvm) if n not in own)
    if filter is not None:
        patterns = [filter] if isinstance(filter, str) else list(filter)
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return names
