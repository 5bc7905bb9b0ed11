"""Hypergradients against closed forms, on torch and on JAX.

(i)   a quadratic bilevel problem: φ*(θ) = A⁻¹(Bθ + c) gives the implicit hypergradient, and
      K steps of gradient descent give an affine map φ_K(θ) (matrix powers of I − αA), so the
      Unrolled / Truncated / FirstOrder / ForwardMode hypergradients are closed forms too;
(ii)  ridge regression with one regulariser per feature, on synthetic data and on sklearn's
      diabetes data: w* = (XᵀX/n + diag(e^θ))⁻¹Xᵀy/n;
(iii) linear-regression iMAML: dφ*/dθ = λ(H + λI)⁻¹, meta-gradient λ(H + λI)⁻¹∇L_test(φ*);
(iv)  conjugate gradients that converge at their first iteration, and CG's iterates against
      the Galerkin projections onto the Krylov spaces (the "CG stops one step early" bug class).

Every test body runs once per framework (the ``fw`` fixture, ``tests/_frameworks.py``): the data
are drawn in NumPy, the problem functions are written once (array functions from ``xp``), and
the closed forms are computed in NumPy float64, independently of the framework under test.
All arithmetic is float64 (unit roundoff u ≈ 1.1e-16). Each tolerance names its source.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from typing import Any

import numpy as np
import pytest
from _frameworks import Framework, assert_close64, numpy, rel_err, xp
from _generators import rand, randn, rng, spd, spd_with
from hypothesis import given, settings
from hypothesis import strategies as st

from bilevel import (
    BilevelWarning,
    FirstOrder,
    ForwardMode,
    Implicit,
    LinearSolveWarning,
    Problem,
    Strategy,
    Truncated,
    Unrolled,
    hypergrad,
    solvers,
)
from bilevel.backends import backend_for
from bilevel.protocols import LinearOperator, LinearSolver

# Any bilevel warning means "this hypergradient may be inaccurate": it fails a test that expects
# an exact answer. Tests that expect a warning assert it with pytest.warns.
pytestmark = pytest.mark.filterwarnings("error::bilevel.BilevelWarning")

Array = np.ndarray[Any, Any]
Task = dict[str, Array]
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _gd_for(h: Array, target: float = 1e-16) -> solvers.GradientDescent:
    """GD with the optimal step 2/(μ+L) for a quadratic with Hessian ``h``, run until the error
    contracts by ``target`` (rate (κ−1)/(κ+1))."""
    ev = np.linalg.eigvalsh(h)
    lo, hi = float(ev[0]), float(ev[-1])
    rate = (hi - lo) / (hi + lo)
    steps = 1 if rate < 1e-15 else math.ceil(math.log(target) / math.log(rate))
    return solvers.GradientDescent(lr=2 / (lo + hi), steps=steps)


# ================================================================ (i) quadratic bilevel problem
# f(φ, θ) = ½φᵀAφ − φᵀ(Bθ + c),  F(φ, θ) = ½‖Cφ − d‖² + E‖θ‖²,  φ₀ = Pθ.
E = 0.25
QUADRATIC = Problem(
    init=lambda th, t: t["P"] @ th,
    inner_loss=lambda phi, th, t: 0.5 * phi @ (t["A"] @ phi) - phi @ (t["B"] @ th + t["c"]),
    outer_loss=lambda phi, th, t: 0.5 * ((t["C"] @ phi - t["d"]) ** 2).sum() + E * (th @ th),
)


def quadratic(seed: int, n: int, m: int, lo: float = 1.0, hi: float = 3.0) -> tuple[Array, Task]:
    g = rng(seed)
    task = {
        "A": spd(g, n, lo, hi),
        "B": randn(g, n, m),
        "c": randn(g, n),
        "C": randn(g, 3, n),
        "d": randn(g, 3),
        "P": randn(g, n, m),
    }
    return randn(g, m), task


def implicit_closed_form(theta: Array, t: Task) -> Array:
    """dF(φ*(θ), θ)/dθ = Bᵀ A⁻¹ Cᵀ(Cφ* − d) + 2Eθ with φ* = A⁻¹(Bθ + c)."""
    phi = np.linalg.solve(t["A"], t["B"] @ theta + t["c"])
    gphi = t["C"].T @ (t["C"] @ phi - t["d"])
    return t["B"].T @ np.linalg.solve(t["A"], gphi) + 2 * E * theta


QUAD_LINEAR: dict[str, LinearSolver] = {
    "cg": solvers.CG(maxiter=100, tol=1e-13),
    "direct": solvers.Direct(),
    "minres": solvers.MINRES(maxiter=100, tol=1e-13),
}


@pytest.mark.parametrize("linear", list(QUAD_LINEAR))
@given(seed=seeds, n=st.integers(1, 8), m=st.integers(1, 4))
def test_quadratic_implicit_matches_closed_form(
    fw: Framework, linear: str, seed: int, n: int, m: int
) -> None:
    theta, task = quadratic(seed, n, m)
    solver = _gd_for(task["A"])  # φ_K within 1e-16·‖φ₀ − φ*‖ of φ*
    res = hypergrad(
        QUADRATIC, solver, fw.array(theta), fw.tree(task), strategy=Implicit(QUAD_LINEAR[linear])
    )
    # Left: φ_K ≈ φ* to ~u, the solve to ~1e-13·κ(A) (κ ≤ 3), each through O(1) matrices;
    # float64 roundoff × condition number ≈ 1e-14: 1e-10 relative has four orders of margin.
    assert_close64(res.grad, implicit_closed_form(theta, task), rtol=1e-10, atol=1e-12)
    assert res.info.linear is not None and res.info.linear.converged


def k_step_closed_forms(theta: Array, t: Task, lr: float, k: int, trunc: int) -> dict[str, Array]:
    r"""φ_{t+1} = Mφ_t + α(Bθ + c), M = I − αA, so φ_K = MᴷPθ + S_K α(Bθ + c), S_j = Σ_{i<j} Mⁱ.

    Hypergradients, with ∇_φF = Cᵀ(Cφ_K − d):
      Unrolled / ForwardMode: (MᴷP + αS_K B)ᵀ∇_φF + 2Eθ
      Truncated(T < K):       (αS_T B)ᵀ∇_φF + 2Eθ   (φ_{K−T} constant: only the last T steps)
      FirstOrder:             Pᵀ∇_φF + 2Eθ
    """
    n = t["A"].shape[0]
    mat = np.eye(n) - lr * t["A"]
    powers = [np.linalg.matrix_power(mat, i) for i in range(k + 1)]
    s_k = sum(powers[:k], np.zeros((n, n)))
    s_t = sum(powers[: min(trunc, k)], np.zeros((n, n)))
    phi = powers[k] @ t["P"] @ theta + lr * s_k @ (t["B"] @ theta + t["c"])
    gphi = t["C"].T @ (t["C"] @ phi - t["d"])
    return {
        "params": phi,
        "value": 0.5 * ((t["C"] @ phi - t["d"]) ** 2).sum() + E * (theta @ theta),
        "unrolled": (powers[k] @ t["P"] + lr * s_k @ t["B"]).T @ gphi + 2 * E * theta,
        "truncated": (
            (lr * s_t @ t["B"]).T @ gphi
            if trunc < k
            else (powers[k] @ t["P"] + lr * s_k @ t["B"]).T @ gphi
        )
        + 2 * E * theta,
        "first_order": t["P"].T @ gphi + 2 * E * theta,
    }


@given(
    seed=seeds,
    n=st.integers(1, 6),
    m=st.integers(1, 3),
    steps=st.integers(0, 8),
    trunc=st.integers(1, 10),
    lr_scale=st.floats(0.05, 1.9),
)
def test_quadratic_k_step_closed_forms(
    fw: Framework, seed: int, n: int, m: int, steps: int, trunc: int, lr_scale: float
) -> None:
    theta, task = quadratic(seed, n, m)
    lr = lr_scale / 3.0  # λ_max(A) = 3: α·λ_max < 2, a stable (possibly oscillating) iteration
    solver = solvers.GradientDescent(lr=lr, steps=steps)
    want = k_step_closed_forms(theta, task, lr, steps, trunc)
    # Up to 8 products with ‖M‖ < 1 and O(1) data: float64 roundoff ~1e-15 relative;
    # 1e-10 relative (with 1e-12 absolute for near-zero entries) is a wide but exact-level bound.
    tol = {"rtol": 1e-10, "atol": 1e-12}
    cases: list[tuple[Strategy, str]] = [
        (Unrolled(), "unrolled"),
        (ForwardMode(), "unrolled"),
        (Truncated(trunc), "truncated"),
        (FirstOrder(), "first_order"),
    ]
    for strategy, key in cases:
        res = hypergrad(QUADRATIC, solver, fw.array(theta), fw.tree(task), strategy=strategy)
        assert_close64(res.grad, want[key], **tol, what=f"{strategy}: grad")
        assert_close64(res.params, want["params"], **tol, what=f"{strategy}: params")
        assert_close64(res.value, want["value"], **tol, what=f"{strategy}: value")


def test_quadratic_k_step_closed_form_is_not_the_implicit_one() -> None:
    """The K-step forms above are really different maps (else the test above could not fail).
    NumPy only: it checks the closed forms themselves, not a framework (hence no ``fw``)."""
    theta, task = quadratic(3, 4, 2)
    want = k_step_closed_forms(theta, task, 0.3, 3, 1)
    for a, b in [("unrolled", "truncated"), ("unrolled", "first_order")]:
        assert rel_err(want[a], want[b]) > 1e-2
    assert rel_err(want["unrolled"], implicit_closed_form(theta, task)) > 1e-2


# ================================================================ (ii) ridge regression


def _ridge_inner(w: Any, theta: Any, t: Any) -> Any:
    r = t["X"] @ w - t["y"]
    return 0.5 * (r @ r) / len(r) + 0.5 * (xp(theta).exp(theta) * w * w).sum()


def _ridge_outer(w: Any, theta: Any, t: Any) -> Any:
    r = t["Xv"] @ w - t["yv"]
    return 0.5 * (r @ r) / len(r)


RIDGE = Problem(
    init=lambda theta, t: xp(theta).zeros_like(theta),
    inner_loss=_ridge_inner,
    outer_loss=_ridge_outer,
)


def ridge_hessian(theta: Array, t: Task) -> Array:
    return t["X"].T @ t["X"] / len(t["y"]) + np.diag(np.exp(theta))


def ridge_closed_form(theta: Array, t: Task, w: Array | None = None) -> tuple[Array, Array]:
    r"""(w*, dF/dθ). From H w* = Xᵀy/n, H = XᵀX/n + diag(e^θ): dw*/dθ_j = −H⁻¹ e_j e^{θ_j} w*_j,
    so dF/dθ = −e^θ ⊙ w* ⊙ H⁻¹∇_wF with ∇_wF = X_vᵀ(X_v w* − y_v)/n_v.

    With ``w`` given, the same implicit formula evaluated at ``w`` instead of w* (H does not
    depend on w, so this is what the implicit strategy computes at an inexact inner solution).
    """
    h = ridge_hessian(theta, t)
    at = np.linalg.solve(h, t["X"].T @ t["y"] / len(t["y"])) if w is None else w
    gv = t["Xv"].T @ (t["Xv"] @ at - t["yv"]) / len(t["yv"])
    return at, -np.exp(theta) * at * np.linalg.solve(h, gv)


def synthetic_ridge(seed: int, d: int) -> tuple[Array, Task]:
    g = rng(seed)
    n = 4 * d
    w_true = randn(g, d)
    x, xv = randn(g, n, d), randn(g, n, d)
    task = {
        "X": x,
        "y": x @ w_true + 0.5 * randn(g, n),
        "Xv": xv,
        "yv": xv @ w_true + 0.5 * randn(g, n),
    }
    return -1 + 2 * rand(g, d), task  # θ ∈ [−1, 1]^d


@functools.cache
def diabetes() -> Task:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    x_np, y_np = sklearn_datasets.load_diabetes(return_X_y=True)
    x, y = np.asarray(x_np, dtype=np.float64), np.asarray(y_np, dtype=np.float64)
    perm = rng(0).permutation(len(y))
    x, y = x[perm], y[perm]
    half = len(y) // 2
    # Standardise with the training half's statistics (no validation leakage); sample std.
    x = (x - x[:half].mean(0)) / x[:half].std(0, ddof=1)
    y = (y - y[:half].mean()) / y[:half].std(ddof=1)
    return {"X": x[:half], "y": y[:half], "Xv": x[half:], "yv": y[half:]}


def _check_ridge_cg(fw: Framework, theta: Array, task: Task) -> None:
    d = theta.shape[0]
    w_star, g_star = ridge_closed_form(theta, task)
    solver = _gd_for(ridge_hessian(theta, task))
    # CG in exact arithmetic solves a d×d SPD system in ≤ d iterations: allow exactly d.
    strategy = Implicit(solvers.CG(maxiter=d, tol=1e-11))
    res = hypergrad(RIDGE, solver, fw.array(theta), fw.tree(task), strategy=strategy)
    assert res.info.linear is not None
    assert res.info.linear.iterations <= d
    assert res.info.linear.converged
    # GD leaves ‖w − w*‖ ≈ 1e-16·‖w*‖; d CG steps in float64 with κ(H) ≲ 30 lose a few digits to
    # roundoff (residual ≤ 1e-11 asserted via converged): 1e-8 relative is the stated target.
    assert_close64(res.params, w_star, rtol=1e-10, atol=1e-12, what="params")
    assert_close64(res.grad, g_star, rtol=1e-8, atol=1e-12, what="grad")


@given(seed=seeds, d=st.integers(2, 10))
def test_ridge_synthetic_cg_exact_in_d_iterations(fw: Framework, seed: int, d: int) -> None:
    theta, task = synthetic_ridge(seed, d)
    _check_ridge_cg(fw, theta, task)


@settings(max_examples=6)
@given(seed=seeds)
def test_ridge_diabetes_cg_exact_in_d_iterations(fw: Framework, seed: int) -> None:
    task = diabetes()
    assert task["X"].shape == (221, 10)
    theta = -1 + 2 * rand(rng(seed), 10)  # e^θ ∈ [0.37, 2.7]: κ(H) ≲ 30
    _check_ridge_cg(fw, theta, task)


def test_ridge_diabetes_hypergradient_is_not_trivial() -> None:
    """Guard against a vacuous closed form: the hypergradient is O(1e-3..1e-1), not ~0.
    NumPy only: it checks the closed form and the data, not a framework (hence no ``fw``)."""
    _, g = ridge_closed_form(np.zeros(10), diabetes())
    assert float(np.linalg.norm(g)) > 1e-4


@pytest.mark.parametrize("data", ["synthetic", "diabetes"])
@settings(max_examples=4)
@given(seed=seeds)
def test_ridge_scipy_inner_solver_with_implicit(fw: Framework, data: str, seed: int) -> None:
    if data == "synthetic":
        theta, task = synthetic_ridge(seed, 6)
    else:
        task = diabetes()
        theta = -1 + 2 * rand(rng(seed), 10)
    d = theta.shape[0]
    res = hypergrad(
        RIDGE,
        solvers.Scipy("L-BFGS-B", tol=1e-15),
        fw.array(theta),
        fw.tree(task),
        strategy=Implicit(solvers.CG(maxiter=d, tol=1e-11)),
    )
    assert res.info.solver is not None and res.info.solver.success
    w_star, g_star = ridge_closed_form(theta, task)
    w = numpy(res.params)
    # (1) Given the inner solution SciPy returned, the implicit formula is exact (H does not
    # depend on w): only the d-step CG solve's roundoff remains, as above.
    _, g_at_w = ridge_closed_form(theta, task, w=w)
    assert_close64(res.grad, g_at_w, rtol=1e-8, atol=1e-12, what="grad at SciPy's w")
    # (2) SciPy solved the inner problem: by strong convexity ‖w − w*‖ ≤ ‖∇f(w)‖/μ. L-BFGS-B
    # stops on a relative decrease of f below tol = 1e-15, i.e. near f − f* ≈ 1e-15, so
    # ‖w − w*‖ ≈ sqrt(2·1e-15/μ) ≈ 1e-7 (measured ≲ 4e-8 relative): require ≤ 1e-6·‖w*‖.
    h = ridge_hessian(theta, task)
    mu = float(np.linalg.eigvalsh(h)[0])
    grad_f = h @ w - task["X"].T @ task["y"] / len(task["y"])
    assert float(np.linalg.norm(grad_f)) / mu <= 1e-6 * float(np.linalg.norm(w_star))
    # ... and the hypergradient inherits that relative error, amplified by at most ~κ(H) ≲ 20
    # (H⁻¹ and w enter it linearly): 1e-6 · 20 < 1e-4; measured ≲ 4e-8, so 1e-5 is tight enough
    # to catch a solver that stopped early and loose enough for L-BFGS-B's stopping rule.
    assert_close64(res.grad, g_star, rtol=1e-5, atol=1e-9, what="grad")


# ================================================================ (iii) linear-regression iMAML


# λ travels in the task (a 0-d array), so the Problem is built once for all hypothesis examples.
def _imaml_inner(phi: Any, theta: Any, t: Any) -> Any:
    r = t["X"] @ phi - t["y"]
    return 0.5 * (r @ r) / len(r) + t["lam"] / 2 * ((phi - theta) ** 2).sum()


def _imaml_outer(phi: Any, theta: Any, t: Any) -> Any:
    r = t["Xt"] @ phi - t["yt"]
    return 0.5 * (r @ r) / len(r)


IMAML = Problem(init=lambda theta, t: theta, inner_loss=_imaml_inner, outer_loss=_imaml_outer)


def imaml_data(seed: int, d: int, lam: float) -> tuple[Array, Task]:
    g = rng(seed)
    n = 3 * d
    return randn(g, d), {
        "X": randn(g, n, d),
        "y": randn(g, n),
        "Xt": randn(g, n, d),
        "yt": randn(g, n),
        "lam": np.asarray(lam, dtype=np.float64),
    }


def imaml_closed_form(theta: Array, t: Task) -> tuple[Array, Array, Array]:
    r"""φ* = (H + λI)⁻¹(Xᵀy/n + λθ), H = XᵀX/n; dφ*/dθ = λ(H + λI)⁻¹ (symmetric), so the
    meta-gradient is λ(H + λI)⁻¹∇L_test(φ*), ∇L_test = X_tᵀ(X_tφ − y_t)/n_t."""
    n, lam = len(t["y"]), float(t["lam"])
    k = t["X"].T @ t["X"] / n + lam * np.eye(theta.shape[0])
    phi = np.linalg.solve(k, t["X"].T @ t["y"] / n + lam * theta)
    g_test = t["Xt"].T @ (t["Xt"] @ phi - t["yt"]) / len(t["yt"])
    return phi, lam * np.linalg.solve(k, g_test), k


@settings(max_examples=10)
@given(seed=seeds, d=st.integers(2, 8), lam=st.floats(0.5, 5.0))
def test_imaml_cg_exact_and_monotone(fw: Framework, seed: int, d: int, lam: float) -> None:
    theta, task = imaml_data(seed, d, lam)
    phi_star, g_star, k = imaml_closed_form(theta, task)
    solver = _gd_for(k)
    scale = float(np.linalg.norm(g_star))
    meta, fw_task = fw.array(theta), fw.tree(task)

    errors = []
    res = None
    for iters in range(1, d + 1):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = hypergrad(
                IMAML,
                solver,
                meta,
                fw_task,
                strategy=Implicit(solvers.CG(maxiter=iters, tol=1e-12)),
            )
        lin = res.info.linear
        assert lin is not None and lin.iterations <= iters
        # A LinearSolveWarning is issued exactly when the solve reports non-convergence.
        warned = any(issubclass(w.category, LinearSolveWarning) for w in caught)
        assert warned == (not lin.converged)
        others = [w for w in caught if issubclass(w.category, BilevelWarning)]
        assert all(issubclass(w.category, LinearSolveWarning) for w in others)
        errors.append(float(np.linalg.norm(numpy(res.grad) - g_star)) / scale)

    # d CG iterations on the d×d SPD system H + λI are exact up to roundoff (κ ≤ ~20 here).
    # Tolerance: GD's inner error ~1e-16 plus float64 roundoff × κ: 1e-9 relative.
    assert errors[-1] <= 1e-9
    assert res is not None
    assert_close64(res.params, phi_star, rtol=1e-10, atol=1e-12, what="params")
    # CG's Euclidean error ‖v_k − v*‖ is non-increasing in k (Hestenes & Stiefel 1952, Thm 6:3),
    # and the meta-gradient error is λ‖v_k − v*‖. Allow roundoff: 1e-8 relative + 1e-12.
    for before, after in itertools.pairwise(errors):
        assert after <= before * (1 + 1e-8) + 1e-12
    # Not vacuous: a generic system with d ≥ 2 distinct eigenvalues is not solved in one step.
    assert errors[0] > 1e-6


@settings(max_examples=6)
@given(seed=seeds, d=st.integers(2, 6), lam=st.floats(0.5, 5.0))
def test_imaml_implicit_matches_unrolled_limit(
    fw: Framework, seed: int, d: int, lam: float
) -> None:
    """With init = θ and K → ∞ steps, the unrolled MAML gradient tends to the iMAML one."""
    theta, task = imaml_data(seed, d, lam)
    _, g_star, k = imaml_closed_form(theta, task)
    solver = _gd_for(k)
    res = hypergrad(IMAML, solver, fw.array(theta), fw.tree(task), strategy=Unrolled())
    # dφ_K/dθ = Mᴷ + (I − Mᴷ)λ(H+λI)⁻¹ with ‖Mᴷ‖ ≤ 1e-16 for this K: equal up to roundoff
    # accumulated over K ≲ 300 steps (≈ K·u·κ ≲ 1e-12): 1e-9 relative.
    assert_close64(res.grad, g_star, rtol=1e-9, atol=1e-12)


# ================================================================ (iv) CG convergence edge cases


def _op(a: Any) -> LinearOperator:
    return LinearOperator(lambda v: a @ v, True)


@given(seed=seeds, n=st.integers(1, 8), which=st.integers(0, 7), scale=st.floats(1e-3, 1e3))
def test_cg_converges_at_first_iteration_on_an_eigenvector(
    fw: Framework, seed: int, n: int, which: int, scale: float
) -> None:
    g = rng(seed)
    eig = 0.5 + 4 * rand(g, n)
    a_np, q = spd_with(g, eig)
    j = which % n
    b_np = scale * q[:, j]
    a, b = fw.array(a_np), fw.array(b_np)
    backend = backend_for(b)
    x, info = solvers.CG(maxiter=50, tol=1e-10).solve(_op(a), b, backend=backend)
    # One step: α = bᵀb / bᵀAb = 1/λ_j, x₁ = b/λ_j, r₁ = b − Ab/λ_j = 0 up to roundoff (~u·κ).
    assert info.iterations == 1
    assert info.converged and not info.negative_curvature
    assert_close64(x, b_np / eig[j], rtol=1e-12, atol=0.0)
    assert info.residual <= 1e-13  # u·κ(A) with κ ≤ 9, recomputed as ‖b − Ax‖/‖b‖
    # maxiter = 1 is enough, and is reported as converged (not "ran out of iterations").
    x1, info1 = solvers.CG(maxiter=1, tol=1e-10).solve(_op(a), b, backend=backend)
    assert info1.iterations == 1 and info1.converged
    np.testing.assert_array_equal(numpy(x1), numpy(x))


# f = ½φᵀAφ − φᵀBθ, F = uᵀφ + E‖θ‖²; built once (A, B, u in the task), see IMAML above.
EIGEN_RHS = Problem(
    init=lambda th, t: xp(t["u"]).zeros_like(t["u"]),
    inner_loss=lambda phi, th, t: 0.5 * phi @ (t["A"] @ phi) - phi @ (t["B"] @ th),
    outer_loss=lambda phi, th, t: t["u"] @ phi + E * (th @ th),
)


@given(seed=seeds, n=st.integers(1, 6), m=st.integers(1, 3), which=st.integers(0, 5))
def test_implicit_cg_first_iteration_convergence_is_exact(
    fw: Framework, seed: int, n: int, m: int, which: int
) -> None:
    """A bilevel problem whose adjoint system is solved by CG's first iterate.

    f = ½φᵀAφ − φᵀBθ, F = uᵀφ + E‖θ‖² with Au = λu: ∇_φF = u, v = u/λ, and the hypergradient
    is Bᵀu/λ + 2Eθ exactly.
    """
    g = rng(seed)
    eig = 1 + 2 * rand(g, n)
    a, q = spd_with(g, eig)
    j = which % n
    task = {"A": a, "B": randn(g, n, m), "u": q[:, j]}
    theta = randn(g, m)
    want = task["B"].T @ task["u"] / eig[j] + 2 * E * theta
    for maxiter in (1, 20):
        res = hypergrad(
            EIGEN_RHS,
            _gd_for(a),
            fw.array(theta),
            fw.tree(task),
            strategy=Implicit(solvers.CG(maxiter=maxiter, tol=1e-10)),
        )
        assert res.info.linear is not None
        assert res.info.linear.iterations == 1 and res.info.linear.converged
        # One CG step is exact here; only float64 roundoff (~u·κ, κ ≤ 3) remains.
        assert_close64(res.grad, want, rtol=1e-12, atol=1e-13, what=f"maxiter={maxiter}")


def _galerkin(a: Array, b: Array, k: int) -> Array:
    """The CG iterate x_k = argmin over the Krylov space K_k(A, b) of ‖x − A⁻¹b‖_A,
    i.e. V(VᵀAV)⁻¹Vᵀb for an orthonormal basis V of K_k (Arnoldi, twice re-orthogonalised)."""
    basis = [b / np.linalg.norm(b)]
    for _ in range(k - 1):
        w = a @ basis[-1]
        for _ in range(2):
            for v in basis:
                w = w - (v @ w) * v
        basis.append(w / np.linalg.norm(w))
    v = np.stack(basis, axis=1)
    return v @ np.linalg.solve(v.T @ a @ v, v.T @ b)


def _generic_system(seed: int, d: int) -> tuple[Array, Array]:
    """A d×d SPD system with well-separated eigenvalues in [1, 4] and a right-hand side with
    every eigencomponent of size ≥ 0.5/√d: CG needs all d iterations."""
    g = rng(seed)
    eig = 1 + 3 * (np.arange(d, dtype=np.float64) + 0.25 + 0.5 * rand(g, d)) / d
    a, q = spd_with(g, eig)
    coef = (0.5 + 0.5 * rand(g, d)) * np.where(rand(g, d) < 0.5, -1.0, 1.0)
    return a, q @ coef / math.sqrt(d)


@given(seed=seeds, d=st.integers(2, 6))
def test_cg_iterates_are_the_galerkin_projections(fw: Framework, seed: int, d: int) -> None:
    """CG(maxiter=k) returns the k-th CG iterate, for every k: no step skipped, none extra."""
    a_np, b_np = _generic_system(seed, d)
    a, b = fw.array(a_np), fw.array(b_np)
    backend = backend_for(b)
    for k in range(1, d + 1):
        # tol tiny so only maxiter stops it; converged may then be False (no warning here:
        # the solver is called directly, not through hypergrad).
        x, info = solvers.CG(maxiter=k, tol=1e-300).solve(_op(a), b, backend=backend)
        assert info.iterations == k
        # Both are the Galerkin solution; with d ≤ 6 and κ ≤ 4 the Krylov basis and CG's
        # recurrences each lose at most ~κ^d·u ≈ 1e-12: 1e-9 relative.
        assert_close64(x, _galerkin(a_np, b_np, k), rtol=1e-9, atol=1e-12, what=f"k={k}")


@given(seed=seeds, d=st.integers(2, 8))
def test_cg_exact_in_d_iterations_and_not_in_d_minus_1(fw: Framework, seed: int, d: int) -> None:
    a_np, b_np = _generic_system(seed, d)
    a, b = fw.array(a_np), fw.array(b_np)
    backend = backend_for(b)
    exact = np.linalg.solve(a_np, b_np)
    x, info = solvers.CG(maxiter=d, tol=1e-10).solve(_op(a), b, backend=backend)
    assert info.converged and info.iterations <= d
    # Exact after d steps up to roundoff × κ (κ ≤ 4): 1e-10 relative residual asserted by
    # converged, hence error ≤ κ·1e-10.
    assert_close64(x, exact, rtol=4e-10, atol=0.0)
    x, info = solvers.CG(maxiter=d - 1, tol=1e-10).solve(_op(a), b, backend=backend)
    assert info.iterations == d - 1
    assert not info.converged
    # The (d−1)-th iterate's residual is p(A)b for the optimal degree-(d−1) polynomial with
    # p(0) = 1, which cannot vanish on d distinct eigenvalues; for this construction it is
    # ≥ 1e-4 for d ≤ 7 and ≥ 3e-5 for d = 8 (minimum over 3000 seeds; its value is checked
    # against the Galerkin iterate above). 1e-6 is a safe floor.
    assert info.residual > 1e-6
    assert rel_err(x, exact) > 1e-6


# Quadratic with Hessian A and ∇_φF(φ*) = rhs exactly: F = rhsᵀφ (A, rhs in the task).
GENERIC = Problem(
    init=lambda th, t: th,
    inner_loss=lambda phi, th, t: 0.5 * phi @ (t["A"] @ phi) - phi @ th,
    outer_loss=lambda phi, th, t: t["rhs"] @ phi,
)


@settings(max_examples=8)
@given(seed=seeds, d=st.integers(2, 6))
def test_implicit_cg_with_d_minus_1_iterations_warns_and_is_inexact(
    fw: Framework, seed: int, d: int
) -> None:
    """Through hypergrad: CG(maxiter=d) is exact on the d-dimensional iMAML system; maxiter=d−1
    is not, is reported as not converged, and warns."""
    g = rng(seed)
    a, rhs = _generic_system(seed, d)
    theta = fw.array(randn(g, d))
    task = fw.tree({"A": a, "rhs": rhs})
    want = np.linalg.solve(a, rhs)  # dφ*/dθ = A⁻¹ (symmetric), so the gradient is A⁻¹ rhs
    solver = _gd_for(a)
    res = hypergrad(GENERIC, solver, theta, task, strategy=Implicit(solvers.CG(maxiter=d)))
    # CG's default tol 1e-10 × κ ≤ 4: 4e-10 relative.
    assert_close64(res.grad, want, rtol=4e-10, atol=0.0)
    with pytest.warns(LinearSolveWarning, match="did not converge"):
        res = hypergrad(GENERIC, solver, theta, task, strategy=Implicit(solvers.CG(maxiter=d - 1)))
    assert res.info.linear is not None and not res.info.linear.converged
    assert rel_err(res.grad, want) > 1e-6  # see the (d−1)-iteration residual bound above
