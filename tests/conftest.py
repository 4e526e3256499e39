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
