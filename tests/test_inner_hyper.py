"""Learnable inner hyperparameters: a solver's step size, momentum or weight decay given as a
function of the meta-parameters θ (Meta-SGD, MAML++'s per-step per-layer rates).

Numbers come from closed forms (worked out in each test's docstring) and from float64 central
finite differences of each strategy's own map (:func:`bilevel.testing.check_hypergrad`, default
``rtol = 1e-6`` derived in its module docstring). Every test but the torch.func Meta-SGD
reference runs on torch and JAX (the ``fw`` fixture).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from _frameworks import Framework, assert_close, numpy, xp
from _generators import randn, rng

from bilevel import (
    Batch,
    FirstOrder,
    ForwardMode,
    Implicit,
    Problem,
    Truncated,
    Unrolled,
    hypergrad,
    recipes,
    solvers,
)
from bilevel.protocols import PerStep
from bilevel.testing import check_hypergrad

Tree = Any
D = np.float64
K = 3

# f = ½‖φ − τ‖², φ₀ = w, F = ½‖φ_K‖²: gradient descent with rate α gives
# φ_K = τ + (1 − α)^K (w − τ) coordinatewise (α a scalar or one rate per coordinate).
QUADRATIC = Problem(
    init=lambda m, t: m["w"],
    inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2,
    outer_loss=lambda w, m, t: (w**2).sum() / 2,
)
W, TAU = np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.1, -0.4])


def _lr(m: Tree) -> Any:
    return m["lr"]


GD_LEARNED = solvers.GradientDescent(lr=_lr, steps=K)


def _closed_form(alpha: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], ...]:
    """``(dF/dw, dF/dα)`` for the quadratic: with c = (1 − α)^K,
    dF/dw = c φ_K and dF/dα = −K (1 − α)^{K−1} φ_K (w − τ) (summed over coordinates for a
    scalar α)."""
    phi = TAU + (1 - alpha) ** K * (W - TAU)
    d_w = (1 - alpha) ** K * phi
    d_alpha = -K * (1 - alpha) ** (K - 1) * phi * (W - TAU)
    return d_w, d_alpha if np.ndim(alpha) else np.asarray(d_alpha.sum())


@pytest.mark.parametrize("strategy", [Unrolled(), Truncated(K), ForwardMode()], ids=repr)
@pytest.mark.parametrize(
    "alpha", [np.asarray(0.3), np.array([0.1, 0.2, 0.4])], ids=["scalar", "per-coordinate"]
)
def test_learned_rate_matches_the_closed_form(
    fw: Framework, strategy: Any, alpha: np.ndarray[Any, Any]
) -> None:
    """Exact strategies return the true derivative in α: 1e-12 relative is ~100× the rounding of
    a 3-step recursion of O(1) numbers."""
    meta = fw.tree({"w": W, "lr": alpha})
    res = hypergrad(QUADRATIC, GD_LEARNED, meta, fw.array(TAU), strategy=strategy)
    d_w, d_alpha = _closed_form(alpha)
    assert_close(res.grad, {"w": d_w, "lr": d_alpha}, rtol=1e-12, atol=1e-15, dtype=D)


def test_per_step_rates_match_the_closed_form(fw: Framework) -> None:
    """PerStep(α_t): φ_K = τ + Π_t(1 − α_t)(w − τ), so dF/dα_t = −Π_{s≠t}(1 − α_s)·⟨φ_K, w − τ⟩
    and dF/dw = Π_t(1 − α_t) φ_K (1e-12: rounding of a 3-step recursion)."""
    alphas = np.array([0.1, 0.25, 0.5])
    solver = solvers.GradientDescent(lr=PerStep(lambda m, t: m["lr"][t]), steps=K)
    meta = fw.tree({"w": W, "lr": alphas})
    res = hypergrad(QUADRATIC, solver, meta, fw.array(TAU), strategy=Unrolled())
    c = np.prod(1 - alphas)
    phi = TAU + c * (W - TAU)
    d_alpha = -np.array([c / (1 - a) for a in alphas]) * float(phi @ (W - TAU))
    assert_close(res.grad, {"w": c * phi, "lr": d_alpha}, rtol=1e-12, atol=1e-15, dtype=D)
    check_hypergrad(QUADRATIC, solver, meta, fw.array(TAU), ForwardMode())


LAYERED = Problem(
    init=lambda m, t: m["w"],
    inner_loss=lambda w, m, t: ((w["a"] - t) ** 2).sum() / 2 + (w["a"].sum() * w["b"]) ** 2 / 2,
    outer_loss=lambda w, m, t: ((w["a"] - 1) ** 2).sum() / 2 + w["b"] ** 2,
)


def _rate_of_step(m: Tree, step: Any) -> Tree:
    return {"a": m["lr"]["a"][step], "b": m["lr"]["b"][step]}


@pytest.mark.parametrize("strategy", [Unrolled(), Truncated(2), ForwardMode()], ids=repr)
def test_per_step_per_layer_rates_agree_with_finite_differences(
    fw: Framework, strategy: Any
) -> None:
    """MAML++'s rates: one per layer and per step, PerStep returning a tree like the parameters
    (default check_hypergrad tolerance, derived in bilevel.testing)."""
    solver = solvers.GradientDescent(lr=PerStep(_rate_of_step), steps=K)
    meta = fw.tree(
        {
            "w": {"a": W, "b": np.asarray(0.7)},
            "lr": {"a": np.array([0.1, 0.2, 0.15]), "b": np.array([0.3, 0.05, 0.2])},
        }
    )
    check_hypergrad(LAYERED, solver, meta, fw.array(TAU), strategy)


def _quartic(w: Any, m: Any, t: Any) -> Any:
    return ((w - t) ** 2).sum() / 2 + (w**4).sum() / 4


QUARTIC = Problem(
    init=lambda m, t: m["w"],
    inner_loss=_quartic,
    outer_loss=lambda w, m, t: ((w - 1) ** 2).sum() / 2 + (w * t).sum(),
)


def _momentum(m: Tree) -> Any:
    return m["mu"]


def _decay(m: Tree) -> Any:
    return m["wd"]


def _per_coordinate(m: Tree) -> Any:
    return xp(m["lr"]).exp(m["lr"])  # a rate per coordinate, kept positive


SOLVERS = {
    "lr": (solvers.GradientDescent(lr=_lr, steps=4), {"lr": np.asarray(0.2)}),
    "exp(lr) per coordinate": (
        solvers.GradientDescent(lr=_per_coordinate, steps=4),
        {"lr": np.log(np.array([0.1, 0.2, 0.15]))},
    ),
    "momentum": (
        solvers.GradientDescent(lr=0.2, steps=4, momentum=_momentum),
        {"mu": np.asarray(0.6)},
    ),
    "weight decay": (
        solvers.GradientDescent(lr=0.2, steps=4, weight_decay=_decay),
        {"wd": np.asarray(0.3)},
    ),
    "all three": (
        solvers.GradientDescent(lr=_lr, steps=4, momentum=_momentum, weight_decay=_decay),
        {"lr": np.asarray(0.2), "mu": np.asarray(0.5), "wd": np.asarray(0.1)},
    ),
}


@pytest.mark.parametrize("strategy", [Unrolled(), Truncated(2), ForwardMode()], ids=repr)
@pytest.mark.parametrize("name", list(SOLVERS))
def test_learned_hyperparameters_agree_with_finite_differences(
    fw: Framework, strategy: Any, name: str
) -> None:
    """Every strategy that runs the steps differentiates the hyperparameters (default
    check_hypergrad tolerance, derived in bilevel.testing)."""
    solver, hyper = SOLVERS[name]
    meta = fw.tree({"w": W, **hyper})
    check_hypergrad(QUARTIC, solver, meta, fw.array(TAU), strategy)


def test_first_order_and_implicit_give_zero_for_a_step_size(fw: Framework) -> None:
    """FirstOrder holds the steps constant in θ and Implicit differentiates the stationarity of
    the inner loss, which α does not move: both give exactly 0 for α. The w-part: FirstOrder
    gives ∇F(φ_K) = φ_K; Implicit with f = ½‖φ − τ‖² + ½‖φ − w‖² (φ* = (τ + w)/2, reached in
    one step at α = ½) gives dF/dw = φ*/2."""
    meta = fw.tree({"w": W, "lr": np.asarray(0.5)})
    first = hypergrad(QUADRATIC, GD_LEARNED, meta, fw.array(TAU), strategy=FirstOrder())
    phi = TAU + 0.5**K * (W - TAU)
    assert_close(first.grad, {"w": phi, "lr": np.asarray(0.0)}, rtol=1e-14, atol=0.0, dtype=D)

    prox = Problem(
        init=lambda m, t: m["w"],
        inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2 + ((w - m["w"]) ** 2).sum() / 2,
        outer_loss=lambda w, m, t: (w**2).sum() / 2,
    )
    res = hypergrad(prox, GD_LEARNED, meta, fw.array(TAU), strategy=Implicit(solvers.CG()))
    star = (TAU + W) / 2
    # CG on the 2·I Hessian is exact after one iteration: 1e-14 is rounding
    assert_close(res.grad, {"w": star / 2, "lr": np.asarray(0.0)}, rtol=1e-14, atol=0.0, dtype=D)


def test_a_batch_equals_the_task_loop(fw: Framework) -> None:
    """A Batch under vmap with a learned per-coordinate rate gives the mean of per-task calls
    (1e-13: the same arithmetic, summed in another order)."""
    tasks = randn(rng(3), 4, 3)
    meta = fw.tree({"w": W, "lr": np.array([0.1, 0.2, 0.4])})
    batch = hypergrad(QUADRATIC, GD_LEARNED, meta, Batch(fw.array(tasks)), strategy=Unrolled())
    each = [
        numpy(hypergrad(QUADRATIC, GD_LEARNED, meta, fw.array(t), strategy=Unrolled()).grad)
        for t in tasks
    ]
    mean = {k: np.mean([g[k] for g in each], axis=0) for k in ("w", "lr")}
    assert_close(batch.grad, mean, rtol=1e-13, atol=1e-16)


# ------------------------------------------------------------------------------- Meta-SGD


def _mlp(params: Tree, x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


def _mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((pred - y) ** 2).mean()


def _meta_sgd_by_hand(meta: Tree, task: recipes.FewShot, steps: int) -> torch.Tensor:
    """Meta-SGD (Li et al. 2017) written with torch.func: φ ← φ − α ⊙ ∇L_support(φ)."""
    params = meta["params"]
    for _ in range(steps):
        g = torch.func.grad(lambda p: _mse(_mlp(p, task.x_support), task.y_support))(params)
        params = {k: params[k] - meta["lr"][k] * g[k] for k in params}
    return _mse(_mlp(params, task.x_query), task.y_query)


def test_meta_sgd_equals_a_hand_written_torch_func_loop() -> None:
    """recipes.meta_sgd learns the initialisation and one rate per parameter entry: equal to the
    hand-written loop to 1e-12 relative in float64 (the same operations; only the order of
    summation may differ)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    params = {"w1": r(2, 5) * 0.5, "b1": r(5) * 0.1, "w2": r(5, 1) * 0.5}
    meta = {"params": params, "lr": {k: 0.05 + 0.1 * r(*v.shape).abs() for k, v in params.items()}}
    task = recipes.FewShot(r(8, 2), r(8, 1), r(6, 2), r(6, 1))
    cfg = recipes.meta_sgd(_mlp, _mse, steps=3)
    res = hypergrad(cfg.problem, cfg.solver, meta, task, strategy=cfg.strategy)
    want = torch.func.grad(_meta_sgd_by_hand)(meta, task, 3)
    assert_close(res.grad, want, rtol=1e-12, atol=1e-15, dtype=D)
    assert abs(float(res.value) - float(_meta_sgd_by_hand(meta, task, 3))) <= 1e-14
    check_hypergrad(cfg.problem, cfg.solver, meta, task, cfg.strategy)


# --------------------------------------------------------------------------------- errors


def test_a_tensor_step_size_names_the_fix() -> None:
    with pytest.raises(TypeError, match=r"GradientDescent.*lr.*lambda meta: meta\["):
        solvers.GradientDescent(lr=torch.tensor(0.1), steps=2)  # type: ignore[arg-type]


def test_a_rate_function_with_the_wrong_arity_is_refused() -> None:
    with pytest.raises(TypeError, match=r"GradientDescent.*lr must accept 1 positional"):
        solvers.GradientDescent(lr=lambda m, t: m, steps=2)
    with pytest.raises(TypeError, match=r"GradientDescent.*lr.*PerStep.*2 positional"):
        solvers.GradientDescent(lr=PerStep(lambda m: m), steps=2)


def test_a_rate_that_would_change_the_parameters_shape_is_refused(fw: Framework) -> None:
    """α of shape (3, 3) for φ of shape (3,) would broadcast φ to (3, 3): refused, naming lr."""
    meta = fw.tree({"w": W, "lr": np.full((3, 3), 0.1)})
    with pytest.raises(ValueError, match=r"GradientDescent: lr.*shape \(3, 3\).*shape \(3,\)"):
        hypergrad(QUADRATIC, GD_LEARNED, meta, fw.array(TAU), strategy=Unrolled())


def test_a_rate_of_another_structure_is_refused(fw: Framework) -> None:
    problem = Problem(
        init=lambda m, t: {"a": m["w"], "b": m["w"]},
        inner_loss=lambda w, m, t: ((w["a"] - t) ** 2).sum() + (w["b"] ** 2).sum(),
        outer_loss=lambda w, m, t: (w["a"] ** 2).sum(),
    )
    meta = fw.tree({"w": W, "lr": [np.asarray(0.1), np.asarray(0.1)]})
    with pytest.raises(TypeError, match=r"GradientDescent: lr returned .* structure"):
        hypergrad(problem, GD_LEARNED, meta, fw.array(TAU), strategy=Unrolled())
