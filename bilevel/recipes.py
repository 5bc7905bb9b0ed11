r"""Meta-learning algorithms as configurations: a :class:`Problem`, an inner solver, a strategy.

Each recipe is a function returning a :class:`Config`, run by :func:`bilevel.hypergrad`::

    cfg = maml(predict, loss, lr=0.01, steps=5)
    res = hypergrad(cfg.problem, cfg.solver, meta, tasks, strategy=cfg.strategy)

The supervised recipes read tasks as :class:`FewShot` named tuples (a pytree for
:mod:`bilevel.tree` and for ``torch.func.vmap``, so a :class:`~bilevel.Batch` of them is one
call). ``predict(params, x)`` is a pure function of a parameter pytree (for an ``nn.Module``,
``torch.func.functional_call``) and ``loss(prediction, y)`` returns a scalar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from bilevel import tree
from bilevel.backends import backend_for
from bilevel.problem import Problem
from bilevel.protocols import BlackBoxSolver, IterativeSolver, LinearSolver, SemiGradient
from bilevel.solvers import CG, GradientDescent, UpdateRule
from bilevel.strategies import FirstOrder, Implicit, Strategy, Unrolled
from bilevel.strategies._common import not_a_solver
from bilevel.validate import count, positive

__all__ = [
    "Config",
    "FewShot",
    "Trajectories",
    "fomaml",
    "hyperparameters",
    "imaml",
    "maml",
    "meta_sgd",
    "metagradient_returns",
    "synaptic_rule",
]

Tree = Any
Predict = Callable[[Tree, Any], Any]
Loss = Callable[[Any, Any], Any]


class FewShot(NamedTuple):
    """One task: a support set to adapt on, a query set to judge on (Batch: a leading axis)."""

    x_support: Any
    y_support: Any
    x_query: Any
    y_query: Any


class Trajectories(NamedTuple):
    """A meta-gradient RL task: the trajectory τ the agent learns from and the next one, τ',
    on which the update is judged (each whatever the ``value`` and ``returns`` functions read)."""

    now: Any
    next: Any


@dataclass(frozen=True)
class Config:
    """An algorithm: what is solved, how, and how it is differentiated (TypeError if ill-typed)."""

    problem: Problem
    solver: IterativeSolver | BlackBoxSolver
    strategy: Strategy

    def __post_init__(self) -> None:
        _check_config(self.problem, self.solver, self.strategy)


def _check_config(problem: object, solver: object, strategy: object) -> None:
    if not isinstance(problem, Problem):
        raise TypeError(f"Config: problem must be a bilevel.Problem, got {problem!r}")
    if isinstance(solver, type) or not isinstance(solver, IterativeSolver | BlackBoxSolver):
        raise TypeError(f"Config: {not_a_solver(solver)}")
    if isinstance(strategy, type) or not isinstance(strategy, Strategy):
        raise TypeError(f"Config: strategy must be a strategy instance, got {strategy!r}")


def _callables(who: str, **fns: object) -> None:
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"{who}: {name} must be a function, got {type(fn).__name__} ({fn!r})")


def _few_shot(predict: Predict, loss: Loss) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def support(params: Tree, meta: Tree, task: FewShot) -> Any:
        return loss(predict(params, task.x_support), task.y_support)

    def query(params: Tree, meta: Tree, task: FewShot) -> Any:
        return loss(predict(params, task.x_query), task.y_query)

    return support, query


def maml(predict: Predict, loss: Loss, *, lr: float, steps: int) -> Config:
    r"""MAML (Finn et al. 2017): differentiate through K steps of gradient descent from θ.

    .. math:: φ_0 = θ, \quad φ_{t+1} = φ_t − α∇L_{support}(φ_t), \quad
              g = \frac{d}{dθ} L_{query}(φ_K(θ))

    Args:
        predict: ``(params, x) -> prediction``; ``params`` is structured like θ.
        loss: ``(prediction, y) -> scalar``.
        lr: the inner step size α > 0.
        steps: the number of inner steps K ≥ 0.

    Returns:
        ``Config(Problem(init=θ, inner=support loss, outer=query loss), GradientDescent(α, K),
        Unrolled())``.

    Raises:
        TypeError: if ``predict`` or ``loss`` is not callable.
        ValueError: for a non-positive ``lr`` or negative ``steps``.

    Example:
        >>> import torch
        >>> from bilevel import hypergrad, recipes
        >>> mse = lambda pred, y: ((pred - y) ** 2).mean()
        >>> cfg = recipes.maml(lambda p, x: x * p["w"], mse, lr=0.1, steps=1)
        >>> x = torch.tensor([1.0, 2.0])
        >>> task = recipes.FewShot(x, 2 * x, x, 2 * x)  # support loss 2.5(w − 2)², so φ₁ = θ/2 + 1
        >>> res = hypergrad(cfg.problem, cfg.solver, {"w": torch.tensor(0.0)}, task,
        ...                 strategy=cfg.strategy)
        >>> float(res.grad["w"])  # 5(φ₁ − 2) · dφ₁/dθ = −5 · 0.5
        -2.5
    """

    _callables("maml", predict=predict, loss=loss)
    support, query = _few_shot(predict, loss)
    problem = Problem(init=lambda meta, task: meta, inner_loss=support, outer_loss=query)
    return Config(problem, GradientDescent(lr=lr, steps=steps), Unrolled())


def _meta_sgd_init(meta: Tree, task: Tree) -> Tree:
    return meta["params"]


def _meta_sgd_rates(meta: Tree) -> Tree:
    return meta["lr"]


def meta_sgd(predict: Predict, loss: Loss, *, steps: int) -> Config:
    r"""Meta-SGD (Li et al. 2017): MAML that also learns one inner step size per parameter entry.

    .. math:: θ = (φ_0, α), \quad φ_{t+1} = φ_t − α ⊙ ∇L_{support}(φ_t), \quad
              g = \frac{d}{dθ} L_{query}(φ_K(θ))

    The meta-parameters are ``{"params": φ₀, "lr": α}`` with ``α`` structured like ``φ₀`` (a
    rate per entry; a scalar per leaf gives a rate per layer). The rates are read inside every
    inner step (``GradientDescent(lr=lambda meta: meta["lr"])``), so ``Unrolled`` returns
    their true derivative. Rates are not kept positive: start them small (the paper: uniform
    in [0.005, 0.1]) or learn ``log α`` with your own ``lr`` function.

    Args:
        predict: ``(params, x) -> prediction``; ``params`` is structured like ``meta["params"]``.
        loss: ``(prediction, y) -> scalar``.
        steps: the number of inner steps K ≥ 0.

    Returns:
        ``Config(Problem(init=meta["params"], inner=support loss, outer=query loss),
        GradientDescent(lr=meta["lr"], K), Unrolled())``.

    Raises:
        TypeError: if ``predict`` or ``loss`` is not callable.
        ValueError: for negative ``steps``.

    Example:
        >>> import torch
        >>> from bilevel import hypergrad, recipes
        >>> mse = lambda pred, y: ((pred - y) ** 2).mean()
        >>> cfg = recipes.meta_sgd(lambda p, x: x * p["w"], mse, steps=1)
        >>> x = torch.tensor([1.0, 2.0])  # support loss 2.5(w − 2)²: φ₁ = w − 5α(w − 2)
        >>> meta = {"params": {"w": torch.tensor(0.0)}, "lr": {"w": torch.tensor(0.1)}}
        >>> res = hypergrad(cfg.problem, cfg.solver, meta, recipes.FewShot(x, 2 * x, x, 2 * x),
        ...                 strategy=cfg.strategy)
        >>> float(res.grad["params"]["w"]), float(res.grad["lr"]["w"])  # 5(φ₁ − 2)·(0.5, 10)
        (-2.5, -50.0)
    """
    _callables("meta_sgd", predict=predict, loss=loss)
    support, query = _few_shot(predict, loss)
    problem = Problem(init=_meta_sgd_init, inner_loss=support, outer_loss=query)
    return Config(problem, GradientDescent(lr=_meta_sgd_rates, steps=steps), Unrolled())


def fomaml(predict: Predict, loss: Loss, *, lr: float, steps: int) -> Config:
    r"""First-order MAML: MAML's inner loop, its Jacobian replaced by the identity.

    .. math:: φ_K \text{ as in } \mathrm{maml}, \qquad g = ∇_φ L_{query}(φ_K)

    Args:
        predict, loss, lr, steps: as for :func:`maml`.

    Returns:
        :func:`maml`'s configuration with the strategy ``FirstOrder()``.

    Raises:
        TypeError, ValueError: as for :func:`maml`.

    Example:
        >>> import torch
        >>> from bilevel import hypergrad, recipes
        >>> mse = lambda pred, y: ((pred - y) ** 2).mean()
        >>> cfg = recipes.fomaml(lambda p, x: x * p["w"], mse, lr=0.1, steps=1)
        >>> x = torch.tensor([1.0, 2.0])
        >>> res = hypergrad(cfg.problem, cfg.solver, {"w": torch.tensor(0.0)},
        ...                 recipes.FewShot(x, 2 * x, x, 2 * x), strategy=cfg.strategy)
        >>> float(res.grad["w"])  # 5(φ₁ − 2) at φ₁ = 1
        -5.0
    """
    base = maml(predict, loss, lr=lr, steps=steps)
    return Config(base.problem, base.solver, FirstOrder())


def imaml(
    predict: Predict, loss: Loss, *, lam: float, lr: float, steps: int, cg_steps: int
) -> Config:
    r"""iMAML (Rajeswaran et al. 2019): implicit gradient of a proximally regularised adaptation.

    .. math:: φ^* = \arg\min_φ L_{support}(φ) + \tfrac{λ}{2}‖φ − θ‖^2, \qquad
              g = (I + H/λ)^{-1} ∇L_{query}(φ^*), \quad H = ∇^2 L_{support}(φ^*)

    φ* is approximated by K gradient steps from θ; g by ``cg_steps`` conjugate-gradient
    iterations on ``(H + λI) v = ∇L_query(φ*)``, ``g = λv`` (the paper's system scaled by λ,
    which leaves CG's iterates unchanged). The paper: λ = 2, 5 CG steps, 16 inner steps.
    If the inner problem is not stationary or CG does not converge, ``hypergrad`` warns.

    Args:
        predict, loss: as for :func:`maml`.
        lam: the proximal strength λ > 0.
        lr, steps: the inner gradient descent (α > 0, K ≥ 0).
        cg_steps: the most CG iterations (≥ 1).

    Returns:
        ``Config(Problem(init=θ, inner=support + λ/2‖φ − θ‖², outer=query loss),
        GradientDescent(α, K), Implicit(CG(maxiter=cg_steps)))``.

    Raises:
        TypeError: if ``predict`` or ``loss`` is not callable, or a number has the wrong type.
        ValueError: for a non-positive ``lam``, ``lr`` or ``cg_steps``, or negative ``steps``.

    Example:
        >>> import torch
        >>> from bilevel import hypergrad, recipes
        >>> mse = lambda pred, y: ((pred - y) ** 2).mean()
        >>> cfg = recipes.imaml(lambda p, x: x * p["w"], mse, lam=5.0, lr=0.1, steps=1, cg_steps=1)
        >>> x = torch.tensor([1.0, 2.0])  # φ* = (10 + 5θ)/10, H = 5
        >>> res = hypergrad(cfg.problem, cfg.solver, {"w": torch.tensor(0.0)},
        ...                 recipes.FewShot(x, 2 * x, x, 2 * x), strategy=cfg.strategy)
        >>> float(res.params["w"]), float(res.grad["w"])  # g = 5(φ* − 2)/(1 + 5/5)
        (1.0, -2.5)
    """

    _callables("imaml", predict=predict, loss=loss)
    positive(f"imaml(lam={lam!r})", "lam", lam, "lam=2.0")
    support, query = _few_shot(predict, loss)

    def inner(params: Tree, meta: Tree, task: FewShot) -> Any:
        d = tree.sub(params, meta)
        return support(params, meta, task) + lam / 2 * tree.vdot(d, d)

    problem = Problem(init=lambda meta, task: meta, inner_loss=inner, outer_loss=query)
    return Config(problem, GradientDescent(lr=lr, steps=steps), Implicit(CG(maxiter=cg_steps)))


def hyperparameters(
    train_loss: Callable[[Tree, Tree], Any],
    val_loss: Callable[[Tree, Tree], Any],
    regulariser: Callable[[Tree, Tree], Any],
    *,
    init: Callable[[Tree, Tree], Tree],
    solver: IterativeSolver | BlackBoxSolver,
    linear: LinearSolver,
) -> Config:
    r"""Hyperparameter optimisation: the implicit gradient of the validation loss at the optimum.

    .. math:: w^*(θ) = \arg\min_w L_{train}(w) + R(θ, w), \qquad
              g = −(∂_θ∇_w R)^⊤ \big(∇^2_w (L_{train} + R)\big)^{-1} ∇L_{val}(w^*)

    Args:
        train_loss: ``(params, task) -> scalar``, the training loss.
        val_loss: ``(params, task) -> scalar``, the validation loss (free of θ).
        regulariser: ``(meta, params) -> scalar`` R(θ, w), e.g. ``exp(θ)/2·‖w‖²``.
        init: ``(meta, task) -> params``, where the solver starts (zeros, or a warm start).
        solver: any inner solver, ``solvers.Scipy`` included; it must reach stationarity.
        linear: the linear solver for the implicit system (``solvers.CG(...)``, ...).

    Returns:
        ``Config(Problem(init, inner=train + R, outer=val), solver, Implicit(linear))``.

    Raises:
        TypeError: if a function is not callable, or ``solver``/``linear`` is not a solver.

    Example:
        >>> import torch
        >>> from bilevel import solvers
        >>> from bilevel import hypergrad, recipes
        >>> train, val = lambda w, t: 2.5 * (w - 2) ** 2, lambda w, t: (w - 3.25) ** 2 / 2
        >>> cfg = recipes.hyperparameters(train, val, lambda th, w: th * w**2 / 2,  # R = θw²/2
        ...     init=lambda m, t: torch.zeros(()), linear=solvers.CG(maxiter=1),
        ...     solver=solvers.GradientDescent(lr=0.125, steps=1))
        >>> res = hypergrad(cfg.problem, cfg.solver, torch.tensor(3.0), None, strategy=cfg.strategy)
        >>> float(res.params), float(res.grad)  # w* = 10/(5 + θ), g = (w* − 3.25)·(−10/(5 + θ)²)
        (1.25, 0.3125)
    """
    # init is checked by Problem, by the same name
    _callables("hyperparameters", train_loss=train_loss, val_loss=val_loss, regulariser=regulariser)

    def inner(params: Tree, meta: Tree, task: Tree) -> Any:
        return train_loss(params, task) + regulariser(meta, params)

    def outer(params: Tree, meta: Tree, task: Tree) -> Any:
        return val_loss(params, task)

    return Config(Problem(init=init, inner_loss=inner, outer_loss=outer), solver, Implicit(linear))


def synaptic_rule(
    rule: Callable[[Tree, Tree, Tree], Tree],
    predict: Predict,
    loss: Loss,
    *,
    init: Callable[[Tree, Tree], Tree],
    steps: int,
    strategy: Strategy = Unrolled(),  # noqa: B008 -- a frozen dataclass: safe to share
) -> Config:
    r"""A learned synaptic rule (Bengio et al. 1991): T applications of a rule, no inner loss.

    .. math:: w_0 = \mathrm{init}(θ, τ), \quad w_{t+1} = w_t + \mathrm{rule}(w_t, θ, τ), \quad
              g = \frac{d}{dθ} \mathrm{loss}(\mathrm{predict}(w_T, x_{query}), y_{query})

    Args:
        rule: ``(params, meta, task) -> update``, e.g. ``Δw = Σ_k θ_k·feature_k(pre, post, w)``
            over the support set (the modulatory signal carries ``task.y_support``).
        predict, loss: judge the learned weights on the query set of a :class:`FewShot` task.
        init: ``(meta, task) -> params``, the initial weights.
        steps: T ≥ 0, the number of rule applications.
        strategy: ``Unrolled()`` (default) or ``Truncated(k)`` for the last k applications.

    Returns:
        ``Config(Problem(init, inner=None, outer=query loss), UpdateRule(rule, T), strategy)``.

    Raises:
        TypeError: if a function is not callable or ``strategy`` is not a strategy instance.
        ValueError: for negative ``steps``.

    Example:
        >>> import torch
        >>> from bilevel import hypergrad, recipes
        >>> def delta(p, m, t):  # θ · Σ pre · (target − post): a delta rule with a learned rate
        ...     return {"w": m * (t.x_support * (t.y_support - t.x_support * p["w"])).sum()}
        >>> mse = lambda pred, y: ((pred - y) ** 2).mean()
        >>> cfg = recipes.synaptic_rule(delta, lambda p, x: x * p["w"], mse,
        ...                     init=lambda m, t: {"w": torch.tensor(0.0)}, steps=1)
        >>> x = torch.tensor([1.0, 2.0])  # w₁ = 10θ
        >>> task = recipes.FewShot(x, 2 * x, x, 2 * x)
        >>> res = hypergrad(cfg.problem, cfg.solver, torch.tensor(0.1), task, strategy=cfg.strategy)
        >>> float(res.grad)  # 5(w₁ − 2) · 10
        -50.0
    """

    _callables("synaptic_rule", rule=rule, predict=predict, loss=loss, init=init)
    _, query = _few_shot(predict, loss)
    return Config(Problem(init=init, outer_loss=query), UpdateRule(rule, steps), strategy)


def metagradient_returns(
    value: Callable[[Tree, Any], Any],
    returns: Callable[[Tree, Any, Any], Any],
    reference: Callable[[Any, Any], Any],
    *,
    init: Callable[[Tree, Trajectories], Tree],
    lr: float,
    steps: int = 1,
) -> Config:
    r"""Meta-gradient returns (Xu, van Hasselt & Silver 2018): learn the return's γ, λ, … (η).

    .. math:: θ' = θ + α \sum_t \big(g_η(τ)_t − v_θ(S_t)\big) ∇_θ v_θ(S_t), \qquad
              J'(η) = \tfrac12 \sum_t \big(g'(τ')_t − v_{θ'}(S'_t)\big)^2

    The inner step is TD learning's semi-gradient: the return ``g_η`` bootstraps from values
    that the inner gradient holds fixed (:class:`~bilevel.SemiGradient`) while the
    meta-gradient still follows them through every inner step. The reference return ``g'``
    (fixed γ', λ') is a constant of the meta-objective, as in the paper's ``∂J'/∂θ'``.

    Args:
        value: ``(params, trajectory) -> (T + 1,)`` values ``v(S_0) … v(S_T)``.
        returns: ``(meta, trajectory, values) -> (T,)`` the targets g_η, e.g.
            ``rl.lambda_returns(τ.rewards, values, sigmoid(meta["γ"]), sigmoid(meta["λ"]))``.
        reference: ``(trajectory, values) -> (T,)`` the meta-objective's return g'.
        init: ``(meta, task) -> params``, θ (e.g. the agent's current weights carried in the
            task, or zeros).
        lr: the inner step size α > 0.
        steps: the number of inner semi-gradient steps on τ (the paper: 1).

    Returns:
        ``Config(Problem(init, inner=SemiGradient(TD loss on τ), outer=J' on τ'),
        GradientDescent(α, steps), Unrolled())``; tasks are :class:`Trajectories`.

    Raises:
        TypeError: if a function is not callable; ValueError for a bad ``lr`` or ``steps``.

    Example:
        >>> import torch
        >>> from bilevel import hypergrad, recipes, rl
        >>> onehot = torch.cat([torch.eye(2), torch.zeros(1, 2)])  # S_0, S_1, terminal S_2
        >>> cfg = recipes.metagradient_returns(
        ...     value=lambda w, tau: onehot @ w,
        ...     returns=lambda m, tau, v: rl.lambda_returns(tau, v, torch.sigmoid(m), 1.0),
        ...     reference=lambda tau, v: rl.discounted_returns(tau, 1.0),
        ...     init=lambda m, task: torch.zeros(2), lr=0.5)
        >>> task = recipes.Trajectories(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
        >>> res = hypergrad(cfg.problem, cfg.solver, torch.tensor(0.0), task,
        ...                 strategy=cfg.strategy)
        >>> round(float(res.grad), 4)  # −½(1 − γ/2)·γ(1 − γ) at γ = ½: more γ, lower J'
        -0.0938
    """
    _callables("metagradient_returns", value=value, returns=returns, reference=reference)
    positive(f"metagradient_returns(lr={lr!r})", "lr", lr, "lr=0.1")
    count("metagradient_returns", "steps", steps, 1)

    def td(params: Tree, targets: Tree, meta: Tree, task: Trajectories) -> Any:
        g = returns(meta, task.now, value(targets, task.now))
        return ((g - value(params, task.now)[:-1]) ** 2).sum() / 2

    def meta_objective(params: Tree, meta: Tree, task: Trajectories) -> Any:
        v = value(params, task.next)
        g = backend_for(v, what="metagradient_returns").stop_gradient(reference(task.next, v))
        return ((g - v[:-1]) ** 2).sum() / 2

    problem = Problem(init=init, inner_loss=SemiGradient(td), outer_loss=meta_objective)
    return Config(problem, GradientDescent(lr=lr, steps=steps), Unrolled())
