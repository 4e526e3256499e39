"""The dataset registry: a decorator registers a source, :func:`create_dataset` loads by name."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import KeyveilError
from .base import ImageDataset

__all__ = ["DatasetSource", "Availability", "DatasetUnavailableError", "UnknownDatasetError",
           "register_dataset", "create_dataset", "dataset_source", "list_datasets"]


class UnknownDatasetError(KeyveilError):
    """No dataset is registered under that name."""


class DatasetUnavailableError(KeyveilError):
    """The dataset's files are not on this machine; the message says how to get them."""


@dataclass(frozen=True)
class Availability:
    """Whether a dataset can be loaded here, and why (not)."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


class DatasetSource:
    """Where a dataset's files live and how to read them.

    Subclasses set the class attributes and implement :meth:`available` and
    :meth:`_load`. ``data_dir`` is the user's ``--data-dir`` (may be None).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    num_classes: ClassVar[int] = 0
    channels: ClassVar[int] = 0
    size: ClassVar[tuple[int, int] | None] = None
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        if options:
            raise ValueError(f"dataset {self.name!r} takes no options, got {sorted(options)}")

    def available(self) -> Availability:
        raise NotImplementedError

    def load(self, split: str = "train") -> ImageDataset:
        """Load ``split``; raises :class:`DatasetUnavailableError` with instructions if absent."""
        if split not in self.splits:
            raise ValueError(f"dataset {self.name!r} has splits {', '.join(self.splits)}; got {split!r}")
        avail = self.available()
        if not avail:
            raise DatasetUnavailableError(f"dataset {self.name!r} is not available: {avail.reason}")
        ds = self._load(split)
        ds.name, ds.split = self.name, split
        return ds

    def _load(self, split: str) -> ImageDataset:
        raise NotImplementedError


_REGISTRY: dict[str, type[DatasetSource]] = {}


def register_dataset(cls: type[DatasetSource]) -> type[DatasetSource]:
    """Class decorator: register a :class:`DatasetSource` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name to register under")
    if cls.name in _REGISTRY:
        raise ValueError(f"a dataset named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def dataset_source(name: str, data_dir: str | os.PathLike[str] | None = None, **options: Any) -> DatasetSource:
    """The source registered as ``name`` (ask it :meth:`~DatasetSource.available`)."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownDatasetError(
            f"no dataset named {name!r}{hint} Known datasets: {', '.join(list_datasets())}") from None
    return cls(data_dir, **options)


def create_dataset(name: str, split: str = "train", *, data_dir: str | os.PathLike[str] | None = None,
                   **options: Any) -> ImageDataset:
    """Load split ``split`` of the dataset registered as ``name``.

    Examples:
        >>> from keyveil.data import create_dataset
        >>> ds = create_dataset("att-faces", "test")
        >>> len(ds), ds.num_classes, ds.channels, ds.size
        (120, 40, 1, (112, 92))
        >>> x, y = ds[0]
        >>> x.dtype, tuple(x.shape)
        (torch.uint8, (1, 112, 92))
    """
    return dataset_source(name, data_dir, **options).load(split)


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(_REGISTRY)
