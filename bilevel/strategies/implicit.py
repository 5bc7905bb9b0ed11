"""Implicit differentiation at the inner solution, with a linear solver passed by keyword."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bilevel import tree
from bilevel.backends.base import Backend, Tree
from bilevel.problem import Problem
from bilevel.protocols import (
    BatchLinearSolver,
    LinearOperator,
    LinearSolver,
    PerStep,
    SemiGradient,
)
from bilevel.strategies._common import (
    initial_params,
    objective,
    outer_value,
    require_iterative,
    solve_forward,
)
from bilevel.strategies.base import Outcome
from bilevel.validate import positive

__all__ = ["Implicit", "residual_map"]

ResidualMap = Callable[[Tree, Tree], Tree]


def residual_map(
    problem: Problem, solver: Any, task: Tree, params: Tree, backend: Backend
) -> tuple[ResidualMap, bool]:
    """The map ``G(φ, θ)`` whose zero defines φ*, and whether ``∂_φG`` is symmetric.

    ``G = ∇_φ f`` (a symmetric Hessian) when the problem has an inner loss (its semi-gradient,
    non-symmetric, for a :class:`~bilevel.SemiGradient` loss), else the fixed-point residual
    of the solver's step taken from a fresh state, ``G = φ − params(step(init(φ, θ), θ))``.
    For a solver whose state is φ alone that is ``φ − step(φ, θ)``; for one with more state
    (heavy-ball momentum, whose velocity starts at 0) it is the step of a solver restarted at
    φ, which is zero exactly where the full iteration rests (there the extra state is back at
    its start: a velocity of 0).

    Raises:
        TypeError: for a problem with no inner loss and a solver with no steps (a black box).
    """
    inner = problem.inner_loss
    if inner is not None:

        def grad_map(p: Tree, m: Tree) -> Tree:
            return objective(problem, m, task, backend).value_and_grad(p)[1]

        # a semi-gradient is not the gradient of a loss: its Jacobian is not symmetric
        return grad_map, not isinstance(inner, SemiGradient)

    it = require_iterative(solver, "Implicit(...) on a Problem without inner_loss (fixed point)")

    def fixed_point_residual(p: Tree, m: Tree) -> Tree:
        obj = objective(problem, m, task, backend)
        return tree.sub(p, it.params(it.step(it.init(p, obj), obj)))

    return fixed_point_residual, False


def _stationarity(
    problem: Problem,
    gmap: ResidualMap,
    task: Tree,
    meta: Tree,
    params: Tree,
    residual: Tree,
    matvec: Callable[[Tree], Tree],
    backend: Backend,
    tol: float,
) -> dict[str, Any]:
    """``‖G(φ_K)‖`` and the limit it is judged against.

    The limit is ``tol·max(‖Aᵀ(φ_K − φ₀)‖, ‖Aᵀφ_K‖)`` with ``A = ∂_φG`` at φ_K (the inner
    Hessian) and ``φ₀ = init(θ, τ)`` where the inner solve started: a fraction of how much the
    gradient changed along the solve (for a quadratic, exactly ``‖G(φ₀) − G(φ_K)‖``) or over a
    displacement the size of φ_K, whichever is larger; and never below G's rounding level
    ``√n·ε·‖Aᵀφ_K‖``.

    Both terms move with the loss (multiplying it by c multiplies ``G`` and ``A`` by c), so the
    verdict does not depend on the loss's scale: an absolute limit passed a 10-step solve far
    from φ* at loss scale 1e-6 and could not be met in float32 at loss scale 1e4. Neither is
    loosened by a steep start far away, as ``tol·‖G(φ₀)‖`` was (a quartic solve that stopped
    2.8 from φ* after starting 100 away, with ``‖G(φ₀)‖ = 1e6``, passed). The second term keeps
    a warm start that begins at φ* already (hyper-cleaning restarts each solve at the last φ*)
    from being judged against its own tiny displacement; its price is that it grows with φ's
    distance from the origin (keep parameters O(1), as optimisers assume anyway).
    """
    start = initial_params(problem, meta, task, backend)
    moved, at = matvec(tree.sub(params, start)), matvec(params)
    leaves = tree.leaves(params)
    n = sum(int(math.prod(x.shape)) for x in leaves)
    eps = backend.epsilon(leaves[0]) if leaves else 0.0
    norm_moved, norm_at = tree.vdot(moved, moved) ** 0.5, tree.vdot(at, at) ** 0.5
    rounding = math.sqrt(max(n, 1)) * eps * norm_at
    scale = tol * backend.where(norm_moved > norm_at, norm_moved, norm_at)
    return {
        "stationarity": tree.vdot(residual, residual) ** 0.5,
        "stationarity_limit": backend.where(scale > rounding, scale, rounding),
    }


def _refuse_per_step(problem: Problem) -> None:
    inner = problem.inner_loss
    if isinstance(inner.loss if isinstance(inner, SemiGradient) else inner, PerStep):
        raise TypeError(
            "Implicit(...): the Problem's inner_loss is a PerStep (it takes the inner step "
            "index), but Implicit differentiates the stationarity of one loss at φ*, a fixed "
            "point, which has no step; use Unrolled(), Truncated(T) or ForwardMode(), or an "
            "inner loss without the step"
        )


def _refuse_traced(meta: Tree, backend: Backend) -> None:
    """Implicit's linear solvers decide on the host when to stop, and its value is built from a
    stopped φ*: refuse a call under the caller's transforms (``jax.jit``, ``jax.grad``,
    ``torch.func``), in bilevel's words, instead of a framework error or a silent zero."""
    if backend.is_traced(meta):
        raise TypeError(
            "Implicit(...) cannot run inside jax.jit, jax.grad, torch.func.grad or a vmap of "
            "yours yet: its linear solver decides on the host when to stop, and its value and "
            "gradient are not differentiable functions of θ (a transform would see the value's "
            "derivative as 0). Call hypergrad outside the transform (a Batch vectorises the "
            "tasks for you), or use Unrolled(), Truncated(T), FirstOrder() or ForwardMode(), "
            "which compose with them"
        )


def _is_linear_solver(obj: object) -> bool:
    """An instance (not a class) whose ``solve`` takes ``(operator, b, *, backend)``."""
    if isinstance(obj, type) or not isinstance(obj, LinearSolver):
        return False
    try:
        return "backend" in inspect.signature(obj.solve).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Implicit:
    r"""Implicit-function-theorem hypergradient at the inner solution φ*.

    .. math::

        g = ∂_θF(φ^*, θ) − (∂_θG)^{⊤} v, \qquad (∂_φG)^{⊤} v = ∇_φF(φ^*, θ)

    with ``G = ∇_φ f`` (then ``∂_φG`` is the inner Hessian) or, without an inner loss,
    ``G = φ − params(step(init(φ), θ))`` for any iterative solver (the fixed point of one step
    restarted at φ). The linear system is solved by ``linear`` using only
    vector-Jacobian products; memory does not grow with the number of inner steps. The result
    is exact only if φ* is stationary: ``‖G(φ*)‖`` is reported as ``info.stationarity`` and a
    :class:`~bilevel.StationarityWarning` is issued above ``info.stationarity_limit =
    stationarity_tol · max(‖Aᵀ(φ* − φ₀)‖, ‖Aᵀφ*‖)``: a fraction of how much G changed along the
    inner solve from ``φ₀ = init(θ, τ)``, or over a displacement the size of φ*
    (``A = ∂_φG`` at φ*), whichever is larger. The test is relative so that it does not depend
    on the loss's scale (multiplying the inner loss by c multiplies both sides by c).

    Args:
        linear: a linear solver (``solvers.CG``, ``solvers.Neumann``, ``solvers.MINRES``,
            ``solvers.GMRES``, ``solvers.Direct``).
        stationarity_tol: the fraction of ``max(‖Aᵀ(φ* − φ₀)‖, ‖Aᵀφ*‖)`` that ``‖G(φ*)‖``
            may keep before the inner problem is reported as not solved (a warning).

    Raises:
        TypeError: if ``linear`` is not a linear solver.
        ValueError: if ``stationarity_tol`` is not a positive finite number.

    Example:
        >>> import torch
        >>> from bilevel import solvers
        >>> from bilevel import Problem, hypergrad, Implicit
        >>> p = Problem(init=lambda m, t: torch.zeros(()),
        ...             inner_loss=lambda w, m, t: (w - m) ** 2 / 2 + w**2 / 2,
        ...             outer_loss=lambda w, m, t: w)
        >>> res = hypergrad(p, solvers.GradientDescent(lr=0.5, steps=2), torch.tensor(1.0),
        ...                 None, strategy=Implicit(solvers.CG(maxiter=5)))
        >>> float(res.grad)  # φ* = θ/2
        0.5
    """

    linear: LinearSolver
    stationarity_tol: float = 1e-4

    def __post_init__(self) -> None:
        if not _is_linear_solver(self.linear):
            raise TypeError(
                f"Implicit(linear={self.linear!r}): linear must be a linear solver with a "
                "solve(operator, b, backend=...) method, e.g. solvers.CG(maxiter=20)"
            )
        positive("Implicit(...)", "stationarity_tol", self.stationarity_tol, "1e-4")

    def validate(self, solver: object) -> None:
        """Refuse a solver whose update rule takes the step index: a fixed point has none (a
        ``PerStep`` inner loss is refused where its stationarity is evaluated).

        Raises:
            TypeError: for ``solvers.UpdateRule(PerStep(rule))``.
        """
        if isinstance(getattr(solver, "rule", None), PerStep):
            raise TypeError(
                f"Implicit(...): {solver!r} has a PerStep rule (it takes the inner step index), "
                "but Implicit differentiates a fixed point φ* = step(φ*), which has no step; "
                "use Unrolled(), Truncated(T) or ForwardMode(), or a rule without the step"
            )

    def vectorizable(self, solver: object) -> bool:
        return False  # the linear solvers stop on a tolerance, which needs the host

    def compute(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> Outcome:
        _refuse_traced(meta, backend)
        params, found = self.forward(problem, solver, meta, task, backend)
        return self.backward(problem, solver, meta, task, params, found, backend)

    def forward(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> tuple[Tree, dict[str, Any]]:
        """The inner solution φ* (no gradient path); vectorisable when the solver is.

        Raises:
            TypeError: for a :class:`~bilevel.PerStep` inner loss (refused before the solve).
        """
        _refuse_per_step(problem)
        return solve_forward(problem, solver, meta, task, backend)

    def backward(
        self,
        problem: Problem,
        solver: Any,
        meta: Tree,
        task: Tree,
        params: Tree,
        found: dict[str, Any],
        backend: Backend,
    ) -> Outcome:
        """The implicit hypergradient at φ* = ``params`` (the linear solve needs the host)."""
        meta0 = backend.stop_gradient(meta)

        def outer(p: Tree, m: Tree) -> Any:
            return outer_value(problem, p, m, task)

        value, (g_params, g_meta) = backend.value_and_grad(outer, argnums=(0, 1))(params, meta)
        gmap, symmetric = residual_map(problem, solver, task, params, backend)
        residual, vjp_params = backend.vjp(lambda p: gmap(p, meta0), params)
        operator = LinearOperator(lambda u: vjp_params(u)[0], symmetric)
        stationarity = _stationarity(
            problem,
            gmap,
            task,
            meta0,
            params,
            residual,
            operator.matvec,
            backend,
            self.stationarity_tol,
        )
        v, linear_info = self.linear.solve(operator, g_params, backend=backend)
        _, vjp_meta = backend.vjp(lambda m: gmap(params, m), meta)
        grad = tree.sub(g_meta, vjp_meta(v)[0])
        diag = {
            **found,
            **stationarity,
            "linear": linear_info,
            "stationarity_tol": self.stationarity_tol,
        }
        return Outcome(value, grad, params, diag)

    def backward_batch(
        self,
        problem: Problem,
        solver: Any,
        meta: Tree,
        tasks: Tree,
        dims: Tree,
        params: Tree,
        found: dict[str, Any],
        backend: Backend,
    ) -> list[Outcome]:
        """:meth:`backward` for every task of a batch (leading task axis on ``tasks``,
        ``params`` and ``found``). With a :class:`~bilevel.protocols.BatchLinearSolver` the
        products and the linear solve are vectorised over the tasks (the same result as one
        call per task); otherwise the tasks are looped."""
        _refuse_traced(meta, backend)
        n = int(tree.leaves(params)[0].shape[0])
        if not isinstance(self.linear, BatchLinearSolver):
            return [
                self.backward(
                    problem,
                    solver,
                    meta,
                    tree.index(tasks, i),
                    tree.index(params, i),
                    tree.index(found, i),
                    backend,
                )
                for i in range(n)
            ]
        meta0 = backend.stop_gradient(meta)

        def prepare(t: Tree, p: Tree) -> tuple[Any, Tree, Tree, dict[str, Any]]:
            def outer(q: Tree, m: Tree) -> Any:
                return outer_value(problem, q, m, t)

            value, (g_p, g_m) = backend.value_and_grad(outer, argnums=(0, 1))(p, meta)
            gmap = residual_map(problem, solver, t, p, backend)[0]
            residual, pullback = backend.vjp(lambda q: gmap(q, meta0), p)
            found = _stationarity(
                problem,
                gmap,
                t,
                meta0,
                p,
                residual,
                lambda u: pullback(u)[0],
                backend,
                self.stationarity_tol,
            )
            return value, g_p, g_m, found

        def matvec(t: Tree, p: Tree, u: Tree) -> Tree:
            gmap = residual_map(problem, solver, t, p, backend)[0]
            return backend.vjp(lambda q: gmap(q, meta0), p)[1](u)[0]

        def finish(t: Tree, p: Tree, g_m: Tree, v: Tree) -> Tree:
            gmap = residual_map(problem, solver, t, p, backend)[0]
            return tree.sub(g_m, backend.vjp(lambda m: gmap(p, m), meta)[1](v)[0])

        values, g_params, g_meta, stationarity = backend.map_tasks(prepare, in_dims=(dims, 0))(
            tasks, params
        )
        symmetric = residual_map(
            problem, solver, tree.index(tasks, 0), tree.index(params, 0), backend
        )[1]
        batched = backend.map_tasks(matvec, in_dims=(dims, 0, 0))
        operator = LinearOperator(lambda u: batched(tasks, params, u), symmetric)
        v, infos = self.linear.solve_batch(operator, g_params, backend=backend)
        grads = backend.map_tasks(finish, in_dims=(dims, 0, 0, 0))(tasks, params, g_meta, v)
        return [
            Outcome(
                values[i],
                tree.index(grads, i),
                tree.index(params, i),
                {
                    **tree.index(found, i),
                    **tree.index(stationarity, i),
                    "linear": infos[i],
                    "stationarity_tol": self.stationarity_tol,
                },
            )
            for i in range(n)
        ]

    def reference(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> Callable[[Tree], Any]:
        def fn(theta: Tree) -> Any:
            params, _ = solve_forward(problem, solver, theta, task, backend)
            return outer_value(problem, params, theta, task)

        return fn
