"""Solvers that would change shapes or dtypes silently, losses whose dtype has no gradient,
torchopt's accelerated ops, expanded meta-parameters under ForwardMode and SciPy's own
tolerances: each an error in bilevel's words or a correct answer, checked against numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from _frameworks import Framework, assert_close, numpy, xp

from bilevel import ForwardMode, Problem, Unrolled, hypergrad, solvers
from bilevel.backends import backend_for
from bilevel.protocols import InnerObjective
from bilevel.testing import check_hypergrad

D = np.float64
W = np.array([1.0, -2.0, 0.5])
TAU = np.array([0.3, 0.1, -0.4])
GD = solvers.GradientDescent(lr=0.5, steps=2)


def _quadratic(**overrides: Any) -> Problem:
    fields: dict[str, Any] = {
        "init": lambda m, t: m,
        "inner_loss": lambda w, m, t: ((w - t) ** 2).sum() / 2,
        "outer_loss": lambda w, m, t: (w**2).sum() / 2,
    }
    fields.update(overrides)
    return Problem(**fields)


# ------------------------------------------------------------- shapes and dtypes of a step


def test_an_update_rule_that_broadcasts_is_refused(fw: Framework) -> None:
    """Before: the (3,) parameters silently became (3, 3) after one step (value 54 per entry)."""

    def rule(w: Any, m: Any, t: Any) -> Any:
        return m[:, None] * xp(w).ones((3, 3), dtype=w.dtype)

    problem = Problem(init=lambda m, t: m, outer_loss=lambda w, m, t: (w**2).sum())
    solver = solvers.UpdateRule(rule, steps=2)
    message = (
        r"UpdateRule: the rule's update has shape \(3, 3\), which turns a parameter of shape "
        r"\(3,\) into shape \(3, 3\)"
    )
    with pytest.raises(ValueError, match=message):
        hypergrad(problem, solver, fw.array(W), None, strategy=Unrolled())


def test_an_update_rule_that_changes_the_dtype_is_refused(fw: Framework) -> None:
    def rule(w: Any, m: Any, t: Any) -> Any:
        return (m * w).astype("float64") if fw.name == "jax" else (m * w).double()

    def init(m: Any, t: Any) -> Any:
        return m.astype("float32") if fw.name == "jax" else m.float()

    problem = Problem(init=init, outer_loss=lambda w, m, t: (w**2).sum())
    solver = solvers.UpdateRule(rule, steps=1)
    message = r"UpdateRule: the rule's update has dtype .*float64.* parameter of dtype .*float32"
    with pytest.raises(TypeError, match=message):
        hypergrad(problem, solver, fw.array(W), None, strategy=Unrolled())


def _as_int(x: Any) -> Any:
    return x.astype("int64") if not isinstance(x, torch.Tensor) else x.long()


@pytest.mark.parametrize("which", ["inner_loss", "outer_loss"])
def test_an_integer_loss_is_refused(fw: Framework, which: str) -> None:
    """Before (torch): an integer inner loss gave grad [1, 1, 1] (the inner loop never moved) and
    an integer outer loss a zero gradient, silently."""
    base = _quadratic()
    loss = getattr(base, which)
    problem = _quadratic(**{which: lambda w, m, t: _as_int(loss(w, m, t) * 100)})
    message = rf"Problem\.{which} must return a floating-point scalar, got dtype .*int64"
    with pytest.raises(TypeError, match=message):
        hypergrad(problem, GD, fw.array(W), fw.array(TAU), strategy=Unrolled())


def test_a_boolean_loss_is_refused(fw: Framework) -> None:
    problem = _quadratic(outer_loss=lambda w, m, t: (w**2).sum() > 1)
    with pytest.raises(TypeError, match=r"Problem\.outer_loss must return a floating-point scalar"):
        hypergrad(problem, GD, fw.array(W), fw.array(TAU), strategy=Unrolled())


# ------------------------------------------------------------------------------ torchopt


def test_torchopt_accelerated_op_names_the_fix() -> None:
    """Before: torch's "must override the setup_context staticmethod" RuntimeError."""
    torchopt = pytest.importorskip("torchopt")
    t = torch.tensor(TAU)
    opt = solvers.Optimizer(torchopt.adam(1e-2, use_accelerated_op=True), steps=2)
    message = r"Optimizer.*use_accelerated_op=True.*torch\.func.*use_accelerated_op=False"
    with pytest.raises(TypeError, match=message):
        hypergrad(_quadratic(), opt, torch.tensor(W), t, strategy=Unrolled())
    plain = solvers.Optimizer(torchopt.adam(1e-2, use_accelerated_op=False), steps=2)
    check_hypergrad(_quadratic(), plain, torch.tensor(W), t, Unrolled())


# ------------------------------------------------------------- ForwardMode, expanded meta


def test_forward_mode_on_an_expanded_meta_equals_its_contiguous_copy() -> None:
    """Before: "more than one element of the written-to tensor refers to a single memory
    location". An expanded θ is read as the (4, 3) array it shows, 12 independent entries:
    the result equals that of a contiguous copy exactly (the same arithmetic)."""
    meta = torch.tensor(W).expand(4, 3)
    task = torch.arange(12, dtype=torch.float64).reshape(4, 3) / 10
    gd = solvers.GradientDescent(lr=0.3, steps=3)
    got = hypergrad(_quadratic(), gd, meta, task, strategy=ForwardMode())
    want = hypergrad(_quadratic(), gd, meta.contiguous(), task, strategy=ForwardMode())
    assert_close(got.grad, want.grad, rtol=0.0, atol=0.0, dtype=D)
    # and ForwardMode agrees with Unrolled (1e-14: one forward and one reverse pass)
    rev = hypergrad(_quadratic(), gd, meta, task, strategy=Unrolled())
    assert_close(got.grad, rev.grad, rtol=1e-14, atol=1e-16)
    assert meta.stride() == (0, 1)  # the caller's tensor is untouched


# -------------------------------------------------------------------- SciPy's tolerances


def test_scipy_passes_its_options(fw: Framework) -> None:
    """L-BFGS-B's own gtol/ftol reach SciPy: loose ones stop it early. Measured on this quartic
    (float64): 5 iterations and max |∇f| = 0.057 with gtol = ftol = 1e-2, against 10 iterations
    and 1.4e-7 with the defaults (tol=1e-12); the asserts leave a factor > 10 either side."""
    problem = _quadratic(
        inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2 + (w**4).sum() + ((w - m) ** 2).sum()
    )
    obj = InnerObjective(problem.inner_loss, fw.array(W), fw.array(TAU), backend_for(fw.array(W)))

    def run(solver: solvers.Scipy) -> tuple[int, float]:
        w, info = solver.solve(fw.array(W), obj)
        return info.iterations, float(np.abs(numpy(obj.value_and_grad(w)[1])).max())

    loose_its, loose_grad = run(solvers.Scipy(options={"gtol": 1e-2, "ftol": 1e-2}))
    its, grad = run(solvers.Scipy())
    assert loose_its < its
    assert loose_grad > 1e-3 and grad < 1e-6, (loose_grad, grad)


def test_scipy_options_are_validated_and_copied() -> None:
    with pytest.raises(ValueError, match=r"Scipy\(method='L-BFGS-B'\).*'gtoll'.*not an option"):
        solvers.Scipy(options={"gtoll": 1e-8})
    with pytest.raises(ValueError, match=r"Scipy.*gtol=-1.*positive"):
        solvers.Scipy(options={"gtol": -1.0})
    with pytest.raises(ValueError, match=r"Scipy.*maxiter.*field"):
        solvers.Scipy(options={"maxiter": 5})
    with pytest.raises(TypeError, match=r"Scipy.*options must be a mapping"):
        solvers.Scipy(options=[("gtol", 1e-8)])  # type: ignore[arg-type]
    given = {"xtol": 1e-10}
    s = solvers.Scipy(method="Newton-CG", options=given)
    given["xtol"] = 1.0
    assert s.options["xtol"] == 1e-10
    assert eval(repr(s), {"Scipy": solvers.Scipy}) == s  # the repr shows a plain dict
    with pytest.raises(TypeError):
        s.options["xtol"] = 2.0  # type: ignore[index]
