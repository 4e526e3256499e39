"""The report's runner: which scenario runs for which section, and :func:`security_report`.

Each section function lists its runs (scheme, data set, attacker's data, how
the figure reads); :class:`Runner` runs one scenario per line, or takes the
row a previous report measured (``reuse``), and saves its picture.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ...keys import Key
from ...metrics.intervals import Rate
from .._data import DEPRECATED_NAMES
from ..scenarios import Scenario, make_scheme, plain_baseline, run_scenario
from .calibrate import calibrate, describe
from .markdown import Row, render
from .verdicts import verdict

__all__ = ["SECTIONS", "Runner", "security_report", "save_picture"]

SECTIONS = ("reidentify", "chosen-plaintext", "known-plaintext", "ciphertext-only", "jigsaw", "learned-inversion",
            "membership", "key-from-model", "instahide")


_FACE_SECTIONS = ("reidentify", "instahide")  # they use all 400 AT&T photos at 112x92: att-faces


def _current_name(section: str, dataset: str) -> str:
    """The data set name this runner uses for a row an older report wrote (``orl``, ``cifar``)."""
    if dataset == "orl" and section in _FACE_SECTIONS:
        return "att-faces"
    return DEPRECATED_NAMES.get(dataset, dataset)


def save_picture(sc: Scenario, path: Path, count: int = 6) -> Path:
    """Originals / encrypted / recovered (rows) of the first ``count`` images as one labelled PNG.

    Rows are named "original", "encrypted (<scheme>)" and, when the attack
    recovers images, "recovered (<attack>)"; columns "image 1..k".
    """
    from ...pictures import save_grid

    k = min(count, len(sc.originals))
    rows, names = [sc.originals[:k], sc.encrypted[:k]], ["original", f"encrypted ({sc.scheme})"]
    if sc.recovered is not None:
        rows.append(sc.recovered[:k])
        names.append(f"recovered ({sc.attack})")
    return save_grid(rows, path, row_labels=names, col_labels=[f"image {j}" for j in range(1, k + 1)],
                     title=f"{sc.attack} attack on {sc.scheme}, {sc.dataset}")


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


class Runner:
    """Runs the scenarios of the report's sections, one :class:`Row` per run (or reuses a previous row)."""

    def __init__(self, pictures: Path | None, key: Key, quick: bool, log: Callable[[str], None],
                 reuse: list[Row] | None = None) -> None:
        self.pictures, self.key, self.quick, self.log = pictures, key, quick, log
        self.rows: list[Row] = []
        self.reused = 0
        self._tags: dict[str, int] = {}
        self._pool: dict[tuple[str, str, str], list[Row]] = {}
        for row in reuse or []:
            row.dataset = _current_name(row.section, row.dataset)
            self._pool.setdefault((row.section, row.scheme, row.dataset), []).append(row)

    def run(self, section: str, scheme_name: str, dataset: str, figure: Callable[[dict[str, float]], str],
            data: str, *, scheme: Any = None, label: str | None = None, **kw: Any) -> Scenario | None:
        pool = self._pool.get((section, label or scheme_name, dataset))
        if pool:  # the n-th run of this (section, scheme, data set) takes the previous report's n-th row
            row = pool.pop(0)
            self.rows.append(row)
            self.reused += 1
            self.log(f"{section:17s} {row.scheme:22s} {dataset:17s} {row.figure}  [reused from the previous report]")
            return None
        scheme = scheme if scheme is not None else make_scheme(scheme_name, dataset, self.key)
        t0 = time.process_time()
        sc = run_scenario(section, scheme, dataset, **kw)
        cpu = time.process_time() - t0
        m = sc.result.metrics
        pic = ""
        if self.pictures is not None and sc.recovered is not None:
            extra = f"-{kw['n']}pairs" if section == "known-plaintext" else ""
            if section == "key-from-model":
                extra = "-{mode}-{method}-{source}".format(**sc.settings)
            if section == "ciphertext-only" and kw.get("n"):
                extra = f"-{kw['n']}"
            if section == "learned-inversion" and sc.settings.get("loss", "l1") != "l1":
                extra = f"-{sc.settings['loss']}"
            tag = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{section}-{label or scheme_name}-{dataset}{extra}").strip("-")
            self._tags[tag] = self._tags.get(tag, 0) + 1
            tag += f"-{self._tags[tag]}" if self._tags[tag] > 1 else ""  # never overwrite an earlier row's picture
            pic = str(save_picture(sc, self.pictures / f"security-{tag}.png"))
        full = {**m, **sc.settings}  # the settings say how many trials (probes, pairs) the figures rest on
        cal = calibrate(section, sc, scheme)  # every figure with its trial count and 95 % interval
        row = Row(section, label or scheme_name, dataset, figure(full), data.format(**full),
                  sc.result.cost.cpu_seconds, verdict(section, full, cal), pic, describe(cal))
        self.rows.append(row)
        self.log(f"{section:17s} {row.scheme:22s} {dataset:17s} {row.figure}  [{row.data}; attack {row.cpu_seconds:.2f} s "
                 f"CPU, scenario {cpu:.1f} s CPU]")
        return sc


def _key_figure(m: dict[str, float]) -> str:
    if "fraction_cells_recovered" in m:  # a chain: the keyed step, up to the order inside each cell
        return (f"{_pct(m['fraction_cells_recovered'])} of positions back in their {m['cell']:.0f}×{m['cell']:.0f} "
                "cell (keyed step undone up to the per-image shuffle)")
    return f"{_pct(m.get('fraction_recovered_with_flips', m['fraction_recovered']))} of the key"


def _chosen(r: Runner) -> None:
    fig = _key_figure
    r.run("chosen-plaintext", "pixel", "cifar10-sample", fig, "{queries} crafted images (3×32×32)", test_n=6)
    r.run("chosen-plaintext", "pixel", "photos", fig, "{queries} crafted images (3×224×224)", test_n=6)
    r.run("chosen-plaintext", "pixel", "photos", fig, "{queries} crafted images (spatial mode)", test_n=6,
          label="pixel (spatial attack)", options={"spatial": True})
    from ...schemes import create

    r.run("chosen-plaintext", "pixel", "photos", fig, "{queries} crafted images", test_n=6,
          scheme=create("pixel", r.key, per_channel=True), label="pixel per_channel")
    for name in ("pixel-np", "etc", "vit", "le", "ele", "block"):
        r.run("chosen-plaintext", name, "photos", fig, "{queries} crafted images (3×224×224)", test_n=6)
    for name in ("visualmixer-seed+pixel", "mix+pixel"):  # images constant on each cell pass the per-image step
        r.run("chosen-plaintext", name, "photos", fig, "{queries} crafted images (3×224×224), constant on cells",
              test_n=6)
    r.run("chosen-plaintext", "vit+patch", "fashion-mnist", fig, "{queries} crafted images, each one {patch}×{patch} "
          "image tiled (untouched by the patch order)", test_n=6)


def _known(r: Runner) -> None:
    def fig(m: dict[str, float]) -> str:
        if "fraction_cells_recovered" in m:
            return f"{_key_figure(m)} ({_pct(m['fraction_determined'])} unique)"
        return f"{_pct(m['fraction_recovered'])} recovered ({_pct(m['fraction_determined'])} unique)"

    for dataset in ("fashion-mnist", "photos"):
        for n in (1, 2, 4, 8):
            r.run("known-plaintext", "pixel", dataset, fig, "{pairs} known pairs", n=n, test_n=6)
    for name in ("pixel-np", "etc", "vit", "block", "le", "ele"):  # values (nibbles for LE/ELE) with flips
        for n in (1, 2, 4, 8):
            r.run("known-plaintext", name, "fashion-mnist", fig, "{pairs} known pairs", n=n, test_n=6)
    for name in ("visualmixer-seed+pixel", "mix+pixel"):  # chains: each position's cell from the pairs
        for n in (2, 4, 8):
            r.run("known-plaintext", name, "photos", fig, "{pairs} known pairs (3×224×224)", n=n, test_n=6)


def _cot(r: Runner) -> None:
    n = 2000 if r.quick else 10_000
    fig = lambda m: (f"neighbours {_pct(m['neighbour_accuracy'])}, SSIM {m['ssim_best_symmetry']:.3f} "  # noqa: E731
                     f"(raw {m['ssim']:.3f}, encrypted {m['ssim_encrypted']:.3f})")
    opts = {"anneal_seconds": 3.0} if r.quick else {}
    r.run("ciphertext-only", "pixel", "fashion-mnist", fig, "{ciphertexts} ciphertexts, one key", n=n,
          test_n=500, options=opts)
    r.run("ciphertext-only", "pixel-np", "fashion-mnist", lambda m: f"{fig(m)}; flips {_pct(m['flip_accuracy'])}",
          "{ciphertexts} ciphertexts, one key", n=n, test_n=500, options=opts)  # flips recovered too
    for name in ("visualmixer-seed+pixel", "mix+pixel"):  # the chains' keyed pixel step, under the per-image one
        r.run("ciphertext-only", name, "fashion-mnist", fig, "{ciphertexts} ciphertexts, one key; neighbours of the "
              "keyed pixel step", n=n, test_n=500, options=opts)
    nib = lambda m: (f"{_pct(m['units_correct'])} of nibbles exact ({_pct(m['high_correct'])} of high ones), "  # noqa: E731
                     f"SSIM {m['ssim']:.3f} (encrypted {m['ssim_encrypted']:.3f})")
    for k in (500, n):
        r.run("ciphertext-only", "le", "fashion-mnist", nib, "{ciphertexts} ciphertexts, one key; {public} public "
              "plain images", n=k, test_n=500)
    r.run("ciphertext-only", "ele", "fashion-mnist", nib, "{ciphertexts} ciphertexts, one key; {public} public plain "
          "images: each block's shuffle matched, blocks placed by the best total match", n=n, test_n=500)
    r.run("ciphertext-only", "le", "photos", nib, "{ciphertexts} ciphertexts (3×224×224), one key; {public} "
          "public plain photos", n=5, test_n=3, options={"public": 3})
    blocks = lambda m: (f"direct {_pct(m['direct'])}, neighbour {_pct(m['neighbour'])} of the key; SSIM "  # noqa: E731
                        f"{m['ssim']:.3f} (encrypted {m['ssim_encrypted']:.3f}), best global symmetry")
    data = "{ciphertexts} ciphertexts, one key; jigsaw-shared-key"
    for name in ("etc", "block"):
        for k in (n,) if r.quick else (1000, n):
            r.run("ciphertext-only", name, "fashion-mnist", blocks, data, n=k, test_n=500)
    r.run("ciphertext-only", "etc", "photos", blocks, data + " (colour: the photos' {tile}×{tile} tiles)",
          test_n=8, options={"tile": 32})
    two = lambda m: (f"{_pct(m['decrypted_exactly'])} of the test images decrypted exactly; SSIM {m['ssim']:.3f} "  # noqa: E731
                     f"(encrypted {m['ssim_encrypted']:.3f})")
    r.run("ciphertext-only", "vit", "fashion-mnist", two, "{ciphertexts} ciphertexts, one key, {public} public plain "
          "images: in-block shuffle by template matching, then jigsaw-shared-key", n=n, test_n=500)
    r.run("ciphertext-only", "vit+patch", "fashion-mnist", two, "{ciphertexts} ciphertexts' {patch}×{patch} patches, "
          "one key, {public} public plain images: the in-patch shuffle by template matching (leaves the patch "
          "scheme)", n=3000, test_n=500)


def _jigsaw(r: Runner) -> None:
    fig = lambda m: (f"direct {_pct(m['direct'])}, neighbour {_pct(m['neighbour'])}, "  # noqa: E731
                     f"SSIM {m['ssim']:.3f} (encrypted {m['ssim_encrypted']:.3f})")
    k = 5 if r.quick else 20
    r.run("jigsaw", "patch", "fashion-mnist", fig, "ciphertext only, {images} images, 4×4 patches", test_n=k)
    r.run("jigsaw", "patch", "att-faces-heldout", fig, "ciphertext only, {images} images, 16×16 patches", test_n=k)
    r.run("jigsaw", "etc", "fashion-mnist", fig, "ciphertext only, {images} images, 4×4 blocks", test_n=k)
    r.run("jigsaw", "etc", "cifar10-sample", fig, "ciphertext only, {images} images, 4×4 blocks, colour", test_n=2 if r.quick else 5)


def _inversion(r: Runner) -> None:
    fig = lambda m: (f"SSIM {m['ssim']:.3f} vs {m['ssim_encrypted']:.3f} encrypted, {m['ssim_prior']:.3f} "  # noqa: E731
                     f"mean image; PSNR {m['psnr']:.1f} vs {m['psnr_encrypted']:.1f} dB")
    n_fm = 500 if r.quick else 4000  # keyed schemes: this many leaked (plain, encrypted) pairs under the key
    fm = {"n": n_fm, "test_n": 100 if r.quick else 500, "options": {"epochs": 1 if r.quick else 3, "width": 8}}
    orl = {"n": None, "test_n": 50, "options": {"epochs": 1 if r.quick else 6, "width": 8, "batch_size": 16}}
    made, leaked = "{pairs:.0f} self-made pairs", "{train_images} leaked pairs under the key"
    for name in ("patch", "mix", "visualmixer"):
        r.run("learned-inversion", name, "fashion-mnist", fig, made, **fm)
        r.run("learned-inversion", name, "att-faces-heldout", fig, made + " (people 1–35)", **orl)
    for name in ("visualmixer-seed", "noise", "instahide", "block-per-image"):  # keyless: the public code makes pairs
        r.run("learned-inversion", name, "fashion-mnist", fig, made, **fm)
    for name in ("pixel", "pixel-np", "etc", "le", "ele", "vit", "block", "visualmixer-seed+pixel", "vit+patch"):
        r.run("learned-inversion", name, "fashion-mnist", fig, leaked, **fm)
    from ...schemes import create

    r.run("learned-inversion", "mix+pixel", "fashion-mnist", fig, leaked + " (mix 4-px patches)", **fm,
          scheme=create("compose", r.key, steps=[("mix", {"patch_size": 4, "grid": 2}), "pixel"]))
    # the field's stronger objectives (Ito et al.'s GAN inversion) against L1, the same U-Net trained as long
    text = {"l1": "; L1 loss, {epochs} epochs",
            "perceptual": "; L1 + features of an autoencoder the attacker trained on its plain images, {epochs} epochs",
            "gan": "; L1 + conditional PatchGAN (hinge, pix2pix), {epochs} epochs"}
    long = {**fm, "options": {**fm["options"], "epochs": 2 if r.quick else 10}}
    for name in ("etc", "le", "visualmixer"):
        for loss in ("l1", "perceptual", "gan"):
            r.run("learned-inversion", name, "fashion-mnist", fig, (made if name == "visualmixer" else leaked)
                  + text[loss], **{**long, "options": {**long["options"], "loss": loss}})
    if not r.quick:
        for loss in ("perceptual", "gan"):
            r.run("learned-inversion", "visualmixer", "att-faces-heldout", fig, made + " (people 1–35)" + text[loss],
                  **{**orl, "options": {**orl["options"], "loss": loss}})


def _membership(r: Runner) -> None:
    from ...schemes import list_schemes

    fig = lambda m: (f"AUC {m['auc']:.3f}, advantage {m['advantage']:.3f} "  # noqa: E731
                     f"(model test accuracy {_pct(m['test_accuracy'])})")
    n, epochs = (200, 5) if r.quick else (500, 40)
    data = "{members} members + as many non-members, {epochs} epochs"
    r.run("membership", "plain", "fashion-mnist", fig, data, scheme=plain_baseline(), n=n, test_n=n,
          options={"epochs": epochs})
    for name in list_schemes():  # every scheme, compositions and presets included
        text = data + (" on InstaHide's mixed labels" if name == "instahide" else "")
        r.run("membership", name, "fashion-mnist", fig, text, n=n, test_n=n, options={"epochs": epochs})


def _model_key(r: Runner) -> None:
    fig = lambda m: (f"{_pct(m['fraction_recovered'])} of the key; {_pct(m['decrypted_exactly'])} of the "  # noqa: E731
                     "test images decrypted bit-exactly")
    data = {"buffers": "{mode} mode: its buffers", "probe": "{mode} mode: {queries} probe images, no buffer read"}
    sets = (("fashion-mnist", 20), ("att-faces-heldout", 20), ("photos", 6))
    for dataset, test_n in sets[:1] if r.quick else sets:
        for mode in ("input", "features", "deformable"):
            for method in ("buffers", "probe"):
                r.run("key-from-model", "pixel", dataset, fig, "keyed smallcnn, " + data[method], test_n=test_n,
                      options={"mode": mode, "method": method})
    for method, text in (("buffers", "the file's tensors"), ("probe", "the model loaded from it, probed")):
        r.run("key-from-model", "pixel", "fashion-mnist", fig, "checkpoint saved with key material, {mode} mode: "
              + text, test_n=20, options={"mode": "deformable", "method": method, "checkpoint": True})
    from ...schemes import create

    fm = "fashion-mnist"
    for method in ("buffers", "probe"):
        r.run("key-from-model", "pixel-np", fm, fig, "keyed smallcnn, " + data[method], test_n=20,
              options={"method": method})
        r.run("key-from-model", "visualmixer-seed+pixel", fm, fig, "keyed smallcnn following the pixel step, "
              + data[method], test_n=20, options={"method": method})
        r.run("key-from-model", "mix+pixel", fm, fig, "keyed smallcnn following the pixel step (mix 4-px patches), "
              + data[method], test_n=20, options={"method": method},
              scheme=create("compose", r.key, steps=[("mix", {"patch_size": 4, "grid": 2}), "pixel"]))
        r.run("key-from-model", "pixel", "fashion-canvas", fig, "keyed FCOS detector (random weights), 64×64 "
              "canvases, " + data[method], test_n=20, label="pixel (keyed detector)",
              options={"method": method, "model": "detector"})
    vit_fig = lambda m: (fig(m) + (f" (block order {_pct(m['block_order_recovered'])}, in-block "  # noqa: E731
                                   f"{_pct(m['in_block_recovered'])}, flips {_pct(m['flips_recovered'])})"
                                   if "block_order_recovered" in m else "")
                         + (" — refused: no key material" if m.get("refused") else ""))
    r.run("key-from-model", "vit", fm, vit_fig, "keyed ViT (2 layers, 4-px patches): its fold buffers", test_n=20)
    r.run("key-from-model", "vit", fm, vit_fig, "keyed ViT, checkpoint saved with key material: the file's tensors",
          test_n=20, options={"checkpoint": True})
    r.run("key-from-model", "vit", fm, vit_fig, "keyed ViT, default checkpoint (no key material): buffers",
          test_n=20, options={"checkpoint": "plain"})
    n = 10_000 if r.quick else 60_000
    r.run("key-from-model", "vit", fm, vit_fig, "keyed ViT trained on {train_images:.0f} images ({train_epochs:.0f} "
          "epoch, {train_cpu_seconds:.0f} s CPU), no buffer read: smoothness of its weights, symmetry chosen by "
          "the model's loss on {public} public images", test_n=20, options={"method": "weights", "train_images": n})


def _reidentify(r: Runner) -> None:
    def fig(m: dict[str, float]) -> str:
        cells = []
        for v in ("glance", "adapted", "inverted", "ciphertext-only", "key-recovery"):
            best = max((val for k, val in m.items() if k.startswith(f"{v}/") and k.endswith("/top1")), default=None)
            cells.append(f"{v} {'n/a' if best is None else _pct(best)}")
        worst = _pct(m["worst_top1"])
        if "probes" in m:  # with its 95 % Wilson interval and trial count
            worst = Rate.of(int(round(m["worst_top1"] * m["probes"])), int(m["probes"])).describe()
        return f"worst top-1 {worst} (top-5 {_pct(m['worst_top5'])}); " + ", ".join(cells)

    from ...schemes import list_schemes

    opts = {"variants": ("glance",), "recognizers": ("eigenfaces",)} if r.quick else {}
    data = "{gallery} plain gallery / {probes} encrypted probe photos, {people} people"
    r.run("reidentify", "plain", "att-faces", fig, data, scheme=plain_baseline(), test_n=6, options=opts)
    names = ["pixel", "pixel-np", "etc", "le", "ele", "vit", "patch", "mix", "visualmixer", "noise", "instahide"]
    names += [n for n in list_schemes() if n not in names]  # block, presets (visualmixer-seed), compositions
    for name in names[:2] if r.quick else names:
        r.run("reidentify", name, "att-faces", fig, data, test_n=6, options=opts)


def _instahide(r: Runner) -> None:
    def fig(m: dict[str, float]) -> str:
        mean_face = m.get("public_mean_ssim", float("nan"))
        out = (f"SSIM {m['recovered_ssim']:.3f} recovered vs {m['encoded_ssim']:.3f} encoded "
               f"({m['abs_ssim']:.3f} for abs(encoding), {mean_face:.3f} mean face); "
               f"clusters {m['purity'] * 100:.0f} % pure, {_pct(m['coverage'])} of the images")
        if "reid_recovered_top1" in m:
            out += (f"; re-identified top-1 {_pct(m['reid_recovered_top1'])} recovered vs "
                    f"{_pct(m['reid_encoded_top1'])} encoded")
        return out

    opts = {"epochs": 4, "recognizers": ("eigenfaces",)} if r.quick else {}
    data = "{encodings} encodings ({epochs} epochs) of {private} private faces, k={k}; {public} public faces"
    for k in (4,) if r.quick else (2, 4):
        from ...schemes import create

        r.run("instahide", "instahide", "att-faces", fig, data, scheme=create("instahide", k=k), label=f"instahide k={k}",
              test_n=6, options=dict(opts))


_RUNNERS = {"reidentify": _reidentify, "chosen-plaintext": _chosen, "known-plaintext": _known, "ciphertext-only": _cot, "jigsaw": _jigsaw,
            "learned-inversion": _inversion, "membership": _membership, "key-from-model": _model_key,
            "instahide": _instahide}


def security_report(
    *, sections: tuple[str, ...] = SECTIONS, pictures: Path | None = Path("results"), quick: bool = False,
    seed: int = 0, log: Callable[[str], None] = lambda s: None, reuse: list[Row] | None = None, jobs: int = 1,
) -> tuple[str, list[Row]]:
    """Run the attacks of ``sections`` and return (markdown, rows).

    Args:
        sections: which attack sections to run.
        pictures: folder for the PNGs (``None``: none written).
        quick: small sizes (for tests); figures are then not the published ones.
        seed: seed of the victims' key (``Key.from_seed``) and of training.
        log: called with one line per measured row.
        reuse: rows of a previous report (:func:`parse_report`); a run whose (section, scheme, data set)
            has one is not measured again but takes that row (the report says how many were reused).
        jobs: sections run in this many processes at once (one per CPU core), each section in a fresh
            process exactly as ``--only SECTION`` runs it; the rows come back in section order.
    """
    unknown = [s for s in sections if s not in _RUNNERS]
    if unknown:
        raise ValueError(f"unknown report sections {unknown}; choose from {', '.join(SECTIONS)}")
    t0 = time.perf_counter()
    if jobs > 1 and len(sections) > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        by_cost = sorted(sections, key=lambda s: _COST_ORDER.index(s) if s in _COST_ORDER else len(_COST_ORDER))
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {s: pool.submit(_run_sections, (s,), pictures, quick, seed, None, reuse,
                                      torch.get_num_threads()) for s in by_cost}
            done = {s: f.result() for s, f in futures.items()}
        rows = [row for s in sections for row in done[s][0]]
        cpu, reused = sum(d[1] for d in done.values()), sum(d[2] for d in done.values())
    else:
        c0 = time.process_time()
        rows, _, reused = _run_sections(sections, pictures, quick, seed, log, reuse, torch.get_num_threads())
        cpu = time.process_time() - c0
    total = (time.perf_counter() - t0, cpu)
    return render(rows, sections, quick, total, reused=reused, jobs=jobs if len(sections) > 1 else 1), rows


_COST_ORDER = ("reidentify", "learned-inversion", "membership", "ciphertext-only", "instahide", "key-from-model",
               "jigsaw", "known-plaintext", "chosen-plaintext")
"""Sections, most expensive first: with several jobs the long ones start first."""


def _run_sections(sections: tuple[str, ...], pictures: Path | None, quick: bool, seed: int,
                  log: Callable[[str], None] | None, reuse: list[Row] | None,
                  threads: int) -> tuple[list[Row], float, int]:
    """(rows, CPU seconds of this process, rows reused); in a worker process ``log`` is ``None``: print."""
    import warnings

    from ...keys import InsecureKeyWarning

    torch.set_num_threads(threads)
    c0 = time.process_time()
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        key = Key.from_seed(seed)
    runner = Runner(pictures, key, quick, log or (lambda line: print(line, flush=True)), reuse)
    for s in sections:
        _RUNNERS[s](runner)
    return runner.rows, time.process_time() - c0, runner.reused
