"""A keyed detector scores the plain detector's mAP, measured where there are detections to score.

The end-to-end checks (``keyveil evaluate --keyed``, the detection experiment)
compare the mAP of briefly trained detectors, which is often 0.0 for both;
here the ground truth is the plain detector's own best boxes, so its mAP is
high and an equal keyed mAP says something.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from keyveil import Key, schemes
from keyveil.engine.detection import build_detector, detection_metrics
from keyveil.models.keyed_detection import keyed_detector


def _detector() -> nn.Module:
    torch.manual_seed(0)
    det = build_detector(num_classes=4, in_channels=1, score_thresh=0.0).eval()
    with torch.no_grad():  # make the heads' outputs vary across positions (random init is nearly flat)
        for m in det.head.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 0.2)
    return det


def _best_boxes(p: dict[str, torch.Tensor], k: int = 5) -> dict[str, torch.Tensor]:
    """The ``k`` best-scored boxes at least 2 px wide and high (the detector's output is score-sorted)."""
    wh = p["boxes"][:, 2:] - p["boxes"][:, :2]
    keep = (wh >= 2).all(1).nonzero().flatten()[:k]
    return {"boxes": p["boxes"][keep], "labels": p["labels"][keep]}


@pytest.mark.parametrize("name", ["pixel", "pixel-np"])
def test_keyed_detector_has_the_plain_detectors_map_on_nonempty_detections(name):
    det = _detector()
    key, wrong_key = Key(bytes(range(32))), Key(bytes(range(1, 33)))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    scheme = schemes.create(name, key)
    with torch.no_grad():
        kd = keyed_detector(det, key, scheme=scheme, input_size=32)
        plain = det(list(x))
        keyed_ = kd(list(scheme.encrypt(x)))
        wrong = kd(list(schemes.create(name, wrong_key).encrypt(x)))
    truth = [_best_boxes(p) for p in plain]
    assert all(len(t["boxes"]) == 5 for t in truth), "the check needs detections"
    m_plain, m_keyed = (detection_metrics(p, truth) for p in (plain, keyed_))
    assert m_plain["map"] > 0.5 and m_plain["mar_100"] > 0.5
    for k in ("map", "map_50", "map_75", "mar_100"):
        assert m_keyed[k] == pytest.approx(m_plain[k], abs=1e-3), k
    # with a wrong key the detections change (on noise images the mAP need not drop much)
    assert any(len(w["scores"]) != len(p["scores"]) or not torch.allclose(w["scores"], p["scores"], atol=1e-3)
               for w, p in zip(wrong, plain))
