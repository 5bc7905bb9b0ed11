"""Degenerate and awkward inputs, each checked against numbers.

Numbers come from closed forms worked out in the comments, or from float64 central finite
differences of exactly the map each strategy claims to differentiate
(:func:`bilevel.testing.check_hypergrad`, whose default tolerance ``rtol = 1e-6`` is derived in
its module docstring: truncation ``h²/6·|F'''|`` plus cancellation ``u·|F|/h`` with
``h = 1e-5``, ``u = 1.1e-16``).

Every test of the library runs on torch and on JAX (the ``fw`` fixture,
``tests/_frameworks.py``; only ``test_saddle_setup_is_indefinite``, a check of the test's own
data, is plain NumPy): the data are NumPy arrays (random ones drawn with ``_generators``),
converted per framework, so both runs see the same numbers; dtypes are NumPy dtypes, compared
after converting results back with :func:`numpy`. Each problem function is written once, taking
its array functions from :func:`xp`, and each problem is a module-level object built once, so
that JAX compiles its inner loss once per shape rather than once per test. The one third-party
inner optimizer (:class:`ThirdParty`) is torchopt's on torch and optax's, of the same name, on
JAX.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from _frameworks import Framework, assert_close, numpy, param_id, xp
from _generators import randn, rng

from bilevel import (
    Batch,
    FirstOrder,
    ForwardMode,
    Implicit,
    LinearSolveWarning,
    Problem,
    Truncated,
    Unrolled,
    hypergrad,
    solvers,
    tree,
)
from bilevel.testing import check_hypergrad

Tree = Any
Array = Any  # a torch tensor or a JAX array (tracers and torch.func wrappers included)

D = np.float64


def a(x: Any, dtype: Any = D) -> np.ndarray[Any, Any]:
    """``x`` as a NumPy array of ``dtype`` (float64 by default); convert with ``fw.array``."""
    return np.asarray(x, dtype=dtype)


def quiet(problem: Problem, solver: Any, meta: Any, task: Any, strategy: Any) -> Any:
    """hypergrad, failing the test on any bilevel warning (a clean run is part of the claim)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        return hypergrad(problem, solver, meta, task, strategy=strategy)


def is_array(fw: Framework, x: Any) -> bool:
    """Whether ``x`` is an array of ``fw`` (a ``torch.Tensor`` or a ``jax.Array``)."""
    if fw.name == "torch":
        import torch

        return isinstance(x, torch.Tensor)
    import jax

    return isinstance(x, jax.Array)


def assert_equal(got: Tree, want: Tree) -> None:
    """Equal structures, shapes, dtypes and values, bit for bit (``want`` may be NumPy)."""
    assert tree.structure(got) == tree.structure(want)
    for g, w in zip(tree.leaves(numpy(got)), tree.leaves(numpy(want)), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


def assert_close_typed(got: Tree, want: Tree, *, rtol: float, atol: float) -> None:
    """What ``torch.testing.assert_close`` checks, on either framework: equal structures, dtypes
    and shapes, and ``|got − want| ≤ atol + rtol·|want|`` leafwise (``want`` may be NumPy)."""
    assert tree.structure(got) == tree.structure(want)
    for g, w in zip(tree.leaves(numpy(got)), tree.leaves(numpy(want)), strict=True):
        assert np.asarray(g).dtype == np.asarray(w).dtype
    assert_close(got, want, rtol=rtol, atol=atol)


@dataclass(frozen=True)
class ThirdParty:
    """``solvers.Optimizer`` over a third-party optax-style transform ``name(lr)``: torchopt's
    on torch, optax's on JAX (each framework's own library; both are pure transforms)."""

    name: str
    lr: float
    steps: int

    def __repr__(self) -> str:
        return f"Optimizer({self.name}({self.lr}), {self.steps})"

    def build(self, fw: Framework) -> solvers.Optimizer:
        lib = pytest.importorskip("torchopt" if fw.name == "torch" else "optax")
        return solvers.Optimizer(getattr(lib, self.name)(self.lr), self.steps)


def build(solver: Any, fw: Framework) -> Any:
    """The solver for ``fw``: a :class:`ThirdParty` is built per framework, others are shared."""
    return solver.build(fw) if isinstance(solver, ThirdParty) else solver


# ------------------------------------------------------------------ 0-d meta and 0-d params
#
# φ₀ = θ, f(φ) = ½(φ − θ)² + ½λφ², F = ½(φ − y)², with θ, λ, φ, y all 0-d.
# Gradient descent with step α: φ_{t+1} = rφ_t + αθ with r = 1 − α(1 + λ), so
#   φ_K = r^K θ + θ(1 − r^K)/(1 + λ),            φ* = θ/(1 + λ).
# dF/dθ for each strategy (F' = φ_K − y):
#   Unrolled / ForwardMode:  F' · (r^K + (1 − r^K)/(1 + λ))
#   Truncated(T):            F' · (1 − r^T)/(1 + λ)        (φ_{K−T} held constant)
#   FirstOrder:              F' · 1                         (∂init/∂θ = 1, steps = identity)
#   Implicit at φ*:          F' / (1 + λ);   dF/dλ = −F' · θ/(1 + λ)²

THETA, LAM, Y, ALPHA, K = 0.8, 0.5, -0.3, 0.4, 12


def _scalar_init(m: Tree, task: Any) -> Array:
    return m["theta"]


def _scalar_inner(w: Array, m: Tree, task: Any) -> Array:
    return (w - m["theta"]) ** 2 / 2 + m["lam"] * w**2 / 2


def _scalar_outer(w: Array, m: Tree, task: Array) -> Array:
    return (w - task) ** 2 / 2


SCALAR = Problem(init=_scalar_init, inner_loss=_scalar_inner, outer_loss=_scalar_outer)


def scalar_meta(fw: Framework) -> dict[str, Any]:
    return fw.tree({"theta": a(THETA), "lam": a(LAM)})


def _closed_form_theta_grad(strategy: Any, steps: int) -> float:
    r = 1 - ALPHA * (1 + LAM)
    phi_k = r**steps * THETA + THETA * (1 - r**steps) / (1 + LAM)
    slope = phi_k - Y
    if isinstance(strategy, Unrolled | ForwardMode):
        return slope * (r**steps + (1 - r**steps) / (1 + LAM))
    if isinstance(strategy, Truncated):
        return slope * (1 - r**strategy.steps) / (1 + LAM)
    if isinstance(strategy, FirstOrder):
        return slope
    raise AssertionError(strategy)


@pytest.mark.parametrize(
    "strategy", [Unrolled(), ForwardMode(), Truncated(1), Truncated(5), FirstOrder()], ids=repr
)
def test_scalar_meta_gets_the_closed_form_gradient(fw: Framework, strategy: Any) -> None:
    res = quiet(
        SCALAR, solvers.GradientDescent(ALPHA, K), scalar_meta(fw), fw.array(a(Y)), strategy
    )
    g = res.grad["theta"]
    assert g.shape == ()
    assert numpy(g).dtype == D
    assert res.params.shape == ()
    expected = _closed_form_theta_grad(strategy, K)
    # the closed forms are O(0.1) here: a scalar hypergradient reported as zero fails loudly
    assert abs(expected) > 0.1
    # the library and the closed form differ only by float64 rounding over K = 12 steps
    # (a few ulps per step): rtol 1e-12 leaves three orders of magnitude
    assert float(g) == pytest.approx(expected, rel=1e-12)


def test_scalar_meta_implicit_closed_form_for_both_scalars(fw: Framework) -> None:
    # 60 steps with |r| = 0.4: the inner error is 0.4^60 ≈ 1e-24, below float64 resolution
    res = quiet(
        SCALAR,
        solvers.GradientDescent(ALPHA, 60),
        scalar_meta(fw),
        fw.array(a(Y)),
        Implicit(solvers.CG()),
    )
    phi = THETA / (1 + LAM)
    slope = phi - Y
    assert float(res.params) == pytest.approx(phi, rel=1e-14)  # φ* to float64 resolution
    # 1-d system: CG is exact after one iteration; only rounding remains (rtol 1e-12)
    assert float(res.grad["theta"]) == pytest.approx(slope / (1 + LAM), rel=1e-12)
    assert float(res.grad["lam"]) == pytest.approx(-slope * THETA / (1 + LAM) ** 2, rel=1e-12)
    # both nonzero: a regulariser strength λ as a 0-d meta-parameter is learnable
    assert abs(float(res.grad["lam"])) > 0.1


@pytest.mark.parametrize(
    "strategy",
    [
        Unrolled(),
        ForwardMode(),
        Truncated(3),
        FirstOrder(),
        Implicit(solvers.CG()),
        Implicit(solvers.MINRES()),
        Implicit(solvers.Direct()),
        Implicit(solvers.Neumann(maxiter=500, alpha=0.5)),
    ],
    ids=repr,
)
def test_scalar_meta_and_params_against_finite_differences(fw: Framework, strategy: Any) -> None:
    steps = 40 if isinstance(strategy, Implicit) else K  # Implicit: inner error 0.4^40 ≈ 1e-16
    report = check_hypergrad(
        SCALAR, solvers.GradientDescent(ALPHA, steps), scalar_meta(fw), fw.array(a(Y)), strategy
    )
    # both 0-d coordinates were differentiated (leaves in sorted key order: λ, θ); neither
    # derivative is zero, except dF/dλ for FirstOrder (init does not depend on λ, and the
    # steps are treated as constant in the meta-parameters)
    d_lam, d_theta = report.analytic
    assert abs(d_theta) > 0.1
    if isinstance(strategy, FirstOrder):
        assert d_lam == 0.0
    else:
        assert abs(d_lam) > 1e-3


# ------------------------------------------------------------------ many mixed-shape leaves


def mixed_meta() -> dict[str, Any]:
    """Leaves of shapes (), (3,), (2, 3, 1), (1,), () in a dict / list / tuple / dict nest."""
    g = rng(1)
    return {
        "s": randn(g),
        "v": randn(g, 3),
        "nest": [randn(g, 2, 3, 1), (randn(g, 1), {"z": randn(g)})],
    }


def _mixed_init(m: Tree, task: Any) -> Tree:
    return m


def _mixed_inner(w: Tree, m: Tree, task: Any) -> Any:
    """Strongly convex, coupling every leaf."""
    diffs = tree.leaves(tree.sub(w, m))
    total = sum(x.sum() for x in tree.leaves(w))
    quartic = sum((x**4).sum() for x in tree.leaves(w))
    return sum((d**2).sum() for d in diffs) / 2 + 0.05 * total**2 + 0.02 * quartic


def _mixed_outer(w: Tree, m: Tree, task: Array) -> Any:
    """Nonlinear in every leaf."""
    ws = tree.leaves(w)
    return sum((xp(x).sin(x) * task).sum() for x in ws) + 0.1 * m["s"] ** 2


MIXED = Problem(init=_mixed_init, inner_loss=_mixed_inner, outer_loss=_mixed_outer)


@pytest.mark.parametrize(
    "strategy",
    [Unrolled(), Truncated(1), FirstOrder(), ForwardMode(), Implicit(solvers.CG())],
    ids=repr,
)
def test_mixed_shapes_in_nested_containers(fw: Framework, strategy: Any) -> None:
    meta = fw.tree(mixed_meta())
    # Implicit needs the inner solution to ~1e-12 (check_hypergrad's docstring): the Hessian
    # I + 0.1·11ᵀ + diag(0.24 φ²) has eigenvalues in [1, 2.2 + 0.24·max φ²] ≈ [1, ~2.6] for
    # these draws (|φ| ≲ 1.3), so lr 0.45 contracts by ≤ 0.55 per step and 0.55^50 ≈ 1e-13
    # (observed stationarity ≈ 3e-16)
    steps = 50 if isinstance(strategy, Implicit) else 2
    solver = solvers.GradientDescent(0.45, steps)
    task = fw.array(a(0.7))
    res = hypergrad(MIXED, solver, meta, task, strategy=strategy)
    # 12 coordinates in all; four random directions each mix all of them (a dense unit
    # vector), at a third of the cost of coordinate-wise differences
    check_hypergrad(MIXED, solver, meta, task, strategy, max_coordinates=0, directions=4)
    assert sum(math.prod(x.shape) for x in tree.leaves(meta)) == 1 + 3 + 6 + 1 + 1
    assert tree.structure(res.grad) == tree.structure(meta)
    assert tree.structure(res.params) == tree.structure(meta)
    for g, m in zip(tree.leaves(res.grad), tree.leaves(meta), strict=True):
        assert g.shape == m.shape
        assert g.dtype == m.dtype
        # every leaf enters init and the loss: no leaf's gradient is dropped to zero
        assert bool((g != 0).any())
    assert isinstance(res.grad["nest"][1], tuple)
    assert isinstance(res.grad["nest"], list)


# ------------------------------------------------- a linear system solved at the first step
#
# f = (c/2)‖φ − θ‖², F = ½‖φ − y‖²: the Hessian is cI, φ* = θ and dF/dθ = θ − y. With c = 4
# and lr = 1/4 one gradient step from 0 lands on φ* exactly (powers of two are exact).


def _zeros_init(m: Array, task: Any) -> Array:
    return xp(m).zeros_like(m)


def _stiff_inner(w: Array, m: Array, task: Any) -> Array:
    return 2.0 * ((w - m) ** 2).sum()


def _distance_outer(w: Array, m: Array, task: Array) -> Array:
    return ((w - task) ** 2).sum() / 2


IDENTITY_HESSIAN = Problem(init=_zeros_init, inner_loss=_stiff_inner, outer_loss=_distance_outer)


@pytest.mark.parametrize(
    "linear", [solvers.CG(maxiter=1), solvers.Neumann(maxiter=1, alpha=0.25)], ids=repr
)
def test_linear_system_converging_at_the_first_iteration(fw: Framework, linear: Any) -> None:
    meta_np, y_np = a([1.0, -2.0, 0.5]), a([0.25, 0.0, 3.0])
    meta, y = fw.array(meta_np), fw.array(y_np)
    res = quiet(IDENTITY_HESSIAN, solvers.GradientDescent(0.25, 1), meta, y, Implicit(linear))
    info = res.info.linear
    assert info is not None
    assert info.iterations == 1
    assert info.converged is True
    assert info.residual <= 1e-15  # x = b/4 is exact for these dyadic numbers
    assert res.info.stationarity == 0.0  # one step of lr 1/4 lands exactly on φ* = θ
    # CG's step α = bᵀb / (4 bᵀb) is one division: at most an ulp away from 1/4
    assert_close_typed(res.grad, meta_np - y_np, rtol=1e-15, atol=0)


def _norm_of_meta_outer(w: Array, m: Array, task: Any) -> Array:
    return (m**2).sum()


# F = ‖θ‖² does not depend on φ
ZERO_RHS = Problem(init=_zeros_init, inner_loss=_stiff_inner, outer_loss=_norm_of_meta_outer)


@pytest.mark.parametrize(
    "linear",
    [solvers.CG(), solvers.Neumann(), solvers.MINRES(), solvers.GMRES(), solvers.Direct()],
    ids=repr,
)
def test_zero_right_hand_side(fw: Framework, linear: Any) -> None:
    # F = ‖θ‖² does not depend on φ, so ∇_φF = 0 and the system is A v = 0: v = 0, g = 2θ
    meta_np = a([1.0, 2.0, 3.0])
    res = quiet(
        ZERO_RHS, solvers.GradientDescent(0.25, 1), fw.array(meta_np), None, Implicit(linear)
    )
    assert res.info.linear is not None
    assert res.info.linear.converged is True
    assert res.info.linear.residual == 0.0  # x = 0 solves A x = 0 exactly
    assert_equal(res.grad, 2 * meta_np)  # 2θ: one exact multiplication


# ------------------------------------------------------------------ indefinite inner Hessian
#
# f = ½φᵀAφ − φᵀθ with A symmetric and indefinite: ∇f = Aφ − θ vanishes at the saddle
# φ* = A⁻¹θ, which init computes directly (no descent method converges to a saddle).
# F = ½‖φ − y‖², so dF/dθ = A⁻ᵀ(φ* − y) = A⁻¹(φ* − y).

A_INDEF = a([[2.0, 0.5, 0.0], [0.5, -1.0, 0.3], [0.0, 0.3, 3.0]])
THETA_3, Y_3 = a([0.3, 0.4, -0.5]), a([0.2, -3.0, 0.1])


def _saddle_init(m: Array, task: Any) -> Array:
    ns = xp(m)
    return ns.linalg.solve(ns.asarray(A_INDEF), m)


def _saddle_inner(w: Array, m: Array, task: Any) -> Array:
    return w @ xp(w).asarray(A_INDEF) @ w / 2 - w @ m


SADDLE = Problem(init=_saddle_init, inner_loss=_saddle_inner, outer_loss=_distance_outer)


def saddle_closed_form() -> np.ndarray[Any, Any]:
    phi = np.linalg.solve(A_INDEF, THETA_3)
    return np.linalg.solve(A_INDEF, phi - Y_3)


def test_saddle_setup_is_indefinite() -> None:
    # NumPy only, no fw: this checks the test's data (A_INDEF, θ, y), not the library
    eigenvalues = np.linalg.eigvalsh(A_INDEF)
    assert eigenvalues[0] < -1 and eigenvalues[-1] > 1
    # ∇_φF = φ* − y points mostly along the negative direction, so CG meets pᵀAp < 0 at once
    b = np.linalg.solve(A_INDEF, THETA_3) - Y_3
    assert b @ A_INDEF @ b < 0


@pytest.mark.parametrize("steps", [0, 5])
def test_minres_solves_the_indefinite_system(fw: Framework, steps: int) -> None:
    res = quiet(
        SADDLE,
        solvers.GradientDescent(0.1, steps),
        fw.array(THETA_3),
        fw.array(Y_3),
        Implicit(solvers.MINRES()),
    )
    assert res.info.stationarity is not None
    assert res.info.stationarity < 1e-14  # init is the saddle to rounding; steps stay there
    assert res.info.linear is not None
    assert res.info.linear.converged is True
    # MINRES stops at relative residual 1e-10; κ(A) ≈ 3 turns that into ≲ 3e-10 in v
    assert_close_typed(res.grad, saddle_closed_form(), rtol=1e-9, atol=1e-12)


def test_direct_solves_the_indefinite_system_and_reports_it(fw: Framework) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = hypergrad(
            SADDLE,
            solvers.GradientDescent(0.1, 0),
            fw.array(THETA_3),
            fw.array(Y_3),
            strategy=Implicit(solvers.Direct()),
        )
    # a dense LU solve of a 3×3 system with κ ≈ 3: error of a few ulps (rtol 1e-12)
    assert_close_typed(res.grad, saddle_closed_form(), rtol=1e-12, atol=1e-14)
    assert res.info.linear is not None
    assert res.info.linear.converged is True
    # Direct documents that it reports a negative eigenvalue of a symmetric operator
    assert res.info.linear.negative_curvature is True
    assert any(issubclass(w.category, LinearSolveWarning) for w in caught)


def test_direct_warning_does_not_tell_a_direct_user_to_use_direct(fw: Framework) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hypergrad(
            SADDLE,
            solvers.GradientDescent(0.1, 0),
            fw.array(THETA_3),
            fw.array(Y_3),
            strategy=Implicit(solvers.Direct()),
        )
    messages = [str(w.message) for w in caught if issubclass(w.category, LinearSolveWarning)]
    assert messages
    assert not any("or Direct" in m for m in messages)


def test_unrolled_through_the_saddle_init_matches_the_closed_form(fw: Framework) -> None:
    # with no steps, φ_K = init(θ) = A⁻¹θ: Unrolled differentiates the same solution map
    res = quiet(
        SADDLE, solvers.GradientDescent(0.1, 0), fw.array(THETA_3), fw.array(Y_3), Unrolled()
    )
    assert_close_typed(res.grad, saddle_closed_form(), rtol=1e-12, atol=1e-14)


def test_cg_reports_negative_curvature_on_the_indefinite_system(fw: Framework) -> None:
    with pytest.warns(LinearSolveWarning, match=r"negative curvature.*MINRES"):
        res = hypergrad(
            SADDLE,
            solvers.GradientDescent(0.1, 0),
            fw.array(THETA_3),
            fw.array(Y_3),
            strategy=Implicit(solvers.CG()),
        )
    assert res.info.linear is not None
    assert res.info.linear.negative_curvature is True
    assert res.info.linear.converged is False


# ------------------------------------------------------------------------------ float32
#
# iMAML-style: a ridge fit on support data pulled towards meta weights, scored on query.


def _ridge_init(m: Tree, task: Tree) -> Tree:
    return {"w": m["w0"], "b": m["b0"]}


def _ridge_inner(p: Tree, m: Tree, task: Tree) -> Any:
    fit = ((task["x"] @ p["w"] + p["b"] - task["y"]) ** 2).mean() / 2
    return fit + xp(m["log_lam"]).exp(m["log_lam"]) * ((p["w"] - m["w0"]) ** 2).sum() / 2


def _ridge_outer(p: Tree, m: Tree, task: Tree) -> Any:
    return ((task["xq"] @ p["w"] + p["b"] - task["yq"]) ** 2).mean() / 2


RIDGE = Problem(init=_ridge_init, inner_loss=_ridge_inner, outer_loss=_ridge_outer)


def ridge_data(n_tasks: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Meta-parameters and task(s) as float64 NumPy arrays (convert with ``fw.tree``)."""
    g = rng(0)
    lead = () if n_tasks is None else (n_tasks,)
    task = {
        "x": randn(g, *lead, 8, 3),
        "y": randn(g, *lead, 8),
        "xq": randn(g, *lead, 8, 3),
        "yq": randn(g, *lead, 8),
    }
    meta = {"w0": randn(g, 3), "b0": a(0.1), "log_lam": a(0.0)}
    return meta, task


FLOAT32_CASES = [
    (solvers.GradientDescent(0.3, 10), Unrolled()),
    (solvers.GradientDescent(0.3, 10), Truncated(3)),
    (solvers.GradientDescent(0.3, 10), FirstOrder()),
    (solvers.GradientDescent(0.3, 10), ForwardMode()),
    (ThirdParty("sgd", 0.3, 10), Unrolled()),
    # float32 cannot reach CG's default relative residual 1e-10 in general; 1e-6 is ~20 ulps
    (solvers.GradientDescent(0.3, 60), Implicit(solvers.CG(tol=1e-6))),
]


@pytest.mark.parametrize(("solver", "strategy"), FLOAT32_CASES, ids=repr)
def test_float32_matches_float64(fw: Framework, solver: Any, strategy: Any) -> None:
    solver = build(solver, fw)
    meta64, task64 = ridge_data()
    to32 = lambda x: x.astype(np.float32)  # noqa: E731
    meta32, task32 = fw.tree(tree.map(to32, meta64)), fw.tree(tree.map(to32, task64))
    r64 = quiet(RIDGE, solver, fw.tree(meta64), fw.tree(task64), strategy)
    r32 = quiet(RIDGE, solver, meta32, task32, strategy)
    # float32 in, float32 out: nothing silently promoted
    assert numpy(r32.value).dtype == np.float32
    assert all(np.asarray(x).dtype == np.float32 for x in tree.leaves(numpy(r32.grad)))
    assert all(np.asarray(x).dtype == np.float32 for x in tree.leaves(numpy(r32.params)))
    g32, g64 = tree.leaves(numpy(r32.grad)), tree.leaves(numpy(r64.grad))
    scale = max(float(np.abs(x).max()) for x in g64)
    worst = max(
        float(np.abs(np.asarray(x32, dtype=D) - x64).max())
        for x32, x64 in zip(g32, g64, strict=True)
    )
    # Why 1e-5: float32's unit roundoff is u = 2^-24 ≈ 6e-8. Every hypergradient entry is a
    # sum over 8 samples and 3 features per step, for ≤ 10 unrolled steps (or one solve
    # at a stationary point of a well-conditioned, κ ≈ 3, inner problem), and the inner map
    # is a contraction, so rounding errors do not grow from step to step: the error is
    # bounded by O(steps · terms · u) ≈ 10 · 16 · 6e-8 ≈ 1e-5 relative to the gradient's
    # scale (observed: ≤ 1.2e-7 on both frameworks).
    assert worst <= 1e-5 * scale
    assert abs(float(r32.value) - float(r64.value)) <= 1e-5 * abs(float(r64.value))


# --------------------------------------------------------------------- one task and batches

VECTORISED = [
    (solvers.GradientDescent(0.3, 5), Unrolled()),
    (solvers.GradientDescent(0.3, 5), FirstOrder()),
    (solvers.GradientDescent(0.3, 5), Truncated(2)),
    (solvers.GradientDescent(0.3, 5), ForwardMode()),
]
LOOPED = [
    (solvers.Scipy(), Implicit(solvers.CG())),
    # the ridge Hessian in (w, b) has eigenvalues in about [0.6, 3.1] for these tasks (b has no
    # ridge term, so the smallest falls below 1): lr 0.3 contracts by ≤ 0.82 per step and
    # 0.82^60 ≈ 7e-6 (observed stationarity ≤ 1.3e-6), well inside stationarity_tol (1e-4)
    (solvers.GradientDescent(0.3, 60), Implicit(solvers.CG())),
]


def task_row(tasks: Tree, i: int) -> Tree:
    return tree.map(lambda x: x[i], tasks)


@pytest.mark.parametrize(("solver", "strategy"), VECTORISED + LOOPED, ids=repr)
def test_batch_of_one_equals_the_single_task_call(
    fw: Framework, solver: Any, strategy: Any
) -> None:
    meta_np, tasks_np = ridge_data(n_tasks=1)
    meta, tasks = fw.tree(meta_np), fw.tree(tasks_np)
    single = quiet(RIDGE, solver, meta, task_row(tasks, 0), strategy)
    batched = quiet(RIDGE, solver, meta, Batch(tasks), strategy)
    # same arithmetic task by task; vmap may reorder reductions: rtol 1e-12 in float64
    assert_close_typed(batched.value, single.value, rtol=1e-12, atol=0)
    assert_close_typed(batched.grad, single.grad, rtol=1e-12, atol=1e-15)
    assert batched.params["w"].shape == (1, 3)
    assert batched.params["b"].shape == (1,)
    assert_close_typed(task_row(batched.params, 0), single.params, rtol=1e-12, atol=1e-15)
    assert single.params["w"].shape == (3,)  # a single task has no task axis
    assert len(batched.task_info) == 1
    assert len(single.task_info) == 1


@pytest.mark.parametrize(
    ("solver", "strategy", "vectorised"),
    [(s, st, True) for s, st in VECTORISED] + [(s, st, False) for s, st in LOOPED],
    ids=repr,
)
def test_batch_equals_the_mean_of_single_task_calls(
    fw: Framework, solver: Any, strategy: Any, vectorised: bool
) -> None:
    n = 4
    meta_np, tasks_np = ridge_data(n_tasks=n)
    meta, tasks = fw.tree(meta_np), fw.tree(tasks_np)
    # the path under test: vmap for the unrolled family, a Python loop for Implicit/Scipy
    assert strategy.vectorizable(solver) is vectorised
    singles = [quiet(RIDGE, solver, meta, task_row(tasks, i), strategy) for i in range(n)]
    batched = quiet(RIDGE, solver, meta, Batch(tasks), strategy)
    mean_grad = tree.map(lambda *gs: sum(gs) / n, *(s.grad for s in singles))
    mean_value = sum(s.value for s in singles) / n
    # float64, the same per-task arithmetic; only the order of the final mean may differ
    assert_close_typed(batched.grad, mean_grad, rtol=1e-12, atol=1e-15)
    assert_close_typed(batched.value, mean_value, rtol=1e-12, atol=0)
    # params carry a leading task axis, task i's row being task i's own solution
    assert batched.params["w"].shape == (n, 3)
    assert batched.params["b"].shape == (n,)
    for i, s in enumerate(singles):
        assert_close_typed(task_row(batched.params, i), s.params, rtol=1e-12, atol=1e-15)
    assert len(batched.task_info) == n
    # the tasks differ, so a batch that silently reused task 0 would fail here
    assert not np.allclose(numpy(singles[0].grad["w0"]), numpy(singles[1].grad["w0"]))


def test_batch_gradient_against_finite_differences_of_the_mean(fw: Framework) -> None:
    # four tasks, as above: on JAX the same shapes reuse the operations compiled there
    meta, tasks = ridge_data(n_tasks=4)
    check_hypergrad(
        RIDGE, solvers.GradientDescent(0.3, 10), fw.tree(meta), Batch(fw.tree(tasks)), Unrolled()
    )


# ------------------------------------------------------------------------ zero inner steps
#
# With K = 0, φ_K = init(θ) = 2θ and F = ½‖φ − y‖² + ½‖θ‖², so every unrolled-family
# strategy returns dF/dθ = 2(2θ − y) + θ = 5θ − 2y (FirstOrder too: the identity steps are
# exact when there are none).


def _negate(w: Array, m: Array, task: Any) -> Array:
    return -w


ZERO_STEP_SOLVERS = [
    solvers.GradientDescent(0.1, 0),
    solvers.GradientDescent(0.1, 0, momentum=0.9),
    ThirdParty("adam", 0.1, 0),
    solvers.UpdateRule(_negate, 0),
]


def _double_init(m: Array, task: Any) -> Array:
    return 2 * m


def _zero_step_inner(w: Array, m: Array, task: Any) -> Array:
    return ((w - m) ** 2).sum()


def _zero_step_outer(w: Array, m: Array, task: Array) -> Array:
    return ((w - task) ** 2).sum() / 2 + (m**2).sum() / 2


ZERO_STEP = Problem(init=_double_init, inner_loss=_zero_step_inner, outer_loss=_zero_step_outer)


@pytest.mark.parametrize("solver", ZERO_STEP_SOLVERS, ids=param_id)
@pytest.mark.parametrize(
    "strategy", [Unrolled(), Truncated(1), FirstOrder(), ForwardMode()], ids=repr
)
def test_zero_step_solvers(fw: Framework, solver: Any, strategy: Any) -> None:
    meta, y = a([1.0, -0.5]), a([0.5, 2.0])
    res = quiet(ZERO_STEP, build(solver, fw), fw.array(meta), fw.array(y), strategy)
    # small integers and halves: 5θ − 2y is exact in float64
    assert_equal(res.grad, 5 * meta - 2 * y)
    assert_equal(res.params, 2 * meta)


# ---------------------------------------------------------------------------- task = None


def _pull_inner(w: Array, m: Array, task: Any) -> Array:
    return ((w - m) ** 2).sum()


def _square_outer(w: Array, m: Array, task: Any) -> Array:
    return (w**2).sum()


TASK_NONE = Problem(init=_zeros_init, inner_loss=_pull_inner, outer_loss=_square_outer)


@pytest.mark.parametrize(
    "strategy", [Unrolled(), FirstOrder(), ForwardMode(), Implicit(solvers.CG())], ids=repr
)
def test_task_none(fw: Framework, strategy: Any) -> None:
    # f = (φ − θ)², lr ¼, φ₀ = 0: φ₁ = θ/2, φ₂ = 3θ/4, ... φ_K = θ(1 − 2^-K); F = φ²
    # Unrolled: dF/dθ = 2φ_K(1 − 2^-K); FirstOrder: 2φ_K · ∂init/∂θ = 0; Implicit (φ* = θ): 2θ
    meta = a([1.0, -3.0])
    steps = 60 if isinstance(strategy, Implicit) else 3
    res = quiet(TASK_NONE, solvers.GradientDescent(0.25, steps), fw.array(meta), None, strategy)
    c = 1 - 2.0**-steps
    expected = {
        Unrolled: 2 * c * c * meta,
        ForwardMode: 2 * c * c * meta,
        FirstOrder: 0 * meta,
        Implicit: 2 * meta,
    }[type(strategy)]
    # dyadic arithmetic (halvings of small integers): exact up to the ulp of 2^-60 in φ_60
    assert_close_typed(res.grad, expected, rtol=1e-15, atol=0)


# ------------------------------------------------------------------ a meta leaf never used

UNUSED_PATHS = [
    (solvers.GradientDescent(0.5, 5), Unrolled()),
    (solvers.GradientDescent(0.5, 5), Truncated(2)),
    (solvers.GradientDescent(0.5, 5), FirstOrder()),
    (solvers.GradientDescent(0.5, 5), ForwardMode()),
    (solvers.GradientDescent(0.5, 60), Implicit(solvers.CG())),
    (solvers.GradientDescent(0.5, 60), Implicit(solvers.Direct())),
    (solvers.Scipy(), Implicit(solvers.CG())),
    pytest.param(solvers.Scipy(), FirstOrder()),
]


def _init_a(m: Tree, task: Any) -> Array:
    return m["a"]


def _unused_inner(w: Array, m: Tree, task: Array) -> Array:
    return ((w - task) ** 2).sum() / 2 + (m["c"] * w).sum()


def _half_square_outer(w: Array, m: Any, task: Any) -> Array:
    return (w**2).sum() / 2


UNUSED = Problem(init=_init_a, inner_loss=_unused_inner, outer_loss=_half_square_outer)


@pytest.mark.parametrize(("solver", "strategy"), UNUSED_PATHS, ids=repr)
def test_unused_meta_leaf_gets_an_exact_zero_gradient(
    fw: Framework, solver: Any, strategy: Any
) -> None:
    meta_np = {
        "a": a([1.0, 2.0]),
        "unused": {"m": a([[1.0, 2.0], [3.0, 4.0]]), "s": a(5.0)},
        "c": a(0.5),
    }
    meta = fw.tree(meta_np)
    res = quiet(UNUSED, solver, meta, fw.array(a([0.0, 0.0])), strategy)
    for leaf, like in zip(
        tree.leaves(res.grad["unused"]), tree.leaves(meta["unused"]), strict=True
    ):
        assert is_array(fw, leaf)  # not None
        assert leaf.shape == like.shape
        assert leaf.dtype == like.dtype
    # exactly zero, in the meta leaves' shapes and dtypes
    assert_equal(res.grad["unused"], tree.map(np.zeros_like, meta_np["unused"]))
    # c is used by every strategy except FirstOrder (steps are constant in θ): φ* = −c and
    # the implicit/unrolled dF/dc is ≈ 2·0.5 = 1 per coordinate, i.e. summed over 2 entries
    if not isinstance(strategy, FirstOrder):
        assert abs(float(res.grad["c"])) > 0.5


# ------------------------------------------------------------------ non-array task leaves


def _identity_init(m: Array, task: Any) -> Array:
    return m


def _scaled_target_inner(w: Array, m: Array, task: Tree) -> Array:
    return ((w - task["k"] * task["y"]) ** 2).sum() / 2


def _half_square_plus_meta_outer(w: Array, m: Array, task: Any) -> Array:
    return (w**2).sum() / 2 + m.sum()


NON_ARRAY_TASK = Problem(
    init=_identity_init, inner_loss=_scaled_target_inner, outer_loss=_half_square_plus_meta_outer
)


@pytest.mark.parametrize("batched", [False, True])
def test_task_with_non_array_leaves(fw: Framework, batched: bool) -> None:
    # f = ½(φ − k·y)², one step of lr 1 from φ₀ = θ lands on φ₁ = k·y; F = ½‖φ‖² + θ·1
    meta = fw.array(a([1.0, 2.0]))
    y = a([[1.0, 0.0], [0.0, 1.0]]) if batched else a([1.0, 0.0])
    task = {"y": fw.array(y), "k": 3, "name": "task"}
    res = hypergrad(
        NON_ARRAY_TASK,
        solvers.GradientDescent(1.0, 1),
        meta,
        Batch(task) if batched else task,
        strategy=Unrolled(),
    )
    # φ₁ does not depend on θ (lr 1 removes φ₀ exactly), so dF/dθ = ∂F/∂θ = 1
    assert_equal(res.grad, a([1.0, 1.0]))
    assert not math.isnan(float(res.value))
