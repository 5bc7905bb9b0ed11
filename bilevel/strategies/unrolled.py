"""Reverse-mode differentiation through the inner loop: ``Unrolled`` and ``Truncated``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bilevel.backends.base import Backend, Tree
from bilevel.problem import Problem
from bilevel.strategies._common import (
    initial_state,
    objective,
    outer_value,
    require_iterative,
    run_steps,
    vectorizable,
)
from bilevel.strategies.base import AuxMap, ReverseModeOfMap
from bilevel.validate import count

__all__ = ["Truncated", "Unrolled", "unrolled_map"]


def unrolled_map(
    problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend, frozen: int
) -> AuxMap:
    """``θ ↦ (F(φ_K(θ), θ), (φ_K, diag))`` with the first ``frozen`` steps held constant.

    With ``frozen = 0`` the map runs ``init`` and all K steps at θ. With ``frozen = j > 0`` the
    state after step j is computed once at ``meta`` and held constant, so θ enters only through
    steps ``j … K−1`` and F.
    """
    it = require_iterative(solver, "the unrolled map")
    prefix: Tree = None
    if frozen > 0:
        meta0 = backend.stop_gradient(meta)
        state0, obj0 = initial_state(problem, it, meta0, task, backend)
        prefix = backend.stop_gradient(run_steps(it, state0, obj0, 0, frozen))

    def fn(theta: Tree) -> tuple[Any, tuple[Tree, dict[str, Any]]]:
        if frozen > 0:
            state, obj = prefix, objective(problem, theta, task, backend)
        else:
            state, obj = initial_state(problem, it, theta, task, backend)
        params = it.params(run_steps(it, state, obj, frozen, it.steps))
        return outer_value(problem, params, theta, task), (params, {})

    return fn


@dataclass(frozen=True)
class Unrolled(ReverseModeOfMap):
    r"""Reverse mode through ``init`` and all K inner steps: MAML's meta-gradient.

    .. math:: g = \frac{d}{dθ} F(φ_K(θ), θ), \qquad φ_0 = \mathrm{init}(θ),\;
              φ_{t+1} = \mathrm{step}(φ_t, θ)

    Memory grows linearly with K (every step's activations are kept for the backward pass).

    Example:
        >>> import torch
        >>> from bilevel import solvers
        >>> from bilevel import Problem, hypergrad, Unrolled
        >>> p = Problem(init=lambda m, t: m,
        ...             inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2,
        ...             outer_loss=lambda w, m, t: (w**2).sum() / 2)
        >>> res = hypergrad(p, solvers.GradientDescent(lr=0.5, steps=1), torch.tensor(2.0),
        ...                 torch.tensor(0.0), strategy=Unrolled())
        >>> float(res.grad)  # φ₁ = θ/2, F = φ₁²/2, dF/dθ = θ/4
        0.5
    """

    def validate(self, solver: object) -> None:
        require_iterative(solver, "Unrolled()")

    def vectorizable(self, solver: object) -> bool:
        return vectorizable(solver)

    def map_with_aux(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> tuple[AuxMap, dict[str, Any]]:
        return unrolled_map(problem, solver, meta, task, backend, frozen=0), {}


@dataclass(frozen=True)
class Truncated(ReverseModeOfMap):
    r"""Reverse mode through the last ``T`` inner steps only.

    .. math:: g = \frac{d}{dθ} F(φ_K(θ), θ) \text{ with } φ_{K-T} \text{ held constant}

    No gradient flows into ``init`` or the first ``K − T`` steps; θ still enters the last ``T``
    steps and F directly. ``T ≥ K`` gives exactly :class:`Unrolled`. Memory grows with T, not K.

    Args:
        steps: T, the number of final inner steps to differentiate through (an int ≥ 1).

    Raises:
        TypeError: if ``steps`` is not an ``int``.
        ValueError: if ``steps`` < 1.

    Example:
        >>> import torch
        >>> from bilevel import solvers
        >>> from bilevel import Problem, hypergrad, Truncated
        >>> p = Problem(init=lambda m, t: m,
        ...             inner_loss=lambda w, m, t: ((w - m) ** 2).sum() / 2 + (w**2).sum() / 2,
        ...             outer_loss=lambda w, m, t: w.sum())
        >>> res = hypergrad(p, solvers.GradientDescent(lr=0.5, steps=3), torch.tensor(1.0),
        ...                 None, strategy=Truncated(1))
        >>> float(res.grad)  # last step φ₃ = φ₂ − 0.5(2φ₂ − θ) = θ/2 with φ₂ frozen
        0.5
    """

    steps: int

    def __post_init__(self) -> None:
        who = f"Truncated(steps={self.steps!r})"
        hint = " (the number of final inner steps to differentiate; for none use FirstOrder())"
        count(who, "steps", self.steps, 1, hint)

    def validate(self, solver: object) -> None:
        require_iterative(solver, f"Truncated({self.steps})")

    def vectorizable(self, solver: object) -> bool:
        return vectorizable(solver)

    def map_with_aux(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> tuple[AuxMap, dict[str, Any]]:
        k = require_iterative(solver, f"Truncated({self.steps})").steps
        frozen = max(k - self.steps, 0)
        return unrolled_map(problem, solver, meta, task, backend, frozen), {}
