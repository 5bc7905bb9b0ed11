"""The unrolled hypergradient in forward mode: one JVP per meta-scalar, memory flat in K."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bilevel.backends.base import Backend, Tree
from bilevel.problem import Problem
from bilevel.strategies._common import require_iterative, vectorizable
from bilevel.strategies.base import Outcome
from bilevel.strategies.unrolled import unrolled_map

__all__ = ["ForwardMode"]


@dataclass(frozen=True)
class ForwardMode:
    r"""The :class:`Unrolled` hypergradient by forward-mode JVPs, one per scalar of θ.

    .. math:: g_i = \frac{d}{dε} F(φ_K(θ + ε e_i), θ + ε e_i)\Big|_{ε=0}, \quad i = 1 … \dim θ

    Each JVP carries tangents alongside the inner loop, so memory does not grow with K; time
    grows with ``dim θ``. The right choice when θ is a handful of scalars (a discount γ, a trace
    λ, a learning rate) and the inner loop is long.

    Example:
        >>> import torch, solvers
        >>> from bilevel import Problem, hypergrad, ForwardMode
        >>> p = Problem(init=lambda m, t: m,
        ...             inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2,
        ...             outer_loss=lambda w, m, t: (w**2).sum() / 2)
        >>> res = hypergrad(p, solvers.GradientDescent(lr=0.5, steps=1), torch.tensor(2.0),
        ...                 torch.tensor(0.0), strategy=ForwardMode())
        >>> float(res.grad)
        0.5
    """

    def validate(self, solver: object) -> None:
        require_iterative(solver, "ForwardMode()")

    def vectorizable(self, solver: object) -> bool:
        return vectorizable(solver)

    def compute(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> Outcome:
        fn = unrolled_map(problem, solver, meta, task, backend, frozen=0)
        flat, unravel = backend.ravel(meta)
        n = int(flat.shape[0])
        if n == 0:
            value, (params, diag) = fn(meta)
            return Outcome(value, meta, params, diag)
        eye = np.eye(n)
        derivs: list[Any] = []
        value: Any = None
        params: Tree = None
        diag: dict[str, Any] = {}
        for i in range(n):
            tangent = unravel(backend.from_numpy(eye[i], like=flat))
            value, deriv, (params, diag) = backend.jvp(fn, (meta,), (tangent,), has_aux=True)
            derivs.append(deriv)
        return Outcome(value, unravel(backend.stack(derivs)), params, diag)

    def reference(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> Callable[[Tree], Any]:
        fn = unrolled_map(problem, solver, meta, task, backend, frozen=0)
        return lambda theta: fn(theta)[0]
