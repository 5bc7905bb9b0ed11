"""``recipes.metagradient_returns`` against numbers (float64), on torch and on JAX.

- With a reference return that does not bootstrap (Monte-Carlo, γ' = 1), the meta-objective is
  an ordinary function of η, so every strategy must pass check_hypergrad and ForwardMode must
  equal Unrolled (same quantities, another order: 1e-12).
- With a bootstrapped reference, the paper's ∂J'/∂θ' holds g' fixed: the recipe's hypergradient
  must equal that of the same problem with g' frozen at its value at θ'(η), which itself passes
  check_hypergrad; and it differs from the derivative of J' with g' varying.
- The inner step is TD's semi-gradient: one step from θ equals θ + α Σ_t (g_t − v(S_t)) ∇v(S_t)
  with g from the values at θ (closed form for a tabular value function).

Every test runs once per framework (the ``fw`` fixture, ``tests/_frameworks.py``): the
trajectories are drawn in NumPy and the value, return and reference functions are written once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _frameworks import Framework, assert_close64, numpy, sigmoid, xp
from _generators import randn, rng

from bilevel import ForwardMode, Problem, Unrolled, hypergrad, solve
from bilevel.recipes import Config, Trajectories, metagradient_returns
from bilevel.rl import lambda_returns
from bilevel.testing import check_hypergrad

T, N_STATES = 6, 4
META = {"g": np.array(0.3), "l": np.array(-0.2)}
W0 = np.array([0.5, -0.3, 0.2, 0.1])


def _task(seed: int) -> Trajectories:
    """Two trajectories (τ, τ') of T steps over N_STATES tabular states, in NumPy."""
    g = rng(seed)

    def one() -> dict[str, np.ndarray[Any, Any]]:
        return {"states": g.integers(0, N_STATES, T + 1), "rewards": randn(g, T)}

    return Trajectories(one(), one())


def _value(w: Any, tau: dict[str, Any]) -> Any:
    return w[tau["states"]]


def _returns(meta: dict[str, Any], tau: dict[str, Any], v: Any) -> Any:
    return lambda_returns(tau["rewards"], v, sigmoid(meta["g"]), sigmoid(meta["l"]))


def _mc(tau: dict[str, Any], v: Any) -> Any:
    return lambda_returns(tau["rewards"], v * 0, 1.0, 1.0)  # undiscounted, no bootstrap


def _bootstrapped(tau: dict[str, Any], v: Any) -> Any:
    return lambda_returns(tau["rewards"], v, 0.9, 0.5)


def _init(m: dict[str, Any], t: Trajectories) -> Any:
    return xp(m["g"]).asarray(W0.copy())  # θ = W0 in the framework of η (not sharing W0)


def _cfg(reference: Any, steps: int = 2) -> Config:
    return metagradient_returns(_value, _returns, reference, init=_init, lr=0.2, steps=steps)


# Module-level configs: JAX compiles an inner loss once per function object.
MC = {1: _cfg(_mc, 1), 3: _cfg(_mc, 3)}
BOOTSTRAPPED = _cfg(_bootstrapped)


def test_one_inner_step_is_the_td_semi_gradient_update(fw: Framework) -> None:
    cfg, task_np = MC[1], _task(0)
    meta, task = fw.tree(META), fw.tree(task_np)
    w1 = solve(cfg.problem, cfg.solver, meta, task)
    v = _value(fw.array(W0), task.now)
    g, v = numpy(_returns(meta, task.now, v)), numpy(v)
    expected = W0.copy()
    for t in range(T):  # ∇_w v(S_t) is the indicator of S_t
        expected[task_np.now["states"][t]] += 0.2 * (g[t] - v[t])
    assert_close64(w1, expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("steps", [1, 3])
def test_monte_carlo_reference_passes_check_hypergrad(fw: Framework, steps: int) -> None:
    cfg, meta, task = MC[steps], fw.tree(META), fw.tree(_task(1))
    check_hypergrad(cfg.problem, cfg.solver, meta, task, strategy=Unrolled())
    a = hypergrad(cfg.problem, cfg.solver, meta, task, strategy=Unrolled())
    b = hypergrad(cfg.problem, cfg.solver, meta, task, strategy=ForwardMode())
    for k in META:
        assert_close64(a.grad[k], b.grad[k], rtol=1e-12, atol=1e-14, what=k)


def test_bootstrapped_reference_is_held_fixed_in_the_meta_objective(fw: Framework) -> None:
    cfg, meta, task = BOOTSTRAPPED, fw.tree(META), fw.tree(_task(2))
    res = hypergrad(cfg.problem, cfg.solver, meta, task, strategy=Unrolled())
    w1 = solve(cfg.problem, cfg.solver, meta, task)
    # g' at θ'(η), as a constant (a NumPy round trip cuts any gradient path)
    frozen = fw.array(numpy(_bootstrapped(task.next, _value(w1, task.next))))

    def outer(w: Any, m: Any, t: Trajectories) -> Any:
        return ((frozen - _value(w, t.next)[:-1]) ** 2).sum() / 2

    fixed = Problem(init=cfg.problem.init, inner_loss=cfg.problem.inner_loss, outer_loss=outer)
    check_hypergrad(fixed, cfg.solver, meta, task, strategy=Unrolled())
    ref = hypergrad(fixed, cfg.solver, meta, task, strategy=Unrolled())
    assert_close64(res.value, ref.value, rtol=1e-14, atol=0, what="value")
    for k in META:
        assert_close64(res.grad[k], ref.grad[k], rtol=1e-12, atol=1e-14, what=k)

    def varying(w: Any, m: Any, t: Trajectories) -> Any:
        v = _value(w, t.next)
        return ((_bootstrapped(t.next, v) - v[:-1]) ** 2).sum() / 2

    full = Problem(init=cfg.problem.init, inner_loss=cfg.problem.inner_loss, outer_loss=varying)
    other = hypergrad(full, cfg.solver, meta, task, strategy=Unrolled())
    assert abs(float(other.grad["g"]) - float(res.grad["g"])) > 1e-6


# Argument validation only: no arrays, so no framework to run on.
def test_bad_arguments_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"metagradient_returns: steps=0 must be >= 1"):
        metagradient_returns(_value, _returns, _mc, init=_init, lr=0.1, steps=0)
    with pytest.raises(ValueError, match=r"metagradient_returns\(lr=-1\)"):
        metagradient_returns(_value, _returns, _mc, init=_init, lr=-1)
    with pytest.raises(TypeError, match=r"metagradient_returns: returns must be a function"):
        metagradient_returns(_value, None, _mc, init=_init, lr=0.1)  # type: ignore[arg-type]
