"""Every solver refuses a bad hyperparameter when it is built, not at its first use.

Each case below constructed silently before (issue 10, "hyperparameters are validated at
construction"): ``GMRES(restart=0)`` failed only inside its first solve, a relative tolerance
``tol ≥ 1`` made a linear solver return ``x = 0`` reported as converged, and a class passed
where an instance belongs failed steps later with an unrelated message.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

from bilevel import solvers
from bilevel.backends import TorchBackend
from bilevel.protocols import LinearOperator


class Hebbian:
    """A rule object: its instances are the functions (params, meta, task) -> update."""

    def __call__(self, params: Any, meta: Any, task: Any) -> Any:
        return meta * params


CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    (
        "GMRES(restart=0)",
        lambda: solvers.GMRES(restart=0),
        ValueError,
        r"GMRES\(maxiter=200, tol=1e-10, restart=0\): restart=0 must be >= 1",
    ),
    (
        "GMRES(restart=1.5)",
        lambda: solvers.GMRES(restart=1.5),  # pyright: ignore[reportArgumentType]
        TypeError,
        r"GMRES\(.*restart=1\.5\): restart must be an int, got float",
    ),
    (
        "CG(tol=1.0)",
        lambda: solvers.CG(tol=1.0),
        ValueError,
        r"CG\(maxiter=100, tol=1\.0, atol=0\.0\): tol=1\.0 is a relative residual "
        r"‖b − Ax‖/‖b‖ and must be < 1 \(x = 0 already has residual 1\), e\.g\. tol=1e-10",
    ),
    (
        "Neumann(tol=2.0)",
        lambda: solvers.Neumann(tol=2.0),
        ValueError,
        r"Neumann\(.*tol=2\.0\): tol=2\.0 is a relative residual .* must be < 1",
    ),
    (
        "MINRES(tol=5.0)",
        lambda: solvers.MINRES(tol=5.0),
        ValueError,
        r"MINRES\(maxiter=200, tol=5\.0\): tol=5\.0 is a relative residual .* must be < 1",
    ),
    (
        "GMRES(tol=1.0)",
        lambda: solvers.GMRES(tol=1.0),
        ValueError,
        r"GMRES\(.*tol=1\.0.*\): tol=1\.0 is a relative residual .* must be < 1",
    ),
    (
        "Direct(tol=1.0)",
        lambda: solvers.Direct(tol=1.0),
        ValueError,
        r"Direct\(tol=1\.0\): tol=1\.0 is a relative residual .* must be < 1",
    ),
    (
        "Optimizer(Adam)",
        lambda: solvers.Optimizer(solvers.Adam, steps=3),
        TypeError,
        r"Optimizer: transform is the class Adam; pass an instance, e.g\. Adam\(\.\.\.\)",
    ),
    (
        "ScaleBySchedule(CosineDecay)",
        lambda: solvers.ScaleBySchedule(solvers.CosineDecay),
        TypeError,
        r"ScaleBySchedule: schedule is the class CosineDecay; pass an instance, "
        r"e\.g\. CosineDecay\(\.\.\.\)",
    ),
    (
        "UpdateRule(class)",
        lambda: solvers.UpdateRule(Hebbian, steps=3),
        TypeError,
        r"UpdateRule: rule is the class Hebbian; pass an instance or a function "
        r"\(params, meta, task\), e\.g\. Hebbian\(\.\.\.\)",
    ),
]


@pytest.mark.parametrize(("name", "build", "error", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_hyperparameter_is_refused_at_construction(
    name: str, build: Callable[[], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        build()


def test_relative_tolerance_one_would_have_returned_zero_as_converged() -> None:
    # Why tol < 1: with tol = 1 the stopping test ‖b‖ ≤ tol·‖b‖ holds before the first
    # iteration, so CG returned x = 0 for A = 2I, b = 1 (answer 0.5) and called it converged.
    # The largest tolerance still accepted gives the answer (one CG step is exact for A = 2I).
    op = LinearOperator(lambda v: 2 * v, True)
    b = torch.ones(3, dtype=torch.float64)
    x, info = solvers.CG(tol=0.99).solve(op, b, backend=TorchBackend())
    assert x.tolist() == [0.5, 0.5, 0.5]
    assert info.converged and info.iterations == 1


def _stay(params: Any, meta: Any, task: Any) -> Any:
    return params * 0


@pytest.mark.parametrize(
    "build",
    [
        lambda: solvers.GMRES(restart=1),
        lambda: solvers.CG(tol=0.5),
        lambda: solvers.Direct(tol=0.999),
        lambda: solvers.Optimizer(solvers.Adam(0.1), steps=3),
        lambda: solvers.ScaleBySchedule(solvers.CosineDecay(3)),
        lambda: solvers.UpdateRule(_stay, steps=3),
        lambda: solvers.UpdateRule(Hebbian(), steps=3),
        lambda: solvers.ScaleBySchedule(float),  # a class whose call is a fine schedule
    ],
    ids=[
        "GMRES(restart=1)",
        "CG(tol=0.5)",
        "Direct(tol=0.999)",
        "Optimizer",
        "Schedule",
        "Rule",
        "Rule object",
        "float schedule",
    ],
)
def test_the_limits_themselves_are_accepted(build: Callable[[], Any]) -> None:
    # positive controls for the refusals above: the smallest/largest legal values construct
    # (and the object is a frozen dataclass holding them: a copy of it equals it)
    solver = build()
    assert dataclasses.replace(solver) == solver


def test_messages_name_the_call_the_value_and_the_fix() -> None:
    with pytest.raises(ValueError, match="must be >= 1") as err:
        solvers.GMRES(restart=0)
    assert re.search(r"restart=0", str(err.value)) and "GMRES(" in str(err.value)
