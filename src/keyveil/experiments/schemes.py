"""Accuracy of the same training recipe on images encrypted with each scheme, vs plain images.

Images are zero-padded to a multiple of 16 pixels per side (Fashion-MNIST
28×28 → 32×32, AT&T faces 112×92 → 112×96) so every scheme runs on the same
inputs. Fixed-key and VisualMixer schemes train the small CNN; ``patch`` and
``mix`` train Hao et al.'s invariant ViTs (``keyveil.models``). Per-image
schemes draw fresh randomness every epoch. The drop is measured against the
small CNN on plain images; VisualMixer's paper reports 2.35 points on average.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import EncryptedDataset, create_dataset
from ..data.encrypted import TEST_NONCE_OFFSET
from ..engine import build_model, fit, seed_everything
from ..keys import Key
from ..pictures import column_labels
from ..schemes import PrivacyWarning, create
from .common import PaddedDataset, Timer, markdown_table, save_grid, write_report

__all__ = ["run_schemes", "run_schemes_by_model", "gather_schemes_by_model", "SCHEMES", "PAPER_DROP", "MODEL_SCHEMES",
           "TRANSFORMER_SCHEMES"]

SCHEMES = ["plain", "pixel", "etc", "le", "ele", "vit", "patch", "mix", "visualmixer"]
PAPER_DROP = 2.35
PATCH = 8
DEFAULT_EPOCHS = {"fashion-mnist": 2, "att-faces": 25, "mnist5k": 4}
DEFAULT_LIMIT = {"fashion-mnist": 10000}


def _scheme(name: str, key: Key):
    if name == "plain":
        return None
    if name == "patch":
        return create("patch", key, patch_size=PATCH)
    if name == "mix":
        return create("mix", key, patch_size=PATCH, grid=4)
    return create(name, key)


def _model(name: str, ds) -> Any:
    kw = dict(in_channels=ds.channels, num_classes=ds.num_classes)
    if name in ("patch", "mix"):
        from ..models import mix_invariant_vit, patch_invariant_vit

        make = patch_invariant_vit if name == "patch" else mix_invariant_vit
        extra = {"grid": 4} if name == "mix" else {}
        return make(image_size=tuple(ds.size), patch_size=PATCH, dim=64, depth=4, heads=4, **extra, **kw), "inv-ViT"
    return build_model("smallcnn", image_size=ds.size, **kw), "smallcnn"


def run_schemes(
    *,
    datasets: Sequence[str] = ("fashion-mnist", "att-faces"),
    schemes: Sequence[str] = tuple(SCHEMES),
    epochs: dict[str, int] | int | None = None,
    limit: dict[str, int | None] | int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    out_dir: str | Path = "results",
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Train on every scheme for every dataset; writes ``schemes.md``, ``schemes.json``, ``schemes_<ds>.png``."""
    timer = Timer()
    schemes = ["plain", *[s for s in schemes if s != "plain"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(seed)
    out = Path(out_dir)
    results: list[dict[str, Any]] = []
    grids = []
    md_parts = []
    for ds_name in datasets:
        n_epochs = epochs if isinstance(epochs, int) else {**DEFAULT_EPOCHS, **(epochs or {})}.get(ds_name, 2)
        n_limit = limit if isinstance(limit, int) else {**DEFAULT_LIMIT, **(limit or {})}.get(ds_name)
        train = PaddedDataset(create_dataset(ds_name, "train").limit(n_limit), 16)
        test = PaddedDataset(create_dataset(ds_name, "test"), 16)
        log(f"{ds_name}: {len(train)} train / {len(test)} test, padded to {train.size}, {n_epochs} epochs")
        xs, ys = test.get_batch(range(0, len(test), max(1, len(test) // 6))[:6])
        rows_img, img_names, rows = [xs], ["plain"], []
        plain_acc = None
        for name in schemes:
            t = Timer()
            scheme = _scheme(name, key)
            tr = train if scheme is None else EncryptedDataset(train, scheme, randomness="fresh")
            te = test if scheme is None else EncryptedDataset(test, scheme, randomness="nonce",
                                                              nonce_offset=TEST_NONCE_OFFSET)
            seed_everything(seed)
            model, arch = _model(name, train)
            r = fit(model, tr, test_set=te, epochs=n_epochs, batch_size=batch_size, seed=seed, progress=progress,
                    device="cpu")
            acc = r.history[-1]["test_accuracy"]
            if name == "plain":
                plain_acc = acc
            if scheme is not None:
                rows_img.append(scheme.encrypt(xs, nonce=list(range(len(xs)))) if scheme.per_image and
                                scheme.key is not None else scheme.encrypt(xs))
                img_names.append(name)
            drop = None if plain_acc is None else 100 * (plain_acc - acc)
            rec = {"dataset": ds_name, "scheme": name, "model": arch, "accuracy": acc, "drop_points": drop,
                   "over_paper_drop": drop is not None and drop > PAPER_DROP, "epochs": n_epochs,
                   "train_images": len(train), "test_images": len(test), "wall_s": t.wall, "cpu_s": t.cpu}
            results.append(rec)
            rows.append(rec)
            log(f"  {name:<12} {arch:<9} {100 * acc:6.2f} %  drop {drop if drop is None else round(drop, 2)}"
                f"  ({t.wall:.0f} s)")
        grids.append(str(save_grid(rows_img, out / f"schemes_{ds_name}.png", row_labels=img_names,
                                   col_labels=column_labels(ys, test.classes, prefix="test"),
                                   title=f"{ds_name} test images, encrypted with each scheme")))
        table = markdown_table(
            ["scheme", "model", "accuracy (%)", "drop vs plain (points)", f"> {PAPER_DROP}?", "time (s)"],
            [[r["scheme"], r["model"], f"{100 * r['accuracy']:.2f}",
              "—" if r["drop_points"] is None or r["scheme"] == "plain" else f"{r['drop_points']:.2f}",
              "**yes**" if r["over_paper_drop"] else "no", f"{r['wall_s']:.0f}"] for r in rows])
        md_parts.append(f"## {ds_name}\n\n{len(train)} training / {len(test)} test images, padded to "
                        f"{train.size[0]}x{train.size[1]}, {n_epochs} epochs, batch {batch_size}, Adam.\n\n"
                        f"{table}\n\n![samples](schemes_{ds_name}.png) (rows: plain, then each scheme in order)\n")
    md = (f"# Accuracy on encrypted images, per scheme\n\nKey {key.fingerprint} (a fixed seed: not secret). "
          f"Run time: {timer.wall:.0f} s wall, {timer.cpu:.0f} s CPU.\n\n" + "\n".join(md_parts))
    data = {"experiment": "schemes", "key_fingerprint": key.fingerprint, "paper_drop": PAPER_DROP,
            "results": results, "wall_s": timer.wall, "cpu_s": timer.cpu, "grids": grids}
    data["files"] = [str(p) for p in write_report(out, "schemes", md, data)] + grids
    return data


# -- the same schemes on the seeds' model families (VisualMixer Table II's shape) ------------------------------
MODEL_SCHEMES = ("plain", "pixel", "visualmixer-seed", "visualmixer")
"""Schemes every model is measured on by :func:`run_schemes_by_model`."""
TRANSFORMER_SCHEMES = ("patch", "mix")
"""Hao et al.'s per-image schemes, added for the transformers (the family their paper pairs them with)."""
MORE_EPOCHS = 1.5
"""VisualMixer's note: its transformers needed 50 % more epochs than the CNNs."""
MORE_EPOCHS_GAIN = 1.0
"""Points of plain accuracy the longer run must gain for the transformer rows to use it."""
FRONTIER_POINTS = {"plain": ("plain", "no encryption"), "pixel": ("pixel", "fixed-key pixel shuffle"),
                   "visualmixer-seed": ("visualmixer", "seed default 2..8 px"),
                   "visualmixer": ("visualmixer", "window 1 (whole image)"), "patch": ("patch", "patches 1/4"),
                   "mix": ("mix", "patches 1/4, 4x4 sub-patches")}
"""The privacy–utility frontier's point that measured each scheme's setting here (32-px images)."""
STEM = "schemes-models"


def is_transformer(model: Any) -> bool:
    """Whether ``model`` is a torchvision ViT or Swin (trained ``MORE_EPOCHS`` longer if that pays)."""
    from torchvision.models import SwinTransformer, VisionTransformer

    return isinstance(model, (SwinTransformer, VisionTransformer))


def frontier_privacy(path: str | Path | None) -> dict[str, dict[str, float]]:
    """Glance and worst-case face re-identification (top-1) per scheme, from a frontier run's JSON."""
    if path is None or not Path(path).is_file():
        return {}
    import json

    rows = json.loads(Path(path).read_text())["rows"]
    out = {}
    for name, (scheme, label) in FRONTIER_POINTS.items():
        for r in rows:
            if r["scheme"] == scheme and r["label"] == label:
                out[name] = {"glance": r["reid"]["glance"], "worst": r["worst_top1"], "label": label}
                break
    return out


def _check_names(models: Sequence[str], schemes: Sequence[str] | None) -> None:
    from ..engine import SEED_FAMILIES, list_models
    from ..schemes import list_schemes

    problems = []
    bad = [m for m in models if m not in list_models()]
    if bad:
        problems.append(f"unknown model(s) {', '.join(bad)}: choose the seeds' families ({', '.join(SEED_FAMILIES)}),"
                        " smallcnn, vit_mini or any torchvision classification model (`keyveil train --help`)")
    bad = [s for s in schemes or () if s != "plain" and s not in list_schemes()]
    if bad:
        problems.append(f"unknown scheme(s) {', '.join(bad)}: see `keyveil schemes`")
    if problems:
        raise ValueError("; ".join(problems))


def _model_scheme(name: str, key: Key):
    if name in ("patch", "mix"):
        return _scheme(name, key)
    return None if name == "plain" else create(name, key)


def _train_one(arch: str, model_kw: dict[str, Any], tr, te, *, epochs: int, batch_size: int, seed: int,
               progress: bool) -> tuple[Any, float, dict[str, float]]:
    t = Timer()
    seed_everything(seed)
    model = build_model(arch, **model_kw)
    r = fit(model, tr, test_set=te, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress, device="cpu")
    return r.model, r.history[-1]["test_accuracy"], {"cpu_s": t.cpu, "wall_s": t.wall,
                                                     "images_per_s": r.history[-1]["images_per_s"]}


def run_schemes_by_model(
    *,
    models: Sequence[str],
    dataset: str = "fashion-mnist",
    schemes: Sequence[str] | None = None,
    epochs: int = 2,
    limit: int | None = 2000,
    test_limit: int | None = 1000,
    batch_size: int = 64,
    seed: int = 0,
    weights: dict[str, str] | None = None,
    frontier: str | Path | None = "results/frontier/frontier.json",
    out_dir: str | Path = "results",
    gather_only: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Accuracy and drop vs plain per scheme × model (VisualMixer Table II's shape).

    Every model (:func:`keyveil.engine.build_model`, random weights or the
    user's ``weights[arch]``) trains with the same recipe (Adam, cosine
    schedule, ``epochs`` epochs) on plain images and on each scheme's images
    (default :data:`MODEL_SCHEMES`, plus :data:`TRANSFORMER_SCHEMES` for ViTs
    and Swins). ``pixel`` on a CNN is the plain model converted with the key
    (``keyveil.models.keyed``, features mode: no retraining); where the keyed
    conversion does not apply (transformers) the model trains on pixel-shuffled
    images. Transformers first train on plain images for ``epochs`` and for
    ``ceil(MORE_EPOCHS · epochs)`` epochs; if the longer run gains at least
    :data:`MORE_EPOCHS_GAIN` points, all their rows use it (VisualMixer: its
    transformers needed 50 % more epochs).

    Each model's rows go to ``schemes-models-<arch>.json`` in ``out_dir``;
    ``schemes-models.md`` / ``.json`` then gather every model measured there
    with the same recipe (so models can be measured by separate commands), with
    the privacy each scheme bought (face re-identification, glance / worst
    attacker) from the frontier run's JSON ``frontier``. ``gather_only``: train
    nothing, only rebuild those two files.
    """
    _check_names(models, schemes)
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch size must be >= 1, got {epochs} and {batch_size}")
    for arch in weights or {}:
        if arch not in models:
            raise ValueError(f"weights given for {arch!r}, which is not among the models {', '.join(models)}")
    timer = Timer()
    key, train, test, recipe = _setting(dataset, limit, test_limit, epochs, batch_size, seed)
    out = Path(out_dir)
    if gather_only:
        return {**gather_schemes_by_model(out, recipe, frontier=frontier),
                "this_run": {"models": [], "cpu_s": timer.cpu, "wall_s": timer.wall}}
    log(f"{dataset}: {len(train)} train / {len(test)} test, padded to {train.size}, {epochs} epochs "
        f"(transformers {math.ceil(MORE_EPOCHS * epochs)} if that gains >= {MORE_EPOCHS_GAIN} points)")
    for arch in models:
        mt = Timer()
        kw = {"in_channels": train.channels, "num_classes": train.num_classes, "image_size": tuple(train.size),
              "weights": (weights or {}).get(arch)}
        seed_everything(seed)
        probe = build_model(arch, **kw)
        transformer = is_transformer(probe)
        params = sum(p.numel() for p in probe.parameters())
        names = list(schemes) if schemes else [*MODEL_SCHEMES, *(TRANSFORMER_SCHEMES if transformer else ())]
        names = ["plain", *[s for s in names if s != "plain"]]
        rows: list[dict[str, Any]] = []
        n_epochs, plain_runs = epochs, {}
        record: dict[str, Any] = {"experiment": STEM, "recipe": recipe, "model": arch, "transformer": transformer,
                                  "parameters": params, "weights": kw["weights"], "rows": rows,
                                  "torch_threads": torch.get_num_threads()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PrivacyWarning)  # the seed's settings are compared on purpose
            plain_model, acc, cost = _train_one(arch, kw, train, test, epochs=epochs, batch_size=batch_size,
                                                seed=seed, progress=progress)
            plain_runs[epochs] = {"accuracy": acc, **cost}
            log(f"  {arch:<20} plain {epochs} epochs {100 * acc:6.2f} %  ({cost['cpu_s']:.0f} s CPU)")
            if transformer:
                longer = math.ceil(MORE_EPOCHS * epochs)
                m2, acc2, cost2 = _train_one(arch, kw, train, test, epochs=longer, batch_size=batch_size, seed=seed,
                                             progress=progress)
                plain_runs[longer] = {"accuracy": acc2, **cost2}
                log(f"  {arch:<20} plain {longer} epochs {100 * acc2:6.2f} %  ({cost2['cpu_s']:.0f} s CPU)")
                if 100 * (acc2 - acc) >= MORE_EPOCHS_GAIN:
                    n_epochs, plain_model, acc, cost = longer, m2, acc2, cost2
            plain_acc = acc
            rows.append({"scheme": "plain", "how": "plain images", "accuracy": acc, "drop_points": 0.0,
                         "epochs": n_epochs, **cost})
            _save(out, record, mt, n_epochs, plain_runs, complete=False)
            for name in names[1:]:
                scheme = _model_scheme(name, key)
                te = EncryptedDataset(test, scheme, randomness="nonce", nonce_offset=TEST_NONCE_OFFSET)
                row = _keyed_row(plain_model, key, scheme, te, train) if name == "pixel" and not transformer else None
                if row is None:
                    tr = EncryptedDataset(train, scheme, randomness="fresh")
                    _, acc, cost = _train_one(arch, kw, tr, te, epochs=n_epochs, batch_size=batch_size, seed=seed,
                                              progress=progress)
                    row = {"how": "trained on encrypted images", "accuracy": acc, "epochs": n_epochs, **cost}
                rows.append({"scheme": name, **row, "drop_points": 100 * (plain_acc - row["accuracy"])})
                _save(out, record, mt, n_epochs, plain_runs, complete=False)
                log(f"  {arch:<20} {name:<17} {100 * row['accuracy']:6.2f} %  drop {rows[-1]['drop_points']:5.2f}"
                    f"  {row['how']}  ({row['cpu_s']:.0f} s CPU)")
        _save(out, record, mt, n_epochs, plain_runs, complete=True)
        log(f"  {arch}: {mt.cpu:.0f} s CPU, {mt.wall:.0f} s wall")
    data = gather_schemes_by_model(out, recipe, frontier=frontier)
    data["this_run"] = {"models": list(models), "cpu_s": timer.cpu, "wall_s": timer.wall}
    return data


def _setting(dataset: str, limit: int | None, test_limit: int | None, epochs: int, batch_size: int,
             seed: int) -> tuple[Key, Any, Any, dict[str, Any]]:
    """The key, the padded training and test sets, and the recipe that identifies comparable runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(seed)
    train = PaddedDataset(create_dataset(dataset, "train").limit(limit), 16)
    test = PaddedDataset(create_dataset(dataset, "test").limit(test_limit), 16)
    recipe = {"dataset": dataset, "train_images": len(train), "test_images": len(test), "padded_to": list(train.size),
              "epochs": epochs, "batch_size": batch_size, "seed": seed, "more_epochs": MORE_EPOCHS,
              "more_epochs_gain": MORE_EPOCHS_GAIN, "key_fingerprint": key.fingerprint}
    return key, train, test, recipe


def _save(out: Path, record: dict[str, Any], timer: Timer, epochs_used: int, plain_runs: dict[int, Any], *,
          complete: bool) -> None:
    """Write one model's record (after every row, so a run cut short keeps what it measured)."""
    record.update(epochs_used=epochs_used, plain_runs={str(k): v for k, v in plain_runs.items()}, complete=complete,
                  cpu_s=timer.cpu, wall_s=timer.wall)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{STEM}-{record['model']}.json").write_text(json.dumps(record, indent=2) + "\n")


def _keyed_row(plain_model: Any, key: Key, scheme: Any, te, train) -> dict[str, Any] | None:
    """The plain model converted with the key, on pixel-shuffled test images; ``None`` where it cannot be keyed."""
    from ..engine import evaluate
    from ..models import keyed
    from ..models.errors import KeyedModelError

    t = Timer()
    try:
        model = keyed(plain_model.eval(), key, scheme=scheme, mode="features",
                      input_size=(train.channels, *train.size))
    except KeyedModelError:
        return None
    acc = evaluate(model, te, device="cpu").accuracy
    return {"how": "keyed plain model (features mode)", "accuracy": acc, "epochs": 0, "cpu_s": t.cpu,
            "wall_s": t.wall}


def gather_schemes_by_model(out_dir: str | Path, recipe: dict[str, Any], *,
                            frontier: str | Path | None = None) -> dict[str, Any]:
    """Gather every ``schemes-models-<arch>.json`` in ``out_dir`` with ``recipe``; write ``schemes-models.md/.json``."""
    from ..engine import SEED_FAMILIES

    out = Path(out_dir)
    records = []
    for path in sorted(out.glob(f"{STEM}-*.json")):
        rec = json.loads(path.read_text())
        if rec.get("experiment") == STEM and rec.get("recipe") == recipe:
            records.append(rec)
    order = {m: i for i, m in enumerate(("smallcnn", *SEED_FAMILIES))}
    records.sort(key=lambda r: (order.get(r["model"], len(order)), r["model"]))
    privacy = frontier_privacy(frontier)
    schemes = []
    for rec in records:
        schemes += [r["scheme"] for r in rec["rows"] if r["scheme"] not in schemes]
    cells = {(rec["model"], r["scheme"]): r for rec in records for r in rec["rows"]}

    def cell(model: str, scheme: str) -> str:
        r = cells.get((model, scheme))
        if r is None:
            return "—"
        mark = " ᵏ" if r["how"].startswith("keyed") else ""
        return f"{100 * r['accuracy']:.2f}" + ("" if scheme == "plain" else f" ({r['drop_points']:.2f})") + mark

    def priv(s: str) -> str:
        p = privacy.get(s)
        return "—" if p is None else f"{100 * p['glance']:.1f} / {100 * p['worst']:.1f}"

    table = markdown_table(["scheme", "faces re-identified: glance / worst (%)", *[r["model"] for r in records]],
                           [[s, priv(s), *[cell(r["model"], s) for r in records]] for s in schemes])
    costs = markdown_table(
        ["model", "parameters (M)", "epochs used", "plain accuracy per epoch budget (%)", "plain training CPU s",
         "all rows CPU s", "threads"],
        [[r["model"] + ("" if r.get("complete", True) else " (cut short)"), f"{r['parameters'] / 1e6:.2f}",
          str(r["epochs_used"]),
          ", ".join(f"{k} ep: {100 * v['accuracy']:.2f}" for k, v in r["plain_runs"].items()),
          f"{r['plain_runs'][str(r['epochs_used'])]['cpu_s']:.0f}", f"{r['cpu_s']:.0f}", str(r["torch_threads"])]
         for r in records])
    cpu = sum(r["cpu_s"] for r in records)
    md = (f"# Accuracy per scheme and model ({recipe['dataset']}, VisualMixer Table II's shape)\n\n"
          f"{recipe['train_images']} training / {recipe['test_images']} test images padded to "
          f"{recipe['padded_to'][0]}x{recipe['padded_to'][1]}, {recipe['epochs']} epochs of Adam (cosine schedule), "
          f"batch {recipe['batch_size']}, seed {recipe['seed']}, key {recipe['key_fingerprint']} (a fixed seed: not "
          f"secret); transformers get {math.ceil(recipe['more_epochs'] * recipe['epochs'])} epochs where that gains "
          f">= {recipe['more_epochs_gain']} points on plain images. Cells: accuracy % (drop vs the same model on "
          "plain images, points); ᵏ = the plain model converted with the key (`keyveil.models.keyed`, features "
          "mode, no retraining), otherwise trained on encrypted images. Privacy: top-1 face re-identification on "
          "AT&T faces at the same setting (chance 2.5 %), glance attacker / worst attacker, from "
          f"`{frontier}`. {len(records)} models, {cpu:.0f} s CPU in all.\n\n{table}\n\n{costs}\n")
    data = {"experiment": STEM, "recipe": recipe, "models": [r["model"] for r in records], "records": records,
            "privacy": privacy, "cpu_s": cpu}
    data["files"] = [str(p) for p in write_report(out, STEM, md, data)]
    return data
