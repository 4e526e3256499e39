"""The dataset registry: a decorator registers a source, :func:`create_dataset` loads by name."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import KeyveilError
from ..registry import Registry, adopt_subclass
from .base import ImageDataset

__all__ = ["DatasetSource", "Availability", "DatasetUnavailableError", "UnknownDatasetError",
           "register_dataset", "create_dataset", "dataset_source", "list_datasets", "DATASETS"]


class UnknownDatasetError(KeyveilError, KeyError):
    """No dataset is registered under that name (also a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


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


DATASETS: Registry[type[DatasetSource]] = Registry("dataset", group="keyveil.datasets", error=UnknownDatasetError,
                                                   adopt=adopt_subclass(DatasetSource, "keyveil.datasets", same_name=True))
"""The dataset registry (entry-point group ``keyveil.datasets``); see :mod:`keyveil.registry`."""


def register_dataset(cls: type[DatasetSource]) -> type[DatasetSource]:
    """Class decorator: register a :class:`DatasetSource` under ``cls.name`` (duplicates raise)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name to register under")
    return DATASETS.add(cls.name, cls)


def dataset_source(name: str, data_dir: str | os.PathLike[str] | None = None, **options: Any) -> DatasetSource:
    """The source registered as ``name`` (ask it :meth:`~DatasetSource.available`)."""
    return DATASETS.get(name)(data_dir, **options)


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


def list_datasets(filter: str | Iterable[str] | None = None) -> list[str]:
    """The registered dataset names, sorted; with ``filter``, those matching a shell-style pattern.

    Examples:
        >>> list_datasets("cifar*")
        ['cifar10', 'cifar10-sample']
    """
    return DATASETS.names(filter)
