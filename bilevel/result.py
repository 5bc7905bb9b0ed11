"""What a hypergradient computation returns: value, gradient, inner solution and diagnostics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bilevel.protocols import LinearInfo, SolverInfo

__all__ = ["Info", "Result"]

Tree = Any


@dataclass(frozen=True)
class Info:
    """Diagnostics of one task's hypergradient.

    Attributes:
        strategy: ``repr`` of the strategy that produced the result.
        stationarity: ``‖G(φ_K)‖``, with ``G = ∇_φ f`` (or ``φ − step(φ)`` for a fixed point),
            where the strategy relies on it (``Implicit``); ``None`` where it was not computed.
        stationarity_limit: what ``stationarity`` is judged against:
            ``stationarity_tol · max(‖Aᵀ(φ_K − φ₀)‖, ‖Aᵀφ_K‖)``, with φ₀ = init(θ, τ) the start
            of the inner solve and ``A = ∂_φG`` (the inner Hessian) at φ_K, or G's rounding
            level where larger; ``None`` where not computed.
        linear: the linear solve's diagnostics (``Implicit``), else ``None``.
        solver: a black-box solver's report, else ``None``.
    """

    strategy: str
    stationarity: float | None = None
    linear: LinearInfo | None = None
    solver: SolverInfo | None = None
    stationarity_limit: float | None = None


@dataclass(frozen=True)
class Result:
    """The hypergradient of a problem at ``meta``, and what was found on the way.

    Attributes:
        value: the outer value ``F(φ_K, θ, τ)`` (the mean over tasks for a batch), a 0-d array.
        grad: the hypergradient, with the pytree structure of ``meta``.
        params: the final inner parameters φ_K (for a batch, each leaf has a leading task axis).
        info: diagnostics; for a batch, the worst case over tasks (largest residual and
            stationarity, any negative curvature, converged only if all converged).
        task_info: one :class:`Info` per task (a single entry for one task).
        task_values: the outer value of each task, a 1-d array (one entry for one task).
    """

    value: Any
    grad: Tree
    params: Tree
    info: Info
    task_info: tuple[Info, ...]
    task_values: Any
