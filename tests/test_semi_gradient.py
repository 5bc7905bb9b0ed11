"""SemiGradient inner losses (TD targets held fixed by the inner gradient only): the
hypergradient of every strategy against closed forms and float64 finite differences.

The scalar case: ℓ(w, w̄) = (1 + s·w̄ − w)², s = sigmoid(θ), so the semi-gradient step of
gradient descent (rate α) is w ← w + 2α(1 + (s − 1)w): a linear recursion with
w_K = b(1 − a^K)/(1 − a), a = 1 + 2α(s − 1), b = 2α, and fixed point w* = 1/(1 − s).
Outer: (w − 5)². Tolerances: the closed forms are evaluated in float64; the strategies compute
the same quantities in another order (≤ 1e-12 relative), Implicit after K = 200 steps has
|a|^K ≈ 1e-40 truncation, and GMRES reports its residual below 1e-12.

Every test runs once per framework (the ``fw`` fixture, ``tests/_frameworks.py``): the data are
drawn in NumPy, the problem functions are written once, and the closed forms (values and
derivatives) are computed in NumPy float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from _frameworks import Framework, assert_close64, numpy, sigmoid, xp
from _generators import randn, rng

from bilevel import (
    Batch,
    ForwardMode,
    Implicit,
    Problem,
    SemiGradient,
    Truncated,
    Unrolled,
    hypergrad,
    solvers,
)
from bilevel.testing import check_hypergrad

LR = 0.25


def _detach(x: Any) -> Any:
    """What a user writes to cut a gradient: ``.detach()`` / ``jax.lax.stop_gradient``."""
    if xp(x) is torch:
        return x.detach()
    import jax

    return jax.lax.stop_gradient(x)


def _td(w: Any, target: Any, m: Any, t: Any) -> Any:
    return (1 + sigmoid(m) * target - w) ** 2


def _problem(inner: Any) -> Problem:
    return Problem(
        init=lambda m, t: xp(m).zeros_like(m),
        inner_loss=inner,
        outer_loss=lambda w, m, t: (w - 5) ** 2,
    )


# Module-level problems: JAX compiles an inner loss once per function object.
SCALAR = _problem(SemiGradient(_td))
DETACHED = _problem(lambda w, m, t: (1 + sigmoid(m) * _detach(w) - w) ** 2)


def _closed_form_unrolled(theta: float, k: int) -> tuple[float, float]:
    """(w_K − 5)² and its derivative in θ, in float64: with 1 − a = 2α(1 − s) = b(1 − s),
    w_K = (1 − a^K)/(1 − s), dw_K/ds = (1 − a^K)/(1 − s)² − 2αK a^(K−1)/(1 − s) (da/ds = 2α),
    ds/dθ = s(1 − s)."""
    s = 1 / (1 + np.exp(-np.float64(theta)))
    a = 1 + 2 * LR * (s - 1)
    w = (1 - a**k) / (1 - s)
    dw_ds = (1 - a**k) / (1 - s) ** 2 - 2 * LR * k * a ** (k - 1) / (1 - s)
    return float((w - 5) ** 2), float(2 * (w - 5) * dw_ds * s * (1 - s))


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("strategy", [Unrolled(), ForwardMode()], ids=["unrolled", "forward"])
def test_unrolled_semi_gradient_matches_the_closed_form(
    fw: Framework, k: int, strategy: Any
) -> None:
    theta = fw.array(np.float64(0.4))
    res = hypergrad(SCALAR, solvers.GradientDescent(LR, k), theta, None, strategy=strategy)
    value, expected = _closed_form_unrolled(0.4, k)
    assert_close64(res.grad, np.float64(expected), rtol=1e-12, atol=1e-14, what="grad")
    assert_close64(res.value, np.float64(value), rtol=1e-12, atol=0, what="value")


def test_detach_inside_the_inner_loss_loses_terms_which_semi_gradient_keeps(fw: Framework) -> None:
    """The trap SemiGradient exists for: .detach() under torch.func (or lax.stop_gradient under
    jax.grad) also cuts the outer path."""
    theta, k = fw.array(np.float64(0.4)), 3
    _, expected = _closed_form_unrolled(0.4, k)
    wrong = hypergrad(DETACHED, solvers.GradientDescent(LR, k), theta, None, strategy=Unrolled())
    assert abs(float(wrong.grad) - expected) > 0.05  # −1.044 against −1.180


def test_implicit_semi_gradient_is_the_fixed_point_derivative(fw: Framework) -> None:
    s = 1 / (1 + np.exp(0.3))  # sigmoid(θ) at θ = −0.3
    w_star = 1 / (1 - s)
    expected = (
        2 * (w_star - 5) * s / (1 - s)
    )  # d/dθ (w* − 5)², dw*/ds = (1 − s)^-2, ds/dθ = s(1 − s)
    theta = fw.array(np.float64(-0.3))
    solver = solvers.GradientDescent(LR, 200)
    for linear in (solvers.GMRES(tol=1e-13), solvers.Direct(), solvers.Neumann(maxiter=400)):
        res = hypergrad(SCALAR, solver, theta, None, strategy=Implicit(linear))
        assert_close64(res.grad, np.float64(expected), rtol=1e-10, atol=1e-12, what=repr(linear))
    with pytest.raises(ValueError, match=r"or of a SemiGradient\) is not symmetric"):
        hypergrad(SCALAR, solver, theta, None, strategy=Implicit(solvers.CG()))


def _linear_td(w: Any, target: Any, m: Any, task: Any) -> Any:
    x, x_next, r = task["x"], task["x_next"], task["r"]
    gamma = sigmoid(x @ m)
    return 0.5 * ((r + gamma * (x_next @ target) - x @ w) ** 2).mean()


def _linear_td_outer(w: Any, m: Any, task: Any) -> Any:
    return 0.5 * ((task["mc"] - task["x"] @ w) ** 2).mean()


# TD(0) with a linear value function v(x) = w·x and a per-state discount γ(θ) = sigmoid(θ).
LINEAR_TD = Problem(
    init=lambda m, t: 0.1 * t["x"][0],
    inner_loss=SemiGradient(_linear_td),
    outer_loss=_linear_td_outer,
)
TD_META = np.array([0.2, -0.1, 0.3])


def _td_task(seed: int, n: int = 6, d: int = 3) -> dict[str, np.ndarray[Any, Any]]:
    g = rng(seed)
    x = randn(g, n, d)
    return {"x": x, "x_next": np.roll(x, -1, 0), "r": randn(g, n), "mc": randn(g, n)}


@pytest.mark.parametrize("strategy", [Unrolled(), Truncated(2), ForwardMode()], ids=str)
def test_linear_td_hypergradient_matches_finite_differences(fw: Framework, strategy: Any) -> None:
    meta, task = fw.array(TD_META), fw.tree(_td_task(0))
    check_hypergrad(LINEAR_TD, solvers.GradientDescent(0.3, 5), meta, task, strategy=strategy)


def test_linear_td_batch_equals_the_mean_of_tasks(fw: Framework) -> None:
    solver = solvers.GradientDescent(0.3, 5)
    meta = fw.array(TD_META)
    tasks = [_td_task(s) for s in range(3)]
    batch = Batch(fw.tree({k: np.stack([t[k] for t in tasks]) for k in tasks[0]}))
    res = hypergrad(LINEAR_TD, solver, meta, batch, strategy=Unrolled())
    each = [
        numpy(hypergrad(LINEAR_TD, solver, meta, fw.tree(t), strategy=Unrolled()).grad)
        for t in tasks
    ]
    assert_close64(res.grad, np.stack(each).mean(0), rtol=1e-12, atol=1e-14)


def test_semi_gradient_is_validated_and_refused_by_scipy(fw: Framework) -> None:
    with pytest.raises(TypeError, match=r"SemiGradient: loss must accept 4 positional arguments"):
        SemiGradient(lambda w, m, t: w)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"SemiGradient inner loss has no minimiser"):
        hypergrad(
            SCALAR,
            solvers.Scipy("BFGS"),
            fw.array(np.float64(0.0)),
            None,
            strategy=Implicit(solvers.GMRES()),
        )
