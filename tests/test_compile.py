"""Compilation is explicit: bilevel never compiles behind the caller's back on JAX.

- A loss that reads a changed module-level value sees the new value on every call (a hidden
  per-problem ``jax.jit`` from the third call on froze it at its trace: 0.0625 instead of 1.8125).
- ``jax.jit`` around the caller's own function of ``hypergrad`` gives the eager numbers for every
  strategy that runs on the device (all but ``Implicit``), one task and a ``Batch``, in float64.
  Same arithmetic, fused by XLA: measured differences ≤ 4e-16 relative; asserted 1e-12.
- ``Implicit`` inside ``jax.jit`` is a clear TypeError (its linear solvers stop on a host test).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from bilevel import (  # noqa: E402
    Batch,
    FirstOrder,
    ForwardMode,
    Implicit,
    Problem,
    Truncated,
    Unrolled,
    hypergrad,
    solvers,
)

pytestmark = pytest.mark.jax

SCALE = 0.5  # read by _global_problem's inner loss at call time


@pytest.fixture(autouse=True)
def _x64() -> Any:
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _global_problem() -> Problem:
    def inner(w: Any, m: Any, t: Any) -> Any:
        return SCALE * ((w - m) ** 2).sum() / 2

    return Problem(
        init=lambda m, t: m * 0.0,
        inner_loss=inner,
        outer_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2,
    )


def test_a_loss_reading_a_changed_global_sees_the_new_value_on_every_call() -> None:
    """One GD step from w₀ = 0 on f = s·‖w − θ‖²/2 with lr 1: w₁ = sθ, F = (sθ − τ)²/2.
    With θ = 1, τ = 0 and s = 0.5, 1.0, 1.5, 2.5 (changed between calls), F = s²/2:
    0.125, 0.5, 1.125, 3.125. Exact in binary floating point: compared with ==.
    Before: the third and fourth calls ran a program compiled at the third call, reading s
    frozen at its trace."""
    global SCALE
    problem, gd = _global_problem(), solvers.GradientDescent(lr=1.0, steps=1)
    got = []
    for s in (0.5, 1.0, 1.5, 2.5):
        SCALE = s
        res = hypergrad(problem, gd, jnp.ones(1), jnp.zeros(1), strategy=Unrolled())
        got.append(float(res.value))
    SCALE = 0.5
    assert got == [0.125, 0.5, 1.125, 3.125]


def _problem() -> Problem:
    def inner(w: Any, m: Any, t: Any) -> Any:
        return 0.5 * (jnp.exp(m["a"]) * w**2).sum() - (t["x"] * w).sum() + 0.1 * jnp.tanh(w).sum()

    def outer(w: Any, m: Any, t: Any) -> Any:
        return 0.5 * ((w - t["y"]) ** 2).sum() + 0.01 * (m["a"] ** 2).sum()

    return Problem(init=lambda m, t: m["w0"] * 1.0, inner_loss=inner, outer_loss=outer)


def _data(n_tasks: int | None) -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    meta = {"a": jnp.asarray(rng.normal(size=4) * 0.3), "w0": jnp.asarray(rng.normal(size=4))}
    shape = (4,) if n_tasks is None else (n_tasks, 4)
    task = {"x": jnp.asarray(rng.normal(size=shape)), "y": jnp.asarray(rng.normal(size=shape))}
    return meta, task if n_tasks is None else Batch(task)


STRATEGIES = [Unrolled(), Truncated(2), FirstOrder(), ForwardMode()]


@pytest.mark.parametrize("n_tasks", [None, 3], ids=["one task", "Batch"])
@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
def test_jax_jit_around_hypergrad_equals_eager(strategy: Any, n_tasks: int | None) -> None:
    """The caller's ``jax.jit`` of a function that calls ``hypergrad``: the same value and
    hypergradient as the eager call (1e-12 relative, see the module docstring)."""
    problem, gd = _problem(), solvers.GradientDescent(lr=0.3, steps=5)
    meta, task = _data(n_tasks)
    data = task.tasks if isinstance(task, Batch) else task
    wrap = (lambda d: Batch(d)) if isinstance(task, Batch) else (lambda d: d)

    @jax.jit
    def step(m: Any, d: Any) -> tuple[Any, Any]:
        res = hypergrad(problem, gd, m, wrap(d), strategy=strategy)
        return res.value, res.grad

    eager = hypergrad(problem, gd, meta, task, strategy=strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no host checks while traced (nothing to warn about)
        value, grad = step(meta, data)
    np.testing.assert_allclose(float(value), float(eager.value), rtol=1e-12)
    for k in meta:
        np.testing.assert_allclose(
            np.asarray(grad[k]), np.asarray(eager.grad[k]), rtol=1e-12, atol=1e-15
        )


def test_implicit_inside_jax_jit_is_a_clear_type_error() -> None:
    problem, gd = _problem(), solvers.GradientDescent(lr=0.3, steps=5)
    meta, task = _data(None)

    @jax.jit
    def step(m: Any, t: Any) -> Any:
        return hypergrad(problem, gd, m, t, strategy=Implicit(solvers.CG(10))).grad

    with pytest.raises(TypeError, match="jit"):
        step(meta, task)


def test_compiled_inner_loss_traces_once_and_equals_the_eager_implicit_hypergradient() -> None:
    """``testing.compiled_inner_loss``: the explicit per-loss compile for eager inner loops
    (``Implicit`` cannot run inside ``jax.jit``). The loss body runs only while traced, not once
    per inner step: measured 42 runs eager (40 steps and the stationarity check), 1 compiled
    (asserted ≥ 40 and < 10); the hypergradient equals the eager one to 1e-12 (same float64
    arithmetic, fused by XLA)."""
    from bilevel.testing import compiled_inner_loss

    runs = [0]
    base = _problem()

    def inner(w: Any, m: Any, t: Any) -> Any:
        runs[0] += 1
        return base.inner_loss(w, m, t)  # type: ignore[misc]

    problem = Problem(init=base.init, inner_loss=inner, outer_loss=base.outer_loss)
    gd, strategy = solvers.GradientDescent(lr=0.3, steps=40), Implicit(solvers.CG(50, tol=1e-13))
    meta, task = _data(None)
    eager = hypergrad(problem, gd, meta, task, strategy=strategy)
    eager_runs, runs[0] = runs[0], 0
    fast_problem = compiled_inner_loss(problem, meta)
    fast = hypergrad(fast_problem, gd, meta, task, strategy=strategy)
    assert eager_runs >= 40 and runs[0] < 10, (eager_runs, runs[0])
    np.testing.assert_allclose(np.asarray(fast.grad["a"]), np.asarray(eager.grad["a"]), rtol=1e-12)
    np.testing.assert_allclose(
        np.asarray(fast.grad["w0"]), np.asarray(eager.grad["w0"]), rtol=1e-12, atol=1e-15
    )
