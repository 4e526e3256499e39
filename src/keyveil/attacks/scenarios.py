"""Ready-made attack scenarios: a scheme, a dataset, an attack, scored end to end.

Both ``keyveil attack`` and the security report (:mod:`keyveil.attacks.report`)
run these, so every figure of SECURITY.md can be reproduced one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..keys import Key
from ..schemes import Scheme, create
from . import _data, patch_view
from .base import AttackError, AttackResult
from .cells import cell_size, moves_values_only
from .ciphertext_only import CiphertextOnly
from .inversion import LearnedInversion
from .jigsaw import JigsawSolver
from .membership import MembershipInference, train_classifier
from .permutation import ChosenPlaintext, KnownPlaintext
from .truth import score_permutation

__all__ = ["Scenario", "run_scenario", "SCENARIOS", "make_scheme", "plain_baseline"]

# Scheme options that fit each dataset's image size (patch sizes must divide it).
_SMALL = {"patch": {"patch_size": 4}, "mix": {"patch_size": 4, "grid": 2}, "vit": {"block_size": 4},
          "vit+patch": {"steps": (("vit", {"scramble": False, "block_size": 4}), ("patch", {"patch_size": 4}))},
          "mix+pixel": {"steps": (("mix", {"patch_size": 4, "grid": 2}), "pixel")},
          "block-per-image": {"block_size": 4}}
_CIFAR = {"patch": {"patch_size": 4}, "mix": {"patch_size": 8, "grid": 2}, "vit": {"block_size": 4},
          "mix+pixel": {"steps": (("mix", {"patch_size": 8, "grid": 2}), "pixel")}}
_FIT: dict[str, dict[str, dict[str, Any]]] = {
    "fashion-mnist": _SMALL, "mnist5k": _SMALL,
    "att-faces-heldout": {"vit": {"block_size": 16}},  # 96x80
    "att-faces": {"vit": {"block_size": 16}},  # 112x92: the defaults, padded where a size needs it
    "cifar10-sample": _CIFAR, "cifar10": _CIFAR,
}
FACES = ("att-faces", "att-faces-heldout")
"""The datasets with identities the face scenarios (re-identification, InstaHide) accept."""


def make_scheme(name: str, dataset: str, key: Key | None) -> Scheme:
    """The scheme ``name`` with options that fit ``dataset``'s image size."""
    dataset = _data.dataset_name(dataset)
    return create(name, key, **_FIT.get(dataset, {}).get(name, {}))


@dataclass
class Scenario:
    """One attack run: the result plus pictures (originals, encrypted, recovered)."""

    attack: str
    scheme: str
    dataset: str
    result: AttackResult
    originals: torch.Tensor
    encrypted: torch.Tensor
    recovered: torch.Tensor | None
    settings: dict[str, Any] = field(default_factory=dict)


def _encrypt(scheme: Scheme, x: torch.Tensor, seed: int) -> torch.Tensor:
    if scheme.per_image:
        return scheme.encrypt(x, generator=torch.Generator().manual_seed(seed))
    return scheme.encrypt(x)


def _encrypt_labelled(scheme: Scheme, x: torch.Tensor, y: torch.Tensor, classes: int,
                      seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Records as a server trains on them: images encrypted once, and the labels (mixed, for InstaHide)."""
    if hasattr(scheme, "encrypt_with_labels"):  # InstaHide mixes the labels with the images' coefficients
        onehot = torch.nn.functional.one_hot(y, classes).float()
        return scheme.encrypt_with_labels(x, onehot, generator=torch.Generator().manual_seed(seed))
    return _encrypt(scheme, x, seed), y


def run_scenario(
    attack: str, scheme: Scheme, dataset: str, *, n: int | None = None, test_n: int = 100, seed: int = 0,
    options: dict[str, Any] | None = None,
) -> Scenario:
    """Run ``attack`` against ``scheme`` on ``dataset`` and score it.

    Args:
        attack: a registered attack name.
        scheme: the attacked scheme (keyed schemes need their key: the
            scenario plays the victim too, to make ciphertexts and score).
        dataset: a registered dataset (``keyveil datasets``): ``fashion-mnist``,
            ``att-faces-heldout``, ``photos``, ``cifar10-sample``, …; the old
            names ``orl`` and ``cifar`` work with a ``FutureWarning``.
        n: the attacker's data: pairs (known-plaintext), ciphertexts
            (ciphertext-only), training images (learned inversion, membership);
            a default per attack when ``None``.
        test_n: victim images to recover and score.
        seed: seed of the victims' per-image randomness and of training.
        options: attack hyperparameters.
    """
    opts = dict(options or {})
    name = type(scheme).name
    dataset = _data.dataset_name(dataset)
    if attack == "reidentify":
        return _reidentify(scheme, dataset, test_n, seed, opts)
    if attack == "instahide":
        return _instahide(scheme, dataset, test_n, seed, opts)
    reason = patch_view.not_applicable(attack, scheme)
    if reason:
        raise AttackError(f"{attack} does not apply to {getattr(scheme, 'registered_name', name)!r}: {reason}")
    if attack == "key-from-model":
        from .model_key_scenario import key_from_model

        r, dataset, x, enc, rec, settings = key_from_model(scheme, dataset, test_n, seed, opts)
        return Scenario(attack, getattr(scheme, "registered_name", name), dataset, r, x, enc, rec, settings)
    test_x, test_y = _data.load(dataset, "test", test_n)
    cell = cell_size(scheme)  # a per-image step inside cells, then a keyed pixel shuffle: attack the cells
    step = patch_view.keyed_patch_step(scheme)
    if step is not None and attack in ("chosen-plaintext", "ciphertext-only"):
        return _keyed_patches(attack, scheme, step, dataset, test_x, n, seed, opts)
    if attack == "chosen-plaintext":
        if cell is not None:
            opts.setdefault("cell", cell)
        else:
            opts.setdefault("nibbles", bool(getattr(scheme, "nibbles", False)))
        c, h, w = test_x.shape[1:]
        r = ChosenPlaintext(**opts).run(oracle=scheme.encrypt, image_size=(h, w), channels=c, reference=scheme)
        enc = scheme.encrypt(test_x)
        return Scenario(attack, name, dataset, r, test_x, enc, r.decrypt(enc), {"queries": r.cost.queries})
    if attack == "known-plaintext":
        n = 1 if n is None else n
        spatial = type(scheme).name == "pixel" and not getattr(scheme, "per_channel", False)
        if cell is not None:
            opts.update(cell=opts.get("cell", cell), exact=opts.get("exact", moves_values_only(scheme)))
            spatial = True
        opts.setdefault("spatial", spatial)
        opts.setdefault("flips", cell is None and not (spatial and not getattr(scheme, "negapos", False)))
        opts.setdefault("nibbles", not spatial and bool(getattr(scheme, "nibbles", False)))
        plain, _ = _data.load(dataset, "train", n)
        if len(plain) < n:
            raise AttackError(f"dataset {dataset!r} has only {len(plain)} images; ask for fewer pairs")
        r = KnownPlaintext(**opts).run(plain=plain, encrypted=scheme.encrypt(plain), reference=scheme)
        enc = scheme.encrypt(test_x)
        return Scenario(attack, name, dataset, r, test_x, enc, r.decrypt(enc), {"pairs": n})
    if attack == "ciphertext-only" and name == "block":
        return _cot_blocks(scheme, dataset, test_x, 10_000 if n is None else n, opts)
    if attack == "ciphertext-only":
        n = 10_000 if n is None else n
        train, _ = _data.load(dataset, "train", n)
        opts.setdefault("flips", bool(getattr(scheme, "negapos", False)) is True)  # pixel-np's per-position flips
        enc = scheme.encrypt(test_x)
        r = CiphertextOnly(**opts).run(ciphertexts=scheme.encrypt(train), test_encrypted=enc, test_plain=test_x,
                                       reference=scheme)
        sym = r.details.get("symmetry")
        rec = r.reconstructions
        if sym is not None:  # show the recovered images the way a viewer would turn them
            from .ciphertext_only import grid_symmetries

            h, w = test_x.shape[-2:]
            rec = rec.reshape(*rec.shape[:2], h * w)[..., grid_symmetries(h, w)[sym]].reshape(test_x.shape)
        return Scenario(attack, name, dataset, r, test_x, enc, rec, {"ciphertexts": n})
    if attack == "jigsaw":
        if name == "block-per-image":
            opts.setdefault("block_size", scheme.block_size)
            opts.setdefault("rotations", scheme.rotate)
            opts.setdefault("negapos", scheme.negapos)
        elif step is not None:
            opts.setdefault("block_size", step.block_size)
        elif name == "block":
            opts.setdefault("block_size", scheme.block_size)
            opts.setdefault("rotations", scheme.rotate)
            opts.setdefault("negapos", scheme.negapos == "block")
            opts.setdefault("channel_orders", scheme.channel_shuffle)
        elif hasattr(scheme, "patch_size"):
            opts.setdefault("block_size", scheme.patch_size)
        enc = _encrypt(scheme, test_x, seed)
        r = JigsawSolver(**opts).run(encrypted=enc, plain=test_x)
        return Scenario(attack, name, dataset, r, test_x, enc, r.reconstructions, {"images": len(test_x)})
    if attack == "learned-inversion":
        train, _ = _data.load(dataset, "train", n)
        enc = _encrypt(scheme, test_x, seed)
        attack_ = LearnedInversion(seed=seed, **opts)
        leaked = bool(scheme.needs_key)
        if not leaked:  # keyless: the public code makes as many fresh pairs as the attacker likes
            gen = torch.Generator().manual_seed(seed + 1)
            r = attack_.run(encrypt=lambda x: scheme.encrypt(x, generator=gen) if scheme.per_image else scheme.encrypt(x),
                            train_plain=train,
                            test_encrypted=enc, test_plain=test_x)
        else:  # keyed (a keyed step in a composition too): the attacker needs leaked pairs under the key
            r = attack_.run(train_encrypted=_encrypt(scheme, train, seed + 1), train_plain=train,
                            test_encrypted=enc, test_plain=test_x)
        return Scenario(attack, name, dataset, r, test_x, enc, r.reconstructions,
                        {"train_images": len(train), "leaked": int(leaked), "loss": attack_.loss,
                         "epochs": attack_.epochs})
    if attack == "membership":
        n = 1000 if n is None else n
        epochs = int(opts.pop("epochs", 30))
        mx, my = _data.load(dataset, "train", n)
        nx, ny = test_x, test_y
        classes = int(torch.cat([my, ny]).max()) + 1
        menc, mlab = _encrypt_labelled(scheme, mx, my, classes, seed)
        nenc, nlab = _encrypt_labelled(scheme, nx, ny, classes, seed + 1)
        net = train_classifier(menc, mlab, classes=classes, epochs=epochs, seed=seed)
        r = MembershipInference(**opts).run(model=net, members=(menc, mlab), nonmembers=(nenc, nlab))
        with torch.no_grad():
            acc = (net(nenc.float() / 255).argmax(1) == ny).double().mean()
        r.metrics["test_accuracy"] = float(acc)
        return Scenario(attack, name, dataset, r, test_x, nenc, None, {"members": n, "epochs": epochs})
    raise AttackError(f"no scenario for attack {attack!r}; choose one of {', '.join(SCENARIOS)}")


def _keyed_patches(attack: str, scheme: Scheme, step: Any, dataset: str, test_x: torch.Tensor, n: int | None,
                   seed: int, opts: dict[str, Any]) -> Scenario:
    """``vit+patch``: the fixed-key attacks on its patches (:mod:`keyveil.attacks.patch_view`); the recovered
    in-patch key leaves the images with their patches in a fresh order (the ``patch`` scheme's jigsaw)."""
    p = step.block_size
    c = test_x.shape[1]
    enc = _encrypt(scheme, test_x, seed)
    if attack == "chosen-plaintext":
        r = ChosenPlaintext(**opts).run(oracle=patch_view.tiled_oracle(scheme, tuple(test_x.shape[1:]), p),
                                        image_size=(p, p), channels=c)
        settings: dict[str, Any] = {"queries": r.cost.queries, "patch": p}
    else:  # the shared in-patch shuffle and flips, matched to a public template (as vit's and LE's)
        from .nibble_layout import NibbleLayout

        n = 10_000 if n is None else n
        public_n = int(opts.pop("public", 2000))
        train, _ = _data.load(dataset, "train", n + public_n)
        cipher, public = train[: len(train) - public_n], train[len(train) - public_n:]
        r = NibbleLayout(nibbles=False, block_size=p, **opts).run(
            ciphertexts=_encrypt(scheme, cipher, seed + 1), public=public, test_encrypted=enc)
        rec = r.reconstructions
        truth = step.decrypt(enc)  # the patch step's output: what undoing the keyed step should give
        r.metrics["decrypted_exactly"] = float((rec == truth).flatten(1).all(1).double().mean())
        from ..metrics.quality import ssim

        r.metrics.update(ssim=float(ssim(rec, truth).mean()), ssim_encrypted=float(ssim(enc, truth).mean()))
        settings = {"ciphertexts": len(cipher), "public": public_n, "patch": p}
        return Scenario(attack, type(scheme).name, dataset, r, test_x, enc, rec, settings)
    r.metrics.update(score_permutation(r.recovered, patch_view.patch_truth(step, tuple(test_x.shape[1:]))))
    rec = patch_view.unpatch(r.decrypt(patch_view.patches(enc, p)), enc)
    return Scenario(attack, type(scheme).name, dataset, r, test_x, enc, rec, settings)


def _tiles(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(N,C,H,W)`` -> ``(N·(H//size)·(W//size), C, size, size)`` non-overlapping tiles."""
    t = x.unfold(2, size, size).unfold(3, size, size)  # (N, C, nh, nw, size, size)
    return t.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1], size, size).contiguous()


def _cot_blocks(scheme: Scheme, dataset: str, test_x: torch.Tensor, n: int, opts: dict[str, Any]) -> Scenario:
    """A fixed-key block scheme from ``n`` ciphertexts of training images under its key
    (:class:`~.chains.BlockChain` picks the attack); the reconstructions shown as a viewer would turn them.

    Options: ``public`` (default 2,000): the next training images, plain, as the attacker's own images of
    the same kind (LE, ELE and vit match a block's inside to them; never the victims'); ``tile``: the
    victim's images are the ``tile``×``tile`` tiles of the data set's (for ``photos``: 8 photos give 392
    colour 32×32 images; the test images are then the first tiles); ``max_values`` (default 4,096): values
    per block the jigsaw compares.
    """
    from .chains import BlockChain
    from .jigsaw import orient

    attack = BlockChain(scheme, max_values=int(opts.pop("max_values", 4096)))
    public_n = int(opts.pop("public", 2000)) if attack.needs_public else 0
    tile = opts.pop("tile", None)
    if opts:
        raise AttackError(f"unknown ciphertext-only options {sorted(opts)}; use public, tile or max_values")
    train, _ = _data.load(dataset, "train", n + public_n)
    if len(train) <= n and public_n:
        raise AttackError(f"dataset {dataset!r} has {len(train)} training images: ask for fewer ciphertexts so "
                          "some are left as public images")
    cipher, public = train[:n], (train[n:] if public_n else None)
    if tile is not None:
        cipher, test_x = _tiles(cipher, int(tile)), _tiles(test_x, int(tile))[: len(test_x)]
    enc = scheme.encrypt(test_x)
    whole = not attack.needs_public
    r = attack.run(ciphertexts=scheme.encrypt(cipher), test_encrypted=enc, public=public, test_plain=test_x,
                   reference=scheme if whole else None)
    rec = r.reconstructions
    settings: dict[str, Any] = {"ciphertexts": len(cipher)}
    if whole:
        rec = orient(rec, r.details["symmetry"])
        settings["tile"] = tile or test_x.shape[-1]
    else:
        settings["public"] = len(train) - n
    return Scenario("ciphertext-only", type(scheme).name, dataset, r, test_x, enc, rec, settings)


def _reidentify(scheme: Scheme, dataset: str, shown: int, seed: int, opts: dict[str, Any]) -> Scenario:
    """AT&T faces: plain gallery photos 1-5, probes 6-10 encrypted (``scheme`` ``plain``: not encrypted)."""
    import torch.nn.functional as F

    from .reidentify import Reidentify, encryption_randomness, face_split

    if dataset not in FACES:
        raise AttackError(f"re-identification needs faces with identities: use dataset 'att-faces', not {dataset!r}")
    g, gl, p, pl = face_split()
    victim = None if type(scheme).name == "plain" else scheme
    r = Reidentify(seed=seed, **opts).run(gallery=g, gallery_labels=gl, probes=p, probe_labels=pl, scheme=victim)
    pick = torch.arange(0, len(p), max(1, len(p) // max(1, shown)))[:shown]
    ph, pw = r.details["padding"]
    originals = F.pad(p[pick], (0, pw, 0, ph))
    enc = originals if victim is None else victim.encrypt(originals, **encryption_randomness(victim, seed))
    rec = None if r.reconstructions is None else F.pad(r.reconstructions[pick], (0, pw, 0, ph))
    return Scenario("reidentify", type(scheme).name, dataset, r, originals, enc, rec,
                    {"gallery": len(g), "probes": len(p), "people": int(gl.max()) + 1})


def _instahide(scheme: Scheme, dataset: str, shown: int, seed: int, opts: dict[str, Any]) -> Scenario:
    """Carlini et al.'s attack on InstaHide-encoded AT&T faces, seen over several training epochs.

    The victim's private set is photos 6-10 of the 40 people (200 images), encoded ``epochs`` times
    (default 10) in shuffled batches of ``batch_size`` (50), as training would; the attacker's public
    images are photos 1-5 (its calibration data and its face recognizers' gallery). Options besides the
    attack's: ``epochs``, ``batch_size``, ``recognizers``, ``cnn_epochs``.
    """
    from .instahide import InstaHideAttack, encode_epochs, reidentify_recovered
    from .reidentify import face_split

    if dataset not in FACES:
        raise AttackError(f"the instahide scenario uses faces with identities: use dataset 'att-faces', not "
                          f"{dataset!r}")
    if type(scheme).name != "instahide":
        raise AttackError(f"the instahide attack needs the instahide scheme, got {type(scheme).name!r}")
    epochs, batch = int(opts.pop("epochs", 10)), int(opts.pop("batch_size", 50))
    recognizers = tuple(opts.pop("recognizers", ("eigenfaces", "cnn")))
    cnn_epochs = int(opts.pop("cnn_epochs", 40))
    g, gl, p, pl = face_split()
    enc, members = encode_epochs(scheme, p, epochs=epochs, batch_size=batch,
                                 generator=torch.Generator().manual_seed(seed))
    opts.setdefault("clusters", len(p))  # the private set's size, known to the attacker as in Carlini et al.
    r = InstaHideAttack(seed=seed + 1, **opts).run(encodings=enc, members=members, private=p, public=g,
                                                   scheme=scheme, batch_size=batch)
    r.metrics.update(reidentify_recovered(r, gallery=g, gallery_labels=gl, private_labels=pl, encodings=enc,
                                          members=members, recognizers=recognizers, cnn_epochs=cnn_epochs,
                                          seed=seed))
    dominant = torch.tensor(r.details["dominant"])
    groups = r.details["groups"]
    k = min(shown, len(groups))
    originals = p[dominant[:k]]
    shown_enc = ((enc[[grp[0] for grp in groups[:k]]].float() / 255) if enc.dtype == torch.uint8
                 else (enc[[grp[0] for grp in groups[:k]]] + 1) / 2)
    recovered = (r.reconstructions[:k] * 255).round().to(torch.uint8)
    return Scenario("instahide", "instahide", dataset, r, originals, (shown_enc * 255).round().to(torch.uint8),
                    recovered, {"private": len(p), "encodings": len(enc), "epochs": epochs,
                                "public": len(g), "k": scheme.k})


SCENARIOS = ("chosen-plaintext", "known-plaintext", "ciphertext-only", "jigsaw", "learned-inversion", "membership",
             "key-from-model", "reidentify", "instahide")


class _Identity(Scheme):
    """The no-encryption baseline (``plain``) for membership inference."""

    name = "plain"
    needs_key = False

    def _encrypt(self, x: torch.Tensor, **kw: Any) -> torch.Tensor:
        return x.clone()

    def _decrypt(self, y: torch.Tensor, **kw: Any) -> torch.Tensor:
        return y.clone()

    def key_space_bits(self, shape: Any) -> float:
        return 0.0


def plain_baseline() -> Scheme:
    """A scheme that leaves images unchanged (the baseline of every table)."""
    return _Identity()
