"""Turning a strategy's raw diagnostics into :class:`Info`: checks, warnings, errors."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from bilevel.backends.base import Backend
from bilevel.protocols import LinearInfo, SolverInfo
from bilevel.result import Info
from bilevel.strategies.base import Outcome

__all__ = [
    "BilevelWarning",
    "LinearSolveWarning",
    "SolverWarning",
    "StationarityWarning",
    "finish",
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


def finish(out: Outcome, strategy: object, backend: Backend, where: str = "") -> Info:
    """Check one task's outcome and build its :class:`Info`.

    Raises:
        RuntimeError: if the inner loop produced a non-finite state (naming the step) or the
            hypergradient is not finite.
        ValueError: if the outer loss is not finite although the inner parameters are.
    """
    diag = out.diag
    bad = diag.get("nonfinite_step")
    if bad is not None:
        step = int(backend.to_float(bad))
        if step == 0:
            raise RuntimeError(
                f"hypergrad{where}: Problem.init returned non-finite inner parameters (before "
                "step 1); check init and the meta-parameters"
            )
        if step > 0:
            raise RuntimeError(
                f"hypergrad{where}: the inner loop produced a non-finite value at step {step}; "
                "the inner loss or its gradient is not finite there: lower the inner learning "
                "rate, or check inner_loss on this task"
            )
    if not bool(backend.to_float(backend.all_finite(out.value))):
        raise ValueError(
            f"hypergrad{where}: Problem.outer_loss returned {backend.to_float(out.value)} at "
            "finite inner parameters; check outer_loss and the task's data (log of 0, division "
            "by 0, non-finite inputs)"
        )
    if not bool(backend.to_float(backend.all_finite(out.grad))):
        raise RuntimeError(
            f"hypergrad{where}: {strategy!r} produced a non-finite hypergradient although the "
            f"outer value is finite; diagnostics: {_describe(diag)}"
        )
    stationarity = diag.get("stationarity")
    stat = None if stationarity is None else backend.to_float(stationarity)
    linear: LinearInfo | None = diag.get("linear")
    solver: SolverInfo | None = diag.get("solver")
    tol = diag.get("stationarity_tol")
    if stat is not None and tol is not None and not stat <= tol:
        warnings.warn(
            f"hypergrad{where}: the inner problem is not solved: ‖G(φ*)‖ = {stat:.3g} > "
            f"stationarity_tol = {tol:.3g}, so {strategy!r} is not exact; run more inner steps or "
            "a better inner solver",
            StationarityWarning,
            stacklevel=3,
        )
    if linear is not None and (not linear.converged or linear.negative_curvature):
        if not linear.negative_curvature:
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
        warnings.warn(
            f"hypergrad{where}: the linear solve of {strategy!r} {why}: {linear.iterations} "
            f"iterations, relative residual {linear.residual:.3g}",
            LinearSolveWarning,
            stacklevel=3,
        )
    if solver is not None and not solver.success:
        warnings.warn(
            f"hypergrad{where}: the inner solver reported failure after {solver.iterations} "
            f"iterations: {solver.message}",
            SolverWarning,
            stacklevel=3,
        )
    return Info(strategy=repr(strategy), stationarity=stat, linear=linear, solver=solver)


def _describe(diag: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in diag.items() if k != "nonfinite_step") or "none"


def worst(infos: Sequence[Info]) -> Info:
    """The worst case over tasks: largest residual and stationarity, success only if all."""
    first = infos[0]
    stats = [i.stationarity for i in infos if i.stationarity is not None]
    linears = [i.linear for i in infos if i.linear is not None]
    solvers = [i.solver for i in infos if i.solver is not None]
    linear = None
    if linears:
        linear = LinearInfo(
            iterations=max(li.iterations for li in linears),
            residual=max(li.residual for li in linears),
            converged=all(li.converged for li in linears),
            negative_curvature=any(li.negative_curvature for li in linears),
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
        stationarity=max(stats) if stats else None,
        linear=linear,
        solver=solver,
    )
