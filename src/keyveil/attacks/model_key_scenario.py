"""The ``key-from-model`` scenario: the victim's keyed model falls into the attacker's hands.

One function, :func:`key_from_model`, behind ``run_scenario("key-from-model", ...)``:

* ``pixel`` / ``pixel-np``: a keyed small CNN (random weights: the attack uses
  no trained value), or with ``model="detector"`` a keyed FCOS
  (:func:`~keyveil.models.keyed_detection.keyed_detector`, random weights) on
  ``fashion-canvas`` canvases whatever ``dataset`` says.
* a composition whose last step is a keyed ``pixel`` shuffle (``mix+pixel``,
  ``visualmixer-seed+pixel``): the keyed model follows that step (converted
  with its key); the attack recovers that step's key, and the "decrypted"
  images are the first steps' output (what the victim's model sees).
* a block scheme a ViT follows (``vit``): a keyed torchvision ViT. With
  ``method="buffers"`` its weights are random; with ``method="weights"`` the
  plain ViT is first *trained* on ``dataset`` (``train_images`` images,
  ``epochs``; keyveil's ``train_loop``), because the attack reads the
  smoothness that training leaves in the weights, and the attacker gets
  ``public`` labelled training images to choose among the grid symmetries.

Options besides the attack's: ``mode`` (CNN/detector: ``input``/``features``/
``deformable``, default ``features``), ``checkpoint`` (``True``: attack a file
saved with ``include_key_material=True``, its tensors as stored or, for the
probe, the model loaded from it; ``"plain"``: a file saved with
``save_keyed``'s default, where the attack must find nothing: the row then
records the refusal, ``refused`` = 1, 0 % recovered), ``model``,
``train_images``, ``epochs``, ``public``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..schemes import Scheme
from . import _data
from .base import AttackError, Cost, KeyRecoveryResult
from .model_key import KeyFromModel

__all__ = ["key_from_model"]


def _vit_net(c: int, size: int, patch: int, classes: int, seed: int) -> nn.Module:
    from ..engine.models import _vit

    torch.manual_seed(seed)
    return _vit(layers=2, heads=4, hidden=64, mlp=128, in_channels=c, num_classes=classes, image_size=(size, size),
                patch_size=patch)


def _train(net: nn.Module, dataset: str, n: int, epochs: int, seed: int) -> dict[str, float]:
    """Train the plain ViT on ``n`` plain images of ``dataset`` (Adam 1e-3, batch 64)."""
    import time

    from ..engine.loop import index_batches, train_loop

    x, y = _data.load(dataset, "train", n)
    xf = x.float() / 255
    gen = torch.Generator().manual_seed(seed)
    t0 = time.process_time()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    train_loop(net.train(), opt, lambda _: ((xf[i], y[i]) for i in index_batches(len(x), 64, generator=gen)),
               epochs=epochs, loss_fn=lambda m, b: (F.cross_entropy(m(b[0]), b[1]), {"n": len(b[1])}))
    return {"train_images": float(len(x)), "train_epochs": float(epochs),
            "train_cpu_seconds": time.process_time() - t0}


def _canvases(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data import create_dataset

    ds = create_dataset("fashion-canvas", "test").limit(n)
    x = torch.stack([torch.as_tensor(ds[i][0]) for i in range(len(ds))])
    return x, torch.zeros(len(x), dtype=torch.long)


def key_from_model(scheme: Scheme, dataset: str, test_n: int, seed: int, opts: dict[str, Any]) -> tuple[Any, ...]:
    """Run the scenario (see the module docstring).

    Returns:
        ``(result, data set, originals, encrypted, recovered, settings)``, the
        fields of a :class:`~keyveil.attacks.scenarios.Scenario`.
    """
    from ..engine import build_model
    from ..engine.detection import build_detector
    from ..models import keyed, load_keyed, save_keyed
    from ..models.keyed_detection import keyed_detector
    from ..schemes.block import BlockScramble
    from ..schemes.pixel import PixelShuffle

    name = getattr(scheme, "registered_name", type(scheme).name)
    steps = list(getattr(scheme, "steps", []))
    target = steps[-1] if steps else scheme  # the step a keyed model follows
    arch = str(opts.pop("model", "vit" if isinstance(target, BlockScramble) else "smallcnn"))
    if isinstance(target, PixelShuffle) and not target.per_channel:
        pass
    elif isinstance(target, BlockScramble) and arch == "vit" and not steps:
        pass
    else:
        raise AttackError(f"key-from-model attacks a keyed model, which exists for 'pixel'/'pixel-np' "
                          f"(per_channel=False; CNN or detector), for a composition ending in such a step, and for "
                          f"the 'vit' block scheme (keyed ViT); got {name!r}")
    mode = str(opts.pop("mode", "features"))
    source = opts.pop("checkpoint", False)
    train_images, epochs = int(opts.pop("train_images", 60_000)), int(opts.pop("epochs", 1))
    public_n = int(opts.pop("public", 256))
    if arch == "detector":
        dataset = "fashion-canvas"
        test_x, test_y = _canvases(test_n)
    else:
        test_x, test_y = _data.load(dataset, "test", test_n)
    c, h, w = test_x.shape[1:]
    classes = max(10, int(test_y.max()) + 1) if len(test_y) else 10
    attack = KeyFromModel(**opts)
    settings: dict[str, Any] = {"mode": mode, "method": attack.method, "images": len(test_x), "model": arch,
                                "source": {False: "model", True: "checkpoint", "plain": "default checkpoint"}[source]}

    def plain_net() -> nn.Module:
        torch.manual_seed(seed)
        if arch == "detector":
            return build_detector(num_classes=classes + 1, in_channels=c).eval()
        if arch == "vit":
            return _vit_net(c, h, target.block_size, classes, seed).eval()
        return build_model(arch, in_channels=c, num_classes=classes, image_size=(h, w)).eval()

    def convert(net: nn.Module) -> nn.Module:
        if arch == "detector":
            return keyed_detector(net, target.key, scheme=target, mode=mode, input_size=(c, h, w))
        if arch == "vit":
            return keyed(net, target.key, scheme=target)
        return keyed(net, target.key, scheme=target, mode=mode, input_size=(c, h, w))

    net = plain_net()
    public = None
    if arch == "vit" and attack.method == "weights":
        settings.update(_train(net, dataset, train_images, epochs, seed))
        public = _data.load(dataset, "train", public_n)
        settings["public"] = len(public[0])
        net.eval()
    from ..models.errors import KeyedModelError

    try:
        victim = convert(net)
    except KeyedModelError as exc:
        raise AttackError(f"no keyed model follows {name!r} (a keyed CNN follows the pixel scheme, a keyed ViT the "
                          f"'vit' block preset): {exc}") from None
    gen = {"generator": torch.Generator().manual_seed(seed)} if scheme.per_image else {}
    enc = scheme.encrypt(test_x, **gen)
    truth = target.decrypt(enc) if steps else test_x  # what the keyed model's plain twin sees
    run_opts: dict[str, Any] = {"image_size": (c, h, w), "reference": target, "ciphertexts": enc}
    if public is not None:
        run_opts.update(plain=public[0], labels=public[1])
    with tempfile.TemporaryDirectory() as tmp:
        subject: Any = victim
        if source:
            subject = Path(tmp) / "keyed.pt"
            save_keyed(victim, subject, include_key_material=source is True)
            if attack.method != "buffers" and source is True and arch != "detector":
                subject = load_keyed(subject, plain_net())
        try:
            r = attack.run(model=subject, **run_opts)
            rec = r.reconstructions
            r.metrics["refused"] = 0.0
        except AttackError as exc:
            if source != "plain":
                raise
            r = KeyRecoveryResult(attack.name, metrics={"fraction_recovered": 0.0, "refused": 1.0}, cost=Cost(),
                                  details={"refusal": str(exc)})
            rec = None
    r.metrics["decrypted_exactly"] = (0.0 if rec is None else
                                      float((rec == truth).flatten(1).all(1).double().mean()))
    settings["queries"] = r.cost.queries
    return r, dataset, test_x, enc, rec, settings
