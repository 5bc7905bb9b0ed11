"""``bilevel.recipes`` against numbers, on torch and on JAX.

- maml / fomaml: equal to the hand-built configuration (Problem + GradientDescent + Unrolled or
  FirstOrder) and to an independent hand-written computation with the framework's own AD
  (``torch.func.grad`` / ``jax.grad``, a loop over tasks, no library code); MAML also passes
  check_hypergrad on a small tanh network in float64.
- imaml: on few-shot linear regression with the ½·mean-squared loss, φ* = (H + λI)⁻¹(Xᵀy/n + λθ)
  with H = XᵀX/n, and the meta-gradient is λ(H + λI)⁻¹∇L_query(φ*) (dφ*/dθ = λ(H + λI)⁻¹ is
  symmetric); CG is exact in ≤ d iterations.
- hyperparameters: ridge regression with one regulariser e^{θ_j} per feature,
  w* = (H + D)⁻¹Xᵀy/n with D = diag(e^θ), hypergradient −e^θ ⊙ w* ⊙ (H + D)⁻¹∇L_val(w*).
- synaptic_rule: a delta-rule-like UpdateRule for one sigmoid unit passes check_hypergrad.

Every test with arrays runs once per framework (the ``fw`` fixture, ``tests/_frameworks.py``):
the data are drawn in NumPy, the model and loss functions are written once (array functions
from :func:`xp`), and the closed forms are computed in NumPy float64, independently of the
framework under test. The argument checks at the end touch no arrays and run once.

All arithmetic is float64 (unit roundoff u ≈ 1.1e-16); every tolerance says where it comes from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from _frameworks import Framework, assert_close64, numpy, rel_err, xp
from _generators import rand, randn, rng

from bilevel import (
    Batch,
    FirstOrder,
    LinearSolveWarning,
    Problem,
    Truncated,
    Unrolled,
    hypergrad,
    solvers,
)
from bilevel.recipes import (
    Config,
    FewShot,
    fomaml,
    hyperparameters,
    imaml,
    maml,
    synaptic_rule,
)
from bilevel.testing import check_hypergrad

# Any bilevel warning means "this hypergradient may be inaccurate": these tests expect exact ones.
pytestmark = pytest.mark.filterwarnings("error::bilevel.BilevelWarning")

Array = np.ndarray[Any, Any]
Params = dict[str, Any]


def half_mse(pred: Any, y: Any) -> Any:
    """½·mean squared error: gradient Xᵀ(Xw − y)/n for a linear model, Hessian XᵀX/n."""
    return ((pred - y) ** 2).mean() / 2


def sigmoid(z: Any) -> Any:
    return 1 / (1 + xp(z).exp(-z))


def _gd_for(h: Array, target: float = 1e-16) -> solvers.GradientDescent:
    """GD with the optimal step 2/(μ+L) for a quadratic with Hessian ``h``, run until the error
    contracts by ``target`` (rate (κ−1)/(κ+1) per step)."""
    ev = np.linalg.eigvalsh(h)
    lo, hi = float(ev[0]), float(ev[-1])
    rate = (hi - lo) / (hi + lo)
    return solvers.GradientDescent(
        lr=2 / (lo + hi), steps=math.ceil(math.log(target) / math.log(rate))
    )


def native_ad(fw: Framework) -> tuple[Callable[..., Any], Callable[[Any], Any]]:
    """The framework's own ``grad`` and stop-gradient, bypassing the library's backends:
    ``torch.func.grad`` and ``.detach()``, or ``jax.grad`` and ``jax.lax.stop_gradient``."""
    if fw.name == "torch":
        return torch.func.grad, lambda x: x.detach()
    import jax

    return jax.grad, jax.lax.stop_gradient


# ======================================================================== MAML and first-order MAML


def tanh_net(params: Params, x: Any) -> Any:
    return xp(x).tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def net_meta(g: np.random.Generator) -> dict[str, Array]:
    # 1-4-1: 13 scalars, so check_hypergrad checks every coordinate (≤ 32).
    return {
        "w1": randn(g, 1, 4),
        "b1": randn(g, 4),
        "w2": randn(g, 4, 1) / 2,
        "b2": randn(g, 1),
    }


def sine_tasks(g: np.random.Generator, n: int) -> FewShot:
    amp, phase = 1 + rand(g, n, 1, 1), randn(g, n, 1, 1)
    x = 4 * rand(g, n, 10, 1) - 2
    y = amp * np.sin(x + phase)
    return FewShot(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def _support(p: Params, meta: Params, t: dict[str, Any]) -> Any:
    return half_mse(tanh_net(p, t["xs"]), t["ys"])


def _query(p: Params, meta: Params, t: dict[str, Any]) -> Any:
    return half_mse(tanh_net(p, t["xq"]), t["yq"])


# MAML written out without the recipe, on dict tasks (built once: JAX compiles per loss function).
HAND_BUILT = Problem(init=lambda meta, t: meta, inner_loss=_support, outer_loss=_query)


def hand_built(strategy: Any, lr: float, steps: int) -> Config:
    """MAML written out without the recipe, on dict tasks."""
    return Config(HAND_BUILT, solvers.GradientDescent(lr=lr, steps=steps), strategy)


def native_maml(
    fw: Framework, meta: Params, tasks: FewShot, lr: float, steps: int, first_order: bool
) -> Params:
    """The meta-gradient with the framework's own AD: K steps of GD per task, mean over tasks."""
    grad, stop = native_ad(fw)
    n = tasks.x_support.shape[0]

    def meta_loss(theta: Params) -> Any:
        total: Any = 0.0
        for i in range(n):
            xs, ys = tasks.x_support[i], tasks.y_support[i]
            phi = dict(theta)
            for _ in range(steps):
                g = grad(lambda p, xs=xs, ys=ys: half_mse(tanh_net(p, xs), ys))(phi)
                phi = {k: v - lr * g[k] for k, v in phi.items()}
                if first_order:  # every step constant in θ: φ_K = θ + (φ_K − θ) stopped
                    phi = {k: theta[k] + stop(v - theta[k]) for k, v in phi.items()}
            total = total + half_mse(tanh_net(phi, tasks.x_query[i]), tasks.y_query[i])
        return total / n

    return grad(meta_loss)(meta)


@pytest.mark.parametrize(("recipe", "strategy"), [(maml, Unrolled()), (fomaml, FirstOrder())])
def test_maml_and_fomaml_equal_the_hand_built_configuration(
    fw: Framework, recipe: Any, strategy: Any
) -> None:
    g = rng(0)
    meta, tasks = fw.tree(net_meta(g)), fw.tree(sine_tasks(g, 3))
    cfg = recipe(tanh_net, half_mse, lr=0.1, steps=3)
    assert cfg.strategy == strategy
    assert cfg.solver == solvers.GradientDescent(lr=0.1, steps=3)
    res = hypergrad(cfg.problem, cfg.solver, meta, Batch(tasks), strategy=cfg.strategy)

    ref_cfg = hand_built(strategy, lr=0.1, steps=3)
    as_dict = Batch(
        {"xs": tasks.x_support, "ys": tasks.y_support, "xq": tasks.x_query, "yq": tasks.y_query}
    )
    ref = hypergrad(ref_cfg.problem, ref_cfg.solver, meta, as_dict, strategy=ref_cfg.strategy)
    # The same float64 operations in the same order: equal up to a few ulps of summation order.
    assert_close64(res.grad, ref.grad, rtol=1e-13, atol=1e-15, what="grad")
    assert_close64(res.value, ref.value, rtol=1e-13, atol=1e-15, what="value")

    # An independent computation (the framework's own grad, a loop over tasks, no vmap): the
    # same maths by other code, so differences are reassociation roundoff: ~1e-15 relative per
    # step; 1e-11.
    manual = native_maml(fw, meta, tasks, 0.1, 3, first_order=isinstance(strategy, FirstOrder))
    assert_close64(res.grad, manual, rtol=1e-11, atol=1e-13, what="native AD")


def test_maml_passes_check_hypergrad_on_a_tanh_net(fw: Framework) -> None:
    g = rng(1)
    meta, tasks = fw.tree(net_meta(g)), fw.tree(sine_tasks(g, 2))
    cfg = maml(tanh_net, half_mse, lr=0.2, steps=4)
    # Default tolerances of check_hypergrad (central differences, h = 1e-5, rtol 1e-6: the
    # derivation is in bilevel/testing.py); every one of the 13 coordinates is checked.
    report = check_hypergrad(cfg.problem, cfg.solver, meta, Batch(tasks), cfg.strategy)
    assert len(report.numeric) == 13
    # Not vacuous: MAML's gradient differs from first-order MAML's by more than roundoff.
    fo = fomaml(tanh_net, half_mse, lr=0.2, steps=4)
    g_fo = numpy(hypergrad(fo.problem, fo.solver, meta, Batch(tasks), strategy=fo.strategy).grad)
    g_ml = numpy(hypergrad(cfg.problem, cfg.solver, meta, Batch(tasks), strategy=cfg.strategy).grad)
    assert max(float(np.abs(g_fo[k] - g_ml[k]).max()) for k in g_ml) > 1e-3


# ======================================================================== iMAML


def linear(params: Params, x: Any) -> Any:
    return x @ params["w"]


def regression_task(g: np.random.Generator, d: int, n: int) -> FewShot:
    w_true = randn(g, d)
    x_s, x_q = randn(g, n, d), randn(g, n, d)
    return FewShot(x_s, x_s @ w_true + 0.1 * randn(g, n), x_q, x_q @ w_true + 0.1 * randn(g, n))


def imaml_closed_form(theta: Array, t: FewShot, lam: float) -> tuple[Array, ...]:
    """φ* = (H + λI)⁻¹(Xᵀy/n + λθ), meta-gradient λ(H + λI)⁻¹∇L_q(φ*), and H + λI."""
    n, d = t.x_support.shape
    k = t.x_support.T @ t.x_support / n + lam * np.eye(d)
    phi = np.linalg.solve(k, t.x_support.T @ t.y_support / n + lam * theta)
    g_query = t.x_query.T @ (t.x_query @ phi - t.y_query) / t.x_query.shape[0]
    return phi, lam * np.linalg.solve(k, g_query), k


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_imaml_equals_the_closed_form_with_cg_exact_in_d_iterations(
    fw: Framework, lam: float
) -> None:
    d, g = 6, rng(2)
    task_np, theta_np = regression_task(g, d, 10), randn(g, d)
    phi_star, g_star, k = imaml_closed_form(theta_np, task_np, lam)
    task, theta = fw.tree(task_np), fw.array(theta_np)
    gd = _gd_for(k)  # the inner GD contracts ‖φ_K − φ*‖ by 1e-16: stationary to roundoff
    cfg = imaml(linear, half_mse, lam=lam, lr=gd.lr, steps=gd.steps, cg_steps=d)
    res = hypergrad(cfg.problem, cfg.solver, {"w": theta}, task, strategy=cfg.strategy)
    lin = res.info.linear
    assert lin is not None and lin.converged and lin.iterations <= d
    # φ_K: GD's error 1e-16·‖φ₀ − φ*‖ plus roundoff of K steps with κ(H + λI) ≤ 5.3 here:
    # ~1e-15 relative (measured 4e-16); allow 1e-10.
    assert_close64(res.params["w"], phi_star, rtol=1e-10, atol=1e-12, what="φ*")
    # CG stops after d iterations (exact but for roundoff) or at relative residual 1e-10 (CG's
    # default tol), whichever comes first: error ≤ κ·1e-10 ≤ 6e-10 (measured 6e-16); allow 1e-9.
    assert_close64(res.grad["w"], g_star, rtol=1e-9, atol=1e-12, what="meta-gradient")

    # Not vacuous: one CG iteration does not solve a generic system with d distinct eigenvalues
    # (and hypergrad says so, with a LinearSolveWarning).
    short = imaml(linear, half_mse, lam=lam, lr=gd.lr, steps=gd.steps, cg_steps=1)
    with pytest.warns(LinearSolveWarning):
        rough = hypergrad(short.problem, short.solver, {"w": theta}, task, strategy=short.strategy)
    assert rel_err(rough.grad["w"], g_star) > 1e-3


def test_imaml_on_a_meta_batch_is_the_mean_of_the_closed_forms(fw: Framework) -> None:
    d, lam, g = 4, 1.0, rng(3)
    tasks = [regression_task(g, d, 8) for _ in range(3)]
    theta = randn(g, d)
    forms = [imaml_closed_form(theta, t, lam) for t in tasks]
    lo = min(float(np.linalg.eigvalsh(f[2])[0]) for f in forms)
    hi = max(float(np.linalg.eigvalsh(f[2])[-1]) for f in forms)
    rate = (hi - lo) / (hi + lo)  # one step size for all tasks: the worst contraction rate
    gd = solvers.GradientDescent(
        lr=2 / (lo + hi), steps=math.ceil(math.log(1e-16) / math.log(rate))
    )
    cfg = imaml(linear, half_mse, lam=lam, lr=gd.lr, steps=gd.steps, cg_steps=d)
    batch = Batch(fw.tree(FewShot(*(np.stack(field) for field in zip(*tasks, strict=True)))))
    res = hypergrad(cfg.problem, cfg.solver, {"w": fw.array(theta)}, batch, strategy=cfg.strategy)
    expected = np.stack([f[1] for f in forms]).mean(0)
    # As in the single-task test: d CG iterations or residual 1e-10, times κ ≲ 10: 1e-9.
    assert_close64(res.grad["w"], expected, rtol=1e-9, atol=1e-12, what="mean meta-gradient")


# ======================================================================== hyperparameters


def ridge_data(g: np.random.Generator, d: int, n: int) -> dict[str, Array]:
    w_true = randn(g, d)
    x, xv = randn(g, n, d), randn(g, n, d)
    return {"x": x, "y": x @ w_true + randn(g, n), "xv": xv, "yv": xv @ w_true + randn(g, n)}


def ridge_closed_form(theta: Array, t: dict[str, Array]) -> tuple[Array, ...]:
    """w* = (H + D)⁻¹Xᵀy/n; dw*/dθ_j = −(H + D)⁻¹e_j·e^{θ_j}w*_j, so the hypergradient is
    −e^θ ⊙ w* ⊙ (H + D)⁻¹∇L_val(w*) ((H + D) symmetric); also returns H + D."""
    n = t["x"].shape[0]
    a = t["x"].T @ t["x"] / n + np.diag(np.exp(theta))
    w = np.linalg.solve(a, t["x"].T @ t["y"] / n)
    g_val = t["xv"].T @ (t["xv"] @ w - t["yv"]) / t["xv"].shape[0]
    return w, -np.exp(theta) * w * np.linalg.solve(a, g_val), a


def _ridge_train(w: Any, t: dict[str, Any]) -> Any:
    return half_mse(t["x"] @ w, t["y"])


def _ridge_val(w: Any, t: dict[str, Any]) -> Any:
    return half_mse(t["xv"] @ w, t["yv"])


def _ridge_reg(theta: Any, w: Any) -> Any:
    return (xp(theta).exp(theta) * w**2).sum() / 2


def _ridge_init(theta: Any, t: dict[str, Any]) -> Any:
    return xp(theta).zeros_like(theta)  # w has one entry per regulariser θ_j


def ridge_recipe(solver: Any, d: int) -> Config:
    return hyperparameters(
        _ridge_train,
        _ridge_val,
        _ridge_reg,
        init=_ridge_init,
        solver=solver,
        linear=solvers.CG(maxiter=d),
    )


def test_hyperparameters_on_ridge_match_the_closed_form(fw: Framework) -> None:
    d, g = 5, rng(4)
    task_np, theta_np = ridge_data(g, d, 30), -1 + 2 * rand(g, d)
    w_star, g_star, a = ridge_closed_form(theta_np, task_np)
    assert float(np.linalg.norm(g_star)) > 1e-3  # not a vacuous comparison
    task, theta = fw.tree(task_np), fw.array(theta_np)
    cfg = ridge_recipe(_gd_for(a), d)
    res = hypergrad(cfg.problem, cfg.solver, theta, task, strategy=cfg.strategy)
    # GD contracts the inner error by 1e-16 (κ(H + D) ≈ 1.7 here); then d CG iterations or
    # relative residual ≤ 1e-10: the error is ≲ κ·1e-10 ≈ 2e-10 (measured 7e-16); allow 1e-9.
    assert_close64(res.params, w_star, rtol=1e-10, atol=1e-12, what="w*")
    assert_close64(res.grad, g_star, rtol=1e-9, atol=1e-12, what="hypergradient")
    # Against finite differences of θ ↦ L_val(w*(θ)) as well (the map Implicit claims); the
    # inner solution is accurate to ~1e-15, far below what h = 1e-5 resolves (testing.py).
    check_hypergrad(cfg.problem, cfg.solver, theta, task, cfg.strategy)


def test_hyperparameters_with_a_black_box_inner_solver(fw: Framework) -> None:
    d, g = 5, rng(5)
    task_np, theta_np = ridge_data(g, d, 30), np.zeros(d)
    _, g_star, _ = ridge_closed_form(theta_np, task_np)
    cfg = ridge_recipe(solvers.Scipy("L-BFGS-B", tol=1e-15), d)
    res = hypergrad(
        cfg.problem, cfg.solver, fw.array(theta_np), fw.tree(task_np), strategy=cfg.strategy
    )
    assert res.info.solver is not None and res.info.solver.success
    # L-BFGS-B stops on a relative decrease of f below 1e-15, so ‖w − w*‖ ≲ sqrt(2e-15/μ) ≈ 1e-7
    # (μ ≈ 1 here); the hypergradient is linear in w, amplified by κ(H + D) ≈ 1.5: ≲ 2e-7
    # relative (measured 2e-10); allow 1e-6.
    assert_close64(res.grad, g_star, rtol=1e-6, atol=1e-9, what="hypergradient")


# ======================================================================== synaptic rule

BOOLEAN_X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
Y_AND = np.array([0.0, 0.0, 0.0, 1.0])
W0, B0 = np.array([0.1, -0.2]), np.array(0.05)


def unit(params: Params, x: Any) -> Any:
    """One sigmoid unit with bias."""
    return sigmoid(x @ params["w"] + params["b"])


def bce(p: Any, y: Any) -> Any:
    """Binary cross-entropy, mean over patterns (torch.nn.functional.binary_cross_entropy)."""
    log = xp(p).log
    return -(y * log(p) + (1 - y) * log(1 - p)).mean()


def delta_like_rule(params: Params, theta: Any, t: FewShot) -> Params:
    """Δw = Σ_patterns θ₀·pre·(target − post) + θ₁·pre·post + θ₂·w: local variables only, one
    rule for every synapse (the bias is a synapse whose presynaptic activity is 1)."""
    ns = xp(t.x_support)
    post = unit(params, t.x_support)
    mod = t.y_support - post
    pre = ns.concatenate([t.x_support, ns.ones_like(t.x_support[:, :1])], axis=1)
    w = ns.concatenate([params["w"], params["b"].reshape(1)])
    dw = theta[0] * pre.T @ mod + theta[1] * pre.T @ post + theta[2] * w
    return {"w": dw[:2], "b": dw[2]}


def synaptic_init(theta: Any, t: FewShot) -> Params:
    ns = xp(theta)
    return {"w": ns.asarray(W0), "b": ns.asarray(B0)}


def test_synaptic_rule_passes_check_hypergrad(fw: Framework) -> None:
    task = fw.tree(FewShot(BOOLEAN_X, Y_AND, BOOLEAN_X, Y_AND))
    theta = fw.array(np.array([0.8, 0.05, -0.02]))
    init = synaptic_init

    for strategy in (Unrolled(), Truncated(3)):
        cfg = synaptic_rule(delta_like_rule, unit, bce, init=init, steps=8, strategy=strategy)
        assert cfg.problem.inner_loss is None and cfg.solver == solvers.UpdateRule(
            delta_like_rule, 8
        )
        # Default tolerances (derivation in bilevel/testing.py); 3 coordinates, all checked.
        check_hypergrad(cfg.problem, cfg.solver, theta, task, strategy)
    # Truncated(T ≥ steps) is Unrolled exactly (docs/strategies.md): same graph, same numbers.
    full = synaptic_rule(delta_like_rule, unit, bce, init=init, steps=8)
    long = synaptic_rule(delta_like_rule, unit, bce, init=init, steps=8, strategy=Truncated(8))
    g_full = hypergrad(full.problem, full.solver, theta, task, strategy=full.strategy).grad
    g_long = hypergrad(long.problem, long.solver, theta, task, strategy=long.strategy).grad
    assert_close64(g_full, g_long, rtol=0, atol=0, what="Truncated(8) vs Unrolled")
    # Not vacuous: 8 applications of this rule on AND reduce the loss.
    before = bce(unit(init(theta, task), task.x_support), task.y_support)
    after = hypergrad(full.problem, full.solver, theta, task, strategy=full.strategy).value
    assert float(after) < float(before)


# ======================================================================== errors


def test_recipes_reject_bad_inputs_at_the_boundary() -> None:
    # No arrays: the recipes check their arguments before any framework is involved.
    with pytest.raises(ValueError, match="lam"):
        imaml(linear, half_mse, lam=0.0, lr=0.1, steps=1, cg_steps=1)
    with pytest.raises(TypeError, match="maml: predict must be a function"):
        maml("net", half_mse, lr=0.1, steps=1)  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="strategy"):
        bad: Any = Unrolled  # the class, not an instance
        synaptic_rule(delta_like_rule, unit, half_mse, init=lambda m, t: m, steps=1, strategy=bad)
    with pytest.raises(ValueError, match="steps"):
        maml(linear, half_mse, lr=0.1, steps=-1)
