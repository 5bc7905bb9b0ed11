"""The bilevel problem: where the inner parameters start, what is minimised, what is judged."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Problem"]

Tree = Any


def _check_callable(name: str, fn: object, nargs: int, signature: str) -> None:
    if not callable(fn):
        raise TypeError(
            f"Problem: {name} must be a function {signature}, got {type(fn).__name__} ({fn!r})"
        )
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: accept
        return
    try:
        sig.bind(*range(nargs))
    except TypeError:
        raise TypeError(
            f"Problem: {name} must accept {nargs} positional arguments {signature}, "
            f"but its signature is {sig}"
        ) from None


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
            loss (a learned update rule).

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
        _check_callable("init", self.init, 2, "(meta, task) -> params")
        _check_callable("outer_loss", self.outer_loss, 3, "(params, meta, task) -> scalar")
        if self.inner_loss is not None:
            _check_callable("inner_loss", self.inner_loss, 3, "(params, meta, task) -> scalar")
