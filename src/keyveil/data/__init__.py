"""Real datasets available offline, and encrypted views of them (docs/design.md §6).

Every dataset yields ``(image, label)`` with ``image`` a uint8 ``(C,H,W)``
tensor, so schemes apply exactly. Datasets are registered by name; nothing is
downloaded at run time.

Examples:
    >>> from keyveil import Key, schemes
    >>> from keyveil.data import EncryptedDataset, create_dataset, dataset_source, list_datasets
    >>> "fashion-mnist" in list_datasets()
    True
    >>> bool(dataset_source("cifar10").available())   # needs --data-dir
    False
    >>> faces = create_dataset("att-faces", "train")
    >>> enc = EncryptedDataset(faces, schemes.create("pixel", Key.generate()))
    >>> x, y = enc[0]
    >>> x.shape, y
    (torch.Size([1, 112, 92]), 0)
"""

from __future__ import annotations

from .base import DatasetInfo, ImageDataset, TensorImageDataset, stratified_split
from .encrypted import EncryptedDataset, encrypted_folder
from .registry import (
    DATASETS,
    Availability,
    DatasetSource,
    DatasetUnavailableError,
    UnknownDatasetError,
    create_dataset,
    dataset_source,
    list_datasets,
    register_dataset,
)

# Importing the sources registers the built-in datasets.
from . import sources  # noqa: E402,F401  isort: skip
from . import detection  # noqa: E402,F401  isort: skip  (fashion-canvas, coco)

__all__ = [
    "ImageDataset",
    "TensorImageDataset",
    "DatasetInfo",
    "EncryptedDataset",
    "encrypted_folder",
    "DatasetSource",
    "DATASETS",
    "Availability",
    "DatasetUnavailableError",
    "UnknownDatasetError",
    "create_dataset",
    "dataset_source",
    "list_datasets",
    "register_dataset",
    "stratified_split",
]
