r"""Linear solvers for ``A x = b`` on pytrees, ``A`` given only by its matrix-vector product.

Every solver returns ``(x, LinearInfo)`` where the reported residual is recomputed from
scratch, ``‖b − A x‖ / ‖b‖``, and ``converged`` is that residual's test against the tolerance,
so a solver's own bookkeeping (CG's and Neumann's recursively updated residual, SciPy's exit
code) cannot hide an inaccurate answer. In floating point the recursive residual keeps falling
after the true one has stalled at about ``ε·‖A‖·‖x‖/‖b‖`` (ε the machine epsilon; up to ε·κ):
on a float32 system with κ = 1e5 CG's recursion reaches 1e-10 while ``‖b − A x‖/‖b‖`` is 3e-3.
Each solver reports that floor as ``LinearInfo.attainable`` so that a tolerance the precision
cannot meet is explained, not just reported as missed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
from scipy.linalg import eigvalsh_tridiagonal

from bilevel import tree
from bilevel.backends.base import Backend
from bilevel.protocols import LinearInfo, LinearOperator
from bilevel.validate import count, nonnegative, positive, relative_tolerance

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


_EPSILON = {"bfloat16": 2.0**-7}  # machine epsilons NumPy does not know


def _precision(b: Tree) -> tuple[str, float]:
    """The least precise floating-point type among ``b``'s leaves, and its machine epsilon."""
    name, eps = "float64", float(np.finfo(np.float64).eps)
    for leaf in tree.leaves(b):
        kind = str(getattr(leaf, "dtype", "float64")).removeprefix("torch.")
        try:
            e = _EPSILON[kind] if kind in _EPSILON else float(np.finfo(kind).eps)
        except (TypeError, ValueError):  # an integer or unknown type: no rounding to report
            continue
        if e > eps:
            name, eps = kind, e
    return name, eps


def _attainable(eps: float, anorm: float, xnorm: float, bnorm: float) -> float:
    """``ε·‖A‖·‖x‖/‖b‖``: the size of the rounding error of ``A x`` relative to ``‖b‖``."""
    if bnorm == 0 or not math.isfinite(anorm * xnorm):
        return 0.0
    return eps * anorm * xnorm / bnorm


def _largest_ritz(alphas: list[float], betas: list[float]) -> float:
    """The largest eigenvalue of the Lanczos tridiagonal ``T_k`` of ``k`` CG steps, a lower
    bound on ``λ_max(A) = ‖A‖₂`` that is close after a few steps.

    With CG's step sizes ``α_j = rᵀr/pᵀAp`` and ``β_j = r_{j+1}ᵀr_{j+1}/r_jᵀr_j``:
    ``T[j, j] = 1/α_j + β_{j−1}/α_{j−1}`` and ``T[j, j+1] = √β_j/α_j``.
    """
    k = len(alphas)
    if k == 0 or not all(math.isfinite(v) for v in (*alphas, *betas[: k - 1])):
        return 0.0
    a, bt = np.asarray(alphas), np.asarray(betas[: k - 1])
    diag = 1 / a + np.concatenate([[0.0], bt / a[:-1]])
    off = np.sqrt(bt) / a[:-1]
    top = eigvalsh_tridiagonal(diag, off, select="i", select_range=(k - 1, k - 1))
    return float(np.asarray(top)[0])


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


# A restart from the recomputed residual is tried when it misses the threshold by at most this
# factor. Measured over 8,963 CG solves (SPD systems d = 5…50, κ = 1e2…1e8 with log-spaced, linear
# and two-cluster spectra, float32 and float64, tol = 1e-12…1e-2): the recursive test stopped 4,199
# of them with ‖b − Ax‖ above the threshold; one restart brought 144 of those under it, every one
# missing by at most ×4.2 before, and none that missed by more. A larger miss is the rounding floor
# ``LinearInfo.attainable``, which no restart moves: a restart there would only spend iterations.
_RESTART_WITHIN = 10.0


@dataclass(frozen=True)
class CG:
    r"""Conjugate gradients for symmetric positive-definite ``A``.

    Iterates until the recursively updated residual satisfies ``‖r_k‖ ≤ max(tol·‖b‖, atol)``
    (checked after every update, so the last iteration is never skipped) or ``maxiter``
    iterations are spent, then recomputes ``r = b − A x``: ``converged`` is that test on the
    recomputed residual. In floating point the recursive residual keeps shrinking after the
    true one stalls, so the two can disagree by orders of magnitude; when the recomputed
    residual misses the threshold by at most ×10, CG restarts once from it (``p = r``, one
    matrix-vector product plus the few iterations that close the gap), which turns a near
    miss from accumulated rounding into a pass; a larger miss is the precision floor
    (``LinearInfo.attainable``, about ``ε·‖A‖·‖x‖/‖b‖`` with ``‖A‖`` the largest Ritz value of
    the iteration) and is reported, not retried. A direction with ``pᵀAp ≤ 0`` means ``A`` is
    not positive definite: CG stops there and reports ``negative_curvature`` (use
    :class:`MINRES` or :class:`Direct` for indefinite systems). In exact arithmetic CG solves a
    d-dimensional system in at most d iterations.

    Args:
        maxiter: the most iterations (≥ 1), one matrix-vector product each; the residual
            recomputations add one at the end and one per restart.
        tol: relative tolerance on the residual (0 < tol < 1).
        atol: absolute tolerance on the residual (≥ 0).

    Raises:
        TypeError / ValueError: at construction, for a hyperparameter of the wrong type or out
            of the range given above.

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
        relative_tolerance(who, "tol", self.tol, "tol=1e-10")
        nonnegative(who, "atol", self.atol, "atol=0.0")

    def _restart(self, rnorm: float, threshold: float, iterations: int) -> bool:
        """Whether a recomputed residual ``rnorm`` that missed ``threshold`` is a near miss
        worth one restart (false for NaN, a met threshold or a spent budget)."""
        return threshold < rnorm <= _RESTART_WITHIN * threshold and iterations < self.maxiter

    def solve(
        self, operator: LinearOperator, b: Tree, *, backend: Backend
    ) -> tuple[Tree, LinearInfo]:
        _need_symmetric(repr(self), operator)
        dtype, eps = _precision(b)
        x, r = backend.zeros_like(b), b
        rr = tree.vdot(r, r)
        rr_host = backend.to_float(rr)
        bnorm = math.sqrt(rr_host)
        threshold = _threshold(self.tol, self.atol, bnorm)
        iterations, negative, anorm = 0, False, 0.0
        rnorm = bnorm
        before: tuple[Tree, float] | None = None  # the answer before a restart
        while True:
            p = r
            alphas: list[float] = []  # step sizes and ratios of this run, for _largest_ritz
            betas: list[float] = []
            while rnorm > threshold and iterations < self.maxiter:
                ap = operator.matvec(p)
                pap = tree.vdot(p, ap)
                iterations += 1
                pap_host = backend.to_float(pap)
                if not pap_host > 0:
                    negative = True
                    break
                alpha = rr / pap
                x = tree.axpy(alpha, p, x)
                r = tree.axpy(-alpha, ap, r)
                rr_new = tree.vdot(r, r)
                rr_new_host = backend.to_float(rr_new)
                rnorm = math.sqrt(rr_new_host)
                p = tree.axpy(rr_new / rr, p, r)
                alphas.append(rr_host / pap_host)
                betas.append(rr_new_host / rr_host)
                rr, rr_host = rr_new, rr_new_host
            anorm = max(anorm, _largest_ritz(alphas, betas))
            if iterations == 0:  # b = 0, or b already within atol: x = 0 and r = b exactly
                break
            r = tree.sub(b, operator.matvec(x))  # the true residual, judged and reported
            rr = tree.vdot(r, r)
            rr_host = backend.to_float(rr)
            rnorm = math.sqrt(rr_host)  # NaN stays NaN: neither converged nor restarted
            if before is not None:
                if not rnorm <= before[1]:  # the restart did not help: undo it
                    x, rnorm = before
                break
            if negative or not self._restart(rnorm, threshold, iterations):
                break
            before = (x, rnorm)
        xnorm = _norm(backend, x)
        residual = (0.0 if xnorm == 0 else math.inf) if bnorm == 0 else rnorm / bnorm
        return x, LinearInfo(
            iterations,
            residual,
            not negative and rnorm <= threshold,
            negative,
            tol=max(self.tol, self.atol / bnorm) if bnorm > 0 else self.tol,
            attainable=_attainable(eps, anorm, xnorm, bnorm),
            dtype=dtype,
        )

    def solve_batch(
        self, operator: LinearOperator, b: Tree, *, backend: Backend
    ) -> tuple[Tree, list[LinearInfo]]:
        """Independent systems with a leading task axis, each with the iterates, stopping
        test, restart and report of :meth:`solve` (a finished task takes zero steps); one host
        synchronisation per iteration for the whole batch."""
        _need_symmetric(repr(self), operator)
        dtype, eps = _precision(b)
        n = int(tree.leaves(b)[0].shape[0])
        dot, on = _batch_dot(n), _batch_scale(n)
        bb = dot(b, b)
        bnorm = np.sqrt(backend.to_numpy(bb))
        threshold = np.maximum(self.tol * bnorm, self.atol)
        iterations = np.zeros(n, dtype=int)
        negative = np.zeros(n, dtype=bool)
        anorm = np.zeros(n)

        def run(x: Tree, r: Tree, active: np.ndarray[Any, Any]) -> Tree:
            """CG from ``x`` with residual ``r`` on the ``active`` tasks until each stops; the
            new ``x`` (the host arrays ``iterations``, ``negative``, ``anorm`` updated)."""
            p, rr = r, dot(r, r)
            rr_host = backend.to_numpy(rr)
            alphas: list[list[float]] = [[] for _ in range(n)]
            betas: list[list[float]] = [[] for _ in range(n)]
            while active.any():
                ap = operator.matvec(p)
                pap = dot(p, ap)
                pap_host = backend.to_numpy(pap)
                iterations[:] += active
                negative[:] |= active & ~(pap_host > 0)
                active = active & ~negative
                mask = backend.from_numpy(active.astype(float), like=rr)
                alpha = mask * rr / (pap + (1 - mask))  # 0 for finished tasks
                x = tree.add(x, on(alpha, p))
                r = tree.sub(r, on(alpha, ap))
                rr_new = dot(r, r)
                rr_new_host = backend.to_numpy(rr_new)
                for i in np.flatnonzero(active):
                    alphas[i].append(float(rr_host[i] / pap_host[i]))
                    betas[i].append(float(rr_new_host[i] / rr_host[i]))
                rr_host = np.where(active, rr_new_host, rr_host)
                p = tree.add(r, on(mask * rr_new / (rr + (1 - mask)), p))
                rr = rr_new
                active = active & (np.sqrt(rr_host) > threshold) & (iterations < self.maxiter)
            anorm[:] = np.maximum(anorm, [_largest_ritz(alphas[i], betas[i]) for i in range(n)])
            return x

        def true_residual(x: Tree) -> tuple[Tree, np.ndarray[Any, Any]]:
            """``b − A x`` and its per-task norms (exactly ``b`` for untouched tasks)."""
            r = tree.sub(b, operator.matvec(x))
            return r, np.sqrt(backend.to_numpy(dot(r, r)))

        x = run(backend.zeros_like(b), b, bnorm > threshold)
        r, rnorm = true_residual(x)
        restart = np.array(
            [
                not negative[i]
                and self._restart(float(rnorm[i]), float(threshold[i]), int(iterations[i]))
                for i in range(n)
            ],
            dtype=bool,
        )
        if restart.any():
            x_new = run(x, r, restart)
            rnorm_new = true_residual(x_new)[1]
            better = restart & (rnorm_new <= rnorm)  # a restart that did not help is undone
            take = backend.from_numpy(better.astype(float), like=bb) > 0.5
            x = tree.map(
                lambda new, old: backend.where(
                    take.reshape((n,) + (1,) * (new.ndim - 1)), new, old
                ),
                x_new,
                x,
            )
            rnorm = np.where(better, rnorm_new, rnorm)
        xnorm = np.sqrt(backend.to_numpy(dot(x, x)))
        residual = np.where(bnorm > 0, rnorm / np.where(bnorm > 0, bnorm, 1), 0.0)
        residual = np.where((bnorm == 0) & (xnorm > 0), np.inf, residual)
        return x, [
            LinearInfo(
                int(iterations[i]),
                float(residual[i]),
                bool(not negative[i] and rnorm[i] <= threshold[i]),
                bool(negative[i]),
                tol=max(self.tol, float(self.atol / bnorm[i])) if bnorm[i] > 0 else self.tol,
                attainable=_attainable(eps, float(anorm[i]), float(xnorm[i]), float(bnorm[i])),
                dtype=dtype,
            )
            for i in range(n)
        ]


@dataclass(frozen=True)
class Neumann:
    r"""The truncated Neumann series ``x = α Σ_{k<n} (I − αA)^k b`` (Richardson iteration).

    Converges when the spectral radius of ``I − αA`` is below 1 (for SPD ``A``:
    ``0 < α < 2/λ_max``), needing O(κ) iterations against CG's O(√κ). Works for non-symmetric
    ``A`` (the fixed-point systems of update rules), where it is the classic
    ``Σ (∂step)ᵀᵏ`` series for ``α = 1``. ``n`` terms cost ``n`` matrix-vector products: the
    series stops after ``maxiter`` terms, or earlier when the recursively updated residual
    ``(I − αA)ⁿ b`` is below ``tol·‖b‖``; ``converged`` is the test ``‖b − A x‖ ≤ tol·‖b‖`` on the
    recomputed residual (the two differ by rounding, which in float32 can be the larger).

    Args:
        maxiter: the most terms (≥ 1).
        alpha: the scaling α (> 0).
        tol: the relative residual ``‖b − Ax‖/‖b‖`` to reach (0 < tol < 1).

    Raises:
        TypeError / ValueError: at construction, for a hyperparameter of the wrong type or out
            of the range given above.

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
        relative_tolerance(who, "tol", self.tol, "tol=1e-10")

    def solve(
        self, operator: LinearOperator, b: Tree, *, backend: Backend
    ) -> tuple[Tree, LinearInfo]:
        dtype, eps = _precision(b)
        x, r = backend.zeros_like(b), b
        bnorm = _norm(backend, b)
        threshold = self.tol * bnorm
        iterations, rnorm, anorm = 0, bnorm, 0.0
        while rnorm > threshold and iterations < self.maxiter and math.isfinite(rnorm):
            ar = operator.matvec(r)
            if iterations == 0:  # ‖A b‖/‖b‖ ≤ ‖A‖, for the precision floor
                anorm = _norm(backend, ar) / bnorm
            x = tree.axpy(self.alpha, r, x)
            r = tree.axpy(-self.alpha, ar, r)
            iterations += 1
            rnorm = _norm(backend, r)
        residual = _relative_residual(operator, b, x, bnorm, backend)
        return x, LinearInfo(
            iterations,
            residual,
            residual <= self.tol,  # false for NaN
            tol=self.tol,
            attainable=_attainable(eps, anorm, _norm(backend, x), bnorm),
            dtype=dtype,
        )


_KRYLOV_ROUNDS = 4  # SciPy runs per solve: the first, then restarts with a tighter rtol


@dataclass(frozen=True)
class _Krylov:
    """SciPy's Krylov solvers on a ``scipy.sparse.linalg.LinearOperator`` (host, float64)."""

    maxiter: int = 200
    tol: float = 1e-10

    def __post_init__(self) -> None:
        who = repr(self)
        count(who, "maxiter", self.maxiter, 1)
        relative_tolerance(who, "tol", self.tol, "tol=1e-10")

    def _run(
        self, a: spla.LinearOperator, b: np.ndarray[Any, Any], x0: np.ndarray[Any, Any], rtol: float
    ) -> tuple[np.ndarray[Any, Any], int]:
        raise NotImplementedError

    def solve(
        self, operator: LinearOperator, b: Tree, *, backend: Backend
    ) -> tuple[Tree, LinearInfo]:
        dtype, eps = _precision(b)
        flat, unravel = backend.ravel(b)
        n = int(flat.shape[0])
        counter = [0]
        anorm = [0.0]  # the largest ‖A v‖/‖v‖ SciPy's vectors show, a lower bound on ‖A‖

        def matvec(v: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
            counter[0] += 1
            out = operator.matvec(unravel(backend.from_numpy(np.ravel(v), like=flat)))
            av = backend.to_numpy(backend.ravel(out)[0])
            vnorm, avnorm = float(np.linalg.norm(v)), float(np.linalg.norm(av))
            if vnorm > 0 and math.isfinite(avnorm):
                anorm[0] = max(anorm[0], avnorm / vnorm)
            return av

        a = spla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)  # pyright: ignore[reportCallIssue]
        b_np, x_np, rtol = backend.to_numpy(flat), np.zeros(n), self.tol
        bnorm = _norm(backend, b)

        # SciPy's MINRES stops on its own measure (‖r‖ ≤ rtol·(‖A‖‖x‖ + ‖b‖)), which can be far
        # looser than the documented ‖b − Ax‖/‖b‖ ≤ tol: restart from the last iterate with
        # rtol tightened by the gap, a few times, and report convergence on the documented test
        # alone. SciPy's exit code judges its own measure and rtol (tighter than tol after a
        # restart), so it is kept in extra but decides nothing.
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
        return x, LinearInfo(
            counter[0],
            residual,
            residual <= self.tol,  # false for NaN
            extra={"scipy_info": code},
            tol=self.tol,
            attainable=_attainable(eps, anorm[0], _norm(backend, x), bnorm),
            dtype=dtype,
        )


@dataclass(frozen=True)
class MINRES(_Krylov):
    """SciPy's MINRES for symmetric, possibly indefinite ``A`` (host round trip, float64).

    ``converged`` is the documented test ``‖b − Ax‖/‖b‖ ≤ tol`` on the recomputed residual,
    whatever SciPy's exit code says (kept as ``info.extra["scipy_info"]``): SciPy judges its
    own residual measure against its own, possibly tightened, ``rtol``.

    Args:
        maxiter: the most iterations of one SciPy run (≥ 1); a solve makes up to 4 runs,
            restarting from the last iterate while ``‖b − Ax‖/‖b‖ > tol``.
        tol: the relative residual ``‖b − Ax‖/‖b‖`` to reach (0 < tol < 1).

    Raises:
        TypeError / ValueError: at construction, for a hyperparameter of the wrong type or out
            of the range given above.

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

    ``converged`` is ``‖b − Ax‖/‖b‖ ≤ tol`` on the recomputed residual, as for MINRES.

    Args:
        maxiter: the most restart cycles of one SciPy run (≥ 1; up to 4 runs, as for MINRES).
        tol: the relative residual ``‖b − Ax‖/‖b‖`` to reach (0 < tol < 1).
        restart: the Krylov dimension between restarts (≥ 1).

    Raises:
        TypeError / ValueError: at construction, for a hyperparameter of the wrong type or out
            of the range given above.

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

    def __post_init__(self) -> None:
        super().__post_init__()
        count(repr(self), "restart", self.restart, 1)

    def _run(
        self, a: spla.LinearOperator, b: np.ndarray[Any, Any], x0: np.ndarray[Any, Any], rtol: float
    ) -> tuple[np.ndarray[Any, Any], int]:
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
            converged (0 < tol < 1).

    Raises:
        TypeError / ValueError: at construction, for a hyperparameter of the wrong type or out
            of the range given above.

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
        relative_tolerance(f"Direct(tol={self.tol!r})", "tol", self.tol, "tol=1e-6")

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
        # the largest column norm: ‖A‖₂/√n ≤ max_j ‖A e_j‖ ≤ ‖A‖₂
        anorm = max((_norm(backend, c) for c in columns), default=0.0)
        dtype, eps = _precision(b)
        return x, LinearInfo(
            n,
            residual,
            residual <= self.tol,  # false for NaN
            negative,
            tol=self.tol,
            attainable=_attainable(eps, anorm, _norm(backend, x), bnorm),
            dtype=dtype,
        )
