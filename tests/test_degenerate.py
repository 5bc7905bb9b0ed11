"""Degenerate and awkward inputs, each checked against numbers.

Numbers come from closed forms worked out in the comments, or from float64 central finite
differences of exactly the map each strategy claims to differentiate
(:func:`bilevel.testing.check_hypergrad`, whose default tolerance ``rtol = 1e-6`` is derived in
its module docstring: truncation ``h²/6·|F'''|`` plus cancellation ``u·|F|/h`` with
``h = 1e-5``, ``u = 1.1e-16``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
import torchopt

import solvers
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
    tree,
)
from bilevel.testing import check_hypergrad

D = torch.float64


def t(x: Any, dtype: torch.dtype = D) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def quiet(problem: Problem, solver: Any, meta: Any, task: Any, strategy: Any) -> Any:
    """hypergrad, failing the test on any bilevel warning (a clean run is part of the claim)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        return hypergrad(problem, solver, meta, task, strategy=strategy)


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


def scalar_problem() -> Problem:
    return Problem(
        init=lambda m, task: m["theta"],
        inner_loss=lambda w, m, task: (w - m["theta"]) ** 2 / 2 + m["lam"] * w**2 / 2,
        outer_loss=lambda w, m, task: (w - task) ** 2 / 2,
    )


def scalar_meta() -> dict[str, torch.Tensor]:
    return {"theta": t(THETA), "lam": t(LAM)}


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
def test_scalar_meta_gets_the_closed_form_gradient(strategy: Any) -> None:
    res = quiet(scalar_problem(), solvers.GradientDescent(ALPHA, K), scalar_meta(), t(Y), strategy)
    g = res.grad["theta"]
    assert g.shape == ()
    assert g.dtype == D
    assert res.params.shape == ()
    expected = _closed_form_theta_grad(strategy, K)
    # the closed forms are O(0.1) here: a scalar hypergradient reported as zero fails loudly
    assert abs(expected) > 0.1
    # the library and the closed form differ only by float64 rounding over K = 12 steps
    # (a few ulps per step): rtol 1e-12 leaves three orders of magnitude
    assert g.item() == pytest.approx(expected, rel=1e-12)


def test_scalar_meta_implicit_closed_form_for_both_scalars() -> None:
    # 60 steps with |r| = 0.4: the inner error is 0.4^60 ≈ 1e-24, below float64 resolution
    res = quiet(
        scalar_problem(),
        solvers.GradientDescent(ALPHA, 60),
        scalar_meta(),
        t(Y),
        Implicit(solvers.CG()),
    )
    phi = THETA / (1 + LAM)
    slope = phi - Y
    assert res.params.item() == pytest.approx(phi, rel=1e-14)  # φ* to float64 resolution
    # 1-d system: CG is exact after one iteration; only rounding remains (rtol 1e-12)
    assert res.grad["theta"].item() == pytest.approx(slope / (1 + LAM), rel=1e-12)
    assert res.grad["lam"].item() == pytest.approx(-slope * THETA / (1 + LAM) ** 2, rel=1e-12)
    # both nonzero: a regulariser strength λ as a 0-d meta-parameter is learnable
    assert abs(res.grad["lam"].item()) > 0.1


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
def test_scalar_meta_and_params_against_finite_differences(strategy: Any) -> None:
    steps = 40 if isinstance(strategy, Implicit) else K  # Implicit: inner error 0.4^40 ≈ 1e-16
    report = check_hypergrad(
        scalar_problem(), solvers.GradientDescent(ALPHA, steps), scalar_meta(), t(Y), strategy
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
    g = torch.Generator().manual_seed(1)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g, dtype=D)

    return {"s": r(), "v": r(3), "nest": [r(2, 3, 1), (r(1), {"z": r()})]}


def mixed_problem() -> Problem:
    """Strongly convex inner loss coupling every leaf; a nonlinear outer loss."""

    def inner(w: Any, m: Any, task: Any) -> Any:
        diffs = tree.leaves(tree.sub(w, m))
        total = sum(x.sum() for x in tree.leaves(w))
        quartic = sum((x**4).sum() for x in tree.leaves(w))
        return sum((d**2).sum() for d in diffs) / 2 + 0.05 * total**2 + 0.02 * quartic

    def outer(w: Any, m: Any, task: Any) -> Any:
        ws = tree.leaves(w)
        return sum((torch.sin(x) * task).sum() for x in ws) + 0.1 * m["s"] ** 2

    return Problem(init=lambda m, task: m, inner_loss=inner, outer_loss=outer)


@pytest.mark.parametrize(
    "strategy",
    [Unrolled(), Truncated(1), FirstOrder(), ForwardMode(), Implicit(solvers.CG())],
    ids=repr,
)
def test_mixed_shapes_in_nested_containers(strategy: Any) -> None:
    meta = mixed_meta()
    # Implicit needs the inner solution to ~1e-12 (check_hypergrad's docstring): the Hessian
    # I + 0.1·11ᵀ + diag(0.24 φ²) has eigenvalues in [1, ~3.2], so lr 0.45 contracts by
    # ≤ 0.55 per step and 0.55^50 ≈ 1e-13 (observed stationarity ≈ 4e-16)
    steps = 50 if isinstance(strategy, Implicit) else 2
    solver = solvers.GradientDescent(0.45, steps)
    task = t(0.7)
    res = hypergrad(mixed_problem(), solver, meta, task, strategy=strategy)
    # 12 coordinates in all; four random directions each mix all of them (a dense unit
    # vector), at a third of the cost of coordinate-wise differences
    check_hypergrad(mixed_problem(), solver, meta, task, strategy, max_coordinates=0, directions=4)
    assert sum(x.numel() for x in tree.leaves(meta)) == 1 + 3 + 6 + 1 + 1
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


def identity_hessian_problem() -> Problem:
    return Problem(
        init=lambda m, task: torch.zeros_like(m),
        inner_loss=lambda w, m, task: 2.0 * ((w - m) ** 2).sum(),
        outer_loss=lambda w, m, task: ((w - task) ** 2).sum() / 2,
    )


@pytest.mark.parametrize(
    "linear", [solvers.CG(maxiter=1), solvers.Neumann(maxiter=1, alpha=0.25)], ids=repr
)
def test_linear_system_converging_at_the_first_iteration(linear: Any) -> None:
    meta, y = t([1.0, -2.0, 0.5]), t([0.25, 0.0, 3.0])
    res = quiet(
        identity_hessian_problem(), solvers.GradientDescent(0.25, 1), meta, y, Implicit(linear)
    )
    info = res.info.linear
    assert info is not None
    assert info.iterations == 1
    assert info.converged is True
    assert info.residual <= 1e-15  # x = b/4 is exact for these dyadic numbers
    assert res.info.stationarity == 0.0  # one step of lr 1/4 lands exactly on φ* = θ
    # CG's step α = bᵀb / (4 bᵀb) is one division: at most an ulp away from 1/4
    torch.testing.assert_close(res.grad, meta - y, rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    "linear",
    [solvers.CG(), solvers.Neumann(), solvers.MINRES(), solvers.GMRES(), solvers.Direct()],
    ids=repr,
)
def test_zero_right_hand_side(linear: Any) -> None:
    # F = ‖θ‖² does not depend on φ, so ∇_φF = 0 and the system is A v = 0: v = 0, g = 2θ
    problem = Problem(
        init=lambda m, task: torch.zeros_like(m),
        inner_loss=lambda w, m, task: 2.0 * ((w - m) ** 2).sum(),
        outer_loss=lambda w, m, task: (m**2).sum(),
    )
    meta = t([1.0, 2.0, 3.0])
    res = quiet(problem, solvers.GradientDescent(0.25, 1), meta, None, Implicit(linear))
    assert res.info.linear is not None
    assert res.info.linear.converged is True
    assert res.info.linear.residual == 0.0  # x = 0 solves A x = 0 exactly
    assert torch.equal(res.grad, 2 * meta)  # 2θ: one exact multiplication


# ------------------------------------------------------------------ indefinite inner Hessian
#
# f = ½φᵀAφ − φᵀθ with A symmetric and indefinite: ∇f = Aφ − θ vanishes at the saddle
# φ* = A⁻¹θ, which init computes directly (no descent method converges to a saddle).
# F = ½‖φ − y‖², so dF/dθ = A⁻ᵀ(φ* − y) = A⁻¹(φ* − y).

A_INDEF = t([[2.0, 0.5, 0.0], [0.5, -1.0, 0.3], [0.0, 0.3, 3.0]])
THETA_3, Y_3 = t([0.3, 0.4, -0.5]), t([0.2, -3.0, 0.1])


def saddle_problem() -> Problem:
    return Problem(
        init=lambda m, task: torch.linalg.solve(A_INDEF, m),
        inner_loss=lambda w, m, task: w @ A_INDEF @ w / 2 - w @ m,
        outer_loss=lambda w, m, task: ((w - task) ** 2).sum() / 2,
    )


def saddle_closed_form() -> torch.Tensor:
    phi = torch.linalg.solve(A_INDEF, THETA_3)
    return torch.linalg.solve(A_INDEF, phi - Y_3)


def test_saddle_setup_is_indefinite() -> None:
    eigenvalues = torch.linalg.eigvalsh(A_INDEF)
    assert eigenvalues[0] < -1 and eigenvalues[-1] > 1
    # ∇_φF = φ* − y points mostly along the negative direction, so CG meets pᵀAp < 0 at once
    b = torch.linalg.solve(A_INDEF, THETA_3) - Y_3
    assert b @ A_INDEF @ b < 0


@pytest.mark.parametrize("steps", [0, 5])
def test_minres_solves_the_indefinite_system(steps: int) -> None:
    res = quiet(
        saddle_problem(),
        solvers.GradientDescent(0.1, steps),
        THETA_3,
        Y_3,
        Implicit(solvers.MINRES()),
    )
    assert res.info.stationarity is not None
    assert res.info.stationarity < 1e-14  # init is the saddle to rounding; steps stay there
    assert res.info.linear is not None
    assert res.info.linear.converged is True
    # MINRES stops at relative residual 1e-10; κ(A) ≈ 3 turns that into ≲ 3e-10 in v
    torch.testing.assert_close(res.grad, saddle_closed_form(), rtol=1e-9, atol=1e-12)


def test_direct_solves_the_indefinite_system_and_reports_it() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = hypergrad(
            saddle_problem(),
            solvers.GradientDescent(0.1, 0),
            THETA_3,
            Y_3,
            strategy=Implicit(solvers.Direct()),
        )
    # a dense LU solve of a 3×3 system with κ ≈ 3: error of a few ulps (rtol 1e-12)
    torch.testing.assert_close(res.grad, saddle_closed_form(), rtol=1e-12, atol=1e-14)
    assert res.info.linear is not None
    assert res.info.linear.converged is True
    # Direct documents that it reports a negative eigenvalue of a symmetric operator
    assert res.info.linear.negative_curvature is True
    assert any(issubclass(w.category, LinearSolveWarning) for w in caught)


def test_direct_warning_does_not_tell_a_direct_user_to_use_direct() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hypergrad(
            saddle_problem(),
            solvers.GradientDescent(0.1, 0),
            THETA_3,
            Y_3,
            strategy=Implicit(solvers.Direct()),
        )
    messages = [str(w.message) for w in caught if issubclass(w.category, LinearSolveWarning)]
    assert messages
    assert not any("or Direct" in m for m in messages)


def test_unrolled_through_the_saddle_init_matches_the_closed_form() -> None:
    # with no steps, φ_K = init(θ) = A⁻¹θ: Unrolled differentiates the same solution map
    res = quiet(saddle_problem(), solvers.GradientDescent(0.1, 0), THETA_3, Y_3, Unrolled())
    torch.testing.assert_close(res.grad, saddle_closed_form(), rtol=1e-12, atol=1e-14)


def test_cg_reports_negative_curvature_on_the_indefinite_system() -> None:
    with pytest.warns(LinearSolveWarning, match=r"negative curvature.*MINRES"):
        res = hypergrad(
            saddle_problem(),
            solvers.GradientDescent(0.1, 0),
            THETA_3,
            Y_3,
            strategy=Implicit(solvers.CG()),
        )
    assert res.info.linear is not None
    assert res.info.linear.negative_curvature is True
    assert res.info.linear.converged is False


# ------------------------------------------------------------------------------ float32


def ridge_problem() -> Problem:
    """iMAML-style: a ridge fit on support data pulled towards meta weights, scored on query."""

    def inner(p: Any, m: Any, task: Any) -> Any:
        fit = ((task["x"] @ p["w"] + p["b"] - task["y"]) ** 2).mean() / 2
        return fit + torch.exp(m["log_lam"]) * ((p["w"] - m["w0"]) ** 2).sum() / 2

    def outer(p: Any, m: Any, task: Any) -> Any:
        return ((task["xq"] @ p["w"] + p["b"] - task["yq"]) ** 2).mean() / 2

    return Problem(
        init=lambda m, task: {"w": m["w0"], "b": m["b0"]}, inner_loss=inner, outer_loss=outer
    )


def ridge_data(n_tasks: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    lead = () if n_tasks is None else (n_tasks,)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g, dtype=D)

    task = {"x": r(*lead, 8, 3), "y": r(*lead, 8), "xq": r(*lead, 8, 3), "yq": r(*lead, 8)}
    meta = {"w0": r(3), "b0": t(0.1), "log_lam": t(0.0)}
    return meta, task


FLOAT32_CASES = [
    (solvers.GradientDescent(0.3, 10), Unrolled()),
    (solvers.GradientDescent(0.3, 10), Truncated(3)),
    (solvers.GradientDescent(0.3, 10), FirstOrder()),
    (solvers.GradientDescent(0.3, 10), ForwardMode()),
    (solvers.Optimizer(torchopt.sgd(0.3), 10), Unrolled()),
    # float32 cannot reach CG's default relative residual 1e-10 in general; 1e-6 is ~20 ulps
    (solvers.GradientDescent(0.3, 60), Implicit(solvers.CG(tol=1e-6))),
]


@pytest.mark.parametrize(("solver", "strategy"), FLOAT32_CASES, ids=repr)
def test_float32_matches_float64(solver: Any, strategy: Any) -> None:
    meta64, task64 = ridge_data()
    to32 = lambda x: x.float()  # noqa: E731
    meta32, task32 = tree.map(to32, meta64), tree.map(to32, task64)
    r64 = quiet(ridge_problem(), solver, meta64, task64, strategy)
    r32 = quiet(ridge_problem(), solver, meta32, task32, strategy)
    # float32 in, float32 out: nothing silently promoted
    assert r32.value.dtype == torch.float32
    assert all(x.dtype == torch.float32 for x in tree.leaves(r32.grad))
    assert all(x.dtype == torch.float32 for x in tree.leaves(r32.params))
    scale = max(x.abs().max().item() for x in tree.leaves(r64.grad))
    worst = max(
        (a.double() - b).abs().max().item()
        for a, b in zip(tree.leaves(r32.grad), tree.leaves(r64.grad), strict=True)
    )
    # Why 1e-5: float32's unit roundoff is u = 2^-24 ≈ 6e-8. Every hypergradient entry is a
    # sum over 8 samples and 3 features per step, for ≤ 10 unrolled steps (or one solve
    # at a stationary point of a well-conditioned, κ ≈ 3, inner problem), and the inner map
    # is a contraction, so rounding errors do not grow from step to step: the error is
    # bounded by O(steps · terms · u) ≈ 10 · 16 · 6e-8 ≈ 1e-5 relative to the gradient's
    # scale (observed: a few 1e-7).
    assert worst <= 1e-5 * scale
    assert abs(r32.value.item() - r64.value.item()) <= 1e-5 * abs(r64.value.item())


# --------------------------------------------------------------------- one task and batches

VECTORISED = [
    (solvers.GradientDescent(0.3, 5), Unrolled()),
    (solvers.GradientDescent(0.3, 5), FirstOrder()),
    (solvers.GradientDescent(0.3, 5), Truncated(2)),
    (solvers.GradientDescent(0.3, 5), ForwardMode()),
]
LOOPED = [
    (solvers.Scipy(), Implicit(solvers.CG())),
    # the ridge Hessian has eigenvalues in [1, ~3]: lr 0.3 contracts by ≤ 0.7 per step and
    # 0.7^60 ≈ 5e-10, well inside stationarity_tol
    (solvers.GradientDescent(0.3, 60), Implicit(solvers.CG())),
]


@pytest.mark.parametrize(("solver", "strategy"), VECTORISED + LOOPED, ids=repr)
def test_batch_of_one_equals_the_single_task_call(solver: Any, strategy: Any) -> None:
    meta, tasks = ridge_data(n_tasks=1)
    single = quiet(ridge_problem(), solver, meta, tree.map(lambda x: x[0], tasks), strategy)
    batched = quiet(ridge_problem(), solver, meta, Batch(tasks), strategy)
    # same arithmetic task by task; vmap may reorder reductions: rtol 1e-12 in float64
    torch.testing.assert_close(batched.value, single.value, rtol=1e-12, atol=0)
    torch.testing.assert_close(batched.grad, single.grad, rtol=1e-12, atol=1e-15)
    assert batched.params["w"].shape == (1, 3)
    assert batched.params["b"].shape == (1,)
    torch.testing.assert_close(
        tree.map(lambda x: x[0], batched.params), single.params, rtol=1e-12, atol=1e-15
    )
    assert single.params["w"].shape == (3,)  # a single task has no task axis
    assert len(batched.task_info) == 1
    assert len(single.task_info) == 1


@pytest.mark.parametrize(
    ("solver", "strategy", "vectorised"),
    [(s, st, True) for s, st in VECTORISED] + [(s, st, False) for s, st in LOOPED],
    ids=repr,
)
def test_batch_equals_the_mean_of_single_task_calls(
    solver: Any, strategy: Any, vectorised: bool
) -> None:
    n = 4
    meta, tasks = ridge_data(n_tasks=n)
    # the path under test: vmap for the unrolled family, a Python loop for Implicit/Scipy
    assert strategy.vectorizable(solver) is vectorised
    singles = [
        quiet(ridge_problem(), solver, meta, tree.map(lambda x, i=i: x[i], tasks), strategy)
        for i in range(n)
    ]
    batched = quiet(ridge_problem(), solver, meta, Batch(tasks), strategy)
    mean_grad = tree.map(lambda *gs: sum(gs) / n, *(s.grad for s in singles))
    mean_value = sum(s.value for s in singles) / n
    # float64, the same per-task arithmetic; only the order of the final mean may differ
    torch.testing.assert_close(batched.grad, mean_grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(batched.value, mean_value, rtol=1e-12, atol=0)
    # params carry a leading task axis, task i's row being task i's own solution
    assert batched.params["w"].shape == (n, 3)
    assert batched.params["b"].shape == (n,)
    for i, s in enumerate(singles):
        torch.testing.assert_close(
            tree.map(lambda x, i=i: x[i], batched.params), s.params, rtol=1e-12, atol=1e-15
        )
    assert len(batched.task_info) == n
    # the tasks differ, so a batch that silently reused task 0 would fail here
    assert not torch.allclose(singles[0].grad["w0"], singles[1].grad["w0"])


def test_batch_gradient_against_finite_differences_of_the_mean() -> None:
    meta, tasks = ridge_data(n_tasks=3)
    check_hypergrad(
        ridge_problem(), solvers.GradientDescent(0.3, 10), meta, Batch(tasks), Unrolled()
    )


# ------------------------------------------------------------------------ zero inner steps
#
# With K = 0, φ_K = init(θ) = 2θ and F = ½‖φ − y‖² + ½‖θ‖², so every unrolled-family
# strategy returns dF/dθ = 2(2θ − y) + θ = 5θ − 2y (FirstOrder too: the identity steps are
# exact when there are none).

ZERO_STEP_SOLVERS = [
    solvers.GradientDescent(0.1, 0),
    solvers.GradientDescent(0.1, 0, momentum=0.9),
    solvers.Optimizer(torchopt.adam(0.1), 0),
    solvers.UpdateRule(lambda w, m, task: -w, 0),
]


@pytest.mark.parametrize("solver", ZERO_STEP_SOLVERS, ids=repr)
@pytest.mark.parametrize(
    "strategy", [Unrolled(), Truncated(1), FirstOrder(), ForwardMode()], ids=repr
)
def test_zero_step_solvers(solver: Any, strategy: Any) -> None:
    problem = Problem(
        init=lambda m, task: 2 * m,
        inner_loss=lambda w, m, task: ((w - m) ** 2).sum(),
        outer_loss=lambda w, m, task: ((w - task) ** 2).sum() / 2 + (m**2).sum() / 2,
    )
    meta, y = t([1.0, -0.5]), t([0.5, 2.0])
    res = quiet(problem, solver, meta, y, strategy)
    # small integers and halves: 5θ − 2y is exact in float64
    assert torch.equal(res.grad, 5 * meta - 2 * y)
    assert torch.equal(res.params, 2 * meta)


# ---------------------------------------------------------------------------- task = None


@pytest.mark.parametrize(
    "strategy", [Unrolled(), FirstOrder(), ForwardMode(), Implicit(solvers.CG())], ids=repr
)
def test_task_none(strategy: Any) -> None:
    # f = (φ − θ)², lr ¼, φ₀ = 0: φ₁ = θ/2, φ₂ = 3θ/4, ... φ_K = θ(1 − 2^-K); F = φ²
    # Unrolled: dF/dθ = 2φ_K(1 − 2^-K); FirstOrder: 2φ_K · ∂init/∂θ = 0; Implicit (φ* = θ): 2θ
    problem = Problem(
        init=lambda m, task: torch.zeros_like(m),
        inner_loss=lambda w, m, task: ((w - m) ** 2).sum(),
        outer_loss=lambda w, m, task: (w**2).sum(),
    )
    meta = t([1.0, -3.0])
    steps = 60 if isinstance(strategy, Implicit) else 3
    res = quiet(problem, solvers.GradientDescent(0.25, steps), meta, None, strategy)
    c = 1 - 2.0**-steps
    expected = {
        Unrolled: 2 * c * c * meta,
        ForwardMode: 2 * c * c * meta,
        FirstOrder: 0 * meta,
        Implicit: 2 * meta,
    }[type(strategy)]
    # dyadic arithmetic (halvings of small integers): exact up to the ulp of 2^-60 in φ_60
    torch.testing.assert_close(res.grad, expected, rtol=1e-15, atol=0)


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


@pytest.mark.parametrize(("solver", "strategy"), UNUSED_PATHS, ids=repr)
def test_unused_meta_leaf_gets_an_exact_zero_gradient(solver: Any, strategy: Any) -> None:
    problem = Problem(
        init=lambda m, task: m["a"],
        inner_loss=lambda w, m, task: ((w - task) ** 2).sum() / 2 + (m["c"] * w).sum(),
        outer_loss=lambda w, m, task: (w**2).sum() / 2,
    )
    meta = {
        "a": t([1.0, 2.0]),
        "unused": {"m": t([[1.0, 2.0], [3.0, 4.0]]), "s": t(5.0)},
        "c": t(0.5),
    }
    res = quiet(problem, solver, meta, t([0.0, 0.0]), strategy)
    for leaf, like in zip(
        tree.leaves(res.grad["unused"]), tree.leaves(meta["unused"]), strict=True
    ):
        assert isinstance(leaf, torch.Tensor)  # not None
        assert leaf.shape == like.shape
        assert leaf.dtype == like.dtype
        assert torch.equal(leaf, torch.zeros_like(like))  # exactly zero
    # c is used by every strategy except FirstOrder (steps are constant in θ): φ* = −c and
    # the implicit/unrolled dF/dc is ≈ 2·0.5 = 1 per coordinate, i.e. summed over 2 entries
    if not isinstance(strategy, FirstOrder):
        assert abs(res.grad["c"].item()) > 0.5


# ------------------------------------------------------------------ non-array task leaves


@pytest.mark.parametrize("batched", [False, True])
def test_task_with_non_array_leaves(batched: bool) -> None:
    # f = ½(φ − k·y)², one step of lr 1 from φ₀ = θ lands on φ₁ = k·y; F = ½‖φ‖² + θ·1
    problem = Problem(
        init=lambda m, task: m,
        inner_loss=lambda w, m, task: ((w - task["k"] * task["y"]) ** 2).sum() / 2,
        outer_loss=lambda w, m, task: (w**2).sum() / 2 + m.sum(),
    )
    meta = t([1.0, 2.0])
    y = t([[1.0, 0.0], [0.0, 1.0]]) if batched else t([1.0, 0.0])
    task = {"y": y, "k": 3, "name": "task"}
    res = hypergrad(
        problem,
        solvers.GradientDescent(1.0, 1),
        meta,
        Batch(task) if batched else task,
        strategy=Unrolled(),
    )
    # φ₁ does not depend on θ (lr 1 removes φ₀ exactly), so dF/dθ = ∂F/∂θ = 1
    assert torch.equal(res.grad, t([1.0, 1.0]))
    assert not math.isnan(res.value.item())
