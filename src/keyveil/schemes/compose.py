"""``compose`` — schemes applied one after another, under one key.

``create("compose", key, steps=[...])`` chains registered schemes by name;
:func:`chain` chains scheme objects you have already built. Either way:

- Steps run in order on encryption; :meth:`~ComposedScheme.decrypt` undoes
  them in reverse order. The chain is invertible only if every step is; if
  not, :class:`NotInvertibleError` names the first step that is not.
- Every step named in ``steps`` gets its own key, derived from the one key as
  ``key.derive(f"compose/{i}/{name}")`` (``i`` its index, ``name`` its
  registered name), so no two steps share randomness and the secret itself
  is never handed on. :meth:`~ComposedScheme.step_key` returns a step's key,
  e.g. to convert a model with :func:`keyveil.models.keyed`. Steps given as
  scheme objects keep their own keys.
- The chain is per-image if any step is. ``nonce`` is passed to every
  per-image step; their keys differ, so their streams are independent. One
  ``generator`` is handed to the per-image steps in turn: each draws where the
  previous one stopped (disjoint randomness), and the first draws exactly what
  it would draw alone.
- ``key_space_bits`` is the sum of the steps' (their keys are independent).
  ``config["params"]["steps"]`` lists the steps' configs (names, options and
  key fingerprints, never a secret); ``create("compose", key, **config["params"])``
  rebuilds the chain and checks every step's fingerprint.
- Errors from a step (geometry, dtype, missing key or nonce) keep their class
  and name the step: ``compose step 1 (pixel): ...``.

Presets (a keyless per-image step, then the keyed ``pixel`` step):

``visualmixer-seed+pixel``
    VisualMixer with the seed's 2..8 px windows, then a keyed pixel
    permutation. The small windows keep the local structure a CNN learns from,
    but leave faces recognizable (``keyveil schemes``). The keyed last step is
    what a keyed CNN follows exactly: a CNN trained on ``visualmixer-seed``
    images, converted with ``keyed(model, scheme.step_key(1), input_size=...)``,
    gives on ``visualmixer-seed+pixel`` images the logits the trained model
    gives on the ``visualmixer-seed`` images (tests/test_compose.py), so it has
    exactly that model's accuracy, while a viewer without the key sees a full
    permutation of the pixel positions.
``mix+pixel``
    Hao et al.'s MI (each 16 px patch's sub-patches replaced by a random
    mixture, which keeps a 4 px-resolution image visible), then a keyed pixel
    permutation. The same argument holds for a CNN trained on ``mix`` images;
    Hao's MI-invariant ViT is not a model :func:`~keyveil.models.keyed`
    converts.

``vit+patch``
    A keyed-plus-invariant composition (**our reading** of issue 20): the
    ``vit`` block step without its block scramble (a secret in-patch pixel
    permutation and negative–positive mask, the same for every p×p patch), then
    a fresh order of the patches per image (``patch``). An order-invariant ViT
    (:func:`keyveil.models.patch_invariant_vit`) converted with
    ``keyed(model, key, scheme=scheme)`` folds the block step into its patch
    embedding and ignores the patch order: on ``vit+patch`` images it gives
    the plain model's logits on plain images (tests/test_schemes_per_image.py).
    The two steps' sizes must match (``block_size`` = ``patch_size``, default 16).

Not a preset: ``visualmixer`` with its defaults then ``pixel``. The default
window is the whole image, and a uniformly random permutation per image
followed by a fixed one is again uniformly random: the chain's output has
exactly the distribution of ``visualmixer`` alone, and the key buys nothing.
To sweep VisualMixer's windows under a key, build
``create("compose", key, steps=[("visualmixer", {"window_fraction": f}), "pixel"])``.

Examples:
    >>> import torch
    >>> from keyveil import Key, schemes
    >>> key = Key.generate()
    >>> s = schemes.create("compose", key, steps=["etc", ("pixel", {"negapos": True})])
    >>> x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    >>> bool(torch.equal(s.decrypt(s.encrypt(x)), x)), s.per_image
    (True, False)
    >>> [step["scheme"] for step in s.config["params"]["steps"]]
    ['etc', 'pixel']
    >>> c = schemes.chain(schemes.create("patch", patch_size=8), schemes.create("pixel", Key.generate()))
    >>> c.per_image, c.invertible
    (True, False)

Notes:
    The keyed step does not protect against whoever holds its key. ``pixel``
    is a fixed permutation, so the chosen- and known-plaintext attacks of
    SECURITY.md apply to it (with a per-image first step, **our reading**:
    recovered up to the order inside the first step's windows, which is
    random anyway); who recovers it, or holds the keyed model (which contains
    it), is back to plain ``visualmixer-seed`` or ``mix`` images. Not yet
    measured through the composition.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..keys import Key
from .base import Nonce, Scheme
from .errors import SchemeError, UnknownSchemeError
from .registry import create, register_preset, register_scheme, scheme_class

__all__ = ["ComposedScheme", "chain", "StepSpec"]

StepSpec = str | tuple[str, Mapping[str, Any]] | Mapping[str, Any] | Scheme
"""A step: a registered name, ``(name, options)``, a scheme config dict or a built :class:`Scheme`."""


def step_name(step: Scheme) -> str:
    """The name a step is known by: its registered name (preset) or its class's name."""
    return getattr(step, "registered_name", step.name)


def _spec_label(spec: Any) -> str:
    if isinstance(spec, Scheme):
        return step_name(spec)
    if isinstance(spec, str):
        return spec
    if isinstance(spec, (tuple, list)) and spec and isinstance(spec[0], str):
        return spec[0]
    if isinstance(spec, Mapping) and isinstance(spec.get("scheme"), str):
        return spec["scheme"]
    return type(spec).__name__


def _parse_spec(spec: Any) -> tuple[str, dict[str, Any], str | None]:
    """``(name, options, key fingerprint or None)`` of a step given by name."""
    if isinstance(spec, str):
        return spec, {}, None
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
        if not isinstance(spec[1], Mapping):
            raise SchemeError(f"its options must be a dict, got {type(spec[1]).__name__}")
        return spec[0], dict(spec[1]), None
    if isinstance(spec, Mapping) and isinstance(spec.get("scheme"), str):
        unknown = set(spec) - {"scheme", "params", "key_fingerprint"}
        if unknown:
            raise SchemeError(f"a step config has keys scheme, params, key_fingerprint; got also {sorted(unknown)}")
        params = spec.get("params") or {}
        if not isinstance(params, Mapping):
            raise SchemeError(f"its params must be a dict, got {type(params).__name__}")
        return spec["scheme"], dict(params), spec.get("key_fingerprint")
    raise SchemeError(
        f"a step is a scheme name ('pixel'), a (name, options) pair (('pixel', {{'negapos': True}})), "
        f"a scheme config dict or a Scheme; got {spec!r}"
    )


def _build_step(key: Key | None, index: int, spec: Any) -> Scheme:
    if isinstance(spec, Scheme):
        return spec
    name, options, fingerprint = _parse_spec(spec)
    if key is None and scheme_class(name).needs_key:
        raise SchemeError(
            f"scheme {name!r} needs a key: pass one to create('compose', key, steps=[...]), which derives "
            "a key per step, or give this step as a scheme built with its own key"
        )
    sub = None if key is None else key.derive(f"compose/{index}/{name}")
    try:
        step = create(name, sub, **options)
    except TypeError as exc:  # an option the step's class does not take
        raise SchemeError(str(exc)) from exc
    if fingerprint is not None and (step.key is None or step.key.fingerprint != fingerprint):
        have = "no key" if step.key is None else f"key {step.key.fingerprint}"
        raise SchemeError(
            f"its config names key {fingerprint}, but the step built here has {have}: the config comes "
            "from another key (or from chain(), whose steps keep their own keys; rebuild those with chain())"
        )
    return step


def build_steps(key: Key | None, specs: Any) -> list[Scheme]:
    """Build every step of a chain; one error lists every step that cannot be built."""
    if specs is None:
        raise SchemeError("a composition needs at least one step: pass steps=[...], e.g. "
                          "create('compose', key, steps=['visualmixer', 'pixel'])")
    if isinstance(specs, (str, Scheme, Mapping)) or not isinstance(specs, Sequence):
        raise SchemeError(
            f"steps must be a list of steps, e.g. steps=['visualmixer', 'pixel']; got {specs!r}"
        )
    if not specs:
        raise SchemeError("a composition needs at least one step, e.g. steps=['visualmixer', 'pixel']")
    steps: list[Scheme] = []
    problems: list[tuple[str, Exception]] = []
    for i, spec in enumerate(specs):
        try:
            steps.append(_build_step(key, i, spec))
        except SchemeError as exc:
            problems.append((f"step {i} ({_spec_label(spec)}): {exc}", exc))
    if problems:
        unknown = all(isinstance(exc, UnknownSchemeError) for _, exc in problems)
        cls = UnknownSchemeError if unknown else SchemeError
        raise cls("cannot build the composition: " + "; ".join(text for text, _ in problems))
    keyed = [(i, s) for i, s in enumerate(steps) if s.key is not None]
    for a, (i, s) in enumerate(keyed):
        for j, t in keyed[a + 1:]:
            if s.key == t.key:
                raise SchemeError(
                    f"steps {i} ({step_name(s)}) and {j} ({step_name(t)}) hold the same key "
                    f"({s.key.fingerprint}): their randomness would be related and the key space would not "
                    "add up. Give each step its own key, or name the steps in "
                    "create('compose', key, steps=[...]), which derives one key per step"
                )
    return steps


@contextlib.contextmanager
def _named(index: int, step: Scheme) -> Iterator[None]:
    """Re-raise a step's :class:`SchemeError` (same class) with the step named."""
    try:
        yield
    except SchemeError as exc:
        raise type(exc)(f"compose step {index} ({step_name(step)}): {exc}") from exc


@register_scheme(listed=False)
class ComposedScheme(Scheme):
    """Several schemes applied in order; each named step with its own key derived from ``key``.

    Args:
        key: the one key the steps' keys are derived from; ``None`` if no step
            given by name needs one (steps given as scheme objects keep theirs).
        steps: the steps, in order of encryption (see :data:`StepSpec`):
            ``"pixel"``, ``("visualmixer", {"ws_min": 2, "ws_max": 8})``, a
            config dict (``scheme.config``) or a built :class:`Scheme`.

    Attributes:
        steps: the built steps (an ``nn.ModuleList``), in order.

    Raises:
        SchemeError: no steps, a malformed step, an option a step does not
            take, a step that needs a key when none is given, two steps with
            the same key; every problem in one error.
        UnknownSchemeError: steps that are not registered names (with a
            suggestion).

    See the module docstring for the semantics and the presets.
    """

    name = "compose"
    description = "schemes applied one after another, each step with its own key derived from the one key"
    # What a command-line tool asks before building a preset: every registered
    # chain holds a keyed step. An instance says what its own steps need.
    needs_key = True

    def __init__(self, key: Key | None = None, *, steps: Sequence[StepSpec] | None = None) -> None:
        if key is not None and not isinstance(key, Key):
            raise TypeError(f"key must be a keyveil.Key, got {type(key).__name__}")
        built = build_steps(key, steps)
        # build_steps has checked each named step's key (naming the step); skip the base class's check.
        self.needs_key = False
        super().__init__(key)
        self.steps = nn.ModuleList(built)
        self.needs_key = any(s.needs_key for s in built)

    # -- what the chain is --------------------------------------------------
    @property
    def invertible(self) -> bool:  # type: ignore[override]
        return all(s.invertible for s in self.steps)

    @property
    def per_image(self) -> bool:  # type: ignore[override]
        return any(s.per_image for s in self.steps)

    @property
    def mixes_batch(self) -> bool:  # type: ignore[override]
        return any(s.mixes_batch for s in self.steps)

    def step_key(self, index: int) -> Key | None:
        """The key of step ``index`` (e.g. the ``pixel`` step's, for :func:`keyveil.models.keyed`).

        It is a secret like the key itself: whoever holds it undoes that step.
        """
        return self.steps[index].key

    def params_dict(self) -> dict[str, Any]:
        return {"steps": [s.config for s in self.steps]}

    def extra_repr(self) -> str:
        names = " -> ".join(step_name(s) for s in self.steps)
        return names if self.key is None else f"{names}, key={self.key.fingerprint}"

    def not_invertible_reason(self) -> str:
        for i, s in enumerate(self.steps):
            if not s.invertible:
                return f"compose step {i} ({step_name(s)}) is not invertible: {s.not_invertible_reason()}"
        return "every step is invertible"  # pragma: no cover - only asked when one is not

    def key_space_bits(self, shape: Sequence[int]) -> float:
        """The sum of the steps' key spaces (their keys are independent)."""
        return float(sum(s.key_space_bits(shape) for s in self.steps))

    def check_geometry(self, chw: tuple[int, ...]) -> None:
        super().check_geometry(chw)
        for i, s in enumerate(self.steps):
            with _named(i, s):
                s.check_geometry(chw)

    def prepare(self, dtype: torch.dtype = torch.uint8) -> None:
        for s in self.steps:
            s.prepare(dtype)

    # -- application --------------------------------------------------------
    def _encrypt(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None, nonce: Nonce | None = None,
    ) -> torch.Tensor:
        for i, s in enumerate(self.steps):
            with _named(i, s):
                x = s.encrypt(x, generator=generator, nonce=nonce) if s.per_image else s.encrypt(x)
        return x

    def _decrypt(self, y: torch.Tensor, *, nonce: Nonce | None = None) -> torch.Tensor:
        for i in reversed(range(len(self.steps))):
            s = self.steps[i]
            with _named(i, s):
                y = s.decrypt(y, nonce=nonce) if s.per_image else s.decrypt(y)
        return y


def chain(*steps: Scheme) -> ComposedScheme:
    """The schemes ``steps`` applied in order, as one scheme (each keeps its own key).

    The steps are used as given, not copied. Two steps may not hold the same
    key: build each keyed step with its own key, or use
    ``create("compose", key, steps=[...])`` to derive them from one.

    Examples:
        >>> import torch
        >>> from keyveil import Key, schemes
        >>> etc, pixel = schemes.create("etc", Key.generate()), schemes.create("pixel", Key.generate())
        >>> both = schemes.chain(etc, pixel)
        >>> x = torch.rand(1, 3, 8, 8)
        >>> bool(torch.equal(both.encrypt(x), pixel.encrypt(etc.encrypt(x))))
        True
    """
    for i, s in enumerate(steps):
        if not isinstance(s, Scheme):
            raise TypeError(
                f"chain() takes Scheme objects; argument {i} is {type(s).__name__} "
                "(to chain by name, use create('compose', key, steps=[...]))"
            )
    return ComposedScheme(None, steps=list(steps))


register_preset(
    "visualmixer-seed+pixel", ComposedScheme,
    "visualmixer-seed (2..8 px windows), then a keyed pixel shuffle (keyed CNNs follow the pixel step exactly)",
    steps=("visualmixer-seed", "pixel"),
)
register_preset(
    "mix+pixel", ComposedScheme,
    "mix (Hao et al. MI), then a keyed pixel shuffle (keyed CNNs follow the pixel step exactly)",
    steps=("mix", "pixel"),
)
register_preset(
    "vit+patch", ComposedScheme,
    "keyed in-patch shuffle + NP mask (vit without block scramble), then a fresh patch order per image "
    "(a keyed order-invariant ViT follows it exactly)",
    steps=(("vit", {"scramble": False}), "patch"),
)
