"""Which operations of a traced CNN commute with a spatial permutation: the graph walk over the rule table.

A model is traced (:mod:`.tracing`), shapes are propagated on an example
input, and every value gets a layout (:mod:`.layout`). The input image is
scrambled; each later node is classified by the rule registered for what it
calls (:mod:`.rules`; ``torch.nn``'s in :mod:`.rules_torch`, timm's in
:mod:`.rules_timm`), which passes the layout through, marks the node
spatial (wrapped by the conversion), folds a ``Linear``, or records a
problem. A node no rule knows is a problem when a scrambled map reaches it.
Maps the model returns are un-scrambled at the end (``unscramble_outputs``)
or reported.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from . import rules_timm, rules_torch  # noqa: F401  (they register their rules on import)
from .layout import Analysis, op_name, shape_of, spatial_layout, tensor_leaves
from .rules import rule_for_function, rule_for_method, rule_for_module
from .steps import Rejected, Step, record_problem
from .tracing import propagate_shapes, trace

__all__ = ["analyze", "analyze_model"]


def _classify(node: fx.Node, step: Step) -> None:
    if node.op == "call_module":
        rule = rule_for_module(step.module)
    elif node.op == "call_function":
        rule = rule_for_function(node.target)
    else:
        rule = rule_for_method(node.target)
    if rule is None:
        step.unknown()
    else:
        rule(step)


def _output(node: fx.Node, result: Analysis, scr, unscramble_outputs: bool) -> None:
    for n, lay in scr:
        if not unscramble_outputs:
            record_problem(result, node, "output", f"the model returns a {lay.h}x{lay.w} feature map; keyed() "
                           "supports models whose outputs have no spatial dimensions (classifiers)")
        elif lay.flat is not None or lay.channels_last or len(shape_of(n) or ()) != 4:
            record_problem(result, node, "output", f"the model returns a scrambled {lay.h}x{lay.w} map as "
                           f"{shape_of(n)}; only (B, C, H, W) output maps can be un-scrambled")
        elif n not in result.outputs:
            result.outputs.append(n)


def analyze(gm: fx.GraphModule, *, mode: str, unscramble_outputs: bool = False) -> Analysis:
    """Classify every node of a traced, shape-propagated graph (see the module docstring).

    Args:
        gm: the traced model, shapes propagated (:func:`~keyveil.models.tracing.propagate_shapes`).
        mode: ``"features"`` or ``"deformable"``.
        unscramble_outputs: accept scrambled ``(B, C, H, W)`` maps among the
            outputs (listed in :attr:`Analysis.outputs`, to be un-scrambled
            before they are returned); otherwise each is a problem.
    """
    result = Analysis(gm)
    layouts = result.layouts
    modules = dict(gm.named_modules())
    out = next((n for n in gm.graph.nodes if n.op == "output"), None)
    shapes = [shape_of(n) for n in tensor_leaves(out.args)] if out is not None else []
    dense = any(s is not None and len(s) == 4 and s[2] * s[3] > 1 for s in shapes)  # the model returns a map
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    failed: set[fx.Node] = set()
    for node in gm.graph.nodes:
        inputs = tensor_leaves((node.args, node.kwargs))
        if any(n in failed for n in inputs):
            failed.add(node)  # already reported upstream
            continue
        if node.op == "placeholder":
            layouts[node] = spatial_layout(shape_of(node)) if node is placeholders[0] else None
            if node is not placeholders[0] and not node.args:  # no default value
                record_problem(result, node, "input", "keyed models take one image tensor; extra inputs are "
                               "not supported")
            continue
        if node.op == "get_attr":
            layouts[node] = None
            continue
        scr = [(n, lay) for n in inputs if (lay := layouts.get(n)) is not None]
        if node.op == "output":
            _output(node, result, scr, unscramble_outputs)
            continue
        module = modules[node.target] if node.op == "call_module" else None
        op = type(module).__name__ if module is not None else (
            op_name(node.target) if node.op == "call_function" else f"Tensor.{node.target}")
        step = Step(node, module, op, scr, result, mode, dense, unscramble_outputs)
        try:
            _classify(node, step)
        except Rejected:
            failed.add(node)
    return result


def analyze_model(model: nn.Module, example: torch.Tensor, *, mode: str,
                  unscramble_outputs: bool = True) -> Analysis:
    """Trace ``model``, propagate the shapes of ``example`` (``(1, C, H, W)``) and :func:`analyze` it."""
    gm = trace(model)
    propagate_shapes(gm, example)
    return analyze(gm, mode=mode, unscramble_outputs=unscramble_outputs)
