"""Keyed detection: a plain torchvision FCOS run on ``pixel``-encrypted images (PrivDL carried to detection).

A detector is a CNN whose outputs are maps: per pyramid level, class logits,
box regressions and centre-ness at every location. :func:`keyed_detector`
converts the dense part (backbone and head towers, :class:`DenseCore`, a CNN
that returns maps) with the public keyed-CNN API, :func:`keyveil.models.keyed`
— in ``features`` mode every map stays scrambled with the key's permutation
for its size, in ``deformable`` mode PrivDL's operators read and write
scrambled maps — which returns every output map un-scrambled (computed in
plain order, or one gather per map) *before* the box decoding, because FCOS's
points (anchors) are positions: decoding location ``k`` of a scrambled map
would put its box at the wrong place. Everything after that is
the plain detector's own code (decoding, top-k, NMS). Before the backbone the
detector only normalizes per channel (:class:`~keyveil.engine.detection.FixedSizeTransform`
never resizes), which commutes with a pixel shuffle.

So, with the key, the keyed detector returns the plain detector's boxes,
scores and labels on plain images; with another key its maps are decoded at
the wrong places and nothing is found.

Examples:
    >>> import torch
    >>> from keyveil import Key, schemes
    >>> from keyveil.engine.detection import build_detector
    >>> from keyveil.models.keyed_detection import keyed_detector
    >>> _ = torch.manual_seed(0)
    >>> det = build_detector(num_classes=3, in_channels=1, score_thresh=0.0).eval()
    >>> key = Key.generate()
    >>> kdet = keyed_detector(det, key, input_size=(1, 32, 32))
    >>> x = torch.rand(2, 1, 32, 32)
    >>> y = schemes.create("pixel", key).encrypt(x)
    >>> plain, enc = det(list(x)), kdet(list(y))
    >>> all(torch.allclose(a["boxes"], b["boxes"], atol=1e-3) for a, b in zip(plain, enc))
    True

Notes:
    As for every keyed model, **the keyed detector is the key** (its buffers
    hold the permutations; see :func:`keyveil.models.keyed`): keep it with
    the key holder.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..keys import Key
from ..schemes import Scheme, create
from ..schemes.pixel import PixelShuffle
from .errors import KeyedModelError, UnsupportedModelError
from .keyed import KeyedConfig, keyed, resolve_input_size
from .keyed_cnn import CNN_MODES, PositionFlip

__all__ = ["DenseCore", "KeyedDetector", "keyed_detector", "dense_outputs"]


class DenseCore(nn.Module):
    """An FCOS's backbone and head towers as one traceable CNN: image -> ``(cls, reg, ctr)`` maps per level.

    Returns a flat tuple ``(cls_0, reg_0, ctr_0, cls_1, ...)`` of ``(B, A*K, h, w)``,
    ``(B, A*4, h, w)`` (after FCOS's ReLU) and ``(B, A, h, w)`` maps. The
    modules are the detector's own (shared, not copied).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        from torchvision.models.detection import FCOS

        if not isinstance(detector, FCOS):
            raise KeyedModelError(f"keyed detection supports torchvision FCOS detectors; got {type(detector).__name__}")
        head = detector.head
        self.backbone = detector.backbone
        self.cls_tower, self.cls_logits = head.classification_head.conv, head.classification_head.cls_logits
        self.reg_tower = head.regression_head.conv
        self.bbox_reg, self.bbox_ctrness = head.regression_head.bbox_reg, head.regression_head.bbox_ctrness

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.backbone(x)
        levels = list(feats.values()) if isinstance(feats, dict) else [feats]
        out: list[torch.Tensor] = []
        for f in levels:
            r = self.reg_tower(f)
            out += [self.cls_logits(self.cls_tower(f)), torch.relu(self.bbox_reg(r)), self.bbox_ctrness(r)]
        return tuple(out)


def _flatten_level(m: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, A*K, H, W)`` -> ``(N, H*W*A, K)``, as torchvision's FCOS heads arrange their outputs."""
    n, _, h, w = m.shape
    return m.reshape(n, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k)


def dense_outputs(maps: Sequence[torch.Tensor], num_classes: int) -> dict[str, torch.Tensor]:
    """The head-output dict FCOS decodes, from :class:`DenseCore`'s (plain-order) maps."""
    cls = [_flatten_level(maps[i], num_classes) for i in range(0, len(maps), 3)]
    reg = [_flatten_level(maps[i], 4) for i in range(1, len(maps), 3)]
    ctr = [_flatten_level(maps[i], 1) for i in range(2, len(maps), 3)]
    return {"cls_logits": torch.cat(cls, 1), "bbox_regression": torch.cat(reg, 1), "bbox_ctrness": torch.cat(ctr, 1)}


class KeyedDetector(nn.Module):
    """The keyed FCOS: (un-flip) → transform → keyed dense core (plain-order maps) → FCOS's own decoding.

    Inference only (``eval``); takes a list of encrypted ``(C, H, W)`` float
    images in ``[0, 1]`` of the converted size and returns torchvision's
    detection dicts. Attributes copied from the plain detector: ``transform``,
    ``anchor_generator``, ``box_coder`` and the post-processing thresholds.
    """

    def __init__(self, detector: nn.Module, core: nn.Module, input_size: tuple[int, int, int],
                 flip: nn.Module | None = None) -> None:
        super().__init__()
        self.core, self.flip = core, flip
        self.transform = copy.deepcopy(detector.transform)
        self.anchor_generator = copy.deepcopy(detector.anchor_generator)
        self.box_coder = detector.box_coder
        self.num_classes = detector.head.classification_head.num_classes
        for name in ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates"):
            setattr(self, name, getattr(detector, name))
        self.input_size = tuple(input_size)

    def forward(self, images: Sequence[torch.Tensor], targets=None) -> list[dict[str, torch.Tensor]]:
        from torchvision.models.detection import FCOS

        if self.training or targets is not None:
            raise KeyedModelError("a keyed detector only runs inference (train the plain detector, then convert it)")
        bad = [tuple(x.shape) for x in images if tuple(x.shape) != self.input_size]
        if bad:
            raise KeyedModelError(f"this keyed detector was converted for {self.input_size} images, got {bad[0]}: "
                                  "encrypt images of that size (convert again for another size)")
        if self.flip is not None:
            images = [self.flip(x[None])[0] for x in images]
        original = [(int(x.shape[-2]), int(x.shape[-1])) for x in images]
        batch, _ = self.transform(list(images))
        maps = list(self.core(batch.tensors))
        head = dense_outputs(maps, self.num_classes)
        levels = maps[0::3]
        anchors = self.anchor_generator(batch, levels)
        per_level = [m.shape[-2] * m.shape[-1] for m in levels]
        split = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        dets = FCOS.postprocess_detections(self, split, split_anchors, batch.image_sizes)
        return self.transform.postprocess(dets, batch.image_sizes, original)


def keyed_detector(
    detector: nn.Module,
    key: Key,
    *,
    scheme: str | Scheme = "pixel",
    mode: str = "features",
    input_size: int | Sequence[int],
    kernel: str = "gather",
    check: bool = True,
) -> KeyedDetector:
    """A copy of a plain FCOS that returns, on ``pixel``-encrypted images, its detections on the plain ones.

    Args:
        detector: a torchvision ``FCOS`` whose transform never resizes
            (:func:`keyveil.engine.detection.build_detector`), and whose
            backbone and heads are traceable CNNs (convolutions, pooling,
            position-wise layers; an FPN's upsampling is not supported yet).
            Not modified.
        key: the key the images are encrypted with.
        scheme: ``"pixel"`` or ``"pixel-np"`` (or such a scheme instance made with ``key``).
        mode: ``"features"`` (maps stay scrambled; default), ``"deformable"``
            (PrivDL's operators) or ``"input"`` (un-scramble the image, then the plain detector).
        input_size: ``(C, H, W)``, ``(H, W)`` or ``H`` of the encrypted images.
        kernel: deformable mode's convolution (``"gather"`` or ``"deform_conv2d"``).
        check: compare the dense outputs with the plain detector's on a random image
            (:func:`keyveil.models.self_check`; :class:`~keyveil.models.SelfCheckError` on a mismatch).

    Returns:
        A :class:`KeyedDetector` (eval mode) with ``keyveil_config`` set.

    Raises:
        KeyedModelError: not an FCOS, a resizing transform, bad scheme/mode/size.
        UnsupportedModelError: the backbone or heads use operations that cannot run on scrambled maps.
    """
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from ..engine.detection import FixedSizeTransform

    if not isinstance(key, Key):
        raise TypeError(f"key must be a keyveil.Key, got {type(key).__name__}")
    sch = create(scheme, key) if isinstance(scheme, str) else scheme
    if not isinstance(sch, PixelShuffle) or sch.per_channel:
        raise KeyedModelError("keyed detection follows the 'pixel' scheme (one permutation shared by the channels); "
                              f"got {getattr(sch, 'registered_name', sch.name)!r}")
    if sch.key is not None and sch.key != key:
        raise KeyedModelError("the scheme instance holds a different key than the one passed to keyed_detector()")
    if mode not in CNN_MODES:
        raise KeyedModelError(f"mode must be one of {CNN_MODES}, got {mode!r}")
    tr = getattr(detector, "transform", None)
    if isinstance(tr, GeneralizedRCNNTransform) and not isinstance(tr, FixedSizeTransform):
        raise KeyedModelError("the detector's transform resizes its input (interpolation mixes neighbouring pixels, "
                              "which does not commute with a pixel shuffle): build it with "
                              "keyveil.engine.detection.build_detector, or set detector.transform = "
                              "FixedSizeTransform(mean, std)")
    detector = copy.deepcopy(detector).eval()
    core = DenseCore(detector)
    size = resolve_input_size(core, input_size)
    try:  # the flip (pixel-np) acts on raw pixels, before the transform normalizes: the detector applies it
        kcore = keyed(core, key, scheme=create("pixel", key), mode=mode, input_size=size, kernel=kernel,
                      check=check)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(
            f"the detector's backbone/head cannot run on scrambled maps in mode {mode!r} ({len(exc.problems)} "
            "problem(s)); mode='input' works for any detector:", exc.problems) from exc
    flip = PositionFlip(sch.flip_mask(size[1], size[2]), size[1:]) if sch.negapos else None
    out = KeyedDetector(detector, kcore, size, flip).eval()
    out.keyveil_config = KeyedConfig("detector", getattr(sch, "registered_name", sch.name), sch.params_dict(), mode,
                                     size, key.fingerprint, kernel=kernel, arch=type(detector).__name__)
    return out
