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
from . import _data
from .base import AttackError, AttackResult
from .ciphertext_only import CiphertextOnly
from .inversion import LearnedInversion
from .jigsaw import JigsawSolver
from .membership import MembershipInference, train_classifier
from .permutation import ChosenPlaintext, KnownPlaintext

__all__ = ["Scenario", "run_scenario", "SCENARIOS", "make_scheme", "plain_baseline"]

# Scheme options that fit each dataset's image size (patch sizes must divide it).
_SMALL = {"patch": {"patch_size": 4}, "mix": {"patch_size": 4, "grid": 2}, "vit": {"block_size": 4},
          "mix+pixel": {"steps": (("mix", {"patch_size": 4, "grid": 2}), "pixel")}}
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
    test_x, test_y = _data.load(dataset, "test", test_n)
    if attack == "chosen-plaintext":
        opts.setdefault("nibbles", bool(getattr(scheme, "nibbles", False)))
        c, h, w = test_x.shape[1:]
        r = ChosenPlaintext(**opts).run(oracle=scheme.encrypt, image_size=(h, w), channels=c, reference=scheme)
        enc = scheme.encrypt(test_x)
        return Scenario(attack, name, dataset, r, test_x, enc, r.decrypt(enc), {"queries": r.cost.queries})
    if attack == "known-plaintext":
        n = 1 if n is None else n
        spatial = type(scheme).name == "pixel" and not getattr(scheme, "per_channel", False)
        opts.setdefault("spatial", spatial)
        opts.setdefault("flips", not (spatial and not getattr(scheme, "negapos", False)))  # pixel-np, block presets
        opts.setdefault("nibbles", not spatial and bool(getattr(scheme, "nibbles", False)))
        plain, _ = _data.load(dataset, "train", n)
        if len(plain) < n:
            raise AttackError(f"dataset {dataset!r} has only {len(plain)} images; ask for fewer pairs")
        r = KnownPlaintext(**opts).run(plain=plain, encrypted=scheme.encrypt(plain), reference=scheme)
        enc = scheme.encrypt(test_x)
        return Scenario(attack, name, dataset, r, test_x, enc, r.decrypt(enc), {"pairs": n})
    if attack == "ciphertext-only":
        n = 10_000 if n is None else n
        train, _ = _data.load(dataset, "train", n)
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
        if name == "block":
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
        if scheme.per_image:
            gen = torch.Generator().manual_seed(seed + 1)
            r = LearnedInversion(seed=seed, **opts).run(
                encrypt=lambda x: scheme.encrypt(x, generator=gen), train_plain=train,
                test_encrypted=enc, test_plain=test_x)
        else:  # keyed: the attacker needs leaked pairs
            r = LearnedInversion(seed=seed, **opts).run(
                train_encrypted=scheme.encrypt(train), train_plain=train, test_encrypted=enc, test_plain=test_x)
        return Scenario(attack, name, dataset, r, test_x, enc, r.reconstructions, {"train_images": len(train)})
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
    if attack == "key-from-model":
        return _key_from_model(scheme, dataset, test_x, test_y, seed, opts)
    raise AttackError(f"no scenario for attack {attack!r}; choose one of {', '.join(SCENARIOS)}")


def _key_from_model(scheme: Scheme, dataset: str, test_x: torch.Tensor, test_y: torch.Tensor, seed: int,
                    opts: dict[str, Any]) -> Scenario:
    """The victim's keyed small CNN falls into the attacker's hands; the recovered key decrypts its test images.

    The CNN has random weights (the attack uses no trained value). It is handed over as a model or as a
    checkpoint saved with key material.

    Options besides the attack's: ``mode`` (``input``/``features``/``deformable``, default
    ``features``) and ``checkpoint`` (attack a file saved with ``include_key_material=True``: its
    buffers as stored, or, for the probe, the model loaded from it).
    """
    import tempfile
    from pathlib import Path

    from ..engine import build_model
    from ..models import keyed, load_keyed, save_keyed
    from .model_key import KeyFromModel

    name = type(scheme).name
    if name != "pixel" or getattr(scheme, "per_channel", False):
        raise AttackError(f"key-from-model attacks a keyed CNN, which exists for the pixel scheme "
                          f"(per_channel=False) only; got {name!r}")
    mode = str(opts.pop("mode", "features"))
    from_checkpoint = bool(opts.pop("checkpoint", False))
    c, h, w = test_x.shape[1:]
    classes = max(10, int(test_y.max()) + 1) if len(test_y) else 10

    def plain_net() -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model("smallcnn", in_channels=c, num_classes=classes, image_size=(h, w)).eval()

    victim = keyed(plain_net(), scheme.key, scheme=scheme, mode=mode, input_size=(c, h, w))
    enc = scheme.encrypt(test_x)
    attack = KeyFromModel(**opts)
    with tempfile.TemporaryDirectory() as tmp:
        target: Any = victim
        if from_checkpoint:
            target = Path(tmp) / "keyed.pt"
            save_keyed(victim, target, include_key_material=True)
            if attack.method == "probe":
                target = load_keyed(target, plain_net())
        r = attack.run(model=target, image_size=(c, h, w), reference=scheme, ciphertexts=enc)
    rec = r.reconstructions
    r.metrics["decrypted_exactly"] = float((rec == test_x).flatten(1).all(1).double().mean())
    settings = {"mode": mode, "method": attack.method, "source": "checkpoint" if from_checkpoint else "model",
                "queries": r.cost.queries, "images": len(test_x)}
    return Scenario("key-from-model", name, dataset, r, test_x, enc, rec, settings)


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
