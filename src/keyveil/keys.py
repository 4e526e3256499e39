"""Secret keys and the labelled random streams derived from them.

A :class:`Key` holds 32 secret bytes. Every random choice a scheme or a keyed
model makes is drawn from a stream ``HMAC-SHA256(secret, label)`` whose label
names its purpose (``"pixel/perm/32x32"``, ``"block/k1/8x8"``, ...), so the
same key and label give the same numbers on every platform and version, and
different labels give independent numbers (docs/design.md §2).

Examples:
    >>> from keyveil import Key
    >>> key = Key.generate()
    >>> perm = key.permutation("pixel/perm/4x4", 16)
    >>> sorted(perm.tolist()) == list(range(16))
    True
    >>> bool((perm == key.permutation("pixel/perm/4x4", 16)).all())
    True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import warnings
from pathlib import Path

import numpy as np
import torch

from .atomic import write_atomic
from .errors import KeyveilError

__all__ = ["Key", "KeyFileError", "InsecureKeyWarning", "SECRET_BYTES"]

SECRET_BYTES = 32
KEY_FORMAT = "keyveil-key"
KEY_VERSION = 1
_PASSPHRASE_SALT = b"keyveil/passphrase/v1"


class KeyFileError(KeyveilError):
    """A key file is missing, truncated, edited or not a keyveil key file."""


class InsecureKeyWarning(UserWarning):
    """A key was made from a guessable seed; fine for experiments, never for secrets."""


class Key:
    """A secret key: 32 bytes plus the streams derived from them.

    Build one with :meth:`generate`, :meth:`from_passphrase`, :meth:`load` or,
    for reproducible experiments only, :meth:`from_seed`. The secret is never
    shown by ``repr``/``str``; :attr:`fingerprint` identifies the key in logs.
    """

    __slots__ = ("_secret", "_fingerprint")

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_BYTES:
            raise ValueError(f"a key secret must be exactly {SECRET_BYTES} bytes")
        self._secret = bytes(secret)
        self._fingerprint = hashlib.sha256(self._secret).digest()[:8].hex()

    # -- construction -------------------------------------------------------
    @classmethod
    def generate(cls) -> Key:
        """A fresh key from the operating system's secure random source."""
        return cls(secrets.token_bytes(SECRET_BYTES))

    @classmethod
    def from_seed(cls, seed: int) -> Key:
        """A reproducible key from an integer: for tests and experiments only.

        Warns with :class:`InsecureKeyWarning`, since anybody who guesses the
        seed holds the key.
        """
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        warnings.warn(
            "Key.from_seed makes a guessable key; use Key.generate() for real secrets",
            InsecureKeyWarning,
            stacklevel=2,
        )
        data = b"keyveil/seed/" + str(seed).encode()
        return cls(hashlib.sha256(data).digest())

    @classmethod
    def from_passphrase(cls, passphrase: str, *, salt: bytes = b"") -> Key:
        """A key stretched from a passphrase with scrypt (n=2**14, r=8, p=1)."""
        if not passphrase:
            raise ValueError("the passphrase is empty")
        secret = hashlib.scrypt(
            passphrase.encode("utf-8"),
            salt=_PASSPHRASE_SALT + salt,
            n=2**14,
            r=8,
            p=1,
            dklen=SECRET_BYTES,
        )
        return cls(secret)

    # -- identity -----------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """First 8 bytes of SHA-256(secret), in hex: safe to print and log."""
        return self._fingerprint

    def __repr__(self) -> str:
        return f"Key(fingerprint={self._fingerprint!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __reduce__(self):  # picklable for DataLoader workers
        return (Key, (self._secret,))

    # -- derived streams ----------------------------------------------------
    def stream_seed(self, label: str) -> bytes:
        """The 32-byte seed ``HMAC-SHA256(secret, label)`` of a labelled stream."""
        return hmac.new(self._secret, label.encode("utf-8"), hashlib.sha256).digest()

    def derive(self, label: str) -> Key:
        """An independent sub-key (for example one per image nonce)."""
        return Key(self.stream_seed("subkey/" + label))

    def words(self, label: str, n: int) -> np.ndarray:
        """``n`` uniform 64-bit words of the stream ``label`` (numpy uint64).

        Drawn with ``PCG64(SeedSequence(seed)).random_raw``, which numpy keeps
        stable across versions and platforms.
        """
        seed = int.from_bytes(self.stream_seed(label), "little")
        bitgen = np.random.PCG64(np.random.SeedSequence(seed))
        return bitgen.random_raw(int(n)).astype(np.uint64, copy=False)

    def permutation(self, label: str, n: int) -> torch.Tensor:
        """A permutation of ``range(n)``: the stable argsort of ``n`` words."""
        return torch.from_numpy(np.argsort(self.words(label, n), kind="stable"))

    def permutations(self, label: str, rows: int, n: int) -> torch.Tensor:
        """``rows`` independent permutations of ``range(n)``, shape ``(rows, n)``."""
        words = self.words(label, rows * n).reshape(rows, n)
        return torch.from_numpy(np.argsort(words, axis=1, kind="stable"))

    def integers(self, label: str, n: int, high: int) -> torch.Tensor:
        """``n`` integers in ``[0, high)`` (int64). Bias is below ``high / 2**64``."""
        return torch.from_numpy((self.words(label, n) % np.uint64(high)).astype(np.int64))

    def bits(self, label: str, n: int) -> torch.Tensor:
        """``n`` fair coin flips as a bool tensor."""
        return torch.from_numpy((self.words(label, n) >> np.uint64(63)).astype(bool))

    def uniform(self, label: str, n: int) -> torch.Tensor:
        """``n`` floats uniform in ``[0, 1)`` (float64, 53 random bits each)."""
        w = self.words(label, n) >> np.uint64(11)
        return torch.from_numpy(w.astype(np.float64) * 2.0**-53)

    def torch_generator(self, label: str, device: str | torch.device = "cpu") -> torch.Generator:
        """A ``torch.Generator`` seeded from the stream ``label`` (reproducible
        within one torch version; use :meth:`words` where cross-version
        stability matters)."""
        gen = torch.Generator(device=device)
        gen.manual_seed(int.from_bytes(self.stream_seed(label)[:8], "little") >> 1)
        return gen

    # -- files --------------------------------------------------------------
    def to_json(self) -> str:
        """The key file content (contains the secret: keep it private)."""
        return json.dumps(
            {
                "format": KEY_FORMAT,
                "version": KEY_VERSION,
                "secret": base64.b64encode(self._secret).decode("ascii"),
                "fingerprint": self._fingerprint,
            },
            indent=2,
        )

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the key file with mode 0600, atomically; refuses to overwrite unless asked."""
        path = Path(path)
        try:
            return write_atomic(path, self.to_json() + "\n", secret=True, overwrite=overwrite)
        except FileExistsError:
            raise FileExistsError(
                f"{path} already exists; refusing to overwrite a key file (choose another path)"
            ) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Key:
        """Read a key file, checking format, version, length and fingerprint."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise KeyFileError(f"key file {path} does not exist") from None
        except IsADirectoryError:
            raise KeyFileError(f"key file {path} is a folder, not a key file: give the file `keyveil keygen` "
                               "wrote (e.g. key.json)") from None
        except OSError as exc:  # permissions, a device, a broken link...
            raise KeyFileError(f"key file {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
        except UnicodeDecodeError:
            raise KeyFileError(f"key file {path} is not text (not a keyveil key file)") from None
        return cls.from_json(text, source=str(path))

    @classmethod
    def from_json(cls, text: str, *, source: str = "key") -> Key:
        """Parse key-file content; raises :class:`KeyFileError` naming the problem."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"{source} is not valid JSON (truncated or edited?): {exc.msg}") from None
        if not isinstance(data, dict) or data.get("format") != KEY_FORMAT:
            raise KeyFileError(f"{source} is not a keyveil key file (format must be {KEY_FORMAT!r})")
        if data.get("version") != KEY_VERSION:
            raise KeyFileError(
                f"{source} has key-file version {data.get('version')!r}; this keyveil reads version {KEY_VERSION}"
            )
        for field in ("secret", "fingerprint"):
            if not isinstance(data.get(field), str):
                raise KeyFileError(f"{source} has no {field!r} field")
        try:
            secret = base64.b64decode(data["secret"], validate=True)
        except ValueError:
            raise KeyFileError(f"{source}: the secret is not valid base64 (edited?)") from None
        if len(secret) != SECRET_BYTES:
            raise KeyFileError(f"{source}: the secret is {len(secret)} bytes, expected {SECRET_BYTES}")
        key = cls(secret)
        if not hmac.compare_digest(key.fingerprint, data["fingerprint"]):
            raise KeyFileError(f"{source}: the fingerprint does not match the secret (the file was edited)")
        return key
