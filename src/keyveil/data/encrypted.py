"""Encrypted views of datasets: any scheme applied on the fly, or a folder made by ``keyveil encrypt``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch

from ..schemes import Scheme
from .base import ImageDataset
from .registry import create_dataset

__all__ = ["EncryptedDataset", "encrypted_folder", "TEST_NONCE_OFFSET"]

#: Nonce offset of test splits, so train image ``i`` and test image ``i`` get different randomness.
TEST_NONCE_OFFSET = 1 << 40


class EncryptedDataset(ImageDataset):
    """``base`` with ``scheme`` applied to every image as it is fetched.

    The scheme runs on the uint8 images, so the result is exactly what
    ``keyveil encrypt`` would write. Batches fetched through ``DataLoader``
    (which calls ``__getitems__``) are encrypted with one batched call. The
    wrapper is picklable, so it works in ``DataLoader`` workers.

    Args:
        base: the plain dataset.
        scheme: any scheme from :func:`keyveil.schemes.create`.
        randomness: for per-image schemes, ``"nonce"`` uses the key and the
            nonce ``nonce_offset + index`` (the same image always encrypts the
            same way: reproducible); ``"fresh"`` draws new randomness every time
            an image is fetched (a new scrambling every epoch, as Hao et al. and
            VisualMixer train). Keyless per-image schemes always use fresh
            randomness. Ignored for fixed-key schemes.
        nonce_offset: added to the index to form the nonce.

    Examples:
        >>> import torch
        >>> from keyveil import Key, schemes
        >>> from keyveil.data import EncryptedDataset, TensorImageDataset
        >>> plain = TensorImageDataset(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8),
        ...                            torch.arange(6) % 2, name="toy", split="train", classes=["a", "b"])
        >>> s = schemes.create("pixel", Key.generate())
        >>> enc = EncryptedDataset(plain, s)
        >>> x, y = enc[3]
        >>> bool(torch.equal(s.decrypt(x), plain[3][0])), y
        (True, 1)
    """

    def __init__(self, base: ImageDataset, scheme: Scheme, *, randomness: Literal["nonce", "fresh"] = "nonce",
                 nonce_offset: int = 0) -> None:
        if randomness not in ("nonce", "fresh"):
            raise ValueError(f"randomness must be 'nonce' or 'fresh', got {randomness!r}")
        scheme.check_geometry((base.channels, *base.size))
        scheme.prepare(torch.uint8)  # before DataLoader workers fork: they inherit compiled kernels
        self.base, self.scheme = base, scheme
        self.randomness, self.nonce_offset = randomness, int(nonce_offset)
        self.name, self.split, self.classes = base.name, base.split, list(base.classes)
        self.channels, self.size = base.channels, base.size

    @property
    def targets(self) -> torch.Tensor:
        return self.base.targets

    @property
    def uses_nonces(self) -> bool:
        return self.scheme.per_image and self.scheme.key is not None and self.randomness == "nonce"

    def __len__(self) -> int:
        return len(self.base)

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        indices = [int(i) for i in indices]
        x, y = self.base.get_batch(indices)
        if self.uses_nonces:
            return self.scheme.encrypt(x, nonce=[self.nonce_offset + i for i in indices]), y
        return self.scheme.encrypt(x), y

    def subset(self, indices) -> ImageDataset:
        """A view of ``indices`` whose images keep the nonces they have here."""
        return EncryptedSubset(self, indices)

    def __repr__(self) -> str:
        return f"EncryptedDataset({self.base!r}, scheme={self.scheme.config['scheme']!r})"


class EncryptedSubset(ImageDataset):
    """Some images of an :class:`EncryptedDataset`, keeping their original nonces."""

    def __init__(self, parent: EncryptedDataset, indices) -> None:
        self.parent, self.indices = parent, torch.as_tensor(indices, dtype=torch.int64)
        self.name, self.split, self.classes = parent.name, parent.split, list(parent.classes)
        self.channels, self.size = parent.channels, parent.size

    def __len__(self) -> int:
        return self.indices.numel()

    def get_batch(self, indices):
        return self.parent.get_batch(self.indices[torch.as_tensor(list(indices), dtype=torch.int64)].tolist())


def encrypted_folder(path: str | os.PathLike[str], split: str = "train", **options) -> ImageDataset:
    """A dataset from a folder tree written by ``keyveil encrypt`` (one sub-folder per class).

    The images are used as they are (already encrypted). The folder's manifest
    (scheme, options and key fingerprint, never the secret) is available as
    ``dataset.manifest``; it is ``None`` if the folder was not made by keyveil.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from keyveil import Key, schemes
        >>> from keyveil.folders import process_tree
        >>> from keyveil.imageio import write_png_atomic
        >>> tmp = Path(tempfile.mkdtemp())
        >>> for c in ("cat", "dog"):
        ...     for i in range(5):
        ...         write_png_atomic(torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8), tmp / "src" / c / f"{i}.png")
        >>> s = schemes.create("pixel", Key.from_seed(1))
        >>> process_tree(s, tmp / "src", tmp / "enc", progress=False).ok
        True
        >>> ds = encrypted_folder(tmp / "enc", "all")
        >>> len(ds), ds.classes, ds.manifest["key_fingerprint"] == s.key.fingerprint
        (10, ['cat', 'dog'], True)
    """
    return create_dataset("imagefolder", split, data_dir=path, **options)
