"""Unit tests of the solvers against numbers: linear solvers against ``torch.linalg.solve`` and
Krylov theory, inner solvers against closed-form iterates, and their dataclass contract.

All systems are built in float64 from seeded generators. Recurring tolerance arguments:

- *forward error*: for ``A x = b`` with relative residual ``ρ = ‖b − A x̂‖/‖b‖``,
  ``‖x̂ − x‖/‖x‖ ≤ κ(A)·ρ``; so a solver run to residual ``tol`` is checked against
  ``torch.linalg.solve`` with ``κ·tol`` (plus a rounding floor).
- *rounding floor*: a direct float64 solve of a system with condition κ is accurate to about
  ``κ·d·u`` with ``u ≈ 1.1e-16``, i.e. ≲ 1e-12 for the κ ≤ 100, d ≤ 40 systems used here.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from types import SimpleNamespace

import pytest
import torch

import solvers
from bilevel import FirstOrder, Problem, Unrolled, hypergrad
from bilevel.backends import TorchBackend
from bilevel.protocols import InnerObjective, LinearOperator

DTYPE = torch.float64
B = TorchBackend()
FLOOR = 1e-12  # rounding floor of a float64 solve, κ·d·u ≲ 100·40·1.1e-16 ≈ 4e-13, rounded up


# ----------------------------------------------------------------------------- fixtures


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DTYPE))
    return q


def _spd(d: int, kappa: float, seed: int) -> torch.Tensor:
    """Q diag(λ) Qᵀ with λ log-spaced in [1, κ]: condition number exactly κ."""
    q = _orthogonal(d, _gen(seed))
    lam = torch.logspace(0, math.log10(kappa), d, dtype=DTYPE)
    return q @ torch.diag(lam) @ q.T


def _indefinite(d: int, seed: int) -> torch.Tensor:
    """Symmetric with eigenvalues ±[1, 10] alternating: well-conditioned (κ = 10) but indefinite."""
    q = _orthogonal(d, _gen(seed))
    lam = torch.linspace(1, 10, d, dtype=DTYPE)
    lam[::2] *= -1
    return q @ torch.diag(lam) @ q.T


def _contractive(d: int, seed: int, norm: float = 0.5) -> torch.Tensor:
    """Non-symmetric ``A = I − M`` with ``‖M‖₂ = norm < 1``: the Neumann series in M converges
    as ``norm^k`` and ``κ(A) ≤ (1 + norm)/(1 − norm) = 3``."""
    m = torch.randn(d, d, generator=_gen(seed), dtype=DTYPE)
    m = m * (norm / torch.linalg.matrix_norm(m, ord=2))
    return torch.eye(d, dtype=DTYPE) - m


def _rhs(d: int, seed: int) -> torch.Tensor:
    return torch.randn(d, generator=_gen(seed + 1000), dtype=DTYPE)


def _op(a: torch.Tensor, symmetric: bool = True) -> LinearOperator:
    return LinearOperator(lambda v: a @ v, symmetric)


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.linalg.norm(x - y) / torch.linalg.norm(y))


def _true_residual(a: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(b - a @ x) / torch.linalg.norm(b))


KAPPA = 100.0
D = 40
LAMBDA_MAX = KAPPA  # of _spd(…, KAPPA, …)


def _solvers_for_spd() -> list:
    # Neumann: α = 1/λ_max gives the contraction I − αA with spectral radius 1 − 1/κ, so
    # reaching 1e-10 takes ln(1e10)·κ ≈ 2300 terms; maxiter leaves ×4 room.
    return [
        solvers.CG(maxiter=500, tol=1e-10),
        solvers.MINRES(maxiter=500, tol=1e-10),
        solvers.GMRES(tol=1e-10),
        solvers.Neumann(maxiter=10_000, alpha=1 / LAMBDA_MAX, tol=1e-10),
        solvers.Direct(),
    ]


def _residual_bound(solver, kappa: float, iterations: int) -> float:
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


def _name(solver) -> str:
    return type(solver).__name__


# ---------------------------------------------------------------- linear solvers: accuracy


@pytest.mark.parametrize("solver", _solvers_for_spd(), ids=_name)
def test_spd_system_matches_dense_solve(solver) -> None:
    a, b = _spd(D, KAPPA, seed=0), _rhs(D, seed=0)
    x, info = solver.solve(_op(a), b, backend=B)
    assert info.converged
    assert not info.negative_curvature
    bound = _residual_bound(solver, KAPPA, info.iterations)
    assert info.residual <= bound
    # forward error ≤ κ · relative residual (plus the dense solve's own rounding)
    assert _rel(x, torch.linalg.solve(a, b)) <= KAPPA * bound + FLOOR


@pytest.mark.parametrize(
    "solver",
    [
        solvers.GMRES(tol=1e-12),
        solvers.Neumann(maxiter=200, alpha=1.0, tol=1e-12),
        solvers.Direct(),
    ],
    ids=_name,
)
def test_nonsymmetric_contractive_system_matches_dense_solve(solver) -> None:
    a, b = _contractive(D, seed=1), _rhs(D, seed=1)
    assert not torch.allclose(a, a.T)  # really non-symmetric
    x, info = solver.solve(_op(a, symmetric=False), b, backend=B)
    assert info.converged
    # κ(A) ≤ 3 (see _contractive); tol = 1e-12 → forward error ≤ 3e-12 + floor
    assert _rel(x, torch.linalg.solve(a, b)) <= 3 * 1e-12 + FLOOR
    if isinstance(solver, solvers.Neumann):
        # α = 1: residual_k = M^k b, ‖M‖ = 1/2 → ≤ ⌈log2(1e12)⌉ = 40 terms
        assert info.iterations <= 40


@pytest.mark.parametrize("solver", [solvers.CG(), solvers.MINRES()], ids=_name)
def test_symmetric_only_solvers_refuse_a_nonsymmetric_operator(solver) -> None:
    a, b = _contractive(5, seed=2), _rhs(5, seed=2)
    with pytest.raises(ValueError, match="symmetric"):
        solver.solve(_op(a, symmetric=False), b, backend=B)


def _pytree_system(seed: int, kind: str):
    """An operator on the pytree {"u": 3×4, "w": 5} (17 unknowns) given by a dense matrix on the
    flattened vector, with the leaves flattened in a fixed order (u then w)."""
    d = 17
    a = _spd(d, 10.0, seed) if kind == "spd" else _contractive(d, seed)

    def flat(t):
        return torch.cat([t["u"].reshape(-1), t["w"]])

    def unflat(v):
        return {"u": v[:12].reshape(3, 4), "w": v[12:]}

    b = {
        "u": torch.randn(3, 4, generator=_gen(seed), dtype=DTYPE),
        "w": torch.randn(5, generator=_gen(seed + 1), dtype=DTYPE),
    }
    op = LinearOperator(lambda t: unflat(a @ flat(t)), kind == "spd")
    return op, b, torch.linalg.solve(a, flat(b)), flat, a


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
def test_pytree_right_hand_side(solver, kind: str) -> None:
    op, b, x_star, flat, a = _pytree_system(seed=3, kind=kind)
    x, info = solver.solve(op, b, backend=B)
    assert set(x) == {"u", "w"}
    assert x["u"].shape == (3, 4) and x["w"].shape == (5,)
    assert x["u"].dtype == DTYPE and x["w"].dtype == DTYPE
    assert info.converged
    # κ = 10: forward error ≤ κ · (residual bound of _residual_bound, MINRES's the loosest)
    assert _rel(flat(x), x_star) <= 10 * _residual_bound(solver, 10.0, info.iterations) + FLOOR
    assert info.residual == pytest.approx(_true_residual(a, flat(x), flat(b)), rel=1e-6, abs=1e-15)


ALL_SOLVERS = [solvers.CG(), solvers.Neumann(), solvers.MINRES(), solvers.GMRES(), solvers.Direct()]


@pytest.mark.parametrize("solver", ALL_SOLVERS, ids=_name)
def test_zero_rhs_returns_zero_converged(solver) -> None:
    op, b, *_ = _pytree_system(seed=4, kind="spd")
    zero = {k: torch.zeros_like(v) for k, v in b.items()}
    x, info = solver.solve(op, zero, backend=B)
    assert all(bool((v == 0).all()) for v in x.values())
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
def test_reported_residual_is_the_true_residual(solver, converged: bool) -> None:
    a, b = _spd(D, KAPPA, seed=5), _rhs(D, seed=5)
    x, info = solver.solve(_op(a), b, backend=B)
    true = _true_residual(a, x, b)
    # Same quantity, two summation orders: agreement to ~1e-15 relative; 1e-9 relative covers it,
    # abs 1e-15 covers residuals that are themselves at the rounding floor (Direct, CG-full).
    assert info.residual == pytest.approx(true, rel=1e-9, abs=1e-15)
    assert info.converged == converged
    if not converged:
        # ≤ 50 Krylov/Neumann steps on κ = 100 stay far above tol = 1e-10
        assert info.residual > 1e-4


def test_minres_converged_means_relative_residual_below_tol() -> None:
    a, b = _spd(50, 100.0, seed=0), torch.randn(50, generator=_gen(0), dtype=DTYPE)
    tol = 1e-6
    _, info = solvers.MINRES(maxiter=2000, tol=tol).solve(_op(a), b, backend=B)
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
def test_converged_means_relative_residual_below_tol(solver) -> None:
    """The counterpart of the MINRES test above for the solvers that are honest about it."""
    a, b = _spd(50, 100.0, seed=0), torch.randn(50, generator=_gen(0), dtype=DTYPE)
    _, info = solver.solve(_op(a), b, backend=B)
    assert info.converged
    assert info.residual <= 1.1 * solver.tol  # 1.1: see the MINRES test


# ------------------------------------------------------------------ CG: iteration counts


@pytest.mark.parametrize(("d", "kappa"), [(1, 1.0), (2, 10.0), (3, 100.0), (5, 100.0), (8, 10.0)])
def test_cg_terminates_within_d_iterations(d: int, kappa: float) -> None:
    """Finite termination: in exact arithmetic CG solves a d-dimensional system in ≤ d steps.
    The Chebyshev bound ½√κ·ln(2/tol) would allow ~37 (κ=10) or ~119 (κ=100) iterations, so
    the cases here really test termination, not fast convergence. (Larger d with large κ take a
    few extra steps in floating point through loss of orthogonality: not tested as exact.)"""
    a, b = _spd(d, kappa, seed=d), _rhs(d, seed=d)
    x, info = solvers.CG(maxiter=10 * d, tol=1e-10).solve(_op(a), b, backend=B)
    assert info.converged
    assert 1 <= info.iterations <= d
    assert info.residual <= 1e-10 + FLOOR
    assert _rel(x, torch.linalg.solve(a, b)) <= kappa * 1e-10 + FLOOR


@pytest.mark.parametrize("m", [1, 2, 3])
def test_cg_needs_one_iteration_per_distinct_eigenvalue(m: int) -> None:
    """d = 200 but only m distinct eigenvalues: the Krylov space has dimension m, so CG is exact
    after m steps."""
    d = 200
    lam = torch.tensor([1.0, 3.0, 10.0], dtype=DTYPE)[:m].repeat(d)[:d]
    q = _orthogonal(d, _gen(7))
    a = q @ torch.diag(lam) @ q.T
    b = _rhs(d, seed=7)
    x, info = solvers.CG(tol=1e-10).solve(_op(a), b, backend=B)
    assert info.converged
    assert info.iterations == m
    assert _rel(x, torch.linalg.solve(a, b)) <= 10 * 1e-10 + FLOOR  # κ ≤ 10


def _iterations_to_1e6(solver_for_kappa, kappa: float) -> int:
    """Iterations to relative residual 1e-6 on diag(linspace(1, κ, 1000)) x = 1."""
    lam = torch.linspace(1, kappa, 1000, dtype=DTYPE)
    b = torch.ones(1000, dtype=DTYPE)
    _, info = solver_for_kappa(kappa).solve(LinearOperator(lambda v: lam * v, True), b, backend=B)
    assert info.converged
    assert info.residual <= 1e-6 + FLOOR
    return info.iterations


def test_cg_iterations_grow_like_sqrt_kappa_and_neumann_like_kappa() -> None:
    """Theory. CG: ‖e_k‖_A ≤ 2((√κ−1)/(√κ+1))^k ‖e_0‖_A, so k ≈ ½√κ·ln(2/ε): ×10 from κ=10 to
    κ=1000. Neumann/Richardson with α = 1/λ_max: r_k = (I − αA)^k b, spectral radius 1 − 1/κ,
    so k ≈ κ·ln(1/ε): ×100. (Measured: CG 22 → 148, ×6.7 since the bound is pessimistic for
    a uniform spectrum; Neumann 107 → 10357, ×97.) The asserted windows are loose around these:
    CG's growth must be clearly sub-linear (< 15, against 100 for linear growth) yet real
    (> 3); Neumann's clearly super-√κ (> 50)."""
    cg = {
        k: _iterations_to_1e6(lambda _: solvers.CG(maxiter=5000, tol=1e-6), k) for k in (10, 1000)
    }
    neumann = {
        k: _iterations_to_1e6(
            lambda kap: solvers.Neumann(maxiter=100_000, alpha=1 / kap, tol=1e-6), k
        )
        for k in (10, 100, 1000)
    }
    assert 3 < cg[1000] / cg[10] < 15
    assert neumann[1000] / neumann[10] > 50
    assert 5 < neumann[100] / neumann[10] < 20  # ×10 per decade of κ, measured 9.7
    assert cg[1000] < neumann[100]  # CG on κ=1000 beats Neumann on κ=100 (148 vs 1038)


# ------------------------------------------------ Neumann divergence, indefinite systems


@pytest.mark.parametrize("maxiter", [100, 5000])
def test_neumann_divergence_is_reported_not_raised(maxiter: int) -> None:
    """α = 0.3 on eigenvalues up to 10: |1 − 0.3·10| = 2 > 1, the series diverges. maxiter=100
    ends with a huge finite residual; maxiter=5000 overflows to inf mid-way."""
    lam = torch.linspace(1, 10, 5, dtype=DTYPE)
    op = LinearOperator(lambda v: lam * v, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from overflow either
        _, info = solvers.Neumann(maxiter=maxiter, alpha=0.3).solve(
            op, torch.ones(5, dtype=DTYPE), backend=B
        )
    assert not info.converged
    assert not (info.residual <= 1.0)  # grew (or is nan/inf): never reported as small


def test_minres_solves_an_indefinite_system() -> None:
    a, b = _indefinite(D, seed=8), _rhs(D, seed=8)
    assert float(torch.linalg.eigvalsh(a)[0]) < 0
    x, info = solvers.MINRES(maxiter=500, tol=1e-10).solve(_op(a), b, backend=B)
    assert info.converged
    kappa = 10.0
    bound = _residual_bound(solvers.MINRES(tol=1e-10), kappa, info.iterations)
    assert info.residual <= bound
    assert _rel(x, torch.linalg.solve(a, b)) <= kappa * bound + FLOOR


def test_direct_reports_negative_curvature_only_for_an_indefinite_matrix() -> None:
    b = _rhs(D, seed=9)
    ind, spd = _indefinite(D, seed=9), _spd(D, KAPPA, seed=9)
    x, info = solvers.Direct().solve(_op(ind), b, backend=B)
    assert info.negative_curvature
    assert info.converged  # the dense solve is still exact for a non-singular matrix
    assert _rel(x, torch.linalg.solve(ind, b)) <= FLOOR
    _, info_spd = solvers.Direct().solve(_op(spd), b, backend=B)
    assert not info_spd.negative_curvature


def test_cg_stops_on_negative_curvature() -> None:
    """b along an eigenvector with eigenvalue −1: the first direction has pᵀAp = −‖b‖² < 0."""
    d = 6
    q = _orthogonal(d, _gen(10))
    lam = torch.tensor([-1.0, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=DTYPE)
    a = q @ torch.diag(lam) @ q.T
    _, info = solvers.CG().solve(_op(a), q[:, 0].clone(), backend=B)
    assert info.negative_curvature
    assert not info.converged
    assert info.iterations == 1


# ------------------------------------------------------------ inner solvers on a quadratic


def _quadratic(seed: int = 11):
    """f(φ) = ½ vᵀAv − cᵀv for v = flat(φ), φ = {"u": 2×2, "w": 2}; A SPD with λ ∈ [1, 10]."""
    d = 6
    q = _orthogonal(d, _gen(seed))
    lam = torch.linspace(1, 10, d, dtype=DTYPE)
    a = q @ torch.diag(lam) @ q.T
    c = torch.randn(d, generator=_gen(seed + 1), dtype=DTYPE)

    def flat(p):
        return torch.cat([p["u"].reshape(-1), p["w"]])

    def unflat(v):
        return {"u": v[:4].reshape(2, 2), "w": v[4:]}

    def loss(p, meta, task):
        v = flat(p)
        return 0.5 * v @ (a @ v) - c @ v

    phi0 = unflat(torch.randn(d, generator=_gen(seed + 2), dtype=DTYPE))
    return SimpleNamespace(
        a=a,
        c=c,
        lam=lam,
        flat=flat,
        unflat=unflat,
        loss=loss,
        phi0=phi0,
        x_star=torch.linalg.solve(a, c),
    )


def _run(solver, phi0, loss, meta=None, task=None, steps=None):
    """Drive an iterative solver by its protocol; return every iterate φ_0 … φ_K."""
    obj = InnerObjective(loss, meta, task, B)
    state = solver.init(phi0, obj)
    out = [solver.params(state)]
    for _ in range(solver.steps if steps is None else steps):
        state = solver.step(state, obj)
        out.append(solver.params(state))
    return out


@pytest.mark.parametrize("lr", [0.05, 0.15])
def test_gradient_descent_iterates_match_the_closed_form(lr: float) -> None:
    """φ_K = φ* + (I − αA)^K (φ_0 − φ*) exactly, for every K; rounding adds ~u per step to a
    contracting recursion, so 1e-12 relative (after 60 steps) is ~100× the expected error."""
    qd = _quadratic()
    k = 60
    iterates = _run(solvers.GradientDescent(lr=lr, steps=k), qd.phi0, qd.loss)
    e0 = qd.flat(qd.phi0) - qd.x_star
    m = torch.eye(6, dtype=DTYPE) - lr * qd.a
    for t in (0, 1, 7, k):
        want = qd.x_star + torch.linalg.matrix_power(m, t) @ e0
        assert float(torch.linalg.norm(qd.flat(iterates[t]) - want)) <= 1e-12 * float(
            torch.linalg.norm(want)
        )


def test_gradient_descent_converges_at_the_predicted_linear_rate() -> None:
    """Rate ρ = max|1 − αλ_i|. Bound ‖e_K‖ ≤ ρ^K ‖e_0‖ (+ rounding 1e-14), and since e_0 has a
    component along the slowest eigenvector, ‖e_{K+1}‖/‖e_K‖ → ρ: with λ = 1, 2.8, …, 10 and
    α = 0.1 the factors are |1 − αλ| = 0.9, 0.72, …, so after 40 steps the next slowest mode
    has faded relative to the slowest by 0.8^40 ≈ 1e-4 and the ratio is within 1% of ρ."""
    qd = _quadratic()
    lr = 0.1
    rho = float((1 - lr * qd.lam).abs().max())  # = 0.9 (λ_min = 1 dominates)
    iterates = _run(solvers.GradientDescent(lr=lr, steps=80), qd.phi0, qd.loss)
    errs = [float(torch.linalg.norm(qd.flat(p) - qd.x_star)) for p in iterates]
    for t, e in enumerate(errs):
        assert e <= rho**t * errs[0] * (1 + 1e-12) + 1e-14
    assert errs[41] / errs[40] == pytest.approx(rho, rel=1e-2)
    assert errs[80] <= 1e-3 * errs[0]  # 0.9^80 ≈ 2e-4: it really converges


def test_gradient_descent_with_momentum_matches_polyak_heavy_ball() -> None:
    """Polyak's form φ_{t+1} = φ_t − α∇f(φ_t) + μ(φ_t − φ_{t−1}), φ_{−1} = φ_0, is the same
    iteration as v ← μv + ∇f, φ ← φ − αv written differently: the iterates agree to rounding
    (1e-12 relative, as for plain GD)."""
    qd = _quadratic()
    lr, mu, k = 0.05, 0.8, 60
    iterates = _run(solvers.GradientDescent(lr=lr, steps=k, momentum=mu), qd.phi0, qd.loss)
    prev = cur = qd.flat(qd.phi0)
    for t in range(1, k + 1):
        grad = qd.a @ cur - qd.c
        prev, cur = cur, cur - lr * grad + mu * (cur - prev)
        got = qd.flat(iterates[t])
        assert float(torch.linalg.norm(got - cur)) <= 1e-12 * float(torch.linalg.norm(cur)), t
    # Heavy ball converges: for every eigenvalue λ ∈ [1, 10] the roots of
    # z² − (1 + μ − αλ)z + μ are complex ((1 + μ − αλ)² < 4μ), so every mode contracts at
    # |z| = √μ ≈ 0.894 per step: 0.894^60 ≈ 1.2e-3 ≤ 1e-2.
    assert float(torch.linalg.norm(qd.flat(iterates[-1]) - qd.x_star)) <= 1e-2 * float(
        torch.linalg.norm(qd.flat(qd.phi0) - qd.x_star)
    )
    # and momentum changes the iterates (it is not silently ignored)
    plain = _run(solvers.GradientDescent(lr=lr, steps=2), qd.phi0, qd.loss)
    assert float(torch.linalg.norm(qd.flat(plain[2]) - qd.flat(iterates[2]))) > 1e-3


def test_gradient_descent_through_hypergrad_gives_the_closed_form_iterate() -> None:
    """The public path: hypergrad(...).params is φ_K of the solver (here with FirstOrder)."""
    qd = _quadratic()
    lr, k = 0.1, 9
    problem = Problem(
        init=lambda meta, task: meta,
        inner_loss=qd.loss,
        outer_loss=lambda p, meta, task: (qd.flat(p) ** 2).sum(),
    )
    res = hypergrad(
        problem, solvers.GradientDescent(lr=lr, steps=k), qd.phi0, None, strategy=FirstOrder()
    )
    e0 = qd.flat(qd.phi0) - qd.x_star
    want = qd.x_star + torch.linalg.matrix_power(torch.eye(6, dtype=DTYPE) - lr * qd.a, k) @ e0
    assert _rel(qd.flat(res.params), want) <= 1e-12  # rounding, as above


@pytest.mark.parametrize("steps", [0, 1, 7])
def test_update_rule_is_applied_exactly_t_times(steps: int) -> None:
    """Rule Δw = −m·w + c: w_T = (1−m)^T (w_0 − c/m) + c/m. The Unrolled derivative of
    F = Σ w_T in m is Σ[−T(1−m)^{T−1}(w_0 − c/m) + ((1−m)^T − 1)·c/m²]; both hold to rounding
    (1e-12 relative) only if the rule runs exactly T times in the differentiated loop."""
    m = torch.tensor(0.3, dtype=DTYPE)
    task = {
        "w0": torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE),
        "c": torch.tensor([0.2, 0.1, -0.4], dtype=DTYPE),
    }
    problem = Problem(
        init=lambda meta, t: t["w0"],
        outer_loss=lambda w, meta, t: w.sum(),
    )
    rule = solvers.UpdateRule(lambda w, meta, t: -meta * w + t["c"], steps=steps)
    res = hypergrad(problem, rule, m, task, strategy=Unrolled())
    w0, c, mm = task["w0"], task["c"], float(m)
    want = (1 - mm) ** steps * (w0 - c / mm) + c / mm
    torch.testing.assert_close(res.params, want, rtol=1e-12, atol=1e-14)
    dwant = (
        -steps * (1 - mm) ** max(steps - 1, 0) * (w0 - c / mm) + ((1 - mm) ** steps - 1) * c / mm**2
    ).sum()
    assert float(res.grad) == pytest.approx(float(dwant), rel=1e-12, abs=1e-14)


# ----------------------------------------------------------------------------- Scipy


# BFGS and Newton-CG are left out: with the default tol = 1e-12 they stop on SciPy's "Desired
# error not necessarily achieved due to precision loss" (success False) although x is accurate.
@pytest.mark.parametrize("method", ["L-BFGS-B", "CG", "SLSQP", "trust-constr"])
def test_scipy_minimises_a_quadratic(method: str) -> None:
    """The value gap f(x) − f* ≤ 1e-8·max(1, |f*|). With tol = 1e-12 SciPy stops once the
    relative reduction of f (or the gradient) is ~1e-12; on a κ = 10 quadratic the remaining gap
    is a small multiple of that, so 1e-8 is ~1e3-1e4× generous (measured ≤ 1e-15)."""
    qd = _quadratic()
    obj = InnerObjective(qd.loss, None, None, B)
    start = {"u": torch.zeros(2, 2, dtype=DTYPE), "w": torch.zeros(2, dtype=DTYPE)}
    x, info = solvers.Scipy(method).solve(start, obj)
    assert set(x) == {"u", "w"} and x["u"].shape == (2, 2) and x["u"].dtype == DTYPE
    f_star = float(qd.loss(qd.unflat(qd.x_star), None, None))
    gap = float(qd.loss(x, None, None)) - f_star
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
def test_scipy_iteration_limit_is_respected_and_reported(method: str) -> None:
    """κ = 1000, d = 30 needs tens of iterations for every method; maxiter = 2 must stop early
    and report failure, with at most 2 iterations."""
    d = 30
    q = _orthogonal(d, _gen(12))
    a = q @ torch.diag(torch.logspace(0, 3, d, dtype=DTYPE)) @ q.T
    c = torch.randn(d, generator=_gen(13), dtype=DTYPE)
    obj = InnerObjective(lambda p, m, t: 0.5 * p @ (a @ p) - c @ p, None, None, B)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SciPy's own chatter is not under test here
        _, info = solvers.Scipy(method, maxiter=2).solve(torch.zeros(d, dtype=DTYPE), obj)
    assert info.iterations <= 2
    assert not info.success


# ---------------------------------------------------- the dataclass contract of the solvers


def _transform():
    return SimpleNamespace(init=lambda p: (), update=lambda g, s, p=None: (g, s))


def _rule(w, m, t):
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
def test_solvers_are_frozen_dataclasses(solver, fields: dict) -> None:
    assert dataclasses.is_dataclass(solver)
    for name in (f.name for f in dataclasses.fields(solver)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(solver, name, getattr(solver, name))
    for name, value in fields.items():
        assert getattr(solver, name) == value


@pytest.mark.parametrize(
    ("solver", "fields"), SOLVER_FIELDS, ids=lambda v: _name(v) if not isinstance(v, dict) else ""
)
def test_solver_repr_shows_hyperparameters(solver, fields: dict) -> None:
    text = repr(solver)
    assert text.startswith(type(solver).__name__ + "(")
    for name, value in fields.items():
        assert f"{name}={value!r}" in text, (name, text)


@pytest.mark.parametrize(
    "solver",
    [s for s, _ in SOLVER_FIELDS if not isinstance(s, solvers.Optimizer | solvers.UpdateRule)],
    ids=_name,
)
def test_solver_repr_round_trips(solver) -> None:
    """A repr is a loggable config: evaluating it rebuilds an equal solver."""
    namespace = {type(solver).__name__: type(solver)}
    assert eval(repr(solver), namespace) == solver  # our own repr
