"""CG.solve_batch and Implicit on a Batch with a batch-capable linear solver: the same iterates,
stopping and diagnostics as one solve per task. Float64; the batched and per-task solves do the
same arithmetic in another order (reductions over a reshaped axis), so well-conditioned iterates
agree to ~1e-16 relative (asserted: 1e-10). On the κ = 1e4 system CG's iterates in finite
precision are sensitive to rounding at about κ²·u ≈ 1e-8 (measured 4.6e-9), so it gets 1e-7."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import solvers
from bilevel import Batch, Implicit, Problem, hypergrad
from bilevel.backends import TorchBackend
from bilevel.protocols import LinearOperator

F64 = torch.float64
BACKEND = TorchBackend()


def _systems() -> tuple[torch.Tensor, torch.Tensor]:
    """Five 6x6 systems: well and badly conditioned SPD, b = 0, an indefinite one, a repeat."""
    g = torch.Generator().manual_seed(0)
    mats, rhs = [], []
    for i, cond in enumerate([2.0, 1e4, 10.0, -1.0, 2.0]):
        q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=F64))
        eig = torch.logspace(0, 4, 6, dtype=F64) if cond == 1e4 else torch.linspace(1, abs(cond), 6)
        if cond < 0:
            eig = torch.tensor([3.0, 2.0, 1.0, -1.0, -2.0, 0.5], dtype=F64)
        mats.append(q @ torch.diag(eig.to(F64)) @ q.T)
        rhs.append(torch.zeros(6, dtype=F64) if i == 2 else torch.randn(6, generator=g, dtype=F64))
    return torch.stack(mats), torch.stack(rhs)


@pytest.mark.parametrize("cg", [solvers.CG(maxiter=3), solvers.CG(), solvers.CG(tol=1e-4)])
def test_cg_solve_batch_equals_one_solve_per_task(cg: solvers.CG) -> None:
    a, b = _systems()
    tree_b = {"u": b[:, :2], "v": b[:, 2:].reshape(5, 2, 2)}  # a pytree with a task axis

    def split(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"u": x[..., :2], "v": x[..., 2:].reshape(*x.shape[:-1], 2, 2)}

    def join(t: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([t["u"], t["v"].flatten(-2)], -1)

    op = LinearOperator(lambda t: split(torch.einsum("nij,nj->ni", a, join(t))), True)
    x, infos = cg.solve_batch(op, tree_b, backend=BACKEND)
    for i in range(5):
        xi, info = cg.solve(LinearOperator(lambda v, i=i: a[i] @ v, True), b[i], backend=BACKEND)
        rtol = 1e-7 if i == 1 else 1e-10
        torch.testing.assert_close(join(x)[i], xi, rtol=rtol, atol=rtol * float(xi.norm()))
        assert (infos[i].iterations, infos[i].converged) == (info.iterations, info.converged)
        assert infos[i].negative_curvature == info.negative_curvature
        if i != 1:  # a residual at the rounding level of the κ = 1e4 system is itself noise
            assert infos[i].residual == pytest.approx(info.residual, rel=1e-6, abs=1e-14)
    assert infos[2].iterations == 0 and infos[2].residual == 0.0  # b = 0
    assert cg.maxiter < 6 or infos[3].negative_curvature  # the indefinite system is reported


def _problem() -> Problem:
    """iMAML-style: inner ½‖Xw − y‖²/n + (λ/2)‖w − θ‖² (θ enters the inner loss)."""

    def inner(w: torch.Tensor, m: torch.Tensor, t: dict[str, Any]) -> torch.Tensor:
        return 0.5 * ((t["x"] @ w - t["y"]) ** 2).mean() + 0.25 * ((w - m) ** 2).sum()

    def outer(w: torch.Tensor, m: torch.Tensor, t: dict[str, Any]) -> torch.Tensor:
        return 0.5 * ((t["xq"] @ w - t["yq"]) ** 2).mean()

    return Problem(init=lambda m, t: m, inner_loss=inner, outer_loss=outer)


@pytest.mark.parametrize("cg", [solvers.CG(maxiter=2), solvers.CG(maxiter=50)])
def test_implicit_on_a_batch_equals_the_loop_over_tasks(cg: solvers.CG) -> None:
    g = torch.Generator().manual_seed(1)
    n, d = 6, 4
    tasks = {
        k: torch.randn(n, 10, d, generator=g, dtype=F64)
        if k.startswith("x")
        else torch.randn(n, 10, generator=g, dtype=F64)
        for k in ("x", "y", "xq", "yq")
    }
    meta = torch.randn(d, generator=g, dtype=F64)
    problem, solver = _problem(), solvers.GradientDescent(lr=0.3, steps=200)
    with pytest.warns() if cg.maxiter == 2 else _nothing():
        res = hypergrad(problem, solver, meta, Batch(tasks), strategy=Implicit(cg))
    each = []
    for i in range(n):
        task = {k: v[i] for k, v in tasks.items()}
        with pytest.warns() if cg.maxiter == 2 else _nothing():
            each.append(hypergrad(problem, solver, meta, task, strategy=Implicit(cg)))
    torch.testing.assert_close(
        res.grad, torch.stack([r.grad for r in each]).mean(0), rtol=1e-10, atol=1e-13
    )
    for info, r in zip(res.task_info, each, strict=True):
        assert info.linear is not None and r.info.linear is not None
        assert info.linear.iterations == r.info.linear.iterations
        assert info.linear.converged == r.info.linear.converged
        assert float(info.stationarity) == pytest.approx(float(r.info.stationarity), rel=1e-6)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None
