"""One way to write a file: atomically, with the right permissions, never clobbering by accident.

Keys, key-equivalent checkpoints, training checkpoints, folder manifests and image
outputs all go through :func:`write_atomic`: the content goes to a temp file in the
same folder, is flushed to disk, gets its final mode, and is renamed over the target
in one step, so a crash leaves either the old file or the complete new one.

``secret=True`` gives mode 0600 from the first byte (the temp file is created 0600
and never widened); otherwise the file gets the usual ``0666 & ~umask``.
``overwrite=False`` refuses an existing target (checked again at the rename, so two
writers cannot both win).

Examples:
    >>> import tempfile, os, stat
    >>> from pathlib import Path
    >>> p = Path(tempfile.mkdtemp()) / "secret.json"
    >>> write_atomic(p, b"{}", secret=True) == p
    True
    >>> oct(stat.S_IMODE(os.stat(p).st_mode))
    '0o600'
    >>> write_atomic(p, b"{}")
    Traceback (most recent call last):
    ...
    FileExistsError: ... already exists; pass overwrite=True (--overwrite) to replace it
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["write_atomic", "save_torch_atomic"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | str | Callable[[IO[bytes]], Any],
    *,
    secret: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``data`` (bytes, text, or a function that writes to a binary file) to ``path``.

    Args:
        path: the target file; its folder is created.
        data: the content, or ``writer(fh)`` for streaming writers (``torch.save``, PIL).
        secret: the file is as secret as a key: mode 0600 throughout.
        overwrite: replace an existing file; otherwise :class:`FileExistsError`.

    Returns:
        The path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        IsADirectoryError: ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".keyveil-tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600 if secret else 0o666 & ~_UMASK)
        if overwrite:
            os.replace(tmp, path)
        else:
            _rename_no_clobber(tmp, path)
    except FileExistsError:
        Path(tmp).unlink(missing_ok=True)
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _rename_no_clobber(tmp: str, path: Path) -> None:
    """Rename ``tmp`` to ``path`` unless ``path`` exists (a hard link fails if it appeared meanwhile)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: check, then rename
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def save_torch_atomic(
    obj: Any, path: str | os.PathLike[str], *, secret: bool = False, overwrite: bool = False
) -> Path:
    """``torch.save(obj)`` through :func:`write_atomic` (same options)."""
    import torch

    return write_atomic(path, lambda fh: torch.save(obj, fh), secret=secret, overwrite=overwrite)
