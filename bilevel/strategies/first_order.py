"""First-order hypergradients: every inner step treated as the identity in φ and constant in θ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bilevel import tree
from bilevel.backends.base import Backend, Tree
from bilevel.problem import Problem
from bilevel.strategies._common import initial_params, outer_value, solve_forward, vectorizable
from bilevel.strategies.base import AuxMap, ReverseModeOfMap

__all__ = ["FirstOrder"]


@dataclass(frozen=True)
class FirstOrder(ReverseModeOfMap):
    r"""First-order MAML: the inner loop's Jacobian replaced by the identity.

    .. math:: g = ∂_θ F(φ_K, θ) + \Big(\frac{∂\,\mathrm{init}}{∂θ}\Big)^{\!⊤} ∇_φ F(φ_K, θ)

    It is the exact derivative at θ₀ of ``θ ↦ F(φ_K(θ₀) + init(θ) − init(θ₀), θ)``: the inner
    solution moves with ``init`` and nothing else. Works with every solver, black-box included;
    costs one forward solve and one gradient of F.

    Example:
        >>> import torch
        >>> from bilevel import solvers
        >>> from bilevel import Problem, hypergrad, FirstOrder
        >>> p = Problem(init=lambda m, t: m,
        ...             inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2,
        ...             outer_loss=lambda w, m, t: (w**2).sum() / 2)
        >>> res = hypergrad(p, solvers.GradientDescent(lr=0.5, steps=1), torch.tensor(2.0),
        ...                 torch.tensor(0.0), strategy=FirstOrder())
        >>> float(res.grad)  # ∇_φ F at φ₁ = 1
        1.0
    """

    def validate(self, solver: object) -> None:
        return None

    def vectorizable(self, solver: object) -> bool:
        return vectorizable(solver)

    def map_with_aux(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> tuple[AuxMap, dict[str, Any]]:
        params_k, found = solve_forward(problem, solver, meta, task, backend)
        init0 = backend.stop_gradient(
            initial_params(problem, backend.stop_gradient(meta), task, backend)
        )

        def fn(theta: Tree) -> tuple[Any, tuple[Tree, dict[str, Any]]]:
            shift = tree.sub(problem.init(theta, task), init0)
            params = tree.add(params_k, shift)
            return outer_value(problem, params, theta, task), (params_k, {})

        return fn, found
