"""CG.solve_batch and Implicit on a Batch with a batch-capable linear solver: the same iterates,
stopping and diagnostics as one solve per task, on torch and on JAX (the ``fw`` fixture; the
systems are drawn in NumPy, so both frameworks solve the same ones). Float64; the batched and
per-task solves do the same arithmetic in another order (reductions over a reshaped axis), so
well-conditioned iterates agree to ~1e-16 relative (asserted: 1e-10). On the κ = 1e4 system
CG's iterates in finite precision are sensitive to rounding at about κ²·u ≈ 1e-8 (measured
6.7e-9 on torch, 8.5e-9 on JAX), so it gets 1e-7."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pytest
from _frameworks import Framework, assert_close, numpy, xp
from _generators import randn, rng

from bilevel import Batch, Implicit, Problem, hypergrad, solvers
from bilevel.backends import Backend, backend_for
from bilevel.protocols import LinearOperator

Array = np.ndarray[Any, Any]


def backend(fw: Framework) -> Backend:
    """The backend of ``fw``'s arrays (``TorchBackend`` or ``JaxBackend``), chosen from a leaf
    type as ``hypergrad`` chooses it."""
    return backend_for(fw.array(np.zeros(1)))


def _systems() -> tuple[Array, Array]:
    """Five 6x6 systems: well and badly conditioned SPD, b = 0, an indefinite one, a repeat."""
    g = rng(0)
    mats, rhs = [], []
    for i, cond in enumerate([2.0, 1e4, 10.0, -1.0, 2.0]):
        q, _ = np.linalg.qr(randn(g, 6, 6))
        eig = np.logspace(0, 4, 6) if cond == 1e4 else np.linspace(1, abs(cond), 6)
        if cond < 0:
            eig = np.array([3.0, 2.0, 1.0, -1.0, -2.0, 0.5])
        mats.append(q @ np.diag(eig) @ q.T)
        rhs.append(np.zeros(6) if i == 2 else randn(g, 6))
    return np.stack(mats), np.stack(rhs)


def _split(x: Any) -> dict[str, Any]:
    """A vector (or a batch of them, on the last axis) of 6 as the pytree {"u": 2, "v": 2×2}."""
    return {"u": x[..., :2], "v": x[..., 2:].reshape(*x.shape[:-1], 2, 2)}


def _join(t: dict[str, Any]) -> Any:
    v = t["v"]
    return xp(v).concatenate([t["u"], v.reshape(*v.shape[:-2], 4)], -1)


# CG(tol=1e-3) stops the tasks at different iterations (5, 6, 0, 2, 4), which exercises the
# masking of finished tasks. Not 1e-4: on the κ = 1e4 system the residual after d = 6 steps is
# rounding noise (exactly 0 in exact arithmetic; measured 3.6e-5 on torch, 1.1e-4 on JAX, 7.4e-5
# batched on JAX), so a tol there decides the stopping step by rounding; 1e-3 is 9× above the
# noise and 230× below the step-5 residual (0.23).
@pytest.mark.parametrize("cg", [solvers.CG(maxiter=3), solvers.CG(), solvers.CG(tol=1e-3)])
def test_cg_solve_batch_equals_one_solve_per_task(fw: Framework, cg: solvers.CG) -> None:
    a_np, b_np = _systems()
    a, b = fw.array(a_np), fw.array(b_np)
    tree_b = fw.tree(_split(b_np))  # a pytree with a task axis
    be = backend(fw)
    op = LinearOperator(lambda t: _split(xp(a).einsum("nij,nj->ni", a, _join(t))), True)
    x, infos = cg.solve_batch(op, tree_b, backend=be)
    x_each = numpy(_join(x))
    for i in range(5):
        xi, info = cg.solve(LinearOperator(lambda v, i=i: a[i] @ v, True), b[i], backend=be)
        rtol = 1e-7 if i == 1 else 1e-10
        xi_np = numpy(xi)
        assert_close(x_each[i], xi_np, rtol=rtol, atol=rtol * float(np.linalg.norm(xi_np)))
        assert (infos[i].iterations, infos[i].converged) == (info.iterations, info.converged)
        assert infos[i].negative_curvature == info.negative_curvature
        if i != 1:  # a residual at the rounding level of the κ = 1e4 system is itself noise
            assert infos[i].residual == pytest.approx(info.residual, rel=1e-6, abs=1e-14)
    assert infos[2].iterations == 0 and infos[2].residual == 0.0  # b = 0
    assert cg.maxiter < 6 or infos[3].negative_curvature  # the indefinite system is reported


# iMAML-style problem, module-level so that JAX compiles the inner value-and-gradient once:
# inner ½‖Xw − y‖²/n + (λ/2)‖w − θ‖² (θ enters the inner loss).
def _inner(w: Any, m: Any, t: dict[str, Any]) -> Any:
    return 0.5 * ((t["x"] @ w - t["y"]) ** 2).mean() + 0.25 * ((w - m) ** 2).sum()


def _outer(w: Any, m: Any, t: dict[str, Any]) -> Any:
    return 0.5 * ((t["xq"] @ w - t["yq"]) ** 2).mean()


def _init(m: Any, t: dict[str, Any]) -> Any:
    return m


PROBLEM = Problem(init=_init, inner_loss=_inner, outer_loss=_outer)


@pytest.mark.parametrize("cg", [solvers.CG(maxiter=2), solvers.CG(maxiter=50)])
def test_implicit_on_a_batch_equals_the_loop_over_tasks(fw: Framework, cg: solvers.CG) -> None:
    g = rng(1)
    n, d = 6, 4
    tasks_np = {
        k: randn(g, n, 10, d) if k.startswith("x") else randn(g, n, 10)
        for k in ("x", "y", "xq", "yq")
    }
    meta = fw.array(randn(g, d))
    tasks = fw.tree(tasks_np)
    solver = solvers.GradientDescent(lr=0.3, steps=200)

    def warns() -> contextlib.AbstractContextManager[Any]:
        # CG(maxiter=2) stops short of the tolerance: a LinearSolveWarning per call
        return pytest.warns() if cg.maxiter == 2 else contextlib.nullcontext()

    with warns():
        res = hypergrad(PROBLEM, solver, meta, Batch(tasks), strategy=Implicit(cg))
    each = []
    for i in range(n):
        task = fw.tree({k: v[i] for k, v in tasks_np.items()})
        with warns():
            each.append(hypergrad(PROBLEM, solver, meta, task, strategy=Implicit(cg)))
    assert numpy(res.grad).dtype == np.float64
    assert_close(res.grad, np.mean([numpy(r.grad) for r in each], axis=0), rtol=1e-10, atol=1e-13)
    for info, r in zip(res.task_info, each, strict=True):
        assert info.linear is not None and r.info.linear is not None
        assert info.linear.iterations == r.info.linear.iterations
        assert info.linear.converged == r.info.linear.converged
        assert float(info.stationarity) == pytest.approx(float(r.info.stationarity), rel=1e-6)
