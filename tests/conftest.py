"""Shared pytest configuration: small thread counts keep the 2-core CI fast."""

from __future__ import annotations

import torch

torch.set_num_threads(2)
