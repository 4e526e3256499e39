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
            tag = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{section}-{label or scheme_name}-{dataset}{extra}").strip("-")
            pic = str(save_picture(sc, self.pictures / f"security-{tag}.png"))
        full = {**m, **sc.settings}  # the settings say how many trials (probes, pairs) the figures rest on
        cal = calibrate(section, sc, scheme)  # every figure with its trial count and 95 % interval
        row = Row(section, label or scheme_name, dataset, figure(full), data.format(**full),
                  sc.result.cost.cpu_seconds, verdict(section, full, cal), pic, describe(cal))
        self.rows.append(row)
        self.log(f"{section:17s} {row.scheme:22s} {dataset:17s} {row.figure}  [{row.data}; attack {row.cpu_seconds:.2f} s "
                 f"CPU, scenario {cpu:.1f} s CPU]")
        return sc


def _chosen(r: Runner) -> None:
    fig = lambda m: f"{_pct(m.get('fraction_recovered_with_flips', m['fraction_recovered']))} of the key"  # noqa: E731
    r.run("chosen-plaintext", "pixel", "cifar10-sample", fig, "{queries} crafted images (3×32×32)", test_n=6)
    r.run("chosen-plaintext", "pixel", "photos", fig, "{queries} crafted images (3×224×224)", test_n=6)
    r.run("chosen-plaintext", "pixel", "photos", fig, "{queries} crafted images (spatial mode)", test_n=6,
          label="pixel (spatial attack)", options={"spatial": True})
    from ...schemes import create

    r.run("chosen-plaintext", "pixel", "photos", fig, "{queries} crafted images", test_n=6,
          scheme=create("pixel", r.key, per_channel=True), label="pixel per_channel")
    for name in ("pixel-np", "etc", "vit", "le", "ele", "block"):
        r.run("chosen-plaintext", name, "photos", fig, "{queries} crafted images (3×224×224)", test_n=6)


def _known(r: Runner) -> None:
    fig = lambda m: f"{_pct(m['fraction_recovered'])} recovered ({_pct(m['fraction_determined'])} unique)"  # noqa: E731
    for dataset in ("fashion-mnist", "photos"):
        for n in (1, 2, 4, 8):
            r.run("known-plaintext", "pixel", dataset, fig, "{pairs} known pairs", n=n, test_n=6)
    for name in ("pixel-np", "etc", "vit", "block", "le", "ele"):  # values (nibbles for LE/ELE) with flips
        for n in (1, 2, 4, 8):
            r.run("known-plaintext", name, "fashion-mnist", fig, "{pairs} known pairs", n=n, test_n=6)


def _cot(r: Runner) -> None:
    n = 2000 if r.quick else 10_000
    fig = lambda m: (f"neighbours {_pct(m['neighbour_accuracy'])}, SSIM {m['ssim_best_symmetry']:.3f} "  # noqa: E731
                     f"(raw {m['ssim']:.3f}, encrypted {m['ssim_encrypted']:.3f})")
    opts = {"anneal_seconds": 3.0} if r.quick else {}
    r.run("ciphertext-only", "pixel", "fashion-mnist", fig, "{ciphertexts} ciphertexts, one key", n=n,
          test_n=500, options=opts)


def _jigsaw(r: Runner) -> None:
    fig = lambda m: (f"direct {_pct(m['direct'])}, neighbour {_pct(m['neighbour'])}, "  # noqa: E731
                     f"SSIM {m['ssim']:.3f} (encrypted {m['ssim_encrypted']:.3f})")
    k = 5 if r.quick else 20
    r.run("jigsaw", "patch", "fashion-mnist", fig, "ciphertext only, {images} images, 4×4 patches", test_n=k)
    r.run("jigsaw", "patch", "att-faces-heldout", fig, "ciphertext only, {images} images, 16×16 patches", test_n=k)
    r.run("jigsaw", "etc", "fashion-mnist", fig, "ciphertext only, {images} images, 4×4 blocks", test_n=k)
    r.run("jigsaw", "etc", "cifar10-sample", fig, "ciphertext only, {images} images, 4×4 blocks, colour", test_n=2 if r.quick else 5)


def _inversion(r: Runner) -> None:
    fig = lambda m: (f"SSIM {m['ssim']:.3f} vs {m['ssim_encrypted']:.3f} encrypted; "  # noqa: E731
                     f"PSNR {m['psnr']:.1f} vs {m['psnr_encrypted']:.1f} dB")
    fm = {"n": 500 if r.quick else 4000, "test_n": 100 if r.quick else 500,
          "options": {"epochs": 1 if r.quick else 3, "width": 8}}
    orl = {"n": None, "test_n": 50, "options": {"epochs": 1 if r.quick else 6, "width": 8, "batch_size": 16}}
    for name in ("patch", "mix", "visualmixer"):
        r.run("learned-inversion", name, "fashion-mnist", fig, "{pairs:.0f} self-made pairs", **fm)
        r.run("learned-inversion", name, "att-faces-heldout", fig, "{pairs:.0f} self-made pairs (people 1–35)", **orl)


def _inversion_keyless(r: Runner) -> None:
    """Learned inversion of the keyless schemes :func:`_inversion` leaves out (same recipe and sizes)."""
    fig = lambda m: (f"SSIM {m['ssim']:.3f} vs {m['ssim_encrypted']:.3f} encrypted; "  # noqa: E731
                     f"PSNR {m['psnr']:.1f} vs {m['psnr_encrypted']:.1f} dB")
    fm = {"n": 500 if r.quick else 4000, "test_n": 100 if r.quick else 500,
          "options": {"epochs": 1 if r.quick else 3, "width": 8}}
    for name in ("visualmixer-seed", "noise", "instahide"):
        r.run("learned-inversion", name, "fashion-mnist", fig, "{pairs:.0f} self-made pairs", **fm)


def _inversions(r: Runner) -> None:
    _inversion(r)
    _inversion_keyless(r)


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


def _reidentify(r: Runner) -> None:
    def fig(m: dict[str, float]) -> str:
        cells = []
        for v in ("glance", "adapted", "inverted", "key-recovery"):
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
            "learned-inversion": _inversions, "membership": _membership, "key-from-model": _model_key,
            "instahide": _instahide}


def security_report(
    *, sections: tuple[str, ...] = SECTIONS, pictures: Path | None = Path("results"), quick: bool = False,
    seed: int = 0, log: Callable[[str], None] = lambda s: None, reuse: list[Row] | None = None,
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
    """
    import warnings

    from ...keys import InsecureKeyWarning

    unknown = [s for s in sections if s not in _RUNNERS]
    if unknown:
        raise ValueError(f"unknown report sections {unknown}; choose from {', '.join(SECTIONS)}")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        key = Key.from_seed(seed)
    runner = Runner(pictures, key, quick, log, reuse)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in sections:
        _RUNNERS[s](runner)
    total = (time.perf_counter() - t0, time.process_time() - c0)
    return render(runner.rows, sections, quick, total, reused=runner.reused), runner.rows
