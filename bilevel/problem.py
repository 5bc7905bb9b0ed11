"""The bilevel problem: where the inner parameters start, what is minimised, what is judged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bilevel.validate import callable_with

__all__ = ["Problem"]

Tree = Any


@dataclass(frozen=True, kw_only=True)
class Problem:
    r"""A bilevel problem over meta-parameters θ, inner parameters φ and a task τ.

    .. math::

        φ_0 = \mathrm{init}(θ, τ), \qquad φ_{t+1} = \mathrm{step}(φ_t, θ, τ), \qquad
        \text{value} = F(φ_K, θ, τ)

    where ``step`` is the inner solver's, and for gradient-based solvers it descends
    ``f = inner_loss``. Implicit strategies use stationarity ``∇_φ f(φ*, θ, τ) = 0`` when
    ``inner_loss`` is given, otherwise the fixed point ``φ* = step(φ*, θ, τ)``.

    Args:
        init: ``(meta, task) -> params``, the inner parameters before the first inner step.
        outer_loss: ``(params, meta, task) -> scalar`` F, the objective of the outer level.
        inner_loss: ``(params, meta, task) -> scalar`` f, or ``None`` for solvers that need no
            loss (a learned update rule). For a TD-style loss whose targets depend on the
            parameters, wrap it in :class:`~bilevel.SemiGradient` rather than detaching them.

    Raises:
        TypeError: if a field is not a function taking the stated number of arguments.

    Example:
        >>> import torch
        >>> from bilevel import Problem
        >>> p = Problem(
        ...     init=lambda meta, task: meta,
        ...     inner_loss=lambda w, meta, task: ((w - task) ** 2).sum(),
        ...     outer_loss=lambda w, meta, task: (w**2).sum(),
        ... )
        >>> p.inner_loss is not None
        True
    """

    init: Callable[[Tree, Tree], Tree]
    outer_loss: Callable[[Tree, Tree, Tree], Any]
    inner_loss: Callable[[Tree, Tree, Tree], Any] | None = None

    def __post_init__(self) -> None:
        callable_with("Problem", "init", self.init, 2, "(meta, task) -> params")
        callable_with("Problem", "outer_loss", self.outer_loss, 3, "(params, meta, task) -> scalar")
        if self.inner_loss is not None:
            callable_with(
                "Problem", "inner_loss", self.inner_loss, 3, "(params, meta, task) -> scalar"
            )
