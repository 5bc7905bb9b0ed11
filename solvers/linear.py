r"""Linear solvers for ``A x = b`` on pytrees, ``A`` given only by its matrix-vector product.

Every solver returns ``(x, LinearInfo)`` where the reported residual is recomputed from
scratch, ``‖b − A x‖ / ‖b‖``, so a solver's own bookkeeping cannot hide an inaccurate answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla

from bilevel import tree
from bilevel.backends.base import Backend
from bilevel.protocols import LinearInfo, LinearOperator
from bilevel.validate import count, nonnegative, positive

__all__ = ["CG", "GMRES", "MINRES", "Direct", "Neumann"]

Tree = Any


def _norm(backend: Backend, x: Tree) -> float:
    return math.sqrt(max(backend.to_float(tree.vdot(x, x)), 0.0))


def _relative_residual(
    op: LinearOperator, b: Tree, x: Tree, bnorm: float, backend: Backend
) -> float:
    if bnorm == 0:  # A x = 0: x = 0 is the answer the solvers return
        return 0.0 if _norm(backend, x) == 0 else math.inf
    return _norm(backend, tree.sub(b, op.matvec(x))) / bnorm


def _batch_dot(n: int) -> Callable[[Tree, Tree], Any]:
    """Per-task inner products ``(n,)`` of two trees with a leading task axis."""
    return lambda u, v: sum(
        (x * y).reshape(n, -1).sum(1) for x, y in zip(tree.leaves(u), tree.leaves(v), strict=True)
    )


def _batch_scale(n: int) -> Callable[[Any, Tree], Tree]:
    """Scale task ``i`` of a tree with a leading task axis by ``s[i]``."""
    return lambda s, u: tree.map(lambda x: s.reshape((n,) + (1,) * (x.ndim - 1)) * x, u)


def _threshold(tol: float, atol: float, bnorm: float) -> float:
    return max(tol * bnorm, atol)


def _need_symmetric(who: str, op: LinearOperator) -> None:
    if not op.symmetric:
        raise ValueError(
            f"{who} needs a symmetric operator, but this system (the Jacobian of a fixed-point "
            "map when the Problem has no inner_loss, or of a SemiGradient) is not symmetric in "
            "general; use solvers.GMRES, solvers.Neumann or solvers.Direct"
        )


@dataclass(frozen=True)
class CG:
    r"""Conjugate gradients for symmetric positive-definite ``A``.

    Stops when ``‖r_k‖ ≤ max(tol·‖b‖, atol)`` (checked after every update, so the last
    iteration is never skipped) or after ``maxiter`` iterations. A direction with
    ``pᵀAp ≤ 0`` means ``A`` is not positive definite: CG stops there and reports
    ``negative_curvature`` (use :class:`MINRES` or :class:`Direct` for indefinite systems). In
    exact arithmetic CG solves a d-dimensional system in at most d iterations.

    Args:
        maxiter: the most matrix-vector products (≥ 1).
        tol: relative tolerance on the residual (> 0).
        atol: absolute tolerance on the residual (≥ 0).

    Example:
        >>> import torch
        >>> from bilevel.backends import TorchBackend
        >>> from bilevel.protocols import LinearOperator
        >>> from bilevel.solvers import CG
        >>> a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> x, info = CG(maxiter=2).solve(LinearOperator(lambda v: a @ v, True),
        ...                               torch.tensor([1.0, 2.0], dtype=torch.float64),
        ...                               backend=TorchBackend())
        >>> [round(v, 6) for v in x.tolist()], info.iterations, info.converged
        ([0.090909, 0.636364], 2, True)
    """

    maxiter: int = 100
    tol: float = 1e-10
    atol: float = 0.0

    def __post_init__(self) -> None:
        who = f"CG(maxiter={self.maxiter!r}, tol={self.tol!r}, atol={self.atol!r})"
        count(who, "maxiter", self.maxiter, 1)
        positive(who, "tol", self.tol, "tol=1e-10")
        nonnegative(who, "atol", self.atol, "atol=0.0")

    def solve(
        self, operator: LinearOperator, b: Tree, *, backend: Backend
    ) -> tuple[Tree, LinearInfo]:
        _need_symmetric(repr(self), operator)
        x = backend.zeros_like(b)
        r, p = b, b
        rr = tree.vdot(r, r)
        bnorm = math.sqrt(backend.to_float(rr))
        threshold = _threshold(self.tol, self.atol, bnorm)
        iterations, negative = 0, False
        rnorm = bnorm
        while rnorm > threshold and iterations < self.maxiter:
            ap = operator.matvec(p)
            pap = tree.vdot(p, ap)
            iterations += 1
            if not backend.to_float(pap) > 0:
                negative = True
                break
            alpha = rr / pap
            x = tree.axpy(alpha, p, x)
            r = tree.axpy(-alpha, ap, r)
            rr_new = tree.vdot(r, r)
            rnorm = math.sqrt(backend.to_float(rr_new))
            p = tree.axpy(rr_new / rr, p, r)
            rr = rr_new
        residual = _relative_residual(operator, b, x, bnorm, backend)
        return x, LinearInfo(iterations, residual, not negative and rnorm <= threshold, negative)

    def solve_batch(
        self, operator: LinearOperator, b: Tree, *, backend: Backend
    ) -> tuple[Tree, list[LinearInfo]]:
        """Independent systems with a leading task axis, each with the iterates and stopping
        test of :meth:`solve` (a finished task takes zero steps); one host synchronisation per
        iteration for the whole batch."""
        _need_symmetric(repr(self), operator)
        n = int(tree.leaves(b)[0].shape[0])
        dot, on = _batch_dot(n), _batch_scale(n)
        x, r, p = backend.zeros_like(b), b, b
        rr = dot(r, r)
        bnorm = np.sqrt(backend.to_numpy(rr))
        threshold = np.maximum(self.tol * bnorm, self.atol)
        rnorm = bnorm.copy()
        active = rnorm > threshold
        iterations = np.zeros(n, dtype=int)
        negative = np.zeros(n, dtype=bool)
        while active.any() and iterations.max() < self.maxiter:
            ap = operator.matvec(p)
            pap = dot(p, ap)
            iterations += active
            negative |= active & ~(backend.to_numpy(pap) > 0)
            active &= ~negative
            mask = backend.from_numpy(active.astype(float), like=rr)
            alpha = mask * rr / (pap + (1 - mask))  # 0 for finished tasks
            x = tree.add(x, on(alpha, p))
            r = tree.sub(r, on(alpha, ap))
            rr_new = dot(r, r)
            rnorm = np.where(active, np.sqrt(backend.to_numpy(rr_new)), rnorm)
            p = tree.add(r, on(mask * rr_new / (rr + (1 - mask)), p))
            rr = rr_new
            active &= rnorm > threshold
        true = np.sqrt(backend.to_numpy(dot(*(2 * [tree.sub(b, operator.matvec(x))]))))
        xnorm = np.sqrt(backend.to_numpy(dot(x, x)))
        residual = np.where(bnorm > 0, true / np.where(bnorm > 0, bnorm, 1), 0.0)
        residual = np.where((bnorm == 0) & (xnorm > 0), np.inf, residual)
        return x, [
            LinearInfo(
                int(iterations[i]),
                float(residual[i]),
                bool(not negative[i] and rnorm[i] <= threshold[i]),
                bool(negative[i]),
            )
            for i in range(n)
        ]


@dataclass(frozen=True)
class Neumann:
    r"""The truncated Neumann series ``x = α Σ_{k<n} (I − αA)^k b`` (Richardson iteration).

    Converges when the spectral radius of ``I − αA`` is below 1 (for SPD ``A``:
    ``0 < α < 2/λ_max``), needing O(κ) iterations against CG's O(√κ). Works for non-symmetric
    ``A`` (the fixed-point systems of update rules), where it is the classic
    ``Σ (∂step)ᵀᵏ`` series for ``α = 1``.

    Args:
        maxiter: the most terms (≥ 1).
        alpha: the scaling α (> 0).
        tol: stop when the residual is below ``tol·‖b‖`` (> 0).

    Example:
        >>> import torch
        >>> from bilevel.backends import TorchBackend
        >>> from bilevel.protocols import LinearOperator
        >>> from bilevel.solvers import Neumann
        >>> op = LinearOperator(lambda v: 1.5 * v, True)
        >>> x, info = Neumann(maxiter=200, alpha=0.5).solve(op, torch.tensor([3.0]),
        ...                                                 backend=TorchBackend())
        >>> round(x.item(), 5), info.converged
        (2.0, True)
    """

    maxiter: int = 100
    alpha: float = 1.0
    tol: float = 1e-10

    def __post_init__(self) -> None:
        who = f"Neumann(maxiter={self.maxiter!r}, alpha={self.alpha!r}, tol={self.tol!r})"
        count(who, "maxiter", self.maxiter, 1)
        positive(who, "alpha", self.alpha, "alpha=1.0")
        positive(who, "tol", self.tol, "tol=1e-10")

    def solve(
        self, operator: LinearOperator, b: Tree, *, backend: Backend
    ) -> tuple[Tree, LinearInfo]:
        x, r = backend.zeros_like(b), b
        bnorm = _norm(backend, b)
        threshold = self.tol * bnorm
        iterations, rnorm = 0, bnorm
        while rnorm > threshold and iterations < self.maxiter and math.isfinite(rnorm):
            x = tree.axpy(self.alpha, r, x)
            r = tree.axpy(-self.alpha, operator.matvec(r), r)
            iterations += 1
            rnorm = _norm(backend, r)
        residual = _relative_residual(operator, b, x, bnorm, backend)
        return x, LinearInfo(iterations, residual, math.isfinite(residual) and rnorm <= threshold)


_KRYLOV_ROUNDS = 4  # SciPy runs per solve: the first, then restarts with a tighter rtol


@dataclass(frozen=True)
class _Krylov:
    """SciPy's Krylov solvers on a ``scipy.sparse.linalg.LinearOperator`` (host, float64)."""

    maxiter: int = 200
    tol: float = 1e-10

    def __post_init__(self) -> None:
        who = f"{type(self).__name__}(maxiter={self.maxiter!r}, tol={self.tol!r})"
        count(who, "maxiter", self.maxiter, 1)
        positive(who, "tol", self.tol, "tol=1e-10")

    def _run(
        self, a: spla.LinearOperator, b: np.ndarray[Any, Any], x0: np.ndarray[Any, Any], rtol: float
    ) -> tuple[np.ndarray[Any, Any], int]:
        raise NotImplementedError

    def solve(
        self, operator: LinearOperator, b: Tree, *, backend: Backend
    ) -> tuple[Tree, LinearInfo]:
        flat, unravel = backend.ravel(b)
        n = int(flat.shape[0])
        counter = [0]

        def matvec(v: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
            counter[0] += 1
            out = operator.matvec(unravel(backend.from_numpy(np.ravel(v), like=flat)))
            return backend.to_numpy(backend.ravel(out)[0])

        a = spla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)  # pyright: ignore[reportCallIssue]
        b_np, x_np, rtol = backend.to_numpy(flat), np.zeros(n), self.tol
        bnorm = _norm(backend, b)

        # SciPy's MINRES stops on its own measure (‖r‖ ≤ rtol·(‖A‖‖x‖ + ‖b‖)), which can be far
        # looser than the documented ‖b − Ax‖/‖b‖ ≤ tol: restart from the last iterate with
        # rtol tightened by the gap, a few times, and report convergence on the documented test.
        def run(
            x0: np.ndarray[Any, Any], rtol: float
        ) -> tuple[Tree, np.ndarray[Any, Any], int, float]:
            x_np, code = self._run(a, b_np, x0, rtol)
            x = unravel(backend.from_numpy(x_np, like=flat))
            return x, x_np, code, _relative_residual(operator, b, x, bnorm, backend)

        x, x_np, code, residual = run(x_np, rtol)
        for _ in range(_KRYLOV_ROUNDS - 1):
            if code != 0 or residual <= self.tol or not math.isfinite(residual):
                break
            rtol *= max(self.tol / residual, 1e-4)
            x, x_np, code, residual = run(x_np, rtol)
        converged = code == 0 and residual <= self.tol
        return x, LinearInfo(counter[0], residual, converged, extra={"scipy_info": code})


@dataclass(frozen=True)
class MINRES(_Krylov):
    """SciPy's MINRES for symmetric, possibly indefinite ``A`` (host round trip, float64).

    Args:
        maxiter: the most iterations of one SciPy run (≥ 1); a solve makes up to 4 runs,
            restarting from the last iterate while ``‖b − Ax‖/‖b‖ > tol``.
        tol: the relative residual ``‖b − Ax‖/‖b‖`` to reach (> 0).

    Example:
        >>> import torch
        >>> from bilevel.backends import TorchBackend
        >>> from bilevel.protocols import LinearOperator
        >>> from bilevel.solvers import MINRES
        >>> a = torch.tensor([[1.0, 0.0], [0.0, -2.0]], dtype=torch.float64)  # indefinite
        >>> x, info = MINRES().solve(LinearOperator(lambda v: a @ v, True),
        ...                          torch.tensor([1.0, 1.0], dtype=torch.float64),
        ...                          backend=TorchBackend())
        >>> [round(v, 6) for v in x.tolist()], info.converged
        ([1.0, -0.5], True)
    """

    def _run(
        self, a: spla.LinearOperator, b: np.ndarray[Any, Any], x0: np.ndarray[Any, Any], rtol: float
    ) -> tuple[np.ndarray[Any, Any], int]:
        x, code = spla.minres(a, b, x0=x0, rtol=rtol, maxiter=self.maxiter)
        return x, int(code)

    def solve(
        self, operator: LinearOperator, b: Tree, *, backend: Backend
    ) -> tuple[Tree, LinearInfo]:
        _need_symmetric(repr(self), operator)
        return super().solve(operator, b, backend=backend)


@dataclass(frozen=True)
class GMRES(_Krylov):
    """SciPy's restarted GMRES for general square ``A`` (host round trip, float64).

    Args:
        maxiter: the most restart cycles of one SciPy run (≥ 1; up to 4 runs, as for MINRES).
        tol: the relative residual ``‖b − Ax‖/‖b‖`` to reach (> 0).
        restart: the Krylov dimension between restarts (≥ 1).

    Example:
        >>> import torch
        >>> from bilevel.backends import TorchBackend
        >>> from bilevel.protocols import LinearOperator
        >>> from bilevel.solvers import GMRES
        >>> a = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)  # not symmetric
        >>> x, info = GMRES().solve(LinearOperator(lambda v: a @ v, False),
        ...                         torch.tensor([3.0, 1.0], dtype=torch.float64),
        ...                         backend=TorchBackend())
        >>> [round(v, 6) for v in x.tolist()], info.converged
        ([1.0, 1.0], True)
    """

    restart: int = 50

    def _run(
        self, a: spla.LinearOperator, b: np.ndarray[Any, Any], x0: np.ndarray[Any, Any], rtol: float
    ) -> tuple[np.ndarray[Any, Any], int]:
        count(repr(self), "restart", self.restart, 1)
        x, code = spla.gmres(
            a, b, x0=x0, rtol=rtol, atol=0.0, restart=self.restart, maxiter=self.maxiter
        )
        return x, int(code)


@dataclass(frozen=True)
class Direct:
    """Dense solve: builds ``A`` column by column from matvecs and factorises it.

    For small systems and as ground truth in tests: ``n`` matrix-vector products and O(n³)
    time. For a symmetric ``A`` it reports ``negative_curvature`` when ``A`` has a negative
    eigenvalue (the solve itself is still exact for a non-singular ``A``).

    Args:
        max_size: refuse systems with more unknowns than this (≥ 1).
        tol: the relative residual above which the (ill-conditioned) solve is reported as not
            converged (> 0).

    Example:
        >>> import torch
        >>> from bilevel.backends import TorchBackend
        >>> from bilevel.protocols import LinearOperator
        >>> from bilevel.solvers import Direct
        >>> a = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> x, info = Direct().solve(LinearOperator(lambda v: a @ v, True),
        ...                          torch.tensor([3.0, 3.0], dtype=torch.float64),
        ...                          backend=TorchBackend())
        >>> x.tolist(), info.iterations
        ([1.0, 1.0], 2)
    """

    max_size: int = 4096
    tol: float = 1e-6

    def __post_init__(self) -> None:
        count(f"Direct(max_size={self.max_size!r})", "max_size", self.max_size, 1)
        positive(f"Direct(tol={self.tol!r})", "tol", self.tol, "tol=1e-6")

    def solve(
        self, operator: LinearOperator, b: Tree, *, backend: Backend
    ) -> tuple[Tree, LinearInfo]:
        flat, unravel = backend.ravel(b)
        n = int(flat.shape[0])
        if n > self.max_size:
            raise ValueError(
                f"{self!r}: the system has {n} unknowns, more than max_size; use solvers.CG or "
                "solvers.MINRES, or raise max_size"
            )
        eye = np.eye(n)
        columns = [
            backend.ravel(operator.matvec(unravel(backend.from_numpy(eye[i], like=flat))))[0]
            for i in range(n)
        ]
        a = backend.stack(columns).T if n else flat.reshape(0, 0)
        negative = False
        if operator.symmetric and n:
            negative = backend.to_float(backend.eigvalsh((a + a.T) / 2)[0]) < 0
        try:
            x_flat = backend.dense_solve(a, flat) if n else flat
        except RuntimeError as err:  # singular matrix
            raise RuntimeError(f"{self!r}: the linear system is singular: {err}") from err
        x = unravel(x_flat)
        bnorm = _norm(backend, b)
        residual = _relative_residual(operator, b, x, bnorm, backend)
        converged = math.isfinite(residual) and residual <= self.tol
        return x, LinearInfo(n, residual, converged, negative)
