"""``noise`` and ``instahide`` — the obfuscations VisualMixer compares against (docs/design.md §3.5).

Neither rearranges pixels, and neither is a cipher: ``noise`` adds fresh
Gaussian noise to every pixel (the "DP" image obfuscation of VisualMixer's
Fig. 1–2), ``instahide`` (Huang et al., ICML 2020) mixes each image with
others and flips the sign of every value. Both take per-image randomness the
way ``patch`` and ``mix`` do: fresh (from a ``generator`` or from
:mod:`secrets`) or, with a key, reproducible from a per-image ``nonce``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..keys import Key
from .base import Nonce, Scheme, per_image_uniform
from .convert import to_batch
from .errors import GeometryError, SchemeError
from .registry import register_scheme

__all__ = [
    "GaussianNoise",
    "InstaHide",
    "gaussian_from_uniform",
    "add_gaussian_noise",
    "instahide_coefficients",
    "instahide_mix",
    "instahide_values",
]


def gaussian_from_uniform(u: torch.Tensor) -> torch.Tensor:
    """Standard normals from uniforms by Box–Muller: ``(..., 2n)`` uniforms -> ``(..., n)`` normals."""
    n = u.shape[-1] // 2
    u1 = u[..., :n].double().clamp(1e-12, 1 - 1e-12)
    u2 = u[..., n:2 * n].double()
    return (torch.sqrt(-2 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)).to(u.dtype)


def add_gaussian_noise(x: torch.Tensor, z: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x + sigma * range * z``, clipped to the valid range; uint8 rounds to 0..255, floats clip to 0..1.

    Shape:
        x, z: ``(B,C,H,W)`` (``z`` floating); returns ``x``'s shape and dtype.
    """
    if x.dtype == torch.uint8:
        return (x.float() + (255.0 * sigma) * z.float()).round().clamp(0, 255).to(torch.uint8)
    return (x + sigma * z.to(x.dtype)).clamp(0, 1)


@register_scheme
class GaussianNoise(Scheme):
    """Additive Gaussian noise of standard deviation ``sigma`` (a fraction of the value range), clipped.

    The "DP" obfuscation VisualMixer compares against: every value of every
    image gets independent N(0, σ²) noise (σ·255 for uint8 images), and the
    result is clipped to the valid range (uint8 is rounded and clipped to
    0..255, floats are clipped to 0..1), so near-black and near-white pixels
    are biased towards the middle. It is not differential privacy of the
    training set: it is image-level noise with no accounting (use
    ``keyveil train --dp`` for DP-SGD).

    Args:
        sigma: the noise's standard deviation as a fraction of the value
            range (default 0.1, i.e. 25.5 grey levels of 255).

    Examples:
        >>> import torch
        >>> from keyveil import schemes
        >>> s = schemes.create("noise", sigma=0.1)
        >>> x = torch.full((1, 1, 64, 64), 0.5)
        >>> y = s.encrypt(x, generator=torch.Generator().manual_seed(0))
        >>> round((y - x).std().item(), 2)
        0.1

    Notes:
        Noise leaves the image's structure in place; averaging a few pixels
        (any blur) removes most of it. See SECURITY.md, "reidentify".
    """

    name = "noise"
    description = "additive Gaussian noise of std sigma (fraction of the range), clipped (the paper's 'DP' noise)"
    invertible = False
    per_image = True
    needs_key = False

    def __init__(self, key: Key | None = None, *, sigma: float = 0.1) -> None:
        super().__init__(key)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise SchemeError(
                f"sigma must be a finite number >= 0 (a fraction of the value range, e.g. 0.1), got {sigma!r}"
            )
        self.sigma = float(sigma)

    def params_dict(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def not_invertible_reason(self) -> str:
        return (
            "noise adds fresh random values to every pixel and clips the result to the valid range; "
            "the noise is not kept and clipped values are lost, so the image cannot be recovered"
        )

    def noise(
        self, batch: int, chw: tuple[int, int, int], *, generator: torch.Generator | None,
        nonce: Nonce | None, device: torch.device,
    ) -> torch.Tensor:
        """``(batch, C, H, W)`` standard normals, one independent draw per image."""
        c, h, w = chw
        n = c * h * w
        u = per_image_uniform(
            batch, 2 * n, label=f"noise/{c}x{h}x{w}", key=self.key, generator=generator, nonce=nonce,
            device=device,
        )
        return gaussian_from_uniform(u).view(batch, c, h, w)

    def _encrypt(self, x: torch.Tensor, *, generator: torch.Generator | None, nonce: Nonce | None) -> torch.Tensor:
        z = self.noise(x.shape[0], tuple(x.shape[1:]), generator=generator, nonce=nonce, device=x.device)
        return add_gaussian_noise(x, z, self.sigma)

    def key_space_bits(self, shape: Sequence[int]) -> float:
        return math.inf


# -- InstaHide -------------------------------------------------------------

_ROUNDS = 32  # rejection-sampling candidates per image for the coefficient bound


def instahide_coefficients(g: torch.Tensor, upper: float) -> torch.Tensor:
    """Mixing coefficients from ``(B, R, k)`` normals: |g| normalized, first candidate with max <= ``upper``.

    As the reference code of Huang et al. does (normalized absolute Gaussians,
    resampled until no coefficient exceeds ``upper``), vectorized over ``R``
    candidates per image. If none of the ``R`` candidates meets the bound
    (probability < 1e-6 for k = 2 and the default 0.65, far less for k > 2),
    equal coefficients 1/k are used.

    Shape:
        g: ``(B, R, k)``; returns ``(B, k)``, rows summing to 1.
    """
    a = g.abs().clamp_min(1e-12)
    lam = a / a.sum(-1, keepdim=True)
    ok = lam.amax(-1) <= upper + 1e-12  # (B, R)
    first = ok.to(torch.int8).argmax(-1)  # index of the first True (0 if none)
    chosen = lam.gather(1, first.view(-1, 1, 1).expand(-1, 1, lam.shape[-1])).squeeze(1)
    equal = torch.full_like(chosen, 1.0 / lam.shape[-1])
    return torch.where(ok.any(-1, keepdim=True), chosen, equal)


def instahide_mix(
    pool: torch.Tensor, index: torch.Tensor, coeffs: torch.Tensor, signs: torch.Tensor
) -> torch.Tensor:
    """``signs * sum_j coeffs[:, j] * pool[index[:, j]]``: the InstaHide encoding.

    Shape:
        pool: ``(P,C,H,W)`` images in [-1, 1]; index: ``(B, k)`` int64 into ``pool``;
        coeffs: ``(B, k)``; signs: ``(B,C,H,W)`` of ±1. Returns ``(B,C,H,W)`` in [-1, 1].
    """
    mixed = torch.einsum("bk,bkchw->bchw", coeffs.to(pool.dtype), pool[index])
    return mixed * signs.to(pool.dtype)


def instahide_values(y: torch.Tensor) -> torch.Tensor:
    """InstaHide encodings as float values in [-1, 1]: uint8 encodings are mapped back by ``v / 127.5 - 1``."""
    return y.double() / 127.5 - 1 if y.dtype == torch.uint8 else y


def _load_public(public: Any) -> tuple[torch.Tensor | None, Any]:
    """The public set as a ``(N,C,H,W)`` tensor, and what ``params_dict`` records of it."""
    if public is None:
        return None, None
    if isinstance(public, (str, Path)):
        from ..imageio import list_images, read_image

        root = Path(public)
        files = [root] if root.is_file() else list_images(root) if root.is_dir() else []
        if not files:
            raise SchemeError(f"public={str(public)!r} is neither an image file nor a folder holding images")
        images = [read_image(f) for f in files]
        shapes = {tuple(t.shape) for t in images}
        if len(shapes) != 1:
            raise SchemeError(
                f"the public images under {str(public)!r} have different shapes {sorted(shapes)}; "
                "resize them to the private images' size first"
            )
        return torch.stack(images), str(public)
    if isinstance(public, torch.Tensor):
        t = public.unsqueeze(0) if public.dim() == 3 else public
        if t.dim() != 4 or t.shape[0] < 1 or not (t.dtype == torch.uint8 or t.dtype.is_floating_point):
            raise SchemeError(
                "public must be a uint8 or floating tensor of images (N,C,H,W) with N >= 1, "
                f"got {public.dtype} of shape {tuple(public.shape)}"
            )
        return t.detach().clone(), f"tensor {'x'.join(map(str, t.shape))} {str(t.dtype).replace('torch.', '')}"
    raise SchemeError(
        f"public must be a tensor of public images (N,C,H,W) or a folder of images, got {type(public).__name__}"
    )


@register_scheme
class InstaHide(Scheme):
    """InstaHide (Huang et al., ICML 2020): mix each image with k−1 others, then flip every value's sign.

    Images are first mapped to [-1, 1] (``2v - 1`` for floats in [0, 1],
    ``v / 127.5 - 1`` for uint8). Encoding ``i`` of a batch is
    ``σ_i ⊙ (λ_i1 x_i + Σ_{j≥2} λ_ij p_ij)``: the private image with the first
    coefficient **(our reading)** and k−1 partners ``p_ij`` — ``k_private − 1``
    other images *of the same batch* (inside-dataset InstaHide; the reference
    training code, too, draws partners from the batch) and ``k − k_private``
    images of the ``public`` set (cross-dataset InstaHide). The coefficients
    are normalized absolute Gaussians resampled until none exceeds ``upper``
    (0.65), as in the reference code; ``σ_i`` is a fresh ±1 mask on every
    value (every channel of every pixel).

    Output range and dtype: float images give float encodings in [-1, 1]
    (**not** [0, 1]); uint8 images give uint8 encodings ``round(127.5 (e + 1))``
    (0 is stored as 128; the rounding costs at most 1/255 of the range), which
    :func:`instahide_values` maps back to [-1, 1].

    Partners and the per-image contract: an image's private partners are
    drawn as offsets ``1..B−1`` from its own position in the batch (cyclically)
    from its own randomness, so each encoding depends on its own randomness
    and on the batch it is mixed into, not on where it sits (rolling the batch
    and its nonces rolls the output). With ``k_private = 1`` (public partners
    only) encodings are strictly per-image. A batch of one image without a
    public set has no partner: mixed with itself only the sign flip would remain,
    so it is an error (encrypt batches, or pass ``public=``).

    Args:
        k: images in each mixture, the private image included (default 4, the
            paper's inside-dataset setting; ``k < 2`` is an error).
        public: public images to mix in (cross-dataset InstaHide): a tensor
            ``(N,C,H,W)`` (uint8 or float in [0, 1]) or a folder/file of images
            of the private images' size.
        k_private: private images in each mixture, the image itself included
            (default ``k`` without a public set, 2 with one — the InstaHide
            Challenge's 2 private + 4 public for k = 6).
        upper: the bound on every coefficient (default 0.65).

    Use :meth:`encrypt_with_labels` for training: the labels are mixed with the
    same coefficients and partners.

    Examples:
        >>> import torch
        >>> from keyveil import schemes
        >>> s = schemes.create("instahide", k=4)
        >>> x = torch.rand(8, 3, 32, 32)
        >>> y, soft = s.encrypt_with_labels(x, torch.eye(10)[torch.arange(8)])
        >>> float(y.min()) >= -1 and float(y.max()) <= 1, torch.allclose(soft.sum(1), torch.ones(8))
        (True, True)

    Notes:
        Carlini et al. ("Is private learning possible with instance encoding?",
        S&P 2021) break it: |encoding| removes the sign flip, encodings that
        share a private image are clustered, and the image is recovered from
        its cluster — ``keyveil.attacks.instahide`` and SECURITY.md, "instahide".
    """

    name = "instahide"
    description = "mix with k-1 other images (batch / public set), random coefficients, random sign flip (InstaHide)"
    invertible = False
    per_image = True
    needs_key = False

    def __init__(
        self, key: Key | None = None, *, k: int = 4, public: Any = None, k_private: int | None = None,
        upper: float = 0.65,
    ) -> None:
        super().__init__(key)
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise SchemeError(
                f"instahide needs k >= 2 images per mixture (the private image and at least one other), got k={k!r}"
            )
        self.public, self._public_desc = _load_public(public)
        if k_private is None:
            k_private = k if self.public is None else min(2, k)
        if isinstance(k_private, bool) or not isinstance(k_private, int) or not 1 <= k_private <= k:
            raise SchemeError(f"k_private must be an int in 1..k={k}, got {k_private!r}")
        if k_private < k and self.public is None:
            raise SchemeError(
                f"k_private={k_private} < k={k} mixes in {k - k_private} public image(s), but no public set "
                "was given: pass public=<tensor (N,C,H,W) or folder of images>, or k_private=k"
            )
        if not isinstance(upper, (int, float)) or not 1 / k <= upper <= 1:
            raise SchemeError(f"upper must be in [1/k, 1] = [{1 / k:.3g}, 1] (no coefficient above it), got {upper!r}")
        self.k, self.k_private, self.upper = k, k_private, float(upper)

    @property
    def mixes_batch(self) -> bool:
        """Whether an encoding mixes in other images of its batch (``k_private > 1``)."""
        return self.k_private > 1

    def params_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"k": self.k, "k_private": self.k_private, "upper": self.upper}
        if self.public is not None:
            out["public"] = self._public_desc
        return out

    def not_invertible_reason(self) -> str:
        return (
            "an InstaHide encoding is a random mixture of several images with a random sign on every value; "
            "the coefficients, partners and signs are not kept, so the private image cannot be decrypted"
        )

    def check_geometry(self, chw: tuple[int, ...]) -> None:
        super().check_geometry(chw)
        if self.public is not None and tuple(self.public.shape[1:]) != tuple(chw):
            raise GeometryError(
                f"the public images are {tuple(self.public.shape[1:])} (C,H,W) but the private images are "
                f"{tuple(chw)}; give public images of the same size and channel count"
            )

    # -- randomness ---------------------------------------------------------
    def draws(
        self, batch: int, chw: tuple[int, int, int], *, generator: torch.Generator | None,
        nonce: Nonce | None, device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image ``(index (B,k) into [batch, public], coefficients (B,k), signs (B,C,H,W))``."""
        c, h, w = chw
        n, k, kp = c * h * w, self.k, self.k_private
        npub = 0 if self.public is None else self.public.shape[0]
        m = 2 * _ROUNDS * k
        u = per_image_uniform(
            batch, m + (k - 1) + n, label=f"instahide/{k}/{kp}/{npub}/{c}x{h}x{w}", key=self.key,
            generator=generator, nonce=nonce, device=device,
        )
        coeffs = instahide_coefficients(gaussian_from_uniform(u[:, :m].double()).view(batch, _ROUNDS, k), self.upper)
        pick = u[:, m:m + k - 1].double()
        own = torch.arange(batch, device=device).view(-1, 1)
        cols = [own]
        if kp > 1:
            offset = 1 + (pick[:, :kp - 1] * max(batch - 1, 0)).long().clamp(max=max(batch - 2, 0))
            cols.append((own + offset) % max(batch, 1))
        if k > kp:
            cols.append(batch + (pick[:, kp - 1:] * npub).long().clamp(max=npub - 1))
        index = torch.cat(cols, 1)
        signs = torch.where(u[:, m + k - 1:] < 0.5, -1.0, 1.0).view(batch, c, h, w)
        return index, coeffs, signs

    # -- application --------------------------------------------------------
    def _signed(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return x.to(dtype) / 127.5 - 1 if x.dtype == torch.uint8 else x.to(dtype) * 2 - 1

    def _encode(
        self, x: torch.Tensor, labels: torch.Tensor | None, *, generator: torch.Generator | None,
        nonce: Nonce | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = x.shape[0]
        if b == 1 and self.mixes_batch:
            raise SchemeError(
                "instahide: a batch of one image has no other private image to mix with, so it would be mixed "
                "with itself and only the sign flip would remain (|v| gives the image back); encrypt batches of "
                "at least 2 images (or pass public=..., k_private=1)"
            )
        work = x.dtype if x.dtype.is_floating_point else torch.float32
        index, coeffs, signs = self.draws(b, tuple(x.shape[1:]), generator=generator, nonce=nonce, device=x.device)
        pool = self._signed(x, work)
        if self.public is not None:
            pool = torch.cat([pool, self._signed(self.public.to(x.device), work)])
        out = instahide_mix(pool, index, coeffs, signs)
        if x.dtype == torch.uint8:
            out = ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        mixed = None
        if labels is not None:
            kp = self.k_private
            lam = coeffs[:, :kp].to(labels.dtype)
            mixed = torch.einsum("bj,bjc->bc", lam, labels[index[:, :kp]]) / lam.sum(1, keepdim=True)
        return out, mixed

    def _encrypt(self, x: torch.Tensor, *, generator: torch.Generator | None, nonce: Nonce | None) -> torch.Tensor:
        return self._encode(x, None, generator=generator, nonce=nonce)[0]

    def encrypt_with_labels(
        self, images: Any, onehot_labels: torch.Tensor, generator: torch.Generator | None = None, *,
        nonce: Nonce | None = None,
    ) -> tuple[Any, torch.Tensor]:
        """Encode ``images`` and mix ``onehot_labels`` with the same coefficients and partners.

        The mixed label of encoding ``i`` is ``Σ_j λ_ij y_(partner j)`` over its
        private images, divided by their coefficients' sum so that it sums to 1
        (**our reading**: public images carry no label, as in Huang et al.'s
        cross-dataset setting; without a public set the divisor is 1).

        Args:
            images: a batch ``(B,C,H,W)`` (or anything :meth:`encrypt` takes).
            onehot_labels: ``(B, num_classes)`` float one-hot (or soft) labels.
            generator: the per-image randomness (fresh if ``None``).
            nonce: per-image nonces (with a key) instead of ``generator``.

        Returns:
            ``(encoded, mixed_labels)``: the encodings as :meth:`encrypt` returns
            them and ``(B, num_classes)`` soft labels.
        """
        batch, back = to_batch(images)
        self._check_dtype(batch)
        self.check_geometry(tuple(batch.shape[1:]))
        if (not isinstance(onehot_labels, torch.Tensor) or onehot_labels.dim() != 2
                or onehot_labels.shape[0] != batch.shape[0] or not onehot_labels.dtype.is_floating_point):
            got = (f"{onehot_labels.dtype} of shape {tuple(onehot_labels.shape)}"
                   if isinstance(onehot_labels, torch.Tensor) else type(onehot_labels).__name__)
            raise SchemeError(
                f"onehot_labels must be a float tensor (B, num_classes) with B = {batch.shape[0]} images, got "
                f"{got}; pass torch.nn.functional.one_hot(labels, num_classes).float()"
            )
        out, mixed = self._encode(batch, onehot_labels.to(batch.device), generator=generator, nonce=nonce)
        assert mixed is not None
        return back(out), mixed

    def key_space_bits(self, shape: Sequence[int]) -> float:
        return math.inf
