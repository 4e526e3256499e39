"""Object detection on plain and scrambled images: the shape of VisualMixer's Table VI, plus the keyed detector.

Rows (precision, recall, mAP@[.5:.95], mAP@.5 on held-out canvases of ``fashion-canvas``):

* **plain** — the small FCOS trained and tested on plain canvases;
* **visualmixer** at keyveil's default (one whole-canvas window) and at the
  frontier's recommended setting (its only Pareto point, ``quadtree 1/16..1/4``
  of the side; RESULTS.md), **mix** at its defaults — each a detector trained
  and tested on images encrypted that way (fresh randomness per training
  fetch, a fixed nonce per test image), boxes unchanged;
* **keyed detector** — the plain detector converted with the key
  (:func:`keyveil.models.keyed_detection.keyed_detector`), run on
  ``pixel``-encrypted test canvases, with the key and with a wrong key; and,
  for reference, the plain detector run on ``pixel``-encrypted canvases unconverted.

The keyed rows also report how exactly the keyed detector reproduces the
plain detector's detections (same count, labels, largest box and score
difference). Each row carries the face re-identification its setting left in
the frontier experiment (``results/frontier/frontier.json``), the privacy it bought.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data import create_dataset
from ..data.detection import EncryptedDetection
from ..data.encrypted import TEST_NONCE_OFFSET
from ..engine.detection import build_detector, detection_metrics, fit_detector, predict_detections
from ..keys import Key
from ..models.keyed_detection import keyed_detector
from ..schemes import PrivacyWarning, create
from .common import Timer, markdown_table, write_report

__all__ = ["run_detection", "compare_detections", "FRONTIER_SETTING", "ROWS"]

#: The VisualMixer setting the frontier recommends (its only Pareto point, RESULTS.md): quadtree windows
#: of 1/16..1/4 of the image side.
FRONTIER_SETTING = "quadtree 1/16..1/4"

#: (row name, scheme, how it is run, frontier label whose privacy it bought)
ROWS: tuple[tuple[str, str | None, str, str | None], ...] = (
    ("plain", None, "trained", "no encryption"),
    ("visualmixer (default: whole-canvas window)", "visualmixer", "trained", "window 1 (whole image)"),
    (f"visualmixer (frontier: {FRONTIER_SETTING})", "visualmixer-frontier", "trained", FRONTIER_SETTING),
    ("mix (default: 16 px patches, 4x4 sub-patches)", "mix", "trained", "patches 1/4, 4x4 sub-patches"),
    ("plain detector on pixel images (not converted)", "pixel", "plain-on-encrypted", "fixed-key pixel shuffle"),
    ("keyed detector, with the key", "pixel", "keyed", "fixed-key pixel shuffle"),
    ("keyed detector, wrong key", "pixel", "keyed-wrong", "fixed-key pixel shuffle"),
)


def compare_detections(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]], *,
                       box_tol: float = 1e-3, score_tol: float = 1e-5) -> dict[str, Any]:
    """How exactly detections ``b`` reproduce ``a``, image by image, as sets (order ignored).

    Every detection of ``a`` is paired with the unpaired detection of ``b`` of the
    same label nearest to it (largest coordinate difference); a pair *matches*
    when its boxes agree within ``box_tol`` px and its scores within ``score_tol``.
    ``identical_images`` counts images whose detections all match one to one.
    """
    matched = n_a = n_b = same_images = 0
    box = score = 0.0
    for p, q in zip(a, b):
        n_a, n_b = n_a + len(p["labels"]), n_b + len(q["labels"])
        free = torch.ones(len(q["labels"]), dtype=torch.bool)
        ok = 0
        for i in range(len(p["labels"])):
            cand = torch.nonzero(free & (q["labels"] == p["labels"][i])).flatten()
            if cand.numel() == 0:
                continue
            d = (q["boxes"][cand] - p["boxes"][i]).abs().amax(1)
            k = int(cand[int(d.argmin())])
            db, ds = float(d.min()), float((q["scores"][k] - p["scores"][i]).abs())
            if db <= box_tol and ds <= score_tol:
                free[k] = False
                ok += 1
                box, score = max(box, db), max(score, ds)
        matched += ok
        same_images += int(ok == len(p["labels"]) == len(q["labels"]))
    return {"images": len(a), "identical_images": same_images, "detections": n_a, "detections_other": n_b,
            "matched": matched, "max_box_diff_px": box, "max_score_diff": score, "box_tol": box_tol,
            "score_tol": score_tol}


@torch.no_grad()
def dense_difference(plain: torch.nn.Module, keyed: torch.nn.Module, plain_set, encrypted_set, n: int = 100) -> float:
    """Largest difference between the plain and the keyed detector's (un-scrambled) dense maps on ``n`` images."""
    from ..engine.detection import to_float_images
    from ..models.keyed_detection import DenseCore

    core = DenseCore(plain).eval()
    worst = 0.0
    for i in range(min(n, len(plain_set))):
        x = to_float_images([plain_set[i][0]])
        y = to_float_images([encrypted_set[i][0]])
        ref = core(plain.transform(x)[0].tensors)
        got = list(keyed.core(keyed.transform(y)[0].tensors))  # maps come back in plain order
        worst = max(worst, max(float((r - g).abs().max()) for r, g in zip(ref, got)))
    return worst


def _frontier_privacy(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text()).get("rows", [])
    return {r["label"]: {"worst_top1": r.get("worst_top1"), "no_oracle_top1": r.get("worst_top1_no_oracle")}
            for r in rows}


def _scheme(name: str, key: Key, side: int):
    from .frontier import POINTS

    if name == "visualmixer-frontier":
        point = next(p for p in POINTS if p.scheme == "visualmixer" and p.label == FRONTIER_SETTING)
        return create("visualmixer", **point.options(side))
    return create(name, key if name == "pixel" else None)


def run_detection(
    *,
    train_count: int = 4000,
    test_count: int = 1000,
    epochs: int = 8,
    batch_size: int = 16,
    lr: float = 2e-3,
    mode: str = "features",
    seed: int = 0,
    schemes: tuple[str, ...] | None = None,
    frontier_json: str | Path = "results/frontier/frontier.json",
    out_dir: str | Path = "results",
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Train and test the detectors of :data:`ROWS`; writes ``detection.md``, ``.json`` and ``.png``.

    Args:
        train_count, test_count: training / held-out canvases (``fashion-canvas``'s first ones).
        epochs, batch_size, lr: the detector recipe (the same for every trained row).
        mode: the keyed detector's mode (``features``, ``deformable`` or ``input``).
        schemes: the trained encrypted rows to run (default all: ``visualmixer``,
            ``visualmixer-frontier``, ``mix``); plain and the keyed rows always run.
    """
    if epochs < 1 or train_count < 1 or test_count < 1:
        raise ValueError(f"epochs, train_count and test_count must be >= 1; got {epochs}, {train_count}, {test_count}")
    timer = Timer()
    trained_schemes = ("visualmixer", "visualmixer-frontier", "mix") if schemes is None else tuple(schemes)
    unknown = [s for s in trained_schemes if s not in ("visualmixer", "visualmixer-frontier", "mix")]
    if unknown:
        raise ValueError(f"unknown detection rows {unknown}; choose from visualmixer, visualmixer-frontier, mix")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key, wrong = Key.from_seed(seed), Key.from_seed(seed + 1)
    train = create_dataset("fashion-canvas", "train").limit(train_count)
    test = create_dataset("fashion-canvas", "test").limit(test_count)
    side = max(train.size)
    privacy = _frontier_privacy(Path(frontier_json))
    log(f"fashion-canvas: {len(train)} train / {len(test)} test canvases {train.size[0]}x{train.size[1]}; fcos-small, "
        f"{epochs} epochs, batch {batch_size}, AdamW lr {lr}; key {key.fingerprint}")
    rows: list[dict[str, Any]] = []
    models: dict[str, torch.nn.Module] = {}
    preds: dict[str, list[dict[str, torch.Tensor]]] = {}
    inputs: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # weaker settings are compared on purpose
        for name, scheme_name, how, flabel in ROWS:
            if how == "trained" and scheme_name is not None and scheme_name not in trained_schemes:
                continue
            t = Timer()
            sch = None if scheme_name is None else _scheme(scheme_name, key, side)
            te = test if sch is None else EncryptedDetection(test, sch, randomness="nonce",
                                                             nonce_offset=TEST_NONCE_OFFSET)
            row: dict[str, Any] = {"row": name, "scheme": None if sch is None else sch.config, "how": how}
            if how == "trained":
                tr = train if sch is None else EncryptedDetection(train, sch, randomness="fresh")
                torch.manual_seed(seed)
                model = build_detector(num_classes=train.num_classes, in_channels=train.channels)
                res = fit_detector(model, tr, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                   progress=progress)
                row["train_loss"] = res.history[-1]["train_loss"]
                models[scheme_name or "plain"] = model.eval()
            elif how == "plain-on-encrypted":
                model = models["plain"]
            else:
                model = keyed_detector(models["plain"], key if how == "keyed" else wrong, mode=mode,
                                       input_size=(train.channels, *train.size))
                row["keyed_mode"] = mode
                row["model_key"] = (key if how == "keyed" else wrong).fingerprint
            p = predict_detections(model, te)
            row["metrics"] = detection_metrics(p, te)
            if how in ("keyed", "keyed-wrong"):
                row["vs_plain_detector"] = compare_detections(preds["plain"], p)
                row["dense_max_diff"] = dense_difference(models["plain"], model, test, te)
            row["privacy"] = privacy.get(flabel) if flabel else None
            row["frontier_setting"] = flabel
            row["cpu_s"] = t.cpu
            rows.append(row)
            preds[name if how != "trained" else (scheme_name or "plain")] = p
            inputs[name if how != "trained" else (scheme_name or "plain")] = te
            m = row["metrics"]
            log(f"  {name}: P {m['precision']:.3f} R {m['recall']:.3f} mAP {m['map']:.4f} mAP@.5 {m['map_50']:.4f} "
                f"({t.cpu:.0f} s CPU)")
    picture = Path(out_dir) / "detection.png"
    _picture(picture, test, inputs, preds)
    md = _markdown(rows, key, train, test, epochs, batch_size, lr, timer, privacy)
    data = {"experiment": "detection", "key_fingerprint": key.fingerprint, "wrong_key_fingerprint": wrong.fingerprint,
            "dataset": "fashion-canvas", "train_canvases": len(train), "test_canvases": len(test),
            "canvas": list(train.size), "epochs": epochs, "batch_size": batch_size, "lr": lr, "keyed_mode": mode,
            "score_threshold": 0.5, "rows": rows, "picture": str(picture), "wall_s": timer.wall, "cpu_s": timer.cpu,
            "torch_threads": torch.get_num_threads()}
    data["files"] = [str(p) for p in write_report(Path(out_dir), "detection", md, data)] + [str(picture)]
    return data


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _markdown(rows, key, train, test, epochs, batch_size, lr, timer, privacy) -> str:
    table = markdown_table(
        ["setting", "precision (%)", "recall (%)", "mAP@[.5:.95] (%)", "mAP@.5 (%)", "faces re-identified, worst (%)",
         "without an oracle (%)", "CPU s"],
        [[r["row"], _pct(r["metrics"]["precision"]), _pct(r["metrics"]["recall"]), _pct(r["metrics"]["map"]),
          _pct(r["metrics"]["map_50"]), _pct((r["privacy"] or {}).get("worst_top1")),
          _pct((r["privacy"] or {}).get("no_oracle_top1")), f"{r['cpu_s']:.0f}"] for r in rows])
    exact = [r for r in rows if "vs_plain_detector" in r]
    lines = []
    for r in exact:
        v = r["vs_plain_detector"]
        lines.append(f"- {r['row']} ({r['keyed_mode']} mode, model key {r['model_key']}): {v['matched']} of the "
                     f"plain detector's {v['detections']} detections reproduced (same label, box within "
                     f"{v['box_tol']:g} px, score within {v['score_tol']:g}; {v['detections_other']} detections "
                     f"in all), {v['identical_images']} of {v['images']} test canvases with identical detection sets; "
                     f"largest box / score difference of a reproduced detection {v['max_box_diff_px']:.2e} px / "
                     f"{v['max_score_diff']:.2e}; dense maps (logits, regressions, centre-ness) differ by at most "
                     f"{r['dense_max_diff']:.2e} on the first 100 test canvases.")
    return (
        "# Object detection on plain and scrambled images (VisualMixer Table VI's shape, plus the keyed detector)\n\n"
        f"Command: `keyveil experiment detection` (key {key.fingerprint}, a fixed seed: not secret). Run time: "
        f"{timer.wall:.0f} s wall, {timer.cpu:.0f} s CPU, torch threads {torch.get_num_threads()}.\n\n"
        f"`fashion-canvas`: {len(train)} training / {len(test)} held-out {train.size[0]}x{train.size[1]} canvases "
        "(real Fashion-MNIST items in a synthetic layout: 1–4 items of 16–32 px per canvas; test canvases use the "
        f"test items). Detector: torchvision FCOS on a small backbone (strides 8 and 16, random init), {epochs} "
        f"epochs of AdamW (lr {lr}, batch {batch_size}) per trained row; encrypted rows are trained on fresh "
        "randomness per fetch and tested with one nonce per canvas, boxes unchanged. mAP from torchmetrics' "
        "MeanAveragePrecision (pycocotools); precision and recall at score ≥ 0.5, IoU ≥ 0.5, same class. "
        "Privacy: face re-identification top-1 of the frontier experiment for the same setting "
        "(RESULTS.md; chance 2.5 %, plain photos 93.0 %).\n\n"
        f"{table}\n\n" + "\n".join(lines) + "\n\n![detections](detection.png)\n")


def _picture(path: Path, test, inputs, preds, n: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    pixel_in = "keyed detector, with the key"
    cols: list[tuple[str, str, str | None]] = [("ground truth", "plain", None)]
    for key_, title, shown_on in (
            ("plain", "plain detector", "plain"), ("visualmixer", "visualmixer default", "visualmixer"),
            ("visualmixer-frontier", "visualmixer frontier", "visualmixer-frontier"), ("mix", "mix", "mix"),
            ("plain detector on pixel images (not converted)", "pixel, plain detector", pixel_in),
            (None, "pixel input (encrypted)", pixel_in),
            (pixel_in, "keyed, key (on plain)", "plain"),
            ("keyed detector, wrong key", "keyed, wrong key (on plain)", "plain")):
        if (key_ is None and shown_on in inputs) or key_ in preds:
            cols.append((title, shown_on, key_))
    cats = test.categories
    fig, axes = plt.subplots(n, len(cols), figsize=(2.1 * len(cols), 2.3 * n + 0.4), squeeze=False)
    for i in range(n):
        for j, (title, data_key, pred_key) in enumerate(cols):
            ax = axes[i][j]
            img = inputs[data_key][i][0] if data_key in inputs else test[i][0]
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=255)
            if pred_key is None:
                t = test[i][1] if j == 0 else {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
                boxes, labels, scores = t["boxes"], t["labels"], None
            else:
                d = preds[pred_key][i]
                keep = d["scores"] >= 0.5
                boxes, labels, scores = d["boxes"][keep], d["labels"][keep], d["scores"][keep]
            for k in range(len(labels)):
                x1, y1, x2, y2 = boxes[k].tolist()
                ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="lime", lw=1))
                text = cats[int(labels[k])].split("/")[0][:7] + ("" if scores is None else f" {float(scores[k]):.2f}")
                ax.text(x1 - 0.5, y1 - 1, text, color="yellow", fontsize=5, va="bottom")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
            if j == 0:
                ax.set_ylabel(f"test canvas {i}", fontsize=7)
    fig.suptitle("fashion-canvas test canvases: predicted boxes with score ≥ 0.5 drawn on each detector's input "
                 "(the keyed detector reads the encrypted input; its boxes are drawn on the plain canvas)", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
