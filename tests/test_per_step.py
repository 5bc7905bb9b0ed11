"""Per-step inner data: ``PerStep(loss)`` sees the inner step index, so each inner step can take
a fresh minibatch (higher's tests, most few-shot code).

Numbers: a hand-written unrolled loop in the framework's own AD (torch.func / jax.grad), and
float64 central finite differences of each strategy's map (:func:`bilevel.testing.
check_hypergrad`, default ``rtol = 1e-6`` derived in its module docstring). Every test runs on
torch and JAX (the ``fw`` fixture).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from _frameworks import Framework, assert_close, numpy
from _generators import randn, rng

from bilevel import (
    Batch,
    FirstOrder,
    ForwardMode,
    Implicit,
    Problem,
    SemiGradient,
    Truncated,
    Unrolled,
    hypergrad,
    solvers,
)
from bilevel.protocols import PerStep
from bilevel.testing import check_hypergrad

Tree = Any
D = np.float64
K, N, DIM = 4, 5, 3
LR = 0.1


def _minibatch(w: Any, m: Any, task: Tree, step: Any) -> Any:
    """Least squares on minibatch ``step`` (the task's leading axis) plus θ's pull on w."""
    x, y = task["x"][step], task["y"][step]
    return ((x @ w - y) ** 2).sum() / (2 * N) + (m["c"] * w**2).sum() / 2


PROBLEM = Problem(
    init=lambda m, t: m["w"],
    inner_loss=PerStep(_minibatch),
    outer_loss=lambda w, m, t: ((t["xq"] @ w - t["yq"]) ** 2).sum() / 2,
)
GD = solvers.GradientDescent(lr=LR, steps=K)


def _task(seed: int) -> dict[str, np.ndarray[Any, Any]]:
    g = rng(seed)
    return {
        "x": randn(g, K, N, DIM),
        "y": randn(g, K, N),
        "xq": randn(g, 6, DIM),
        "yq": randn(g, 6),
    }


META = {"w": np.array([0.2, -0.1, 0.3]), "c": np.array([0.5, 1.0, 0.25])}


def _grad_fn(fw: Framework) -> Any:
    if fw.name == "torch":
        return torch.func.grad
    import jax

    return jax.grad


def _unrolled(fw: Framework, meta: Tree, task: Tree, frozen: int) -> Tree:
    """The hand-written reference: steps ``0 … frozen−1`` at a constant θ (no gradient), the
    rest differentiated."""
    grad = _grad_fn(fw)

    def steps(m: Tree, w: Any, first: int, last: int) -> Any:
        for t in range(first, last):
            w = w - LR * grad(_minibatch)(w, m, task, t)
        return w

    const = fw.tree(numpy(meta))
    prefix = fw.array(numpy(steps(const, const["w"], 0, frozen))) if frozen else None

    def value(m: Tree) -> Any:
        w = steps(m, m["w"] if prefix is None else prefix, frozen, K)
        return ((task["xq"] @ w - task["yq"]) ** 2).sum() / 2

    return grad(value)(meta)


def _first_order(fw: Framework, meta: Tree, task: Tree) -> Tree:
    """FirstOrder: ∇_φ F at φ_K for the w-part (init is the identity), 0 for c."""
    grad = _grad_fn(fw)
    w = meta["w"]
    for t in range(K):
        w = w - LR * grad(_minibatch)(w, meta, task, t)
    g = grad(lambda v: ((task["xq"] @ v - task["yq"]) ** 2).sum() / 2)(w)
    return {"w": g, "c": g * 0}


@pytest.mark.parametrize(
    ("strategy", "frozen"),
    [(Unrolled(), 0), (Truncated(2), K - 2), (ForwardMode(), 0)],
    ids=["Unrolled", "Truncated(2)", "ForwardMode"],
)
def test_fresh_minibatch_per_step_equals_a_hand_written_loop(
    fw: Framework, strategy: Any, frozen: int
) -> None:
    """The same arithmetic as the hand-written loop: 1e-12 relative is ~100× the rounding of
    four steps on O(1) data."""
    meta, task = fw.tree(META), fw.tree(_task(0))
    res = hypergrad(PROBLEM, GD, meta, task, strategy=strategy)
    assert_close(res.grad, _unrolled(fw, meta, task, frozen), rtol=1e-12, atol=1e-15, dtype=D)
    check_hypergrad(PROBLEM, GD, meta, task, strategy)


def test_first_order_with_per_step_data(fw: Framework) -> None:
    meta, task = fw.tree(META), fw.tree(_task(1))
    res = hypergrad(PROBLEM, GD, meta, task, strategy=FirstOrder())
    assert_close(res.grad, _first_order(fw, meta, task), rtol=1e-12, atol=1e-15, dtype=D)
    check_hypergrad(PROBLEM, GD, meta, task, FirstOrder())


def test_the_step_index_reaches_the_loss(fw: Framework) -> None:
    """Different minibatches per step give another result than minibatch 0 every step (so the
    index is not dropped), and identical minibatches give the plain loss's result exactly."""
    meta, data = fw.tree(META), _task(2)
    same = {**data, "x": np.repeat(data["x"][:1], K, 0), "y": np.repeat(data["y"][:1], K, 0)}
    plain = Problem(
        init=PROBLEM.init,
        inner_loss=lambda w, m, t: _minibatch(w, m, t, 0),
        outer_loss=PROBLEM.outer_loss,
    )
    per_step = hypergrad(PROBLEM, GD, meta, fw.tree(same), strategy=Unrolled())
    fixed = hypergrad(plain, GD, meta, fw.tree(same), strategy=Unrolled())
    assert_close(per_step.grad, fixed.grad, rtol=0.0, atol=0.0)
    varied = hypergrad(PROBLEM, GD, meta, fw.tree(data), strategy=Unrolled())
    assert np.abs(numpy(varied.grad)["w"] - numpy(fixed.grad)["w"]).max() > 1e-3


@pytest.mark.parametrize("strategy", [Unrolled(), ForwardMode(), FirstOrder()], ids=repr)
def test_a_batch_of_per_step_tasks_equals_the_task_loop(fw: Framework, strategy: Any) -> None:
    """vmap over tasks, each with its own K minibatches: the mean of per-task calls (1e-13:
    the same arithmetic, summed in another order)."""
    tasks = [_task(10 + i) for i in range(3)]
    stacked = {k: np.stack([t[k] for t in tasks]) for k in tasks[0]}
    meta = fw.tree(META)
    res = hypergrad(PROBLEM, GD, meta, Batch(fw.tree(stacked)), strategy=strategy)
    each = [numpy(hypergrad(PROBLEM, GD, meta, fw.tree(t), strategy=strategy).grad) for t in tasks]
    mean = {k: np.mean([g[k] for g in each], axis=0) for k in META}
    assert_close(res.grad, mean, rtol=1e-13, atol=1e-16)


def test_semi_gradient_of_a_per_step_loss(fw: Framework) -> None:
    """SemiGradient(PerStep(fn)) gets (params, targets, meta, task, step): FD agree."""

    def td(w: Any, target: Any, m: Any, task: Tree, step: Any) -> Any:
        x, y = task["x"][step], task["y"][step]
        return ((x @ w - y - 0.5 * (x @ target)) ** 2).sum() / (2 * N) + (m["c"] * w**2).sum() / 2

    problem = Problem(
        init=PROBLEM.init, inner_loss=SemiGradient(PerStep(td)), outer_loss=PROBLEM.outer_loss
    )
    meta, task = fw.tree(META), fw.tree(_task(4))
    for strategy in (Unrolled(), ForwardMode()):
        check_hypergrad(problem, GD, meta, task, strategy)


def test_implicit_refuses_a_per_step_loss(fw: Framework) -> None:
    meta, task = fw.tree(META), fw.tree(_task(5))
    with pytest.raises(TypeError, match=r"Implicit.*PerStep.*fixed point.*no step"):
        hypergrad(PROBLEM, GD, meta, task, strategy=Implicit(solvers.CG()))


def test_implicit_refuses_a_per_step_update_rule() -> None:
    rule = solvers.UpdateRule(PerStep(lambda w, m, t, step: -m * w), steps=2)
    with pytest.raises(TypeError, match=r"Implicit.*PerStep.*fixed point.*no step"):
        Implicit(solvers.CG()).validate(rule)


def test_scipy_refuses_a_per_step_loss(fw: Framework) -> None:
    meta, task = fw.tree(META), fw.tree(_task(6))
    with pytest.raises(TypeError, match=r"Scipy.*PerStep.*iterative solver"):
        hypergrad(PROBLEM, solvers.Scipy(), meta, task, strategy=FirstOrder())


def test_a_per_step_update_rule_sees_the_step(fw: Framework) -> None:
    """UpdateRule(PerStep(rule)): w_{t+1} = w_t − θ_t w_t, so w_K = Π(1 − θ_t) w_0 and
    F = w_K gives dF/dθ_t = −Π_{s≠t}(1 − θ_s) w_0 (1e-14: three products)."""
    theta = np.array([0.1, 0.2, 0.3])
    rule = solvers.UpdateRule(PerStep(lambda w, m, t, step: -m[step] * w), steps=3)
    problem = Problem(init=lambda m, t: m[:1] * 0 + 2.0, outer_loss=lambda w, m, t: w.sum())
    res = hypergrad(problem, rule, fw.array(theta), None, strategy=Unrolled())
    c = np.prod(1 - theta)
    assert_close(res.grad, -2.0 * c / (1 - theta), rtol=1e-14, dtype=D)


def test_a_per_step_loss_with_the_wrong_arity_is_refused(fw: Framework) -> None:
    no_step = PerStep(lambda w, m, t: (w**2).sum())
    problem = Problem(init=PROBLEM.init, inner_loss=no_step, outer_loss=PROBLEM.outer_loss)
    with pytest.raises(TypeError, match=r"PerStep.*4 positional.*\(params, meta, task, step\)"):
        hypergrad(problem, GD, fw.tree(META), fw.tree(_task(7)), strategy=Unrolled())


def test_compiled_calls_equal_eager_ones(fw: Framework) -> None:
    """Under the caller's jax.jit the step index is a traced integer inside the compiled inner
    gradient: the same numbers as eager up to rounding (1e-12 relative; on torch the "compiled"
    call is the eager one)."""
    solver = solvers.GradientDescent(lr=PerStep(lambda m, t: m["c"][t % DIM] * 0.2), steps=K)
    meta, task = fw.tree(META), fw.tree(_task(8))
    first = hypergrad(PROBLEM, solver, meta, task, strategy=Unrolled())

    def run(m: Any, t: Any) -> Any:
        res = hypergrad(PROBLEM, solver, m, t, strategy=Unrolled())
        return res.value, res.grad

    if fw.name == "jax":
        import jax

        run = jax.jit(run)
    value, grad = run(meta, task)
    assert_close(grad, first.grad, rtol=1e-12, atol=1e-15)
    assert_close(value, first.value, rtol=1e-12)
