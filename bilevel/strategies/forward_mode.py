"""The unrolled hypergradient in forward mode: one JVP per meta-scalar, memory flat in K."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bilevel import tree
from bilevel.backends.base import Backend, Tree
from bilevel.problem import Problem
from bilevel.strategies._common import require_iterative, vectorizable
from bilevel.strategies.base import Outcome
from bilevel.strategies.unrolled import unrolled_map
from bilevel.validate import count

__all__ = ["ForwardMode"]


@dataclass(frozen=True)
class ForwardMode:
    r"""The :class:`Unrolled` hypergradient by forward-mode JVPs, one per scalar of θ.

    .. math:: g_i = \frac{d}{dε} F(φ_K(θ + ε e_i), θ + ε e_i)\Big|_{ε=0}, \quad i = 1 … \dim θ

    Each JVP carries tangents alongside the inner loop, so memory does not grow with K; time
    grows with ``dim θ``. The right choice when θ is a handful of scalars (a discount γ, a trace
    λ, a learning rate) and the inner loop is long. The JVPs are vectorised with the backend's
    ``vmap``, ``chunk`` directions at a time (all at once by default): memory grows with the
    chunk, never with K. An expanded (stride-0) leaf of θ, such as
    ``torch.zeros(3).expand(4, 3)``, is read as the array it shows: one independent entry per
    element.

    Args:
        chunk: how many directions to push forward in one vectorised pass (≥ 1), or ``None``
            for all of them.

    Raises:
        TypeError, ValueError: if ``chunk`` is not ``None`` or an int ≥ 1.

    Example:
        >>> import torch
        >>> from bilevel import solvers
        >>> from bilevel import Problem, hypergrad, ForwardMode
        >>> p = Problem(init=lambda m, t: m,
        ...             inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2,
        ...             outer_loss=lambda w, m, t: (w**2).sum() / 2)
        >>> res = hypergrad(p, solvers.GradientDescent(lr=0.5, steps=1), torch.tensor(2.0),
        ...                 torch.tensor(0.0), strategy=ForwardMode())
        >>> float(res.grad)
        0.5
    """

    chunk: int | None = None

    def __post_init__(self) -> None:
        if self.chunk is not None:
            count(f"ForwardMode(chunk={self.chunk!r})", "chunk", self.chunk, 1)

    def validate(self, solver: object) -> None:
        require_iterative(solver, "ForwardMode()")

    def vectorizable(self, solver: object) -> bool:
        return vectorizable(solver)

    def compute(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> Outcome:
        # hypergrad hands strategies a private copy of θ (Backend.isolate): an expanded, stride-0
        # leaf such as torch.zeros(3).expand(4, 3), which cannot carry a forward-mode tangent,
        # arrives as the dense array it shows, and an in-place change of it is seen.
        fn = unrolled_map(problem, solver, meta, task, backend, frozen=0)
        flat, unravel = backend.ravel(meta)
        n = int(flat.shape[0])
        if n == 0:
            value, (params, diag) = fn(meta)
            return Outcome(value, meta, params, diag)
        eye = np.eye(n)
        size = n if self.chunk is None else self.chunk

        def push(rows: Any) -> tuple[Any, Any, Tree]:
            value, deriv, (params, _) = backend.jvp(fn, (meta,), (unravel(rows),), has_aux=True)
            return value, deriv, params

        pushed = backend.vmap(push, in_dims=(0,))
        derivs: list[Any] = []
        value: Any = None
        params: Tree = None
        for start in range(0, n, size):
            rows = backend.from_numpy(eye[start : start + size], like=flat)
            try:
                values, chunk_derivs, chunk_params = pushed(rows)
            except RuntimeError as err:
                if "ZeroTensor" not in str(err):
                    raise
                raise RuntimeError(
                    "ForwardMode(): torch's forward-mode derivative of the inner gradient failed "
                    "(torch.func.jvp through the gradient of some built-in losses, such as "
                    "F.mse_loss, is not supported by torch); write the loss with elementwise "
                    "operations, e.g. ((pred - y) ** 2).mean(), or use Unrolled(), which returns "
                    "the same hypergradient"
                ) from err
            derivs.append(chunk_derivs)
            value, params = values[0], _first(chunk_params)
        grad = unravel(derivs[0] if len(derivs) == 1 else _concat(backend, derivs))
        return Outcome(value, grad, params, {})

    def reference(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> Callable[[Tree], Any]:
        fn = unrolled_map(problem, solver, meta, task, backend, frozen=0)
        return lambda theta: fn(theta)[0]


def _first(batched: Tree) -> Tree:
    """Entry 0 along the leading axis of every leaf (the primal outputs repeat per direction)."""
    return tree.map(lambda x: x[0], batched)


def _concat(backend: Backend, parts: list[Any]) -> Any:
    """Join chunks of directional derivatives along their leading axis."""
    return backend.stack([row for part in parts for row in part])
