"""Shared checkers for schemes (STYLE.md §12): one function asserts the whole contract."""

from __future__ import annotations

import pickle

import torch

from keyveil.schemes import NotInvertibleError, Scheme


def random_images(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.to(dtype) / 255


def _flips(params: dict) -> bool:
    """Whether a negative-positive step is on (for a composition: in any of its steps)."""
    return params.get("negapos") not in (None, False) or any(_flips(s["params"]) for s in params.get("steps", ()))


def check_scheme(scheme: Scheme, x: torch.Tensor, **kw) -> torch.Tensor:
    """Assert the scheme contract on a batch ``x`` (B,C,H,W); returns the encryption.

    No in-place change; dtype/device/shape kept; batched == per-image (with one
    nonce per image for per-image schemes); empty batch; pickling; exact round
    trip for invertible schemes, NotInvertibleError otherwise.
    """
    before = x.clone()
    y = scheme.encrypt(x, **kw)
    assert torch.equal(x, before), "encrypt modified its input"
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    if scheme.per_image:
        nonces = list(range(100, 100 + x.shape[0]))
        y = scheme.encrypt(x, nonce=nonces)
        if getattr(scheme, "mixes_batch", False):
            # Each image is mixed with others of its batch (instahide): per-image means that its encoding
            # depends on its own nonce and on the batch, not on its position, so rolling both rolls the output.
            rolled = scheme.encrypt(x.roll(1, 0), nonce=nonces[-1:] + nonces[:-1])
            singles = list(rolled.roll(-1, 0))
        else:
            singles = [scheme.encrypt(x[i], nonce=[nonces[i]]) for i in range(x.shape[0])]
        again = scheme.encrypt(x, nonce=nonces)
        assert torch.equal(y, again), "same key and nonces must reproduce the output"
    else:
        singles = [scheme.encrypt(x[i]) for i in range(x.shape[0])]
    if x.shape[0]:
        assert torch.equal(torch.stack(singles), y), "batched != per-image"
    empty = x[:0]
    out = scheme.encrypt(empty, nonce=[]) if scheme.per_image else scheme.encrypt(empty)
    assert out.shape == empty.shape and out.dtype == empty.dtype
    clone = pickle.loads(pickle.dumps(scheme))
    y2 = clone.encrypt(x, nonce=nonces) if scheme.per_image else clone.encrypt(x)
    assert torch.equal(y2, y), "a pickled scheme encrypts differently"
    if scheme.invertible:
        z = scheme.decrypt(y, nonce=nonces) if scheme.per_image else scheme.decrypt(y)
        assert torch.equal(y, y2)
        if x.dtype == torch.uint8:
            assert torch.equal(z, x), "decrypt(encrypt(x)) != x"
        else:
            flips = _flips(scheme.params_dict())
            if flips:  # 1 - (1 - v) is exact only to one ulp at 1.0
                assert z.numel() == 0 or (z - x).abs().max().item() <= 6e-8
            else:
                assert torch.equal(z, x), "decrypt(encrypt(x)) != x"
    else:
        try:
            scheme.decrypt(y)
        except NotInvertibleError as exc:
            assert str(exc), "NotInvertibleError needs a reason"
        else:
            raise AssertionError("decrypt of a non-invertible scheme must raise NotInvertibleError")
    return y


def scramble(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Slow reference: y[..., k] = x[..., perm[k]] with a Python loop over positions."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    out = torch.empty_like(flat)
    for k in range(h * w):
        out[:, :, k] = flat[:, :, int(perm[k])]
    return out.view(b, c, h, w)
