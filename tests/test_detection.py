"""Detection: the canvas dataset, COCO folders, metrics, the keyed detector, the CLI and the experiment."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from keyveil import Key, schemes
from keyveil.cli import main
from keyveil.data import create_dataset, list_datasets
from keyveil.data.detection import (
    CanvasDetection,
    CocoDetectionDataset,
    DetectionDataError,
    EncryptedDetection,
)
from keyveil.engine.detection import (
    FixedSizeTransform,
    build_detector,
    detection_metrics,
    precision_recall,
)
from keyveil.models import KeyedModelError
from keyveil.models.keyed_detection import keyed_detector


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _key(seed: int) -> Key:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Key.from_seed(seed)


def _squares(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Items that are solid squares: a pasted item of side s covers exactly s×s pixels."""
    return torch.full((n, 1, 8, 8), 200, dtype=torch.uint8), torch.arange(n) % 3


# -- dataset ------------------------------------------------------------------
def test_canvas_boxes_are_the_pasted_squares():
    items, labels = _squares()
    ds = CanvasDetection.generate(items, labels, ["a", "b", "c"], count=12, size=(32, 32), side=(4, 10),
                                  max_overlap=0.0, seed=3)
    for i in range(len(ds)):
        x, t = ds[i]
        placed = ds.placements(i)
        assert len(placed) == len(t["boxes"]) >= 1
        expected = torch.tensor([[px, py, px + s, py + s] for _j, s, px, py in placed], dtype=torch.float32)
        assert torch.equal(t["boxes"], expected)
        assert t["labels"].tolist() == [int(labels[j]) + 1 for j, *_ in placed]
        # pixels inside the boxes are the squares' value, outside zero
        inside = torch.zeros(32, 32, dtype=torch.bool)
        for x1, y1, x2, y2 in t["boxes"].long().tolist():
            inside[y1:y2, x1:x2] = True
        assert bool((x[0][inside] == 200).all()) and bool((x[0][~inside] == 0).all())


def test_fashion_canvas_boxes_are_tight_around_real_items():
    ds = create_dataset("fashion-canvas", "test").limit(20)
    assert "fashion-canvas" in list_datasets() and ds.categories[0] == "__background__" and ds.num_classes == 11
    counts = set()
    for i in range(len(ds)):
        x, t = ds[i]
        assert x.dtype == torch.uint8 and tuple(x.shape) == (1, 64, 64)
        counts.add(len(t["labels"]))
        cover = torch.zeros(64, 64, dtype=torch.bool)
        for x1, y1, x2, y2 in t["boxes"].long().tolist():
            cover[y1:y2, x1:x2] = True
            patch = x[0, y1:y2, x1:x2] > 0  # each side of the box touches a non-zero pixel
            assert patch[0].any() and patch[-1].any() and patch[:, 0].any() and patch[:, -1].any()
            assert 8 <= max(x2 - x1, y2 - y1) <= 32 and min(x2 - x1, y2 - y1) >= 1
        assert not bool((x[0][~cover] > 0).any())  # no object pixel outside every box
    assert counts <= {1, 2, 3, 4} and len(counts) >= 3


def test_canvases_do_not_depend_on_count_and_repeat():
    items, labels = _squares()
    a = CanvasDetection.generate(items, labels, ["a", "b", "c"], count=5, size=(24, 24), side=(4, 8), seed=1)
    b = CanvasDetection.generate(items, labels, ["a", "b", "c"], count=50, size=(24, 24), side=(4, 8), seed=1)
    c = CanvasDetection.generate(items, labels, ["a", "b", "c"], count=5, size=(24, 24), side=(4, 8), seed=2)
    assert torch.equal(a[3][0], b[3][0]) and torch.equal(a[3][1]["boxes"], b[3][1]["boxes"])
    assert torch.equal(b.limit(5)[4][0], a[4][0])
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(5))


def test_bad_canvas_settings_are_refused():
    items, labels = _squares()
    with pytest.raises(ValueError, match="bad canvas settings"):
        CanvasDetection.generate(items, labels, ["a"], count=2, size=(16, 16), side=(4, 20))
    with pytest.raises(ValueError, match="uint8"):
        CanvasDetection.generate(items.float(), labels, ["a"], count=2, size=(16, 16), side=(4, 8))


def _coco_folder(tmp_path, *, annotations: bool = True):
    from PIL import Image

    (tmp_path / "train").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (40, 30), color=(10 * i, 0, 0)).save(tmp_path / "train" / f"{i}.png")
    meta = {"images": [{"id": 1, "file_name": "0.png", "width": 40, "height": 30},
                       {"id": 2, "file_name": "1.png", "width": 40, "height": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5], "area": 50,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [20, 10, 8, 8], "area": 64,
                             "iscrowd": 0},
                            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 4, 4], "area": 16,
                             "iscrowd": 1}],
            "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    if annotations:
        (tmp_path / "annotations").mkdir()
        (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(meta))
    return tmp_path


def test_coco_folder_reads_boxes_as_xyxy_with_contiguous_labels(tmp_path):
    ds = create_dataset("coco", "train", data_dir=_coco_folder(tmp_path))
    assert isinstance(ds, CocoDetectionDataset) and ds.categories == ["__background__", "cat", "dog"]
    x, t = ds[0]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 30, 40)
    assert t["boxes"].tolist() == [[2, 3, 12, 8], [20, 10, 28, 18]] and t["labels"].tolist() == [2, 1]
    assert ds[1][1]["boxes"].shape == (0, 4)  # the crowd annotation is dropped
    small = create_dataset("coco", "train", data_dir=tmp_path, image_size=(15, 20))
    x, t = small[0]
    assert tuple(x.shape) == (3, 15, 20) and t["boxes"].tolist()[0] == [1, 1.5, 6, 4]


def test_coco_folder_errors_say_what_is_missing(tmp_path):
    with pytest.raises(DetectionDataError, match="instances_train.json"):
        create_dataset("coco", "train", data_dir=_coco_folder(tmp_path, annotations=False))
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text('{"images": []}')
    with pytest.raises(DetectionDataError, match="annotations, categories"):
        create_dataset("coco", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="needs --data-dir"):
        create_dataset("coco", "train")
    with pytest.raises(DetectionDataError, match="one size"):
        EncryptedDetection(CocoDetectionDataset(_coco_folder(tmp_path / "b"), "train"),
                           schemes.create("pixel", _key(1)))


# -- metrics ------------------------------------------------------------------
def test_perfect_predictions_score_one_and_precision_recall_count_matches():
    ds = create_dataset("fashion-canvas", "test").limit(12)
    targets = [ds[i][1] for i in range(len(ds))]
    perfect = [{**t, "scores": torch.ones(len(t["labels"]))} for t in targets]
    m = detection_metrics(perfect, ds)
    assert m["map"] == pytest.approx(1.0) and m["map_50"] == pytest.approx(1.0)
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["objects"] == sum(len(t["labels"]) for t in targets)
    # every first box given the wrong class, plus one low-score detection that must be ignored
    broken = []
    for t in targets:
        lab = t["labels"].clone()
        lab[0] = lab[0] % 10 + 1
        broken.append({"boxes": torch.cat([t["boxes"], t["boxes"][:1]]), "labels": torch.cat([lab, lab[:1]]),
                       "scores": torch.cat([torch.ones(len(lab)), torch.tensor([0.1])])})
    n = sum(len(t["labels"]) for t in targets)
    p, r = precision_recall(broken, targets)
    assert p == pytest.approx((n - len(targets)) / n) and r == pytest.approx((n - len(targets)) / n)
    assert detection_metrics(broken, targets)["map"] < 1.0
    nothing = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
               for _ in targets]
    assert precision_recall(nothing, targets) == (0.0, 0.0)
    with pytest.raises(ValueError, match="predictions for"):
        detection_metrics(perfect[:3], ds)


# -- keyed detector -----------------------------------------------------------
def _detector(size: int = 32) -> nn.Module:
    torch.manual_seed(0)
    det = build_detector(num_classes=4, in_channels=1, score_thresh=0.0).eval()
    with torch.no_grad():  # make the heads' outputs vary across positions (random init is nearly flat)
        for m in det.head.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 0.2)
    return det


@pytest.mark.parametrize("mode", ["features", "deformable", "input"])
def test_keyed_detector_equals_the_plain_detector_and_a_wrong_key_does_not(mode):
    det, key = _detector(), _key(5)
    x = torch.rand(3, 1, 32, 40)
    y = schemes.create("pixel", key).encrypt(x)
    with torch.no_grad():
        plain = det(list(x))
        got = keyed_detector(det, key, mode=mode, input_size=(1, 32, 40))(list(y))
        wrong = keyed_detector(det, _key(6), mode=mode, input_size=(1, 32, 40))(list(y))
    for p, g, w in zip(plain, got, wrong):
        assert len(p["labels"]) > 10 and torch.equal(p["labels"], g["labels"])
        assert float((p["boxes"] - g["boxes"]).abs().max()) <= 1e-3
        assert float((p["scores"] - g["scores"]).abs().max()) <= 1e-5
        n = min(len(p["boxes"]), len(w["boxes"]))
        assert not torch.allclose(p["boxes"][:n], w["boxes"][:n], atol=1.0)


def test_keyed_detector_follows_pixel_np_and_keeps_the_plain_detector_unchanged():
    det, key = _detector(), _key(7)
    before = {k: v.clone() for k, v in det.state_dict().items()}
    x = torch.rand(2, 1, 32, 32)
    enc = schemes.create("pixel-np", key)
    with torch.no_grad():
        kd = keyed_detector(det, key, scheme=enc, input_size=32)
        p, g = det(list(x)), kd(list(enc.encrypt(x)))
    assert all(torch.equal(a["labels"], b["labels"]) and torch.allclose(a["boxes"], b["boxes"], atol=1e-3)
               for a, b in zip(p, g))
    assert all(torch.equal(v, det.state_dict()[k]) for k, v in before.items())
    assert kd.keyveil_config.kind == "detector" and kd.keyveil_config.key_fingerprint == key.fingerprint


def test_keyed_detector_errors():
    det, key = _detector(), _key(8)
    with pytest.raises(KeyedModelError, match="FCOS"):
        keyed_detector(nn.Sequential(nn.Conv2d(1, 2, 3)), key, input_size=32)
    with pytest.raises(KeyedModelError, match="'pixel' scheme"):
        keyed_detector(det, key, scheme=schemes.create("pixel", key, per_channel=True), input_size=32)
    resizing = _detector()
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    resizing.transform = GeneralizedRCNNTransform(32, 32, [0.5], [0.5])
    with pytest.raises(KeyedModelError, match="resizes"):
        keyed_detector(resizing, key, input_size=32)
    kd = keyed_detector(det, key, input_size=32)
    with pytest.raises(KeyedModelError, match="converted for"):
        kd([torch.rand(1, 24, 24)])
    with pytest.raises(KeyedModelError, match="inference"):
        kd.train()([torch.rand(1, 32, 32)], [{}])
    assert isinstance(det.transform, FixedSizeTransform)


# -- CLI and experiment -------------------------------------------------------
def test_train_and_evaluate_detection_cli(tmp_path, capsys):
    ck = tmp_path / "det.pt"
    assert main(["train", "--task", "detection", "--dataset", "fashion-canvas", "--limit", "16", "--test-limit", "4",
                 "--epochs", "1", "--batch-size", "8", "--quiet", "-o", str(ck), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["task"] == "detection" and {"test_map", "test_map_50", "test_precision"} <= set(report["metrics"])
    main(["keygen", "-o", str(tmp_path / "k.key")])
    assert main(["evaluate", "--checkpoint", str(ck), "--test-limit", "4", "-o", str(tmp_path / "e.json")]) == 0
    assert main(["evaluate", "--checkpoint", str(ck), "--test-limit", "4", "--scheme", "pixel", "--key",
                 str(tmp_path / "k.key"), "--keyed", "features", "-o", str(tmp_path / "k.json")]) == 0
    plain, keyed_ = (json.loads((tmp_path / f).read_text()) for f in ("e.json", "k.json"))
    assert plain["map"] == keyed_["map"] and keyed_["keyed"] == "features" and plain["images"] == 4
    capsys.readouterr()
    assert main(["train", "--dataset", "fashion-canvas", "--limit", "8"]) != 0
    assert "add --task detection" in capsys.readouterr().err
    assert main(["train", "--task", "detection", "--dataset", "fashion-mnist", "--limit", "8"]) != 0
    assert "detection dataset" in capsys.readouterr().err


def test_compare_detections_ignores_order_and_counts_misses():
    from keyveil.experiments.detection import compare_detections

    a = [{"boxes": torch.tensor([[0., 0., 5., 5.], [10., 10., 20., 20.]]), "scores": torch.tensor([0.9, 0.8]),
          "labels": torch.tensor([1, 2])}]
    swapped = [{k: v.flip(0) for k, v in a[0].items()}]
    moved = [{**a[0], "boxes": a[0]["boxes"] + torch.tensor([[0.0], [0.01]])}]
    assert compare_detections(a, swapped)["matched"] == 2 and compare_detections(a, swapped)["identical_images"] == 1
    r = compare_detections(a, moved)
    assert r["matched"] == 1 and r["identical_images"] == 0


def test_detection_experiment_tiny(tmp_path):
    from keyveil.experiments.detection import run_detection

    data = run_detection(train_count=16, test_count=4, epochs=1, schemes=("mix",), out_dir=tmp_path,
                         progress=False, frontier_json=tmp_path / "none.json")
    rows = {r["row"]: r for r in data["rows"]}
    assert set(rows) >= {"plain", "keyed detector, with the key", "keyed detector, wrong key"}
    assert len(rows) == 5  # plain, mix, plain-on-pixel, keyed, wrong key
    same = rows["keyed detector, with the key"]["vs_plain_detector"]
    assert same["identical_images"] == 4 and same["matched"] == same["detections"] == same["detections_other"]
    assert same["max_box_diff_px"] <= 1e-3 and rows["keyed detector, with the key"]["dense_max_diff"] < 1e-4
    assert rows["keyed detector, with the key"]["metrics"]["map"] == rows["plain"]["metrics"]["map"]
    for f in data["files"]:
        assert (tmp_path / f.split("/")[-1]).is_file()
    assert "keyveil experiment detection" in (tmp_path / "detection.md").read_text()
    with pytest.raises(ValueError, match="unknown detection rows"):
        run_detection(schemes=("patch",), out_dir=tmp_path)


# -- keyed mAP where there are detections: ground truth = the plain detector's own best boxes --------
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
