"""Toy user schemes for `keyveil audit` tests: not registered, loaded as 'tests/audit_toys.py:NAME'."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from keyveil import Key


class GaussianBlur:
    """Keyless, not invertible: blur with sigma 2 px (a common 'anonymization')."""

    def encrypt(self, x: torch.Tensor) -> torch.Tensor:
        r = 6
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-t * t / 8)
        k = k / k.sum()
        c = x.shape[1]
        f = x.float()
        f = F.conv2d(F.pad(f, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        f = F.conv2d(F.pad(f, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        return f.round().clamp(0, 255).to(torch.uint8)


def blur() -> GaussianBlur:
    return GaussianBlur()


class KeyedXor:
    """Keyed and invertible: XOR every value with a pad derived from the key (a reused pad)."""

    keyed = True

    def __init__(self, key: Key, image_size: tuple[int, int]) -> None:
        self.key, self.size = key, image_size

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        n = x[0].numel()
        return self.key.integers(f"toy-xor/{tuple(x.shape[1:])}", n, 256).to(torch.uint8).view(x.shape[1:])

    def encrypt(self, x: torch.Tensor) -> torch.Tensor:
        return x ^ self._pad(x)

    def decrypt(self, y: torch.Tensor) -> torch.Tensor:
        return y ^ self._pad(y)


def xor(key: Key, image_size: tuple[int, int] = (32, 32)) -> KeyedXor:
    return KeyedXor(key, image_size)
