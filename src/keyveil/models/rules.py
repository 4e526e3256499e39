"""The rule table of keyed CNN conversion: what each layer family does to a scrambled map.

A *layout rule* is a function of one :class:`~keyveil.models.steps.Step` (a
graph node under analysis, with the layouts of its inputs). It decides what
the node does to the key's order of positions by calling one of the step's
transfers (``step.passthrough()`` for position-wise operations,
``step.spatial()`` for convolutions and pooling, ``step.reject(reason)``
for what cannot run on a scrambled map, ...). Rules are registered by what a
node calls:

* a module class (``@layout_rule(nn.Conv2d)``), looked up along the method
  resolution order, so a subclass follows its parent's rule unless it has
  one of its own;
* a function (``@layout_rule(F.interpolate)``), by identity, or by
  ``__name__`` (``@layout_rule(names=("stochastic_depth",))``) for
  functions that exist in several copies;
* a ``Tensor`` method, by name (``@layout_rule("view", "reshape")``).

A node without a rule is fine when it touches no scrambled map and a problem
otherwise; the analyzer collects every problem and
:class:`~keyveil.models.UnsupportedModelError` lists them all at once.

A spatial family also registers its *conversion* (``@conversion_rule(nn.Conv2d)``):
the keyed layer that replaces such a node (``deformable`` mode's
index-reading convolution, say), looked up the same way.

Model libraries add their layers from a loader registered with
:func:`library_rules`, run the first time a rule is looked up after the
library was imported (so nothing here imports a library a model did not):
their layout rules, the layers the tracer keeps whole (timm's no-trace
registry) and the functions it records as one node, and the layers that pad
TensorFlow-style (``SAME``, padding that depends on the input size).

The pattern follows torchvision v2's kernel registry (``_register_kernel_internal``:
a dict keyed by type, MRO lookup) and Opacus' validator registry.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

__all__ = [
    "Rule", "Conversion", "layout_rule", "conversion_rule", "library_rules", "rule_for_module",
    "rule_for_function", "rule_for_method", "conversion_for", "list_rules", "register_leaf_modules", "leaf_module_types", "register_autowrap_functions",
    "autowrap_functions", "register_same_padded", "same_padded",
]

Rule = Callable[[Any], None]  # takes a keyveil.models.steps.Step
Conversion = Callable[[Any, Any], "nn.Module | None"]  # (module or resize function, keyveil.models.layout.Site)

_MODULE_RULES: dict[type[nn.Module], Rule] = {}
_FUNCTION_RULES: dict[Any, Rule] = {}
_FUNCTION_NAME_RULES: dict[str, Rule] = {}
_METHOD_RULES: dict[str, Rule] = {}
_LEAF_PROVIDERS: list[Callable[[], Iterable[type[nn.Module]]]] = []
_AUTOWRAP_PROVIDERS: list[Callable[[], Iterable[Any]]] = []
_SAME_PADDED: dict[type[nn.Module], bool] = {}  # class -> computes its torch.nn parent's op (plain forward)
_PENDING_LIBRARIES: dict[str, list[Callable[[], None]]] = {}
_CONVERSIONS: dict[Any, Conversion] = {}


def _add(table: dict[Any, Rule], key: Any, rule: Rule, what: str) -> None:
    if key in table and table[key] is not rule:
        raise ValueError(f"a layout rule for {what} {key!r} is already registered ({table[key].__qualname__})")
    table[key] = rule


def layout_rule(*targets: type[nn.Module] | Callable[..., Any] | str, names: tuple[str, ...] = ()
                ) -> Callable[[Rule], Rule]:
    """Register the decorated function as the layout rule of ``targets``.

    Args:
        targets: module classes, functions (matched by identity) or ``Tensor``
            method names.
        names: function ``__name__``\\s matched when no function rule matches by identity.

    Raises:
        ValueError: a target already has another rule.

    Examples:
        >>> from torch import nn
        >>> from keyveil.models.rules import layout_rule, rule_for_module
        >>> class Swish(nn.Module):
        ...     def forward(self, x):
        ...         return x * x.sigmoid()
        >>> @layout_rule(Swish)
        ... def _swish(step):
        ...     step.passthrough()  # acts on each value alone
        >>> rule_for_module(Swish()) is _swish
        True
    """

    def register(rule: Rule) -> Rule:
        for target in dict.fromkeys(targets):
            if isinstance(target, str):
                _add(_METHOD_RULES, target, rule, "the Tensor method")
            elif isinstance(target, type) and issubclass(target, nn.Module):
                _add(_MODULE_RULES, target, rule, "the module class")
            elif callable(target):
                _add(_FUNCTION_RULES, target, rule, "the function")
            else:
                raise TypeError(f"a layout rule targets module classes, functions or method names; got {target!r}")
        for name in names:
            _add(_FUNCTION_NAME_RULES, name, rule, "functions named")
        return rule

    return register


def conversion_rule(*targets: type[nn.Module] | Callable[..., Any]) -> Callable[[Conversion], Conversion]:
    """Register how the spatial nodes calling ``targets`` (module classes or functions) are converted.

    The conversion gets the module (or, for a function, the call as a
    function of its input) and the :class:`~keyveil.models.layout.Site`
    (sizes, permutations, mode) and returns the keyed layer that replaces it,
    or ``None`` in ``features`` mode for the generic un-scramble → op →
    scramble wrapping. A layout rule that calls ``step.spatial()`` needs one.
    """

    def register(conversion: Conversion) -> Conversion:
        for target in dict.fromkeys(targets):
            if not callable(target) or isinstance(target, str):
                raise TypeError(f"a conversion rule targets module classes or functions; got {target!r}")
            _add(_CONVERSIONS, target, conversion, "the conversion of")
        return conversion

    return register


def library_rules(module_name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Register a loader of a model library's rules, run once ``module_name`` has been imported."""

    def register(loader: Callable[[], None]) -> Callable[[], None]:
        _PENDING_LIBRARIES.setdefault(module_name, []).append(loader)
        return loader

    return register


def _load_libraries() -> None:
    for name in [n for n in _PENDING_LIBRARIES if n in sys.modules]:
        for loader in _PENDING_LIBRARIES.pop(name):
            loader()


def rule_for_module(module: nn.Module) -> Rule | None:
    """The rule of the nearest class in ``type(module)``'s method resolution order that has one."""
    _load_libraries()
    for cls in type(module).__mro__:
        rule = _MODULE_RULES.get(cls)
        if rule is not None:
            return rule
    return None


def rule_for_function(fn: Any) -> Rule | None:
    """The rule of a function (by identity, then by ``__name__``)."""
    _load_libraries()
    try:
        rule = _FUNCTION_RULES.get(fn)
    except TypeError:  # unhashable callable
        rule = None
    return rule if rule is not None else _FUNCTION_NAME_RULES.get(getattr(fn, "__name__", ""))


def rule_for_method(name: str) -> Rule | None:
    """The rule of a ``Tensor`` method."""
    _load_libraries()
    return _METHOD_RULES.get(name)


def conversion_for(target: nn.Module | Callable[..., Any]) -> Conversion | None:
    """The conversion of a module (nearest class in its MRO) or of a function (by identity)."""
    _load_libraries()
    if isinstance(target, nn.Module):
        for cls in type(target).__mro__:
            if cls in _CONVERSIONS:
                return _CONVERSIONS[cls]
        return None
    try:
        return _CONVERSIONS.get(target)
    except TypeError:  # unhashable callable
        return None


def list_rules() -> dict[str, list[str]]:
    """Every registered target by kind: ``modules``, ``functions``, ``function_names``, ``methods``, ``conversions``."""
    _load_libraries()
    return {
        "modules": sorted(f"{c.__module__}.{c.__qualname__}" for c in _MODULE_RULES),
        "functions": sorted({f"{getattr(f, '__module__', '')}.{getattr(f, '__name__', repr(f))}"
                             for f in _FUNCTION_RULES}),
        "function_names": sorted(_FUNCTION_NAME_RULES),
        "methods": sorted(_METHOD_RULES),
        "conversions": sorted(f"{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', repr(t))}"
                              for t in _CONVERSIONS),
    }


def register_leaf_modules(provider: Callable[[], Iterable[type[nn.Module]]]) -> None:
    """Add a source of module classes the tracer keeps whole (calls as one node) besides ``torch.nn``'s.

    ``provider`` is asked at every trace (a library may register more layers later).
    """
    _LEAF_PROVIDERS.append(provider)


def leaf_module_types() -> tuple[type[nn.Module], ...]:
    """Every module class the registered providers name."""
    _load_libraries()
    return tuple(dict.fromkeys(t for provider in _LEAF_PROVIDERS for t in provider()))


def register_autowrap_functions(provider: Callable[[], Iterable[Any]]) -> None:
    """Add a source of functions the tracer records as single graph nodes (instead of tracing into them)."""
    _AUTOWRAP_PROVIDERS.append(provider)


def autowrap_functions() -> tuple[Any, ...]:
    """Every function the registered providers name."""
    _load_libraries()
    return tuple(dict.fromkeys(f for provider in _AUTOWRAP_PROVIDERS for f in provider()))


def register_same_padded(*types: type[nn.Module], plain_forward: bool) -> None:
    """Conv / pool classes padding TensorFlow-style (``SAME``, depending on the input size).

    ``plain_forward``: besides the padding, they compute what their
    ``torch.nn`` parent computes (so deformable mode may rebuild them).
    """
    for t in types:
        _SAME_PADDED[t] = plain_forward


def same_padded(module: nn.Module) -> bool | None:
    """``None`` unless ``module`` pads ``SAME``; then whether its forward is its parent's."""
    _load_libraries()
    for cls in type(module).__mro__:
        if cls in _SAME_PADDED:
            return _SAME_PADDED[cls]
    return None
