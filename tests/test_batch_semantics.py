"""A :class:`~bilevel.Batch` means exactly "one call per task, averaged", on real models.

The reference is always the loop over tasks: one :func:`~bilevel.hypergrad` call per task, the
values and gradients averaged in float64. Normalisation layers couple the examples of a task
(batch statistics), which is where torch.func's ``grad(vmap(f))`` went wrong: through
``F.batch_norm`` with an unrolled inner step it returned a hypergradient 0.56 off (relative, on
the conv weight of the net below) and gave the conv bias in front of BatchNorm, whose gradient
is exactly 0, a gradient of norm 0.86. Tolerance: the loop and the batch do the same float64
operations in another order, so they agree to a few ulps of the gradient's size
(``RTOL = 1e-12`` leaves room for sums over ~1e3 terms, ``1e3·1.1e-16 ≈ 1e-13``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _frameworks import Framework, numpy, xp
from _generators import randn, rng

from bilevel import (
    Batch,
    FirstOrder,
    ForwardMode,
    Implicit,
    Problem,
    StationarityWarning,
    Truncated,
    Unrolled,
    hypergrad,
    solve,
    solvers,
)

RTOL = 1e-12
N_TASKS = 3


def _conv_params(r: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w": 0.3 * r.standard_normal((4, 2, 3, 3)),
        "b": 0.1 * r.standard_normal(4),
        "g": 1 + 0.1 * r.standard_normal(4),
        "beta": 0.1 * r.standard_normal(4),
        "fc": 0.1 * r.standard_normal((5, 4 * 4 * 4)),
    }


def _norm_layers() -> dict[str, Callable[[Any, dict[str, Any]], Any]]:
    """Each normalisation as the net's torch.nn.functional call (train-mode statistics)."""
    return {
        "batch_norm": lambda h, p: F.batch_norm(h, None, None, p["g"], p["beta"], training=True),
        "layer_norm": lambda h, p: (
            F.layer_norm(h, h.shape[1:]) * p["g"][:, None, None] + p["beta"][:, None, None]
        ),
        "group_norm": lambda h, p: F.group_norm(h, 2, p["g"], p["beta"]),
        "instance_norm": lambda h, p: F.instance_norm(h, weight=p["g"], bias=p["beta"]),
    }


def _conv_problem(norm: Callable[[Any, dict[str, Any]], Any]) -> Problem:
    def net(p: dict[str, Any], x: Any) -> Any:
        h = norm(F.conv2d(x, p["w"], p["b"], padding=1), p)
        return F.relu(F.max_pool2d(h, 2)).flatten(1) @ p["fc"].T

    return Problem(
        init=lambda m, t: m,
        inner_loss=lambda p, m, t: F.cross_entropy(net(p, t["xs"]), t["ys"]),
        outer_loss=lambda p, m, t: F.cross_entropy(net(p, t["xq"]), t["yq"]),
    )


def _few_shot_tasks(r: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
    return {
        "xs": torch.from_numpy(r.standard_normal((n, 10, 2, 8, 8))),
        "ys": torch.from_numpy(r.integers(0, 5, (n, 10))),
        "xq": torch.from_numpy(r.standard_normal((n, 10, 2, 8, 8))),
        "yq": torch.from_numpy(r.integers(0, 5, (n, 10))),
    }


def _loop_mean(problem: Problem, solver: Any, meta: Any, tasks: Any, strategy: Any) -> Any:
    n = int(next(iter(tasks.values())).shape[0])
    results = [
        hypergrad(problem, solver, meta, {k: v[i] for k, v in tasks.items()}, strategy=strategy)
        for i in range(n)
    ]
    grad = {k: sum(r.grad[k] for r in results) / n for k in meta}
    return sum(r.value for r in results) / n, grad


@pytest.mark.parametrize("norm", list(_norm_layers()))
@pytest.mark.parametrize("strategy", [Unrolled(), Truncated(1), FirstOrder()], ids=repr)
def test_batch_equals_the_loop_over_tasks_through_normalisation_layers(
    norm: str, strategy: Any
) -> None:
    r = rng(7)
    meta = {k: torch.from_numpy(v) for k, v in _conv_params(r).items()}
    tasks = _few_shot_tasks(r, N_TASKS)
    problem = _conv_problem(_norm_layers()[norm])
    # init = meta, so Truncated(1) of 2 steps sees θ only through the last step's params
    solver = solvers.GradientDescent(lr=0.4, steps=2)
    res = hypergrad(problem, solver, meta, Batch(tasks), strategy=strategy)
    value, grad = _loop_mean(problem, solver, meta, tasks, strategy)
    assert abs(float(res.value - value)) <= RTOL * abs(float(value))
    scale = max(float(g.abs().max()) for g in grad.values())
    for k in meta:
        err = float((res.grad[k] - grad[k]).abs().max())
        assert err <= RTOL * scale, f"{norm} {strategy!r} {k}: {err:.3g} vs scale {scale:.3g}"


def test_conv_bias_in_front_of_batch_norm_gets_no_gradient_in_a_batch() -> None:
    # BatchNorm subtracts the per-channel mean, so the conv bias cancels: its hypergradient is
    # 0 up to rounding (the loop gives ~1e-16). grad(vmap) in torch gave it norm 0.86.
    r = rng(3)
    meta = {k: torch.from_numpy(v) for k, v in _conv_params(r).items()}
    tasks = _few_shot_tasks(r, 4)
    problem = _conv_problem(_norm_layers()["batch_norm"])
    res = hypergrad(
        problem, solvers.GradientDescent(lr=0.4, steps=2), meta, Batch(tasks), strategy=Unrolled()
    )
    scale = float(res.grad["w"].abs().max())
    assert float(res.grad["b"].abs().max()) <= 1e-13 * scale


# ----------------------------------------------------------------- per-task randomness (torch)


def _noisy_problem() -> Problem:
    """Dropout and torch.randn inside the losses: every task should draw its own numbers."""
    return Problem(
        init=lambda m, t: m,
        inner_loss=lambda w, m, t: ((F.dropout(w, 0.5, training=True) - t) ** 2).sum(),
        outer_loss=lambda w, m, t: ((w - t) ** 2).sum() + torch.randn(()).to(w.dtype),
    )


def test_tasks_of_a_batch_draw_independent_random_numbers_reproducibly() -> None:
    meta = torch.ones(50, dtype=torch.float64)
    tasks = Batch(torch.zeros(4, 50, dtype=torch.float64))  # four identical tasks
    solver = solvers.GradientDescent(lr=0.1, steps=1)
    torch.manual_seed(0)
    first = hypergrad(_noisy_problem(), solver, meta, tasks, strategy=Unrolled())
    torch.manual_seed(0)
    again = hypergrad(_noisy_problem(), solver, meta, tasks, strategy=Unrolled())
    # identical tasks, so any difference between them is their random numbers; with
    # randomness="same" all four values and parameter rows were equal
    values = first.task_values
    assert len({float(v) for v in values}) == 4
    rows = first.params
    assert all(not torch.equal(rows[0], rows[i]) for i in range(1, 4))
    # reproducible under a seed: bitwise
    assert torch.equal(first.task_values, again.task_values)
    assert torch.equal(first.grad, again.grad)
    # solve draws per task too
    torch.manual_seed(1)
    adapted = solve(_noisy_problem(), solver, meta, tasks)
    assert not torch.equal(adapted[0], adapted[1])


def test_jax_tasks_get_independent_randomness_from_per_task_keys(fw: Framework) -> None:
    if fw.name != "jax":
        pytest.skip("JAX draws random numbers from explicit keys; torch is tested above")
    import jax

    def outer(w: Any, m: Any, t: Any) -> Any:
        return ((w - m) ** 2).sum() + jax.random.normal(t["key"], ())

    problem = Problem(init=lambda m, t: m, inner_loss=None, outer_loss=outer)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    meta = fw.array(np.ones(3))
    tasks = Batch({"key": keys, "x": fw.array(np.zeros((4, 3)))})
    res = hypergrad(
        problem, solvers.UpdateRule(lambda s, m, t: s, 0), meta, tasks, strategy=Unrolled()
    )
    again = hypergrad(
        problem, solvers.UpdateRule(lambda s, m, t: s, 0), meta, tasks, strategy=Unrolled()
    )
    assert len({float(v) for v in numpy(res.task_values)}) == 4
    np.testing.assert_array_equal(numpy(res.task_values), numpy(again.task_values))
    for i in range(4):  # each task's draw is the loop's draw with its own key
        one = hypergrad(
            problem,
            solvers.UpdateRule(lambda s, m, t: s, 0),
            meta,
            {"key": keys[i], "x": tasks.tasks["x"][i]},
            strategy=Unrolled(),
        )
        assert float(one.value) == float(res.task_values[i])


# ------------------------------------------ normalisation written once, both backends (fw)


def _normalised_mlp(p: Any, x: Any) -> Any:
    ns = xp(x)
    h = x @ p["w1"]
    mu = h.mean(0, keepdims=True) if ns is not torch else h.mean(0, keepdim=True)
    var = ((h - mu) ** 2).mean(0)
    h = (h - mu) / ns.sqrt(var + 1e-5) * p["g"] + p["beta"]
    return ns.tanh(h) @ p["w2"]


BATCH_NORM_MLP = Problem(
    init=lambda m, t: m,
    inner_loss=lambda p, m, t: ((_normalised_mlp(p, t["xs"]) - t["ys"]) ** 2).mean(),
    outer_loss=lambda p, m, t: ((_normalised_mlp(p, t["xq"]) - t["yq"]) ** 2).mean(),
)


def test_batch_statistics_written_by_hand_batch_equals_loop(fw: Framework) -> None:
    r = rng(11)
    meta = fw.tree(
        {
            "w1": randn(r, 3, 6),
            "g": 1 + 0.1 * randn(r, 6),
            "beta": randn(r, 6),
            "w2": randn(r, 6, 1),
        }
    )
    data = fw.tree(
        {k: randn(r, N_TASKS, 8, d) for k, d in (("xs", 3), ("ys", 1), ("xq", 3), ("yq", 1))}
    )
    solver = solvers.GradientDescent(lr=0.3, steps=3)
    res = hypergrad(BATCH_NORM_MLP, solver, meta, Batch(data), strategy=Unrolled())
    grads = [
        numpy(
            hypergrad(
                BATCH_NORM_MLP,
                solver,
                meta,
                {k: v[i] for k, v in data.items()},
                strategy=Unrolled(),
            ).grad
        )
        for i in range(N_TASKS)
    ]
    for k in meta:
        want = sum(g[k] for g in grads) / N_TASKS
        np.testing.assert_allclose(numpy(res.grad[k]), want, rtol=1e-11, atol=1e-13)


# ------------------------------------------------- results: no history, no aliasing, no mutation

SQUARES = Problem(
    init=lambda m, t: m,
    inner_loss=lambda w, m, t: ((w - t) ** 2).sum(),
    outer_loss=lambda w, m, t: (w**2).sum(),
)
ZERO_STEPS = solvers.GradientDescent(lr=0.1, steps=0)


def test_results_carry_no_autograd_history_of_a_closed_over_module() -> None:
    # A loss closing over a module whose parameters require grad (not meta): before, value and
    # grad carried a grad_fn and 1,000 kept results held 141 MiB of graph.
    frozen = torch.nn.Linear(3, 3).double()
    problem = Problem(
        init=lambda m, t: m,
        inner_loss=lambda w, m, t: (frozen(w) ** 2).sum(),
        outer_loss=lambda w, m, t: (frozen(w - t) ** 2).sum(),
    )
    meta = torch.ones(3, dtype=torch.float64)
    for task in (
        torch.zeros(3, dtype=torch.float64),
        Batch(torch.zeros(2, 3, dtype=torch.float64)),
    ):
        for strategy in (Unrolled(), FirstOrder()):
            res = hypergrad(
                problem, solvers.GradientDescent(lr=0.1, steps=2), meta, task, strategy=strategy
            )
            for leaf in (res.value, res.grad, res.params, res.task_values):
                assert leaf.grad_fn is None and not leaf.requires_grad
    assert solve(problem, solvers.GradientDescent(lr=0.1, steps=2), meta, task).grad_fn is None


def test_result_params_never_alias_the_callers_arrays() -> None:
    meta = torch.ones(3)
    res = hypergrad(SQUARES, ZERO_STEPS, meta, torch.zeros(3), strategy=Unrolled())
    # init returns meta and no step runs: before, res.params was the caller's meta itself
    res.params.add_(1.0)
    assert torch.equal(meta, torch.ones(3))
    task = {"w0": torch.full((3,), 2.0)}
    from_task = Problem(
        init=lambda m, t: t["w0"], inner_loss=None, outer_loss=lambda w, m, t: (w * m).sum()
    )
    out = hypergrad(
        from_task, solvers.UpdateRule(lambda s, m, t: s, 0), meta, task, strategy=Unrolled()
    )
    out.params.mul_(0.0)
    assert torch.equal(task["w0"], torch.full((3,), 2.0))
    adapted = solve(SQUARES, ZERO_STEPS, meta, torch.zeros(3))
    adapted.add_(1.0)
    assert torch.equal(meta, torch.ones(3))


def _doubles_meta_in_init(meta: Any, task: Any) -> Any:
    meta.mul_(2.0)
    return meta


def _doubles_meta_in_loss(w: Any, meta: Any, task: Any) -> Any:
    meta.mul_(2.0)
    return ((w - task) ** 2).sum()


def _shifts_task_in_outer_loss(w: Any, meta: Any, task: Any) -> Any:
    task.add_(1.0)
    return (w**2).sum()


@pytest.mark.parametrize(
    "problem",
    [
        Problem(
            init=_doubles_meta_in_init, inner_loss=SQUARES.inner_loss, outer_loss=SQUARES.outer_loss
        ),
        Problem(
            init=lambda m, t: m * 1, inner_loss=_doubles_meta_in_loss, outer_loss=SQUARES.outer_loss
        ),
        Problem(
            init=lambda m, t: m * 1,
            inner_loss=SQUARES.inner_loss,
            outer_loss=_shifts_task_in_outer_loss,
        ),
    ],
    ids=["init", "inner_loss", "outer_loss_on_task"],
)
@pytest.mark.parametrize("strategy", [FirstOrder(), Unrolled()], ids=repr)
def test_in_place_changes_of_inputs_are_refused_and_never_reach_the_callers_meta(
    problem: Problem, strategy: Any
) -> None:
    # Before: with FirstOrder the caller's θ was changed silently, and init doubling it left the
    # caller's θ at 4 (doubled twice).
    meta, task = torch.ones(3), torch.zeros(3)
    with pytest.raises(ValueError, match="in place"):
        hypergrad(problem, solvers.GradientDescent(lr=0.1, steps=1), meta, task, strategy=strategy)
    assert torch.equal(meta, torch.ones(3))


# ------------------------------------------------------------------------- what a Batch leaf is


def test_numpy_leaves_are_refused_in_a_batch_and_in_a_task() -> None:
    # Before: a NumPy leaf was counted by Batch.size() but shared whole by vmap (value 687.05
    # instead of the loop's 665.18).
    tasks = {"x": np.ones((3, 2)), "y": torch.zeros(3, 2)}
    with pytest.raises(TypeError, match=r"Batch: task leaf 0 .* NumPy array .*torch.as_tensor"):
        Batch(tasks).size()
    with pytest.raises(TypeError, match=r"hypergrad: task leaf 0 .* NumPy array"):
        hypergrad(SQUARES, ZERO_STEPS, torch.ones(2), Batch(tasks), strategy=Unrolled())
    with pytest.raises(TypeError, match=r"hypergrad: task leaf 0 .* NumPy array"):
        hypergrad(SQUARES, ZERO_STEPS, torch.ones(2), {"x": np.ones(2)}, strategy=Unrolled())
    with pytest.raises(TypeError, match=r"solve: task leaf 0 .* NumPy array"):
        solve(SQUARES, ZERO_STEPS, torch.ones(2), {"x": np.ones(2)})


def test_a_nested_batch_is_a_clear_error() -> None:
    # Before: "found leading sizes []".
    with pytest.raises(TypeError, match=r"Batch: .* contain a Batch"):
        Batch(Batch(torch.zeros(3, 2)))
    with pytest.raises(TypeError, match=r"Batch: .* contain a Batch"):
        Batch({"a": Batch(torch.zeros(3, 2))})
    with pytest.raises(TypeError, match=r"hypergrad: the task .* contains a Batch"):
        hypergrad(
            SQUARES, ZERO_STEPS, torch.ones(2), {"a": Batch(torch.zeros(3, 2))}, strategy=Unrolled()
        )


def test_overflow_of_the_batch_mean_value_is_caught(fw: Framework) -> None:
    # Each task's value is 3e38 + 1 in float32 (finite), the gradient 2θ: their mean's sum
    # overflows while the gradient does not; before, res.value = inf was returned.
    problem = Problem(
        init=lambda m, t: m, inner_loss=None, outer_loss=lambda w, m, t: (w * t).sum()
    )
    meta = fw.array(np.ones(1, dtype=np.float32))
    tasks = Batch(fw.array(np.full((2, 1), 3e38, dtype=np.float32)))
    with pytest.raises(RuntimeError, match=r"mean over the batch of 2 is not .*overflow"):
        hypergrad(
            problem, solvers.UpdateRule(lambda s, m, t: s, 0), meta, tasks, strategy=Unrolled()
        )


def test_meta_and_task_on_different_devices_is_a_clear_error() -> None:
    # torch's "meta" device stands in for a GPU: the check is the same for any two devices.
    with pytest.raises(
        TypeError, match=r"different devices \(meta leaf 0 on cpu, task leaf 0 on meta\)"
    ):
        hypergrad(
            SQUARES, ZERO_STEPS, torch.ones(3), torch.zeros(3, device="meta"), strategy=Unrolled()
        )


def test_none_is_an_empty_subtree_of_meta_on_both_backends(fw: Framework) -> None:
    # Before: torch raised torch.func's "Thing passed to transform API must be Tensor" while JAX
    # accepted it; now both treat None as a subtree with no leaves, and return None there.
    problem = Problem(
        init=lambda m, t: m["w"],
        inner_loss=lambda w, m, t: ((w - t) ** 2).sum(),
        outer_loss=lambda w, m, t: (w**2).sum(),
    )
    meta = {"w": fw.array(np.ones(2)), "unused": None}
    for strategy in (Unrolled(), FirstOrder()):
        res = hypergrad(
            problem,
            solvers.GradientDescent(lr=0.1, steps=2),
            meta,
            fw.array(np.zeros(2)),
            strategy=strategy,
        )
        assert res.grad["unused"] is None
        # φ₂ = 0.8²·θ, F = ‖φ₂‖², dF/dθ = 2·0.8⁴ = 0.8192 (Unrolled); FirstOrder: 2·0.64 = 1.28
        want = 0.8192 if isinstance(strategy, Unrolled) else 1.28
        np.testing.assert_allclose(numpy(res.grad["w"]), [want, want], rtol=1e-12)


# ------------------------------------------------------------ found by review, each a regression


def test_forward_mode_directions_see_one_draw_of_random_numbers() -> None:
    # φ_K = θ and F = Σ φ·z with z ~ N(0, 1) drawn inside the loss: value Σz, gradient z. Each
    # direction of ForwardMode's vmap drew its own z when vmap drew per lane (value −2.745 and
    # grad sum −2.924 against Unrolled's −0.363 for both).
    problem = Problem(
        init=lambda m, t: m * 1.0,
        inner_loss=lambda w, m, t: 0.5 * ((w - m) ** 2).sum(),
        outer_loss=lambda w, m, t: (w * torch.randn_like(w)).sum(),
    )
    solver = solvers.GradientDescent(lr=0.5, steps=2)
    meta = torch.ones(4, dtype=torch.float64)
    for task in (None, Batch(torch.zeros(3, 1, dtype=torch.float64))):
        out = {}
        for strategy in (Unrolled(), ForwardMode()):
            torch.manual_seed(0)
            out[strategy] = hypergrad(problem, solver, meta, task, strategy=strategy)
        for res in out.values():  # gradient = the z of the value's own draw
            assert float(res.grad.sum()) == pytest.approx(float(res.value), rel=1e-12)


def test_task_data_changed_in_place_is_refused_and_the_callers_task_is_untouched() -> None:
    # Before: the error was raised but the caller's task had been doubled twice ([1] -> [4]).
    def init(m: Any, t: Any) -> Any:
        return m * 1.0 + t["x"].mul_(2).sum() * 0

    problem = Problem(
        init=init, inner_loss=lambda w, m, t: ((w - m) ** 2).sum(), outer_loss=SQUARES.outer_loss
    )
    task = {"x": torch.ones(3)}
    for strategy in (FirstOrder(), Unrolled(), ForwardMode()):
        with pytest.raises(ValueError, match="in place"):
            hypergrad(
                problem, solvers.GradientDescent(0.1, 1), torch.ones(3), task, strategy=strategy
            )
        assert torch.equal(task["x"], torch.ones(3))
    with pytest.raises(ValueError, match=r"solve: .* in place"):
        solve(problem, solvers.GradientDescent(0.1, 1), torch.ones(3), task)


def test_forward_mode_refuses_an_in_place_change_of_meta() -> None:
    # Before: ForwardMode worked on copies nobody checked: init doubling θ in place gave value
    # 7.68 and grad 5.12 instead of refusing (2θ out of place gives 3.84 and 2.56).
    problem = Problem(
        init=_doubles_meta_in_init, inner_loss=SQUARES.inner_loss, outer_loss=SQUARES.outer_loss
    )
    meta = torch.ones(3)
    with pytest.raises(ValueError, match="in place"):
        hypergrad(
            problem, solvers.GradientDescent(0.1, 1), meta, torch.zeros(3), strategy=ForwardMode()
        )
    assert torch.equal(meta, torch.ones(3))


def test_solve_names_an_in_place_change_inside_a_transform() -> None:
    # Before: torch.func's "mutate a captured Tensor" reached the user from solve().
    problem = Problem(
        init=lambda m, t: m * 1.0, inner_loss=_doubles_meta_in_loss, outer_loss=SQUARES.outer_loss
    )
    with pytest.raises(ValueError, match=r"solve: .* in place"):
        solve(problem, solvers.GradientDescent(0.1, 2), torch.ones(3), torch.zeros(3))


def test_no_output_aliases_an_input() -> None:
    # Before: an outer loss returning a task leaf made res.value that very tensor.
    c = torch.tensor(2.5)
    problem = Problem(
        init=lambda m, t: m * 1.0,
        inner_loss=lambda w, m, t: ((w - m) ** 2).sum(),
        outer_loss=lambda w, m, t: t["c"],
    )
    for strategy in (Unrolled(), FirstOrder(), Truncated(1)):
        res = hypergrad(
            problem, solvers.GradientDescent(0.1, 1), torch.ones(2), {"c": c}, strategy=strategy
        )
        res.value.add_(1.0)
        assert float(c) == 2.5


def test_implicit_under_the_callers_grad_is_refused() -> None:
    # Before: jax.grad / torch.func.grad of Implicit's value returned [0, 0, 0] (its value is
    # built from a stopped φ*) while res.grad was [1, 1, 1].
    problem = Problem(
        init=lambda m, t: m * 1.0,
        inner_loss=lambda w, m, t: ((w - t) ** 2).sum() + ((w - m) ** 2).sum(),
        outer_loss=lambda w, m, t: (w**2).sum(),
    )
    solver = solvers.GradientDescent(lr=0.25, steps=3)
    one = torch.ones(3, dtype=torch.float64)

    def value(m: Any) -> Any:
        return hypergrad(problem, solver, m, one, strategy=Implicit(solvers.CG())).value

    with pytest.raises(TypeError, match=r"Implicit\(\.\.\.\) cannot run inside .*torch.func.grad"):
        torch.func.grad(value)(one)


def test_a_steep_far_start_does_not_loosen_the_stationarity_test() -> None:
    # φ₀ = θ + 100 on a quartic: ‖G(φ₀)‖ = 1e6; 2000 small steps stop 2.8 from φ* = θ with
    # ‖G‖ = 24.6 and a hypergradient of 3.8 against the true 1.0. A limit of tol·‖G(φ₀)‖ = 100
    # passed it silently; the limit is now tol·max(‖H(φ_K − φ₀)‖, ‖Hφ_K‖) ≈ 0.24.
    problem = Problem(
        init=lambda m, t: m + t,
        inner_loss=lambda w, m, t: (0.5 * (w - m) ** 2 + 0.25 * (w - m) ** 4).sum(),
        outer_loss=lambda w, m, t: (0.5 * w**2).sum(),
    )
    with pytest.warns(StationarityWarning, match="not solved"):
        res = hypergrad(
            problem,
            solvers.GradientDescent(lr=3e-5, steps=2000),
            torch.tensor([1.0], dtype=torch.float64),
            torch.tensor([100.0], dtype=torch.float64),
            strategy=Implicit(solvers.CG()),
        )
    assert res.info.stationarity > 100 * res.info.stationarity_limit


def test_forward_mode_names_torchs_gap_for_built_in_losses() -> None:
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    problem = Problem(
        init=lambda m, t: m * 1.0,
        inner_loss=lambda w, m, t: F.mse_loss(t[0] @ w, t[1]),
        outer_loss=lambda w, m, t: F.mse_loss(t[0] @ w, t[1]),
    )
    with pytest.raises(RuntimeError, match=r"ForwardMode\(\): .*F.mse_loss.*Unrolled"):
        hypergrad(
            problem,
            solvers.GradientDescent(lr=0.1, steps=1),
            torch.zeros(3, dtype=torch.float64),
            (x, y),
            strategy=ForwardMode(),
        )


def test_a_numpy_scalar_in_a_batch_is_a_shared_number_like_a_float() -> None:
    # Before: np.float64(2.0) was counted as a 0-d array ("stack the tasks along axis 0") while
    # the Python float 2.0 was shared; now both are shared numbers with the same result.
    problem = Problem(
        init=lambda m, t: m * 1.0,
        inner_loss=lambda w, m, t: ((w - t["x"]) ** 2).sum() * t["c"],
        outer_loss=lambda w, m, t: (w**2).sum(),
    )
    x = torch.zeros(3, 2, dtype=torch.float64)
    solver = solvers.GradientDescent(lr=0.1, steps=2)
    meta = torch.ones(2, dtype=torch.float64)
    as_float = hypergrad(problem, solver, meta, Batch({"x": x, "c": 2.0}), strategy=Unrolled())
    as_numpy = hypergrad(
        problem, solver, meta, Batch({"x": x, "c": np.float64(2.0)}), strategy=Unrolled()
    )
    assert torch.equal(as_float.grad, as_numpy.grad)
    assert Batch({"x": x, "c": np.float64(2.0)}).size() == 3
