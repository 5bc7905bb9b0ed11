"""Pieces shared by the strategies: the inner loop driver, the forward solve, scalar checks
(:func:`check_scalar` is :func:`bilevel.protocols.check_scalar`: one check for inner and outer
losses)."""

from __future__ import annotations

from typing import Any

from bilevel import tree
from bilevel.backends.base import Backend, Tree
from bilevel.problem import Problem
from bilevel.protocols import (
    BlackBoxSolver,
    InnerObjective,
    IterativeSolver,
    PerStep,
    SemiGradient,
    check_scalar,
)
from bilevel.validate import callable_with

__all__ = [
    "Diag",
    "check_scalar",
    "first_nonfinite_step",
    "initial_params",
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
    """The inner objective of ``problem`` for one task, as a solver sees it (no step set: the
    driver :func:`run_steps` sets it).

    Raises:
        TypeError: if a :class:`PerStep` inner loss does not take the step as its last argument.
    """
    inner = problem.inner_loss
    semi = isinstance(inner, SemiGradient)
    fn = inner.loss if isinstance(inner, SemiGradient) else inner
    if isinstance(fn, PerStep):
        signature = "(params, targets, meta, task, step)" if semi else "(params, meta, task, step)"
        callable_with("PerStep", "loss", fn.fn, 5 if semi else 4, f"{signature} -> scalar")
    return InnerObjective(inner, meta, task, backend)


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
    methods = ("init", "step", "params", "steps")
    if all(hasattr(solver, m) for m in methods) and not hasattr(solver, "vectorizable"):
        return TypeError(
            f"hypergrad: {solver!r} has init/step/params/steps but does not declare "
            "vectorizable, which an IterativeSolver must: add the class attribute "
            "vectorizable = True if its steps are pure functions of arrays (a Batch is then "
            "vmapped), or vectorizable = False if a step updates state in place or reads "
            "values back to the host (a Batch is then looped)"
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
    """Whether ``solver`` may run under ``vmap``: an iterative solver that declares it
    (:attr:`IterativeSolver.vectorizable`). A black-box solver never may; a solver declaring
    ``False`` (e.g. one whose state is updated in place) runs a Batch task by task, with the
    same result."""
    return isinstance(solver, IterativeSolver) and solver.vectorizable is True


def run_steps(
    solver: IterativeSolver, state: Tree, obj: InnerObjective, start: int, stop: int
) -> Tree:
    """Steps ``start … stop−1`` of the inner loop, each told its index (for :class:`PerStep`
    losses, rules and hyperparameters): no checks and no host synchronisation, so the
    loop can be differentiated and vectorised (a non-finite result is traced back to its step
    afterwards by :func:`first_nonfinite_step`)."""
    for t in range(start, stop):
        state = solver.step(state, obj.at(t))
    return state


def initial_params(problem: Problem, meta: Tree, task: Tree, backend: Backend) -> Tree:
    """``φ₀ = init(meta, task)``, checked to be a tree of floating arrays of the backend.

    Raises:
        TypeError: for a leaf that is a Python number or another non-array (it would be a
            constant no strategy can differentiate), or an array of a non-floating dtype (an
            integer φ cannot take a gradient step).
    """
    params = problem.init(meta, task)
    flat, treedef = tree.flatten(params)
    for i, leaf in enumerate(flat):
        if not backend.owns(leaf):
            raise TypeError(
                f"Problem.init returned a {type(leaf).__name__} at leaf {i} of {treedef}; the "
                "inner parameters must be arrays with a floating dtype: return e.g. "
                "meta['w'] * 1.0, torch.tensor(x, dtype=torch.float64) or jnp.asarray(x, float)"
            )
        if not backend.is_differentiable(leaf) or backend.is_complex(leaf):
            raise TypeError(
                f"Problem.init returned leaf {i} of {treedef} with dtype {leaf.dtype}; the inner "
                "parameters need a real floating dtype to take gradient steps: convert it with "
                ".double()/.float() (torch) or .astype(float) (JAX)"
            )
    return params


def initial_state(
    problem: Problem, solver: IterativeSolver, meta: Tree, task: Tree, backend: Backend
) -> tuple[Tree, InnerObjective]:
    """``(solver.init(init(meta, task)), objective)``."""
    obj = objective(problem, meta, task, backend)
    return solver.init(initial_params(problem, meta, task, backend), obj), obj


def first_nonfinite_step(
    problem: Problem, solver: object, meta: Tree, task: Tree, backend: Backend
) -> int | None:
    """Re-run the inner loop step by step and return the first step whose state is not finite
    (0: ``init``), or ``None`` if every state is finite (or the solver is a black box)."""
    if not isinstance(solver, IterativeSolver) or isinstance(solver, type):
        return None
    meta = backend.stop_gradient(meta)
    state, obj = initial_state(problem, solver, meta, task, backend)
    for t in range(solver.steps + 1):
        if t > 0:
            state = solver.step(state, obj.at(t - 1))
        if not bool(backend.to_float(backend.all_finite(state))):
            return t
    return None


def solve_forward(
    problem: Problem, solver: object, meta: Tree, task: Tree, backend: Backend
) -> tuple[Tree, Diag]:
    """The inner solution at ``meta`` with no gradient path, for strategies that need no unroll."""
    meta = backend.stop_gradient(meta)
    if isinstance(solver, type):
        raise not_a_solver(solver)
    if isinstance(solver, IterativeSolver):
        state, obj = initial_state(problem, solver, meta, task, backend)
        state = run_steps(solver, state, obj, 0, solver.steps)
        return backend.stop_gradient(solver.params(state)), {}
    if isinstance(solver, BlackBoxSolver):
        obj = objective(problem, meta, task, backend)
        phi, info = solver.solve(initial_params(problem, meta, task, backend), obj)
        return backend.stop_gradient(phi), {"solver": info}
    raise not_a_solver(solver)
