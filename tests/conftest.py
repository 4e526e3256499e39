"""Shared pytest configuration: small thread counts keep the 2-core CI fast."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """Small CNNs on small batches train faster on one thread than on two of a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fashion() -> str:
    """Fashion-MNIST where the Debian package is installed (``make`` installs it as root), else MNIST-5k.

    Tests that only need *some* real 28x28 grayscale set use this name, so they run
    (on the fallback) instead of failing on a machine without the package.
    """
    import os

    from keyveil.data import dataset_source

    forced = os.environ.get("KEYVEIL_TEST_FASHION")  # e.g. mnist5k: run the fallback on a machine that has both
    if forced:
        return forced
    return "fashion-mnist" if dataset_source("fashion-mnist").available().ok else "mnist5k"
