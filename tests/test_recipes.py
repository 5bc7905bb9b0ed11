"""``bilevel.recipes`` against numbers.

- maml / fomaml: equal to the hand-built configuration (Problem + GradientDescent + Unrolled or
  FirstOrder) and to an independent hand-written torch.autograd computation; MAML also passes
  check_hypergrad on a small tanh network in float64.
- imaml: on few-shot linear regression with the ½·mean-squared loss, φ* = (H + λI)⁻¹(Xᵀy/n + λθ)
  with H = XᵀX/n, and the meta-gradient is λ(H + λI)⁻¹∇L_query(φ*) (dφ*/dθ = λ(H + λI)⁻¹ is
  symmetric); CG is exact in ≤ d iterations.
- hyperparameters: ridge regression with one regulariser e^{θ_j} per feature,
  w* = (H + D)⁻¹Xᵀy/n with D = diag(e^θ), hypergradient −e^θ ⊙ w* ⊙ (H + D)⁻¹∇L_val(w*).
- synaptic_rule: a delta-rule-like UpdateRule for one sigmoid unit passes check_hypergrad.

All arithmetic is float64 (unit roundoff u ≈ 1.1e-16); every tolerance says where it comes from.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import solvers
from bilevel import (
    Batch,
    FirstOrder,
    LinearSolveWarning,
    Problem,
    Truncated,
    Unrolled,
    hypergrad,
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

F64 = torch.float64
Params = dict[str, torch.Tensor]


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=F64)


def half_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """½·mean squared error: gradient Xᵀ(Xw − y)/n for a linear model, Hessian XᵀX/n."""
    return ((pred - y) ** 2).mean() / 2


def _gd_for(h: torch.Tensor, target: float = 1e-16) -> solvers.GradientDescent:
    """GD with the optimal step 2/(μ+L) for a quadratic with Hessian ``h``, run until the error
    contracts by ``target`` (rate (κ−1)/(κ+1) per step)."""
    ev = torch.linalg.eigvalsh(h)
    lo, hi = float(ev[0]), float(ev[-1])
    rate = (hi - lo) / (hi + lo)
    return solvers.GradientDescent(
        lr=2 / (lo + hi), steps=math.ceil(math.log(target) / math.log(rate))
    )


# ======================================================================== MAML and first-order MAML


def tanh_net(params: Params, x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def net_meta(g: torch.Generator) -> Params:
    # 1-4-1: 13 scalars, so check_hypergrad checks every coordinate (≤ 32).
    return {
        "w1": _randn(g, 1, 4),
        "b1": _randn(g, 4),
        "w2": _randn(g, 4, 1) / 2,
        "b2": _randn(g, 1),
    }


def sine_tasks(g: torch.Generator, n: int) -> FewShot:
    amp, phase = 1 + torch.rand(n, 1, 1, generator=g, dtype=F64), _randn(g, n, 1, 1)
    x = 4 * torch.rand(n, 10, 1, generator=g, dtype=F64) - 2
    y = amp * torch.sin(x + phase)
    return FewShot(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def hand_built(strategy: Any, lr: float, steps: int) -> Config:
    """MAML written out without the recipe, on dict tasks."""

    def support(p: Params, meta: Params, t: dict[str, torch.Tensor]) -> torch.Tensor:
        return half_mse(tanh_net(p, t["xs"]), t["ys"])

    def query(p: Params, meta: Params, t: dict[str, torch.Tensor]) -> torch.Tensor:
        return half_mse(tanh_net(p, t["xq"]), t["yq"])

    problem = Problem(init=lambda meta, t: meta, inner_loss=support, outer_loss=query)
    return Config(problem, solvers.GradientDescent(lr=lr, steps=steps), strategy)


def autograd_maml(meta: Params, tasks: FewShot, lr: float, steps: int, first_order: bool) -> Params:
    """The meta-gradient with plain torch.autograd: K steps of GD per task, mean over tasks."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in meta.items()}
    total: Any = 0.0
    for i in range(tasks.x_support.shape[0]):
        phi = dict(leaves)
        for _ in range(steps):
            loss = half_mse(tanh_net(phi, tasks.x_support[i]), tasks.y_support[i])
            grads = torch.autograd.grad(loss, list(phi.values()), create_graph=not first_order)
            phi = {k: v - lr * gk for (k, v), gk in zip(phi.items(), grads, strict=True)}
            if first_order:  # every step constant in θ: φ_K = θ + (φ_K − θ) detached
                phi = {k: leaves[k] + (v - leaves[k]).detach() for k, v in phi.items()}
        total = total + half_mse(tanh_net(phi, tasks.x_query[i]), tasks.y_query[i])
    grads = torch.autograd.grad(total / tasks.x_support.shape[0], list(leaves.values()))
    return dict(zip(leaves, grads, strict=True))


@pytest.mark.parametrize(("recipe", "strategy"), [(maml, Unrolled()), (fomaml, FirstOrder())])
def test_maml_and_fomaml_equal_the_hand_built_configuration(recipe: Any, strategy: Any) -> None:
    g = torch.Generator().manual_seed(0)
    meta, tasks = net_meta(g), sine_tasks(g, 3)
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
    torch.testing.assert_close(res.grad, ref.grad, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(res.value, ref.value, rtol=1e-13, atol=1e-15)

    # An independent computation (torch.autograd, a loop over tasks, no vmap): the same maths
    # by other code, so differences are reassociation roundoff: ~1e-15 relative per step; 1e-11.
    manual = autograd_maml(meta, tasks, 0.1, 3, first_order=isinstance(strategy, FirstOrder))
    torch.testing.assert_close(res.grad, manual, rtol=1e-11, atol=1e-13)


def test_maml_passes_check_hypergrad_on_a_tanh_net() -> None:
    g = torch.Generator().manual_seed(1)
    meta, tasks = net_meta(g), sine_tasks(g, 2)
    cfg = maml(tanh_net, half_mse, lr=0.2, steps=4)
    # Default tolerances of check_hypergrad (central differences, h = 1e-5, rtol 1e-6: the
    # derivation is in bilevel/testing.py); every one of the 13 coordinates is checked.
    report = check_hypergrad(cfg.problem, cfg.solver, meta, Batch(tasks), cfg.strategy)
    assert len(report.numeric) == 13
    # Not vacuous: MAML's gradient differs from first-order MAML's by more than roundoff.
    fo = fomaml(tanh_net, half_mse, lr=0.2, steps=4)
    g_fo = hypergrad(fo.problem, fo.solver, meta, Batch(tasks), strategy=fo.strategy).grad
    g_ml = hypergrad(cfg.problem, cfg.solver, meta, Batch(tasks), strategy=cfg.strategy).grad
    assert max(float((g_fo[k] - g_ml[k]).abs().max()) for k in meta) > 1e-3


# ======================================================================== iMAML


def linear(params: Params, x: torch.Tensor) -> torch.Tensor:
    return x @ params["w"]


def regression_task(g: torch.Generator, d: int, n: int) -> FewShot:
    w_true = _randn(g, d)
    x_s, x_q = _randn(g, n, d), _randn(g, n, d)
    return FewShot(x_s, x_s @ w_true + 0.1 * _randn(g, n), x_q, x_q @ w_true + 0.1 * _randn(g, n))


def imaml_closed_form(theta: torch.Tensor, t: FewShot, lam: float) -> tuple[torch.Tensor, ...]:
    """φ* = (H + λI)⁻¹(Xᵀy/n + λθ), meta-gradient λ(H + λI)⁻¹∇L_q(φ*), and H + λI."""
    n, d = t.x_support.shape
    k = t.x_support.T @ t.x_support / n + lam * torch.eye(d, dtype=F64)
    phi = torch.linalg.solve(k, t.x_support.T @ t.y_support / n + lam * theta)
    g_query = t.x_query.T @ (t.x_query @ phi - t.y_query) / t.x_query.shape[0]
    return phi, lam * torch.linalg.solve(k, g_query), k


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_imaml_equals_the_closed_form_with_cg_exact_in_d_iterations(lam: float) -> None:
    d, g = 6, torch.Generator().manual_seed(2)
    task, theta = regression_task(g, d, 10), _randn(g, d)
    phi_star, g_star, k = imaml_closed_form(theta, task, lam)
    gd = _gd_for(k)  # the inner GD contracts ‖φ_K − φ*‖ by 1e-16: stationary to roundoff
    cfg = imaml(linear, half_mse, lam=lam, lr=gd.lr, steps=gd.steps, cg_steps=d)
    res = hypergrad(cfg.problem, cfg.solver, {"w": theta}, task, strategy=cfg.strategy)
    lin = res.info.linear
    assert lin is not None and lin.converged and lin.iterations <= d
    # φ_K: GD's error 1e-16·‖φ₀ − φ*‖ plus roundoff of K steps with κ(H + λI) ≤ 5.3 here:
    # ~1e-15 relative (measured 4e-16); allow 1e-10.
    torch.testing.assert_close(res.params["w"], phi_star, rtol=1e-10, atol=1e-12)
    # CG stops after d iterations (exact but for roundoff) or at relative residual 1e-10 (CG's
    # default tol), whichever comes first: error ≤ κ·1e-10 ≤ 6e-10 (measured 6e-16); allow 1e-9.
    torch.testing.assert_close(res.grad["w"], g_star, rtol=1e-9, atol=1e-12)

    # Not vacuous: one CG iteration does not solve a generic system with d distinct eigenvalues
    # (and hypergrad says so, with a LinearSolveWarning).
    short = imaml(linear, half_mse, lam=lam, lr=gd.lr, steps=gd.steps, cg_steps=1)
    with pytest.warns(LinearSolveWarning):
        rough = hypergrad(short.problem, short.solver, {"w": theta}, task, strategy=short.strategy)
    assert float((rough.grad["w"] - g_star).norm() / g_star.norm()) > 1e-3


def test_imaml_on_a_meta_batch_is_the_mean_of_the_closed_forms() -> None:
    d, lam, g = 4, 1.0, torch.Generator().manual_seed(3)
    tasks = [regression_task(g, d, 8) for _ in range(3)]
    theta = _randn(g, d)
    forms = [imaml_closed_form(theta, t, lam) for t in tasks]
    lo = min(float(torch.linalg.eigvalsh(f[2])[0]) for f in forms)
    hi = max(float(torch.linalg.eigvalsh(f[2])[-1]) for f in forms)
    rate = (hi - lo) / (hi + lo)  # one step size for all tasks: the worst contraction rate
    gd = solvers.GradientDescent(
        lr=2 / (lo + hi), steps=math.ceil(math.log(1e-16) / math.log(rate))
    )
    cfg = imaml(linear, half_mse, lam=lam, lr=gd.lr, steps=gd.steps, cg_steps=d)
    batch = Batch(FewShot(*(torch.stack(field) for field in zip(*tasks, strict=True))))
    res = hypergrad(cfg.problem, cfg.solver, {"w": theta}, batch, strategy=cfg.strategy)
    expected = torch.stack([f[1] for f in forms]).mean(0)
    # As in the single-task test: d CG iterations or residual 1e-10, times κ ≲ 10: 1e-9.
    torch.testing.assert_close(res.grad["w"], expected, rtol=1e-9, atol=1e-12)


# ======================================================================== hyperparameters


def ridge_data(g: torch.Generator, d: int, n: int) -> dict[str, torch.Tensor]:
    w_true = _randn(g, d)
    x, xv = _randn(g, n, d), _randn(g, n, d)
    return {"x": x, "y": x @ w_true + _randn(g, n), "xv": xv, "yv": xv @ w_true + _randn(g, n)}


def ridge_closed_form(theta: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """w* = (H + D)⁻¹Xᵀy/n; dw*/dθ_j = −(H + D)⁻¹e_j·e^{θ_j}w*_j, so the hypergradient is
    −e^θ ⊙ w* ⊙ (H + D)⁻¹∇L_val(w*) ((H + D) symmetric); also returns H + D."""
    n = t["x"].shape[0]
    a = t["x"].T @ t["x"] / n + torch.diag(torch.exp(theta))
    w = torch.linalg.solve(a, t["x"].T @ t["y"] / n)
    g_val = t["xv"].T @ (t["xv"] @ w - t["yv"]) / t["xv"].shape[0]
    return w, -torch.exp(theta) * w * torch.linalg.solve(a, g_val), a


def ridge_recipe(solver: Any, d: int) -> Config:
    return hyperparameters(
        lambda w, t: half_mse(t["x"] @ w, t["y"]),
        lambda w, t: half_mse(t["xv"] @ w, t["yv"]),
        lambda theta, w: (torch.exp(theta) * w**2).sum() / 2,
        init=lambda theta, t: torch.zeros(d, dtype=F64),
        solver=solver,
        linear=solvers.CG(maxiter=d),
    )


def test_hyperparameters_on_ridge_match_the_closed_form() -> None:
    d, g = 5, torch.Generator().manual_seed(4)
    task, theta = ridge_data(g, d, 30), -1 + 2 * torch.rand(d, generator=g, dtype=F64)
    w_star, g_star, a = ridge_closed_form(theta, task)
    assert float(g_star.norm()) > 1e-3  # not a vacuous comparison
    cfg = ridge_recipe(_gd_for(a), d)
    res = hypergrad(cfg.problem, cfg.solver, theta, task, strategy=cfg.strategy)
    # GD contracts the inner error by 1e-16 (κ(H + D) ≈ 1.7 here); then d CG iterations or
    # relative residual ≤ 1e-10: the error is ≲ κ·1e-10 ≈ 2e-10 (measured 7e-16); allow 1e-9.
    torch.testing.assert_close(res.params, w_star, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.grad, g_star, rtol=1e-9, atol=1e-12)
    # Against finite differences of θ ↦ L_val(w*(θ)) as well (the map Implicit claims); the
    # inner solution is accurate to ~1e-15, far below what h = 1e-5 resolves (testing.py).
    check_hypergrad(cfg.problem, cfg.solver, theta, task, cfg.strategy)


def test_hyperparameters_with_a_black_box_inner_solver() -> None:
    d, g = 5, torch.Generator().manual_seed(5)
    task, theta = ridge_data(g, d, 30), torch.zeros(d, dtype=F64)
    _, g_star, _ = ridge_closed_form(theta, task)
    cfg = ridge_recipe(solvers.Scipy("L-BFGS-B", tol=1e-15), d)
    res = hypergrad(cfg.problem, cfg.solver, theta, task, strategy=cfg.strategy)
    assert res.info.solver is not None and res.info.solver.success
    # L-BFGS-B stops on a relative decrease of f below 1e-15, so ‖w − w*‖ ≲ sqrt(2e-15/μ) ≈ 1e-7
    # (μ ≈ 1 here); the hypergradient is linear in w, amplified by κ(H + D) ≈ 1.5: ≲ 2e-7
    # relative (measured 2e-10); allow 1e-6.
    torch.testing.assert_close(res.grad, g_star, rtol=1e-6, atol=1e-9)


# ======================================================================== synaptic rule

BOOLEAN_X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=F64)


def unit(params: Params, x: torch.Tensor) -> torch.Tensor:
    """One sigmoid unit with bias."""
    return torch.sigmoid(x @ params["w"] + params["b"])


def delta_like_rule(params: Params, theta: torch.Tensor, t: FewShot) -> Params:
    """Δw = Σ_patterns θ₀·pre·(target − post) + θ₁·pre·post + θ₂·w: local variables only, one
    rule for every synapse (the bias is a synapse whose presynaptic activity is 1)."""
    post = unit(params, t.x_support)
    mod = t.y_support - post
    pre = torch.cat([t.x_support, torch.ones_like(t.x_support[:, :1])], dim=1)
    w = torch.cat([params["w"], params["b"].reshape(1)])
    dw = theta[0] * pre.T @ mod + theta[1] * pre.T @ post + theta[2] * w
    return {"w": dw[:2], "b": dw[2]}


def test_synaptic_rule_passes_check_hypergrad() -> None:
    y_and = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64)
    task = FewShot(BOOLEAN_X, y_and, BOOLEAN_X, y_and)
    theta = torch.tensor([0.8, 0.05, -0.02], dtype=F64)
    bce = torch.nn.functional.binary_cross_entropy

    def init(theta: torch.Tensor, t: FewShot) -> Params:
        return {"w": torch.tensor([0.1, -0.2], dtype=F64), "b": torch.tensor(0.05, dtype=F64)}

    for strategy in (Unrolled(), Truncated(3)):
        cfg = synaptic_rule(delta_like_rule, unit, bce, init=init, steps=8, strategy=strategy)
        assert cfg.problem.inner_loss is None and cfg.solver == solvers.UpdateRule(
            delta_like_rule, 8
        )
        # Default tolerances (derivation in bilevel/testing.py); 3 coordinates, all checked.
        check_hypergrad(cfg.problem, cfg.solver, theta, task, strategy)
    # Truncated(T ≥ steps) is Unrolled exactly (DESIGN.md): the same graph, the same numbers.
    full = synaptic_rule(delta_like_rule, unit, bce, init=init, steps=8)
    long = synaptic_rule(delta_like_rule, unit, bce, init=init, steps=8, strategy=Truncated(8))
    g_full = hypergrad(full.problem, full.solver, theta, task, strategy=full.strategy).grad
    g_long = hypergrad(long.problem, long.solver, theta, task, strategy=long.strategy).grad
    torch.testing.assert_close(g_full, g_long, rtol=0, atol=0)
    # Not vacuous: 8 applications of this rule on AND reduce the loss.
    before = bce(unit(init(theta, task), BOOLEAN_X), y_and)
    after = hypergrad(full.problem, full.solver, theta, task, strategy=full.strategy).value
    assert float(after) < float(before)


# ======================================================================== errors


def test_recipes_reject_bad_inputs_at_the_boundary() -> None:
    with pytest.raises(ValueError, match="lam"):
        imaml(linear, half_mse, lam=0.0, lr=0.1, steps=1, cg_steps=1)
    with pytest.raises(TypeError, match="maml: predict must be a function"):
        maml("net", half_mse, lr=0.1, steps=1)  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="strategy"):
        bad: Any = Unrolled  # the class, not an instance
        synaptic_rule(delta_like_rule, unit, half_mse, init=lambda m, t: m, steps=1, strategy=bad)
    with pytest.raises(ValueError, match="steps"):
        maml(linear, half_mse, lr=0.1, steps=-1)
