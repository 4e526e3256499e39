"""The security report: every attack against every scheme it applies to, measured.

``keyveil security-report`` runs :func:`security_report` and writes SECURITY.md
(tables with the measured figures, the attacker's data, CPU time and the
command that reproduces each section) plus pictures under ``results/``
(git-ignored). The full run takes about 15–25 minutes on 2 CPU cores.
"""

from __future__ import annotations

import datetime
import math
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..keys import Key
from ..metrics.keyspace import key_space_bits
from ..schemes import list_schemes
from .scenarios import Scenario, make_scheme, plain_baseline, run_scenario

__all__ = ["SECTIONS", "Row", "security_report", "save_picture"]

SECTIONS = ("reidentify", "chosen-plaintext", "known-plaintext", "ciphertext-only", "jigsaw", "learned-inversion",
            "membership", "key-from-model", "instahide")


@dataclass
class Row:
    """One measured line of the report."""

    section: str
    scheme: str
    dataset: str
    figure: str
    data: str
    cpu_seconds: float
    verdict: str
    picture: str = ""


def save_picture(sc: Scenario, path: Path, count: int = 6) -> Path:
    """Originals / encrypted / recovered (rows) of the first ``count`` images as one labelled PNG.

    Rows are named "original", "encrypted (<scheme>)" and, when the attack
    recovers images, "recovered (<attack>)"; columns "image 1..k".
    """
    from ..pictures import save_grid

    k = min(count, len(sc.originals))
    rows, names = [sc.originals[:k], sc.encrypted[:k]], ["original", f"encrypted ({sc.scheme})"]
    if sc.recovered is not None:
        rows.append(sc.recovered[:k])
        names.append(f"recovered ({sc.attack})")
    return save_grid(rows, path, row_labels=names, col_labels=[f"image {j}" for j in range(1, k + 1)],
                     title=f"{sc.attack} attack on {sc.scheme}, {sc.dataset}")


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def _severity(verdict: str) -> int:
    return 2 if verdict.startswith("**") else (1 if verdict.startswith("partly") else 0)


def _verdict(section: str, m: dict[str, float]) -> str:
    if section in ("chosen-plaintext", "known-plaintext"):
        f = m.get("fraction_recovered_with_flips", m["fraction_recovered"])
        return "**broken**: key fully recovered" if f == 1.0 else (
            "**broken**: most of the key" if f >= 0.9 else ("partly" if f >= 0.3 else "holds"))
    if section == "ciphertext-only":
        return "**leaks** layout" if m["neighbour_accuracy"] >= 0.3 else "holds"
    if section == "jigsaw":
        return "**falls** (most edges rejoined)" if m["neighbour"] >= 0.5 else (
            "partly" if m["neighbour"] >= 0.25 else "holds")
    if section == "learned-inversion":
        gain = m["ssim"] - m["ssim_encrypted"]
        return "**structure recovered**" if gain >= 0.2 else ("partly" if gain >= 0.05 else "holds")
    if section == "membership":
        return "**leaks** membership" if m["auc"] >= 0.55 else "no measurable leak"
    if section == "reidentify":
        w, chance = m["worst_top1"], m["chance"]
        return "holds (≤ 2× chance)" if w <= 2 * chance else (
            "partly (≤ 10 %)" if w <= 0.10 else "**re-identified**")
    if section == "instahide":
        gain = m["recovered_ssim"] - m["encoded_ssim"]
        reid = m.get("reid_recovered_top1", 0.0)
        return "**broken**: private images recovered" if gain >= 0.2 or reid > 0.10 else (
            "partly" if gain >= 0.05 or reid > 2 * m.get("reid_chance", 0.025) else "holds")
    if section == "key-from-model":
        f = m["fraction_recovered"]
        return "**broken**: the model gives up the key" if f == 1.0 else (
            "**broken**: most of the key" if f >= 0.9 else ("partly" if f >= 0.3 else "holds"))
    return ""


class _Runner:
    def __init__(self, pictures: Path | None, key: Key, quick: bool, log: Callable[[str], None],
                 reuse: list[Row] | None = None) -> None:
        self.pictures, self.key, self.quick, self.log = pictures, key, quick, log
        self.rows: list[Row] = []
        self.reused = 0
        self._pool: dict[tuple[str, str, str], list[Row]] = {}
        for row in reuse or []:
            self._pool.setdefault((row.section, row.scheme, row.dataset), []).append(row)

    def run(self, section: str, scheme_name: str, dataset: str, figure: Callable[[dict[str, float]], str],
            data: str, *, scheme: Any = None, label: str | None = None, **kw: Any) -> Scenario | None:
        pool = self._pool.get((section, label or scheme_name, dataset))
        if pool:  # the n-th run of this (section, scheme, data set) takes the previous report's n-th row
            row = pool.pop(0)
            self.rows.append(row)
            self.reused += 1
            self.log(f"{section:17s} {row.scheme:22s} {dataset:13s} {row.figure}  [reused from the previous report]")
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
        row = Row(section, label or scheme_name, dataset, figure(m), data.format(**{**m, **sc.settings}),
                  sc.result.cost.cpu_seconds, _verdict(section, m), pic)
        self.rows.append(row)
        self.log(f"{section:17s} {row.scheme:22s} {dataset:13s} {row.figure}  [{row.data}; attack {row.cpu_seconds:.2f} s "
                 f"CPU, scenario {cpu:.1f} s CPU]")
        return sc


def _chosen(r: _Runner) -> None:
    fig = lambda m: f"{_pct(m.get('fraction_recovered_with_flips', m['fraction_recovered']))} of the key"  # noqa: E731
    r.run("chosen-plaintext", "pixel", "cifar", fig, "{queries} crafted images (3×32×32)", test_n=6)
    r.run("chosen-plaintext", "pixel", "photos", fig, "{queries} crafted images (3×224×224)", test_n=6)
    r.run("chosen-plaintext", "pixel", "photos", fig, "{queries} crafted images (spatial mode)", test_n=6,
          label="pixel (spatial attack)", options={"spatial": True})
    from ..schemes import create

    r.run("chosen-plaintext", "pixel", "photos", fig, "{queries} crafted images", test_n=6,
          scheme=create("pixel", r.key, per_channel=True), label="pixel per_channel")
    for name in ("pixel-np", "etc", "vit", "le", "ele"):
        r.run("chosen-plaintext", name, "photos", fig, "{queries} crafted images (3×224×224)", test_n=6)


def _known(r: _Runner) -> None:
    fig = lambda m: f"{_pct(m['fraction_recovered'])} recovered ({_pct(m['fraction_determined'])} unique)"  # noqa: E731
    for dataset in ("fashion-mnist", "photos"):
        for n in (1, 2, 4, 8):
            r.run("known-plaintext", "pixel", dataset, fig, "{pairs} known pairs", n=n, test_n=6)


def _cot(r: _Runner) -> None:
    n = 2000 if r.quick else 10_000
    fig = lambda m: (f"neighbours {_pct(m['neighbour_accuracy'])}, SSIM {m['ssim_best_symmetry']:.3f} "  # noqa: E731
                     f"(raw {m['ssim']:.3f}, encrypted {m['ssim_encrypted']:.3f})")
    opts = {"anneal_seconds": 3.0} if r.quick else {}
    r.run("ciphertext-only", "pixel", "fashion-mnist", fig, "{ciphertexts} ciphertexts, one key", n=n,
          test_n=500, options=opts)


def _jigsaw(r: _Runner) -> None:
    fig = lambda m: (f"direct {_pct(m['direct'])}, neighbour {_pct(m['neighbour'])}, "  # noqa: E731
                     f"SSIM {m['ssim']:.3f} (encrypted {m['ssim_encrypted']:.3f})")
    k = 5 if r.quick else 20
    r.run("jigsaw", "patch", "fashion-mnist", fig, "ciphertext only, {images} images, 4×4 patches", test_n=k)
    r.run("jigsaw", "patch", "orl", fig, "ciphertext only, {images} images, 16×16 patches", test_n=k)
    r.run("jigsaw", "etc", "fashion-mnist", fig, "ciphertext only, {images} images, 4×4 blocks", test_n=k)
    r.run("jigsaw", "etc", "cifar", fig, "ciphertext only, {images} images, 4×4 blocks, colour", test_n=2 if r.quick else 5)


def _inversion(r: _Runner) -> None:
    fig = lambda m: (f"SSIM {m['ssim']:.3f} vs {m['ssim_encrypted']:.3f} encrypted; "  # noqa: E731
                     f"PSNR {m['psnr']:.1f} vs {m['psnr_encrypted']:.1f} dB")
    fm = {"n": 500 if r.quick else 4000, "test_n": 100 if r.quick else 500,
          "options": {"epochs": 1 if r.quick else 3, "width": 8}}
    orl = {"n": None, "test_n": 50, "options": {"epochs": 1 if r.quick else 6, "width": 8, "batch_size": 16}}
    for name in ("patch", "mix", "visualmixer"):
        r.run("learned-inversion", name, "fashion-mnist", fig, "{pairs:.0f} self-made pairs", **fm)
        r.run("learned-inversion", name, "orl", fig, "{pairs:.0f} self-made pairs (people 1–35)", **orl)


def _membership(r: _Runner) -> None:
    fig = lambda m: (f"AUC {m['auc']:.3f}, advantage {m['advantage']:.3f} "  # noqa: E731
                     f"(model test accuracy {_pct(m['test_accuracy'])})")
    n, epochs = (200, 5) if r.quick else (500, 40)
    r.run("membership", "plain", "fashion-mnist", fig, "{members} members + as many non-members, "
          "{epochs} epochs", scheme=plain_baseline(), n=n, test_n=n, options={"epochs": epochs})
    for name in ("pixel", "patch", "mix", "visualmixer"):
        r.run("membership", name, "fashion-mnist", fig, "{members} members + as many non-members, {epochs} epochs",
              n=n, test_n=n, options={"epochs": epochs})


def _model_key(r: _Runner) -> None:
    fig = lambda m: (f"{_pct(m['fraction_recovered'])} of the key; {_pct(m['decrypted_exactly'])} of the "  # noqa: E731
                     "test images decrypted bit-exactly")
    data = {"buffers": "{mode} mode: its buffers", "probe": "{mode} mode: {queries} probe images, no buffer read"}
    sets = (("fashion-mnist", 20), ("orl", 20), ("photos", 6))
    for dataset, test_n in sets[:1] if r.quick else sets:
        for mode in ("input", "features", "deformable"):
            for method in ("buffers", "probe"):
                r.run("key-from-model", "pixel", dataset, fig, "keyed smallcnn, " + data[method], test_n=test_n,
                      options={"mode": mode, "method": method})
    for method, text in (("buffers", "the file's tensors"), ("probe", "the model loaded from it, probed")):
        r.run("key-from-model", "pixel", "fashion-mnist", fig, "checkpoint saved with key material, {mode} mode: "
              + text, test_n=20, options={"mode": "deformable", "method": method, "checkpoint": True})


def _reidentify(r: _Runner) -> None:
    def fig(m: dict[str, float]) -> str:
        cells = []
        for v in ("glance", "adapted", "inverted", "key-recovery"):
            best = max((val for k, val in m.items() if k.startswith(f"{v}/") and k.endswith("/top1")), default=None)
            cells.append(f"{v} {'n/a' if best is None else _pct(best)}")
        return f"worst top-1 {_pct(m['worst_top1'])} (top-5 {_pct(m['worst_top5'])}); " + ", ".join(cells)

    from ..schemes import create, list_schemes

    opts = {"variants": ("glance",), "recognizers": ("eigenfaces",)} if r.quick else {}
    data = "{gallery} plain gallery / {probes} encrypted probe photos, {people} people"
    r.run("reidentify", "plain", "orl", fig, data, scheme=plain_baseline(), test_n=6, options=opts)
    names = ["pixel", "pixel-np", "etc", "le", "ele", "vit", "patch", "mix", "visualmixer", "noise", "instahide"]
    names += [n for n in list_schemes() if "+" in n]  # compositions
    for name in names[:2] if r.quick else names:
        r.run("reidentify", name, "orl", fig, data, test_n=6, options=opts)
    if not r.quick:
        r.run("reidentify", "visualmixer", "orl", fig, data, scheme=create("visualmixer", ws_min=2, ws_max=8),
              label="visualmixer ws 2..8 (seed)", test_n=6, options=opts)


def _instahide(r: _Runner) -> None:
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
        from ..schemes import create

        r.run("instahide", "instahide", "orl", fig, data, scheme=create("instahide", k=k), label=f"instahide k={k}",
              test_n=6, options=dict(opts))


_RUNNERS = {"reidentify": _reidentify, "chosen-plaintext": _chosen, "known-plaintext": _known, "ciphertext-only": _cot, "jigsaw": _jigsaw,
            "learned-inversion": _inversion, "membership": _membership, "key-from-model": _model_key,
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

    from ..keys import InsecureKeyWarning

    unknown = [s for s in sections if s not in _RUNNERS]
    if unknown:
        raise ValueError(f"unknown report sections {unknown}; choose from {', '.join(SECTIONS)}")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        key = Key.from_seed(seed)
    runner = _Runner(pictures, key, quick, log, reuse)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in sections:
        _RUNNERS[s](runner)
    total = (time.perf_counter() - t0, time.process_time() - c0)
    return _markdown(runner.rows, sections, quick, total, reused=runner.reused), runner.rows


def parse_report(text: str) -> list[Row]:
    """The measured rows of a report that :func:`security_report` wrote (for ``reuse``)."""
    rows: list[Row] = []
    section: str | None = None
    pictures: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"## (\S+) — `keyveil security-report --only (\S+)`", line)
        if m and m.group(1) == m.group(2):
            section = m.group(1)
            continue
        if line.startswith("## "):
            section = None
        if section is None:
            continue
        if line.startswith("Pictures: "):
            pictures[section] = re.findall(r"`([^`]+)`", line)
        elif line.startswith("| ") and not line.startswith("| scheme |"):
            cells = [c.strip() for c in line.strip()[1:-1].split(" | ")]
            if len(cells) == 6:
                name, dataset, figure, data, cpu, verdict = cells
                rows.append(Row(section, name, dataset, figure, data, float(cpu), verdict))
    for row in rows:  # a picture's name starts with its row's section, scheme and data set, in row order
        tag = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{row.section}-{row.scheme}-{row.dataset}").strip("-")
        pool = pictures.get(row.section, [])
        hit = next((q for q in pool if Path(q).name.startswith(f"security-{tag}")), "")
        if hit:
            pool.remove(hit)
            row.picture = hit
    return rows


_COMMAND = "keyveil security-report --output SECURITY.md"


def _markdown(rows: list[Row], sections: tuple[str, ...], quick: bool, total: tuple[float, float],
              reused: int = 0) -> str:
    out = [
        "# SECURITY — what each keyveil scheme protects against, measured",
        "",
        "<!-- generated by `keyveil security-report`; edit keyveil/attacks/report.py, not this file -->",
        "",
        (f"Every figure below was printed by `{_COMMAND}` (one run, "
         f"{total[0] / 60:.1f} min wall, {total[1] / 60:.1f} min CPU, " if not reused else
         f"Every figure below was printed by `{_COMMAND}`: {len(rows) - reused} of the {len(rows)} rows by "
         f"the latest run (`{_COMMAND} --reuse SECURITY.md`, {total[0] / 60:.1f} min wall, "
         f"{total[1] / 60:.1f} min CPU), which measured only the rows the previous report lacked and took the "
         f"other {reused} from it (their attack CPU seconds are that run's; "
         "`keyveil security-report --output SECURITY.md` alone measures every row again; ")
        + f"torch threads: {torch.get_num_threads()}, "
        f"{platform.machine()}, torch {torch.__version__}, run {datetime.date.today().isoformat()}). "
        "One section alone: "
        "`keyveil security-report --only SECTION` (the command is in each section's heading). "
        "Pictures (originals / encrypted / recovered) are written to `results/security-*.png` by the same "
        "command; they are not committed. Keys are `Key.from_seed(0)` so the figures reproduce; the attacks "
        "never read the key — only the scoring does.",
        "",
    ]
    if quick:
        out += ["**QUICK RUN (`--quick`): small sizes for testing; these are not the published figures.**", ""]
    out += _THREAT_MODEL
    out += ["## Which scheme falls to which attack", "",
            "| scheme | " + " | ".join(sections) + " |", "|---" * (len(sections) + 1) + "|"]
    schemes = list(dict.fromkeys(r.scheme for r in rows))
    for s in schemes:
        cells = []
        for sec in sections:
            hits = [r for r in rows if r.scheme == s and r.section == sec]
            worst: dict[str, Row] = {}  # per dataset, the most severe verdict (first such row: least data)
            for h in hits:
                if h.dataset not in worst or _severity(h.verdict) > _severity(worst[h.dataset].verdict):
                    worst[h.dataset] = h
            cells.append("; ".join(f"{h.verdict} ({h.dataset}: {h.figure.split(' (')[0]}; {h.data})"
                                   for h in worst.values()) or "—")
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    out += ["", "(— : attack not applicable or not run. 'plain' is no encryption. Each cell shows, per data set, "
            "the most severe result and the least attacker data that reached it; details below.)", ""]
    for sec in sections:
        sec_rows = [r for r in rows if r.section == sec]
        out += [f"## {sec} — `keyveil security-report --only {sec}`", "", _SECTION_TEXT[sec], "",
                "| scheme | data | measured | attacker's data | attack CPU s | verdict |",
                "|---|---|---|---|---|---|"]
        for r in sec_rows:
            out.append(f"| {r.scheme} | {r.dataset} | {r.figure} | {r.data} | {r.cpu_seconds:.2f} | {r.verdict} |")
        pics = [r.picture for r in sec_rows if r.picture]
        if pics:
            out += ["", "Pictures: " + ", ".join(f"`{p}`" for p in pics)]
        out.append("")
    out += _keyspace_table()
    return "\n".join(out) + "\n"


def _keyspace_table() -> list[str]:
    lines = ["## Key space (exhaustive search only)", "",
             "`keyveil.metrics.key_space_bits`, computed by the same command. The key space bounds brute force "
             "only; every keyed scheme here derives its permutations from a 256-bit secret, and the attacks "
             "above never search it. For the keyless per-image schemes (`patch`, `mix`, `visualmixer`) the figure "
             "counts one image's fresh randomness, not a key.", "", "| scheme | bits at 3×32×32 | bits at 3×224×224 |", "|---|---|---|"]
    for name in list_schemes():
        try:
            a, b = key_space_bits(name, (3, 32, 32)), key_space_bits(name, (3, 224, 224))
        except Exception as exc:  # a scheme that does not fit one size
            lines.append(f"| {name} | n/a ({type(exc).__name__}) | |")
            continue
        fmt = lambda v: "∞ (not a key)" if math.isinf(v) else f"{v:,.0f}"  # noqa: E731
        lines.append(f"| {name} | {fmt(a)} | {fmt(b)} |")
    return lines + [""]


_THREAT_MODEL = [
    "## Threat model",
    "",
    "- **Client**: owns the images and, for keyed schemes (`pixel`, `etc`, `le`, `ele`, `vit`), the key. "
    "It encrypts before anything leaves its hands.",
    "- **Server / model owner**: receives encrypted images only, trains or serves the model. It is the "
    "adversary we measure: honest-but-curious, it sees every ciphertext, knows every scheme's code "
    "(Kerckhoffs), and may obtain some plain images (public datasets, leaked pairs) or submit images to be "
    "encrypted (a chosen-plaintext oracle: e.g. a client app that encrypts whatever the camera sees).",
    "- **Keyed, fixed-key schemes** (`pixel`, `etc`, `le`, `ele`, `vit`) apply the *same* rearrangement "
    "to every image. They are substitution-free ciphers: each output value is one input value. "
    "They stop a human glancing at one image; they do **not** stop anyone with an encryption oracle "
    "(a handful of crafted images recover the whole key), a few known pairs, or, for `pixel`, many "
    "ciphertexts. Once the key is recovered, every past and future image is readable.",
    "- **Keyless per-image schemes** (`patch`, `mix`, `visualmixer`) use fresh randomness per image, so "
    "there is no key to recover; but the scheme is public, so anybody can make unlimited training pairs "
    "and learn to invert what the scheme leaves (patch contents, local statistics, window means). "
    "`patch` keeps every patch intact: a jigsaw solver reassembles it.",
    "- **A keyed model is the key.** A keyed CNN (and a checkpoint saved with key material) stores the key's "
    "permutations as buffers; anyone holding it reads the key off them, or recovers it by running the model "
    "on three probe images, in every mode. Only the key holder, or a party already trusted with the plain "
    "images, may hold a keyed model; serving one on an untrusted server gives that server the key.",
    "- **Obfuscations that are not ciphers** (`noise`, `instahide`): additive noise leaves the image "
    "in place; InstaHide's mixtures fall to Carlini et al.'s attack once the attacker sees each private image "
    "in several encodings, as a server does over training epochs (section instahide).",
    "- **Re-identification** is the question a user asks (\"can someone tell who is in my image?\"): every "
    "scheme is measured on AT&T faces against a glance, an adapted attacker, a learned inversion and key "
    "recovery (section reidentify); the weakest of these bounds the scheme's privacy.",
    "- **No scheme protects membership**: a model trained on encrypted data over-fits its training set as "
    "much as a plain one, so loss-threshold membership inference works the same.",
    "- Out of scope: side channels, the security of the machine holding the key, and formal privacy "
    "guarantees (none of these schemes gives one; use DP-SGD for that).",
    "",
]

_SECTION_TEXT = {
    "reidentify": "Can someone tell *who* is in an encrypted photo? AT&T faces (40 people, 112×92): the attacker "
                  "holds plain photos 1–5 of everyone (the gallery); the victims' photos 6–10 are encrypted with "
                  "the scheme's defaults (padded with zero columns where a block or patch size needs it). Top-1 "
                  "identification, chance 2.5 %; every figure is the best over two recognizers (eigenfaces: "
                  "PCA + nearest neighbour; a small CNN trained on the gallery) and over the views an attacker "
                  "tries (no processing, average pooling by 2–16, Gaussian blur σ 1–8). Variants: *glance* "
                  "(recognizers built on the plain gallery), *adapted* (the attacker scrambles its own gallery "
                  "with the public scheme — for keyed schemes through the encryption oracle — and matches in the "
                  "scrambled domain), *inverted* (a U-Net trained on self-made or oracle pairs of the gallery "
                  "undoes what it can), *key-recovery* (keyed schemes: chosen-plaintext recovers the key, the "
                  "probes are decrypted). A setting is as private as its worst variant. Attack `reidentify` "
                  "(`keyveil attack reidentify --scheme S`); the privacy–utility frontier over every scheme's "
                  "strength is `keyveil experiment frontier` (RESULTS.md). A fixed permutation is an isometry, "
                  "so with an oracle a keyed scheme's adapted attacker matches as well as on plain photos.",
    "chosen-plaintext": "Crafted images whose values spell each position's index in base 256 (base 16 per "
                        "nibble for LE/ELE), submitted to the encryption oracle; one black image more reveals "
                        "negative–positive flips when the decoded indices are not a permutation "
                        "(Jolfaei et al., IEEE TIFS 2016). The attack is generic: it treats the scheme as an "
                        "unknown permutation of the C·H·W values, so ⌈log_256(3·H·W)⌉ images; with "
                        "`spatial=True` (pixel's channel-shared permutation) ⌈log_256(H·W)⌉. The attack CPU "
                        "time includes the oracle encrypting the crafted images (and the scheme deriving its "
                        "permutation on first use).",
    "known-plaintext": "Pairs (plain, encrypted) under one `pixel` key; each encrypted position's values "
                       "across the pairs and channels are matched with the plain positions' "
                       "(Li et al., Signal Processing: Image Communication 2008). 'unique' counts positions "
                       "whose value vector occurs once; ties (flat backgrounds) are guessed. "
                       "Fashion-MNIST is 1×28×28 with large black backgrounds; photos are 3×224×224 "
                       "from `skimage.data`.",
    "ciphertext-only": "Correlations between encrypted positions across 10,000 Fashion-MNIST training "
                       "images under one `pixel` key; Isomap on the correlation k-NN graph, snapped to the "
                       "grid, then simulated annealing of the neighbour correlation (30 s CPU). Scored on 500 "
                       "test images. Correlations cannot tell left from right, so SSIM is reported for the "
                       "best of the 8 grid symmetries (what a viewer picks at a glance; 'raw' without). Half the "
                       "neighbours come out right but the recovered images are still far from the originals "
                       "(low SSIM): our layout step is the weak part (the top-correlated position is a true "
                       "neighbour for 97 % of positions), so better layout solvers would leak more. The "
                       "annealing is time-bounded, so figures vary slightly between runs and machines.",
    "jigsaw": "Greedy jigsaw solver with a gradient-prediction edge compatibility, trying all 8 rotations/"
              "flips, negation and 6 channel orders per piece for EtC (Chuman, Kurihara, Kiya 2017). "
              "Scores are the best over the global symmetries the solver cannot tell apart; 'direct' = "
              "blocks in their place, 'neighbour' = adjacent pairs rejoined (both by block content). "
              "'holds' means *this* simple greedy solver failed, not that the scheme is safe: published "
              "solvers (loop constraints, genetic search) do better, above all on larger images with more "
              "texture per block.",
    "learned-inversion": "A two-level U-Net (width 8) trained on (encrypted, plain) pairs that the attacker "
                         "makes itself with the public scheme code and fresh randomness per epoch; scored "
                         "on held-out images (Fashion-MNIST test set; AT&T/ORL faces of people 36–40, never "
                         "seen in training, centre-cropped to 96×80). The baseline is the SSIM of the "
                         "encrypted image itself.",
    "key-from-model": "Who must not hold a keyed model: anyone who must not read the client's images. A keyed CNN "
                      "(`keyveil.models.keyed`) runs the plain weights on scrambled maps, so it stores where "
                      "every pixel went; the keyed model, or a checkpoint saved with "
                      "`save_keyed(..., include_key_material=True)`, *is* the key. Only the key holder, or a party "
                      "already trusted with the plain images, may hold one; serving the keyed model on an "
                      "untrusted server gives that server the key, and with it every past and future image. "
                      "Keep keyed models on the client side; hand out checkpoints saved with `save_keyed`'s "
                      "default (plain weights and the key's fingerprint only: the attack finds nothing in them, "
                      "and they need the key to load). Attack `key-from-model` (`keyveil.attacks.KeyFromModel`) "
                      "on the victim's keyed small CNN (random weights: the attack uses no trained value): "
                      "'buffers' reads the un-scramble permutation (input and "
                      "features modes) or rebuilds the layout from the first deformable convolution's tap table "
                      "(deformable mode: neighbouring taps are neighbouring pixels); 'probe' reads no buffer: "
                      "it runs the model on ⌈log_256(H·W+1)⌉ images spelling each scrambled position plus one "
                      "black image and solves the first convolution's linear response for its taps, using only "
                      "the weights and activations that anyone running the model has. A purely remote attacker "
                      "that sees only logits is not covered. The checkpoint rows attack the file itself "
                      "(buffers) or the model `load_keyed` builds from it (probe). The attack CPU time includes "
                      "decrypting the test images.",
    "instahide": "Carlini et al., \"Is private learning possible with instance encoding?\" (S&P 2021), on "
                 "InstaHide (inside-dataset: each encoding mixes k private faces with coefficients ≤ 0.65 and a "
                 "random sign per value). The server sees what training shows it: the 200 private faces (AT&T "
                 "photos 6–10) encoded once per epoch in shuffled batches of 50, for 10 epochs, so each face "
                 "is in about k·10 encodings. The attack (`keyveil.attacks.InstaHideAttack`, our reading): "
                 "|encoding| undoes the sign flip; each encoding's 10 most correlated |encodings| are "
                 "averaged (they mostly share a face with it, the rest averages out); neighbourhoods are "
                 "taken by cohesion and merged when they show the same face, at most 200; a per-pixel affine "
                 "map fitted on the attacker's own encodings of public faces (photos 1–5) undoes the fold "
                 "|2v − 1|. Each cluster is scored against the private face most of its encodings contain "
                 "(purity = that fraction; the share of faces recovered is the coverage): SSIM against "
                 "the encodings' own SSIM, and top-1 re-identification by the recognizers of section "
                 "reidentify built on the public photos (recovered images vs the encodings shown as images; "
                 "chance 2.5 %). The average public face already scores a fair SSIM against any private face "
                 "(shown as 'mean face'), so SSIM alone flatters; re-identification says whether the recovered "
                 "face is *that* person.",
    "membership": "A small CNN trained on Fashion-MNIST members as the server sees them (encrypted once); "
                  "loss-threshold attack (Yeom et al. 2018) on members vs as many test-set non-members, "
                  "queried encrypted the same way. AUC 0.5 = no leak.",
}


