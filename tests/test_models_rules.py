"""The keyed-CNN rule table: registration, lookup along the MRO, and a layer that brings its own rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from keyveil import Key, schemes
from keyveil.models import UnsupportedModelError, keyed, validate
from keyveil.models.rules import (
    conversion_for,
    layout_rule,
    list_rules,
    register_leaf_modules,
    rule_for_function,
    rule_for_method,
    rule_for_module,
)


class _Swish(nn.Module):
    """A layer torch.fx cannot trace (Python control flow on a value), so it is registered as a leaf."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x * 1.5) if x.dtype == torch.float32 else x


class _RuledSwish(_Swish):
    pass


register_leaf_modules(lambda: (_Swish,))


@layout_rule(_RuledSwish)
def _ruled_swish(step) -> None:
    step.passthrough()  # acts on each value alone


def _net(act: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), act, nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()


def test_lookup_follows_the_mro_and_every_torch_family_has_a_rule():
    class MyConv(nn.Conv2d):
        pass

    assert rule_for_module(MyConv(1, 1, 3)) is rule_for_module(nn.Conv2d(1, 1, 3)) is not None
    assert conversion_for(MyConv(1, 1, 3)) is conversion_for(nn.Conv2d(1, 1, 3)) is not None
    assert rule_for_module(_Swish()) is None and rule_for_module(_RuledSwish()) is _ruled_swish
    assert rule_for_function(torch.nn.functional.interpolate) is not None
    assert rule_for_method("view") is not None and rule_for_method("no_such_method") is None
    table = list_rules()
    assert "torch.nn.modules.conv.Conv2d" in table["modules"] and "permute" in table["methods"]
    assert "torch.nn.modules.upsampling.Upsample" in table["conversions"]


def test_a_second_rule_for_a_target_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        layout_rule(_RuledSwish)(lambda step: step.set(None))
    with pytest.raises(TypeError):
        layout_rule(3)(lambda step: None)


def test_an_unknown_layer_is_reported_and_a_layer_with_its_own_rule_converts():
    problems = validate(_net(_Swish()), (1, 8, 8))
    assert [p.node for p in problems] == ["1"] and "_Swish" in str(problems[0])
    with pytest.raises(UnsupportedModelError, match="_Swish"):
        keyed(_net(_Swish()), Key.from_seed(1), input_size=(1, 8, 8))
    net, key = _net(_RuledSwish()), Key.from_seed(2)
    assert validate(net, (1, 8, 8)) == []
    x = torch.rand(3, 1, 8, 8)
    for mode in ("features", "deformable"):
        knet = keyed(net, key, mode=mode, input_size=(1, 8, 8))
        y = schemes.create("pixel", key).encrypt(x)
        with torch.no_grad():
            assert float((knet(y) - net(x)).abs().max()) <= 1e-5
