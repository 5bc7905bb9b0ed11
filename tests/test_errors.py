"""Every bad input gets a clear error: the right exception type, and a message that names the
call, the bad value and the fix (docs/diagnostics.md, "Errors").

Numerical failures are ``RuntimeError`` naming the step; doubtful results are warnings plus a
record in ``res.info``, never a silent wrong gradient.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from _frameworks import param_id

from bilevel import (
    Batch,
    FirstOrder,
    ForwardMode,
    Implicit,
    LinearSolveWarning,
    Problem,
    SolverWarning,
    StationarityWarning,
    Truncated,
    Unrolled,
    hypergrad,
    solvers,
    tree,
)
from bilevel.testing import check_hypergrad

D = torch.float64


def t(x: Any) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


def quadratic(**overrides: Any) -> Problem:
    """MAML on a quadratic: φ₀ = θ, f = ½‖φ − τ‖², F = ½‖φ‖²."""
    fields: dict[str, Any] = {
        "init": lambda m, task: m,
        "inner_loss": lambda w, m, task: ((w - task) ** 2).sum() / 2,
        "outer_loss": lambda w, m, task: (w**2).sum() / 2,
    }
    fields.update(overrides)
    return Problem(**fields)


GD = solvers.GradientDescent(lr=0.5, steps=3)
META = t([1.0, 2.0])
TASK = t([0.0, 0.5])

# Every strategy with an iterative solver, plus the black-box path where it applies.
STRATEGIES = [Unrolled(), Truncated(2), FirstOrder(), ForwardMode(), Implicit(solvers.CG())]
ITERATIVE = [pytest.param(GD, s, id=repr(s)) for s in STRATEGIES]
ALL_PATHS = [*ITERATIVE, pytest.param(solvers.Scipy(), Implicit(solvers.CG()), id="Scipy-Implicit")]


# ------------------------------------------------------------------------ non-scalar losses


@pytest.mark.parametrize(("solver", "strategy"), ALL_PATHS)
def test_non_scalar_inner_loss(solver: Any, strategy: Any) -> None:
    problem = quadratic(inner_loss=lambda w, m, task: (w - task) ** 2 / 2)
    with pytest.raises(
        TypeError,
        match=r"Problem\.inner_loss must return a 0-d array \(a scalar\), got Tensor with shape "
        r"torch\.Size\(\[2\]\); reduce it with \.mean\(\) or \.sum\(\)",
    ):
        hypergrad(problem, solver, META, TASK, strategy=strategy)


def test_python_float_inner_loss() -> None:
    problem = quadratic(inner_loss=lambda w, m, task: 1.0)
    with pytest.raises(TypeError, match=r"Problem\.inner_loss must return a 0-d array.*got float"):
        hypergrad(problem, GD, META, TASK, strategy=Unrolled())


@pytest.mark.parametrize(("solver", "strategy"), ALL_PATHS)
def test_non_scalar_outer_loss(solver: Any, strategy: Any) -> None:
    problem = quadratic(outer_loss=lambda w, m, task: w**2)
    with pytest.raises(
        TypeError,
        match=r"Problem\.outer_loss must return a 0-d array \(a scalar\), got Tensor with shape "
        r"torch\.Size\(\[2\]\); reduce it with \.mean\(\) or \.sum\(\)",
    ):
        hypergrad(problem, solver, META, TASK, strategy=strategy)


# ------------------------------------------------------------------------ non-finite values


@pytest.mark.parametrize(("solver", "strategy"), ALL_PATHS)
def test_outer_loss_nan_at_finite_params_is_a_value_error(solver: Any, strategy: Any) -> None:
    # φ_K stays near θ > 0, so log(−φ) is nan while φ itself is finite
    problem = quadratic(outer_loss=lambda w, m, task: torch.log(-w).sum())
    with pytest.raises(
        ValueError,
        match=r"hypergrad: Problem\.outer_loss returned nan at finite inner parameters; "
        r"check outer_loss and the task's data",
    ):
        hypergrad(problem, solver, META, t([1.0, 1.0]), strategy=strategy)


@pytest.mark.parametrize(("solver", "strategy"), ITERATIVE)
def test_inner_loss_nan_from_the_start_names_step_1(solver: Any, strategy: Any) -> None:
    problem = quadratic(inner_loss=lambda w, m, task: ((w - task) ** 2).sum() * math.nan)
    with pytest.raises(
        RuntimeError,
        match=r"hypergrad: the inner loop produced a non-finite value at step 1; .* lower the "
        r"inner learning rate, or check inner_loss",
    ):
        hypergrad(problem, solver, META, TASK, strategy=strategy)


def test_inner_loss_nan_under_scipy_is_a_runtime_error() -> None:
    problem = quadratic(inner_loss=lambda w, m, task: ((w - task) ** 2).sum() * math.nan)
    with pytest.raises(RuntimeError, match=r"Scipy\(.*\): the inner loss or its gradient is not"):
        hypergrad(problem, solvers.Scipy(), META, TASK, strategy=Implicit(solvers.CG()))


def test_non_finite_init_is_named_before_step_1() -> None:
    problem = quadratic(init=lambda m, task: m * math.inf)
    with pytest.raises(
        RuntimeError, match=r"Problem\.init returned non-finite inner parameters \(before step 1\)"
    ):
        hypergrad(problem, GD, META, TASK, strategy=Unrolled())


# Divergence, worked by hand. f(φ) = a·φ²/2 with a = τ = 1 and φ₀ = θ = 1; gradient descent
# with lr = 1e10 gives φ_t = (1 − lr·a)^t = (−(1e10 − 1))^t, so |φ_t| ≈ 1e10^t: φ₃₀ ≈ 1e300 is
# finite, but step 31 computes lr·∇f(φ₃₀) = 1e10 · 1e300 = 1e310 > 1.8e308 (float64's largest)
# and φ₃₁ = ±inf. With 40 steps the error must name step 31, not the last step.
DIVERGENT_STEP = 31


def _divergent_problem() -> Problem:
    return Problem(
        init=lambda m, task: m,
        inner_loss=lambda w, m, task: task * w**2 / 2,
        outer_loss=lambda w, m, task: w**2 / 2,
    )


def test_divergence_step_worked_by_hand_matches_float64() -> None:
    # the hand computation above, checked in plain float64 arithmetic
    lr, phi, step = 1e10, 1.0, 0
    with np.errstate(over="ignore"):
        while np.isfinite(phi):
            phi = np.float64(phi) - lr * np.float64(phi)
            step += 1
    assert step == DIVERGENT_STEP


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
def test_diverging_inner_loop_names_the_step(strategy: Any) -> None:
    solver = solvers.GradientDescent(lr=1e10, steps=40)
    with pytest.raises(
        RuntimeError,
        match=rf"hypergrad: the inner loop produced a non-finite value at step {DIVERGENT_STEP};"
        r" .*lower the inner learning rate",
    ):
        hypergrad(_divergent_problem(), solver, t(1.0), t(1.0), strategy=strategy)


@pytest.mark.parametrize("strategy", [Unrolled(), Implicit(solvers.CG())], ids=repr)
def test_diverging_task_in_a_batch_is_named(strategy: Any) -> None:
    # lr = 1: task 0 (a = 1) lands on 0 in one step; task 1 (a = 1e10 + 1) has
    # 1 − lr·a = −1e10, the same divergence as above, at step 31
    solver = solvers.GradientDescent(lr=1.0, steps=40)
    tasks = Batch(t([1.0, 1e10 + 1]))
    with pytest.raises(
        RuntimeError,
        match=rf"hypergrad \(task 1\): the inner loop produced a non-finite value at step "
        rf"{DIVERGENT_STEP};",
    ):
        hypergrad(_divergent_problem(), solver, t(1.0), tasks, strategy=strategy)


# --------------------------------------------------------------------- mismatched pytrees


def test_update_rule_returning_another_structure() -> None:
    problem = Problem(init=lambda m, task: {"w": m}, outer_loss=lambda p, m, task: p["w"].sum())
    rule = solvers.UpdateRule(lambda p, m, task: p["w"] * 0.5, steps=2)
    with pytest.raises(
        TypeError,
        match=r"UpdateRule: rule returned an update of structure \*, but the parameters have "
        r"structure \{'w': \*\}; return one update per parameter leaf",
    ):
        hypergrad(problem, rule, META, None, strategy=Unrolled())


def test_tree_add_of_mismatched_trees() -> None:
    with pytest.raises(
        ValueError,
        match=r"tree\.map: argument 1 has structure \{'b': \*\}, expected \{'a': \*\}; pass "
        r"trees with the same containers and keys",
    ):
        tree.add({"a": t(1.0)}, {"b": t(1.0)})


# ------------------------------------------------------------ meta-parameters without gradients


@pytest.mark.parametrize(
    ("meta", "dtype"),
    [(torch.tensor([1, 2]), "torch.int64"), ({"a": torch.tensor(True)}, "torch.bool")],
)
def test_meta_that_cannot_carry_a_gradient(meta: Any, dtype: str) -> None:
    with pytest.raises(
        TypeError,
        match=rf"hypergrad: meta leaf 0 of .* has dtype {dtype}, which cannot carry a gradient; "
        r"convert it to a floating dtype \(e\.g\. \.float\(\) or \.double\(\)\)",
    ):
        hypergrad(quadratic(), GD, meta, TASK, strategy=Unrolled())


@pytest.mark.parametrize(
    ("meta", "leaf", "kind"),
    [
        ({"a": META, "b": 0.5}, r"leaf 1 of \{'a': \*, 'b': \*\}", "float"),
        ([META, np.ones(2)], r"leaf 1 of \[\*, \*\]", "ndarray"),
        (0.5, r"leaf 0 of \*", "float"),
    ],
)
def test_meta_leaf_that_is_not_a_tensor(meta: Any, leaf: str, kind: str) -> None:
    with pytest.raises(
        TypeError,
        match=rf"hypergrad: meta {leaf} is a {kind}, not a torch array; every meta-parameter "
        r"must be an array that can carry a gradient \(wrap numbers with torch\.tensor",
    ):
        hypergrad(quadratic(), GD, meta, TASK, strategy=Unrolled())


def test_meta_given_as_a_batch() -> None:
    with pytest.raises(
        TypeError, match=r"meta leaf 0 of \* is a Batch; .* only the task may be a Batch"
    ):
        hypergrad(quadratic(), GD, Batch(torch.zeros(2, 2)), Batch(TASK), strategy=Unrolled())


def test_meta_with_no_tensor_leaves() -> None:
    with pytest.raises(TypeError, match=r"hypergrad: meta has no array leaves; pass a pytree"):
        hypergrad(quadratic(), GD, {}, TASK, strategy=Unrolled())
    # nothing anywhere decides the framework
    with pytest.raises(
        TypeError, match=r"hypergrad: found no torch\.Tensor or jax\.Array leaf.*pytree"
    ):
        hypergrad(quadratic(), GD, {"a": 1.0}, None, strategy=Unrolled())


# --------------------------------------------------------------- strategies and black boxes


@pytest.mark.parametrize(
    ("strategy", "name"),
    [(Unrolled(), r"Unrolled\(\)"), (Truncated(2), r"Truncated\(2\)"), (ForwardMode(), "Forw")],
)
def test_differentiating_through_scipy_is_refused(strategy: Any, name: str) -> None:
    with pytest.raises(
        TypeError,
        match=rf"{name}.* differentiates through the inner loop, but Scipy\(.*\) is a black-box "
        r"solver with no differentiable steps; use FirstOrder\(\) or Implicit\(\.\.\.\) with it",
    ):
        hypergrad(quadratic(), solvers.Scipy(), META, TASK, strategy=strategy)


@pytest.mark.parametrize("steps", [0, -1])
def test_truncated_needs_at_least_one_step(steps: int) -> None:
    with pytest.raises(ValueError, match=rf"Truncated\(steps={steps}\).*>= 1.*FirstOrder\(\)"):
        Truncated(steps)


@pytest.mark.parametrize("steps", [1.5, True])
def test_truncated_with_a_non_integer_is_a_type_error(steps: Any) -> None:
    # a wrong type is a TypeError (Truncated's docstring); T < 1 is the ValueError above
    with pytest.raises(TypeError, match=rf"Truncated\(steps={steps!r}\).*int.*FirstOrder\(\)"):
        Truncated(steps)


@pytest.mark.parametrize("steps", ["2", None])
def test_truncated_with_a_non_number_names_the_value(steps: Any) -> None:
    # either exception type is defensible for a non-number; the message must still say what
    # was passed and what to pass instead
    with pytest.raises((TypeError, ValueError), match=rf"Truncated\(steps={steps!r}\).*int"):
        Truncated(steps)


@pytest.mark.parametrize("tol", [0, -1e-3, math.nan, math.inf])
def test_implicit_stationarity_tol_must_be_positive(tol: float) -> None:
    with pytest.raises(ValueError, match=r"Implicit\(.*stationarity_tol=.*positive"):
        Implicit(solvers.CG(), stationarity_tol=tol)


@pytest.mark.parametrize(
    "linear",
    [
        "cg",
        None,
        GD,
        pytest.param(solvers.Scipy()),
    ],
    ids=repr,
)
def test_implicit_needs_a_linear_solver(linear: Any) -> None:
    with pytest.raises(
        TypeError, match=r"Implicit\(linear=.*\): linear must be a linear solver.*solvers\.CG"
    ):
        Implicit(linear=linear)


def test_implicit_with_a_linear_solver_class_instead_of_an_instance() -> None:
    with pytest.raises(TypeError, match=r"Implicit\(linear=.*CG"):
        Implicit(linear=solvers.CG)  # type: ignore[arg-type]


# ---------------------------------------------------------------- solver hyperparameters


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: solvers.GradientDescent(lr=0, steps=1), r"GradientDescent\(lr=0, .*lr=0 must"),
        (lambda: solvers.GradientDescent(lr=-1, steps=1), r"GradientDescent\(.*lr=-1 must be"),
        (lambda: solvers.GradientDescent(lr=math.nan, steps=1), r"lr=nan must be positive"),
        (lambda: solvers.GradientDescent(lr=math.inf, steps=1), r"lr=inf must be positive"),
        (lambda: solvers.GradientDescent(lr=0.1, steps=-1), r"steps=-1 must be >= 0"),
        (lambda: solvers.GradientDescent(lr=0.1, steps=1, momentum=1.0), r"momentum must be <"),
        (lambda: solvers.GradientDescent(lr=0.1, steps=1, momentum=-0.1), r"momentum=-0.1 must"),
        (lambda: solvers.CG(tol=0), r"CG\(maxiter=100, tol=0, .*\): tol=0 must be positive"),
        (lambda: solvers.CG(maxiter=0), r"CG\(maxiter=0.*maxiter=0 must be >= 1"),
        (lambda: solvers.Neumann(tol=-1), r"Neumann\(.*tol=-1\): tol=-1 must be positive"),
        (lambda: solvers.Neumann(alpha=0), r"Neumann\(.*alpha=0 must be positive"),
        (lambda: solvers.MINRES(maxiter=0), r"MINRES\(maxiter=0, .*maxiter=0 must be >= 1"),
        (lambda: solvers.GMRES(tol=0), r"GMRES\(.*tol=0 must be positive"),
        (lambda: solvers.Direct(tol=0), r"Direct\(tol=0\): tol=0 must be positive"),
        (lambda: solvers.Scipy(tol=-1.0), r"Scipy\(method='L-BFGS-B'\): tol=-1.0 must be"),
        (lambda: solvers.Scipy(maxiter=0), r"Scipy\(.*maxiter=0 must be >= 1"),
        (lambda: solvers.Scipy("Nelder-Mead"), r"Scipy\(method='Nelder-Mead'\): method must"),
        (lambda: solvers.UpdateRule(lambda p, m, task: p, steps=-2), r"steps=-2 must be >= 0"),
    ],
)
def test_hyperparameter_out_of_range_is_a_value_error(make: Any, match: str) -> None:
    # "must be positive and finite, e.g. lr=0.01" names the fix for the numeric ones
    with pytest.raises(ValueError, match=match):
        make()


def test_value_error_messages_suggest_a_value() -> None:
    with pytest.raises(ValueError, match=r"must be positive and finite, e\.g\. lr=0\.01"):
        solvers.GradientDescent(lr=0, steps=1)
    with pytest.raises(ValueError, match=r"e\.g\. tol=1e-10"):
        solvers.CG(tol=0)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: solvers.GradientDescent(lr="0.1", steps=1), r"lr must be a number, got str"),
        (lambda: solvers.GradientDescent(lr=None, steps=1), r"lr must be a number, got NoneType"),
        (lambda: solvers.GradientDescent(lr=True, steps=1), r"lr must be a number, got bool"),
        (lambda: solvers.GradientDescent(lr=t(0.1), steps=1), r"lr must be a number, got Tens"),
        (lambda: solvers.GradientDescent(lr=0.1, steps=2.0), r"steps must be an int, got float"),
        (lambda: solvers.CG(tol="small"), r"CG\(.*tol must be a number, got str"),
        (lambda: solvers.UpdateRule(3, steps=1), r"UpdateRule: rule must be a function"),
    ],
)
def test_hyperparameter_of_the_wrong_type_is_a_type_error(make: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        make()


@pytest.mark.parametrize("transform", [object(), torch.optim.SGD, "adam"], ids=param_id)
def test_optimizer_needs_init_and_update(transform: Any) -> None:
    with pytest.raises(
        TypeError,
        match=r"Optimizer: transform must be an optax-style gradient transformation with "
        r"init\(params\) and update\(grads, state, params\) \(e\.g\. optax\.adam\(1e-3\) or "
        r"torchopt\.adam\(1e-3\)\)",
    ):
        solvers.Optimizer(transform, steps=3)


# -------------------------------------------------------------------------------- Problem


def _ok2(m: Any, task: Any) -> Any:
    return m


def _ok3(p: Any, m: Any, task: Any) -> Any:
    return p


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"init": 3}, r"Problem: init must be a function \(meta, task\) -> params, got int \(3\)"),
        ({"init": None}, r"Problem: init must be a function .* got NoneType"),
        ({"init": lambda m: m}, r"Problem: init must accept 2 positional arguments .* is \(m\)"),
        (
            {"outer_loss": "loss"},
            r"Problem: outer_loss must be a function \(params, meta, task\) -> scalar, got str",
        ),
        (
            {"outer_loss": lambda p, m: p},
            r"Problem: outer_loss must accept 3 positional arguments .* signature is \(p, m\)",
        ),
        ({"inner_loss": 1.0}, r"Problem: inner_loss must be a function .* got float"),
        ({"inner_loss": lambda p, m, task, x: p}, r"inner_loss must accept 3 positional"),
    ],
)
def test_problem_fields_are_checked(fields: dict[str, Any], match: str) -> None:
    kwargs: dict[str, Any] = {"init": _ok2, "outer_loss": _ok3, **fields}
    with pytest.raises(TypeError, match=match):
        Problem(**kwargs)


def test_problem_accepts_functions_with_defaults_and_varargs() -> None:
    # the arity check binds arguments; it must not refuse valid signatures (positive control)
    p = Problem(init=lambda *a: a[0], outer_loss=lambda p, m, task, extra=1: p)
    assert p.inner_loss is None


# ------------------------------------------------------------------------------- hypergrad


@pytest.mark.parametrize("problem", [None, lambda m, task: m, {"init": _ok2}], ids=param_id)
def test_hypergrad_needs_a_problem(problem: Any) -> None:
    with pytest.raises(
        TypeError,
        match=r"hypergrad: problem must be a bilevel\.Problem, got \w+; build one with "
        r"Problem\(init=\.\.\., inner_loss=\.\.\., outer_loss=\.\.\.\)",
    ):
        hypergrad(problem, GD, META, TASK, strategy=Unrolled())


@pytest.mark.parametrize("strategy", [None, "unrolled", solvers.CG()], ids=repr)
def test_hypergrad_needs_a_strategy(strategy: Any) -> None:
    with pytest.raises(
        TypeError,
        match=r"hypergrad: strategy must be a strategy such as Unrolled\(\), Truncated\(T\), "
        r"FirstOrder\(\) or Implicit\(solvers\.CG\(\)\), got",
    ):
        hypergrad(quadratic(), GD, META, TASK, strategy=strategy)


def test_hypergrad_with_a_strategy_class_instead_of_an_instance() -> None:
    with pytest.raises(
        TypeError,
        match=r"hypergrad: strategy=Unrolled is a class; pass an instance, "
        r"e\.g\. strategy=Unrolled\(\)",
    ):
        hypergrad(quadratic(), GD, META, TASK, strategy=Unrolled)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", [FirstOrder(), Implicit(solvers.CG())], ids=repr)
def test_hypergrad_needs_a_solver(strategy: Any) -> None:
    with pytest.raises(
        TypeError,
        match=r"hypergrad: solver must be an inner solver \(with init/step/params/steps, or "
        r"solve\), got str \('gd'\); use e\.g\. solvers\.GradientDescent\(lr, steps\)",
    ):
        hypergrad(quadratic(), "gd", META, TASK, strategy=strategy)


@pytest.mark.parametrize("solver", ["gd", None, solvers.GradientDescent], ids=repr)
def test_unrolled_with_something_that_is_not_a_solver(solver: Any) -> None:
    with pytest.raises(TypeError) as err:
        hypergrad(quadratic(), solver, META, TASK, strategy=Unrolled())
    assert "black-box" not in str(err.value)
    expected = (
        "is a class; pass an instance"
        if isinstance(solver, type)
        else "solver must be an inner solver"
    )
    assert expected in str(err.value)


# ------------------------------------------------------------ problems without inner_loss

NO_INNER = Problem(init=lambda m, task: m * 0, outer_loss=lambda w, m, task: (w**2).sum())


@pytest.mark.parametrize(
    ("solver", "strategy"),
    [
        (GD, Unrolled()),
        (GD, FirstOrder()),
        (solvers.Scipy(), FirstOrder()),
        # momentum keeps a velocity besides φ: no fixed point of φ alone, and no loss either
        (solvers.GradientDescent(lr=0.1, steps=2, momentum=0.5), Implicit(solvers.GMRES())),
    ],
    ids=repr,
)
def test_loss_based_solver_on_a_problem_without_inner_loss(solver: Any, strategy: Any) -> None:
    with pytest.raises(
        TypeError,
        match=r"this inner solver needs the inner loss, but the Problem has inner_loss=None; "
        r"pass Problem\(inner_loss=\.\.\.\) or use solvers\.UpdateRule",
    ):
        hypergrad(NO_INNER, solver, META, None, strategy=strategy)


class HeavyBallRule:
    """An update rule with momentum: its state is (φ, velocity), and it needs no inner loss."""

    steps = 100
    vectorizable = True

    def __repr__(self) -> str:
        return "HeavyBallRule()"

    def init(self, params: Any, objective: Any) -> Any:
        return params, objective.backend.zeros_like(params)

    def step(self, state: Any, objective: Any) -> Any:
        params, velocity = state
        velocity = tree.axpy(0.5, velocity, tree.sub(objective.meta, params))
        return tree.axpy(0.5, velocity, params), velocity

    def params(self, state: Any) -> Any:
        return state[0]


def test_implicit_fixed_point_of_a_solver_with_extra_state() -> None:
    # Was refused ("keeps state besides the parameters"); the fixed point is now that of the
    # step restarted at φ (velocity 0), φ* = θ, so F = ‖φ*‖² has the gradient 2θ
    res = hypergrad(NO_INNER, HeavyBallRule(), META, None, strategy=Implicit(solvers.GMRES()))
    # 100 steps at rate 0.71: φ_100 is 1e-15 from φ*; GMRES to 1e-10 on a 2×2 system
    torch.testing.assert_close(res.grad, 2 * META, rtol=1e-9, atol=0)


# A contraction φ ← φ + (θ − φ/2): fixed point φ* = 2θ, F = ‖φ‖², so dF/dθ = 2φ*·2 = 8θ.
RULE = solvers.UpdateRule(lambda w, m, task: m - 0.5 * w, steps=60)


@pytest.mark.parametrize("linear", [solvers.CG(), solvers.MINRES()], ids=repr)
def test_symmetric_solver_on_a_fixed_point_system(linear: Any) -> None:
    with pytest.raises(
        ValueError,
        match=rf"{type(linear).__name__}\(.*\) needs a symmetric operator, but this system .* "
        r"is not symmetric in general; use solvers\.GMRES, solvers\.Neumann or solvers\.Direct",
    ):
        hypergrad(NO_INNER, RULE, META, None, strategy=Implicit(linear))


def test_gmres_on_the_same_fixed_point_system_works() -> None:
    # positive control for the test above: the suggested fix gives the closed form 8θ
    res = hypergrad(NO_INNER, RULE, META, None, strategy=Implicit(solvers.GMRES()))
    # φ_60 is 2^-60 (≈ 1e-18) from φ*, below float64 resolution at this scale: rtol 1e-12
    torch.testing.assert_close(res.grad, 8 * META, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------- Batch


MALFORMED = [
    pytest.param(
        {"x": torch.zeros(3, 2), "y": torch.zeros(4, 2)},
        r"Batch: every array leaf of the tasks needs the same leading task axis, found "
        r"leading sizes \[3, 4\] in \{'x': \*, 'y': \*\}; stack the tasks along axis 0",
        id="3-vs-4",
    ),
    pytest.param(
        {"x": torch.zeros(3, 2), "y": torch.zeros(())},
        r"found leading sizes \[3\] and 0-d leaves",
        id="0-d-leaf",
    ),
    pytest.param(torch.zeros(0, 2), r"Batch: the task axis is empty", id="empty"),
]
NO_ARRAYS = pytest.param({"x": 1.0, "n": "name"}, r"found leading sizes \[\]", id="no-arrays")


@pytest.mark.parametrize(("tasks", "match"), [*MALFORMED, NO_ARRAYS])
def test_malformed_batch(tasks: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Batch(tasks).size()


@pytest.mark.parametrize(
    ("tasks", "match"),
    [
        *MALFORMED,
        pytest.param(*NO_ARRAYS.values, id="no-arrays"),
    ],
)
def test_malformed_batch_in_hypergrad(tasks: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hypergrad(quadratic(), GD, META, Batch(tasks), strategy=Unrolled())


# ------------------------------------------------------------------------------- warnings


H = torch.diag(t([1.0, 10.0, 100.0, 1e3, 1e4]))  # condition number 1e4


def _ill_conditioned() -> Problem:
    """f = ½φᵀHφ − φᵀθ with the exact minimiser H⁻¹θ as init, so only the linear solve errs."""
    return Problem(
        init=lambda m, task: torch.linalg.solve(H, m),
        inner_loss=lambda w, m, task: w @ H @ w / 2 - w @ m,
        outer_loss=lambda w, m, task: ((w - task) ** 2).sum() / 2,
    )


def test_unconverged_linear_solve_warns_and_is_recorded() -> None:
    meta, task = torch.ones(5, dtype=D), torch.ones(5, dtype=D)
    strategy = Implicit(solvers.CG(maxiter=1))
    with pytest.warns(
        LinearSolveWarning,
        match=r"hypergrad: the linear solve of Implicit\(linear=CG\(maxiter=1, .*\) did not "
        r"converge: 1 iterations, relative residual",
    ):
        res = hypergrad(
            _ill_conditioned(), solvers.GradientDescent(1e-4, 0), meta, task, strategy=strategy
        )
    assert res.info.linear is not None
    assert res.info.linear.converged is False
    assert res.info.linear.iterations == 1
    # one CG step on five distinct eigenvalues cannot reach tol = 1e-10
    assert res.info.linear.residual > 1e-3
    # positive control: five iterations solve a 5-d system, and then nothing is warned
    with warnings.catch_warnings():
        warnings.simplefilter("error", LinearSolveWarning)
        ok = hypergrad(
            _ill_conditioned(),
            solvers.GradientDescent(1e-4, 0),
            meta,
            task,
            strategy=Implicit(solvers.CG(maxiter=10)),
        )
    assert ok.info.linear is not None
    assert ok.info.linear.converged is True


def test_non_stationary_inner_problem_warns_and_is_recorded() -> None:
    # f = ½(φ − θ)², φ₀ = 0, θ = 1, lr ½: φ₁ = ½, φ₂ = ¾, so ∇f(φ₂) = −¼ and ‖G‖ = 0.25, judged
    # against 1e-4 × max(‖H (φ₂ − φ₀)‖, ‖H φ₂‖) = 1e-4 × ¾ (H = 1, φ₀ = 0)
    problem = Problem(
        init=lambda m, task: torch.zeros((), dtype=D),
        inner_loss=lambda w, m, task: (w - m) ** 2 / 2,
        outer_loss=lambda w, m, task: w**2 / 2,
    )
    strategy = Implicit(solvers.CG())
    with pytest.warns(
        StationarityWarning,
        match=r"hypergrad: the inner problem is not solved: ‖G\(φ\*\)‖ = 0\.25 > "
        r"7\.5e-05 = stationarity_tol × the problem's gradient scale .*run more inner steps or a "
        r"better inner solver",
    ):
        res = hypergrad(problem, solvers.GradientDescent(0.5, 2), t(1.0), None, strategy=strategy)
    assert res.info.stationarity is not None
    assert res.info.stationarity > strategy.stationarity_tol
    # the hand value is exact in binary floating point (halves and quarters)
    assert res.info.stationarity == 0.25
    assert res.info.stationarity_limit == pytest.approx(0.75e-4, rel=1e-15)


SOLVER_WARNING_PATHS = [
    pytest.param(Implicit(solvers.CG()), id="Implicit"),
    pytest.param(FirstOrder(), id="FirstOrder"),
]


@pytest.mark.parametrize("strategy", SOLVER_WARNING_PATHS)
def test_failed_scipy_run_warns_and_is_recorded(strategy: Any) -> None:
    meta, task = torch.ones(5, dtype=D), torch.zeros(5, dtype=D)
    problem = Problem(
        init=lambda m, task: torch.zeros(5, dtype=D),
        inner_loss=lambda w, m, task: w @ H @ w / 2 - w @ m,
        outer_loss=lambda w, m, task: ((w - task) ** 2).sum() / 2,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = hypergrad(problem, solvers.Scipy(maxiter=1), meta, task, strategy=strategy)
    solver_warnings = [w for w in caught if issubclass(w.category, SolverWarning)]
    assert len(solver_warnings) == 1
    assert "hypergrad: the inner solver reported failure after 1 iterations" in str(
        solver_warnings[0].message
    )
    assert res.info.solver is not None
    assert res.info.solver.success is False
    assert res.info.solver.iterations == 1


def _stationarity_warnings(task: Any) -> list[warnings.WarningMessage]:
    problem = Problem(
        init=lambda m, task: torch.zeros((), dtype=D),
        inner_loss=lambda w, m, task: (w - m) ** 2 / 2,
        outer_loss=lambda w, m, task: w**2 / 2,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hypergrad(
            problem, solvers.GradientDescent(0.5, 2), t(1.0), task, strategy=Implicit(solvers.CG())
        )
    return [w for w in caught if issubclass(w.category, StationarityWarning)]


def test_warning_points_at_the_callers_line() -> None:
    assert [w.filename for w in _stationarity_warnings(None)] == [__file__]


def test_batch_warns_once_per_call_at_the_callers_line() -> None:
    # both tasks are unsolved: one warning for the call, counting the tasks, at this file
    caught = _stationarity_warnings(Batch(t([0.0, 1.0])))
    assert [w.filename for w in caught] == [__file__]
    assert "(2 of 2 tasks; task 0 shown)" in str(caught[0].message)


# ------------------------------------------------------------------------- check_hypergrad


@pytest.mark.parametrize(
    ("meta", "task", "what"),
    [
        (torch.tensor([1.0, 2.0]), TASK, "meta"),
        (META, torch.tensor([0.0, 0.5]), "task"),
        ({"a": META, "b": torch.tensor(1.0, dtype=torch.float16)}, TASK, "meta"),
    ],
)
def test_check_hypergrad_refuses_low_precision(meta: Any, task: Any, what: str) -> None:
    with pytest.raises(
        ValueError,
        match=rf"check_hypergrad: a {what} leaf has dtype torch\.float(32|16); finite "
        r"differences need float64 to be meaningful: convert meta and task with \.double\(\)",
    ):
        check_hypergrad(quadratic(), GD, meta, task, Unrolled())


@pytest.mark.parametrize("step", [0.0, -1e-5, math.nan])
def test_check_hypergrad_refuses_a_bad_step(step: float) -> None:
    with pytest.raises(ValueError, match=r"check_hypergrad: step=.* must be positive"):
        check_hypergrad(quadratic(), GD, META, TASK, Unrolled(), step=step)


# ------------------------------------------- errors in bilevel's words, not the framework's (#9)


def _squares_from(init: Any) -> Problem:
    return Problem(
        init=init,
        inner_loss=lambda w, m, task: ((w - m) ** 2).sum(),
        outer_loss=lambda w, m, task: (w**2).sum(),
    )


@pytest.mark.parametrize(
    ("init", "match"),
    [
        # before: a Python float gave torch.func's "Thing passed to transform API must be Tensor"
        (lambda m, task: 1.0, r"Problem.init returned a float at leaf 0"),
        # before: an integer φ took no step (zero gradient), or torch's "only floating point"
        (lambda m, task: torch.zeros(2, dtype=torch.int64), r"Problem.init .* dtype torch.int64"),
        (lambda m, task: torch.zeros(2, dtype=torch.complex128), r"dtype torch.complex128"),
    ],
    ids=["float", "int", "complex"],
)
@pytest.mark.parametrize(
    "strategy", [Unrolled(), FirstOrder(), Implicit(solvers.CG()), ForwardMode()], ids=repr
)
def test_init_returning_a_number_or_a_non_floating_array_is_a_type_error(
    init: Any, match: str, strategy: Any
) -> None:
    with pytest.raises(TypeError, match=match):
        hypergrad(
            _squares_from(init),
            solvers.GradientDescent(0.1, 2),
            t([1.0, 2.0]),
            t([0.0, 0.0]),
            strategy=strategy,
        )


def test_implicit_inside_jax_jit_is_a_clear_error() -> None:
    # before: JAX's ConcretizationTypeError from inside CG's host-side stopping test
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    problem = _squares_from(lambda m, task: m * 1.0)
    solver = solvers.GradientDescent(0.1, 2)

    @jax.jit
    def one(m: Any, task: Any) -> Any:
        return hypergrad(problem, solver, m, task, strategy=Implicit(solvers.CG())).grad

    @jax.jit
    def batch(m: Any, tasks: Any) -> Any:
        return hypergrad(problem, solver, m, Batch(tasks), strategy=Implicit(solvers.CG())).grad

    with pytest.raises(TypeError, match=r"Implicit\(\.\.\.\) cannot run inside jax.jit"):
        one(jnp.ones(2), jnp.zeros(2))
    with pytest.raises(TypeError, match=r"Implicit\(\.\.\.\) cannot run inside jax.jit"):
        batch(jnp.ones(2), jnp.zeros((3, 2)))


def test_implicit_refuses_a_per_step_inner_loss_before_solving() -> None:
    from bilevel import PerStep

    calls = []

    def loss(w: Any, m: Any, task: Any, step: Any) -> Any:
        calls.append(step)
        return ((w - m) ** 2).sum()

    problem = Problem(
        init=lambda m, task: m * 1.0,
        inner_loss=PerStep(loss),
        outer_loss=lambda w, m, task: (w**2).sum(),
    )
    with pytest.raises(TypeError, match=r"inner_loss is a PerStep .* Unrolled\(\)"):
        hypergrad(
            problem,
            solvers.GradientDescent(0.1, 3),
            t([1.0]),
            t([0.0]),
            strategy=Implicit(solvers.CG()),
        )
    assert calls == []  # refused before the inner loop ran (it ran all 3 steps before)
