"""Turning a strategy's raw diagnostics into :class:`Info`: checks, warnings, errors."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from bilevel.backends.base import Backend, Tree
from bilevel.protocols import LinearInfo, SolverInfo
from bilevel.result import Info

__all__ = [
    "BilevelWarning",
    "LinearSolveWarning",
    "SolverWarning",
    "StationarityWarning",
    "info_of",
    "issues_of",
    "raise_nonfinite",
    "warn",
    "worst",
]


class BilevelWarning(UserWarning):
    """Base of the warnings bilevel issues when a hypergradient may be inaccurate."""


class LinearSolveWarning(BilevelWarning):
    """The linear solve of an implicit hypergradient did not converge or met negative curvature."""


class StationarityWarning(BilevelWarning):
    """The inner solution is not stationary, so the implicit hypergradient is not exact."""


class SolverWarning(BilevelWarning):
    """A black-box inner solver reported failure."""


def raise_nonfinite(
    value: Any,
    grad: Tree,
    params: Tree,
    locate: Callable[[], int | None],
    strategy: object,
    backend: Backend,
    where: str = "",
) -> None:
    """Raise the error that explains a non-finite value, hypergradient or inner solution.

    ``locate`` re-runs the inner loop and returns the first non-finite step (0: ``init``). It is
    only called on this failure path, so the inner loop itself carries no checks.

    Raises:
        RuntimeError: the inner loop became non-finite (naming the step), or the hypergradient
            is not finite.
        ValueError: the outer loss is not finite at finite inner parameters.
    """

    def finite(x: Tree) -> bool:
        return bool(backend.to_float(backend.all_finite(x)))

    ok = backend.host_bool(backend.all_finite((value, grad, params)))
    if ok is None or ok:  # None: traced (inside jax.jit), nothing to check on the host
        return
    step = locate()
    if step == 0:
        raise RuntimeError(
            f"hypergrad{where}: Problem.init returned non-finite inner parameters (before "
            "step 1); check init and the meta-parameters"
        )
    if step is not None:
        raise RuntimeError(
            f"hypergrad{where}: the inner loop produced a non-finite value at step {step}; the "
            "inner loss or its gradient is not finite there: lower the inner learning rate, or "
            "check inner_loss on this task"
        )
    if not finite(params):
        raise RuntimeError(
            f"hypergrad{where}: the inner solver returned non-finite parameters; check "
            "inner_loss on this task"
        )
    if not finite(value):
        raise ValueError(
            f"hypergrad{where}: Problem.outer_loss returned {backend.to_float(value)} at finite "
            "inner parameters; check outer_loss and the task's data (log of 0, division by 0, "
            "non-finite inputs)"
        )
    raise RuntimeError(
        f"hypergrad{where}: {strategy!r} produced a non-finite hypergradient although the "
        "outer value and the inner parameters are finite"
    )


def info_of(diag: dict[str, Any], strategy: object, backend: Backend) -> Info:
    """One task's :class:`Info` from a strategy's raw diagnostics."""
    stationarity, limit = diag.get("stationarity"), diag.get("stationarity_limit")
    return Info(
        strategy=repr(strategy),
        stationarity=None if stationarity is None else backend.to_float(stationarity),
        linear=diag.get("linear"),
        solver=diag.get("solver"),
        stationarity_limit=None if limit is None else backend.to_float(limit),
    )


Issue = tuple[type[BilevelWarning], str]


def _stationary(info: Info, tol: float) -> bool:
    """``‖G(φ*)‖ ≤ info.stationarity_limit`` (relative to the start of the inner solve, so
    independent of the loss's scale); an absolute ``‖G(φ*)‖ ≤ tol`` where no limit was set."""
    stat, limit = info.stationarity, info.stationarity_limit
    if stat is None:
        return True
    return stat <= (tol if limit is None else limit)


def _ratio(info: Info) -> float:
    """``‖G(φ*)‖`` over its limit, for ranking tasks (0/0 = 0, x/0 = ∞)."""
    stat, limit = info.stationarity or 0.0, info.stationarity_limit
    if limit is None:
        return stat
    return stat / limit if limit > 0 else (0.0 if stat == 0 else math.inf)


def issues_of(info: Info, stationarity_tol: float | None) -> list[Issue]:
    """What is wrong with one task's result, as (warning category, description) pairs."""
    issues: list[Issue] = []
    stat, linear, solver = info.stationarity, info.linear, info.solver
    limit = info.stationarity_limit
    if (
        stat is not None
        and stationarity_tol is not None
        and not _stationary(info, stationarity_tol)
    ):
        reference = (
            f"{limit:.3g} = stationarity_tol × the problem's gradient scale (stationarity_tol "
            f"= {stationarity_tol:.3g}; the scale is max(‖A(φ* − φ₀)‖, ‖Aφ*‖), A = ∂_φG, from "
            "the start φ₀ = init(θ, τ))"
            if limit is not None
            else f"stationarity_tol = {stationarity_tol:.3g}"
        )
        issues.append(
            (
                StationarityWarning,
                f"the inner problem is not solved: ‖G(φ*)‖ = {stat:.3g} > {reference}, so "
                f"{info.strategy} is not exact; run more inner steps or a better inner solver",
            )
        )
    if linear is not None and (not linear.converged or linear.negative_curvature):
        if not linear.negative_curvature and 0 < linear.tol <= linear.attainable:
            # the precision floor (LinearInfo.attainable) is above the tolerance: no iteration
            # count reaches it; say so and what to change, not just "did not converge"
            dtype = linear.dtype or "this precision"
            remedy = "solve in float64" if dtype != "float64" else "regularise the inner problem"
            why = (
                f"cannot reach tol = {linear.tol:.3g} in {dtype}: rounding in {dtype} gives a "
                f"relative residual of about ε·‖A‖·‖x‖/‖b‖ ≈ {linear.attainable:.1g} (ε its "
                f"machine epsilon, ‖A‖·‖x‖/‖b‖ ≤ κ(A)); raise the linear solver's tol to "
                f"{3 * linear.attainable:.0e} or {remedy}"
            )
        elif not linear.negative_curvature:
            why = "did not converge"
        elif not linear.converged:
            why = (
                "met negative curvature, so CG cannot solve it (the inner Hessian is not "
                "positive definite): use solvers.MINRES or solvers.Direct, or regularise the "
                "inner problem"
            )
        else:
            why = (
                "was solved, but the inner Hessian has a negative eigenvalue: φ* is a saddle "
                "point, not a minimum, and the hypergradient is that of this stationary point"
            )
        issues.append(
            (
                LinearSolveWarning,
                f"the linear solve of {info.strategy} {why}: {linear.iterations} iterations, "
                f"relative residual {linear.residual:.3g}",
            )
        )
    if solver is not None and not solver.success:
        issues.append(
            (
                SolverWarning,
                f"the inner solver reported failure after {solver.iterations} iterations: "
                f"{solver.message}",
            )
        )
    return issues


def warn(per_task: Sequence[list[Issue]], stacklevel: int = 3) -> None:
    """Issue at most one warning per category for one call, naming how many tasks it concerns."""
    n = len(per_task)
    for category in (StationarityWarning, LinearSolveWarning, SolverWarning):
        hits = [(i, msg) for i, issues in enumerate(per_task) for c, msg in issues if c is category]
        if not hits:
            continue
        first, message = hits[0]
        if n == 1:
            where = ""
        elif len(hits) == 1:
            where = f" (task {first})"
        else:
            where = f" ({len(hits)} of {n} tasks; task {first} shown)"
        warnings.warn(f"hypergrad{where}: {message}", category, stacklevel=stacklevel)


def worst(infos: Sequence[Info]) -> Info:
    """The worst case over tasks: largest residual, the task farthest from
    stationarity (relative to its start), success only if all."""
    first = infos[0]
    judged = [i for i in infos if i.stationarity is not None]
    farthest = max(judged, key=_ratio) if judged else None
    linears = [i.linear for i in infos if i.linear is not None]
    solvers = [i.solver for i in infos if i.solver is not None]
    linear = None
    if linears:
        largest = max(linears, key=lambda li: li.residual)
        linear = LinearInfo(
            iterations=max(li.iterations for li in linears),
            residual=largest.residual,
            converged=all(li.converged for li in linears),
            negative_curvature=any(li.negative_curvature for li in linears),
            tol=largest.tol,
            attainable=max(li.attainable for li in linears),
            dtype=largest.dtype,
        )
    solver = None
    if solvers:
        failed = [s for s in solvers if not s.success]
        solver = SolverInfo(
            iterations=max(s.iterations for s in solvers),
            success=not failed,
            message=failed[0].message if failed else solvers[0].message,
        )
    return Info(
        strategy=first.strategy,
        stationarity=None if farthest is None else farthest.stationarity,
        stationarity_limit=None if farthest is None else farthest.stationarity_limit,
        linear=linear,
        solver=solver,
    )
