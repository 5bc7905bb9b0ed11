"""``recipes.metagradient_returns`` against numbers (float64).

- With a reference return that does not bootstrap (Monte-Carlo, γ' = 1), the meta-objective is
  an ordinary function of η, so every strategy must pass check_hypergrad and ForwardMode must
  equal Unrolled (same quantities, another order: 1e-12).
- With a bootstrapped reference, the paper's ∂J'/∂θ' holds g' fixed: the recipe's hypergradient
  must equal that of the same problem with g' frozen at its value at θ'(η), which itself passes
  check_hypergrad; and it differs from the derivative of J' with g' varying.
- The inner step is TD's semi-gradient: one step from θ equals θ + α Σ_t (g_t − v(S_t)) ∇v(S_t)
  with g from the values at θ (closed form for a tabular value function).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bilevel import ForwardMode, Problem, Unrolled, hypergrad, solve
from bilevel.recipes import Trajectories, metagradient_returns
from bilevel.rl import lambda_returns
from bilevel.testing import check_hypergrad

F64 = torch.float64
T, N_STATES = 6, 4


def _task(seed: int) -> Trajectories:
    g = torch.Generator().manual_seed(seed)

    def one() -> dict[str, torch.Tensor]:
        states = torch.randint(0, N_STATES, (T + 1,), generator=g)
        return {"states": states, "rewards": torch.randn(T, generator=g, dtype=F64)}

    return Trajectories(one(), one())


def _value(w: torch.Tensor, tau: dict[str, torch.Tensor]) -> torch.Tensor:
    return w[tau["states"]]


def _returns(meta: dict[str, torch.Tensor], tau: dict[str, torch.Tensor], v: torch.Tensor) -> Any:
    return lambda_returns(tau["rewards"], v, torch.sigmoid(meta["g"]), torch.sigmoid(meta["l"]))


def _mc(tau: dict[str, torch.Tensor], v: torch.Tensor) -> Any:
    return lambda_returns(tau["rewards"], v * 0, 1.0, 1.0)  # undiscounted, no bootstrap


def _bootstrapped(tau: dict[str, torch.Tensor], v: torch.Tensor) -> Any:
    return lambda_returns(tau["rewards"], v, 0.9, 0.5)


META = {"g": torch.tensor(0.3, dtype=F64), "l": torch.tensor(-0.2, dtype=F64)}
W0 = torch.tensor([0.5, -0.3, 0.2, 0.1], dtype=F64)


def _cfg(reference: Any, steps: int = 2) -> Any:
    return metagradient_returns(
        _value, _returns, reference, init=lambda m, t: W0, lr=0.2, steps=steps
    )


def test_one_inner_step_is_the_td_semi_gradient_update() -> None:
    cfg, task = _cfg(_mc, steps=1), _task(0)
    w1 = solve(cfg.problem, cfg.solver, META, task)
    v = _value(W0, task.now)
    g = _returns(META, task.now, v)
    expected = W0.clone()
    for t in range(T):  # ∇_w v(S_t) is the indicator of S_t
        expected[task.now["states"][t]] += 0.2 * (g[t] - v[t])
    torch.testing.assert_close(w1, expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("steps", [1, 3])
def test_monte_carlo_reference_passes_check_hypergrad(steps: int) -> None:
    cfg, task = _cfg(_mc, steps), _task(1)
    check_hypergrad(cfg.problem, cfg.solver, META, task, strategy=Unrolled())
    a = hypergrad(cfg.problem, cfg.solver, META, task, strategy=Unrolled())
    b = hypergrad(cfg.problem, cfg.solver, META, task, strategy=ForwardMode())
    for k in META:
        torch.testing.assert_close(a.grad[k], b.grad[k], rtol=1e-12, atol=1e-14)


def test_bootstrapped_reference_is_held_fixed_in_the_meta_objective() -> None:
    cfg, task = _cfg(_bootstrapped), _task(2)
    res = hypergrad(cfg.problem, cfg.solver, META, task, strategy=Unrolled())
    w1 = solve(cfg.problem, cfg.solver, META, task)
    frozen = _bootstrapped(task.next, _value(w1, task.next)).detach()

    def outer(w: torch.Tensor, m: Any, t: Trajectories) -> Any:
        return ((frozen - _value(w, t.next)[:-1]) ** 2).sum() / 2

    fixed = Problem(init=cfg.problem.init, inner_loss=cfg.problem.inner_loss, outer_loss=outer)
    check_hypergrad(fixed, cfg.solver, META, task, strategy=Unrolled())
    ref = hypergrad(fixed, cfg.solver, META, task, strategy=Unrolled())
    torch.testing.assert_close(res.value, ref.value, rtol=1e-14, atol=0)
    for k in META:
        torch.testing.assert_close(res.grad[k], ref.grad[k], rtol=1e-12, atol=1e-14)

    def varying(w: torch.Tensor, m: Any, t: Trajectories) -> Any:
        v = _value(w, t.next)
        return ((_bootstrapped(t.next, v) - v[:-1]) ** 2).sum() / 2

    full = Problem(init=cfg.problem.init, inner_loss=cfg.problem.inner_loss, outer_loss=varying)
    other = hypergrad(full, cfg.solver, META, task, strategy=Unrolled())
    assert float((other.grad["g"] - res.grad["g"]).abs()) > 1e-6


def test_bad_arguments_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"metagradient_returns: steps=0 must be >= 1"):
        metagradient_returns(_value, _returns, _mc, init=lambda m, t: W0, lr=0.1, steps=0)
    with pytest.raises(ValueError, match=r"metagradient_returns\(lr=-1\)"):
        metagradient_returns(_value, _returns, _mc, init=lambda m, t: W0, lr=-1)
    with pytest.raises(TypeError, match=r"metagradient_returns: returns must be a function"):
        metagradient_returns(_value, None, _mc, init=lambda m, t: W0, lr=0.1)  # type: ignore[arg-type]
