"""The one registry pattern: duplicates, "did you mean", filters, and third-party plug-ins via entry points."""

from __future__ import annotations

import importlib.metadata
import textwrap

import pytest
import torch

from keyveil import schemes
from keyveil.attacks import ATTACKS, AttackError, create_attack, list_attacks
from keyveil.data import DATASETS, UnknownDatasetError, create_dataset, list_datasets
from keyveil.engine import MODELS, build_model, create_model, list_models
from keyveil.errors import KeyveilError
from keyveil.registry import DuplicateNameError, PluginWarning, Registry, UnknownNameError


def test_generic_registry_duplicates_unknown_filter_and_hidden():
    reg: Registry[int] = Registry("thing")
    reg.add("alpha", 1)
    reg.add("alpine", 2)
    reg.add("beta", 3, listed=False)
    with pytest.raises(DuplicateNameError, match="already registered"):
        reg.add("alpha", 4)
    assert reg.names() == ["alpha", "alpine"]
    assert reg.names(include_hidden=True) == ["alpha", "alpine", "beta"]
    assert reg.names(filter="al*") == ["alpha", "alpine"]
    assert reg.names(filter=["*ne", "b*"], include_hidden=True) == ["alpine", "beta"]
    with pytest.raises(UnknownNameError, match="did you mean 'alpha'") as info:
        reg.get("alpah")
    assert isinstance(info.value, KeyveilError) and isinstance(info.value, KeyError)
    assert reg.remove("alpine") == 2 and "alpine" not in reg


def test_the_four_registries_share_the_pattern():
    for reg, known in ((schemes.SCHEMES, "pixel"), (DATASETS, "att-faces"), (ATTACKS, "jigsaw"),
                       (MODELS, "smallcnn")):
        assert isinstance(reg, Registry) and known in reg
        with pytest.raises(KeyveilError, match=f"did you mean {known!r}"):
            reg.get(known[:-1] + "x")
        with pytest.raises(DuplicateNameError):
            reg.add(known, reg.get(known))
    # the old public names still work, and the timm-style ones exist everywhere
    assert schemes.create_scheme is schemes.create and create_model is build_model
    assert schemes.list_schemes("pixel*") == ["pixel", "pixel-np"]
    assert list_datasets("cifar*") == ["cifar10", "cifar10-sample"]
    assert list_attacks("*-plaintext") == ["chosen-plaintext", "known-plaintext"]
    assert list_models("smallcnn") == ["smallcnn"] and "resnet18" in list_models()
    with pytest.raises(AttackError, match="did you mean 'jigsaw'"):
        create_attack("jigsw")
    with pytest.raises(UnknownDatasetError, match="did you mean 'mnist5k'"):
        create_dataset("mnist5")
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        build_model("resnt18")


PLUGIN = '''
import torch
from keyveil.attacks import Attack, AttackResult
from keyveil.schemes import Scheme


class FlipScheme(Scheme):
    """Mirror the image left-right (a toy third-party scheme)."""

    name = "toy-flip"
    description = "mirror left-right (test plug-in)"
    needs_key = False

    def _encrypt(self, x, **kw):
        return x.flip(-1)

    def _decrypt(self, y, **kw):
        return y.flip(-1)

    def key_space_bits(self, shape):
        return 0.0


class NothingAttack(Attack):
    name = "toy-nothing"

    def run(self, **inputs):
        return AttackResult(self.name, metrics={"ok": 1.0})


def tiny_model(*, in_channels, num_classes, image_size, small_input=True, **kw):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size[0] * image_size[1],
                                                                   num_classes))
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A third-party package (module ``keyveil_toy_plugin``) announced through fake entry points."""
    (tmp_path / "keyveil_toy_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = {
        "keyveil.schemes": [importlib.metadata.EntryPoint("toy-flip", "keyveil_toy_plugin:FlipScheme",
                                                          "keyveil.schemes")],
        "keyveil.attacks": [importlib.metadata.EntryPoint("toy-nothing", "keyveil_toy_plugin:NothingAttack",
                                                          "keyveil.attacks"),
                            importlib.metadata.EntryPoint("toy-broken", "keyveil_toy_plugin:Missing",
                                                          "keyveil.attacks")],
        "keyveil.models": [importlib.metadata.EntryPoint("toy-linear", "keyveil_toy_plugin:tiny_model",
                                                         "keyveil.models")],
    }
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None, **kw: eps.get(group, []))
    for reg in (schemes.SCHEMES, ATTACKS, MODELS, DATASETS):
        monkeypatch.setattr(reg, "_scanned", False)  # as in a fresh process with the plug-in installed
    yield
    for reg, name in ((schemes.SCHEMES, "toy-flip"), (ATTACKS, "toy-nothing"), (MODELS, "toy-linear")):
        if name in reg:
            reg.remove(name)
        reg._seen_plugins.clear()


def test_third_party_scheme_attack_and_model_load_lazily_through_entry_points(plugin):
    s = schemes.create("toy-flip")  # unknown until its entry point is loaded
    x = torch.arange(6, dtype=torch.uint8).reshape(1, 1, 2, 3)
    assert torch.equal(s.encrypt(x), x.flip(-1)) and torch.equal(s.decrypt(s.encrypt(x)), x)
    assert s.registered_name == "toy-flip" and "toy-flip" in schemes.list_schemes("toy-*")
    with pytest.warns(PluginWarning, match="toy-broken"):
        assert create_attack("toy-nothing").run().metrics == {"ok": 1.0}
    assert "toy-broken" not in list_attacks()
    m = create_model("toy-linear", in_channels=1, num_classes=3, image_size=(2, 3))
    assert m(torch.rand(2, 1, 2, 3)).shape == (2, 3) and list_models("toy-*") == ["toy-linear"]


def test_a_plugin_that_is_no_scheme_is_skipped_with_a_warning(tmp_path, monkeypatch):
    (tmp_path / "keyveil_bad_plugin.py").write_text("NOT_A_SCHEME = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint("toy-bad", "keyveil_bad_plugin:NOT_A_SCHEME", "keyveil.schemes")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None, **kw: [ep] if group == "keyveil.schemes" else [])
    try:
        with pytest.warns(PluginWarning, match="must name a Scheme subclass"), \
                pytest.raises(schemes.UnknownSchemeError, match="no scheme named 'toy-bad'"):
            schemes.create("toy-bad")
    finally:
        schemes.SCHEMES._seen_plugins.clear()


def test_registry_create_builds_through_each_registry():
    import warnings

    from keyveil import Key

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(0)
    s = schemes.SCHEMES.create("etc", key)
    assert s.registered_name == "etc" and s.block_size == 4
    assert ATTACKS.create("jigsaw").name == "jigsaw"
    assert DATASETS.create("att-faces").available()
    assert isinstance(MODELS.create("smallcnn", in_channels=1, num_classes=3, image_size=(28, 28)), torch.nn.Module)
