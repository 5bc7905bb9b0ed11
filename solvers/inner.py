"""Inner solvers: differentiable loops (gradient descent, optax-style optimizers, learned update
rules) and a black-box SciPy minimiser.

Each iterative solver implements :class:`bilevel.protocols.IterativeSolver`: pure ``init``,
``step`` and ``params`` functions of pytrees, nothing in place, so every strategy can
differentiate or vectorise them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize

from bilevel import tree
from bilevel.protocols import InnerObjective, SemiGradient, SolverInfo
from bilevel.solvers.optim import update
from bilevel.validate import count, nonnegative, positive

__all__ = ["GradientDescent", "Optimizer", "Scipy", "UpdateRule"]

Tree = Any


@dataclass(frozen=True)
class GradientDescent:
    r"""Gradient descent with optional heavy-ball momentum on the inner loss.

    .. math:: v_{t+1} = μ v_t + ∇f(φ_t), \qquad φ_{t+1} = φ_t − α v_{t+1}

    With ``momentum = 0`` the state is φ itself (so a fixed point of the step is a stationary
    point); otherwise it is ``(φ, v)``.

    Args:
        lr: the step size α > 0.
        steps: the number of steps K ≥ 0.
        momentum: μ ∈ [0, 1).

    Raises:
        ValueError: for a non-positive ``lr``, negative ``steps``, or μ outside [0, 1).

    Example:
        >>> import torch
        >>> from bilevel.backends import TorchBackend
        >>> from bilevel.protocols import InnerObjective
        >>> from bilevel.solvers import GradientDescent
        >>> obj = InnerObjective(lambda w, m, t: ((w - 3.0) ** 2).sum(), None, None, TorchBackend())
        >>> gd = GradientDescent(lr=0.25, steps=2)
        >>> s = gd.init(torch.zeros(1), obj)
        >>> gd.params(gd.step(gd.step(s, obj), obj)).tolist()  # 0 → 1.5 → 2.25
        [2.25]
    """

    lr: float
    steps: int
    momentum: float = 0.0

    def __post_init__(self) -> None:
        who = f"GradientDescent(lr={self.lr!r}, steps={self.steps!r}, momentum={self.momentum!r})"
        positive(who, "lr", self.lr, "lr=0.01")
        count(who, "steps", self.steps, 0)
        nonnegative(who, "momentum", self.momentum, "momentum=0.9")
        if self.momentum >= 1:
            raise ValueError(f"{who}: momentum must be < 1 for the iteration to be stable")

    def init(self, params: Tree, objective: InnerObjective) -> Tree:
        if objective.loss_fn is None:
            objective.loss(params)  # raises the TypeError that names the fix
        return params if self.momentum == 0 else (params, objective.backend.zeros_like(params))

    def step(self, state: Tree, objective: InnerObjective) -> Tree:
        if self.momentum == 0:
            _, g = objective.value_and_grad(state)
            return tree.axpy(-self.lr, g, state)
        params, velocity = state
        _, g = objective.value_and_grad(params)
        velocity = tree.axpy(self.momentum, velocity, g)
        return tree.axpy(-self.lr, velocity, params), velocity

    def params(self, state: Tree) -> Tree:
        return state if self.momentum == 0 else state[0]


def _check_transform(transform: object) -> None:
    if not (
        callable(getattr(transform, "init", None)) and callable(getattr(transform, "update", None))
    ):
        raise TypeError(
            f"Optimizer: transform must be an optax-style gradient transformation with "
            f"init(params) and update(grads, state, params) (e.g. optax.adam(1e-3) or "
            f"torchopt.adam(1e-3)), got {type(transform).__name__}; for a torch.optim optimizer "
            "use solvers.GradientDescent or a torchopt functional optimizer"
        )


@dataclass(frozen=True)
class Optimizer:
    r"""Any optax-style gradient transformation, driven out of place for ``steps`` steps.

    .. math:: (u_t, s_{t+1}) = \mathrm{update}(∇f(φ_t), s_t, φ_t), \qquad φ_{t+1} = φ_t + u_t

    ``optax`` and ``torchopt`` transformations qualify unchanged (torchopt's is called with
    ``inplace=False`` so the meta-gradient is not cut). The state is ``(φ, s)``. A transform
    must be a pure function of its state: torchopt's ``sgd`` with ``dampening > 0`` keeps a
    hidden first-call flag inside the transform object, so reusing one such object gives
    different results on later calls.

    Args:
        transform: an object with ``init(params)`` and ``update(grads, state, params=...)``.
        steps: the number of steps K ≥ 0.

    Raises:
        TypeError: if ``transform`` lacks ``init``/``update``.
        ValueError: if ``steps`` is negative.

    Example:
        >>> import torch, torchopt
        >>> from bilevel.backends import TorchBackend
        >>> from bilevel.protocols import InnerObjective
        >>> from bilevel.solvers import Optimizer
        >>> obj = InnerObjective(lambda w, m, t: ((w - 3.0) ** 2).sum(), None, None, TorchBackend())
        >>> opt = Optimizer(torchopt.sgd(lr=0.25), steps=1)
        >>> opt.params(opt.step(opt.init(torch.zeros(1), obj), obj)).tolist()
        [1.5]
    """

    transform: Any
    steps: int

    @property
    def vectorizable(self) -> bool:
        """``True`` for optax's transformations (pure functions) and where the transform says
        so (:class:`solvers.SGD`, :class:`solvers.Adam`), else ``False``: others may update
        their state in place (torchopt's do), which ``vmap`` rejects, so a
        :class:`~bilevel.Batch` is looped over tasks (with the same result)."""
        pure = type(self.transform).__module__.startswith("optax")  # optax's are pure functions
        return pure or getattr(self.transform, "vectorizable", False) is True

    def __post_init__(self) -> None:
        _check_transform(self.transform)
        count(f"Optimizer(steps={self.steps!r})", "steps", self.steps, 0)

    def init(self, params: Tree, objective: InnerObjective) -> Tree:
        return params, self.transform.init(params)

    def step(self, state: Tree, objective: InnerObjective) -> Tree:
        params, opt_state = state
        _, g = objective.value_and_grad(params)
        updates, opt_state = update(self.transform, g, opt_state, params)
        return tree.add(params, updates), opt_state

    def params(self, state: Tree) -> Tree:
        return state[0]


@dataclass(frozen=True)
class UpdateRule:
    r"""A learned local update rule: ``φ_{t+1} = φ_t + rule(φ_t, θ, τ)``, needing no inner loss.

    The rule sees the current parameters, all meta-parameters and the task, and returns an
    update of the parameters' structure (e.g. ``Δw = Σ_k θ_k · feature_k(pre, post, mod, w)``).
    The state is φ itself, so ``Implicit`` can use the rule's fixed point.

    Args:
        rule: ``(params, meta, task) -> update``.
        steps: the number of applications T ≥ 0.

    Raises:
        TypeError: if ``rule`` is not callable, or returns a tree of another structure.
        ValueError: if ``steps`` is negative.

    Example:
        >>> import torch
        >>> from bilevel.backends import TorchBackend
        >>> from bilevel.protocols import InnerObjective
        >>> from bilevel.solvers import UpdateRule
        >>> obj = InnerObjective(None, torch.tensor(0.5), None, TorchBackend())
        >>> r = UpdateRule(lambda w, m, t: -m * w, steps=1)
        >>> r.params(r.step(r.init(torch.ones(2), obj), obj)).tolist()
        [0.5, 0.5]
    """

    rule: Callable[[Tree, Tree, Tree], Tree]
    steps: int

    def __post_init__(self) -> None:
        if not callable(self.rule):
            raise TypeError(
                f"UpdateRule: rule must be a function (params, meta, task) -> update, got "
                f"{type(self.rule).__name__}"
            )
        count(f"UpdateRule(steps={self.steps!r})", "steps", self.steps, 0)

    def init(self, params: Tree, objective: InnerObjective) -> Tree:
        return params

    def step(self, state: Tree, objective: InnerObjective) -> Tree:
        delta = objective.compiled(self.rule)(state, objective.meta, objective.task)
        if tree.structure(delta) != tree.structure(state):
            raise TypeError(
                f"UpdateRule: rule returned an update of structure {tree.structure(delta)}, but "
                f"the parameters have structure {tree.structure(state)}; return one update per "
                "parameter leaf"
            )
        return tree.add(state, delta)

    def params(self, state: Tree) -> Tree:
        return state


_SCIPY_GRADIENT_METHODS = ("L-BFGS-B", "BFGS", "CG", "Newton-CG", "TNC", "SLSQP", "trust-constr")


@dataclass(frozen=True)
class Scipy:
    """A black-box inner solver: ``scipy.optimize.minimize`` on the flattened parameters.

    Runs in float64 on the host with gradients from the backend. There is no differentiable
    path through it: use it with ``FirstOrder()`` or ``Implicit(...)``.

    Args:
        method: a gradient-based SciPy method (``"L-BFGS-B"``, ``"BFGS"``, ``"CG"``, ...).
        tol: SciPy's ``tol`` (> 0).
        maxiter: the iteration limit (≥ 1).

    Raises:
        ValueError: for an unknown method or a non-positive ``tol``/``maxiter``.

    Example:
        >>> import torch
        >>> from bilevel.backends import TorchBackend
        >>> from bilevel.protocols import InnerObjective
        >>> from bilevel.solvers import Scipy
        >>> obj = InnerObjective(lambda w, m, t: ((w - 3.0) ** 2).sum(), None, None, TorchBackend())
        >>> w, info = Scipy().solve(torch.zeros(2, dtype=torch.float64), obj)
        >>> [round(x, 6) for x in w.tolist()], info.success
        ([3.0, 3.0], True)
    """

    method: str = "L-BFGS-B"
    tol: float = 1e-12
    maxiter: int = 10_000

    def __post_init__(self) -> None:
        who = f"Scipy(method={self.method!r})"
        if self.method not in _SCIPY_GRADIENT_METHODS:
            raise ValueError(f"{who}: method must be one of {_SCIPY_GRADIENT_METHODS}")
        positive(who, "tol", self.tol, "tol=1e-10")
        count(who, "maxiter", self.maxiter, 1)

    def solve(self, params: Tree, objective: InnerObjective) -> tuple[Tree, SolverInfo]:
        if isinstance(objective.loss_fn, SemiGradient):
            raise TypeError(
                f"{self!r}: a SemiGradient inner loss has no minimiser for SciPy to find (its "
                "gradient holds the targets fixed); use an iterative solver such as "
                "solvers.GradientDescent, which follows the semi-gradient"
            )
        backend = objective.backend
        flat, unravel = backend.ravel(params)

        def fun(x: np.ndarray[Any, Any]) -> tuple[float, np.ndarray[Any, Any]]:
            value, grad = objective.value_and_grad(unravel(backend.from_numpy(x, like=flat)))
            fx = backend.to_float(value)
            gx = backend.to_numpy(backend.ravel(grad)[0])
            if not (math.isfinite(fx) and np.all(np.isfinite(gx))):
                raise RuntimeError(
                    f"{self!r}: the inner loss or its gradient is not finite at a point SciPy "
                    "tried; check inner_loss, or bound the problem"
                )
            return fx, gx

        res = scipy.optimize.minimize(
            fun,
            backend.to_numpy(flat),
            jac=True,
            method=self.method,
            tol=self.tol,
            # TNC counts function evaluations and calls its limit maxfun
            options={"maxfun" if self.method == "TNC" else "maxiter": self.maxiter},
        )
        solution = unravel(backend.from_numpy(res.x, like=flat))
        return solution, SolverInfo(int(res.get("nit", 0)), bool(res.success), str(res.message))
