"""bilevel.solve: the inner solution, equal to hypergrad's, vectorised or looped, never raising on
a diverging task."""

from __future__ import annotations

import math

import pytest
import torch
import torchopt

import solvers
from bilevel import Batch, FirstOrder, Problem, Unrolled, hypergrad, solve

D = torch.float64
PROBLEM = Problem(
    init=lambda m, t: m,
    inner_loss=lambda w, m, t: ((w - t["c"]) ** 2).sum() / 2 + (w**4).sum() / 4,
    outer_loss=lambda w, m, t: (w**2).sum(),
)
META = torch.tensor([0.5, -1.0], dtype=D)
TASKS = {"c": torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=D)}


@pytest.mark.parametrize(
    "solver",
    [
        solvers.GradientDescent(lr=0.2, steps=7),  # vmapped
        solvers.GradientDescent(lr=0.2, steps=7, momentum=0.5),  # vmapped, state (φ, v)
        solvers.Optimizer(torchopt.adam(0.1), steps=7),  # looped (vectorizable False)
        solvers.Scipy(),  # black box: looped
    ],
    ids=repr,
)
def test_solve_equals_hypergrads_inner_solution(solver: object) -> None:
    batch = solve(PROBLEM, solver, META, Batch(TASKS))
    res = hypergrad(PROBLEM, solver, META, Batch(TASKS), strategy=FirstOrder())
    assert batch.shape == (5, 2)
    # same operations in the same order on each path: equal to float64 rounding
    torch.testing.assert_close(batch, res.params, rtol=1e-12, atol=1e-12)
    single = solve(PROBLEM, solver, META, {"c": TASKS["c"][3]})
    torch.testing.assert_close(single, batch[3], rtol=1e-12, atol=1e-12)


def test_solve_returns_a_diverging_task_instead_of_raising() -> None:
    tasks = {"c": torch.tensor([[1.0, 1.0], [math.inf, 0.0]], dtype=D)}
    gd = solvers.GradientDescent(lr=0.2, steps=3)
    params = solve(PROBLEM, gd, META, Batch(tasks))
    assert bool(torch.isfinite(params[0]).all()) and not bool(torch.isfinite(params[1]).all())
    with pytest.raises(RuntimeError, match=r"task 1.*step 1"):
        hypergrad(PROBLEM, gd, META, Batch(tasks), strategy=Unrolled())


def test_solve_checks_its_problem() -> None:
    with pytest.raises(TypeError, match=r"solve: problem must be a bilevel\.Problem"):
        solve("problem", solvers.GradientDescent(lr=0.1, steps=1), META, TASKS)  # type: ignore[arg-type]
