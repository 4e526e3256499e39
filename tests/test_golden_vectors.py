"""Golden ciphertexts: literal test vectors per scheme for a fixed key and image.

A change in key derivation (HMAC labels, the permutation recipe, nonce
streams), in a scheme's parameter derivation or in its application changes
these vectors, and with them every key file and keyed checkpoint users hold;
this file catches it. The vectors were computed once (commit "golden vectors")
and are checked here to be non-trivial (ciphertext differs from the image,
decrypts back exactly). If a change is *meant* to alter a scheme's output,
update the vector and say so in the changelog: old keys and checkpoints then
decrypt differently.

Every registered invertible scheme has a vector (the last test checks that);
non-invertible schemes whose per-image randomness comes from the key and a
nonce and whose output is a pure rearrangement (VisualMixer) are pinned too.
``mix``, ``noise`` and ``instahide`` compute with floats and are not pinned.
"""

from __future__ import annotations

import hashlib
import warnings

import pytest
import torch

from keyveil import Key, schemes

SECRET = bytes(range(7, 7 + 32))
"""The literal 32-byte secret of every vector (fingerprint ``ce43f3395c4c07e8``)."""

NONCE = [3, 1000]


def golden_image() -> torch.Tensor:
    """Two arithmetic 3x32x32 uint8 images (no RNG involved)."""
    i = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64)
    return ((i * 37 + (i // 97) * 11 + 5) % 256).to(torch.uint8).reshape(2, 3, 32, 32)


# (scheme, options, nonce, SHA-256 of the ciphertext bytes, its first 8 values)
GOLDEN = [
    ("pixel", {}, None,
     "d10292470a92fbe6844a83a4865896659447fc34fc15437e1b9a45356f9fa443", [19, 40, 20, 147, 206, 229, 80, 73]),
    ("pixel", {"per_channel": True}, None,
     "79a9f7c89c0428459cd8328cf85c257e274be44163906b260854b108a535ffb2", [157, 29, 100, 54, 111, 210, 173, 216]),
    ("pixel-np", {}, None,
     "1d44ca23660953a61c23a21e349b3869359a0f149f82be04d71531d3e3f6f8ba", [19, 40, 235, 147, 206, 229, 175, 182]),
    ("block", {}, None,
     "4258f5aaf9f73a8189fd88507e888472f2160ff5c2ff3c75c8c50c1e1c96fca7", [131, 168, 205, 242, 56, 93, 130, 167]),
    ("etc", {}, None,
     "87f5bc140f83ac17a84ead60a0c5b9bc43dcfe94a266d489633105a054bc0866", [3, 222, 185, 148, 31, 68, 105, 142]),
    ("le", {}, None,
     "1a5f2ad61e86c32d33834448e99dc003986c734ae23f252d6bbca86f3a7b24f4", [33, 29, 138, 0, 200, 211, 198, 201]),
    ("ele", {}, None,
     "1d5d2ee85a6b42219e7806eda5a27c5585707a22417f30d4356059292f682c56", [144, 133, 246, 253, 70, 136, 154, 166]),
    ("vit", {}, None,
     "8e488dfe564b4bd543d0bb985e853d92035e13238682937c4846221982deed57", [26, 226, 174, 74, 222, 134, 113, 85]),
    ("vit", {"block_size": 8}, None,
     "ac65ccbfe93c8f6ff1ca82a16bce053d8d3077382c99fff1461a20e8045f6954", [33, 156, 19, 243, 144, 208, 186, 93]),
    ("patch", {}, NONCE,
     "c0188592828476636cbc65caa91a8c48c096d628b11224e742f12352c47927a6", [85, 122, 159, 196, 233, 14, 51, 88]),
    ("patch", {"patch_size": 8}, NONCE,
     "f202b04ce71816fdaf9aee80ce06f7563816b4790dbe14eda9105832322f2e4b", [180, 217, 254, 35, 72, 109, 146, 183]),
    ("block-per-image", {}, NONCE,
     "dab0e7e05728f10172d69c0bd9635fe3f65fa75567f414bd36b1d79b847a2226", [69, 106, 143, 180, 26, 245, 208, 171]),
    ("block-per-image", {"block_size": 8, "negapos": False}, NONCE,
     "fb23c99bb766a2b69842fd603dee9a81bbb379e92d8d13d137a6c9a103cfb046", [125, 162, 199, 236, 17, 54, 91, 128]),
    ("vit+patch", {}, NONCE,
     "3811debfad52e7bd406e48f733661509a6b894677c86c5265f43cca4a3da24e2", [172, 206, 147, 141, 245, 59, 249, 83]),
    ("compose", {"steps": ["etc", "pixel"]}, None,
     "4017e3dc0864f0d85bae7432bd3869866c889364b018c081661cedb3dfcba1ae", [237, 22, 140, 193, 22, 217, 195, 146]),
    ("compose", {"steps": [("patch", {"patch_size": 8}), ("pixel", {"negapos": True})]}, NONCE,
     "0ae95d110a58907e2222e963678727e8e5e68243ef734aabe5096a82d2fa4d71", [136, 186, 54, 115, 60, 124, 24, 55]),
    ("visualmixer", {}, NONCE,
     "f4d64d1ab3743cf08f33a873ef9ca2fba69276321d4f310c00d2de390ae3269d", [167, 185, 252, 40, 205, 108, 222, 146]),
    ("visualmixer-seed", {}, NONCE,
     "1cbe5cf9119cb8a95b7aa536a2200281a6b28d765ec27ec7ad57d41a9dbd8bba", [229, 202, 58, 239, 72, 153, 206, 57]),
    ("visualmixer-seed+pixel", {}, NONCE,
     "0c7a5d7d1e5015e69a4de78c1cca7a5b729b3a432d6085245fb515747a467d65", [115, 106, 184, 80, 178, 198, 100, 168]),
]


def _id(case: tuple) -> str:
    name, opts, *_ = case
    return name + "".join(f"-{k}={v}" for k, v in opts.items() if k != "steps") + (
        "(" + "+".join(s if isinstance(s, str) else s[0] for s in opts["steps"]) + ")" if "steps" in opts else "")


@pytest.mark.parametrize("case", GOLDEN, ids=[_id(c) for c in GOLDEN])
def test_golden_ciphertext(case):
    name, opts, nonce, digest, head = case
    x = golden_image()
    scheme = schemes.create(name, Key(SECRET), **opts)
    kw = {} if nonce is None else {"nonce": nonce}
    y = scheme.encrypt(x, **kw)
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert not torch.equal(y, x), "the vector must be non-trivial"
    assert y.flatten()[:8].tolist() == head
    assert hashlib.sha256(y.contiguous().numpy().tobytes()).hexdigest() == digest
    if scheme.invertible:
        assert torch.equal(scheme.decrypt(y, **kw), x)
    else:  # a pure rearrangement: the same multiset of values in every image and channel
        assert torch.equal(y.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values)


def test_key_derivation_literals():
    """The key file's fingerprint and the from_seed recipe, pinned literally."""
    assert Key(SECRET).fingerprint == "ce43f3395c4c07e8"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seeded = Key.from_seed(0)
    assert seeded.fingerprint == "bdfe5cb3eea8257c"
    x = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)
    assert schemes.create("pixel", seeded).encrypt(x).flatten().tolist() == [
        15, 8, 6, 0, 2, 5, 11, 13, 4, 9, 7, 12, 3, 14, 10, 1]


def test_every_registered_invertible_scheme_has_a_golden_vector():
    pinned = {name for name, *_ in GOLDEN}
    invertible = {n for n in schemes.list_schemes() if schemes.create(n, Key(SECRET)).invertible}
    assert invertible and invertible <= pinned, f"add golden vectors for {sorted(invertible - pinned)}"
