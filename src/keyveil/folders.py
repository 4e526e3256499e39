"""Encrypting and decrypting image files and folder trees, safely and resumably.

:func:`process_tree` is what ``keyveil encrypt`` / ``keyveil decrypt`` run:
the source is never written to, outputs are lossless PNGs written atomically
(temp file + rename), finished outputs are skipped on a re-run (so a killed
job resumes), existing outputs are never overwritten unless asked, and every
file that cannot be processed is reported with its reason while the rest go on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .imageio import ImageFileError, list_images, read_image, write_png_atomic
from .schemes import Scheme, SchemeError

__all__ = ["JobReport", "process_tree", "nonce_for", "plan_outputs", "MANIFEST_NAME"]

MANIFEST_NAME = ".keyveil-manifest.json"


def nonce_for(relative_path: str) -> int:
    """The per-image nonce of a file: 63 bits of SHA-256 of its relative path.

    Per-image schemes with a key use it, so the same tree encrypts the same way
    every time and ``decrypt`` can undo it (``patch``).
    """
    digest = hashlib.sha256(relative_path.replace(os.sep, "/").encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class JobReport:
    """What a folder job did: files written, skipped as finished, and failed (with reasons)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [f"{len(self.written)} written, {len(self.skipped)} already done (skipped), "
                 f"{len(self.failed)} failed"]
        for path, reason in self.failed:
            lines.append(f"  FAILED {path}: {reason}")
        return "\n".join(lines)


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def plan_outputs(src: Path, dst: Path) -> tuple[list[tuple[Path, Path, str]], list[tuple[Path, str]]]:
    """Pair every source image with its output path.

    Returns ``(jobs, problems)``: jobs are ``(source, output, relative name)``;
    problems are sources whose outputs would collide (``a.jpg`` and ``a.png``
    both map to ``a.png``).
    """
    src, dst = src.resolve(), dst.resolve()
    if src.is_file():
        out = dst / (src.stem + ".png") if dst.is_dir() else dst
        return [(src, out, src.name)], []
    if not src.is_dir():
        raise FileNotFoundError(f"source {src} does not exist")
    if dst == src or _inside(dst, src):
        raise ValueError(f"the destination {dst} is inside the source {src}; keyveil never writes into the source")
    if _inside(src, dst):
        raise ValueError(f"the source {src} is inside the destination {dst}; choose a separate destination")
    jobs, problems, seen = [], [], {}
    for path in list_images(src):
        rel = path.relative_to(src)
        out = dst / rel.with_suffix(".png")
        if out in seen:
            problems.append((path, f"its output {out} would collide with that of {seen[out]}; rename one"))
            continue
        seen[out] = path
        jobs.append((path, out, str(rel)))
    return jobs, problems


_worker_scheme: Scheme | None = None


def _init_worker(scheme: Scheme) -> None:
    global _worker_scheme
    import torch

    torch.set_num_threads(1)
    _worker_scheme = scheme


def _process_one(
    scheme: Scheme, src: Path, out: Path, rel: str, decrypt: bool, mode: str
) -> tuple[Path, str | None]:
    try:
        x = read_image(src, mode)
        kw = {}
        if scheme.per_image and scheme.key is not None:
            kw["nonce"] = nonce_for(rel)
        y = scheme.decrypt(x, **kw) if decrypt else scheme.encrypt(x, **kw)
        write_png_atomic(y, out)
        return src, None
    except (ImageFileError, SchemeError) as exc:
        return src, str(exc)
    except OSError as exc:
        return src, f"could not be written: {exc}"


def _worker_job(args: tuple[Path, Path, str, bool, str]) -> tuple[Path, str | None]:
    assert _worker_scheme is not None
    return _process_one(_worker_scheme, *args)


def _remove_stale_temps(root: Path) -> None:
    if root.is_dir():
        for tmp in root.rglob(".*.keyveil-tmp"):
            tmp.unlink(missing_ok=True)


def process_tree(
    scheme: Scheme,
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    decrypt: bool = False,
    overwrite: bool = False,
    workers: int = 1,
    mode: str = "auto",
    progress: bool = True,
) -> JobReport:
    """Encrypt (or decrypt) an image file or a folder tree into ``dst`` as PNGs.

    Args:
        scheme: the scheme to apply.
        src: an image file or a folder (walked recursively, tree kept).
        dst: output file or folder (created); never inside ``src``.
        decrypt: undo the scheme instead of applying it.
        overwrite: redo and replace outputs that already exist; otherwise
            existing outputs are taken as finished and skipped.
        workers: processes to use (1 = this process).
        mode: ``"auto"``, ``"L"`` or ``"RGB"`` (see :func:`keyveil.imageio.read_image`).
        progress: show a progress bar.

    Returns:
        A :class:`JobReport`; ``report.ok`` is false if any file failed.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from keyveil import Key, schemes
        >>> from keyveil.imageio import write_png_atomic, read_image
        >>> tmp = Path(tempfile.mkdtemp())
        >>> write_png_atomic(torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8), tmp / "in" / "a.png")
        >>> s = schemes.create("pixel", Key.generate())
        >>> process_tree(s, tmp / "in", tmp / "enc", progress=False).ok
        True
        >>> process_tree(s, tmp / "enc", tmp / "dec", decrypt=True, progress=False).ok
        True
        >>> torch.equal(read_image(tmp / "dec" / "a.png"), read_image(tmp / "in" / "a.png"))
        True
    """
    if decrypt and not scheme.invertible:
        raise SchemeError(scheme.not_invertible_reason())
    src_p, dst_p = Path(src), Path(dst)
    if src_p.is_file() and dst_p.resolve() == src_p.resolve():
        raise ValueError("the output would replace the source file; choose another destination")
    if decrypt and src_p.is_dir():
        _check_source_manifest(scheme, src_p)
    jobs, problems = plan_outputs(src_p, dst_p)
    report = JobReport(failed=list(problems))
    if src_p.is_dir():
        dst_p.mkdir(parents=True, exist_ok=True)
        _write_manifest(scheme, dst_p, decrypt, overwrite)
        _remove_stale_temps(dst_p)
    todo = []
    for s, o, rel in jobs:
        if o.exists() and not overwrite:
            report.skipped.append(o)
        else:
            todo.append((s, o, rel, decrypt, mode))
    results: Iterator[tuple[Path, str | None]]
    if workers > 1 and len(todo) > 1:
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(scheme,))
        results = pool.map(_worker_job, todo, chunksize=max(1, len(todo) // (8 * workers)))
    else:
        pool = None
        results = (_process_one(scheme, *job) for job in todo)
    outputs = {job[0]: job[1] for job in todo}
    bar: Callable = tqdm if progress else (lambda it, **_: it)
    try:
        for path, error in bar(results, total=len(todo), desc="decrypt" if decrypt else "encrypt", unit="img"):
            if error is None:
                report.written.append(outputs[path])
            else:
                report.failed.append((path, error))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return report


def _write_manifest(scheme: Scheme, dst: Path, decrypt: bool, overwrite: bool) -> None:
    """Record (or check) which scheme and key produced an encrypted folder.

    Holds only the scheme config and the key fingerprint, never the secret.
    Refuses to mix outputs of different schemes or keys in one folder.
    """
    manifest = dst / MANIFEST_NAME
    info = {"format": "keyveil-folder", "version": 1, "direction": "decrypt" if decrypt else "encrypt",
            **scheme.config}
    if manifest.exists() and not overwrite:
        try:
            old = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old is not None and old != info:
            raise ValueError(
                f"{dst} already holds output of a different job ({old.get('direction')} with scheme "
                f"{old.get('scheme')!r}, key {old.get('key_fingerprint')}); use a new destination "
                "or --overwrite"
            )
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, manifest)


def _check_source_manifest(scheme: Scheme, src: Path) -> None:
    """Before decrypting a folder, check it was encrypted with this scheme and key."""
    manifest = src / MANIFEST_NAME
    if not manifest.exists():
        return
    try:
        info = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return
    mine = scheme.config
    if info.get("direction") != "encrypt":
        return
    if info.get("key_fingerprint") != mine["key_fingerprint"]:
        raise ValueError(
            f"{src} was encrypted with key {info.get('key_fingerprint')}, but the key given is "
            f"{mine['key_fingerprint']}; pass the key that encrypted it"
        )
    if info.get("scheme") != mine["scheme"] or info.get("params") != mine["params"]:
        raise ValueError(
            f"{src} was encrypted with scheme {info.get('scheme')!r} {info.get('params')}, not "
            f"{mine['scheme']!r} {mine['params']}; pass the same --scheme and options"
        )
