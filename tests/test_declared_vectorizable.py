"""Whether a solver runs a Batch under ``vmap`` is declared by the solver
(``IterativeSolver.vectorizable``), never guessed from module names or signatures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from bilevel import Batch, Problem, Unrolled, hypergrad, solvers, tree
from bilevel.protocols import IterativeSolver
from bilevel.strategies._common import vectorizable

D = torch.float64
PROBLEM = Problem(
    init=lambda m, t: m * 1.0,
    inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2 + (w**4).sum() / 4,
    outer_loss=lambda w, m, t: (w**2).sum(),
)
META = torch.tensor([0.5, -1.0], dtype=D)
TASKS = torch.tensor([[1.0, 0.0], [-1.0, 2.0], [0.5, 0.5]], dtype=D)


@dataclass(frozen=True)
class PlainSGD:
    """A pure optax-style transformation that declares nothing."""

    lr: float

    def init(self, params: Any) -> tuple[()]:
        return ()

    def update(self, grads: Any, state: Any, params: Any = None) -> Any:
        return tree.scale(-self.lr, grads), state


def test_every_inner_solver_declares_it() -> None:
    module = torch.nn.Linear(1, 1)
    declared = [
        solvers.GradientDescent(lr=0.1, steps=1),
        solvers.UpdateRule(lambda w, m, t: w, steps=1),
        solvers.Optimizer(solvers.Adam(0.1), steps=1),
        solvers.Higher(module, torch.optim.SGD(module.parameters(), lr=0.1), 1),
    ]
    for solver in declared:
        assert isinstance(solver, IterativeSolver)
        assert solver.vectorizable is True


def test_a_transform_is_not_vectorized_for_its_module_name() -> None:
    # Before, solvers.Optimizer called any transform whose class lived in a module named
    # "optax…" pure and vmapped it. A name is no declaration: undeclared means looped.
    fake = type("Adam", (PlainSGD,), {"__module__": "optax_extras.fake"})(0.1)
    assert solvers.Optimizer(fake, steps=2).vectorizable is False
    assert solvers.Optimizer(PlainSGD(0.1), steps=2).vectorizable is False


def test_optimizer_declares_a_third_party_transform_pure() -> None:
    solver = solvers.Optimizer(PlainSGD(0.1), steps=4, vectorizable=True)
    assert solver.vectorizable is True and vectorizable(solver)
    batched = hypergrad(PROBLEM, solver, META, Batch(TASKS), strategy=Unrolled())
    looped = solvers.Optimizer(PlainSGD(0.1), steps=4)
    assert not vectorizable(looped)
    reference = hypergrad(PROBLEM, looped, META, Batch(TASKS), strategy=Unrolled())
    # the same per-task arithmetic, vmapped or looped: equal to float64 rounding of the mean
    torch.testing.assert_close(batched.grad, reference.grad, rtol=1e-12, atol=1e-15)
    # and it is the same rule as solvers.SGD, which declares itself
    ours = hypergrad(
        PROBLEM, solvers.Optimizer(solvers.SGD(0.1), 4), META, Batch(TASKS), strategy=Unrolled()
    )
    torch.testing.assert_close(batched.grad, ours.grad, rtol=1e-12, atol=1e-15)


def test_optimizer_refuses_a_declaration_that_is_not_a_bool() -> None:
    with pytest.raises(TypeError, match=r"Optimizer\(vectorizable='yes'\): vectorizable must be"):
        solvers.Optimizer(PlainSGD(0.1), steps=1, vectorizable="yes")  # pyright: ignore[reportArgumentType]


class Undeclared:
    """An iterative solver that does not say whether it may be vmapped."""

    steps = 2

    def __repr__(self) -> str:
        return "Undeclared()"

    def init(self, params: Any, objective: Any) -> Any:
        return params

    def step(self, state: Any, objective: Any) -> Any:
        return tree.axpy(-0.1, objective.value_and_grad(state)[1], state)

    def params(self, state: Any) -> Any:
        return state


def test_a_solver_that_does_not_declare_it_is_refused_with_the_fix() -> None:
    # Before, a missing attribute counted as True: such a solver was vmapped unasked.
    with pytest.raises(
        TypeError,
        match=r"hypergrad: Undeclared\(\) has init/step/params/steps but does not declare "
        r"vectorizable, .* add the class attribute vectorizable = True if its steps are pure",
    ):
        hypergrad(PROBLEM, Undeclared(), META, Batch(TASKS), strategy=Unrolled())


def test_the_declared_solver_runs() -> None:
    # positive control for the refusal above: the fix it names works
    declared = type("Declared", (Undeclared,), {"vectorizable": True})()
    res = hypergrad(PROBLEM, declared, META, Batch(TASKS), strategy=Unrolled())
    ref = hypergrad(
        PROBLEM, solvers.GradientDescent(lr=0.1, steps=2), META, Batch(TASKS), strategy=Unrolled()
    )
    torch.testing.assert_close(res.grad, ref.grad, rtol=1e-12, atol=1e-15)
