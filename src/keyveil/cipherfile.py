"""What an encrypted PNG carries so that its decryption is exact or refused.

``keyveil encrypt`` writes, in a ``keyveil`` text chunk of every PNG it makes, a
:class:`CipherHeader`: the scheme and its options, the key's fingerprint (never the
secret), the per-image nonce (a fresh random number, not derived from the file
name, so a file decrypts wherever it is moved or renamed), a SHA-256 of the
ciphertext's pixels (an edited or re-saved file is refused), and for keyed schemes
a MAC of the plain pixels under the key (so ``decrypt`` proves its output exact, and
``encrypt`` can tell a finished output of the same source from a stale one).

Nothing in the header helps an attacker: the pixel digest is of the ciphertext,
which the attacker holds anyway, and the plain check is an HMAC under a key-derived
secret — without the key it cannot confirm a guess of the photo. Keyless schemes
store no plain check at all, since anyone could recompute it.

Examples:
    >>> import torch
    >>> from keyveil import Key, schemes
    >>> s = schemes.create("pixel", Key.generate())
    >>> x = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    >>> y = s.encrypt(x)
    >>> h = CipherHeader.for_output(s, plain=x, cipher=y, nonce=None)
    >>> CipherHeader.from_text(h.to_text()) == h
    True
    >>> h.refusal(s, y) is None
    True
    >>> h.refusal(schemes.create("pixel", Key.generate()), y).startswith("was encrypted with key")
    True
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .schemes import Scheme

__all__ = ["CipherHeader", "HEADER_CHUNK", "fresh_nonce", "read_header"]

HEADER_CHUNK = "keyveil"
HEADER_FORMAT = "keyveil-ciphertext"
HEADER_VERSION = 1


def fresh_nonce() -> int:
    """A random 63-bit per-image nonce from :mod:`secrets`."""
    return secrets.randbits(63)


def _pixels(x: torch.Tensor) -> bytes:
    x = x.detach().to("cpu", torch.uint8).contiguous()
    return json.dumps(list(x.shape)).encode() + x.numpy().tobytes()


def pixel_digest(x: torch.Tensor) -> str:
    """SHA-256 (hex, 32 characters) of a uint8 image's shape and pixels."""
    return hashlib.sha256(_pixels(x)).hexdigest()[:32]


def plain_check(scheme: Scheme, nonce: int | None, x: torch.Tensor) -> str | None:
    """HMAC of the plain pixels under the scheme's key (``None`` for keyless schemes)."""
    if scheme.key is None:
        return None
    mac_key = scheme.key.stream_seed("file/plain-check")
    msg = str(nonce).encode() + b"/" + _pixels(x)
    return hmac.new(mac_key, msg, hashlib.sha256).hexdigest()[:32]


def _describe(scheme: str | None, params: Any) -> str:
    return f"{scheme!r} with options {params}" if params else f"{scheme!r}"


@dataclass(frozen=True)
class CipherHeader:
    """The check data one encrypted PNG carries (see the module docstring)."""

    scheme: str
    params: dict[str, Any]
    key_fingerprint: str | None
    nonce: int | None
    cipher_sha256: str
    plain_check: str | None

    @classmethod
    def for_output(
        cls, scheme: Scheme, *, plain: torch.Tensor, cipher: torch.Tensor, nonce: int | None
    ) -> CipherHeader:
        cfg = scheme.config
        return cls(cfg["scheme"], json.loads(json.dumps(cfg["params"])), cfg["key_fingerprint"], nonce,
                   pixel_digest(cipher), plain_check(scheme, nonce, plain))

    def to_text(self) -> str:
        return json.dumps({"format": HEADER_FORMAT, "version": HEADER_VERSION, **asdict(self)}, sort_keys=True)

    def pnginfo(self) -> PngInfo:
        info = PngInfo()
        info.add_text(HEADER_CHUNK, self.to_text())
        return info

    @classmethod
    def from_text(cls, text: str) -> CipherHeader:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != HEADER_FORMAT:
            raise ValueError("not a keyveil ciphertext header")
        if data.get("version") != HEADER_VERSION:
            raise ValueError(f"ciphertext header version {data.get('version')!r}; this keyveil reads {HEADER_VERSION}")
        return cls(data["scheme"], data["params"], data["key_fingerprint"], data["nonce"], data["cipher_sha256"],
                   data["plain_check"])

    def same_job(self, scheme: Scheme) -> bool:
        """Whether ``scheme`` (name, options, key) is the one this file was encrypted with."""
        cfg = scheme.config
        return (self.scheme, self.params, self.key_fingerprint) == (
            cfg["scheme"], json.loads(json.dumps(cfg["params"])), cfg["key_fingerprint"])

    def refusal(self, scheme: Scheme, cipher: torch.Tensor) -> str | None:
        """Why decrypting ``cipher`` (this file's pixels) with ``scheme`` would be wrong, or ``None``."""
        cfg = scheme.config
        mine = json.loads(json.dumps(cfg["params"]))
        if self.scheme != cfg["scheme"] or self.params != mine:
            return (f"was encrypted with scheme {_describe(self.scheme, self.params)}, not "
                    f"{_describe(cfg['scheme'], mine)}: pass the same --scheme and --option values")
        if self.key_fingerprint != cfg["key_fingerprint"]:
            if self.key_fingerprint is None:
                return "was encrypted without a key (fresh randomness that was not kept): it cannot be decrypted"
            given = cfg["key_fingerprint"] or "none"
            return (f"was encrypted with key {self.key_fingerprint}, but the key given is {given}: "
                    "pass the key that encrypted it")
        if pixel_digest(cipher) != self.cipher_sha256:
            return ("its pixels changed after encryption (edited, resized or re-saved by another program?): "
                    "decrypting it would not give the original back")
        return None

    def confirms(self, scheme: Scheme, plain: torch.Tensor) -> bool:
        """Whether ``plain`` is exactly the image that was encrypted (keyed schemes only)."""
        mac = plain_check(scheme, self.nonce, plain)
        return mac is not None and self.plain_check is not None and hmac.compare_digest(mac, self.plain_check)


def read_header(path: Path) -> CipherHeader | None:
    """The header of an encrypted PNG, or ``None`` if it has none (or it is unreadable)."""
    try:
        with Image.open(path) as img:
            text = img.info.get(HEADER_CHUNK)
    except (OSError, SyntaxError, ValueError):
        return None
    if not isinstance(text, str):
        return None
    try:
        return CipherHeader.from_text(text)
    except (ValueError, KeyError, TypeError):
        return None
