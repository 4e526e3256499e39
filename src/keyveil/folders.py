"""Encrypting and decrypting image files and folder trees: exact or refused, resumable, never clobbering.

:func:`process_tree` is what ``keyveil encrypt`` / ``keyveil decrypt`` run:

- the source is never written to; outputs are lossless PNGs written atomically;
- every encrypted PNG carries a :class:`~keyveil.cipherfile.CipherHeader` (scheme,
  options, key fingerprint, a fresh random nonce for per-image schemes, pixel
  digests), so a file decrypts exactly wherever it is moved or renamed, alone or in a
  sub-folder, and a wrong key, scheme, option or an edited file is refused per file
  with the reason — nothing is written for it;
- a folder holds the outputs of one job (scheme, options, key): a manifest records it
  and mixing is refused; ``overwrite`` with another job re-encrypts the whole folder and
  removes every output of the old job, so the manifest never lies;
- a finished output of the same job and source is skipped on a re-run (a killed job
  resumes); any other existing file is reported, never replaced without ``overwrite``;
- outputs that would protect nothing are errors: a scheme that mixes images of a batch
  (``instahide``) cannot run file by file, and an output equal to its input is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .atomic import write_atomic
from .cipherfile import CipherHeader, fresh_nonce, read_header
from .errors import KeyveilError
from .imageio import IMAGE_SUFFIXES, ImageFileError, list_images, read_image, write_png_atomic
from .schemes import Scheme, SchemeError

__all__ = ["JobReport", "FolderJobError", "process_tree", "plan_outputs", "check_folder_scheme", "MANIFEST_NAME"]

MANIFEST_NAME = ".keyveil-manifest.json"
MANIFEST_VERSION = 2


class FolderJobError(KeyveilError):
    """A file or folder job cannot run as asked (destination of another job, unsafe scheme...)."""


@dataclass
class JobReport:
    """What a folder job did: files written, skipped as finished, removed, and failed (with reasons)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        line = (f"{len(self.written)} written, {len(self.skipped)} already done (skipped), "
                f"{len(self.failed)} failed")
        if self.removed:
            line += f", {len(self.removed)} outputs of the previous job removed"
        lines = [line]
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
        if dst.is_dir() or (not dst.exists() and dst.suffix.lower() != ".png"):
            if dst.suffix.lower() in IMAGE_SUFFIXES:
                raise FolderJobError(f"outputs are lossless PNG files: name the output {dst.with_suffix('.png')}")
            out = dst / (src.stem + ".png")
        else:
            out = dst
        return [(src, out, src.name)], []
    if not src.is_dir():
        raise FileNotFoundError(f"source {src} does not exist")
    if dst == src or _inside(dst, src):
        raise FolderJobError(f"the destination {dst} is inside the source {src}; keyveil never writes into the source")
    if _inside(src, dst):
        raise FolderJobError(f"the source {src} is inside the destination {dst}; choose a separate destination")
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


# -- which schemes can run file by file ----------------------------------------------------------------------

def check_folder_scheme(scheme: Scheme) -> None:
    """Refuse a scheme whose file-by-file output would protect nothing or could not be undone.

    Raises:
        FolderJobError: the scheme mixes images of a batch (each file would be mixed
            only with itself), or a key was given to a keyless scheme for which it
            does nothing (its randomness is fresh per image and not kept).
    """
    if getattr(scheme, "mixes_batch", False):
        raise FolderJobError(
            f"scheme {scheme.name!r} mixes every image with other private images of its batch, but file jobs "
            "encrypt one image at a time: each would be mixed only with itself and only a sign flip would remain "
            "(the photo is recovered exactly from |v - 128|). Mix in a public set instead (--option "
            "public=FOLDER --option k_private=1), or encrypt batches in Python (encrypt_with_labels) or train "
            "with `keyveil train --scheme instahide`"
        )
    if scheme.key is not None and not type(scheme).needs_key and not scheme.invertible:
        raise FolderJobError(
            f"scheme {scheme.name!r} takes no key: its randomness is fresh for every image and is not kept, so a "
            "key would neither make it reproducible nor decryptable; drop --key"
        )


# -- one file --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _FileJob:
    src: Path
    out: Path
    decrypt: bool
    mode: str
    overwrite: bool
    resume: bool  # an existing output may be a finished output of this job (the folder's manifest matches)


def _existing_output(scheme: Scheme, job: _FileJob, plain: torch.Tensor | None) -> str | None:
    """``None`` if the existing output is this job's finished work on this source, else why it blocks."""
    refuse = "; pass --overwrite to replace it, or choose another destination"
    if job.decrypt:
        return None if job.resume else f"{job.out} already exists{refuse}"
    header = read_header(job.out)
    if header is None:
        return f"{job.out} already exists and is not a keyveil ciphertext{refuse}"
    if not header.same_job(scheme):
        return (f"{job.out} already exists and holds a ciphertext of scheme {header.scheme!r}, key "
                f"{header.key_fingerprint}{refuse}")
    if scheme.key is not None and plain is not None and not header.confirms(scheme, plain):
        return f"{job.out} already exists but was encrypted from a different image (the source changed?){refuse}"
    return None


def _process_one(scheme: Scheme, job: _FileJob) -> tuple[Path, str, str | None]:
    """Encrypt or decrypt one file; returns ``(source, "written" | "skipped" | "failed", reason)``."""
    try:
        if job.decrypt:
            return _decrypt_one(scheme, job)
        x = read_image(job.src, job.mode)
        if job.out.exists() and not job.overwrite:
            reason = _existing_output(scheme, job, x)
            return (job.src, "skipped", None) if reason is None else (job.src, "failed", reason)
        nonce = fresh_nonce() if scheme.per_image and scheme.key is not None else None
        y = scheme.encrypt(x, nonce=nonce) if nonce is not None else scheme.encrypt(x)
        if torch.equal(x, y):
            return job.src, "failed", (
                f"its ciphertext equals the image itself (scheme {scheme.name!r} with these options changes "
                "nothing here, e.g. a uniform image or a single patch), so it would protect nothing; nothing written")
        header = CipherHeader.for_output(scheme, plain=x, cipher=y, nonce=nonce)
        write_png_atomic(y, job.out, pnginfo=header.pnginfo())
        return job.src, "written", None
    except (ImageFileError, SchemeError) as exc:
        return job.src, "failed", str(exc)
    except OSError as exc:
        return job.src, "failed", f"could not be written: {exc}"


def _decrypt_one(scheme: Scheme, job: _FileJob) -> tuple[Path, str, str | None]:
    if job.out.exists() and not job.overwrite:
        reason = _existing_output(scheme, job, None)
        return (job.src, "skipped", None) if reason is None else (job.src, "failed", reason)
    header = read_header(job.src)
    if header is None:
        return job.src, "failed", (
            "has no keyveil header: it was not written by `keyveil encrypt` (or was re-saved by another "
            "program), so its decryption could not be checked; nothing written")
    y = read_image(job.src)
    reason = header.refusal(scheme, y)
    if reason is not None:
        return job.src, "failed", reason + "; nothing written"
    x = scheme.decrypt(y, nonce=header.nonce) if scheme.per_image else scheme.decrypt(y)
    if header.plain_check is not None and not header.confirms(scheme, x):
        return job.src, "failed", "its decryption does not match the check stored at encryption; nothing written"
    write_png_atomic(x, job.out)
    return job.src, "written", None


_worker_scheme: Scheme | None = None


def _init_worker(scheme: Scheme) -> None:
    global _worker_scheme
    torch.set_num_threads(1)
    _worker_scheme = scheme


def _worker_job(job: _FileJob) -> tuple[Path, str, str | None]:
    assert _worker_scheme is not None
    return _process_one(_worker_scheme, job)


def _remove_stale_temps(root: Path) -> None:
    if root.is_dir():
        for tmp in root.rglob(".*.keyveil-tmp"):
            tmp.unlink(missing_ok=True)


# -- the folder's manifest -------------------------------------------------------------------------------------

def _job_info(scheme: Scheme, decrypt: bool) -> dict[str, Any]:
    cfg = scheme.config
    return {"direction": "decrypt" if decrypt else "encrypt", "scheme": cfg["scheme"],
            "params": json.loads(json.dumps(cfg["params"])), "key_fingerprint": cfg["key_fingerprint"]}


def _find_manifest(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The nearest manifest in ``start`` or a folder above it: ``(folder, its job)``."""
    folder = start.resolve()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    for here in (folder, *folder.parents):
        manifest = here / MANIFEST_NAME
        if manifest.is_file():
            try:
                info = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError):
                raise FolderJobError(f"{manifest} is unreadable; remove it or choose another destination") from None
            return here, {k: info.get(k) for k in ("direction", "scheme", "params", "key_fingerprint")}
    return None


def _describe_job(info: dict[str, Any]) -> str:
    opts = f" {info['params']}" if info.get("params") else ""
    return f"{info.get('direction')} with scheme {info.get('scheme')!r}{opts}, key {info.get('key_fingerprint')}"


def _check_destination(job_info: dict[str, Any], dst_folder: Path, *, covers_folder: bool,
                       overwrite: bool) -> tuple[bool, bool]:
    """Refuse to mix jobs in one folder; returns (a manifest of this job is there, this job replaces another's)."""
    found = _find_manifest(dst_folder)
    if found is None or found[1] == job_info:
        return found is not None, False
    folder, old = found
    if not overwrite:
        raise FolderJobError(
            f"{folder} holds the outputs of another job ({_describe_job(old)}), not {_describe_job(job_info)}: "
            "a folder holds one scheme, options and key. Use a new destination, or --overwrite to re-encrypt the "
            "whole folder and remove the old job's outputs"
        )
    if not (covers_folder and folder == dst_folder.resolve()):
        raise FolderJobError(
            f"{folder} holds the outputs of another job ({_describe_job(old)}); --overwrite can replace them only "
            f"when the whole folder is redone (keyveil {job_info['direction']} SRC_FOLDER {folder}); use a new "
            "destination for this file"
        )
    return False, True


def _remove_other_jobs(scheme: Scheme, paths: list[Path], report: JobReport) -> None:
    """Delete every ciphertext among ``paths`` that another job (scheme, options, key) wrote."""
    for path in paths:
        header = read_header(path) if path.is_file() else None
        if header is not None and not header.same_job(scheme):
            path.unlink()
            report.removed.append(path)


def _write_manifest(dst: Path, job_info: dict[str, Any]) -> None:
    """Record which job fills ``dst``: scheme, options and key fingerprint, never the secret."""
    info = {"format": "keyveil-folder", "version": MANIFEST_VERSION, **job_info}
    write_atomic(dst / MANIFEST_NAME, json.dumps(info, indent=2) + "\n", overwrite=True)


# -- the job ---------------------------------------------------------------------------------------------------

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
        decrypt: undo the scheme instead of applying it (each file is checked
            against its header first; a mismatch fails that file, naming why).
        overwrite: redo and replace outputs that already exist; with a folder of
            another job, re-encrypt the whole folder and remove the old outputs.
        workers: processes to use (1 = this process).
        mode: ``"auto"``, ``"L"`` or ``"RGB"`` (see :func:`keyveil.imageio.read_image`);
            encrypt only.
        progress: show a progress bar.

    Returns:
        A :class:`JobReport`; ``report.ok`` is false if any file failed.

    Raises:
        FolderJobError: the destination holds another job's outputs, the scheme
            cannot run file by file, or the paths overlap.

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
        >>> moved = (tmp / "enc" / "a.png").rename(tmp / "moved.png")  # files decrypt wherever they are
        >>> process_tree(s, tmp / "moved.png", tmp / "dec", decrypt=True, progress=False).ok
        True
        >>> torch.equal(read_image(tmp / "dec" / "moved.png"), read_image(tmp / "in" / "a.png"))
        True
        >>> wrong = schemes.create("pixel", Key.generate())
        >>> r = process_tree(wrong, tmp / "moved.png", tmp / "dec2", decrypt=True, progress=False)
        >>> r.ok, "was encrypted with key" in r.failed[0][1], (tmp / "dec2" / "moved.png").exists()
        (False, True, False)
    """
    if decrypt and not scheme.invertible:
        raise SchemeError(scheme.not_invertible_reason())
    if decrypt and mode != "auto":
        raise FolderJobError("decrypt reads each ciphertext as it was written; --mode applies to encrypt only")
    if workers < 1:
        raise FolderJobError(f"workers must be at least 1, got {workers}")
    check_folder_scheme(scheme)
    src_p, dst_p = Path(src), Path(dst)
    if src_p.is_file() and dst_p.resolve() == src_p.resolve():
        raise FolderJobError("the output would replace the source file; choose another destination")
    jobs, problems = plan_outputs(src_p, dst_p)
    if not jobs and not problems:
        raise FolderJobError(f"no image files in {src_p} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, "
                             "hidden files skipped)")
    report = JobReport(failed=list(problems))
    job_info = _job_info(scheme, decrypt)
    covers = src_p.is_dir()
    dst_folder = dst_p if covers else jobs[0][1].parent
    resume, replacing = _check_destination(job_info, dst_folder, covers_folder=covers, overwrite=overwrite)
    outputs = {out for _, out, _ in jobs}
    if covers:
        dst_p.mkdir(parents=True, exist_ok=True)
        if replacing and not decrypt:  # old outputs without a source now; the others are rewritten below
            _remove_other_jobs(scheme, [p for p in list_images(dst_p) if p not in outputs], report)
        else:
            _write_manifest(dst_p, job_info)
        _remove_stale_temps(dst_p)
    todo = [_FileJob(s, o, decrypt, mode, overwrite or (replacing and decrypt), resume) for s, o, _ in jobs]
    results: Iterator[tuple[Path, str, str | None]]
    if workers > 1 and len(todo) > 1:
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(scheme,))
        results = pool.map(_worker_job, todo, chunksize=max(1, len(todo) // (8 * workers)))
    else:
        pool = None
        results = (_process_one(scheme, job) for job in todo)
    path_out = {job.src: job.out for job in todo}
    bar: Callable = tqdm if progress else (lambda it, **_: it)
    try:
        for path, status, reason in bar(results, total=len(todo), desc="decrypt" if decrypt else "encrypt",
                                        unit="img"):
            if status == "written":
                report.written.append(path_out[path])
            elif status == "skipped":
                report.skipped.append(path_out[path])
            else:
                report.failed.append((path, reason or "failed"))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if replacing and covers:
        if not decrypt:  # a source that failed now must not leave the old job's ciphertext behind
            _remove_other_jobs(scheme, [path_out[src] for src, _ in report.failed if src in path_out], report)
        _write_manifest(dst_p, job_info)  # only now is every output this job's
    return report
