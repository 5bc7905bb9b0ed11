"""bilevel.solve: the inner solution, equal to hypergrad's, vectorised or looped, never raising on
a diverging task.

Every test runs once per framework (the ``fw`` fixture, ``tests/_frameworks.py``): the data are
drawn in NumPy and the problem is written once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from _frameworks import Framework, assert_close64, numpy
from _generators import randn, rng

from bilevel import Batch, FirstOrder, Problem, Unrolled, hypergrad, solve, solvers

PROBLEM = Problem(
    init=lambda m, t: m,
    inner_loss=lambda w, m, t: ((w - t["c"]) ** 2).sum() / 2 + (w**4).sum() / 4,
    outer_loss=lambda w, m, t: (w**2).sum(),
)
META = np.array([0.5, -1.0])
TASKS = {"c": randn(rng(0), 5, 2)}


@dataclass(frozen=True)
class _Unvectorizable:
    """A pure optax-style transformation that does not declare itself vectorizable, so
    ``solvers.Optimizer`` loops a Batch over its tasks (JAX has no in-place optimizer such as
    torchopt's to stand for the looped case)."""

    inner: Any

    def init(self, params: Any) -> Any:
        return self.inner.init(params)

    def update(self, grads: Any, state: Any, params: Any = None) -> Any:
        return self.inner.update(grads, state, params=params)


def _looped_adam(fw: Framework) -> solvers.Optimizer:
    """Adam(0.1), looped: torchopt's on torch (updates its state in place), else undeclared."""
    if fw.name == "torch":
        import torchopt

        return solvers.Optimizer(torchopt.adam(0.1), steps=7)
    return solvers.Optimizer(_Unvectorizable(solvers.Adam(0.1)), steps=7)


SOLVERS: dict[str, Callable[[Framework], Any]] = {
    "gd": lambda fw: solvers.GradientDescent(lr=0.2, steps=7),  # vmapped
    "gd-momentum": lambda fw: solvers.GradientDescent(lr=0.2, steps=7, momentum=0.5),  # (φ, v)
    "adam-looped": _looped_adam,  # looped (vectorizable False)
    "scipy": lambda fw: solvers.Scipy(),  # black box: looped
}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_solve_equals_hypergrads_inner_solution(fw: Framework, name: str) -> None:
    solver = SOLVERS[name](fw)
    if name == "adam-looped":
        assert solver.vectorizable is False
    meta, tasks = fw.array(META), fw.tree(TASKS)
    batch = solve(PROBLEM, solver, meta, Batch(tasks))
    res = hypergrad(PROBLEM, solver, meta, Batch(tasks), strategy=FirstOrder())
    assert batch.shape == (5, 2)
    # same operations in the same order on each path: equal to float64 rounding
    assert_close64(batch, res.params, rtol=1e-12, atol=1e-12, what="batch")
    single = solve(PROBLEM, solver, meta, {"c": tasks["c"][3]})
    assert_close64(single, batch[3], rtol=1e-12, atol=1e-12, what="single")


def test_solve_returns_a_diverging_task_instead_of_raising(fw: Framework) -> None:
    meta, tasks = fw.array(META), fw.tree({"c": np.array([[1.0, 1.0], [math.inf, 0.0]])})
    gd = solvers.GradientDescent(lr=0.2, steps=3)
    params = numpy(solve(PROBLEM, gd, meta, Batch(tasks)))
    assert np.isfinite(params[0]).all() and not np.isfinite(params[1]).all()
    with pytest.raises(RuntimeError, match=r"task 1.*step 1"):
        hypergrad(PROBLEM, gd, meta, Batch(tasks), strategy=Unrolled())


def test_solve_checks_its_problem(fw: Framework) -> None:
    meta, tasks = fw.array(META), fw.tree(TASKS)
    with pytest.raises(TypeError, match=r"solve: problem must be a bilevel\.Problem"):
        solve("problem", solvers.GradientDescent(lr=0.1, steps=1), meta, tasks)  # type: ignore[arg-type]
