"""Pieces shared by the strategies: the inner loop driver, the forward solve, scalar checks."""

from __future__ import annotations

from typing import Any

from bilevel import tree
from bilevel.backends.base import Backend, Tree
from bilevel.problem import Problem
from bilevel.protocols import BlackBoxSolver, InnerObjective, IterativeSolver

__all__ = [
    "Diag",
    "check_scalar",
    "initial_state",
    "objective",
    "outer_value",
    "require_iterative",
    "run_steps",
    "solve_forward",
    "vectorizable",
]

Diag = dict[str, Any]


def objective(problem: Problem, meta: Tree, task: Tree, backend: Backend) -> InnerObjective:
    """The inner objective of ``problem`` for one task, as a solver sees it."""
    return InnerObjective(problem.inner_loss, meta, task, backend)


def check_scalar(value: Any, what: str) -> Any:
    """Return ``value`` if it is a 0-d array, else raise a ``TypeError`` naming ``what``."""
    if getattr(value, "ndim", None) != 0:
        raise TypeError(
            f"{what} must return a 0-d array (a scalar), got {type(value).__name__} with shape "
            f"{getattr(value, 'shape', None)}; reduce it with .mean() or .sum()"
        )
    return value


def outer_value(problem: Problem, params: Tree, meta: Tree, task: Tree) -> Any:
    """``F(params, meta, task)``, checked to be a scalar."""
    return check_scalar(problem.outer_loss(params, meta, task), "Problem.outer_loss")


def not_a_solver(solver: object) -> TypeError:
    """The error for a ``solver`` argument that is no inner solver at all."""
    if isinstance(solver, type):
        return TypeError(
            f"hypergrad: solver={solver.__name__} is a class; pass an instance, e.g. "
            "solvers.GradientDescent(lr=0.01, steps=5)"
        )
    return TypeError(
        f"hypergrad: solver must be an inner solver (with init/step/params/steps, or solve), "
        f"got {type(solver).__name__} ({solver!r}); use e.g. solvers.GradientDescent(lr, steps)"
    )


def require_iterative(solver: object, who: str) -> IterativeSolver:
    """``solver`` as an :class:`IterativeSolver`, or a ``TypeError`` saying what applies."""
    if isinstance(solver, IterativeSolver) and not isinstance(solver, type):
        return solver
    if isinstance(solver, type) or not isinstance(solver, BlackBoxSolver):
        raise not_a_solver(solver)
    raise TypeError(
        f"{who} differentiates through the inner loop, but {solver!r} is a black-box solver "
        "with no differentiable steps; use FirstOrder() or Implicit(...) with it, or an "
        "iterative solver (solvers.GradientDescent, solvers.Optimizer, solvers.UpdateRule)"
    )


def vectorizable(solver: object) -> bool:
    """Whether ``solver`` may run under ``vmap``: an iterative solver that does not say otherwise.

    A solver opts out with a ``vectorizable`` attribute that is ``False`` (e.g. one whose state
    is updated in place, which ``vmap`` rejects); tasks are then looped, with the same result.
    """
    return isinstance(solver, IterativeSolver) and bool(getattr(solver, "vectorizable", True))


def _first_leaf(t: Tree) -> Any:
    flat = tree.leaves(t)
    if not flat:
        raise ValueError("the inner parameters returned by Problem.init have no array leaves")
    return flat[0]


def run_steps(
    solver: IterativeSolver,
    state: Tree,
    obj: InnerObjective,
    start: int,
    stop: int,
    bad: Any,
) -> tuple[Tree, Any]:
    """Steps ``start … stop−1`` of the inner loop.

    ``bad`` is a 0-d array: −1 while every state so far is finite, else the first step whose
    result was not. It is updated without a host synchronisation, so the loop can be
    differentiated and vectorised; the caller checks it once at the end.
    """
    backend = obj.backend
    for t in range(start, stop):
        state = solver.step(state, obj)
        ok = backend.all_finite(state)
        fresh = backend.where(ok, bad, backend.scalar(float(t + 1), bad))
        bad = backend.where(bad < 0, fresh, bad)
    return state, bad


def initial_state(
    problem: Problem, solver: IterativeSolver, meta: Tree, task: Tree, backend: Backend
) -> tuple[Tree, Any, InnerObjective]:
    """``(solver.init(init(meta, task)), bad, objective)`` with ``bad`` = 0 if φ₀ is not finite."""
    obj = objective(problem, meta, task, backend)
    phi0 = problem.init(meta, task)
    like = _first_leaf(phi0)
    minus_one = backend.scalar(-1.0, like)
    bad = backend.where(backend.all_finite(phi0), minus_one, backend.scalar(0.0, like))
    return solver.init(phi0, obj), bad, obj


def solve_forward(
    problem: Problem, solver: object, meta: Tree, task: Tree, backend: Backend
) -> tuple[Tree, Diag]:
    """The inner solution at ``meta`` with no gradient path, for strategies that need no unroll."""
    meta = backend.stop_gradient(meta)
    if isinstance(solver, type):
        raise not_a_solver(solver)
    if isinstance(solver, IterativeSolver):
        state, bad, obj = initial_state(problem, solver, meta, task, backend)
        state, bad = run_steps(solver, state, obj, 0, solver.steps, bad)
        return backend.stop_gradient(solver.params(state)), {"nonfinite_step": bad}
    if isinstance(solver, BlackBoxSolver):
        obj = objective(problem, meta, task, backend)
        phi, info = solver.solve(problem.init(meta, task), obj)
        return backend.stop_gradient(phi), {"solver": info}
    raise not_a_solver(solver)
