r"""Public helpers for validating hypergradients in your own tests.

:func:`check_hypergrad` compares a strategy's hypergradient with float64 central finite
differences of *exactly the map the strategy claims to differentiate* (its ``reference``):
the full unrolled map for ``Unrolled``, the map with the first steps frozen for ``Truncated``,
the first-order map for ``FirstOrder``, the solution map for ``Implicit``.

Tolerances. For a central difference with step ``h`` in float64 (unit roundoff
``u ≈ 1.1e-16``) the error of a directional derivative is at most
``h²/6·|F'''| + u·|F|/h`` (truncation plus cancellation); with the default ``h = 1e-5`` that is
about ``1.7e-11·|F'''| + 1.1e-11·|F|``. The default ``rtol = 1e-6`` therefore leaves four orders
of magnitude for third derivatives and values up to ~10⁴ times the gradient's scale.

Inexact solves. ``Implicit`` differentiates the exact solution map θ ↦ φ*(θ), while both sides of
the check are computed at the inner solver's stopping point: the hypergradient at φ̃, the finite
differences of θ ↦ F(φ̃(θ)), whose derivative differs from the implicit one at first order in
‖φ̃ − φ*‖ ≈ ‖∇_φ f(φ̃)‖ / (the inner loss's smallest curvature), whatever the step ``h`` (SciPy's
L-BFGS-B at its default tolerances, stationarity 6.5e-8, moved the finite differences by 1.4e-5
at h = 1e-5 … 1e-3 on a ridge problem whose hypergradient was right to 3.5e-9). A failure report
therefore gives the inner stationarity, the solver's own report and the linear residual, says
when the inner or the linear solve limits the attainable accuracy, and the ``rtol`` that these
numbers pass: relax ``rtol`` to that, or solve more accurately and check again.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bilevel import tree
from bilevel.backends import backend_for
from bilevel.backends.base import Tree
from bilevel.hypergrad import Batch, hypergrad
from bilevel.problem import Problem
from bilevel.protocols import PerStep, SemiGradient
from bilevel.result import Info
from bilevel.strategies.base import Strategy

__all__ = ["CheckReport", "check_hypergrad", "compiled_inner_loss"]


@dataclass(frozen=True)
class CheckReport:
    """The outcome of :func:`check_hypergrad`, one entry per direction.

    Attributes:
        analytic: ``⟨g, d⟩`` for each direction d.
        numeric: the central difference ``(F(θ+hd) − F(θ−hd)) / 2h``.
        allowed: the tolerance each pair was held to.
        worst: the largest ``|analytic − numeric| / allowed`` (≤ 1 passes).
    """

    analytic: tuple[float, ...]
    numeric: tuple[float, ...]
    allowed: tuple[float, ...]
    worst: float


def _directions(
    meta: Tree, max_coordinates: int, count: int, seed: int
) -> list[list[np.ndarray[Any, Any]]]:
    shapes = [tuple(leaf.shape) for leaf in tree.leaves(meta)]
    sizes = [int(np.prod(s)) for s in shapes]
    n = sum(sizes)
    if n <= max_coordinates:
        vectors = list(np.eye(n))
    else:
        rng = np.random.default_rng(seed)
        vectors = [v / np.linalg.norm(v) for v in rng.standard_normal((count, n))]
    out: list[list[np.ndarray[Any, Any]]] = []
    for v in vectors:
        parts = np.split(v, np.cumsum(sizes)[:-1]) if sizes else []
        out.append([p.reshape(s) for p, s in zip(parts, shapes, strict=True)])
    return out


def _require_float64(meta: Tree, task: Tree) -> None:
    for what, t in (("meta", meta), ("task", task)):
        for leaf in tree.leaves(t):
            dtype = getattr(leaf, "dtype", None)
            if dtype is not None and "float" in str(dtype) and "64" not in str(dtype):
                raise ValueError(
                    f"check_hypergrad: a {what} leaf has dtype {dtype}; finite differences need "
                    "float64 to be meaningful: convert meta and task with .double() "
                    "(torch) or .astype('float64') (NumPy/JAX)"
                )


def check_hypergrad(
    problem: Problem,
    solver: Any,
    meta: Tree,
    task: Tree,
    strategy: Strategy,
    *,
    step: float = 1e-5,
    rtol: float = 1e-6,
    atol: float = 1e-10,
    max_coordinates: int = 32,
    directions: int = 8,
    seed: int = 0,
) -> CheckReport:
    """Assert that ``hypergrad(...).grad`` matches finite differences of the strategy's map.

    Compares directional derivatives ``⟨g, d⟩`` with ``(F(θ+hd) − F(θ−hd)) / 2h`` along every
    coordinate when θ has at most ``max_coordinates`` entries, else along ``directions`` random
    unit vectors drawn from ``seed``. A pair passes when
    ``|analytic − numeric| ≤ atol + rtol·max(|analytic|, |numeric|, ‖g‖)``.

    Compilation, explicit and for this call only: the check evaluates the inner loss many times
    (every inner step of the hypergradient and of each finite difference), so it runs on
    :func:`compiled_inner_loss` ``(problem, meta)`` (JAX: the inner loss under ``jax.jit``,
    traced once per shape; torch: unchanged). Compiling the whole map instead costs more than
    the few dozen evaluations it saves (a 40-step loop: ~2 s per shape). Losses must therefore
    be pure functions on JAX (globals are read at the trace).

    Args:
        problem, solver, meta, task, strategy: as for :func:`bilevel.hypergrad` (task may be a
            :class:`~bilevel.Batch`; the map is then the mean over tasks). Arrays must be float64.
        step: the finite-difference step h.
        rtol, atol: the tolerances (see the module docstring for their derivation).
        max_coordinates: the largest θ checked coordinate by coordinate.
        directions: how many random directions otherwise.
        seed: the seed of the random directions.

    Returns:
        A :class:`CheckReport`.

    Raises:
        AssertionError: if a direction disagrees, with every pair in the message.
        ValueError: if arrays are not float64 or ``step`` is not positive.

    Example:
        >>> import torch
        >>> from bilevel import solvers
        >>> from bilevel import Problem, Unrolled
        >>> from bilevel.testing import check_hypergrad
        >>> p = Problem(init=lambda m, t: m,
        ...             inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2 + (w**4).sum(),
        ...             outer_loss=lambda w, m, t: (w**2).sum())
        >>> meta = torch.tensor([0.3, -0.2], dtype=torch.float64)
        >>> task = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> report = check_hypergrad(p, solvers.GradientDescent(lr=0.1, steps=5), meta, task,
        ...                          Unrolled())
        >>> report.worst < 1
        True
    """
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"check_hypergrad: step={step!r} must be positive, e.g. 1e-5")
    data = task.tasks if isinstance(task, Batch) else task
    _require_float64(meta, data)
    backend = backend_for(meta, data, what="check_hypergrad")
    problem = compiled_inner_loss(problem, meta)
    result = hypergrad(problem, solver, meta, task, strategy=strategy)
    tasks = [task.task(i) for i in range(task.size())] if isinstance(task, Batch) else [task]
    like = tree.leaves(meta)[0]

    maps = [strategy.reference(problem, solver, meta, t, backend) for t in tasks]

    def value(theta: Tree) -> float:
        return sum(backend.to_float(f(theta)) for f in maps) / len(maps)

    gnorm = math.sqrt(backend.to_float(tree.vdot(result.grad, result.grad)))
    analytic: list[float] = []
    numeric: list[float] = []
    allowed: list[float] = []
    for parts in _directions(meta, max_coordinates, directions, seed):
        d = tree.unflatten(tree.structure(meta), [backend.from_numpy(p, like=like) for p in parts])
        plus = value(tree.axpy(step, d, meta))
        minus = value(tree.axpy(-step, d, meta))
        fd = (plus - minus) / (2 * step)
        ad = backend.to_float(tree.vdot(result.grad, d))
        numeric.append(fd)
        analytic.append(ad)
        allowed.append(atol + rtol * max(abs(fd), abs(ad), gnorm))
    ratios = [abs(a - n) / t for a, n, t in zip(analytic, numeric, allowed, strict=True)]
    report = CheckReport(tuple(analytic), tuple(numeric), tuple(allowed), max(ratios, default=0.0))
    if not report.worst <= 1:
        rows = "\n".join(
            f"  direction {i}: analytic {a:.12g}  numeric {n:.12g}  |diff| {abs(a - n):.3g}  "
            f"allowed {t:.3g}"
            for i, (a, n, t) in enumerate(zip(analytic, numeric, allowed, strict=True))
        )
        # the smallest rtol these numbers pass (at this atol), rounded up to one digit
        needed = max(
            (abs(a - n) - atol) / max(abs(a), abs(n), gnorm, 1e-300)
            for a, n in zip(analytic, numeric, strict=True)
        )
        raise AssertionError(
            f"check_hypergrad: {strategy!r} disagrees with central finite differences of its "
            f"map (worst ratio {report.worst:.3g}):\n{rows}\n"
            + _diagnosis(result.info, solver, atol, _round_up(needed))
        )
    return report


def compiled_inner_loss(problem: Problem, meta: Tree) -> Problem:
    """A copy of ``problem`` whose inner loss is compiled by the backend of ``meta``, explicitly.

    JAX: ``jax.jit`` of the inner loss, so an eager inner loop (``Implicit``, which cannot run
    inside ``jax.jit``; a test's one-off calls) runs each step's value and gradient as compiled
    programs, traced once per input shape, instead of operation by operation; where the loss
    cannot be traced (non-array task leaves, Python branches on values) it runs eagerly.
    torch: ``problem`` itself. The :class:`SemiGradient` and :class:`PerStep` wrappers are
    kept. The loss must be a pure function: globals are read once per shape, at the trace.
    :func:`check_hypergrad` uses it for its many evaluations (on a 40-step ``Implicit`` check,
    tests/test_finite_differences.py: 22.5 s eager, 7.8 s with it).

    Args:
        problem: the :class:`~bilevel.Problem`; it is not changed.
        meta: meta-parameters whose arrays pick the backend.

    Returns:
        A new :class:`~bilevel.Problem`, or ``problem`` if it has no inner loss.

    Example:
        >>> import torch
        >>> from bilevel import Problem
        >>> p = Problem(init=lambda m, t: m, inner_loss=lambda w, m, t: (w**2).sum(),
        ...             outer_loss=lambda w, m, t: w.sum())
        >>> compiled_inner_loss(p, torch.zeros(2)) is p  # torch compiles nothing
        True
    """
    backend = backend_for(meta, what="compiled_inner_loss")

    def compiled(fn: Any) -> Any:
        if isinstance(fn, SemiGradient):
            return replace(fn, loss=compiled(fn.loss))
        if isinstance(fn, PerStep):
            return replace(fn, fn=compiled(fn.fn))
        fast = backend.compiled(fn)
        # the signature stays the user's (Problem checks the arity)
        return fn if fast is fn else functools.wraps(fn)(fast)

    if problem.inner_loss is None:
        return problem
    loss = compiled(problem.inner_loss)
    return problem if loss is problem.inner_loss else replace(problem, inner_loss=loss)


def _round_up(x: float) -> float:
    """``x`` rounded up to one significant digit (2.3e-4 -> 3e-4)."""
    if not (math.isfinite(x) and x > 0):
        return x
    scale = 10.0 ** math.floor(math.log10(x))
    return math.ceil(x / scale * (1 - 1e-12)) * scale


def _diagnosis(info: Info, solver: Any, atol: float, rtol_needed: float) -> str:
    """What the inner and linear solves reached, and which of them limits the accuracy."""
    if info.stationarity is None and info.linear is None:
        return (
            f"{info.strategy} differentiates its inner loop exactly (no inner stationarity or "
            "linear solve enters its map), so an inexact solve does not explain this: check the "
            "losses' gradients (custom autograd functions, in-place updates, non-differentiable "
            "points)"
        )
    reached: list[str] = []
    if info.stationarity is not None:
        inner = f"inner stationarity ‖∇_φ f‖ = {info.stationarity:.3g}"
        if info.solver is not None:
            inner += (
                f" ({info.solver.iterations} solver iterations, success={info.solver.success}: "
                f"{info.solver.message.strip() or 'no message'})"
            )
        reached.append(inner)
    if info.linear is not None:
        reached.append(
            f"linear residual {info.linear.residual:.3g} ({info.linear.iterations} iterations, "
            f"converged={info.linear.converged})"
        )
    limits: list[str] = []
    if info.linear is not None and not info.linear.converged:
        limits.append(
            "the linear solve limits the attainable accuracy: it did not converge; raise its "
            "maxiter, or use solvers.Direct() for a small system"
        )
    if info.stationarity is not None and info.stationarity > atol:
        limits.append(
            f"the inner solve limits the attainable accuracy: {info.strategy} differentiates "
            f"the exact minimiser, the inner solver {solver!r} stopped at stationarity "
            f"{info.stationarity:.3g} > atol={atol:g}, and the hypergradient and the finite "
            "differences of the solution map both carry an error of first order in the distance "
            "to the minimiser (≈ stationarity / the inner loss's smallest curvature); solve the "
            "inner problem more accurately (a smaller tol or more steps of that solver) and check "
            "again"
        )
    if not limits:
        return (
            "; ".join(reached) + ": both solves are accurate, so they do not explain this: "
            "check the losses' gradients and the second derivatives the linear system uses"
        )
    return (
        "; ".join(reached)
        + ".\n"
        + ";\n".join(limits)
        + f";\nor, to accept this accuracy, relax check_hypergrad's rtol to {rtol_needed:.1g} "
        "(these numbers pass with it)"
    )
