"""``Implicit`` on a Problem without an inner loss differentiates the fixed point of any
iterative solver, also one that keeps state besides φ (heavy-ball momentum): its residual is the
step of the solver restarted at φ, ``G(φ, θ) = φ − params(step(init(φ), θ))``.

Before (issue 10) such a solver was refused with a TypeError ("keeps state besides the
parameters"). A ``GradientDescent(momentum > 0)`` needs an inner loss to take gradients of, and
with one ``Implicit`` uses stationarity instead; so the solver here is heavy ball on a linear
fixed-point equation with no loss, ``v ← μ v + η (b(θ) − M φ)``, ``φ ← φ + v``, whose fixed
point ``φ* = M⁻¹ b(θ)`` is known in closed form.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from _frameworks import Framework

from bilevel import Implicit, Problem, Unrolled, hypergrad, solvers, tree

D = torch.float64
M = np.array([[2.0, 0.5, 0.0], [-0.3, 1.5, 0.2], [0.1, 0.0, 1.0]])  # not symmetric, eig > 0
C = np.array([0.3, -0.2, 0.7])
THETA = np.array([0.8, -0.4, 1.3])


def b_np(theta: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.array([theta[0] ** 2, np.sin(theta[1]), theta[0] * theta[2]])


def b_torch(theta: torch.Tensor) -> torch.Tensor:
    return torch.stack([theta[0] ** 2, torch.sin(theta[1]), theta[0] * theta[2]])


class HeavyBallRule:
    """Heavy ball on ``M φ = b(θ)``: the state is ``(φ, v)``, and there is no inner loss."""

    steps = 300
    vectorizable = True
    mu, eta = 0.3, 0.4

    def __repr__(self) -> str:
        return "HeavyBallRule()"

    def init(self, params: Any, objective: Any) -> Any:
        return params, objective.backend.zeros_like(params)

    def step(self, state: Any, objective: Any) -> Any:
        params, velocity = state
        m = torch.tensor(M, dtype=D)
        pull = b_torch(objective.meta) - m @ params
        velocity = tree.axpy(self.mu, velocity, self.eta * pull)
        return tree.add(params, velocity), velocity

    def params(self, state: Any) -> Any:
        return state[0]


PROBLEM = Problem(
    init=lambda m, t: torch.zeros(3, dtype=D),
    outer_loss=lambda w, m, t: ((w - torch.tensor(C, dtype=D)) ** 2).sum() + (m**2).sum() / 2,
)


def outer_at_fixed_point(theta: np.ndarray[Any, Any]) -> float:
    """F(φ*(θ), θ) with φ* the limit of the heavy-ball map, iterated in NumPy to rest."""
    phi, v = np.zeros(3), np.zeros(3)
    for _ in range(2000):
        v = HeavyBallRule.mu * v + HeavyBallRule.eta * (b_np(theta) - M @ phi)
        phi = phi + v
    return float(((phi - C) ** 2).sum() + (theta**2).sum() / 2)


def test_implicit_fixed_point_of_heavy_ball_equals_closed_form_and_finite_differences() -> None:
    res = hypergrad(
        PROBLEM,
        HeavyBallRule(),
        torch.tensor(THETA, dtype=D),
        None,
        strategy=Implicit(solvers.GMRES(tol=1e-13)),
    )
    phi = np.linalg.solve(M, b_np(THETA))
    # the forward solve reached the closed-form fixed point (300 contracting steps: ~1e-16)
    np.testing.assert_allclose(res.params.numpy(), phi, rtol=1e-13, atol=1e-15)
    jac_b = np.array([[2 * THETA[0], 0, 0], [0, np.cos(THETA[1]), 0], [THETA[2], 0, THETA[0]]])
    closed = jac_b.T @ np.linalg.solve(M.T, 2 * (phi - C)) + THETA
    # GMRES to 1e-13 on a 3×3 system with κ(M) ≈ 2.6: the hypergradient to ~1e-12
    np.testing.assert_allclose(res.grad.numpy(), closed, rtol=1e-11, atol=1e-13)
    h = 1e-6
    fd = np.array(
        [
            (outer_at_fixed_point(THETA + h * e) - outer_at_fixed_point(THETA - h * e)) / (2 * h)
            for e in np.eye(3)
        ]
    )
    # central differences: truncation h²·|F'''| ≈ 1e-12, rounding ε·|F|/h ≈ 1e-10
    np.testing.assert_allclose(res.grad.numpy(), fd, rtol=1e-8, atol=1e-9)


def test_implicit_fixed_point_of_heavy_ball_agrees_with_unrolling_to_rest() -> None:
    meta = torch.tensor(THETA, dtype=D)
    implicit = hypergrad(PROBLEM, HeavyBallRule(), meta, None, strategy=Implicit(solvers.Direct()))
    unrolled = hypergrad(PROBLEM, HeavyBallRule(), meta, None, strategy=Unrolled())
    # 300 steps of a contraction with rate ≈ 0.6 per step: the unrolled derivative has converged
    # to the implicit one far below float64 resolution; 1e-12 covers the rounding of 300 steps
    torch.testing.assert_close(implicit.grad, unrolled.grad, rtol=1e-12, atol=1e-13)


B = np.array([[1.0, 0.5, 0.0], [0.0, -1.0, 2.0], [0.3, 0.0, 1.0]])


class LinearHeavyBall:
    """Heavy ball on ``M φ = B θ``, in array operators only, so it runs on either backend."""

    steps = 300
    vectorizable = True

    def __init__(self, fw: Framework) -> None:
        self.m, self.b = fw.array(M), fw.array(B)

    def init(self, params: Any, objective: Any) -> Any:
        return params, objective.backend.zeros_like(params)

    def step(self, state: Any, objective: Any) -> Any:
        params, velocity = state
        velocity = 0.3 * velocity + 0.4 * (self.b @ objective.meta - self.m @ params)
        return params + velocity, velocity

    def params(self, state: Any) -> Any:
        return state[0]


def test_implicit_fixed_point_with_state_on_both_backends(fw: Framework) -> None:
    c = fw.array(C)
    problem = Problem(init=lambda m, t: m * 0, outer_loss=lambda w, m, t: ((w - c) ** 2).sum())
    res = hypergrad(
        problem, LinearHeavyBall(fw), fw.array(THETA), None, strategy=Implicit(solvers.GMRES())
    )
    phi = np.linalg.solve(M, B @ THETA)
    closed = B.T @ np.linalg.solve(M.T, 2 * (phi - C))
    # GMRES to its default 1e-10 on a 3×3 system with κ(M) ≈ 2.6
    np.testing.assert_allclose(np.asarray(res.grad), closed, rtol=1e-9, atol=1e-12)
