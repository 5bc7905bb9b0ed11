"""Unit tests of the solvers against numbers: linear solvers against a dense NumPy solve and
Krylov theory, inner solvers against closed-form iterates, and their dataclass contract.

Every test that handles arrays runs once per framework (the ``fw`` fixture,
``tests/_frameworks.py``): the systems are drawn in NumPy float64 from seeded generators, handed
to the solver as torch tensors or JAX arrays with the matching backend, and every reference
(``np.linalg.solve``, matrix powers, closed forms) is computed in NumPy, independently of the
framework under test. The dataclass-contract tests at the end touch no arrays and run once.

Recurring tolerance arguments:

- *forward error*: for ``A x = b`` with relative residual ``ρ = ‖b − A x̂‖/‖b‖``,
  ``‖x̂ − x‖/‖x‖ ≤ κ(A)·ρ``; so a solver run to residual ``tol`` is checked against
  ``np.linalg.solve`` with ``κ·tol`` (plus a rounding floor).
- *rounding floor*: a direct float64 solve of a system with condition κ is accurate to about
  ``κ·d·u`` with ``u ≈ 1.1e-16``, i.e. ≲ 1e-12 for the κ ≤ 100, d ≤ 40 systems used here.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from _frameworks import Framework, assert_close, flat, numpy, rel_err, xp
from _generators import randn, rng

from bilevel import FirstOrder, Problem, Unrolled, hypergrad, solvers
from bilevel.backends import Backend, backend_for
from bilevel.protocols import InnerObjective, LinearOperator

Array = np.ndarray[Any, Any]
Tree = Any
FLOOR = 1e-12  # rounding floor of a float64 solve, κ·d·u ≲ 100·40·1.1e-16 ≈ 4e-13, rounded up


# ----------------------------------------------------------------------------- fixtures


def backend(fw: Framework) -> Backend:
    """The backend of ``fw``'s arrays (``TorchBackend`` or ``JaxBackend``), chosen from a leaf
    type as ``hypergrad`` chooses it."""
    return backend_for(fw.array(np.zeros(1)))


def _orthogonal(d: int, seed: int) -> Array:
    q, _ = np.linalg.qr(randn(rng(seed), d, d))
    return q


def _spd(d: int, kappa: float, seed: int) -> Array:
    """Q diag(λ) Qᵀ with λ log-spaced in [1, κ]: condition number exactly κ."""
    q = _orthogonal(d, seed)
    lam = np.logspace(0, math.log10(kappa), d)
    return q @ np.diag(lam) @ q.T


def _indefinite(d: int, seed: int) -> Array:
    """Symmetric with eigenvalues ±[1, 10] alternating: well-conditioned (κ = 10) but indefinite."""
    q = _orthogonal(d, seed)
    lam = np.linspace(1, 10, d)
    lam[::2] *= -1
    return q @ np.diag(lam) @ q.T


def _contractive(d: int, seed: int, norm: float = 0.5) -> Array:
    """Non-symmetric ``A = I − M`` with ``‖M‖₂ = norm < 1``: the Neumann series in M converges
    as ``norm^k`` and ``κ(A) ≤ (1 + norm)/(1 − norm) = 3``."""
    m = randn(rng(seed), d, d)
    m = m * (norm / np.linalg.norm(m, ord=2))
    return np.eye(d) - m


def _rhs(d: int, seed: int) -> Array:
    return randn(rng(seed + 1000), d)


def _op(a: Any, symmetric: bool = True) -> LinearOperator:
    """``v ↦ a v`` for a framework matrix ``a``."""
    return LinearOperator(lambda v: a @ v, symmetric)


def _true_residual(a: Array, x: Any, b: Array) -> float:
    """``‖b − A x‖/‖b‖`` in NumPy, for the solver's answer ``x`` (any framework)."""
    return float(np.linalg.norm(b - a @ flat(x)) / np.linalg.norm(b))


KAPPA = 100.0
D = 40
LAMBDA_MAX = KAPPA  # of _spd(…, KAPPA, …)


def _solvers_for_spd() -> list[Any]:
    # Neumann: α = 1/λ_max gives the contraction I − αA with spectral radius 1 − 1/κ, so
    # reaching 1e-10 takes ln(1e10)·κ ≈ 2300 terms; maxiter leaves ×4 room.
    return [
        solvers.CG(maxiter=500, tol=1e-10),
        solvers.MINRES(maxiter=500, tol=1e-10),
        solvers.GMRES(tol=1e-10),
        solvers.Neumann(maxiter=10_000, alpha=1 / LAMBDA_MAX, tol=1e-10),
        solvers.Direct(),
    ]


def _residual_bound(solver: Any, kappa: float, iterations: int) -> float:
    """The relative residual each solver guarantees when it reports convergence.

    CG, GMRES, Neumann stop on ``‖r‖ ≤ tol·‖b‖``. SciPy's MINRES stops on
    ``‖r‖ ≤ rtol·(Â‖x‖ + ‖b‖)`` where Â is its running estimate ``‖T_k‖_F`` of ‖A‖ (T_k the
    Lanczos tridiagonal), which is at most ``√k·‖A‖₂``; with ``‖x‖ ≤ ‖A⁻¹‖‖b‖`` that is at most
    ``rtol·(√k·κ + 1)·‖b‖``. Direct is exact up to rounding. Each gets the rounding floor of
    recomputing ``b − A x``.
    """
    if isinstance(solver, solvers.MINRES):
        return solver.tol * (math.sqrt(iterations) * kappa + 1) + FLOOR
    if isinstance(solver, solvers.Direct):
        return FLOOR
    return solver.tol + FLOOR


def _name(solver: Any) -> str:
    return type(solver).__name__


# ---------------------------------------------------------------- linear solvers: accuracy


@pytest.mark.parametrize("solver", _solvers_for_spd(), ids=_name)
def test_spd_system_matches_dense_solve(fw: Framework, solver: Any) -> None:
    a, b = _spd(D, KAPPA, seed=0), _rhs(D, seed=0)
    x, info = solver.solve(_op(fw.array(a)), fw.array(b), backend=backend(fw))
    assert info.converged
    assert not info.negative_curvature
    bound = _residual_bound(solver, KAPPA, info.iterations)
    assert info.residual <= bound
    # forward error ≤ κ · relative residual (plus the dense solve's own rounding)
    assert rel_err(x, np.linalg.solve(a, b)) <= KAPPA * bound + FLOOR


@pytest.mark.parametrize(
    "solver",
    [
        solvers.GMRES(tol=1e-12),
        solvers.Neumann(maxiter=200, alpha=1.0, tol=1e-12),
        solvers.Direct(),
    ],
    ids=_name,
)
def test_nonsymmetric_contractive_system_matches_dense_solve(fw: Framework, solver: Any) -> None:
    a, b = _contractive(D, seed=1), _rhs(D, seed=1)
    assert not np.allclose(a, a.T)  # really non-symmetric
    x, info = solver.solve(_op(fw.array(a), symmetric=False), fw.array(b), backend=backend(fw))
    assert info.converged
    # κ(A) ≤ 3 (see _contractive); tol = 1e-12 → forward error ≤ 3e-12 + floor
    assert rel_err(x, np.linalg.solve(a, b)) <= 3 * 1e-12 + FLOOR
    if isinstance(solver, solvers.Neumann):
        # α = 1: residual_k = M^k b, ‖M‖ = 1/2 → ≤ ⌈log2(1e12)⌉ = 40 terms
        assert info.iterations <= 40


@pytest.mark.parametrize("solver", [solvers.CG(), solvers.MINRES()], ids=_name)
def test_symmetric_only_solvers_refuse_a_nonsymmetric_operator(fw: Framework, solver: Any) -> None:
    a, b = _contractive(5, seed=2), _rhs(5, seed=2)
    with pytest.raises(ValueError, match="symmetric"):
        solver.solve(_op(fw.array(a), symmetric=False), fw.array(b), backend=backend(fw))


def _flat17(t: Tree) -> Any:
    """The pytree {"u": 3×4, "w": 5} as one framework vector, leaves in order u then w (the
    order of ``_frameworks.flat`` too, which flattens the NumPy side)."""
    return xp(t["w"]).concatenate([t["u"].reshape(-1), t["w"]])


def _unflat17(v: Any) -> Tree:
    return {"u": v[:12].reshape(3, 4), "w": v[12:]}


def _pytree_system(fw: Framework, seed: int, kind: str) -> tuple[LinearOperator, Tree, Array]:
    """An operator on the pytree {"u": 3×4, "w": 5} (17 unknowns) given by a dense matrix on the
    flattened vector, with the leaves flattened in a fixed order (u then w). Returns the operator
    and right-hand side (framework arrays) and the NumPy matrix."""
    d = 17
    a = _spd(d, 10.0, seed) if kind == "spd" else _contractive(d, seed)
    b = {"u": randn(rng(seed), 3, 4), "w": randn(rng(seed + 1), 5)}
    a_fw = fw.array(a)
    op = LinearOperator(lambda t: _unflat17(a_fw @ _flat17(t)), kind == "spd")
    return op, b, a


@pytest.mark.parametrize(
    ("solver", "kind"),
    [
        (solvers.CG(tol=1e-12), "spd"),
        (solvers.MINRES(tol=1e-12), "spd"),
        (solvers.GMRES(tol=1e-12), "spd"),
        (solvers.Direct(), "spd"),
        (solvers.Neumann(maxiter=2000, alpha=0.1, tol=1e-12), "spd"),
        (solvers.GMRES(tol=1e-12), "contractive"),
        (solvers.Neumann(maxiter=200, alpha=1.0, tol=1e-12), "contractive"),
        (solvers.Direct(), "contractive"),
    ],
    ids=lambda v: v if isinstance(v, str) else _name(v),
)
def test_pytree_right_hand_side(fw: Framework, solver: Any, kind: str) -> None:
    op, b, a = _pytree_system(fw, seed=3, kind=kind)
    x, info = solver.solve(op, fw.tree(b), backend=backend(fw))
    assert set(x) == {"u", "w"}
    assert x["u"].shape == (3, 4) and x["w"].shape == (5,)
    assert numpy(x["u"]).dtype == np.float64 and numpy(x["w"]).dtype == np.float64
    assert info.converged
    # κ = 10: forward error ≤ κ · (residual bound of _residual_bound, MINRES's the loosest)
    x_star = np.linalg.solve(a, flat(b))
    assert rel_err(x, x_star) <= 10 * _residual_bound(solver, 10.0, info.iterations) + FLOOR
    assert info.residual == pytest.approx(_true_residual(a, x, flat(b)), rel=1e-6, abs=1e-15)


ALL_SOLVERS = [solvers.CG(), solvers.Neumann(), solvers.MINRES(), solvers.GMRES(), solvers.Direct()]


@pytest.mark.parametrize("solver", ALL_SOLVERS, ids=_name)
def test_zero_rhs_returns_zero_converged(fw: Framework, solver: Any) -> None:
    op, b, _ = _pytree_system(fw, seed=4, kind="spd")
    zero = fw.tree({k: np.zeros_like(v) for k, v in b.items()})
    x, info = solver.solve(op, zero, backend=backend(fw))
    assert all(bool((v == 0).all()) for v in numpy(x).values())
    assert info.residual == 0.0
    assert info.converged
    assert not info.negative_curvature


# ----------------------------------------------------------- linear solvers: the diagnostics


@pytest.mark.parametrize(
    ("solver", "converged"),
    [
        # stopped early on purpose, so the residual is far from zero and not just rounding
        (solvers.CG(maxiter=5), False),
        (solvers.Neumann(maxiter=50, alpha=1 / LAMBDA_MAX), False),
        (solvers.MINRES(maxiter=5), False),
        (solvers.GMRES(maxiter=1, restart=5), False),
        (solvers.Direct(), True),
        (solvers.CG(), True),
    ],
    ids=["CG-early", "Neumann-early", "MINRES-early", "GMRES-early", "Direct", "CG-full"],
)
def test_reported_residual_is_the_true_residual(
    fw: Framework, solver: Any, converged: bool
) -> None:
    a, b = _spd(D, KAPPA, seed=5), _rhs(D, seed=5)
    x, info = solver.solve(_op(fw.array(a)), fw.array(b), backend=backend(fw))
    true = _true_residual(a, x, b)
    # Same quantity, two summation orders: agreement to ~1e-15 relative; 1e-9 relative covers it,
    # abs 1e-15 covers residuals that are themselves at the rounding floor (Direct, CG-full).
    assert info.residual == pytest.approx(true, rel=1e-9, abs=1e-15)
    assert info.converged == converged
    if not converged:
        # ≤ 50 Krylov/Neumann steps on κ = 100 stay far above tol = 1e-10
        assert info.residual > 1e-4


def test_minres_converged_means_relative_residual_below_tol(fw: Framework) -> None:
    a, b = _spd(50, 100.0, seed=0), randn(rng(0), 50)
    tol = 1e-6
    _, info = solvers.MINRES(maxiter=2000, tol=tol).solve(
        _op(fw.array(a)), fw.array(b), backend=backend(fw)
    )
    # The noise floor of computing b − A x here is ~κ·d·u ≈ 1e-12 ≪ tol, so an honest
    # "converged" means residual ≤ tol up to that floor; 1.1·tol leaves 10% for it.
    assert (not info.converged) or info.residual <= 1.1 * tol, info


@pytest.mark.parametrize(
    "solver",
    [
        solvers.CG(maxiter=2000, tol=1e-6),
        solvers.GMRES(tol=1e-6),
        solvers.Neumann(maxiter=20_000, alpha=1 / 100, tol=1e-6),
        solvers.Direct(tol=1e-6),
    ],
    ids=_name,
)
def test_converged_means_relative_residual_below_tol(fw: Framework, solver: Any) -> None:
    """The counterpart of the MINRES test above for the solvers that are honest about it."""
    a, b = _spd(50, 100.0, seed=0), randn(rng(0), 50)
    _, info = solver.solve(_op(fw.array(a)), fw.array(b), backend=backend(fw))
    assert info.converged
    assert info.residual <= 1.1 * solver.tol  # 1.1: see the MINRES test


# ------------------------------------------------------------------ CG: iteration counts


@pytest.mark.parametrize(("d", "kappa"), [(1, 1.0), (2, 10.0), (3, 100.0), (5, 100.0), (8, 10.0)])
def test_cg_terminates_within_d_iterations(fw: Framework, d: int, kappa: float) -> None:
    """Finite termination: in exact arithmetic CG solves a d-dimensional system in ≤ d steps.
    The Chebyshev bound ½√κ·ln(2/tol) would allow ~37 (κ=10) or ~119 (κ=100) iterations, so
    the cases here really test termination, not fast convergence. (Larger d with large κ take a
    few extra steps in floating point through loss of orthogonality: not tested as exact.)"""
    a, b = _spd(d, kappa, seed=d), _rhs(d, seed=d)
    x, info = solvers.CG(maxiter=10 * d, tol=1e-10).solve(
        _op(fw.array(a)), fw.array(b), backend=backend(fw)
    )
    assert info.converged
    assert 1 <= info.iterations <= d
    assert info.residual <= 1e-10 + FLOOR
    assert rel_err(x, np.linalg.solve(a, b)) <= kappa * 1e-10 + FLOOR


@pytest.mark.parametrize("m", [1, 2, 3])
def test_cg_needs_one_iteration_per_distinct_eigenvalue(fw: Framework, m: int) -> None:
    """d = 200 but only m distinct eigenvalues: the Krylov space has dimension m, so CG is exact
    after m steps."""
    d = 200
    lam = np.resize(np.array([1.0, 3.0, 10.0])[:m], d)  # the m values repeated to length d
    q = _orthogonal(d, 7)
    a = q @ np.diag(lam) @ q.T
    b = _rhs(d, seed=7)
    x, info = solvers.CG(tol=1e-10).solve(_op(fw.array(a)), fw.array(b), backend=backend(fw))
    assert info.converged
    assert info.iterations == m
    assert rel_err(x, np.linalg.solve(a, b)) <= 10 * 1e-10 + FLOOR  # κ ≤ 10


def _iterations_to_1e6(
    fw: Framework, solver_for_kappa: Callable[[float], Any], kappa: float
) -> int:
    """Iterations to relative residual 1e-6 on diag(linspace(1, κ, 1000)) x = 1."""
    lam = fw.array(np.linspace(1, kappa, 1000))
    b = fw.array(np.ones(1000))
    _, info = solver_for_kappa(kappa).solve(
        LinearOperator(lambda v: lam * v, True), b, backend=backend(fw)
    )
    assert info.converged
    assert info.residual <= 1e-6 + FLOOR
    return info.iterations


def test_cg_iterations_grow_like_sqrt_kappa_and_neumann_like_kappa(fw: Framework) -> None:
    """Theory. CG: ‖e_k‖_A ≤ 2((√κ−1)/(√κ+1))^k ‖e_0‖_A, so k ≈ ½√κ·ln(2/ε): ×10 from κ=10 to
    κ=1000. Neumann/Richardson with α = 1/λ_max: r_k = (I − αA)^k b, spectral radius 1 − 1/κ,
    so k ≈ κ·ln(1/ε): ×100. (Measured: CG 22 → 148, ×6.7 since the bound is pessimistic for
    a uniform spectrum; Neumann 107 → 10357, ×97.) The asserted windows are loose around these:
    CG's growth must be clearly sub-linear (< 15, against 100 for linear growth) yet real
    (> 3); Neumann's clearly super-√κ (> 50)."""
    cg = {
        k: _iterations_to_1e6(fw, lambda _: solvers.CG(maxiter=5000, tol=1e-6), k)
        for k in (10, 1000)
    }
    neumann = {
        k: _iterations_to_1e6(
            fw, lambda kap: solvers.Neumann(maxiter=100_000, alpha=1 / kap, tol=1e-6), k
        )
        for k in (10, 100, 1000)
    }
    assert 3 < cg[1000] / cg[10] < 15
    assert neumann[1000] / neumann[10] > 50
    assert 5 < neumann[100] / neumann[10] < 20  # ×10 per decade of κ, measured 9.7
    assert cg[1000] < neumann[100]  # CG on κ=1000 beats Neumann on κ=100 (148 vs 1038)


# ------------------------------------------------ Neumann divergence, indefinite systems


@pytest.mark.parametrize("maxiter", [100, 5000])
def test_neumann_divergence_is_reported_not_raised(fw: Framework, maxiter: int) -> None:
    """α = 0.3 on eigenvalues up to 10: |1 − 0.3·10| = 2 > 1, the series diverges. maxiter=100
    ends with a huge finite residual; maxiter=5000 overflows to inf mid-way."""
    lam = fw.array(np.linspace(1, 10, 5))
    op = LinearOperator(lambda v: lam * v, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from overflow either
        _, info = solvers.Neumann(maxiter=maxiter, alpha=0.3).solve(
            op, fw.array(np.ones(5)), backend=backend(fw)
        )
    assert not info.converged
    assert not (info.residual <= 1.0)  # grew (or is nan/inf): never reported as small


def test_minres_solves_an_indefinite_system(fw: Framework) -> None:
    a, b = _indefinite(D, seed=8), _rhs(D, seed=8)
    assert float(np.linalg.eigvalsh(a)[0]) < 0
    x, info = solvers.MINRES(maxiter=500, tol=1e-10).solve(
        _op(fw.array(a)), fw.array(b), backend=backend(fw)
    )
    assert info.converged
    kappa = 10.0
    bound = _residual_bound(solvers.MINRES(tol=1e-10), kappa, info.iterations)
    assert info.residual <= bound
    assert rel_err(x, np.linalg.solve(a, b)) <= kappa * bound + FLOOR


def test_direct_reports_negative_curvature_only_for_an_indefinite_matrix(fw: Framework) -> None:
    b = _rhs(D, seed=9)
    ind, spd = _indefinite(D, seed=9), _spd(D, KAPPA, seed=9)
    x, info = solvers.Direct().solve(_op(fw.array(ind)), fw.array(b), backend=backend(fw))
    assert info.negative_curvature
    assert info.converged  # the dense solve is still exact for a non-singular matrix
    assert rel_err(x, np.linalg.solve(ind, b)) <= FLOOR
    _, info_spd = solvers.Direct().solve(_op(fw.array(spd)), fw.array(b), backend=backend(fw))
    assert not info_spd.negative_curvature


def test_cg_stops_on_negative_curvature(fw: Framework) -> None:
    """b along an eigenvector with eigenvalue −1: the first direction has pᵀAp = −‖b‖² < 0."""
    d = 6
    q = _orthogonal(d, 10)
    lam = np.array([-1.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    a = q @ np.diag(lam) @ q.T
    _, info = solvers.CG().solve(_op(fw.array(a)), fw.array(q[:, 0]), backend=backend(fw))
    assert info.negative_curvature
    assert not info.converged
    assert info.iterations == 1


# ------------------------------------------------------------ inner solvers on a quadratic


def _vec6(p: Tree) -> Any:
    """φ = {"u": 2×2, "w": 2} as one framework vector, u then w (as ``_frameworks.flat``)."""
    return xp(p["w"]).concatenate([p["u"].reshape(-1), p["w"]])


def _unflat6(v: Array) -> dict[str, Array]:
    return {"u": v[:4].reshape(2, 2), "w": v[4:]}


# The problem functions are module-level and take the matrix from the task, so that JAX compiles
# the inner value-and-gradient once per function (and shape), not once per test.
def _tree_quadratic(p: Tree, meta: Tree, task: Tree) -> Any:
    """f(φ) = ½ vᵀAv − cᵀv for v = flat(φ), with A and c from the task."""
    v = _vec6(p)
    return 0.5 * v @ (task["a"] @ v) - task["c"] @ v


def _vector_quadratic(p: Any, meta: Tree, task: Tree) -> Any:
    """f(p) = ½ pᵀAp − cᵀp on a plain vector, with A and c from the task."""
    return 0.5 * p @ (task["a"] @ p) - task["c"] @ p


def _meta_as_params(meta: Tree, task: Tree) -> Tree:
    return meta


def _squared_norm(p: Tree, meta: Tree, task: Tree) -> Any:
    return (_vec6(p) ** 2).sum()


def _quadratic(seed: int = 11) -> SimpleNamespace:
    """f(φ) = ½ vᵀAv − cᵀv for v = flat(φ), φ = {"u": 2×2, "w": 2}; A SPD with λ ∈ [1, 10].
    NumPy data: ``task`` = {"a": A, "c": c} (for :func:`_tree_quadratic`), ``phi0`` a tree,
    ``x_star`` = A⁻¹c as a vector."""
    d = 6
    q = _orthogonal(d, seed)
    lam = np.linspace(1, 10, d)
    a = q @ np.diag(lam) @ q.T
    c = randn(rng(seed + 1), d)
    return SimpleNamespace(
        a=a,
        c=c,
        lam=lam,
        task={"a": a, "c": c},
        phi0=_unflat6(randn(rng(seed + 2), d)),
        x_star=np.linalg.solve(a, c),
    )


def _run(
    fw: Framework,
    solver: Any,
    phi0: Tree,
    loss: Callable[..., Any],
    meta: Tree = None,
    task: Tree = None,
    steps: int | None = None,
) -> list[Array]:
    """Drive an iterative solver by its protocol from the NumPy tree ``phi0`` (and NumPy
    ``meta``/``task``), on ``fw``; return every iterate φ_0 … φ_K, flattened to NumPy."""
    obj = InnerObjective(loss, fw.tree(meta), fw.tree(task), backend(fw))
    state = solver.init(fw.tree(phi0), obj)
    out = [flat(solver.params(state))]
    for _ in range(solver.steps if steps is None else steps):
        state = solver.step(state, obj)
        out.append(flat(solver.params(state)))
    return out


@pytest.mark.parametrize("lr", [0.05, 0.15])
def test_gradient_descent_iterates_match_the_closed_form(fw: Framework, lr: float) -> None:
    """φ_K = φ* + (I − αA)^K (φ_0 − φ*) exactly, for every K; rounding adds ~u per step to a
    contracting recursion, so 1e-12 relative (after 60 steps) is ~100× the expected error."""
    qd = _quadratic()
    k = 60
    iterates = _run(
        fw, solvers.GradientDescent(lr=lr, steps=k), qd.phi0, _tree_quadratic, task=qd.task
    )
    e0 = flat(qd.phi0) - qd.x_star
    m = np.eye(6) - lr * qd.a
    for t in (0, 1, 7, k):
        want = qd.x_star + np.linalg.matrix_power(m, t) @ e0
        assert np.linalg.norm(iterates[t] - want) <= 1e-12 * np.linalg.norm(want)


def test_gradient_descent_converges_at_the_predicted_linear_rate(fw: Framework) -> None:
    """Rate ρ = max|1 − αλ_i|. Bound ‖e_K‖ ≤ ρ^K ‖e_0‖ (+ rounding 1e-14), and since e_0 has a
    component along the slowest eigenvector, ‖e_{K+1}‖/‖e_K‖ → ρ: with λ = 1, 2.8, …, 10 and
    α = 0.1 the factors are |1 − αλ| = 0.9, 0.72, …, so after 40 steps the next slowest mode
    has faded relative to the slowest by 0.8^40 ≈ 1e-4 and the ratio is within 1% of ρ."""
    qd = _quadratic()
    lr = 0.1
    rho = float(np.abs(1 - lr * qd.lam).max())  # = 0.9 (λ_min = 1 dominates)
    iterates = _run(
        fw, solvers.GradientDescent(lr=lr, steps=80), qd.phi0, _tree_quadratic, task=qd.task
    )
    errs = [float(np.linalg.norm(p - qd.x_star)) for p in iterates]
    for t, e in enumerate(errs):
        assert e <= rho**t * errs[0] * (1 + 1e-12) + 1e-14
    assert errs[41] / errs[40] == pytest.approx(rho, rel=1e-2)
    assert errs[80] <= 1e-3 * errs[0]  # 0.9^80 ≈ 2e-4: it really converges


def test_gradient_descent_with_momentum_matches_polyak_heavy_ball(fw: Framework) -> None:
    """Polyak's form φ_{t+1} = φ_t − α∇f(φ_t) + μ(φ_t − φ_{t−1}), φ_{−1} = φ_0, is the same
    iteration as v ← μv + ∇f, φ ← φ − αv written differently: the iterates agree to rounding
    (1e-12 relative, as for plain GD)."""
    qd = _quadratic()
    lr, mu, k = 0.05, 0.8, 60
    iterates = _run(
        fw,
        solvers.GradientDescent(lr=lr, steps=k, momentum=mu),
        qd.phi0,
        _tree_quadratic,
        task=qd.task,
    )
    prev = cur = flat(qd.phi0)
    for t in range(1, k + 1):
        grad = qd.a @ cur - qd.c
        prev, cur = cur, cur - lr * grad + mu * (cur - prev)
        assert np.linalg.norm(iterates[t] - cur) <= 1e-12 * np.linalg.norm(cur), t
    # Heavy ball converges: for every eigenvalue λ ∈ [1, 10] the roots of
    # z² − (1 + μ − αλ)z + μ are complex ((1 + μ − αλ)² < 4μ), so every mode contracts at
    # |z| = √μ ≈ 0.894 per step: 0.894^60 ≈ 1.2e-3 ≤ 1e-2.
    assert np.linalg.norm(iterates[-1] - qd.x_star) <= 1e-2 * np.linalg.norm(
        flat(qd.phi0) - qd.x_star
    )
    # and momentum changes the iterates (it is not silently ignored)
    plain = _run(
        fw, solvers.GradientDescent(lr=lr, steps=2), qd.phi0, _tree_quadratic, task=qd.task
    )
    assert np.linalg.norm(plain[2] - iterates[2]) > 1e-3


def test_gradient_descent_through_hypergrad_gives_the_closed_form_iterate(fw: Framework) -> None:
    """The public path: hypergrad(...).params is φ_K of the solver (here with FirstOrder)."""
    qd = _quadratic()
    lr, k = 0.1, 9
    problem = Problem(init=_meta_as_params, inner_loss=_tree_quadratic, outer_loss=_squared_norm)
    res = hypergrad(
        problem,
        solvers.GradientDescent(lr=lr, steps=k),
        fw.tree(qd.phi0),
        fw.tree(qd.task),
        strategy=FirstOrder(),
    )
    e0 = flat(qd.phi0) - qd.x_star
    want = qd.x_star + np.linalg.matrix_power(np.eye(6) - lr * qd.a, k) @ e0
    assert rel_err(res.params, want) <= 1e-12  # rounding, as above


def _params_from_w0(meta: Tree, task: Tree) -> Any:
    return task["w0"]


def _sum(w: Any, meta: Tree, task: Tree) -> Any:
    return w.sum()


def _decay_rule(w: Any, meta: Any, task: Tree) -> Any:
    """Δw = −m·w + c."""
    return -meta * w + task["c"]


@pytest.mark.parametrize("steps", [0, 1, 7])
def test_update_rule_is_applied_exactly_t_times(fw: Framework, steps: int) -> None:
    """Rule Δw = −m·w + c: w_T = (1−m)^T (w_0 − c/m) + c/m. The Unrolled derivative of
    F = Σ w_T in m is Σ[−T(1−m)^{T−1}(w_0 − c/m) + ((1−m)^T − 1)·c/m²]; both hold to rounding
    (1e-12 relative) only if the rule runs exactly T times in the differentiated loop."""
    mm = 0.3
    w0, c = np.array([1.0, -2.0, 0.5]), np.array([0.2, 0.1, -0.4])
    problem = Problem(init=_params_from_w0, outer_loss=_sum)
    rule = solvers.UpdateRule(_decay_rule, steps=steps)
    res = hypergrad(
        problem,
        rule,
        fw.array(np.float64(mm)),
        fw.tree({"w0": w0, "c": c}),
        strategy=Unrolled(),
    )
    want = (1 - mm) ** steps * (w0 - c / mm) + c / mm
    assert numpy(res.params).dtype == np.float64
    assert_close(res.params, want, rtol=1e-12, atol=1e-14)
    dwant = (
        -steps * (1 - mm) ** max(steps - 1, 0) * (w0 - c / mm) + ((1 - mm) ** steps - 1) * c / mm**2
    ).sum()
    assert float(res.grad) == pytest.approx(float(dwant), rel=1e-12, abs=1e-14)


# ----------------------------------------------------------------------------- Scipy


# BFGS and Newton-CG are left out: with the default tol = 1e-12 they stop on SciPy's "Desired
# error not necessarily achieved due to precision loss" (success False) although x is accurate.
@pytest.mark.parametrize("method", ["L-BFGS-B", "CG", "SLSQP", "trust-constr"])
def test_scipy_minimises_a_quadratic(fw: Framework, method: str) -> None:
    """The value gap f(x) − f* ≤ 1e-8·max(1, |f*|). With tol = 1e-12 SciPy stops once the
    relative reduction of f (or the gradient) is ~1e-12; on a κ = 10 quadratic the remaining gap
    is a small multiple of that, so 1e-8 is ~1e3-1e4× generous (measured ≤ 1e-15).

    Seed 1, not the 11 of the tests above: SciPy's CG, like BFGS, often stops on "precision
    loss" (success False, x accurate) at tol = 1e-12 — on 21 of the quadratics of seeds 0–39
    (seed 11 among them), BFGS on 13. On seed 1 all four methods succeed, also with 1e-16
    noise added to the gradient (20 of 20 tries), so the framework's rounding cannot flip it."""
    qd = _quadratic(seed=1)
    task = fw.tree(qd.task)
    obj = InnerObjective(_tree_quadratic, None, task, backend(fw))
    start = fw.tree({"u": np.zeros((2, 2)), "w": np.zeros(2)})
    x, info = solvers.Scipy(method).solve(start, obj)
    assert set(x) == {"u", "w"} and x["u"].shape == (2, 2)
    assert numpy(x["u"]).dtype == np.float64
    f_star = float(_tree_quadratic(fw.tree(_unflat6(qd.x_star)), None, task))
    gap = float(_tree_quadratic(x, None, task)) - f_star
    assert gap <= 1e-8 * max(1.0, abs(f_star))
    assert info.success, info.message
    assert 1 <= info.iterations <= solvers.Scipy(method).maxiter


@pytest.mark.parametrize(
    "method",
    [
        "L-BFGS-B",
        "BFGS",
        "CG",
        "Newton-CG",
        "SLSQP",
        "trust-constr",
        pytest.param("TNC"),
    ],
)
def test_scipy_iteration_limit_is_respected_and_reported(fw: Framework, method: str) -> None:
    """κ = 1000, d = 30 needs tens of iterations for every method; maxiter = 2 must stop early
    and report failure, with at most 2 iterations."""
    d = 30
    q = _orthogonal(d, 12)
    a = q @ np.diag(np.logspace(0, 3, d)) @ q.T
    c = randn(rng(13), d)
    obj = InnerObjective(_vector_quadratic, None, fw.tree({"a": a, "c": c}), backend(fw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SciPy's own chatter is not under test here
        _, info = solvers.Scipy(method, maxiter=2).solve(fw.array(np.zeros(d)), obj)
    assert info.iterations <= 2
    assert not info.success


# ---------------------------------------------------- the dataclass contract of the solvers
# These tests inspect the solver objects only (fields, repr, frozenness); no array of any
# framework is involved, so they run once rather than per framework.


def _transform() -> SimpleNamespace:
    return SimpleNamespace(init=lambda p: (), update=lambda g, s, p=None: (g, s))


def _rule(w: Tree, m: Tree, t: Tree) -> Tree:
    return w


SOLVER_FIELDS = [
    (
        solvers.GradientDescent(lr=0.125, steps=3, momentum=0.5),
        {"lr": 0.125, "steps": 3, "momentum": 0.5},
    ),
    (solvers.Optimizer(_transform(), steps=4), {"steps": 4}),
    (solvers.UpdateRule(_rule, steps=6), {"steps": 6}),
    (solvers.Scipy("BFGS", tol=1e-9, maxiter=77), {"method": "BFGS", "tol": 1e-9, "maxiter": 77}),
    (solvers.CG(maxiter=7, tol=1e-3, atol=0.5), {"maxiter": 7, "tol": 1e-3, "atol": 0.5}),
    (solvers.Neumann(maxiter=9, alpha=0.25, tol=1e-4), {"maxiter": 9, "alpha": 0.25, "tol": 1e-4}),
    (solvers.MINRES(maxiter=11, tol=1e-5), {"maxiter": 11, "tol": 1e-5}),
    (solvers.GMRES(maxiter=12, tol=1e-6, restart=5), {"maxiter": 12, "tol": 1e-6, "restart": 5}),
    (solvers.Direct(max_size=100, tol=1e-7), {"max_size": 100, "tol": 1e-7}),
]


@pytest.mark.parametrize(
    ("solver", "fields"), SOLVER_FIELDS, ids=lambda v: _name(v) if not isinstance(v, dict) else ""
)
def test_solvers_are_frozen_dataclasses(solver: Any, fields: dict[str, Any]) -> None:
    assert dataclasses.is_dataclass(solver)
    for name in (f.name for f in dataclasses.fields(solver)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(solver, name, getattr(solver, name))
    for name, value in fields.items():
        assert getattr(solver, name) == value


@pytest.mark.parametrize(
    ("solver", "fields"), SOLVER_FIELDS, ids=lambda v: _name(v) if not isinstance(v, dict) else ""
)
def test_solver_repr_shows_hyperparameters(solver: Any, fields: dict[str, Any]) -> None:
    text = repr(solver)
    assert text.startswith(type(solver).__name__ + "(")
    for name, value in fields.items():
        assert f"{name}={value!r}" in text, (name, text)


@pytest.mark.parametrize(
    "solver",
    [s for s, _ in SOLVER_FIELDS if not isinstance(s, solvers.Optimizer | solvers.UpdateRule)],
    ids=_name,
)
def test_solver_repr_round_trips(solver: Any) -> None:
    """A repr is a loggable config: evaluating it rebuilds an equal solver."""
    namespace = {type(solver).__name__: type(solver)}
    assert eval(repr(solver), namespace) == solver  # our own repr
