"""SemiGradient inner losses (TD targets held fixed by the inner gradient only): the
hypergradient of every strategy against closed forms and float64 finite differences.

The scalar case: ℓ(w, w̄) = (1 + s·w̄ − w)², s = sigmoid(θ), so the semi-gradient step of
gradient descent (rate α) is w ← w + 2α(1 + (s − 1)w): a linear recursion with
w_K = b(1 − a^K)/(1 − a), a = 1 + 2α(s − 1), b = 2α, and fixed point w* = 1/(1 − s).
Outer: (w − 5)². Tolerances: the closed forms are evaluated in float64; the strategies compute
the same quantities in another order (≤ 1e-12 relative), Implicit after K = 200 steps has
|a|^K ≈ 1e-40 truncation, and GMRES reports its residual below 1e-12.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import solvers
from bilevel import (
    Batch,
    ForwardMode,
    Implicit,
    Problem,
    SemiGradient,
    Truncated,
    Unrolled,
    hypergrad,
)
from bilevel.testing import check_hypergrad

F64 = torch.float64
LR = 0.25


def _td(w: torch.Tensor, target: torch.Tensor, m: torch.Tensor, t: Any) -> torch.Tensor:
    return (1 + torch.sigmoid(m) * target - w) ** 2


def _problem(inner: Any) -> Problem:
    return Problem(
        init=lambda m, t: torch.zeros((), dtype=F64),
        inner_loss=inner,
        outer_loss=lambda w, m, t: (w - 5) ** 2,
    )


def _closed_form_unrolled(theta: torch.Tensor, k: int) -> torch.Tensor:
    s = torch.sigmoid(theta)
    a, b = 1 + 2 * LR * (s - 1), 2 * LR
    return (b * (1 - a**k) / (1 - a) - 5) ** 2


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("strategy", [Unrolled(), ForwardMode()], ids=["unrolled", "forward"])
def test_unrolled_semi_gradient_matches_the_closed_form(k: int, strategy: Any) -> None:
    theta = torch.tensor(0.4, dtype=F64)
    res = hypergrad(
        _problem(SemiGradient(_td)), solvers.GradientDescent(LR, k), theta, None, strategy=strategy
    )
    t = theta.clone().requires_grad_()
    (expected,) = torch.autograd.grad(_closed_form_unrolled(t, k), t)
    torch.testing.assert_close(res.grad, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(res.value, _closed_form_unrolled(theta, k), rtol=1e-12, atol=0)


def test_detach_inside_the_inner_loss_loses_terms_which_semi_gradient_keeps() -> None:
    """The trap SemiGradient exists for: .detach() under torch.func also cuts the outer path."""
    theta, k = torch.tensor(0.4, dtype=F64), 3
    t = theta.clone().requires_grad_()
    (expected,) = torch.autograd.grad(_closed_form_unrolled(t, k), t)
    detached = _problem(lambda w, m, t: (1 + torch.sigmoid(m) * w.detach() - w) ** 2)
    wrong = hypergrad(detached, solvers.GradientDescent(LR, k), theta, None, strategy=Unrolled())
    assert abs(float(wrong.grad - expected)) > 0.05  # −1.044 against −1.180


def test_implicit_semi_gradient_is_the_fixed_point_derivative() -> None:
    theta = torch.tensor(-0.3, dtype=F64)
    s = torch.sigmoid(theta)
    w_star = 1 / (1 - s)
    expected = (
        2 * (w_star - 5) * s / (1 - s)
    )  # d/dθ (w* − 5)², dw*/ds = (1 − s)^-2, ds/dθ = s(1 − s)
    problem, solver = _problem(SemiGradient(_td)), solvers.GradientDescent(LR, 200)
    for linear in (solvers.GMRES(tol=1e-13), solvers.Direct(), solvers.Neumann(maxiter=400)):
        res = hypergrad(problem, solver, theta, None, strategy=Implicit(linear))
        torch.testing.assert_close(res.grad, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"or of a SemiGradient\) is not symmetric"):
        hypergrad(problem, solver, theta, None, strategy=Implicit(solvers.CG()))


def _linear_td_problem() -> Problem:
    """TD(0) with a linear value function v(x) = w·x and a per-state discount γ(θ) = sigmoid(θ)."""

    def td(w: torch.Tensor, target: torch.Tensor, m: torch.Tensor, task: Any) -> torch.Tensor:
        x, x_next, r = task["x"], task["x_next"], task["r"]
        gamma = torch.sigmoid(x @ m)
        return 0.5 * ((r + gamma * (x_next @ target) - x @ w) ** 2).mean()

    def outer(w: torch.Tensor, m: torch.Tensor, task: Any) -> torch.Tensor:
        return 0.5 * ((task["mc"] - task["x"] @ w) ** 2).mean()

    return Problem(init=lambda m, t: 0.1 * t["x"][0], inner_loss=SemiGradient(td), outer_loss=outer)


def _td_task(seed: int, n: int = 6, d: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    return {
        "x": x,
        "x_next": torch.roll(x, -1, 0),
        "r": torch.randn(n, generator=g, dtype=F64),
        "mc": torch.randn(n, generator=g, dtype=F64),
    }


@pytest.mark.parametrize("strategy", [Unrolled(), Truncated(2), ForwardMode()], ids=str)
def test_linear_td_hypergradient_matches_finite_differences(strategy: Any) -> None:
    meta = torch.tensor([0.2, -0.1, 0.3], dtype=F64)
    check_hypergrad(
        _linear_td_problem(), solvers.GradientDescent(0.3, 5), meta, _td_task(0), strategy=strategy
    )


def test_linear_td_batch_equals_the_mean_of_tasks() -> None:
    problem, solver = _linear_td_problem(), solvers.GradientDescent(0.3, 5)
    meta = torch.tensor([0.2, -0.1, 0.3], dtype=F64)
    tasks = [_td_task(s) for s in range(3)]
    batch = Batch({k: torch.stack([t[k] for t in tasks]) for k in tasks[0]})
    res = hypergrad(problem, solver, meta, batch, strategy=Unrolled())
    each = [hypergrad(problem, solver, meta, t, strategy=Unrolled()).grad for t in tasks]
    torch.testing.assert_close(res.grad, torch.stack(each).mean(0), rtol=1e-12, atol=1e-14)


def test_semi_gradient_is_validated_and_refused_by_scipy() -> None:
    with pytest.raises(TypeError, match=r"SemiGradient: loss must accept 4 positional arguments"):
        SemiGradient(lambda w, m, t: w)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"SemiGradient inner loss has no minimiser"):
        hypergrad(
            _problem(SemiGradient(_td)),
            solvers.Scipy("BFGS"),
            torch.tensor(0.0, dtype=F64),
            None,
            strategy=Implicit(solvers.GMRES()),
        )
