r"""Composing gradient transformations: chains, clipping, an L1 term and step-size schedules.

Small optax-style pieces (``init(params) -> state``, ``update(grads, state, params) ->
(updates, state)``) that combine with :class:`solvers.SGD` and :class:`solvers.Adam` instead of
adding options to them::

    chain(ClipByGlobalNorm(2.0), L1(0.02), Adam(lr=1e-2), ScaleBySchedule(CosineDecay(500)))

is Adam on the clipped meta-gradient plus the L1 subgradient, its step decayed along a cosine.
Every piece is pure and written with array operators, so it runs on torch and JAX, can serve as
the outer optimizer (``bilevel.trainer.fit``) or inside :class:`solvers.Optimizer`, where it is
differentiated through and vectorised over a :class:`~bilevel.Batch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from bilevel import tree
from bilevel.solvers.optim import sqrt_zero_safe, update
from bilevel.solvers.optim import vectorizable as declared_vectorizable
from bilevel.validate import callable_with, count, instance, nonnegative, positive

__all__ = ["L1", "Chain", "ClipByGlobalNorm", "CosineDecay", "ScaleBySchedule", "chain"]

Tree = Any


def _is_transform(t: object) -> bool:
    return callable(getattr(t, "init", None)) and callable(getattr(t, "update", None))


@dataclass(frozen=True)
class Chain:
    r"""Transformations applied in order: each one's updates are the next one's gradients.

    .. math:: u = T_n(\cdots T_2(T_1(g)))

    Build it with :func:`chain`. The state is the tuple of the members' states.

    Args:
        transforms: the transformations, first applied first.

    Raises:
        TypeError: if ``transforms`` is not a tuple, or a member lacks ``init``/``update``.
        ValueError: if it is empty.
    """

    transforms: tuple[Any, ...]

    def __post_init__(self) -> None:
        given = cast(object, self.transforms)  # checked at run time: callers may pass anything
        if not isinstance(given, tuple):
            raise TypeError(
                f"Chain: transforms must be a tuple, got {type(given).__name__}; "
                "build it with solvers.chain(t1, t2, ...)"
            )
        if not self.transforms:
            raise ValueError("chain(): give at least one transformation, e.g. chain(Adam(1e-3))")
        for i, t in enumerate(self.transforms):
            if isinstance(t, type):
                raise TypeError(f"chain: transformation {i} is the class {t.__name__}; pass an "
                                f"instance, e.g. {t.__name__}(...)")  # fmt: skip
            if not _is_transform(t):
                raise TypeError(
                    f"chain: transformation {i} ({t!r}) has no init(params) and "
                    "update(grads, state, params) methods; pass optax-style transformations "
                    "such as solvers.Adam(1e-3) or solvers.ClipByGlobalNorm(1.0)"
                )

    @property
    def vectorizable(self) -> bool:
        """Whether every member is declared vectorizable (:func:`solvers.optim.vectorizable`)."""
        return all(declared_vectorizable(t) for t in self.transforms)

    def init(self, params: Tree) -> tuple[Any, ...]:
        return tuple(t.init(params) for t in self.transforms)

    def update(
        self, grads: Tree, state: tuple[Any, ...], params: Tree = None
    ) -> tuple[Tree, tuple[Any, ...]]:
        states = []
        for t, s in zip(self.transforms, state, strict=True):
            grads, s = update(t, grads, s, params)
            states.append(s)
        return grads, tuple(states)


def chain(*transforms: Any) -> Chain:
    """The :class:`Chain` of ``transforms``, applied in the order given.

    Example:
        >>> import torch
        >>> from bilevel.solvers import SGD, ClipByGlobalNorm, chain
        >>> opt = chain(ClipByGlobalNorm(1.0), SGD(lr=0.5))
        >>> g = {"a": torch.tensor(3.0), "b": torch.tensor(4.0)}  # norm 5: clipped to 1
        >>> updates, _ = opt.update(g, opt.init(g))
        >>> [round(float(u), 6) for u in updates.values()]
        [-0.3, -0.4]
    """
    return Chain(transforms)


class EmptyState(NamedTuple):
    """The state of a stateless transformation."""


@dataclass(frozen=True)
class ClipByGlobalNorm:
    r"""Rescale the gradients so that their joint Euclidean norm is at most ``max_norm``.

    .. math:: u = g \cdot \frac{c}{\max(\lVert g \rVert_2, c)}

    with ``‖g‖`` over all leaves together (``torch.nn.utils.clip_grad_norm_`` without its
    ``1e-6`` in the denominator). The factor is computed with array operations, with no host
    synchronisation, so it traces under ``jax.jit``; its derivative at ``g = 0`` is finite.

    Args:
        max_norm: c > 0.

    Raises:
        TypeError / ValueError: for a non-numeric or non-positive ``max_norm``.
    """

    max_norm: float

    vectorizable = True

    def __post_init__(self) -> None:
        positive(f"ClipByGlobalNorm(max_norm={self.max_norm!r})", "max_norm", self.max_norm, "1.0")

    def init(self, params: Tree) -> EmptyState:
        return EmptyState()

    def update(
        self, grads: Tree, state: EmptyState, params: Tree = None
    ) -> tuple[Tree, EmptyState]:
        c = self.max_norm
        norm = sqrt_zero_safe(tree.vdot(grads, grads))
        factor = c / ((norm + c + abs(norm - c)) / 2)  # c / max(‖g‖, c), with array operators
        return tree.map(lambda g: g * factor, grads), state


@dataclass(frozen=True)
class L1:
    r"""Add the subgradient of an L1 penalty on the parameters: ``u = g + λ·sign(p)``.

    Place it before the optimizer in a chain to minimise ``F(θ) + λ‖θ‖₁`` (the subgradient 0 is
    used at ``p = 0``).

    Args:
        weight: λ ≥ 0.

    Raises:
        TypeError / ValueError: for a non-numeric or negative ``weight``; ``ValueError`` from
        ``update`` when called without ``params``.
    """

    weight: float

    vectorizable = True

    def __post_init__(self) -> None:
        nonnegative(f"L1(weight={self.weight!r})", "weight", self.weight, "1e-3")

    def init(self, params: Tree) -> EmptyState:
        return EmptyState()

    def update(
        self, grads: Tree, state: EmptyState, params: Tree = None
    ) -> tuple[Tree, EmptyState]:
        if params is None:
            raise ValueError(
                "L1.update needs the parameters: call update(grads, state, params) (fit and "
                "solvers.Optimizer do)"
            )
        lam = self.weight

        def one(g: Any, p: Any) -> Any:
            ones = p * 0 + 1  # p's dtype and device on either backend
            return g + lam * (ones * (p > 0) - ones * (p < 0))

        return tree.map(one, grads, params), state


class ScheduleState(NamedTuple):
    """How many updates the schedule has scaled so far."""

    step: int


@dataclass(frozen=True)
class ScaleBySchedule:
    r"""Multiply the updates by ``schedule(k)`` at the k-th update (k = 0, 1, …).

    After ``Adam(lr)`` or ``SGD(lr)`` this makes the step size ``lr · schedule(k)``.

    Args:
        schedule: ``(step: int) -> float``, e.g. :class:`CosineDecay`.

    Raises:
        TypeError: if ``schedule`` is a class or not a function of one argument.

    Example:
        >>> import torch
        >>> from bilevel.solvers import SGD, CosineDecay, ScaleBySchedule, chain
        >>> opt = chain(SGD(lr=1.0), ScaleBySchedule(CosineDecay(steps=2)))
        >>> state, g, factors = opt.init(torch.zeros(())), torch.tensor(-1.0), []
        >>> for _ in range(3):
        ...     u, state = opt.update(g, state)
        ...     factors.append(round(float(u), 6))
        >>> factors
        [1.0, 0.5, 0.0]
    """

    schedule: Callable[[int], float]

    vectorizable = True

    def __post_init__(self) -> None:
        instance("ScaleBySchedule", "schedule", self.schedule, "", "__call__")
        callable_with("ScaleBySchedule", "schedule", self.schedule, 1, "(step: int) -> float")

    def init(self, params: Tree) -> ScheduleState:
        return ScheduleState(0)

    def update(
        self, grads: Tree, state: ScheduleState, params: Tree = None
    ) -> tuple[Tree, ScheduleState]:
        factor = float(self.schedule(state.step))
        if not math.isfinite(factor):
            raise ValueError(
                f"ScaleBySchedule: schedule({state.step}) = {factor!r} is not finite; a "
                "schedule must return a finite factor at every step"
            )
        return tree.scale(factor, grads), ScheduleState(state.step + 1)


@dataclass(frozen=True)
class CosineDecay:
    r"""A cosine from 1 down to ``final`` over ``steps`` updates, then ``final``.

    .. math:: s(k) = a + (1 − a)\,\tfrac12\bigl(1 + \cos(π \min(k, K)/K)\bigr)

    Args:
        steps: K ≥ 1.
        final: a ∈ [0, 1], the factor reached at step K.

    Raises:
        TypeError / ValueError: for a non-integer or non-positive ``steps``, ``final`` ∉ [0, 1].

    Example:
        >>> from bilevel.solvers import CosineDecay
        >>> [round(CosineDecay(steps=4, final=0.1)(k), 6) for k in (0, 2, 4, 9)]
        [1.0, 0.55, 0.1, 0.1]
    """

    steps: int
    final: float = 0.0

    def __post_init__(self) -> None:
        count(f"CosineDecay(steps={self.steps!r})", "steps", self.steps, 1)
        nonnegative(f"CosineDecay(final={self.final!r})", "final", self.final, "0.0")
        if self.final > 1:
            raise ValueError(f"CosineDecay(final={self.final!r}): final must be in [0, 1]")

    def __call__(self, step: int) -> float:
        k = min(step, self.steps)
        cosine = 0.5 * (1 + math.cos(math.pi * k / self.steps))
        return self.final + (1 - self.final) * cosine
